//! Everything that touches the kernel's datapath: loading and attaching the
//! programs (aya), the typed handles on the pinned maps, the node's
//! interfaces they attach to, the cgroup the socket hooks attach to, and the
//! programs' decision replayed over the pinned maps (`explain`).

mod apply;
pub mod interfaces;
pub mod loader;
pub mod maps;
mod mounts;
pub mod replay;
pub mod sockets;
