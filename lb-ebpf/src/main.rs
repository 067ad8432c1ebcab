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
        bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_tail, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use lb_common::{CtKey, Hook, IPPROTO_TCP, IPPROTO_UDP, Reason};
use lb_ebpf::{
    answer::{self, L4Checksum, Unreachable},
    decide::{self, Verdict, decide},
    forward::{self, FibQuery, Step, TcStep, TooBig},
    packet::{
        self, icmp,
        nat::{self, Side},
        parse::{Frame, IP_CHECK, IP_OFFSET, L4_OFFSET, Packet, TCP_HEADER_LEN, parse},
        tcp,
    },
};
use maps::{KernelFib, MapTables, count, count_fast_path, is_service_address};

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
    let tables = MapTables::xdp(&ctx);
    let (action, reason) = match parse(ctx.data(), ctx.data_end(), Frame::Linear) {
        Err(Reason::PassNotTcpUdp) => xdp_icmp(&ctx, &tables),
        Err(reason) => (xdp_action::XDP_PASS, reason),
        Ok(pkt) => {
            let flow = pkt.flow();
            let result = xdp_apply(&ctx, &pkt, decide(&flow, pkt.tcp_flags(), &tables, Hook::NodeXdp));
            log_verdict(&ctx, &flow, result.1);
            result
        }
    };
    count(Hook::NodeXdp, reason);
    action
}

/// ICMP from outside: errors about translated packets are translated back,
/// pings to Service addresses answered. A BPF function of its own: inlined,
/// it changed how the compiler laid out the TCP/UDP path so much that the
/// 6.1 verifier lost the header bounds there.
#[inline(never)]
fn xdp_icmp(ctx: &XdpContext, tables: &MapTables) -> (u32, Reason) {
    match icmp::quoted_flow(ctx.data(), ctx.data_end()) {
        Some(quoted) => (xdp_action::XDP_PASS, translate_icmp_error(ctx.data(), ctx.data_end(), &quoted, tables)),
        None => xdp_answer_echo(ctx),
    }
}

/// Turns an ICMP error in `[data, data_end)` that quotes `quoted`, a packet
/// of a translated flow, into one about the packet its sender sent (see
/// `lb_ebpf::packet::icmp`); other ICMP passes untouched.
#[inline(always)]
fn translate_icmp_error(data: usize, data_end: usize, quoted: &CtKey, tables: &MapTables) -> Reason {
    match decide::quoted_packet(quoted, tables) {
        // The bounds again: the verifier forgets them across the lookup.
        Verdict::Rewrite { reason, side, addr, port, other } if data + icmp::ERROR_HEADERS_LEN <= data_end => {
            // SAFETY: the context's writable frame, which `quoted_flow` accepted.
            unsafe {
                icmp::rewrite_quoted(data, side, addr, port);
                if let Some((other_addr, other_port)) = other {
                    icmp::rewrite_quoted(data, side.opposite(), other_addr, other_port);
                }
            }
            reason
        }
        _ => Reason::PassNotTcpUdp,
    }
}

/// Logs a verdict. Compiled in, but removed by the verifier unless the
/// agent runs with --datapath-debug (AYA_LOG_LEVEL is a load-time constant).
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

#[inline(always)]
fn xdp_apply(ctx: &XdpContext, pkt: &Packet, verdict: Verdict) -> (u32, Reason) {
    match verdict {
        Verdict::Pass(reason) => (xdp_action::XDP_PASS, reason),
        Verdict::Drop(reason) => (xdp_action::XDP_DROP, reason),
        Verdict::Rewrite { reason, side, addr, port, other } => {
            // SAFETY: `pkt` was parsed from this context's packet just now.
            let departure = unsafe { forward::departure(pkt, side, (addr, port), other) };
            let step = match xdp_step(ctx, &departure, side == Side::Src || other.is_some()) {
                Ok(step) => step,
                Err(TooBig(mtu)) => {
                    return xdp_unreachable(ctx, Unreachable::FragNeeded(mtu), Reason::FragNeeded)
                        .unwrap_or((xdp_action::XDP_DROP, Reason::DropRewriteFailed));
                }
            };
            // SAFETY: as above; nothing has touched it.
            unsafe {
                nat::rewrite(pkt, side, addr, port);
                if let Some((other_addr, other_port)) = other {
                    nat::rewrite(pkt, side.opposite(), other_addr, other_port);
                }
            }
            (xdp_send(ctx, &step), reason)
        }
        Verdict::Reject(reason) => xdp_reject(ctx, pkt, reason),
    }
}

