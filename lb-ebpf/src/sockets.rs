//! The cgroup socket hooks (DESIGN.md §4): a process on the node connects
//! to a Service address and its socket is given a backend's instead, once,
//! at connect() (or at each sendmsg() of an unconnected UDP socket); its
//! packets then need no translation at all. recvmsg() and getpeername()
//! show the Service address back. bind() to a node port is refused.
//!
//! The programs run for every socket of the cgroup they are attached to,
//! whatever its network namespace: they serve the node's own namespace
//! (`LB_NODE_NETNS`), and the others too with `--socket-lb all`. Both
//! families are served: an IPv6 socket naming an IPv4 address
//! (`::ffff:a.b.c.d`, as dual-stack programs such as Java's connect to
//! IPv4) as IPv4, with its answers in the form it asked in.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{Hook, IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire, NodePortKey, Reason, SocketFrontend, SocketPeer};
use lb_ebpf::{
    decide::{self, SocketCall, Verdict},
    packet::family::{V4, V6},
};

use crate::maps::{FamilyMaps, MapTables, count, is_node_port, remember_socket_peer, socket_frontend};

/// The cookie of the node's own network namespace (the agent's), set by
/// the agent at load time.
#[unsafe(no_mangle)]
static LB_NODE_NETNS: u64 = 0;

/// 1 with `--socket-lb all`: pods' sockets are served too.
#[unsafe(no_mangle)]
static LB_SOCKET_PODS: u8 = 0;

/// What a cgroup hook returns: go on with the call, or fail it (with
/// EPERM unless `bpf_set_retval` said otherwise).
const PROCEED: i32 = 1;
const FAIL: i32 = 0;

const EPERM: i32 = 1;
const EADDRINUSE: i32 = 98;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// The address family of a program's socket address. The kernel lets a
/// program touch only its own family's fields, so every use of one is
/// inlined with the family a constant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_sock_connect6(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, Family::V6)
}

/// An unconnected UDP socket's datagram: translated like a connect(), each
/// time (the socket's cookie keeps its backend). An IPv6 socket's datagram
/// to an IPv4-mapped address comes here too (the kernel sends it as IPv4).
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, Family::V6)
}

/// Where an unconnected UDP socket's datagram came from.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    from_backend(&ctx, Family::V6)
}

/// A process on the node may not take a port a Service uses as its node
/// port (kube-proxy held those ports open for the same reason).
#[cgroup_sock_addr(bind4)]
pub fn lb_sock_bind4(ctx: SockAddrContext) -> i32 {
    keep_node_ports(&ctx)
}

/// Node ports answer on the node's IPv6 addresses too.
#[cgroup_sock_addr(bind6)]
pub fn lb_sock_bind6(ctx: SockAddrContext) -> i32 {
    keep_node_ports(&ctx)
}

#[inline(always)]
fn keep_node_ports(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let reason = match served(ctx) {
        Err(reason) => reason,
        Ok((_, false)) => Reason::PassOtherNamespace,
        Ok(_) => {
            // SAFETY: the context's fields, readable by every sock_addr program.
            let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
            if port != 0 && is_node_port(&NodePortKey { port, proto, _pad: 0 }) {
                count(Hook::Socket, Reason::DenyNodePortBind);
                return fail(EADDRINUSE);
            }
            Reason::PassNoService
        }
    };
    count(Hook::Socket, reason);
    PROCEED
}

/// connect() and sendmsg(): a frontend's address becomes a backend's.
#[inline(always)]
fn to_frontend(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let (netns, node) = match served(ctx) {
        Ok(served) => served,
        Err(reason) => {
            count(Hook::Socket, reason);
            return PROCEED;
        }
    };
    let Some(proto) = protocol(sa) else {
        count(Hook::Socket, Reason::PassNotTcpUdp);
        return PROCEED;
    };
    // SAFETY: helpers taking the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the context's field.
    let dport = unsafe { (*sa).user_port } as u16;
    match destination(sa, family) {
        Destination::V4(daddr) => {
            to_backend::<V4>(ctx, family, &SocketCall { daddr, dport, proto, netns, node, cookie })
        }
        Destination::V6(daddr) => {
            to_backend::<V6>(ctx, family, &SocketCall { daddr, dport, proto, netns, node, cookie })
        }
    }
}

/// `to_frontend` for an address of family `F`.
#[inline(always)]
fn to_backend<F: SocketAddress>(ctx: &SockAddrContext, family: Family, call: &SocketCall<F::Addr>) -> i32 {
    let sa = ctx.sock_addr;
    let verdict = decide::socket(call, &MapTables::<F>::socket(ctx));
    count(Hook::Socket, verdict.reason());
    match verdict {
        Verdict::Rewrite { addr, port, .. } => {
            let peer = SocketPeer::new(call.cookie, addr, port);
            let frontend = SocketFrontend { addr: call.daddr, port: call.dport, _pad: 0 };
            // Without its reverse entry the socket would see the backend's
            // address as its peer: better to go on untranslated.
            if remember_socket_peer::<F>(&peer, &frontend) {
                F::set_address(sa, family, addr, port);
            }
            PROCEED
        }
        Verdict::Pass(_) => PROCEED,
        Verdict::Reject(_) => fail(ECONNREFUSED),
        Verdict::Drop(Reason::DropSourceRange) => fail(EPERM),
        Verdict::Drop(_) => fail(EHOSTUNREACH),
    }
}

