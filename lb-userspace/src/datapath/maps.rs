//! Typed handles on the datapath's maps, from a freshly loaded object or
//! from the pins another process left under the bpf directory.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendSlotKey, CT_FORWARD, CtEntry, CtKey, EndpointKey, EndpointMeta,
    FastPath, Frontend, FrontendKey, IPPROTO_UDP, Reason, ServiceMeta, SourceRange, map_names,
};

use crate::reconcile::{MapOp, Programmed};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot open pinned map {}: {source} (is the agent running with this --bpf-dir?)", path.display())]
    Pin { path: PathBuf, source: MapError },
    #[error("map {name} has an unexpected type or layout: {source}")]
    Layout { name: &'static str, source: MapError },
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
    pub endpoints: HashMap<MapData, EndpointKey, EndpointMeta>,
    pub source_ranges: LpmTrie<MapData, SourceRange, u8>,
    pub redirect_ports: HashMap<MapData, u32, u32>,
    pub fast_path_counters: PerCpuArray<MapData, u64>,
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
            endpoints: typed(&mut open, map_names::ENDPOINTS)?,
            source_ranges: typed(&mut open, map_names::SOURCE_RANGES)?,
            redirect_ports: typed(&mut open, map_names::REDIRECT_PORTS)?,
            fast_path_counters: typed(&mut open, map_names::FAST_PATH_COUNTERS)?,
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
            MapOp::PutMeta { svc_id, meta } => self.service_meta.insert(svc_id, meta, 0),
            MapOp::PutFrontend { key, frontend } => self.frontends.insert(key, frontend, 0),
            MapOp::DeleteFrontend(key) => self.frontends.remove(key),
            MapOp::DeleteSlot(key) => self.backend_slots.remove(key),
            MapOp::DeleteMeta(svc_id) => self.service_meta.remove(svc_id),
            MapOp::DeleteBackend(id) => self.backends.remove(id),
            MapOp::PurgeAffinity { svc_id, keep } => self.purge_affinity(*svc_id, keep),
            MapOp::PutVip { addr, frontends } => self.vips.insert(addr, frontends, 0),
            MapOp::DeleteVip(addr) => self.vips.remove(addr),
            MapOp::PutEndpoint { key, meta } => self.endpoints.insert(key, meta, 0),
            MapOp::DeleteEndpoint(key) => self.endpoints.remove(key),
            MapOp::PutSourceRange { svc_id, addr, prefix_len } => {
                self.source_ranges.insert(&source_range(*svc_id, *addr, *prefix_len), 1, 0)
            }
            MapOp::DeleteSourceRange { svc_id, addr, prefix_len } => {
                self.source_ranges.remove(&source_range(*svc_id, *addr, *prefix_len))
            }
            MapOp::FlushUdpFlows(backend) => self.flush_udp_flows(backend),
        };
        match result {
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn flush_udp_flows(&mut self, backend: &Backend) -> Result<(), MapError> {
        let to_backend = |key: &CtKey, entry: &CtEntry| match entry.direction {
            CT_FORWARD => entry.nat_addr == backend.addr && entry.nat_port == backend.port,
            _ => key.saddr == backend.addr && key.sport == backend.port,
        };
        let stale: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| key.proto == IPPROTO_UDP && to_backend(key, entry))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            self.conntrack.remove(&key)?;
        }
        Ok(())
    }

    fn purge_affinity(&mut self, svc_id: u32, keep: &[u32]) -> Result<(), MapError> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| key.svc_id == svc_id && !keep.contains(&entry.backend_id))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            self.affinity.remove(&key)?;
        }
        Ok(())
    }

    /// What the maps hold now, for the reconciler to diff against.
    pub fn programmed(&self) -> Result<Programmed, MapError> {
        Ok(Programmed::adopt(
            self.frontends.iter().collect::<Result<Vec<_>, _>>()?,
            self.backend_slots.iter().collect::<Result<Vec<_>, _>>()?,
            self.backends.iter().collect::<Result<Vec<_>, _>>()?,
            self.service_meta.iter().collect::<Result<Vec<_>, _>>()?,
            self.vips.iter().collect::<Result<Vec<_>, _>>()?,
            self.endpoints.iter().collect::<Result<Vec<_>, _>>()?,
            self.source_ranges
                .keys()
                .map(|key| key.map(|k| (u32::from_be(k.data().svc_id_be), k.data().addr, (k.prefix_len() - 32) as u8)))
                .collect::<Result<Vec<_>, _>>()?,
        ))
    }

    /// Packets per reason, summed over CPUs: (XDP, TC egress) per reason.
    pub fn counters(&self) -> Result<Vec<(Reason, u64, u64)>, MapError> {
        let total = |index: u32| sum_per_cpu(&self.counters, index);
        Reason::ALL.iter().map(|r| Ok((*r, total(*r as u32)?, total(Reason::COUNT + *r as u32)?))).collect()
    }

    /// Rewritten packets per way out of XDP, summed over CPUs.
    pub fn fast_path_counters(&self) -> Result<Vec<(FastPath, u64)>, MapError> {
        FastPath::ALL.iter().map(|f| Ok((*f, sum_per_cpu(&self.fast_path_counters, *f as u32)?))).collect()
    }

    /// Makes `ifindexes` exactly the devices XDP may send frames to.
    pub fn set_redirect_ports(&mut self, ifindexes: &BTreeSet<u32>) -> Result<(), MapError> {
        let present: BTreeSet<u32> = self.redirect_ports.keys().collect::<Result<_, _>>()?;
        for gone in present.difference(ifindexes) {
            self.redirect_ports.remove(gone)?;
        }
        for new in ifindexes.difference(&present) {
            self.redirect_ports.insert(new, 1, 0)?;
        }
        Ok(())
    }
}

fn sum_per_cpu(array: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, MapError> {
    Ok(array.get(&index, 0)?.iter().sum())
}

/// The trie key of a frontend's client network: all 32 bits of the svc_id,
/// then the network's prefix.
fn source_range(svc_id: u32, addr: u32, prefix_len: u8) -> Key<SourceRange> {
    Key::new(32 + u32::from(prefix_len), SourceRange { svc_id_be: svc_id.to_be(), addr })
}
