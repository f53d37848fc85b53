//! Engine metrics: counters, a latency histogram, and a batch-size histogram.
//!
//! Workers record once per *batch* (one lock per batch, not per request); `stats()` reads a
//! consistent snapshot.

use super::auto::EngineConfig;
use crate::stream::MemoryStats;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Device;

/// Log-linear latency histogram: 16 buckets per power of two of microseconds (≤ 6.25 % error).
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB: u32 = 16;

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        LatencyHistogram { counts: vec![0; (64 * SUB) as usize], total: 0 }
    }

    fn bucket(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros(); // >= 4
        let shift = octave - 4;
        let sub = (us >> shift) as u32 - SUB; // 0..16
        ((octave - 3) * SUB + sub) as usize
    }

    fn upper_bound(bucket: usize) -> u64 {
        let b = bucket as u32;
        if b < SUB {
            return b as u64;
        }
        let octave = b / SUB + 3;
        let sub = b % SUB;
        ((SUB + sub + 1) as u64) << (octave - 4)
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
    }

    /// The latency (µs, bucket upper bound) below which fraction `q` of requests fall.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_bound(i));
            }
        }
        None
    }
}

/// A snapshot of the engine's counters (see [`Engine::stats`](super::Engine::stats)).
///
/// Every submitted request ends in exactly one of `completed`, `failed` and `cancelled`: once
/// the engine is idle (nothing queued or running, e.g. after [`shutdown`](super::Engine::shutdown)),
/// `submitted == completed + failed + cancelled`. While requests are in flight the sum is
/// smaller (and the counters, read one by one, may be a moment apart).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineStats {
    /// Requests accepted by `submit`/`try_submit`/`infer` (including ones refused as invalid).
    pub submitted: u64,
    /// Requests answered with a result.
    pub completed: u64,
    /// Requests answered with an error.
    pub failed: u64,
    /// Requests skipped because their [`Ticket`](super::Ticket) was dropped before a worker began
    /// them: the model never ran for them.
    pub cancelled: u64,
    /// Completed samples (rows along dim 0) per second since the engine was built.
    pub samples_per_s: f64,
    /// Completed requests per second since the engine was built.
    pub requests_per_s: f64,
    /// Latency from submission to answer, microseconds: 50th, 95th, 99th percentile.
    pub latency_us_p50: Option<u64>,
    /// 95th percentile latency, µs.
    pub latency_us_p95: Option<u64>,
    /// 99th percentile latency, µs.
    pub latency_us_p99: Option<u64>,
    /// Time in the queue, µs (submission until a worker began the request's batch): 50th
    /// percentile.
    pub queue_us_p50: Option<u64>,
    /// 99th percentile time in the queue, µs.
    pub queue_us_p99: Option<u64>,
    /// Compute time, µs (the batch's begin until the answer: ordering, assembly, forward and
    /// completion, as every request of the batch sees it): 50th percentile.
    pub compute_us_p50: Option<u64>,
    /// 99th percentile compute time, µs.
    pub compute_us_p99: Option<u64>,
    /// How many batches had each size (requests per batch).
    pub batch_sizes: BTreeMap<usize, u64>,
    /// Workers replaced after a panic.
    pub workers_replaced: u64,
    /// Worker threads left running by a `shutdown_timeout` that expired (stuck in the model).
    pub workers_detached: u64,
    /// Seconds since the engine was built.
    pub elapsed_s: f64,
    /// Where the workers' time went, summed over every batch.
    pub stages: StageStats,
    /// The configuration the engine runs with (defaults resolved).
    pub config: EngineConfig,
    /// Device memory of each GPU the engine runs on (empty on CPU): right after the build and
    /// now, with the device's peak. See [`DeviceMemory`] for what the figures cover.
    pub memory: Vec<DeviceMemory>,
}

