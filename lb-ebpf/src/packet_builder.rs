//! Builds well-formed Ethernet/IPv4/TCP|UDP frames with correct checksums,
//! and checks them: the fixtures of the host tests and the BPF_PROG_TEST_RUN
//! tables share it.

use crate::packet::checksum::compute;
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Debug)]
pub struct PacketBuilder {
    proto: u8,
    saddr: [u8; 4],
    sport: u16,
    daddr: [u8; 4],
    dport: u16,
    payload: Vec<u8>,
    ip_options: usize,
    frags: u16,
    udp_zero_checksum: bool,
    tcp_flags: u8,
    ip_id: u16,
}

impl PacketBuilder {
    pub fn new(proto: u8, saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Self {
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
        }
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

    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let ihl = 20 + self.ip_options * 4;
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frags.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.saddr);
        ip[16..20].copy_from_slice(&self.daddr);
        ip[20..].fill(1); // NOP options
        let check = compute(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
        frame.extend_from_slice(&ip);
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

fn pseudo_header_sum(saddr: [u8; 4], daddr: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&saddr);
    ph.extend_from_slice(&daddr);
    ph.extend_from_slice(&[0, proto]);
    ph.extend_from_slice(&(len as u16).to_be_bytes());
    u32::from(!compute(&ph, 0))
}

fn l4_checksum(saddr: [u8; 4], daddr: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let check = compute(l4, pseudo_header_sum(saddr, daddr, proto, l4.len()));
    if proto == IPPROTO_UDP && check == 0 { 0xffff } else { check }
}

/// Why a frame's checksums are wrong, if they are: IPv4 header, and TCP or
/// UDP over the pseudo-header (a UDP checksum of 0 means none and is valid).
/// An ICMP error of `icmp_type`/`code` from `from` to `to` quoting the IPv4
/// header and the first 8 L4 bytes of `quoted` (a frame), checksums right.
pub fn icmp_error(icmp_type: u8, code: u8, from: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    const IP: usize = 14;
    const ICMP: usize = IP + 20;
    let mut frame = PacketBuilder::new(1, from, 0, to, 0).build();
    frame.truncate(ICMP);
    frame.extend_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0x05, 0x78]);
    frame.extend_from_slice(&quoted[IP..IP + 28]);
    let tot_len = (frame.len() - IP) as u16;
    frame[IP + 2..IP + 4].copy_from_slice(&tot_len.to_be_bytes());
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let ip_check = compute(&frame[IP..ICMP], 0);
    frame[IP + 10..IP + 12].copy_from_slice(&ip_check.to_ne_bytes());
    let icmp_check = compute(&frame[ICMP..], 0);
    frame[ICMP + 2..ICMP + 4].copy_from_slice(&icmp_check.to_ne_bytes());
    frame
}

/// A frame too short for the lengths it claims is an error too.
pub fn checksum_errors(frame: &[u8]) -> Option<String> {
    let malformed = || Some("the frame is shorter than its headers say".to_owned());
    let ip = frame.get(14..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let Some(header) = ip.get(..ihl.max(20)) else { return malformed() };
    if compute(&header[..ihl], 0) != 0 {
        return Some("ipv4 header checksum is wrong".into());
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let (saddr, daddr, proto) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap(), ip[9]);
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
