//! Running the sweep: for each workload, one model instance; for each (mode, T), one point with
//! its own threads, inputs made on the device before timing, and the protocol of
//! [`measure`](super::measure).

use super::config::{BenchConfig, Workload};
use super::measure::{measure, Client, Factory, Timing};
use super::modes::Mode;
use super::schema::{PointResult, Skipped, Stats};
use crate::inputs;
use tch_streams::engine::{Batching, Engine, InputSpec, Output, Ticket};
use tch_streams::models::{Forward, Model};
use tch_streams::stream::{bind_thread, Priority, Stream};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Tensor};

/// Results and skips of a whole sweep, in run order.
pub(crate) struct Sweep {
    pub(crate) results: Vec<PointResult>,
    pub(crate) skipped: Vec<Skipped>,
}

/// Runs every (workload, mode, T) of `cfg`. A mode the device cannot run, a model that cannot
/// be loaded and a point that fails are recorded under `skipped`; only the sweep goes on.
pub(crate) fn sweep(cfg: &BenchConfig) -> Sweep {
    let mut out = Sweep { results: Vec::new(), skipped: Vec::new() };
    let mut runnable = Vec::new();
    for &mode in &cfg.modes {
        match mode.unavailable_on(&cfg.spread_devices) {
            None => runnable.push(mode),
            Some(reason) => {
                tracing::info!("skipping {mode}: {reason}");
                for w in &cfg.workloads {
                    out.skipped.push(Skipped { workload: w.name(), mode: mode.to_string(), reason: reason.clone() });
                }
            }
        }
    }
    let total = (cfg.workloads.len() * runnable.len() * cfg.threads.len()) as u64;
    let bar = progress_bar(cfg.progress, total);
    tch::manual_seed(0);
    for workload in &cfg.workloads {
        let name = workload.name();
        let instance = match workload.model().instantiate(cfg.device) {
            Ok(m) => m,
            Err(e) => {
                for &mode in &runnable {
                    out.skipped.push(Skipped { workload: name.clone(), mode: mode.to_string(), reason: format!("could not load the model: {e}") });
                }
                bar.inc((runnable.len() * cfg.threads.len()) as u64);
                continue;
            }
        };
        for &mode in &runnable {
            for &t in &cfg.threads {
                bar.set_message(format!("{name} {mode} T={t}"));
                match point(cfg, workload, &instance, mode, t) {
                    Ok(runs) => {
                        let stats = Stats::of(&runs).unwrap_or(Stats { median: 0.0, min: 0.0, max: 0.0 });
                        tracing::info!("{name} {mode} T={t}: median {:.1} samples/s", stats.median);
                        out.results.push(PointResult {
                            workload: name.clone(),
                            mode: mode.to_string(),
                            threads: t,
                            batch: workload.batch(),
                            samples_per_s: stats,
                            runs,
                        });
                    }
                    Err(e) => {
                        let reason = format!("threads={t}: failed: {}", e.lines().next().unwrap_or(""));
                        tracing::warn!("{name} {mode}: {reason}");
                        out.skipped.push(Skipped { workload: name.clone(), mode: mode.to_string(), reason });
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    out
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

/// Measures one (workload, mode, T); returns samples/s of every repetition.
fn point(cfg: &BenchConfig, w: &Workload, model: &Arc<dyn Forward>, mode: Mode, t: usize) -> Result<Vec<f64>, String> {
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
    // engine serves each input on the device it lies on).
    // Real data is read once and copied to each client's device; otherwise each client gets
    // inputs of its own.
    let files: Vec<Tensor> = w.data().iter().map(|p| inputs::read_npy(p)).collect::<Result<_, _>>()?;
    let inputs: Vec<Vec<Tensor>> = (0..t)
        .map(|i| {
            let device = devices[i % devices.len()];
            if files.is_empty() {
                specs.iter().map(|s| inputs::generate(s, w.int_range(), device)).collect::<Result<Vec<_>, _>>()
            } else {
                files.iter().map(|f| f.f_to_device(device).map_err(|e| e.to_string())).collect()
            }
        })
        .collect::<Result<_, _>>()?;
    let rows = w.batch().max(1) as u64;
    match mode {
        Mode::TchDefault | Mode::TchStreams => {
            let factories = inputs.into_iter().map(|x| direct(model, x, rows, device, mode == Mode::TchStreams)).collect();
            ready(device)?;
            measure(factories, timing)
        }
        Mode::Limit => {
            let x = (0..specs.len())
                .map(|k| Tensor::f_cat(&inputs.iter().map(|xs| &xs[k]).collect::<Vec<_>>(), 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            drop(inputs);
            let factories = vec![direct(model, x, rows * t as u64, device, false)];
            ready(device)?;
            measure(factories, timing)
        }
        Mode::Engine | Mode::EngineGraphs | Mode::EngineSpread => {
            // One device: the sweep's instance. Several: the recipe, so that the engine builds an
            // instance on each (same deterministic weights).
            let recipe = if devices.len() > 1 {
                w.model()
            } else {
                Model::instance(Arc::clone(model))
            };
            let engine = Engine::builder(recipe)
                .devices(devices.clone())
                .workers(t.min(16) * devices.len())
                .batching(Batching::Dynamic { max_batch: w.engine_max_batch().max(rows as usize), max_wait: cfg.batch_wait })
                .output(Output::OnDevice)
                .cuda_graphs(mode == Mode::EngineGraphs)
                .queue_capacity((t * cfg.window).max(64))
                .inputs(specs.iter().map(|s| InputSpec::new(&s.shape[1..], s.kind)).collect())
                .build()
                .map_err(|e| format!("could not build the engine: {e}"))?;
            let factories = inputs
                .into_iter()
                .map(|x| {
                    let engine = &engine;
                    let window = cfg.window;
                    Box::new(move || Ok(Box::new(EngineClient { engine, x, window, pending: VecDeque::new(), rows }) as Box<dyn Client + '_>))
                        as Factory<'_>
                })
                .collect();
            for &d in &devices {
                ready(d)?;
            }
            let runs = measure(factories, timing);
            engine.shutdown();
            runs
        }
    }
}

/// Waits until the inputs made on the main thread are on the device.
fn ready(device: Device) -> Result<(), String> {
    tch_streams::stream::synchronize_device(device).map_err(|e| e.to_string())
}

fn direct<'a>(model: &Arc<dyn Forward>, x: Vec<Tensor>, rows: u64, device: Device, own_stream: bool) -> Factory<'a> {
    let model = Arc::clone(model);
    Box::new(move || {
        let stream = if own_stream {
            let s = Stream::from_pool(device, Priority::Normal).map_err(|e| e.to_string())?;
            bind_thread(&s).map_err(|e| e.to_string())?;
            s
        } else {
            Stream::current(device).map_err(|e| e.to_string())?
        };
        Ok(Box::new(DirectClient { model, x, rows, stream }) as Box<dyn Client + 'a>)
    })
}

/// Calls the model itself, on the thread's current stream (default, or its own pool stream).
struct DirectClient {
    model: Arc<dyn Forward>,
    x: Vec<Tensor>,
    rows: u64,
    stream: Stream,
}

impl Client for DirectClient {
    fn step(&mut self) -> Result<u64, String> {
        drop(self.model.run(&self.x).map_err(|e| e.to_string())?);
        Ok(self.rows)
    }
    fn settle(&mut self) -> Result<u64, String> {
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(0)
    }
}

/// Submits to the engine, keeping up to `window` requests in flight.
struct EngineClient<'a> {
    engine: &'a Engine,
    x: Vec<Tensor>,
    window: usize,
    pending: VecDeque<Ticket>,
    rows: u64,
}

impl EngineClient<'_> {
    fn complete_oldest(&mut self) -> Result<u64, String> {
        match self.pending.pop_front() {
            Some(ticket) => ticket.wait_outputs().map(|_| self.rows).map_err(|e| e.to_string()),
            None => Ok(0),
        }
    }
}

impl Client for EngineClient<'_> {
    fn step(&mut self) -> Result<u64, String> {
        self.pending.push_back(self.engine.submit(self.x.iter().map(Tensor::shallow_clone).collect::<Vec<_>>()));
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
        Ok(samples)
    }
}
