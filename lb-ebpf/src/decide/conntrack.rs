//! Conntrack entries for a translated flow. A new flow gets two entries in
//! the one LRU map: the client's 5-tuple (rewrite the destination to the
//! backend) and the backend's reply 5-tuple (rewrite the source back to the
//! frontend). Both directions are thus one lookup on any hook.
//!
//! Each entry follows the TCP state of its own direction's packets (SYN,
//! established, closing), which decides its idle timeout (`CtTimeouts`).

use crate::packet::tcp::{ACK, FIN, RST, SYN};
use lb_common::{
    Addr, Backend, CT_FLAG_REWRITE_OTHER, CT_FORWARD, CT_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN,
    CtEntry, CtKey, IPPROTO_TCP,
};

/// A TCP segment that opens a connection (SYN without ACK).
#[inline(always)]
pub fn is_opening(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & (SYN | ACK) == SYN
}

/// The state of a new flow's entries, from its first packet: a flow that
/// starts mid-connection (its entries expired or were evicted) is taken as
/// established.
#[inline(always)]
pub fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    if is_opening(proto, tcp_flags) { CT_STATE_SYN } else { next_state(proto, CT_STATE_ESTABLISHED, tcp_flags) }
}

/// The state after a packet of the entry's own direction.
#[inline(always)]
pub fn next_state(proto: u8, state: u8, tcp_flags: u8) -> u8 {
    if proto != IPPROTO_TCP {
        CT_STATE_ESTABLISHED
    } else if tcp_flags & (FIN | RST) != 0 || state == CT_STATE_CLOSING {
        CT_STATE_CLOSING
    } else if tcp_flags & ACK != 0 {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// How a new flow is translated: to `backend`, and seen by it as coming
/// from `source` when that is not the client itself (hairpin, SNAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation<A = u32> {
    pub backend: Backend<A>,
    /// (address, port), wire order.
    pub source: Option<(A, u16)>,
}

/// Is the client of `flow` its own backend? Then it must see the frontend
/// as its peer, or it would answer itself directly.
#[inline(always)]
pub fn is_hairpin<A: Addr>(flow: &CtKey<A>, backend: &Backend<A>) -> bool {
    flow.saddr == backend.addr
}

#[inline(always)]
fn flags<A>(t: &Translation<A>) -> u8 {
    if t.source.is_some() { CT_FLAG_REWRITE_OTHER } else { 0 }
}

/// The 5-tuple of the backend's replies to the client of `flow`: addressed
/// to the source it saw.
#[inline(always)]
pub fn reply_key<A: Addr>(flow: &CtKey<A>, t: &Translation<A>) -> CtKey<A> {
    let (daddr, dport) = t.source.unwrap_or((flow.saddr, flow.sport));
    CtKey { saddr: t.backend.addr, daddr, sport: t.backend.port, dport, proto: flow.proto, _pad: 0, _pad2: 0 }
}

/// Rewrites `flow`'s destination to the backend (and its source to `t.source`).
#[inline(always)]
pub fn forward_entry<A: Addr>(t: &Translation<A>, frontend_id: u32, state: u8, now_ns: u64) -> CtEntry<A> {
    let (other_addr, other_port) = t.source.unwrap_or_default();
    CtEntry {
        nat_addr: t.backend.addr,
        nat_port: t.backend.port,
        direction: CT_FORWARD,
        flags: flags(t),
        frontend_id,
        other_addr,
        other_port,
        state,
        _pad: 0,
        hop: Default::default(),
        created_ns: now_ns,
        last_seen_ns: now_ns,
    }
}

/// Rewrites the replies' source back to the frontend `flow` was sent to
/// (and their destination back to the client).
#[inline(always)]
pub fn reply_entry<A: Addr>(
    flow: &CtKey<A>,
    t: &Translation<A>,
    frontend_id: u32,
    state: u8,
    now_ns: u64,
) -> CtEntry<A> {
    CtEntry {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        direction: CT_REPLY,
        flags: flags(t),
        frontend_id,
        other_addr: flow.saddr,
        other_port: flow.sport,
        state,
        _pad: 0,
        hop: Default::default(),
        created_ns: now_ns,
        last_seen_ns: now_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: CtKey = CtKey { saddr: 1, daddr: 2, sport: 3, dport: 4, proto: 6, _pad: 0, _pad2: 0 };
    const BACKEND: Backend = Backend { addr: 9, port: 8, flags: 0 };

    #[test]
    fn reply_key_is_the_backend_answering_the_client() {
        let t = Translation { backend: BACKEND, source: None };
        let reply = reply_key(&FLOW, &t);
        assert_eq!((reply.saddr, reply.sport, reply.daddr, reply.dport), (9, 8, 1, 3));
        let entry = reply_entry(&FLOW, &t, 7, CT_STATE_SYN, 0);
        assert_eq!((entry.nat_addr, entry.nat_port, entry.direction, entry.flags), (2, 4, CT_REPLY, 0));
        let fwd = forward_entry(&t, 7, CT_STATE_SYN, 0);
        assert_eq!((fwd.nat_addr, fwd.nat_port, fwd.direction, fwd.flags), (9, 8, CT_FORWARD, 0));
    }

    #[test]
    fn a_translated_source_is_where_replies_go_and_is_undone_on_them() {
        // SNAT to (node 5, port 61000): the backend answers there.
        let t = Translation { backend: BACKEND, source: Some((5, 61000)) };
        let reply = reply_key(&FLOW, &t);
        assert_eq!((reply.saddr, reply.sport, reply.daddr, reply.dport), (9, 8, 5, 61000));
        let fwd = forward_entry(&t, 7, CT_STATE_SYN, 0);
        assert_eq!((fwd.flags, fwd.other_addr, fwd.other_port), (CT_FLAG_REWRITE_OTHER, 5, 61000));
        let back = reply_entry(&FLOW, &t, 7, CT_STATE_SYN, 0);
        assert_eq!((back.nat_addr, back.nat_port, back.other_addr, back.other_port), (2, 4, 1, 3));
        assert!(is_hairpin(&CtKey { saddr: 9, ..FLOW }, &BACKEND));
    }

    #[test]
    fn tcp_entries_follow_their_direction_through_handshake_and_close() {
        const T: u8 = IPPROTO_TCP;
        assert_eq!(initial_state(T, SYN), CT_STATE_SYN);
        assert_eq!(initial_state(T, ACK), CT_STATE_ESTABLISHED, "a flow picked up mid-connection");
        assert_eq!(initial_state(T, ACK | FIN), CT_STATE_CLOSING);
        assert_eq!(next_state(T, CT_STATE_SYN, SYN), CT_STATE_SYN, "a retransmitted SYN");
        assert_eq!(next_state(T, CT_STATE_SYN, SYN | ACK), CT_STATE_ESTABLISHED, "the SYN-ACK");
        assert_eq!(next_state(T, CT_STATE_ESTABLISHED, ACK | FIN), CT_STATE_CLOSING);
        assert_eq!(next_state(T, CT_STATE_ESTABLISHED, RST), CT_STATE_CLOSING);
        assert_eq!(next_state(T, CT_STATE_CLOSING, ACK), CT_STATE_CLOSING, "the last ACK");
        assert_eq!(next_state(17, CT_STATE_SYN, 0), CT_STATE_ESTABLISHED, "UDP");
        assert!(is_opening(T, SYN) && !is_opening(T, SYN | ACK) && !is_opening(17, SYN));
    }
}
