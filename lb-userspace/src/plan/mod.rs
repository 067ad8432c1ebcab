//! Desired state -> map operations. The reconciler keeps what it believes
//! the maps hold ([`Programmed`]), diffs the model against it and emits only
//! the changes, ordered so that a live frontend never has zero or dangling
//! backends:
//! 1. new backends are written before any slot points at them;
//! 2. a frontend's new backend list is written into a free region of
//!    `LB_BACKEND_SLOTS`, and its new Maglev table into one of `LB_MAGLEV`,
//!    then one frontend write switches to them (count, offsets and size):
//!    no write ever changes what a live frontend names;
//! 3. the old regions, and the ids of backends no list names any more, are
//!    reused only in a later pass: a packet that read the old frontend just
//!    before the switch still finds what it named.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use lb_common::{
    BACKEND_FLAG_REMOTE, EP_READY, EP_SERVING, EP_TERMINATING, EndpointKey, EndpointMeta, FRONTEND_CLUSTER_IP,
    FRONTEND_EXTERNAL_IP, FRONTEND_FLAG_EXTERNAL, FRONTEND_FLAG_NODE_ADMITTED, FRONTEND_FLAG_NODE_LOCAL,
    FRONTEND_FLAG_POD_TWIN, FRONTEND_FLAG_SOURCE_RANGES, FRONTEND_NODE_PORT, FRONTEND_SCOPE_ALL, FRONTEND_SCOPE_PODS,
    Frontend, IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire, MAGLEV_ENTRIES_PER_ELEMENT, MAX_BACKEND_SLOTS, MAX_BACKENDS,
    MAX_ENDPOINTS, MAX_FRONTENDS, MAX_MAGLEV_ENTRIES, NodePortKey, SVC_TYPE_CLUSTER_IP, SVC_TYPE_EXTERNAL_NAME,
    SVC_TYPE_HEADLESS, SVC_TYPE_LOAD_BALANCER, SVC_TYPE_NODE_PORT, ServiceMeta, VIP_CLUSTER_IP, wire,
};
use tracing::warn;

use crate::model::{
    BackendSelection, DesiredState, Endpoint, Family, IpCidr, Protocol, Service, ServiceName, ServicePort, ServiceType,
    SessionAffinity, TrafficPolicy,
};
pub use family::{AnyBackend, AnyFrontendKey, WireAddr, datapath_cidr, in_family, rebackend, rekey};
use regions::Regions;

mod family;
pub mod maglev;
mod regions;

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        backend: AnyBackend,
    },
    /// Zeroes backend `id`'s element in both families' arrays, which the
    /// datapath then takes for no backend.
    ClearBackend(u32),
    /// A frontend's backend list, from entry `offset` of `LB_BACKEND_SLOTS` on.
    PutSlots {
        offset: u32,
        backend_ids: Vec<u32>,
    },
    PutMeta {
        frontend_id: u32,
        meta: ServiceMeta,
    },
    PutFrontend {
        key: AnyFrontendKey,
        frontend: Frontend,
    },
    DeleteFrontend(AnyFrontendKey),
    DeleteMeta(u32),
    /// Forget the session affinity of `frontend_id`'s clients, except to the
    /// backends in `keep`.
    PurgeAffinity {
        frontend_id: u32,
        keep: Vec<u32>,
    },
    /// An address the datapath answers pings for, with the number of
    /// frontends on it.
    PutVip {
        addr: IpAddr,
        frontends: u32,
    },
    DeleteVip(IpAddr),
    /// A node port the node's own processes may not bind, with the number
    /// of frontends on it.
    PutNodePort {
        key: NodePortKey,
        frontends: u32,
    },
    DeleteNodePort(NodePortKey),
    /// Endpoint `key.index` of a Service port, for `get endpoints`.
    PutEndpoint {
        key: EndpointKey,
        meta: EndpointMeta,
    },
    DeleteEndpoint(EndpointKey),
    /// A client network (address, prefix length) a frontend with
    /// `FRONTEND_FLAG_SOURCE_RANGES` admits.
    PutSourceRange {
        frontend_id: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    DeleteSourceRange {
        frontend_id: u32,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Forget the UDP flows to this backend: UDP has no end, so a client
    /// that keeps its socket would keep sending to a removed backend.
    FlushUdpFlows(AnyBackend),
    /// Forget the UDP flows of a frontend that is gone (its frontend_id): a
    /// client that keeps its socket must not reach a deleted Service.
    FlushFrontendUdpFlows(u32),
    /// The Maglev table of `size` entries for `backends` (the frontend's
    /// slots, in order), written from element `element` of `LB_MAGLEV` on.
    /// Built where it is written ([`MapOp::maglev_table`]), while the other
    /// writes go on: a cold start builds thousands.
    PutMaglevTable {
        element: u32,
        size: u32,
        backends: Vec<AnyBackend>,
    },
}

impl MapOp {
    /// The address whose family's maps the operation writes; `None` for
    /// the shared maps, and for an id (backend, frontend) that the other
    /// family's maps simply do not hold.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            MapOp::PutBackend { backend, .. } | MapOp::FlushUdpFlows(backend) => Some(backend.addr),
            MapOp::PutFrontend { key, .. } | MapOp::DeleteFrontend(key) => Some(key.addr),
            MapOp::PutVip { addr, .. }
            | MapOp::DeleteVip(addr)
            | MapOp::PutSourceRange { addr, .. }
            | MapOp::DeleteSourceRange { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// The table a `PutMaglevTable` writes (one slot per entry); empty for
    /// other operations.
    pub fn maglev_table(&self) -> Vec<u16> {
        let MapOp::PutMaglevTable { size, backends, .. } = self else { return Vec::new() };
        let mut table = vec![0; *size as usize];
        if !fill_maglev_table(backends, &mut table) {
            table.clear();
        }
        table
    }
}

/// Writes the Maglev table of `table.len()` entries for `backends`, all of
/// one family, into `table`; false (nothing written) when they are not.
pub fn fill_maglev_table(backends: &[AnyBackend], table: &mut [u16]) -> bool {
    if let Some(backends) = in_family::<u32>(backends) {
        maglev::fill(&backends, table);
    } else if let Some(backends) = in_family::<Ipv6Wire>(backends) {
        maglev::fill(&backends, table);
    } else {
        return false;
    }
    true
}

/// Where a frontend's Maglev table lies in `LB_MAGLEV`, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MaglevRegion {
    offset: u32,
    size: u32,
}

impl MaglevRegion {
    fn elements(size: u32) -> u32 {
        size.div_ceil(MAGLEV_ENTRIES_PER_ELEMENT)
    }

    /// (first element, element count).
    fn span(&self) -> (u32, u32) {
        (self.offset / MAGLEV_ENTRIES_PER_ELEMENT, Self::elements(self.size))
    }
}

/// A frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProgrammedFrontend {
    frontend_id: u32,
    affinity_timeout_s: u32,
    /// `FRONTEND_FLAG_*`.
    flags: u16,
    /// (address, prefix length) of the admitted client networks.
    source_ranges: Vec<(IpAddr, u8)>,
    /// Backend id per slot.
    slots: Vec<u32>,
    /// Where they are in `LB_BACKEND_SLOTS` (when there are any).
    slots_offset: u32,
    maglev: Option<MaglevRegion>,
    meta: ServiceMeta,
    /// Every endpoint, ready or not, by index.
    endpoints: Vec<EndpointMeta>,
}

impl ProgrammedFrontend {
    /// The map entries it takes (backends are shared, counted apart).
    fn usage(&self) -> Capacity {
        Capacity { frontends: 1, slots: self.slots.len(), backends: 0, endpoints: self.endpoints.len() }
    }
}

/// A frontend as the model wants it.
#[derive(Clone)]
struct WantedFrontend {
    affinity_timeout_s: u32,
    flags: u16,
    source_ranges: Vec<(IpAddr, u8)>,
    backends: Vec<AnyBackend>,
    /// Pick backends by Maglev (else at random).
    maglev: bool,
    meta: ServiceMeta,
    endpoints: Vec<EndpointMeta>,
}

/// A Service with no frontend (headless, ExternalName): only its meta
/// entry, so that `lb-agent get services` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListedService {
    frontend_id: u32,
    meta: ServiceMeta,
}

/// What the reconciler needs to know of the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// As pods' `spec.nodeName` has it: the endpoints a Local policy keeps.
    pub name: String,
    /// The node devices' addresses of both families, where node ports answer.
    pub addrs: Vec<IpAddr>,
    /// Cluster IPs answer traffic from the node's devices too
    /// (`--cluster-ip-external`); by default only pods reach them.
    pub cluster_ips_external: bool,
    /// The node's `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
    /// Node ports answer the node's own sockets on 127.0.0.1 too
    /// (`--nodeport-localhost`).
    pub nodeport_localhost: bool,
}

/// What an earlier agent left in the maps, entry by entry.
#[derive(Debug, Default)]
pub struct MapContents {
    pub frontends: Vec<(AnyFrontendKey, Frontend)>,
    /// (index, backend id) of the `LB_BACKEND_SLOTS` entries frontends name.
    pub slots: Vec<(u32, u32)>,
    /// The backends those name.
    pub backends: Vec<(u32, AnyBackend)>,
    pub metas: Vec<(u32, ServiceMeta)>,
    pub vips: Vec<(IpAddr, u32)>,
    pub node_ports: Vec<(NodePortKey, u32)>,
    pub endpoints: Vec<(EndpointKey, EndpointMeta)>,
    /// (frontend_id, network address, prefix length).
    pub source_ranges: Vec<(u32, IpAddr, u8)>,
}

/// What the reconciler believes the maps hold.
#[derive(Debug)]
pub struct Programmed {
    frontends: BTreeMap<AnyFrontendKey, ProgrammedFrontend>,
    /// Keyed by (namespace, name).
    listed: BTreeMap<(String, String), ListedService>,
    /// Service addresses, with how many frontends each has.
    vips: BTreeMap<IpAddr, u32>,
    /// Node ports, with how many frontends each has.
    node_ports: BTreeMap<NodePortKey, u32>,
    backend_ids: HashMap<AnyBackend, u32>,
    /// Ids go round `1..MAX_BACKENDS`, so that one is not reused at once.
    next_backend_id: u32,
    /// Ids not to hand out: those of `backend_ids`, and the two below.
    used_backend_ids: HashSet<u32>,
    /// Ids no list names since this pass: cleared by the next one.
    unnamed_ids: Vec<u32>,
    /// Ids cleared by this pass: free from the next one. Between, a session
    /// affinity entry that outlived its backend (written by a packet as the
    /// agent purged them, or left by an agent that stopped between the two)
    /// finds the element cleared, and its client picks anew, instead of
    /// being sent to whatever backend takes the id next.
    cleared_ids: Vec<u32>,
    frontend_ids: FrontendIds,
    /// Free space in `LB_MAGLEV`, in elements.
    maglev_regions: Regions,
    /// Free space in `LB_BACKEND_SLOTS`, in entries.
    slot_regions: Regions,
    /// The services (and node) the frontends were last planned for, and
    /// each one's frontend keys: a plan only works on the services that
    /// changed since. Empty after `adopt`, so the first plan compares all.
    /// `None`: refused for want of room, tried again by every plan.
    planned: BTreeMap<ServiceName, (Option<Arc<Service>>, Vec<AnyFrontendKey>)>,
    planned_node: Option<NodeInfo>,
    capacity: Capacity,
    /// Services left out (or at their last version) because the maps are
    /// full, with the reason.
    refused: BTreeMap<ServiceName, String>,
}

