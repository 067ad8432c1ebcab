//! The test harness: network namespaces as nodes and pods, the agent as a
//! process inside a node, and clients that run inside a pod's namespace.
//! Used by the integration tests and by `cargo xtask demo`.

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod client;
pub mod dns;
pub mod kmock;
pub mod kubia;
pub mod netns;
pub mod tls;
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

/// A scratch directory under the system's temporary one, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `hint` starts its name (see [`netns::unique_name`]).
    pub fn new(hint: &str) -> Self {
        let dir = std::env::temp_dir().join(netns::unique_name(hint));
        std::fs::create_dir_all(&dir).expect("a scratch directory under the temporary one");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pseudo-random bytes bulk transfers carry (xorshift64): the
/// receiver's [`Digest`] of them proves every byte arrived, in order.
pub struct BulkStream(u64);

impl Default for BulkStream {
    fn default() -> Self {
        Self(0x9e37_79b9_7f4a_7c15)
    }
}

impl BulkStream {
    /// Fills `chunk` with the stream's next bytes.
    pub fn fill(&mut self, chunk: &mut [u8]) {
        for word in chunk.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_ne_bytes()[..word.len()]);
        }
    }
}

/// A running FNV-1a digest and length of a byte stream: what a bulk
/// transfer's receiver reports and its sender checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    value: u64,
    len: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self { value: 0xcbf2_9ce4_8422_2325, len: 0 }
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.value = (self.value ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.len += bytes.len() as u64;
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
