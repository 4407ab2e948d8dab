//! Keys: which bytes a key index becomes, and how a workload picks key indexes.
//!
//! A cluster's bootstrap splits the key space evenly on the first two key bytes
//! (`flotilla_region::node::even_boundaries`), so a key generator that wants every region
//! to share the load must spread those two bytes. [`key_bytes`] puts a 16-bit hash of the
//! index first, then the index in decimal: index → key is fixed (the same on every run and
//! for every system), consecutive indexes land in unrelated regions, and a key is readable
//! enough to find in a log.

use bytes::Bytes;
use rand::Rng;

/// Length of every key [`key_bytes`] makes: 2 hash bytes, `k`, 10 decimal digits.
pub const KEY_BYTES: usize = 13;

/// Largest key space: indexes are printed with 10 digits.
pub const KEYS_MAX: u64 = 10_000_000_000;

/// Skew of the `hot` workload's Zipfian choice: YCSB's default, where the hottest 1 % of
/// the keys take about half of the operations over a million keys.
pub const ZIPF_THETA: f64 = 0.99;

/// A 64-bit mix of `x` (SplitMix64's finaliser): consecutive inputs give unrelated outputs.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of index `i` (< [`KEYS_MAX`]): two bytes of `mix64(i)`, then `k` and `i` in ten
/// decimal digits.
pub fn key_bytes(i: u64) -> Bytes {
    assert!(i < KEYS_MAX, "key index {i} is past KEYS_MAX");
    let h = (mix64(i) >> 48) as u16;
    let mut k = Vec::with_capacity(KEY_BYTES);
    k.extend_from_slice(&h.to_be_bytes());
    k.push(b'k');
    k.extend_from_slice(format!("{i:010}").as_bytes());
    debug_assert_eq!(k.len(), KEY_BYTES);
    Bytes::from(k)
}

/// Zipfian choice of an index in `0..n` (rank 0 the most frequent), by the method of Gray
/// et al., "Quickly generating billion-record synthetic databases" (SIGMOD 1994), as YCSB
/// uses it. Setting up sums `n` terms once; each draw is O(1).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// A Zipfian distribution over `0..n` with skew `theta` (0 < theta < 1).
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n >= 1, "a Zipfian choice needs at least one key");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(n.min(2));
        let eta = if n <= 1 {
            0.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// The probability of rank 0 (the hottest key).
    pub fn p_hottest(&self) -> f64 {
        1.0 / self.zetan
    }

    /// One rank in `0..n`.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

/// How a stream of operations picks key indexes.
#[derive(Debug, Clone)]
pub enum KeyChoice {
    /// Every index of `0..n` equally likely.
    Uniform {
        /// Key space size.
        n: u64,
    },
    /// Zipfian over ranks; rank r is the index `mix64(r) % n`, so the hot keys are spread
    /// over the key space (and regions) rather than packed at its start.
    Zipfian(Zipf),
    /// Each index of `next..end` once, in order (loading data before a read workload).
    Sequence {
        /// The next index.
        next: u64,
        /// One past the last.
        end: u64,
    },
}

impl KeyChoice {
    /// The next index, or `None` when a sequence is exhausted.
    pub fn next(&mut self, rng: &mut impl Rng) -> Option<u64> {
        match self {
            KeyChoice::Uniform { n } => Some(rng.gen_range(0..*n)),
            KeyChoice::Zipfian(z) => Some(mix64(z.sample(rng)) % z.n),
            KeyChoice::Sequence { next, end } => {
                if next < end {
                    *next += 1;
                    Some(*next - 1)
                } else {
                    None
                }
            }
        }
    }

    /// Stream `stream` of `streams`' share of `0..n`: contiguous, sizes differing by at most
    /// one, together covering every index exactly once.
    pub fn sequence_share(n: u64, stream: u64, streams: u64) -> KeyChoice {
        assert!(stream < streams, "stream {stream} of {streams}");
        let start = n * stream / streams;
        let end = n * (stream + 1) / streams;
        KeyChoice::Sequence { next: start, end }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_region::node::even_boundaries;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The region (index into the bootstrap's boundaries) holding `key`.
    fn region_of(boundaries: &[Bytes], key: &[u8]) -> usize {
        boundaries.partition_point(|b| b.as_ref() <= key)
    }

    #[test]
    fn keys_have_a_fixed_shape_and_differ() {
        let a = key_bytes(0);
        let b = key_bytes(1);
        assert_eq!(a.len(), KEY_BYTES);
        assert_eq!(&a[2..], b"k0000000000");
        assert_eq!(&b[2..], b"k0000000001");
        assert_ne!(a[..2], b[..2], "neighbours should start differently");
        assert_eq!(key_bytes(123), key_bytes(123), "index to key is fixed");
    }

    #[test]
    fn uniform_keys_reach_every_region_evenly() {
        for regions in [4usize, 64, 256] {
            let boundaries = even_boundaries(regions);
            let mut counts = vec![0u64; regions];
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let mut choice = KeyChoice::Uniform { n: 1_000_000 };
            let samples = 200 * regions as u64;
            for _ in 0..samples {
                let i = choice.next(&mut rng).unwrap();
                counts[region_of(&boundaries, &key_bytes(i))] += 1;
            }
            let mean = samples as f64 / regions as f64;
            for (r, &c) in counts.iter().enumerate() {
                // 200 expected per region: ±40 % is > 5 standard deviations.
                assert!(
                    (c as f64 - mean).abs() < 0.4 * mean,
                    "{regions} regions: region {r} got {c}, mean {mean}"
                );
            }
        }
    }

    #[test]
    fn sequential_indexes_still_spread_over_regions() {
        // The load phase writes indexes in order; its first keys must not all hit one region.
        let boundaries = even_boundaries(64);
        let hit: std::collections::BTreeSet<usize> = (0..640)
            .map(|i| region_of(&boundaries, &key_bytes(i)))
            .collect();
        assert!(
            hit.len() > 55,
            "640 consecutive keys reached {} of 64",
            hit.len()
        );
    }

    #[test]
    fn zipf_is_skewed_like_ycsb() {
        let z = Zipf::new(100_000, ZIPF_THETA);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws = 200_000;
        let mut rank0 = 0u64;
        let mut top1pct = 0u64;
        for _ in 0..draws {
            let r = z.sample(&mut rng);
            assert!(r < 100_000);
            if r == 0 {
                rank0 += 1;
            }
            if r < 1000 {
                top1pct += 1;
            }
        }
        let p0 = rank0 as f64 / draws as f64;
        assert!(
            (p0 - z.p_hottest()).abs() < 0.2 * z.p_hottest(),
            "rank 0 drawn {p0}, expected {}",
            z.p_hottest()
        );
        let share = top1pct as f64 / draws as f64;
        assert!(share > 0.45 && share < 0.75, "top 1 % took {share}");
    }

    #[test]
    fn zipf_with_tiny_key_spaces_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1u64, 2, 3] {
            let z = Zipf::new(n, ZIPF_THETA);
            for _ in 0..1000 {
                assert!(z.sample(&mut rng) < n);
            }
        }
    }

    #[test]
    fn sequence_shares_cover_each_index_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen = Vec::new();
        for s in 0..7 {
            let mut c = KeyChoice::sequence_share(100, s, 7);
            while let Some(i) = c.next(&mut rng) {
                seen.push(i);
            }
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }
}
