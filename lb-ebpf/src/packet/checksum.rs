//! Incremental Internet checksum updates (RFC 1624): every checksum in
//! XDP, where the kernel's `l3/l4_csum_replace` helpers do not exist, and
//! IPv4's header checksum in TC, which needs no helper to call.
//!
//! All values are 16-bit words exactly as they sit in the packet, read in
//! native order: one's-complement sums do not depend on byte order
//! (RFC 1071 §2(B)), so nothing is swapped.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn halves(v: u32) -> (u32, u32) {
    (v & 0xffff, v >> 16)
}

/// An address whose change a checksum must follow: the sum of its 16-bit
/// words, and of their complements (at most 16 words: no overflow).
pub trait Summed: Copy {
    fn sum(&self) -> u32;
    fn complement_sum(&self) -> u32;
    /// The one's-complement difference the change from `old` to `new`
    /// makes to any sum over it (what the kernel's `csum_diff` gives),
    /// unfolded.
    #[inline(always)]
    fn difference(old: &Self, new: &Self) -> u32 {
        old.complement_sum() + new.sum()
    }
}

impl Summed for u32 {
    #[inline(always)]
    fn sum(&self) -> u32 {
        let (lo, hi) = halves(*self);
        lo + hi
    }
    #[inline(always)]
    fn complement_sum(&self) -> u32 {
        (!*self).sum()
    }
}

impl Summed for [u32; 4] {
    #[inline(always)]
    fn sum(&self) -> u32 {
        self[0].sum() + self[1].sum() + self[2].sum() + self[3].sum()
    }
    #[inline(always)]
    fn complement_sum(&self) -> u32 {
        self[0].complement_sum() + self[1].complement_sum() + self[2].complement_sum() + self[3].complement_sum()
    }
    #[inline(always)]
    fn difference(old: &Self, new: &Self) -> u32 {
        difference6(old, new)
    }
}

/// An IPv6 address's difference, in a BPF function of its own: inlined, its
/// sixteen words spill most of the hook's registers to its stack frame.
#[inline(never)]
fn difference6(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    old.complement_sum() + new.sum()
}

/// The checksum after one address and one 16-bit field changed, computed
/// as HC' = ~(~HC + ~m + m') (RFC 1624 eqn. 3). `old_word`/`new_word` may
/// be equal (0) when only the address changed.
#[inline(always)]
pub fn update<A: Summed>(check: u16, old_addr: A, new_addr: A, old_word: u16, new_word: u16) -> u16 {
    apply(check, A::difference(&old_addr, &new_addr) + word_difference(old_word, new_word))
}

/// `Summed::difference`, for callers that hold the values.
#[inline(always)]
pub fn difference<A: Summed>(old: A, new: A) -> u32 {
    A::difference(&old, &new)
}

/// The checksum after changes that make `difference` to any sum over them
/// (a `difference`, or several added).
#[inline(always)]
pub fn apply(check: u16, difference: u32) -> u16 {
    !fold(u32::from(!check) + difference)
}

/// `difference` of one 16-bit word.
#[inline(always)]
pub fn word_difference(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// The checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn update_word(check: u16, old: u16, new: u16) -> u16 {
    apply(check, word_difference(old, new))
}

/// The UDP variant of `update`: a zero checksum means "none" and stays
/// zero, and a computed zero is sent as all ones (RFC 768).
#[inline(always)]
pub fn update_udp<A: Summed>(check: u16, old_addr: A, new_addr: A, old_port: u16, new_port: u16) -> u16 {
    // Not written as `apply_udp` of the differences: that moved LLVM's
    // output for the ICMPv6 error path into code the verifier refuses.
    if check == 0 {
        return 0;
    }
    match update(check, old_addr, new_addr, old_port, new_port) {
        0 => 0xffff,
        c => c,
    }
}

/// The UDP variant of `apply`, as `update_udp`.
#[inline(always)]
pub fn apply_udp(check: u16, difference: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, difference) {
        0 => 0xffff,
        c => c,
    }
}

/// The full checksum of `data` with `initial` already summed in (for the
/// pseudo-header); used to build and verify test packets.
#[cfg(any(test, feature = "packet-builder"))]
pub fn compute(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial as u64;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_ne_bytes([*a, *b]),
            [a] => u16::from_ne_bytes([*a, 0]),
            _ => unreachable!(),
        };
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer laid out as [addr(4) | word(2) | payload] with its checksum.
    fn buf(addr: [u8; 4], word: [u8; 2]) -> Vec<u8> {
        let mut v = addr.to_vec();
        v.extend_from_slice(&word);
        v.extend_from_slice(b"some payload, odd length");
        v
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let cases = [
            ([10, 96, 0, 10], [0, 80], [10, 0, 1, 2], [0x1f, 0x90]),
            ([255, 255, 255, 255], [255, 255], [0, 0, 0, 0], [0, 0]),
            ([0, 0, 0, 1], [0, 1], [192, 168, 200, 7], [0xff, 0xfe]),
        ];
        for (oa, op, na, np) in cases {
            let before = buf(oa, op);
            let after = buf(na, np);
            let got = update(
                compute(&before, 0),
                u32::from_ne_bytes(oa),
                u32::from_ne_bytes(na),
                u16::from_ne_bytes(op),
                u16::from_ne_bytes(np),
            );
            // 0x0000 and 0xffff are the same one's-complement value.
            let want = compute(&after, 0);
            assert!(got == want || (got ^ want) == 0xffff && (got == 0 || want == 0), "{got:#x} != {want:#x}");
        }
    }

    #[test]
    fn differences_added_together_update_like_one_change_after_another() {
        // Both ends of a packet (two addresses, two ports) changed at once.
        let layout = |a: [u8; 4], p: [u8; 2], b: [u8; 4], q: [u8; 2]| [&a[..], &p, &b, &q, b"odd payload"].concat();
        let old = layout([10, 96, 0, 10], [0, 80], [10, 244, 0, 3], [0xa0, 0x28]);
        let new = layout([10, 244, 0, 3], [0x1f, 0x90], [255, 255, 255, 255], [0, 0]);
        let addr = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let word = |b: &[u8], at: usize| u16::from_ne_bytes(b[at..at + 2].try_into().unwrap());
        let total = difference(addr(&old, 0), addr(&new, 0))
            + difference(addr(&old, 6), addr(&new, 6))
            + word_difference(word(&old, 4), word(&new, 4))
            + word_difference(word(&old, 10), word(&new, 10));
        let (got, want) = (apply(compute(&old, 0), total), compute(&new, 0));
        assert!(got == want || (got ^ want) == 0xffff && (got == 0 || want == 0), "{got:#x} != {want:#x}");
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(update_udp(0, 1, 2, 3, 4), 0);
    }

    #[test]
    fn udp_computed_zero_is_sent_as_all_ones() {
        // Choose new values that make the sum come out as 0xffff (checksum 0).
        let old = 0x1234_5678u32;
        let check = 0x0f0fu16;
        // ~check + ~old(halves) + new(halves) must fold to 0xffff: pick new so
        // that new(halves) == ~(~check + ~old(halves)) + 0xffff.
        let partial = !update(check, old, 0, 0, 0);
        let new = u32::from(!partial);
        assert_eq!(update(check, old, new, 0, 0), 0);
        assert_eq!(update_udp(check, old, new, 0, 0), 0xffff);
    }
}
