//! Address/port rewrites with incremental checksum updates, done in software
//! on the packet bytes (the XDP way; the TC hook uses the kernel's helpers).

use super::{
    checksum,
    family::Family,
    parse::{L4_DPORT, L4_SPORT, Packet},
};
use lb_common::IPPROTO_UDP;

/// Which end of the packet a translation rewrites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (client -> backend).
    #[default]
    Dst,
    /// Source address and port (backend reply -> frontend).
    Src,
}

impl Side {
    #[inline(always)]
    pub fn opposite(self) -> Side {
        match self {
            Side::Dst => Side::Src,
            Side::Src => Side::Dst,
        }
    }

    /// Offsets of (address, L4 port) from the start of a packet of `F`.
    #[inline(always)]
    pub fn offsets<F: Family>(self) -> (usize, usize) {
        match self {
            Side::Dst => (F::DADDR, F::L4 + L4_DPORT),
            Side::Src => (F::SADDR, F::L4 + L4_SPORT),
        }
    }
}

/// Rewrites `side` of `pkt` to `to` (address and port, wire order), and the
/// other side to `other`, and fixes the L4 checksum (whose pseudo-header
/// holds the addresses) and IPv4's header one, in software (XDP).
///
/// # Safety
/// `pkt` must come from `parse` over a writable packet that is still valid.
#[inline(always)]
pub unsafe fn rewrite<F: Family>(pkt: &Packet<F>, side: Side, to: (F::Addr, u16), other: Option<(F::Addr, u16)>) {
    let l4_check_off = pkt.l4_check_offset();
    // SAFETY: as the caller promises; the L4 checksum is inside the headers
    // `parse` bounds-checked.
    unsafe {
        let (addrs, ports) = store(pkt, side, to, other);
        let l4_check: u16 = pkt.read(l4_check_off);
        let l4_check = if pkt.proto == IPPROTO_UDP {
            checksum::apply_udp(l4_check, addrs + ports)
        } else {
            checksum::apply(l4_check, addrs + ports)
        };
        pkt.write(l4_check_off, l4_check);
    }
}

/// Writes `side` of `pkt` to `to` and the other side to `other`, IPv4's
/// header checksum updated; returns the differences the change makes to
/// any sum over the addresses (the L4 pseudo-header) and over the ports,
/// for the L4 checksum (`rewrite`'s in software, TC's through the kernel's
/// helper).
///
/// # Safety
/// As for [`rewrite`].
#[inline(always)]
pub unsafe fn store<F: Family>(
    pkt: &Packet<F>,
    side: Side,
    to: (F::Addr, u16),
    other: Option<(F::Addr, u16)>,
) -> (u32, u32) {
    // SAFETY: as the caller promises.
    unsafe {
        let (mut addrs, mut ports) = store_side(pkt, side, to);
        if let Some(other) = other {
            let (a, p) = store_side(pkt, side.opposite(), other);
            (addrs, ports) = (addrs + a, ports + p);
        }
        if let Some(ip_check) = F::IP_CHECK {
            pkt.write(ip_check, checksum::apply(pkt.read(ip_check), addrs));
        }
        (addrs, ports)
    }
}