/// Where a packet goes once rewritten (`forward::departure_step`): with the
/// fast path, out from XDP when that applies. A BPF function of its own:
/// the FIB's query stays out of the caller's frame.
#[inline(never)]
fn xdp_step(ctx: &XdpContext, departure: &(FibQuery, u8), new_source: bool) -> Result<Option<Step>, TooBig> {
    // SAFETY: a load-time constant read volatile so that it is not folded;
    // the context's own metadata.
    let (fast_path, ingress) = unsafe { (core::ptr::read_volatile(&LB_FAST_PATH) != 0, (*ctx.ctx).ingress_ifindex) };
    forward::departure_step(&KernelFib::of(ctx), ingress, departure, fast_path, new_source, forward::next_step)
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
    if !unsafe { forward::write_next_hop(ctx.data(), ctx.data_end(), &hop) } {
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
fn xdp_reject(ctx: &XdpContext, pkt: &Packet, reason: Reason) -> (u32, Reason) {
    const DROP: (u32, Reason) = (xdp_action::XDP_DROP, Reason::DropNoBackend);
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: `pkt` is a parsed TCP packet of this context.
        let tot_len = u16::from_be(unsafe { pkt.read(IP_OFFSET + 2) });
        // SAFETY: as above.
        let Some(reset) = (unsafe { answer::reset_for(pkt, tot_len) }) else { return DROP };
        // SAFETY: as above.
        unsafe { answer::write_reset(pkt, reset, L4Checksum::Full) };
        return xdp_trim(ctx, answer::RST_FRAME_LEN, reason).unwrap_or(DROP);
    }
    xdp_unreachable(ctx, Unreachable::Port, reason).unwrap_or(DROP)
}

/// An ICMP destination unreachable quoting the packet, written over it and
/// handed to the kernel's routing, which sends it back to the sender; None
/// (to be dropped) when it cannot be written.
#[inline(always)]
fn xdp_unreachable(ctx: &XdpContext, what: Unreachable, reason: Reason) -> Option<(u32, Reason)> {
    // SAFETY: growing the head into XDP's headroom; pointers are re-read after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(answer::ICMP_ERROR_GROWTH as i32)) } != 0 {
        return None;
    }
    let data = ctx.data();
    if data + answer::ICMP_ERROR_FRAME_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: the frame holds ICMP_ERROR_FRAME_LEN bytes (checked above).
    unsafe { answer::write_unreachable(data, what) };
    xdp_trim(ctx, answer::ICMP_ERROR_FRAME_LEN, reason)
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
fn xdp_answer_echo(ctx: &XdpContext) -> (u32, Reason) {
    match answer::echo_request_to(ctx.data(), ctx.data_end()) {
        // SAFETY: the context's own, writable frame.
        Some(daddr) if is_service_address(daddr) && unsafe { answer::write_echo_reply(ctx.data(), ctx.data_end()) } => {
            (xdp_action::XDP_PASS, Reason::EchoReply)
        }
        _ => (xdp_action::XDP_PASS, Reason::PassNotTcpUdp),
    }
}

/// TC ingress on pod veths: new flows to any frontend, established flows,
/// replies of local backends, and the answers the datapath gives itself.
#[classifier]
pub fn lb_tc_pod(ctx: TcContext) -> i32 {
    let tables = MapTables::tc(&ctx);
    let (action, reason) = match tc_parse(&ctx) {
        Err(Reason::PassNotTcpUdp) => match tc_icmp_error(&ctx, &tables) {
            Some(reason) => (TC_OK, reason),
            None => tc_answer_echo(&ctx),
        },
        Err(reason) => (TC_OK, reason),
        Ok(pkt) => {
            let flow = pkt.flow();
            let result = match decide(&flow, pkt.tcp_flags(), &tables, Hook::PodTc) {
                Verdict::Pass(reason) => (TC_OK, reason),
                Verdict::Drop(reason) => (TC_SHOT, reason),
                Verdict::Rewrite { reason, side, addr, port, other } => {
                    // Asked before the rewrite, which it must not follow when
                    // the packet is too big.
                    let new_source = side == Side::Src || other.is_some();
                    match tc_step(&ctx, &tc_departure(&ctx, &pkt, side, (addr, port), other), new_source) {
                        Err(TooBig(mtu)) => tc_unreachable(&ctx, Unreachable::FragNeeded(mtu))
                            .map_or((TC_SHOT, Reason::DropRewriteFailed), |()| (TC_OK, Reason::FragNeeded)),
                        Ok(step) => match tc_rewrite(&ctx, &pkt, side, (addr, port), other) {
                            Ok(()) => (tc_send(&ctx, step), reason),
                            Err(_) => (TC_SHOT, Reason::DropRewriteFailed),
                        },
                    }
                }
                Verdict::Reject(reason) => tc_reject(&ctx, &pkt, reason),
            };
            log_verdict(&ctx, &flow, result.1);
            result
        }
    };
    count(Hook::PodTc, reason);
    action
}

/// TC egress: the reverse translation of replies that crossed neither
/// ingress hook. It starts nothing and answers nothing.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let tables = MapTables::tc(&ctx);
    let (action, reason) = match tc_parse(&ctx) {
        Err(Reason::PassNotTcpUdp) => (TC_OK, tc_icmp_error(&ctx, &tables).unwrap_or(Reason::PassNotTcpUdp)),
        Err(reason) => (TC_OK, reason),
        Ok(pkt) => match decide(&pkt.flow(), pkt.tcp_flags(), &tables, Hook::TcEgress) {
            Verdict::Rewrite { reason, side, addr, port, other: None } => {
                match tc_rewrite(&ctx, &pkt, side, (addr, port), None) {
                    Ok(()) => (TC_OK, reason),
                    Err(_) => (TC_SHOT, Reason::DropRewriteFailed),
                }
            }
            // `decide` only passes on this hook otherwise.
            verdict => (TC_OK, verdict.reason()),
        },
    };
    count(Hook::TcEgress, reason);
    action
}

