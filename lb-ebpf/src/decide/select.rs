//! Backend selection for a new flow or socket: session affinity, then the
//! frontend's Maglev table, then a random (or hashed) slot.

use lb_common::{Addr, AffinityKey, Backend, CtKey, Frontend, hash::reduce};

use super::Tables;

/// How a frontend without a Maglev table picks a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// At random: conntrack keeps the flow where its first packet went.
    Random,
    /// By the hash: a socket keeps its backend from call to call.
    Hash,
}

/// The client's affinity backend while it is fresh, else the slot the
/// frontend's Maglev table gives the flow, else a slot as `spread` says.
/// The agent removes affinity entries whose backend left the service before
/// it reuses the backend's id, so an entry names a backend of the service.
#[inline(always)]
pub fn backend<A: Addr, T: Tables<A>>(
    flow: &CtKey<A>,
    hash: u64,
    frontend: &Frontend,
    tables: &T,
    now: u64,
    spread: Spread,
) -> Option<(u32, Backend<A>)> {
    if frontend.affinity_timeout_s != 0 {
        let key = AffinityKey { client: flow.saddr, frontend_id: frontend.frontend_id };
        let timeout_ns = u64::from(frontend.affinity_timeout_s) * 1_000_000_000;
        if let Some(entry) = tables.affinity(&key)
            && now.saturating_sub(entry.last_used_ns) < timeout_ns
            && let Some(backend) = tables.backend(entry.backend_id)
        {
            return Some((entry.backend_id, backend));
        }
    }
    let upper = (hash >> 32) as u32;
    let slot = if frontend.maglev_size != 0 {
        let index = frontend.maglev_offset.wrapping_add(reduce(upper, frontend.maglev_size));
        u32::from(tables.maglev_slot(index)?)
    } else if spread == Spread::Hash {
        reduce(upper, u32::from(frontend.backend_count))
    } else {
        reduce(tables.random(), u32::from(frontend.backend_count))
    };
    let id = tables.backend_slot(frontend.slots_offset.wrapping_add(slot))?;
    Some((id, tables.backend(id)?))
}
