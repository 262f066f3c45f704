//! Hash maps keyed by small integer ids: the device's contexts, resources and fence timelines,
//! and each context's items.
//!
//! std's default hasher (SipHash-1-3) cost 7–10 % of the daemon's instructions per request on
//! these maps. [`IdHasher`] is a multiply-add-shift hash over one 64-bit word followed by a fixed
//! mixing step, about a dozen instructions per lookup, keyed at random per map.
//!
//! # Why random keys (hash flooding)
//!
//! Most of these keys are chosen by the guest (context and resource ids, the context half of a
//! fence timeline), and the guest is hostile. With a fixed hash function (FxHash and the like)
//! it could pick ids that all land in one bucket with one control tag, and every lookup would
//! compare against every entry: the maps are bounded (`Limits`: 1024 contexts, 65536 resources,
//! 16384 attached per context; timelines exist only for live contexts; `MAX_ITEMS`, 1024 items
//! per context), so that is at worst O(n) per lookup, but with 65536 resources it is ~65536 key
//! comparisons per request and ~2·10⁹ to fill the table: a cheap way for a guest to burn the
//! daemon's CPU.
//!
//! So each map draws two random 128-bit keys `a` and `b` from std's `RandomState` (the same
//! source SipHash's keys come from: `getrandom` once per thread) and hashes a key `x` of at
//! most 64 bits as the high 64 bits of `a·x + b mod 2¹²⁸`. That is Dietzfelbinger's
//! multiply-add-shift family, which is strongly universal: for any two distinct keys fixed
//! without knowing `a` and `b`, any k bits of their hashes (the low bits hashbrown takes for the
//! bucket, the top 7 for the tag) are independent and uniform, so they collide with
//! probability 2⁻ᵏ. The guest never sees a hash value; it sees timing, and a map's iteration
//! order only in the order of the fences completed when the daemon shuts down. So it cannot aim
//! collisions short of recovering 256 random bits from timing; and if it somehow did, the bound
//! above (O(n) per lookup, n ≤ 65536) still holds. It is not a cryptographic MAC and is not
//! meant for keys whose hashes an attacker can observe.
//!
//! Universality bounds the collisions *expected* over the keys; for one particular `a`, the
//! hashes of an arithmetic progression of ids (1, 2, 3…, as guests allocate them) lie on a
//! lattice, and for about 1 map in 100 they crowd into fewer than 500 of 4096 buckets
//! (measured: in 1 of 2000 maps, 4096 sequential ids filled 12 buckets). A fixed bijection applied after
//! the multiply keeps the guarantee above (distinct words stay distinct and uniform) and breaks
//! the lattice: `finish` ends with xor-shift, multiply by 2⁶⁴/φ, xor-shift, after which the
//! same measurement matches a random function (every one of 2000 maps filled 2500–2600
//! buckets, for strides 1, 3, 2¹² and 2²⁰; the `spread` tests below check this).
//!
//! Only keys of at most 64 bits in total are hashed exactly (`u32`, `(u32, u8)`: the integer
//! writes are packed into one word without loss). Wider keys would be folded into 64 bits,
//! which keeps maps correct but loses the guarantee; debug builds assert against them.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};

/// A `HashMap` keyed by ids, hashed with [`IdHasher`]. Create with `IdMap::default()`.
pub type IdMap<K, V> = HashMap<K, V, IdHashBuilder>;

/// A `HashSet` of ids, hashed with [`IdHasher`]. Create with `IdSet::default()`.
pub type IdSet<K> = HashSet<K, IdHashBuilder>;

/// The random keys of one map; builds its [`IdHasher`]s.
#[derive(Clone)]
pub struct IdHashBuilder {
    a: u128,
    b: u128,
}

impl Default for IdHashBuilder {
    /// Fresh random keys (from `RandomState`, which is seeded once per thread).
    fn default() -> Self {
        let seed = RandomState::new();
        let word = |i: u8| u128::from(seed.hash_one(i));
        IdHashBuilder {
            a: (word(0) << 64) | word(1),
            b: (word(2) << 64) | word(3),
        }
    }
}

impl std::fmt::Debug for IdHashBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs.
        f.write_str("IdHashBuilder")
    }
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;

    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            a: self.a,
            b: self.b,
            word: 0,
            bits: 0,
        }
    }
}

/// Hashes one key of at most 64 bits: see the module documentation.
pub struct IdHasher {
    a: u128,
    b: u128,
    /// The key's integer writes packed together (`u32` then `u8`: `id << 8 | ring`).
    word: u64,
    /// Bits written so far (only checked in debug builds).
    bits: u32,
}

