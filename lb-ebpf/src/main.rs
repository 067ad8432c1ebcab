//! The eBPF object: the entry points. Entry points only dispatch: parse ->
//! decide -> apply, counting one reason per packet.
//!
//! Which hook for which traffic (DESIGN.md §4):
//! - `lb_xdp_node`, XDP on the node's devices: traffic from outside the node
//!   (node ports, external and load-balancer IPs, replies from other nodes).
//!   Frames from a wire carry complete checksums, fixed in software here.
//! - `lb_tc_pod`, TC ingress on the host side of pod veths: traffic from
//!   pods. A pod's TCP/UDP crosses its veth as CHECKSUM_PARTIAL (only the
//!   pseudo-header sum in the L4 field) and often as one GSO super-packet;
//!   the kernel's checksum helpers keep both right, which XDP cannot.
//! - `lb_tc_egress`: the reverse translation of replies that crossed
//!   neither (a reply generated on the node, or from an unattached device).
//! - `lb_sock_*` (in `sockets`), cgroup socket hooks: sockets of processes
//!   on the node, translated once at connect() rather than per packet.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod maps;
mod sockets;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    cty::c_long,
    helpers::{
        bpf_csum_update, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    macros::{classifier, map, xdp},
    maps::ProgramArray,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use lb_common::{CtKey, DEVICE_INGRESS_HOOKED, Hook, IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire, Reason, ipv6_programs};
use lb_ebpf::{
    answer::{self, Answered, L4Checksum, Unreachable},
    decide::{self, Verdict, decide},
    forward::{self, FibQuery, KeptRoute, Routed, Step, TcStep, TooBig},
    packet::{
        self, ETH_P_IPV6,
        family::{Family, V4, V6},
        icmp::{self, Errors},
        nat::{self, Side},
        parse::{Frame, IP_OFFSET, Packet, TCP_HEADER_LEN, ether_type, parse, parse_ipv6},
        tcp,
    },
};
use maps::{FamilyMaps, KernelFib, MapTables, count, count_fast_path, device_flags, is_service_address};

/// Set to 1 by the agent at load time when any device takes XDP frames
/// (`--xdp-redirect-device`); with 0 the verifier removes the fast path and
/// rewritten packets skip the FIB lookup.
#[unsafe(no_mangle)]
static LB_FAST_PATH: u8 = 0;

/// 1 (the default): pod traffic the TC program rewrote leaves by
/// `bpf_redirect_peer` / `bpf_redirect_neigh` where the FIB allows; 0
/// (`--pod-forwarding stack`): always by the kernel's routing.
#[unsafe(no_mangle)]
static LB_TC_REDIRECT: u8 = 1;

#[allow(clippy::unnecessary_cast, reason = "the bindings are u32 on BPF targets")]
const TC_OK: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast, reason = "the bindings are u32 on BPF targets")]
const TC_SHOT: i32 = TC_ACT_SHOT as i32;

/// XDP on the node's devices: new flows only to frontends open to the
/// outside (a cluster IP is for pods), established flows, replies.
#[xdp]
pub fn lb_xdp_node(ctx: XdpContext) -> u32 {
    if ether_type(ctx.data(), ctx.data_end()) == Ok(ETH_P_IPV6) {
        to_ipv6_program(&ctx, &LB_IPV6_XDP, ipv6_programs::XDP_NODE.2);
    }
    let (action, reason) = match parse(ctx.data(), ctx.data_end(), Frame::Linear) {
        Err(Reason::PassNotTcpUdp) => xdp_icmp::<V4>(&ctx),
        Err(reason) => (xdp_action::XDP_PASS, reason),
        Ok(pkt) => xdp_translate(&ctx, &pkt, Part::Whole),
    };
    count(Hook::NodeXdp, reason);
    action
}

/// `lb_xdp_node` for IPv6, tail-called by it.
#[xdp]
pub fn lb_xdp_node6(ctx: XdpContext) -> u32 {
    xdp_ipv6(&ctx, Part::Known { new_flows: Some((&LB_IPV6_XDP, ipv6_programs::XDP_NODE_NEW.2)) })
}

/// `lb_xdp_node6` for a new flow, tail-called by it.
#[xdp]
pub fn lb_xdp_node6_new(ctx: XdpContext) -> u32 {
    xdp_ipv6(&ctx, Part::New)
}

/// `lb_xdp_node6` for ICMPv6, tail-called by it: errors about translated
/// packets and pings to Service addresses, as for IPv4; other ICMPv6
/// (neighbour discovery among it) passes untouched.
#[xdp]
pub fn lb_xdp_node6_icmp(ctx: XdpContext) -> u32 {
    let (action, reason) = xdp_icmp::<V6>(&ctx);
    count(Hook::NodeXdp, reason);
    action
}

#[inline(always)]
fn xdp_ipv6(ctx: &XdpContext, part: Part) -> u32 {
    let (action, reason) = match parse_ipv6(ctx.data(), ctx.data_end(), Frame::Linear) {
        Ok(pkt) => xdp_translate(ctx, &pkt, part),
        Err(Reason::PassNotTcpUdp) => {
            to_ipv6_program(ctx, &LB_IPV6_XDP, ipv6_programs::XDP_NODE_ICMP.2);
            (xdp_action::XDP_PASS, Reason::PassNotTcpUdp)
        }
        Err(reason) => (xdp_action::XDP_PASS, reason),
    };
    count(Hook::NodeXdp, reason);
    action
}

