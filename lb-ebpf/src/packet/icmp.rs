//! ICMP and ICMPv6 errors about a packet of a translated flow
//! (fragmentation needed or packet too big, port unreachable, time
//! exceeded): the quoted packet, an IP header and the first 8 bytes of its
//! TCP or UDP header, is what the datapath made of the sender's packet, so
//! the sender could not match the error to its socket. It is translated
//! back here, with the error's checksum updated in software (an ICMP
//! checksum is never offloaded), and with it the inner IPv4 checksum and
//! the quoted UDP checksum, which the 8 quoted bytes hold (a TCP checksum
//! lies beyond them, and no receiver checks a quoted one).

use super::{
    ETH_P_IP, IPPROTO_ICMP, IPPROTO_ICMPV6, checksum,
    family::{Family, V4, V6},
    nat::Side,
    parse::{IP_OFFSET, L4_OFFSET, UDP_CHECK},
    read, write,
};
use lb_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP};

/// ICMP message types and codes.
pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACH: u8 = 3;
pub const PORT_UNREACH: u8 = 3;
pub const FRAG_NEEDED: u8 = 4;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 message types and codes (RFC 4443).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PORT_UNREACH: u8 = 4;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// The checksum's offset inside the ICMP (ICMPv6) header.
const ICMP_CHECK: usize = 2;
/// The ICMP header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;

/// Where an error's parts lie in each family.
pub trait Errors: Family {
    /// How far the quoted packet's IP header lies behind the error's own:
    /// `offset + QUOTE_SHIFT` is a field of the quoted packet at `offset`.
    const QUOTE_SHIFT: usize = Self::L4 + ICMP_HEADER_LEN - IP_OFFSET;
    /// What the translation reads and writes: up to the 8 quoted L4 bytes.
    const ERROR_HEADERS_LEN: usize = Self::L4 + Self::QUOTE_SHIFT + 8;
    /// ICMPv6's checksum covers a pseudo-header of the error's own
    /// addresses; ICMP's does not.
    const PSEUDO_HEADER: bool;

    /// Is the frame an error of this family with plain IP headers, outside
    /// and inside (no IPv4 options or fragments, no IPv6 extension headers)?
    ///
    /// # Safety
    /// `[data, data + ERROR_HEADERS_LEN)` must be frame bytes.
    unsafe fn is_plain_error(data: usize) -> bool;
}

impl Errors for V4 {
    const PSEUDO_HEADER: bool = false;

    #[inline(always)]
    unsafe fn is_plain_error(data: usize) -> bool {
        let inner = data + Self::QUOTE_SHIFT + IP_OFFSET;
        // SAFETY: every read is below ERROR_HEADERS_LEN, as the caller promises.
        unsafe {
            let ether_type = u16::from_be(read(data + 12));
            let outer_vihl: u8 = read(data + IP_OFFSET);
            let outer_frags = u16::from_be(read(data + IP_OFFSET + 6));
            let outer_proto: u8 = read(data + V4::PROTO);
            let icmp_type: u8 = read(data + L4_OFFSET);
            let inner_vihl: u8 = read(inner);
            let inner_frag_offset = u16::from_be(read(inner + 6)) & 0x1fff;
            let is_error = matches!(icmp_type, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM);
            let plain_outer = ether_type == ETH_P_IP && outer_vihl == 0x45 && outer_frags & 0x3fff == 0;
            let plain_inner = inner_vihl == 0x45 && inner_frag_offset == 0;
            plain_outer && outer_proto == IPPROTO_ICMP && is_error && plain_inner
        }
    }
}

impl Errors for V6 {
    const PSEUDO_HEADER: bool = true;

    #[inline(always)]
    unsafe fn is_plain_error(data: usize) -> bool {
        let inner = data + Self::QUOTE_SHIFT + IP_OFFSET;
        // SAFETY: every read is below ERROR_HEADERS_LEN, as the caller promises.
        unsafe {
            let ether_type = u16::from_be(read(data + 12));
            let outer_version: u8 = read(data + IP_OFFSET);
            let outer_next: u8 = read(data + V6::PROTO);
            let icmp_type: u8 = read(data + V6::L4);
            let inner_version: u8 = read(inner);
            let is_error = matches!(
                icmp_type,
                ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAMETER_PROBLEM
            );
            let plain = ether_type == V6::ETHER_TYPE && outer_version >> 4 == 6 && inner_version >> 4 == 6;
            plain && outer_next == IPPROTO_ICMPV6 && is_error
        }
    }
}

