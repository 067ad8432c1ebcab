//! Typed handles on the datapath's maps, from a freshly loaded object or
//! from the pins another process left under the bpf directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    sys::SyscallError,
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, CT_FORWARD, CtEntry, CtKey, CtTimeouts, EndpointKey, EndpointMeta, FastPath,
    Frontend, FrontendKey, Hook, IPPROTO_UDP, Ipv6Wire, MAGLEV_ENTRIES_PER_ELEMENT, MaglevElement, NodePortKey, Reason,
    ServiceMeta, ServiceTraffic, SourceRange, ct_stats, map_names,
};

use crate::plan::{AnyBackend, MapContents, MapOp, Programmed, WireAddr, fill_maglev_table, rebackend, rekey};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot open pinned map {}: {source} (is the agent running with this --bpf-dir?)", path.display())]
    Pin { path: PathBuf, source: MapError },
    #[error("map {name} has an unexpected type or layout: {source}")]
    Layout { name: &'static str, source: MapError },
    #[error("cannot map {name} into memory: {reason}")]
    Mmap { name: &'static str, reason: String },
}

pub struct DatapathMaps {
    pub v4: FamilyMaps<u32>,
    pub v6: FamilyMaps<Ipv6Wire>,
    /// Every frontend's backend list (backend ids), in regions.
    pub backend_slots: ArrayMemory<u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub service_meta: HashMap<MapData, u32, ServiceMeta>,
    pub node_ports: HashMap<MapData, NodePortKey, u32>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointMeta>,
    /// ifindex -> `DEVICE_*` flags.
    pub devices: HashMap<MapData, u32, u32>,
    pub fast_path_counters: PerCpuArray<MapData, u64>,
    pub ct_stats: PerCpuArray<MapData, u64>,
    /// Packets and bytes per frontend id, per CPU.
    pub service_traffic: PerCpuArray<MapData, ServiceTraffic>,
    pub maglev: MaglevMemory,
}

/// The maps whose keys or values hold an address, of one family (`u32`
/// IPv4, `Ipv6Wire` IPv6): one layout rule, so one code for both.
pub struct FamilyMaps<A: WireAddr + Pod> {
    pub frontends: HashMap<MapData, FrontendKey<A>, Frontend>,
    /// Backend id -> backend.
    pub backends: ArrayMemory<Backend<A>>,
    pub conntrack: HashMap<MapData, CtKey<A>, CtEntry<A>>,
    pub affinity: HashMap<MapData, AffinityKey<A>, AffinityEntry>,
    pub vips: HashMap<MapData, A, u32>,
    pub source_ranges: LpmTrie<MapData, SourceRange<A>, u8>,
    /// ifindex -> the first address of the family of each node device, for SNAT.
    pub node_addrs: HashMap<MapData, u32, A>,
}

/// The names of one family's maps, in [`FamilyMaps`] field order.
type FamilyNames = [&'static str; 7];
const NAMES_V4: FamilyNames = [
    map_names::FRONTENDS,
    map_names::BACKENDS,
    map_names::CONNTRACK,
    map_names::AFFINITY,
    map_names::VIPS,
    map_names::SOURCE_RANGES,
    map_names::NODE_ADDRS,
];
const NAMES_V6: FamilyNames = [
    map_names::FRONTENDS6,
    map_names::BACKENDS6,
    map_names::CONNTRACK6,
    map_names::AFFINITY6,
    map_names::VIPS6,
    map_names::SOURCE_RANGES6,
    map_names::NODE_ADDRS6,
];

/// A `BPF_F_MMAPABLE` array mapped into this process: read and written as
/// memory, not one syscall per element.
pub struct ArrayMemory<T> {
    /// Keeps the map (and so the mapping's object) open.
    _map: MapData,
    elements: *mut Element<T>,
    len: usize,
}

/// An array element as the kernel lays it out: rounded up to 8 bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Element<T>(T);

impl<T: Pod> ArrayMemory<T> {
    fn new(map: Map, name: &'static str) -> Result<Self, MapsError> {
        let layout = |reason: String| MapsError::Mmap { name, reason };
        let Map::Array(map) = map else { return Err(layout("not an array".into())) };
        let info = map.info().map_err(|e| layout(e.to_string()))?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(layout(format!("values of {} bytes, not {}", info.value_size(), size_of::<T>())));
        }
        let len = info.max_entries() as usize;
        // SAFETY: mapping a BPF_F_MMAPABLE array through its own fd, shared
        // and writable; the kernel checks the size against the map's.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * size_of::<Element<T>>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(layout(std::io::Error::last_os_error().to_string()));
        }
        Ok(Self { _map: map, elements: ptr.cast(), len })
    }

    /// The number of elements.
    pub fn capacity(&self) -> u32 {
        self.len as u32
    }

    fn out_of_bounds(&self, index: u32) -> MapError {
        MapError::OutOfBounds { index, max_entries: self.len as u32 }
    }

    /// Element `index`, as the datapath reads it.
    pub fn get(&self, index: u32) -> Result<T, MapError> {
        if index as usize >= self.len {
            return Err(self.out_of_bounds(index));
        }
        // SAFETY: inside the mapping; plain data, read as a whole.
        Ok(unsafe { std::ptr::read_volatile(self.elements.add(index as usize)) }.0)
    }

    /// Writes `values` from element `first` on. Only elements no packet
    /// reads meanwhile are written (see `plan`): nothing else orders them.
    pub fn set(&mut self, first: u32, values: &[T]) -> Result<(), MapError> {
        let end = first as usize + values.len();
        if end > self.len {
            return Err(self.out_of_bounds(end as u32));
        }
        for (at, value) in (first as usize..).zip(values) {
            // SAFETY: inside the mapping (checked above), written by this
            // process alone (`&mut self`).
            unsafe { std::ptr::write_volatile(self.elements.add(at), Element(*value)) };
        }
        Ok(())
    }
}

