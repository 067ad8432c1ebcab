//! Builds the eBPF object (lb-ebpf) with aya-build so that the agent can
//! embed it. Without bpf-linker (a plain `cargo check` or clippy on a fresh
//! machine) an empty object is embedded instead and the agent refuses to
//! start with a message saying how to build it properly.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../lb-ebpf");
    println!("cargo:rerun-if-changed={}", manifest_dir.join("../lb-common").display());
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let linker = bpf_linker_on_path();
    let Some(linker) = linker.filter(|_| env::var_os("AYA_BUILD_SKIP").is_none()) else {
        println!(
            "cargo:warning=bpf-linker not found or AYA_BUILD_SKIP set: embedding no eBPF object (run `cargo xtask build`)"
        );
        // A path that never exists makes cargo rerun this script on every
        // build, so the real object is built as soon as bpf-linker is there.
        println!("cargo:rerun-if-changed={}", out_dir.join("bpf-linker-missing").display());
        fs::write(out_dir.join("lb-datapath"), [])?;
        return Ok(());
    };
    // A new bpf-linker (built for another LLVM) rebuilds the object.
    println!("cargo:rerun-if-changed={}", linker.display());
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-utf8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn bpf_linker_on_path() -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths).map(|dir| dir.join("bpf-linker")).find(|path| path.is_file())
}
