//! Idempotent set-up: the nightly pieces the eBPF build needs, bpf-linker
//! built from source against nightly's own LLVM, Debian packages, and the
//! Kubernetes API emulator of the integration tests.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{checked, workspace_root};

/// Commands the tests and the demo call, and the Debian package of each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    ("ethtool", "ethtool"),
    // The kube-proxy peers of `cargo xtask bench`.
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    // The DNS tests' client, and the DNS benchmark's peer (without the
    // `dnsmasq` package's system service).
    ("dig", "dnsutils"),
    ("dnsmasq", "dnsmasq-base"),
    // The Ingress tests' certificates, the Ingress benchmark's peer (and
    // its backends) and load.
    ("openssl", "openssl"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
];

/// The version of kmock (PyPI), the Kubernetes API emulator that
/// tests/src/kmock.rs runs from target/kmock-venv.
const KMOCK_VERSION: &str = "0.8";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    kmock()
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]));
    match installed {
        Ok(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Ok(_) => checked(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"])),
        Err(_) => checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])),
    }
}

/// The LLVM major version of nightly rustc, e.g. 22.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    llvm.split('.').next().unwrap_or_default().parse().with_context(|| format!("odd LLVM version {llvm:?}"))
}

fn bpf_linker() -> anyhow::Result<()> {
    let major = nightly_llvm_major()?;
    let prefix = llvm_prefix(major)?;
    // Built for this LLVM major (the stamp) and still finding its libLLVM.
    let stamp = prefix.join("bpf-linker-installed");
    if stamp.exists() && Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    println!("xtask: building bpf-linker against nightly's LLVM {major} (one-time, a few minutes)");
    checked(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp, format!("llvm-{major}\n"))?;
    Ok(())
}

/// A directory `D` with `D/lib/libLLVM.so` (and the library's soname)
/// pointing into nightly's sysroot, as bpf-linker's build expects. It must
/// stay: bpf-linker finds libLLVM there at run time.
fn llvm_prefix(major: u32) -> anyhow::Result<PathBuf> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let libdir = sysroot.join("lib");
    // The real shared object, not the `libLLVM-*.so` linker script beside it.
    let real = fs::read_dir(&libdir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}"))))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join(format!("lb-llvm-{major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for name in [PathBuf::from("libLLVM.so"), PathBuf::from(real.file_name().expect("a file"))] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&real, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    Ok(prefix)
}

fn debian_packages() -> anyhow::Result<()> {
    packages(DEBIAN_PACKAGES)
}

/// kmock in a venv of its own under target/, so that nothing is installed
/// into the system's Python.
fn kmock() -> anyhow::Result<()> {
    let venv = workspace_root().join("target/kmock-venv");
    let python = venv.join("bin/python");
    let installed =
        output(Command::new(&python).args(["-c", "import importlib.metadata as m; print(m.version('kmock'))"]));
    if installed.is_ok_and(|v| v.trim() == KMOCK_VERSION) {
        return Ok(());
    }
    println!("xtask: installing kmock {KMOCK_VERSION} into {}", venv.display());
    checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    checked(Command::new(&python).args(["-m", "pip", "install", "--quiet", &format!("kmock=={KMOCK_VERSION}")]))
}

/// A static busybox at /bin/busybox (the VM's shell and tools).
pub fn static_busybox() -> anyhow::Result<()> {
    let installed = Command::new("dpkg-query").args(["-W", "-f=${Status}", "busybox-static"]).output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed")) {
        return Ok(());
    }
    install(&["busybox-static"])
}

/// Installs the Debian packages (command, package) whose command is missing.
pub fn packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| {
            !Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)
}

fn install(missing: &[&str]) -> anyhow::Result<()> {
    println!("xtask: installing Debian packages {missing:?}");
    checked(Command::new("apt-get").arg("update"))?;
    checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // No package's service (nginx's) is started on the machine.
            .env("RUNLEVEL", "1"),
    )
}