/// Which part of the decision a program makes: an IPv6 packet is decided by
/// two, the second tail-called by the first for a new flow.
#[derive(Clone, Copy)]
enum Part {
    Whole,
    /// For a flow with a conntrack entry; the program at this index of the
    /// array decides the others (none on TC egress, which starts none).
    Known {
        new_flows: Option<(&'static ProgramArray, u32)>,
    },
    New,
}

impl Part {
    /// The verdict for `flow` as far as this part goes.
    #[inline(always)]
    fn decide<F: FamilyMaps, C: aya_ebpf::EbpfContext>(
        self,
        ctx: &C,
        flow: &CtKey<F::Addr>,
        tcp_flags: u8,
        tables: &MapTables<F>,
        hook: Hook,
    ) -> Verdict<F::Addr> {
        match self {
            Part::Whole => decide(flow, tcp_flags, tables, hook),
            Part::New => decide::decide_new(flow, tcp_flags, tables, hook),
            Part::Known { new_flows } => decide::decide_known(flow, tcp_flags, tables, hook).unwrap_or_else(|| {
                if let Some((array, index)) = new_flows {
                    to_ipv6_program(ctx, array, index);
                }
                // TC egress starts nothing; elsewhere only without the
                // new-flow program (never, once the agent loaded it).
                Verdict::Pass(Reason::PassNoService)
            }),
        }
    }
}

/// The IPv6 programs, by `lb_common::ipv6_programs` index; the agent fills
/// them. Pinned: the kernel empties a program array that no process or pin
/// holds, and the hooks outlive the agent.
#[map]
static LB_IPV6_XDP: ProgramArray = ProgramArray::pinned(ipv6_programs::XDP_SLOTS, 0);
#[map]
static LB_IPV6_TC: ProgramArray = ProgramArray::pinned(ipv6_programs::TC_SLOTS, 0);

/// Hands the packet to an IPv6 program (`lb_common::ipv6_programs`: in
/// `array` at `index`), which does not return here. An IPv6 flow's keys and
/// entries need a stack of their own: the verifier allows 512 bytes per
/// call chain, and the IPv4 path uses most of them. Without the program
/// (never, once the agent loaded it) the packet goes on as not IPv4.
#[inline(always)]
fn to_ipv6_program<C: aya_ebpf::EbpfContext>(ctx: &C, array: &ProgramArray, index: u32) {
    // SAFETY: the programs in the array take the same context.
    unsafe { array.tail_call(ctx, index) };
}

/// The decision (`part` of it) for a TCP/UDP packet from outside, applied.
#[inline(always)]
fn xdp_translate<F: Hooks>(ctx: &XdpContext, pkt: &Packet<F>, part: Part) -> (u32, Reason) {
    let flow = pkt.flow();
    let tables = MapTables::<F>::xdp(ctx);
    let verdict = part.decide(ctx, &flow, pkt.tcp_flags(), &tables, Hook::NodeXdp);
    let result = xdp_apply(ctx, pkt, verdict, &flow, &tables);
    F::log_verdict(ctx, &flow, result.1);
    result
}

/// What one family does beyond the translation both share: where a
/// rewritten packet goes, how it is rewritten and answered. IPv4 asks the
/// FIB once, before the rewrite, for both the MTU check and the fast path;
/// IPv6 asks before it only when the source changes (the MTU check), after
/// it for TC's fast path (XDP has none for IPv6), and rewrites and answers
/// in BPF functions of their own (its addresses take stack room).
trait Hooks: FamilyMaps + Answered + Errors + Routed {
    /// Where a packet from outside goes once rewritten (`side` to `to`, the
    /// other side to `other`) by `route`, its entry's; Err: it was answered
    /// instead (too big).
    fn xdp_departure(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        side: Side,
        to: (Self::Addr, u16),
        other: Option<(Self::Addr, u16)>,
        route: &mut KeptRoute,
    ) -> Result<Option<Step>, (u32, Reason)>;
    /// As `xdp_departure`, for a pod's packet.
    fn tc_departure(
        ctx: &TcContext,
        pkt: &Packet<Self>,
        side: Side,
        to: (Self::Addr, u16),
        other: Option<(Self::Addr, u16)>,
        route: &mut KeptRoute,
    ) -> Result<Option<TcStep>, (i32, Reason)>;
    /// `xdp_reject` and `tc_reject`: a refused packet answered.
    fn xdp_reject(ctx: &XdpContext, pkt: &Packet<Self>, reason: Reason) -> (u32, Reason);
    fn tc_reject(ctx: &TcContext, pkt: &Packet<Self>, reason: Reason) -> (i32, Reason);
    /// `tc_rewrite`; false when a kernel helper failed part-way.
    fn tc_rewrite(
        ctx: &TcContext,
        pkt: &Packet<Self>,
        side: Side,
        to: (Self::Addr, u16),
        other: Option<(Self::Addr, u16)>,
    ) -> bool;
    /// Sends a pod's rewritten packet on (`tc_departure` said where).
    fn tc_send(ctx: &TcContext, step: Option<TcStep>, route: &mut KeptRoute) -> i32;
    /// `nat::rewrite` of `side` to `to`, and of the other side to `other`.
    ///
    /// # Safety
    /// As for `nat::rewrite`.
    unsafe fn rewrite(pkt: &Packet<Self>, side: Side, to: (Self::Addr, u16), other: Option<(Self::Addr, u16)>);
    /// Logs a verdict. Compiled in, but removed by the verifier unless the
    /// agent runs with --datapath-debug (AYA_LOG_LEVEL is a load-time constant).
    fn log_verdict<C: aya_ebpf::EbpfContext>(ctx: &C, flow: &CtKey<Self::Addr>, reason: Reason);
}

impl Hooks for V4 {
    #[inline(always)]
    fn xdp_departure(
        ctx: &XdpContext,
        pkt: &Packet,
        side: Side,
        to: (u32, u16),
        other: Option<(u32, u16)>,
        route: &mut KeptRoute,
    ) -> Result<Option<Step>, (u32, Reason)> {
        // SAFETY: `pkt` was parsed from this context's packet just now.
        let departure = unsafe { forward::departure(pkt, side, to, other) };
        xdp_step(ctx, &departure, changes_source(side, &other), route)
            .map_err(|TooBig(mtu)| xdp_too_big::<V4>(ctx, mtu))
    }

    #[inline(always)]
    fn tc_departure(
        ctx: &TcContext,
        pkt: &Packet,
        side: Side,
        to: (u32, u16),
        other: Option<(u32, u16)>,
        route: &mut KeptRoute,
    ) -> Result<Option<TcStep>, (i32, Reason)> {
        // Asked before the rewrite, which it must not follow when the
        // packet is too big.
        let departure = tc_fib_query(ctx, pkt, side, to, other);
        tc_step(ctx, &departure, changes_source(side, &other), route).map_err(|TooBig(mtu)| tc_too_big::<V4>(ctx, mtu))
    }

