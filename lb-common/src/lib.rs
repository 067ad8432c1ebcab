//! The contract between the eBPF datapath and the agent: map keys, map values
//! and counter indexes. Every type is `#[repr(C)]` with explicit padding (hash
//! keys must never carry uninitialised bytes) and a const size assertion.
//!
//! Byte order: addresses and ports are stored as they appear on the wire
//! (network byte order), so the datapath never swaps bytes on the fast path.
//! Userspace converts with the `wire` functions below.
#![no_std]

/// Conversions between host values and the wire-order map fields.
pub mod wire {
    /// An IPv4 address's octets as the u32 the maps hold.
    pub const fn addr(octets: [u8; 4]) -> u32 {
        u32::from_ne_bytes(octets)
    }
    pub const fn addr_octets(addr: u32) -> [u8; 4] {
        addr.to_ne_bytes()
    }
    /// An IPv6 address's octets as the four words the maps hold.
    pub const fn addr6(o: [u8; 16]) -> [u32; 4] {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            i += 1;
        }
        words
    }
    pub const fn addr6_octets(words: [u32; 4]) -> [u8; 16] {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            o[4 * i] = b[0];
            o[4 * i + 1] = b[1];
            o[4 * i + 2] = b[2];
            o[4 * i + 3] = b[3];
            i += 1;
        }
        o
    }
    /// A port number as the u16 the maps hold.
    pub const fn port(port: u16) -> u16 {
        port.to_be()
    }
    pub const fn port_number(port: u16) -> u16 {
        u16::from_be(port)
    }
}

/// An address as the maps hold it, in wire order: IPv4 as one `u32`, IPv6
/// as four ([`Ipv6Wire`]). Every map key and value that holds an address
/// is generic over it, so each family has maps of its own with one layout
/// rule.
pub trait Addr: Copy + Default + PartialEq + Eq + core::fmt::Debug {
    /// 64 bits that stand for the address in hashes (IPv4: itself, so IPv4
    /// hashes are what they were before IPv6).
    fn fold(&self) -> u64;
    /// Do the bits `mask` keeps equal `network`'s?
    fn masked_eq(&self, mask: &Self, network: &Self) -> bool;
    fn is_zero(&self) -> bool;
    /// An address no packet carries, standing for `id` (its low 24 bits):
    /// `0.x.y.z` or `::0.x.y.z`.
    fn unroutable(id: u32) -> Self;
    fn is_loopback(&self) -> bool;
    /// What a conntrack entry of this family keeps of the FIB's answer.
    type Hop: EntryHop;
}

/// An IPv6 address as the maps hold it: four words in wire order.
pub type Ipv6Wire = [u32; 4];

impl Addr for u32 {
    type Hop = CtHop;
    #[inline(always)]
    fn fold(&self) -> u64 {
        *self as u64
    }
    #[inline(always)]
    fn masked_eq(&self, mask: &Self, network: &Self) -> bool {
        self & mask == *network
    }
    #[inline(always)]
    fn is_zero(&self) -> bool {
        *self == 0
    }
    #[inline(always)]
    fn unroutable(id: u32) -> Self {
        (id & 0x00ff_ffff).to_be()
    }
    #[inline(always)]
    fn is_loopback(&self) -> bool {
        self.to_ne_bytes()[0] == 127
    }
}

impl Addr for Ipv6Wire {
    /// IPv6 entries keep none: with a route each, the datapath's IPv6
    /// functions that write entries exceed the stack the 6.1 verifier allows.
    type Hop = NoHop;
    #[inline(always)]
    fn fold(&self) -> u64 {
        let high = (self[0] as u64) << 32 | self[1] as u64;
        let low = (self[2] as u64) << 32 | self[3] as u64;
        hash::mix64(high) ^ low
    }
    #[inline(always)]
    fn masked_eq(&self, mask: &Self, network: &Self) -> bool {
        (self[0] & mask[0]) == network[0]
            && (self[1] & mask[1]) == network[1]
            && (self[2] & mask[2]) == network[2]
            && (self[3] & mask[3]) == network[3]
    }
    #[inline(always)]
    fn is_zero(&self) -> bool {
        self[0] | self[1] | self[2] | self[3] == 0
    }
    #[inline(always)]
    fn unroutable(id: u32) -> Self {
        [0, 0, 0, u32::unroutable(id)]
    }
    #[inline(always)]
    fn is_loopback(&self) -> bool {
        *self == [0, 0, 0, 1u32.to_be()]
    }
}

/// Hashes shared by the datapath (flow -> Maglev entry) and the agent
/// (backend -> Maglev permutation): fixed functions with a fixed seed, so
/// that every node makes the same choices.
pub mod hash {
    /// The seed of every hash below; the same on every node.
    pub const SEED: u64 = 0x6c62_2d6d_6167_6c65;

