//! The per-packet decision, after Cilium's `lb4_local()`: conntrack first
//! (one lookup serves established flows and replies alike), then the
//! frontend, then backend selection and the two conntrack entries.
//! Map access goes through [`Tables`] so that the decision has host tests.

use crate::{conntrack, nat::Side};
use lb_common::{Backend, BackendSlotKey, CT_REPLY, CtEntry, CtKey, Frontend, FrontendKey, Reason};

/// A conntrack entry could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsertFailed;

/// The maps and helpers the decision reads and writes.
pub trait Tables {
    fn conntrack(&self, key: &CtKey) -> Option<CtEntry>;
    fn conntrack_insert(&self, key: &CtKey, entry: &CtEntry) -> Result<(), InsertFailed>;
    fn frontend(&self, key: &FrontendKey) -> Option<Frontend>;
    fn backend_slot(&self, key: &BackendSlotKey) -> Option<u32>;
    fn backend(&self, id: u32) -> Option<Backend>;
    fn random(&self) -> u32;
    fn now_ns(&self) -> u64;
}

/// Where the program runs, which decides what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Ingress of node devices and pod veths: new flows, both directions.
    Xdp,
    /// Egress: reverse translation only, for replies that bypassed XDP.
    TcEgress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(Reason),
    Drop(Reason),
    /// Rewrite `side` to `addr:port` (network byte order), then pass.
    Rewrite {
        reason: Reason,
        side: Side,
        addr: u32,
        port: u16,
    },
}

impl Verdict {
    #[inline(always)]
    pub fn reason(&self) -> Reason {
        match *self {
            Verdict::Pass(reason) | Verdict::Drop(reason) | Verdict::Rewrite { reason, .. } => reason,
        }
    }
}

