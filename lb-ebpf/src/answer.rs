//! Answers the datapath gives itself, written in place over the packet that
//! asked: a TCP reset or an ICMP port unreachable when a Service has no
//! endpoint (the client sees "connection refused" at once, as with
//! kube-proxy's REJECT rules), and echo replies for Service addresses.
//! The entry point hands the answer to the kernel's routing, which sends it
//! back to the client like any forwarded packet: the Ethernet header stays
//! as it came, addressed to this interface, or the kernel would discard the
//! answer as meant for another host.

use core::mem::size_of;

use crate::packet::{
    ETH_P_IP, IPPROTO_ICMP, checksum, icmp,
    parse::{IP_OFFSET, L4_OFFSET, Packet, TCP_HEADER_LEN},
    read, tcp, write,
};
use lb_common::IPPROTO_TCP;
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

const REPLY_TTL: u8 = 64;

/// A reset is the Ethernet, IPv4 and TCP headers, nothing more.
pub const RST_FRAME_LEN: usize = L4_OFFSET + TCP_HEADER_LEN;
/// An ICMP error puts a new IPv4 and ICMP header in front of the offending
/// packet's IPv4 header...
pub const ICMP_ERROR_GROWTH: usize = size_of::<Ipv4Hdr>() + size_of::<Icmpv4Hdr>();
/// ...and quotes that header plus the first 8 bytes after it (RFC 792).
pub const ICMP_ERROR_FRAME_LEN: usize = L4_OFFSET + ICMP_ERROR_GROWTH + 8;

/// An echo request's headers: Ethernet, IPv4 and ICMP.
pub const ECHO_HEADERS_LEN: usize = L4_OFFSET + size_of::<Icmpv4Hdr>();

/// The reset answering a TCP segment, or `None` for a reset (never answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    seq: u32,
    ack_seq: u32,
    flags: u8,
}

/// What RFC 793 says to answer `pkt` with when nothing listens: with ACK set,
/// a reset at the acknowledged sequence; without, a reset acknowledging the
/// whole segment.
///
/// # Safety
/// `pkt` must be a TCP packet from `parse` whose whole IP packet is in the frame.
#[inline(always)]
pub unsafe fn reset_for(pkt: &Packet, tot_len: u16) -> Option<Reset> {
    // Checked again: the 6.1 verifier can lose which header length the
    // parse checked (and `write_reset` writes as far).
    if pkt.data + RST_FRAME_LEN > pkt.end {
        return None;
    }
    // SAFETY: offsets inside the TCP header (checked above).
    let (flags, seq, ack_seq, doff): (u8, u32, u32, u8) = unsafe {
        (
            pkt.read(L4_OFFSET + tcp::FLAGS),
            u32::from_be(pkt.read(L4_OFFSET + tcp::SEQ)),
            u32::from_be(pkt.read(L4_OFFSET + tcp::ACK_SEQ)),
            pkt.read::<u8>(L4_OFFSET + 12) >> 4,
        )
    };
    if flags & tcp::RST != 0 {
        return None;
    }
    if flags & tcp::ACK != 0 {
        return Some(Reset { seq: ack_seq, ack_seq: 0, flags: tcp::RST });
    }
    let payload = u32::from(tot_len).saturating_sub(20 + u32::from(doff) * 4);
    let len = payload + u32::from(flags & tcp::SYN != 0) + u32::from(flags & tcp::FIN != 0);
    Some(Reset { seq: 0, ack_seq: seq.wrapping_add(len), flags: tcp::RST | tcp::ACK })
}

/// How the L4 checksum of an answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// The whole checksum: a frame from a wire (XDP), or a socket buffer
    /// whose checksum is complete.
    Full,
    /// Only the pseudo-header sum: a socket buffer whose checksum the
    /// kernel or the NIC completes later (CHECKSUM_PARTIAL) over the L4
    /// bytes and this seed.
    Deferred,
}