/// How much the datapath's maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub frontends: usize,
    pub slots: usize,
    pub backends: usize,
    pub endpoints: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        let size = |max: u32| max as usize;
        Capacity {
            frontends: size(MAX_FRONTENDS),
            slots: size(MAX_BACKEND_SLOTS),
            // Id 0 is not used.
            backends: size(MAX_BACKENDS - 1),
            endpoints: size(MAX_ENDPOINTS),
        }
    }
}

impl Capacity {
    /// What `used` plus `more` would overflow, if anything.
    fn overflow(&self, used: &Capacity, more: &Capacity) -> Option<String> {
        let checks = [
            ("frontend", used.frontends + more.frontends, self.frontends),
            ("backend slot", used.slots + more.slots, self.slots),
            ("backend", used.backends + more.backends, self.backends),
            ("endpoint", used.endpoints + more.endpoints, self.endpoints),
        ];
        checks
            .into_iter()
            .find(|(_, want, room)| want > room)
            .map(|(what, want, room)| format!("the {what} map is full: {want} entries wanted, {room} fit"))
    }

    fn add(&mut self, other: &Capacity) {
        self.frontends += other.frontends;
        self.slots += other.slots;
        self.backends += other.backends;
        self.endpoints += other.endpoints;
    }

    fn sub(&mut self, other: &Capacity) {
        self.frontends -= other.frontends;
        self.slots -= other.slots;
        self.backends -= other.backends;
        self.endpoints -= other.endpoints;
    }
}

impl Default for Programmed {
    /// Empty maps with the default `LB_MAGLEV` size.
    fn default() -> Self {
        Self::adopt(MapContents::default())
    }
}

/// The free space of an `LB_MAGLEV` of `elements` around the tables of `frontends`.
fn maglev_regions(frontends: &BTreeMap<AnyFrontendKey, ProgrammedFrontend>, elements: u32) -> Regions {
    Regions::new(elements, frontends.values().filter_map(|fe| fe.maglev).map(|r| r.span()))
}

/// The free space of an `LB_BACKEND_SLOTS` of `entries` around the lists of `frontends`.
fn slot_regions(frontends: &BTreeMap<AnyFrontendKey, ProgrammedFrontend>, entries: usize) -> Regions {
    let entries = u32::try_from(entries).unwrap_or(u32::MAX);
    Regions::new(entries, frontends.values().map(|fe| (fe.slots_offset, fe.slots.len() as u32)))
}

impl Programmed {
    /// Rebuilds the picture from map contents left by an earlier agent.
    pub fn adopt(contents: MapContents) -> Self {
        let MapContents { frontends, slots, backends, metas, vips, node_ports, endpoints, source_ranges } = contents;
        let mut ranges_of: BTreeMap<u32, Vec<(IpAddr, u8)>> = BTreeMap::new();
        for (frontend_id, addr, prefix_len) in source_ranges {
            ranges_of.entry(frontend_id).or_default().push((addr, prefix_len));
        }
        let mut endpoints_of: BTreeMap<u32, BTreeMap<u32, EndpointMeta>> = BTreeMap::new();
        for (key, meta) in endpoints {
            endpoints_of.entry(key.frontend_id).or_default().insert(key.index, meta);
        }
        let slots: HashMap<u32, u32> = slots.into_iter().collect();
        let metas: HashMap<u32, ServiceMeta> = metas.into_iter().collect();
        let backend_ids: HashMap<AnyBackend, u32> = backends.into_iter().map(|(id, b)| (b, id)).collect();
        let frontends = frontends
            .into_iter()
            .map(|(key, fe)| {
                let list = fe.slots_offset..fe.slots_offset.saturating_add(u32::from(fe.backend_count));
                let slots = list.map_while(|index| slots.get(&index).copied()).collect();
                let meta = metas.get(&fe.frontend_id).copied().unwrap_or_default();
                let endpoints =
                    endpoints_of.remove(&fe.frontend_id).map(|e| e.into_values().collect()).unwrap_or_default();
                let (affinity_timeout_s, flags) = (fe.affinity_timeout_s, fe.flags);
                let mut source_ranges = ranges_of.remove(&fe.frontend_id).unwrap_or_default();
                source_ranges.sort();
                let frontend_id = fe.frontend_id;
                let maglev =
                    (fe.maglev_size != 0).then_some(MaglevRegion { offset: fe.maglev_offset, size: fe.maglev_size });
                let programmed = ProgrammedFrontend {
                    frontend_id,
                    affinity_timeout_s,
                    flags,
                    source_ranges,
                    slots,
                    slots_offset: fe.slots_offset,
                    maglev,
                    meta,
                    endpoints,
                };
                (key, programmed)
            })
            .collect();
        let frontends: BTreeMap<AnyFrontendKey, ProgrammedFrontend> = frontends;
        let maglev_regions = maglev_regions(&frontends, MAX_MAGLEV_ENTRIES / MAGLEV_ENTRIES_PER_ELEMENT);
        let capacity = Capacity::default();
        let slot_regions = slot_regions(&frontends, capacity.slots);
        let with_frontend: BTreeSet<u32> = frontends.values().map(|fe| fe.frontend_id).collect();
        let listed: BTreeMap<(String, String), ListedService> = metas
            .iter()
            .filter(|(frontend_id, _)| !with_frontend.contains(frontend_id))
            .map(|(frontend_id, meta)| {
                let key = (meta.namespace().to_owned(), meta.name().to_owned());
                (key, ListedService { frontend_id: *frontend_id, meta: *meta })
            })
            .collect();
        let next_backend_id = backend_ids.values().max().map_or(1, |id| (id + 1) % MAX_BACKENDS);
        let used_backend_ids = backend_ids.values().copied().collect();
        let used_frontend_ids: BTreeSet<u32> =
            frontends.values().map(|fe| fe.frontend_id).chain(listed.values().map(|l| l.frontend_id)).collect();
        Self {
            vips: vips.into_iter().collect(),
            node_ports: node_ports.into_iter().collect(),
            frontends,
            listed,
            backend_ids,
            next_backend_id,
            used_backend_ids,
            unnamed_ids: Vec::new(),
            cleared_ids: Vec::new(),
            frontend_ids: FrontendIds::new(&used_frontend_ids),
            maglev_regions,
            slot_regions,
            planned: BTreeMap::new(),
            planned_node: None,
            capacity,
            refused: BTreeMap::new(),
        }
    }

    /// For an `LB_MAGLEV` of `elements` elements (`--maglev-entries`)
    /// instead of the default size.
    pub fn with_maglev_elements(mut self, elements: u32) -> Self {
        self.maglev_regions = maglev_regions(&self.frontends, elements);
        self
    }

