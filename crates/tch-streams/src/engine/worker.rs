//! A worker: a dedicated OS thread that owns one stream on one device and serves batches.
//!
//! Invariants: the worker's stream is bound for the thread's whole life (every kernel it
//! launches goes there); grad mode is off on the thread; every request it takes is answered
//! exactly once (a result, an error, or — if the thread dies — `WorkerDied` through the
//! promise's drop), or, when its ticket was dropped before the worker began it, let go without
//! running the model and counted as cancelled. A panic in the model fails only the requests that panic when re-run alone,
//! and the worker then hands its set-aside requests to a fresh replacement thread and exits.
//!
//! On CUDA with results left on the device, a launched batch goes to the worker's completion
//! thread ([`super::completion`]), which waits for it and answers; the worker goes on to the
//! next batch meanwhile. Elsewhere the worker waits (or copies to the host) and answers itself.

use super::batcher::{Batcher, Held};
use super::buckets::{join_padded, Buckets};
use super::completion::{answer, Completer, Launched};
use super::device_cache::WarmUpTurn;
use super::config::{Batching, Output, SampleInputs};
use super::error::EngineError;
use super::events::{distinct, ReadyEvents};
use super::graphs::Runner;
use super::host_ops;
use super::metrics::{Metrics, Stages};
use super::request::Request;
use super::ticket::Outcome;
use crate::models::{Forward, Outputs};
use super::staging::{self, Staging};
use super::thread_caches::ThreadWorkspaces;
use super::threads::{mark_thread, panic_message};
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
    /// The engine's id (see [`mark_thread`](super::threads::mark_thread)).
    pub(crate) engine: u64,
    pub(crate) index: usize,
    pub(crate) device: Device,
    pub(crate) model: Arc<dyn Forward>,
    pub(crate) rx: LaneRx,
    /// Resolved: never `Auto`.
    pub(crate) batching: Batching,
    /// Sizes batches are padded to (empty without dynamic batching).
    pub(crate) buckets: Arc<Buckets>,
    pub(crate) output: Output,
    pub(crate) metrics: Arc<Metrics>,
    /// Per-sample shape and dtype of every input, when all are known: the warm-up inputs.
    pub(crate) warmup: Option<Vec<(Vec<i64>, Kind)>>,
    /// Makes the warm-up inputs (zeros without it).
    pub(crate) samples: Option<SampleInputs>,
    /// Resolved: graphs are used on a CUDA device.
    pub(crate) cuda_graphs: bool,
    pub(crate) use_pool: bool,
    pub(crate) registry: Arc<Mutex<Vec<WorkerThread>>>,
}

/// A started worker thread, and the requests it holds outside any batch (which the engine
/// answers itself if the thread is stuck at a shutdown's deadline).
pub(crate) struct WorkerThread {
    pub(crate) handle: JoinHandle<()>,
    pub(crate) held: Arc<Held>,
}

/// Starts a worker thread; it reports its index with its bound stream (or why it could not
/// start) on `ready`. Reports arrive in whatever order the workers start.
pub(crate) fn spawn(
    spec: WorkerSpec,
    inherited: Vec<Request>,
    ready: Option<Sender<(usize, Result<Stream, String>)>>,
) -> std::io::Result<WorkerThread> {
    // Alive from now until the thread ends: the lane is never without a counted worker between
    // a dying worker and its replacement.
    let live = LiveWorker::new(spec.rx.lane());
    let held = Arc::new(Held::new(inherited, Arc::clone(&spec.metrics)));
    let handle = std::thread::Builder::new().name(format!("tch-streams-worker-{}", spec.index)).spawn({
        let held = Arc::clone(&held);
        move || {
            let _live = live;
            mark_thread(spec.engine);
            run(spec, held, ready)
        }
    })?;
    Ok(WorkerThread { handle, held })
}

