//! Maglev lookup tables (Eisenbud et al., NSDI 2016, §3.4): each backend
//! walks its own permutation of the table's positions and the backends take
//! turns claiming the next free one. Every backend ends up with M/N entries
//! (±1), and a backend that joins or leaves changes few other entries, so
//! most flows keep their backend even without conntrack. The permutations
//! come from the backends' addresses alone (`lb_common::hash::backend`), so
//! every node builds the same table from the same endpoints.

use lb_common::{Backend, hash};

use super::family::WireAddr;

/// Table sizes: primes, so that every skip walks all positions. A table
/// keeps at least 100 entries per backend, which bounds the imbalance at 1%.
pub const TABLE_SIZES: &[u32] = &[
    101, 211, 307, 401, 503, 601, 701, 809, 907, 1009, 1259, 1511, 2003, 2503, 3001, 4001, 5003, 6007, 8009, 10007,
    12503, 15013, 20011, 25013, 30011, 40009, 50021, 65521, 80021, 100003, 131071,
];

/// Entries per backend of a new table. Balance needs 100 (1% imbalance);
/// disruption needs more: removing one of N backends moves 1/N of the flows
/// plus an excess that shrinks as entries per backend grow (measured for
/// N = 10: +2.9 points at 100 entries each, +1.0 at 500, +0.7 at 1 000).
const ENTRIES_PER_BACKEND_NEW: usize = 1_000;
/// A table keeps its size while it has at least this many entries per
/// backend (the backends may double), since a new size moves most flows
/// (positions scale with the size, `hash::reduce`)...
const ENTRIES_PER_BACKEND_MIN: usize = 500;
/// ...and at most this many (a service that shrank a lot gives memory back).
const ENTRIES_PER_BACKEND_MAX: usize = 4_000;

fn smallest_size(entries: usize) -> u32 {
    let largest = *TABLE_SIZES.last().expect("sizes listed");
    TABLE_SIZES.iter().copied().find(|m| *m as usize >= entries).unwrap_or(largest)
}

/// The size of a new table for `backends` backends: the smallest listed
/// size with 1 000 entries per backend; 0 when there are none. Past 131
/// backends the largest size is used (at least 100 entries each up to 1 310
/// backends, the 1% balance bound).
pub fn table_size(backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    smallest_size(backends.saturating_mul(ENTRIES_PER_BACKEND_NEW))
}

/// The size for `backends` backends of a frontend whose table has `size`
/// entries now: the same while it holds 500 to 4 000 entries per backend,
/// else a new size. The same history of backend counts gives the same sizes
/// on every node (they all see the same manifests), and a restarted agent
/// adopts the sizes in the maps; a node that starts while a table is in
/// that range may size it differently, and then places new flows
/// differently until the next resize (conntrack keeps established ones).
pub fn resized(size: u32, backends: usize) -> u32 {
    let entries = size as usize;
    let fits = entries >= backends.saturating_mul(ENTRIES_PER_BACKEND_MIN)
        && entries <= backends.saturating_mul(ENTRIES_PER_BACKEND_MAX);
    let at_the_largest = size == smallest_size(backends.saturating_mul(ENTRIES_PER_BACKEND_MIN));
    if backends > 0 && (fits || at_the_largest) { size } else { table_size(backends) }
}

/// The table of `size` entries (a listed prime) for `backends` (distinct,
/// at most 65 535): entry i is the index in `backends` of the backend that
/// owns position i. Which backend owns a position does not depend on the
/// order `backends` come in.
pub fn build<A: WireAddr>(backends: &[Backend<A>], size: u32) -> Vec<u16> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let mut table = vec![0; size as usize];
    fill(backends, &mut table);
    table
}