/// The flow of the packet an ICMP error in `[data, data_end)` quotes, as
/// the packet carried it; None if the frame is no such error, or quotes no
/// TCP or UDP header (see `Errors::is_plain_error`).
#[inline(always)]
pub fn quoted_flow<F: Errors>(data: usize, data_end: usize) -> Option<CtKey<F::Addr>> {
    if data + F::ERROR_HEADERS_LEN > data_end {
        return None;
    }
    // SAFETY: every read is below ERROR_HEADERS_LEN (checked above).
    unsafe {
        let proto: u8 = read(data + F::PROTO + F::QUOTE_SHIFT);
        (F::is_plain_error(data) && matches!(proto, IPPROTO_TCP | IPPROTO_UDP)).then(|| CtKey {
            saddr: read(data + F::SADDR + F::QUOTE_SHIFT),
            daddr: read(data + F::DADDR + F::QUOTE_SHIFT),
            sport: read(data + F::L4 + F::QUOTE_SHIFT),
            dport: read(data + F::L4 + 2 + F::QUOTE_SHIFT),
            proto,
            _pad: 0,
            _pad2: 0,
        })
    }
}

/// Rewrites `side` of the quoted packet to `addr:port` (network byte
/// order). When the quoted source changes and the error was addressed to
/// it, the error is readdressed to the new source: the sender of the
/// packet as it was before translation.
///
/// # Safety
/// `[data, data + ERROR_HEADERS_LEN)` must be a writable frame that
/// `quoted_flow` accepted.
#[inline(always)]
pub unsafe fn rewrite_quoted<F: Errors>(data: usize, side: Side, addr: F::Addr, port: u16) {
    let (addr_off, port_off) = side.offsets::<F>();
    let (addr_off, port_off) = (addr_off + F::QUOTE_SHIFT, port_off + F::QUOTE_SHIFT);
    let icmp_check_off = F::L4 + ICMP_CHECK;
    // SAFETY: every offset is below ERROR_HEADERS_LEN.
    unsafe {
        let old_addr: F::Addr = read(data + addr_off);
        let old_port: u16 = read(data + port_off);
        // The error's checksum covers the quoted packet; every changed field
        // sits at an even offset from the ICMP header.
        let mut icmp_check = checksum::update(read(data + icmp_check_off), old_addr, addr, old_port, port);
        if let Some(ip_check_off) = F::IP_CHECK {
            let inner_check: u16 = read(data + ip_check_off + F::QUOTE_SHIFT);
            let new_inner_check = checksum::update(inner_check, old_addr, addr, 0, 0);
            icmp_check = checksum::update_word(icmp_check, inner_check, new_inner_check);
            write(data + ip_check_off + F::QUOTE_SHIFT, new_inner_check);
        }
        let udp_check_off = F::L4 + UDP_CHECK + F::QUOTE_SHIFT;
        if read::<u8>(data + F::PROTO + F::QUOTE_SHIFT) == IPPROTO_UDP {
            let udp_check: u16 = read(data + udp_check_off);
            let new_udp_check = checksum::update_udp(udp_check, old_addr, addr, old_port, port);
            icmp_check = checksum::update_word(icmp_check, udp_check, new_udp_check);
            write(data + udp_check_off, new_udp_check);
        }
        write(data + addr_off, addr);
        write(data + port_off, port);
        let outer_daddr: F::Addr = read(data + F::DADDR);
        if side == Side::Src && outer_daddr == old_addr {
            if let Some(ip_check_off) = F::IP_CHECK {
                let outer_check: u16 = read(data + ip_check_off);
                write(data + ip_check_off, checksum::update(outer_check, old_addr, addr, 0, 0));
            }
            if F::PSEUDO_HEADER {
                icmp_check = checksum::update(icmp_check, old_addr, addr, 0, 0);
            }
            write(data + F::DADDR, addr);
        }
        write(data + icmp_check_off, icmp_check);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::packet_builder::{PacketBuilder, icmp_error};
    use lb_common::wire;

    /// The addresses of one family's tests, and how the maps hold them.
    trait Addresses: Errors {
        const CLIENT: IpAddr;
        const VIP: IpAddr;
        const POD: IpAddr;
        const NODE: IpAddr;
        const ROUTER: IpAddr;
        /// Destination unreachable, time exceeded, and IPv6's packet too big.
        const ERRORS: &[u8];
        fn wire(ip: IpAddr) -> Self::Addr;
    }

    impl Addresses for V4 {
        const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 3));
        const VIP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10));
        const POD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, 7));
        const NODE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        const ROUTER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        const ERRORS: &[u8] = &[DEST_UNREACH, TIME_EXCEEDED];
        fn wire(ip: IpAddr) -> u32 {
            let IpAddr::V4(ip) = ip else { unreachable!() };
            wire::addr(ip.octets())
        }
    }

    impl Addresses for V6 {
        const CLIENT: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 3));
        const VIP: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10));
        const POD: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 7));
        const NODE: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        const ROUTER: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));
        const ERRORS: &[u8] = &[ICMPV6_DEST_UNREACH, ICMPV6_TIME_EXCEEDED, ICMPV6_PACKET_TOO_BIG];
        fn wire(ip: IpAddr) -> lb_common::Ipv6Wire {
            let IpAddr::V6(ip) = ip else { unreachable!() };
            wire::addr6(ip.octets())
        }
    }

    /// The node could not forward the client's packet as translated: the
    /// error goes to the client, about the packet it sent.
    fn an_error_about_a_translated_packet<F: Addresses>() {
        for &kind in F::ERRORS {
            let translated = PacketBuilder::new(IPPROTO_TCP, F::CLIENT, 40000, F::POD, 8080).build();
            let mut frame = icmp_error(kind, 4, F::NODE, F::CLIENT, &translated);
            let data = frame.as_mut_ptr() as usize;
            let quoted = quoted_flow::<F>(data, data + frame.len()).unwrap();
            assert_eq!((quoted.saddr, quoted.daddr, quoted.proto), (F::wire(F::CLIENT), F::wire(F::POD), IPPROTO_TCP));
            assert_eq!((u16::from_be(quoted.sport), u16::from_be(quoted.dport)), (40000, 8080));
            unsafe { rewrite_quoted::<F>(data, Side::Dst, F::wire(F::VIP), 80u16.to_be()) };
            let sent = PacketBuilder::new(IPPROTO_TCP, F::CLIENT, 40000, F::VIP, 80).build();
            assert_eq!(
                frame,
                icmp_error(kind, 4, F::NODE, F::CLIENT, &sent),
                "type {kind}: the error about the sent packet"
            );
        }
    }

    /// A router beyond the node cannot forward what the node sent on as
    /// NODE:61000 -> POD: the client must get it, about client -> VIP (for
    /// IPv6 the error's checksum covers its new destination too).
    fn an_error_to_a_snat_source<F: Addresses>() {
        let translated = PacketBuilder::new(IPPROTO_UDP, F::NODE, 61000, F::POD, 5353).build();
        let mut frame = icmp_error(F::ERRORS[1], 0, F::ROUTER, F::NODE, &translated);
        let data = frame.as_mut_ptr() as usize;
        unsafe {
            rewrite_quoted::<F>(data, Side::Dst, F::wire(F::VIP), 53u16.to_be());
            rewrite_quoted::<F>(data, Side::Src, F::wire(F::CLIENT), 40000u16.to_be());
        }
        let sent = PacketBuilder::new(IPPROTO_UDP, F::CLIENT, 40000, F::VIP, 53).build();
        assert_eq!(frame, icmp_error(F::ERRORS[1], 0, F::ROUTER, F::CLIENT, &sent));
    }

    fn only_errors_quoting_tcp_or_udp_headers<F: Addresses>(later_fragment: Option<Vec<u8>>) {
        let quoted = PacketBuilder::new(IPPROTO_TCP, F::CLIENT, 1, F::POD, 2).build();
        let echo_reply =
            icmp_error(if F::PSEUDO_HEADER { ICMPV6_ECHO_REPLY } else { ECHO_REPLY }, 0, F::NODE, F::CLIENT, &quoted);
        let cut = icmp_error(F::ERRORS[0], 0, F::NODE, F::CLIENT, &quoted)[..F::ERROR_HEADERS_LEN - 1].to_vec();
        let mut cases = vec![("an echo reply", echo_reply), ("cut short", cut)];
        cases.extend(
            later_fragment.map(|q| ("a later fragment quoted", icmp_error(F::ERRORS[0], 0, F::NODE, F::CLIENT, &q))),
        );
        for (what, frame) in cases {
            let data = frame.as_ptr() as usize;
            assert_eq!(quoted_flow::<F>(data, data + frame.len()), None, "{what}");
        }
    }

    #[test]
    fn an_error_about_a_translated_packet_is_turned_into_one_about_the_sent_packet() {
        an_error_about_a_translated_packet::<V4>();
        an_error_about_a_translated_packet::<V6>();
    }

    #[test]
    fn an_error_to_a_snat_source_goes_to_the_client_instead() {
        an_error_to_a_snat_source::<V4>();
        an_error_to_a_snat_source::<V6>();
    }

    #[test]
    fn only_errors_quoting_tcp_or_udp_headers_are_taken() {
        let mut later_fragment = PacketBuilder::new(IPPROTO_TCP, V4::CLIENT, 1, V4::POD, 2).build();
        later_fragment[IP_OFFSET + 6..IP_OFFSET + 8].copy_from_slice(&185u16.to_be_bytes());
        only_errors_quoting_tcp_or_udp_headers::<V4>(Some(later_fragment));
        // An IPv6 packet with a fragment header quotes no ports where they
        // would be.
        let fragment = PacketBuilder::new(IPPROTO_TCP, V6::CLIENT, 1, V6::POD, 2).extension_header(44).build();
        only_errors_quoting_tcp_or_udp_headers::<V6>(Some(fragment));
    }
}
