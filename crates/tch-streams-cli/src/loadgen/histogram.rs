//! [`Latencies`]: a fixed-size latency histogram, so a run of any length holds the same memory.

/// Sub-buckets per power of two: a quantile is within 1/64 (1.6 %) of the true value.
const SUB: usize = 64;
/// Powers of two covered, from 1 µs: up to 2^40 µs (12 days).
const OCTAVES: usize = 40;

/// Request latencies in microseconds, in log-linear buckets (HDR-histogram style): a fixed
/// array, whatever the number of requests.
#[derive(Clone)]
pub struct Latencies {
    counts: Box<[u64]>,
    total: u64,
    sum_us: u128,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies { counts: vec![0; SUB * OCTAVES].into_boxed_slice(), total: 0, sum_us: 0 }
    }
}

fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let octave = 63 - us.leading_zeros() as usize; // floor(log2)
    let sub = if octave >= 6 { ((us >> (octave - 6)) as usize) & (SUB - 1) } else { ((us << (6 - octave)) as usize) & (SUB - 1) };
    (octave * SUB + sub).min(SUB * OCTAVES - 1)
}

/// The lower bound of a bucket, microseconds.
fn lower(index: usize) -> f64 {
    let (octave, sub) = (index / SUB, index % SUB);
    (1u64 << octave) as f64 * (1.0 + sub as f64 / SUB as f64)
}

impl Latencies {
    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.sum_us += u128::from(us);
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The mean, microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.total as f64
        }
    }

    /// The `q` quantile (0 < q <= 1), microseconds: the middle of its bucket (0 when empty).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (lower(i) + lower(i + 1)) / 2.0;
            }
        }
        lower(self.counts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut l = Latencies::default();
        for us in 1..=10_000u64 {
            l.record(us);
        }
        for (q, want) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = l.quantile_us(q);
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(l.count(), 10_000);
        assert!((l.mean_us() - 5000.5).abs() < 1e-9);
        let mut m = Latencies::default();
        m.merge(&l);
        assert_eq!(m.count(), 10_000);
    }

    #[test]
    fn buckets_grow_with_the_value() {
        let mut last = 0;
        for us in 1..100_000u64 {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(lower(b) <= us as f64 && (us as f64) < lower(b + 1), "{us}: [{}, {})", lower(b), lower(b + 1));
            last = b;
        }
    }
}
