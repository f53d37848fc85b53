//! Auto-configuration: what the engine runs with when the builder leaves a knob at its default,
//! and the short calibration that sizes dynamic batches.
//!
//! Runs once, in `build()`, on the calling thread (grad off, on that thread's current stream,
//! synchronised before every reading). The result is reported by
//! [`Engine::config`](super::Engine::config) and in [`EngineStats::config`](super::EngineStats).

use super::config::{Batching, SampleInputs};
use crate::models::Forward;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind};

/// Largest `max_batch` (samples) the calibration picks.
pub const AUTO_MAX_BATCH: usize = 1024;

/// Per-batch forward time above which the calibration stops growing the batch (it bounds the
/// latency a request can be charged for its company).
const LATENCY_CAP: Duration = Duration::from_millis(25);

/// The calibration picks the smallest batch whose throughput (samples per second of forward
/// time) reaches this share of the best throughput it measured.
const NEAR_BEST: f64 = 0.9;

/// The configuration an engine runs with, defaults resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineConfig {
    /// Workers started, over all devices.
    pub workers: usize,
    /// Batching as resolved ([`Batching::Auto`] never appears here). Auto-configured:
    /// `max_batch` from the calibration, no wait.
    pub batching: Batching,
    /// Bucket sizes (samples) batches are padded to; empty: no padding.
    pub buckets: Vec<usize>,
    /// Whether workers on CUDA devices capture and replay CUDA graphs.
    pub cuda_graphs: bool,
    /// Whether GPU inputs are taken as complete when submitted (no per-request event).
    pub inputs_ready: bool,
    /// Calibration readings: (samples per batch, fastest of 3 timed forward passes in µs).
    pub calibration: Vec<(usize, f64)>,
    /// Per calibration reading, how noisy its 3 runs were: (slowest - fastest) / fastest.
    pub calibration_spread: Vec<f64>,
    /// Why the calibration stopped before its last size, when a step ran out of time (the
    /// choice is then the best of the sizes measured before).
    pub calibration_stopped: Option<String>,
    /// The memory budget per GPU, in bytes (`None` on the CPU or where it could not be resolved).
    pub memory_budget: Option<i64>,
    /// The estimated peak bytes per GPU, from the calibration's measurements (`None` without
    /// them).
    pub memory_estimate: Option<i64>,
    /// The start-up trial of batching off against batching at the calibrated `max_batch`, on
    /// the engine's own workers (see [`Trial`](super::Trial)), when it ran: `Auto` batching, the
    /// calibration found a `max_batch` of 2 or more. The faster of the two is what the engine runs.
    pub trial: Option<super::Trial>,
    /// How each automatic choice was made, one line each.
    pub reasons: Vec<String>,
}

impl std::fmt::Display for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let batching = match self.batching {
            Batching::Dynamic { max_batch, max_wait } => format!("dynamic (max {max_batch} samples, wait {} us)", max_wait.as_micros()),
            Batching::Off | Batching::Auto => "off".into(),
        };
        write!(
            f,
            "{} worker(s), batching {batching}, buckets {:?}, CUDA graphs {}",
            self.workers,
            self.buckets,
            if self.cuda_graphs { "on" } else { "off" }
        )
    }
}

/// Workers the engine starts on `device` when the builder does not say: 4 per GPU with a stream
/// pool (enough launch threads to keep one GPU busy while others assemble and finish batches),
/// 1 on a GPU without one, 2 for the CPU (whose kernels are already multi-threaded).
pub(crate) fn workers_for(device: Device, has_pool: bool) -> usize {
    match device {
        Device::Cpu => 2,
        _ if has_pool => 4,
        _ => 1,
    }
}

/// What the calibration measured and why it stopped where it did.
pub(crate) struct Calibration {
    /// The chosen `max_batch`.
    pub(crate) max_batch: usize,
    /// (samples per batch, fastest of the timed runs in µs), one per size measured.
    pub(crate) readings: Vec<(usize, f64)>,
    /// Per size, the spread of its timed runs: (slowest - fastest) / fastest.
    pub(crate) spread: Vec<f64>,
    /// Set when a step ran out of time: the size it was measuring, and the limit.
    pub(crate) stopped: Option<(usize, Duration)>,
    /// (samples per batch, device bytes one forward of that size held at its peak, inputs and
    /// outputs included), one per size measured; empty on the CPU or where the allocator cannot
    /// say.
    pub(crate) working: Vec<(usize, i64)>,
}