/// Writes the table of `table.len()` entries (a listed prime) for
/// `backends` into `table`, as [`build`] returns it: where it is to be
/// used (the memory-mapped `LB_MAGLEV`), without a copy on the way.
pub fn fill<A: WireAddr>(backends: &[Backend<A>], table: &mut [u16]) {
    /// Positions each backend checks at once: its claim is the first free
    /// one of them, and the next four are checked only when all are taken.
    /// One unpredictable branch per four positions instead of one per
    /// position (1.5x faster for 10 backends, the same table).
    const AHEAD: usize = 4;
    const EMPTY: u16 = u16::MAX;
    debug_assert!(backends.len() < usize::from(EMPTY), "too many backends for u16 slots");
    let size = table.len() as u32;
    if backends.is_empty() || size == 0 {
        return;
    }
    table.fill(EMPTY);
    // Claiming turns go in address order, not in the caller's order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|i| (backends[*i].addr.ip(), backends[*i].port.to_be()));
    // offset < m and skip < m: a sum needs at most one subtraction.
    let add = |a: u32, b: u32| {
        let sum = a + b;
        sum.min(sum.wrapping_sub(size))
    };
    // Each backend's next position in its permutation, 0..AHEAD steps
    // ahead of it, and AHEAD steps.
    let mut next: Vec<u32> = Vec::with_capacity(order.len());
    let mut steps: Vec<([u32; AHEAD], u32)> = Vec::with_capacity(order.len());
    for i in &order {
        let (offset, skip) = hash::backend(backends[*i].addr, backends[*i].port);
        let (offset, skip) = ((offset % u64::from(size)) as u32, (skip % u64::from(size - 1) + 1) as u32);
        let mut ahead = [0; AHEAD];
        for k in 1..AHEAD {
            ahead[k] = add(ahead[k - 1], skip);
        }
        next.push(offset);
        steps.push((ahead, add(ahead[AHEAD - 1], skip)));
    }
    let mut filled = 0u32;
    'fill: loop {
        for (turn, (ahead, leap)) in steps.iter().enumerate() {
            let mut at = next[turn];
            loop {
                let positions = ahead.map(|k| add(at, k));
                let free = positions
                    .iter()
                    .enumerate()
                    .fold(0u32, |free, (k, p)| free | u32::from(table[*p as usize] == EMPTY) << k);
                if free != 0 {
                    let claimed = positions[free.trailing_zeros() as usize];
                    table[claimed as usize] = order[turn] as u16;
                    next[turn] = add(claimed, ahead[1 % AHEAD]);
                    break;
                }
                at = add(at, *leap);
            }
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
}

/// Max share / min share - 1 of table entries over `backends` backends.
pub fn imbalance(table: &[u16], backends: usize) -> f64 {
    let mut owned = vec![0u64; backends];
    for slot in table {
        owned[usize::from(*slot)] += 1;
    }
    let (max, min) = (owned.iter().max().copied().unwrap_or(0), owned.iter().min().copied().unwrap_or(0));
    if min == 0 { f64::INFINITY } else { max as f64 / min as f64 - 1.0 }
}

/// The fraction of flows whose backend changes from one table to the other,
/// over a fixed sample of 100 000 flow hashes (placed as the datapath places
/// them, `hash::reduce`, so the tables may differ in size). Backends are compared by address and port.
pub fn disruption<A: WireAddr>(
    before: &[u16],
    before_backends: &[Backend<A>],
    after: &[u16],
    after_backends: &[Backend<A>],
) -> f64 {
    const SAMPLE: u64 = 100_000;
    let owner = |table: &[u16], backends: &[Backend<A>], hash: u64| {
        let backend = backends[usize::from(table[hash::reduce((hash >> 32) as u32, table.len() as u32) as usize])];
        (backend.addr, backend.port)
    };
    let moved = (0..SAMPLE)
        .map(hash::mix64)
        .filter(|h| owner(before, before_backends, *h) != owner(after, after_backends, *h))
        .count();
    moved as f64 / SAMPLE as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::wire;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n as u32)
            .map(|i| Backend { addr: wire::addr([10, 244, (i >> 8) as u8, i as u8]), port: wire::port(8080), flags: 0 })
            .collect()
    }

    /// The claiming loop as the paper writes it, one position at a time.
    fn reference(backends: &[Backend], size: u32) -> Vec<u16> {
        let m = u64::from(size);
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by_key(|i| (backends[*i].addr.ip(), backends[*i].port.to_be()));
        let mut walks: Vec<(u64, u64)> = order
            .iter()
            .map(|i| {
                let (offset, skip) = hash::backend(backends[*i].addr, backends[*i].port);
                (offset % m, skip % (m - 1) + 1)
            })
            .collect();
        let mut table = vec![u16::MAX; size as usize];
        let mut filled = 0;
        'fill: loop {
            for (turn, walk) in walks.iter_mut().enumerate() {
                while table[walk.0 as usize] != u16::MAX {
                    walk.0 = (walk.0 + walk.1) % m;
                }
                table[walk.0 as usize] = order[turn] as u16;
                walk.0 = (walk.0 + walk.1) % m;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        table
    }

    #[test]
    fn the_table_is_the_one_of_the_papers_claiming_loop() {
        for n in [1, 2, 3, 7, 10, 33, 100, 1000] {
            let size = table_size(n);
            assert_eq!(build(&backends(n), size), reference(&backends(n), size), "{n} backends");
            assert_eq!(build(&backends(n), 101), reference(&backends(n), 101), "{n} backends, 101 entries");
        }
    }

    #[test]
    fn table_sizes_are_ascending_primes_with_room_to_grow() {
        let is_prime = |n: u32| n > 1 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        assert!(TABLE_SIZES.iter().all(|m| is_prime(*m)), "{:?}", TABLE_SIZES.iter().find(|m| !is_prime(**m)));
        assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(table_size(0), 0);
        assert_eq!(table_size(3), 3001, "a 3-backend service does not pay for 131071 entries");
        for n in 1..=131 {
            let m = table_size(n);
            assert!(m as usize >= 1000 * n, "{n} backends: {m}");
            let smaller = TABLE_SIZES.iter().take_while(|s| **s < m).last();
            assert!(smaller.is_none_or(|s| (*s as usize) < 1000 * n), "{n} backends: {m} is not the smallest");
        }
        assert_eq!(table_size(5000), 131_071);
    }

    #[test]
    fn a_table_keeps_its_size_until_the_backends_double_or_shrink_to_a_quarter() {
        let m = table_size(10);
        assert_eq!(m, 10007);
        for n in 3..=20 {
            assert_eq!(resized(m, n), m, "{n} backends");
        }
        assert_eq!(resized(m, 21), table_size(21), "grown past 500 entries each");
        assert_eq!(resized(m, 2), table_size(2), "shrunk past 4 000 entries each");
        assert_eq!(resized(131_071, 2000), 131_071, "the largest size stays");
        assert_eq!(resized(m, 0), 0);
    }

    #[test]
    fn every_backend_owns_an_equal_share_within_one_percent() {
        // The smallest table a frontend keeps: 500 entries per backend
        // (100 per backend, the bound, for 1 000 backends).
        for n in [1, 3, 10, 100, 1000] {
            let size = resized(TABLE_SIZES.iter().copied().find(|m| *m as usize >= 500 * n).unwrap_or(131_071), n);
            let table = build(&backends(n), size);
            assert_eq!(table.len(), size as usize);
            let (floor, ceil) = (size as usize / n, (size as usize).div_ceil(n));
            let mut owned = vec![0usize; n];
            table.iter().for_each(|s| owned[usize::from(*s)] += 1);
            assert!(owned.iter().all(|o| (floor..=ceil).contains(o)), "{n} backends: {owned:?}");
            assert!(imbalance(&table, n) <= 0.01 + 1e-9, "{n}: {}", imbalance(&table, n));
        }
    }

    #[test]
    fn the_owner_of_each_entry_does_not_depend_on_the_order_of_backends() {
        let forward = backends(37);
        let mut shuffled = forward.clone();
        shuffled.reverse();
        shuffled.swap(3, 20);
        let size = table_size(37);
        let (a, b) = (build(&forward, size), build(&shuffled, size));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(forward[usize::from(*x)], shuffled[usize::from(*y)]);
        }
        assert_eq!(build(&forward, size), a, "deterministic");
    }

    #[test]
    fn removing_or_adding_one_backend_moves_about_one_nth_of_the_flows() {
        for n in [3, 10, 100] {
            let all = backends(n + 1);
            let (current, fewer, more) = (&all[..n], &all[..n - 1], &all[..]);
            let size = table_size(n);
            let table = build(current, size);
            let removed = disruption(&table, current, &build(fewer, resized(size, n - 1)), fewer);
            let added = disruption(&table, current, &build(more, resized(size, n + 1)), more);
            // Ideally the one leaving takes its 1/N along, the one joining
            // takes 1/(N+1) from the others.
            assert!((removed - 1.0 / n as f64).abs() <= 0.01, "{n}: removing one moved {removed}");
            assert!((added - 1.0 / (n + 1) as f64).abs() <= 0.01, "{n}: adding one moved {added}");
        }
    }

    #[test]
    fn removing_a_backend_moves_its_own_flows_and_few_others() {
        let all = backends(100);
        let size = table_size(100);
        let before = build(&all, size);
        let gone = all[42];
        let rest: Vec<Backend> = all.iter().copied().filter(|b| *b != gone).collect();
        let after = build(&rest, size);
        let (mut own, mut others) = (0, 0);
        for (b, a) in before.iter().zip(&after) {
            let (was, is) = (all[usize::from(*b)], rest[usize::from(*a)]);
            if was == gone {
                own += 1;
            } else if was != is {
                others += 1;
            }
        }
        // Measured at M = 100003: its 1 000 entries, and 388 (0.39%) of the others.
        assert_eq!(own, 1000);
        assert!(others * 100 <= before.len() - own, "{others} entries of other backends moved");
    }
}
