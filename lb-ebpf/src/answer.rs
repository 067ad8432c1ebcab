//! Answers the datapath gives itself, written in place over the packet that
//! asked: a TCP reset or an ICMP (ICMPv6) port unreachable when a Service
//! has no endpoint (the client sees "connection refused" at once, as with
//! kube-proxy's REJECT rules), and echo replies for Service addresses.
//! The entry point hands the answer to the kernel's routing, which sends it
//! back to the client like any forwarded packet: the Ethernet header stays
//! as it came, addressed to this interface, or the kernel would discard the
//! answer as meant for another host.

use core::mem::size_of;

use crate::packet::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, checksum,
    family::{Family, V4, V6},
    icmp,
    parse::{IP_OFFSET, L4_OFFSET, Packet, TCP_HEADER_LEN},
    read, tcp, write,
};
use lb_common::{IPPROTO_TCP, Ipv6Wire};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

const REPLY_TTL: u8 = 64;

/// What an answer looks like in each family.
pub trait Answered: Family {
    /// A reset is the Ethernet, IP and TCP headers, nothing more.
    const RST_FRAME_LEN: usize = Self::L4 + TCP_HEADER_LEN;
    /// An ICMP error puts a new IP and ICMP header in front of the
    /// offending packet's IP header...
    const ICMP_ERROR_GROWTH: usize;
    /// ...and quotes that header plus the first 8 bytes after it (RFC 792,
    /// and as little of RFC 4443's "as much as fits" for IPv6).
    const ICMP_ERROR_FRAME_LEN: usize = Self::L4 + Self::ICMP_ERROR_GROWTH + 8;
    /// The quoted bytes (`L4 + 8`: Ethernet, IP and 8 L4 bytes), as a value.
    type Quote: Copy;
    /// An echo request's headers: Ethernet, IP and ICMP (ICMPv6).
    const ECHO_HEADERS_LEN: usize = Self::L4 + 8;

    /// The destination an echo request without IP options or extension
    /// headers asks about; None for anything else.
    fn echo_request_to(data: usize, data_end: usize) -> Option<Self::Addr>;

    /// Turns an echo request (checked by `echo_request_to`) into its reply;
    /// false if the frame is too short after all.
    ///
    /// # Safety
    /// The frame must be writable.
    unsafe fn write_echo_reply(data: usize, data_end: usize) -> bool;

    /// The length of the L4 segment the IP header announces.
    ///
    /// # Safety
    /// `data` must hold the IP header.
    unsafe fn l4_len(data: usize) -> u16;

    /// Fills in the rest of a fresh IP header (addresses already in place)
    /// for an answer carrying `l4_len` bytes of `proto`; the unfolded sum of
    /// its pseudo-header.
    ///
    /// # Safety
    /// `data` must hold the writable IP header.
    unsafe fn fill_header(data: usize, proto: u8, l4_len: u16) -> u32;

    /// Turns a frame whose head was just grown by `ICMP_ERROR_GROWTH` bytes
    /// into a destination unreachable (IPv6: packet too big for
    /// `FragNeeded`) for the packet that now starts at `data +
    /// ICMP_ERROR_GROWTH`. The caller trims it to `ICMP_ERROR_FRAME_LEN`.
    ///
    /// # Safety
    /// `[data, data + ICMP_ERROR_FRAME_LEN)` must be writable frame bytes,
    /// the original packet one `parse` took.
    unsafe fn write_unreachable(data: usize, what: Unreachable);
}

impl Answered for V4 {
    const ICMP_ERROR_GROWTH: usize = size_of::<Ipv4Hdr>() + size_of::<Icmpv4Hdr>();
    type Quote = [u8; L4_OFFSET + 8];

    #[inline(always)]
    unsafe fn l4_len(data: usize) -> u16 {
        // SAFETY: the total length, inside the header.
        u16::from_be(unsafe { read::<u16>(data + IP_OFFSET + 2) }).saturating_sub(20)
    }

    #[inline(always)]
    unsafe fn fill_header(data: usize, proto: u8, l4_len: u16) -> u32 {
        // SAFETY: as the caller promises.
        let (saddr, daddr) = unsafe { fill_ip_header(data, proto, l4_len) };
        pseudo_header_sum(usize::from(l4_len), saddr, daddr, proto)
    }

    #[inline(always)]
    unsafe fn write_unreachable(data: usize, what: Unreachable) {
        // SAFETY: as the caller promises.
        unsafe { write_unreachable(data, what) }
    }

    #[inline(always)]
    fn echo_request_to(data: usize, data_end: usize) -> Option<u32> {
        echo_request_to(data, data_end)
    }

    #[inline(always)]
    unsafe fn write_echo_reply(data: usize, data_end: usize) -> bool {
        // SAFETY: as the caller promises.
        unsafe { write_echo_reply(data, data_end) }
    }
}

