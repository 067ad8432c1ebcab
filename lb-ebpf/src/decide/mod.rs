//! The per-packet decision, after Cilium's `lb4_local()`: conntrack first
//! (one lookup serves established flows and replies alike), then the
//! frontend, then backend selection and the two conntrack entries.
//! Map access goes through [`Tables`] so that the decision has host tests,
//! and `lb-agent explain` replays it over the pinned maps.

mod conntrack;
mod select;

pub use conntrack::Translation;

use select::Spread;

use crate::packet::nat::Side;
use lb_common::{
    Addr, AffinityEntry, AffinityKey, BACKEND_FLAG_REMOTE, Backend, CT_FORWARD, CT_REFRESH_NS, CT_REPLY, CT_STATE_SYN,
    CtEntry, CtHop, CtKey, CtTimeouts, EntryHop, FRONTEND_FLAG_EXTERNAL, FRONTEND_FLAG_NODE_ADMITTED,
    FRONTEND_FLAG_NODE_LOCAL, FRONTEND_FLAG_POD_TWIN, FRONTEND_FLAG_SOURCE_RANGES, FRONTEND_SCOPE_ALL,
    FRONTEND_SCOPE_PODS, Frontend, FrontendKey, Hook, Reason, SNAT_PORT_MAX, SNAT_PORT_MIN, ServiceCidr,
    VIP_CLUSTER_IP, hash::reduce,
};

/// A conntrack entry could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsertFailed;

/// The maps and helpers every family shares.
pub trait Shared {
    /// Counts `n` entries written for new flows.
    fn conntrack_created(&self, n: u64);
    /// The packet being decided is translated for `frontend_id`: it counts
    /// in that frontend's traffic once rewritten.
    fn count_service(&self, frontend_id: u32);
    fn ct_timeouts(&self) -> CtTimeouts;
    /// Entry `index` of the frontends' backend lists: a backend id.
    fn backend_slot(&self, index: u32) -> Option<u32>;
    /// Entry `index` of the Maglev tables: a slot of the frontend's list.
    fn maglev_slot(&self, index: u32) -> Option<u16>;
    fn random(&self) -> u32;
    fn now_ns(&self) -> u64;
}

/// The maps and helpers the decision reads and writes for packets whose
/// addresses are `A`: each family has maps of its own.
pub trait Tables<A: Addr>: Shared {
    /// What `read` takes from `key`'s entry, if there is one: a whole
    /// IPv6 entry copied out would take the compiler's memcpy (a BPF
    /// function of its own, and a stack frame more).
    fn conntrack_with<R>(&self, key: &CtKey<A>, read: impl FnOnce(&CtEntry<A>) -> R) -> Option<R>;
    #[inline(always)]
    fn conntrack(&self, key: &CtKey<A>) -> Option<CtEntry<A>> {
        self.conntrack_with(key, |entry| *entry)
    }
    fn conntrack_insert(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed>;
    /// Like `conntrack_insert`, but fails when `key` is already there.
    fn conntrack_insert_new(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed>;
    /// Sets `key`'s state and last-seen time, if it is still there.
    fn conntrack_refresh(&self, key: &CtKey<A>, state: u8, now_ns: u64);
    /// Keeps the FIB's answer about `key`'s packets in its entry, if it is
    /// still there.
    fn conntrack_keep_hop(&self, key: &CtKey<A>, hop: &CtHop);
    /// Hands the hook what the entry of the flow being rewritten keeps of
    /// the FIB's answer, for the packet's departure: None (ask the FIB)
    /// for a new flow, a refreshed entry, a family whose entries keep none.
    /// Called before every rewrite the decision gives. Not part of the
    /// verdict: the verdict and its copies would carry it through stack
    /// frames the verifier counts.
    fn entry_route(&self, hop: Option<&CtHop>);
    fn affinity(&self, key: &AffinityKey<A>) -> Option<AffinityEntry>;
    fn affinity_insert(&self, key: &AffinityKey<A>, entry: &AffinityEntry);
    /// Is `client` inside one of `frontend_id`'s source ranges?
    fn source_allowed(&self, frontend_id: u32, client: A) -> bool;
    fn frontend(&self, key: &FrontendKey<A>) -> Option<Frontend>;
    fn backend(&self, id: u32) -> Option<Backend<A>>;
    /// This node's address on the way to `daddr` (the address of the device
    /// the route leaves by, else of the device the packet came in on).
    fn node_address_toward(&self, daddr: A) -> Option<A>;
    /// `LB_VIPS`'s value for `addr`: frontends there, and `VIP_CLUSTER_IP`.
    fn service_address(&self, addr: A) -> Option<u32>;
    fn service_cidr(&self) -> ServiceCidr<A>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<A = u32> {
    Pass(Reason),
    Drop(Reason),
    /// Rewrite `side` to `addr:port` (network byte order) and, for a
    /// hairpinned or SNATed flow, the other side to `other` (address,
    /// port); then pass (where `Tables::entry_route` said, for a flow
    /// with an entry).
    Rewrite {
        reason: Reason,
        side: Side,
        addr: A,
        port: u16,
        other: OtherEnd<A>,
    },
    /// Answer with a reset or an ICMP port unreachable, counted as this
    /// reason: the frontend has no endpoint, or the cluster IP no such port.
    Reject(Reason),
}

/// A verdict that rewrites nothing: what the steps before a backend is
/// chosen give, with no address in it (so that it costs one register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Pass(Reason),
    Drop(Reason),
    Reject(Reason),
}

impl<A> From<Refusal> for Verdict<A> {
    #[inline(always)]
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Pass(reason) => Verdict::Pass(reason),
            Refusal::Drop(reason) => Verdict::Drop(reason),
            Refusal::Reject(reason) => Verdict::Reject(reason),
        }
    }
}

/// The other end of a packet a translation rewrites too (address, port),
/// if any. Not an `Option`: a `None` leaves its payload undefined, and a
/// copy of the verdict then reads registers the verifier knows were never
/// written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtherEnd<A> {
    addr: A,
    port: u16,
    set: bool,
}

impl<A: Copy> OtherEnd<A> {
    #[inline(always)]
    pub fn get(&self) -> Option<(A, u16)> {
        self.set.then_some((self.addr, self.port))
    }
}

impl<A: Default> From<Option<(A, u16)>> for OtherEnd<A> {
    #[inline(always)]
    fn from(other: Option<(A, u16)>) -> Self {
        match other {
            Some((addr, port)) => Self { addr, port, set: true },
            None => Self::default(),
        }
    }
}

impl<A> Verdict<A> {
    #[inline(always)]
    pub fn reason(&self) -> Reason {
        match *self {
            Verdict::Pass(reason)
            | Verdict::Drop(reason)
            | Verdict::Reject(reason)
            | Verdict::Rewrite { reason, .. } => reason,
        }
    }
}

/// The verdict for a packet of `flow` (`tcp_flags`: the TCP header's flags
/// byte, 0 for UDP) arriving on `hook`.
#[inline(always)]
pub fn decide<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tcp_flags: u8, tables: &T, hook: Hook) -> Verdict<A> {
    match decide_known(flow, tcp_flags, tables, hook) {
        Some(verdict) => verdict,
        None if hook == Hook::TcEgress => Verdict::Pass(Reason::PassNoService),
        None => decide_new(flow, tcp_flags, tables, hook),
    }
}

/// `decide` for a packet whose flow has a conntrack entry that counts; None
/// otherwise. `decide_new` then decides it as a new flow (TC egress passes
/// it): a program may make the two parts of the decision apart.
#[inline(always)]
pub fn decide_known<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    tcp_flags: u8,
    tables: &T,
    hook: Hook,
) -> Option<Verdict<A>> {
    let mut known = Rewrite::default();
    let reason = known_flow(flow, tcp_flags, tables, hook, &mut known)?;
    let Rewrite { side, addr, port, other, restore } = known;
    if restore {
        restore_reply_entry(flow, tables);
    }
    Some(Verdict::Rewrite { reason, side, addr, port, other })
}

/// `decide` for the first packet of a flow (`decide_known` said None).
#[inline(always)]
pub fn decide_new<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tcp_flags: u8, tables: &T, hook: Hook) -> Verdict<A> {
    tables.entry_route(None);
    let mut chosen = Chosen { tcp_flags, ..Chosen::default() };
    if !new_flow(flow, tables, hook, &mut chosen) {
        return chosen.refusal.into();
    }
    if chosen.snat_source.0 {
        let Some(addr) = tables.node_address_toward(chosen.backend.addr) else {
            return Verdict::Drop(Reason::DropNoNodeAddress);
        };
        chosen.snat_source.1 = addr;
    }
    // The reply entry goes in first: a forward entry without its reply
    // entry would deliver packets whose answers the client cannot match.
    let mut other = OtherEnd::default();
    let mut written = record_reply(flow, &chosen, tables, &mut other);
    if written == Reason::ForwardNewFlow {
        written = record_forward(flow, &chosen, &other, tables);
    }
    match written {
        Reason::ForwardNewFlow => Verdict::Rewrite {
            reason: Reason::ForwardNewFlow,
            side: Side::Dst,
            addr: chosen.backend.addr,
            port: chosen.backend.port,
            other,
        },
        reason => Verdict::Drop(reason),
    }
}

