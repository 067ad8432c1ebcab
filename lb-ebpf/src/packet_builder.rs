//! Builds well-formed Ethernet/IPv4|IPv6/TCP|UDP frames with correct
//! checksums, and checks them: the fixtures of the host tests and the
//! BPF_PROG_TEST_RUN tables share it, and `lb-agent explain` builds the
//! packet it explains with it.

use std::net::IpAddr;

use crate::packet::{IPPROTO_ICMPV6, checksum::compute};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Debug)]
pub struct PacketBuilder {
    proto: u8,
    /// Both of one family: the frame's.
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    payload: Vec<u8>,
    ip_options: usize,
    frags: u16,
    udp_zero_checksum: bool,
    tcp_flags: u8,
    ip_id: u16,
    /// IPv4's TTL or IPv6's hop limit.
    ttl: u8,
    /// IPv6 only: extension headers (next header values) before L4.
    extension_headers: Vec<u8>,
}

impl PacketBuilder {
    /// A frame from `saddr` to `daddr`, both IPv4 or both IPv6.
    pub fn new(proto: u8, saddr: impl Into<IpAddr>, sport: u16, daddr: impl Into<IpAddr>, dport: u16) -> Self {
        let (saddr, daddr) = (saddr.into(), daddr.into());
        assert_eq!(saddr.is_ipv4(), daddr.is_ipv4(), "addresses of two families");
        Self {
            proto,
            saddr,
            sport,
            daddr,
            dport,
            payload: b"hello".to_vec(),
            ip_options: 0,
            frags: 0,
            udp_zero_checksum: false,
            tcp_flags: 0x02, // SYN
            ip_id: 0x1234,
            ttl: 64,
            extension_headers: Vec::new(),
        }
    }

    /// IPv6 only: an 8-byte extension header of type `kind` (hop-by-hop 0,
    /// routing 43, fragment 44, destination options 60, ...) before L4, in
    /// the order added.
    pub fn extension_header(mut self, kind: u8) -> Self {
        self.extension_headers.push(kind);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Adds `words` 4-byte words of IPv4 options (NOPs).
    pub fn ip_options(mut self, words: usize) -> Self {
        self.ip_options = words;
        self
    }

    pub fn fragment(mut self, more_fragments: bool, offset_words: u16) -> Self {
        self.frags = (u16::from(more_fragments) << 13) | offset_words;
        self
    }

    /// UDP only: send without a checksum (checksum field 0).
    pub fn udp_zero_checksum(mut self) -> Self {
        self.udp_zero_checksum = true;
        self
    }

    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// The TTL (IPv4) or hop limit (IPv6); 64 unless set.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let (IpAddr::V4(saddr), IpAddr::V4(daddr)) = (self.saddr, self.daddr) else { return self.build_ipv6() };
        let l4 = self.l4();
        let ihl = 20 + self.ip_options * 4;
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frags.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&saddr.octets());
        ip[16..20].copy_from_slice(&daddr.octets());
        ip[20..].fill(1); // NOP options
        let check = compute(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }

