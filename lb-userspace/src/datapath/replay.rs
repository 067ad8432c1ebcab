//! The datapath's decision (`lb_ebpf::decide`, the code the programs run)
//! made in this process over the live pinned maps, read-only, for
//! `lb-agent explain`: every lookup is recorded with its answer, and every
//! write the decision would make is recorded instead of made.

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
};

use aya::{
    Pod,
    maps::{MapError, lpm_trie::Key},
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, CtEntry, CtHop, CtKey, CtTimeouts, Frontend, FrontendKey, ServiceCidr,
    SourceRange, wire,
};
use lb_ebpf::decide::{InsertFailed, Shared, Tables};

use super::{
    interfaces::InterfacePatterns,
    maps::{DatapathMaps, FamilyMaps, monotonic_ns},
};
use crate::plan::WireAddr;

/// A 5-tuple, ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub proto: u8,
}

impl Flow {
    pub fn of<A: WireAddr>(key: &CtKey<A>) -> Self {
        Flow {
            from: SocketAddr::new(key.saddr.ip(), wire::port_number(key.sport)),
            to: SocketAddr::new(key.daddr.ip(), wire::port_number(key.dport)),
            proto: key.proto,
        }
    }
}

/// What a conntrack entry says, addresses as `IpAddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// `CT_FORWARD` or `CT_REPLY`.
    pub direction: u8,
    /// What the entry writes into the packet's destination (forward) or source (reply).
    pub nat: SocketAddr,
    /// The other end it writes too (hairpin, SNAT).
    pub other: Option<SocketAddr>,
    pub frontend_id: u32,
    /// `CT_STATE_*`.
    pub state: u8,
    /// Since the entry was last refreshed, in ns of the datapath's clock.
    pub idle_ns: u64,
}

impl FlowEntry {
    fn of<A: WireAddr>(entry: &CtEntry<A>, now_ns: u64) -> Self {
        let socket = |addr: A, port| SocketAddr::new(addr.ip(), wire::port_number(port));
        FlowEntry {
            direction: entry.direction,
            nat: socket(entry.nat_addr, entry.nat_port),
            other: entry.other().map(|(addr, port)| socket(addr, port)),
            frontend_id: entry.frontend_id,
            state: entry.state,
            idle_ns: now_ns.saturating_sub(entry.last_seen_ns),
        }
    }
}

/// One thing the decision looked up (with its answer) or would have written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Conntrack {
        key: Flow,
        found: Option<FlowEntry>,
    },
    Frontend {
        addr: SocketAddr,
        proto: u8,
        scope: u8,
        found: Option<Frontend>,
    },
    SourceRange {
        frontend_id: u32,
        client: IpAddr,
        allowed: bool,
    },
    Affinity {
        client: IpAddr,
        frontend_id: u32,
        found: Option<AffinityEntry>,
    },
    /// Entry `index` of the Maglev tables: a slot of the frontend's list.
    MaglevEntry {
        index: u32,
        slot: Option<u16>,
    },
    /// Entry `index` of the backend lists: a backend id.
    ListEntry {
        index: u32,
        backend_id: Option<u32>,
    },
    Backend {
        id: u32,
        found: Option<SocketAddr>,
    },
    ServiceAddress {
        addr: IpAddr,
        flags: Option<u32>,
    },
    NodeAddress {
        toward: IpAddr,
        found: Option<IpAddr>,
    },
    Random(u32),
    /// A conntrack entry written (`only_if_new`: unless the key is taken,
    /// which the lookup just before found it was not).
    WouldWriteConntrack {
        key: Flow,
        entry: FlowEntry,
        only_if_new: bool,
    },
    WouldRefreshConntrack {
        key: Flow,
        state: u8,
    },
    WouldWriteAffinity {
        client: IpAddr,
        frontend_id: u32,
        backend_id: u32,
    },
}