    /// A 64-bit finaliser (splitmix64): every input bit affects every
    /// output bit.
    #[inline(always)]
    pub const fn mix64(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// The hash of a flow's 5-tuple (fields as the maps hold them, network
    /// byte order).
    #[inline(always)]
    pub fn flow<A: super::Addr>(flow: &super::CtKey<A>) -> u64 {
        let addrs = flow.saddr.fold() << 32 ^ flow.daddr.fold();
        let ports = (flow.sport as u64) << 32 | (flow.dport as u64) << 16 | flow.proto as u64;
        mix64(addrs ^ mix64(ports ^ SEED))
    }

    /// `x` scaled from `0..2^32` to `0..n` (Lemire's multiply-shift): what
    /// `x % n` does for a uniform `x`, without the division, which costs a
    /// BPF program tens of cycles. Hashes are reduced by their upper half
    /// (`(hash >> 32) as u32`), which the finaliser mixes as well as the lower.
    #[inline(always)]
    pub const fn reduce(x: u32, n: u32) -> u32 {
        ((x as u64 * n as u64) >> 32) as u32
    }

    /// The two hashes of a backend (address and port as the maps hold
    /// them) that place it in a Maglev table: its offset and its skip.
    pub fn backend<A: super::Addr>(addr: A, port: u16) -> (u64, u64) {
        let key = addr.fold() << 16 ^ port as u64;
        (mix64(key ^ SEED), mix64(key ^ mix64(SEED)))
    }
}

/// Map names, shared so that the agent and `lb-agent get` name the same pins.
pub mod map_names {
    pub const FRONTENDS: &str = "LB_FRONTENDS";
    pub const BACKEND_SLOTS: &str = "LB_BACKEND_SLOTS";
    pub const BACKENDS: &str = "LB_BACKENDS";
    pub const CONNTRACK: &str = "LB_CONNTRACK";
    pub const COUNTERS: &str = "LB_COUNTERS";
    pub const SERVICE_META: &str = "LB_SERVICE_META";
    pub const AFFINITY: &str = "LB_AFFINITY";
    pub const VIPS: &str = "LB_VIPS";
    pub const ENDPOINTS: &str = "LB_ENDPOINTS";
    pub const SOURCE_RANGES: &str = "LB_SOURCE_RANGES";
    pub const DEVICES: &str = "LB_DEVICES";
    pub const FAST_PATH_COUNTERS: &str = "LB_FAST_PATH_COUNTERS";
    pub const MAGLEV: &str = "LB_MAGLEV";
    pub const CT_STATS: &str = "LB_CT_STATS";
    pub const SERVICE_TRAFFIC: &str = "LB_SERVICE_TRAFFIC";
    pub const NODE_ADDRS: &str = "LB_NODE_ADDRS";
    pub const SOCKET_REVERSE: &str = "LB_SOCKET_REVERSE";
    pub const SOCKET_REVERSE6: &str = "LB_SOCKET_REVERSE6";
    pub const NODE_PORTS: &str = "LB_NODE_PORTS";
    /// The IPv6 twins of the maps above whose keys or values hold an address.
    pub const FRONTENDS6: &str = "LB_FRONTENDS6";
    pub const BACKENDS6: &str = "LB_BACKENDS6";
    pub const CONNTRACK6: &str = "LB_CONNTRACK6";
    pub const AFFINITY6: &str = "LB_AFFINITY6";
    pub const VIPS6: &str = "LB_VIPS6";
    pub const SOURCE_RANGES6: &str = "LB_SOURCE_RANGES6";
    pub const NODE_ADDRS6: &str = "LB_NODE_ADDRS6";
    /// The IPv6 programs the hooks tail-call (`ipv6_programs`); a program
    /// array takes programs of one type only.
    pub const IPV6_XDP: &str = "LB_IPV6_XDP";
    pub const IPV6_TC: &str = "LB_IPV6_TC";
}

/// The hooks hand IPv6 packets to programs of their own by tail call, and
/// those hand a new flow, or ICMPv6, on to another: an IPv6 flow's keys and
/// entries need the room (the verifier allows 512 bytes of stack per call
/// chain). Each is (program, program array, index).
pub mod ipv6_programs {
    use super::map_names::{IPV6_TC, IPV6_XDP};
    pub const XDP_NODE: (&str, &str, u32) = ("lb_xdp_node6", IPV6_XDP, 0);
    pub const XDP_NODE_NEW: (&str, &str, u32) = ("lb_xdp_node6_new", IPV6_XDP, 1);
    pub const XDP_NODE_ICMP: (&str, &str, u32) = ("lb_xdp_node6_icmp", IPV6_XDP, 2);
    pub const TC_POD: (&str, &str, u32) = ("lb_tc_pod6", IPV6_TC, 0);
    pub const TC_POD_NEW: (&str, &str, u32) = ("lb_tc_pod6_new", IPV6_TC, 1);
    pub const TC_EGRESS: (&str, &str, u32) = ("lb_tc_egress6", IPV6_TC, 2);
    pub const TC_POD_ICMP: (&str, &str, u32) = ("lb_tc_pod6_icmp", IPV6_TC, 3);
    pub const TC_EGRESS_ICMP: (&str, &str, u32) = ("lb_tc_egress6_icmp", IPV6_TC, 4);
    pub const ALL: [(&str, &str, u32); 8] =
        [XDP_NODE, XDP_NODE_NEW, XDP_NODE_ICMP, TC_POD, TC_POD_NEW, TC_EGRESS, TC_POD_ICMP, TC_EGRESS_ICMP];
    /// The arrays' sizes, with room to spare: an agent that finds another
    /// size pinned replaces the array.
    pub const XDP_SLOTS: u32 = 8;
    pub const TC_SLOTS: u32 = 8;
}

/// Capacities of the maps; the agent rejects objects beyond them.
pub const MAX_FRONTENDS: u32 = 131_072;
pub const MAX_BACKENDS: u32 = 131_072;
/// Room for the frontends' backend lists, a changed one beside the old one
/// until the next pass (Services that would not fit are refused).
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
pub const MAX_CONNTRACK: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;
pub const MAX_ENDPOINTS: u32 = 262_144;
pub const MAX_SOURCE_RANGES: u32 = 65_536;
pub const MAX_DEVICES: u32 = 1_024;
/// `LB_DEVICES` flags: the device's receiving side takes frames sent from
/// XDP (`--xdp-redirect-device`).
pub const DEVICE_TAKES_XDP_FRAMES: u32 = 1;
/// `LB_DEVICES` flags: the host side of a pod's veth (`--pod-device`), into
/// whose pod TC may send with `bpf_redirect_peer`.
pub const DEVICE_POD: u32 = 2;
/// `LB_DEVICES` flags: one of the datapath's ingress hooks runs on the
/// device (XDP on a node device, TC on a pod veth), which decided every
/// packet that arrived there: TC egress leaves those alone.
pub const DEVICE_INGRESS_HOOKED: u32 = 4;
/// `LB_VIPS` values: how many frontends use the address, with this bit set
/// when one of them is a cluster IP.
pub const VIP_CLUSTER_IP: u32 = 1 << 31;

/// A family's service CIDR (`--service-cidr`) as the datapath tests
/// addresses against it, wire order: `addr & mask == network`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidr<A = u32> {
    pub network: A,
    pub mask: A,
}
const _: () = assert!(core::mem::size_of::<ServiceCidr>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceCidr<Ipv6Wire>>() == 32);

