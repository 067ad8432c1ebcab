//! Every map of the datapath, pinned by name under the agent's bpf
//! directory so that `lb-agent get` and a restarted agent find them, and
//! the maps and helpers behind `lb_ebpf`'s traits.

use core::marker::PhantomData;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup,
    },
    cty::c_void,
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_map_lookup_elem},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SockAddrContext, TcContext, XdpContext},
};

use lb_common::{
    Addr, AffinityEntry, AffinityKey, Backend, CtEntry, CtHop, CtKey, CtTimeouts, EndpointKey, EndpointMeta, EntryHop,
    FastPath, Frontend, FrontendKey, Hook, Ipv6Wire, MAGLEV_ENTRIES_PER_ELEMENT, MAX_AFFINITY, MAX_BACKEND_SLOTS,
    MAX_BACKENDS, MAX_CONNTRACK, MAX_DEVICES, MAX_ENDPOINTS, MAX_FRONTENDS, MAX_MAGLEV_ENTRIES, MAX_NODE_DEVICES,
    MAX_NODE_PORTS, MAX_SOCKET_REVERSE, MAX_SOURCE_RANGES, MaglevElement, NodePortKey, Reason, ServiceCidr,
    ServiceMeta, ServiceTraffic, SocketFrontend, SocketPeer, SourceRange, ct_stats,
};
use lb_ebpf::{
    decide::{InsertFailed, Shared, Tables},
    forward::{Fib, FibAnswer, FibQuery, KeptRoute, NextHop},
    packet::family::{Family, V4, V6},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// The control maps the agent writes while packets read them are not
// preallocated: an updated element is then freed only after an RCU grace
// period, so a packet never reads a value half-overwritten by the reuse of
// its element (preallocated hash maps recycle elements at once).

/// (VIP, port, protocol) -> the Service port answering there.
#[map]
static LB_FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::pinned(MAX_FRONTENDS, BPF_F_NO_PREALLOC);

// The arrays a new flow reads to pick its backend are looked up without a
// call (the verifier inlines array lookups). The agent writes them through
// a memory mapping, only elements no frontend names yet: a packet never
// reads an element while it changes.

/// Every frontend's backend list (backend ids), each a region of this
/// array (offset and count in the frontend).
#[map]
static LB_BACKEND_SLOTS: Array<u32> = Array::pinned(MAX_BACKEND_SLOTS, BPF_F_MMAPABLE);

/// Backend id -> endpoint address and port.
#[map]
static LB_BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, BPF_F_MMAPABLE);

/// 5-tuple -> translation; forward and reply entries of every flow.
#[map]
static LB_CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CONNTRACK, 0);

/// (client, frontend_id) -> backend of the client's last new connection.
#[map]
static LB_AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::pinned(MAX_AFFINITY, 0);

/// Every endpoint of each Service port with its conditions; userspace only.
#[map]
static LB_ENDPOINTS: HashMap<EndpointKey, EndpointMeta> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// (frontend_id, client network) of frontends with `loadBalancerSourceRanges`.
#[map]
static LB_SOURCE_RANGES: LpmTrie<SourceRange, u8> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// Service addresses (value: how many frontends use it, `VIP_CLUSTER_IP`
/// set for a cluster IP), for ICMP echo and kube-proxy's rejects.
#[map]
static LB_VIPS: HashMap<u32, u32> = HashMap::pinned(MAX_FRONTENDS, BPF_F_NO_PREALLOC);

/// ifindex -> `DEVICE_*` flags: the devices the datapath may send packets
/// to itself (XDP frames, or TC's `bpf_redirect_peer` into a pod).
#[map]
static LB_DEVICES: HashMap<u32, u32> = HashMap::pinned(MAX_DEVICES, BPF_F_NO_PREALLOC);

/// Per-CPU counts of how rewritten packets left XDP, indexed by FastPath.
#[map]
static LB_FAST_PATH_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(FastPath::COUNT, 0);

/// Every frontend's Maglev table, each a region of this array (offset and
/// size in the frontend), packed 4 slots per element. Memory-mapped by the
/// agent, which writes a whole table without a syscall per entry.
#[map]
static LB_MAGLEV: Array<MaglevElement> = Array::pinned(MAX_MAGLEV_ENTRIES / MAGLEV_ENTRIES_PER_ELEMENT, BPF_F_MMAPABLE);

