//! The eBPF object: the maps and the entry points. Entry points only
//! dispatch: parse -> decide -> apply, counting one reason per packet.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod maps;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, xdp_action},
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, Reason};
use lb_ebpf::{
    forward::{self, FibQuery, Step},
    lb::{Hook, Verdict, decide},
    nat::{self, Side},
    parse::{Frame, IP_CHECK, IP_OFFSET, L4_OFFSET, Packet, TCP_HEADER_LEN, parse},
    reply,
};
use maps::{KernelFib, MapTables, count, count_fast_path, is_service_address};

/// Set to 1 by the agent at load time when any device takes XDP frames
/// (`--xdp-redirect-device`); with 0 the verifier removes the fast path and
/// rewritten packets skip the FIB lookup.
#[unsafe(no_mangle)]
static LB_FAST_PATH: u8 = 0;

/// XDP on pod veths: new flows to any frontend, established flows,
/// replies, and the answers the datapath gives itself.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    xdp_main(&ctx, Hook::Xdp)
}

/// XDP on the node's devices: the same, but new flows only to frontends
/// open to the outside (a cluster IP is for pods).
#[xdp]
pub fn lb_xdp_node(ctx: XdpContext) -> u32 {
    xdp_main(&ctx, Hook::XdpNode)
}

#[inline(always)]
fn xdp_main(ctx: &XdpContext, hook: Hook) -> u32 {
    let (action, reason) = match parse(ctx.data(), ctx.data_end(), Frame::Linear) {
        Err(Reason::PassNotTcpUdp) => answer_echo(ctx),
        Err(reason) => (xdp_action::XDP_PASS, reason),
        Ok(pkt) => {
            let flow = pkt.flow();
            let (action, reason) = apply(ctx, &pkt, decide(&flow, pkt.tcp_flags(), &MapTables, hook));
            // Compiled in, but removed by the verifier unless the agent runs
            // with --datapath-debug (AYA_LOG_LEVEL is a load-time constant).
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
            (action, reason)
        }
    };
    count(Hook::Xdp, reason);
    action
}

#[inline(always)]
fn apply(ctx: &XdpContext, pkt: &Packet, verdict: Verdict) -> (u32, Reason) {
    match verdict {
        Verdict::Pass(reason) => (xdp_action::XDP_PASS, reason),
        Verdict::Drop(reason) => (xdp_action::XDP_DROP, reason),
        Verdict::Rewrite { reason, side, addr, port, other } => {
            // SAFETY: `pkt` was parsed from this context's packet just now.
            unsafe {
                nat::rewrite(pkt, side, addr, port);
                if let Some((other_addr, other_port)) = other {
                    nat::rewrite(pkt, side.opposite(), other_addr, other_port);
                }
            }
            // SAFETY: a load-time constant; read volatile so that it is not folded.
            let fast_path = unsafe { core::ptr::read_volatile(&LB_FAST_PATH) } != 0;
            (if fast_path { send(ctx, pkt) } else { xdp_action::XDP_PASS }, reason)
        }
        Verdict::Reject => reject(ctx, pkt),
    }
}

/// The action for a rewritten packet with the fast path on: out from XDP
/// when it applies, else to the kernel's routing (see `lb_ebpf::forward`).
/// A BPF function of its own: inlined into every rewrite path, it took the
/// `--datapath-debug` build past the verifier's complexity limit.
#[inline(never)]
fn send(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // SAFETY: `pkt` is this context's packet; no helper has run since parse.
    let (query, ttl) = unsafe { (FibQuery::of(pkt), forward::ttl(pkt)) };
    // SAFETY: the context's own metadata.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let step = forward::next_step(&KernelFib(ctx), ingress, ttl, &query);
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
fn reject(ctx: &XdpContext, pkt: &Packet) -> (u32, Reason) {
    const DROP: (u32, Reason) = (xdp_action::XDP_DROP, Reason::DropNoBackend);
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: `pkt` is a parsed TCP packet of this context.
        let tot_len = u16::from_be(unsafe { pkt.read(IP_OFFSET + 2) });
        // SAFETY: as above.
        let Some(reset) = (unsafe { reply::reset_for(pkt, tot_len) }) else { return DROP };
        // SAFETY: as above.
        unsafe { reply::write_reset(pkt, reset) };
        return trim(ctx, reply::RST_FRAME_LEN).unwrap_or(DROP);
    }
    // SAFETY: growing the head into XDP's headroom; pointers are re-read after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(reply::ICMP_ERROR_GROWTH as i32)) } != 0 {
        return DROP;
    }
    let data = ctx.data();
    if data + reply::ICMP_ERROR_FRAME_LEN > ctx.data_end() {
        return DROP;
    }
    // SAFETY: the frame holds ICMP_ERROR_FRAME_LEN bytes (checked above).
    unsafe { reply::write_port_unreachable(data) };
    trim(ctx, reply::ICMP_ERROR_FRAME_LEN).unwrap_or(DROP)
}