fn run(spec: WorkerSpec, held: Arc<Held>, ready: Option<Sender<(usize, Result<Stream, String>)>>) {
    // Start-up (stream, warm-up inputs, warm-up) must not unwind past here: a panic is a start
    // failure, reported like any other.
    let while_serving = ready.is_none();
    let started = catch_unwind(AssertUnwindSafe(|| start(&spec, while_serving)))
        .unwrap_or_else(|p| Err(format!("the worker panicked while starting: {}", panic_message(&*p))));
    let (stream, runner) = match started {
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
    // Declared before the runner's own binding, so it is dropped after the runner (its graphs)
    // and the completer: it frees this thread's cuBLAS workspaces once nothing can use them.
    let _workspaces = ThreadWorkspaces::new(spec.device, stream);
    let mut runner = runner;
    if let Some(tx) = ready {
        let _ = tx.send((spec.index, Ok(stream)));
    }
    let mut batcher = Batcher::new(spec.rx.clone(), spec.batching, Arc::clone(&spec.buckets), Arc::clone(&held));
    // Answers batches while this thread launches the next; dropped (drained and joined) when
    // the worker returns.
    let completer = if spec.output == Output::OnDevice && matches!(spec.device, Device::Cuda(_)) {
        Completer::start(spec.index, spec.engine, Arc::clone(&spec.metrics))
            .map_err(|e| tracing::warn!("worker {}: no completion thread ({e}); answering batches itself", spec.index))
            .ok()
    } else {
        None
    };
    let mut events = ReadyEvents::default();
    let mut staging = Staging::default();
    loop {
        let batch = match held.next_inherited() {
            Some(r) => vec![r],
            None => match batcher.next_batch() {
                Some(b) => b,
                None => return, // queue closed and drained
            },
        };
        if serve(&spec, &stream, &mut runner, &mut staging, &mut events, completer.as_ref(), batch) {
            // A panic: hand what this worker set aside to a replacement and stop.
            spec.metrics.replaced.fetch_add(1, Ordering::Relaxed);
            match spawn(spec.clone(), held.take_all(), None) {
                Ok(h) => spec.registry.lock().push(h),
                Err(e) => tracing::error!("could not replace worker {}: {e}", spec.index),
            }
            return;
        }
    }
}

/// Binds the stream, turns grad off, warms up every bucket size (capturing each as a CUDA graph
/// when graphs are on), so that no request pays a first-shape cost. `while_serving`: a
/// replacement, started while the other workers serve.
fn start(spec: &WorkerSpec, while_serving: bool) -> Result<(Stream, Runner), String> {
    let stream = if spec.use_pool {
        Stream::from_pool(spec.device, Priority::Normal).map_err(|e| e.to_string())?
    } else {
        Stream::default_for(spec.device).map_err(|e| e.to_string())?
    };
    bind_thread(&stream).map_err(|e| e.to_string())?;
    std::mem::forget(tch::no_grad_guard()); // grad mode is per thread; this one never needs it
    host_ops::serial_for_gpu_worker(spec.device);
    let mut runner = Runner::new(spec.model.clone(), spec.cuda_graphs && matches!(spec.device, Device::Cuda(_)));
    if let Some(specs) = &spec.warmup {
        // Largest first: graphs share one memory pool per worker, and the smaller ones then fit
        // in what the largest freed.
        let sizes: Vec<usize> = match spec.buckets.sizes() {
            [] => vec![1],
            b => b.iter().rev().copied().collect(),
        };
        warm_up(&spec.model, &mut runner, specs, spec.samples.as_ref(), &sizes, spec.device, while_serving)?;
        stream.synchronize().map_err(|e| e.to_string())?;
    }
    Ok((stream, runner))
}

/// Runs the model on `sizes` samples of every input in `specs` (in that order; the first size
/// twice: one-time initialisation, then the shape's own first run) on the calling thread's
/// stream, and has `runner` capture each size after its eager run. What a worker does before it
/// serves, and what the start-up trial ([`super::trial`]) does on its threads. A warm-up that
/// captures graphs waits for its turn and gives the device's cached blocks back as it ends
/// (see [`super::device_cache`]), unless `while_serving` (the blocks are then the serving
/// workers' to reuse).
pub(crate) fn warm_up(
    model: &Arc<dyn Forward>,
    runner: &mut Runner,
    specs: &[(Vec<i64>, Kind)],
    samples: Option<&SampleInputs>,
    sizes: &[usize],
    device: Device,
    while_serving: bool,
) -> Result<(), String> {
    let described = || {
        let v: Vec<String> = specs.iter().map(|(s, k)| crate::engine::InputSpec::new(s.clone(), *k).to_string()).collect();
        v.join(", ")
    };
    let which = SampleInputs::name(samples);
    // One capturing warm-up at a time; the eager blocks it leaves are given back as it ends.
    let turn = WarmUpTurn::take(device, runner.captures());
    let _turn = if while_serving { turn.keeping_cache() } else { turn };
    for (k, &rows) in sizes.iter().enumerate() {
        let xs = SampleInputs::make(samples, specs, rows, device).map_err(|e| format!("warm-up inputs of {rows} sample(s): {e}"))?;
        let of = if rows == 1 { String::new() } else { format!(" (a batch of {rows})") };
        for _ in 0..if k == 0 { 2 } else { 1 } {
            let _warm = catch_unwind(AssertUnwindSafe(|| model.run(&xs)))
                .map_err(|p| format!("warm-up with {which} inputs {} panicked: {}{of}", described(), panic_message(&*p)))?
                .map_err(|e| format!("warm-up with {which} inputs {} failed: {e}{of}", described()))?;
        }
        runner.prepare(&xs);
    }
    Ok(())
}

/// Orders the worker's stream after the streams that produced the batch's inputs: one event per
/// distinct producer stream (see [`super::events`]).
fn order(spec: &WorkerSpec, stream: &Stream, events: &mut ReadyEvents, batch: &mut [Request]) {
    let (producers, total) = distinct(batch.iter_mut().flat_map(|r| r.ready.drain(..)));
    if total == 0 {
        return;
    }
    let st = &spec.metrics.stages;
    st.ready_waits.fetch_add(producers.len() as u64, Ordering::Relaxed);
    st.ready_skipped.fetch_add((total - producers.len()) as u64, Ordering::Relaxed);
    for m in &producers {
        if let Err(e) = events.order_after(m, stream, spec.device) {
            // Not ordered on the device: wait for the producer on the host (slower, never wrong).
            tracing::warn!("worker {}: could not order after {} on the device ({e}); waiting on the host", spec.index, m.stream);
            if let Err(e) = m.stream.synchronize() {
                tracing::error!("worker {}: could not wait for {} either: {e}", spec.index, m.stream);
            }
        }
    }
}

/// Serves one batch (less the requests whose caller has gone); returns true if the model
/// panicked.
fn serve(
    spec: &WorkerSpec,
    stream: &Stream,
    runner: &mut Runner,
    staging: &mut Staging,
    events: &mut ReadyEvents,
    completer: Option<&Completer>,
    batch: Vec<Request>,
) -> bool {
    // Callers may have gone while the batch was gathered: their requests are not run.
    let mut batch: Vec<Request> = batch.into_iter().filter_map(Request::live).collect();
    if batch.is_empty() {
        return false;
    }
    let t0 = Instant::now();
    order(spec, stream, events, &mut batch);
    Stages::lap(&spec.metrics.stages.order, t0);
    let inputs: Vec<&[Tensor]> = batch.iter().map(|r| r.inputs.as_slice()).collect();
    let rows: Vec<i64> = batch.iter().map(|r| r.rows).collect();
    let setup = BatchSetup { device: spec.device, buckets: &spec.buckets, output: spec.output, stages: &spec.metrics.stages };
    let attempt = catch_unwind(AssertUnwindSafe(|| run_batch(&setup, stream, runner, staging, &inputs, &rows)));
    let outcomes: Vec<Outcome> = match attempt {
        Ok(Ok(outs)) => outs.into_iter().map(Ok).collect(),
        Ok(Err(e)) if batch.len() == 1 => vec![Err(e)],
        Err(p) if batch.len() == 1 => vec![Err(EngineError::ModelPanicked(panic_message(&*p)))],
        // A batch failed: run each request alone so that only the bad ones fail.
        _ => inputs
            .iter()
            .zip(&rows)
            .map(|(x, r)| match catch_unwind(AssertUnwindSafe(|| run_batch(&setup, stream, runner, staging, &[*x], &[*r]))) {
                Ok(Ok(mut o)) => Ok(o.remove(0)),
                Ok(Err(e)) => Err(e),
                Err(p) => Err(EngineError::ModelPanicked(panic_message(&*p))),
            })
            .collect(),
    };
    drop(inputs);
    let panicked = outcomes.iter().any(|o| matches!(o, Err(EngineError::ModelPanicked(_))));
    // Whatever was launched (also for failed requests) is covered by the event or the wait
    // below before any request, and so any caller's input, is let go.
    if let Some(c) = completer {
        let recorded = c.event(spec.device).and_then(|mut e| e.record(stream).map(|()| e));
        match recorded {
            Ok(event) => {
                c.hand_over(Launched { event, began: t0, requests: batch, outcomes });
                return panicked;
            }
            Err(e) => tracing::warn!("worker {}: no completion event ({e}); waiting for the batch here", spec.index),
        }
    }
    let t1 = Instant::now();
    let outcomes = match stream.synchronize() {
        Ok(()) => outcomes,
        Err(e) => outcomes.into_iter().map(|_| Err(EngineError::Model(format!("the device failed while running the batch: {e}")))).collect(),
    };
    let t2 = Stages::lap(&spec.metrics.stages.complete, t1);
    answer(batch, outcomes, t0, &spec.metrics);
    Stages::lap(&spec.metrics.stages.deliver, t2);
    panicked
}

/// What [`run_batch`] needs of a worker besides its stream, runner and staging. The start-up
/// trial ([`super::trial`]) fills it in too, and so runs its batches exactly as a worker does.
pub(crate) struct BatchSetup<'a> {
    pub(crate) device: Device,
    pub(crate) buckets: &'a Buckets,
    pub(crate) output: Output,
    /// Where the stage times go.
    pub(crate) stages: &'a Stages,
}

