//! Conntrack entries for a translated flow. A new flow gets two entries in
//! the one LRU map: the client's 5-tuple (rewrite the destination to the
//! backend) and the backend's reply 5-tuple (rewrite the source back to the
//! frontend). Both directions are thus one lookup on any hook.

use lb_common::{Backend, CT_FLAG_HAIRPIN, CT_FORWARD, CT_REPLY, CtEntry, CtKey};

/// Is the client of `flow` its own backend?
#[inline(always)]
pub fn is_hairpin(flow: &CtKey, backend: &Backend) -> bool {
    flow.saddr == backend.addr
}

#[inline(always)]
fn flags(hairpin: bool) -> u8 {
    if hairpin { CT_FLAG_HAIRPIN } else { 0 }
}

/// The 5-tuple of the backend's replies to the client of `flow`; with
/// hairpin they are addressed to the frontend (the source it saw).
#[inline(always)]
pub fn reply_key(flow: &CtKey, backend: &Backend) -> CtKey {
    CtKey {
        saddr: backend.addr,
        daddr: if is_hairpin(flow, backend) { flow.daddr } else { flow.saddr },
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

/// Rewrites `flow`'s destination to `backend`.
#[inline(always)]
pub fn forward_entry(flow: &CtKey, backend: &Backend, svc_id: u32, now_ns: u64) -> CtEntry {
    CtEntry {
        nat_addr: backend.addr,
        nat_port: backend.port,
        direction: CT_FORWARD,
        flags: flags(is_hairpin(flow, backend)),
        svc_id,
        _pad2: 0,
        created_ns: now_ns,
    }
}

/// Rewrites the replies' source back to the frontend `flow` was sent to.
#[inline(always)]
pub fn reply_entry(flow: &CtKey, backend: &Backend, svc_id: u32, now_ns: u64) -> CtEntry {
    CtEntry {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        direction: CT_REPLY,
        flags: flags(is_hairpin(flow, backend)),
        svc_id,
        _pad2: 0,
        created_ns: now_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_key_is_the_backend_answering_the_client() {
        let flow = CtKey { saddr: 1, daddr: 2, sport: 3, dport: 4, proto: 6, _pad: [0; 3] };
        let backend = Backend { addr: 9, port: 8, _pad: 0 };
        let reply = reply_key(&flow, &backend);
        assert_eq!((reply.saddr, reply.sport, reply.daddr, reply.dport), (9, 8, 1, 3));
        let entry = reply_entry(&flow, &backend, 7, 0);
        assert_eq!((entry.nat_addr, entry.nat_port, entry.direction, entry.flags), (2, 4, CT_REPLY, 0));
        let fwd = forward_entry(&flow, &backend, 7, 0);
        assert_eq!((fwd.nat_addr, fwd.nat_port, fwd.direction, fwd.flags), (9, 8, CT_FORWARD, 0));
    }

    #[test]
    fn a_client_that_is_its_own_backend_is_hairpinned_through_the_frontend() {
        let flow = CtKey { saddr: 9, daddr: 2, sport: 3, dport: 4, proto: 6, _pad: [0; 3] };
        let backend = Backend { addr: 9, port: 8, _pad: 0 };
        let reply = reply_key(&flow, &backend);
        assert_eq!((reply.saddr, reply.sport, reply.daddr, reply.dport), (9, 8, 2, 3), "answers go to the frontend");
        assert_eq!(forward_entry(&flow, &backend, 7, 0).flags, CT_FLAG_HAIRPIN);
        assert_eq!(reply_entry(&flow, &backend, 7, 0).flags, CT_FLAG_HAIRPIN);
    }
}