/// Per-CPU conntrack statistics, indexed by `lb_common::ct_stats`.
#[map]
static LB_CT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(ct_stats::COUNT, 0);

/// Packets and bytes per frontend id (1 to `MAX_FRONTENDS`), per CPU
/// (`ServiceTraffic`): one add on a CPU's own element per translated packet.
#[map]
static LB_SERVICE_TRAFFIC: PerCpuArray<ServiceTraffic> = PerCpuArray::pinned(MAX_FRONTENDS + 1, 0);

/// The service CIDR, set by the agent at load time (`--service-cidr`).
#[unsafe(no_mangle)]
static LB_SERVICE_CIDR: ServiceCidr = ServiceCidr { network: 0, mask: 0 };

/// Conntrack idle timeouts, set by the agent at load time (`--ct-timeout-*`).
#[unsafe(no_mangle)]
static LB_CT_TIMEOUTS: CtTimeouts = CtTimeouts::DEFAULT;

/// Per-CPU packet counts, indexed by hook * Reason::COUNT + reason.
#[map]
static LB_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Hook::COUNT * Reason::COUNT, 0);

/// ifindex -> the first IPv4 address of that node device (`--device`), the
/// source of SNATed flows leaving by it.
#[map]
static LB_NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_NODE_DEVICES, BPF_F_NO_PREALLOC);

/// (socket cookie, backend) -> the frontend the socket asked for, so that
/// `recvmsg` and `getpeername` show it back.
#[map]
static LB_SOCKET_REVERSE: LruHashMap<SocketPeer, SocketFrontend> = LruHashMap::pinned(MAX_SOCKET_REVERSE, 0);
#[map]
static LB_SOCKET_REVERSE6: LruHashMap<SocketPeer<Ipv6Wire>, SocketFrontend<Ipv6Wire>> =
    LruHashMap::pinned(MAX_SOCKET_REVERSE, 0);

/// (node port, protocol) -> how many frontends use it: the ports the
/// node's own processes may not bind.
#[map]
static LB_NODE_PORTS: HashMap<NodePortKey, u32> = HashMap::pinned(MAX_NODE_PORTS, BPF_F_NO_PREALLOC);

// The IPv6 twins of the maps above whose keys or values hold an address:
// the same layout rule with four-word addresses (`lb_common::Ipv6Wire`).

