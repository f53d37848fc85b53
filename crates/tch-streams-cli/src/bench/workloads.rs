//! Running the sweep: for each workload, one model instance; for each (mode, T), one point with
//! its own threads, inputs made before timing (on the device, or on the host with `--host-io`
//! and for `limit-host`), and the protocol of
//! [`measure`](super::measure).

use super::config::{BenchConfig, Workload};
use super::measure::{measure, Client, Factory, Timing};
use super::memory::{DeviceMemory, MemoryWatch};
use super::modes::Mode;
use super::schema::{Latency, PointResult, Skipped, Stats};
use parking_lot::Mutex;
use std::time::Instant;
use crate::inputs;
use tch_streams::engine::{Batching, Engine, InputSpec, Output, Ticket};
use tch_streams::models::{Forward, Model};
use tch_streams::stream::{bind_thread, Priority, Stream};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Tensor};

/// Results and skips of a whole sweep, in run order.
pub(crate) struct Sweep {
    pub(crate) results: Vec<PointResult>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) tune: Vec<PointResult>,
}

/// One hand-set engine configuration of the `--tune` sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuneConfig {
    /// Workers in all.
    pub workers: usize,
    /// Dynamic batching as the engine sizes it (on), or none (off).
    pub batching: bool,
    /// CUDA graphs.
    pub graphs: bool,
}

impl TuneConfig {
    /// Workers 1, 2, 4, 8, 16 × batching off/on × graphs off/on (graphs only where the device
    /// and build have them).
    pub fn grid(graphs: bool) -> Vec<TuneConfig> {
        let mut v = Vec::new();
        for workers in [1, 2, 4, 8, 16] {
            for batching in [false, true] {
                for g in if graphs { &[false, true][..] } else { &[false][..] } {
                    v.push(TuneConfig { workers, batching, graphs: *g });
                }
            }
        }
        v
    }

    /// The mode name in results: `tune:w4-batch-graphs`.
    ///
    /// ```
    /// use tch_streams_cli::bench::TuneConfig;
    /// assert_eq!(TuneConfig { workers: 4, batching: true, graphs: false }.name(), "tune:w4-batch-nographs");
    /// ```
    pub fn name(&self) -> String {
        format!(
            "tune:w{}-{}-{}",
            self.workers,
            if self.batching { "batch" } else { "nobatch" },
            if self.graphs { "graphs" } else { "nographs" }
        )
    }
}

