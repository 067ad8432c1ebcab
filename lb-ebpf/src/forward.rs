//! The fast path after a rewrite (DESIGN.md §3, step 5). In XDP: when the
//! kernel's FIB knows the next hop and its device takes XDP frames, the
//! frame leaves from XDP: XDP_TX back out of the device it came in on,
//! XDP_REDIRECT out of another. In TC (pod traffic): into a local pod with
//! `bpf_redirect_peer`, out of any other device with `bpf_redirect_neigh`
//! (which resolves the neighbour itself). In every other case the packet is
//! passed to the kernel's routing, which is always correct, with its
//! Ethernet header untouched.
//!
//! A flow's conntrack entries keep the FIB's answer about their packets
//! ([`KeptRoute`]), asked when an entry is refreshed (at most once a
//! second) rather than per packet; each packet is still checked against the
//! route's MTU kept with it.
//!
//! The FIB and the set of enabled devices sit behind [`Fib`] so that the
//! choice has host tests.

use crate::packet::{
    checksum,
    family::{Family, V4, V6},
    nat::Side,
    parse::{IP_CHECK, IP_OFFSET, Packet},
};
use lb_common::{
    Addr, CT_HOP_ANSWER, CT_HOP_DEVICE_SHIFT, CT_HOP_FORWARD, CT_HOP_NO_NEIGHBOUR, CT_HOP_NOT_FORWARDED, CtHop,
    DEVICE_POD, DEVICE_TAKES_XDP_FRAMES, EntryHop, FastPath,
};

/// Offset of the IPv4 TTL (followed by the protocol byte: one 16-bit word).
const IP_TTL: usize = 8;
const IP_TOT_LEN: usize = 2;
const IP_TOS: usize = 1;
const ETH_ALEN: usize = 6;

/// What the FIB is asked: the packet as rewritten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibQuery<A = u32> {
    /// Addresses and ports in network byte order.
    pub saddr: A,
    pub daddr: A,
    /// What routing rules and multipath hashing read besides addresses, as
    /// the FIB's union takes it: IPv4's TOS in the first byte, IPv6's traffic
    /// class and flow label (its first header word without the version).
    pub class: u32,
    pub sport: u16,
    pub dport: u16,
    /// The IP packet's whole length in host order, for the FIB's MTU check.
    pub tot_len: u16,
    pub proto: u8,
}

/// What forwarding reads and writes in a packet of each family.
pub trait Routed: Family {
    /// The smallest MTU a link of the family may have (RFC 791, RFC 8200
    /// §5): a packet no longer than this fits every route.
    const MIN_MTU: u16;

    /// The TTL (hop limit), the routing class (`FibQuery::class`) and the
    /// IP packet's whole length.
    ///
    /// # Safety
    /// `pkt` must come from `parse` over a packet that is still valid.
    unsafe fn route_fields(pkt: &Packet<Self>) -> (u8, u32, u16);

    /// Decrements the TTL (hop limit) of the frame between `data` and
    /// `data_end` as forwarding does, IPv4's header checksum updated (it is
    /// never offloaded); false, writing nothing, when the frame is shorter
    /// than its IP header (the bounds are checked again because helper calls
    /// invalidate earlier checks).
    ///
    /// # Safety
    /// `data..data_end` must be the context's writable frame.
    unsafe fn decrement_ttl(data: usize, data_end: usize) -> bool;
}

impl Routed for V4 {
    const MIN_MTU: u16 = 68;

    #[inline(always)]
    unsafe fn route_fields(pkt: &Packet) -> (u8, u32, u16) {
        // SAFETY: inside the IPv4 header `parse` checked.
        unsafe {
            let tot_len: u16 = pkt.read(IP_OFFSET + IP_TOT_LEN);
            let tos: u8 = pkt.read(IP_OFFSET + IP_TOS);
            (pkt.read(IP_OFFSET + IP_TTL), u32::from_ne_bytes([tos, 0, 0, 0]), u16::from_be(tot_len))
        }
    }