/// A rewrite as plain values, for what BPF functions hand back through the
/// caller's memory (see `OtherEnd`).
#[derive(Clone, Copy, Default)]
struct Rewrite<A> {
    side: Side,
    addr: A,
    port: u16,
    other: OtherEnd<A>,
    /// A forward entry was refreshed: `restore_reply_entry` is due.
    restore: bool,
}

/// `established` for the flow's entry, if it has one: its reason, with the
/// rewrite in `out`. A BPF function of its own, like `new_flow`; the entry
/// is read in place, not copied into a frame.
#[inline(never)]
fn known_flow<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    tcp_flags: u8,
    tables: &T,
    hook: Hook,
    out: &mut Rewrite<A>,
) -> Option<Reason> {
    // The clock is read only when needed: it costs as much as a map lookup.
    tables.conntrack_with(flow, |entry| established(flow, tcp_flags, entry, tables, hook, tables.now_ns(), out))?
}

/// The reason for a packet whose flow has a conntrack entry, with its
/// rewrite in `out`, or None when the entry no longer counts: expired (the agent's sweep removes it
/// later), a new connection reusing a closed one's ports, or a translation
/// TC egress does not do.
#[inline(always)]
fn established<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    tcp_flags: u8,
    entry: &CtEntry<A>,
    tables: &T,
    hook: Hook,
    now: u64,
    out: &mut Rewrite<A>,
) -> Option<Reason> {
    // A SYN on the ports of a flow past its own SYN is a new connection
    // (the client reused its port): it chooses again, and finds nothing if
    // its Service is gone.
    let reopened =
        entry.direction == CT_FORWARD && entry.state != CT_STATE_SYN && conntrack::is_opening(flow.proto, tcp_flags);
    if reopened || tables.ct_timeouts().expired(flow.proto, entry, now) {
        return None;
    }
    let state = conntrack::next_state(flow.proto, entry.state, tcp_flags);
    let refresh = state != entry.state || now.saturating_sub(entry.last_seen_ns) >= CT_REFRESH_NS;
    if refresh {
        tables.conntrack_refresh(flow, state, now);
    }
    // With the refresh, not per packet: it is a second lookup, and the
    // replies themselves keep their entry in use.
    let restore = refresh && entry.direction == CT_FORWARD && hook != Hook::TcEgress;
    let other = OtherEnd::from(entry.other());
    let (reason, side) = if entry.direction == CT_REPLY {
        (Reason::ReplyReverseNat, Side::Src)
    } else {
        (Reason::ForwardEstablished, Side::Dst)
    };
    // TC egress translates plain replies only; hairpinned and SNATed flows
    // never reach a client without crossing an ingress hook.
    if hook == Hook::TcEgress && (side == Side::Dst || other.set) {
        return None;
    }
    // A refreshed entry's route is asked again: routes and neighbours
    // change, and reach established flows within the refresh interval.
    tables.entry_route(if refresh { None } else { entry.hop.kept() });
    tables.count_service(entry.frontend_id);
    *out = Rewrite { side, addr: entry.nat_addr, port: entry.nat_port, other, restore };
    Some(reason)
}

/// How to turn an ICMP error that quotes `quoted`, a packet the datapath
/// translated, into one about the packet its sender sent. A flow's entries
/// are keyed by the packets they translate, so the reverse of the quoted
/// packet names the entry of the other direction: the end it rewrites is
/// the quoted packet's other end. Pass when it is no flow of ours.
#[inline(always)]
pub fn quoted_packet<A: Addr, T: Tables<A>>(quoted: &CtKey<A>, tables: &T) -> Verdict<A> {
    let key = CtKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: quoted.dport,
        dport: quoted.sport,
        proto: quoted.proto,
        _pad: 0,
        _pad2: 0,
    };
    let Some(entry) = tables.conntrack(&key) else { return Verdict::Pass(Reason::PassNotTcpUdp) };
    let side = if entry.direction == CT_REPLY { Side::Dst } else { Side::Src };
    Verdict::Rewrite {
        reason: Reason::IcmpErrorReverseNat,
        side,
        addr: entry.nat_addr,
        port: entry.nat_port,
        other: entry.other().into(),
    }
}

/// Writes the reply entry of an established flow back if the LRU evicted it
/// (the forward entry alone would deliver packets whose answers go back
/// untranslated, and the client would reset the connection). Looking it up
/// also marks it used, so that a flow whose replies are rare keeps it. A
/// BPF function of its own, like `new_flow`, called after `known_flow`;
/// true when it wrote the entry.
#[inline(never)]
fn restore_reply_entry<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tables: &T) -> bool {
    let Some(entry) = tables.conntrack(flow) else { return false };
    let backend = Backend { addr: entry.nat_addr, port: entry.nat_port, flags: 0 };
    let t = Translation { backend, source: entry.other() };
    let key = conntrack::reply_key(flow, &t);
    if tables.conntrack_with(&key, |_| ()).is_some() {
        return false;
    }
    let reply = conntrack::reply_entry(flow, &t, entry.frontend_id, entry.state, entry.last_seen_ns);
    // Losing this write loses only what the eviction already lost.
    tables.conntrack_insert(&key, &reply).is_ok()
}

/// The choices for the first packet of a flow (frontend, backend, whether
/// this node stands in for the client) into `chosen`, which comes with the
/// packet's TCP flags; false when it is refused (`chosen.refusal`).
/// `record_flow` then writes the two conntrack entries. BPF functions of
/// their own, called one after the other: their entries and keys (an IPv6
/// flow's are large) get stack frames apart from the packet pointers of
/// the hook's frame, and never more than one at a time. Their results go
/// through the caller's memory, as a BPF function returns one register.
#[inline(never)]
fn new_flow<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tables: &T, hook: Hook, chosen: &mut Chosen<A>) -> bool {
    match choose(flow, tables, hook, chosen.tcp_flags) {
        Ok(choice) => {
            *chosen = choice;
            true
        }
        Err(refusal) => {
            chosen.refusal = refusal;
            false
        }
    }
}

#[inline(always)]
fn choose<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tables: &T, hook: Hook, tcp_flags: u8) -> Result<Chosen<A>, Refusal> {
    let frontend = serving_frontend(flow, tables, hook)?;
    if frontend.flags & FRONTEND_FLAG_SOURCE_RANGES != 0 && !tables.source_allowed(frontend.frontend_id, flow.saddr) {
        return Err(Refusal::Drop(Reason::DropSourceRange));
    }
    has_backends(&frontend)?;
    let now = tables.now_ns();
    // Picks the Maglev entry and the first SNAT port.
    let hash = lb_common::hash::flow(flow);
    let Some(backend) = choose_backend(flow, hash, &frontend, tables, now, Spread::Random) else {
        return Err(Refusal::Drop(Reason::DropBackendMissing));
    };
    // An external client whose backend is on another node must be replaced
    // by this node, or the backend would answer it directly. The source is
    // this node's own address towards the backend, whatever the frontend
    // (a load-balancer IP is no address the backend's answer could reach).
    // The address is looked up by the caller (`decide`): the FIB query's
    // frame would add to this one's.
    let snat = hook == Hook::NodeXdp
        && backend.flags & BACKEND_FLAG_REMOTE != 0
        && frontend.flags & FRONTEND_FLAG_NODE_LOCAL == 0;
    let snat_source = (snat, A::default());
    let refusal = Refusal::Pass(Reason::PassNoService);
    Ok(Chosen { backend, snat_source, frontend_id: frontend.frontend_id, hash, now, tcp_flags, refusal })
}

/// What `new_flow` chose for a flow, for `record_flow` (BPF functions take
/// five arguments at most).
#[derive(Clone, Copy)]
struct Chosen<A> {
    backend: Backend<A>,
    /// Whether the backend must see this node's address (given, once
    /// `decide` looked it up) as the source. Not an `Option`, for the
    /// reason `OtherEnd` is not.
    snat_source: (bool, A),
    frontend_id: u32,
    hash: u64,
    now: u64,
    tcp_flags: u8,
    /// Without a choice, the verdict.
    refusal: Refusal,
}

impl<A: Default> Default for Chosen<A> {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            snat_source: (false, A::default()),
            frontend_id: 0,
            hash: 0,
            now: 0,
            tcp_flags: 0,
            refusal: Refusal::Pass(Reason::PassNoService),
        }
    }
}

