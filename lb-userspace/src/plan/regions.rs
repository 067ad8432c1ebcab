//! Space for the frontends' Maglev tables and backend lists inside the
//! arrays that hold them all (`LB_MAGLEV`, `LB_BACKEND_SLOTS`): first-fit
//! regions, with freed regions held back until the next reconcile. A
//! frontend switches to a new table or list by one map write; a packet that
//! read the old frontend value just before may still read the old one, so
//! that region must not be rewritten in the same pass.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    /// Free spans: start -> length.
    free: BTreeMap<u32, u32>,
    /// Freed in this pass; free from the next one.
    held: Vec<(u32, u32)>,
}

impl Regions {
    /// `capacity` elements, with `used` (start, length) spans taken.
    pub fn new(capacity: u32, used: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut used: Vec<(u32, u32)> = used.into_iter().filter(|(_, len)| *len > 0).collect();
        used.sort();
        let mut free = BTreeMap::new();
        let mut cursor = 0u32;
        for (start, len) in used {
            if start > cursor {
                free.insert(cursor, start - cursor);
            }
            cursor = cursor.max(start.saturating_add(len));
        }
        if capacity > cursor {
            free.insert(cursor, capacity - cursor);
        }
        Self { free, held: Vec::new() }
    }

    /// The start of `len` free elements, or None when no span is that long.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        let (&start, &span) = self.free.iter().find(|(_, span)| **span >= len)?;
        self.free.remove(&start);
        if span > len {
            self.free.insert(start + len, span - len);
        }
        Some(start)
    }

    /// Gives a span back; it can be allocated again after [`Regions::release_held`].
    pub fn free_later(&mut self, start: u32, len: u32) {
        if len > 0 {
            self.held.push((start, len));
        }
    }

    /// Makes the spans freed since the last call allocatable.
    pub fn release_held(&mut self) {
        for (start, len) in std::mem::take(&mut self.held) {
            self.give_back(start, len);
        }
    }

    /// Makes a span allocatable at once, merging it with its neighbours:
    /// for a span allocated in this pass that nothing names yet.
    pub fn give_back(&mut self, start: u32, len: u32) {
        let (mut start, mut len) = (start, len);
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.free.remove(&prev);
            (start, len) = (prev, prev_len + len);
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
    }

    /// The longest span that can be allocated now.
    pub fn largest_free(&self) -> u32 {
        self.free.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_spans_stay_taken_and_the_gaps_are_free() {
        let mut r = Regions::new(100, [(10, 5), (40, 20)]);
        assert_eq!(r.allocate(10), Some(0));
        assert_eq!(r.allocate(10), Some(15), "the gap between the adopted spans");
        assert_eq!(r.allocate(30), Some(60));
        assert_eq!(r.largest_free(), 15);
        assert_eq!(r.allocate(16), None);
    }

    #[test]
    fn a_freed_span_is_reused_only_after_release_and_merges_with_its_neighbours() {
        let mut r = Regions::new(30, []);
        let (a, b, c) = (r.allocate(10).unwrap(), r.allocate(10).unwrap(), r.allocate(10).unwrap());
        r.free_later(b, 10);
        assert_eq!(r.allocate(10), None, "held back until the next pass");
        r.release_held();
        r.free_later(a, 10);
        r.free_later(c, 10);
        r.release_held();
        assert_eq!(r.largest_free(), 30);
        assert_eq!(r.allocate(30), Some(0));
    }
}