// SAFETY: the mapping belongs to the value, which may move to another
// thread with it (the agent loads the programs on one).
unsafe impl<T> Send for ArrayMemory<T> {}

impl<T> Drop for ArrayMemory<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.elements.cast(), self.len * size_of::<Element<T>>()) };
    }
}

/// `LB_MAGLEV` mapped into this process: tables are written as memory,
/// not one syscall per element.
pub struct MaglevMemory(ArrayMemory<MaglevElement>);

impl MaglevMemory {
    /// The table size in elements: the capacity for all tables.
    pub fn elements(&self) -> u32 {
        self.0.capacity()
    }

    /// Entry `index` of all tables together (a slot of a frontend's list),
    /// as the datapath reads it.
    pub fn entry(&self, index: u32) -> Result<u16, MapError> {
        let element = self.0.get(index / MAGLEV_ENTRIES_PER_ELEMENT)?;
        Ok(element[(index % MAGLEV_ENTRIES_PER_ELEMENT) as usize])
    }

    /// Builds the Maglev table of `size` entries for `backends` in place,
    /// from element `element` on.
    pub fn write(&mut self, element: u32, size: u32, backends: &[AnyBackend]) -> Result<(), MapError> {
        // SAFETY: `&mut self`: no other write is under way.
        unsafe { self.tables().write(element, size, backends) }
    }

    /// A handle that threads build tables through, each into a region of
    /// its own.
    pub(super) fn tables(&mut self) -> MaglevTables {
        MaglevTables { elements: self.0.elements.cast(), len: self.0.len }
    }
}

/// Where tables are built in `LB_MAGLEV`'s mapping, from several threads at
/// once (each into other elements), while the maps stay borrowed.
#[derive(Clone, Copy)]
pub(super) struct MaglevTables {
    elements: *mut MaglevElement,
    len: usize,
}

// SAFETY: a pointer into a shared mapping that lives as long as the
// `MaglevMemory` it came from; `write`'s contract keeps threads apart.
unsafe impl Send for MaglevTables {}
unsafe impl Sync for MaglevTables {}

impl MaglevTables {
    /// The elements a table of `size` entries from `element` on takes.
    pub(super) fn span(&self, element: u32, size: u32) -> Result<std::ops::Range<usize>, MapError> {
        let (start, count) = (element as usize, (size as usize).div_ceil(MAGLEV_ENTRIES_PER_ELEMENT as usize));
        if start + count > self.len {
            return Err(MapError::OutOfBounds { index: element + count as u32, max_entries: self.len as u32 });
        }
        Ok(start..start + count)
    }