/// What the programs were loaded with that the pinned maps do not hold.
#[derive(Clone, Copy, Debug)]
pub struct LoadedSettings<A> {
    pub ct_timeouts: CtTimeouts,
    pub service_cidr: ServiceCidr<A>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading {map} failed: {source}")]
pub struct ReplayError {
    map: &'static str,
    source: MapError,
}

/// The decision's tables over the pinned maps of family `A`, for a packet
/// that arrived on `ingress_ifindex`.
pub struct Replay<'m, A: WireAddr + Pod> {
    maps: &'m DatapathMaps,
    family: &'m FamilyMaps<A>,
    settings: LoadedSettings<A>,
    ingress_ifindex: u32,
    /// The decision's clock: one reading for the whole decision.
    now_ns: u64,
    steps: RefCell<Vec<Step>>,
    /// The conntrack refreshes the decision made (key, state): what it
    /// reads again of those entries must see them, as in the datapath.
    refreshed: RefCell<Vec<(CtKey<A>, u8)>>,
    /// The first lookup that failed other than for a missing key.
    error: RefCell<Option<ReplayError>>,
}

impl<'m, A: WireAddr + Pod> Replay<'m, A> {
    pub fn new(
        maps: &'m DatapathMaps,
        family: &'m FamilyMaps<A>,
        settings: LoadedSettings<A>,
        ingress_ifindex: u32,
    ) -> Self {
        Replay {
            maps,
            family,
            settings,
            ingress_ifindex,
            now_ns: monotonic_ns(),
            steps: RefCell::default(),
            refreshed: RefCell::default(),
            error: RefCell::default(),
        }
    }

    /// What the decision did, in order; an error if a map could not be
    /// read (the decision then went on as if the key were missing).
    pub fn into_steps(self) -> Result<Vec<Step>, ReplayError> {
        match self.error.into_inner() {
            Some(err) => Err(err),
            None => Ok(self.steps.into_inner()),
        }
    }

    fn record(&self, step: Step) {
        self.steps.borrow_mut().push(step);
    }

    /// A hash lookup's value: none for a missing key, as in the datapath;
    /// any other failure is kept for `into_steps`.
    fn found<V>(&self, map: &'static str, result: Result<V, MapError>) -> Option<V> {
        match result {
            Ok(value) => Some(value),
            Err(MapError::KeyNotFound) => None,
            Err(source) => {
                self.error.borrow_mut().get_or_insert(ReplayError { map, source });
                None
            }
        }
    }
}