/// Runs every (workload, mode, T) of `cfg`. A mode the device cannot run, a model that cannot
/// be loaded and a point that fails are recorded under `skipped`; only the sweep goes on.
pub(crate) fn sweep(cfg: &BenchConfig) -> Sweep {
    let mut out = Sweep { results: Vec::new(), skipped: Vec::new(), tune: Vec::new() };
    let mut runnable = Vec::new();
    for &mode in &cfg.modes {
        match mode.unavailable_on(&cfg.spread_devices) {
            None => runnable.push(mode),
            Some(reason) => {
                tracing::info!("skipping {mode}: {reason}");
                for w in &cfg.workloads {
                    out.skipped.push(Skipped { workload: w.name(), mode: mode.to_string(), reason: reason.clone(), stuck: false });
                }
            }
        }
    }
    let tune: Vec<TuneConfig> = if cfg.tune_threads.is_empty() {
        Vec::new()
    } else {
        TuneConfig::grid(Mode::EngineGraphs.unavailable(cfg.device).is_none())
    };
    let total = (cfg.workloads.len() * (runnable.len() * cfg.threads.len() + tune.len() * cfg.tune_threads.len())) as u64;
    let bar = progress_bar(cfg.progress, total);
    tch::manual_seed(0);
    for workload in &cfg.workloads {
        let name = workload.name();
        let instance = match workload.model().instantiate(cfg.device) {
            Ok(m) => m,
            Err(e) => {
                for &mode in &runnable {
                    out.skipped.push(Skipped { workload: name.clone(), mode: mode.to_string(), reason: format!("could not load the model: {e}"), stuck: false });
                }
                bar.inc((runnable.len() * cfg.threads.len() + tune.len() * cfg.tune_threads.len()) as u64);
                continue;
            }
        };
        let mut jobs: Vec<(Mode, Option<TuneConfig>, usize)> = Vec::new();
        for &mode in &runnable {
            jobs.extend(cfg.threads.iter().map(|&t| (mode, None, t)));
        }
        for &t in &cfg.tune_threads {
            jobs.extend(tune.iter().map(|&c| (Mode::Engine, Some(c), t)));
        }
        for (mode, tuned, t) in jobs {
            let label = tuned.map_or_else(|| mode.to_string(), |c| c.name());
            bar.set_message(format!("{name} {label} T={t}"));
            match point(cfg, workload, &instance, mode, tuned, t) {
                Ok(measured) => {
                    let stats = Stats::of(&measured.runs).unwrap_or(Stats { median: 0.0, min: 0.0, max: 0.0 });
                    tracing::info!("{name} {label} T={t}: median {:.1} samples/s", stats.median);
                    let result = PointResult {
                        workload: name.clone(),
                        mode: label,
                        threads: t,
                        batch: workload.batch(),
                        samples_per_s: stats,
                        runs: measured.runs,
                        latency_us: measured.latency,
                        engine_config: measured.engine_config,
                        memory: measured.memory,
                    };
                    if tuned.is_some() {
                        out.tune.push(result);
                    } else {
                        out.results.push(result);
                    }
                }
                Err(Failure::Failed(e)) => {
                    let reason = format!("threads={t}: failed: {}", without_backtrace(&e));
                    tracing::warn!("{name} {label}: {reason}");
                    out.skipped.push(Skipped { workload: name.clone(), mode: label, reason, stuck: false });
                }
                Err(Failure::Stuck(e)) => {
                    let reason = format!("threads={t}: stuck: {e}");
                    tracing::warn!("{name} {label}: {reason}");
                    out.skipped.push(Skipped { workload: name.clone(), mode: label, reason, stuck: true });
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    out
}

/// A point's error message, every line of it, less the C++ backtrace libtorch appends (from its
/// "Exception raised from" line on); joined with "; " so that it stays one table row.
pub fn without_backtrace(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Exception raised from") && !l.starts_with("frame #"))
        .filter(|l| !l.is_empty())
        .collect();
    if kept.is_empty() {
        "no message".into()
    } else {
        kept.join("; ")
    }
}

fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} points, {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// What one point measured.
struct Measured {
    runs: Vec<f64>,
    latency: Option<Latency>,
    engine_config: Option<String>,
    memory: Option<DeviceMemory>,
}

impl From<Vec<f64>> for Measured {
    fn from(runs: Vec<f64>) -> Measured {
        Measured { runs, latency: None, engine_config: None, memory: None }
    }
}

/// Why a point has no result.
enum Failure {
    /// It failed; the message says why.
    Failed(String),
    /// Requests were still unanswered at its deadline; the message says how long it waited.
    Stuck(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Failed(e)
    }
}

/// Measures one (workload, mode or tune configuration, T).
fn point(cfg: &BenchConfig, w: &Workload, model: &Arc<dyn Forward>, mode: Mode, tuned: Option<TuneConfig>, t: usize) -> Result<Measured, Failure> {
    let device = cfg.device;
    let specs = w.inputs();
    let devices = if mode == Mode::EngineSpread { cfg.spread_devices.clone() } else { vec![device] };
    let timing = Timing {
        reps: cfg.reps,
        warmup: Duration::from_secs_f64(cfg.warmup_s),
        duration: Duration::from_secs_f64(cfg.duration_s),
        devices: devices.clone(),
    };
    // Client i's input lies on devices[i mod D] (one device except for engine-spread, whose
    // engine serves each input on the device it lies on), or on the host: with --host-io for
    // the serving modes, and always for limit-host. `limit` keeps its inputs on the device.
    // Real data is read once and copied to each client's device; otherwise each client gets
    // inputs of its own.
    let on_host = mode == Mode::LimitHost || (cfg.host_io && mode != Mode::Limit);
    let input_device = |i: usize| if on_host { Device::Cpu } else { devices[i % devices.len()] };
    let files: Vec<Tensor> = w.data().iter().map(|p| inputs::read_npy(p)).collect::<Result<_, _>>()?;
    let inputs: Vec<Vec<Tensor>> = (0..t)
        .map(|i| {
            let device = input_device(i);
            if files.is_empty() {
                specs.iter().map(|s| inputs::generate(s, w.int_range(), device)).collect::<Result<Vec<_>, _>>()
            } else {
                files.iter().map(|f| f.f_to_device(device).map_err(|e| e.to_string())).collect()
            }
        })
        .collect::<Result<_, _>>()?;
    let rows = w.batch().max(1) as u64;
    let io = if cfg.host_io { Io::Host(device) } else { Io::Device };
    match mode {
        Mode::TchDefault | Mode::TchStreams => {
            let factories = inputs.into_iter().map(|x| direct(model, x, rows, device, mode == Mode::TchStreams, io)).collect();
            ready(device)?;
            Ok(measure(factories, timing).map(Measured::from)?)
        }
        Mode::Limit | Mode::LimitHost => {
            let mut x = (0..specs.len())
                .map(|k| Tensor::f_cat(&inputs.iter().map(|xs| &xs[k]).collect::<Vec<_>>(), 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            drop(inputs);
            let (io, own_stream) = if mode == Mode::LimitHost {
                // Pinned host memory where there is a device to pin for; plain memory on CPU.
                if matches!(device, Device::Cuda(_)) {
                    let pin = |t: &Tensor| -> Result<Tensor, String> {
                        let mut p = tch_streams::host_tensor::pinned_empty(&t.size(), t.kind()).map_err(|e| e.to_string())?;
                        p.f_copy_(t).map_err(|e| inputs::one_line(&e))?;
                        Ok(p)
                    };
                    x = x.iter().map(pin).collect::<Result<Vec<_>, _>>().map_err(|e| format!("could not pin the input: {e}"))?;
                }
                (Io::Pinned(device), matches!(device, Device::Cuda(_)))
            } else {
                (Io::Device, false)
            };
            let factories = vec![direct(model, x, rows * t as u64, device, own_stream, io)];
            ready(device)?;
            Ok(measure(factories, timing).map(Measured::from)?)
        }
        Mode::Engine | Mode::EngineGraphs | Mode::EngineSpread => {
            // One device: the sweep's instance. Several: the recipe, so that the engine builds an
            // instance on each (same deterministic weights).
            let recipe = if devices.len() > 1 {
                w.model()
            } else {
                Model::instance(Arc::clone(model))
            };
            // The engine's defaults: only what the harness must say (devices, inputs, room for
            // every client's window, where answers go) and what the mode or tune point sets.
            let mut builder = Engine::builder(recipe)
                .devices(devices.clone())
                .output(if cfg.host_io { Output::Cpu } else { Output::OnDevice })
                .queue_capacity((t * cfg.window).max(1024))
                .inputs(specs.iter().map(|s| InputSpec::new(&s.shape[1..], s.kind)).collect());
            if let Workload::TorchScript { .. } = w {
                // Warm-up and calibration run on inputs like the requests' (integer ranges, real
                // data), as `run` does: not zeros, which a model may refuse.
                builder = if files.is_empty() {
                    builder.sample_inputs(inputs::sample_maker(specs.clone(), w.int_range()))
                } else {
                    builder.sample_inputs(inputs::sample_rows(&files)?)
                };
            }
            match (mode, tuned) {
                (_, Some(c)) => {
                    builder = builder
                        .workers(c.workers)
                        .batching(if c.batching { Batching::Auto } else { Batching::Off })
                        .cuda_graphs(c.graphs)
                }
                (_, None) => {
                    if let Some(e) = &cfg.engine {
                        builder = e.configure_settings(builder);
                    }
                    match mode {
                        Mode::Engine => builder = builder.cuda_graphs(false),
                        Mode::EngineGraphs => builder = builder.cuda_graphs(true),
                        _ => {}
                    }
                }
            }
            let mut memory = MemoryWatch::start(&devices);
            let engine = builder.build().map_err(|e| format!("could not build the engine: {e}"))?;
            memory.after_build();
            // The point's deadline: its own time plus the grace. A client still waiting for an
            // answer then gives up, which fails the point (every thread passes every barrier).
            let grace = Duration::from_secs_f64(cfg.point_grace_s);
            let deadline = Instant::now() + (timing.warmup + timing.duration) * timing.reps as u32 + grace;
            let stuck = AtomicBool::new(false);
            let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::new());
            let factories = inputs
                .into_iter()
                .map(|x| {
                    let (engine, latencies, stuck) = (&engine, &latencies, &stuck);
                    let window = cfg.window;
                    Box::new(move || {
                        Ok(Box::new(EngineClient { engine, x, window, pending: VecDeque::new(), rows, timed: false, seen: Vec::new(), latencies, deadline, stuck })
                            as Box<dyn Client + '_>)
                    }) as Factory<'_>
                })
                .collect();
            for &d in &devices {
                ready(d)?;
            }
            let runs = measure(factories, timing);
            let memory = memory.finish();
            if stuck.load(Ordering::SeqCst) {
                let st = engine.stats();
                let unanswered = st.submitted.saturating_sub(st.completed + st.failed + st.cancelled);
                // A stuck worker cannot be stopped, and dropping the engine would wait for it:
                // close its queue and abandon it (its threads and memory stay until the process
                // ends).
                engine.shutdown_timeout(Duration::ZERO);
                std::mem::forget(engine);
                return Err(Failure::Stuck(format!(
                    "{unanswered} request(s) still unanswered {} s after the point's time (--point-grace-s): the model is stuck on these inputs",
                    cfg.point_grace_s
                )));
            }
            engine.shutdown();
            let engine_config = engine.config().to_string();
            let latency = Latency::of(&mut latencies.into_inner());
            Ok(runs.map(|runs| Measured { runs, latency, engine_config: Some(engine_config), memory })?)
        }
    }
}

/// Waits until the inputs made on the main thread are on the device.
fn ready(device: Device) -> Result<(), String> {
    tch_streams::stream::synchronize_device(device).map_err(|e| e.to_string())
}

/// Where a direct client's inputs and answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    /// Both on the device: a call is the forward alone.
    Device,
    /// Both on the host, in pageable memory (what an application has): a call copies the
    /// inputs to this device, runs, and copies every output back, which synchronises the
    /// thread's stream. On CPU the copies are no-ops.
    Host(Device),
    /// Inputs in pinned host memory, copied to this device asynchronously on the thread's
    /// stream; outputs copied back asynchronously into pinned host memory; then the stream is
    /// synchronised, so each call ends with its answer on the host.
    Pinned(Device),
}

fn direct<'a>(model: &Arc<dyn Forward>, x: Vec<Tensor>, rows: u64, device: Device, own_stream: bool, io: Io) -> Factory<'a> {
    let model = Arc::clone(model);
    Box::new(move || {
        let stream = if own_stream {
            let s = Stream::from_pool(device, Priority::Normal).map_err(|e| e.to_string())?;
            bind_thread(&s).map_err(|e| e.to_string())?;
            s
        } else {
            Stream::current(device).map_err(|e| e.to_string())?
        };
        Ok(Box::new(DirectClient { model, x, rows, stream, io }) as Box<dyn Client + 'a>)
    })
}

/// Calls the model itself, on the thread's current stream (default, or its own pool stream).
struct DirectClient {
    model: Arc<dyn Forward>,
    x: Vec<Tensor>,
    rows: u64,
    stream: Stream,
    io: Io,
}

impl Client for DirectClient {
    fn step(&mut self) -> Result<u64, String> {
        let err = |e: tch::TchError| inputs::one_line(&e);
        match self.io {
            Io::Device => drop(self.model.run(&self.x).map_err(|e| e.to_string())?),
            Io::Host(device) => {
                let x = self.x.iter().map(|t| t.f_to_device(device)).collect::<Result<Vec<_>, _>>().map_err(err)?;
                let y = self.model.run(&x).map_err(|e| e.to_string())?;
                // A copy to pageable host memory waits for the stream: the answer is final.
                for t in y.tensors() {
                    drop(t.f_to_device(Device::Cpu).map_err(err)?);
                }
            }
            Io::Pinned(device) => {
                let x = self.x.iter().map(|t| t.f_to_device_(device, t.kind(), true, false)).collect::<Result<Vec<_>, _>>().map_err(err)?;
                let y = self.model.run(&x).map_err(|e| e.to_string())?;
                // Asynchronous copies out land in pinned host memory (libtorch's caching host
                // allocator gives the buffers); the synchronisation below makes them final.
                let host = y.tensors().into_iter().map(|t| t.f_to_device_(Device::Cpu, t.kind(), true, false)).collect::<Result<Vec<_>, _>>().map_err(err)?;
                self.stream.synchronize().map_err(|e| e.to_string())?;
                drop((x, y, host));
            }
        }
        Ok(self.rows)
    }
    fn settle(&mut self) -> Result<u64, String> {
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(0)
    }
}

/// Submits to the engine, keeping up to `window` requests in flight; in timed phases records
/// each request's latency (submission to the moment the client saw its answer).
struct EngineClient<'a> {
    engine: &'a Engine,
    x: Vec<Tensor>,
    window: usize,
    pending: VecDeque<(Ticket, Instant)>,
    rows: u64,
    timed: bool,
    seen: Vec<f64>,
    latencies: &'a Mutex<Vec<f64>>,
    /// The point's deadline: no wait for an answer goes past it.
    deadline: Instant,
    /// Set when a wait reached the deadline.
    stuck: &'a AtomicBool,
}

impl EngineClient<'_> {
    fn complete_oldest(&mut self) -> Result<u64, String> {
        match self.pending.pop_front() {
            Some((ticket, submitted)) => {
                match ticket.wait_outputs_timeout(self.deadline.saturating_duration_since(Instant::now())) {
                    Ok(outcome) => drop(outcome.map_err(|e| e.to_string())?),
                    Err(_unanswered) => {
                        self.stuck.store(true, Ordering::SeqCst);
                        return Err("a request got no answer by the point's deadline".into());
                    }
                }
                if self.timed {
                    self.seen.push(submitted.elapsed().as_secs_f64() * 1e6);
                }
                Ok(self.rows)
            }
            None => Ok(0),
        }
    }
}

impl Client for EngineClient<'_> {
    fn step(&mut self) -> Result<u64, String> {
        let submitted = Instant::now();
        let ticket = self.engine.submit(self.x.iter().map(Tensor::shallow_clone).collect::<Vec<_>>());
        self.pending.push_back((ticket, submitted));
        if self.pending.len() >= self.window {
            self.complete_oldest()
        } else {
            Ok(0)
        }
    }
    /// Results are final when a ticket resolves (the worker synchronised its stream).
    fn settle(&mut self) -> Result<u64, String> {
        let mut samples = 0;
        while !self.pending.is_empty() {
            samples += self.complete_oldest()?;
        }
        self.latencies.lock().append(&mut self.seen);
        Ok(samples)
    }
    fn phase(&mut self, timed: bool) {
        self.timed = timed;
    }
}