impl<A: Addr> ServiceCidr<A> {
    /// Does the CIDR hold `addr`? An empty CIDR (mask 0 and network 0
    /// would hold everything) holds nothing.
    #[inline(always)]
    pub fn contains(&self, addr: A) -> bool {
        !self.mask.is_zero() && addr.masked_eq(&self.mask, &self.network)
    }
}

/// Sockets whose destination the socket hooks rewrote, remembered for
/// `recvmsg`/`getpeername` (LRU: old sockets make room).
pub const MAX_SOCKET_REVERSE: u32 = 131_072;
/// Distinct (node port, protocol) pairs in `LB_NODE_PORTS`.
pub const MAX_NODE_PORTS: u32 = 65_536;

/// Node devices with an address of the family (`LB_NODE_ADDRS`, `LB_NODE_ADDRS6`).
pub const MAX_NODE_DEVICES: u32 = 1_024;
/// Default room for Maglev tables, in entries (2 bytes each): 32 MiB, e.g.
/// 16 000 frontends of 10 backends (1 009 entries each).
pub const MAX_MAGLEV_ENTRIES: u32 = 1 << 24;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A Service frontend: one (address, port, protocol) the datapath answers for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey<A = u32> {
    /// The address, wire order.
    pub addr: A,
    /// L4 port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// Who the entry is for: `FRONTEND_SCOPE_ALL`, or `FRONTEND_SCOPE_PODS`.
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);
const _: () = assert!(core::mem::size_of::<FrontendKey<Ipv6Wire>>() == 20);

/// A frontend as every hook sees it.
pub const FRONTEND_SCOPE_ALL: u8 = 0;
/// The twin of a Local-policy node port, external or load-balancer IP that
/// pods use: every endpoint, as kube-proxy short-circuits pod traffic to
/// the cluster-wide endpoints (the frontend itself has this node's only).
pub const FRONTEND_SCOPE_PODS: u8 = 1;

/// What the datapath needs to pick a backend for a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// One id per frontend: keys its meta, endpoints and source ranges.
    pub frontend_id: u32,
    /// `sessionAffinity: ClientIP` timeout; 0 means no affinity.
    pub affinity_timeout_s: u32,
    /// The frontend's backends are entries `slots_offset..+backend_count`
    /// of `LB_BACKEND_SLOTS` (its slots 0..backend_count); 0 means no endpoint.
    pub backend_count: u16,
    /// `FRONTEND_FLAG_*` bits.
    pub flags: u16,
    /// The frontend's Maglev table: entries `maglev_offset..+maglev_size`
    /// of `LB_MAGLEV`, each one of its slots. Size 0: backends are picked
    /// at random.
    pub maglev_offset: u32,
    pub maglev_size: u32,
    pub slots_offset: u32,
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 24);

/// Maglev entries (backend slots) per `LB_MAGLEV` element: the array packs
/// them, as each array element takes at least 8 bytes.
pub const MAGLEV_ENTRIES_PER_ELEMENT: u32 = 4;
/// One `LB_MAGLEV` element.
pub type MaglevElement = [u16; MAGLEV_ENTRIES_PER_ELEMENT as usize];

/// The frontend answers traffic arriving on the node's devices too (node
/// ports, external and load-balancer IPs); without it only pods reach it,
/// as cluster IPs are.
pub const FRONTEND_FLAG_EXTERNAL: u16 = 1;
/// Only clients in the frontend's `LB_SOURCE_RANGES` may use it
/// (`loadBalancerSourceRanges`); others are dropped.
pub const FRONTEND_FLAG_SOURCE_RANGES: u16 = 4;

/// The data of an `LB_SOURCE_RANGES` (LPM trie) key: the frontend's frontend_id,
/// big-endian so the trie matches all of its bits first, then the client
/// network. A key's prefix length is 32 + the network's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange<A = u32> {
    pub frontend_id_be: u32,
    /// The client network's address, wire order.
    pub addr: A,
}
const _: () = assert!(core::mem::size_of::<SourceRange>() == 8);
const _: () = assert!(core::mem::size_of::<SourceRange<Ipv6Wire>>() == 20);