impl<A: WireAddr + Pod> Shared for Replay<'_, A> {
    fn conntrack_created(&self, _n: u64) {}

    fn count_service(&self, _frontend_id: u32) {}

    fn ct_timeouts(&self) -> CtTimeouts {
        self.settings.ct_timeouts
    }

    fn backend_slot(&self, index: u32) -> Option<u32> {
        // Past an array's end is no element, as the datapath's lookup has it.
        let backend_id = self.maps.backend_slots.get(index).ok();
        self.record(Step::ListEntry { index, backend_id });
        backend_id
    }

    fn maglev_slot(&self, index: u32) -> Option<u16> {
        let slot = self.maps.maglev.entry(index).ok();
        self.record(Step::MaglevEntry { index, slot });
        slot
    }

    fn random(&self) -> u32 {
        let mut bytes = [0u8; 4];
        // SAFETY: getrandom writes at most the length it is given.
        let read = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        let value = if read == 4 { u32::from_ne_bytes(bytes) } else { monotonic_ns() as u32 };
        self.record(Step::Random(value));
        value
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

impl<A: WireAddr + Pod> Tables<A> for Replay<'_, A> {
    fn conntrack_with<R>(&self, key: &CtKey<A>, read: impl FnOnce(&CtEntry<A>) -> R) -> Option<R> {
        let mut entry = self.found("conntrack", self.family.conntrack.get(key, 0));
        if let (Some(entry), Some((_, state))) = (&mut entry, self.refreshed.borrow().iter().find(|(k, _)| k == key)) {
            (entry.state, entry.last_seen_ns) = (*state, self.now_ns);
        }
        self.record(Step::Conntrack { key: Flow::of(key), found: entry.map(|e| FlowEntry::of(&e, self.now_ns)) });
        entry.as_ref().map(read)
    }

    fn conntrack_insert(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed> {
        let (key, entry) = (Flow::of(key), FlowEntry::of(entry, self.now_ns));
        self.record(Step::WouldWriteConntrack { key, entry, only_if_new: false });
        Ok(())
    }

    fn conntrack_insert_new(&self, key: &CtKey<A>, entry: &CtEntry<A>) -> Result<(), InsertFailed> {
        let (key, entry) = (Flow::of(key), FlowEntry::of(entry, self.now_ns));
        self.record(Step::WouldWriteConntrack { key, entry, only_if_new: true });
        Ok(())
    }

    fn conntrack_refresh(&self, key: &CtKey<A>, state: u8, _now_ns: u64) {
        self.refreshed.borrow_mut().push((*key, state));
        self.record(Step::WouldRefreshConntrack { key: Flow::of(key), state });
    }

    fn conntrack_keep_hop(&self, _key: &CtKey<A>, _hop: &CtHop) {}

    fn entry_route(&self, _hop: Option<&CtHop>) {}

    fn affinity(&self, key: &AffinityKey<A>) -> Option<AffinityEntry> {
        let entry = self.found("affinity", self.family.affinity.get(key, 0));
        self.record(Step::Affinity { client: key.client.ip(), frontend_id: key.frontend_id, found: entry });
        entry
    }

    fn affinity_insert(&self, key: &AffinityKey<A>, entry: &AffinityEntry) {
        let (client, frontend_id, backend_id) = (key.client.ip(), key.frontend_id, entry.backend_id);
        self.record(Step::WouldWriteAffinity { client, frontend_id, backend_id });
    }

    fn source_allowed(&self, frontend_id: u32, client: A) -> bool {
        let bits = 32 + 8 * size_of::<A>() as u32;
        let key = Key::new(bits, SourceRange { frontend_id_be: frontend_id.to_be(), addr: client });
        let allowed = self.found("source ranges", self.family.source_ranges.get(&key, 0)).is_some();
        self.record(Step::SourceRange { frontend_id, client: client.ip(), allowed });
        allowed
    }

    fn frontend(&self, key: &FrontendKey<A>) -> Option<Frontend> {
        let frontend = self.found("frontends", self.family.frontends.get(key, 0));
        let addr = SocketAddr::new(key.addr.ip(), wire::port_number(key.port));
        self.record(Step::Frontend { addr, proto: key.proto, scope: key.scope, found: frontend });
        frontend
    }

    fn backend(&self, id: u32) -> Option<Backend<A>> {
        // A cleared element (port 0) is no backend, as in the datapath.
        let backend = self.family.backends.get(id).ok().filter(|b| b.port != 0);
        let socket = backend.map(|b| SocketAddr::new(b.addr.ip(), wire::port_number(b.port)));
        self.record(Step::Backend { id, found: socket });
        backend
    }

    fn node_address_toward(&self, daddr: A) -> Option<A> {
        let by_device = |ifindex: u32| self.found("node addresses", self.family.node_addrs.get(&ifindex, 0));
        let addr = egress_ifindex(daddr.ip()).and_then(by_device).or_else(|| by_device(self.ingress_ifindex));
        self.record(Step::NodeAddress { toward: daddr.ip(), found: addr.map(WireAddr::ip) });
        addr
    }

    fn service_address(&self, addr: A) -> Option<u32> {
        let flags = self.found("service addresses", self.family.vips.get(&addr, 0));
        self.record(Step::ServiceAddress { addr: addr.ip(), flags });
        flags
    }

    fn service_cidr(&self) -> ServiceCidr<A> {
        self.settings.service_cidr
    }
}

/// The device this node's route to `daddr` leaves by, as the device that
/// holds the source address the kernel picks for it (what the datapath's
/// FIB lookup gives, short of a route whose preferred source sits on
/// another device).
fn egress_ifindex(daddr: IpAddr) -> Option<u32> {
    let any = if daddr.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    // A UDP connect sends nothing: it only routes.
    socket.connect(SocketAddr::new(daddr, 9)).ok()?;
    let source = socket.local_addr().ok()?.ip();
    let every = InterfacePatterns::new(["*"]).ok()?;
    let name = every.addresses().ok()?.into_iter().find(|(_, addrs)| addrs.contains(&source))?.0;
    every.present().ok()?.get(&name).copied()
}
