//! `tch-streams run`: drive the engine from many client threads and report throughput and
//! latency, in the spirit of trtexec.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, Output, Replicas, Ticket};
use tch_streams::models::{Builtin, Model};
use tch_streams_cli::parse::{parse_devices, parse_shape};

/// A parsed `--device` list (one clap value).
#[derive(Debug, Clone)]
pub struct Devices(pub Vec<Device>);

/// A parsed `--shape` (one clap value).
#[derive(Debug, Clone)]
pub struct Shape(pub Vec<i64>);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TorchScript file to serve (needs --shape).
    #[arg(long, value_name = "FILE.pt", conflicts_with = "builtin")]
    model: Option<PathBuf>,
    /// A built-in model: small-mlp (512-1024-1024-512), large-mlp (2048-4096-4096-2048) or
    /// transformer (encoder layer, d_model 256, 4 heads, ff 1024).
    #[arg(long, default_value = "small-mlp", value_parser = |s: &str| s.parse::<Builtin>())]
    builtin: Builtin,
    /// Shape of one request, batch first (e.g. 1x512). Default: the built-in's reference shape
    /// (small-mlp 1x512, large-mlp 64x2048, transformer 1x64x256).
    #[arg(long, value_parser = |s: &str| parse_shape(s).map(Shape))]
    shape: Option<Shape>,
    /// Devices: auto, cpu, mps, cuda:N, or a list like cuda:0,cuda:1 (workers go round-robin).
    #[arg(long, default_value = "auto", value_parser = |s: &str| parse_devices(s).map(Devices))]
    device: Devices,
    /// Worker threads, each with its own stream.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Dynamic batching: most samples per batch (0 = off).
    #[arg(long, default_value_t = 0)]
    batch_max: usize,
    /// Dynamic batching: longest a request waits for company, microseconds.
    #[arg(long, default_value_t = 200)]
    batch_wait_us: u64,
    /// Capture and replay CUDA graphs (needs a build with --features cuda-graphs).
    #[arg(long)]
    cuda_graphs: bool,
    /// One model instance per worker instead of one per device.
    #[arg(long)]
    per_worker_replicas: bool,
    /// Deliver results on the host instead of on the device.
    #[arg(long)]
    cpu_output: bool,
    /// Client threads submitting requests.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests each client keeps in flight (1 = strictly one at a time).
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Start inputs on the host (copied by the workers) instead of on the first device.
    #[arg(long)]
    host_inputs: bool,
    /// Total requests to run (overrides --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    tch_streams::runtime::verify(&Default::default()).context("preflight failed")?;
    if a.clients == 0 || a.inflight == 0 {
        bail!("--clients and --inflight must be at least 1");
    }
    let (model, shape, name) = match &a.model {
        Some(path) => {
            let shape = a.shape.clone().map(|s| s.0).context("--model needs --shape (batch first, e.g. 1x3x224x224)")?;
            (Model::TorchScript(path.clone()), shape, path.display().to_string())
        }
        None => {
            let mut shape = vec![a.builtin.default_batch()];
            shape.extend(a.builtin.sample_shape());
            (Model::Builtin(a.builtin), a.shape.clone().map_or(shape, |s| s.0), a.builtin.to_string())
        }
    };
    let batching = if a.batch_max > 0 {
        Batching::Dynamic { max_batch: a.batch_max, max_wait: Duration::from_micros(a.batch_wait_us) }
    } else {
        Batching::Off
    };
    let mut builder = Engine::builder(model)
        .devices(a.device.0.clone())
        .workers(a.workers)
        .batching(batching)
        .cuda_graphs(a.cuda_graphs)
        .replicas(if a.per_worker_replicas { Replicas::PerWorker } else { Replicas::Shared })
        .output(if a.cpu_output { Output::Cpu } else { Output::OnDevice })
        .queue_capacity((a.clients * a.inflight).max(64))
        // The input below is made once and synchronised before any request: no per-request event.
        .inputs_ready(true);
    if a.model.is_some() {
        builder = builder.input_shape(shape[1..].to_vec()).input_kind(Kind::Float);
    }
    let engine = Arc::new(builder.build()?);
    if !a.json {
        println!("model {name}, request shape {shape:?}, {} client(s) x {} in flight", a.clients, a.inflight);
        for w in engine.workers() {
            println!("  worker {} on {:?}: {}", w.index, w.device, w.stream);
        }
    }
    let input_device = if a.host_inputs { Device::Cpu } else { a.device.0[0] };
    let input = Tensor::randn(shape.as_slice(), (Kind::Float, input_device));
    tch_streams::stream::synchronize_device(input_device)?;

    let rows = shape[0] as u64;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let budget = a.requests;
    let deadline_after = Duration::from_secs_f64(a.duration);
    let barrier = Arc::new(Barrier::new(a.clients + 1));
    let bar = progress(&a, budget);
    let clients: Vec<_> = (0..a.clients)
        .map(|_| {
            let (engine, done, failed, issued, barrier) =
                (Arc::clone(&engine), Arc::clone(&done), Arc::clone(&failed), Arc::clone(&issued), Arc::clone(&barrier));
            let x = input.shallow_clone();
            let inflight = a.inflight;
            std::thread::spawn(move || {
                let _ng = tch::no_grad_guard();
                let mut window: VecDeque<Ticket> = VecDeque::new();
                barrier.wait();
                let start = Instant::now();
                loop {
                    let more = match budget {
                        Some(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                        None => start.elapsed() < deadline_after,
                    };
                    if more {
                        window.push_back(engine.submit(x.shallow_clone()));
                    }
                    if window.len() >= inflight || (!more && !window.is_empty()) {
                        let outcome = window.pop_front().expect("non-empty").wait();
                        let counter = if outcome.is_ok() { &done } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if !more && window.is_empty() {
                        break;
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    while clients.iter().any(|c| !c.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let n = done.load(Ordering::Relaxed);
        match budget {
            Some(_) => bar.set_position(n),
            None => bar.set_position((start.elapsed().as_secs_f64() * 1000.0).min(a.duration * 1000.0) as u64),
        }
        bar.set_message(format!("{:.0} samples/s", n as f64 * rows as f64 / start.elapsed().as_secs_f64()));
    }
    let wall = start.elapsed().as_secs_f64();
    for c in clients {
        c.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    bar.finish_and_clear();
    engine.shutdown();
    let stats = engine.stats();
    let completed = done.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    let samples_per_s = completed as f64 * rows as f64 / wall;
    if a.json {
        let doc = json!({
            "model": name, "shape": shape, "devices": a.device.0.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>(),
            "workers": engine.workers().iter().map(|w| json!({"index": w.index, "device": format!("{:?}", w.device), "stream": w.stream.id()})).collect::<Vec<_>>(),
            "batching": a.batch_max, "batch_wait_us": a.batch_wait_us, "cuda_graphs": a.cuda_graphs,
            "clients": a.clients, "inflight": a.inflight, "wall_s": wall,
            "completed": completed, "failed": failures, "samples_per_s": samples_per_s,
            "requests_per_s": completed as f64 / wall, "stats": stats,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("completed {completed} requests ({} samples) in {wall:.2} s, failed {failures}", completed * rows);
        println!("throughput  {samples_per_s:.0} samples/s ({:.0} requests/s)", completed as f64 / wall);
        let us = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} us"));
        println!("latency     p50 {}  p95 {}  p99 {}", us(stats.latency_us_p50), us(stats.latency_us_p95), us(stats.latency_us_p99));
        let batches: u64 = stats.batch_sizes.values().sum();
        let mean = stats.batch_sizes.iter().map(|(k, v)| *k as u64 * v).sum::<u64>() as f64 / batches.max(1) as f64;
        println!("batches     {batches} (mean {mean:.1} requests, largest {})", stats.batch_sizes.keys().last().unwrap_or(&0));
    }
    Ok(if failures == 0 { 0 } else { 1 })
}

fn progress(a: &Args, budget: Option<u64>) -> ProgressBar {
    if a.json {
        return ProgressBar::hidden();
    }
    let (len, unit) = match budget {
        Some(n) => (n, "requests"),
        None => ((a.duration * 1000.0) as u64, "ms"),
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