/// The backends are this node's only (traffic policy Local): with none,
/// traffic is dropped as kube-proxy does, not refused.
pub const FRONTEND_FLAG_NODE_LOCAL: u16 = 2;
/// Pods use this frontend's `FRONTEND_SCOPE_PODS` twin instead, and so do
/// the node's own sockets (kube-proxy short-circuits both).
pub const FRONTEND_FLAG_POD_TWIN: u16 = 8;
/// With `FRONTEND_FLAG_SOURCE_RANGES`: one of the node's addresses is in
/// the ranges, so the node's own unbound sockets (which leave with a node
/// address) may use the frontend.
pub const FRONTEND_FLAG_NODE_ADMITTED: u16 = 32;
/// An endpoint address: element `id` of `LB_BACKENDS` for a backend id the
/// agent allocates (1..MAX_BACKENDS). An id no list names any more is
/// cleared (all zero, which the datapath takes for no backend) a pass later,
/// and reused a pass after that: an element never changes while a list
/// names it, and a stale session affinity entry finds no backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend<A = u32> {
    /// The address, wire order.
    pub addr: A,
    /// L4 port, network byte order.
    pub port: u16,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<Backend<Ipv6Wire>>() == 20);

/// The endpoint runs on another node: external traffic sent there under
/// `externalTrafficPolicy: Cluster` leaves with this node's address as its
/// source, so that the replies come back through this node.
pub const BACKEND_FLAG_REMOTE: u16 = 1;

/// Source ports this node uses when it must stand in for an external
/// client (SNAT): above Linux's default ephemeral range, so they do not
/// meet the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Session affinity: which backend a client last got for a Service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityKey<A = u32> {
    /// The client's address, wire order.
    pub client: A,
    pub frontend_id: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey<Ipv6Wire>>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    pub backend_id: u32,
    pub _pad: u32,
    /// The datapath's clock (CLOCK_MONOTONIC at tick resolution) at the
    /// client's last new connection: the
    /// affinity lasts `affinity_timeout_s` from there, as kube-proxy's
    /// `recent` match does.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityEntry>() == 16);

/// `LB_SERVICE_TRAFFIC`'s value, per CPU, indexed by frontend id: the
/// packets the datapath translated for the frontend (both directions), and
/// their bytes as the hook saw them (the Ethernet header included; a GSO
/// packet is one packet of all its bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceTraffic {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceTraffic>() == 16);

/// Conntrack key: the 5-tuple exactly as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Padding as aligned integers: a byte array is zeroed by a call to
    /// the compiler's memset in BPF, a function and a stack frame more.
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtKey<Ipv6Wire>>() == 40);

/// `CtEntry::direction` of an entry keyed by the client's packet
/// (client -> frontend): rewrite the destination to `nat_addr:nat_port`.
pub const CT_FORWARD: u8 = 0;
/// `CtEntry::direction` of an entry keyed by the backend's reply
/// (backend -> client): rewrite the source to `nat_addr:nat_port`.
pub const CT_REPLY: u8 = 1;
/// The entry also rewrites the other end of the packet, to
/// `other_addr:other_port`: the source of a forward packet (the backend must
/// answer through this node: a pod reaching itself through its Service, an
/// external client whose backend is on another node), the destination of a
/// reply (back to the real client).
pub const CT_FLAG_REWRITE_OTHER: u8 = 1;

/// A translation the datapath applies to every packet of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<A: Addr = u32> {
    /// The address written into the packet, wire order: the backend for a
    /// forward entry, the frontend for a reply entry.
    pub nat_addr: A,
    /// The port written into the packet, network byte order.
    pub nat_port: u16,
    /// `CT_FORWARD` or `CT_REPLY`.
    pub direction: u8,
    /// `CT_FLAG_*` bits.
    pub flags: u8,
    /// The Service port the flow belongs to, so state can be found per service.
    pub frontend_id: u32,
    /// With `CT_FLAG_REWRITE_OTHER`: the other end's address and port
    /// (wire order).
    pub other_addr: A,
    pub other_port: u16,
    /// `CT_STATE_*`, from the packets of this entry's direction.
    pub state: u8,
    /// Padding as an aligned integer (see `CtKey`).
    pub _pad: u8,
    /// Where the FIB sends this entry's packets once rewritten, asked when
    /// the entry is refreshed rather than per packet (IPv4; `Addr::Hop`).
    pub hop: A::Hop,
    /// The datapath's clock (CLOCK_MONOTONIC at tick resolution, from the
    /// jiffies) when the entry was created.
    pub created_ns: u64,
    /// The same clock when a packet last refreshed the entry (at most
    /// [`CT_REFRESH_NS`] behind the last packet).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 56);
const _: () = assert!(core::mem::size_of::<CtEntry<Ipv6Wire>>() == 64);

/// The FIB's answer about a conntrack entry's packets as rewritten, kept in
/// the entry: `kind` 0 until the datapath asks (new entries, refreshed ones).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtHop {
    /// The device the route leaves by (`CT_HOP_FORWARD`, `CT_HOP_NO_NEIGHBOUR`).
    pub ifindex: u32,
    /// The next hop's and the device's Ethernet addresses (`CT_HOP_FORWARD`).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// `CT_HOP_*`: the FIB's answer, and what the device takes.
    pub kind: u8,
    pub _pad: u8,
    /// The route's MTU (`CT_HOP_FORWARD`, `CT_HOP_NO_NEIGHBOUR`), which a
    /// packet's (or a GSO segment's) IP length must not exceed: the route's
    /// own, which a device's may exceed.
    pub mtu: u16,
}
const _: () = assert!(core::mem::size_of::<CtHop>() == 20);

/// A conntrack entry's `hop` field, per family (`Addr::Hop`).
pub trait EntryHop: Copy + Default + PartialEq + Eq + core::fmt::Debug {
    /// Does this family's entry keep a route?
    const KEEPS: bool;
    /// The kept answer, if the family keeps one (`kind` 0: not asked yet).
    fn kept(&self) -> Option<&CtHop>;
    fn set(&mut self, hop: &CtHop);
}

