//! [`Engine`]: intake, worker start-up, shutdown, and statistics.

use super::auto::{self, EngineConfig};
use super::buckets::Buckets;
use super::config::{Batching, EngineBuilder, Replicas, MAX_BUCKET_OVER_BATCH, MAX_WARMUP_ELEMENTS, MAX_WORKERS};
use super::independence;
use super::thread_caches;
use super::error::EngineError;
use super::metrics::{EngineStats, Metrics};
use super::lanes::Lanes;
use super::request::{Admission, Request};
use super::ticket::{counted_pair, Ticket};
use super::worker::{self, WorkerSpec, WorkerThread};
use crate::models::{Forward, Inputs, Model, Outputs};
use crate::runtime::{check_capability, Capability, Report};
use crate::stream::{Priority, Stream};
use crate::Error;
use super::lanes::SendError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// One worker as started: its index, device and the stream it bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker index (0-based).
    pub index: usize,
    /// The device it serves.
    pub device: Device,
    /// The stream it bound for its life.
    pub stream: Stream,
}

/// A multi-threaded inference engine: N workers each owning a stream on a device, fed by one
/// queue per device (an input already on a GPU is served by that GPU's workers; a host input by
/// the device with the fewest requests waiting).
///
/// `Engine` is `Send + Sync`: share it (e.g. in an `Arc`) between any number of client threads.
/// Each request is answered exactly once. [`shutdown`](Engine::shutdown) (or drop) stops intake,
/// lets workers finish every accepted request, and fails explicitly any request left behind by a
/// dead worker.
///
/// ```
/// use tch_streams::engine::Engine;
/// use tch_streams::models::{Builtin, Model};
/// let engine = Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![tch::Device::Cpu]).workers(2).build()?;
/// let outs = engine.infer_many((0..4).map(|_| tch::Tensor::ones([1, 512], (tch::Kind::Float, tch::Device::Cpu))).collect());
/// assert!(outs.iter().all(|o| o.as_ref().is_ok_and(|t| t.size() == vec![1, 512])));
/// engine.shutdown();
/// assert_eq!(engine.stats().completed, 4);
/// # Ok::<(), tch_streams::engine::EngineError>(())
/// ```
pub struct Engine {
    /// Tells this engine's threads apart from others (see [`worker::on_engine_thread`]).
    id: u64,
    lanes: Lanes,
    registry: Arc<Mutex<Vec<WorkerThread>>>,
    metrics: Arc<Metrics>,
    spec: Admission,
    workers: Vec<WorkerInfo>,
    inputs_ready: bool,
    /// Serialises shutdowns: a second concurrent call waits for the first to finish.
    shutting_down: Mutex<()>,
}

/// The next engine's id (0 is no engine).
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);

/// Streams in the patched MPS pool (ids 1-32, as upstream's).
const MPS_POOL_STREAMS: usize = 32;
/// Whether this build has the CUDA graph code (compiled in when the build found the CUDA
/// headers beside a CUDA libtorch; see the crate's build script).
pub const CUDA_GRAPHS_BUILT: bool = cfg!(tss_cuda_graphs);

impl Engine {
    /// Starts configuring an engine for `model`.
    pub fn builder(model: Model) -> EngineBuilder {
        crate::runtime::load_backends();
        EngineBuilder::new(model)
    }

