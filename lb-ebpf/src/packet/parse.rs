//! Bounds-checked parsing of Ethernet / IPv4|IPv6 / TCP|UDP. Anything the
//! datapath does not translate is reported with the reason it is passed.

use core::{marker::PhantomData, mem::size_of};

use super::{
    ETH_P_IP, ETH_P_IPV6,
    family::{Family, V4, V6},
    tcp,
};
use lb_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP, Reason};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// The "more fragments" bit and the fragment offset of `Ipv4Hdr::frags`.
const IP_MF_AND_OFFSET: u16 = 0x3fff;

pub const IP_OFFSET: usize = size_of::<EthHdr>();
pub const L4_OFFSET: usize = IP_OFFSET + size_of::<Ipv4Hdr>();
/// The longest L4 header the datapath reads (TCP without options).
pub const TCP_HEADER_LEN: usize = size_of::<TcpHdr>();
/// Offsets inside the IPv4 header.
pub const IP_CHECK: usize = 10;
pub const IP_SADDR: usize = 12;
pub const IP_DADDR: usize = 16;
/// Offsets inside the L4 header (the same for TCP and UDP).
pub const L4_SPORT: usize = 0;
pub const L4_DPORT: usize = 2;
pub const UDP_CHECK: usize = 6;

/// A parsed TCP/UDP packet of family `F` without IPv4 options or IPv6
/// extension headers: every field the datapath touches is at a fixed
/// offset, so only the protocol needs remembering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<F = V4> {
    /// Start of the packet (the Ethernet header).
    pub data: usize,
    /// End of the headers' part of the frame (`data_end`).
    pub end: usize,
    pub proto: u8,
    family: PhantomData<F>,
}

impl<F: Family> Packet<F> {
    #[inline(always)]
    pub fn new(data: usize, end: usize, proto: u8) -> Self {
        Self { data, end, proto, family: PhantomData }
    }

    /// Offset of the L4 checksum from the start of the packet.
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        F::L4 + if self.proto == IPPROTO_TCP { tcp::CHECK } else { UDP_CHECK }
    }

    /// # Safety
    /// `offset + size_of::<T>()` must lie inside the packet `parse` checked.
    #[inline(always)]
    pub unsafe fn read<T: Copy>(&self, offset: usize) -> T {
        unsafe { super::read(self.data + offset) }
    }

    /// # Safety
    /// As for [`Packet::read`], and the packet must be writable.
    #[inline(always)]
    pub unsafe fn write<T: Copy>(&self, offset: usize, value: T) {
        unsafe { super::write(self.data + offset, value) }
    }

    /// The TCP flags byte; 0 for UDP.
    #[inline(always)]
    pub fn tcp_flags(&self) -> u8 {
        if self.proto != IPPROTO_TCP {
            return 0;
        }
        // Checked again: the 6.1 verifier can lose which header length the
        // parse checked once the paths after it merge.
        if self.data + F::L4 + TCP_HEADER_LEN > self.end {
            return 0;
        }
        // SAFETY: a whole TCP header is present (checked above).
        unsafe { self.read(F::L4 + tcp::FLAGS) }
    }

    /// The 5-tuple as the packet carries it.
    #[inline(always)]
    pub fn flow(&self) -> CtKey<F::Addr> {
        // SAFETY: `parse` checked that the IP and L4 headers are present.
        unsafe {
            CtKey {
                saddr: self.read(F::SADDR),
                daddr: self.read(F::DADDR),
                sport: self.read(F::L4 + L4_SPORT),
                dport: self.read(F::L4 + L4_DPORT),
                proto: self.proto,
                _pad: 0,
                _pad2: 0,
            }
        }
    }
}

/// Is `[data + offset, data + offset + len)` inside the packet? Written as
/// one comparison against `data_end` so the verifier can follow it.
#[inline(always)]
fn fits(data: usize, data_end: usize, offset: usize, len: usize) -> bool {
    data + offset + len <= data_end
}

/// Where the packet ends, beyond the headers that must be in `[data, data_end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The whole frame is `[data, data_end)` (XDP without fragments).
    Linear,
    /// A socket buffer of `len` bytes whose payload may sit in fragments
    /// past `data_end` (TC).
    Skb { len: u32 },
}