impl EntryHop for CtHop {
    const KEEPS: bool = true;
    #[inline(always)]
    fn kept(&self) -> Option<&CtHop> {
        Some(self)
    }
    #[inline(always)]
    fn set(&mut self, hop: &CtHop) {
        *self = *hop;
    }
}

/// An entry that keeps no route: padding as an aligned integer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoHop {
    pub _pad: u32,
}

impl EntryHop for NoHop {
    const KEEPS: bool = false;
    #[inline(always)]
    fn kept(&self) -> Option<&CtHop> {
        None
    }
    #[inline(always)]
    fn set(&mut self, _: &CtHop) {}
}

/// Not asked yet.
pub const CT_HOP_UNKNOWN: u8 = 0;
/// A route with a neighbour entry: `ifindex`, `dmac`, `smac`.
pub const CT_HOP_FORWARD: u8 = 1;
/// A route out of `ifindex`, its next hop's address not resolved yet.
pub const CT_HOP_NO_NEIGHBOUR: u8 = 2;
/// Nothing the datapath forwards (a local address, no route).
pub const CT_HOP_NOT_FORWARDED: u8 = 3;
/// The low bits of `kind` hold the answer...
pub const CT_HOP_ANSWER: u8 = 0x0f;
/// ...and the high bits `DEVICE_*` flags of `ifindex`, shifted.
pub const CT_HOP_DEVICE_SHIFT: u32 = 4;

impl<A: Addr> CtEntry<A> {
    /// With `CT_FLAG_REWRITE_OTHER`, the other end's (address, port).
    #[inline(always)]
    pub fn other(&self) -> Option<(A, u16)> {
        if self.flags & CT_FLAG_REWRITE_OTHER != 0 { Some((self.other_addr, self.other_port)) } else { None }
    }
}

/// `LB_SOCKET_REVERSE` (`LB_SOCKET_REVERSE6`) key: a socket (its cookie)
/// and the backend the socket hooks sent it to. The cookie is two words
/// (low first, as a u64 lies in memory here) so that no padding follows an
/// IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketPeer<A = u32> {
    pub cookie: [u32; 2],
    /// Address and L4 port, network byte order.
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SocketPeer>() == 16);
const _: () = assert!(core::mem::size_of::<SocketPeer<Ipv6Wire>>() == 28);

impl<A> SocketPeer<A> {
    #[inline(always)]
    pub fn new(cookie: u64, addr: A, port: u16) -> Self {
        Self { cookie: [cookie as u32, (cookie >> 32) as u32], addr, port, _pad: 0 }
    }
}

/// `LB_SOCKET_REVERSE` (`LB_SOCKET_REVERSE6`) value: the frontend the
/// socket asked for, shown back by `recvmsg` and `getpeername`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketFrontend<A = u32> {
    /// Address and L4 port, network byte order.
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SocketFrontend>() == 8);
const _: () = assert!(core::mem::size_of::<SocketFrontend<Ipv6Wire>>() == 20);

/// `LB_NODE_PORTS` key: a node port in use by a Service, which the node's
/// own processes may not bind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodePortKey {
    /// L4 port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<NodePortKey>() == 4);

/// Indexes of the per-CPU `LB_CT_STATS` array.
pub mod ct_stats {
    /// Conntrack entries the datapath wrote for new flows (two per flow).
    pub const CREATED: u32 = 0;
    /// Entries the agent removed (expired, flushed); written by the agent.
    pub const REMOVED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// TCP: a SYN was seen, nothing answered it yet.
pub const CT_STATE_SYN: u8 = 0;
/// TCP past the handshake; UDP always.
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// TCP: a FIN or RST was seen in this direction.
pub const CT_STATE_CLOSING: u8 = 2;

/// `last_seen_ns` is rewritten at most this often per entry (and on state
/// changes): a write per packet would bounce the cache line between CPUs.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Idle time after which a conntrack entry is expired, per protocol and
/// TCP state. A load-time constant of the programs; the agent's sweep uses
/// the same values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_syn_s: u32,
    pub tcp_established_s: u32,
    pub tcp_closing_s: u32,
    pub udp_s: u32,
}
const _: () = assert!(core::mem::size_of::<CtTimeouts>() == 16);

impl CtTimeouts {
    /// Cilium's defaults: 60 s for a handshake, 6 h established, 10 s
    /// closing, 60 s for UDP.
    pub const DEFAULT: CtTimeouts =
        CtTimeouts { tcp_syn_s: 60, tcp_established_s: 21_600, tcp_closing_s: 10, udp_s: 60 };

    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8, state: u8) -> u64 {
        let s = match (proto, state) {
            (IPPROTO_TCP, CT_STATE_SYN) => self.tcp_syn_s,
            (IPPROTO_TCP, CT_STATE_CLOSING) => self.tcp_closing_s,
            (IPPROTO_TCP, _) => self.tcp_established_s,
            _ => self.udp_s,
        };
        s as u64 * 1_000_000_000
    }

    /// Has `entry` (of a flow of protocol `proto`) been idle too long at `now_ns`?
    #[inline(always)]
    pub fn expired<A: Addr>(&self, proto: u8, entry: &CtEntry<A>, now_ns: u64) -> bool {
        now_ns.saturating_sub(entry.last_seen_ns) > self.timeout_ns(proto, entry.state)
    }
}