    pub(crate) fn start(b: EngineBuilder) -> Result<Engine, EngineError> {
        b.check()?;
        if b.cuda_graphs == Some(true) {
            if !CUDA_GRAPHS_BUILT {
                return Err(EngineError::Build(
                    "CUDA graphs were asked for, but this build has no CUDA graph code: it compiles in when the build finds the CUDA \
                     headers beside a CUDA libtorch (scripts/setup.sh installs them); --features cuda-graphs makes a build fail without them"
                        .into(),
                ));
            }
            if !b.devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
                return Err(EngineError::Build("CUDA graphs need a CUDA device".into()));
            }
        }
        // Which devices have a stream pool; the fallback for those that do not.
        let mut has_pool = HashMap::new();
        for &device in &b.devices {
            Stream::default_for(device)?; // validates the index
            let pool = match Stream::from_pool(device, Priority::Normal) {
                Ok(_) => true, // CPU included: its one stream answers every pool request
                Err(Error::Unsupported { backend, detail, .. }) => {
                    if b.require_stream_pool {
                        let why = Report::gather()
                            .ok()
                            .and_then(|r| check_capability(Capability::MpsPool, &r).err())
                            .map(|e| e.to_string())
                            .unwrap_or(detail);
                        return Err(EngineError::Build(why));
                    }
                    if has_pool.values().all(|&p| p) {
                        tracing::warn!(
                            "{backend} has no stream pool in the loaded libtorch: serving {device:?} with a single worker \
                             on its default stream (build the patched libtorch for per-worker streams)"
                        );
                    }
                    false
                }
                Err(e) => return Err(e.into()),
            };
            has_pool.insert(device, pool);
        }
        let mut reasons = Vec::new();
        let workers = match b.workers {
            Some(n) => n,
            None => {
                let n = b.devices.iter().map(|&d| auto::workers_for(d, has_pool[&d])).sum::<usize>().min(MAX_WORKERS);
                reasons.push(format!("workers: {n} (default: 4 per GPU with a stream pool, 1 without, 2 for the CPU)"));
                n
            }
        };
        // Round-robin assignment; a GPU device without a pool gets exactly one worker.
        let mut assigned: Vec<Device> = Vec::new();
        for i in 0..workers {
            let d = b.devices[i % b.devices.len()];
            if has_pool[&d] || !assigned.contains(&d) {
                assigned.push(d);
            }
        }
        let mps_workers = assigned.iter().filter(|d| **d == Device::Mps).count();
        if mps_workers > MPS_POOL_STREAMS {
            tracing::warn!(
                "{mps_workers} workers on MPS, but its stream pool has {MPS_POOL_STREAMS} streams: workers beyond that share streams \
                 (and their queues); use at most {MPS_POOL_STREAMS}"
            );
        }
        let mut shared: HashMap<Device, Arc<dyn Forward>> = HashMap::new();
        let mut models = Vec::with_capacity(assigned.len());
        for &d in &assigned {
            let m = match b.replicas {
                Replicas::Shared => match shared.get(&d) {
                    Some(m) => Arc::clone(m),
                    None => {
                        let m = b.model.instantiate(d)?;
                        shared.insert(d, Arc::clone(&m));
                        m
                    }
                },
                Replicas::PerWorker => b.model.instantiate(d)?,
            };
            models.push(m);
        }