    #[inline(always)]
    fn xdp_reject(ctx: &XdpContext, pkt: &Packet, reason: Reason) -> (u32, Reason) {
        xdp_reject(ctx, pkt, reason)
    }

    #[inline(always)]
    fn tc_reject(ctx: &TcContext, pkt: &Packet, reason: Reason) -> (i32, Reason) {
        tc_reject(ctx, pkt, reason)
    }

    #[inline(always)]
    fn tc_rewrite(ctx: &TcContext, pkt: &Packet, side: Side, to: (u32, u16), other: Option<(u32, u16)>) -> bool {
        tc_rewrite(ctx, pkt, side, to, other).is_ok()
    }

    #[inline(always)]
    fn tc_send(ctx: &TcContext, step: Option<TcStep>, _: &mut KeptRoute) -> i32 {
        tc_send::<V4>(ctx, step)
    }

    #[inline(always)]
    unsafe fn rewrite(pkt: &Packet, side: Side, to: (u32, u16), other: Option<(u32, u16)>) {
        // SAFETY: as the caller promises.
        unsafe { nat::rewrite(pkt, side, to, other) }
    }

    #[inline(always)]
    fn log_verdict<C: aya_ebpf::EbpfContext>(ctx: &C, flow: &CtKey, reason: Reason) {
        debug!(
            ctx,
            "{:i}:{} -> {:i}:{} proto {}: {}",
            u32::from_be(flow.saddr),
            u16::from_be(flow.sport),
            u32::from_be(flow.daddr),
            u16::from_be(flow.dport),
            flow.proto,
            reason.name()
        );
    }
}

impl Hooks for V6 {
    /// No XDP fast path for IPv6: the kernel's routing forwards, after the
    /// MTU check `forward::departure_step` makes without one.
    #[inline(always)]
    fn xdp_departure(
        ctx: &XdpContext,
        pkt: &Packet<V6>,
        side: Side,
        to: (Ipv6Wire, u16),
        other: Option<(Ipv6Wire, u16)>,
        _: &mut KeptRoute,
    ) -> Result<Option<Step>, (u32, Reason)> {
        match ipv6_room(ctx, pkt, side, (to, other)) {
            0 => Ok(None),
            mtu => Err(xdp_too_big::<V6>(ctx, mtu)),
        }
    }

    /// The MTU check as in `xdp_departure`; the fast path is `tc_send`'s.
    #[inline(always)]
    fn tc_departure(
        ctx: &TcContext,
        pkt: &Packet<V6>,
        side: Side,
        to: (Ipv6Wire, u16),
        other: Option<(Ipv6Wire, u16)>,
        _: &mut KeptRoute,
    ) -> Result<Option<TcStep>, (i32, Reason)> {
        match ipv6_room(ctx, pkt, side, (to, other)) {
            0 => Ok(None),
            mtu => Err(tc_too_big::<V6>(ctx, mtu)),
        }
    }

    /// BPF functions of their own, as `rewrite` is: an ICMPv6 error quotes
    /// 62 bytes.
    #[inline(never)]
    fn xdp_reject(ctx: &XdpContext, pkt: &Packet<V6>, reason: Reason) -> (u32, Reason) {
        xdp_reject(ctx, pkt, reason)
    }

    #[inline(never)]
    fn tc_reject(ctx: &TcContext, pkt: &Packet<V6>, reason: Reason) -> (i32, Reason) {
        tc_reject(ctx, pkt, reason)
    }

    /// A BPF function of its own, as `rewrite` is.
    #[inline(never)]
    fn tc_rewrite(
        ctx: &TcContext,
        pkt: &Packet<V6>,
        side: Side,
        to: (Ipv6Wire, u16),
        other: Option<(Ipv6Wire, u16)>,
    ) -> bool {
        tc_rewrite(ctx, pkt, side, to, other).is_ok()
    }

    /// No step was asked before the rewrite: `tc_forward6` asks after it.
    #[inline(always)]
    fn tc_send(ctx: &TcContext, _: Option<TcStep>, route: &mut KeptRoute) -> i32 {
        tc_forward6(ctx, route)
    }

    /// A BPF function of its own: inlined, an IPv6 rewrite's address words
    /// spill the hook's registers to its stack frame, which the decision's
    /// functions need.
    #[inline(never)]
    unsafe fn rewrite(pkt: &Packet<V6>, side: Side, to: (Ipv6Wire, u16), other: Option<(Ipv6Wire, u16)>) {
        // SAFETY: as the caller promises.
        unsafe { nat::rewrite(pkt, side, to, other) }
    }