    /// For maps of another size than the datapath's (tests).
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.slot_regions = slot_regions(&self.frontends, capacity.slots);
        self.capacity = capacity;
        self
    }

    /// The services the last plan left out, or kept at their last version,
    /// because the maps are full; with the reason.
    pub fn refused(&self) -> &BTreeMap<ServiceName, String> {
        &self.refused
    }

    /// The backends the lists name, with their ids.
    pub fn backends(&self) -> impl Iterator<Item = (&AnyBackend, u32)> {
        self.backend_ids.iter().map(|(backend, id)| (backend, *id))
    }

    /// How much the maps may hold.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// What the maps hold now.
    pub fn usage(&self) -> Capacity {
        let mut used = Capacity { frontends: 0, slots: 0, backends: self.backend_ids.len(), endpoints: 0 };
        for fe in self.frontends.values() {
            used.add(&fe.usage());
        }
        used
    }

    /// The operations that bring the maps from what they hold to `desired`,
    /// in a safe order; `self` is updated as if they were all applied.
    /// Services that do not fit in the maps any more are refused, in name
    /// order (see [`Programmed::refused`]).
    pub fn plan(&mut self, desired: &DesiredState, node: &NodeInfo) -> Vec<MapOp> {
        // Only services that changed (all of them when the node did) can
        // want frontends other than the ones they have.
        let everything = self.planned_node.as_ref() != Some(node);
        // Both are in name order: one walk finds the changed and the removed.
        let (mut changed, mut removed): (Vec<&Arc<Service>>, Vec<ServiceName>) = (Vec::new(), Vec::new());
        let mut before = self.planned.iter().peekable();
        for (name, service) in &desired.services {
            while let Some((gone, _)) = before.next_if(|(n, _)| *n < name) {
                removed.push(gone.clone());
            }
            let same = before.next_if(|(n, _)| *n == name).is_some_and(|(_, (planned, _))| {
                !everything && planned.as_ref().is_some_and(|p| Arc::ptr_eq(p, service) || p == service)
            });
            if !same {
                changed.push(service);
            }
        }
        removed.extend(before.map(|(gone, _)| gone.clone()));
        // The frontends the changed and removed services had.
        let mut had: Vec<AnyFrontendKey> = if everything {
            self.frontends.keys().copied().collect()
        } else {
            let names = changed.iter().map(|s| &s.name).chain(&removed);
            names.filter_map(|name| self.planned.get(name)).flat_map(|(_, keys)| keys.iter().copied()).collect()
        };
        // Room: what stays, then each changed service in name order.
        let mut used = self.usage();
        for fe in had.iter().filter_map(|key| self.frontends.get(key)) {
            used.sub(&fe.usage());
        }
        if everything {
            self.planned.clear();
        }
        for name in &removed {
            self.planned.remove(name);
        }
        self.refused.clear();
        let mut wanted = BTreeMap::new();
        let mut new_backends = HashSet::new();
        // Where the frontends' changed backend lists go.
        let mut list_offsets: HashMap<AnyFrontendKey, u32> = HashMap::new();
        // The last pass's packets are done with the regions it freed and
        // the backends it stopped naming.
        self.maglev_regions.release_held();
        self.slot_regions.release_held();
        for id in std::mem::take(&mut self.cleared_ids) {
            self.used_backend_ids.remove(&id);
        }
        let mut ops: Vec<MapOp> = self.unnamed_ids.iter().map(|id| MapOp::ClearBackend(*id)).collect();
        self.cleared_ids = std::mem::take(&mut self.unnamed_ids);
        for service in &changed {
            let frontends = wanted_frontends(service, node);
            let mut more = Capacity { frontends: frontends.len(), slots: 0, backends: 0, endpoints: 0 };
            let mut backends: Vec<AnyBackend> = Vec::new();
            for (key, fe) in &frontends {
                // The old list, and a changed one beside it until the next pass.
                let old = self.frontends.get(key).map_or(0, |old| old.slots.len());
                more.slots += old + if self.list_unchanged(key, fe) { 0 } else { fe.backends.len() };
                more.endpoints += fe.endpoints.len();
                let unknown = |b: &&AnyBackend| !self.backend_ids.contains_key(*b) && !new_backends.contains(*b);
                backends.extend(fe.backends.iter().filter(unknown));
            }
            backends.sort_unstable_by_key(|b| (b.addr, b.port, b.flags));
            backends.dedup();
            more.backends = backends.len();
            let refusal =
                self.capacity.overflow(&used, &more).or_else(|| self.place_lists(&frontends, &mut list_offsets).err());
            if let Some(reason) = refusal {
                // Keep what it had, if it had anything: it is not wanted
                // anew, so its frontends stay as they are. Unplanned yet
                // (adopted, or a pass over everything): its frontends are
                // the ones its meta names.
                let kept: Vec<AnyFrontendKey> = match self.planned.get(&service.name) {
                    Some((_, keys)) => keys.clone(),
                    None => {
                        let (namespace, name) = (&service.name.namespace, &service.name.name);
                        let its = |fe: &ProgrammedFrontend| fe.meta.namespace() == namespace && fe.meta.name() == name;
                        self.frontends.iter().filter(|(_, fe)| its(fe)).map(|(key, _)| *key).collect()
                    }
                };
                had.retain(|key| !kept.contains(key));
                for fe in kept.iter().filter_map(|key| self.frontends.get(key)) {
                    used.add(&fe.usage());
                }
                self.planned.insert(service.name.clone(), (None, kept));
                self.refused.insert(service.name.clone(), reason);
                continue;
            }
            used.add(&more);
            new_backends.extend(backends);
            let keys = frontends.keys().copied().collect();
            self.planned.insert(service.name.clone(), (Some(Arc::clone(service)), keys));
            wanted.extend(frontends);
        }
        self.planned_node = Some(node.clone());
        // Backends that lost a slot, which may now be referenced by none.
        let mut released: Vec<u32> = if everything { self.backend_ids.values().copied().collect() } else { Vec::new() };

        // 1. Backends first.
        for fe in wanted.values() {
            for backend in &fe.backends {
                if !self.backend_ids.contains_key(backend) {
                    let id = self.allocate_backend_id();
                    self.backend_ids.insert(*backend, id);
                    ops.push(MapOp::PutBackend { id, backend: *backend });
                }
            }
        }

        // 2. Frontends whose slots, affinity or meta changed, and new ones.
        for (key, fe) in &wanted {
            let slots: Vec<u32> = fe.backends.iter().map(|b| self.backend_ids[b]).collect();
            let old = self.frontends.get(key);
            let wants_table = fe.maglev && !slots.is_empty();
            let unchanged = |old: &ProgrammedFrontend| {
                old.slots == slots
                    && old.maglev.is_some() == wants_table
                    && old.flags == fe.flags
                    && old.source_ranges == fe.source_ranges
                    && old.meta == fe.meta
                    && old.affinity_timeout_s == fe.affinity_timeout_s
                    && old.endpoints == fe.endpoints
            };
            if old.is_some_and(unchanged) {
                continue;
            }
            let frontend_id = old.map_or_else(|| self.frontend_ids.allocate(), |old| old.frontend_id);
            let old_slots = old.map(|old| old.slots.clone()).unwrap_or_default();
            let old_affinity = old.map_or(0, |old| old.affinity_timeout_s);
            let old_slots_offset = old.map_or(0, |old| old.slots_offset);
            // A changed list goes into the region placed for it.
            let slots_offset = match list_offsets.get(key) {
                Some(offset) if old.is_none_or(|old| old.slots != slots) => {
                    ops.push(MapOp::PutSlots { offset: *offset, backend_ids: slots.clone() });
                    self.slot_regions.free_later(old_slots_offset, old_slots.len() as u32);
                    *offset
                }
                _ if slots.is_empty() => {
                    self.slot_regions.free_later(old_slots_offset, old_slots.len() as u32);
                    0
                }
                _ => old_slots_offset,
            };
            if old.is_none_or(|old| old.meta != fe.meta) {
                ops.push(MapOp::PutMeta { frontend_id, meta: fe.meta });
            }
            // New source ranges before the frontend may enforce them, stale
            // ones after it no longer does.
            let old_ranges = old.map(|old| old.source_ranges.clone()).unwrap_or_default();
            for (addr, prefix_len) in fe.source_ranges.iter().filter(|r| !old_ranges.contains(r)) {
                ops.push(MapOp::PutSourceRange { frontend_id, addr: *addr, prefix_len: *prefix_len });
            }
            let old_maglev = old.and_then(|old| old.maglev);
            let maglev = if old_slots == slots && old_maglev.is_some() == wants_table {
                old_maglev
            } else {
                if let Some(region) = old_maglev {
                    let (start, len) = region.span();
                    self.maglev_regions.free_later(start, len);
                }
                let size = old_maglev.map_or(0, |r| r.size);
                let region = wants_table.then(|| maglev_region(&mut self.maglev_regions, fe, size)).flatten();
                if let Some(region) = region {
                    let (element, size, backends) = (region.span().0, region.size, fe.backends.clone());
                    ops.push(MapOp::PutMaglevTable { element, size, backends });
                }
                region
            };
            let old_flags = old.map(|old| old.flags);
            if old_slots_offset != slots_offset
                || old_slots.len() != slots.len()
                || old_affinity != fe.affinity_timeout_s
                || old_flags != Some(fe.flags)
                || old_maglev != maglev
            {
                let (maglev_offset, maglev_size) = maglev.map_or((0, 0), |r| (r.offset, r.size));
                let frontend = Frontend {
                    frontend_id,
                    affinity_timeout_s: fe.affinity_timeout_s,
                    backend_count: slots.len() as u16,
                    flags: fe.flags,
                    maglev_offset,
                    maglev_size,
                    slots_offset,
                };
                ops.push(MapOp::PutFrontend { key: *key, frontend });
            }
            for (addr, prefix_len) in old_ranges.iter().filter(|r| !fe.source_ranges.contains(r)) {
                ops.push(MapOp::DeleteSourceRange { frontend_id, addr: *addr, prefix_len: *prefix_len });
            }
            let lost: Vec<u32> = old_slots.iter().filter(|id| !slots.contains(id)).copied().collect();
            released.extend(&lost);
            if key.proto == IPPROTO_UDP {
                for id in &lost {
                    let backend = self.backend_ids.iter().find(|(_, b)| *b == id).map(|(b, _)| *b);
                    ops.extend(backend.map(MapOp::FlushUdpFlows));
                }
            }
            // Clients stuck to a backend that left must choose again; with
            // affinity switched off, nobody is stuck any more.
            let lost_backend = !lost.is_empty();
            if old_affinity != 0 && (fe.affinity_timeout_s == 0 || lost_backend) {
                let keep = if fe.affinity_timeout_s == 0 { Vec::new() } else { slots.clone() };
                ops.push(MapOp::PurgeAffinity { frontend_id, keep });
            }
            let old_endpoints = old.map(|old| old.endpoints.clone()).unwrap_or_default();
            for (index, meta) in fe.endpoints.iter().enumerate() {
                if old_endpoints.get(index) != Some(meta) {
                    ops.push(MapOp::PutEndpoint { key: EndpointKey { frontend_id, index: index as u32 }, meta: *meta });
                }
            }
            for index in fe.endpoints.len()..old_endpoints.len() {
                ops.push(MapOp::DeleteEndpoint(EndpointKey { frontend_id, index: index as u32 }));
            }
            let programmed = ProgrammedFrontend {
                frontend_id,
                affinity_timeout_s: fe.affinity_timeout_s,
                flags: fe.flags,
                source_ranges: fe.source_ranges.clone(),
                slots,
                slots_offset,
                maglev,
                meta: fe.meta,
                endpoints: fe.endpoints.clone(),
            };
            self.frontends.insert(*key, programmed);
        }

        // 3. Frontends that are no longer wanted.
        let gone: Vec<AnyFrontendKey> = had.into_iter().filter(|k| !wanted.contains_key(k)).collect();
        // Another service may have taken a key over (the model refuses such
        // conflicts; this only guards the maps).
        let claimed: BTreeSet<AnyFrontendKey> = if gone.is_empty() {
            BTreeSet::new()
        } else {
            self.planned.values().flat_map(|(_, keys)| keys.iter().copied()).collect()
        };
        for key in gone.into_iter().filter(|key| !claimed.contains(key)) {
            let Some(old) = self.frontends.remove(&key) else { continue };
            released.extend(&old.slots);
            self.frontend_ids.release(old.frontend_id);
            ops.push(MapOp::DeleteFrontend(key));
            if key.proto == IPPROTO_UDP {
                ops.push(MapOp::FlushFrontendUdpFlows(old.frontend_id));
            }
            if let Some(region) = old.maglev {
                let (start, len) = region.span();
                self.maglev_regions.free_later(start, len);
            }
            self.slot_regions.free_later(old.slots_offset, old.slots.len() as u32);
            ops.push(MapOp::DeleteMeta(old.frontend_id));
            for index in 0..old.endpoints.len() {
                ops.push(MapOp::DeleteEndpoint(EndpointKey { frontend_id: old.frontend_id, index: index as u32 }));
            }
            for (addr, prefix_len) in &old.source_ranges {
                ops.push(MapOp::DeleteSourceRange {
                    frontend_id: old.frontend_id,
                    addr: *addr,
                    prefix_len: *prefix_len,
                });
            }
            if old.affinity_timeout_s != 0 {
                ops.push(MapOp::PurgeAffinity { frontend_id: old.frontend_id, keep: Vec::new() });
            }
        }

        // 4. Services listed without a frontend.
        let wanted_listed = listed_services(desired);
        let gone: Vec<(String, String)> =
            self.listed.keys().filter(|k| !wanted_listed.contains_key(*k)).cloned().collect();
        for key in gone {
            let old = self.listed.remove(&key).expect("key listed above");
            self.frontend_ids.release(old.frontend_id);
            ops.push(MapOp::DeleteMeta(old.frontend_id));
        }
        for (key, meta) in wanted_listed {
            if self.listed.get(&key).is_some_and(|old| old.meta == meta) {
                continue;
            }
            let frontend_id = self.listed.get(&key).map_or_else(|| self.frontend_ids.allocate(), |old| old.frontend_id);
            ops.push(MapOp::PutMeta { frontend_id, meta });
            self.listed.insert(key, ListedService { frontend_id, meta });
        }

        // 5. Service addresses: answered only while a frontend is there;
        // a cluster IP's other ports are rejected. Node ports: not to be
        // bound by the node's processes while a frontend uses them.
        let mut vips: BTreeMap<IpAddr, u32> = BTreeMap::new();
        let mut node_ports: BTreeMap<NodePortKey, u32> = BTreeMap::new();
        for (key, fe) in self.frontends.iter().filter(|(key, _)| key.scope == FRONTEND_SCOPE_ALL) {
            if fe.meta.frontend_kind == FRONTEND_NODE_PORT {
                *node_ports.entry(NodePortKey { port: key.port, proto: key.proto, _pad: 0 }).or_default() += 1;
                continue;
            }
            let vip = vips.entry(key.addr).or_default();
            *vip += 1;
            if fe.meta.frontend_kind == FRONTEND_CLUSTER_IP {
                *vip |= VIP_CLUSTER_IP;
            }
        }
        let vip_put = |addr, frontends| MapOp::PutVip { addr, frontends };
        ops.extend(count_changes(&self.vips, &vips, vip_put, MapOp::DeleteVip));
        let port_put = |key, frontends| MapOp::PutNodePort { key, frontends };
        ops.extend(count_changes(&self.node_ports, &node_ports, port_put, MapOp::DeleteNodePort));
        (self.vips, self.node_ports) = (vips, node_ports);

        // 6. Backends nothing points at any more.
        if released.is_empty() {
            return ops;
        }
        released.sort_unstable();
        released.dedup();
        let mut referenced = vec![false; released.len()];
        for id in self.frontends.values().flat_map(|fe| &fe.slots) {
            if let Ok(at) = released.binary_search(id) {
                referenced[at] = true;
            }
        }
        let unused: Vec<u32> = released.iter().zip(referenced).filter(|(_, r)| !r).map(|(id, _)| *id).collect();
        let mut unreferenced: Vec<(AnyBackend, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, id)| unused.binary_search(id).is_ok())
            .map(|(b, id)| (*b, *id))
            .collect();
        unreferenced.sort_by_key(|(_, id)| *id);
        // No list names them now; a packet that read an old list may still
        // read their elements until the next pass clears them.
        for (backend, id) in unreferenced {
            self.backend_ids.remove(&backend);
            self.unnamed_ids.push(id);
        }
        ops
    }

    /// The next free id after the last one handed out (the capacity check
    /// leaves one free).
    fn allocate_backend_id(&mut self) -> u32 {
        while self.used_backend_ids.contains(&self.next_backend_id) || self.next_backend_id == 0 {
            self.next_backend_id = (self.next_backend_id + 1) % MAX_BACKENDS;
        }
        let id = self.next_backend_id;
        self.next_backend_id = (id + 1) % MAX_BACKENDS;
        self.used_backend_ids.insert(id);
        id
    }

    /// Whether the frontend at `key` has `fe`'s backend list already.
    fn list_unchanged(&self, key: &AnyFrontendKey, fe: &WantedFrontend) -> bool {
        let old = self.frontends.get(key).map_or(&[][..], |old| old.slots.as_slice());
        old.len() == fe.backends.len() && fe.backends.iter().zip(old).all(|(b, id)| self.backend_ids.get(b) == Some(id))
    }

    /// Places the backend lists of `frontends` (one service's) that changed
    /// in free regions of `LB_BACKEND_SLOTS`, into `offsets`; if one does
    /// not fit, none is placed and the reason is returned.
    fn place_lists(
        &mut self,
        frontends: &BTreeMap<AnyFrontendKey, WantedFrontend>,
        offsets: &mut HashMap<AnyFrontendKey, u32>,
    ) -> Result<(), String> {
        let mut placed = Vec::new();
        for (key, fe) in frontends {
            if self.list_unchanged(key, fe) || fe.backends.is_empty() {
                continue;
            }
            let len = fe.backends.len() as u32;
            let Some(offset) = self.slot_regions.allocate(len) else {
                for (key, offset) in placed {
                    offsets.remove(&key);
                    self.slot_regions.give_back(offset, frontends[&key].backends.len() as u32);
                }
                let largest = self.slot_regions.largest_free();
                return Err(format!("the backend slot map has no {len} free entries in a row (at most {largest})"));
            };
            offsets.insert(*key, offset);
            placed.push((*key, offset));
        }
        Ok(())
    }
}

