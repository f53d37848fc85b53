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

/// Doubling the batch must cost less than this factor in time (so more than about 11 % more
/// throughput per doubling) for the calibration to keep growing it.
const WORTH_DOUBLING: f64 = 1.8;

/// The configuration an engine runs with, defaults resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineConfig {
    /// Workers started, over all devices.
    pub workers: usize,
    /// Batching as resolved ([`Batching::Auto`] never appears here).
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

/// Times `model` on zero inputs of 1, 2, 4, … samples; returns the chosen `max_batch` and the
/// readings. The batch grows while doubling it costs less than [`WORTH_DOUBLING`] times the
/// time, the forward stays under [`LATENCY_CAP`], and the size stays within `cap`. Errors (the
/// model fails on zeros, out of memory) stop the calibration at the last size that worked;
/// `None` when even one sample failed.
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
    let mut readings = vec![(1usize, time(1)?)];
    let mut chosen = 1usize;
    while chosen * 2 <= cap {
        let (_, t) = readings[readings.len() - 1];
        let Some(t2) = time(chosen * 2) else { break };
        readings.push((chosen * 2, t2));
        if t2 > t * WORTH_DOUBLING || t2 > LATENCY_CAP.as_secs_f64() * 1e6 {
            break;
        }
        chosen *= 2;
    }
    Some((chosen, readings))
}