        // Every input's shape known (dtype defaults to float32): the warm-up, probe and
        // calibration inputs.
        let known: Option<Vec<(Vec<i64>, tch::Kind)>> = {
            let n = b.arity.unwrap_or(1);
            (0..n)
                .map(|i| b.inputs.get(i).and_then(|e| e.sample_shape.clone().map(|s| (s, e.kind.unwrap_or(tch::Kind::Float)))))
                .collect()
        };
        // The check and the calibration run the user's model on this thread. The check catches
        // the model's panics itself; one caught here is the check's own.
        let checked = |model: &Arc<dyn Forward>, specs: &[(Vec<i64>, tch::Kind)]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                thread_caches::on_own_thread(assigned[0], "tch-streams-independence", || independence::check(&**model, assigned[0], specs, b.samples.as_ref()))
            })).unwrap_or_else(|p| {
                Err(independence::Refusal::Undecided(format!(
                    "the check itself failed ({}; please report it as a tch-streams bug)",
                    worker::panic_message(&*p)
                )))
            })
        };
        let mut calibration = Vec::new();
        let mut calibration_spread = Vec::new();
        let mut calibration_stopped = None;
        let batching = match (b.batching, &known, models.first()) {
            (Batching::Dynamic { .. }, Some(specs), Some(model)) => {
                checked(model, specs).map_err(|refusal| EngineError::Build(refusal.to_string()))?;
                b.batching
            }
            (Batching::Dynamic { .. }, None, _) => {
                reasons.push(
                    "batching: dynamic as given, unchecked (the inputs' shapes are unknown: give them with .inputs() so that \
                     build() can check that the model keeps samples apart)"
                        .into(),
                );
                b.batching
            }
            (Batching::Auto, Some(specs), Some(model)) if b.warmup => match checked(model, specs) {
                Err(refusal) => {
                    reasons.push(format!("batching: off ({refusal})"));
                    Batching::Off
                }
                Ok(()) => {
                    let calibrated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        auto::calibrate(Arc::clone(model), assigned[0], specs, b.samples.as_ref(), auto::AUTO_MAX_BATCH, b.calibration_step_limit)
                    }))
                    .ok()
                    .flatten();
                    match calibrated {
                        Some(c) => {
                            let shown: Vec<String> = c.readings.iter().map(|(n, us)| format!("{n}: {us:.0} us")).collect();
                            let noisiest = c.spread.iter().copied().fold(0.0f64, f64::max);
                            reasons.push(format!(
                                "batching: dynamic, max {} samples, no wait beyond what is queued (calibrated on {:?}, fastest of 3 runs: {}; \
                                 runs of one size differed by up to {:.0} %)",
                                c.max_batch,
                                assigned[0],
                                shown.join(", "),
                                noisiest * 100.0
                            ));
                            if let Some((size, limit)) = c.stopped {
                                let why = format!(
                                    "calibration stopped at {size} samples: that step took longer than {} ms (a model stuck or very slow \
                                     at that size); kept the best of the sizes measured before",
                                    limit.as_millis()
                                );
                                reasons.push(why.clone());
                                calibration_stopped = Some(why);
                            }
                            calibration = c.readings;
                            calibration_spread = c.spread;
                            Batching::Dynamic { max_batch: c.max_batch, max_wait: Duration::ZERO }
                        }
                        None => {
                            reasons.push(format!(
                                "batching: off (the model failed on {} inputs during calibration)",
                                super::config::SampleInputs::name(b.samples.as_ref())
                            ));
                            Batching::Off
                        }
                    }
                }
            },
            (Batching::Auto, _, _) => {
                reasons.push(if b.warmup {
                    "batching: off (the inputs' shapes are unknown: give them with .inputs() to batch)".into()
                } else {
                    "batching: off (warm-up is off, so nothing is calibrated)".into()
                });
                Batching::Off
            }
            (other, _, _) => other,
        };
        let buckets = match batching {
            Batching::Dynamic { max_batch, .. } => match &b.buckets {
                // A bucket far larger than any batch pads batches up to it (and is warmed up on
                // every worker). One a little larger serves a request of more rows than max_batch.
                Some(sizes) if sizes.iter().any(|&s| s > max_batch.saturating_mul(MAX_BUCKET_OVER_BATCH)) => {
                    let limit = max_batch.saturating_mul(MAX_BUCKET_OVER_BATCH);
                    let over: Vec<usize> = sizes.iter().copied().filter(|&s| s > limit).collect();
                    if matches!(b.batching, Batching::Dynamic { .. }) {
                        return Err(EngineError::Build(format!(
                            "buckets {over:?} are over {MAX_BUCKET_OVER_BATCH} x max_batch {max_batch}: batches would be padded up to \
                             them; give bucket sizes of at most {limit} (CLI: --buckets no larger than {MAX_BUCKET_OVER_BATCH} x --batch-max)"
                        )));
                    }
                    let kept: Vec<usize> = sizes.iter().copied().filter(|&s| s <= limit).collect();
                    reasons.push(format!(
                        "buckets: {over:?} dropped, over {MAX_BUCKET_OVER_BATCH} x the calibrated max_batch {max_batch} (batches would be padded up to them)"
                    ));
                    if kept.is_empty() { Buckets::powers_of_two(max_batch) } else { Buckets::from_sizes(kept) }
                }
                Some(sizes) => Buckets::from_sizes(sizes.clone()),
                None => Buckets::powers_of_two(max_batch),
            },
            Batching::Off | Batching::Auto => Buckets::default(),
        };
        // Warm-up makes every bucket's inputs on every worker: bound the largest.
        if let (Some(specs), Some(&largest)) = (&known, buckets.sizes().last()) {
            for (i, (shape, _)) in specs.iter().enumerate() {
                let per_sample: i64 = shape.iter().product();
                if (largest as i64).checked_mul(per_sample).is_none_or(|n| n > MAX_WARMUP_ELEMENTS) {
                    return Err(EngineError::Build(format!(
                        "input {i}: the largest bucket, {largest} samples of {shape:?}, is over {MAX_WARMUP_ELEMENTS} elements, which warm-up \
                         would allocate on every worker; lower max_batch or the bucket sizes"
                    )));
                }
            }
        }
        let any_cuda = assigned.iter().any(|d| matches!(d, Device::Cuda(_)));
        let cuda_graphs = match b.cuda_graphs {
            Some(on) => on,
            None => {
                let on = CUDA_GRAPHS_BUILT && any_cuda && known.is_some() && b.warmup;
                if any_cuda {
                    reasons.push(match (on, CUDA_GRAPHS_BUILT) {
                        (true, _) => "CUDA graphs: on (compiled in, CUDA device, input shapes known)".into(),
                        (false, false) => "CUDA graphs: off (not compiled into this build)".into(),
                        (false, true) => "CUDA graphs: off (input shapes unknown or warm-up off: nothing to capture up front)".into(),
                    });
                }
                on
            }
        };
        let config = EngineConfig {
            workers: assigned.len(),
            batching,
            buckets: buckets.sizes().to_vec(),
            cuda_graphs,
            inputs_ready: b.inputs_ready,
            calibration,
            calibration_spread,
            calibration_stopped,
            reasons,
        };
        tracing::debug!("engine configuration: {config}");
        let metrics = Arc::new(Metrics::new(config));
        let lanes = Lanes::new(&assigned, b.queue_capacity, &metrics);
        let registry = Arc::new(Mutex::new(Vec::new()));
        let buckets = Arc::new(buckets);
        let warmup = if b.warmup { known } else { None };
        // The engine exists before any worker starts: an early return below drops it, and its
        // Drop stops and joins whatever was started (no detached threads, no half-built engine).
        let mut engine = Engine {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            lanes,
            registry,
            metrics,
            spec: Admission { inputs: b.inputs, arity: b.arity, devices: b.devices },
            workers: Vec::new(),
            inputs_ready: b.inputs_ready,
            shutting_down: Mutex::new(()),
        };
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        for (index, (&device, model)) in assigned.iter().zip(models).enumerate() {
            let spec = WorkerSpec {
                engine: engine.id,
                index,
                device,
                model,
                rx: engine.lanes.receiver(device),
                batching,
                buckets: Arc::clone(&buckets),
                output: b.output,
                metrics: Arc::clone(&engine.metrics),
                warmup: warmup.clone(),
                samples: b.samples.clone(),
                cuda_graphs,
                use_pool: has_pool[&device] && device != Device::Cpu,
                registry: Arc::clone(&engine.registry),
            };
            let thread = worker::spawn(spec, Vec::new(), Some(ready_tx.clone()))
                .map_err(|e| EngineError::Build(format!("could not start a worker thread: {e}")))?;
            engine.registry.lock().push(thread);
        }
        // Only the workers hold senders now: if every one of them exits, `recv` fails (no hang).
        drop(ready_tx);
        // Reports come in start-up order, not index order: each names its worker.
        let mut streams: Vec<Option<Stream>> = vec![None; assigned.len()];
        for _ in 0..assigned.len() {
            match ready_rx.recv() {
                Ok((index, Ok(stream))) => streams[index] = Some(stream),
                Ok((_, Err(e))) => {
                    engine.shutdown();
                    return Err(EngineError::Build(format!("a worker could not start: {e}")));
                }
                Err(_) => {
                    engine.shutdown();
                    return Err(EngineError::Build("a worker exited during start-up".into()));
                }
            }
        }
        engine.workers = assigned
            .iter()
            .zip(streams)
            .enumerate()
            .filter_map(|(index, (&device, stream))| stream.map(|stream| WorkerInfo { index, device, stream }))
            .collect();
        Ok(engine)
    }

    /// Queues a request and returns its ticket; waits while the queue is full. `inputs` is one
    /// tensor or the model's positional inputs (`vec![ids, mask]`), each with the samples along
    /// dim 0. Invalid input and submission after shutdown come back as an already-answered ticket.
    ///
    /// A GPU input may still be in the making on the caller's current stream: the worker serving
    /// it orders its stream after that one on the device (one event per distinct stream and
    /// batch), so no host synchronisation is needed.
    pub fn submit(&self, inputs: impl Into<Inputs>) -> Ticket {
        let inputs = inputs.into().0;
        self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.spec.validate(&inputs) {
            return self.refuse(e);
        }
        let (promise, ticket) = counted_pair(&self.metrics);
        let ready = self.ready_mark(&inputs);
        let request = Request::new(inputs, promise, ready);
        match self.lanes.send(request, true) {
            Ok(()) => ticket,
            // Its ticket is not handed out: the caller gets the refusal, counted once.
            Err(SendError::Closed(r)) | Err(SendError::Full(r)) => {
                unaccepted(r);
                self.refuse(EngineError::ShutDown)
            }
            Err(SendError::NoWorkers(r, why)) => {
                unaccepted(r);
                self.refuse(EngineError::NoWorkers(why))
            }
        }
    }

    /// Like [`submit`](Engine::submit) but never waits: a full queue is [`EngineError::Busy`]
    /// (the request is not accepted and not counted).
    pub fn try_submit(&self, inputs: impl Into<Inputs>) -> Result<Ticket, EngineError> {
        let inputs = inputs.into().0;
        self.spec.validate(&inputs)?;
        let (promise, ticket) = counted_pair(&self.metrics);
        let ready = self.ready_mark(&inputs);
        let request = Request::new(inputs, promise, ready);
        // Never waits: not for room, and not for a lock a blocked submitter holds.
        match self.lanes.send(request, false) {
            Ok(()) => {
                self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(ticket)
            }
            // Never accepted: the request (and its ticket) are simply dropped, not counted.
            Err(SendError::Full(r)) => {
                unaccepted(r);
                Err(EngineError::Busy)
            }
            Err(SendError::Closed(r)) => {
                unaccepted(r);
                Err(EngineError::ShutDown)
            }
            Err(SendError::NoWorkers(r, why)) => {
                unaccepted(r);
                Err(EngineError::NoWorkers(why))
            }
        }
    }

    /// Runs one request and waits for its single output tensor.
    pub fn infer(&self, inputs: impl Into<Inputs>) -> Result<Tensor, EngineError> {
        self.submit(inputs).wait()
    }

    /// Runs one request and waits for its outputs, in the model's own structure.
    ///
    /// ```
    /// use tch_streams::engine::Engine;
    /// use tch_streams::models::{Model, Outputs};
    /// let engine = Engine::builder(Model::closure_many(|xs: &[tch::Tensor]| -> Result<Outputs, tch::TchError> {
    ///     Ok(Outputs::Dict(vec![("sum".into(), xs[0].f_add(&xs[1])?), ("prod".into(), xs[0].f_mul(&xs[1])?)]))
    /// }))
    /// .devices(vec![tch::Device::Cpu])
    /// .build()?;
    /// let x = tch::Tensor::full([1, 2], 3.0, (tch::Kind::Float, tch::Device::Cpu));
    /// let out = engine.infer_outputs(vec![x.shallow_clone(), x])?;
    /// assert_eq!(out.get("prod").unwrap().double_value(&[0, 0]), 9.0);
    /// # Ok::<(), tch_streams::engine::EngineError>(())
    /// ```
    pub fn infer_outputs(&self, inputs: impl Into<Inputs>) -> Result<Outputs, EngineError> {
        self.submit(inputs).wait_outputs()
    }

    /// Submits all requests, then waits for all; single output tensors, in request order.
    pub fn infer_many<I: Into<Inputs>>(&self, requests: Vec<I>) -> Vec<Result<Tensor, EngineError>> {
        let tickets: Vec<Ticket> = requests.into_iter().map(|x| self.submit(x)).collect();
        tickets.into_iter().map(Ticket::wait).collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        self.metrics.snapshot()
    }

    /// The configuration the engine runs with: every default resolved, with the reasons for each
    /// automatic choice and the calibration readings.
    pub fn config(&self) -> &EngineConfig {
        &self.metrics.config
    }

    /// The workers as started (device and bound stream of each).
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Stops intake and waits until every accepted request is answered: workers drain the queue;
    /// requests no live worker can take are failed with [`EngineError::WorkerDied`].
    /// Idempotent; a second concurrent call waits for the first. Also run by `Drop`. Waits as
    /// long as the model takes: see [`shutdown_timeout`](Engine::shutdown_timeout) for a bound.
    ///
    /// Called on one of the engine's own threads (by a ticket's waker, or by the model), it only
    /// stops intake and returns at once: waiting there would be the thread waiting for itself.
    /// The workers still serve every accepted request and then exit; a call from any other
    /// thread (or dropping the engine there) waits for them.
    pub fn shutdown(&self) {
        self.shutdown_within(None);
    }

    /// [`shutdown`](Engine::shutdown), waiting at most `timeout` for the workers. Returns true if
    /// every worker finished (false at once on one of the engine's own threads, which cannot wait
    /// for the workers: see [`shutdown`](Engine::shutdown)). Otherwise the requests still queued
    /// fail with [`EngineError::ShutdownTimeout`], the stuck worker threads are detached (counted
    /// in [`EngineStats::workers_detached`]), and the call returns. Requests a stuck worker holds
    /// outside the batch it is stuck in (set aside for another shape, trimmed from its batch,
    /// inherited from a replaced worker) fail with `ShutdownTimeout` too; the batch it is stuck in
    /// is answered if that worker ever returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tch_streams::engine::Engine;
    /// use tch_streams::models::Model;
    /// let engine = Engine::builder(Model::closure(|x: &tch::Tensor| x.f_add_scalar(1.0))).devices(vec![tch::Device::Cpu]).build()?;
    /// assert!(engine.shutdown_timeout(Duration::from_secs(5)));
    /// assert_eq!(engine.stats().workers_detached, 0);
    /// # Ok::<(), tch_streams::engine::EngineError>(())
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> bool {
        self.shutdown_within(Some(timeout))
    }

    fn shutdown_within(&self, timeout: Option<Duration>) -> bool {
        if worker::on_engine_thread(self.id) {
            // A waker or the model, on a worker or completion thread: joining the workers would
            // join this thread itself (and a shutdown in progress elsewhere may be joining it).
            self.lanes.close();
            tracing::warn!(
                "shutdown called on one of the engine's own threads (a ticket's waker or the model): intake is stopped and the \
                 workers finish what is queued, but nothing waits for them here; shut down from another thread to wait"
            );
            return false;
        }
        let _one_at_a_time = self.shutting_down.lock();
        self.lanes.close(); // workers see their lane close once it is empty
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut stuck: Vec<WorkerThread> = Vec::new();
        loop {
            let threads: Vec<WorkerThread> = std::mem::take(&mut *self.registry.lock());
            if threads.is_empty() {
                break;
            }
            for w in threads {
                match deadline {
                    None => {
                        let _ = w.handle.join(); // replacements register themselves before their parent exits
                    }
                    Some(deadline) => {
                        while !w.handle.is_finished() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        if w.handle.is_finished() {
                            let _ = w.handle.join();
                        } else {
                            stuck.push(w);
                        }
                    }
                }
            }
        }
        let timed_out = !stuck.is_empty();
        if timed_out {
            self.metrics.detached.fetch_add(stuck.len() as u64, Ordering::Relaxed);
            // What a stuck worker set aside (or inherited) waits for no batch of its own: answer it.
            let held: usize = stuck.iter().map(|w| w.held.give_up()).sum();
            tracing::error!(
                "shutdown timed out: {} worker thread(s) stuck in the model are left running; {held} request(s) they held outside \
                 their batch failed",
                stuck.len()
            );
            drop(stuck); // detached
        }
        // Anything still queued has no worker left: answer it explicitly.
        for r in self.lanes.drain() {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            r.promise.fulfil(Err(if timed_out { EngineError::ShutdownTimeout } else { EngineError::WorkerDied }));
        }
        !timed_out
    }

    fn ready_mark(&self, inputs: &[Tensor]) -> Vec<super::events::ReadyMark> {
        if self.inputs_ready {
            Vec::new()
        } else {
            super::events::producers(inputs)
        }
    }

    fn refuse(&self, e: EngineError) -> Ticket {
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        Ticket::resolved(Err(e))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Drops a request that was never queued without counting it as failed (its caller is told).
fn unaccepted(mut r: Request) {
    r.promise.disarm();
}