#[map]
static LB_FRONTENDS6: HashMap<FrontendKey<Ipv6Wire>, Frontend> = HashMap::pinned(MAX_FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
static LB_BACKENDS6: Array<Backend<Ipv6Wire>> = Array::pinned(MAX_BACKENDS, BPF_F_MMAPABLE);

#[map]
static LB_CONNTRACK6: LruHashMap<CtKey<Ipv6Wire>, CtEntry<Ipv6Wire>> = LruHashMap::pinned(MAX_CONNTRACK, 0);

#[map]
static LB_AFFINITY6: LruHashMap<AffinityKey<Ipv6Wire>, AffinityEntry> = LruHashMap::pinned(MAX_AFFINITY, 0);

#[map]
static LB_SOURCE_RANGES6: LpmTrie<SourceRange<Ipv6Wire>, u8> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

#[map]
static LB_VIPS6: HashMap<Ipv6Wire, u32> = HashMap::pinned(MAX_FRONTENDS, BPF_F_NO_PREALLOC);

/// ifindex -> the first global IPv6 address of that node device.
#[map]
static LB_NODE_ADDRS6: HashMap<u32, Ipv6Wire> = HashMap::pinned(MAX_NODE_DEVICES, BPF_F_NO_PREALLOC);

/// The IPv6 service CIDR, set by the agent at load time.
#[unsafe(no_mangle)]
static LB_SERVICE_CIDR6: ServiceCidr<Ipv6Wire> = ServiceCidr { network: [0; 4], mask: [0; 4] };

/// frontend_id -> namespace/name/port of its Service; read by userspace only.
#[map]
static LB_SERVICE_META: HashMap<u32, ServiceMeta> = HashMap::pinned(MAX_FRONTENDS, BPF_F_NO_PREALLOC);

/// A family's own maps (the others are shared), so that one implementation
/// of the decision's `Tables` serves both.
pub trait FamilyMaps: Family {
    fn frontends() -> &'static HashMap<FrontendKey<Self::Addr>, Frontend>;
    fn backends() -> &'static Array<Backend<Self::Addr>>;
    fn conntrack() -> &'static LruHashMap<CtKey<Self::Addr>, CtEntry<Self::Addr>>;
    fn affinity() -> &'static LruHashMap<AffinityKey<Self::Addr>, AffinityEntry>;
    fn source_ranges() -> &'static LpmTrie<SourceRange<Self::Addr>, u8>;
    fn vips() -> &'static HashMap<Self::Addr, u32>;
    fn node_addrs() -> &'static HashMap<u32, Self::Addr>;
    fn socket_reverse() -> &'static LruHashMap<SocketPeer<Self::Addr>, SocketFrontend<Self::Addr>>;
    fn service_cidr() -> ServiceCidr<Self::Addr>;
    /// Bits of an address: a source range key's length is 32 + its prefix.
    const ADDR_BITS: u32;
}

impl FamilyMaps for V4 {
    fn frontends() -> &'static HashMap<FrontendKey<u32>, Frontend> {
        &LB_FRONTENDS
    }
    fn backends() -> &'static Array<Backend<u32>> {
        &LB_BACKENDS
    }
    fn conntrack() -> &'static LruHashMap<CtKey<u32>, CtEntry<u32>> {
        &LB_CONNTRACK
    }
    fn affinity() -> &'static LruHashMap<AffinityKey<u32>, AffinityEntry> {
        &LB_AFFINITY
    }
    fn source_ranges() -> &'static LpmTrie<SourceRange<u32>, u8> {
        &LB_SOURCE_RANGES
    }
    fn vips() -> &'static HashMap<u32, u32> {
        &LB_VIPS
    }
    fn node_addrs() -> &'static HashMap<u32, u32> {
        &LB_NODE_ADDRS
    }
    fn socket_reverse() -> &'static LruHashMap<SocketPeer, SocketFrontend> {
        &LB_SOCKET_REVERSE
    }
    #[inline(always)]
    fn service_cidr() -> ServiceCidr<u32> {
        // SAFETY: a load-time constant; read volatile so that it is not folded.
        unsafe { core::ptr::read_volatile(&LB_SERVICE_CIDR) }
    }
    const ADDR_BITS: u32 = 32;
}

impl FamilyMaps for V6 {
    fn frontends() -> &'static HashMap<FrontendKey<Ipv6Wire>, Frontend> {
        &LB_FRONTENDS6
    }
    fn backends() -> &'static Array<Backend<Ipv6Wire>> {
        &LB_BACKENDS6
    }
    fn conntrack() -> &'static LruHashMap<CtKey<Ipv6Wire>, CtEntry<Ipv6Wire>> {
        &LB_CONNTRACK6
    }
    fn affinity() -> &'static LruHashMap<AffinityKey<Ipv6Wire>, AffinityEntry> {
        &LB_AFFINITY6
    }
    fn source_ranges() -> &'static LpmTrie<SourceRange<Ipv6Wire>, u8> {
        &LB_SOURCE_RANGES6
    }
    fn vips() -> &'static HashMap<Ipv6Wire, u32> {
        &LB_VIPS6
    }
    fn node_addrs() -> &'static HashMap<u32, Ipv6Wire> {
        &LB_NODE_ADDRS6
    }
    fn socket_reverse() -> &'static LruHashMap<SocketPeer<Ipv6Wire>, SocketFrontend<Ipv6Wire>> {
        &LB_SOCKET_REVERSE6
    }
    #[inline(always)]
    fn service_cidr() -> ServiceCidr<Ipv6Wire> {
        // SAFETY: as for IPv4.
        unsafe { core::ptr::read_volatile(&LB_SERVICE_CIDR6) }
    }
    const ADDR_BITS: u32 = 128;
}

/// The maps as the decision in `lb_ebpf::decide` sees them, for a packet of
/// family `F` in one program context (the FIB lookup for SNAT needs it).
pub struct MapTables<F = V4> {
    ctx: *mut c_void,
    ingress_ifindex: u32,
    family: PhantomData<F>,
}