/// Frontend ids (one per Service port and address kind, keying its
/// meta, endpoints and traffic counters), 1 to `MAX_FRONTENDS`.
#[derive(Debug)]
struct FrontendIds {
    /// Freed ids, the longest free first.
    free: std::collections::VecDeque<u32>,
    /// The highest id handed out; the ones above it were never used.
    last: u32,
}

impl FrontendIds {
    fn new(used: &BTreeSet<u32>) -> Self {
        let last = used.last().copied().unwrap_or(0);
        Self { free: (1..last).filter(|id| !used.contains(id)).collect(), last }
    }

    /// A never used id while there are any up to `MAX_FRONTENDS`, else the
    /// one freed longest ago: an id is taken again as late as can be, so
    /// that what still names it when it is freed (the TCP flows of a
    /// deleted Service, which keep their conntrack entries and count in its
    /// traffic) has ended by then.
    fn allocate(&mut self) -> u32 {
        if self.last < MAX_FRONTENDS || self.free.is_empty() {
            self.last += 1;
            return self.last;
        }
        self.free.pop_front().expect("checked above")
    }

    fn release(&mut self, id: u32) {
        self.free.push_back(id);
    }
}

#[cfg(test)]
mod frontend_id_tests {
    use super::*;

    #[test]
    fn a_freed_frontend_id_is_taken_again_only_when_no_unused_one_is_left_and_the_oldest_first() {
        let mut ids = FrontendIds::new(&[1, 2, 4].into());
        ids.release(2);
        assert_eq!(ids.allocate(), 5, "3 (free since adoption) and 2 wait behind never used ids");
        ids.last = MAX_FRONTENDS;
        assert_eq!((ids.allocate(), ids.allocate(), ids.allocate()), (3, 2, MAX_FRONTENDS + 1));
    }
}

/// A free region for `fe`'s Maglev table, keeping the size of its table now
/// (`old_size`, 0 for none) where it fits; None (backends picked at random)
/// when `LB_MAGLEV` has no room left.
fn maglev_region(regions: &mut Regions, fe: &WantedFrontend, old_size: u32) -> Option<MaglevRegion> {
    let size = maglev::resized(old_size, fe.backends.len());
    let Some(element) = regions.allocate(MaglevRegion::elements(size)) else {
        warn!(
            service = %format!("{}/{}", fe.meta.namespace(), fe.meta.name()),
            entries = size,
            largest_free = regions.largest_free() * MAGLEV_ENTRIES_PER_ELEMENT,
            "the Maglev tables are full (--maglev-entries): new flows of this frontend pick backends at random"
        );
        return None;
    };
    Some(MaglevRegion { offset: element * MAGLEV_ENTRIES_PER_ELEMENT, size })
}

/// The writes that turn the counts `old` into `new`.
fn count_changes<K: Ord + Copy>(
    old: &BTreeMap<K, u32>,
    new: &BTreeMap<K, u32>,
    put: impl Fn(K, u32) -> MapOp,
    delete: impl Fn(K) -> MapOp,
) -> Vec<MapOp> {
    let changed = new.iter().filter(|(key, count)| old.get(key) != Some(count)).map(|(key, count)| put(*key, *count));
    let gone = old.keys().filter(|key| !new.contains_key(key)).map(|key| delete(*key));
    changed.chain(gone).collect()
}

/// The frontends `service` asks for, keyed like the frontend map. Each
/// address is programmed in its family with that family's endpoints only,
/// as kube-proxy runs one proxier per family.
fn wanted_frontends(service: &Service, node: &NodeInfo) -> BTreeMap<AnyFrontendKey, WantedFrontend> {
    let mut wanted = BTreeMap::new();
    if !service.programs_datapath() {
        return wanted;
    }
    for (index, port) in service.ports.iter().enumerate() {
        let proto = match port.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        let meta = ServiceMeta {
            port_index: index as u8,
            node_port: port.node_port.unwrap_or(0),
            ..ServiceMeta::new(&service.name.namespace, &service.name.name, &port.name, svc_type(service))
        };
        let affinity_timeout_s = match service.session_affinity {
            SessionAffinity::None => 0,
            SessionAffinity::ClientIp { timeout_seconds } => timeout_seconds,
        };
        let key =
            |addr: IpAddr, port: u16| AnyFrontendKey { addr, port: wire::port(port), proto, scope: FRONTEND_SCOPE_ALL };
        // Only the node's own sockets reach 127.0.0.1, an IPv4 address.
        let localhost = node.nodeport_localhost.then_some(IpAddr::from(Ipv4Addr::LOCALHOST));
        let on_cluster_ips = service.cluster_ips.iter().map(|addr| (key(*addr, port.port), FRONTEND_CLUSTER_IP));
        let cluster_ip_index = |addr: IpAddr| service.cluster_ips.iter().position(|ip| *ip == addr).unwrap_or(0) as u8;
        let on_nodes = port.node_port.into_iter().flat_map(|node_port| {
            node.addrs.iter().copied().chain(localhost).map(move |addr| (key(addr, node_port), FRONTEND_NODE_PORT))
        });
        let on_external_ips = service.external_ips.iter().map(|addr| (key(*addr, port.port), FRONTEND_EXTERNAL_IP));
        let mut by_family: BTreeMap<Family, Vec<(AnyFrontendKey, u8)>> = BTreeMap::new();
        for (key, kind) in on_cluster_ips.chain(on_nodes).chain(on_external_ips) {
            by_family.entry(Family::of(key.addr)).or_default().push((key, kind));
        }
        for (family, frontends) in by_family {
            let of_family = ServicePort {
                endpoints: port.endpoints.iter().filter(|e| Family::of(e.addr) == family).cloned().collect(),
                ..port.clone()
            };
            let source_ranges: Vec<IpCidr> =
                service.source_ranges.iter().copied().filter(|r| r.family() == family).collect();
            // Cluster IP: for pods, under the internal traffic policy; node
            // ports and external IPs: from outside, under the external one.
            let shared = Shared {
                port: &of_family,
                source_ranges: &source_ranges,
                node,
                meta,
                affinity_timeout_s,
                selection: service.backend_selection,
            };
            let frontend = |kind, policy| shared.frontend(kind, policy);
            let mut insert = |key, frontend| {
                if wanted.insert(key, frontend).is_some() {
                    // The model rejects such conflicts; this only guards the maps.
                    warn!(service = %service.name, port = port.port, "frontend claimed twice, keeping the last");
                }
            };
            for (key, kind) in frontends {
                let policy = if kind == FRONTEND_CLUSTER_IP {
                    service.internal_traffic_policy
                } else {
                    service.external_traffic_policy
                };
                let mut wanted_frontend = frontend(kind, policy);
                if kind == FRONTEND_CLUSTER_IP {
                    wanted_frontend.meta.cluster_ip_index = cluster_ip_index(key.addr);
                }
                // kube-proxy short-circuits pods to every endpoint of a Local
                // policy's node ports and external IPs: a twin for them.
                if kind != FRONTEND_CLUSTER_IP && wanted_frontend.flags & FRONTEND_FLAG_NODE_LOCAL != 0 {
                    let mut twin = frontend(kind, TrafficPolicy::Cluster);
                    twin.flags &= !FRONTEND_FLAG_EXTERNAL;
                    wanted_frontend.flags |= FRONTEND_FLAG_POD_TWIN;
                    insert(AnyFrontendKey { scope: FRONTEND_SCOPE_PODS, ..key }, twin);
                }
                // 127.0.0.1 is for the node's own sockets: no packet from a
                // device may reach a node port there (CVE-2020-8558).
                if Some(key.addr) == localhost {
                    wanted_frontend.flags &= !FRONTEND_FLAG_EXTERNAL;
                }
                insert(key, wanted_frontend);
            }
        }
    }
    wanted
}