/// Joins each input along dim 0, pads to the bucket size, moves them to the device, runs,
/// checks that every output carries the (padded) batch along dim 0, delivers, and splits every
/// output back per request, dropping the padding. Results may still be in the making on the
/// worker's stream (the caller waits for it) unless they were copied to the host.
pub(crate) fn run_batch(
    spec: &BatchSetup<'_>,
    stream: &Stream,
    runner: &mut Runner,
    staging: &mut Staging,
    requests: &[&[Tensor]],
    rows: &[i64],
) -> Result<Vec<Outputs>, EngineError> {
    let torch = |e: tch::TchError| EngineError::Model(crate::models::torch_message(&e));
    let st = spec.stages;
    let t0 = Instant::now();
    let arity = requests[0].len();
    let total: i64 = rows.iter().sum();
    let padded = spec.buckets.fit(total);
    let pad = padded - total;
    if pad > 0 {
        st.padded.fetch_add(pad as u64, Ordering::Relaxed);
    }
    let parts: Vec<Vec<&Tensor>> = (0..arity).map(|i| requests.iter().map(|r| &r[i]).collect()).collect();
    let on_device = parts.iter().flatten().all(|x| x.device() == spec.device);
    // A captured graph of the bucket size takes the parts directly; otherwise join, pad, move.
    let replayed = if on_device { runner.replay_parts(&parts, total, padded)? } else { None };
    let (y, out_rows) = match replayed {
        Some(y) => {
            Stages::lap(&st.forward, t0); // copy-in, replay and copy-out
            (y, total)
        }
        None => {
            // Always the engine's own tensors: the model never sees a caller's (see `join_padded`).
            // Host inputs for a CUDA worker go through its pinned staging (one asynchronous copy
            // per input), unless pinned memory cannot be had.
            let staged = if staging.applies(spec.device, &parts) { staging.stage(&parts, pad, spec.device, stream) } else { None };
            let xs = match staged {
                Some(xs) => xs.map_err(torch)?,
                None => parts.iter().map(|p| join_padded(p, pad, spec.device)).collect::<Result<Vec<_>, _>>().map_err(torch)?,
            };
            let t1 = Stages::lap(&st.assemble, t0);
            let y = runner.forward(&xs)?;
            drop(xs);
            Stages::lap(&st.forward, t1);
            (y, padded)
        }
    };
    let t2 = Instant::now();
    if y.is_empty() {
        return Err(EngineError::Output(format!("the model returned {}; nothing to answer with", y.describe())));
    }
    for (name, t) in y.names().iter().zip(y.tensors()) {
        if t.dim() == 0 || t.size()[0] != out_rows {
            return Err(EngineError::Output(format!(
                "{name} has shape {:?}, but the engine splits outputs along dim 0, which must be the batch ({out_rows} sample(s)); \
                 a model that returns a scalar or reduces over the batch cannot be served per request",
                t.size()
            )));
        }
    }
    let y = match spec.output {
        // Asynchronous, into pinned memory: `serve` synchronises the stream before it answers.
        Output::Cpu => y.try_map(|t| staging::to_host(&t)).map_err(torch)?,
        Output::OnDevice => y,
    };
    let padding = out_rows - total;
    if rows.len() == 1 && padding == 0 {
        Stages::lap(&st.deliver, t2);
        return Ok(vec![y]);
    }
    // Split every output (any padding is the last part, dropped), then regroup per request in
    // the model's structure.
    let mut sizes = rows.to_vec();
    if padding > 0 {
        sizes.push(padding);
    }
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::with_capacity(y.len())).collect();
    for t in y.tensors() {
        for (j, part) in t.f_split_with_sizes(sizes.as_slice(), 0).map_err(torch)?.into_iter().take(rows.len()).enumerate() {
            per_request[j].push(part);
        }
    }
    let out = per_request.into_iter().map(|parts| y.rebuild_like(parts)).collect();
    Stages::lap(&st.deliver, t2);
    Ok(out)
}