    #[inline(always)]
    unsafe fn decrement_ttl(data: usize, data_end: usize) -> bool {
        if data + IP_OFFSET + IP_CHECK + 2 > data_end {
            return false;
        }
        let pkt = Packet::<V4>::new(data, data_end, 0);
        // SAFETY: the IPv4 header up to its checksum is inside the frame.
        unsafe {
            let old: u16 = pkt.read(IP_OFFSET + IP_TTL);
            let [ttl, proto] = old.to_ne_bytes();
            let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
            let check: u16 = pkt.read(IP_OFFSET + IP_CHECK);
            pkt.write(IP_OFFSET + IP_TTL, new);
            pkt.write(IP_OFFSET + IP_CHECK, checksum::update_word(check, old, new));
        }
        true
    }
}

/// Offset of the IPv6 hop limit.
const IPV6_HOP_LIMIT: usize = 7;

impl Routed for V6 {
    const MIN_MTU: u16 = 1280;

    #[inline(always)]
    unsafe fn route_fields(pkt: &Packet<V6>) -> (u8, u32, u16) {
        const HEADER_LEN: u16 = (V6::L4 - IP_OFFSET) as u16;
        const NOT_VERSION: u32 = 0x0fff_ffffu32.to_be();
        // SAFETY: inside the IPv6 header `parse_ipv6` checked.
        unsafe {
            let first_word: u32 = pkt.read(IP_OFFSET);
            let payload_len: u16 = pkt.read(IP_OFFSET + 4);
            let tot_len = u16::from_be(payload_len).saturating_add(HEADER_LEN);
            (pkt.read(IP_OFFSET + IPV6_HOP_LIMIT), first_word & NOT_VERSION, tot_len)
        }
    }

    #[inline(always)]
    unsafe fn decrement_ttl(data: usize, data_end: usize) -> bool {
        if data + IP_OFFSET + IPV6_HOP_LIMIT + 1 > data_end {
            return false;
        }
        let pkt = Packet::<V6>::new(data, data_end, 0);
        // SAFETY: the hop limit is inside the frame.
        unsafe {
            let hop_limit: u8 = pkt.read(IP_OFFSET + IPV6_HOP_LIMIT);
            pkt.write(IP_OFFSET + IPV6_HOP_LIMIT, hop_limit.wrapping_sub(1));
        }
        true
    }
}

impl<A: Addr> FibQuery<A> {
    /// The query for `pkt` as it is, and its TTL (hop limit).
    ///
    /// # Safety
    /// `pkt` must come from `parse` over a packet that is still valid.
    #[inline(always)]
    pub unsafe fn of<F: Routed<Addr = A>>(pkt: &Packet<F>) -> (Self, u8) {
        let flow = pkt.flow();
        // SAFETY: as the caller promises.
        let (ttl, class, tot_len) = unsafe { F::route_fields(pkt) };
        let query = Self {
            saddr: flow.saddr,
            daddr: flow.daddr,
            sport: flow.sport,
            dport: flow.dport,
            proto: flow.proto,
            class,
            tot_len,
        };
        (query, ttl)
    }

    /// The query for the packet once `side` is rewritten to `to`
    /// (address, port; network byte order).
    #[inline(always)]
    pub fn rewritten(self, side: Side, to: (A, u16)) -> Self {
        match side {
            Side::Dst => Self { daddr: to.0, dport: to.1, ..self },
            Side::Src => Self { saddr: to.0, sport: to.1, ..self },
        }
    }
}

/// The device to send on and the Ethernet addresses to send with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; ETH_ALEN],
    pub dmac: [u8; ETH_ALEN],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibAnswer {
    Forward(NextHop),
    /// A route out of this device, but no neighbour entry for its next hop yet.
    NoNeighbour(u32),
    /// Anything the kernel must handle itself: a local destination, no
    /// route, forwarding disabled.
    NotForwarded,
    /// The packet (or one GSO segment of it) is larger than the route's MTU,
    /// which is given.
    TooBig(u16),
}

/// The kernel's forwarding state as the fast path sees it.
pub trait Fib {
    fn lookup<A: Addr>(&self, ingress_ifindex: u32, query: &FibQuery<A>) -> FibAnswer;
    /// `ifindex`'s `DEVICE_*` flags: whether its receiving side takes
    /// frames sent from XDP (a veth drops them unless its peer runs XDP or
    /// GRO), whether it is the host side of a pod's veth.
    fn device_flags(&self, ifindex: u32) -> u32;
    /// The MTU of the route the packet `query` describes takes (the FIB's
    /// answer for a packet too big for any route).
    #[inline(always)]
    fn route_mtu<A: Addr>(&self, ingress_ifindex: u32, query: &FibQuery<A>) -> u16 {
        match self.lookup(ingress_ifindex, &FibQuery { tot_len: u16::MAX, ..*query }) {
            FibAnswer::TooBig(mtu) => mtu,
            _ => u16::MAX,
        }
    }
}

