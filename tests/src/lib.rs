//! The test harness: network namespaces as nodes and pods, the agent as a
//! process inside a node, and clients that run inside a pod's namespace.
//! Used by the integration tests and by `cargo xtask demo`.

pub mod agent;
pub mod client;
pub mod kubia;
pub mod netns;
pub mod topology;
pub mod xdp_const;

use std::path::PathBuf;

/// Fails the calling test loudly when not root: namespaces, XDP and
/// BPF_PROG_TEST_RUN all need it, and a skipped test must not pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (network namespaces, XDP): run `sudo -E cargo xtask test`");
}

/// A binary of this workspace: `$ENV_VAR`, else target/release/NAME.
pub fn workspace_binary(env_var: &str, name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release").join(name));
    anyhow::ensure!(path.is_file(), "{} not found: build it with `cargo xtask build` or set {env_var}", path.display());
    Ok(path)
}