/// Writes the reply entry of a new flow: `ForwardNewFlow`, with the other
/// end the backend sees in `other` (hairpin, SNAT), or why the flow is
/// dropped. `record_forward` then writes the forward entry. BPF functions of
/// their own, called one after the other, as `new_flow` is; only plain
/// values cross into the caller: a verdict, an enum, would be copied with
/// the bytes its variant leaves undefined.
#[inline(never)]
fn record_reply<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    chosen: &Chosen<A>,
    tables: &T,
    other: &mut OtherEnd<A>,
) -> Reason {
    let hairpin = conntrack::is_hairpin(flow, &chosen.backend);
    let mut t = Translation { backend: chosen.backend, source: hairpin.then_some((flow.daddr, flow.sport)) };
    let state = conntrack::initial_state(flow.proto, chosen.tcp_flags);
    if let (true, node_addr) = chosen.snat_source {
        // A free source port: the reply entry is written only if no other
        // flow of this backend uses the port yet.
        // The first try is the flow's own port (its hash), so that a flow
        // whose entries were evicted gets the same port back.
        // The key and entry are built once, and only the key's port changes
        // from one attempt to the next: an IPv6 flow's addresses, held in
        // registers instead, would spill across the stack.
        t.source = Some((node_addr, 0));
        let mut key = conntrack::reply_key(flow, &t);
        let entry = conntrack::reply_entry(flow, &t, chosen.frontend_id, state, chosen.now);
        let mut pick = chosen.hash as u32;
        for _ in 0..SNAT_ATTEMPTS {
            let port = (SNAT_PORT_MIN + reduce(pick, u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN + 1)) as u16).to_be();
            key.dport = port;
            // Looked up before written: an insert into a full LRU map can
            // evict a live flow's entry even when it then fails on the key.
            let existing = tables.conntrack_with(&key, |e| (e.other_addr, e.other_port, e.flags, e.nat_port));
            let written = match existing {
                None => tables.conntrack_insert_new(&key, &entry),
                // This flow's own reply entry (its forward entry was
                // evicted): the flow keeps its port.
                Some(mine) if mine == (entry.other_addr, entry.other_port, entry.flags, entry.nat_port) => {
                    tables.conntrack_insert(&key, &entry)
                }
                Some(_) => Err(InsertFailed),
            };
            if written.is_ok() {
                *other = Some((node_addr, port)).into();
                return Reason::ForwardNewFlow;
            }
            pick = tables.random();
        }
        return Reason::DropSnatExhausted;
    }
    let entry = conntrack::reply_entry(flow, &t, chosen.frontend_id, state, chosen.now);
    if tables.conntrack_insert(&conntrack::reply_key(flow, &t), &entry).is_err() {
        return Reason::DropConntrackFull;
    }
    *other = t.source.into();
    Reason::ForwardNewFlow
}

/// Writes the forward entry of a new flow whose reply entry is written,
/// the backend seeing `other` as the client: `ForwardNewFlow`, or why the
/// flow is dropped.
#[inline(never)]
fn record_forward<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    chosen: &Chosen<A>,
    other: &OtherEnd<A>,
    tables: &T,
) -> Reason {
    let t = Translation { backend: chosen.backend, source: other.get() };
    let state = conntrack::initial_state(flow.proto, chosen.tcp_flags);
    let forward = conntrack::forward_entry(&t, chosen.frontend_id, state, chosen.now);
    if tables.conntrack_insert(flow, &forward).is_err() {
        return Reason::DropConntrackFull;
    }
    tables.conntrack_created(2);
    // Beside the entries: the first packet of the flow is translated.
    tables.count_service(chosen.frontend_id);
    Reason::ForwardNewFlow
}

/// The frontend serving a new flow to `flow.daddr:dport` that arrived on
/// `hook`, or the verdict when none does: pods and the node's sockets take
/// a Local policy's twin, and cluster IPs are for them only.
#[inline(always)]
fn serving_frontend<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tables: &T, hook: Hook) -> Result<Frontend, Refusal> {
    let frontend_key = FrontendKey { addr: flow.daddr, port: flow.dport, proto: flow.proto, scope: FRONTEND_SCOPE_ALL };
    let Some(mut frontend) = tables.frontend(&frontend_key) else {
        return Err(no_frontend(flow, tables, hook));
    };
    if (hook == Hook::PodTc || hook == Hook::Socket)
        && frontend.flags & FRONTEND_FLAG_POD_TWIN != 0
        && let Some(twin) = tables.frontend(&FrontendKey { scope: FRONTEND_SCOPE_PODS, ..frontend_key })
    {
        frontend = twin;
    }
    if hook == Hook::NodeXdp && frontend.flags & FRONTEND_FLAG_EXTERNAL == 0 {
        return Err(Refusal::Pass(Reason::PassInternalOnly));
    }
    Ok(frontend)
}

/// A frontend without endpoints turns its clients away: kube-proxy drops
/// traffic for a Local policy without local endpoints, and refuses it
/// otherwise.
#[inline(always)]
fn has_backends(frontend: &Frontend) -> Result<(), Refusal> {
    if frontend.backend_count != 0 {
        Ok(())
    } else if frontend.flags & FRONTEND_FLAG_NODE_LOCAL != 0 {
        Err(Refusal::Drop(Reason::DropNoBackend))
    } else {
        Err(Refusal::Reject(Reason::RejectNoBackend))
    }
}

/// The backend for a new flow or socket of `flow.saddr` (see
/// `select::backend`), remembered for the client's session affinity.
#[inline(always)]
fn choose_backend<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    hash: u64,
    frontend: &Frontend,
    tables: &T,
    now: u64,
    spread: Spread,
) -> Option<Backend<A>> {
    let (backend_id, backend) = select::backend(flow, hash, frontend, tables, now, spread)?;
    if frontend.affinity_timeout_s != 0 {
        let key = AffinityKey { client: flow.saddr, frontend_id: frontend.frontend_id };
        tables.affinity_insert(&key, &AffinityEntry { backend_id, _pad: 0, last_used_ns: now });
    }
    Some(backend)
}

/// A connect() or sendmsg() to `daddr:dport` (network byte order), as the
/// socket hooks see it.
#[derive(Clone, Copy, Debug)]
pub struct SocketCall<A = u32> {
    pub daddr: A,
    pub dport: u16,
    pub proto: u8,
    /// The socket's network namespace cookie.
    pub netns: u64,
    /// The namespace is the node's own (else a pod's, with `--socket-lb all`).
    pub node: bool,
    /// The socket's cookie: each socket picks its own Maglev entry, and
    /// keeps it for every sendmsg().
    pub cookie: u64,
}

impl<A: Addr> SocketCall<A> {
    /// Who the client is for session affinity: the network namespace,
    /// named by an address no packet carries (a socket has no source
    /// address before it connects; all of a namespace's sockets would leave
    /// with the same one).
    #[inline(always)]
    pub fn client(&self) -> A {
        A::unroutable(self.netns as u32)
    }
}

/// The verdict for a socket's connect() or sendmsg(): `Rewrite` its
/// destination to a backend chosen by the same rules as a new flow's first
/// packet (twin frontends, source ranges, affinity, Maglev), with no
/// conntrack entry: the socket itself now names the backend.
#[inline(always)]
pub fn socket<A: Addr, T: Tables<A>>(call: &SocketCall<A>, tables: &T) -> Verdict<A> {
    // A pod's loopback address is its own: only the node's sockets reach
    // node ports there (`--nodeport-localhost`).
    if !call.node && call.daddr.is_loopback() {
        return Verdict::Pass(Reason::PassNoService);
    }
    let flow = CtKey {
        saddr: call.client(),
        daddr: call.daddr,
        sport: 0,
        dport: call.dport,
        proto: call.proto,
        _pad: 0,
        _pad2: 0,
    };
    let frontend = match serving_frontend(&flow, tables, Hook::Socket) {
        Ok(frontend) => frontend,
        Err(refusal) => return refusal.into(),
    };
    if frontend.flags & FRONTEND_FLAG_SOURCE_RANGES != 0 {
        // A pod's source address is known to its packets only.
        if !call.node {
            return Verdict::Pass(Reason::PassToPacketPath);
        }
        if frontend.flags & FRONTEND_FLAG_NODE_ADMITTED == 0 {
            return Verdict::Drop(Reason::DropSourceRange);
        }
    }
    if let Err(refusal) = has_backends(&frontend) {
        return refusal.into();
    }
    let hash = lb_common::hash::mix64(call.cookie ^ lb_common::hash::flow(&flow));
    match choose_backend(&flow, hash, &frontend, tables, tables.now_ns(), Spread::Hash) {
        Some(backend) => Verdict::Rewrite {
            reason: Reason::ForwardNewFlow,
            side: Side::Dst,
            addr: backend.addr,
            port: backend.port,
            other: OtherEnd::default(),
        },
        None => Verdict::Drop(Reason::DropBackendMissing),
    }
}

/// The verdict for a pod's packet (or a socket's call) that names no
/// frontend, as kube-proxy's rules have it: a cluster IP on a port its
/// Service lacks is rejected, an address of the service CIDR no Service
/// has is dropped, anything else is not ours. (From outside, cluster IPs
/// are not reachable at all.)
#[inline(always)]
fn no_frontend<A: Addr, T: Tables<A>>(flow: &CtKey<A>, tables: &T, hook: Hook) -> Refusal {
    if hook != Hook::PodTc && hook != Hook::Socket {
        return Refusal::Pass(Reason::PassNoService);
    }
    match tables.service_address(flow.daddr) {
        Some(frontends) if frontends & VIP_CLUSTER_IP != 0 => Refusal::Reject(Reason::RejectNoServicePort),
        None if tables.service_cidr().contains(flow.daddr) => Refusal::Drop(Reason::DropUnallocatedServiceIp),
        _ => Refusal::Pass(Reason::PassNoService),
    }
}