    /// Without the addresses: with them, the log record's frame and the
    /// program's exceed the verifier's 512 bytes together on 6.1.
    #[inline(always)]
    fn log_verdict<C: aya_ebpf::EbpfContext>(ctx: &C, flow: &CtKey<Ipv6Wire>, reason: Reason) {
        debug!(
            ctx,
            "ipv6 port {} -> port {} proto {}: {}",
            u16::from_be(flow.sport),
            u16::from_be(flow.dport),
            flow.proto,
            reason.name()
        );
    }
}

/// ICMP (ICMPv6) from outside: errors about translated packets are
/// translated back, pings to Service addresses answered. A BPF function of
/// its own: inlined, it changed how the compiler laid out the TCP/UDP path
/// so much that the 6.1 verifier lost the header bounds there.
#[inline(never)]
fn xdp_icmp<F: Hooks>(ctx: &XdpContext) -> (u32, Reason) {
    match icmp::quoted_flow::<F>(ctx.data(), ctx.data_end()) {
        Some(quoted) => {
            let tables = MapTables::<F>::xdp(ctx);
            (xdp_action::XDP_PASS, translate_icmp_error::<F>(ctx.data(), ctx.data_end(), &quoted, &tables))
        }
        None => xdp_answer_echo::<F>(ctx),
    }
}

/// Turns an ICMP error in `[data, data_end)` that quotes `quoted`, a packet
/// of a translated flow, into one about the packet its sender sent (see
/// `lb_ebpf::packet::icmp`); other ICMP passes untouched.
#[inline(always)]
fn translate_icmp_error<F: Hooks>(
    data: usize,
    data_end: usize,
    quoted: &CtKey<F::Addr>,
    tables: &MapTables<F>,
) -> Reason {
    match decide::quoted_packet(quoted, tables) {
        // The bounds again: the verifier forgets them across the lookup.
        Verdict::Rewrite { reason, side, addr, port, other, .. } if data + F::ERROR_HEADERS_LEN <= data_end => {
            // SAFETY: the context's writable frame, which `quoted_flow` accepted.
            unsafe {
                icmp::rewrite_quoted::<F>(data, side, addr, port);
                if let Some((other_addr, other_port)) = other.get() {
                    icmp::rewrite_quoted::<F>(data, side.opposite(), other_addr, other_port);
                }
            }
            reason
        }
        _ => Reason::PassNotTcpUdp,
    }
}

#[inline(always)]
fn xdp_apply<F: Hooks>(
    ctx: &XdpContext,
    pkt: &Packet<F>,
    verdict: Verdict<F::Addr>,
    flow: &CtKey<F::Addr>,
    tables: &MapTables<F>,
) -> (u32, Reason) {
    match verdict {
        Verdict::Pass(reason) => (xdp_action::XDP_PASS, reason),
        Verdict::Drop(reason) => (xdp_action::XDP_DROP, reason),
        Verdict::Rewrite { reason, side, addr, port, other } => {
            let other = other.get();
            let Some(route) = maps::route() else { return (xdp_action::XDP_DROP, Reason::DropRewriteFailed) };
            let step = match F::xdp_departure(ctx, pkt, side, (addr, port), other, route) {
                Ok(step) => step,
                Err(answered) => return answered,
            };
            // SAFETY: `pkt` was parsed from this context's packet, which
            // nothing has touched since.
            unsafe { F::rewrite(pkt, side, (addr, port), other) };
            tables.rewritten(flow, reason, route, (ctx.data_end() - ctx.data()) as u32);
            (xdp_send(ctx, &step), reason)
        }
        Verdict::Reject(reason) => F::xdp_reject(ctx, pkt, reason),
    }
}

/// Rewrites `side` of `pkt` to `to`, and the other side to `other`.
///
/// Where a packet goes once rewritten (`forward::departure_step`): with the
/// fast path, out from XDP when that applies. A BPF function of its own:
/// the FIB's query stays out of the caller's frame.
#[inline(never)]
fn xdp_step(
    ctx: &XdpContext,
    departure: &(FibQuery, u8),
    new_source: bool,
    route: &mut KeptRoute,
) -> Result<Option<Step>, TooBig> {
    // SAFETY: a load-time constant read volatile so that it is not folded.
    let fast_path = unsafe { core::ptr::read_volatile(&LB_FAST_PATH) != 0 };
    let fib = KernelFib::of(ctx);
    forward::departure_step(&fib, route, ctx.arrived_on(), departure, fast_path, new_source, forward::next_step)
}

/// For IPv6, which asks the FIB before the rewrite only for the MTU check
/// (its entries keep no route, `lb_common::NoHop`): the MTU of the route of
/// `pkt` once rewritten (`side` to `to`, the other side to `other`) when
/// that gives it a new source (see `forward::departure_step`) and it does
/// not fit; else 0.
#[inline(always)]
fn ipv6_room<C: Departing>(
    ctx: &C,
    pkt: &Packet<V6>,
    side: Side,
    (to, other): ((Ipv6Wire, u16), Option<(Ipv6Wire, u16)>),
) -> u16 {
    if changes_source(side, &other) { route_room(ctx, pkt, side, &to, &other) } else { 0 }
}

/// `forward::fits_route` for `ipv6_room`. A BPF function of its own, like
/// `xdp_step`: the FIB's query stays out of the caller's frame. It returns
/// a plain number and takes references: a BPF function has five argument
/// registers, and an aggregate returned takes one of them.
#[inline(never)]
fn route_room<C: Departing, F: Routed>(
    ctx: &C,
    pkt: &Packet<F>,
    side: Side,
    to: &(F::Addr, u16),
    other: &Option<(F::Addr, u16)>,
) -> u16 {
    // SAFETY: `pkt` was parsed from this context's packet, untouched since.
    let (mut query, ttl) = unsafe { forward::departure(pkt, side, *to, *other) };
    ctx.fit_segment(pkt, &mut query);
    // Most packets (ACKs, requests) fit every route: the FIB is not asked.
    if query.tot_len <= F::MIN_MTU {
        return 0;
    }
    let (fib, mut unkept) = (KernelFib::of(ctx), KeptRoute::default());
    forward::fits_route(&fib, &mut unkept, ctx.arrived_on(), ttl, &query).map_or_else(|TooBig(mtu)| mtu, |()| 0)
}

/// The fragmentation-needed (IPv6: packet too big) a packet too big for its
/// route gets in place of it, about itself. BPF functions of their own: the
/// answer's writes stay out of the decision's stack frames.
#[inline(never)]
fn xdp_too_big<F: Answered>(ctx: &XdpContext, mtu: u16) -> (u32, Reason) {
    xdp_unreachable::<F>(ctx, Unreachable::FragNeeded(mtu), Reason::FragNeeded)
        .unwrap_or((xdp_action::XDP_DROP, Reason::DropRewriteFailed))
}

#[inline(never)]
fn tc_too_big<F: Answered>(ctx: &TcContext, mtu: u16) -> (i32, Reason) {
    tc_unreachable::<F>(ctx, Unreachable::FragNeeded(mtu))
        .map_or((TC_SHOT, Reason::DropRewriteFailed), |()| (TC_OK, Reason::FragNeeded))
}

/// Does a rewrite of `side`, and of the other side to `other`, give the
/// packet a new source (a reply, SNAT)? The kernel's own errors about it
/// would then go to that new source, never to its sender.
#[inline(always)]
fn changes_source<T>(side: Side, other: &Option<T>) -> bool {
    side == Side::Src || other.is_some()
}

/// What the route check needs of a hook's context.
trait Departing: aya_ebpf::EbpfContext {
    /// The device the packet came in on, which the FIB is asked from.
    fn arrived_on(&self) -> u32;
    /// Makes `query` about what leaves: one segment of a GSO packet.
    fn fit_segment<F: Routed>(&self, pkt: &Packet<F>, query: &mut FibQuery<F::Addr>);
}

impl Departing for XdpContext {
    #[inline(always)]
    fn arrived_on(&self) -> u32 {
        // SAFETY: the context's own metadata.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    /// XDP frames are never GSO packets.
    #[inline(always)]
    fn fit_segment<F: Routed>(&self, _: &Packet<F>, _: &mut FibQuery<F::Addr>) {}
}

impl Departing for TcContext {
    #[inline(always)]
    fn arrived_on(&self) -> u32 {
        // SAFETY: the context's own metadata.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn fit_segment<F: Routed>(&self, pkt: &Packet<F>, query: &mut FibQuery<F::Addr>) {
        // SAFETY: the context's own metadata.
        let gso_size = unsafe { (*self.skb.skb).gso_size };
        if gso_size != 0 {
            let l4_header = if pkt.proto == IPPROTO_TCP {
                // SAFETY: inside the TCP header `parse` checked.
                usize::from(unsafe { pkt.read::<u8>(F::L4 + tcp::DOFF) } >> 4) * 4
            } else {
                8
            };
            query.tot_len = (F::L4 - IP_OFFSET + l4_header) as u16 + gso_size.min(u32::from(u16::MAX) / 2) as u16;
        }
    }
}

/// Sends a rewritten packet where `xdp_step` said. A BPF function of its
/// own: inlined into every rewrite path, it took the `--datapath-debug`
/// build past the verifier's complexity limit.
#[inline(never)]
fn xdp_send(ctx: &XdpContext, step: &Option<Step>) -> u32 {
    let Some(step) = *step else { return xdp_action::XDP_PASS };
    count_fast_path(step.counter());
    let hop = match step {
        Step::Tx(hop) | Step::Redirect(hop) => hop,
        Step::Stack(_) => return xdp_action::XDP_PASS,
    };
    // SAFETY: the context's writable frame; bounds are checked inside.
    if !unsafe { forward::write_next_hop::<V4>(ctx.data(), ctx.data_end(), &hop) } {
        return xdp_action::XDP_PASS;
    }
    match step {
        Step::Tx(_) => xdp_action::XDP_TX,
        // SAFETY: a helper taking plain values.
        _ => unsafe { bpf_redirect(hop.ifindex, 0) as u32 },
    }
}

/// Answers a packet for a Service without endpoints in place: a TCP reset
/// or an ICMP port unreachable, handed to the kernel's routing, which sends
/// it back to the client. Anything that fails half-way is dropped, never
/// passed half-written.
#[inline(always)]
fn xdp_reject<F: Answered>(ctx: &XdpContext, pkt: &Packet<F>, reason: Reason) -> (u32, Reason) {
    const DROP: (u32, Reason) = (xdp_action::XDP_DROP, Reason::DropNoBackend);
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: `pkt` is a parsed TCP packet of this context.
        let Some(reset) = (unsafe { answer::reset_for(pkt) }) else { return DROP };
        // SAFETY: as above.
        unsafe { answer::write_reset(pkt, reset, L4Checksum::Full) };
        return xdp_trim(ctx, F::RST_FRAME_LEN, reason).unwrap_or(DROP);
    }
    xdp_unreachable::<F>(ctx, Unreachable::Port, reason).unwrap_or(DROP)
}

/// An ICMP destination unreachable quoting the packet, written over it and
/// handed to the kernel's routing, which sends it back to the sender; None
/// (to be dropped) when it cannot be written.
#[inline(always)]
fn xdp_unreachable<F: Answered>(ctx: &XdpContext, what: Unreachable, reason: Reason) -> Option<(u32, Reason)> {
    // SAFETY: growing the head into XDP's headroom; pointers are re-read after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(F::ICMP_ERROR_GROWTH as i32)) } != 0 {
        return None;
    }
    let data = ctx.data();
    if data + F::ICMP_ERROR_FRAME_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: the frame holds ICMP_ERROR_FRAME_LEN bytes (checked above).
    unsafe { F::write_unreachable(data, what) };
    xdp_trim(ctx, F::ICMP_ERROR_FRAME_LEN, reason)
}