/// Service types as `ServiceMeta` records them for `lb-agent get services`.
pub const SVC_TYPE_CLUSTER_IP: u8 = 0;
/// `clusterIP: None`: listed, nothing programmed.
pub const SVC_TYPE_HEADLESS: u8 = 1;
/// `type: ExternalName`: listed, nothing programmed.
pub const SVC_TYPE_EXTERNAL_NAME: u8 = 2;
pub const SVC_TYPE_NODE_PORT: u8 = 3;
pub const SVC_TYPE_LOAD_BALANCER: u8 = 4;

/// The `kubectl get svc` name of a `SVC_TYPE_*`.
pub const fn svc_type_name(svc_type: u8) -> &'static str {
    match svc_type {
        SVC_TYPE_CLUSTER_IP | SVC_TYPE_HEADLESS => "ClusterIP",
        SVC_TYPE_EXTERNAL_NAME => "ExternalName",
        SVC_TYPE_NODE_PORT => "NodePort",
        SVC_TYPE_LOAD_BALANCER => "LoadBalancer",
        _ => "?",
    }
}

pub const META_NAME_LEN: usize = 64;
pub const META_PORT_NAME_LEN: usize = 16;

/// Who owns a `frontend_id`, so another process can print the programmed state
/// with names. Read by userspace only; the datapath never touches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceMeta {
    /// NUL-padded UTF-8.
    pub namespace: [u8; META_NAME_LEN],
    /// NUL-padded UTF-8.
    pub name: [u8; META_NAME_LEN],
    /// NUL-padded UTF-8; empty for an unnamed port.
    pub port_name: [u8; META_PORT_NAME_LEN],
    /// One of the `SVC_TYPE_*` constants.
    pub svc_type: u8,
    /// Position of the port in `spec.ports` (the first one is special for
    /// the environment variables kubelet injects).
    pub port_index: u8,
    /// The Service port's node port (host order), 0 if it has none.
    pub node_port: u16,
    /// `FRONTEND_*`: which address of the Service this frontend answers on.
    pub frontend_kind: u8,
    /// A cluster IP frontend's place in `spec.clusterIPs`: 0 for the
    /// primary family's address (the one kubelet's variables name).
    pub cluster_ip_index: u8,
    pub _pad: [u8; 2],
}

/// `ServiceMeta::frontend_kind` of a frontend on the cluster IP.
pub const FRONTEND_CLUSTER_IP: u8 = 0;
/// `ServiceMeta::frontend_kind` of a frontend on a node address.
pub const FRONTEND_NODE_PORT: u8 = 1;
/// `ServiceMeta::frontend_kind` of a frontend on an external or
/// load-balancer IP.
pub const FRONTEND_EXTERNAL_IP: u8 = 2;
const _: () = assert!(core::mem::size_of::<ServiceMeta>() == 152);

impl ServiceMeta {
    /// Strings longer than their field are cut (Kubernetes names fit).
    pub fn new(namespace: &str, name: &str, port_name: &str, svc_type: u8) -> Self {
        let mut meta = Self { svc_type, ..Self::default() };
        copy_truncated(&mut meta.namespace, namespace);
        copy_truncated(&mut meta.name, name);
        copy_truncated(&mut meta.port_name, port_name);
        meta
    }
    pub fn namespace(&self) -> &str {
        until_nul(&self.namespace)
    }
    pub fn name(&self) -> &str {
        until_nul(&self.name)
    }
    pub fn port_name(&self) -> &str {
        until_nul(&self.port_name)
    }
}

fn copy_truncated(dst: &mut [u8], src: &str) {
    let len = src.len().min(dst.len());
    dst[..len].copy_from_slice(&src.as_bytes()[..len]);
}

fn until_nul(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("<invalid utf-8>")
}

impl Default for ServiceMeta {
    fn default() -> Self {
        Self {
            namespace: [0; META_NAME_LEN],
            name: [0; META_NAME_LEN],
            port_name: [0; META_PORT_NAME_LEN],
            svc_type: SVC_TYPE_CLUSTER_IP,
            port_index: 0,
            node_port: 0,
            frontend_kind: FRONTEND_CLUSTER_IP,
            cluster_ip_index: 0,
            _pad: [0; 2],
        }
    }
}

