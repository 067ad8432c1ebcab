//! Linker flags for the eBPF object.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // bpf-linker asks LLVM to expand only memcpy itself and leave memset and
    // memmove to calls into aya-ebpf's byte-at-a-time loops (BPF functions
    // of their own, one byte per iteration). Expanded as stores instead, a
    // zeroed struct or copied address costs a few instructions.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