/// Cuts the frame to `len` bytes: the answer written at its start, sent
/// as `reason`.
#[inline(always)]
fn xdp_trim(ctx: &XdpContext, len: usize, reason: Reason) -> Option<(u32, Reason)> {
    // SAFETY: helpers on this program's own context.
    let current = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    (unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - current) } == 0).then_some((xdp_action::XDP_PASS, reason))
}

/// Answers pings to Service addresses (kube-proxy and Cilium leave them
/// unanswered); other ICMP passes untouched.
#[inline(always)]
fn xdp_answer_echo<F: Hooks>(ctx: &XdpContext) -> (u32, Reason) {
    match F::echo_request_to(ctx.data(), ctx.data_end()) {
        // SAFETY: the context's own, writable frame.
        Some(daddr) if is_service_address::<F>(daddr) && unsafe { F::write_echo_reply(ctx.data(), ctx.data_end()) } => {
            (xdp_action::XDP_PASS, Reason::EchoReply)
        }
        _ => (xdp_action::XDP_PASS, Reason::PassNotTcpUdp),
    }
}

/// TC ingress on pod veths: new flows to any frontend, established flows,
/// replies of local backends, and the answers the datapath gives itself.
#[classifier]
pub fn lb_tc_pod(ctx: TcContext) -> i32 {
    if ether_type(ctx.data(), ctx.data_end()) == Ok(ETH_P_IPV6) {
        to_ipv6_program(&ctx, &LB_IPV6_TC, ipv6_programs::TC_POD.2);
    }
    let (action, reason) = match tc_parse(&ctx, parse) {
        Err(Reason::PassNotTcpUdp) => tc_pod_icmp::<V4>(&ctx),
        Err(reason) => (TC_OK, reason),
        Ok(pkt) => tc_pod_translate(&ctx, &pkt, Part::Whole),
    };
    count(Hook::PodTc, reason);
    action
}