const IPV6_HEADER_LEN: usize = 40;
const IPV6_ADDR_LEN: usize = 16;

impl Answered for V6 {
    const ICMP_ERROR_GROWTH: usize = IPV6_HEADER_LEN + 8;
    type Quote = [u8; V6::L4 + 8];

    #[inline(always)]
    unsafe fn l4_len(data: usize) -> u16 {
        // SAFETY: the payload length, inside the header.
        u16::from_be(unsafe { read::<u16>(data + IP_OFFSET + 4) })
    }

    #[inline(always)]
    unsafe fn fill_header(data: usize, proto: u8, l4_len: u16) -> u32 {
        let ip = data + IP_OFFSET;
        // SAFETY: as the caller promises.
        unsafe {
            write(ip, 0x6000_0000u32.to_be()); // version, no traffic class or flow label
            write(ip + 4, l4_len.to_be());
            write(ip + 6, proto);
            write(ip + 7, REPLY_TTL);
            // The length is 32 bits in IPv6's pseudo-header: its upper half is 0.
            sum_words(data + V6::SADDR, 2 * IPV6_ADDR_LEN)
                + u32::from(l4_len.to_be())
                + u32::from(u16::from_ne_bytes([0, proto]))
        }
    }

    #[inline(always)]
    unsafe fn write_unreachable(data: usize, what: Unreachable) {
        let original = data + Self::ICMP_ERROR_GROWTH;
        // SAFETY: all offsets lie below ICMP_ERROR_FRAME_LEN.
        unsafe {
            // The Ethernet header as it came (see the module comment).
            let eth: [u8; 14] = read(original);
            write(data, eth);
            // From the address the client asked, to the client.
            copy_words(original + V6::DADDR, data + V6::SADDR, IPV6_ADDR_LEN);
            copy_words(original + V6::SADDR, data + V6::DADDR, IPV6_ADDR_LEN);
            let icmp_len = (Self::ICMP_ERROR_FRAME_LEN - V6::L4) as u16;
            let pseudo = Self::fill_header(data, IPPROTO_ICMPV6, icmp_len);
            let icmp = data + V6::L4;
            let (kind, code, mtu) = match what {
                Unreachable::Port => (icmp::ICMPV6_DEST_UNREACH, icmp::ICMPV6_PORT_UNREACH, 0u32),
                Unreachable::FragNeeded(mtu) => (icmp::ICMPV6_PACKET_TOO_BIG, 0, u32::from(mtu)),
            };
            let [m0, m1, m2, m3] = mtu.to_be_bytes();
            write(icmp, [kind, code, 0, 0, m0, m1, m2, m3]);
            write(icmp + 2, checksum(icmp, usize::from(icmp_len), pseudo));
        }
    }

    #[inline(always)]
    fn echo_request_to(data: usize, data_end: usize) -> Option<Ipv6Wire> {
        if data + Self::ECHO_HEADERS_LEN > data_end {
            return None;
        }
        // SAFETY: bounds checked above.
        unsafe {
            let is_echo = read::<u16>(data + 12) == ETH_P_IPV6.to_be()
                && read::<u8>(data + IP_OFFSET) >> 4 == 6
                && read::<u8>(data + IP_OFFSET + 6) == IPPROTO_ICMPV6
                && read::<u8>(data + V6::L4) == icmp::ICMPV6_ECHO_REQUEST;
            is_echo.then(|| read(data + V6::DADDR))
        }
    }