/// What the frontends of one Service port in one family have in common:
/// the port with that family's endpoints only, that family's source ranges.
struct Shared<'a> {
    port: &'a ServicePort,
    source_ranges: &'a [IpCidr],
    node: &'a NodeInfo,
    meta: ServiceMeta,
    affinity_timeout_s: u32,
    selection: BackendSelection,
}

impl Shared<'_> {
    /// The frontend of `kind` under traffic `policy`. The endpoints are
    /// listed once, under the cluster IP.
    fn frontend(&self, kind: u8, policy: TrafficPolicy) -> WantedFrontend {
        let local = policy == TrafficPolicy::Local;
        let endpoints: Vec<&Endpoint> = if local {
            self.port.active_endpoints_on(Some(self.node.name.as_str())).collect()
        } else {
            self.port.cluster_endpoints(&self.node.name, self.node.zone.as_deref())
        };
        let backends = endpoints
            .into_iter()
            .map(|ep| {
                // Another node's endpoint, or one outside the cluster (no
                // node name, as for traffic policies): external clients sent
                // there are replaced by this node (SNAT), so that replies
                // come back here. One at an address of this node's devices
                // (a server on the host, the agent's Ingress proxy) is here
                // whatever its name says: the kernel delivers to it, and its
                // replies to a SNAT port would never leave the node to be
                // translated.
                let remote =
                    ep.node_name.as_deref() != Some(self.node.name.as_str()) && !self.node.addrs.contains(&ep.addr);
                let flags = if remote { BACKEND_FLAG_REMOTE } else { 0 };
                AnyBackend { addr: ep.addr, port: wire::port(ep.port), flags }
            })
            .collect();
        let internal_only = kind == FRONTEND_CLUSTER_IP && !self.node.cluster_ips_external;
        let external = if internal_only { 0 } else { FRONTEND_FLAG_EXTERNAL };
        // Source ranges guard the load-balancer (and external) IPs only;
        // with none of the family, as kube-proxy filters them, everyone.
        let mut source_ranges: Vec<(IpAddr, u8)> = if kind == FRONTEND_EXTERNAL_IP {
            self.source_ranges.iter().map(|r| (r.network(), r.prefix_len())).collect()
        } else {
            Vec::new()
        };
        source_ranges.sort();
        source_ranges.dedup();
        let ranged = match source_ranges.is_empty() {
            true => 0,
            // The node's own sockets leave with a node address.
            false if self.node.addrs.iter().any(|a| self.source_ranges.iter().any(|r| r.contains(*a))) => {
                FRONTEND_FLAG_SOURCE_RANGES | FRONTEND_FLAG_NODE_ADMITTED
            }
            false => FRONTEND_FLAG_SOURCE_RANGES,
        };
        // kube-proxy drops traffic a Local policy finds no endpoint for on
        // this node, but rejects it when the Service has none anywhere.
        let node_local = local && self.port.active_endpoints_on(None).next().is_some();
        let flags = external | ranged | if node_local { FRONTEND_FLAG_NODE_LOCAL } else { 0 };
        let endpoints = if kind == FRONTEND_CLUSTER_IP { endpoint_metas(self.port) } else { Vec::new() };
        let meta = ServiceMeta { frontend_kind: kind, ..self.meta };
        let maglev = self.selection == BackendSelection::Maglev;
        WantedFrontend {
            affinity_timeout_s: self.affinity_timeout_s,
            flags,
            source_ranges,
            backends,
            maglev,
            meta,
            endpoints,
        }
    }
}