/// One device's memory as its caching allocator sees it.
///
/// The figures are the device's, for the whole process: other engines and tensors on the same
/// device count too. `now.peak_*` is the highest value since the process started or the last
/// [`reset_peak_memory`](crate::stream::reset_peak_memory); call that before building the
/// engine to read this engine's peak (start-up, calibration and serving) alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    /// The device, e.g. `cuda:0`.
    pub device: String,
    /// Right after the build: workers started, warmed up, graphs captured, calibration's cached
    /// memory given back.
    pub after_build: MemoryStats,
    /// When the statistics were taken, with the peak figures.
    pub now: MemoryStats,
}

/// Where the workers' time goes: host time per stage summed over every batch (µs), and counts.
/// Divide by `batches` for a per-batch mean.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageStats {
    /// Batches served.
    pub batches: u64,
    /// Ordering a batch after the streams that produced its inputs (an event recorded on each
    /// distinct producer stream, waited for on the device).
    pub order_us: u64,
    /// Producer streams ordered after (one per distinct stream and batch; an idle one needs no
    /// wait and only costs a query).
    pub ready_waits: u64,
    /// Requests whose producer stream another request of the same batch already covered.
    pub ready_skipped: u64,
    /// Joining the requests' inputs, padding to the bucket, moving them to the device.
    pub assemble_us: u64,
    /// The model call as the host sees it: eager kernel launches, or graph copy-in, replay and
    /// copy-out.
    pub forward_us: u64,
    /// Waiting for the device to finish a batch (on the worker's completion thread for CUDA
    /// results left on the device; on the worker itself otherwise).
    pub complete_us: u64,
    /// Splitting the outputs and answering the tickets.
    pub deliver_us: u64,
    /// Padding samples added to reach a bucket size.
    pub padded_samples: u64,
}

/// Stage counters, updated by workers without a lock.
#[derive(Default)]
pub(crate) struct Stages {
    pub(crate) batches: AtomicU64,
    pub(crate) order: AtomicU64,
    pub(crate) ready_waits: AtomicU64,
    pub(crate) ready_skipped: AtomicU64,
    pub(crate) assemble: AtomicU64,
    pub(crate) forward: AtomicU64,
    pub(crate) complete: AtomicU64,
    pub(crate) deliver: AtomicU64,
    pub(crate) padded: AtomicU64,
}

impl Stages {
    /// Adds the time since `since` (ns) to `counter`; returns now, for the next stage.
    pub(crate) fn lap(counter: &AtomicU64, since: Instant) -> Instant {
        let now = Instant::now();
        counter.fetch_add(now.duration_since(since).as_nanos() as u64, Ordering::Relaxed);
        now
    }

    fn snapshot(&self) -> StageStats {
        let us = |c: &AtomicU64| c.load(Ordering::Relaxed) / 1000;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StageStats {
            batches: n(&self.batches),
            order_us: us(&self.order),
            ready_waits: n(&self.ready_waits),
            ready_skipped: n(&self.ready_skipped),
            assemble_us: us(&self.assemble),
            forward_us: us(&self.forward),
            complete_us: us(&self.complete),
            deliver_us: us(&self.deliver),
            padded_samples: n(&self.padded),
        }
    }
}

pub(crate) struct Metrics {
    pub(crate) started: Instant,
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) samples: AtomicU64,
    pub(crate) replaced: AtomicU64,
    pub(crate) detached: AtomicU64,
    pub(crate) stages: Stages,
    pub(crate) config: EngineConfig,
    /// Device memory right after the build, per GPU; set once, when every worker is ready.
    pub(crate) after_build: OnceLock<Vec<(Device, MemoryStats)>>,
    per_batch: Mutex<PerBatch>,
}

/// What every answered batch adds to, under one lock.
struct PerBatch {
    /// Submitted to answered, per request.
    latency: LatencyHistogram,
    /// Submitted to the moment a worker began the request's batch, per request.
    queue: LatencyHistogram,
    /// The batch's begin to its answer (ordering, assembly, forward, completion), per request.
    compute: LatencyHistogram,
    /// Requests per batch → batches.
    sizes: BTreeMap<usize, u64>,
}

/// One answered request's times: (submitted → answered, submitted → batch began, batch began →
/// answered).
pub(crate) type RequestTimes = (Duration, Duration, Duration);

