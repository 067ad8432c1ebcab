//! Everything that touches aya: loading and attaching the programs, and the
//! typed handles on the pinned maps.

pub mod loader;
pub mod maps;