/// Saturated doublings in a row after which the calibration stops growing the batch: one alone
/// can be a plateau before the next size pays again (a ResNet-18's rate on an H100 grows 8 % per
/// doubling from 32 to 128 samples), two seldom are.
const SATURATED_STOP: usize = 2;

/// Timed runs per size; the reading is the fastest of them (other work on the machine only ever
/// adds time, so the fastest is the nearest to the model's own cost).
const RUNS: usize = 3;

/// Times `model` on inputs of 1, 2, 4, … samples (the builder's sample inputs, else zeros), up
/// to `cap`, and returns the choice, the readings and how noisy they were. The choice is the
/// smallest size whose throughput reaches [`NEAR_BEST`] of the best measured: past it, a bigger
/// batch buys little throughput and costs latency and memory. Sizes stop growing:
/// - after a size over [`LATENCY_CAP`] on every one of its [`RUNS`] runs (one slow run, from
///   other work on the machine, does not stop the search);
/// - after the second size in a row that is [`saturated`]: doubling the batch gained less than
///   the choice rule can use, twice, so the size measured last is at most four times the choice
///   and calibration never holds the memory of batches far larger than the one it picks. One
///   noisy reading decides nothing: a saturated pair of sizes is timed again first, each keeping
///   its fastest run;
/// - after a size whose working memory is over `working_cap` (a larger one could not fit the
///   memory budget).
///
/// Errors (the model fails on the inputs, out of memory) end the search at the last size that
/// worked; `None` when even one sample failed.
///
/// Each size's working memory is the rise of the device's peak allocated bytes over what was
/// allocated before its inputs were made (the device's peak figures are reset for it: anything
/// else measuring peaks on that device sees them reset). The allocator's unused blocks go back
/// to the driver after every size, so that the device holds one size's memory at a time.
///
/// The runs happen on a thread of their own, bound to the caller's current stream; each size
/// (a first run and [`RUNS`] timed ones) has `step_limit`. A size that outlives it (a model stuck
/// at that size) ends the search with the sizes measured so far, and that thread is left behind:
/// a stuck forward cannot be interrupted.
pub(crate) fn calibrate(
    model: Arc<dyn Forward>,
    device: Device,
    specs: &[(Vec<i64>, Kind)],
    samples: Option<&SampleInputs>,
    cap: usize,
    step_limit: Duration,
    working_cap: Option<i64>,
) -> Option<Calibration> {
    let stream = crate::stream::Stream::current(device).ok()?;
    let (specs, samples) = (specs.to_vec(), samples.cloned());
    let (tx, rx) = crossbeam_channel::unbounded::<Step>();
    let sizes: Vec<usize> = std::iter::successors(Some(1usize), |&b| b.checked_mul(2)).take_while(|&b| b <= cap.max(1)).collect();
    let thread = std::thread::Builder::new()
        .name("tch-streams-calibration".into())
        .spawn(move || {
            let _no_grad = tch::no_grad_guard();
            if device != Device::Cpu && crate::stream::bind_thread(&stream).is_err() {
                let _ = tx.send(Step::Failed);
                return;
            }
            // Dropped as the thread ends: frees the cuBLAS workspaces its runs made.
            let _workspaces = super::thread_caches::ThreadWorkspaces::new(device, stream);
            // The device's allocated bytes now, its peak figures restarted from here.
            let mark = || -> Option<i64> {
                stream.synchronize().ok()?;
                let base = crate::stream::memory_stats(device).ok()?.allocated;
                crate::stream::reset_peak_memory(device).ok()?;
                Some(base)
            };
            let time = |b: usize| -> Option<Reading> {
                let base = mark();
                let xs = SampleInputs::make(samples.as_ref(), &specs, b, device).ok()?;
                let run = || -> Option<f64> {
                    let t0 = Instant::now();
                    let out = model.run(&xs).ok()?;
                    stream.synchronize().ok()?;
                    drop(out);
                    Some(t0.elapsed().as_secs_f64() * 1e6)
                };
                run()?; // first sight of the shape: kernels chosen, memory cached
                let mut v: Vec<f64> = (0..RUNS).map(|_| run()).collect::<Option<Vec<_>>>()?;
                v.sort_by(f64::total_cmp);
                drop(xs);
                let working = base.and_then(|base| Some(crate::stream::memory_stats(device).ok()?.peak_allocated - base));
                super::device_cache::give_back(device);
                Some(Reading { size: b, fastest: v[0], slowest: v[RUNS - 1], working })
            };
            let guarded = |b: usize| {
                if tx.send(Step::Timing(b)).is_err() {
                    return None;
                }
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| time(b))).ok().flatten()
            };
            let mut last: Option<Reading> = None;
            let mut weak = 0; // saturated doublings in a row
            for b in sizes {
                let Some(mut r) = guarded(b) else {
                    let _ = tx.send(Step::Failed);
                    return;
                };
                if let Some(prev) = last.filter(|p| saturated(p, &r)) {
                    // Timed again, each keeping its fastest run: one noisy reading decides nothing.
                    let (Some(p2), Some(r2)) = (guarded(prev.size), guarded(b)) else {
                        let _ = tx.send(Step::Failed);
                        return;
                    };
                    let prev = prev.merge(&p2);
                    r = r.merge(&r2);
                    if tx.send(Step::Read(prev)).is_err() {
                        return;
                    }
                    weak = if saturated(&prev, &r) { weak + 1 } else { 0 };
                    if weak >= SATURATED_STOP {
                        let _ = tx.send(Step::Read(r));
                        return;
                    }
                } else {
                    weak = 0;
                }
                let over_memory = r.working.zip(working_cap).is_some_and(|(w, cap)| w > cap);
                if tx.send(Step::Read(r)).is_err() || r.fastest > LATENCY_CAP.as_secs_f64() * 1e6 || over_memory {
                    return;
                }
                last = Some(r);
            }
        })
        .ok()?;
    let mut got: Vec<Reading> = Vec::new();
    let mut stopped = None;
    let mut current = 1;
    loop {
        match rx.recv_timeout(step_limit) {
            Ok(Step::Timing(n)) => current = n,
            Ok(Step::Read(r)) => match got.iter_mut().find(|g| g.size == r.size) {
                Some(g) => *g = r,
                None => got.push(r),
            },
            // The model failed at this size, or the thread ended (its last size read).
            Ok(Step::Failed) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                stopped = Some((current, step_limit));
                break;
            }
        }
    }
    // Unless a size got stuck, the thread is done or about to be (it ends after its last reading):
    // join it, so that the memory of its runs is free before it is given back.
    if stopped.is_none() {
        drop(rx);
        let _ = thread.join();
    }
    let readings: Vec<(usize, f64)> = got.iter().map(|r| (r.size, r.fastest)).collect();
    let spread = got.iter().map(|r| if r.fastest > 0.0 { (r.slowest - r.fastest) / r.fastest } else { 0.0 }).collect();
    let working = got.iter().filter_map(|r| r.working.map(|w| (r.size, w.max(0)))).collect();
    Some(Calibration { max_batch: choose(&readings)?, readings, spread, stopped, working })
}