impl<F> MapTables<F> {
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        // SAFETY: the context's own metadata.
        Self { ctx: ctx.as_ptr(), ingress_ifindex: unsafe { (*ctx.ctx).ingress_ifindex }, family: PhantomData }
    }

    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        // SAFETY: as above.
        Self { ctx: ctx.as_ptr(), ingress_ifindex: unsafe { (*ctx.skb.skb).ifindex }, family: PhantomData }
    }

    /// For the socket hooks, which never ask for a node address (no SNAT).
    #[inline(always)]
    pub fn socket(ctx: &SockAddrContext) -> Self {
        Self { ctx: ctx.as_ptr(), ingress_ifindex: 0, family: PhantomData }
    }

    /// After a packet of `len` bytes was rewritten: keeps the FIB's answer
    /// about its flow's packets in its entry (`flow`'s, `reason` the
    /// verdict's) when this packet's departure (`route`) asked for it, and
    /// counts the packet in its frontend's traffic.
    #[inline(always)]
    pub fn rewritten(&self, flow: &CtKey<F::Addr>, reason: Reason, route: &KeptRoute, len: u32)
    where
        F: FamilyMaps,
    {
        let flows_entry =
            matches!(reason, Reason::ForwardNewFlow | Reason::ForwardEstablished | Reason::ReplyReverseNat);
        if route.asked && flows_entry {
            self.conntrack_keep_hop(flow, &route.hop);
        }
        count_service_traffic(route, len);
    }
}

/// The route of the packet being rewritten on this CPU: what the decision
/// handed on of its flow's entry (`Tables::entry_route`), completed by its
/// departure. Per CPU rather than on the stack, where it would count in the
/// frames of the hooks and of every function it is handed to (the verifier
/// allows 512 bytes per call chain); a program runs to its end on one CPU,
/// and none that rewrites runs inside another.
#[map]
static LB_ROUTE: PerCpuArray<KeptRoute> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's `LB_ROUTE` slot; None never happens (the map has its one
/// slot). Each call makes a new reference: hold one at a time.
#[inline(always)]
pub fn route() -> Option<&'static mut KeptRoute> {
    // SAFETY: this CPU's slot, used by one program at a time (see LB_ROUTE).
    LB_ROUTE.get_ptr_mut(0).map(|route| unsafe { &mut *route })
}

/// Remembers that socket `cookie`, which asked for `frontend`, was sent to
/// `backend`. Fails only when the map refuses the write.
#[inline(always)]
pub fn remember_socket_peer<F: FamilyMaps>(peer: &SocketPeer<F::Addr>, frontend: &SocketFrontend<F::Addr>) -> bool {
    F::socket_reverse().insert(peer, frontend, 0).is_ok()
}

/// The frontend a socket asked for, when the socket hooks sent it to `peer`.
#[inline(always)]
pub fn socket_frontend<F: FamilyMaps>(peer: &SocketPeer<F::Addr>) -> Option<SocketFrontend<F::Addr>> {
    // SAFETY: plain data copied out at once.
    unsafe { F::socket_reverse().get(peer).copied() }
}

#[inline(always)]
pub fn is_node_port(key: &NodePortKey) -> bool {
    // SAFETY: only the presence of the entry is read.
    unsafe { LB_NODE_PORTS.get(key).is_some() }
}

impl<F> Shared for MapTables<F> {
    #[inline(always)]
    fn conntrack_created(&self, n: u64) {
        if let Some(counter) = LB_CT_STATS.get_ptr_mut(ct_stats::CREATED) {
            // SAFETY: a per-CPU slot; nothing else on this CPU runs concurrently.
            unsafe { *counter += n };
        }
    }

    /// Noted for the hook, which counts the packet once rewritten
    /// (`MapTables::rewritten`): the packet's length there would cost the
    /// frames between a stack slot, which IPv6 on 6.1 cannot spare.
    #[inline(always)]
    fn count_service(&self, frontend_id: u32) {
        if let Some(route) = route() {
            route.frontend_id = frontend_id;
        }
    }

    #[inline(always)]
    fn ct_timeouts(&self) -> CtTimeouts {
        // SAFETY: a load-time constant; read volatile so that it is not folded.
        unsafe { core::ptr::read_volatile(&LB_CT_TIMEOUTS) }
    }

    #[inline(always)]
    fn backend_slot(&self, index: u32) -> Option<u32> {
        LB_BACKEND_SLOTS.get(index).copied()
    }

