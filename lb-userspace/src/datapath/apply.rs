//! Writing a reconcile pass: the plan's operations in their order, each run
//! of writes to one hash map in one `BPF_MAP_UPDATE_BATCH` call, and the
//! Maglev tables built meanwhile on every core, straight into the mapped
//! `LB_MAGLEV`. A frontend is written only once every table planned before
//! it is complete, so what a frontend names is always all there (the
//! plan's order, see `plan`); the tables' regions are ones no frontend
//! points at during the pass, so building them early changes nothing the
//! datapath reads.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
    sys::SyscallError,
};

use super::maps::{DatapathMaps, FamilyMaps, MaglevTables};
use crate::plan::{AnyBackend, MapOp, WireAddr, rekey};

/// Elements per `BPF_MAP_UPDATE_BATCH` call: bounds the copies made for it.
const MAX_BATCH: usize = 4096;

impl DatapathMaps {
    /// Writes `ops` (a plan) as [`DatapathMaps::apply`] would one by one, in
    /// fewer system calls and with the Maglev tables built in parallel; the
    /// operations that failed, by index, with their error.
    pub fn apply_all(&mut self, ops: &[MapOp]) -> Vec<(usize, MapError)> {
        let tables = self.maglev.tables();
        let Some(jobs) = Jobs::new(ops, tables) else {
            // Overlapping tables: only a broken plan asks for that; write
            // them one after the other as planned.
            return self.apply_each(ops, 0);
        };
        let helpers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .saturating_sub(1)
            .min(jobs.list.len().saturating_sub(1));
        let mut failed = std::thread::scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|| while jobs.run_next() {});
            }
            let mut failed = Vec::new();
            let mut at = 0;
            while at < ops.len() {
                let end = at + run_length(&ops[at..]);
                match &ops[at] {
                    // Built by the jobs.
                    MapOp::PutMaglevTable { .. } => {}
                    op => {
                        if matches!(op, MapOp::PutFrontend { .. }) {
                            jobs.wait_before(end);
                        }
                        if end - at == 1 || self.put_batch(&ops[at..end]).is_err() {
                            // One by one, also to tell which write failed.
                            failed.extend(self.apply_each(&ops[at..end], at));
                        }
                    }
                }
                at = end;
            }
            jobs.wait_before(usize::MAX);
            failed
        });
        failed.extend(jobs.failed.into_inner().unwrap_or_else(|e| e.into_inner()));
        failed.sort_by_key(|(index, _)| *index);
        failed
    }

    /// `ops` applied one by one; the failed ones by index (counted from `first`).
    fn apply_each(&mut self, ops: &[MapOp], first: usize) -> Vec<(usize, MapError)> {
        ops.iter().enumerate().filter_map(|(i, op)| self.apply(op).err().map(|err| (first + i, err))).collect()
    }

    /// Writes a run of writes to one map (see [`run_length`]) in batches.
    fn put_batch(&mut self, run: &[MapOp]) -> Result<(), MapError> {
        match &run[0] {
            MapOp::PutMeta { .. } => update_batch(
                &self.service_meta,
                run.iter().filter_map(|op| match op {
                    MapOp::PutMeta { frontend_id, meta } => Some((*frontend_id, *meta)),
                    _ => None,
                }),
            ),
            MapOp::PutEndpoint { .. } => update_batch(
                &self.endpoints,
                run.iter().filter_map(|op| match op {
                    MapOp::PutEndpoint { key, meta } => Some((*key, *meta)),
                    _ => None,
                }),
            ),
            MapOp::PutNodePort { .. } => update_batch(
                &self.node_ports,
                run.iter().filter_map(|op| match op {
                    MapOp::PutNodePort { key, frontends } => Some((*key, *frontends)),
                    _ => None,
                }),
            ),
            op => match op.addr() {
                Some(IpAddr::V4(_)) => self.v4.put_batch(run),
                Some(IpAddr::V6(_)) => self.v6.put_batch(run),
                None => Err(MapError::InvalidName { name: format!("{op:?} cannot be batched") }),
            },
        }
    }
}

impl<A: WireAddr + Pod> FamilyMaps<A> {
    /// Writes a run of frontend or address writes of this family.
    fn put_batch(&mut self, run: &[MapOp]) -> Result<(), MapError> {
        let wire = |ip: IpAddr| A::from_ip(ip).ok_or(MapError::InvalidName { name: format!("{ip} in a batch") });
        match &run[0] {
            MapOp::PutFrontend { .. } => {
                let entries = run.iter().filter_map(|op| match op {
                    MapOp::PutFrontend { key, frontend } => Some(wire(key.addr).map(|a| (rekey(*key, a), *frontend))),
                    _ => None,
                });
                update_batch(&self.frontends, entries.collect::<Result<Vec<_>, _>>()?)
            }
            MapOp::PutVip { .. } => {
                let entries = run.iter().filter_map(|op| match op {
                    MapOp::PutVip { addr, frontends } => Some(wire(*addr).map(|a| (a, *frontends))),
                    _ => None,
                });
                update_batch(&self.vips, entries.collect::<Result<Vec<_>, _>>()?)
            }
            op => Err(MapError::InvalidName { name: format!("{op:?} cannot be batched") }),
        }
    }
}