/// `lb_tc_pod` for IPv6, tail-called by it.
#[classifier]
pub fn lb_tc_pod6(ctx: TcContext) -> i32 {
    tc_pod_ipv6(&ctx, Part::Known { new_flows: Some((&LB_IPV6_TC, ipv6_programs::TC_POD_NEW.2)) })
}

/// `lb_tc_pod6` for a new flow, tail-called by it.
#[classifier]
pub fn lb_tc_pod6_new(ctx: TcContext) -> i32 {
    tc_pod_ipv6(&ctx, Part::New)
}

/// `lb_tc_pod6` for ICMPv6, tail-called by it.
#[classifier]
pub fn lb_tc_pod6_icmp(ctx: TcContext) -> i32 {
    let (action, reason) = tc_pod_icmp::<V6>(&ctx);
    count(Hook::PodTc, reason);
    action
}

#[inline(always)]
fn tc_pod_ipv6(ctx: &TcContext, part: Part) -> i32 {
    let (action, reason) = match tc_parse(ctx, parse_ipv6) {
        Ok(pkt) => tc_pod_translate(ctx, &pkt, part),
        Err(Reason::PassNotTcpUdp) => {
            to_ipv6_program(ctx, &LB_IPV6_TC, ipv6_programs::TC_POD_ICMP.2);
            (TC_OK, Reason::PassNotTcpUdp)
        }
        Err(reason) => (TC_OK, reason),
    };
    count(Hook::PodTc, reason);
    action
}

/// The decision (`part` of it) for a pod's TCP/UDP packet, applied.
#[inline(always)]
fn tc_pod_translate<F: Hooks>(ctx: &TcContext, pkt: &Packet<F>, part: Part) -> (i32, Reason) {
    let flow = pkt.flow();
    let tables = MapTables::<F>::tc(ctx);
    let result = match part.decide(ctx, &flow, pkt.tcp_flags(), &tables, Hook::PodTc) {
        Verdict::Pass(reason) => (TC_OK, reason),
        Verdict::Drop(reason) => (TC_SHOT, reason),
        Verdict::Rewrite { reason, side, addr, port, other } => {
            let other = other.get();
            let Some(route) = maps::route() else { return (TC_SHOT, Reason::DropRewriteFailed) };
            match F::tc_departure(ctx, pkt, side, (addr, port), other, route) {
                Err(answered) => answered,
                Ok(step) if F::tc_rewrite(ctx, pkt, side, (addr, port), other) => {
                    let action = F::tc_send(ctx, step, route);
                    // SAFETY: the context's own metadata.
                    tables.rewritten(&flow, reason, route, unsafe { (*ctx.skb.skb).len });
                    (action, reason)
                }
                Ok(_) => (TC_SHOT, Reason::DropRewriteFailed),
            }
        }
        Verdict::Reject(reason) => F::tc_reject(ctx, pkt, reason),
    };
    F::log_verdict(ctx, &flow, result.1);
    result
}

/// TC egress: the reverse translation of replies that crossed neither
/// ingress hook. It starts nothing and answers nothing.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's own metadata.
    if device_flags(unsafe { (*ctx.skb.skb).ingress_ifindex }) & DEVICE_INGRESS_HOOKED != 0 {
        count(Hook::TcEgress, Reason::PassDecidedOnIngress);
        return TC_OK;
    }
    if ether_type(ctx.data(), ctx.data_end()) == Ok(ETH_P_IPV6) {
        to_ipv6_program(&ctx, &LB_IPV6_TC, ipv6_programs::TC_EGRESS.2);
    }
    let (action, reason) = match tc_parse(&ctx, parse) {
        Err(Reason::PassNotTcpUdp) => (TC_OK, tc_icmp_error::<V4>(&ctx).unwrap_or(Reason::PassNotTcpUdp)),
        Err(reason) => (TC_OK, reason),
        Ok(pkt) => tc_egress_translate(&ctx, &pkt, Part::Whole),
    };
    count(Hook::TcEgress, reason);
    action
}

/// `lb_tc_egress` for IPv6, tail-called by it. TC egress starts no flow.
#[classifier]
pub fn lb_tc_egress6(ctx: TcContext) -> i32 {
    let (action, reason) = match tc_parse(&ctx, parse_ipv6) {
        Ok(pkt) => tc_egress_translate(&ctx, &pkt, Part::Known { new_flows: None }),
        Err(Reason::PassNotTcpUdp) => {
            to_ipv6_program(&ctx, &LB_IPV6_TC, ipv6_programs::TC_EGRESS_ICMP.2);
            (TC_OK, Reason::PassNotTcpUdp)
        }
        Err(reason) => (TC_OK, reason),
    };
    count(Hook::TcEgress, reason);
    action
}

/// `lb_tc_egress6` for ICMPv6 errors, tail-called by it.
#[classifier]
pub fn lb_tc_egress6_icmp(ctx: TcContext) -> i32 {
    count(Hook::TcEgress, tc_icmp_error::<V6>(&ctx).unwrap_or(Reason::PassNotTcpUdp));
    TC_OK
}

#[inline(always)]
fn tc_egress_translate<F: Hooks>(ctx: &TcContext, pkt: &Packet<F>, part: Part) -> (i32, Reason) {
    match part.decide(ctx, &pkt.flow(), pkt.tcp_flags(), &MapTables::<F>::tc(ctx), Hook::TcEgress) {
        Verdict::Rewrite { reason, side, addr, port, other, .. } if other.get().is_none() => {
            if F::tc_rewrite(ctx, pkt, side, (addr, port), None) {
                if let Some(route) = maps::route() {
                    // SAFETY: the context's own metadata.
                    maps::count_service_traffic(route, unsafe { (*ctx.skb.skb).len });
                }
                (TC_OK, reason)
            } else {
                (TC_SHOT, Reason::DropRewriteFailed)
            }
        }
        // `decide` only passes on this hook otherwise.
        verdict => (TC_OK, verdict.reason()),
    }
}