/// Rewrites the first `RST_FRAME_LEN` bytes of the frame into `reset`, sent
/// back from where `pkt` went. The caller trims the frame to that length.
///
/// # Safety
/// As for [`reset_for`], on a writable frame.
#[inline(always)]
pub unsafe fn write_reset(pkt: &Packet, reset: Reset, l4_checksum: L4Checksum) {
    // SAFETY: every write is inside the 54 bytes `parse` checked.
    unsafe {
        let ports: u32 = pkt.read(L4_OFFSET);
        pkt.write(L4_OFFSET, ports.rotate_left(16));
        pkt.write(L4_OFFSET + tcp::SEQ, reset.seq.to_be());
        pkt.write(L4_OFFSET + tcp::ACK_SEQ, reset.ack_seq.to_be());
        pkt.write(L4_OFFSET + 12, 0x50u8); // 20-byte header, no options
        pkt.write(L4_OFFSET + tcp::FLAGS, reset.flags);
        pkt.write(L4_OFFSET + 14, 0u32); // window, checksum
        pkt.write(L4_OFFSET + 18, 0u16); // urgent pointer
        swap_ip_addrs(pkt.data);
        let (saddr, daddr) = fill_ip_header(pkt.data, IPPROTO_TCP, TCP_HEADER_LEN as u16);
        let pseudo = pseudo_header_sum(TCP_HEADER_LEN, saddr, daddr, IPPROTO_TCP);
        let check = match l4_checksum {
            L4Checksum::Full => checksum(pkt.data + L4_OFFSET, TCP_HEADER_LEN, pseudo),
            L4Checksum::Deferred => !checksum(pkt.data, 0, pseudo),
        };
        pkt.write(L4_OFFSET + tcp::CHECK, check);
    }
}

/// What an ICMP destination unreachable tells the sender.
#[derive(Clone, Copy)]
pub enum Unreachable {
    Port,
    /// Fragmentation needed: the next hop's MTU.
    FragNeeded(u16),
}

/// Turns a frame whose head was just grown by `ICMP_ERROR_GROWTH` bytes into
/// an ICMP destination unreachable for the packet that now starts at
/// `data + ICMP_ERROR_GROWTH`. The caller trims it to `ICMP_ERROR_FRAME_LEN`.
///
/// # Safety
/// `[data, data + ICMP_ERROR_FRAME_LEN)` must be writable frame bytes, the
/// original packet an IPv4 packet without options.
#[inline(always)]
pub unsafe fn write_unreachable(data: usize, what: Unreachable) {
    let original = data + ICMP_ERROR_GROWTH;
    // SAFETY: all offsets lie below ICMP_ERROR_FRAME_LEN.
    unsafe {
        // The Ethernet header as it came (see the module comment).
        let eth: [u8; 14] = read(original);
        write(data, eth);
        // New IP header from the VIP the client asked, to the client.
        let asked_saddr: [u8; 4] = read(original + IP_OFFSET + 12);
        let asked_daddr: [u8; 4] = read(original + IP_OFFSET + 16);
        write(data + IP_OFFSET, 0x45u8);
        write(data + IP_OFFSET + 1, 0u8);
        write(data + IP_OFFSET + 12, asked_daddr);
        write(data + IP_OFFSET + 16, asked_saddr);
        let icmp_len = (ICMP_ERROR_FRAME_LEN - L4_OFFSET) as u16;
        fill_ip_header(data, IPPROTO_ICMP, icmp_len);
        let icmp = data + L4_OFFSET;
        let (code, mtu) = match what {
            Unreachable::Port => (icmp::PORT_UNREACH, 0u16),
            Unreachable::FragNeeded(mtu) => (icmp::FRAG_NEEDED, mtu),
        };
        let [mtu_hi, mtu_lo] = mtu.to_be_bytes();
        write(icmp, [icmp::DEST_UNREACH, code, 0, 0, 0, 0, mtu_hi, mtu_lo]);
        write(icmp + 2, checksum(icmp, icmp_len as usize, 0));
    }
}

/// Is this an ICMP echo request without IP options? Then its destination is
/// what a ping asks about.
#[inline(always)]
pub fn echo_request_to(data: usize, data_end: usize) -> Option<u32> {
    if data + ECHO_HEADERS_LEN > data_end {
        return None;
    }
    // SAFETY: bounds checked above.
    unsafe {
        let eth = &*(data as *const EthHdr);
        let ip = &*((data + IP_OFFSET) as *const Ipv4Hdr);
        let icmp_type: u8 = read(data + L4_OFFSET);
        let is_echo = eth.ether_type == ETH_P_IP.to_be()
            && ip.vihl == 0x45
            && ip.proto == IPPROTO_ICMP
            && u16::from_be_bytes(ip.frags) & 0x3fff == 0
            && icmp_type == icmp::ECHO_REQUEST;
        is_echo.then(|| u32::from_ne_bytes(ip.dst_addr))
    }
}

