//! [`Engine`]: intake, worker start-up, shutdown, and statistics.

use super::auto::EngineConfig;
use super::config::EngineBuilder;
use super::error::EngineError;
use super::metrics::{EngineStats, Metrics};
use super::lanes::Lanes;
use super::plan::{plan, Plan};
use super::request::{Admission, Request};
use super::ticket::{counted_pair, Ticket};
use super::threads;
use super::worker::{self, WorkerSpec, WorkerThread};
use crate::models::{Inputs, Model, Outputs};
use crate::stream::Stream;
use super::lanes::SendError;
use parking_lot::Mutex;
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
/// Each request is answered exactly once, or skipped (counted as cancelled) when its ticket was
/// dropped before a worker began it. [`shutdown`](Engine::shutdown) (or drop) stops intake,
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
    /// Tells this engine's threads apart from others (see [`threads::on_engine_thread`]).
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


impl Engine {
    /// Starts configuring an engine for `model`.
    pub fn builder(model: Model) -> EngineBuilder {
        crate::runtime::load_backends();
        EngineBuilder::new(model)
    }

    /// Spawns the workers `plan` describes and waits until each has bound its stream and warmed
    /// up. The engine exists before the first worker starts: an early return drops it, and its
    /// `Drop` stops and joins whatever was started (no detached threads, no half-built engine).
    pub(crate) fn start(plan: Plan) -> Result<Engine, EngineError> {
        let Plan { workers, batching, buckets, cuda_graphs, warmup, samples, output, queue_capacity, admission, config, budgets } =
            plan;
        tracing::debug!("engine configuration: {config}");
        let devices: Vec<Device> = workers.iter().map(|w| w.device).collect();
        let inputs_ready = config.inputs_ready;
        let metrics = Arc::new(Metrics::new(config));
        let mut engine = Engine {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            lanes: Lanes::new(&devices, queue_capacity, &metrics),
            registry: Arc::new(Mutex::new(Vec::new())),
            metrics,
            spec: admission,
            workers: Vec::new(),
            inputs_ready,
            shutting_down: Mutex::new(()),
        };
        let buckets = Arc::new(buckets);
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        for (index, w) in workers.into_iter().enumerate() {
            let spec = WorkerSpec {
                engine: engine.id,
                index,
                device: w.device,
                model: w.model,
                rx: engine.lanes.receiver(w.device),
                batching,
                buckets: Arc::clone(&buckets),
                output,
                metrics: Arc::clone(&engine.metrics),
                warmup: warmup.clone(),
                samples: samples.clone(),
                cuda_graphs,
                use_pool: w.use_pool,
                registry: Arc::clone(&engine.registry),
            };
            let thread = worker::spawn(spec, Vec::new(), Some(ready_tx.clone()))
                .map_err(|e| EngineError::Build(format!("could not start a worker thread: {e}")))?;
            engine.registry.lock().push(thread);
        }
        // Only the workers hold senders now: if every one of them exits, `recv` fails (no hang).
        drop(ready_tx);
        // Reports come in start-up order, not index order: each names its worker.
        let mut streams: Vec<Option<Stream>> = vec![None; devices.len()];
        for _ in 0..devices.len() {
            match ready_rx.recv() {
                Ok((index, Ok(stream))) => streams[index] = Some(stream),
                Ok((_, Err(e))) => return Err(EngineError::Build(format!("a worker could not start: {e}"))),
                Err(_) => return Err(EngineError::Build("a worker exited during start-up".into())),
            }
        }
        engine.workers = devices
            .iter()
            .zip(streams)
            .enumerate()
            .filter_map(|(index, (&device, stream))| stream.map(|stream| WorkerInfo { index, device, stream }))
            .collect();
        super::budget::check_after_start(&budgets)?;
        engine.metrics.record_after_build(&devices);
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
        if threads::on_engine_thread(self.id) {
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
        // Anything still queued has no worker left: answer it explicitly (a request whose caller
        // has gone is counted as cancelled instead).
        for r in self.lanes.drain().into_iter().filter_map(Request::live) {
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

impl EngineBuilder {
    /// Resolves every default (see [`Engine::config`] for what was chosen and why), then starts
    /// the workers and waits until each has bound its stream and warmed up. Errors: no devices
    /// or workers; a device index out of range; a GPU backend without a stream pool under
    /// `require_stream_pool(true)`; CUDA graphs asked for without the feature; a model that
    /// cannot be loaded; a worker that cannot start.
    pub fn build(self) -> Result<Engine, EngineError> {
        Engine::start(plan(&self)?)
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