    #[inline(always)]
    fn maglev_slot(&self, index: u32) -> Option<u16> {
        let element = LB_MAGLEV.get(index / MAGLEV_ENTRIES_PER_ELEMENT)?;
        element.get((index % MAGLEV_ENTRIES_PER_ELEMENT) as usize).copied()
    }

    #[inline(always)]
    fn random(&self) -> u32 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    }

    #[inline(always)]
    fn now_ns(&self) -> u64 {
        now_ns()
    }
}

/// The length of the kernel's tick in ns, set by the agent at load time
/// (`clock_getres(CLOCK_MONOTONIC_COARSE)`); 0 reads the clock's helper.
#[unsafe(no_mangle)]
static LB_TICK_NS: u64 = 0;

/// What the clock adds to the jiffies' ns (see `now_ns`), measured by the
/// first packet; 0 until then.
#[map]
static LB_CLOCK_OFFSET: Array<u64> = Array::with_max_entries(1, 0);

/// CLOCK_MONOTONIC at tick resolution, as `bpf_ktime_get_coarse_ns` gives it
/// (timeouts are seconds), without its helper call on every packet (a call
/// and its return cost an established packet a sixth): the jiffies, a load
/// the verifier inlines, in ns, plus the offset between the two clocks, which
/// the kernel keeps constant by deriving the jiffies from the same clock
/// (NO_HZ and high-resolution ticks; a kernel counting periodic interrupts
/// may lose ticks). The coarse clock is read before the jiffies, which a
/// tick advances first: the offset is never ahead, at most a tick behind.
/// Another load measures its own offset, and two CPUs may race to the
/// first: times may differ by a tick, so they are compared saturating.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a load-time constant read volatile so that it is not folded.
    let tick_ns = unsafe { core::ptr::read_volatile(&LB_TICK_NS) };
    let Some(offset) = LB_CLOCK_OFFSET.get_ptr_mut(0).filter(|_| tick_ns != 0) else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: helpers without arguments, and the array's own element: two
    // CPUs measuring the offset at once write the same one, give or take a tick.
    unsafe {
        if *offset == 0 {
            let coarse = bpf_ktime_get_coarse_ns();
            *offset = coarse.wrapping_sub(bpf_jiffies64().wrapping_mul(tick_ns));
        }
        bpf_jiffies64().wrapping_mul(tick_ns).wrapping_add(*offset)
    }
}

impl<F: FamilyMaps> Tables<F::Addr> for MapTables<F> {
    #[inline(always)]
    fn conntrack_with<R>(&self, key: &CtKey<F::Addr>, read: impl FnOnce(&CtEntry<F::Addr>) -> R) -> Option<R> {
        // SAFETY: entries are plain data. Other CPUs may write the state,
        // last-seen time and kept route meanwhile: a torn read of those is
        // what a copy would risk too, and each is written whole again soon.
        unsafe { F::conntrack().get(key).map(read) }
    }

    #[inline(always)]
    fn conntrack_insert(&self, key: &CtKey<F::Addr>, entry: &CtEntry<F::Addr>) -> Result<(), InsertFailed> {
        F::conntrack().insert(key, entry, 0).map_err(|_| InsertFailed)
    }

    #[inline(always)]
    fn conntrack_insert_new(&self, key: &CtKey<F::Addr>, entry: &CtEntry<F::Addr>) -> Result<(), InsertFailed> {
        F::conntrack().insert(key, entry, u64::from(BPF_NOEXIST)).map_err(|_| InsertFailed)
    }

    #[inline(always)]
    fn conntrack_refresh(&self, key: &CtKey<F::Addr>, state: u8, now_ns: u64) {
        if let Some(entry) = F::conntrack().get_ptr_mut(key) {
            // SAFETY: a live entry; concurrent refreshes write the same kind
            // of values, so a lost one only delays the expiry a little.
            unsafe {
                (*entry).state = state;
                (*entry).last_seen_ns = now_ns;
            }
        }
    }

    #[inline(always)]
    fn entry_route(&self, hop: Option<&CtHop>) {
        if let Some(route) = route() {
            route.hop = match hop {
                Some(hop) => *hop,
                None => CtHop::default(),
            };
            route.asked = false;
            // Id 0 is no frontend's: a rewrite that named none counts nowhere.
            route.frontend_id = 0;
        }
    }

