//! The packet logic of the datapath, kept free of BPF helpers so that every
//! piece has host unit tests. `main.rs` holds the entry points and `maps.rs`
//! the maps; entry points only dispatch into these modules:
//! `packet` (parse, checksums, NAT rewrites) -> `decide` (conntrack, frontend,
//! backend selection) -> `answer` (replies the datapath writes itself) or
//! `forward` (where a rewritten packet goes next).
#![cfg_attr(not(any(test, feature = "packet-builder")), no_std)]

pub mod answer;
pub mod decide;
pub mod forward;
pub mod packet;

#[cfg(any(test, feature = "packet-builder"))]
pub mod packet_builder;