/// What `tc_step` asks the FIB about a pod's packet
/// being rewritten: the packet as it will leave, and its TTL.
#[inline(always)]
fn tc_fib_query<F: Routed>(
    ctx: &TcContext,
    pkt: &Packet<F>,
    side: Side,
    to: (F::Addr, u16),
    other: Option<(F::Addr, u16)>,
) -> (FibQuery<F::Addr>, u8) {
    // SAFETY: `pkt` is this context's packet, not yet touched by a helper.
    let (mut query, ttl) = unsafe { forward::departure(pkt, side, to, other) };
    ctx.fit_segment(pkt, &mut query);
    (query, ttl)
}

/// Where a pod's packet goes once rewritten (`forward::departure_step`):
/// with `--pod-forwarding redirect`, straight into a local pod or out of
/// the device the FIB names. A BPF function of its own, like `xdp_step`.
#[inline(never)]
fn tc_step(
    ctx: &TcContext,
    departure: &(FibQuery, u8),
    new_source: bool,
    route: &mut KeptRoute,
) -> Result<Option<TcStep>, TooBig> {
    // SAFETY: as in `xdp_step`.
    let redirect = unsafe { core::ptr::read_volatile(&LB_TC_REDIRECT) != 0 };
    let fib = KernelFib::of(ctx);
    forward::departure_step(&fib, route, ctx.arrived_on(), departure, redirect, new_source, forward::tc_next_step)
}

/// Sends a rewritten packet where `tc_step` said: the kernel's routing
/// without the fast path.
#[inline(always)]
fn tc_send<F: Routed>(ctx: &TcContext, step: Option<TcStep>) -> i32 {
    let Some(step) = step else { return TC_OK };
    count_fast_path(step.counter());
    let (data, data_end) = (ctx.data(), ctx.data_end());
    match step {
        // SAFETY: the context's packet, made writable by the rewrite; the
        // bounds are checked inside.
        TcStep::Peer(hop) if unsafe { forward::write_next_hop::<F>(data, data_end, &hop) } => {
            // SAFETY: a helper taking plain values.
            unsafe { bpf_redirect_peer(hop.ifindex, 0) as i32 }
        }
        // SAFETY: as above.
        TcStep::Neigh(ifindex) if unsafe { F::decrement_ttl(data, data_end) } => {
            // SAFETY: a null next hop asks the kernel to resolve the FIB's own.
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        _ => TC_OK,
    }
}

/// Sends a pod's rewritten IPv6 packet on as `tc_send` does IPv4's, with
/// `--pod-forwarding redirect`, by `route`: the FIB is asked (when the
/// entry keeps no answer) about the packet as it now is (IPv6 asks after
/// the rewrite, in a BPF function of its own, to keep the query out of the
/// decision's stack frames). A packet too big for its route goes to the
/// kernel, whose error reaches its sender: only a rewrite that left the
/// source alone gets here unchecked.
#[inline(never)]
fn tc_forward6(ctx: &TcContext, route: &mut KeptRoute) -> i32 {
    // SAFETY: a load-time constant read volatile so that it is not folded.
    if unsafe { core::ptr::read_volatile(&LB_TC_REDIRECT) } == 0 {
        return TC_OK;
    }
    let Ok(pkt) = tc_parse(ctx, parse_ipv6) else { return TC_OK };
    // SAFETY: parsed from this context's packet just now.
    let (mut query, ttl) = unsafe { FibQuery::of(&pkt) };
    ctx.fit_segment(&pkt, &mut query);
    match forward::tc_next_step(&KernelFib::of(ctx), route, ctx.arrived_on(), ttl, &query) {
        Ok(step) => tc_send::<V6>(ctx, Some(step)),
        Err(TooBig(_)) => TC_OK,
    }
}

/// Parses a socket buffer of family `F` (with `parse`) whose headers may
/// not all be in its linear part yet: then they are pulled in and parsed
/// again.
#[inline(always)]
fn tc_parse<F: Family>(
    ctx: &TcContext,
    parse: fn(usize, usize, Frame) -> Result<Packet<F>, Reason>,
) -> Result<Packet<F>, Reason> {
    let frame = Frame::Skb { len: ctx.len() };
    match parse(ctx.data(), ctx.data_end(), frame) {
        Err(Reason::PassTruncated) if ctx.len() as usize >= F::L4 + TCP_HEADER_LEN => {
            ctx.pull_data((F::L4 + TCP_HEADER_LEN) as u32).map_err(|_| Reason::PassTruncated)?;
            parse(ctx.data(), ctx.data_end(), frame)
        }
        result => result,
    }
}

/// Like `nat::rewrite`, for a socket buffer: the addresses, ports and
/// IPv4's header checksum are written in place (`nat::store`), but the L4 checksum only
/// through the kernel's helper, which alone knows how the buffer holds it
/// (a CHECKSUM_PARTIAL packet holds the pseudo-header's seed, which the
/// ports' change must not touch, and the GSO segments inherit it; a
/// CHECKSUM_COMPLETE buffer's sum must follow). Two helper calls whatever
/// changes, one for the addresses (pseudo-header) and one for the ports,
/// each a difference: every call costs a return, which this machine's
/// return-stack mitigations make dear. Every direct write comes before the
/// first call, which invalidates packet pointers.
#[inline(always)]
fn tc_rewrite<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F>,
    side: Side,
    to: (F::Addr, u16),
    other: Option<(F::Addr, u16)>,
) -> Result<(), c_long> {
    // SAFETY: `pkt` was parsed from this context's packet, untouched since;
    // its headers are in the buffer's head, which the verifier's prologue
    // for programs that write packets unclones.
    let (addrs, ports) = unsafe { nat::store(pkt, side, to, other) };
    // A UDP checksum of 0 means none, and stays 0.
    let mangled_0 = if pkt.proto == IPPROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let l4_check = pkt.l4_check_offset();
    ctx.l4_csum_replace(l4_check, 0, u64::from(addrs), u64::from(BPF_F_PSEUDO_HDR) | mangled_0)?;
    ctx.l4_csum_replace(l4_check, 0, u64::from(ports), mangled_0)?;
    if F::IP_CHECK.is_none() {
        // A CHECKSUM_COMPLETE buffer's sum covers the IP header too: the
        // pseudo-header change above took the L4 field's change out of it,
        // which IPv4's header checksum balances; an IPv6 header has none,
        // so its addresses' change is added in. Other buffers refuse it.
        // SAFETY: a helper on this program's own context.
        unsafe { bpf_csum_update(ctx.skb.skb, addrs) };
    }
    Ok(())
}