/// recvmsg() and getpeername(): a backend's address the socket hooks gave
/// this socket is shown as the frontend it asked for.
#[inline(always)]
fn from_backend(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let reason = match destination(sa, family) {
        Destination::V4(addr) => to_frontend_address::<V4>(ctx, family, addr),
        Destination::V6(addr) => to_frontend_address::<V6>(ctx, family, addr),
    };
    count(Hook::Socket, reason);
    PROCEED
}

/// `from_backend` for an address of family `F`.
#[inline(always)]
fn to_frontend_address<F: SocketAddress>(ctx: &SockAddrContext, family: Family, addr: F::Addr) -> Reason {
    let sa = ctx.sock_addr;
    // SAFETY: the context's field, and a helper taking the context.
    let peer = unsafe { SocketPeer::new(bpf_get_socket_cookie(ctx.as_ptr()), addr, (*sa).user_port as u16) };
    match socket_frontend::<F>(&peer) {
        Some(frontend) => {
            F::set_address(sa, family, frontend.addr, frontend.port);
            Reason::ReplyReverseNat
        }
        None => Reason::PassNoService,
    }
}

/// The socket's namespace cookie when the namespace is served, and whether
/// it is the node's own (else a pod's, with `--socket-lb all`).
#[inline(always)]
fn served(ctx: &SockAddrContext) -> Result<(u64, bool), Reason> {
    // SAFETY: a helper taking the context; load-time constants read
    // volatile so that they are not folded.
    let (netns, node_netns, pods) = unsafe {
        (
            bpf_get_netns_cookie(ctx.as_ptr()),
            core::ptr::read_volatile(&LB_NODE_NETNS),
            core::ptr::read_volatile(&LB_SOCKET_PODS),
        )
    };
    match (netns == node_netns, pods != 0) {
        (false, false) => Err(Reason::PassOtherNamespace),
        (node, _) => Ok((netns, node)),
    }
}

/// The address in a program's socket address, by the family it names.
enum Destination {
    V4(u32),
    V6(Ipv6Wire),
}

/// The context's address (network byte order): IPv4 in `user_ip4` or as an
/// IPv4-mapped `user_ip6` (`::ffff:a.b.c.d`), IPv6 in any other `user_ip6`.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, family: Family) -> Destination {
    // SAFETY: the context's fields of the program's own family; each IPv6
    // word read on its own, as the kernel requires.
    unsafe {
        match family {
            Family::V4 => Destination::V4((*sa).user_ip4),
            Family::V6 if is_v4_mapped(sa) => Destination::V4((*sa).user_ip6[3]),
            Family::V6 => Destination::V6([(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]]),
        }
    }
}

/// How a program's socket address (of the program's `Family`) is given an
/// address of one family.
trait SocketAddress: FamilyMaps {
    /// Writes `addr:port` (network byte order) as the context's address, in
    /// the form of the program's family. The kernel lets connect, sendmsg,
    /// recvmsg and getpeername programs write it.
    fn set_address(sa: *mut bpf_sock_addr, family: Family, addr: Self::Addr, port: u16);
}

impl SocketAddress for V4 {
    #[inline(always)]
    fn set_address(sa: *mut bpf_sock_addr, family: Family, addr: u32, port: u16) {
        // SAFETY: the context's writable fields of the program's own family.
        unsafe {
            match family {
                Family::V4 => (*sa).user_ip4 = addr,
                Family::V6 => (*sa).user_ip6[3] = addr,
            }
            (*sa).user_port = u32::from(port);
        }
    }
}

impl SocketAddress for V6 {
    #[inline(always)]
    fn set_address(sa: *mut bpf_sock_addr, _: Family, addr: Ipv6Wire, port: u16) {
        // SAFETY: as for IPv4; only IPv6 programs get here.
        unsafe {
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
            (*sa).user_port = u32::from(port);
        }
    }
}

/// `::ffff:0:0/96`'s third word, network byte order.
const V4_MAPPED: u32 = 0x0000_ffffu32.to_be();

/// Is the IPv6 address an IPv4-mapped one?
///
/// # Safety
/// Only for IPv6 programs.
#[inline(always)]
unsafe fn is_v4_mapped(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: as the caller promises.
    unsafe { (*sa).user_ip6[0] == 0 && (*sa).user_ip6[1] == 0 && (*sa).user_ip6[2] == V4_MAPPED }
}

#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    // SAFETY: the context's field.
    match unsafe { (*sa).protocol } as u8 {
        IPPROTO_TCP => Some(IPPROTO_TCP),
        IPPROTO_UDP => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// Fails the call with `errno` (available since 5.18).
#[inline(always)]
fn fail(errno: i32) -> i32 {
    // SAFETY: a helper taking a plain value.
    unsafe { bpf_set_retval(-errno) };
    FAIL
}