#[inline(always)]
pub fn decide<T: Tables>(flow: &CtKey, tables: &T, hook: Hook) -> Verdict {
    if let Some(entry) = tables.conntrack(flow) {
        let (reason, side) = if entry.direction == CT_REPLY {
            (Reason::ReplyReverseNat, Side::Src)
        } else {
            (Reason::ForwardEstablished, Side::Dst)
        };
        if hook == Hook::Xdp || side == Side::Src {
            return Verdict::Rewrite { reason, side, addr: entry.nat_addr, port: entry.nat_port };
        }
    }
    if hook != Hook::Xdp {
        return Verdict::Pass(Reason::PassNoService);
    }
    let frontend_key = FrontendKey { addr: flow.daddr, port: flow.dport, proto: flow.proto, _pad: 0 };
    let Some(frontend) = tables.frontend(&frontend_key) else {
        return Verdict::Pass(Reason::PassNoService);
    };
    if frontend.backend_count == 0 {
        return Verdict::Drop(Reason::DropNoBackend);
    }
    let slot = tables.random() % u32::from(frontend.backend_count);
    let Some(backend) =
        tables.backend_slot(&BackendSlotKey { svc_id: frontend.svc_id, slot }).and_then(|id| tables.backend(id))
    else {
        return Verdict::Drop(Reason::DropBackendMissing);
    };
    let now = tables.now_ns();
    // The reply entry goes in first: a forward entry without its reply
    // entry would deliver packets whose answers the client cannot match.
    let reply_key = conntrack::reply_key(flow, &backend);
    let written = tables
        .conntrack_insert(&reply_key, &conntrack::reply_entry(flow, frontend.svc_id, now))
        .and_then(|()| tables.conntrack_insert(flow, &conntrack::forward_entry(&backend, frontend.svc_id, now)));
    if written.is_err() {
        return Verdict::Drop(Reason::DropConntrackFull);
    }
    Verdict::Rewrite { reason: Reason::ForwardNewFlow, side: Side::Dst, addr: backend.addr, port: backend.port }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{CT_FORWARD, IPPROTO_TCP};
    use std::{
        cell::{Cell, RefCell},
        collections::HashMap,
    };

    #[derive(Default)]
    struct FakeTables {
        conntrack: RefCell<HashMap<CtKey, CtEntry>>,
        conntrack_full: bool,
        frontends: HashMap<FrontendKey, Frontend>,
        slots: HashMap<BackendSlotKey, u32>,
        backends: HashMap<u32, Backend>,
        random: Cell<u32>,
    }

    impl Tables for FakeTables {
        fn conntrack(&self, key: &CtKey) -> Option<CtEntry> {
            self.conntrack.borrow().get(key).copied()
        }
        fn conntrack_insert(&self, key: &CtKey, entry: &CtEntry) -> Result<(), InsertFailed> {
            if self.conntrack_full {
                return Err(InsertFailed);
            }
            self.conntrack.borrow_mut().insert(*key, *entry);
            Ok(())
        }
        fn frontend(&self, key: &FrontendKey) -> Option<Frontend> {
            self.frontends.get(key).copied()
        }
        fn backend_slot(&self, key: &BackendSlotKey) -> Option<u32> {
            self.slots.get(key).copied()
        }
        fn backend(&self, id: u32) -> Option<Backend> {
            self.backends.get(&id).copied()
        }
        fn random(&self) -> u32 {
            self.random.get()
        }
        fn now_ns(&self) -> u64 {
            42
        }
    }

    const VIP: u32 = 0x0a60_000a;
    const CLIENT: u32 = 0x0af4_0003;

    fn flow(saddr: u32, daddr: u32, sport: u16, dport: u16) -> CtKey {
        CtKey { saddr, daddr, sport, dport, proto: IPPROTO_TCP, _pad: [0; 3] }
    }

    /// One frontend VIP:80 with `n` backends 10.244.0.(10+i):8080.
    fn service(n: u16) -> FakeTables {
        let mut t = FakeTables::default();
        t.frontends.insert(
            FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, _pad: 0 },
            Frontend { svc_id: 1, backend_count: n, _pad: 0 },
        );
        for i in 0..u32::from(n) {
            t.slots.insert(BackendSlotKey { svc_id: 1, slot: i }, 100 + i);
            t.backends.insert(100 + i, Backend { addr: 0x0af4_0000 + 10 + i, port: 8080, _pad: 0 });
        }
        t
    }

    #[test]
    fn new_flow_picks_the_random_slot_and_records_both_directions() {
        let t = service(3);
        t.random.set(7); // 7 % 3 = slot 1
        let f = flow(CLIENT, VIP, 40000, 80);
        let v = decide(&f, &t, Hook::Xdp);
        let backend = Backend { addr: 0x0af4_000b, port: 8080, _pad: 0 };
        assert_eq!(
            v,
            Verdict::Rewrite { reason: Reason::ForwardNewFlow, side: Side::Dst, addr: backend.addr, port: 8080 }
        );
        let ct = t.conntrack.borrow();
        assert_eq!(ct[&f].direction, CT_FORWARD);
        let reply = ct[&conntrack::reply_key(&f, &backend)];
        assert_eq!((reply.nat_addr, reply.nat_port, reply.svc_id), (VIP, 80, 1));
    }

    #[test]
    fn established_flows_stay_on_their_backend_and_replies_come_from_the_vip() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 40000, 80);
        let Verdict::Rewrite { addr, .. } = decide(&f, &t, Hook::Xdp) else { panic!() };
        for r in 0..10 {
            t.random.set(r);
            assert_eq!(
                decide(&f, &t, Hook::Xdp),
                Verdict::Rewrite { reason: Reason::ForwardEstablished, side: Side::Dst, addr, port: 8080 }
            );
        }
        let reply = flow(addr, CLIENT, 8080, 40000);
        let want = Verdict::Rewrite { reason: Reason::ReplyReverseNat, side: Side::Src, addr: VIP, port: 80 };
        assert_eq!(decide(&reply, &t, Hook::Xdp), want);
        assert_eq!(decide(&reply, &t, Hook::TcEgress), want);
    }

    #[test]
    fn tc_egress_never_starts_or_forwards_flows() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 40000, 80);
        assert_eq!(decide(&f, &t, Hook::TcEgress), Verdict::Pass(Reason::PassNoService));
        decide(&f, &t, Hook::Xdp);
        assert_eq!(decide(&f, &t, Hook::TcEgress), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn misses_and_failures_are_counted_by_reason() {
        let t = service(3);
        assert_eq!(decide(&flow(CLIENT, VIP, 1, 81), &t, Hook::Xdp), Verdict::Pass(Reason::PassNoService));
        assert_eq!(decide(&flow(CLIENT, VIP, 1, 80), &service(0), Hook::Xdp), Verdict::Drop(Reason::DropNoBackend));

        let mut missing_slot = service(3);
        missing_slot.slots.clear();
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), &missing_slot, Hook::Xdp),
            Verdict::Drop(Reason::DropBackendMissing)
        );

        let mut missing_backend = service(3);
        missing_backend.backends.clear();
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), &missing_backend, Hook::Xdp),
            Verdict::Drop(Reason::DropBackendMissing)
        );

        let mut full = service(3);
        full.conntrack_full = true;
        assert_eq!(decide(&flow(CLIENT, VIP, 1, 80), &full, Hook::Xdp), Verdict::Drop(Reason::DropConntrackFull));
    }
}