/// What `tc_send` asks the FIB about a pod's packet being rewritten: the
/// packet as it will leave, and its TTL.
#[inline(always)]
fn tc_departure(
    ctx: &TcContext,
    pkt: &Packet,
    side: Side,
    to: (u32, u16),
    other: Option<(u32, u16)>,
) -> (FibQuery, u8) {
    // SAFETY: `pkt` is this context's packet, not yet touched by a helper.
    let (mut query, ttl) = unsafe { forward::departure(pkt, side, to, other) };
    // SAFETY: the context's own metadata.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size != 0 {
        // A GSO packet leaves in segments: the FIB checks one against the
        // route's MTU. Too big, the kernel's forwarding sends the sender
        // the fragmentation-needed error (path-MTU discovery).
        let l4_header = if pkt.proto == IPPROTO_TCP {
            // SAFETY: inside the TCP header `parse` checked.
            usize::from(unsafe { pkt.read::<u8>(L4_OFFSET + tcp::DOFF) } >> 4) * 4
        } else {
            8
        };
        query.tot_len = (L4_OFFSET - IP_OFFSET + l4_header) as u16 + gso_size.min(u32::from(u16::MAX) / 2) as u16;
    }
    (query, ttl)
}

/// Where a pod's packet goes once rewritten (`forward::departure_step`):
/// with `--pod-forwarding redirect`, straight into a local pod or out of
/// the device the FIB names. A BPF function of its own, like `xdp_step`.
#[inline(never)]
fn tc_step(ctx: &TcContext, departure: &(FibQuery, u8), new_source: bool) -> Result<Option<TcStep>, TooBig> {
    // SAFETY: as in `xdp_step`.
    let (redirect, ingress) = unsafe { (core::ptr::read_volatile(&LB_TC_REDIRECT) != 0, (*ctx.skb.skb).ifindex) };
    forward::departure_step(&KernelFib::of(ctx), ingress, departure, redirect, new_source, forward::tc_next_step)
}