/// Why the datapath did what it did with a packet: the index into the
/// per-CPU counter array. Every verdict is counted under exactly one reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged, ...): passed untouched.
    PassNotIp = 0,
    /// IPv4 header with options: passed untouched.
    PassIpOptions = 1,
    /// IPv4 fragment: passed untouched.
    PassFragment = 2,
    /// Headers shorter than they claim: passed untouched.
    PassTruncated = 3,
    /// Neither TCP nor UDP: passed untouched.
    PassNotTcpUdp = 4,
    /// No frontend and no conntrack entry: not ours, passed untouched.
    PassNoService = 5,
    /// First packet of a flow to a frontend (on the socket hooks: a
    /// connect() or sendmsg() to one): backend chosen, destination rewritten.
    ForwardNewFlow = 6,
    /// A packet of a known flow: destination rewritten to its backend.
    ForwardEstablished = 7,
    /// A backend's reply (on the socket hooks: recvmsg() or getpeername()
    /// of a translated socket): source rewritten to the frontend.
    ReplyReverseNat = 8,
    /// The frontend has no endpoint and the packet is not answered (traffic
    /// policy Local, a TCP reset itself, or the answer could not be built):
    /// dropped. A socket's connect() or sendmsg() fails with EHOSTUNREACH.
    DropNoBackend = 9,
    /// A slot or backend the frontend points at is missing (update race): dropped.
    DropBackendMissing = 10,
    /// The conntrack entry could not be written: dropped rather than
    /// forwarding a flow whose replies could not be translated.
    DropConntrackFull = 11,
    /// The frontend has no endpoint: answered with a TCP reset or an ICMP
    /// port unreachable (connect() or sendmsg() fails with ECONNREFUSED),
    /// so the client fails at once.
    RejectNoBackend = 12,
    /// An ICMP echo request to a Service address: answered.
    EchoReply = 13,
    /// A cluster IP frontend reached through a node device: only pods may
    /// use cluster IPs, so it is passed untouched.
    PassInternalOnly = 14,
    /// A client outside the frontend's `loadBalancerSourceRanges`: dropped
    /// (a socket's connect() or sendmsg() fails with EPERM).
    DropSourceRange = 15,
    /// No free SNAT source port for a flow to a backend on another node.
    DropSnatExhausted = 16,
    /// A kernel checksum or store helper failed part-way through a rewrite in
    /// TC: dropped rather than forwarded half-rewritten.
    DropRewriteFailed = 17,
    /// A flow to a backend on another node needs this node's address as its
    /// source, and the agent has written none for the way there: dropped.
    DropNoNodeAddress = 18,
    /// A cluster IP on a port or protocol its Service does not have:
    /// answered with a TCP reset or an ICMP port unreachable (kube-proxy
    /// rejects it).
    RejectNoServicePort = 19,
    /// An address inside the service CIDR that no Service has: dropped.
    DropUnallocatedServiceIp = 20,
    /// An ICMP error quoting a packet the datapath translated: turned into
    /// one about the packet its sender sent (path MTU, port unreachable).
    IcmpErrorReverseNat = 21,
    /// A packet that, rewritten, is larger than its route's MTU, where the
    /// datapath forwards it itself (TC fast path) or the kernel's error
    /// would go to the rewritten source (a Service or node address): the
    /// sender gets an ICMP fragmentation-needed about the packet it sent,
    /// and the packet is not forwarded.
    FragNeeded = 22,
    /// A socket of a network namespace the socket hooks do not serve
    /// (`--socket-lb host`: any but the node's own): left to the packet path.
    PassOtherNamespace = 23,
    /// A socket the socket hooks leave to the packet path, which knows its
    /// source address: a pod's socket to a frontend with source ranges.
    PassToPacketPath = 24,
    /// A bind() by a process on the node to a port a Service uses as its
    /// node port: refused with EADDRINUSE.
    DenyNodePortBind = 25,
    /// An IPv6 packet with extension headers between its header and TCP or
    /// UDP (or an ICMPv6 error quoting one): passed untouched.
    PassExtensionHeaders = 26,
    /// (`TC-EGRESS`) A packet that arrived on a device where an ingress hook
    /// of the datapath decided it already: passed untouched.
    PassDecidedOnIngress = 27,
}

impl Reason {
    pub const COUNT: u32 = 28;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassIpOptions,
        Reason::PassFragment,
        Reason::PassTruncated,
        Reason::PassNotTcpUdp,
        Reason::PassNoService,
        Reason::ForwardNewFlow,
        Reason::ForwardEstablished,
        Reason::ReplyReverseNat,
        Reason::DropNoBackend,
        Reason::DropBackendMissing,
        Reason::DropConntrackFull,
        Reason::RejectNoBackend,
        Reason::EchoReply,
        Reason::PassInternalOnly,
        Reason::DropSourceRange,
        Reason::DropSnatExhausted,
        Reason::DropRewriteFailed,
        Reason::DropNoNodeAddress,
        Reason::RejectNoServicePort,
        Reason::DropUnallocatedServiceIp,
        Reason::IcmpErrorReverseNat,
        Reason::FragNeeded,
        Reason::PassOtherNamespace,
        Reason::PassToPacketPath,
        Reason::DenyNodePortBind,
        Reason::PassExtensionHeaders,
        Reason::PassDecidedOnIngress,
    ];

    /// Stable snake_case name for output and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassIpOptions => "pass_ip_options",
            Reason::PassFragment => "pass_fragment",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassNotTcpUdp => "pass_not_tcp_udp",
            Reason::PassNoService => "pass_no_service",
            Reason::ForwardNewFlow => "forward_new_flow",
            Reason::ForwardEstablished => "forward_established",
            Reason::ReplyReverseNat => "reply_reverse_nat",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBackendMissing => "drop_backend_missing",
            Reason::DropConntrackFull => "drop_conntrack_full",
            Reason::RejectNoBackend => "reject_no_backend",
            Reason::EchoReply => "echo_reply",
            Reason::PassInternalOnly => "pass_internal_only",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropRewriteFailed => "drop_rewrite_failed",
            Reason::DropNoNodeAddress => "drop_no_node_address",
            Reason::RejectNoServicePort => "reject_no_service_port",
            Reason::DropUnallocatedServiceIp => "drop_unallocated_service_ip",
            Reason::IcmpErrorReverseNat => "icmp_error_reverse_nat",
            Reason::FragNeeded => "frag_needed",
            Reason::PassOtherNamespace => "pass_other_namespace",
            Reason::PassToPacketPath => "pass_to_packet_path",
            Reason::DenyNodePortBind => "deny_node_port_bind",
            Reason::PassExtensionHeaders => "pass_extension_headers",
            Reason::PassDecidedOnIngress => "pass_decided_on_ingress",
        }
    }
}

/// The programs whose verdicts `LB_COUNTERS` counts: one block of
/// `Reason::COUNT` counters each, in this order.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP on the node's devices: traffic from outside the node.
    NodeXdp = 0,
    /// TC ingress on the host side of pod veths: traffic from pods.
    PodTc = 1,
    /// TC egress: replies that crossed neither ingress hook.
    TcEgress = 2,
    /// The cgroup socket hooks: connect(), sendmsg(), recvmsg(),
    /// getpeername() and bind() of processes on the node (and in pods with
    /// `--socket-lb all`). Their verdicts count once per call.
    Socket = 3,
}