/// The first `len` bytes of the socket buffer, pulled into its linear part
/// (and made writable) when they are not yet: the start of the packet.
#[inline(always)]
fn tc_linear(ctx: &TcContext, len: usize) -> Option<usize> {
    if ctx.data() + len > ctx.data_end() {
        ctx.pull_data(len as u32).ok()?;
    }
    let data = ctx.data();
    (data + len <= ctx.data_end()).then_some(data)
}

/// Answers a pod's packet for a Service without endpoints in place, as
/// `xdp_reject` does, and hands the answer to the kernel's routing, which
/// sends it back to the pod. Anything that fails half-way is dropped.
#[inline(always)]
fn tc_reject<F: Answered>(ctx: &TcContext, pkt: &Packet<F>, reason: Reason) -> (i32, Reason) {
    const DROP: (i32, Reason) = (TC_SHOT, Reason::DropNoBackend);
    let answered =
        if pkt.proto == IPPROTO_TCP { tc_reset(ctx, pkt) } else { tc_unreachable::<F>(ctx, Unreachable::Port) };
    if answered.is_some() { (TC_OK, reason) } else { DROP }
}

#[inline(always)]
fn tc_reset<F: Answered>(ctx: &TcContext, pkt: &Packet<F>) -> Option<()> {
    // SAFETY: `pkt` is a parsed TCP packet of this context, not yet touched.
    let reset = unsafe { answer::reset_for(pkt) }?;
    let l4_checksum =
        if checksum_deferred(ctx, pkt.l4_check_offset()).ok()? { L4Checksum::Deferred } else { L4Checksum::Full };
    let data = tc_linear(ctx, F::RST_FRAME_LEN)?;
    // SAFETY: RST_FRAME_LEN writable bytes at `data`, the TCP packet parsed above.
    unsafe { answer::write_reset(&Packet::<F>::new(data, ctx.data_end(), IPPROTO_TCP), reset, l4_checksum) };
    // SAFETY: a helper on this program's own context.
    (unsafe { bpf_skb_change_tail(ctx.skb.skb, F::RST_FRAME_LEN as u32, 0) } == 0).then_some(())
}

/// Does the socket buffer defer its L4 checksum (CHECKSUM_PARTIAL)? The
/// kernel's l4_csum_replace then leaves the field alone for any change that
/// is not to the pseudo-header: a probe change tells. (The field is written
/// over afterwards either way.)
#[inline(always)]
fn checksum_deferred(ctx: &TcContext, offset: usize) -> Result<bool, c_long> {
    let before: u16 = ctx.load(offset)?;
    // Flags 0: `to` is a checksum difference to fold in, here 1.
    ctx.l4_csum_replace(offset, 0, 1, 0)?;
    let after: u16 = ctx.load(offset)?;
    Ok(before == after)
}

/// An ICMP destination unreachable quoting the packet, for the kernel's
/// routing to take back to its sender. Written in place, GSO packets
/// included (growing the room in front fails for them): the socket buffer
/// is cut (or grown) to the answer's length first, then its Ethernet
/// header, IPv4 header and first 8 L4 bytes move to where `answer` expects
/// the packet.
#[inline(always)]
fn tc_unreachable<F: Answered>(ctx: &TcContext, what: Unreachable) -> Option<()> {
    // SAFETY: a helper on this program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, F::ICMP_ERROR_FRAME_LEN as u32, 0) } != 0 {
        return None;
    }
    let data = tc_linear(ctx, F::ICMP_ERROR_FRAME_LEN)?;
    // SAFETY: ICMP_ERROR_FRAME_LEN writable bytes at `data` (checked above),
    // the quoted part (`L4 + 8` bytes) copied out before any write.
    unsafe {
        let quoted: F::Quote = packet::read(data);
        packet::write(data + F::ICMP_ERROR_GROWTH, quoted);
        F::write_unreachable(data, what);
    }
    Some(())
}

/// `translate_icmp_error` on a socket buffer's linear part; None when it is
/// no ICMP error quoting a TCP or UDP packet. A BPF function of its own, as
/// `xdp_icmp` is.
#[inline(never)]
fn tc_icmp_error<F: Hooks>(ctx: &TcContext) -> Option<Reason> {
    let data = tc_linear(ctx, F::ERROR_HEADERS_LEN)?;
    let quoted = icmp::quoted_flow::<F>(data, ctx.data_end())?;
    Some(translate_icmp_error::<F>(ctx.data(), ctx.data_end(), &quoted, &MapTables::<F>::tc(ctx)))
}

/// ICMP (ICMPv6) from a pod: errors translated back, pings to Service
/// addresses answered.
#[inline(always)]
fn tc_pod_icmp<F: Hooks>(ctx: &TcContext) -> (i32, Reason) {
    match tc_icmp_error::<F>(ctx) {
        Some(reason) => (TC_OK, reason),
        None => tc_answer_echo::<F>(ctx),
    }
}

/// Answers pings from pods to Service addresses, as `xdp_answer_echo` does.
#[inline(always)]
fn tc_answer_echo<F: Hooks>(ctx: &TcContext) -> (i32, Reason) {
    const NOT_ECHO: (i32, Reason) = (TC_OK, Reason::PassNotTcpUdp);
    let Some(data) = tc_linear(ctx, F::ECHO_HEADERS_LEN) else { return NOT_ECHO };
    match F::echo_request_to(data, ctx.data_end()) {
        Some(daddr) if is_service_address::<F>(daddr) => {
            let (data, data_end) = (ctx.data(), ctx.data_end());
            // SAFETY: the context's own packet, made writable by `tc_linear`.
            if unsafe { F::write_echo_reply(data, data_end) } { (TC_OK, Reason::EchoReply) } else { NOT_ECHO }
        }
        _ => NOT_ECHO,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host this crate is only type-checked; the object is built for
/// `bpfel-unknown-none` by lb-userspace's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