    #[inline(always)]
    fn conntrack_keep_hop(&self, key: &CtKey<F::Addr>, hop: &CtHop) {
        if !<<F::Addr as Addr>::Hop as EntryHop>::KEEPS {
            return;
        }
        if let Some(entry) = F::conntrack().get_ptr_mut(key) {
            // SAFETY: a live entry; a torn or lost write is asked again at
            // the next refresh, and a kept answer is only ever a route the
            // FIB gave for this entry's packets.
            unsafe { (*entry).hop.set(hop) };
        }
    }

    #[inline(always)]
    fn affinity(&self, key: &AffinityKey<F::Addr>) -> Option<AffinityEntry> {
        // SAFETY: as above.
        unsafe { F::affinity().get(key).copied() }
    }

    #[inline(always)]
    fn affinity_insert(&self, key: &AffinityKey<F::Addr>, entry: &AffinityEntry) {
        // A client that keeps its backend has only its time renewed, in
        // place: an LRU insert would take an element off the free list and
        // put the old one back. A backend is never written in place: an LRU
        // element is reused at once when evicted, and a stale pointer would
        // hand this backend to another client (a time written there only
        // lengthens that client's stickiness).
        // SAFETY: the map's own element, plain data; one aligned u64 store.
        match F::affinity().get_ptr_mut(key) {
            Some(existing) if unsafe { (*existing).backend_id } == entry.backend_id => unsafe {
                (*existing).last_used_ns = entry.last_used_ns;
            },
            // Losing an affinity update only costs stickiness, never a packet.
            _ => drop(F::affinity().insert(key, entry, 0)),
        }
    }

    #[inline(always)]
    fn source_allowed(&self, frontend_id: u32, client: F::Addr) -> bool {
        let key = Key::new(32 + F::ADDR_BITS, SourceRange { frontend_id_be: frontend_id.to_be(), addr: client });
        F::source_ranges().get(&key).is_some()
    }