impl Hook {
    pub const COUNT: u32 = 4;
    pub const ALL: [Hook; Self::COUNT as usize] = [Hook::NodeXdp, Hook::PodTc, Hook::TcEgress, Hook::Socket];

    /// Column name in `lb-agent get counters`.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::NodeXdp => "XDP-NODE",
            Hook::PodTc => "TC-POD",
            Hook::TcEgress => "TC-EGRESS",
            Hook::Socket => "SOCKET",
        }
    }
}

/// How a rewritten packet left the datapath: the index into the fast-path
/// counters. Every rewritten packet on XDP with `--xdp-redirect-device`,
/// and every one from a pod with the TC fast path, is counted under exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPath {
    /// Sent back out of the device it arrived on (XDP_TX).
    Tx = 0,
    /// Sent out of another device (XDP_REDIRECT).
    Redirect = 1,
    /// The FIB's egress device does not take XDP frames (not in
    /// `--xdp-redirect-device`): passed to the kernel's routing.
    StackDeviceNotEnabled = 2,
    /// The next hop's MAC address is not known yet: passed, so that the
    /// kernel resolves it.
    StackNoNeighbour = 3,
    /// The FIB does not forward it (a local address, no route, forwarding
    /// off): passed to the kernel, which knows why.
    StackNotForwarded = 4,
    /// The TTL would run out: passed, so that the kernel sends the ICMP
    /// time exceeded.
    StackTtlExpired = 5,
    /// From TC straight into a pod on this node (`bpf_redirect_peer`).
    RedirectPeer = 6,
    /// From TC out of another device, the kernel resolving the next hop
    /// (`bpf_redirect_neigh`).
    RedirectNeigh = 7,
}

impl FastPath {
    pub const COUNT: u32 = 8;
    pub const ALL: [FastPath; Self::COUNT as usize] = [
        FastPath::Tx,
        FastPath::Redirect,
        FastPath::StackDeviceNotEnabled,
        FastPath::StackNoNeighbour,
        FastPath::StackNotForwarded,
        FastPath::StackTtlExpired,
        FastPath::RedirectPeer,
        FastPath::RedirectNeigh,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            FastPath::Tx => "tx",
            FastPath::Redirect => "redirect",
            FastPath::StackDeviceNotEnabled => "stack_device_not_enabled",
            FastPath::StackNoNeighbour => "stack_no_neighbour",
            FastPath::StackNotForwarded => "stack_not_forwarded",
            FastPath::StackTtlExpired => "stack_ttl_expired",
            FastPath::RedirectPeer => "redirect_peer",
            FastPath::RedirectNeigh => "redirect_neigh",
        }
    }
}

/// Endpoint `index` of Service port `frontend_id`, ready or not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    pub frontend_id: u32,
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 8);

/// `EndpointMeta::conditions` bits, as EndpointSlice conditions.
pub const EP_READY: u8 = 1;
pub const EP_SERVING: u8 = 2;
pub const EP_TERMINATING: u8 = 4;

/// Every endpoint of a Service port with its conditions, for
/// `lb-agent get endpoints`. Read by userspace only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The IPv6 address, or the IPv4 address mapped into IPv6
    /// (`::ffff:a.b.c.d`), as octets.
    pub addr: [u8; 16],
    /// L4 port, network byte order.
    pub port: u16,
    /// `EP_*` bits.
    pub conditions: u8,
    pub _pad: u8,
    /// The pod's name, NUL-padded; empty when not a pod.
    pub target: [u8; META_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<EndpointMeta>() == 84);

impl EndpointMeta {
    pub fn new(addr: [u8; 16], port: u16, conditions: u8, target: &str) -> Self {
        let mut meta = Self { addr, port, conditions, _pad: 0, target: [0; META_NAME_LEN] };
        copy_truncated(&mut meta.target, target);
        meta
    }
    pub fn target(&self) -> &str {
        until_nul(&self.target)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding
    // (the const size assertions above pin their layout).
    // The address-generic ones, for both families (the assertions cover
    // both layouts).
    unsafe impl<A: Addr + 'static> aya::Pod for FrontendKey<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for Backend<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for CtKey<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for CtEntry<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for AffinityKey<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for SourceRange<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for ServiceCidr<A> {}
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for ServiceTraffic {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointMeta {}
    unsafe impl aya::Pod for CtTimeouts {}
    unsafe impl aya::Pod for ServiceMeta {}
    unsafe impl<A: Addr + 'static> aya::Pod for SocketPeer<A> {}
    unsafe impl<A: Addr + 'static> aya::Pod for SocketFrontend<A> {}
    unsafe impl aya::Pod for NodePortKey {}
}

#[cfg(test)]
mod tests {
    use super::{FastPath, Reason};

    #[test]
    fn service_meta_round_trips_and_truncates() {
        let meta = super::ServiceMeta::new("default", "kubia", "http", 0);
        assert_eq!((meta.namespace(), meta.name(), meta.port_name()), ("default", "kubia", "http"));
        let long = "x".repeat(100);
        assert_eq!(super::ServiceMeta::new(&long, "", "", 0).namespace().len(), super::META_NAME_LEN);
    }

    #[test]
    fn reasons_are_indexed_densely_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
        for (i, f) in FastPath::ALL.iter().enumerate() {
            assert_eq!(*f as u32, i as u32, "{}", f.name());
        }
    }
}
