//! [`Server`]: what every endpoint shares — the models, the in-flight cap, the request timeout,
//! the drain flag and the metrics — and [`Server::infer`], the one path from admitted tensors to
//! named output tensors that both protocols use.
//!
//! `Server` is built on the main thread, then shared as `Arc<Server>` by the HTTP, gRPC and
//! metrics tasks on the async runtime. Its mutable parts are atomics, a semaphore and the
//! engines (all `Sync`); no lock is held across an `.await`.

use super::budget::Budget;
use super::metrics::{Metrics, ModelSeries};
use super::model::{named_outputs, ServedModel};
use super::protocol::{shown, ApiError, ErrorKind};
use super::stages::{Stage, Stages, STAGES};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;
use tch_streams::engine::EngineError;
use tokio::sync::Semaphore;

/// Which protocol a request came by (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/REST.
    Http = 0,
    /// gRPC.
    Grpc = 1,
}

impl Protocol {
    /// Both protocols.
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    /// Where this protocol's series are in [`ModelSeries::by_protocol`] (its place in [`Protocol::ALL`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metrics label: `http` or `grpc`.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Limits of the server, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a request waits for its answer from the engine.
    pub request_timeout: Duration,
    /// Most inference requests served at once; more are refused with 503 / UNAVAILABLE.
    pub max_inflight: usize,
    /// Largest request body (HTTP) or message (gRPC), bytes.
    pub max_request_bytes: usize,
    /// Longest a request body may take to arrive after its headers.
    pub body_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once over the HTTP and gRPC ports.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (gRPC requests) per connection.
    pub max_streams: u32,
    /// Bytes every request being read and decoded may hold at once.
    pub max_buffered_bytes: usize,
}

/// The state every endpoint shares.
pub struct Server {
    models: BTreeMap<String, Arc<ServedModel>>,
    /// Each model's series, by name (the same names as `models`).
    series: BTreeMap<String, Arc<ModelSeries>>,
    /// Limits from the command line.
    pub limits: Limits,
    permits: Semaphore,
    draining: AtomicBool,
    /// The Prometheus series.
    pub metrics: Metrics,
    /// The byte budget of request bodies and decoded tensors (`--max-buffered-bytes`).
    pub budget: Arc<Budget>,
    /// Decoding and encoding jobs running on blocking threads at once: one per core.
    coders: Semaphore,
    answered_ok: AtomicU64,
    answered_err: AtomicU64,
    cancelled: AtomicU64,
}

/// Counts one inference request exactly once, however its handler ends: [`Recorder::finish`]
/// with its outcome, or — dropped unfinished because its client went away (a disconnect, a
/// gRPC cancellation) — as cancelled.
pub struct Recorder {
    server: Arc<Server>,
    model: String,
    /// The model's series, looked up once here; `None` for a name the server does not serve.
    series: Option<Arc<ModelSeries>>,
    protocol: Protocol,
    started: Instant,
    done: bool,
}

impl Recorder {
    /// Starts counting a request for `model` (as the client named it).
    pub fn new(server: &Arc<Server>, model: &str, protocol: Protocol) -> Recorder {
        let series = server.series.get(model).cloned();
        Recorder { server: Arc::clone(server), model: model.to_string(), series, protocol, started: Instant::now(), done: false }
    }

    /// Counts the request with its outcome.
    pub fn finish(mut self, outcome: Result<(), ErrorKind>) {
        self.done = true;
        self.server.record(&self.model, self.series.as_deref(), self.protocol, self.started, outcome);
    }

    /// Counts the request with its outcome and, when it succeeded, the time of its stages.
    pub fn finish_with(self, outcome: Result<(), ErrorKind>, stages: &Stages) {
        if let (Ok(()), Some(series)) = (outcome, &self.series) {
            for (h, secs) in series.by_protocol[self.protocol.index()].stages.iter().zip(stages.seconds()) {
                h.observe(secs);
            }
        }
        self.finish(outcome);
    }

    /// Leaves the counting to someone else (the handler that took the request over).
    pub fn disarm(mut self) {
        self.done = true;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.server.record(&self.model, self.series.as_deref(), self.protocol, self.started, Err(ErrorKind::Cancelled));
        }
    }
}

/// A request submitted to its engine, holding its place in the model's window until the engine
/// answers it — even when its handler is gone (dropped on a timeout or a disconnect): then a
/// task waits for the engine's answer and only that frees the place.
struct Submitted {
    ticket: Option<tch_streams::engine::OutputsTicket>,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Submitted {
    fn drop(&mut self) {
        if let (Some(ticket), Some(place)) = (self.ticket.take(), self.place.take()) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = ticket.await;
                        drop(place);
                    });
                }
                Err(_) => drop(place),
            }
        }
    }
}