/// Sends a rewritten packet where `tc_step` said: the kernel's routing
/// without the fast path.
#[inline(always)]
fn tc_send(ctx: &TcContext, step: Option<TcStep>) -> i32 {
    let Some(step) = step else { return TC_OK };
    count_fast_path(step.counter());
    let (data, data_end) = (ctx.data(), ctx.data_end());
    match step {
        // SAFETY: the context's packet, made writable by the rewrite; the
        // bounds are checked inside.
        TcStep::Peer(hop) if unsafe { forward::write_next_hop(data, data_end, &hop) } => {
            // SAFETY: a helper taking plain values.
            unsafe { bpf_redirect_peer(hop.ifindex, 0) as i32 }
        }
        // SAFETY: as above.
        TcStep::Neigh(ifindex) if unsafe { forward::decrement_ttl(data, data_end) } => {
            // SAFETY: a null next hop asks the kernel to resolve the FIB's own.
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        _ => TC_OK,
    }
}

/// Parses a socket buffer whose headers may not all be in its linear part
/// yet: then they are pulled in and parsed again.
#[inline(always)]
fn tc_parse(ctx: &TcContext) -> Result<Packet, Reason> {
    let frame = Frame::Skb { len: ctx.len() };
    match parse(ctx.data(), ctx.data_end(), frame) {
        Err(Reason::PassTruncated) if ctx.len() as usize >= L4_OFFSET + TCP_HEADER_LEN => {
            ctx.pull_data((L4_OFFSET + TCP_HEADER_LEN) as u32).map_err(|_| Reason::PassTruncated)?;
            parse(ctx.data(), ctx.data_end(), frame)
        }
        result => result,
    }
}

/// Like `nat::rewrite`, but through the kernel's checksum helpers: address
/// changes are marked as pseudo-header changes, so that a CHECKSUM_PARTIAL
/// packet gets its seed updated and a complete checksum its sum, and a GSO
/// packet's segments all inherit a right seed. Every old value is read
/// before the first helper call, which invalidates packet pointers.
#[inline(always)]
fn tc_rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    side: Side,
    to: (u32, u16),
    other: Option<(u32, u16)>,
) -> Result<(), c_long> {
    // SAFETY: offsets inside the headers `parse` checked.
    let (old, old_other) = unsafe { (read_side(pkt, side), read_side(pkt, side.opposite())) };
    let l4_check = pkt.l4_check_offset();
    let udp = pkt.proto == IPPROTO_UDP;
    tc_rewrite_side(ctx, l4_check, udp, side, old, to)?;
    if let Some(other) = other {
        tc_rewrite_side(ctx, l4_check, udp, side.opposite(), old_other, other)?;
    }
    Ok(())
}

/// # Safety
/// `pkt` must come from `parse` over a packet that is still valid.
#[inline(always)]
unsafe fn read_side(pkt: &Packet, side: Side) -> (u32, u16) {
    let (addr_off, port_off) = side.offsets();
    unsafe { (pkt.read(addr_off), pkt.read(port_off)) }
}