    #[inline(always)]
    unsafe fn write_echo_reply(data: usize, data_end: usize) -> bool {
        // Checked again, as for IPv4.
        if data + Self::ECHO_HEADERS_LEN > data_end {
            return false;
        }
        // SAFETY: offsets inside the headers just checked.
        unsafe {
            // The addresses trade places: the pseudo-header's sum stays.
            swap_words(data + V6::SADDR, data + V6::DADDR, IPV6_ADDR_LEN);
            write(data + IP_OFFSET + 7, REPLY_TTL);
            // Type 128 -> 129: the rest of the message is echoed unchanged.
            let old_type_code: u16 = read(data + V6::L4);
            write(data + V6::L4, icmp::ICMPV6_ECHO_REPLY);
            let new_type_code: u16 = read(data + V6::L4);
            let check: u16 = read(data + V6::L4 + 2);
            write(data + V6::L4 + 2, checksum::update_word(check, old_type_code, new_type_code));
        }
        true
    }
}

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
pub unsafe fn reset_for<F: Answered>(pkt: &Packet<F>) -> Option<Reset> {
    // Checked again: the 6.1 verifier can lose which header length the
    // parse checked (and `write_reset` writes as far).
    if pkt.data + F::RST_FRAME_LEN > pkt.end {
        return None;
    }
    // SAFETY: offsets inside the IP and TCP headers (checked above).
    let (flags, seq, ack_seq, doff, l4_len): (u8, u32, u32, u8, u16) = unsafe {
        (
            pkt.read(F::L4 + tcp::FLAGS),
            u32::from_be(pkt.read(F::L4 + tcp::SEQ)),
            u32::from_be(pkt.read(F::L4 + tcp::ACK_SEQ)),
            pkt.read::<u8>(F::L4 + tcp::DOFF) >> 4,
            F::l4_len(pkt.data),
        )
    };
    if flags & tcp::RST != 0 {
        return None;
    }
    if flags & tcp::ACK != 0 {
        return Some(Reset { seq: ack_seq, ack_seq: 0, flags: tcp::RST });
    }
    let payload = u32::from(l4_len).saturating_sub(u32::from(doff) * 4);
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
pub unsafe fn write_reset<F: Answered>(pkt: &Packet<F>, reset: Reset, l4_checksum: L4Checksum) {
    // SAFETY: every write is inside the headers `parse` checked.
    unsafe {
        let ports: u32 = pkt.read(F::L4);
        pkt.write(F::L4, ports.rotate_left(16));
        pkt.write(F::L4 + tcp::SEQ, reset.seq.to_be());
        pkt.write(F::L4 + tcp::ACK_SEQ, reset.ack_seq.to_be());
        pkt.write(F::L4 + tcp::DOFF, 0x50u8); // 20-byte header, no options
        pkt.write(F::L4 + tcp::FLAGS, reset.flags);
        pkt.write(F::L4 + 14, 0u32); // window, checksum
        pkt.write(F::L4 + 18, 0u16); // urgent pointer
        swap_words(pkt.data + F::SADDR, pkt.data + F::DADDR, size_of::<F::Addr>());
        let pseudo = F::fill_header(pkt.data, IPPROTO_TCP, TCP_HEADER_LEN as u16);
        let check = match l4_checksum {
            L4Checksum::Full => checksum(pkt.data + F::L4, TCP_HEADER_LEN, pseudo),
            L4Checksum::Deferred => !checksum(pkt.data, 0, pseudo),
        };
        pkt.write(F::L4 + tcp::CHECK, check);
    }
}

/// What an ICMP destination unreachable tells the sender.
#[derive(Clone, Copy)]
pub enum Unreachable {
    Port,
    /// Fragmentation needed: the next hop's MTU.
    FragNeeded(u16),
}

/// `Answered::write_unreachable` for IPv4.
///
/// # Safety
/// As there, the original packet an IPv4 packet without options.
#[inline(always)]
unsafe fn write_unreachable(data: usize, what: Unreachable) {
    let original = data + V4::ICMP_ERROR_GROWTH;
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
        let icmp_len = (V4::ICMP_ERROR_FRAME_LEN - L4_OFFSET) as u16;
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

/// `Answered::echo_request_to` for IPv4.
#[inline(always)]
fn echo_request_to(data: usize, data_end: usize) -> Option<u32> {
    if data + V4::ECHO_HEADERS_LEN > data_end {
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

/// `Answered::write_echo_reply` for IPv4.
///
/// # Safety
/// As there.
#[inline(always)]
unsafe fn write_echo_reply(data: usize, data_end: usize) -> bool {
    // The bounds are checked again here: the verifier has forgotten them
    // across the map lookup between `echo_request_to` and this call.
    if data + V4::ECHO_HEADERS_LEN > data_end {
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

/// The Internet checksum of `len` bytes at `at`, with `initial` summed in.
#[inline(always)]
unsafe fn checksum(at: usize, len: usize, initial: u32) -> u16 {
    // SAFETY: as the caller promises.
    let mut sum = initial + unsafe { sum_words(at, len) };
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

// The helpers below go through the bytes two at a time, in order, with
// volatile 2-byte loads: read unaligned, each word takes two byte loads,
// and the compiler hoists all of them, spilling across the stack (an
// ICMPv6 error sums 28 words). Header fields are 2-byte aligned (frames
// start so), and BPF loads need no alignment anyway. `len` is even and
// fixed at each call site, so the loops have constant bounds.

/// The unfolded sum of the `len` bytes at `at`, as 16-bit words.
#[inline(always)]
unsafe fn sum_words(at: usize, len: usize) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < len {
        // SAFETY: as the caller promises.
        sum += u32::from(unsafe { core::ptr::read_volatile((at + i) as *const u16) });
        i += 2;
    }
    sum
}

/// Copies the `len` bytes at `from` to `to`.
#[inline(always)]
unsafe fn copy_words(from: usize, to: usize, len: usize) {
    let mut i = 0;
    while i < len {
        // SAFETY: as the caller promises.
        unsafe { ((to + i) as *mut u16).write(core::ptr::read_volatile((from + i) as *const u16)) };
        i += 2;
    }
}

/// Swaps the `len` bytes at `a` with those at `b`.
#[inline(always)]
unsafe fn swap_words(a: usize, b: usize, len: usize) {
    let mut i = 0;
    while i < len {
        // SAFETY: as the caller promises.
        unsafe {
            let x = core::ptr::read_volatile((a + i) as *const u16);
            let y = core::ptr::read_volatile((b + i) as *const u16);
            ((a + i) as *mut u16).write(y);
            ((b + i) as *mut u16).write(x);
        }
        i += 2;
    }
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
        let reset = unsafe { reset_for(&pkt) }?;
        unsafe { write_reset(&pkt, reset, L4Checksum::Full) };
        frame.truncate(V4::RST_FRAME_LEN);
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
        let reset = unsafe { reset_for(&pkt) }.unwrap();
        unsafe { write_reset(&pkt, reset, L4Checksum::Deferred) };
        let check = L4_OFFSET + tcp::CHECK;
        assert_ne!(deferred[check..check + 2], full[check..check + 2]);
        let completed = compute(&deferred[L4_OFFSET..V4::RST_FRAME_LEN], 0);
        deferred[check..check + 2].copy_from_slice(&completed.to_ne_bytes());
        assert_eq!(deferred[..V4::RST_FRAME_LEN], full[..]);
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
        let mut frame = vec![0u8; V4::ICMP_ERROR_GROWTH];
        frame.extend_from_slice(&datagram);
        unsafe { write_unreachable(frame.as_mut_ptr() as usize, Unreachable::Port) };
        frame.truncate(V4::ICMP_ERROR_FRAME_LEN);
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
        let mut frame = vec![0u8; V4::ICMP_ERROR_GROWTH];
        frame.extend_from_slice(&segment);
        unsafe { write_unreachable(frame.as_mut_ptr() as usize, Unreachable::FragNeeded(1400)) };
        frame.truncate(V4::ICMP_ERROR_FRAME_LEN);
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

    const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];

    #[test]
    fn an_ipv6_syn_is_answered_by_a_reset_from_the_address_it_asked() {
        let mut frame = PacketBuilder::new(IPPROTO_TCP, CLIENT6, 40000, VIP6, 80).tcp_flags(tcp::SYN).build();
        let data = frame.as_mut_ptr() as usize;
        let pkt = crate::packet::parse::parse_ipv6(data, data + frame.len(), Frame::Linear).unwrap();
        let reset = unsafe { reset_for(&pkt) }.unwrap();
        unsafe { write_reset(&pkt, reset, L4Checksum::Full) };
        frame.truncate(V6::RST_FRAME_LEN);
        let want = PacketBuilder::new(IPPROTO_TCP, VIP6, 80, CLIENT6, 40000).payload(b"").build();
        assert_eq!(checksum_errors(&frame), None);
        assert_eq!(&frame[14..54], &want[14..54], "the ipv6 header");
        // seq 0, ack = the SYN's seq (1) + the SYN + its 5 bytes.
        assert_eq!((be32(&frame[58..62]), be32(&frame[62..66]), frame[67]), (0, 7, tcp::RST | tcp::ACK));
    }

    #[test]
    fn an_ipv6_udp_datagram_is_answered_by_an_icmpv6_port_unreachable_quoting_it() {
        let datagram = PacketBuilder::new(IPPROTO_UDP, CLIENT6, 5000, VIP6, 53).payload(b"anyone?").build();
        let mut frame = vec![0u8; V6::ICMP_ERROR_GROWTH];
        frame.extend_from_slice(&datagram);
        unsafe { V6::write_unreachable(frame.as_mut_ptr() as usize, Unreachable::Port) };
        frame.truncate(V6::ICMP_ERROR_FRAME_LEN);
        assert_eq!(&frame[22..38], &VIP6, "from the address asked");
        assert_eq!(&frame[38..54], &CLIENT6, "to the client");
        assert_eq!((frame[20], be16(&frame[18..20]) as usize), (58, frame.len() - 54));
        assert_eq!((frame[54], frame[55]), (1, 4), "destination unreachable, port unreachable");
        assert_eq!(&frame[62..], &datagram[14..62], "the ipv6 header and 8 bytes quoted");
        let pseudo: u32 = [&frame[22..38], &frame[38..54]]
            .iter()
            .flat_map(|a| a.chunks(2))
            .map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]])))
            .sum::<u32>()
            + u32::from(((frame.len() - 54) as u16).to_be())
            + u32::from(u16::from_ne_bytes([0, 58]));
        assert_eq!(compute(&frame[54..], pseudo), 0, "icmpv6 checksum");
    }
}