/// Cuts the frame to `len` bytes: the answer written at its start.
#[inline(always)]
fn trim(ctx: &XdpContext, len: usize) -> Option<(u32, Reason)> {
    // SAFETY: helpers on this program's own context.
    let current = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    (unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - current) } == 0)
        .then_some((xdp_action::XDP_PASS, Reason::RejectNoBackend))
}

/// Answers pings to Service addresses (kube-proxy and Cilium leave them
/// unanswered); other ICMP passes untouched.
#[inline(always)]
fn answer_echo(ctx: &XdpContext) -> (u32, Reason) {
    match reply::echo_request_to(ctx.data(), ctx.data_end()) {
        // SAFETY: the context's own, writable frame.
        Some(daddr) if is_service_address(daddr) && unsafe { reply::write_echo_reply(ctx.data(), ctx.data_end()) } => {
            (xdp_action::XDP_PASS, Reason::EchoReply)
        }
        _ => (xdp_action::XDP_PASS, Reason::PassNotTcpUdp),
    }
}

/// TC egress: the reverse translation of replies that did not cross XDP.
/// TC never drops: a packet it cannot translate leaves untouched.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let reason = match tc_parse(&ctx) {
        Err(reason) => reason,
        Ok(pkt) => match decide(&pkt.flow(), pkt.tcp_flags(), &MapTables, Hook::TcEgress) {
            Verdict::Rewrite { reason, side, addr, port, other: None } => {
                match tc_rewrite(&ctx, &pkt, side, addr, port) {
                    Ok(()) => reason,
                    Err(_) => Reason::PassTruncated,
                }
            }
            // TC only ever passes: `decide` starts nothing on this hook.
            verdict => verdict.reason(),
        },
    };
    count(Hook::TcEgress, reason);
    #[allow(clippy::unnecessary_cast, reason = "the binding is u32 on BPF targets")]
    let ok = TC_ACT_OK as i32;
    ok
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

/// Like `nat::rewrite`, but through the kernel's checksum helpers, which
/// also keep a socket buffer's checksum offload state right.
#[inline(always)]
fn tc_rewrite(ctx: &TcContext, pkt: &Packet, side: Side, addr: u32, port: u16) -> Result<(), i64> {
    let (addr_off, port_off) = side.offsets();
    // SAFETY: offsets inside the headers `parse` checked; read before any
    // helper call invalidates packet pointers.
    let (old_addr, old_port): (u32, u16) = unsafe { (pkt.read(addr_off), pkt.read(port_off)) };
    let l4_check = pkt.l4_check_offset();
    let mangled_0 = if pkt.proto == IPPROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
    ctx.l4_csum_replace(l4_check, u64::from(old_addr), u64::from(addr), addr_flags)?;
    ctx.l4_csum_replace(l4_check, u64::from(old_port), u64::from(port), mangled_0 | 2)?;
    ctx.l3_csum_replace(IP_OFFSET + IP_CHECK, u64::from(old_addr), u64::from(addr), 4)?;
    ctx.store(addr_off, &addr, 0)?;
    ctx.store(port_off, &port, 0)?;
    Ok(())
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
