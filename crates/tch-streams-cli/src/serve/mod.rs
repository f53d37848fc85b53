//! `tch-streams serve`: models behind the Open Inference Protocol (KServe v2) over HTTP/REST
//! and gRPC, with Prometheus metrics.
//!
//! ```text
//!  HTTP :8000 ─┐   listen     body     request   model      state                ┌─► engine "mlp"
//!  gRPC :8001 ─┼─► (caps, ─► (budget, ─► decode ─► admit ─► Server::infer ─────┤
//!              │   idle)     timeout)  (neutral) (validate) (cap, window, timeout) └─► engine "bert"
//!  /metrics :8002 ◄── request counters + engine stats read at scrape time
//! ```
//!
//! Threads: models are loaded and their engines started on the main thread; then a tokio
//! runtime runs the three listeners. Handlers read bodies on the runtime's threads, decode and
//! encode large ones on blocking threads, and await the engine's `Ticket` (a future), so no
//! runtime thread blocks on parsing or inference. Engine workers are
//! the engine's own OS threads. On SIGTERM or Ctrl-C ([`shutdown`]): readiness turns false,
//! listeners close, requests already read are answered, then the engines drain, all within one
//! `--drain-timeout-s`; the process exits 0 (1 if the deadline passed first, or on a second
//! signal).
//!
//! Names on the wire: inputs `input0`, `input1`, … in forward's order; outputs `output0`,
//! `output1`, … (a tensor, tuple or list) or the keys of a dict. Every model has one version,
//! `1`. Tensors are row-major; raw bytes little-endian.

pub mod body;
pub mod budget;
pub mod coalesce;
pub mod grpc;
pub mod h1;
pub mod http;
pub mod json;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod request;
pub mod shutdown;
pub mod stages;
pub mod state;
pub mod unary;

use crate::conn_threads::ConnThreads;
use anyhow::Context;
pub use model::{EngineOptions, ModelEntry, ServedModel, Source};
pub use state::{Limits, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Protocol extensions this server implements (server metadata lists them).
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_configuration"];

/// Connections the metrics port keeps open at once (scrapers).
pub const METRICS_CONNECTIONS: usize = 32;

/// Everything [`serve`] needs besides the models: resolved from the command line by
/// `tch-streams serve` (its arguments live with the other commands, in the binary's `cli`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine flags every model's engine is built with.
    pub engine: EngineOptions,
    /// `--max-batch-size`.
    pub max_batch_size: usize,
    /// The server's limits.
    pub limits: Limits,
    /// `--host`.
    pub host: String,
    /// HTTP, gRPC and metrics ports (0: any free port).
    pub ports: [u16; 3],
    /// `--drain-timeout-s`: the one deadline of the drain.
    pub drain: Duration,
    /// `--io-threads` [default: one per core].
    pub io_threads: Option<usize>,
    /// `--grpc-threads`: threads that each run their gRPC connections whole (the command's
    /// default: [`default_count`](crate::conn_threads::default_count)); 0: the shared runtime
    /// runs them.
    pub grpc_threads: usize,
}

/// Loads `entries`, serves them until SIGTERM or Ctrl-C, drains; returns the exit code (0 after
/// a full drain). The caller has verified the loaded libtorch.
pub fn serve(entries: &[ModelEntry], settings: Settings) -> anyhow::Result<i32> {
    let opts = &settings.engine;
    let mut models = Vec::with_capacity(entries.len());
    for e in entries {
        let m = ServedModel::load(e, opts, settings.max_batch_size)?;
        let show = |ts: &[model::TensorInfo]| ts.iter().map(|t| format!("{} {} {:?}", t.name, t.datatype(), t.shape())).collect::<Vec<_>>().join(", ");
        // The model, then how its engine was set up and why (calibration, trial, memory), as
        // `run` prints them: what decides the model's `dynamic_batching` in its configuration.
        eprintln!("model {}: inputs {}; outputs {}", m.name, show(&m.inputs), show(&m.outputs));
        eprintln!("  engine: {}", m.engine.config());
        for why in &m.engine.config().reasons {
            eprintln!("    {why}");
        }
        models.push(m);
    }
    let server = Arc::new(Server::new(models, settings.limits, metrics::Metrics::new()?)?);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("tch-streams-serve");
    if let Some(n) = settings.io_threads {
        rt.worker_threads(n);
    }
    let rt = rt.build().context("cannot start the async runtime")?;
    let grpc_threads = match settings.grpc_threads {
        0 => None,
        n => Some(Arc::new(ConnThreads::start(n, "tch-streams-grpc").context("cannot start the gRPC connection threads")?)),
    };
    let drain = settings.drain;
    let (drained, signalled) = rt.block_on(shutdown::serve_until_signal(Arc::clone(&server), &settings.host, settings.ports, drain, grpc_threads.clone()))?;
    // Every connection is closed: what is left is the engines' own queues, drained together
    // within what is left of the one deadline.
    let end = signalled + drain;
    let engines_clean = std::thread::scope(|scope| {
        let drains: Vec<_> = server.models().map(|m| scope.spawn(move || m.engine.shutdown_timeout(end.saturating_duration_since(std::time::Instant::now())))).collect();
        drains.into_iter().all(|d| d.join().unwrap_or(false))
    });
    let clean = drained && engines_clean;
    if drained && !engines_clean {
        eprintln!("drain timed out after {} s (--drain-timeout-s): the engines had requests left", drain.as_secs());
    }
    rt.shutdown_timeout(end.saturating_duration_since(std::time::Instant::now()).min(Duration::from_secs(1)));
    // Every gRPC connection ended in the drain (or was given up with it): the threads end.
    drop(grpc_threads);
    let (ok, failed, cancelled) = server.answered();
    for line in server.stage_summary() {
        eprintln!("{line}");
    }
    eprintln!("drained: {} inference request(s): {ok} answered with a result, {failed} with an error, {cancelled} cancelled by their client", ok + failed + cancelled);
    Ok(if clean { 0 } else { 1 })
}

/// Listen addresses, as printed on stdout once every listener is bound.
pub fn listening_line(http: SocketAddr, grpc: SocketAddr, metrics: SocketAddr) -> String {
    format!("listening http={http} grpc={grpc} metrics={metrics}")
}