/// How many SNAT ports (its own, then random ones) a new flow tries before
/// it is dropped. With 4, a backend whose recent flows held a tenth of the
/// range refused about one new flow in 10 000 (seen in the restart test);
/// with 32, as Cilium retries, even a half-full range refuses one in 4e9.
const SNAT_ATTEMPTS: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, SYN as TCP_SYN};
    use lb_common::{CT_STATE_ESTABLISHED, CT_STATE_SYN, IPPROTO_TCP, IPPROTO_UDP};
    use std::{
        cell::{Cell, RefCell},
        collections::HashMap,
    };

    /// The maps of one family (`A`), in hash maps.
    #[derive(Default)]
    struct FakeTables<A: Addr = u32> {
        conntrack: RefCell<HashMap<CtKey<A>, CtEntry<A>>>,
        conntrack_full: bool,
        affinity: RefCell<HashMap<AffinityKey<A>, AffinityEntry>>,
        allowed_clients: Vec<A>,
        now: Cell<u64>,
        frontends: HashMap<FrontendKey<A>, Frontend>,
        slots: Vec<u32>,
        backends: HashMap<u32, Backend<A>>,
        maglev: Vec<u16>,
        random: Cell<u32>,
        /// What `random` returns, last first, before the `random` field's value.
        randoms: RefCell<Vec<u32>>,
        created: Cell<u64>,
        /// Packets counted per frontend id.
        service_packets: RefCell<HashMap<u32, u64>>,
        /// This node's address towards any backend.
        node_addr: Option<A>,
        inserts_on_taken_keys: Cell<u32>,
        service_cidr: ServiceCidr<A>,
        /// What `entry_route` handed on last.
        route: Cell<Option<CtHop>>,
    }

    impl<A: Addr> Shared for FakeTables<A> {
        fn conntrack_created(&self, n: u64) {
            self.created.set(self.created.get() + n);
        }
        fn count_service(&self, frontend_id: u32) {
            *self.service_packets.borrow_mut().entry(frontend_id).or_default() += 1;
        }
        fn ct_timeouts(&self) -> CtTimeouts {
            CtTimeouts::DEFAULT
        }
        fn backend_slot(&self, index: u32) -> Option<u32> {
            self.slots.get(index as usize).copied()
        }
        fn maglev_slot(&self, index: u32) -> Option<u16> {
            self.maglev.get(index as usize).copied()
        }
        fn random(&self) -> u32 {
            self.randoms.borrow_mut().pop().unwrap_or(self.random.get())
        }
        fn now_ns(&self) -> u64 {
            self.now.get()
        }
    }

    impl<A: Addr + std::hash::Hash> Tables<A> for FakeTables<A> {
        fn conntrack_with<R>(&self, key: &CtKey<A>, read: impl FnOnce(&CtEntry<A>) -> R) -> Option<R> {
            // A copy: `read` may write the map (a refresh) while it reads.
            let entry = self.conntrack.borrow().get(key).copied();
            entry.as_ref().map(read)
        }
        fn conntrack_insert(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed> {
            if self.conntrack_full {
                return Err(InsertFailed);
            }
            self.conntrack.borrow_mut().insert(*key, *entry);
            Ok(())
        }
        fn conntrack_insert_new(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed> {
            if self.conntrack.borrow().contains_key(key) {
                // A real LRU map may have evicted another entry by now.
                self.inserts_on_taken_keys.set(self.inserts_on_taken_keys.get() + 1);
                return Err(InsertFailed);
            }
            self.conntrack_insert(key, entry)
        }
        fn conntrack_refresh(&self, key: &CtKey<A>, state: u8, now_ns: u64) {
            if let Some(entry) = self.conntrack.borrow_mut().get_mut(key) {
                (entry.state, entry.last_seen_ns) = (state, now_ns);
            }
        }
        fn conntrack_keep_hop(&self, key: &CtKey<A>, hop: &CtHop) {
            if let Some(entry) = self.conntrack.borrow_mut().get_mut(key) {
                entry.hop.set(hop);
            }
        }
        fn entry_route(&self, hop: Option<&CtHop>) {
            self.route.set(hop.copied());
        }
        fn affinity(&self, key: &AffinityKey<A>) -> Option<AffinityEntry> {
            self.affinity.borrow().get(key).copied()
        }
        fn source_allowed(&self, _frontend_id: u32, client: A) -> bool {
            self.allowed_clients.contains(&client)
        }
        fn affinity_insert(&self, key: &AffinityKey<A>, entry: &AffinityEntry) {
            self.affinity.borrow_mut().insert(*key, *entry);
        }
        fn frontend(&self, key: &FrontendKey<A>) -> Option<Frontend> {
            self.frontends.get(key).copied()
        }
        fn backend(&self, id: u32) -> Option<Backend<A>> {
            self.backends.get(&id).copied()
        }
        fn node_address_toward(&self, _daddr: A) -> Option<A> {
            self.node_addr
        }
        fn service_address(&self, addr: A) -> Option<u32> {
            self.frontends.keys().any(|k| k.addr == addr).then_some(1 | VIP_CLUSTER_IP)
        }
        fn service_cidr(&self) -> ServiceCidr<A> {
            self.service_cidr
        }
    }

    const VIP: u32 = 0x0a60_000a;
    const CLIENT: u32 = 0x0af4_0003;
    const NODE: u32 = 0xc633_6401;

    fn flow(saddr: u32, daddr: u32, sport: u16, dport: u16) -> CtKey {
        CtKey { saddr, daddr, sport, dport, proto: IPPROTO_TCP, _pad: 0, _pad2: 0 }
    }

    /// The random number that picks slot `k` of `n` (`hash::reduce`).
    fn slot(k: u32, n: u32) -> u32 {
        (u64::from(k) << 32).div_ceil(u64::from(n)) as u32
    }

    /// One frontend VIP:80 with `n` backends 10.244.0.(10+i):8080.
    fn service(n: u16) -> FakeTables {
        let mut t = service_of(VIP, |i| 0x0af4_0000 + 10 + i, n);
        t.service_cidr = ServiceCidr { network: 0x0a60_0000, mask: 0xfff0_0000 };
        t
    }

    /// One frontend `vip`:80 with `n` backends `backend(i)`:8080, ids 100 + i.
    fn service_of<A: Addr + std::hash::Hash>(vip: A, backend: impl Fn(u32) -> A, n: u16) -> FakeTables<A> {
        let mut t = FakeTables::default();
        t.frontends.insert(
            FrontendKey { addr: vip, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL },
            Frontend { frontend_id: 1, backend_count: n, ..Default::default() },
        );
        for i in 0..u32::from(n) {
            t.slots.push(100 + i);
            t.backends.insert(100 + i, Backend { addr: backend(i), port: 8080, flags: 0 });
        }
        t
    }

    #[test]
    fn new_flow_picks_the_random_slot_and_records_both_directions() {
        let t = service(3);
        t.random.set(slot(1, 3));
        let f = flow(CLIENT, VIP, 40000, 80);
        let v = decide(&f, TCP_ACK, &t, Hook::PodTc);
        let backend = Backend { addr: 0x0af4_000b, port: 8080, flags: 0 };
        assert_eq!(
            v,
            Verdict::Rewrite {
                reason: Reason::ForwardNewFlow,
                side: Side::Dst,
                addr: backend.addr,
                port: 8080,
                other: None.into(),
            }
        );
        let ct = t.conntrack.borrow();
        assert_eq!(ct[&f].direction, CT_FORWARD);
        let reply = ct[&conntrack::reply_key(&f, &Translation { backend, source: None })];
        assert_eq!((reply.nat_addr, reply.nat_port, reply.frontend_id), (VIP, 80, 1));
    }

    #[test]
    fn a_frontend_picks_from_its_own_region_of_the_backend_lists_only() {
        let mut t = service(3);
        // Entries 0..3 name other backends, as an old list after a switch.
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        t.frontends.get_mut(&key).unwrap().slots_offset = 3;
        t.slots.extend([102, 101, 100]);
        t.random.set(0);
        let Verdict::Rewrite { addr, .. } = decide(&flow(CLIENT, VIP, 40000, 80), TCP_ACK, &t, Hook::PodTc) else {
            panic!()
        };
        assert_eq!(addr, 0x0af4_0000 + 12, "entry 3 (the frontend's slot 0) names backend 102");
    }

    #[test]
    fn established_flows_stay_on_their_backend_and_replies_come_from_the_vip() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 40000, 80);
        let Verdict::Rewrite { addr, .. } = decide(&f, TCP_ACK, &t, Hook::PodTc) else { panic!() };
        for r in 0..10 {
            t.random.set(slot(r % 3, 3));
            assert_eq!(
                decide(&f, TCP_ACK, &t, Hook::PodTc),
                Verdict::Rewrite {
                    reason: Reason::ForwardEstablished,
                    side: Side::Dst,
                    addr,
                    port: 8080,
                    other: None.into(),
                }
            );
        }
        let reply = flow(addr, CLIENT, 8080, 40000);
        let want = Verdict::Rewrite {
            reason: Reason::ReplyReverseNat,
            side: Side::Src,
            addr: VIP,
            port: 80,
            other: None.into(),
        };
        assert_eq!(decide(&reply, TCP_ACK, &t, Hook::PodTc), want);
        assert_eq!(decide(&reply, TCP_ACK, &t, Hook::TcEgress), want);
    }

    /// The other end a verdict rewrites, if it rewrites any.
    fn other_end<A: Copy>(v: Verdict<A>) -> Option<(A, u16)> {
        match v {
            Verdict::Rewrite { other, .. } => other.get(),
            _ => None,
        }
    }

    fn backend_of(v: Verdict) -> u32 {
        match v {
            Verdict::Rewrite { addr, .. } => addr,
            other => panic!("not translated: {other:?}"),
        }
    }

    #[test]
    fn client_ip_affinity_sticks_while_used_and_expires_after_the_timeout() {
        let mut t = service(3);
        t.frontends.values_mut().for_each(|fe| fe.affinity_timeout_s = 10);
        let s = 1_000_000_000;
        t.now.set(100 * s);
        t.random.set(slot(1, 3));
        let first = backend_of(decide(&flow(CLIENT, VIP, 1000, 80), TCP_ACK, &t, Hook::PodTc));
        // New connections (new source ports) within the timeout stay, and
        // each one renews the affinity.
        for (i, port) in (1001..1010).enumerate() {
            t.random.set(slot((i as u32 + 2) % 3, 3));
            t.now.set((100 + 9 * (i as u64 + 1)) * s);
            assert_eq!(backend_of(decide(&flow(CLIENT, VIP, port, 80), TCP_ACK, &t, Hook::PodTc)), first);
        }
        // Idle for longer than the timeout: a fresh random choice.
        t.now.set(t.now.get() + 11 * s);
        let chosen: std::collections::BTreeSet<u32> = (0..3)
            .map(|r| {
                t.random.set(slot(r, 3));
                t.affinity.borrow_mut().clear();
                backend_of(decide(&flow(CLIENT, VIP, 2000 + r as u16, 80), TCP_ACK, &t, Hook::PodTc))
            })
            .collect();
        assert_eq!(chosen.len(), 3);
        // Another client is not affected by this one's affinity.
        t.affinity.borrow_mut().clear();
        t.now.set(500 * s);
        t.random.set(slot(0, 3));
        let a = backend_of(decide(&flow(CLIENT, VIP, 3000, 80), TCP_ACK, &t, Hook::PodTc));
        t.random.set(slot(1, 3));
        let b = backend_of(decide(&flow(CLIENT + 1, VIP, 3000, 80), TCP_ACK, &t, Hook::PodTc));
        assert_ne!(a, b);
    }

    #[test]
    fn affinity_to_a_removed_backend_falls_back_to_a_slot() {
        let mut t = service(2);
        t.frontends.values_mut().for_each(|fe| fe.affinity_timeout_s = 10);
        t.affinity.borrow_mut().insert(
            AffinityKey { client: CLIENT, frontend_id: 1 },
            AffinityEntry { backend_id: 999, _pad: 0, last_used_ns: 0 },
        );
        assert!(matches!(decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &t, Hook::PodTc), Verdict::Rewrite { .. }));
        assert_ne!(t.affinity.borrow()[&AffinityKey { client: CLIENT, frontend_id: 1 }].backend_id, 999);
    }

    #[test]
    fn a_pod_reaching_itself_is_hairpinned_through_the_vip_both_ways() {
        let t = service(1);
        let me = 0x0af4_000a; // the only backend
        let f = flow(me, VIP, 40000, 80);
        let hairpin_forward = Verdict::Rewrite {
            reason: Reason::ForwardNewFlow,
            side: Side::Dst,
            addr: me,
            port: 8080,
            other: Some((VIP, 40000)).into(),
        };
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::PodTc), hairpin_forward);
        // The backend answers the frontend address; the reply goes back to me from the VIP.
        let reply = flow(me, VIP, 8080, 40000);
        let hairpin_reply = Verdict::Rewrite {
            reason: Reason::ReplyReverseNat,
            side: Side::Src,
            addr: VIP,
            port: 80,
            other: Some((me, 40000)).into(),
        };
        assert_eq!(decide(&reply, TCP_ACK, &t, Hook::PodTc), hairpin_reply);
        assert_eq!(decide(&reply, TCP_ACK, &t, Hook::TcEgress), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn from_a_node_device_only_external_frontends_are_reachable() {
        let mut t = service(1);
        let f = flow(CLIENT, VIP, 40000, 80);
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::NodeXdp), Verdict::Pass(Reason::PassInternalOnly));
        t.frontends.values_mut().for_each(|fe| fe.flags = FRONTEND_FLAG_EXTERNAL);
        assert!(matches!(
            decide(&f, TCP_ACK, &t, Hook::NodeXdp),
            Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }
        ));
        assert!(matches!(
            decide(&f, TCP_ACK, &t, Hook::NodeXdp),
            Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }
        ));
    }

    /// kube-proxy short-circuits pods to every endpoint of a Local policy's
    /// node port or external IP; only traffic from outside keeps to this node.
    #[test]
    fn pods_reach_every_endpoint_of_a_local_policy_external_frontend() {
        let mut t = service(2);
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        let everywhere = t.frontends[&key];
        t.frontends.insert(FrontendKey { scope: FRONTEND_SCOPE_PODS, ..key }, everywhere);
        // This node's own share: nothing.
        let local = Frontend {
            frontend_id: 7,
            backend_count: 0,
            flags: FRONTEND_FLAG_EXTERNAL | FRONTEND_FLAG_NODE_LOCAL | FRONTEND_FLAG_POD_TWIN,
            ..everywhere
        };
        t.frontends.insert(key, local);
        assert_eq!(decide(&flow(CLIENT, VIP, 1, 80), TCP_SYN, &t, Hook::NodeXdp), Verdict::Drop(Reason::DropNoBackend));
        assert!(matches!(
            decide(&flow(CLIENT, VIP, 2, 80), TCP_SYN, &t, Hook::PodTc),
            Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }
        ));
    }

    /// An ICMP error about a translated packet names its flow from either
    /// direction; it is translated back to the packet the sender sent.
    #[test]
    fn an_icmp_error_quoting_a_translated_packet_is_translated_back() {
        let t = service(1);
        let request = flow(CLIENT, VIP, 40000, 80);
        let Verdict::Rewrite { addr: backend, port: backend_port, .. } = decide(&request, TCP_SYN, &t, Hook::PodTc)
        else {
            panic!()
        };
        // The node could not forward the request as translated: the error
        // quotes client -> backend, and must be about client -> VIP.
        let translated = flow(CLIENT, backend, 40000, backend_port);
        assert_eq!(
            quoted_packet(&translated, &t),
            Verdict::Rewrite {
                reason: Reason::IcmpErrorReverseNat,
                side: Side::Dst,
                addr: VIP,
                port: 80,
                other: None.into(),
            }
        );
        // A router on the client's side could not forward the reply as
        // translated: the error quotes VIP -> client, the backend sent it.
        let reply = flow(VIP, CLIENT, 80, 40000);
        assert_eq!(
            quoted_packet(&reply, &t),
            Verdict::Rewrite {
                reason: Reason::IcmpErrorReverseNat,
                side: Side::Src,
                addr: backend,
                port: backend_port,
                other: None.into(),
            }
        );
        assert_eq!(quoted_packet(&flow(CLIENT, VIP, 1, 80), &t), Verdict::Pass(Reason::PassNotTcpUdp));
    }

    #[test]
    fn source_ranges_admit_only_their_clients() {
        let mut t = service(1);
        t.frontends.values_mut().for_each(|fe| fe.flags = FRONTEND_FLAG_SOURCE_RANGES);
        t.allowed_clients.push(CLIENT);
        assert!(matches!(decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &t, Hook::PodTc), Verdict::Rewrite { .. }));
        assert_eq!(
            decide(&flow(CLIENT + 1, VIP, 1, 80), TCP_ACK, &t, Hook::PodTc),
            Verdict::Drop(Reason::DropSourceRange)
        );
    }

    #[test]
    fn external_clients_of_a_remote_backend_are_replaced_by_this_node() {
        let mut t = service(1);
        t.frontends.values_mut().for_each(|fe| fe.flags = FRONTEND_FLAG_EXTERNAL);
        t.backends.values_mut().for_each(|b| b.flags = BACKEND_FLAG_REMOTE);
        t.random.set(5);
        t.node_addr = Some(NODE);
        // The frontend the client asked is a load-balancer IP, not a node address.
        let f = flow(CLIENT, VIP, 40000, 80);
        let Some((src, port)) = other_end(decide(&f, TCP_ACK, &t, Hook::NodeXdp)) else { panic!() };
        assert_eq!(src, NODE, "the backend must see this node's address");
        assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&u16::from_be(port)));
        // The backend's reply to (node, port) goes back to the client from the frontend.
        let backend = t.backends[&100];
        let reply = flow(backend.addr, NODE, backend.port, port);
        assert_eq!(
            decide(&reply, TCP_ACK, &t, Hook::NodeXdp),
            Verdict::Rewrite {
                reason: Reason::ReplyReverseNat,
                side: Side::Src,
                addr: VIP,
                port: 80,
                other: Some((CLIENT, 40000)).into(),
            }
        );
        // Another flow to the same backend whose own port and random port
        // are both taken is dropped, not mixed up.
        let other_client = flow(CLIENT + 1, VIP, 40000, 80);
        let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN + 1);
        let f2 = other_client;
        let own = SNAT_PORT_MIN + reduce(lb_common::hash::flow(&f2) as u32, range) as u16;
        for taken in [own, SNAT_PORT_MIN + reduce(5, range) as u16] {
            let key = flow(backend.addr, NODE, backend.port, taken.to_be());
            t.conntrack.borrow_mut().insert(key, CtEntry::default());
        }
        assert_eq!(decide(&other_client, TCP_ACK, &t, Hook::NodeXdp), Verdict::Drop(Reason::DropSnatExhausted));
        assert_eq!(t.inserts_on_taken_keys.get(), 0, "a taken SNAT port must be looked up, not inserted into");
        // Exactly SNAT_ATTEMPTS tries: the flow's own port and the random
        // ones before `free` taken, `free`'s port is the last try's.
        let picks: Vec<u32> = (1..=SNAT_ATTEMPTS).map(|i| i * 0x0700_0000).collect();
        let snat_port = |pick: u32| SNAT_PORT_MIN + reduce(pick, range) as u16;
        let key = |pick: u32| flow(backend.addr, NODE, backend.port, snat_port(pick).to_be());
        let take = |pick: u32| {
            t.conntrack.borrow_mut().insert(key(pick), CtEntry::default());
        };
        let ports: std::collections::HashSet<u16> = picks.iter().map(|&pick| snat_port(pick)).collect();
        assert_eq!(ports.len(), picks.len());
        assert!(picks.iter().all(|&pick| !t.conntrack.borrow().contains_key(&key(pick))), "each pick's port is free");
        let tries = |free: usize| {
            // The first draw picks the backend, as `random` did above.
            *t.randoms.borrow_mut() = picks.iter().rev().copied().chain([t.random.get()]).collect();
            picks[..free].iter().for_each(|&pick| take(pick));
            decide(&other_client, TCP_ACK, &t, Hook::NodeXdp)
        };
        // One try more would find the last pick's port free.
        assert_eq!(tries(SNAT_ATTEMPTS as usize - 1), Verdict::Drop(Reason::DropSnatExhausted));
        t.conntrack.borrow_mut().retain(|key, _| key.dport != snat_port(picks[SNAT_ATTEMPTS as usize - 2]).to_be());
        let Some((_, port)) = other_end(tries(SNAT_ATTEMPTS as usize - 2)) else { panic!("the last try is free") };
        assert_eq!(u16::from_be(port), snat_port(picks[SNAT_ATTEMPTS as usize - 2]));
        assert_eq!(t.inserts_on_taken_keys.get(), 0);
        // From a pod veth, or under a Local policy, there is no SNAT.
        assert!(matches!(
            decide(&flow(CLIENT, VIP, 40001, 80), TCP_ACK, &t, Hook::PodTc),
            Verdict::Rewrite { other, .. } if other.get().is_none()
        ));
        // Without an address towards the backend the flow is dropped, counted.
        t.node_addr = None;
        assert_eq!(
            decide(&flow(CLIENT, VIP, 40003, 80), TCP_SYN, &t, Hook::NodeXdp),
            Verdict::Drop(Reason::DropNoNodeAddress)
        );
        t.frontends.values_mut().for_each(|fe| fe.flags |= FRONTEND_FLAG_NODE_LOCAL);
        assert!(matches!(
            decide(&flow(CLIENT, VIP, 40002, 80), TCP_ACK, &t, Hook::NodeXdp),
            Verdict::Rewrite { other, .. } if other.get().is_none()
        ));
    }

    #[test]
    fn tc_egress_never_starts_or_forwards_flows() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 40000, 80);
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::TcEgress), Verdict::Pass(Reason::PassNoService));
        decide(&f, TCP_ACK, &t, Hook::PodTc);
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::TcEgress), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn misses_and_failures_are_counted_by_reason() {
        let t = service(3);
        // kube-proxy's answers for what names no frontend.
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 81), TCP_ACK, &t, Hook::PodTc),
            Verdict::Reject(Reason::RejectNoServicePort),
            "another port of a cluster IP"
        );
        assert_eq!(
            decide(&flow(CLIENT, VIP + 1, 1, 80), TCP_ACK, &t, Hook::PodTc),
            Verdict::Drop(Reason::DropUnallocatedServiceIp),
            "an unallocated address of the service CIDR"
        );
        let elsewhere = flow(CLIENT, 0x0af4_0105, 1, 80);
        assert_eq!(decide(&elsewhere, TCP_ACK, &t, Hook::PodTc), Verdict::Pass(Reason::PassNoService));
        assert_eq!(decide(&flow(CLIENT, VIP, 1, 81), TCP_ACK, &t, Hook::NodeXdp), Verdict::Pass(Reason::PassNoService));
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &service(0), Hook::PodTc),
            Verdict::Reject(Reason::RejectNoBackend)
        );
        let mut local_without_endpoints = service(0);
        local_without_endpoints.frontends.values_mut().for_each(|fe| fe.flags = FRONTEND_FLAG_NODE_LOCAL);
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &local_without_endpoints, Hook::PodTc),
            Verdict::Drop(Reason::DropNoBackend)
        );

        let mut missing_slot = service(3);
        missing_slot.slots.clear();
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &missing_slot, Hook::PodTc),
            Verdict::Drop(Reason::DropBackendMissing)
        );

        let mut missing_backend = service(3);
        missing_backend.backends.clear();
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &missing_backend, Hook::PodTc),
            Verdict::Drop(Reason::DropBackendMissing)
        );

        let mut full = service(3);
        full.conntrack_full = true;
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_ACK, &full, Hook::PodTc),
            Verdict::Drop(Reason::DropConntrackFull)
        );
    }

    /// Every packet of a flow the datapath translates counts for its
    /// frontend, both ways and on every hook; a refused one counts nothing.
    #[test]
    fn each_translated_packet_counts_for_its_frontend_and_a_refused_one_not() {
        let t = service(1);
        let request = flow(CLIENT, VIP, 40000, 80);
        let Verdict::Rewrite { addr: backend, port: backend_port, .. } = decide(&request, TCP_SYN, &t, Hook::PodTc)
        else {
            panic!()
        };
        assert!(matches!(decide(&request, TCP_ACK, &t, Hook::PodTc), Verdict::Rewrite { .. }));
        let reply = flow(backend, CLIENT, backend_port, 40000);
        assert!(matches!(decide(&reply, TCP_ACK, &t, Hook::PodTc), Verdict::Rewrite { .. }));
        assert!(matches!(decide(&reply, TCP_ACK, &t, Hook::TcEgress), Verdict::Rewrite { .. }));
        assert_eq!(*t.service_packets.borrow(), [(1, 4)].into());

        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 81), TCP_SYN, &t, Hook::PodTc),
            Verdict::Reject(Reason::RejectNoServicePort)
        );
        assert_eq!(
            decide(&flow(CLIENT, VIP, 1, 80), TCP_SYN, &service(0), Hook::PodTc),
            Verdict::Reject(Reason::RejectNoBackend)
        );
        assert_eq!(*t.service_packets.borrow(), [(1, 4)].into());
    }

    const SECOND: u64 = 1_000_000_000;

    fn tcp(t: &FakeTables, f: &CtKey, flags: u8) -> Verdict {
        decide(f, flags, t, Hook::PodTc)
    }

    #[test]
    fn conntrack_entries_expire_by_state_and_are_refreshed_by_traffic() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 1000, 80);
        t.now.set(10 * SECOND);
        assert!(matches!(tcp(&t, &f, TCP_SYN), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
        assert_eq!(t.conntrack.borrow()[&f].state, CT_STATE_SYN);
        assert_eq!(t.created.get(), 2);
        // The client's ACK completes its side; refreshed at once (state change).
        t.now.set(20 * SECOND);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        assert_eq!(
            (t.conntrack.borrow()[&f].state, t.conntrack.borrow()[&f].last_seen_ns),
            (CT_STATE_ESTABLISHED, 20 * SECOND)
        );
        // Established lives 6 h from the last packet; past that, the next
        // packet is a new flow again.
        let idle = 20 * SECOND + u64::from(CtTimeouts::DEFAULT.tcp_established_s) * SECOND;
        t.now.set(idle);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        t.now.set(idle + 2 * SECOND);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        t.now.set(idle + 3 * SECOND + u64::from(CtTimeouts::DEFAULT.tcp_established_s) * SECOND);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
        // A FIN closes the entry: 10 s later it is gone.
        tcp(&t, &f, TCP_ACK | TCP_FIN);
        t.now.set(t.now.get() + 11 * SECOND);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
    }

    #[test]
    fn a_refresh_is_written_at_most_once_a_second_without_a_state_change() {
        let t = service(1);
        let f = flow(CLIENT, VIP, 1000, 80);
        t.now.set(SECOND);
        tcp(&t, &f, TCP_ACK);
        t.now.set(SECOND + SECOND / 2);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(t.conntrack.borrow()[&f].last_seen_ns, SECOND);
        t.now.set(2 * SECOND);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(t.conntrack.borrow()[&f].last_seen_ns, 2 * SECOND);
    }

    #[test]
    fn an_entry_hands_on_its_kept_route_until_it_is_refreshed_and_a_new_flow_none() {
        let t = service(1);
        let f = flow(CLIENT, VIP, 1000, 80);
        t.now.set(SECOND);
        t.route.set(Some(CtHop { kind: 1, ..CtHop::default() }));
        tcp(&t, &f, TCP_SYN);
        assert_eq!(t.route.get(), None, "a new flow's route is asked");
        let hop =
            CtHop { ifindex: 7, dmac: [2, 0, 0, 0, 0, 7], smac: [2, 0, 0, 0, 0, 1], kind: 0x21, _pad: 0, mtu: 1500 };
        t.conntrack_keep_hop(&f, &hop);
        // The SYN-ACK's ACK changes the state: a refresh, so the route is asked again.
        tcp(&t, &f, TCP_ACK);
        assert_eq!(t.route.get(), None);
        t.conntrack_keep_hop(&f, &hop);
        t.now.set(SECOND + SECOND / 2);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(t.route.get(), Some(hop), "kept between refreshes");
        t.now.set(2 * SECOND + SECOND / 2);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(t.route.get(), None, "asked again at the refresh a second later");
    }

    #[test]
    fn udp_flows_expire_after_the_udp_timeout() {
        let mut t = service(1);
        let f = CtKey { proto: IPPROTO_UDP, ..flow(CLIENT, VIP, 1000, 80) };
        let tcp_key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        let frontend = t.frontends[&tcp_key];
        t.frontends.insert(FrontendKey { proto: IPPROTO_UDP, ..tcp_key }, frontend);
        assert!(matches!(decide(&f, 0, &t, Hook::PodTc), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
        t.now.set(u64::from(CtTimeouts::DEFAULT.udp_s) * SECOND);
        assert!(matches!(decide(&f, 0, &t, Hook::PodTc), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        t.now.set(t.now.get() + u64::from(CtTimeouts::DEFAULT.udp_s) * SECOND + 1);
        assert!(matches!(decide(&f, 0, &t, Hook::PodTc), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
    }

    #[test]
    fn a_new_connection_on_the_ports_of_a_closed_one_chooses_again() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 1000, 80);
        tcp(&t, &f, TCP_SYN);
        tcp(&t, &f, TCP_ACK | TCP_FIN);
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        assert!(matches!(tcp(&t, &f, TCP_SYN), Verdict::Rewrite { reason: Reason::ForwardNewFlow, .. }));
    }

    /// A client that reuses the ports of an open connection after its
    /// Service was deleted reaches nothing; a retransmitted SYN stays put.
    #[test]
    fn a_new_connection_on_the_ports_of_an_open_one_finds_a_deleted_service_gone() {
        let mut t = service(3);
        let f = flow(CLIENT, VIP, 1000, 80);
        tcp(&t, &f, TCP_SYN);
        assert!(matches!(tcp(&t, &f, TCP_SYN), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        tcp(&t, &f, TCP_ACK);
        t.frontends.clear();
        assert!(matches!(tcp(&t, &f, TCP_ACK), Verdict::Rewrite { reason: Reason::ForwardEstablished, .. }));
        // Its address is an unallocated one of the service CIDR now.
        assert_eq!(tcp(&t, &f, TCP_SYN), Verdict::Drop(Reason::DropUnallocatedServiceIp));
    }

    #[test]
    fn maglev_picks_the_slot_its_table_gives_the_flow_hash() {
        let mut t = service(3);
        // A 7-entry table at offset 4 whose entries name slots 0, 1, 2, ...
        t.maglev = (0..11).map(|i| (i % 3) as u16).collect();
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        t.frontends.get_mut(&key).unwrap().maglev_offset = 4;
        t.frontends.get_mut(&key).unwrap().maglev_size = 7;
        for port in 1000..1100 {
            let f = flow(CLIENT, VIP, port, 80);
            let index = 4 + reduce((lb_common::hash::flow(&f) >> 32) as u32, 7) as usize;
            let want = 0x0af4_0000 + 10 + u32::from(t.maglev[index]);
            t.random.set(port.into()); // ignored with a table
            assert_eq!(backend_of(tcp(&t, &f, TCP_SYN)), want);
        }
    }

    #[test]
    fn an_evicted_reply_entry_is_written_back_when_the_forward_entry_is_refreshed() {
        let t = service(3);
        let f = flow(CLIENT, VIP, 1000, 80);
        let Verdict::Rewrite { addr, port, .. } = tcp(&t, &f, TCP_SYN) else { panic!() };
        let reply =
            CtKey { saddr: addr, sport: port, daddr: CLIENT, dport: 1000, proto: IPPROTO_TCP, _pad: 0, _pad2: 0 };
        let written = t.conntrack.borrow_mut().remove(&reply).expect("reply entry");
        // The ACK moves the flow on from SYN_SENT: a refresh.
        tcp(&t, &f, TCP_ACK);
        let restored = || t.conntrack.borrow().get(&reply).map(|e| (e.nat_addr, e.nat_port));
        assert_eq!(restored(), Some((written.nat_addr, written.nat_port)));
        // Established: the next refresh is a second later.
        t.conntrack.borrow_mut().remove(&reply);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(restored(), None);
        t.now.set(t.now.get() + CT_REFRESH_NS);
        tcp(&t, &f, TCP_ACK);
        assert_eq!(restored(), Some((written.nat_addr, written.nat_port)));
    }

    #[test]
    fn a_snat_flow_whose_forward_entry_was_evicted_keeps_its_port_and_no_other_client_gets_it() {
        let mut t = service(1);
        t.node_addr = Some(NODE);
        t.backends.values_mut().for_each(|b| b.flags = BACKEND_FLAG_REMOTE);
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        t.frontends.get_mut(&key).unwrap().flags = FRONTEND_FLAG_EXTERNAL;
        let f = flow(CLIENT, VIP, 1000, 80);
        let first = decide(&f, TCP_SYN, &t, Hook::NodeXdp);
        t.conntrack.borrow_mut().remove(&f);
        t.random.set(777);
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::NodeXdp), first, "the flow keeps its SNAT port");
        assert_eq!(t.conntrack.borrow().len(), 2, "no second reply entry");
        // Another client whose hash names the same port never takes it over.
        let Some((_, port)) = other_end(first) else { panic!() };
        let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN + 1);
        let other = (1..u16::MAX)
            .map(|p| flow(CLIENT + 1, VIP, p, 80))
            .find(|o| (SNAT_PORT_MIN + reduce(lb_common::hash::flow(o) as u32, range) as u16).to_be() == port)
            .unwrap();
        let Some((_, other_port)) = other_end(decide(&other, TCP_SYN, &t, Hook::NodeXdp)) else { panic!() };
        assert_ne!(other_port, port);
        assert_eq!(t.inserts_on_taken_keys.get(), 0);
    }

    #[test]
    fn a_snat_flow_whose_entries_were_evicted_gets_the_same_port_back() {
        let mut t = service(1);
        t.node_addr = Some(NODE);
        t.backends.values_mut().for_each(|b| b.flags = BACKEND_FLAG_REMOTE);
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        t.frontends.get_mut(&key).unwrap().flags = FRONTEND_FLAG_EXTERNAL;
        let f = flow(CLIENT, VIP, 1000, 80);
        let first = decide(&f, TCP_SYN, &t, Hook::NodeXdp);
        t.conntrack.borrow_mut().clear();
        t.random.set(12345);
        assert_eq!(decide(&f, TCP_ACK, &t, Hook::NodeXdp), first);
    }

    fn call(cookie: u64) -> SocketCall {
        SocketCall { daddr: VIP, dport: 80, proto: IPPROTO_TCP, netns: 4097, node: true, cookie }
    }

    #[test]
    fn a_socket_is_sent_to_a_backend_without_any_conntrack_entry() {
        let mut t = service(3);
        t.maglev = vec![0, 1, 2, 0, 1, 2, 0];
        t.frontends.values_mut().for_each(|fe| fe.maglev_size = 7);
        let chosen: std::collections::BTreeSet<u32> =
            (0..32).map(|cookie| backend_of(socket(&call(cookie), &t))).collect();
        assert_eq!(chosen.len(), 3, "sockets spread over every backend");
        // The same socket (sendmsg() after sendmsg()) keeps its backend.
        assert_eq!(backend_of(socket(&call(5), &t)), backend_of(socket(&call(5), &t)));
        assert!(t.conntrack.borrow().is_empty());
        assert_eq!(t.created.get(), 0);
    }

    #[test]
    fn a_socket_keeps_its_backend_without_a_maglev_table_too() {
        let t = service(3);
        let chosen: std::collections::BTreeSet<u32> = (0..32)
            .map(|cookie| {
                t.random.set(slot(cookie as u32 % 3, 3));
                let first = backend_of(socket(&call(cookie), &t));
                t.random.set(slot((cookie as u32 + 1) % 3, 3));
                assert_eq!(backend_of(socket(&call(cookie), &t)), first, "socket {cookie}");
                first
            })
            .collect();
        assert_eq!(chosen.len(), 3, "sockets spread over every backend");
    }

    #[test]
    fn a_pod_s_loopback_is_its_own() {
        let mut t = service(1);
        let key = FrontendKey { addr: u32::from_ne_bytes([127, 0, 0, 1]), port: 80, proto: IPPROTO_TCP, scope: 0 };
        t.frontends.insert(key, Frontend { frontend_id: 1, backend_count: 1, ..Default::default() });
        let to_localhost = SocketCall { daddr: key.addr, ..call(1) };
        assert!(matches!(socket(&to_localhost, &t), Verdict::Rewrite { .. }), "the node's socket is served");
        let from_pod = SocketCall { node: false, ..to_localhost };
        assert_eq!(socket(&from_pod, &t), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn a_socket_to_a_service_without_endpoints_or_port_is_refused() {
        let t = service(0);
        assert_eq!(socket(&call(1), &t), Verdict::Reject(Reason::RejectNoBackend));
        let t = service(1);
        let wrong_port = SocketCall { dport: 81, ..call(1) };
        assert_eq!(socket(&wrong_port, &t), Verdict::Reject(Reason::RejectNoServicePort));
        let elsewhere = SocketCall { daddr: 0x0101_0101, ..call(1) };
        assert_eq!(socket(&elsewhere, &t), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn a_socket_keeps_the_affinity_of_its_namespace() {
        let mut t = service(3);
        t.frontends.values_mut().for_each(|fe| fe.affinity_timeout_s = 10);
        t.random.set(slot(1, 3));
        let first = backend_of(socket(&call(1), &t));
        for cookie in 2..10 {
            t.random.set(slot(cookie as u32 % 3, 3));
            assert_eq!(backend_of(socket(&call(cookie), &t)), first);
        }
        let key = AffinityKey { client: call(1).client(), frontend_id: 1 };
        assert!(t.affinity.borrow().contains_key(&key));
        assert_eq!(wire_octet0(key.client), 0, "a namespace's name is in 0.0.0.0/8");
        let other_namespace = SocketCall { netns: 4098, ..call(1) };
        assert_ne!(other_namespace.client(), key.client);
    }

    fn wire_octet0(addr: u32) -> u8 {
        addr.to_ne_bytes()[0]
    }

    #[test]
    fn a_node_socket_takes_the_twin_of_a_local_policy_and_its_source_ranges() {
        let mut t = service(1);
        let key = FrontendKey { addr: VIP, port: 80, proto: IPPROTO_TCP, scope: FRONTEND_SCOPE_ALL };
        // The frontend has no local endpoint; its twin has the remote one.
        let twin = t.frontends[&key];
        t.frontends.insert(FrontendKey { scope: FRONTEND_SCOPE_PODS, ..key }, twin);
        let local = t.frontends.get_mut(&key).unwrap();
        local.flags = FRONTEND_FLAG_NODE_LOCAL | FRONTEND_FLAG_POD_TWIN | FRONTEND_FLAG_EXTERNAL;
        local.backend_count = 0;
        assert!(matches!(socket(&call(1), &t), Verdict::Rewrite { .. }));
        // Source ranges: the node's sockets only when a node address is in
        // them; pods' sockets go to the packet path, which sees the source.
        t.frontends.values_mut().for_each(|fe| fe.flags |= FRONTEND_FLAG_SOURCE_RANGES);
        assert_eq!(socket(&call(1), &t), Verdict::Drop(Reason::DropSourceRange));
        assert_eq!(socket(&SocketCall { node: false, ..call(1) }, &t), Verdict::Pass(Reason::PassToPacketPath));
        t.frontends.values_mut().for_each(|fe| fe.flags |= FRONTEND_FLAG_NODE_ADMITTED);
        assert!(matches!(socket(&call(1), &t), Verdict::Rewrite { .. }));
    }

    /// `fd00:96::a`-style test addresses: the last word varies.
    fn v6(last: u32) -> lb_common::Ipv6Wire {
        let [a, b, c, _] = lb_common::wire::addr6([0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        [a, b, c, last.to_be()]
    }

    #[test]
    fn an_ipv6_flow_is_translated_both_ways_and_hairpins_like_ipv4() {
        let vip = v6(0x0a);
        let t = service_of(vip, |i| v6(0x100 + i), 3);
        t.random.set(slot(1, 3));
        let client = v6(0x200);
        let f = CtKey { saddr: client, daddr: vip, sport: 40000, dport: 80, proto: IPPROTO_TCP, _pad: 0, _pad2: 0 };
        let forward = Verdict::Rewrite {
            reason: Reason::ForwardNewFlow,
            side: Side::Dst,
            addr: v6(0x101),
            port: 8080,
            other: None.into(),
        };
        assert_eq!(decide(&f, TCP_SYN, &t, Hook::PodTc), forward);
        let reply = CtKey { saddr: v6(0x101), daddr: client, sport: 8080, dport: 40000, ..f };
        assert_eq!(
            decide(&reply, TCP_ACK, &t, Hook::TcEgress),
            Verdict::Rewrite {
                reason: Reason::ReplyReverseNat,
                side: Side::Src,
                addr: vip,
                port: 80,
                other: None.into(),
            }
        );
        assert_eq!(t.created.get(), 2);
        // The backend itself as the client: it sees the VIP as its peer.
        let me = CtKey { saddr: v6(0x101), sport: 41000, ..f };
        t.random.set(slot(1, 3));
        let Verdict::Rewrite { addr, other, .. } = decide(&me, TCP_SYN, &t, Hook::PodTc) else { panic!() };
        assert_eq!((addr, other.get()), (v6(0x101), Some((vip, 41000))));
    }

    #[test]
    fn an_ipv6_socket_is_sent_to_a_backend_and_a_pod_s_loopback_stays_its_own() {
        let vip = v6(0x0a);
        let t = service_of(vip, |i| v6(0x100 + i), 3);
        let call = |cookie, daddr| SocketCall { daddr, dport: 80, proto: IPPROTO_TCP, netns: 4097, node: true, cookie };
        let chosen: std::collections::BTreeSet<_> = (0..32)
            .map(|cookie| match socket(&call(cookie, vip), &t) {
                Verdict::Rewrite { side: Side::Dst, addr, port: 8080, .. } => addr,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(chosen, (0..3).map(|i| v6(0x100 + i)).collect(), "sockets spread over every backend");
        assert!(t.conntrack.borrow().is_empty());
        // Affinity's client: the namespace, as an address no packet carries.
        assert_eq!(call(0, vip).client(), [0, 0, 0, (4097u32 & 0xff_ffff).to_be()]);
        let loopback = [0, 0, 0, 1u32.to_be()];
        let from_pod = SocketCall { node: false, ..call(1, loopback) };
        assert_eq!(socket(&from_pod, &t), Verdict::Pass(Reason::PassNoService));
    }

    #[test]
    fn ipv6_checks_use_the_ipv6_service_cidr_source_ranges_and_node_address() {
        let vip = v6(0x0a);
        let mut t = service_of(vip, |i| v6(0x100 + i), 1);
        t.service_cidr = ServiceCidr { network: v6(0), mask: [u32::MAX, u32::MAX, u32::MAX, 0] };
        let f =
            |daddr, dport| CtKey { saddr: v6(0x200), daddr, sport: 1, dport, proto: IPPROTO_TCP, _pad: 0, _pad2: 0 };
        assert_eq!(decide(&f(v6(0x0b), 80), TCP_SYN, &t, Hook::PodTc), Verdict::Drop(Reason::DropUnallocatedServiceIp));
        assert_eq!(decide(&f(vip, 81), TCP_SYN, &t, Hook::PodTc), Verdict::Reject(Reason::RejectNoServicePort));
        let outside = [0x2001_0db8u32.to_be(), 0, 0, 1u32.to_be()];
        assert_eq!(decide(&f(outside, 80), TCP_SYN, &t, Hook::PodTc), Verdict::Pass(Reason::PassNoService));
        // From outside, to a backend on another node: SNAT to the node's
        // IPv6 address; source ranges hold IPv6 clients.
        t.frontends.values_mut().for_each(|fe| fe.flags = FRONTEND_FLAG_EXTERNAL | FRONTEND_FLAG_SOURCE_RANGES);
        t.backends.values_mut().for_each(|b| b.flags = BACKEND_FLAG_REMOTE);
        t.node_addr = Some(v6(0x1));
        assert_eq!(decide(&f(vip, 80), TCP_SYN, &t, Hook::NodeXdp), Verdict::Drop(Reason::DropSourceRange));
        t.allowed_clients.push(v6(0x200));
        let Some((snat, port)) = other_end(decide(&f(vip, 80), TCP_SYN, &t, Hook::NodeXdp)) else { panic!() };
        assert_eq!(snat, v6(0x1));
        assert!(u16::from_be(port) >= SNAT_PORT_MIN);
    }
}