/// More than an XDP buffer holds (a page) or any frame TEST_RUN takes.
const MAX_LINEAR_FRAME: usize = 16 * 1024;

/// The EtherType of the frame in `[data, data_end)`, in host order.
#[inline(always)]
pub fn ether_type(data: usize, data_end: usize) -> Result<u16, Reason> {
    if !fits(data, data_end, 0, size_of::<EthHdr>()) {
        return Err(Reason::PassTruncated);
    }
    // SAFETY: bounds checked above.
    let eth = unsafe { &*(data as *const EthHdr) };
    match u16::from_be(eth.ether_type) {
        ether_type @ (ETH_P_IP | ETH_P_IPV6) => Ok(ether_type),
        _ => Err(Reason::PassNotIp),
    }
}

/// Parse the IPv4 packet in `[data, data_end)`.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, frame: Frame) -> Result<Packet, Reason> {
    if ether_type(data, data_end)? != ETH_P_IP {
        return Err(Reason::PassNotIp);
    }
    if !fits(data, data_end, IP_OFFSET, size_of::<Ipv4Hdr>()) {
        return Err(Reason::PassTruncated);
    }
    // SAFETY: bounds checked above.
    let ip = unsafe { &*((data + IP_OFFSET) as *const Ipv4Hdr) };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::PassNotIp);
    }
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < size_of::<Ipv4Hdr>() {
        return Err(Reason::PassTruncated);
    }
    if ihl > size_of::<Ipv4Hdr>() {
        return Err(Reason::PassIpOptions);
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_AND_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    let l4_len = match ip.proto {
        IPPROTO_TCP => TCP_HEADER_LEN,
        IPPROTO_UDP => size_of::<UdpHdr>(),
        _ => return Err(Reason::PassNotTcpUdp),
    };
    // The IP total length must cover the L4 header, and the frame must hold
    // what the IP header claims (a frame may be longer: Ethernet padding).
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    let frame_holds_ip_packet = match frame {
        // The bound first: verifiers before 6.5 lose a byte swap's range,
        // and refuse the pointer arithmetic that follows without it.
        Frame::Linear => tot_len <= MAX_LINEAR_FRAME && fits(data, data_end, IP_OFFSET, tot_len),
        Frame::Skb { len } => IP_OFFSET + tot_len <= len as usize,
    };
    if tot_len < ihl + l4_len || !frame_holds_ip_packet {
        return Err(Reason::PassTruncated);
    }
    // Constant lengths, one per protocol: the 6.1 verifier loses track of
    // which one a shared check used.
    let l4_in_frame = match ip.proto {
        IPPROTO_TCP => fits(data, data_end, L4_OFFSET, TCP_HEADER_LEN),
        _ => fits(data, data_end, L4_OFFSET, size_of::<UdpHdr>()),
    };
    if !l4_in_frame {
        return Err(Reason::PassTruncated);
    }
    Ok(Packet::new(data, data_end, ip.proto))
}

/// IPv6 next headers that are extension headers (RFC 8200 §4, and the
/// ones RFC 7045 lists since): the L4 header would follow them.
const EXTENSION_HEADERS: [u8; 7] = [0, 43, 44, 51, 60, 135, 139];
const IPV6_FRAGMENT: u8 = 44;