/// Turns an echo request (checked by `echo_request_to`) into its reply;
/// false if the frame is too short after all.
///
/// # Safety
/// The frame must be writable.
#[inline(always)]
pub unsafe fn write_echo_reply(data: usize, data_end: usize) -> bool {
    // The bounds are checked again here: the verifier has forgotten them
    // across the map lookup between `echo_request_to` and this call.
    if data + ECHO_HEADERS_LEN > data_end {
        return false;
    }
    // SAFETY: offsets inside the headers just checked.
    unsafe {
        swap_ip_addrs(data);
        let old_ttl_proto: u16 = read(data + IP_OFFSET + 8);
        write(data + IP_OFFSET + 8, REPLY_TTL);
        let new_ttl_proto: u16 = read(data + IP_OFFSET + 8);
        let ip_check: u16 = read(data + IP_OFFSET + 10);
        write(data + IP_OFFSET + 10, checksum::update(ip_check, 0, 0, old_ttl_proto, new_ttl_proto));
        // Type 8 -> 0: the rest of the message is echoed unchanged.
        let old_type_code: u16 = read(data + L4_OFFSET);
        write(data + L4_OFFSET, icmp::ECHO_REPLY);
        let new_type_code: u16 = read(data + L4_OFFSET);
        let icmp_check: u16 = read(data + L4_OFFSET + 2);
        write(data + L4_OFFSET + 2, checksum::update(icmp_check, 0, 0, old_type_code, new_type_code));
    }
    true
}

#[inline(always)]
unsafe fn swap_ip_addrs(data: usize) {
    unsafe {
        let saddr: u32 = read(data + IP_OFFSET + 12);
        let daddr: u32 = read(data + IP_OFFSET + 16);
        write(data + IP_OFFSET + 12, daddr);
        write(data + IP_OFFSET + 16, saddr);
    }
}

/// Fills in the rest of a fresh IPv4 header (addresses already in place)
/// for an answer carrying `l4_len` bytes; returns (saddr, daddr) as on the wire.
#[inline(always)]
unsafe fn fill_ip_header(data: usize, proto: u8, l4_len: u16) -> (u32, u32) {
    let ip = data + IP_OFFSET;
    unsafe {
        let (saddr, daddr): (u32, u32) = (read(ip + 12), read(ip + 16));
        write(ip + 2, (20 + l4_len).to_be());
        write(ip + 4, 0u32); // id, flags and fragment offset
        write(ip + 8, REPLY_TTL);
        write(ip + 9, proto);
        write(ip + 10, 0u16);
        write(ip + 10, checksum(ip, 20, 0));
        (saddr, daddr)
    }
}

