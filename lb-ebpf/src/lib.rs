//! The packet logic of the datapath, kept free of BPF helpers so that every
//! piece has host unit tests. `main.rs` holds the maps and the entry points,
//! which only dispatch into these modules.
#![cfg_attr(not(any(test, feature = "packet-builder")), no_std)]

pub mod checksum;
pub mod conntrack;
pub mod forward;
pub mod lb;
pub mod nat;
pub mod parse;
pub mod reply;

#[cfg(any(test, feature = "packet-builder"))]
pub mod packet_builder;