/// The FIB's answer as a conntrack entry keeps it ([`CtHop`]), for one
/// packet's departure: `asked` when it was not kept and the FIB was asked
/// for this packet, so that the entry keeps the answer from now on. With
/// it, the frontend the decision translated the packet for, whose traffic
/// the packet counts in once it is rewritten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptRoute {
    pub hop: CtHop,
    pub asked: bool,
    pub frontend_id: u32,
}

impl From<CtHop> for KeptRoute {
    #[inline(always)]
    fn from(hop: CtHop) -> Self {
        Self { hop, asked: false, frontend_id: 0 }
    }
}

impl KeptRoute {
    /// The FIB's answer about the packet `query` describes, and its
    /// device's `DEVICE_*` flags: the kept one (checked against this
    /// packet's length, which it was not asked with), else the FIB's, kept.
    #[inline(always)]
    pub fn answer<F: Fib, A: Addr>(&mut self, fib: &F, ingress_ifindex: u32, query: &FibQuery<A>) -> (FibAnswer, u32) {
        let hop = &self.hop;
        let flags = u32::from(hop.kind >> CT_HOP_DEVICE_SHIFT);
        let answer = match hop.kind & CT_HOP_ANSWER {
            CT_HOP_FORWARD => FibAnswer::Forward(NextHop { ifindex: hop.ifindex, smac: hop.smac, dmac: hop.dmac }),
            CT_HOP_NO_NEIGHBOUR => FibAnswer::NoNeighbour(hop.ifindex),
            CT_HOP_NOT_FORWARDED => return (FibAnswer::NotForwarded, 0),
            _ => return self.ask(fib, ingress_ifindex, query),
        };
        if query.tot_len > hop.mtu { (FibAnswer::TooBig(hop.mtu), flags) } else { (answer, flags) }
    }