/// The Internet checksum of `len` bytes at `at` (`len` even and fixed at
/// each call site, so the loop has a constant bound).
#[inline(always)]
unsafe fn checksum(at: usize, len: usize, initial: u32) -> u16 {
    let mut sum = initial;
    let mut i = 0;
    while i < len {
        sum += u32::from(unsafe { read::<u16>(at + i) });
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The unfolded sum of the IPv4 pseudo-header of an L4 segment of `len` bytes.
#[inline(always)]
fn pseudo_header_sum(len: usize, saddr: u32, daddr: u32, proto: u8) -> u32 {
    (saddr & 0xffff)
        + (saddr >> 16)
        + (daddr & 0xffff)
        + (daddr >> 16)
        + u32::from(u16::from_ne_bytes([0, proto]))
        + u32::from((len as u16).to_be())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        packet::{
            checksum::compute,
            parse::{Frame, parse},
        },
        packet_builder::{PacketBuilder, checksum_errors},
    };
    use lb_common::IPPROTO_UDP;

    const CLIENT: [u8; 4] = [10, 244, 0, 3];
    const VIP: [u8; 4] = [10, 96, 0, 10];

    fn reset_of(mut frame: Vec<u8>) -> Option<Vec<u8>> {
        let data = frame.as_mut_ptr() as usize;
        let pkt = parse(data, data + frame.len(), Frame::Linear).unwrap();
        let tot_len = u16::from_be_bytes([frame[16], frame[17]]);
        let reset = unsafe { reset_for(&pkt, tot_len) }?;
        unsafe { write_reset(&pkt, reset, L4Checksum::Full) };
        frame.truncate(RST_FRAME_LEN);
        Some(frame)
    }

    fn be32(bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes.try_into().unwrap())
    }

    fn be16(bytes: &[u8]) -> u16 {
        u16::from_be_bytes(bytes.try_into().unwrap())
    }

    #[test]
    fn a_syn_is_answered_by_a_reset_from_the_address_it_asked() {
        let syn = PacketBuilder::new(IPPROTO_TCP, CLIENT, 40000, VIP, 80).tcp_flags(tcp::SYN).payload(b"");
        let rst = reset_of(syn.build()).unwrap();
        assert_eq!(checksum_errors(&rst), None);
        assert_eq!((&rst[26..30], &rst[30..34]), (&VIP[..], &CLIENT[..]));
        assert_eq!(u16::from_be_bytes([rst[34], rst[35]]), 80);
        assert_eq!(u16::from_be_bytes([rst[36], rst[37]]), 40000);
        assert_eq!(rst[L4_OFFSET + tcp::FLAGS], tcp::RST | tcp::ACK);
        // The builder's sequence number is 1: a SYN occupies one.
        assert_eq!((be32(&rst[38..42]), be32(&rst[42..46])), (0, 2));
        assert_eq!(u16::from_be_bytes([rst[16], rst[17]]), 40);
        assert_eq!(&rst[0..14], &syn.build()[0..14], "the ethernet header stays for the kernel to route");
    }

    /// A socket buffer with CHECKSUM_PARTIAL is completed later by summing
    /// its L4 bytes, the field included: the seed must make that the full sum.
    #[test]
    fn a_deferred_reset_checksum_completes_to_the_full_one() {
        let syn = PacketBuilder::new(IPPROTO_TCP, CLIENT, 40000, VIP, 80).tcp_flags(tcp::SYN).build();
        let full = reset_of(syn.clone()).unwrap();
        let mut deferred = syn;
        let data = deferred.as_mut_ptr() as usize;
        let pkt = parse(data, data + deferred.len(), Frame::Linear).unwrap();
        let tot_len = u16::from_be_bytes([deferred[16], deferred[17]]);
        let reset = unsafe { reset_for(&pkt, tot_len) }.unwrap();
        unsafe { write_reset(&pkt, reset, L4Checksum::Deferred) };
        let check = L4_OFFSET + tcp::CHECK;
        assert_ne!(deferred[check..check + 2], full[check..check + 2]);
        let completed = compute(&deferred[L4_OFFSET..RST_FRAME_LEN], 0);
        deferred[check..check + 2].copy_from_slice(&completed.to_ne_bytes());
        assert_eq!(deferred[..RST_FRAME_LEN], full[..]);
    }

    #[test]
    fn a_segment_with_ack_gets_a_reset_at_the_acknowledged_sequence() {
        let mut seg = PacketBuilder::new(IPPROTO_TCP, CLIENT, 40000, VIP, 80).tcp_flags(tcp::ACK).build();
        seg[L4_OFFSET + tcp::ACK_SEQ..L4_OFFSET + tcp::ACK_SEQ + 4].copy_from_slice(&777u32.to_be_bytes());
        let rst = reset_of(seg).unwrap();
        assert_eq!(rst[L4_OFFSET + tcp::FLAGS], tcp::RST);
        assert_eq!(be32(&rst[38..42]), 777);
        assert_eq!(checksum_errors(&rst), None);
    }

    #[test]
    fn a_reset_is_never_answered() {
        assert_eq!(reset_of(PacketBuilder::new(IPPROTO_TCP, CLIENT, 1, VIP, 80).tcp_flags(tcp::RST).build()), None);
    }

    #[test]
    fn udp_gets_a_port_unreachable_quoting_its_headers() {
        let datagram = PacketBuilder::new(IPPROTO_UDP, CLIENT, 5000, VIP, 53).payload(b"question").build();
        let mut frame = vec![0u8; ICMP_ERROR_GROWTH];
        frame.extend_from_slice(&datagram);
        unsafe { write_unreachable(frame.as_mut_ptr() as usize, Unreachable::Port) };
        frame.truncate(ICMP_ERROR_FRAME_LEN);
        assert_eq!(checksum_errors(&frame), None, "ipv4 header");
        assert_eq!(frame[IP_OFFSET + 9], IPPROTO_ICMP);
        assert_eq!((&frame[26..30], &frame[30..34]), (&VIP[..], &CLIENT[..]));
        assert_eq!(&frame[L4_OFFSET..L4_OFFSET + 2], &[icmp::DEST_UNREACH, icmp::PORT_UNREACH]);
        assert_eq!(compute(&frame[L4_OFFSET..], 0), 0, "icmp checksum");
        assert_eq!(&frame[L4_OFFSET + 8..], &datagram[IP_OFFSET..IP_OFFSET + 28], "quotes ip header + 8 bytes");
        assert_eq!(&frame[0..14], &datagram[0..14]);
    }

    #[test]
    fn a_segment_too_big_gets_a_fragmentation_needed_with_the_mtu() {
        // A backend's reply to a client, before it is rewritten.
        let segment = PacketBuilder::new(IPPROTO_TCP, [10, 244, 0, 2], 8080, CLIENT, 40000).payload(&[7; 1448]).build();
        let mut frame = vec![0u8; ICMP_ERROR_GROWTH];
        frame.extend_from_slice(&segment);
        unsafe { write_unreachable(frame.as_mut_ptr() as usize, Unreachable::FragNeeded(1400)) };
        frame.truncate(ICMP_ERROR_FRAME_LEN);
        assert_eq!(checksum_errors(&frame), None, "ipv4 header");
        assert_eq!((&frame[26..30], &frame[30..34]), (&CLIENT[..], &[10, 244, 0, 2][..]), "back to the sender");
        assert_eq!(&frame[L4_OFFSET..L4_OFFSET + 2], &[icmp::DEST_UNREACH, icmp::FRAG_NEEDED]);
        assert_eq!(be16(&frame[L4_OFFSET + 6..L4_OFFSET + 8]), 1400, "next-hop mtu");
        assert_eq!(compute(&frame[L4_OFFSET..], 0), 0, "icmp checksum");
        assert_eq!(&frame[L4_OFFSET + 8..], &segment[IP_OFFSET..IP_OFFSET + 28], "quotes the packet as sent");
    }

    #[test]
    fn an_echo_request_to_a_vip_is_answered() {
        let mut ping = PacketBuilder::new(IPPROTO_ICMP, CLIENT, 0, VIP, 0).build();
        ping[L4_OFFSET..L4_OFFSET + 8].copy_from_slice(&[icmp::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1]);
        ping.extend_from_slice(b"ping payload");
        let tot = (ping.len() - IP_OFFSET) as u16;
        ping[16..18].copy_from_slice(&tot.to_be_bytes());
        ping[24..26].copy_from_slice(&[0, 0]);
        let ip_check = compute(&ping[IP_OFFSET..L4_OFFSET], 0);
        ping[24..26].copy_from_slice(&ip_check.to_ne_bytes());
        let icmp_check = compute(&ping[L4_OFFSET..], 0);
        ping[L4_OFFSET + 2..L4_OFFSET + 4].copy_from_slice(&icmp_check.to_ne_bytes());

        let data = ping.as_mut_ptr() as usize;
        assert_eq!(echo_request_to(data, data + ping.len()), Some(u32::from_ne_bytes(VIP)));
        assert!(unsafe { write_echo_reply(data, data + ping.len()) });
        assert_eq!(ping[L4_OFFSET], icmp::ECHO_REPLY);
        assert_eq!((&ping[26..30], &ping[30..34]), (&VIP[..], &CLIENT[..]));
        assert_eq!(compute(&ping[IP_OFFSET..L4_OFFSET], 0), 0, "ipv4 checksum");
        assert_eq!(compute(&ping[L4_OFFSET..], 0), 0, "icmp checksum");
        assert!(ping.ends_with(b"ping payload"));
        let data = ping.as_mut_ptr() as usize;
        assert_eq!(echo_request_to(data, data + ping.len()), None, "a reply is not a request");
    }
}