/// Parse the IPv6 packet in `[data, data_end)`. Extension headers are not
/// walked: a packet with any is passed (fragments are counted as such).
#[inline(always)]
pub fn parse_ipv6(data: usize, data_end: usize, frame: Frame) -> Result<Packet<V6>, Reason> {
    if ether_type(data, data_end)? != ETH_P_IPV6 {
        return Err(Reason::PassNotIp);
    }
    if !fits(data, data_end, IP_OFFSET, size_of::<Ipv6Hdr>()) {
        return Err(Reason::PassTruncated);
    }
    // SAFETY: bounds checked above.
    let ip = unsafe { &*((data + IP_OFFSET) as *const Ipv6Hdr) };
    if ip.version() != 6 {
        return Err(Reason::PassNotIp);
    }
    let l4_len = match ip.next_hdr {
        IPPROTO_TCP => TCP_HEADER_LEN,
        IPPROTO_UDP => size_of::<UdpHdr>(),
        IPV6_FRAGMENT => return Err(Reason::PassFragment),
        next if EXTENSION_HEADERS.contains(&next) => return Err(Reason::PassExtensionHeaders),
        _ => return Err(Reason::PassNotTcpUdp),
    };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    let frame_holds_ip_packet = match frame {
        // Bounded first, as in `parse`.
        Frame::Linear => payload_len <= MAX_LINEAR_FRAME && fits(data, data_end, V6::L4, payload_len),
        Frame::Skb { len } => V6::L4 + payload_len <= len as usize,
    };
    if payload_len < l4_len || !frame_holds_ip_packet {
        return Err(Reason::PassTruncated);
    }
    let l4_in_frame = match ip.next_hdr {
        IPPROTO_TCP => fits(data, data_end, V6::L4, TCP_HEADER_LEN),
        _ => fits(data, data_end, V6::L4, size_of::<UdpHdr>()),
    };
    if !l4_in_frame {
        return Err(Reason::PassTruncated);
    }
    Ok(Packet::new(data, data_end, ip.next_hdr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet_builder::PacketBuilder;

    fn parse_bytes(bytes: &[u8]) -> Result<Packet, Reason> {
        let data = bytes.as_ptr() as usize;
        parse(data, data + bytes.len(), Frame::Linear)
    }

    #[test]
    fn an_skb_may_hold_its_payload_beyond_the_linear_headers() {
        let pkt = PacketBuilder::new(IPPROTO_TCP, [10, 0, 0, 1], 1, [10, 0, 0, 2], 2).payload(&[7; 100]).build();
        let data = pkt.as_ptr() as usize;
        let headers_end = data + L4_OFFSET + 20;
        let len = pkt.len() as u32;
        assert!(parse(data, headers_end, Frame::Skb { len }).is_ok());
        assert_eq!(parse(data, headers_end, Frame::Linear), Err(Reason::PassTruncated));
        assert_eq!(parse(data, headers_end, Frame::Skb { len: len - 1 }), Err(Reason::PassTruncated));
    }

    #[test]
    fn tcp_and_udp_parse_with_their_flow() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let pkt = PacketBuilder::new(proto, [10, 0, 0, 1], 40000, [10, 96, 0, 10], 80).build();
            let p = parse_bytes(&pkt).unwrap();
            let flow = p.flow();
            assert_eq!(flow.saddr, u32::from_ne_bytes([10, 0, 0, 1]));
            assert_eq!(flow.daddr, u32::from_ne_bytes([10, 96, 0, 10]));
            assert_eq!(flow.sport, 40000u16.to_be());
            assert_eq!(flow.dport, 80u16.to_be());
            assert_eq!(flow.proto, proto);
        }
    }

    #[test]
    fn what_is_not_translated_is_passed_with_its_reason() {
        let base = || PacketBuilder::new(IPPROTO_TCP, [10, 0, 0, 1], 1, [10, 0, 0, 2], 2);
        let mut arp = base().build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut vlan = base().build();
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        let mut ipv6_version = base().build();
        ipv6_version[IP_OFFSET] = 0x65;
        let mut short_ihl = base().build();
        short_ihl[IP_OFFSET] = 0x44;
        let mut long_tot_len = base().build();
        long_tot_len[IP_OFFSET + 2..IP_OFFSET + 4].copy_from_slice(&1500u16.to_be_bytes());
        let cases: &[(&str, Vec<u8>, Reason)] = &[
            ("empty frame", vec![], Reason::PassTruncated),
            ("arp", arp, Reason::PassNotIp),
            ("vlan tagged", vlan, Reason::PassNotIp),
            ("ip version 6 in an ipv4 ethertype", ipv6_version, Reason::PassNotIp),
            ("ihl below 5", short_ihl, Reason::PassTruncated),
            ("ip options", base().ip_options(4).build(), Reason::PassIpOptions),
            ("first fragment", base().fragment(true, 0).build(), Reason::PassFragment),
            ("later fragment", base().fragment(false, 185).build(), Reason::PassFragment),
            ("icmp", PacketBuilder::new(1, [1, 1, 1, 1], 0, [2, 2, 2, 2], 0).build(), Reason::PassNotTcpUdp),
            ("tot_len beyond frame", long_tot_len, Reason::PassTruncated),
            ("tcp header cut", base().build()[..L4_OFFSET + 10].to_vec(), Reason::PassTruncated),
            ("ip header cut", base().build()[..IP_OFFSET + 8].to_vec(), Reason::PassTruncated),
        ];
        for (what, bytes, reason) in cases {
            assert_eq!(parse_bytes(bytes), Err(*reason), "{what}");
        }
    }

    #[test]
    fn ethernet_padding_after_the_ip_packet_is_accepted() {
        let mut pkt = PacketBuilder::new(IPPROTO_UDP, [10, 0, 0, 1], 1, [10, 0, 0, 2], 2).build();
        pkt.extend_from_slice(&[0; 18]);
        assert!(parse_bytes(&pkt).is_ok());
    }

    const V6_CLIENT: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    const V6_VIP: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];

    fn parse_ipv6_bytes(bytes: &[u8]) -> Result<Packet<V6>, Reason> {
        let data = bytes.as_ptr() as usize;
        parse_ipv6(data, data + bytes.len(), Frame::Linear)
    }

    #[test]
    fn ipv6_tcp_and_udp_parse_with_their_flow() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let pkt = PacketBuilder::new(proto, V6_CLIENT, 40000, V6_VIP, 80).build();
            assert_eq!(ether_type(pkt.as_ptr() as usize, pkt.as_ptr() as usize + pkt.len()), Ok(ETH_P_IPV6));
            let flow = parse_ipv6_bytes(&pkt).unwrap().flow();
            assert_eq!(flow.saddr, lb_common::wire::addr6(V6_CLIENT));
            assert_eq!(flow.daddr, lb_common::wire::addr6(V6_VIP));
            assert_eq!((flow.sport, flow.dport, flow.proto), (40000u16.to_be(), 80u16.to_be(), proto));
        }
    }

    #[test]
    fn ipv6_packets_not_translated_are_passed_with_their_reason() {
        let base = || PacketBuilder::new(IPPROTO_TCP, V6_CLIENT, 1, V6_VIP, 2);
        let mut version_4 = base().build();
        version_4[IP_OFFSET] = 0x40;
        let mut long_payload = base().build();
        long_payload[IP_OFFSET + 4..IP_OFFSET + 6].copy_from_slice(&1500u16.to_be_bytes());
        let neighbour_solicitation = PacketBuilder::new(58, V6_CLIENT, 0, V6_VIP, 0).build();
        let cases: &[(&str, Vec<u8>, Reason)] = &[
            ("hop-by-hop options", base().extension_header(0).build(), Reason::PassExtensionHeaders),
            ("routing header", base().extension_header(43).build(), Reason::PassExtensionHeaders),
            ("destination options", base().extension_header(60).build(), Reason::PassExtensionHeaders),
            ("fragment", base().extension_header(44).build(), Reason::PassFragment),
            ("icmpv6 (neighbour discovery among it)", neighbour_solicitation, Reason::PassNotTcpUdp),
            ("version 4 in an ipv6 ethertype", version_4, Reason::PassNotIp),
            ("payload beyond the frame", long_payload, Reason::PassTruncated),
            ("tcp header cut", base().build()[..V6::L4 + 10].to_vec(), Reason::PassTruncated),
            ("ipv6 header cut", base().build()[..IP_OFFSET + 30].to_vec(), Reason::PassTruncated),
            (
                "an ipv4 frame",
                PacketBuilder::new(IPPROTO_TCP, [1, 1, 1, 1], 1, [2, 2, 2, 2], 2).build(),
                Reason::PassNotIp,
            ),
        ];
        for (what, bytes, reason) in cases {
            assert_eq!(parse_ipv6_bytes(bytes), Err(*reason), "{what}");
        }
    }
}
