//! A worker: a dedicated OS thread that owns one stream on one device and serves batches.
//!
//! Invariants: the worker's stream is bound for the thread's whole life (every kernel it
//! launches goes there); grad mode is off on the thread; every request it takes is answered
//! exactly once (a result, an error, or — if the thread dies — `WorkerDied` through the
//! promise's drop). A panic in the model fails only the requests that panic when re-run alone,
//! and the worker then hands its set-aside requests to a fresh replacement thread and exits.

use super::batcher::Batcher;
use super::config::{Batching, Output};
use super::error::EngineError;
use super::events::EventPool;
use super::graphs::Runner;
use super::metrics::{LatencyHistogram, Metrics};
use super::request::Request;
use super::ticket::Outcome;
use crate::models::{Forward, Outputs};
use crate::stream::{bind_thread, Priority, Stream};
use super::lanes::{LaneRx, LiveWorker};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Everything a worker needs; cloned for its replacement.
#[derive(Clone)]
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    pub(crate) device: Device,
    pub(crate) model: Arc<dyn Forward>,
    pub(crate) rx: LaneRx,
    pub(crate) batching: Batching,
    pub(crate) output: Output,
    pub(crate) metrics: Arc<Metrics>,
    /// Per-sample shape and dtype of every input, when all are known: the warm-up inputs.
    pub(crate) warmup: Option<Vec<(Vec<i64>, Kind)>>,
    pub(crate) cuda_graphs: bool,
    pub(crate) use_pool: bool,
    pub(crate) registry: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(crate) events: Arc<EventPool>,
}

/// Starts a worker thread; it reports its index with its bound stream (or why it could not
/// start) on `ready`. Reports arrive in whatever order the workers start.
pub(crate) fn spawn(
    spec: WorkerSpec,
    inherited: Vec<Request>,
    ready: Option<Sender<(usize, Result<Stream, String>)>>,
) -> std::io::Result<JoinHandle<()>> {
    // Alive from now until the thread ends: the lane is never without a counted worker between
    // a dying worker and its replacement.
    let live = LiveWorker::new(spec.rx.lane());
    std::thread::Builder::new().name(format!("tch-streams-worker-{}", spec.index)).spawn(move || {
        let _live = live;
        run(spec, inherited, ready)
    })
}

fn run(spec: WorkerSpec, inherited: Vec<Request>, ready: Option<Sender<(usize, Result<Stream, String>)>>) {
    // Start-up (stream, warm-up inputs, warm-up) must not unwind past here: a panic is a start
    // failure, reported like any other.
    let started = catch_unwind(AssertUnwindSafe(|| start(&spec)))
        .unwrap_or_else(|p| Err(format!("the worker panicked while starting: {}", panic_message(&*p))));
    let stream = match started {
        Ok(s) => s,
        Err(e) => {
            match ready {
                // At start-up the builder returns the error: no need to log it once per worker.
                Some(tx) => {
                    tracing::debug!("worker {} on {:?} could not start: {e}", spec.index, spec.device);
                    let _ = tx.send((spec.index, Err(e)));
                }
                None => tracing::error!("replacement worker {} on {:?} could not start: {e}", spec.index, spec.device),
            }
            return; // inherited requests are dropped here: their tickets resolve as WorkerDied
        }
    };
    if let Some(tx) = ready {
        let _ = tx.send((spec.index, Ok(stream)));
    }
    let mut batcher = Batcher::new(spec.rx.clone(), spec.batching);
    let mut runner = Runner::new(spec.model.clone(), spec.cuda_graphs && matches!(spec.device, Device::Cuda(_)));
    let mut queue: std::collections::VecDeque<Request> = inherited.into();
    loop {
        let batch = match queue.pop_front() {
            Some(r) => vec![r],
            None => match batcher.next_batch() {
                Some(b) => b,
                None => return, // queue closed and drained
            },
        };
        if serve(&spec, &stream, &mut runner, batch) {
            // A panic: hand what this worker set aside to a replacement and stop.
            spec.metrics.replaced.fetch_add(1, Ordering::Relaxed);
            let mut rest: Vec<Request> = queue.into_iter().collect();
            rest.extend(batcher.take_aside());
            match spawn(spec.clone(), rest, None) {
                Ok(h) => spec.registry.lock().push(h),
                Err(e) => tracing::error!("could not replace worker {}: {e}", spec.index),
            }
            return;
        }
    }
}