/// # Safety
/// As for [`rewrite`].
#[inline(always)]
unsafe fn store_side<F: Family>(pkt: &Packet<F>, side: Side, (addr, port): (F::Addr, u16)) -> (u32, u32) {
    let (addr_off, port_off) = side.offsets::<F>();
    // SAFETY: every offset is inside the headers `parse` bounds-checked.
    unsafe {
        let (old_addr, old_port): (F::Addr, u16) = (pkt.read(addr_off), pkt.read(port_off));
        pkt.write(addr_off, addr);
        pkt.write(port_off, port);
        (checksum::difference(old_addr, addr), checksum::word_difference(old_port, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        packet::{
            family::V4,
            parse::{Frame, parse, parse_ipv6},
        },
        packet_builder::{PacketBuilder, checksum_errors},
    };
    use lb_common::IPPROTO_TCP;

    fn rewritten(mut frame: Vec<u8>, side: Side, addr: [u8; 4], port: u16) -> Vec<u8> {
        let data = frame.as_mut_ptr() as usize;
        let pkt = parse(data, data + frame.len(), Frame::Linear).unwrap();
        unsafe { rewrite(&pkt, side, (u32::from_ne_bytes(addr), port.to_be()), None) };
        frame
    }

    #[test]
    fn dnat_and_snat_produce_exactly_the_translated_packet() {
        let vip = [10, 96, 0, 10];
        let pod = [10, 244, 1, 7];
        let client = [10, 244, 0, 3];
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let request = PacketBuilder::new(proto, client, 41000, vip, 80).payload(b"GET /");
            let to_backend = PacketBuilder::new(proto, client, 41000, pod, 8080).payload(b"GET /");
            let got = rewritten(request.build(), Side::Dst, pod, 8080);
            assert_eq!(got, to_backend.build(), "dnat proto {proto}");
            assert_eq!(checksum_errors(&got), None);

            let reply = PacketBuilder::new(proto, pod, 8080, client, 41000).payload(b"200 OK");
            let from_vip = PacketBuilder::new(proto, vip, 80, client, 41000).payload(b"200 OK");
            let got = rewritten(reply.build(), Side::Src, vip, 80);
            assert_eq!(got, from_vip.build(), "snat proto {proto}");
        }
    }

    #[test]
    fn a_hairpin_rewrites_both_addresses_with_valid_checksums() {
        let me = [10, 244, 0, 3];
        let vip = [10, 96, 0, 10];
        let mut frame = PacketBuilder::new(IPPROTO_TCP, me, 41000, vip, 80).build();
        let data = frame.as_mut_ptr() as usize;
        let pkt = parse(data, data + frame.len(), Frame::Linear).unwrap();
        unsafe {
            let other = Some((u32::from_ne_bytes(vip), 41000u16.to_be()));
            rewrite(&pkt, Side::Dst, (u32::from_ne_bytes(me), 8080u16.to_be()), other);
        }
        assert_eq!(frame, PacketBuilder::new(IPPROTO_TCP, vip, 41000, me, 8080).build());
    }

    #[test]
    fn udp_without_checksum_keeps_it_zero() {
        let pkt = PacketBuilder::new(IPPROTO_UDP, [10, 0, 0, 1], 5000, [10, 96, 0, 1], 53).udp_zero_checksum();
        let got = rewritten(pkt.build(), Side::Dst, [10, 244, 0, 9], 5353);
        assert_eq!(&got[V4::L4 + 6..V4::L4 + 8], &[0, 0]);
        assert_eq!(checksum_errors(&got), None);
        let want = PacketBuilder::new(IPPROTO_UDP, [10, 0, 0, 1], 5000, [10, 244, 0, 9], 5353).udp_zero_checksum();
        assert_eq!(got, want.build());
    }

    #[test]
    fn ipv6_dnat_and_snat_keep_the_pseudo_header_checksums_right() {
        let client: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        let vip: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let pod: [u8; 16] = [0xfd, 0, 0, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xff, 0xff];
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut frame = PacketBuilder::new(proto, client, 41000, vip, 80).payload(b"GET /").build();
            let data = frame.as_mut_ptr() as usize;
            let pkt = parse_ipv6(data, data + frame.len(), Frame::Linear).unwrap();
            unsafe { rewrite(&pkt, Side::Dst, (lb_common::wire::addr6(pod), 8080u16.to_be()), None) };
            assert_eq!(frame, PacketBuilder::new(proto, client, 41000, pod, 8080).payload(b"GET /").build(), "{proto}");
            assert_eq!(checksum_errors(&frame), None);
        }
    }
}