/// Every endpoint of `port` with its conditions, for `get endpoints`.
fn endpoint_metas(port: &ServicePort) -> Vec<EndpointMeta> {
    port.endpoints
        .iter()
        .map(|ep| {
            let conditions = [(ep.ready, EP_READY), (ep.serving, EP_SERVING), (ep.terminating, EP_TERMINATING)]
                .iter()
                .filter(|(set, _)| *set)
                .fold(0, |bits, (_, bit)| bits | bit);
            let target = ep.target.as_deref().unwrap_or_default();
            let addr = match ep.addr {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            EndpointMeta::new(addr.octets(), wire::port(ep.port), conditions, target)
        })
        .collect()
}

/// Services the datapath has nothing to do for, by (namespace, name).
fn listed_services(desired: &DesiredState) -> BTreeMap<(String, String), ServiceMeta> {
    desired
        .services
        .values()
        .filter(|service| !service.programs_datapath())
        .map(|service| {
            let meta = ServiceMeta::new(&service.name.namespace, &service.name.name, "", svc_type(service));
            ((service.name.namespace.clone(), service.name.name.clone()), meta)
        })
        .collect()
}

fn svc_type(service: &Service) -> u8 {
    match (service.service_type, service.cluster_ips.is_empty()) {
        (ServiceType::ExternalName, _) => SVC_TYPE_EXTERNAL_NAME,
        (_, true) => SVC_TYPE_HEADLESS,
        (ServiceType::ClusterIp, _) => SVC_TYPE_CLUSTER_IP,
        (ServiceType::NodePort, _) => SVC_TYPE_NODE_PORT,
        (ServiceType::LoadBalancer, _) => SVC_TYPE_LOAD_BALANCER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServiceName, ServicePort, SessionAffinity};

    fn endpoint(last: u8, ready: bool) -> Endpoint {
        Endpoint {
            addr: IpAddr::from([10, 244, 0, last]),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            node_name: None,
            target: None,
            hostname: None,
            hints: Default::default(),
        }
    }

    fn state(services: &[(&str, [u8; 4], &[Endpoint])]) -> DesiredState {
        let mut desired = DesiredState::default();
        for (name, vip, endpoints) in services {
            let name = ServiceName::new("default", *name);
            desired.services.insert(
                name.clone(),
                Arc::new(Service {
                    name,
                    service_type: ServiceType::ClusterIp,
                    cluster_ips: if *vip == [0; 4] { Vec::new() } else { vec![IpAddr::from(*vip)] },
                    external_name: None,
                    external_ips: Vec::new(),
                    source_ranges: Vec::new(),
                    external_traffic_policy: TrafficPolicy::Cluster,
                    internal_traffic_policy: TrafficPolicy::Cluster,
                    health_check_node_port: None,
                    session_affinity: SessionAffinity::None,
                    backend_selection: BackendSelection::Maglev,
                    portless_endpoints: Vec::new(),
                    ports: vec![ServicePort {
                        name: String::new(),
                        port: 80,
                        protocol: Protocol::Tcp,
                        node_port: None,
                        endpoints: endpoints.to_vec(),
                    }],
                }),
            );
        }
        desired
    }

    /// Applies `ops` to a model of the maps, checking after every single
    /// write that no frontend counts a slot that is missing or points at a
    /// missing backend, that its Maglev table is all there and names only
    /// its slots, and that no write changes the backends a frontend names.
    #[derive(Default)]
    struct Maps {
        frontends: BTreeMap<AnyFrontendKey, Frontend>,
        /// `LB_BACKEND_SLOTS` index -> backend id.
        slots: BTreeMap<u32, u32>,
        backends: BTreeMap<u32, AnyBackend>,
        vips: BTreeMap<IpAddr, u32>,
        node_ports: BTreeMap<NodePortKey, u32>,
        endpoints: BTreeMap<EndpointKey, EndpointMeta>,
        metas: BTreeMap<u32, ServiceMeta>,
        source_ranges: BTreeSet<(u32, IpAddr, u8)>,
        /// Maglev entry index -> slot.
        maglev: BTreeMap<u32, u16>,
    }

    impl Maps {
        fn apply_checked(&mut self, ops: &[MapOp]) {
            for (i, op) in ops.iter().enumerate() {
                let named_before: BTreeMap<AnyFrontendKey, (Frontend, Vec<Option<AnyBackend>>)> =
                    self.frontends.iter().map(|(key, fe)| (*key, (*fe, self.named(fe)))).collect();
                match op {
                    MapOp::PutBackend { id, backend } => drop(self.backends.insert(*id, *backend)),
                    MapOp::ClearBackend(id) => drop(self.backends.remove(id)),
                    MapOp::PutSlots { offset, backend_ids } => self.slots.extend((*offset..).zip(backend_ids.clone())),
                    MapOp::PutFrontend { key, frontend } => drop(self.frontends.insert(*key, *frontend)),
                    MapOp::DeleteFrontend(key) => drop(self.frontends.remove(key)),
                    MapOp::PutVip { addr, frontends } => drop(self.vips.insert(*addr, *frontends)),
                    MapOp::DeleteVip(addr) => drop(self.vips.remove(addr)),
                    MapOp::PutNodePort { key, frontends } => drop(self.node_ports.insert(*key, *frontends)),
                    MapOp::DeleteNodePort(key) => drop(self.node_ports.remove(key)),
                    MapOp::PutEndpoint { key, meta } => drop(self.endpoints.insert(*key, *meta)),
                    MapOp::DeleteEndpoint(key) => drop(self.endpoints.remove(key)),
                    MapOp::PutSourceRange { frontend_id, addr, prefix_len } => {
                        self.source_ranges.insert((*frontend_id, *addr, *prefix_len));
                    }
                    MapOp::DeleteSourceRange { frontend_id, addr, prefix_len } => {
                        self.source_ranges.remove(&(*frontend_id, *addr, *prefix_len));
                    }
                    MapOp::PutMeta { frontend_id, meta } => drop(self.metas.insert(*frontend_id, *meta)),
                    MapOp::DeleteMeta(frontend_id) => drop(self.metas.remove(frontend_id)),
                    MapOp::PutMaglevTable { element, .. } => {
                        let table = op.maglev_table();
                        let start = element * MAGLEV_ENTRIES_PER_ELEMENT;
                        let end = start + table.len() as u32;
                        for fe in self.frontends.values().filter(|fe| fe.maglev_size != 0) {
                            let (used_start, used_end) = (fe.maglev_offset, fe.maglev_offset + fe.maglev_size);
                            assert!(
                                end <= used_start || start >= used_end,
                                "op {i} writes over svc {}'s table",
                                fe.frontend_id
                            );
                        }
                        self.maglev.extend((start..).zip(table.iter().copied()));
                    }
                    MapOp::PurgeAffinity { .. } | MapOp::FlushUdpFlows(_) | MapOp::FlushFrontendUdpFlows(_) => {}
                }
                for fe in self.frontends.values() {
                    for index in fe.maglev_offset..fe.maglev_offset + fe.maglev_size {
                        let slot = self.maglev.get(&index);
                        assert!(
                            slot.is_some_and(|s| *s < fe.backend_count),
                            "after op {i} ({op:?}) Maglev entry {index} of svc {} is {slot:?}",
                            fe.frontend_id
                        );
                    }
                    for index in 0..u32::from(fe.backend_count) {
                        let id = self.slots.get(&(fe.slots_offset + index));
                        assert!(
                            id.is_some_and(|id| self.backends.contains_key(id)),
                            "after op {i} ({op:?}) slot {index} of svc {} dangles",
                            fe.frontend_id
                        );
                    }
                }
                for (key, (fe, named)) in named_before {
                    if self.frontends.get(&key) == Some(&fe) {
                        assert_eq!(
                            self.named(&fe),
                            named,
                            "op {i} ({op:?}) changed what svc {}'s frontend names",
                            fe.frontend_id
                        );
                    }
                }
            }
        }

        /// The backend behind each slot of `fe`'s list and each entry of its
        /// Maglev table.
        fn named(&self, fe: &Frontend) -> Vec<Option<AnyBackend>> {
            let slot = |index: u32| {
                let id = self.slots.get(&(fe.slots_offset + index));
                id.and_then(|id| self.backends.get(id)).copied()
            };
            let table = (fe.maglev_offset..fe.maglev_offset + fe.maglev_size)
                .map(|entry| self.maglev.get(&entry).and_then(|index| slot(u32::from(*index))));
            (0..u32::from(fe.backend_count)).map(slot).chain(table).collect()
        }

        /// What a new agent reads from these maps: the slots and backends
        /// the frontends name.
        fn adopt(&self) -> Programmed {
            let named = |fe: &Frontend| fe.slots_offset..fe.slots_offset + u32::from(fe.backend_count);
            let slots: BTreeMap<u32, u32> =
                self.frontends.values().flat_map(named).map(|index| (index, self.slots[&index])).collect();
            let ids: BTreeSet<u32> = slots.values().copied().collect();
            Programmed::adopt(MapContents {
                frontends: self.frontends.clone().into_iter().collect(),
                slots: slots.into_iter().collect(),
                backends: ids.into_iter().map(|id| (id, self.backends[&id])).collect(),
                metas: self.metas.clone().into_iter().collect(),
                vips: self.vips.clone().into_iter().collect(),
                node_ports: self.node_ports.clone().into_iter().collect(),
                endpoints: self.endpoints.clone().into_iter().collect(),
                source_ranges: self.source_ranges.iter().copied().collect(),
            })
        }
    }

    const VIP: [u8; 4] = [10, 96, 0, 10];

    impl Programmed {
        /// A plan for a node without node addresses (no NodePort frontends).
        fn plan_for_test(&mut self, desired: &DesiredState) -> Vec<MapOp> {
            self.plan(desired, &NodeInfo::default())
        }
    }

    #[test]
    fn a_node_port_is_a_frontend_on_every_node_address_with_the_same_backends() {
        let mut desired = state(&[("kubia", VIP, &[endpoint(2, true)])]);
        for service in desired.services.values_mut().map(Arc::make_mut) {
            service.service_type = ServiceType::NodePort;
            service.ports[0].node_port = Some(30123);
        }
        let nodes = [IpAddr::from([192, 0, 2, 1]), IpAddr::from([198, 51, 100, 1])];
        let mut maps = Maps::default();
        let mut programmed = Programmed::default();
        let node = |addrs: &[IpAddr]| NodeInfo { name: "node-a".into(), addrs: addrs.to_vec(), ..Default::default() };
        maps.apply_checked(&programmed.plan(&desired, &node(&nodes)));
        let keys: Vec<(IpAddr, u16)> = maps.frontends.keys().map(|k| (k.addr, wire::port_number(k.port))).collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&(IpAddr::from(VIP), 80)));
        assert!(keys.contains(&(nodes[0], 30123)) && keys.contains(&(nodes[1], 30123)));
        assert!(maps.frontends.values().all(|fe| fe.backend_count == 1));
        assert_eq!(maps.vips.len(), 1, "node addresses are not service addresses");
        assert_eq!(maps.endpoints.len(), 1, "endpoints are listed once");
        // A node address that goes away takes its frontend along.
        maps.apply_checked(&programmed.plan(&desired, &node(&nodes[..1])));
        assert_eq!(maps.frontends.len(), 2);
    }

    /// A pass over everything (a node change, or the first after a restart)
    /// that finds a Service no longer fits keeps the frontends it has,
    /// found by their meta, as any other pass does.
    #[test]
    fn a_service_refused_by_a_pass_over_everything_keeps_its_frontends() {
        let mut desired = state(&[("a", [10, 96, 0, 1], &[endpoint(2, true)]), ("b", VIP, &[endpoint(3, true)])]);
        let b = Arc::make_mut(desired.services.get_mut(&ServiceName::new("default", "b")).unwrap());
        b.service_type = ServiceType::NodePort;
        b.ports[0].node_port = Some(30123);
        let capacity = Capacity { frontends: 2, ..Capacity::default() };
        let mut maps = Maps::default();
        let mut programmed = Programmed::default().with_capacity(capacity);
        maps.apply_checked(&programmed.plan_for_test(&desired));
        assert_eq!(maps.frontends.len(), 2);
        // A node address: b would want a node port frontend more.
        let node = NodeInfo { addrs: vec![IpAddr::from([192, 0, 2, 1])], ..NodeInfo::default() };
        for programmed in [&mut programmed, &mut maps.adopt().with_capacity(capacity)] {
            let ops = programmed.plan(&desired, &node);
            assert!(programmed.refused().contains_key(&ServiceName::new("default", "b")), "{ops:?}");
            assert!(!ops.iter().any(|op| matches!(op, MapOp::DeleteFrontend(_))), "{ops:?}");
        }
    }

    /// Node ports are kept from the node's processes while a frontend
    /// uses them; with `--nodeport-localhost` they answer on 127.0.0.1 too,
    /// for the node's sockets only.
    #[test]
    fn node_ports_are_reserved_and_answer_on_localhost_for_the_node_only() {
        let mut desired = state(&[("kubia", VIP, &[endpoint(2, true)])]);
        for service in desired.services.values_mut().map(Arc::make_mut) {
            service.service_type = ServiceType::NodePort;
            service.ports[0].node_port = Some(30123);
        }
        let node = NodeInfo {
            name: "node-a".into(),
            addrs: vec![IpAddr::from([198, 51, 100, 1])],
            nodeport_localhost: true,
            ..Default::default()
        };
        let mut maps = Maps::default();
        let mut programmed = Programmed::default();
        maps.apply_checked(&programmed.plan(&desired, &node));
        let reserved = NodePortKey { port: wire::port(30123), proto: IPPROTO_TCP, _pad: 0 };
        assert_eq!(maps.node_ports, [(reserved, 2)].into(), "on the node address and on 127.0.0.1");
        let on = |addr: [u8; 4]| {
            let key =
                AnyFrontendKey { addr: IpAddr::from(addr), port: wire::port(30123), proto: IPPROTO_TCP, scope: 0 };
            maps.frontends[&key].flags & FRONTEND_FLAG_EXTERNAL != 0
        };
        assert!(on([198, 51, 100, 1]), "the node address answers packets from devices");
        assert!(!on([127, 0, 0, 1]), "127.0.0.1 never does");
        for service in desired.services.values_mut().map(Arc::make_mut) {
            service.service_type = ServiceType::ClusterIp;
            service.ports[0].node_port = None;
        }
        maps.apply_checked(&programmed.plan(&desired, &node));
        assert!(maps.node_ports.is_empty());
    }

    /// The node's own sockets leave with a node address: they may use a
    /// frontend with source ranges when one of its addresses is inside.
    #[test]
    fn source_ranges_admit_the_node_when_a_node_address_is_inside() {
        for (range, admitted) in [("198.51.100.0/24", true), ("192.0.2.0/24", false)] {
            let mut desired = state(&[("lb", VIP, &[endpoint(2, true)])]);
            for service in desired.services.values_mut().map(Arc::make_mut) {
                service.service_type = ServiceType::LoadBalancer;
                service.ports[0].node_port = Some(30081);
                service.external_ips = vec![IpAddr::from([203, 0, 113, 10])];
                service.source_ranges = vec![range.parse().unwrap()];
            }
            let node =
                NodeInfo { name: "node-a".into(), addrs: vec![IpAddr::from([198, 51, 100, 1])], ..Default::default() };
            let mut maps = Maps::default();
            maps.apply_checked(&Programmed::default().plan(&desired, &node));
            let key = AnyFrontendKey {
                addr: IpAddr::from([203, 0, 113, 10]),
                port: wire::port(80),
                proto: IPPROTO_TCP,
                scope: 0,
            };
            let flags = maps.frontends[&key].flags;
            assert!(flags & FRONTEND_FLAG_SOURCE_RANGES != 0);
            assert_eq!(flags & FRONTEND_FLAG_NODE_ADMITTED != 0, admitted, "{range}");
        }
    }

    #[test]
    fn only_ready_endpoints_are_programmed_in_order() {
        let mut programmed = Programmed::default();
        let ops = programmed.plan_for_test(&state(&[(
            "kubia",
            VIP,
            &[endpoint(3, true), endpoint(2, true), endpoint(4, false)],
        )]));
        let backends: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::PutBackend { backend, .. } => Some(backend.addr),
                _ => None,
            })
            .collect();
        assert_eq!(backends, [IpAddr::from([10, 244, 0, 2]), IpAddr::from([10, 244, 0, 3])]);
        let frontend = ops.iter().find_map(|op| match op {
            MapOp::PutFrontend { frontend, .. } => Some(*frontend),
            _ => None,
        });
        assert_eq!(frontend.unwrap().backend_count, 2);
    }

    #[test]
    fn an_unchanged_state_writes_nothing() {
        let desired = state(&[("kubia", VIP, &[endpoint(2, true)])]);
        let mut programmed = Programmed::default();
        assert!(!programmed.plan_for_test(&desired).is_empty());
        assert_eq!(programmed.plan_for_test(&desired), []);
    }

    #[test]
    fn scaling_3_2_3_writes_each_list_beside_the_live_one_and_reuses_nothing_in_the_same_pass() {
        let three = [endpoint(2, true), endpoint(3, true), endpoint(4, true)];
        let mut maps = Maps::default();
        let mut programmed = Programmed::default();
        maps.apply_checked(&programmed.plan_for_test(&state(&[("kubia", VIP, &three)])));
        let datapath_ops = |ops: &[MapOp]| -> Vec<MapOp> {
            ops.iter()
                .filter(|op| !matches!(op, MapOp::PutEndpoint { .. } | MapOp::DeleteEndpoint(_)))
                .cloned()
                .collect()
        };

        // The middle one goes: the two left are written after the live
        // list (entries 0..3) with their table, then one frontend write
        // switches (apply_checked asserts that no write changes what the
        // live frontend names).
        let ops = programmed.plan_for_test(&state(&[("kubia", VIP, &[three[0].clone(), three[2].clone()])]));
        maps.apply_checked(&ops);
        assert!(
            matches!(
                datapath_ops(&ops).as_slice(),
                [
                    MapOp::PutSlots { offset: 3, backend_ids },
                    MapOp::PutMaglevTable { .. },
                    MapOp::PutFrontend { frontend: Frontend { backend_count: 2, slots_offset: 3, .. }, .. },
                ] if backend_ids == &[1, 3]
            ),
            "{ops:?}"
        );

        // Back to three: the old list's entries are free again, the
        // departed backend's element is cleared, and the returning endpoint
        // gets a new id (2 is not free before the next pass, and ids go
        // round).
        let ops = programmed.plan_for_test(&state(&[("kubia", VIP, &three)]));
        maps.apply_checked(&ops);
        assert!(
            matches!(
                datapath_ops(&ops).as_slice(),
                [
                    MapOp::ClearBackend(2),
                    MapOp::PutBackend { id: 4, .. },
                    MapOp::PutSlots { offset: 0, backend_ids },
                    MapOp::PutMaglevTable { .. },
                    MapOp::PutFrontend { frontend: Frontend { backend_count: 3, slots_offset: 0, .. }, .. },
                ] if backend_ids == &[1, 4, 3]
            ),
            "{ops:?}"
        );
        // A restarted agent finds the lists as they are.
        assert_eq!(maps.adopt().plan_for_test(&state(&[("kubia", VIP, &three)])), []);
    }

    #[test]
    fn a_backend_list_with_no_free_run_long_enough_refuses_its_service_and_keeps_the_old_list() {
        let (a, b, c) = ("a", "b", "c");
        let eps = |first: u8, n: u8| (first..first + n).map(|i| endpoint(i, true)).collect::<Vec<_>>();
        let capacity = Capacity { slots: 10, ..Capacity::default() };
        let mut maps = Maps::default();
        let mut programmed = Programmed::default().with_capacity(capacity);
        let three = [(a, [10, 96, 0, 1], eps(2, 3)), (b, [10, 96, 0, 2], eps(12, 3)), (c, [10, 96, 0, 3], eps(22, 3))];
        let services = |list: &[(&str, [u8; 4], Vec<Endpoint>)]| {
            let list: Vec<(&str, [u8; 4], &[Endpoint])> = list.iter().map(|(n, v, e)| (*n, *v, e.as_slice())).collect();
            state(&list)
        };
        maps.apply_checked(&programmed.plan_for_test(&services(&three)));
        // b goes: entries 3..6 are free from the next pass on, beside 9..10.
        let two = [three[0].clone(), three[2].clone()];
        maps.apply_checked(&programmed.plan_for_test(&services(&two)));
        // a wants 4 entries in a row: 7 are free, but in runs of 3 and 1.
        let grown = [(a, [10, 96, 0, 1], eps(2, 4)), three[2].clone()];
        let ops = programmed.plan_for_test(&services(&grown));
        maps.apply_checked(&ops);
        let refused = programmed.refused();
        assert_eq!(
            refused.get(&ServiceName::new("default", a)).map(String::as_str),
            Some("the backend slot map has no 4 free entries in a row (at most 3)"),
            "{refused:?}"
        );
        assert!(!ops.iter().any(|op| matches!(op, MapOp::PutSlots { .. })), "{ops:?}");
        let fe = maps.frontends.values().find(|fe| fe.slots_offset == 0).expect("a's list");
        assert_eq!(fe.backend_count, 3, "a keeps its three");
    }

    #[test]
    fn a_pass_over_everything_counts_each_unchanged_list_once_and_refuses_nothing() {
        let eps = |first: u8| (first..first + 3).map(|i| endpoint(i, true)).collect::<Vec<_>>();
        let (a, b) = (eps(2), eps(12));
        let desired = state(&[("a", [10, 96, 0, 1], &a), ("b", [10, 96, 0, 2], &b)]);
        // Room for both lists once, not twice.
        let capacity = Capacity { slots: 7, ..Capacity::default() };
        let mut programmed = Programmed::default().with_capacity(capacity);
        let mut maps = Maps::default();
        maps.apply_checked(&programmed.plan_for_test(&desired));
        assert!(programmed.refused().is_empty(), "{:?}", programmed.refused());
        // A new node address makes the next pass compare everything.
        let node = NodeInfo { addrs: vec![IpAddr::from([192, 0, 2, 1])], ..NodeInfo::default() };
        let ops = programmed.plan(&desired, &node);
        assert!(programmed.refused().is_empty(), "{:?}", programmed.refused());
        assert!(!ops.iter().any(|op| matches!(op, MapOp::DeleteFrontend(_) | MapOp::PutSlots { .. })), "{ops:?}");
        // And after a restart, which plans everything too.
        let ops = maps.adopt().with_capacity(capacity).plan_for_test(&desired);
        assert_eq!(ops, []);
    }

    #[test]
    fn removing_a_service_removes_everything_it_owned_and_nothing_else() {
        let mut maps = Maps::default();
        let mut programmed = Programmed::default();
        let both =
            state(&[("a", VIP, &[endpoint(2, true)]), ("b", [10, 96, 0, 11], &[endpoint(2, true), endpoint(5, true)])]);
        maps.apply_checked(&programmed.plan_for_test(&both));
        assert_eq!(maps.backends.len(), 2, "a shared endpoint is one backend");
        maps.apply_checked(&programmed.plan_for_test(&state(&[("a", VIP, &[endpoint(2, true)])])));
        assert_eq!(maps.frontends.len(), 1);
        let named: Vec<Option<AnyBackend>> = maps.frontends.values().flat_map(|fe| maps.named(fe)).collect();
        assert_eq!(named.iter().filter(|b| b.is_some_and(|b| b.addr == IpAddr::from([10, 244, 0, 5]))).count(), 0);
        // b's list is free from the next pass on; its own backend (id 2)
        // is cleared by the next pass and free from the one after.
        assert_eq!(programmed.backend_ids.len(), 1);
        let a_only = state(&[("a", VIP, &[endpoint(2, true)])]);
        assert_eq!(programmed.plan_for_test(&a_only), [MapOp::ClearBackend(2)]);
        assert_eq!(programmed.slot_regions.largest_free(), Capacity::default().slots as u32 - 1);
        assert!(programmed.used_backend_ids.contains(&2));
        assert_eq!(programmed.plan_for_test(&a_only), []);
        assert!(!programmed.used_backend_ids.contains(&2));
        assert_eq!(maps.vips.len(), 1);
        maps.apply_checked(&programmed.plan_for_test(&DesiredState::default()));
        assert!(maps.frontends.is_empty() && programmed.backend_ids.is_empty());
        assert!(maps.vips.is_empty());
    }

    #[test]
    fn an_adopted_picture_diffs_like_the_original() {
        let desired = state(&[("kubia", VIP, &[endpoint(2, true), endpoint(3, true)])]);
        let mut programmed = Programmed::default();
        let mut maps = Maps::default();
        maps.apply_checked(&programmed.plan_for_test(&desired));
        let mut adopted = maps.adopt();
        assert_eq!(adopted.plan_for_test(&desired), []);
        // Stale entries left by an earlier agent are removed.
        assert!(!adopted.plan_for_test(&DesiredState::default()).is_empty());
    }

    /// A killed agent's maps, adopted by the next agent with the same
    /// Services and node: every kind of entry (node ports on each node
    /// address, Maglev tables, metas, endpoints, VIPs, source ranges,
    /// Services without a frontend) is found as it should be, and nothing
    /// is written, in whatever order the node's addresses are listed.
    #[test]
    fn an_agent_adopting_the_maps_of_an_identical_one_writes_nothing() {
        let mut remote = endpoint(5, true);
        remote.node_name = Some("node-b".into());
        let mut local = endpoint(6, true);
        local.node_name = Some("node-a".into());
        let some = [endpoint(2, true), endpoint(3, true), endpoint(4, false), remote];
        let mut desired = state(&[
            ("clusterip", VIP, &some[..3]),
            ("nodeport", [10, 96, 0, 11], &some),
            ("loadbalancer", [10, 96, 0, 12], &[local, endpoint(2, true)]),
            ("random", [10, 96, 0, 13], &some[..2]),
            ("no-endpoints", [10, 96, 0, 14], &[]),
            ("headless", [0, 0, 0, 0], &some[..1]),
        ]);
        fn service<'a>(desired: &'a mut DesiredState, name: &str) -> &'a mut Service {
            Arc::make_mut(desired.services.get_mut(&ServiceName::new("default", name)).unwrap())
        }
        let nodeport = service(&mut desired, "nodeport");
        nodeport.service_type = ServiceType::NodePort;
        nodeport.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 60 };
        nodeport.ports[0].node_port = Some(30080);
        let udp = ServicePort {
            name: "dns".into(),
            port: 53,
            protocol: Protocol::Udp,
            node_port: Some(30053),
            ..nodeport.ports[0].clone()
        };
        nodeport.ports.push(udp);
        let loadbalancer = service(&mut desired, "loadbalancer");
        loadbalancer.service_type = ServiceType::LoadBalancer;
        loadbalancer.ports[0].node_port = Some(30081);
        loadbalancer.external_ips = vec![IpAddr::from([203, 0, 113, 10])];
        loadbalancer.source_ranges = vec!["192.0.2.0/24".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        loadbalancer.external_traffic_policy = TrafficPolicy::Local;
        service(&mut desired, "random").backend_selection = BackendSelection::Random;
        service(&mut desired, "headless").cluster_ips.clear();
        let mut node = NodeInfo {
            name: "node-a".into(),
            addrs: vec![IpAddr::from([198, 51, 100, 1]), IpAddr::from([192, 0, 2, 1])],
            nodeport_localhost: true,
            ..NodeInfo::default()
        };
        let mut maps = Maps::default();
        maps.apply_checked(&Programmed::default().plan(&desired, &node));
        // Two source ranges for the LB IP, two for its twin for pods.
        assert!(maps.maglev.len() > 1000 && maps.source_ranges.len() == 4, "the state covers every kind of entry");
        assert_eq!(maps.adopt().plan(&desired, &node), []);
        node.addrs.reverse();
        assert_eq!(maps.adopt().plan(&desired, &node), []);
    }

    /// An endpoint without a node name is outside the cluster: remote for
    /// SNAT as it is for traffic policies, like another node's, unless it
    /// is at this node's own address.
    #[test]
    fn an_endpoint_is_remote_unless_on_this_node_by_name_or_address() {
        let mut here = endpoint(2, true);
        here.node_name = Some("node-a".into());
        let mut there = endpoint(3, true);
        there.node_name = Some("node-b".into());
        let outside = endpoint(4, true);
        let mut on_the_host = endpoint(5, true);
        on_the_host.addr = IpAddr::from([198, 51, 100, 1]);
        let endpoints = [here, there, outside, on_the_host];
        let (maps, _) = node_port_on_node_a(&endpoints, TrafficPolicy::Cluster);
        let remote: BTreeSet<IpAddr> =
            maps.backends.values().filter(|b| b.flags & BACKEND_FLAG_REMOTE != 0).map(|b| b.addr).collect();
        assert_eq!(remote, [IpAddr::from([10, 244, 0, 3]), IpAddr::from([10, 244, 0, 4])].into());
        // Local policy: the endpoint outside the cluster is not this node's.
        let (maps, node_port) = node_port_on_node_a(&endpoints, TrafficPolicy::Local);
        assert_eq!(maps.frontends[&node_port].backend_count, 1);
    }

    /// The maps node-a (198.51.100.1) programs for one NodePort Service
    /// (30080) with `endpoints` under external traffic `policy`, and the
    /// key of its node port there.
    fn node_port_on_node_a(endpoints: &[Endpoint], policy: TrafficPolicy) -> (Maps, AnyFrontendKey) {
        let mut desired = state(&[("web", VIP, endpoints)]);
        for service in desired.services.values_mut().map(Arc::make_mut) {
            service.service_type = ServiceType::NodePort;
            service.ports[0].node_port = Some(30080);
            service.external_traffic_policy = policy;
        }
        let node =
            NodeInfo { name: "node-a".into(), addrs: vec![IpAddr::from([198, 51, 100, 1])], ..Default::default() };
        let mut maps = Maps::default();
        maps.apply_checked(&Programmed::default().plan(&desired, &node));
        let key = AnyFrontendKey {
            addr: IpAddr::from([198, 51, 100, 1]),
            port: wire::port(30080),
            proto: IPPROTO_TCP,
            scope: FRONTEND_SCOPE_ALL,
        };
        (maps, key)
    }

    /// kube-proxy: a Local policy drops what finds no endpoint on this node,
    /// but rejects when the Service has no endpoint on any node.
    #[test]
    fn a_local_policy_drops_without_a_local_endpoint_and_rejects_without_any() {
        let mut elsewhere = endpoint(5, true);
        elsewhere.node_name = Some("node-b".into());
        for (endpoints, node_local) in [(vec![elsewhere], true), (vec![], false)] {
            let (maps, node_port) = node_port_on_node_a(&endpoints, TrafficPolicy::Local);
            let frontend = maps.frontends[&node_port];
            assert_eq!(frontend.backend_count, 0);
            assert_eq!(frontend.flags & FRONTEND_FLAG_NODE_LOCAL != 0, node_local, "endpoints {endpoints:?}");
        }
    }

    #[test]
    fn affinity_is_programmed_and_forgotten_when_switched_off_or_a_backend_leaves() {
        let mut programmed = Programmed::default();
        let mut sticky = state(&[("kubia", VIP, &[endpoint(2, true), endpoint(3, true)])]);
        for service in sticky.services.values_mut().map(Arc::make_mut) {
            service.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 30 };
        }
        let ops = programmed.plan_for_test(&sticky);
        assert!(
            ops.iter().any(|op| matches!(op, MapOp::PutFrontend { frontend, .. } if frontend.affinity_timeout_s == 30))
        );

        // A backend leaves: only its affinities go.
        let mut one_left = sticky.clone();
        for service in one_left.services.values_mut().map(Arc::make_mut) {
            service.ports[0].endpoints.truncate(1);
        }
        let ops = programmed.plan_for_test(&one_left);
        let kept = ops.iter().find_map(|op| match op {
            MapOp::PurgeAffinity { keep, .. } => Some(keep.clone()),
            _ => None,
        });
        assert_eq!(kept.map(|k| k.len()), Some(1), "{ops:?}");

        // Switched off: the frontend says so and every affinity goes.
        let ops = programmed.plan_for_test(&state(&[("kubia", VIP, &[endpoint(2, true)])]));
        assert!(
            ops.iter().any(|op| matches!(op, MapOp::PutFrontend { frontend, .. } if frontend.affinity_timeout_s == 0))
        );
        assert!(ops.iter().any(|op| matches!(op, MapOp::PurgeAffinity { keep, .. } if keep.is_empty())));
    }

    #[test]
    fn a_service_without_endpoints_gets_a_frontend_with_no_backends() {
        let mut programmed = Programmed::default();
        let ops = programmed.plan_for_test(&state(&[("kubia", VIP, &[endpoint(2, false)])]));
        assert!(
            ops.iter().any(|op| matches!(op, MapOp::PutFrontend { frontend: Frontend { backend_count: 0, .. }, .. }))
        );
    }

    /// Maps that hold three frontends and five endpoints: the Services that
    /// do not fit are refused in name order, with the reason, and the rest
    /// is programmed; room freed by a deletion goes to the next in line.
    #[test]
    fn services_beyond_the_maps_capacity_are_refused_by_name_and_the_rest_programmed() {
        let capacity = Capacity { frontends: 3, slots: 100, backends: 100, endpoints: 5 };
        let mut programmed = Programmed::default().with_capacity(capacity);
        let mut maps = Maps::default();
        let two = [endpoint(2, true), endpoint(3, true)];
        let services = |names: &[&str]| {
            let rows: Vec<(&str, [u8; 4], &[Endpoint])> =
                names.iter().enumerate().map(|(i, n)| (*n, [10, 96, 0, 10 + i as u8], &two[..])).collect();
            state(&rows)
        };
        maps.apply_checked(&programmed.plan(&services(&["a", "b", "c", "d"]), &NodeInfo::default()));
        // Endpoints: 2 each, so the third Service is the first that does not fit.
        assert_eq!(maps.frontends.len(), 2);
        let refused: Vec<(&str, &str)> =
            programmed.refused().iter().map(|(n, r)| (n.name.as_str(), r.as_str())).collect();
        assert_eq!(
            refused,
            [
                ("c", "the endpoint map is full: 6 entries wanted, 5 fit"),
                ("d", "the endpoint map is full: 6 entries wanted, 5 fit")
            ]
        );
        // Deleting b makes room for c, and d waits.
        maps.apply_checked(&programmed.plan(&services(&["a", "c", "d"]), &NodeInfo::default()));
        assert_eq!(maps.frontends.len(), 2);
        assert_eq!(programmed.refused().keys().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["d"]);
        assert!(maps.vips.contains_key(&IpAddr::from([10, 96, 0, 11])), "c is programmed");
    }

    /// A dual-stack LoadBalancer with endpoints of both families on a node
    /// with an address of each: one frontend per address, each with its
    /// family's endpoints and source ranges only, node ports on both node
    /// addresses; a restarted agent adopts it all and writes nothing.
    #[test]
    fn a_dual_stack_service_gets_one_frontend_per_family_with_that_familys_endpoints() {
        let v6 = |text: &str| text.parse::<IpAddr>().unwrap();
        let mut endpoints = vec![endpoint(2, true), endpoint(3, true)];
        for addr in ["fd00:244::2", "fd00:244::3", "fd00:244::4"] {
            endpoints.push(Endpoint { addr: v6(addr), ..endpoint(9, true) });
        }
        let mut desired = state(&[("dual", VIP, &endpoints)]);
        for service in desired.services.values_mut().map(Arc::make_mut) {
            service.service_type = ServiceType::LoadBalancer;
            service.cluster_ips = vec![v6("fd00:10:96::a"), IpAddr::from(VIP)];
            service.ports[0].node_port = Some(30080);
            service.external_ips = vec![IpAddr::from([203, 0, 113, 10]), v6("2001:db8::10")];
            service.source_ranges = vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()];
        }
        let node = NodeInfo {
            name: "node-a".into(),
            addrs: vec![IpAddr::from([198, 51, 100, 1]), v6("2001:db8:2::1")],
            nodeport_localhost: true,
            ..NodeInfo::default()
        };
        let mut maps = Maps::default();
        maps.apply_checked(&Programmed::default().plan(&desired, &node));
        let backends_of = |addr: IpAddr| -> BTreeSet<IpAddr> {
            let key = maps.frontends.keys().find(|k| k.addr == addr).unwrap();
            let fe = maps.frontends[key];
            (0..u32::from(fe.backend_count)).map(|i| maps.backends[&maps.slots[&(fe.slots_offset + i)]].addr).collect()
        };
        let v4_backends: BTreeSet<IpAddr> = [IpAddr::from([10, 244, 0, 2]), IpAddr::from([10, 244, 0, 3])].into();
        let v6_backends: BTreeSet<IpAddr> = [v6("fd00:244::2"), v6("fd00:244::3"), v6("fd00:244::4")].into();
        for addr in [IpAddr::from(VIP), IpAddr::from([203, 0, 113, 10]), IpAddr::from([198, 51, 100, 1])] {
            assert_eq!(backends_of(addr), v4_backends, "{addr}");
        }
        for addr in ["fd00:10:96::a", "2001:db8::10", "2001:db8:2::1"] {
            assert_eq!(backends_of(v6(addr)), v6_backends, "{addr}");
        }
        assert!(maps.frontends.keys().any(|k| k.addr == IpAddr::from([127, 0, 0, 1])), "localhost stays IPv4");
        assert!(!maps.frontends.keys().any(|k| k.addr == v6("::1")));
        // Each load-balancer IP takes its family's ranges only.
        let ranges: BTreeSet<IpAddr> = maps.source_ranges.iter().map(|(_, addr, _)| *addr).collect();
        assert_eq!(ranges, [IpAddr::from([192, 0, 2, 0]), v6("2001:db8:1::")].into());
        for (key, fe) in &maps.frontends {
            let mine: Vec<IpAddr> =
                maps.source_ranges.iter().filter(|(id, ..)| *id == fe.frontend_id).map(|(_, a, _)| *a).collect();
            assert!(mine.iter().all(|a| Family::of(*a) == Family::of(key.addr)), "{key:?}: {mine:?}");
        }
        // Listed under each cluster IP, with its family's endpoints; the
        // primary family's cluster IP is index 0.
        let cluster_metas: Vec<(IpAddr, u8)> = maps
            .frontends
            .iter()
            .filter_map(|(k, fe)| {
                let meta = maps.metas[&fe.frontend_id];
                (meta.frontend_kind == FRONTEND_CLUSTER_IP).then_some((k.addr, meta.cluster_ip_index))
            })
            .collect();
        assert_eq!(cluster_metas, [(IpAddr::from(VIP), 1), (v6("fd00:10:96::a"), 0)]);
        assert_eq!(maps.endpoints.len(), 5);
        assert_eq!(maps.vips.len(), 4, "both cluster IPs and both external IPs");
        assert_eq!(maps.adopt().plan(&desired, &node), []);
    }
}