    /// Builds the table of `size` entries for `backends` from element
    /// `element` on; the entries after it in its last element are zeroed.
    ///
    /// # Safety
    /// No other thread writes these elements meanwhile. (The datapath only
    /// reads regions that no frontend points at yet, or that are not
    /// written: see `plan::regions`.)
    pub(super) unsafe fn write(&self, element: u32, size: u32, backends: &[AnyBackend]) -> Result<(), MapError> {
        let span = self.span(element, size)?;
        // SAFETY: inside the mapping (checked above), written by this
        // thread alone (the contract); an element is entries, packed.
        let entries = unsafe {
            std::slice::from_raw_parts_mut(
                self.elements.add(span.start).cast::<u16>(),
                span.len() * MAGLEV_ENTRIES_PER_ELEMENT as usize,
            )
        };
        let (table, padding) = entries.split_at_mut(size as usize);
        if fill_maglev_table(backends, table) {
            padding.fill(0);
        }
        Ok(())
    }

    /// Copies a built table of `size` entries from element `from` to element `to`.
    ///
    /// # Safety
    /// As [`MaglevTables::write`] for `to`; `from` is written by no one meanwhile.
    pub(super) unsafe fn copy(&self, from: u32, to: u32, size: u32) -> Result<(), MapError> {
        let (from, to) = (self.span(from, size)?, self.span(to, size)?);
        // SAFETY: both inside the mapping (checked above), distinct regions
        // of the same length (the plan's regions never overlap).
        unsafe { std::ptr::copy_nonoverlapping(self.elements.add(from.start), self.elements.add(to.start), to.len()) };
        Ok(())
    }
}

impl DatapathMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing { name }))
    }

    /// Opens the maps an agent pinned under `bpf_dir`.
    pub fn open_pinned(bpf_dir: &Path) -> Result<Self, MapsError> {
        Self::build(|name| {
            let path = bpf_dir.join(name);
            MapData::from_pin(&path).and_then(Map::from_map_data).map_err(|source| MapsError::Pin { path, source })
        })
    }

    fn build(mut open: impl FnMut(&'static str) -> Result<Map, MapsError>) -> Result<Self, MapsError> {
        Ok(Self {
            v4: FamilyMaps::build(&mut open, NAMES_V4)?,
            v6: FamilyMaps::build(&mut open, NAMES_V6)?,
            backend_slots: ArrayMemory::new(open(map_names::BACKEND_SLOTS)?, map_names::BACKEND_SLOTS)?,
            counters: typed(&mut open, map_names::COUNTERS)?,
            service_meta: typed(&mut open, map_names::SERVICE_META)?,
            node_ports: typed(&mut open, map_names::NODE_PORTS)?,
            endpoints: typed(&mut open, map_names::ENDPOINTS)?,
            devices: typed(&mut open, map_names::DEVICES)?,
            fast_path_counters: typed(&mut open, map_names::FAST_PATH_COUNTERS)?,
            ct_stats: typed(&mut open, map_names::CT_STATS)?,
            service_traffic: typed(&mut open, map_names::SERVICE_TRAFFIC)?,
            maglev: MaglevMemory(ArrayMemory::new(open(map_names::MAGLEV)?, map_names::MAGLEV)?),
        })
    }
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    open: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
    name: &'static str,
) -> Result<T, MapsError> {
    T::try_from(open(name)?).map_err(|source| MapsError::Layout { name, source })
}