/// Binds the stream, turns grad off, warms up.
fn start(spec: &WorkerSpec) -> Result<Stream, String> {
    let stream = if spec.use_pool {
        Stream::from_pool(spec.device, Priority::Normal).map_err(|e| e.to_string())?
    } else {
        Stream::default_for(spec.device).map_err(|e| e.to_string())?
    };
    bind_thread(&stream).map_err(|e| e.to_string())?;
    std::mem::forget(tch::no_grad_guard()); // grad mode is per thread; this one never needs it
    if let Some(specs) = &spec.warmup {
        let xs = specs
            .iter()
            .map(|(shape, kind)| {
                let mut dims = vec![1];
                dims.extend(shape);
                Tensor::f_zeros(dims.as_slice(), (*kind, spec.device))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("warm-up inputs: {e}"))?;
        let described = || {
            let v: Vec<String> = specs.iter().map(|(s, k)| crate::engine::InputSpec::new(s.clone(), *k).to_string()).collect();
            v.join(", ")
        };
        for _ in 0..2 {
            let _warm = catch_unwind(AssertUnwindSafe(|| spec.model.run(&xs)))
                .map_err(|p| format!("warm-up with zero inputs {} panicked: {}", described(), panic_message(&*p)))?
                .map_err(|e| format!("warm-up with zero inputs {} failed: {e}", described()))?;
        }
        stream.synchronize().map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// Serves one batch; returns true if the model panicked.
fn serve(spec: &WorkerSpec, stream: &Stream, runner: &mut Runner, mut batch: Vec<Request>) -> bool {
    // Inputs produced on the callers' streams: order this worker's stream after them (on the
    // device; the host does not wait). An input on another device is gathered and copied by
    // kernels on that device's current stream, which a wait on this stream does not order: the
    // host waits for its producer instead.
    for r in &mut batch {
        for (device, ready) in r.ready.drain(..) {
            let ordered = if device == spec.device { ready.wait(stream) } else { ready.synchronize() };
            if let Err(e) = ordered {
                tracing::warn!("could not order worker {} after an input's producer: {e}", spec.index);
            }
            spec.events.give_back(device, ready); // its wait is queued or done: safe to re-record
        }
    }
    let inputs: Vec<&[Tensor]> = batch.iter().map(|r| r.inputs.as_slice()).collect();
    let rows: Vec<i64> = batch.iter().map(|r| r.rows).collect();
    let attempt = catch_unwind(AssertUnwindSafe(|| run_batch(spec, stream, runner, &inputs, &rows)));
    let mut outcomes: Vec<Outcome> = match attempt {
        Ok(Ok(outs)) => outs.into_iter().map(Ok).collect(),
        Ok(Err(e)) if batch.len() == 1 => vec![Err(e)],
        Err(p) if batch.len() == 1 => vec![Err(EngineError::ModelPanicked(panic_message(&*p)))],
        // A batch failed: run each request alone so that only the bad ones fail.
        _ => inputs
            .iter()
            .zip(&rows)
            .map(|(x, r)| match catch_unwind(AssertUnwindSafe(|| run_batch(spec, stream, runner, &[*x], &[*r]))) {
                Ok(Ok(mut o)) => Ok(o.remove(0)),
                Ok(Err(e)) => Err(e),
                Err(p) => Err(EngineError::ModelPanicked(panic_message(&*p))),
            })
            .collect(),
    };
    drop(inputs);
    let panicked = outcomes.iter().any(|o| matches!(o, Err(EngineError::ModelPanicked(_))));
    let now = Instant::now();
    let mut latencies = LatencyHistogram::new();
    let (mut ok, mut failed, mut samples) = (0u64, 0u64, 0u64);
    let n = batch.len();
    let mut answers = Vec::with_capacity(n);
    for (req, outcome) in batch.into_iter().zip(outcomes.drain(..)) {
        latencies.record(now.duration_since(req.submitted));
        match &outcome {
            Ok(_) => {
                ok += 1;
                samples += req.rows as u64;
            }
            Err(_) => failed += 1,
        }
        answers.push((req.promise, outcome));
    }
    // Count before answering, so a caller who sees its answer also sees it counted.
    spec.metrics.batch(n, ok, failed, samples, &latencies);
    for (promise, outcome) in answers {
        promise.fulfil(outcome);
    }
    panicked
}

/// Concatenates each input along dim 0, moves them to the device, runs, checks that every
/// output carries the batch along dim 0, delivers, and splits every output back per request.
fn run_batch(
    spec: &WorkerSpec,
    stream: &Stream,
    runner: &mut Runner,
    requests: &[&[Tensor]],
    rows: &[i64],
) -> Result<Vec<Outputs>, EngineError> {
    let torch = |e: tch::TchError| EngineError::Model(crate::models::torch_message(&e));
    let arity = requests[0].len();
    let mut xs = Vec::with_capacity(arity);
    for i in 0..arity {
        let x = if requests.len() == 1 {
            requests[0][i].shallow_clone()
        } else {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r[i]).collect();
            Tensor::f_cat(&parts, 0).map_err(torch)?
        };
        xs.push(if x.device() == spec.device { x } else { x.f_to_device(spec.device).map_err(torch)? });
    }
    let y = runner.forward(&xs)?;
    let total: i64 = rows.iter().sum();
    if y.is_empty() {
        return Err(EngineError::Output(format!("the model returned {}; nothing to answer with", y.describe())));
    }
    for (name, t) in y.names().iter().zip(y.tensors()) {
        if t.dim() == 0 || t.size()[0] != total {
            return Err(EngineError::Output(format!(
                "{name} has shape {:?}, but the engine splits outputs along dim 0, which must be the batch ({total} sample(s)); \
                 a model that returns a scalar or reduces over the batch cannot be served per request",
                t.size()
            )));
        }
    }
    let y = match spec.output {
        Output::Cpu => y.try_map(|t| t.f_to_device(Device::Cpu)).map_err(torch)?,
        Output::OnDevice => {
            stream.synchronize().map_err(|e| EngineError::Model(e.to_string()))?;
            y
        }
    };
    if rows.len() == 1 {
        return Ok(vec![y]);
    }
    // Split every output, then regroup per request in the model's structure.
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::with_capacity(y.len())).collect();
    for t in y.tensors() {
        for (j, part) in t.f_split_with_sizes(rows, 0).map_err(torch)?.into_iter().enumerate() {
            per_request[j].push(part);
        }
    }
    Ok(per_request.into_iter().map(|parts| y.rebuild_like(parts)).collect())
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}
