//! `cargo xtask vm-test`: the BPF_PROG_TEST_RUN suite and the netns
//! integration tests inside a VM that runs Debian's packaged 6.1 LTS cloud
//! kernel, under qemu (TCG: KVM is not there for nested guests).
//!
//! The guest has no disk: an initramfs holds busybox, the host's iproute2,
//! util-linux and ethtool binaries with their libraries, the kernel modules
//! the tests need, the agent, the test server and the test binaries. Its
//! /init runs the tests and prints `VM-TEST: PASS` or `VM-TEST: FAIL`,
//! which the host reads from the serial console; a guest that panics,
//! hangs or stops without a verdict fails too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write as _},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, checked, setup, workspace_root};

/// The kernels `--kernel` knows: name, and the Debian package prefix.
const KERNELS: &[(&str, &str)] = &[("debian-6.1", "linux-image-6.1.0-")];
const PACKAGE_SUFFIX: &str = "-cloud-amd64-unsigned";
/// Modules the tests need; what they depend on comes along (modinfo).
const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf"];
/// Host programs the harness runs, copied with their libraries.
const HOST_PROGRAMS: &[&str] = &["ip", "tc", "nsenter", "ethtool", "setpriv"];
/// Integration test files run in the guest (the benches are not).
const TEST_TARGETS: &[&str] = &[
    "datapath_fixtures",
    "maglev",
    "conntrack",
    "clusterip",
    "services",
    "external",
    "multinode",
    "environment",
    "restart",
    "kube_proxy_flows",
    "socket_lb",
    "ipv6",
    "observability",
];
/// Emulation is slow: the whole run must end within this.
const TIME_LIMIT: Duration = Duration::from_secs(40 * 60);

pub fn run(kernel: &str, filter: Option<&str>) -> anyhow::Result<()> {
    let Some((_, prefix)) = KERNELS.iter().find(|(name, _)| *name == kernel) else {
        let known: Vec<&str> = KERNELS.iter().map(|(name, _)| *name).collect();
        bail!("no kernel named {kernel:?} (there are: {})", known.join(", "));
    };
    setup::packages(&[("qemu-system-x86_64", "qemu-system-x86"), ("cpio", "cpio"), ("modinfo", "kmod")])?;
    setup::static_busybox()?;
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir)?;
    let kernel_root = unpack_kernel(&dir, prefix)?;
    let tests = build_tests()?;
    let initrd = initramfs(&dir, &kernel_root, &tests, filter)?;
    let vmlinuz = only_file(&kernel_root.join("boot"), "vmlinuz-")?;
    boot(&vmlinuz, &initrd)
}

/// The kernel packages of `prefix` Debian has, oldest first.
fn packages_named(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("apt-cache").args(["pkgnames", prefix]).output().context("apt-cache")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.ends_with(PACKAGE_SUFFIX))
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