impl DatapathMaps {
    /// Writes one reconcile operation. Deleting what is already gone is fine.
    pub fn apply(&mut self, op: &MapOp) -> Result<(), MapError> {
        let result = match op {
            MapOp::PutSlots { offset, backend_ids } => self.backend_slots.set(*offset, backend_ids),
            MapOp::PutMeta { frontend_id, meta } => self.service_meta.insert(frontend_id, meta, 0),
            // A freed id's traffic is not the next Service port's.
            MapOp::DeleteMeta(frontend_id) => {
                let removed = self.service_meta.remove(frontend_id);
                self.clear_service_traffic(*frontend_id).and(removed)
            }
            MapOp::PutNodePort { key, frontends } => self.node_ports.insert(key, frontends, 0),
            MapOp::DeleteNodePort(key) => self.node_ports.remove(key),
            MapOp::PutEndpoint { key, meta } => self.endpoints.insert(key, meta, 0),
            MapOp::DeleteEndpoint(key) => self.endpoints.remove(key),
            MapOp::PutMaglevTable { element, size, backends } => self.maglev.write(*element, *size, backends),
            // Backend ids are one space for both families: an operation
            // without an address (clearing a backend, purging affinity,
            // flushing a frontend's flows) goes to both.
            _ => match op.addr() {
                None => {
                    let removed = self.v4.apply(op)? + self.v6.apply(op)?;
                    self.count_removed(removed)
                }
                Some(IpAddr::V4(_)) => self.v4.apply(op).and_then(|removed| self.count_removed(removed)),
                Some(IpAddr::V6(_)) => self.v6.apply(op).and_then(|removed| self.count_removed(removed)),
            },
        };
        ignore_not_found(result)
    }

    /// Deletes the expired conntrack entries of both families, by the
    /// datapath's own rule.
    pub fn sweep_conntrack(&mut self, timeouts: &CtTimeouts) -> Result<Sweep, MapError> {
        let mut total = Sweep { removed: 0, live: 0 };
        for sweep in [self.v4.sweep_conntrack(timeouts)?, self.v6.sweep_conntrack(timeouts)?] {
            total.removed += sweep.removed;
            total.live += sweep.live;
        }
        self.count_removed(total.removed)?;
        Ok(total)
    }

    /// Adds `removed` to the entries agents removed (`LB_CT_STATS`).
    fn count_removed(&mut self, removed: u64) -> Result<(), MapError> {
        if removed > 0 {
            // The total goes in CPU 0's slot; the sum over CPUs is what counts.
            let current = self.ct_stats.get(&ct_stats::REMOVED, 0)?;
            let mut values = vec![0u64; current.len()];
            values[0] = current.iter().sum::<u64>() + removed;
            self.ct_stats.set(ct_stats::REMOVED, values.try_into()?, 0)?;
        }
        Ok(())
    }

    /// `frontend_id`'s packets and bytes, summed over CPUs.
    pub fn service_traffic(&self, frontend_id: u32) -> Result<ServiceTraffic, MapError> {
        let sum = |a: ServiceTraffic, b: &ServiceTraffic| ServiceTraffic {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        };
        Ok(self.service_traffic.get(&frontend_id, 0)?.iter().fold(ServiceTraffic::default(), sum))
    }

