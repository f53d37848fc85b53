//! Auto-configuration: what the engine runs with when the builder leaves a knob at its default,
//! and the short calibration that sizes dynamic batches.
//!
//! Runs once, in `build()`, on the calling thread (grad off, on that thread's current stream,
//! synchronised before every reading). The result is reported by
//! [`Engine::config`](super::Engine::config) and in [`EngineStats::config`](super::EngineStats).

use super::config::Batching;
use crate::models::Forward;
use serde::Serialize;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

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
    /// Calibration readings: (samples per batch, median forward time in µs).
    pub calibration: Vec<(usize, f64)>,
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

/// Times `model` on zero inputs of 1, 2, 4, … samples, up to `cap` or until one forward takes
/// longer than [`LATENCY_CAP`]; returns the chosen `max_batch` and the readings. The choice is
/// the smallest size whose throughput reaches [`NEAR_BEST`] of the best measured: past it, a
/// bigger batch buys little throughput and costs latency. One noisy reading cannot stop the
/// search early: every size is measured. Errors (the model fails on zeros, out of memory) end
/// the search at the last size that worked; `None` when even one sample failed.
pub(crate) fn calibrate(model: &dyn Forward, device: Device, specs: &[(Vec<i64>, Kind)], cap: usize) -> Option<(usize, Vec<(usize, f64)>)> {
    let _no_grad = tch::no_grad_guard();
    let stream = crate::stream::Stream::current(device).ok()?;
    let time = |b: usize| -> Option<f64> {
        let xs = specs
            .iter()
            .map(|(shape, kind)| {
                let mut dims = vec![b as i64];
                dims.extend(shape);
                Tensor::f_zeros(dims.as_slice(), (*kind, device))
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let run = || -> Option<f64> {
            let t0 = Instant::now();
            let out = model.run(&xs).ok()?;
            stream.synchronize().ok()?;
            drop(out);
            Some(t0.elapsed().as_secs_f64() * 1e6)
        };
        run()?; // first sight of the shape: kernels chosen, memory cached
        let mut v: Vec<f64> = (0..3).map(|_| run()).collect::<Option<Vec<_>>>()?;
        v.sort_by(f64::total_cmp);
        Some(v[1])
    };
    let mut readings: Vec<(usize, f64)> = Vec::new();
    let mut b = 1usize;
    while b <= cap.max(1) {
        let Some(t) = time(b) else { break };
        readings.push((b, t));
        if t > LATENCY_CAP.as_secs_f64() * 1e6 {
            break;
        }
        b *= 2;
    }
    Some((choose(&readings)?, readings))
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
    use super::choose;

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
}
