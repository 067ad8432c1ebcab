//! What differs between IPv4 and IPv6 packets, as constants of a type, so
//! that parsing results, rewrites and the decision are written once and
//! compiled per family.

use lb_common::{Addr, Ipv6Wire};
use network_types::ip::Ipv6Hdr;

use super::{
    ETH_P_IP, ETH_P_IPV6, checksum,
    parse::{IP_CHECK, IP_DADDR, IP_OFFSET, IP_SADDR, L4_OFFSET},
};

pub trait Family: Copy + core::fmt::Debug + PartialEq + 'static {
    /// An address as the maps hold it.
    type Addr: Addr + checksum::Summed;
    const ETHER_TYPE: u16;
    /// Offsets from the start of the frame (options and extension headers
    /// are never parsed past, so these are fixed).
    const SADDR: usize;
    const DADDR: usize;
    const L4: usize;
    /// The protocol (IPv6: next header) byte.
    const PROTO: usize;
    /// IPv4's header checksum covers the addresses; IPv6 has none.
    const IP_CHECK: Option<usize>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    const ETHER_TYPE: u16 = ETH_P_IP;
    const SADDR: usize = IP_OFFSET + IP_SADDR;
    const DADDR: usize = IP_OFFSET + IP_DADDR;
    const L4: usize = L4_OFFSET;
    const PROTO: usize = IP_OFFSET + 9;
    const IP_CHECK: Option<usize> = Some(IP_OFFSET + IP_CHECK);
}

impl Family for V6 {
    type Addr = Ipv6Wire;
    const ETHER_TYPE: u16 = ETH_P_IPV6;
    const SADDR: usize = IP_OFFSET + 8;
    const DADDR: usize = IP_OFFSET + 24;
    const L4: usize = IP_OFFSET + core::mem::size_of::<Ipv6Hdr>();
    const PROTO: usize = IP_OFFSET + 6;
    const IP_CHECK: Option<usize> = None;
}