    /// Zeroes `frontend_id`'s packets and bytes on every CPU (ids past the
    /// array are never counted).
    fn clear_service_traffic(&mut self, frontend_id: u32) -> Result<(), MapError> {
        if frontend_id >= self.service_traffic.len() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(call, io_error)| SyscallError { call, io_error })?;
        let zeros = PerCpuValues::try_from(vec![ServiceTraffic::default(); cpus])
            .map_err(|io_error| SyscallError { call: "nr_cpus", io_error })?;
        self.service_traffic.set(frontend_id, zeros, 0)
    }

    /// (entries created by the datapath, entries removed by agents).
    pub fn conntrack_totals(&self) -> Result<(u64, u64), MapError> {
        Ok((sum_per_cpu(&self.ct_stats, ct_stats::CREATED)?, sum_per_cpu(&self.ct_stats, ct_stats::REMOVED)?))
    }

    /// The entries the LRUs evicted to make room, estimated from the totals
    /// and the `live` entries: created - removed - live.
    pub fn conntrack_evicted(&self, live: u64) -> Result<u64, MapError> {
        let (created, removed) = self.conntrack_totals()?;
        Ok(created.saturating_sub(removed).saturating_sub(live))
    }

    /// What the maps hold now, for the reconciler to diff against.
    pub fn programmed(&self) -> Result<Programmed, MapError> {
        let mut contents = MapContents {
            metas: self.service_meta.iter().collect::<Result<_, _>>()?,
            node_ports: self.node_ports.iter().collect::<Result<_, _>>()?,
            endpoints: self.endpoints.iter().collect::<Result<_, _>>()?,
            ..MapContents::default()
        };
        self.v4.contents(&mut contents)?;
        self.v6.contents(&mut contents)?;
        // The backend lists the frontends name, and the backends on them.
        let mut named = BTreeSet::new();
        for (key, frontend) in &contents.frontends {
            let first = frontend.slots_offset;
            for index in first..first.saturating_add(u32::from(frontend.backend_count)) {
                let id = self.backend_slots.get(index)?;
                contents.slots.push((index, id));
                named.insert((key.addr.is_ipv6(), id));
            }
        }
        for (ipv6, id) in named {
            let backend = if ipv6 { self.v6.backend(id)? } else { self.v4.backend(id)? };
            contents.backends.push((id, backend));
        }
        Ok(Programmed::adopt(contents).with_maglev_elements(self.maglev.elements()))
    }

    /// Zeroes the backend elements that no list of `programmed` (what the
    /// maps hold, just adopted) names, which the datapath then takes for no
    /// backend: a session affinity entry an earlier agent left naming one
    /// picks anew, instead of whatever backend takes the id next (see
    /// `plan`). How many were cleared.
    pub fn clear_unnamed_backends(&mut self, programmed: &Programmed) -> Result<usize, MapError> {
        let named: BTreeSet<(bool, u32)> = programmed.backends().map(|(b, id)| (b.addr.is_ipv6(), id)).collect();
        let v4 = self.v4.clear_backends_except(|id| named.contains(&(false, id)))?;
        Ok(v4 + self.v6.clear_backends_except(|id| named.contains(&(true, id)))?)
    }

    /// Packets per reason, summed over CPUs, per hook in `Hook::ALL` order.
    pub fn counters(&self) -> Result<Vec<(Reason, [u64; Hook::COUNT as usize])>, MapError> {
        Reason::ALL
            .iter()
            .map(|r| {
                let mut per_hook = [0; Hook::COUNT as usize];
                for (n, hook) in per_hook.iter_mut().zip(Hook::ALL) {
                    *n = sum_per_cpu(&self.counters, hook as u32 * Reason::COUNT + *r as u32)?;
                }
                Ok((*r, per_hook))
            })
            .collect()
    }

    /// Rewritten packets per way out of XDP, summed over CPUs.
    pub fn fast_path_counters(&self) -> Result<Vec<(FastPath, u64)>, MapError> {
        FastPath::ALL.iter().map(|f| Ok((*f, sum_per_cpu(&self.fast_path_counters, *f as u32)?))).collect()
    }

    /// Makes `devices` (ifindex -> `DEVICE_*` flags) exactly the devices
    /// the datapath may send packets to itself.
    pub fn set_devices(&mut self, devices: &BTreeMap<u32, u32>) -> Result<(), MapError> {
        make_exactly(&mut self.devices, devices)
    }
}

