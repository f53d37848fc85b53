//! `tch-streams loadgen`: a closed-loop load generator for KServe v2 (Open Inference Protocol)
//! servers, ours or any other.
//!
//! For each concurrency `c` it runs exactly `c` requests in flight: `c` tasks, each sending its
//! request, awaiting the whole answer, and sending again. Every request is encoded once before
//! the runs and resent as a shared [`Bytes`](bytes::Bytes); latencies go into a fixed-size
//! histogram per task. Memory is therefore the same after a second and after an hour: `c`
//! requests and answers in flight, `c` histograms.
//!
//! Each run: `--warmup` seconds not counted, then `--duration` seconds counted. Requests that
//! complete in the counted window count; a failed one is an error (with its first message
//! kept) and the task sends the next.

pub mod client;
pub mod histogram;

use client::{Conn, Input, Protocol};
use tch_streams_cli::conn_threads::ConnThreads;
use histogram::Latencies;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`run`] does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port`.
    pub authority: String,
    /// HTTP or gRPC.
    pub protocol: Protocol,
    /// The model's name.
    pub model: String,
    /// Inputs with their full shapes (batch first).
    pub inputs: Vec<Input>,
    /// One run per value.
    pub concurrency: Vec<usize>,
    /// Counted seconds per run.
    pub duration: Duration,
    /// Uncounted seconds before each run.
    pub warmup: Duration,
    /// gRPC: HTTP/2 connections the requests are spread over (round robin).
    pub grpc_connections: usize,
    /// gRPC: threads the connections run on, each with all its requests (see
    /// [`ConnThreads`]); 0: the caller's runtime.
    pub grpc_threads: usize,
}

/// One run's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Requests in flight.
    pub concurrency: usize,
    /// Protocol used.
    pub protocol: Protocol,
    /// Connections open during the run.
    pub connections: usize,
    /// Seconds counted.
    pub seconds: f64,
    /// Successful requests in the counted window.
    pub requests: u64,
    /// Failed requests in the counted window.
    pub errors: u64,
    /// The first error's message, if any.
    pub first_error: Option<String>,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Samples per second (requests × batch).
    pub samples_per_s: f64,
    /// Latency of successful requests, milliseconds.
    pub latency_ms_mean: f64,
    /// Median latency, ms.
    pub latency_ms_p50: f64,
    /// 90th percentile, ms.
    pub latency_ms_p90: f64,
    /// 99th percentile, ms.
    pub latency_ms_p99: f64,
}

impl Report {
    /// A summary line in the manner of perf_analyzer's.
    pub fn line(&self) -> String {
        let mut s = format!(
            "concurrency {:>4} ({}, {} connection(s)): {:.1} infer/s, {:.1} samples/s, latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, mean {:.3} ms; {} request(s), {} error(s)",
            self.concurrency, serde_json::to_value(self.protocol).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), self.connections,
            self.requests_per_s, self.samples_per_s, self.latency_ms_p50, self.latency_ms_p90, self.latency_ms_p99, self.latency_ms_mean, self.requests, self.errors
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!("; first error: {e}"));
        }
        s
    }
}

const WARMUP: u8 = 0;
const COUNTING: u8 = 1;
const STOPPED: u8 = 2;

/// What one task counted.
#[derive(Default)]
struct Tally {
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one measurement per concurrency of `plan`; `each` sees every report as it is made.
/// Fails before any run when the server cannot be reached (no connection, or the first request
/// fails).
pub async fn run(plan: &Plan, mut each: impl FnMut(&Report)) -> anyhow::Result<Vec<Report>> {
    let data: Vec<Vec<u8>> = plan.inputs.iter().map(client::payload).collect::<anyhow::Result<_>>()?;
    let (body, head_len) = match plan.protocol {
        Protocol::Http => {
            let (b, n) = client::http_body(&plan.model, &plan.inputs, &data);
            (b, Some(n))
        }
        Protocol::Grpc => (client::grpc_body(&plan.model, &plan.inputs, &data), None),
    };
    drop(data);
    let path = client::infer_path(plan.protocol, &plan.model);
    let batch = plan.inputs.first().and_then(|i| i.shape.first()).copied().unwrap_or(1).max(1) as f64;
    // One request first: a wrong URL, model or input fails here, with the server's message.
    let mut probe = Conn::open(plan.protocol, plan.authority.clone()).await?;
    probe
        .send(&plan.authority, &path, body.clone(), head_len)
        .await
        .map_err(|e| anyhow::anyhow!("the first request to {} ({:?}) failed: {e:#}", plan.authority, plan.model))?;
    drop(probe);
    let mut reports = Vec::new();
    for &c in &plan.concurrency {
        let (shared, threads) = match plan.protocol {
            Protocol::Grpc => {
                let n = plan.grpc_connections.clamp(1, c);
                let threads = match plan.grpc_threads.min(n) {
                    0 => None,
                    t => Some(ConnThreads::start(t, "tch-streams-loadgen-h2")?),
                };
                let mut v = Vec::new();
                for j in 0..n {
                    // Opened on its thread: the socket and the connection's task live there.
                    v.push(match &threads {
                        Some(t) => t.handle(j).spawn(Conn::open(plan.protocol, plan.authority.clone())).await??,
                        None => Conn::open(plan.protocol, plan.authority.clone()).await?,
                    });
                }
                (v, threads)
            }
            Protocol::Http => (Vec::new(), None),
        };
        let connections = if shared.is_empty() { c } else { shared.len() };
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let mut tasks = Vec::with_capacity(c);
        for k in 0..c {
            let conn = match shared.get(k % shared.len().max(1)).and_then(Conn::share) {
                Some(conn) => conn,
                None => Conn::open(plan.protocol, plan.authority.clone()).await?,
            };
            let (phase, body, path, authority, protocol) = (Arc::clone(&phase), body.clone(), path.clone(), plan.authority.clone(), plan.protocol);
            // A gRPC request's task runs on its connection's thread.
            let spawner = threads.as_ref().map_or_else(tokio::runtime::Handle::current, |t| t.handle(k % shared.len().max(1)));
            tasks.push(spawner.spawn(async move {
                let mut conn = conn;
                let mut tally = Tally::default();
                loop {
                    let p = phase.load(Ordering::Acquire);
                    if p == STOPPED {
                        return tally;
                    }
                    if conn.is_closed() {
                        match Conn::open(protocol, authority.clone()).await {
                            Ok(c) => conn = c,
                            Err(e) => {
                                note(&mut tally, &phase, format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let start = Instant::now();
                    let r = conn.send(&authority, &path, body.clone(), head_len).await;
                    let us = start.elapsed().as_micros() as u64;
                    match r {
                        Ok(_) => {
                            if phase.load(Ordering::Acquire) == COUNTING {
                                tally.latencies.record(us);
                            }
                        }
                        Err(e) => note(&mut tally, &phase, format!("{e:#}")),
                    }
                }
            }));
        }
        tokio::time::sleep(plan.warmup).await;
        phase.store(COUNTING, Ordering::Release);
        let began = Instant::now();
        tokio::time::sleep(plan.duration).await;
        phase.store(STOPPED, Ordering::Release);
        let seconds = began.elapsed().as_secs_f64();
        let mut all = Latencies::default();
        let (mut errors, mut first_error) = (0, None);
        for t in tasks {
            let t = t.await?;
            all.merge(&t.latencies);
            errors += t.errors;
            first_error = first_error.or(t.first_error);
        }
        // Every task has ended: the connections close with their threads.
        drop(shared);
        drop(threads);
        let requests = all.count();
        let ms = |us: f64| us / 1e3;
        let report = Report {
            concurrency: c,
            protocol: plan.protocol,
            connections,
            seconds,
            requests,
            errors,
            first_error,
            requests_per_s: requests as f64 / seconds,
            samples_per_s: requests as f64 * batch / seconds,
            latency_ms_mean: ms(all.mean_us()),
            latency_ms_p50: ms(all.quantile_us(0.5)),
            latency_ms_p90: ms(all.quantile_us(0.9)),
            latency_ms_p99: ms(all.quantile_us(0.99)),
        };
        each(&report);
        reports.push(report);
    }
    Ok(reports)
}

fn note(tally: &mut Tally, phase: &AtomicU8, message: String) {
    if phase.load(Ordering::Acquire) == COUNTING {
        tally.errors += 1;
        tally.first_error.get_or_insert(message);
    }
}