impl Metrics {
    pub(crate) fn new(config: EngineConfig) -> Self {
        Metrics {
            started: Instant::now(),
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
            detached: AtomicU64::new(0),
            stages: Stages::default(),
            config,
            after_build: OnceLock::new(),
            per_batch: Mutex::new(PerBatch {
                latency: LatencyHistogram::new(),
                queue: LatencyHistogram::new(),
                compute: LatencyHistogram::new(),
                sizes: BTreeMap::new(),
            }),
        }
    }

    /// Records one served batch: its size, its outcomes, and each request's times (straight into
    /// the shared histograms under their lock: no histogram is built per batch).
    pub(crate) fn batch(&self, requests: usize, ok: u64, failed: u64, samples: u64, times: &[RequestTimes]) {
        self.completed.fetch_add(ok, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.samples.fetch_add(samples, Ordering::Relaxed);
        let mut g = self.per_batch.lock();
        for &(latency, queue, compute) in times {
            g.latency.record(latency);
            g.queue.record(queue);
            g.compute.record(compute);
        }
        *g.sizes.entry(requests).or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self) -> EngineStats {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let g = self.per_batch.lock();
        let completed = self.completed.load(Ordering::Relaxed);
        EngineStats {
            submitted: self.submitted.load(Ordering::Relaxed),
            completed,
            failed: self.failed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            samples_per_s: self.samples.load(Ordering::Relaxed) as f64 / elapsed,
            requests_per_s: completed as f64 / elapsed,
            latency_us_p50: g.latency.quantile(0.50),
            latency_us_p95: g.latency.quantile(0.95),
            latency_us_p99: g.latency.quantile(0.99),
            queue_us_p50: g.queue.quantile(0.50),
            queue_us_p99: g.queue.quantile(0.99),
            compute_us_p50: g.compute.quantile(0.50),
            compute_us_p99: g.compute.quantile(0.99),
            batch_sizes: g.sizes.clone(),
            workers_replaced: self.replaced.load(Ordering::Relaxed),
            workers_detached: self.detached.load(Ordering::Relaxed),
            elapsed_s: elapsed,
            stages: self.stages.snapshot(),
            config: self.config.clone(),
            memory: self.memory(),
        }
    }

    /// Reads every GPU's figures now (one allocator query each; skipped if the allocator cannot
    /// say) next to those right after the build.
    fn memory(&self) -> Vec<DeviceMemory> {
        let Some(after) = self.after_build.get() else { return Vec::new() };
        after
            .iter()
            .filter_map(|&(device, after_build)| {
                let now = crate::stream::memory_stats(device).ok()?;
                Some(DeviceMemory { device: device_name(device), after_build, now })
            })
            .collect()
    }

    /// Records the device memory of `devices`' GPUs once the engine is built.
    pub(crate) fn record_after_build(&self, devices: &[Device]) {
        let mut gpus: Vec<Device> = devices.iter().copied().filter(|&d| d != Device::Cpu).collect();
        gpus.sort_by_key(|d| format!("{d:?}"));
        gpus.dedup();
        let figures = gpus.into_iter().filter_map(|d| crate::stream::memory_stats(d).ok().map(|m| (d, m))).collect();
        let _ = self.after_build.set(figures);
    }
}

/// `cuda:0`, `mps`, as users write devices.
fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_cover_values() {
        let mut last = 0;
        for us in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 123_456, 10_000_000] {
            let b = LatencyHistogram::bucket(us);
            assert!(b >= last, "bucket order at {us}");
            last = b;
            let ub = LatencyHistogram::upper_bound(b);
            assert!(ub >= us, "upper bound {ub} < value {us}");
            assert!(ub as f64 <= (us as f64) * 1.0625 + 1.0, "bound {ub} too loose for {us}");
        }
    }

    #[test]
    fn quantiles_follow_the_distribution() {
        let mut h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((500..=532).contains(&p50), "{p50}");
        assert!((990..=1056).contains(&p99), "{p99}");
        assert_eq!(LatencyHistogram::new().quantile(0.5), None);
    }
}