#[inline(always)]
fn tc_rewrite_side(
    ctx: &TcContext,
    l4_check: usize,
    udp: bool,
    side: Side,
    old: (u32, u16),
    new: (u32, u16),
) -> Result<(), c_long> {
    let (addr_off, port_off) = side.offsets();
    // A UDP checksum of 0 means none, and stays 0.
    let mangled_0 = if udp { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
    ctx.l4_csum_replace(l4_check, u64::from(old.0), u64::from(new.0), addr_flags)?;
    ctx.l4_csum_replace(l4_check, u64::from(old.1), u64::from(new.1), mangled_0 | 2)?;
    ctx.l3_csum_replace(IP_OFFSET + IP_CHECK, u64::from(old.0), u64::from(new.0), 4)?;
    ctx.store(addr_off, &new.0, 0)?;
    ctx.store(port_off, &new.1, 0)
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
fn tc_reject(ctx: &TcContext, pkt: &Packet, reason: Reason) -> (i32, Reason) {
    const DROP: (i32, Reason) = (TC_SHOT, Reason::DropNoBackend);
    let answered = if pkt.proto == IPPROTO_TCP { tc_reset(ctx, pkt) } else { tc_unreachable(ctx, Unreachable::Port) };
    if answered.is_some() { (TC_OK, reason) } else { DROP }
}

#[inline(always)]
fn tc_reset(ctx: &TcContext, pkt: &Packet) -> Option<()> {
    // SAFETY: `pkt` is a parsed TCP packet of this context, not yet touched.
    let tot_len = u16::from_be(unsafe { pkt.read(IP_OFFSET + 2) });
    // SAFETY: as above.
    let reset = unsafe { answer::reset_for(pkt, tot_len) }?;
    let l4_checksum =
        if checksum_deferred(ctx, pkt.l4_check_offset()).ok()? { L4Checksum::Deferred } else { L4Checksum::Full };
    let data = tc_linear(ctx, answer::RST_FRAME_LEN)?;
    // SAFETY: RST_FRAME_LEN writable bytes at `data`, the TCP packet parsed above.
    unsafe { answer::write_reset(&Packet { data, end: ctx.data_end(), proto: IPPROTO_TCP }, reset, l4_checksum) };
    // SAFETY: a helper on this program's own context.
    (unsafe { bpf_skb_change_tail(ctx.skb.skb, answer::RST_FRAME_LEN as u32, 0) } == 0).then_some(())
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
fn tc_unreachable(ctx: &TcContext, what: Unreachable) -> Option<()> {
    // SAFETY: a helper on this program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, answer::ICMP_ERROR_FRAME_LEN as u32, 0) } != 0 {
        return None;
    }
    let data = tc_linear(ctx, answer::ICMP_ERROR_FRAME_LEN)?;
    // SAFETY: ICMP_ERROR_FRAME_LEN writable bytes at `data` (checked above),
    // the quoted part (`L4_OFFSET + 8` bytes) copied out before any write.
    unsafe {
        let quoted: [u8; L4_OFFSET + 8] = packet::read(data);
        packet::write(data + answer::ICMP_ERROR_GROWTH, quoted);
        answer::write_unreachable(data, what);
    }
    Some(())
}

/// `translate_icmp_error` on a socket buffer's linear part; None when it is
/// no ICMP error quoting a TCP or UDP packet. A BPF function of its own, as
/// `xdp_icmp` is.
#[inline(never)]
fn tc_icmp_error(ctx: &TcContext, tables: &MapTables) -> Option<Reason> {
    let data = tc_linear(ctx, icmp::ERROR_HEADERS_LEN)?;
    let quoted = icmp::quoted_flow(data, ctx.data_end())?;
    Some(translate_icmp_error(ctx.data(), ctx.data_end(), &quoted, tables))
}

/// Answers pings from pods to Service addresses, as `xdp_answer_echo` does.
#[inline(always)]
fn tc_answer_echo(ctx: &TcContext) -> (i32, Reason) {
    const NOT_ECHO: (i32, Reason) = (TC_OK, Reason::PassNotTcpUdp);
    let Some(data) = tc_linear(ctx, answer::ECHO_HEADERS_LEN) else { return NOT_ECHO };
    match answer::echo_request_to(data, ctx.data_end()) {
        Some(daddr) if is_service_address(daddr) => {
            let (data, data_end) = (ctx.data(), ctx.data_end());
            // SAFETY: the context's own packet, made writable by `tc_linear`.
            if unsafe { answer::write_echo_reply(data, data_end) } { (TC_OK, Reason::EchoReply) } else { NOT_ECHO }
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
