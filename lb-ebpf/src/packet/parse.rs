//! Bounds-checked parsing of Ethernet / IPv4 / TCP|UDP. Anything the
//! datapath does not translate is reported with the reason it is passed.

use core::mem::size_of;

use super::{ETH_P_IP, tcp};
use lb_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

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

/// A parsed IPv4 TCP/UDP packet without options: every field the datapath
/// touches is at a fixed offset, so only the protocol needs remembering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Start of the packet (the Ethernet header).
    pub data: usize,
    /// End of the headers' part of the frame (`data_end`).
    pub end: usize,
    pub proto: u8,
}

impl Packet {
    /// Offset of the L4 checksum from the start of the packet.
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        L4_OFFSET + if self.proto == IPPROTO_TCP { tcp::CHECK } else { UDP_CHECK }
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
        if self.data + L4_OFFSET + TCP_HEADER_LEN > self.end {
            return 0;
        }
        // SAFETY: a whole TCP header is present (checked above).
        unsafe { self.read(L4_OFFSET + tcp::FLAGS) }
    }

    /// The 5-tuple as the packet carries it.
    #[inline(always)]
    pub fn flow(&self) -> CtKey {
        // SAFETY: `parse` checked that the IPv4 and L4 headers are present.
        unsafe {
            CtKey {
                saddr: self.read(IP_OFFSET + IP_SADDR),
                daddr: self.read(IP_OFFSET + IP_DADDR),
                sport: self.read(L4_OFFSET + L4_SPORT),
                dport: self.read(L4_OFFSET + L4_DPORT),
                proto: self.proto,
                _pad: [0; 3],
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

/// Parse the packet in `[data, data_end)`.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, frame: Frame) -> Result<Packet, Reason> {
    if !fits(data, data_end, 0, size_of::<EthHdr>()) {
        return Err(Reason::PassTruncated);
    }
    // SAFETY: bounds checked above.
    let eth = unsafe { &*(data as *const EthHdr) };
    if eth.ether_type != ETH_P_IP.to_be() {
        return Err(Reason::PassNotIpv4);
    }
    if !fits(data, data_end, IP_OFFSET, size_of::<Ipv4Hdr>()) {
        return Err(Reason::PassTruncated);
    }
    // SAFETY: bounds checked above.
    let ip = unsafe { &*((data + IP_OFFSET) as *const Ipv4Hdr) };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::PassNotIpv4);
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
    Ok(Packet { data, end: data_end, proto: ip.proto })
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
            ("arp", arp, Reason::PassNotIpv4),
            ("vlan tagged", vlan, Reason::PassNotIpv4),
            ("ip version 6 in an ipv4 ethertype", ipv6_version, Reason::PassNotIpv4),
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
}
