//! Typed handles on the datapath's maps, from a freshly loaded object or
//! from the pins another process left under the bpf directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    sys::SyscallError,
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendSlotKey, CT_FORWARD, CtEntry, CtKey, CtTimeouts, EndpointKey,
    EndpointMeta, FastPath, Frontend, FrontendKey, Hook, IPPROTO_UDP, MAGLEV_ENTRIES_PER_ELEMENT, MaglevElement,
    NodePortKey, Reason, ServiceMeta, SourceRange, ct_stats, map_names,
};

use crate::plan::{MapContents, MapOp, Programmed};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot open pinned map {}: {source} (is the agent running with this --bpf-dir?)", path.display())]
    Pin { path: PathBuf, source: MapError },
    #[error("map {name} has an unexpected type or layout: {source}")]
    Layout { name: &'static str, source: MapError },
    #[error("cannot map LB_MAGLEV into memory: {reason}")]
    Mmap { reason: String },
}

pub struct DatapathMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub backend_slots: HashMap<MapData, BackendSlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    pub counters: PerCpuArray<MapData, u64>,
    pub service_meta: HashMap<MapData, u32, ServiceMeta>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub vips: HashMap<MapData, u32, u32>,
    pub node_ports: HashMap<MapData, NodePortKey, u32>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointMeta>,
    pub source_ranges: LpmTrie<MapData, SourceRange, u8>,
    /// ifindex -> `DEVICE_*` flags.
    pub devices: HashMap<MapData, u32, u32>,
    /// ifindex -> first IPv4 address of each node device, for SNAT.
    pub node_addrs: HashMap<MapData, u32, u32>,
    pub fast_path_counters: PerCpuArray<MapData, u64>,
    pub ct_stats: PerCpuArray<MapData, u64>,
    pub maglev: MaglevMemory,
}

/// `LB_MAGLEV` mapped into this process: tables are written as memory,
/// not one syscall per element.
pub struct MaglevMemory {
    /// Keeps the map (and so the mapping's object) open.
    _map: MapData,
    elements: *mut MaglevElement,
    len: usize,
}

