//! ICMP errors about a packet of a translated flow (fragmentation needed,
//! port unreachable, time exceeded): the quoted packet, an IPv4 header and
//! the first 8 bytes of its TCP or UDP header, is what the datapath made of
//! the sender's packet, so the sender could not match the error to its
//! socket. It is translated back here, with the inner IPv4 checksum and the
//! ICMP checksum updated in software (an ICMP checksum is never offloaded),
//! and the quoted UDP checksum, which the 8 quoted bytes hold (a TCP
//! checksum lies beyond them, and no receiver checks a quoted one).

use super::{
    ETH_P_IP, IPPROTO_ICMP, checksum,
    nat::Side,
    parse::{IP_CHECK, IP_DADDR, IP_OFFSET, IP_SADDR, L4_DPORT, L4_OFFSET, L4_SPORT},
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
/// The ICMP checksum's offset inside the ICMP header.
const ICMP_CHECK: usize = 2;
/// The quoted IPv4 header, after the 8-byte ICMP header.
const INNER_IP: usize = L4_OFFSET + 8;
const INNER_L4: usize = INNER_IP + 20;
/// The quoted UDP header's checksum.
const INNER_UDP_CHECK: usize = INNER_L4 + 6;
/// What the translation reads and writes: the 8 quoted L4 bytes.
pub const ERROR_HEADERS_LEN: usize = INNER_L4 + 8;

/// The flow of the packet an ICMP error in `[data, data_end)` quotes, as
/// the packet carried it; None if the frame is no such error (or has IP
/// options, outside or inside, or quotes a later fragment).
#[inline(always)]
pub fn quoted_flow(data: usize, data_end: usize) -> Option<CtKey> {
    if data + ERROR_HEADERS_LEN > data_end {
        return None;
    }
    // SAFETY: every read is below ERROR_HEADERS_LEN (checked above).
    unsafe {
        let ether_type = u16::from_be(read(data + 12));
        let outer_vihl: u8 = read(data + IP_OFFSET);
        let outer_frags = u16::from_be(read(data + IP_OFFSET + 6));
        let outer_proto: u8 = read(data + IP_OFFSET + 9);
        let icmp_type: u8 = read(data + L4_OFFSET);
        let inner_vihl: u8 = read(data + INNER_IP);
        let inner_frag_offset = u16::from_be(read(data + INNER_IP + 6)) & 0x1fff;
        let proto: u8 = read(data + INNER_IP + 9);
        let is_error = matches!(icmp_type, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM);
        let quotes_ports = inner_vihl == 0x45 && inner_frag_offset == 0 && matches!(proto, IPPROTO_TCP | IPPROTO_UDP);
        let plain_outer = ether_type == ETH_P_IP && outer_vihl == 0x45 && outer_frags & 0x3fff == 0;
        (plain_outer && outer_proto == IPPROTO_ICMP && is_error && quotes_ports).then(|| CtKey {
            saddr: read(data + INNER_IP + IP_SADDR),
            daddr: read(data + INNER_IP + IP_DADDR),
            sport: read(data + INNER_L4 + L4_SPORT),
            dport: read(data + INNER_L4 + L4_DPORT),
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
pub unsafe fn rewrite_quoted(data: usize, side: Side, addr: u32, port: u16) {
    let (addr_off, port_off) = match side {
        Side::Dst => (INNER_IP + IP_DADDR, INNER_L4 + L4_DPORT),
        Side::Src => (INNER_IP + IP_SADDR, INNER_L4 + L4_SPORT),
    };
    // SAFETY: every offset is below ERROR_HEADERS_LEN.
    unsafe {
        let old_addr: u32 = read(data + addr_off);
        let old_port: u16 = read(data + port_off);
        let inner_check: u16 = read(data + INNER_IP + IP_CHECK);
        let new_inner_check = checksum::update(inner_check, old_addr, addr, 0, 0);
        // The ICMP checksum covers the quoted header, its checksum included;
        // every changed field sits at an even offset from the ICMP header.
        let icmp_check: u16 = read(data + L4_OFFSET + ICMP_CHECK);
        let mut icmp_check = checksum::update(icmp_check, old_addr, addr, old_port, port);
        icmp_check = checksum::update_word(icmp_check, inner_check, new_inner_check);
        if read::<u8>(data + INNER_IP + 9) == IPPROTO_UDP {
            let udp_check: u16 = read(data + INNER_UDP_CHECK);
            let new_udp_check = checksum::update_udp(udp_check, old_addr, addr, old_port, port);
            icmp_check = checksum::update_word(icmp_check, udp_check, new_udp_check);
            write(data + INNER_UDP_CHECK, new_udp_check);
        }
        write(data + L4_OFFSET + ICMP_CHECK, icmp_check);
        write(data + INNER_IP + IP_CHECK, new_inner_check);
        write(data + addr_off, addr);
        write(data + port_off, port);
        let outer_daddr: u32 = read(data + IP_OFFSET + IP_DADDR);
        if side == Side::Src && outer_daddr == old_addr {
            let outer_check: u16 = read(data + IP_OFFSET + IP_CHECK);
            write(data + IP_OFFSET + IP_CHECK, checksum::update(outer_check, old_addr, addr, 0, 0));
            write(data + IP_OFFSET + IP_DADDR, addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet_builder::{PacketBuilder, icmp_error};

    const CLIENT: [u8; 4] = [10, 244, 0, 3];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const POD: [u8; 4] = [10, 244, 1, 7];
    const NODE: [u8; 4] = [198, 51, 100, 1];

    fn error(icmp_type: u8, from: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        icmp_error(icmp_type, 4, from, to, quoted)
    }

    fn addr(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn an_error_about_a_translated_packet_is_turned_into_one_about_the_sent_packet() {
        // The node could not forward the client's packet as translated.
        let translated = PacketBuilder::new(IPPROTO_TCP, CLIENT, 40000, POD, 8080).build();
        let mut frame = error(DEST_UNREACH, NODE, CLIENT, &translated);
        let data = frame.as_mut_ptr() as usize;
        let quoted = quoted_flow(data, data + frame.len()).unwrap();
        assert_eq!((quoted.saddr, quoted.daddr, quoted.proto), (addr(CLIENT), addr(POD), IPPROTO_TCP));
        assert_eq!((u16::from_be(quoted.sport), u16::from_be(quoted.dport)), (40000, 8080));
        unsafe { rewrite_quoted(data, Side::Dst, addr(VIP), 80u16.to_be()) };
        let sent = PacketBuilder::new(IPPROTO_TCP, CLIENT, 40000, VIP, 80).build();
        assert_eq!(frame, error(DEST_UNREACH, NODE, CLIENT, &sent), "exactly the error about the sent packet");
    }

    #[test]
    fn an_error_to_a_snat_source_goes_to_the_client_instead() {
        // A router beyond the node cannot forward what the node sent on as
        // NODE:61000 -> POD: the client must get it, about client -> VIP.
        let translated = PacketBuilder::new(IPPROTO_UDP, NODE, 61000, POD, 5353).build();
        let mut frame = error(TIME_EXCEEDED, [192, 0, 2, 1], NODE, &translated);
        let data = frame.as_mut_ptr() as usize;
        unsafe {
            rewrite_quoted(data, Side::Dst, addr(VIP), 53u16.to_be());
            rewrite_quoted(data, Side::Src, addr(CLIENT), 40000u16.to_be());
        }
        let sent = PacketBuilder::new(IPPROTO_UDP, CLIENT, 40000, VIP, 53).build();
        assert_eq!(frame, error(TIME_EXCEEDED, [192, 0, 2, 1], CLIENT, &sent));
    }

    #[test]
    fn only_errors_quoting_tcp_or_udp_headers_are_taken() {
        let quoted = PacketBuilder::new(IPPROTO_TCP, CLIENT, 1, POD, 2).build();
        let echo_reply = error(0, NODE, CLIENT, &quoted);
        let mut later_fragment = quoted.clone();
        later_fragment[IP_OFFSET + 6..IP_OFFSET + 8].copy_from_slice(&185u16.to_be_bytes());
        let cases = [
            ("an echo reply", echo_reply),
            ("a later fragment quoted", error(DEST_UNREACH, NODE, CLIENT, &later_fragment)),
            ("cut short", error(DEST_UNREACH, NODE, CLIENT, &quoted)[..ERROR_HEADERS_LEN - 1].to_vec()),
        ];
        for (what, frame) in cases {
            let data = frame.as_ptr() as usize;
            assert_eq!(quoted_flow(data, data + frame.len()), None, "{what}");
        }
    }
}