/// One calibration size's timings (µs) and working memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    size: usize,
    fastest: f64,
    slowest: f64,
    working: Option<i64>,
}

impl Reading {
    /// Two timings of one size as one: the fastest and slowest of both, the larger memory.
    fn merge(&self, other: &Reading) -> Reading {
        Reading {
            size: self.size,
            fastest: self.fastest.min(other.fastest),
            slowest: self.slowest.max(other.slowest),
            working: match (self.working, other.working) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// What the calibration thread tells the planner.
enum Step {
    /// It starts timing this size.
    Timing(usize),
    /// A size's reading (a size timed again replaces its earlier reading).
    Read(Reading),
    /// The model failed (or panicked) at the size last started.
    Failed,
}

/// Whether `cur` (the next size after `prev`) served less than `1 / NEAR_BEST` times `prev`'s
/// samples per µs: then `prev` already reaches [`NEAR_BEST`] of `cur`'s throughput, and a
/// larger size would only be chosen if it gained that back later (which models seldom do once
/// their kernels fill the device), at the cost of its memory.
fn saturated(prev: &Reading, cur: &Reading) -> bool {
    if prev.fastest <= 0.0 || cur.fastest <= 0.0 {
        return false;
    }
    let rate = |r: &Reading| r.size as f64 / r.fastest;
    rate(cur) * NEAR_BEST < rate(prev)
}

/// The smallest size whose samples per µs reach [`NEAR_BEST`] of the best, among readings
/// within [`LATENCY_CAP`].
pub(crate) fn choose(readings: &[(usize, f64)]) -> Option<usize> {
    let cap = LATENCY_CAP.as_secs_f64() * 1e6;
    let within: Vec<(usize, f64)> = readings.iter().copied().filter(|&(_, t)| t <= cap && t > 0.0).collect();
    let rate = |&(b, t): &(usize, f64)| b as f64 / t;
    let best = within.iter().map(rate).fold(f64::NAN, f64::max);
    if within.is_empty() {
        return readings.first().map(|&(b, _)| b);
    }
    within.iter().find(|r| rate(r) >= NEAR_BEST * best).map(|&(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::{choose, saturated, Reading};

    #[test]
    fn the_choice_is_the_smallest_batch_near_the_best_throughput() {
        // Launch-bound until 64, then compute-bound: 512 reaches 90 % of 1024's rate.
        let r = [(1, 90.0), (8, 92.0), (64, 120.0), (128, 200.0), (256, 380.0), (512, 700.0), (1024, 1300.0)];
        assert_eq!(choose(&r), Some(512));
        // One noisy reading in the middle does not stop the search.
        let noisy = [(1, 90.0), (2, 400.0), (4, 95.0), (8, 96.0), (16, 97.0)];
        assert_eq!(choose(&noisy), Some(16));
        // Readings past the latency cap are not candidates.
        let slow = [(1, 1_000.0), (2, 1_500.0), (4, 30_000.0)];
        assert_eq!(choose(&slow), Some(2));
        assert_eq!(choose(&[]), None);
    }

    fn reading(size: usize, fastest: f64) -> Reading {
        Reading { size, fastest, slowest: fastest * 1.1, working: Some(size as i64 * 100) }
    }

    #[test]
    fn a_doubling_that_gains_less_than_the_choice_rule_uses_is_saturated() {
        // 64 -> 128: 1.8x the rate, still growing.
        assert!(!saturated(&reading(64, 100.0), &reading(128, 111.0)));
        // 128 -> 256 at 1.05x the rate: 128 is within 90 % of it.
        assert!(saturated(&reading(128, 200.0), &reading(256, 381.0)));
        // Launch-bound: 1.2x the rate for twice the samples is growth enough.
        assert!(!saturated(&reading(1, 90.0), &reading(2, 150.0)));
        assert!(!saturated(&reading(1, 0.0), &reading(2, 10.0)), "a zero time says nothing");
        // The choice among the readings kept is never larger than half the last size then.
        let (prev, cur) = (reading(128, 200.0), reading(256, 381.0));
        assert_eq!(choose(&[(64, 111.0), (prev.size, prev.fastest), (cur.size, cur.fastest)]), Some(128));
    }

    #[test]
    fn timings_of_one_size_merge_to_the_fastest_and_slowest_and_the_larger_memory() {
        let a = Reading { size: 8, fastest: 10.0, slowest: 30.0, working: Some(5) };
        let b = Reading { size: 8, fastest: 12.0, slowest: 14.0, working: None };
        assert_eq!(a.merge(&b), Reading { size: 8, fastest: 10.0, slowest: 30.0, working: Some(5) });
        let c = Reading { fastest: 9.0, working: Some(7), ..b };
        assert_eq!(a.merge(&c), Reading { size: 8, fastest: 9.0, slowest: 30.0, working: Some(7) });
    }
}