    #[inline(always)]
    fn ask<F: Fib, A: Addr>(&mut self, fib: &F, ingress_ifindex: u32, query: &FibQuery<A>) -> (FibAnswer, u32) {
        let answer = fib.lookup(ingress_ifindex, query);
        let (kind, hop) = match answer {
            FibAnswer::Forward(hop) => (CT_HOP_FORWARD, hop),
            FibAnswer::NoNeighbour(ifindex) => (CT_HOP_NO_NEIGHBOUR, NextHop { ifindex, smac: [0; 6], dmac: [0; 6] }),
            FibAnswer::NotForwarded => (CT_HOP_NOT_FORWARDED, NextHop { ifindex: 0, smac: [0; 6], dmac: [0; 6] }),
            // About this packet's length only: nothing to keep.
            FibAnswer::TooBig(_) => return (answer, 0),
        };
        // The route's MTU is a second question, asked only where entries
        // keep the answer (IPv4; see `Addr::Hop`).
        let (flags, mtu) = match hop.ifindex {
            0 => (0, 0),
            ifindex if <A::Hop as EntryHop>::KEEPS => {
                (fib.device_flags(ifindex), fib.route_mtu(ingress_ifindex, query))
            }
            ifindex => (fib.device_flags(ifindex), 0),
        };
        let kind = kind | ((flags as u8) << CT_HOP_DEVICE_SHIFT);
        self.hop = CtHop { ifindex: hop.ifindex, dmac: hop.dmac, smac: hop.smac, kind, _pad: 0, mtu };
        self.asked = true;
        (answer, flags)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Tx(NextHop),
    Redirect(NextHop),
    Stack(FastPath),
}

impl Step {
    #[inline(always)]
    pub fn counter(&self) -> FastPath {
        match *self {
            Step::Tx(_) => FastPath::Tx,
            Step::Redirect(_) => FastPath::Redirect,
            Step::Stack(reason) => reason,
        }
    }
}

/// Where a rewritten packet that arrived on `ingress_ifindex` with `ttl`
/// goes next (by `route`); `TooBig` when its route's MTU is below it.
#[inline(always)]
pub fn next_step<F: Fib>(
    fib: &F,
    route: &mut KeptRoute,
    ingress_ifindex: u32,
    ttl: u8,
    query: &FibQuery,
) -> Result<Step, TooBig> {
    if ttl <= 1 {
        return Ok(Step::Stack(FastPath::StackTtlExpired));
    }
    let hop = match route.answer(fib, ingress_ifindex, query) {
        (FibAnswer::NoNeighbour(_), _) => return Ok(Step::Stack(FastPath::StackNoNeighbour)),
        (FibAnswer::NotForwarded, _) => return Ok(Step::Stack(FastPath::StackNotForwarded)),
        (FibAnswer::TooBig(mtu), _) => return Err(TooBig(mtu)),
        (FibAnswer::Forward(_), flags) if flags & DEVICE_TAKES_XDP_FRAMES == 0 => {
            return Ok(Step::Stack(FastPath::StackDeviceNotEnabled));
        }
        (FibAnswer::Forward(hop), _) => hop,
    };
    Ok(if hop.ifindex == ingress_ifindex { Step::Tx(hop) } else { Step::Redirect(hop) })
}

/// Whether the route of the packet `query` describes (by `route`) has room
/// for it (the kernel's forwarding checks the TTL first).
#[inline(always)]
pub fn fits_route<F: Fib, A: Addr>(
    fib: &F,
    route: &mut KeptRoute,
    ingress_ifindex: u32,
    ttl: u8,
    query: &FibQuery<A>,
) -> Result<(), TooBig> {
    if ttl <= 1 {
        return Ok(());
    }
    match route.answer(fib, ingress_ifindex, query) {
        (FibAnswer::TooBig(mtu), _) => Err(TooBig(mtu)),
        _ => Ok(()),
    }
}

/// Where a packet goes once rewritten, asked before the rewrite: with the
/// hook's own forwarding (`forwards`), `next` says (Some); else the
/// kernel's routing (None), after checking that the route has room when
/// the rewrite changes the source (`new_source`): the kernel's own
/// fragmentation-needed would go to that new source, never to the sender.
#[inline(always)]
pub fn departure_step<F: Fib, S>(
    fib: &F,
    route: &mut KeptRoute,
    ingress_ifindex: u32,
    (query, ttl): &(FibQuery, u8),
    forwards: bool,
    new_source: bool,
    next: impl FnOnce(&F, &mut KeptRoute, u32, u8, &FibQuery) -> Result<S, TooBig>,
) -> Result<Option<S>, TooBig> {
    if forwards {
        next(fib, route, ingress_ifindex, *ttl, query).map(Some)
    } else if new_source {
        fits_route(fib, route, ingress_ifindex, *ttl, query).map(|()| None)
    } else {
        Ok(None)
    }
}

/// What the FIB is asked about a packet about to be rewritten (`side` to
/// `to`, the other side to `other`): the packet as it will leave, and its
/// TTL (hop limit).
///
/// # Safety
/// As for [`FibQuery::of`].
#[inline(always)]
pub unsafe fn departure<F: Routed>(
    pkt: &Packet<F>,
    side: Side,
    to: (F::Addr, u16),
    other: Option<(F::Addr, u16)>,
) -> (FibQuery<F::Addr>, u8) {
    // SAFETY: as the caller promises.
    let (query, ttl) = unsafe { FibQuery::of(pkt) };
    let query = query.rewritten(side, to);
    (other.map_or(query, |other| query.rewritten(side.opposite(), other)), ttl)
}

/// Where a rewritten socket buffer from a pod goes next (TC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcStep {
    /// Into the pod behind this host veth, straight to its namespace's
    /// ingress (`bpf_redirect_peer`), with these Ethernet addresses.
    Peer(NextHop),
    /// Out of this device, the kernel resolving the next hop's address
    /// (`bpf_redirect_neigh`).
    Neigh(u32),
    Stack(FastPath),
}

impl TcStep {
    #[inline(always)]
    pub fn counter(&self) -> FastPath {
        match *self {
            TcStep::Peer(_) => FastPath::RedirectPeer,
            TcStep::Neigh(_) => FastPath::RedirectNeigh,
            TcStep::Stack(reason) => reason,
        }
    }
}