impl<A: WireAddr + Pod> FamilyMaps<A> {
    fn build(
        open: &mut impl FnMut(&'static str) -> Result<Map, MapsError>,
        [frontends, backends, conntrack, affinity, vips, source_ranges, node_addrs]: FamilyNames,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            frontends: typed(open, frontends)?,
            backends: ArrayMemory::new(open(backends)?, backends)?,
            conntrack: typed(open, conntrack)?,
            affinity: typed(open, affinity)?,
            vips: typed(open, vips)?,
            source_ranges: typed(open, source_ranges)?,
            node_addrs: typed(open, node_addrs)?,
        })
    }

    /// Writes an operation on this family's maps (the plan routes each by
    /// its address); how many conntrack entries it removed.
    fn apply(&mut self, op: &MapOp) -> Result<u64, MapError> {
        let wire =
            |ip: IpAddr| A::from_ip(ip).ok_or(MapError::InvalidName { name: format!("{ip} in another family's map") });
        let result = match op {
            MapOp::PutBackend { id, backend } => self.backends.set(*id, &[rebackend(*backend, wire(backend.addr)?)]),
            MapOp::ClearBackend(id) => self.backends.set(*id, &[Backend::default()]),
            MapOp::PutFrontend { key, frontend } => self.frontends.insert(rekey(*key, wire(key.addr)?), frontend, 0),
            MapOp::DeleteFrontend(key) => self.frontends.remove(&rekey(*key, wire(key.addr)?)),
            MapOp::PurgeAffinity { frontend_id, keep } => self.purge_affinity(*frontend_id, keep),
            MapOp::PutVip { addr, frontends } => self.vips.insert(wire(*addr)?, frontends, 0),
            MapOp::DeleteVip(addr) => self.vips.remove(&wire(*addr)?),
            MapOp::PutSourceRange { frontend_id, addr, prefix_len } => {
                self.source_ranges.insert(&source_range(*frontend_id, wire(*addr)?, *prefix_len), 1, 0)
            }
            MapOp::DeleteSourceRange { frontend_id, addr, prefix_len } => {
                self.source_ranges.remove(&source_range(*frontend_id, wire(*addr)?, *prefix_len))
            }
            MapOp::FlushUdpFlows(backend) => {
                let (addr, port) = (wire(backend.addr)?, backend.port);
                return self.flush_udp_flows(|key, entry| match entry.direction {
                    CT_FORWARD => entry.nat_addr == addr && entry.nat_port == port,
                    _ => key.saddr == addr && key.sport == port,
                });
            }
            MapOp::FlushFrontendUdpFlows(frontend_id) => {
                return self.flush_udp_flows(|_, entry| entry.frontend_id == *frontend_id);
            }
            // The shared maps' operations are not this family's.
            _ => Ok(()),
        };
        ignore_not_found(result).map(|()| 0)
    }

    /// Deletes the expired conntrack entries (not counted in `LB_CT_STATS`).
    fn sweep_conntrack(&mut self, timeouts: &CtTimeouts) -> Result<Sweep, MapError> {
        let (expired, live) = self.expired_conntrack(timeouts)?;
        let (removed, kept) = self.remove_expired_conntrack(&expired, timeouts)?;
        Ok(Sweep { removed, live: live + kept })
    }

    /// The keys of expired conntrack entries, and how many are live.
    pub fn expired_conntrack(&self, timeouts: &CtTimeouts) -> Result<(Vec<CtKey<A>>, u64), MapError> {
        let now = monotonic_ns();
        let (mut expired, mut live) = (Vec::new(), 0);
        for entry in self.conntrack.iter() {
            let (key, entry) = entry?;
            if timeouts.expired(key.proto, &entry, now) {
                expired.push(key);
            } else {
                live += 1;
            }
        }
        Ok((expired, live))
    }

    /// Removes the entries of `keys` that are expired as they are removed:
    /// a packet may have refreshed one, or started a new flow on its key,
    /// since it was read. Each is taken out as it is at that moment and put
    /// back unless it is expired still (and unless the datapath wrote the
    /// key again in between). (removed, put back)
    pub fn remove_expired_conntrack(
        &mut self,
        keys: &[CtKey<A>],
        timeouts: &CtTimeouts,
    ) -> Result<(u64, u64), MapError> {
        let (mut removed, mut kept) = (0, 0);
        for key in keys {
            match self.take_conntrack(key)? {
                Some(entry) if timeouts.expired(key.proto, &entry, monotonic_ns()) => removed += 1,
                Some(entry) => {
                    let _ = self.conntrack.insert(key, entry, BPF_NOEXIST);
                    kept += 1;
                }
                None => {}
            }
        }
        Ok((removed, kept))
    }

    /// Deletes `key` from the conntrack map and returns its entry as it was
    /// when deleted, in one step (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps
    /// since 5.14); None when it is not there.
    fn take_conntrack(&self, key: &CtKey<A>) -> Result<Option<CtEntry<A>>, MapError> {
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        let mut entry = CtEntry::<A>::default();
        let attr = Attr {
            map_fd: self.conntrack.map().fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: std::ptr::from_mut(&mut entry) as u64,
            flags: 0,
        };
        // SAFETY: bpf(2) reads the attr and the key and writes one value of
        // the map's value size (CtEntry<A>'s) into `entry`.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_AND_DELETE_ELEM, std::ptr::from_ref(&attr), size_of::<Attr>())
        };
        if rc == 0 {
            return Ok(Some(entry));
        }
        match std::io::Error::last_os_error() {
            e if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            io_error => Err(MapError::SyscallError(SyscallError { call: "bpf_map_lookup_and_delete_elem", io_error })),
        }
    }

    /// Deletes the UDP entries (both directions) that `matches`; how many.
    fn flush_udp_flows(&mut self, matches: impl Fn(&CtKey<A>, &CtEntry<A>) -> bool) -> Result<u64, MapError> {
        let stale: Vec<CtKey<A>> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| key.proto == IPPROTO_UDP && matches(key, entry))
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in &stale {
            match self.conntrack.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    fn purge_affinity(&mut self, frontend_id: u32, keep: &[u32]) -> Result<(), MapError> {
        let stale: Vec<AffinityKey<A>> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| key.frontend_id == frontend_id && !keep.contains(&entry.backend_id))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            self.affinity.remove(&key)?;
        }
        Ok(())
    }

    /// Adds what this family's maps hold to `contents`.
    fn contents(&self, contents: &mut MapContents) -> Result<(), MapError> {
        for entry in self.frontends.iter() {
            let (key, frontend) = entry?;
            contents.frontends.push((rekey(key, key.addr.ip()), frontend));
        }
        for entry in self.vips.iter() {
            let (addr, frontends) = entry?;
            contents.vips.push((addr.ip(), frontends));
        }
        for key in self.source_ranges.keys() {
            let key = key?;
            let prefix_len = (key.prefix_len() - 32) as u8;
            contents.source_ranges.push((u32::from_be(key.data().frontend_id_be), key.data().addr.ip(), prefix_len));
        }
        Ok(())
    }

    /// Zeroes every backend element not `named` that is not zero yet; how many.
    fn clear_backends_except(&mut self, named: impl Fn(u32) -> bool) -> Result<usize, MapError> {
        let mut cleared = 0;
        for id in 0..self.backends.capacity() {
            if !named(id) && self.backends.get(id)? != Backend::default() {
                self.backends.set(id, &[Backend::default()])?;
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// Backend `id`, as the datapath reads it.
    pub fn backend(&self, id: u32) -> Result<AnyBackend, MapError> {
        let backend = self.backends.get(id)?;
        Ok(rebackend(backend, backend.addr.ip()))
    }

    /// Makes `node_addrs` (ifindex -> address) exactly the node device
    /// addresses SNAT uses in this family.
    pub fn set_node_addresses(&mut self, addrs: &BTreeMap<u32, A>) -> Result<(), MapError> {
        make_exactly(&mut self.node_addrs, addrs)
    }
}

/// A write or delete, with deleting what is already gone counted as done.
fn ignore_not_found(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes `map` hold exactly `want`, writing only what differs.
fn make_exactly<V: Pod + PartialEq>(
    map: &mut HashMap<MapData, u32, V>,
    want: &BTreeMap<u32, V>,
) -> Result<(), MapError> {
    let present: BTreeSet<u32> = map.keys().collect::<Result<_, _>>()?;
    for gone in present.iter().filter(|k| !want.contains_key(k)) {
        map.remove(gone)?;
    }
    for (key, value) in want {
        if map.get(key, 0).ok() != Some(*value) {
            map.insert(key, value, 0)?;
        }
    }
    Ok(())
}

/// bpf(2)'s flag: write only a key that is not there.
const BPF_NOEXIST: u64 = 1;

/// What one conntrack sweep found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    pub removed: u64,
    pub live: u64,
}

/// CLOCK_MONOTONIC in ns: the clock of the datapath's conntrack times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ns(&ts)
}

/// The kernel's tick in ns, the resolution of its coarse clock, which the
/// datapath counts in jiffies; 0 (the datapath then asks the clock's helper)
/// if the kernel does not say.
pub fn tick_ns() -> u64 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes the timespec we own.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return 0;
    }
    ns(&res)
}

fn ns(ts: &libc::timespec) -> u64 {
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sum_per_cpu(array: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, MapError> {
    Ok(array.get(&index, 0)?.iter().sum())
}

/// The trie key of a frontend's client network: all 32 bits of the frontend_id,
/// then the network's prefix.
fn source_range<A: WireAddr>(frontend_id: u32, addr: A, prefix_len: u8) -> Key<SourceRange<A>> {
    Key::new(32 + u32::from(prefix_len), SourceRange { frontend_id_be: frontend_id.to_be(), addr })
}