    fn build_ipv6(&self) -> Vec<u8> {
        let l4 = self.l4();
        let (IpAddr::V6(saddr), IpAddr::V6(daddr)) = (self.saddr, self.daddr) else { unreachable!() };
        // Each extension header names the next; the last names L4.
        let mut chain = self.extension_headers.clone();
        chain.push(self.proto);
        let mut extensions = Vec::new();
        for next in &chain[1..] {
            extensions.extend_from_slice(&[*next, 0, 0, 0, 0, 0, 0, 0]);
        }
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&((extensions.len() + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[chain[0], self.ttl]);
        ip.extend_from_slice(&saddr.octets());
        ip.extend_from_slice(&daddr.octets());
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&extensions);
        frame.extend_from_slice(&l4);
        frame
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        let check_at = match self.proto {
            IPPROTO_TCP => {
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                l4.extend_from_slice(&[0x50, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
                16
            }
            IPPROTO_UDP => {
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                6
            }
            _ => {
                l4.extend_from_slice(&[0, 0, 0, 0]);
                return l4;
            }
        };
        l4.extend_from_slice(&self.payload);
        if !(self.proto == IPPROTO_UDP && self.udp_zero_checksum) {
            let check = l4_checksum(self.saddr, self.daddr, self.proto, &l4);
            l4[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
        }
        l4
    }
}

/// The pseudo-header's sum: IPv4's (RFC 793) or IPv6's (RFC 8200 §8.1,
/// with 128-bit addresses and a 32-bit length).
fn pseudo_header_sum(saddr: IpAddr, daddr: IpAddr, proto: u8, len: usize) -> u32 {
    let octets = |addr: IpAddr| match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut ph = octets(saddr);
    ph.extend_from_slice(&octets(daddr));
    ph.extend_from_slice(&(len as u32).to_be_bytes());
    ph.extend_from_slice(&[0, 0, 0, proto]);
    u32::from(!compute(&ph, 0))
}

fn l4_checksum(saddr: IpAddr, daddr: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let check = compute(l4, pseudo_header_sum(saddr, daddr, proto, l4.len()));
    if proto == IPPROTO_UDP && check == 0 { 0xffff } else { check }
}

/// Why a frame's checksums are wrong, if they are: IPv4 header, and TCP or
/// UDP over the pseudo-header (a UDP checksum of 0 means none and is valid).
/// An ICMP (or ICMPv6, for IPv6 addresses) error of `icmp_type`/`code`
/// from `from` to `to` quoting the IP header and the first 8 L4 bytes of
/// `quoted` (a frame of the same family), checksums right; its MTU field
/// (IPv4: next-hop MTU, IPv6: the word after the checksum) is 1400.
pub fn icmp_error(icmp_type: u8, code: u8, from: impl Into<IpAddr>, to: impl Into<IpAddr>, quoted: &[u8]) -> Vec<u8> {
    const IP: usize = 14;
    let (from, to) = (from.into(), to.into());
    let (proto, ip_len) = if from.is_ipv4() { (1, 20) } else { (IPPROTO_ICMPV6, 40) };
    let icmp = IP + ip_len;
    let mut frame = PacketBuilder::new(proto, from, 0, to, 0).build();
    frame.truncate(icmp);
    // 1400 as IPv4's 16-bit next-hop MTU after 16 unused bits, and as
    // ICMPv6's 32-bit MTU: the same bytes.
    frame.extend_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0x05, 0x78]);
    frame.extend_from_slice(&quoted[IP..IP + ip_len + 8]);
    let l4_len = frame.len() - icmp;
    let pseudo = if from.is_ipv4() {
        let tot_len = (frame.len() - IP) as u16;
        frame[IP + 2..IP + 4].copy_from_slice(&tot_len.to_be_bytes());
        frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let ip_check = compute(&frame[IP..icmp], 0);
        frame[IP + 10..IP + 12].copy_from_slice(&ip_check.to_ne_bytes());
        0
    } else {
        frame[IP + 4..IP + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        pseudo_header_sum(from, to, proto, l4_len)
    };
    let icmp_check = compute(&frame[icmp..], pseudo);
    frame[icmp + 2..icmp + 4].copy_from_slice(&icmp_check.to_ne_bytes());
    frame
}

/// A frame too short for the lengths it claims is an error too.
pub fn checksum_errors(frame: &[u8]) -> Option<String> {
    let malformed = || Some("the frame is shorter than its headers say".to_owned());
    if frame.get(12..14)? == [0x86, 0xdd] {
        return ipv6_checksum_errors(frame);
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let Some(header) = ip.get(..ihl.max(20)) else { return malformed() };
    if compute(&header[..ihl], 0) != 0 {
        return Some("ipv4 header checksum is wrong".into());
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let saddr = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
    let daddr = IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
    let proto = ip[9];
    let Some(l4) = ip.get(ihl..tot_len) else { return malformed() };
    if proto == IPPROTO_UDP && l4.get(6..8) == Some(&[0, 0]) {
        return None;
    }
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
        && compute(l4, pseudo_header_sum(saddr, daddr, proto, l4.len())) != 0
    {
        return Some(format!("l4 checksum (protocol {proto}) is wrong"));
    }
    None
}

/// `checksum_errors` of an IPv6 frame without extension headers: TCP, UDP
/// or ICMPv6 over the pseudo-header (UDP's is mandatory in IPv6).
fn ipv6_checksum_errors(frame: &[u8]) -> Option<String> {
    let malformed = || Some("the frame is shorter than its headers say".to_owned());
    let Some(ip) = frame.get(14..54) else { return malformed() };
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (proto, saddr, daddr) =
        (ip[6], <[u8; 16]>::try_from(&ip[8..24]).unwrap(), <[u8; 16]>::try_from(&ip[24..40]).unwrap());
    let Some(l4) = frame.get(54..54 + payload_len) else { return malformed() };
    if matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6)
        && compute(l4, pseudo_header_sum(saddr.into(), daddr.into(), proto, l4.len())) != 0
    {
        return Some(format!("l4 checksum (protocol {proto}) is wrong"));
    }
    None
}
