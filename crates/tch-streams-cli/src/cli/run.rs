//! `tch-streams run`: drive the engine from many client threads and report throughput and
//! latency, in the spirit of trtexec.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Engine, EngineBuilder, InputSpec, Output, Ticket};
use tch_streams::models::{Builtin, Model};
use tch_streams_cli::bench::{DeviceMemory, MemoryWatch};
use tch_streams_cli::inputs::{self, format_input, parse_input, parse_int_range, InputArg, IntRange};
use tch_streams_cli::engine_args::EngineArgs;
use tch_streams_cli::parse::parse_shape;

/// A parsed `--shape` (one clap value).
#[derive(Debug, Clone)]
pub struct Shape(pub Vec<i64>);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TorchScript file to serve; give its inputs with --input (or --shape for one float32
    /// input, or --input-file).
    #[arg(long, value_name = "FILE.pt", conflicts_with = "builtin")]
    model: Option<PathBuf>,
    /// A built-in model: small-mlp (512-1024-1024-512), large-mlp (2048-4096-4096-2048) or
    /// transformer (encoder layer, d_model 256, 4 heads, ff 1024).
    #[arg(long, default_value = "small-mlp", value_parser = |s: &str| s.parse::<Builtin>())]
    builtin: Builtin,
    /// Shape of one request, batch first (e.g. 1x512): shorthand for one float32 --input.
    /// Default: the built-in's reference shape (small-mlp 1x512, large-mlp 64x2048,
    /// transformer 1x64x256).
    #[arg(long, value_parser = |s: &str| parse_shape(s).map(Shape), conflicts_with_all = ["input", "input_file"])]
    shape: Option<Shape>,
    /// One input of the model, SHAPE:DTYPE with the batch first, repeated in the order of
    /// forward's arguments, e.g. --input 1x128:int64 --input 1x128:int64. Dtypes: float32,
    /// float16, bfloat16, int64, int32, bool (default float32). Every input must have the same
    /// batch size.
    #[arg(long, value_name = "SHAPE:DTYPE", value_parser = parse_input, conflicts_with = "input_file")]
    input: Vec<InputArg>,
    /// Integer inputs are filled uniformly from LO..HI (HI excluded), so embedding lookups get
    /// valid ids; e.g. 0..30522 for a BERT vocabulary.
    #[arg(long, value_name = "LO..HI", default_value = "0..100", value_parser = parse_int_range)]
    int_range: IntRange,
    /// Real data for one input: a .npy file (samples along dim 0), repeated in the order of
    /// forward's arguments. Every request sends the whole array.
    #[arg(long, value_name = "FILE.npy")]
    input_file: Vec<PathBuf>,
    // The engine's flags (--device, --workers, --batch-max, --batch-wait-us, --buckets,
    // --cuda-graphs, --no-cuda-graphs, --per-worker-replicas), shared with `serve`; `run`
    // accepts --batch-wait-us alone (it is then unused: the engine batches automatically).
    #[command(flatten)]
    engine: EngineArgs,
    /// Promise that inputs are complete when submitted (skips the per-request event that
    /// orders a worker after the submitting thread's stream). True here, since the inputs are
    /// made once and synchronised; off by default to measure what an application gets.
    #[arg(long)]
    inputs_ready: bool,
    /// Deliver results on the host instead of on the device.
    #[arg(long)]
    cpu_output: bool,
    /// Client threads submitting requests.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests each client keeps in flight (1 = strictly one at a time).
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Each client thread binds its own pool stream before submitting, as an application whose
    /// threads work on their own streams (default: the device's default stream).
    #[arg(long)]
    client_streams: bool,
    /// Start inputs on the host (copied by the workers) instead of on the first device.
    #[arg(long)]
    host_inputs: bool,
    /// Total requests to run. Without --duration, the run lasts until they are all answered (or
    /// until --stall-timeout-s passes with none answered); with it, it stops at whichever limit
    /// comes first.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds to run [default: 5, when --requests is not given]. Requests still unanswered 10 s
    /// after it are reported as stuck, and the run exits 1 without waiting for them.
    #[arg(long)]
    duration: Option<f64>,
    /// Longest the run waits, with requests outstanding, for any answer, seconds; then it reports
    /// the unanswered requests as stuck and exits 1 without waiting for them (this bounds a run of
    /// --requests without --duration on a model that hangs).
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    stall_timeout_s: f64,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// Bounds of the numeric flags of `run` alone (the engine's are checked by [`EngineArgs::check`]):
/// generous for any real use, small enough that nothing overflows or allocates absurdly.
const MAX_CLIENTS: usize = 4096;
const MAX_INFLIGHT: usize = 65_536;
/// Most requests in flight over all clients (--clients x --inflight).
const MAX_IN_FLIGHT: usize = 1 << 20;
const MAX_DURATION_S: f64 = 86_400.0;
/// How long the trial request at start may take before the model counts as stuck.
const TRIAL_LIMIT: Duration = Duration::from_secs(120);
/// How long requests still unanswered at the end of `--duration` get before they count as stuck.
const GRACE: Duration = Duration::from_secs(10);

impl Args {
    /// How long the run may last: --duration, or 5 s when neither limit is given.
    fn seconds(&self) -> Option<f64> {
        match (self.duration, self.requests) {
            (Some(d), _) => Some(d),
            (None, None) => Some(5.0),
            (None, Some(_)) => None,
        }
    }

    /// Every numeric flag in range, with an error that names the flag and the accepted range.
    fn check(&self) -> anyhow::Result<()> {
        let within = |name: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                bail!("--{name} {v} is out of range: expected {lo}..={hi}");
            }
            Ok(())
        };
        self.engine.check()?;
        within("clients", self.clients, 1, MAX_CLIENTS)?;
        within("inflight", self.inflight, 1, MAX_INFLIGHT)?;
        let in_flight = self.clients.saturating_mul(self.inflight);
        if in_flight > MAX_IN_FLIGHT {
            bail!(
                "--clients {} x --inflight {} = {in_flight} requests in flight is over the limit of {MAX_IN_FLIGHT}: lower --inflight or --clients",
                self.clients,
                self.inflight
            );
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0 && d <= MAX_DURATION_S) {
                bail!("--duration {d} is out of range: expected seconds in (0, {MAX_DURATION_S}] (one day)");
            }
        }
        if !(self.stall_timeout_s.is_finite() && self.stall_timeout_s > 0.0 && self.stall_timeout_s <= MAX_DURATION_S) {
            bail!("--stall-timeout-s {} is out of range: expected seconds in (0, {MAX_DURATION_S}] (one day)", self.stall_timeout_s);
        }
        if self.requests == Some(0) {
            bail!("--requests 0: expected at least 1 (or leave it out and use --duration)");
        }
        Ok(())
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    a.check()?;
    tch_streams::runtime::verify(&Default::default()).context("preflight failed")?;
    let input_device = if a.host_inputs { Device::Cpu } else { a.engine.devices.device.first() };
    let (model, name) = match &a.model {
        Some(path) => (Model::TorchScript(path.clone()), path.display().to_string()),
        None => (Model::Builtin(a.builtin), a.builtin.to_string()),
    };
    let (specs, request) = request_inputs(&a, input_device)?;
    let rows = specs[0].shape[0] as u64;
    // Device memory (CUDA): the peak counts from just before the build.
    let mut memory = MemoryWatch::start(a.engine.devices());
    let engine = Arc::new(builder(&a, model, &specs, &request)?.build()?);
    memory.after_build();
    let built_memory = memory.finish();
    // One trial request with the declared inputs: inputs that can only fail are refused here,
    // once, instead of failing every request of the run.
    match engine.submit(request.iter().map(Tensor::shallow_clone).collect::<Vec<_>>()).wait_outputs_timeout(TRIAL_LIMIT) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "the model fails on the declared inputs ({}): {e}; check --input/--shape/--input-file against the model's forward",
            specs.iter().map(format_input).collect::<Vec<_>>().join(" ")
        ),
        Err(_) => {
            eprintln!("error: the trial request at start got no answer in {} s: the model is stuck on these inputs", TRIAL_LIMIT.as_secs());
            // The worker cannot be stopped: leave without waiting for it.
            return Ok(1);
        }
    }
    let shown: Vec<String> = specs.iter().map(format_input).collect();
    if !a.json {
        print_start(&a, &name, &shown, &engine, built_memory);
    }
    tch_streams::stream::synchronize_device(input_device)?;

    let counts = Counts::default();
    // Checked above: finite, positive, at most a day.
    let seconds = a.seconds();
    let deadline_after = seconds.map(Duration::from_secs_f64);
    let barrier = Arc::new(Barrier::new(a.clients + 1));
    let bar = progress(&a, a.requests);
    let bind = a.client_streams.then_some(input_device).filter(|d| *d != Device::Cpu);
    let clients: Vec<_> = (0..a.clients)
        .map(|_| {
            let client = Client {
                engine: Arc::clone(&engine),
                xs: request.iter().map(Tensor::shallow_clone).collect(),
                inflight: a.inflight,
                bind,
                budget: a.requests,
                deadline_after,
                barrier: Arc::clone(&barrier),
                counts: counts.clone(),
            };
            std::thread::spawn(move || client.run())
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    if let Some(code) = watch(&a, &engine, &clients, &counts, &bar, start, rows) {
        // Stuck workers cannot be stopped: leave without joining them.
        return Ok(code);
    }
    let wall = start.elapsed().as_secs_f64();
    for c in clients {
        c.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    bar.finish_and_clear();
    engine.shutdown();
    let errors = std::mem::take(&mut *counts.errors.lock());
    let failures = counts.failed.load(Ordering::Relaxed);
    let outcome = Outcome { completed: counts.done.load(Ordering::Relaxed), failures, wall, rows, errors };
    report(&a, &name, &shown, &engine, memory.finish(), &outcome)?;
    Ok(if failures == 0 { 0 } else { 1 })
}

/// The request every client sends: its inputs' specs and tensors (from `--input-file`, or made
/// from `--input`/`--shape`/the built-in's shape on `input_device`), checked to carry samples and
/// the same number of them in every input.
fn request_inputs(a: &Args, input_device: Device) -> anyhow::Result<(Vec<InputArg>, Vec<Tensor>)> {
    let (specs, request): (Vec<InputArg>, Vec<Tensor>) = if !a.input_file.is_empty() {
        let tensors = a.input_file.iter().map(|p| inputs::read_npy(p)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        let tensors = tensors
            .into_iter()
            .map(|t| t.f_to_device(input_device).map_err(|e| anyhow::anyhow!("cannot move --input-file data to {input_device:?}: {}", inputs::one_line(&e))))
            .collect::<Result<Vec<_>, _>>()?;
        (tensors.iter().map(inputs::describe).collect(), tensors)
    } else {
        let specs = if !a.input.is_empty() {
            a.input.clone()
        } else if let Some(shape) = &a.shape {
            vec![InputArg { shape: shape.0.clone(), kind: Kind::Float }]
        } else if a.model.is_some() {
            bail!("--model needs its inputs: --input SHAPE:DTYPE per argument of forward (e.g. --input 1x128:int64), --shape for one float32 input, or --input-file FILE.npy");
        } else {
            let mut shape = vec![a.builtin.default_batch()];
            shape.extend(a.builtin.sample_shape());
            vec![InputArg { shape, kind: Kind::Float }]
        };
        let tensors = specs.iter().map(|s| inputs::generate(s, a.int_range, input_device)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        (specs, tensors)
    };
    let rows = specs[0].shape[0];
    if rows < 1 {
        bail!("input 0 ({}) has no samples: every request would fail; give at least one row (an empty .npy file?)", format_input(&specs[0]));
    }
    if let Some((i, s)) = specs.iter().enumerate().find(|(_, s)| s.shape[0] != rows) {
        bail!("input {i} ({}) has batch {} but input 0 has {rows}: every input of a request carries the same samples", format_input(s), s.shape[0]);
    }
    Ok((specs, request))
}

/// The engine's builder: the shared engine flags, then what only `run` says (where results go,
/// the queue for every client's window, the inputs' readiness promise) and, for a TorchScript
/// model, its inputs and sample inputs like the requests'.
fn builder(a: &Args, model: Model, specs: &[InputArg], request: &[Tensor]) -> anyhow::Result<EngineBuilder> {
    let mut builder = a
        .engine
        .configure(Engine::builder(model))
        .output(if a.cpu_output { Output::Cpu } else { Output::OnDevice })
        .queue_capacity((a.clients * a.inflight).clamp(1024, 1 << 24))
        .inputs_ready(a.inputs_ready);
    if a.model.is_some() {
        builder = builder.inputs(specs.iter().map(|s| InputSpec::new(&s.shape[1..], s.kind)).collect());
        // Warm-up and calibration run on inputs like the requests' (--int-range, --input-file),
        // not zeros, which a model may refuse.
        builder = if a.input_file.is_empty() {
            builder.sample_inputs(inputs::sample_maker(specs.to_vec(), a.int_range))
        } else {
            builder.sample_inputs(inputs::sample_rows(request).map_err(anyhow::Error::msg)?)
        };
    }
    Ok(builder)
}

/// The text header: the model, the engine's configuration with its reasons, the workers and the
/// memory after the build.
fn print_start(a: &Args, name: &str, shown: &[String], engine: &Engine, built_memory: Option<DeviceMemory>) {
    println!("model {name}, request inputs {}, {} client(s) x {} in flight", shown.join(" "), a.clients, a.inflight);
    println!("engine: {}", engine.config());
    for why in &engine.config().reasons {
        println!("  {why}");
    }
    for w in engine.workers() {
        println!("  worker {} on {:?}: {}", w.index, w.device, w.stream);
    }
    if let Some(m) = built_memory {
        println!("memory      after build {:.2} GB reserved ({:.2} GB allocated)", m.after_build_gb(), m.after_build_allocated_bytes as f64 / 1e9);
    }
}

/// What the clients count, shared between them and the main thread.
#[derive(Clone, Default)]
struct Counts {
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Requests handed out so far (against `--requests`).
    issued: Arc<AtomicU64>,
    /// Every distinct failure message with its count.
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// One client thread: keeps `inflight` requests in flight until the budget or the deadline,
/// then waits for what it sent.
struct Client {
    engine: Arc<Engine>,
    xs: Vec<Tensor>,
    inflight: usize,
    /// Bind a pool stream of this device first (`--client-streams`).
    bind: Option<Device>,
    budget: Option<u64>,
    deadline_after: Option<Duration>,
    barrier: Arc<Barrier>,
    counts: Counts,
}

impl Client {
    fn run(self) {
        let _ng = tch::no_grad_guard();
        if let Some(device) = self.bind {
            let s = tch_streams::stream::Stream::from_pool(device, tch_streams::stream::Priority::Normal).expect("a pool stream");
            tch_streams::stream::bind_thread(&s).expect("bind the client's stream");
        }
        let c = &self.counts;
        let mut window: VecDeque<Ticket> = VecDeque::new();
        self.barrier.wait();
        let start = Instant::now();
        loop {
            // Stop at the first limit reached: the request budget or the deadline.
            let in_time = self.deadline_after.is_none_or(|d| start.elapsed() < d);
            let more = in_time && self.budget.is_none_or(|n| c.issued.fetch_add(1, Ordering::Relaxed) < n);
            if more {
                window.push_back(self.engine.submit(self.xs.iter().map(Tensor::shallow_clone).collect::<Vec<_>>()));
            }
            if window.len() >= self.inflight || (!more && !window.is_empty()) {
                match window.pop_front().expect("non-empty").wait_outputs() {
                    Ok(_) => {
                        c.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        *c.errors.lock().entry(e.to_string()).or_default() += 1;
                    }
                }
            }
            if !more && window.is_empty() {
                break;
            }
        }
    }
}

/// Watches the clients until they are done, updating the progress bar; `Some(1)` when requests
/// are stuck ([`GRACE`] past `--duration`, or `--stall-timeout-s` without any answer), after
/// saying so on stderr.
fn watch(a: &Args, engine: &Engine, clients: &[std::thread::JoinHandle<()>], counts: &Counts, bar: &ProgressBar, start: Instant, rows: u64) -> Option<i32> {
    let give_up = a.seconds().map(|s| Duration::from_secs_f64(s) + GRACE);
    let stall = Duration::from_secs_f64(a.stall_timeout_s);
    // The last moment any request was answered (or the start).
    let (mut answered, mut progress_at) = (0, Instant::now());
    while clients.iter().any(|c| !c.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let (done, failed) = (counts.done.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
        if done + failed != answered {
            (answered, progress_at) = (done + failed, Instant::now());
        }
        let st = engine.stats();
        let unanswered = st.submitted.saturating_sub(st.completed + st.failed + st.cancelled);
        let why = if give_up.is_some_and(|g| start.elapsed() > g) {
            Some(format!("{} s after the run's end", GRACE.as_secs()))
        } else if unanswered > 0 && progress_at.elapsed() > stall {
            Some(format!("after {} s without any answer (--stall-timeout-s)", a.stall_timeout_s))
        } else {
            None
        };
        if let Some(why) = why {
            bar.finish_and_clear();
            eprintln!("error: {unanswered} request(s) still unanswered {why} ({done} completed, {failed} failed): the model is stuck on these inputs");
            return Some(1);
        }
        match a.requests {
            Some(_) => bar.set_position(done),
            None => bar.set_position((start.elapsed().as_secs_f64() * 1000.0).min(a.seconds().unwrap_or(0.0) * 1000.0) as u64),
        }
        bar.set_message(format!("{:.0} samples/s", done as f64 * rows as f64 / start.elapsed().as_secs_f64()));
    }
    None
}

/// What the run measured.
struct Outcome {
    completed: u64,
    failures: u64,
    wall: f64,
    /// Samples per request.
    rows: u64,
    errors: BTreeMap<String, u64>,
}

/// The summary (text or `--json` on stdout), then every distinct failure on stderr.
fn report(a: &Args, name: &str, shown: &[String], engine: &Engine, memory: Option<DeviceMemory>, o: &Outcome) -> anyhow::Result<()> {
    let stats = engine.stats();
    let (completed, failures, wall, rows) = (o.completed, o.failures, o.wall, o.rows);
    let samples_per_s = completed as f64 * rows as f64 / wall;
    if a.json {
        let mut doc = json!({
            "model": name, "inputs": shown, "devices": a.engine.devices().iter().map(|d| format!("{d:?}")).collect::<Vec<_>>(),
            "workers": engine.workers().iter().map(|w| json!({"index": w.index, "device": format!("{:?}", w.device), "stream": w.stream.id()})).collect::<Vec<_>>(),
            "config": engine.config(),
            "clients": a.clients, "inflight": a.inflight, "wall_s": wall,
            "completed": completed, "failed": failures, "samples_per_s": samples_per_s,
            "requests_per_s": completed as f64 / wall, "stats": stats, "errors": o.errors,
        });
        // Device memory: CUDA only, absent elsewhere.
        if let (Some(m), Some(map)) = (memory, doc.as_object_mut()) {
            map.insert("memory".into(), serde_json::to_value(m)?);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("completed {completed} requests ({} samples) in {wall:.2} s, failed {failures}", completed * rows);
        println!("throughput  {samples_per_s:.0} samples/s ({:.0} requests/s)", completed as f64 / wall);
        let us = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} us"));
        println!("latency     p50 {}  p95 {}  p99 {}", us(stats.latency_us_p50), us(stats.latency_us_p95), us(stats.latency_us_p99));
        println!("  queue     p50 {}  p99 {}   (submitted until a worker began the batch)", us(stats.queue_us_p50), us(stats.queue_us_p99));
        println!("  compute   p50 {}  p99 {}   (the batch's begin until the answer)", us(stats.compute_us_p50), us(stats.compute_us_p99));
        let batches: u64 = stats.batch_sizes.values().sum();
        let mean = stats.batch_sizes.iter().map(|(k, v)| *k as u64 * v).sum::<u64>() as f64 / batches.max(1) as f64;
        println!("batches     {batches} (mean {mean:.1} requests, largest {})", stats.batch_sizes.keys().last().unwrap_or(&0));
        let st = &stats.stages;
        let per = |us: u64| us as f64 / st.batches.max(1) as f64;
        println!(
            "per batch   order {:.1} us ({} waits, {} skipped), assemble {:.1} us, forward {:.1} us, device wait {:.1} us, deliver {:.1} us; {} padding samples",
            per(st.order_us),
            st.ready_waits,
            st.ready_skipped,
            per(st.assemble_us),
            per(st.forward_us),
            per(st.complete_us),
            per(st.deliver_us),
            st.padded_samples
        );
        if let Some(m) = memory {
            println!(
                "memory      after build {:.2} GB reserved ({:.2} GB allocated); peak {:.2} GB reserved ({:.2} GB allocated) since before the build, {:.2} GB while serving",
                m.after_build_gb(),
                m.after_build_allocated_bytes as f64 / 1e9,
                m.peak_gb(),
                m.peak_allocated_bytes as f64 / 1e9,
                m.serving_peak_bytes as f64 / 1e9
            );
        }
    }
    // Every distinct failure, with its count, on stderr (also in --json mode, where stdout is
    // the document).
    for (message, count) in &o.errors {
        eprintln!("failed {count}x: {message}");
    }
    Ok(())
}

fn progress(a: &Args, budget: Option<u64>) -> ProgressBar {
    if a.json {
        return ProgressBar::hidden();
    }
    let (len, unit) = match budget {
        Some(n) => (n, "requests"),
        None => ((a.seconds().unwrap_or(0.0) * 1000.0) as u64, "ms"),
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