/// Counts a request as skipped if it is dropped while waiting for its model's window.
struct Waiting<'a>(Option<&'a prometheus::IntCounter>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.inc();
        }
    }
}

/// Counts the request as in flight until dropped (whichever way the handler ends).
struct InFlight<'a> {
    gauge: &'a prometheus::IntGauge,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Server {
    /// A server over `models` (names are unique: the caller checked), their engines' series
    /// registered with `metrics`. Errors only on a programming mistake (a metric registered twice).
    pub fn new(models: Vec<ServedModel>, limits: Limits, metrics: Metrics) -> prometheus::Result<Server> {
        let models: BTreeMap<String, Arc<ServedModel>> = models.into_iter().map(|m| (m.name.clone(), Arc::new(m))).collect();
        metrics.watch(models.values().cloned().collect())?;
        let series = models.keys().map(|name| (name.clone(), Arc::new(metrics.series_of(name, Protocol::ALL.map(Protocol::label))))).collect();
        Ok(Server {
            models,
            series,
            permits: Semaphore::new(limits.max_inflight),
            limits,
            draining: AtomicBool::new(false),
            metrics,
            budget: Budget::new(limits.max_buffered_bytes),
            coders: Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            answered_ok: AtomicU64::new(0),
            answered_err: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        })
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values()
    }

    /// The model called `name`; `version` must be empty or `1` (each model has one version).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<&Arc<ServedModel>, ApiError> {
        let m = self.models.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
            ApiError::new(ErrorKind::NotFound, format!("unknown model {:?}; this server serves {}", shown(name), names.join(", ")))
        })?;
        match version {
            None | Some("") | Some("1") => Ok(m),
            Some(v) => Err(ApiError::new(ErrorKind::NotFound, format!("model {name:?} has no version {:?}; it has version 1 only", shown(v)))),
        }
    }

    /// Ready: every model loaded (true once the server runs) and not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }

    /// Marks the server as draining: readiness turns false; requests still arriving on open
    /// connections are served.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Inference requests counted so far: (answered with a result, answered with an error,
    /// cancelled by their client).
    pub fn answered(&self) -> (u64, u64, u64) {
        (self.answered_ok.load(Ordering::Relaxed), self.answered_err.load(Ordering::Relaxed), self.cancelled.load(Ordering::Relaxed))
    }

    /// Counts one answered inference request for the metrics and the exit summary: in `series`,
    /// `model`'s series (`None` when the server does not serve `model`).
    pub fn record(&self, model: &str, series: Option<&ModelSeries>, protocol: Protocol, started: Instant, outcome: Result<(), ErrorKind>) {
        let label = match outcome {
            Ok(()) => {
                self.answered_ok.fetch_add(1, Ordering::Relaxed);
                "success"
            }
            Err(ErrorKind::Cancelled) => {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                ErrorKind::Cancelled.label()
            }
            Err(kind) => {
                self.answered_err.fetch_add(1, Ordering::Relaxed);
                kind.label()
            }
        };
        let secs = started.elapsed().as_secs_f64();
        match series.map(|s| &s.by_protocol[protocol.index()]) {
            Some(s) => {
                if outcome.is_ok() {
                    s.succeeded.inc();
                } else {
                    self.metrics.requests.with_label_values(&[model, protocol.label(), label]).inc();
                }
                s.request_seconds.observe(secs);
            }
            // Unknown model names are not labels (a client could create series at will).
            None => {
                self.metrics.requests.with_label_values(&["", protocol.label(), label]).inc();
                self.metrics.request_seconds.with_label_values(&["", protocol.label()]).observe(secs);
            }
        }
    }

    /// One line per model and protocol that answered requests: the mean of each stage of its
    /// successful requests (see [`stages`](super::stages)), for the exit summary.
    pub fn stage_summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (m, series) in &self.series {
            for p in Protocol::ALL {
                let h = &series.by_protocol[p.index()].stages;
                let n = h[0].get_sample_count();
                if n == 0 {
                    continue;
                }
                let means: Vec<String> = STAGES.iter().zip(h).map(|(st, h)| format!("{st} {:.1}", h.get_sample_sum() / n as f64 * 1e6)).collect();
                lines.push(format!("stages of model {m} over {}: {n} successful request(s), mean µs: {}", p.label(), means.join(", ")));
            }
        }
        lines
    }

    /// Runs `job` (decoding a request, encoding an answer) on a blocking thread when it handles
    /// `bytes` of at least [`OFFLOAD_BYTES`], at most one such job per core at a time; smaller
    /// jobs run here. The async threads never parse a large body, so health and small requests
    /// stay quick while one is decoded.
    pub async fn offload<T: Send + 'static>(&self, bytes: usize, job: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        if bytes < OFFLOAD_BYTES {
            return Ok(job());
        }
        let _turn = self.coders.acquire().await.map_err(|_| ApiError::new(ErrorKind::Unavailable, "the server is shutting down"))?;
        tokio::task::spawn_blocking(job).await.map_err(|e| ApiError::new(ErrorKind::Internal, format!("decoding failed: {e}")))
    }

    /// Runs admitted `inputs` on `model` and returns the outputs asked for (all when `wanted` is
    /// empty), named, in the model's order, as host tensors. Refuses at once when the in-flight
    /// cap is reached; then waits for a place in the model's window (see
    /// [`window_size`](super::model::window_size)) and for the engine's answer, at most the
    /// request timeout or the client's `deadline` if sooner. A request whose handler is dropped
    /// while it waits for the window is never submitted (counted in
    /// `tch_streams_skipped_requests_total`). Ends the admission and engine `stages`.
    pub async fn infer(&self, model: &ServedModel, inputs: Vec<Tensor>, wanted: &[String], deadline: Option<Instant>, stages: &mut Stages) -> Result<Vec<(String, Tensor)>, ApiError> {
        model.check_outputs(wanted)?;
        let permit = self.permits.try_acquire().map_err(|_| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!("{} requests are in flight (--max-inflight): retry later", self.limits.max_inflight),
            )
        })?;
        let series = self.series.get(&model.name).ok_or_else(|| ApiError::new(ErrorKind::Internal, format!("model {:?} has no series", model.name)))?;
        series.inflight.inc();
        let _inflight = InFlight { gauge: &series.inflight, _permit: permit };
        let ours = Instant::now() + self.limits.request_timeout;
        let (until, theirs) = match deadline {
            Some(d) if d < ours => (d, true),
            _ => (ours, false),
        };
        let late = || {
            if theirs {
                ApiError::new(ErrorKind::Timeout, "the client's deadline (grpc-timeout) passed before the answer")
            } else {
                ApiError::new(ErrorKind::Timeout, format!("no answer within {} ms (--request-timeout-ms)", self.limits.request_timeout.as_millis()))
            }
        };
        let until = tokio::time::Instant::from_std(until);
        let mut waiting = Waiting(Some(&series.skipped));
        let place = match tokio::time::timeout_at(until, Arc::clone(&model.window).acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ApiError::new(ErrorKind::Unavailable, "the server is shutting down")),
            Err(_) => return Err(late()),
        };
        waiting.0 = None;
        stages.end(Stage::Admission);
        let ticket = model.engine.try_submit(inputs).map_err(engine_error)?;
        let submitted = Instant::now();
        let mut job = Submitted { ticket: Some(ticket.outputs()), place: Some(place) };
        let answer = {
            let ticket = job.ticket.as_mut().expect("just set");
            tokio::time::timeout_at(until, ticket).await.map_err(|_| late())?
        };
        job.ticket = None; // answered: the place frees when `job` drops
        stages.end(Stage::Engine);
        series.engine_seconds.observe(submitted.elapsed().as_secs_f64());
        let outputs = named_outputs(answer.map_err(|e| model_error(&model.name, e))?);
        Ok(if wanted.is_empty() { outputs } else { outputs.into_iter().filter(|(n, _)| wanted.contains(n)).collect() })
    }
}