/// Which map a write goes to, for the writes that can share a batch.
fn batch_key(op: &MapOp) -> Option<(u8, bool)> {
    let map = match op {
        MapOp::PutMeta { .. } => 2,
        MapOp::PutFrontend { .. } => 3,
        MapOp::PutEndpoint { .. } => 4,
        MapOp::PutVip { .. } => 5,
        MapOp::PutNodePort { .. } => 6,
        _ => return None,
    };
    Some((map, matches!(op.addr(), Some(IpAddr::V6(_)))))
}

/// How many operations from the first on write the same map and can go in
/// one batch (1 for the others).
fn run_length(ops: &[MapOp]) -> usize {
    let Some(key) = batch_key(&ops[0]) else { return 1 };
    ops.iter().take(MAX_BATCH).take_while(|op| batch_key(op) == Some(key)).count()
}

/// Writes `entries` into `map` with one `BPF_MAP_UPDATE_BATCH` call (hash
/// maps since Linux 5.6), in order, as single updates would.
fn update_batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<(), MapError> {
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct Attr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let (keys, values): (Vec<K>, Vec<V>) = entries.into_iter().unzip();
    let mut attr = Attr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: bpf(2) reads the attr and `count` keys and values of the
    // map's sizes (K's and V's, which aya checked when it typed the map),
    // and writes back `count`.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, std::ptr::from_mut(&mut attr), size_of::<Attr>()) };
    if rc == 0 {
        return Ok(());
    }
    let io_error = std::io::Error::last_os_error();
    Err(MapError::SyscallError(SyscallError { call: "bpf_map_update_batch", io_error }))
}

/// The Maglev tables of a pass, built by whichever thread takes each next:
/// identical tables (the same backends and size: the frontends of one
/// Service port on several addresses) are built once and copied.
struct Jobs<'a> {
    list: Vec<Job<'a>>,
    next: AtomicUsize,
    done: Vec<AtomicBool>,
    /// How many jobs from the first the writer saw done.
    waited: AtomicUsize,
    failed: Mutex<Vec<(usize, MapError)>>,
    tables: MaglevTables,
}

struct Job<'a> {
    /// Index of the (first) `PutMaglevTable` in the pass.
    op: usize,
    element: u32,
    size: u32,
    backends: &'a [AnyBackend],
    /// (index, element) of the ones that want the same table.
    copies: Vec<(usize, u32)>,
}

impl<'a> Jobs<'a> {
    /// The tables `ops` write, in order; None if two regions overlap, which
    /// threads cannot then write apart.
    fn new(ops: &'a [MapOp], tables: MaglevTables) -> Option<Self> {
        let mut list: Vec<Job> = Vec::new();
        let mut first: StdHashMap<(u32, &[AnyBackend]), usize> = StdHashMap::new();
        let mut spans = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let MapOp::PutMaglevTable { element, size, backends } = op else { continue };
            spans.push(tables.span(*element, *size).unwrap_or(0..0));
            match first.get(&(*size, backends.as_slice())) {
                Some(job) => list[*job].copies.push((index, *element)),
                None => {
                    first.insert((*size, backends), list.len());
                    list.push(Job { op: index, element: *element, size: *size, backends, copies: Vec::new() });
                }
            }
        }
        spans.sort_by_key(|span| span.start);
        if spans.windows(2).any(|w| w[0].end > w[1].start) {
            return None;
        }
        let done = list.iter().map(|_| AtomicBool::new(false)).collect();
        let (next, waited, failed) = (AtomicUsize::new(0), AtomicUsize::new(0), Mutex::new(Vec::new()));
        Some(Self { list, next, done, waited, failed, tables })
    }

    /// Builds the next table nobody took yet; false when there is none.
    fn run_next(&self) -> bool {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = self.list.get(index) else { return false };
        // SAFETY: each job is taken once, and no two regions of a pass
        // overlap (checked in `new`).
        let built = unsafe { self.tables.write(job.element, job.size, job.backends) };
        let mut failed = Vec::new();
        match built {
            Ok(()) => {
                for (op, element) in &job.copies {
                    // SAFETY: as above; the source is complete and nobody else's.
                    if let Err(err) = unsafe { self.tables.copy(job.element, *element, job.size) } {
                        failed.push((*op, err));
                    }
                }
            }
            Err(err) => {
                failed.push((job.op, err));
                failed.extend(job.copies.iter().map(|(op, _)| {
                    (*op, MapError::InvalidName { name: format!("the table of operation {} failed", job.op) })
                }));
            }
        }
        if !failed.is_empty() {
            self.failed.lock().unwrap_or_else(|e| e.into_inner()).extend(failed);
        }
        self.done[index].store(true, Ordering::Release);
        true
    }

    /// Returns once every table of an operation before index `op` is
    /// complete, building untaken ones meanwhile.
    fn wait_before(&self, op: usize) {
        let mut waited = self.waited.load(Ordering::Relaxed);
        while self.list.get(waited).is_some_and(|job| job.op < op) {
            if self.done[waited].load(Ordering::Acquire) {
                waited += 1;
            } else if !self.run_next() {
                // Another thread is building it.
                std::thread::yield_now();
            }
        }
        self.waited.store(waited, Ordering::Relaxed);
    }
}