    #[inline(always)]
    fn frontend(&self, key: &FrontendKey<F::Addr>) -> Option<Frontend> {
        // SAFETY: as above.
        unsafe { F::frontends().get(key).copied() }
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<Backend<F::Addr>> {
        // A cleared element (port 0) is no backend: see `lb_common::Backend`.
        F::backends().get(id).copied().filter(|backend| backend.port != 0)
    }

    #[inline(always)]
    fn service_address(&self, addr: F::Addr) -> Option<u32> {
        // SAFETY: plain data copied out at once.
        unsafe { F::vips().get(addr).copied() }
    }

    #[inline(always)]
    fn service_cidr(&self) -> ServiceCidr<F::Addr> {
        F::service_cidr()
    }

    #[inline(always)]
    fn node_address_toward(&self, daddr: F::Addr) -> Option<F::Addr> {
        // SAFETY: plain data copied out at once.
        let addr = |ifindex: u32| unsafe { F::node_addrs().get(ifindex).copied() };
        let egress = egress_device(self.ctx, self.ingress_ifindex, daddr);
        if egress != 0 { addr(egress) } else { None }.or_else(|| addr(self.ingress_ifindex))
    }
}

/// The device the FIB's route to `daddr` leaves by, 0 if none. A BPF
/// function of its own: the FIB's 64-byte query would otherwise sit in the
/// caller's stack frame, beside the fast path's (the 6.1 verifier caps the
/// frames of a call chain at 512 bytes together).
#[inline(never)]
fn egress_device<A: Addr>(ctx: *mut c_void, ingress_ifindex: u32, daddr: A) -> u32 {
    match KernelFib(ctx).lookup(ingress_ifindex, &FibQuery { daddr, ..FibQuery::default() }) {
        FibAnswer::Forward(NextHop { ifindex, .. }) | FibAnswer::NoNeighbour(ifindex) => ifindex,
        FibAnswer::NotForwarded | FibAnswer::TooBig(_) => 0,
    }
}

/// Counts a rewritten packet of `len` bytes in the traffic of the frontend
/// `route` names (`Tables::count_service` left its id there). The lookup's
/// key is that id where it lies, in the scratch slot: copied to the stack,
/// it would take a slot the hooks' frames cannot spare, and a function of
/// its own to hold it would cost a call per packet.
#[inline(always)]
pub fn count_service_traffic(route: &KeptRoute, len: u32) {
    // SAFETY: `LB_SERVICE_TRAFFIC` is its map definition (aya's map types
    // are transparent over it); the helper reads the 4-byte key from map
    // memory and returns this CPU's element or null.
    let traffic = unsafe {
        bpf_map_lookup_elem(
            core::ptr::addr_of!(LB_SERVICE_TRAFFIC).cast_mut().cast(),
            core::ptr::addr_of!(route.frontend_id).cast(),
        )
    }
    .cast::<ServiceTraffic>();
    if !traffic.is_null() {
        // SAFETY: a per-CPU element; nothing else on this CPU runs concurrently.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    if let Some(counter) = LB_COUNTERS.get_ptr_mut(hook as u32 * Reason::COUNT + reason as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs concurrently.
        unsafe { *counter += 1 };
    }
}

/// The kernel's FIB as seen from one program context.
pub struct KernelFib(*mut c_void);

impl KernelFib {
    #[inline(always)]
    pub fn of<C: EbpfContext>(ctx: &C) -> Self {
        Self(ctx.as_ptr())
    }
}

/// The FIB's query and answer, per CPU: on the stack, its 64 bytes would
/// count in the frames of every caller (the verifier allows 512 bytes per
/// call chain). A program runs to its end on one CPU, and none that asks
/// the FIB runs inside another.
#[map]
static LB_FIB_PARAMS: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

impl Fib for KernelFib {
    #[inline(always)]
    fn lookup<A: Addr>(&self, ingress_ifindex: u32, query: &FibQuery<A>) -> FibAnswer {
        let Some(params) = LB_FIB_PARAMS.get_ptr_mut(0) else { return FibAnswer::NotForwarded };
        // SAFETY: this CPU's slot (see LB_FIB_PARAMS); all-zero is a valid
        // value of this plain C struct.
        let params = unsafe {
            core::ptr::write_bytes(params, 0, 1);
            &mut *params
        };
        params.family = if core::mem::size_of::<A>() == 4 { AF_INET } else { AF_INET6 };
        params.l4_protocol = query.proto;
        params.sport = query.sport;
        params.dport = query.dport;
        params.__bindgen_anon_1.tot_len = query.tot_len;
        params.ifindex = ingress_ifindex;
        params.__bindgen_anon_2.flowinfo = query.class;
        // SAFETY: each union holds either family's address at its start
        // (`ipv4_src` / `ipv6_src`), and an address is plain data.
        unsafe {
            core::ptr::addr_of_mut!(params.__bindgen_anon_3).cast::<A>().write_unaligned(query.saddr);
            core::ptr::addr_of_mut!(params.__bindgen_anon_4).cast::<A>().write_unaligned(query.daddr);
        }
        // SAFETY: the helper reads and writes `params`, whose size it is given.
        let ret = unsafe { bpf_fib_lookup(self.0, params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
        match ret as u32 {
            BPF_FIB_LKUP_RET_SUCCESS => {
                FibAnswer::Forward(NextHop { ifindex: params.ifindex, smac: params.smac, dmac: params.dmac })
            }
            BPF_FIB_LKUP_RET_NO_NEIGH => FibAnswer::NoNeighbour(params.ifindex),
            // SAFETY: the helper writes the MTU over the length it was given.
            BPF_FIB_LKUP_RET_FRAG_NEEDED => FibAnswer::TooBig(unsafe { params.__bindgen_anon_1.mtu_result }),
            _ => FibAnswer::NotForwarded,
        }
    }

    #[inline(always)]
    fn device_flags(&self, ifindex: u32) -> u32 {
        device_flags(ifindex)
    }
}

/// `ifindex`'s `DEVICE_*` flags, 0 for a device not listed.
#[inline(always)]
pub fn device_flags(ifindex: u32) -> u32 {
    // SAFETY: plain data copied out at once.
    unsafe { LB_DEVICES.get(ifindex).copied() }.unwrap_or(0)
}

#[inline(always)]
pub fn count_fast_path(outcome: FastPath) {
    if let Some(counter) = LB_FAST_PATH_COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs concurrently.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn is_service_address<F: FamilyMaps>(addr: F::Addr) -> bool {
    // SAFETY: only the presence of the entry is read.
    unsafe { F::vips().get(addr).is_some() }
}