impl MaglevMemory {
    fn new(map: Map) -> Result<Self, MapsError> {
        let layout = |reason: String| MapsError::Mmap { reason };
        let Map::Array(map) = map else { return Err(layout("not an array".into())) };
        let info = map.info().map_err(|e| layout(e.to_string()))?;
        let len = info.max_entries() as usize;
        let bytes = len * size_of::<MaglevElement>();
        // SAFETY: mapping a BPF_F_MMAPABLE array through its own fd, shared
        // and writable; the kernel checks the size against the map's.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
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

    /// The table size in elements: the capacity for all tables.
    pub fn elements(&self) -> u32 {
        self.len as u32
    }

    /// Writes `table` from element `element` on.
    pub fn write(&mut self, element: u32, table: &[u16]) -> Result<(), MapError> {
        let start = element as usize;
        let count = table.len().div_ceil(MAGLEV_ENTRIES_PER_ELEMENT as usize);
        if start + count > self.len {
            return Err(MapError::OutOfBounds { index: element + count as u32, max_entries: self.len as u32 });
        }
        // SAFETY: inside the mapping (checked above); the datapath only reads
        // regions that no frontend points at yet, or that are not written.
        let elements = unsafe { std::slice::from_raw_parts_mut(self.elements.add(start), count) };
        for (element, chunk) in elements.iter_mut().zip(table.chunks(MAGLEV_ENTRIES_PER_ELEMENT as usize)) {
            let mut packed = MaglevElement::default();
            packed[..chunk.len()].copy_from_slice(chunk);
            *element = packed;
        }
        Ok(())
    }
}

impl Drop for MaglevMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.elements.cast(), self.len * size_of::<MaglevElement>()) };
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
            frontends: typed(&mut open, map_names::FRONTENDS)?,
            backend_slots: typed(&mut open, map_names::BACKEND_SLOTS)?,
            backends: typed(&mut open, map_names::BACKENDS)?,
            conntrack: typed(&mut open, map_names::CONNTRACK)?,
            counters: typed(&mut open, map_names::COUNTERS)?,
            service_meta: typed(&mut open, map_names::SERVICE_META)?,
            affinity: typed(&mut open, map_names::AFFINITY)?,
            vips: typed(&mut open, map_names::VIPS)?,
            node_ports: typed(&mut open, map_names::NODE_PORTS)?,
            endpoints: typed(&mut open, map_names::ENDPOINTS)?,
            source_ranges: typed(&mut open, map_names::SOURCE_RANGES)?,
            devices: typed(&mut open, map_names::DEVICES)?,
            node_addrs: typed(&mut open, map_names::NODE_ADDRS)?,
            fast_path_counters: typed(&mut open, map_names::FAST_PATH_COUNTERS)?,
            ct_stats: typed(&mut open, map_names::CT_STATS)?,
            maglev: MaglevMemory::new(open(map_names::MAGLEV)?)?,
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
            MapOp::PutBackend { id, backend } => self.backends.insert(id, backend, 0),
            MapOp::PutSlot { key, backend_id } => self.backend_slots.insert(key, backend_id, 0),
            MapOp::PutMeta { frontend_id, meta } => self.service_meta.insert(frontend_id, meta, 0),
            MapOp::PutFrontend { key, frontend } => self.frontends.insert(key, frontend, 0),
            MapOp::DeleteFrontend(key) => self.frontends.remove(key),
            MapOp::DeleteSlot(key) => self.backend_slots.remove(key),
            MapOp::DeleteMeta(frontend_id) => self.service_meta.remove(frontend_id),
            MapOp::DeleteBackend(id) => self.backends.remove(id),
            MapOp::PurgeAffinity { frontend_id, keep } => self.purge_affinity(*frontend_id, keep),
            MapOp::PutVip { addr, frontends } => self.vips.insert(addr, frontends, 0),
            MapOp::DeleteVip(addr) => self.vips.remove(addr),
            MapOp::PutNodePort { key, frontends } => self.node_ports.insert(key, frontends, 0),
            MapOp::DeleteNodePort(key) => self.node_ports.remove(key),
            MapOp::PutEndpoint { key, meta } => self.endpoints.insert(key, meta, 0),
            MapOp::DeleteEndpoint(key) => self.endpoints.remove(key),
            MapOp::PutSourceRange { frontend_id, addr, prefix_len } => {
                self.source_ranges.insert(&source_range(*frontend_id, *addr, *prefix_len), 1, 0)
            }
            MapOp::DeleteSourceRange { frontend_id, addr, prefix_len } => {
                self.source_ranges.remove(&source_range(*frontend_id, *addr, *prefix_len))
            }
            MapOp::FlushUdpFlows(backend) => self.flush_udp_flows(|key, entry| match entry.direction {
                CT_FORWARD => entry.nat_addr == backend.addr && entry.nat_port == backend.port,
                _ => key.saddr == backend.addr && key.sport == backend.port,
            }),
            MapOp::FlushFrontendUdpFlows(frontend_id) => {
                self.flush_udp_flows(|_, entry| entry.frontend_id == *frontend_id)
            }
            MapOp::PutMaglevTable { element, table } => self.maglev.write(*element, table),
        };
        match result {
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Deletes the expired conntrack entries, by the datapath's own rule.
    pub fn sweep_conntrack(&mut self, timeouts: &CtTimeouts) -> Result<Sweep, MapError> {
        let (expired, live) = self.expired_conntrack(timeouts)?;
        let (removed, kept) = self.remove_expired_conntrack(&expired, timeouts)?;
        Ok(Sweep { removed, live: live + kept })
    }

    /// The keys of expired conntrack entries, and how many are live.
    pub fn expired_conntrack(&self, timeouts: &CtTimeouts) -> Result<(Vec<CtKey>, u64), MapError> {
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
    pub fn remove_expired_conntrack(&mut self, keys: &[CtKey], timeouts: &CtTimeouts) -> Result<(u64, u64), MapError> {
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
        self.count_removed(removed)?;
        Ok((removed, kept))
    }

    /// Deletes `key` from the conntrack map and returns its entry as it was
    /// when deleted, in one step (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps
    /// since 5.14); None when it is not there.
    fn take_conntrack(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        let mut entry = CtEntry::default();
        let attr = Attr {
            map_fd: self.conntrack.map().fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: std::ptr::from_mut(&mut entry) as u64,
            flags: 0,
        };
        // SAFETY: bpf(2) reads the attr and the key and writes one value of
        // the map's value size (CtEntry's) into `entry`.
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

    /// Deletes `keys` (gone already is fine) and counts them in `LB_CT_STATS`.
    fn remove_conntrack(&mut self, keys: &[CtKey]) -> Result<u64, MapError> {
        let mut removed = 0;
        for key in keys {
            match self.conntrack.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.count_removed(removed)?;
        Ok(removed)
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

    /// (entries created by the datapath, entries removed by agents).
    pub fn conntrack_totals(&self) -> Result<(u64, u64), MapError> {
        Ok((sum_per_cpu(&self.ct_stats, ct_stats::CREATED)?, sum_per_cpu(&self.ct_stats, ct_stats::REMOVED)?))
    }

    /// Deletes the UDP entries (both directions) that `matches`.
    fn flush_udp_flows(&mut self, matches: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<(), MapError> {
        let stale: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| key.proto == IPPROTO_UDP && matches(key, entry))
            .map(|(key, _)| key)
            .collect();
        self.remove_conntrack(&stale).map(drop)
    }

    fn purge_affinity(&mut self, frontend_id: u32, keep: &[u32]) -> Result<(), MapError> {
        let stale: Vec<AffinityKey> = self
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

    /// What the maps hold now, for the reconciler to diff against.
    pub fn programmed(&self) -> Result<Programmed, MapError> {
        Ok(Programmed::adopt(MapContents {
            frontends: self.frontends.iter().collect::<Result<_, _>>()?,
            slots: self.backend_slots.iter().collect::<Result<_, _>>()?,
            backends: self.backends.iter().collect::<Result<_, _>>()?,
            metas: self.service_meta.iter().collect::<Result<_, _>>()?,
            vips: self.vips.iter().collect::<Result<_, _>>()?,
            node_ports: self.node_ports.iter().collect::<Result<_, _>>()?,
            endpoints: self.endpoints.iter().collect::<Result<_, _>>()?,
            source_ranges: self
                .source_ranges
                .keys()
                .map(|key| {
                    key.map(|k| (u32::from_be(k.data().frontend_id_be), k.data().addr, (k.prefix_len() - 32) as u8))
                })
                .collect::<Result<_, _>>()?,
        })
        .with_maglev_elements(self.maglev.elements()))
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

    /// Makes `addrs` (ifindex -> address, network byte order) exactly the
    /// node device addresses SNAT uses.
    pub fn set_node_addresses(&mut self, addrs: &BTreeMap<u32, u32>) -> Result<(), MapError> {
        make_exactly(&mut self.node_addrs, addrs)
    }
}

/// Makes `map` hold exactly `want`, writing only what differs.
fn make_exactly(map: &mut HashMap<MapData, u32, u32>, want: &BTreeMap<u32, u32>) -> Result<(), MapError> {
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
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sum_per_cpu(array: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, MapError> {
    Ok(array.get(&index, 0)?.iter().sum())
}

/// The trie key of a frontend's client network: all 32 bits of the frontend_id,
/// then the network's prefix.
fn source_range(frontend_id: u32, addr: u32, prefix_len: u8) -> Key<SourceRange> {
    Key::new(32 + u32::from(prefix_len), SourceRange { frontend_id_be: frontend_id.to_be(), addr })
}