/// A packet the route's MTU (given) is too small for: the sender must be
/// told, about the packet it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooBig(pub u16);

/// Where a rewritten socket buffer from a pod, arriving on `ingress_ifindex`
/// with `ttl`, goes next (by `route`).
#[inline(always)]
pub fn tc_next_step<F: Fib, A: Addr>(
    fib: &F,
    route: &mut KeptRoute,
    ingress_ifindex: u32,
    ttl: u8,
    query: &FibQuery<A>,
) -> Result<TcStep, TooBig> {
    if ttl <= 1 {
        return Ok(TcStep::Stack(FastPath::StackTtlExpired));
    }
    Ok(match route.answer(fib, ingress_ifindex, query) {
        (FibAnswer::Forward(hop), flags) if flags & DEVICE_POD != 0 => TcStep::Peer(hop),
        (FibAnswer::Forward(NextHop { ifindex, .. }) | FibAnswer::NoNeighbour(ifindex), _) => TcStep::Neigh(ifindex),
        (FibAnswer::NotForwarded, _) => TcStep::Stack(FastPath::StackNotForwarded),
        (FibAnswer::TooBig(mtu), _) => return Err(TooBig(mtu)),
    })
}

/// Does what the kernel's forwarding would have done to the frame between
/// `data` and `data_end`: new Ethernet addresses and the TTL (hop limit)
/// decremented. Writes nothing and returns false when the frame is shorter
/// than its headers (the bounds are checked again because helper calls
/// invalidate earlier checks).
///
/// # Safety
/// `data..data_end` must be the context's writable frame.
#[inline(always)]
pub unsafe fn write_next_hop<F: Routed>(data: usize, data_end: usize, hop: &NextHop) -> bool {
    if data + F::L4 > data_end {
        return false;
    }
    // SAFETY: the Ethernet and IP headers are inside the frame (checked above).
    unsafe {
        let pkt = Packet::<F>::new(data, data_end, 0);
        pkt.write(0, hop.dmac);
        pkt.write(ETH_ALEN, hop.smac);
        F::decrement_ttl(data, data_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        packet::parse::{Frame, parse},
        packet_builder::PacketBuilder,
    };
    use lb_common::IPPROTO_TCP;

    const INGRESS: u32 = 2;
    const OTHER: u32 = 7;
    const POD_VETH: u32 = 9;

    struct FakeFib {
        answer: FibAnswer,
        enabled: &'static [u32],
        /// Every route's MTU.
        mtu: u16,
        lookups: std::cell::Cell<u32>,
    }

    impl FakeFib {
        fn new(answer: FibAnswer, enabled: &'static [u32]) -> Self {
            Self { answer, enabled, mtu: 1500, lookups: Default::default() }
        }
    }

    impl Fib for FakeFib {
        fn lookup<A: Addr>(&self, _ingress_ifindex: u32, _query: &FibQuery<A>) -> FibAnswer {
            self.lookups.set(self.lookups.get() + 1);
            self.answer
        }
        fn device_flags(&self, ifindex: u32) -> u32 {
            let xdp = if self.enabled.contains(&ifindex) { DEVICE_TAKES_XDP_FRAMES } else { 0 };
            xdp | if ifindex == POD_VETH { DEVICE_POD } else { 0 }
        }
        fn route_mtu<A: Addr>(&self, _ingress_ifindex: u32, _query: &FibQuery<A>) -> u16 {
            self.mtu
        }
    }

    fn hop(ifindex: u32) -> NextHop {
        NextHop { ifindex, smac: [2, 0, 0, 0, 0, 1], dmac: [2, 0, 0, 0, 0, 2] }
    }

    #[test]
    fn a_query_is_rewritten_like_its_packet() {
        let q = FibQuery { saddr: 1, daddr: 2, sport: 3, dport: 4, proto: 6, class: 0, tot_len: 60 };
        assert_eq!(q.rewritten(Side::Dst, (20, 40)), FibQuery { daddr: 20, dport: 40, ..q });
        assert_eq!(q.rewritten(Side::Src, (10, 30)), FibQuery { saddr: 10, sport: 30, ..q });
    }

    #[test]
    fn chooses_tx_redirect_or_the_stack() {
        let q = FibQuery::default();
        let cases = [
            ("same device, enabled", FibAnswer::Forward(hop(INGRESS)), &[INGRESS][..], 64, Step::Tx(hop(INGRESS))),
            ("other device, enabled", FibAnswer::Forward(hop(OTHER)), &[OTHER][..], 64, Step::Redirect(hop(OTHER))),
            (
                "other device, not enabled",
                FibAnswer::Forward(hop(OTHER)),
                &[INGRESS][..],
                64,
                Step::Stack(FastPath::StackDeviceNotEnabled),
            ),
            ("no neighbour", FibAnswer::NoNeighbour(OTHER), &[OTHER][..], 64, Step::Stack(FastPath::StackNoNeighbour)),
            (
                "local or no route",
                FibAnswer::NotForwarded,
                &[INGRESS][..],
                64,
                Step::Stack(FastPath::StackNotForwarded),
            ),
            ("ttl 1", FibAnswer::Forward(hop(INGRESS)), &[INGRESS][..], 1, Step::Stack(FastPath::StackTtlExpired)),
        ];
        for (what, answer, enabled, ttl, want) in cases {
            let mut route = KeptRoute::default();
            assert_eq!(next_step(&FakeFib::new(answer, enabled), &mut route, INGRESS, ttl, &q), Ok(want), "{what}");
        }
        let fib = FakeFib::new(FibAnswer::TooBig(1400), &[OTHER]);
        let too_big = next_step(&fib, &mut KeptRoute::default(), INGRESS, 64, &q);
        assert_eq!(too_big, Err(TooBig(1400)), "the sender is answered, not the stack");
    }

    #[test]
    fn tc_sends_into_local_pods_by_peer_and_elsewhere_by_neighbour() {
        let q = FibQuery::<u32>::default();
        let cases = [
            ("a local pod", FibAnswer::Forward(hop(POD_VETH)), 64, TcStep::Peer(hop(POD_VETH))),
            ("the pod it came from (hairpin)", FibAnswer::Forward(hop(POD_VETH)), 64, TcStep::Peer(hop(POD_VETH))),
            ("another node, neighbour known", FibAnswer::Forward(hop(OTHER)), 64, TcStep::Neigh(OTHER)),
            ("a pod, neighbour unknown", FibAnswer::NoNeighbour(POD_VETH), 64, TcStep::Neigh(POD_VETH)),
            ("local or no route", FibAnswer::NotForwarded, 64, TcStep::Stack(FastPath::StackNotForwarded)),
            ("ttl 1", FibAnswer::Forward(hop(OTHER)), 1, TcStep::Stack(FastPath::StackTtlExpired)),
        ];
        for (what, answer, ttl, want) in cases {
            let mut route = KeptRoute::default();
            assert_eq!(tc_next_step(&FakeFib::new(answer, &[]), &mut route, INGRESS, ttl, &q), Ok(want), "{what}");
        }
        let fib = FakeFib::new(FibAnswer::TooBig(1400), &[]);
        let too_big = tc_next_step(&fib, &mut KeptRoute::default(), INGRESS, 64, &q);
        assert_eq!(too_big, Err(TooBig(1400)), "the sender is answered, not the stack");
    }

    #[test]
    fn an_entry_keeps_the_fib_s_answer_and_its_device_and_each_packet_is_checked_against_the_route_s_mtu() {
        let q = FibQuery { tot_len: 1500, ..FibQuery::default() };
        let fib = FakeFib { mtu: 1500, ..FakeFib::new(FibAnswer::Forward(hop(POD_VETH)), &[POD_VETH]) };
        let mut route = KeptRoute::default();
        assert_eq!(tc_next_step(&fib, &mut route, INGRESS, 64, &q), Ok(TcStep::Peer(hop(POD_VETH))));
        assert!(route.asked, "asked, to be kept in the entry");
        assert_eq!((route.hop.ifindex, route.hop.mtu), (POD_VETH, 1500));
        // The next packets' departures, from the entry's copy.
        let asked = fib.lookups.get();
        let mut kept = KeptRoute::from(route.hop);
        assert_eq!(tc_next_step(&fib, &mut kept, INGRESS, 64, &q), Ok(TcStep::Peer(hop(POD_VETH))));
        assert_eq!(next_step(&fib, &mut kept, INGRESS, 64, &q), Ok(Step::Redirect(hop(POD_VETH))));
        assert_eq!((fib.lookups.get(), kept.asked), (asked, false), "the FIB was not asked again");
        let too_big = FibQuery { tot_len: 1501, ..q };
        assert_eq!(tc_next_step(&fib, &mut kept, INGRESS, 64, &too_big), Err(TooBig(1500)));
        assert_eq!(fits_route(&fib, &mut kept, INGRESS, 64, &too_big), Err(TooBig(1500)));
        // Answers that send nothing out of a device are kept too; a too
        // big one is about one packet only.
        for (answer, kept) in
            [(FibAnswer::NotForwarded, true), (FibAnswer::NoNeighbour(OTHER), true), (FibAnswer::TooBig(1400), false)]
        {
            let mut route = KeptRoute::default();
            let _ = tc_next_step(&FakeFib::new(answer, &[]), &mut route, INGRESS, 64, &q);
            assert_eq!((route.asked, route.hop.kind & CT_HOP_ANSWER != 0), (kept, kept), "{answer:?}");
        }
        let mut route = KeptRoute::default();
        let _ = tc_next_step(&fib, &mut route, INGRESS, 1, &q);
        assert!(!route.asked, "a packet whose TTL runs out is not routed");
    }

    #[test]
    fn next_hop_rewrites_macs_and_ttl_with_a_valid_checksum() {
        let mut frame = PacketBuilder::new(IPPROTO_TCP, [10, 0, 0, 1], 40000, [10, 96, 0, 10], 80).build();
        let range = frame.as_mut_ptr() as usize..frame.as_mut_ptr() as usize + frame.len();
        let pkt = parse(range.start, range.end, Frame::Linear).unwrap();
        // SAFETY: `frame` is alive and writable.
        let (query, ttl_before) = unsafe { FibQuery::of(&pkt) };
        assert_eq!((query.proto, query.tot_len as usize), (IPPROTO_TCP, frame.len() - IP_OFFSET));
        // SAFETY: as above.
        assert!(unsafe { write_next_hop::<V4>(range.start, range.end, &hop(OTHER)) });
        assert_eq!(&frame[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(frame[IP_OFFSET + IP_TTL], ttl_before - 1);
        assert_eq!(checksum::compute(&frame[IP_OFFSET..IP_OFFSET + 20], 0), 0, "IPv4 checksum");
    }

    #[test]
    fn an_ipv6_next_hop_rewrites_macs_and_the_hop_limit_and_the_query_counts_the_header() {
        let (client, vip) = ([0xfd00u16, 0, 0, 0, 0, 0, 0, 3], [0xfd00u16, 0x96, 0, 0, 0, 0, 0, 0x0a]);
        let mut frame = PacketBuilder::new(IPPROTO_TCP, client, 40000, vip, 80).build();
        let range = frame.as_mut_ptr() as usize..frame.as_mut_ptr() as usize + frame.len();
        let pkt = crate::packet::parse::parse_ipv6(range.start, range.end, Frame::Linear).unwrap();
        // SAFETY: `frame` is alive and writable.
        let (query, hop_limit) = unsafe { FibQuery::of(&pkt) };
        assert_eq!((query.proto, query.tot_len as usize, hop_limit), (IPPROTO_TCP, frame.len() - IP_OFFSET, 64));
        // SAFETY: as above.
        assert!(unsafe { write_next_hop::<V6>(range.start, range.end, &hop(OTHER)) });
        assert_eq!(&frame[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(frame[IP_OFFSET + IPV6_HOP_LIMIT], 63);
        assert_eq!(crate::packet_builder::checksum_errors(&frame), None, "no checksum covers the hop limit");
    }

    #[test]
    fn next_hop_leaves_a_short_frame_alone() {
        let mut frame = [0u8; IP_OFFSET + IP_CHECK + 1];
        let start = frame.as_mut_ptr() as usize;
        // SAFETY: `frame` is alive and writable.
        assert!(!unsafe { write_next_hop::<V4>(start, start + frame.len(), &hop(OTHER)) });
        assert_eq!(frame, [0u8; IP_OFFSET + IP_CHECK + 1]);
    }
}