/// The newest cached package of the kernel, else the newest Debian has,
/// unpacked under `dir`; the unpacked tree.
fn unpack_kernel(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let cached = || -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                name.starts_with(prefix) && name.contains(PACKAGE_SUFFIX) && name.ends_with(".deb")
            })
            .collect();
        debs.sort();
        debs.pop()
    };
    let deb = match cached() {
        Some(deb) => deb,
        None => {
            let mut names = packages_named(prefix)?;
            if names.is_empty() {
                checked(Command::new("apt-get").arg("update"))?;
                names = packages_named(prefix)?;
            }
            let name = names.pop().with_context(|| format!("Debian has no {prefix}*{PACKAGE_SUFFIX} package"))?;
            println!("xtask: downloading {name}");
            checked(Command::new("apt-get").args(["download", &name]).current_dir(dir))?;
            cached().context("apt-get download left no package")?
        }
    };
    let root = dir.join(deb.file_stem().expect("a file name"));
    if !root.join("boot").is_dir() {
        let _ = fs::remove_dir_all(&root);
        checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    Ok(root)
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_file(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// Builds the agent, the test server and the integration test binaries;
/// the test binaries by target name.
fn build_tests() -> anyhow::Result<Vec<(String, PathBuf)>> {
    crate::build()?;
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "lb-tests", "--no-run", "--message-format=json"]);
    for target in TEST_TARGETS {
        cmd.args(["--test", target]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(name), Some(executable)) = (message["target"]["name"].as_str(), message["executable"].as_str())
            && TEST_TARGETS.contains(&name)
        {
            tests.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    if tests.len() != TEST_TARGETS.len() {
        bail!("found {} of the {} integration test binaries", tests.len(), TEST_TARGETS.len());
    }
    Ok(tests)
}

/// Writes the guest's root and packs it; the initramfs.
fn initramfs(
    dir: &Path,
    kernel_root: &Path,
    tests: &[(String, PathBuf)],
    filter: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "dev", "proc", "sys", "tmp", "run", "tests", "modules", "etc"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    symlink("busybox", root.join("bin/sh"))?;
    // `ip netns` keeps its namespaces in /var/run/netns.
    fs::create_dir_all(root.join("var"))?;
    symlink("/run", root.join("var/run"))?;
    let mut libraries = BTreeSet::new();
    for program in HOST_PROGRAMS {
        let path = which(program)?;
        copy_into(&root, &path)?;
        symlink(&path, root.join("bin").join(program)).ok();
        libraries.extend(shared_libraries(&path)?);
    }
    let release = workspace_root().join("target/release");
    for binary in ["lb-agent", "lb-testserver", "lb-testclient"] {
        let path = release.join(binary);
        fs::copy(&path, root.join("tests").join(binary))?;
        libraries.extend(shared_libraries(&path)?);
    }
    let mut names = Vec::new();
    for (name, path) in tests {
        fs::copy(path, root.join("tests").join(format!("test-{name}")))?;
        libraries.extend(shared_libraries(path)?);
        names.push(format!("test-{name}"));
    }
    for library in &libraries {
        copy_into(&root, library)?;
    }
    let modules = modules_in_order(kernel_root)?;
    let mut insmods = Vec::new();
    for module in &modules {
        let name = module.file_name().expect("a file").to_string_lossy().into_owned();
        fs::copy(module, root.join("modules").join(&name))?;
        insmods.push(format!("insmod /modules/{name}"));
    }
    let filter = filter.map(|f| format!(" '{f}'")).unwrap_or_default();
    let init = format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
{insmods}
ip link set lo up
echo "VM-TEST: kernel $(uname -r), $(nproc) CPUs"
status=0
for t in {tests}; do
    echo "VM-TEST: running $t"
    LB_AGENT_BIN=/tests/lb-agent LB_TESTSERVER_BIN=/tests/lb-testserver LB_TESTCLIENT_BIN=/tests/lb-testclient /tests/$t --test-threads=1{filter} || status=1
done
if [ $status = 0 ]; then echo "VM-TEST: PASS"; else echo "VM-TEST: FAIL"; fi
poweroff -f
"#,
        insmods = insmods.join("\n"),
        tests = names.join(" "),
    );
    fs::write(root.join("init"), init)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0::/tmp:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")?;
    let initrd = dir.join("initrd.cpio.gz");
    let pack = format!("find . | cpio -o -H newc --quiet | gzip -1 > '{}'", initrd.display());
    checked(Command::new("sh").args(["-c", &pack]).current_dir(&root))?;
    Ok(initrd)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh").args(["-c", &format!("command -v {program}")]).output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("{program} is not installed");
    }
    Ok(fs::canonicalize(path)?)
}

/// Copies `path` to the same place under `root`.
fn copy_into(root: &Path, path: &Path) -> anyhow::Result<()> {
    let target = root.join(path.strip_prefix("/").unwrap_or(path));
    fs::create_dir_all(target.parent().expect("a parent"))?;
    fs::copy(path, &target).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

/// The shared libraries `binary` loads (and the loader), as ldd lists them.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// The files of MODULES and of what they depend on, dependencies first.
fn modules_in_order(kernel_root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![only_file(&kernel_root.join("lib/modules"), "")?];
    while let Some(dir) = dirs.pop() {
        for path in fs::read_dir(&dir)?.flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                files.insert(name.replace('-', "_"), path.clone());
            }
        }
    }
    fn visit(name: &str, files: &BTreeMap<String, PathBuf>, ordered: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let path = files.get(name).with_context(|| format!("the kernel has no module {name}"))?;
        if ordered.contains(path) {
            return Ok(());
        }
        let out = Command::new("modinfo").args(["-F", "depends"]).arg(path).output()?;
        for dependency in String::from_utf8_lossy(&out.stdout).trim().split(',').filter(|d| !d.is_empty()) {
            visit(&dependency.replace('-', "_"), files, ordered)?;
        }
        ordered.push(path.clone());
        Ok(())
    }
    let mut ordered = Vec::new();
    for module in MODULES {
        visit(module, &files, &mut ordered)?;
    }
    Ok(ordered)
}

/// Boots the guest and follows its console (kept in target/vm/console.log);
/// Ok when the guest says PASS.
fn boot(vmlinuz: &Path, initrd: &Path) -> anyhow::Result<()> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .args(["-display", "none", "-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let console = BufReader::new(child.stdout.take().expect("piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in console.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let log_path = workspace_root().join("target/vm/console.log");
    let mut log = fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut verdict = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                println!("guest: {line}");
                writeln!(log, "{line}")?;
                if line.contains("VM-TEST: PASS") {
                    verdict = Some(true);
                } else if line.contains("VM-TEST: FAIL") || line.contains("Kernel panic") {
                    verdict = Some(false);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            bail!("the guest did not finish within {} minutes ({})", TIME_LIMIT.as_secs() / 60, log_path.display());
        }
    }
    let _ = child.wait();
    match verdict {
        Some(true) => Ok(()),
        Some(false) => bail!("tests failed in the guest ({})", log_path.display()),
        None => bail!("the guest stopped without a verdict ({})", log_path.display()),
    }
}