/// Requests and answers from this size up are decoded and encoded on blocking threads.
pub const OFFLOAD_BYTES: usize = 64 << 10;

/// A model's failure on a request: the whole message (a TorchScript traceback names files of
/// the machine the model was built on) goes to the log under a number; the client gets the
/// number and the error's last line, when that line names no path.
fn model_error(model: &str, e: EngineError) -> ApiError {
    let EngineError::Model(m) = &e else { return engine_error(e) };
    static NUMBER: AtomicU64 = AtomicU64::new(1);
    let n = NUMBER.fetch_add(1, Ordering::Relaxed);
    tracing::error!("model {model} failed on a request (error #{n}): {m}");
    let last = m.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
    let summary = if last.is_empty() || last.contains('/') || last.contains('\\') { String::new() } else { format!(": {}", shown(last)) };
    ApiError::new(ErrorKind::Internal, format!("model {model} failed on this request (error #{n} in the server's log){summary}"))
}

/// How an engine error reaches the client.
fn engine_error(e: EngineError) -> ApiError {
    let kind = match &e {
        EngineError::InvalidInput(_) => ErrorKind::BadRequest,
        EngineError::Busy | EngineError::ShutDown | EngineError::NoWorkers(_) | EngineError::ShutdownTimeout => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    ApiError::new(kind, e.to_string())
}