impl IdHasher {
    #[inline]
    fn push(&mut self, value: u64, width: u32) {
        self.bits = self.bits.saturating_add(width);
        debug_assert!(self.bits <= 64, "IdHasher hashes keys of at most 64 bits");
        // While at most 64 bits have been written, the word's used bits are all below
        // `64 - width`, so the rotation is a shift and packing loses nothing.
        self.word = self.word.rotate_left(width) ^ value;
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let x = u128::from(self.word);
        let h = (self.a.wrapping_mul(x).wrapping_add(self.b) >> 64) as u64;
        // A bijection of u64 (each step is invertible; the multiplier is odd): see the module
        // documentation for why.
        let h = (h ^ (h >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.push(u64::from_le_bytes(w), 8 * chunk.len() as u32);
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.push(n.into(), u8::BITS);
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.push(n.into(), u16::BITS);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.push(n.into(), u32::BITS);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.push(n, u64::BITS);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.push(n as u64, usize::BITS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_with_guest_style_ids() {
        let mut m: IdMap<u32, u32> = IdMap::default();
        // Sequential ids, ids sharing their low 16 bits, and the extremes.
        let ids: Vec<u32> = (1..=1000)
            .chain((1..=1000).map(|i| i << 16))
            .chain([0, u32::MAX])
            .collect();
        for &id in &ids {
            assert!(m.insert(id, id ^ 0x5a5a).is_none());
        }
        assert_eq!(m.len(), ids.len());
        for &id in &ids {
            assert_eq!(m.get(&id), Some(&(id ^ 0x5a5a)));
        }
        assert!(!m.contains_key(&1001));
        for &id in &ids {
            assert!(m.remove(&id).is_some());
        }
        assert!(m.is_empty());
        let mut s: IdSet<(u32, u8)> = IdSet::default();
        assert!(s.insert((1, 0)));
        assert!(s.insert((0, 1)));
        assert!(s.insert((1, 1)));
        assert!(!s.insert((1, 0)));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn tuple_keys_are_packed_without_loss() {
        let b = IdHashBuilder::default();
        // `(u32, u8)` is hashed as the word `id << 8 | ring`.
        assert_eq!(
            b.hash_one((0x1234_5678u32, 0x9au8)),
            b.hash_one(0x12_3456_789au64)
        );
        assert_eq!(b.hash_one(7u32), b.hash_one(7u64));
        // With a = 2^64 and b = 0 the multiply-add-shift is the identity, and the mixing step
        // is a bijection: distinct words, distinct hashes.
        let id = IdHashBuilder { a: 1 << 64, b: 0 };
        let words = [0u64, 1, 1 << 8, (1 << 8) | 1, u64::MAX];
        let hashes: std::collections::BTreeSet<u64> =
            words.iter().map(|w| id.hash_one(w)).collect();
        assert_eq!(hashes.len(), words.len());
    }

    #[test]
    fn keys_are_random_per_map_and_fixed_within_one() {
        let (x, y) = (IdHashBuilder::default(), IdHashBuilder::default());
        assert_eq!(x.hash_one(42u32), x.hash_one(42u32));
        assert_ne!(
            (0u32..8).map(|i| x.hash_one(i)).collect::<Vec<_>>(),
            (0u32..8).map(|i| y.hash_one(i)).collect::<Vec<_>>()
        );
    }

    /// Buckets of 4096 filled by 4096 ids `0, stride, 2·stride…` in a map with fresh keys.
    fn buckets_filled(stride: u32) -> usize {
        let b = IdHashBuilder::default();
        let mut seen = vec![false; 4096];
        for i in 0..4096u32 {
            seen[(b.hash_one(i.wrapping_mul(stride)) & 4095) as usize] = true;
        }
        seen.iter().filter(|&&s| s).count()
    }

    /// Sequential ids and ids that agree in their low bits spread over the low bits hashbrown
    /// uses as the bucket index as a random function would (about 4096·(1 - 1/e) = 2589 of
    /// 4096), in every map, not just on average: without the mixing step in `finish`, about 1
    /// map in 100 filled fewer than 500 buckets.
    #[test]
    fn spread_of_progressions() {
        for stride in [1, 3, 1 << 12, 1 << 20] {
            for _ in 0..50 {
                let filled = buckets_filled(stride);
                assert!(
                    filled > 2300,
                    "stride {stride:#x}: {filled} of 4096 buckets"
                );
            }
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "at most 64 bits")]
    fn wide_keys_are_refused_in_debug_builds() {
        IdHashBuilder::default().hash_one((1u64, 2u8));
    }
}
