//! Resolve, then run: [`plan`] turns an [`EngineBuilder`] into a [`Plan`] — which workers run on
//! which devices with which model instances, how requests are batched and padded, whether CUDA
//! graphs are captured, and the [`EngineConfig`] with a reason for every automatic choice.
//! [`Engine::start`](super::Engine) then only spawns what the plan says and waits for it.
//!
//! Invariants:
//! - Planning starts no worker: it instantiates the model on the caller's thread, and checks
//!   batch independence and calibrates on the first worker's device on short threads of their
//!   own bound to the caller's stream; the batching trial runs one short thread per planned
//!   worker, each on a stream of its own (see [`trial`]); everything it decides is in the
//!   returned value.
//! - Every error the builder's values can cause is returned here, before any worker starts.
//! - A plan's batching is never [`Batching::Auto`]; its buckets are empty unless batching is
//!   dynamic; it has at least one worker.

use super::auto::{self, EngineConfig};
use super::budget::{self, Footprint, Layout};
use super::buckets::Buckets;
use super::config::{Batching, EngineBuilder, Output, Replicas, SampleInputs, MAX_BUCKET_OVER_BATCH, MAX_WARMUP_ELEMENTS, MAX_WORKERS};
use super::error::EngineError;
use super::independence;
use super::request::Admission;
use super::thread_caches;
use super::trial::{self, Trial};
use crate::models::Forward;
use crate::runtime::{check_capability, Capability, Report};
use crate::stream::{Priority, Stream};
use crate::Error;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind};

/// Whether this build has the CUDA graph code (compiled in when the build found the CUDA
/// headers beside a CUDA libtorch; see the crate's build script).
pub const CUDA_GRAPHS_BUILT: bool = cfg!(tss_cuda_graphs);

/// Streams in the patched MPS pool (ids 1-32, as upstream's).
const MPS_POOL_STREAMS: usize = 32;

/// Per-sample shape and dtype of every input.
pub(crate) type Specs = Vec<(Vec<i64>, Kind)>;

/// Everything an engine starts with, decided.
pub(crate) struct Plan {
    /// The workers to start, by index.
    pub(crate) workers: Vec<WorkerPlan>,
    /// Resolved: never `Auto`.
    pub(crate) batching: Batching,
    /// Sizes batches are padded to (empty without dynamic batching).
    pub(crate) buckets: Buckets,
    /// Whether workers on CUDA devices capture and replay graphs.
    pub(crate) cuda_graphs: bool,
    /// The inputs every worker warms up on (none with warm-up off or a shape unknown).
    pub(crate) warmup: Option<Specs>,
    pub(crate) samples: Option<SampleInputs>,
    pub(crate) output: Output,
    pub(crate) queue_capacity: usize,
    /// What `submit` accepts.
    pub(crate) admission: Admission,
    /// What [`Engine::config`](super::Engine::config) reports.
    pub(crate) config: EngineConfig,
    /// Per GPU: its memory budget (bytes) and the bytes reserved on it when planning began,
    /// for the check after start-up.
    pub(crate) budgets: Vec<(Device, i64, i64)>,
}

/// One worker to start.
pub(crate) struct WorkerPlan {
    pub(crate) device: Device,
    /// Its model instance (shared with the device's other workers under [`Replicas::Shared`]).
    pub(crate) model: Arc<dyn Forward>,
    /// Whether it takes a pool stream (a GPU with a stream pool) or the default stream.
    pub(crate) use_pool: bool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workers: Vec<String> =
            self.workers.iter().map(|w| format!("{:?}{}", w.device, if w.use_pool { " (pool stream)" } else { "" })).collect();
        f.debug_struct("Plan")
            .field("workers", &workers)
            .field("batching", &self.batching)
            .field("buckets", &self.buckets.sizes())
            .field("cuda_graphs", &self.cuda_graphs)
            .field("warmup", &self.warmup)
            .field("reasons", &self.config.reasons)
            .finish()
    }
}

/// Decides what an engine built from `b` runs (see the module docs). Errors: a value out of
/// range; CUDA graphs asked for without the code or a CUDA device; a device index out of range;
/// a backend without a stream pool under `require_stream_pool(true)`; a model that cannot be
/// instantiated; dynamic batching given for a model the independence check refuses; buckets or
/// warm-up inputs too large.
pub(crate) fn plan(b: &EngineBuilder) -> Result<Plan, EngineError> {
    b.check()?;
    check_graphs_possible(b)?;
    let has_pool = stream_pools(b)?;
    let mut reasons = Vec::new();
    let budgets = budgets(b, &mut reasons);
    let mut assigned = assign(b, &has_pool, &mut reasons);
    let allocated_before = crate::stream::memory_stats(assigned[0]).ok().map(|m| m.allocated);
    let models = instantiate(b, &assigned)?;
    let instances = |assigned: &[Device]| match b.replicas {
        Replicas::Shared => 1,
        Replicas::PerWorker => assigned.iter().filter(|&&d| d == assigned[0]).count(),
    };
    let weights = allocated_before
        .and_then(|before| Some((crate::stream::memory_stats(assigned[0]).ok()?.allocated - before).max(0) / instances(&assigned) as i64));
    let mut workers: Vec<WorkerPlan> = assigned
        .iter()
        .zip(models)
        .map(|(&device, model)| WorkerPlan { device, model, use_pool: has_pool[&device] && device != Device::Cpu })
        .collect();
    let known = known_inputs(b);
    // Graphs before batching, whose trial runs the workers as they will run; the reason keeps
    // its place after batching's.
    let mut graph_reasons = Vec::new();
    let cuda_graphs = resolve_graphs(b, &assigned, known.is_some(), &mut graph_reasons);
    let on_first = |assigned: &[Device]| assigned.iter().filter(|&&d| d == assigned[0]).count();
    // The calibrated max_batch, lowered to fit the budget before the trial runs it on every worker.
    let fit_batch = |max_batch: usize, working: &[(usize, i64)]| -> usize {
        let (Some(&(_, limit, _)), Some(weights)) = (budgets.first(), weights) else { return max_batch };
        let fp = Footprint { weights, working: working.to_vec(), per_worker: None, warm_up_turns: false };
        let layout = Layout { workers: on_first(&assigned), instances: instances(&assigned), largest: max_batch };
        match budget::fit(&fp, layout, limit, false) {
            Some(Ok(f)) => f.max_batch,
            _ => max_batch,
        }
    };
    // No calibration size whose one forward cannot fit beside the others: calibration stops there.
    let working_cap = budgets.first().zip(weights).map(|(&(_, limit, _), w)| (limit - w * instances(&assigned) as i64) / on_first(&assigned) as i64);
    let fit = Fit { batch: &fit_batch, working_cap };
    let (mut batching, measured) = resolve_batching(b, known.as_ref(), &workers, cuda_graphs, &fit, &mut reasons)?;
    if let Some(n) = measured.trial.as_ref().and_then(Trial::fewer_suffice) {
        // Round-robin assignment: the first n workers spread over the devices as all did.
        assigned.truncate(n);
        workers.truncate(n);
    }
    let held = measured.trial.as_ref().and_then(|t| Some((t.max_batch, t.held_per_worker?)));
    let estimate = fit_to_budget(b, &budgets, weights, &measured.working, (held, cuda_graphs), &mut batching, &mut assigned, &mut workers, &mut reasons)?;
    let buckets = resolve_buckets(b, batching, &mut reasons)?;
    check_warmup_size(known.as_ref(), &buckets)?;
    reasons.extend(graph_reasons);
    let config = EngineConfig {
        workers: assigned.len(),
        batching,
        buckets: buckets.sizes().to_vec(),
        cuda_graphs,
        inputs_ready: b.inputs_ready,
        calibration: measured.readings,
        calibration_spread: measured.spread,
        calibration_stopped: measured.stopped,
        memory_budget: budgets.first().map(|&(_, limit, _)| limit),
        memory_estimate: estimate,
        trial: measured.trial,
        reasons,
    };
    Ok(Plan {
        workers,
        batching,
        buckets,
        cuda_graphs,
        warmup: if b.warmup { known } else { None },
        samples: b.samples.clone(),
        output: b.output,
        queue_capacity: b.queue_capacity,
        admission: Admission { inputs: b.inputs.clone(), arity: b.arity, devices: b.devices.clone() },
        config,
        budgets,
    })
}

/// Fits the resolved automatic choices into the first GPU's budget (see `budget`): lowers
/// `max_batch`, then drops workers when the builder did not give them (truncating `assigned`
/// and `workers` alike), or refuses the build when even one worker with batches of 1 cannot
/// fit. Returns the estimate the configuration reports (`None` without a budget or the
/// calibration's measurements) and adds the reason lines.
#[allow(clippy::too_many_arguments)]
fn fit_to_budget(
    b: &EngineBuilder,
    budgets: &[(Device, i64, i64)],
    weights: Option<i64>,
    working: &[(usize, i64)],
    (per_worker, warm_up_turns): (Option<(usize, i64)>, bool),
    batching: &mut Batching,
    assigned: &mut Vec<Device>,
    workers: &mut Vec<WorkerPlan>,
    reasons: &mut Vec<String>,
) -> Result<Option<i64>, EngineError> {
    let (Some(&(_, limit, _)), Some(weights)) = (budgets.first(), weights) else { return Ok(None) };
    let Batching::Dynamic { max_batch, max_wait } = *batching else { return Ok(None) };
    let footprint = Footprint { weights, working: working.to_vec(), per_worker, warm_up_turns };
    let on_first = assigned.iter().filter(|&&d| d == assigned[0]).count();
    let instances = if b.replicas == Replicas::Shared { 1 } else { on_first };
    let layout = Layout { workers: on_first, instances, largest: max_batch };
    let auto_batch = b.batching == Batching::Auto && b.buckets.is_none();
    let estimate = match budget::fit(&footprint, layout, limit, b.workers.is_none()) {
        Some(Ok(f)) if auto_batch => {
            if f.max_batch < max_batch || f.workers < layout.workers {
                reasons.push(format!(
                    "memory: max_batch {max_batch} -> {}, workers per GPU {} -> {}, to fit the budget of {} MiB (estimate {} MiB)",
                    f.max_batch,
                    layout.workers,
                    f.workers,
                    budget::mib(limit),
                    budget::mib(f.estimate)
                ));
                *batching = Batching::Dynamic { max_batch: f.max_batch, max_wait };
                let keep = (f.workers * budgets.len().max(1)).min(assigned.len());
                assigned.truncate(keep);
                workers.truncate(keep);
            }
            Some(f.estimate)
        }
        Some(Err(smallest)) if auto_batch => {
            return Err(EngineError::Build(format!(
                "memory: even {} worker(s) with batches of 1 need an estimated {} MiB on {:?}, over the budget of {} MiB; \
                 raise the budget (memory_budget, --gpu-memory) or give fewer workers",
                if b.workers.is_none() { 1 } else { layout.workers },
                budget::mib(smallest),
                assigned[0],
                budget::mib(limit)
            )));
        }
        _ => footprint.estimate(layout),
    };
    if let Some(e) = estimate {
        let largest = batching_max(*batching);
        let eager = footprint.working(largest).unwrap_or(0) + footprint.weights;
        let basis = match per_worker {
            Some((b, held)) if warm_up_turns => {
                format!("each worker as the trial measured it at {b} samples: {} MiB, and one eager forward during the warm-ups, which take turns", budget::mib(held))
            }
            Some((b, held)) => format!("each worker as the trial measured it at {b} samples: {} MiB", budget::mib(held)),
            None => "each worker as one eager forward of its largest batch".into(),
        };
        reasons.push(format!(
            "memory: estimated {} MiB per GPU at the peak ({basis}; one forward of the largest batch plus weights: {} MiB), budget {} MiB",
            budget::mib(e),
            budget::mib(eager),
            budget::mib(limit)
        ));
    }
    Ok(estimate)
}

/// The largest batch of a resolved batching (1 when off).
fn batching_max(batching: Batching) -> usize {
    match batching {
        Batching::Dynamic { max_batch, .. } => max_batch,
        _ => 1,
    }
}

/// Per GPU of the builder: its budget in bytes and the bytes reserved on it now. A GPU whose
/// budget cannot be resolved (a fraction where the backend cannot say what is free) is left
/// out, with the reason.
fn budgets(b: &EngineBuilder, reasons: &mut Vec<String>) -> Vec<(Device, i64, i64)> {
    let mut out = Vec::new();
    for &d in b.devices.iter().filter(|&&d| d != Device::Cpu) {
        let reserved = crate::stream::memory_stats(d).map(|m| m.reserved);
        match (b.memory_budget.bytes_on(d), reserved) {
            (Some(limit), Ok(reserved)) => out.push((d, limit, reserved)),
            _ => reasons.push(format!("memory: no budget applied on {d:?} (its allocator does not report free or reserved memory)")),
        }
    }
    out
}

/// CUDA graphs asked for explicitly need the graph code and a CUDA device.
fn check_graphs_possible(b: &EngineBuilder) -> Result<(), EngineError> {
    if b.cuda_graphs != Some(true) {
        return Ok(());
    }
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
    Ok(())
}

/// Which devices have a stream pool (validating every device index on the way); a device
/// without one is served by a single worker on its default stream, or refused under
/// `require_stream_pool(true)`.
fn stream_pools(b: &EngineBuilder) -> Result<HashMap<Device, bool>, EngineError> {
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
    Ok(has_pool)
}

/// The device of every worker: round-robin over the builder's devices, a device without a
/// stream pool getting exactly one.
fn assign(b: &EngineBuilder, has_pool: &HashMap<Device, bool>, reasons: &mut Vec<String>) -> Vec<Device> {
    let workers = match b.workers {
        Some(n) => n,
        None => {
            let n = b.devices.iter().map(|&d| auto::workers_for(d, has_pool[&d])).sum::<usize>().min(MAX_WORKERS);
            reasons.push(format!("workers: {n} (default: 4 per GPU with a stream pool, 1 without, 2 for the CPU)"));
            n
        }
    };
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
    assigned
}

/// One model instance per worker, or one per device shared by its workers.
fn instantiate(b: &EngineBuilder, assigned: &[Device]) -> Result<Vec<Arc<dyn Forward>>, EngineError> {
    let mut shared: HashMap<Device, Arc<dyn Forward>> = HashMap::new();
    let mut models = Vec::with_capacity(assigned.len());
    for &d in assigned {
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
    Ok(models)
}

/// Every input's shape, when all are known (dtype defaults to float32): the warm-up, check and
/// calibration inputs.
fn known_inputs(b: &EngineBuilder) -> Option<Specs> {
    (0..b.arity.unwrap_or(1))
        .map(|i| b.inputs.get(i).and_then(|e| e.sample_shape.clone().map(|s| (s, e.kind.unwrap_or(Kind::Float)))))
        .collect()
}

/// What the calibration measured, as the configuration reports it.
#[derive(Default)]
struct Measured {
    readings: Vec<(usize, f64)>,
    spread: Vec<f64>,
    stopped: Option<String>,
    /// Working bytes per size (see [`auto::Calibration::working`]).
    working: Vec<(usize, i64)>,
    trial: Option<Trial>,
}

/// The batch-independence check, on a short thread of its own bound to this thread's stream
/// (which gains no cuBLAS workspaces). It catches the model's panics itself; one caught here is
/// the check's own.
fn checked(model: &Arc<dyn Forward>, device: Device, specs: &Specs, samples: Option<&SampleInputs>) -> Result<(), independence::Refusal> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        thread_caches::on_own_thread(device, "tch-streams-independence", || independence::check(&**model, device, specs, samples))
    }))
    .unwrap_or_else(|p| {
        Err(independence::Refusal::Undecided(format!(
            "the check itself failed ({}; please report it as a tch-streams bug)",
            super::threads::panic_message(&*p)
        )))
    })
}

/// Batching as given, checked when the shapes are known (on the first worker's device and
/// model); `Auto` becomes dynamic batching sized by the calibration and kept if the trial on
/// `workers` (with CUDA graphs as `graphs` says) finds it faster, or off, with the reason.
fn resolve_batching(
    b: &EngineBuilder,
    known: Option<&Specs>,
    workers: &[WorkerPlan],
    graphs: bool,
    fit: &Fit,
    reasons: &mut Vec<String>,
) -> Result<(Batching, Measured), EngineError> {
    let (model, device) = (&workers[0].model, workers[0].device);
    let batching = match (b.batching, known) {
        (Batching::Dynamic { .. }, Some(specs)) => {
            checked(model, device, specs, b.samples.as_ref()).map_err(|refusal| EngineError::Build(refusal.to_string()))?;
            b.batching
        }
        (Batching::Dynamic { .. }, None) => {
            reasons.push(
                "batching: dynamic as given, unchecked (the inputs' shapes are unknown: give them with .inputs() so that \
                 build() can check that the model keeps samples apart)"
                    .into(),
            );
            b.batching
        }
        (Batching::Auto, Some(specs)) if b.warmup => match checked(model, device, specs, b.samples.as_ref()) {
            Err(refusal) => {
                reasons.push(format!("batching: off ({refusal})"));
                Batching::Off
            }
            Ok(()) => return Ok(calibrated(b, specs, workers, graphs, fit, reasons)),
        },
        (Batching::Auto, _) => {
            reasons.push(if b.warmup {
                "batching: off (the inputs' shapes are unknown: give them with .inputs() to batch)".into()
            } else {
                "batching: off (warm-up is off, so nothing is calibrated)".into()
            });
            Batching::Off
        }
        (other, _) => other,
    };
    Ok((batching, Measured::default()))
}

/// What the memory budget allows the calibration (see `plan`).
struct Fit<'a> {
    /// Lowers a calibrated `max_batch` to what the budget holds, given the working memory
    /// measured per size.
    batch: &'a dyn Fn(usize, &[(usize, i64)]) -> usize,
    /// Most working bytes one forward may need; the calibration stops after a size over it.
    working_cap: Option<i64>,
}

/// `Auto` for a model that passed the check: dynamic batching of the calibrated size (lowered
/// to what `fit` allows) and no wait, unless that size is 1 or the trial ([`trial::compare`] on
/// `workers`, CUDA graphs as `graphs` says) finds batching off serves more (see
/// [`Trial::batching_wins`]); off if the model failed during the calibration. A trial that
/// cannot finish (the model fails or panics, a step outlives the calibration's step limit)
/// keeps the calibration's choice, and the reasons say why.
///
/// The calibration gives every size's cached blocks back as it goes; what its thread left is
/// given back here, and again after the trial: the caching allocator's unused blocks on that
/// device go to the driver (other engines' unused blocks too; they are cached again when next
/// needed).
fn calibrated(b: &EngineBuilder, specs: &Specs, workers: &[WorkerPlan], graphs: bool, fit: &Fit, reasons: &mut Vec<String>) -> (Batching, Measured) {
    let (model, device) = (&workers[0].model, workers[0].device);
    let calibration = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        auto::calibrate(Arc::clone(model), device, specs, b.samples.as_ref(), auto::AUTO_MAX_BATCH, b.calibration_step_limit, fit.working_cap)
    }))
    .ok()
    .flatten();
    if let Some(freed) = super::device_cache::give_back(device) {
        reasons.push(format!(
            "calibration: {} MiB of cached device memory its largest batches left behind given back to the driver",
            freed >> 20
        ));
    }
    let Some(mut c) = calibration else {
        reasons.push(format!("batching: off (the model failed on {} inputs during calibration)", SampleInputs::name(b.samples.as_ref())));
        return (Batching::Off, Measured::default());
    };
    let fitted = (fit.batch)(c.max_batch, &c.working);
    if fitted < c.max_batch {
        reasons.push(format!("memory: the calibrated max_batch {} lowered to {fitted} to fit the memory budget", c.max_batch));
        c.max_batch = fitted;
    }
    let stopped = c.stopped.map(|(size, limit)| {
        format!(
            "calibration stopped at {size} samples: that step took longer than {} ms (a model stuck or very slow \
             at that size); kept the best of the sizes measured before",
            limit.as_millis()
        )
    });
    let trial = (c.max_batch > 1).then(|| tried(b, specs, workers, graphs, c.max_batch));
    // A best batch of one sample batches nothing: off, as the trial would find it.
    let off = c.max_batch == 1 || matches!(&trial, Some(Ok(t)) if !t.batching_wins());
    let shown: Vec<String> = c.readings.iter().map(|(n, us)| format!("{n}: {us:.0} us")).collect();
    let noisiest = c.spread.iter().copied().fold(0.0f64, f64::max);
    reasons.push(format!(
        "{} (calibrated on {:?}, fastest of 3 runs: {}; runs of one size differed by up to {:.0} %)",
        if off {
            format!("calibration: best batch {} samples", c.max_batch)
        } else {
            format!("batching: dynamic, max {} samples, no wait beyond what is queued", c.max_batch)
        },
        device,
        shown.join(", "),
        noisiest * 100.0
    ));
    reasons.extend(stopped.clone());
    reasons.push(trial_reason(trial.as_ref()));
    let batching = if off { Batching::Off } else { Batching::Dynamic { max_batch: c.max_batch, max_wait: Duration::ZERO } };
    let trial = trial.and_then(Result::ok);
    (batching, Measured { readings: c.readings, spread: c.spread, stopped, trial, working: c.working })
}

/// The trial of batching off against batches of `max_batch` on the planned `workers` (see
/// [`trial::compare`]); afterwards the devices' cached memory is given back, as after the
/// calibration.
fn tried(b: &EngineBuilder, specs: &Specs, workers: &[WorkerPlan], graphs: bool, max_batch: usize) -> Result<Trial, String> {
    // Half the workers are tried too where their memory is what they cost: GPU workers the
    // builder did not count.
    let on_gpus = workers.iter().all(|w| w.device != Device::Cpu);
    let fewer = (b.workers.is_none() && on_gpus && workers.len() >= 2).then_some(workers.len() / 2);
    let setup = trial::TrialSetup { specs, samples: b.samples.as_ref(), output: b.output, graphs, max_batch, fewer };
    let trial = trial::compare(workers, &setup, trial::WINDOW, b.calibration_step_limit);
    let mut devices: Vec<Device> = Vec::new();
    for w in workers {
        if !devices.contains(&w.device) {
            devices.push(w.device);
            super::device_cache::give_back(w.device);
        }
    }
    trial
}

/// What the trial decided, or why there was none (`None`: not run, the best batch was 1).
fn trial_reason(trial: Option<&Result<Trial, String>>) -> String {
    let workers = |n: usize| if n == 1 { "worker" } else { "workers" };
    match trial {
        Some(Ok(t)) if !t.batching_wins() => format!(
            "batching: off (measured with {} {}: unbatched {:.0}/s >= batched at max {} {:.0}/s{})",
            t.workers,
            workers(t.workers),
            t.off_per_s,
            t.max_batch,
            t.batched_per_s,
            match (t.fewer_workers, t.fewer_per_s) {
                (Some(n), Some(r)) => format!(", and on {n} {} {r:.0}/s", workers(n)),
                _ => String::new(),
            }
        ),
        Some(Ok(t)) if t.fewer_suffice().is_some() => {
            let (n, r) = (t.fewer_workers.unwrap_or(t.workers), t.fewer_per_s.unwrap_or(0.0));
            format!(
                "batching trial: {n} {} batched at max {} {r:.0}/s, more than {} unbatched {:.0}/s and at least {:.0} % of {} batched \
                 {:.0}/s: workers {} -> {n}, whose graphs and cached batches are not held",
                workers(n),
                t.max_batch,
                t.workers,
                t.off_per_s,
                trial::FEWER_KEEPS * 100.0,
                t.workers,
                t.batched_per_s,
                t.workers
            )
        }
        Some(Ok(t)) => {
            let fewer = match (t.fewer_workers, t.fewer_per_s) {
                (Some(n), Some(r)) => format!(
                    "; {n} {} batched only {r:.0}/s, under {:.0} % of that: all {} kept",
                    workers(n),
                    trial::FEWER_KEEPS * 100.0,
                    t.workers
                ),
                _ => String::new(),
            };
            format!(
                "batching trial: batched at max {} {:.0}/s > unbatched {:.0}/s (measured with {} {}){fewer}",
                t.max_batch,
                t.batched_per_s,
                t.off_per_s,
                t.workers,
                workers(t.workers)
            )
        }
        Some(Err(why)) => format!("batching trial: no answer ({why}); kept the calibration's choice"),
        None => "batching: off (one sample per forward pass served the most samples per second: nothing to batch)".into(),
    }
}

/// The bucket sizes of dynamic batching: as given, or powers of two up to `max_batch`. A bucket
/// far larger than any batch pads batches up to it (and is warmed up on every worker): an error
/// for batching given explicitly, dropped with a reason for a calibrated one. One a little
/// larger serves a request of more rows than `max_batch`.
fn resolve_buckets(b: &EngineBuilder, batching: Batching, reasons: &mut Vec<String>) -> Result<Buckets, EngineError> {
    let Batching::Dynamic { max_batch, .. } = batching else { return Ok(Buckets::default()) };
    let limit = max_batch.saturating_mul(MAX_BUCKET_OVER_BATCH);
    Ok(match &b.buckets {
        Some(sizes) if sizes.iter().any(|&s| s > limit) => {
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
    })
}

/// Warm-up makes every bucket's inputs on every worker: bounds the largest.
fn check_warmup_size(known: Option<&Specs>, buckets: &Buckets) -> Result<(), EngineError> {
    let (Some(specs), Some(&largest)) = (known, buckets.sizes().last()) else { return Ok(()) };
    for (i, (shape, _)) in specs.iter().enumerate() {
        let per_sample: i64 = shape.iter().product();
        if (largest as i64).checked_mul(per_sample).is_none_or(|n| n > MAX_WARMUP_ELEMENTS) {
            return Err(EngineError::Build(format!(
                "input {i}: the largest bucket, {largest} samples of {shape:?}, is over {MAX_WARMUP_ELEMENTS} elements, which warm-up \
                 would allocate on every worker; lower max_batch or the bucket sizes"
            )));
        }
    }
    Ok(())
}

/// CUDA graphs as given, or on by default where they can be captured up front: compiled in, a
/// CUDA worker, every input's shape known and warm-up on.
fn resolve_graphs(b: &EngineBuilder, assigned: &[Device], shapes_known: bool, reasons: &mut Vec<String>) -> bool {
    if let Some(on) = b.cuda_graphs {
        return on;
    }
    let any_cuda = assigned.iter().any(|d| matches!(d, Device::Cuda(_)));
    let on = CUDA_GRAPHS_BUILT && any_cuda && shapes_known && b.warmup;
    if any_cuda {
        reasons.push(match (on, CUDA_GRAPHS_BUILT) {
            (true, _) => "CUDA graphs: on (compiled in, CUDA device, input shapes known)".into(),
            (false, false) => "CUDA graphs: off (not compiled into this build)".into(),
            (false, true) => "CUDA graphs: off (input shapes unknown or warm-up off: nothing to capture up front)".into(),
        });
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, InputSpec};
    use crate::models::Model;

    fn add_one() -> Model {
        Model::closure(|x: &tch::Tensor| x.f_add_scalar(1.0))
    }

    #[test]
    fn a_plan_spreads_workers_and_says_why() {
        let b = Engine::builder(add_one()).devices(vec![Device::Cpu]).warmup(false);
        let p = plan(&b).unwrap();
        assert_eq!(p.workers.len(), 2);
        assert!(p.workers.iter().all(|w| w.device == Device::Cpu && !w.use_pool));
        assert_eq!(p.batching, Batching::Off);
        assert!(p.buckets.sizes().is_empty());
        assert_eq!(p.warmup, None);
        assert_eq!(
            p.config.reasons,
            vec![
                "workers: 2 (default: 4 per GPU with a stream pool, 1 without, 2 for the CPU)".to_string(),
                "batching: off (warm-up is off, so nothing is calibrated)".to_string(),
            ]
        );
    }

    #[test]
    fn given_dynamic_batching_gets_power_of_two_buckets_and_shared_replicas() {
        let b = Engine::builder(add_one())
            .devices(vec![Device::Cpu])
            .workers(3)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::ZERO });
        let p = plan(&b).unwrap();
        assert_eq!(p.buckets.sizes(), &[1, 2, 4, 8]);
        assert_eq!(p.warmup, Some(vec![(vec![4], Kind::Float)]));
        assert!(Arc::ptr_eq(&p.workers[0].model, &p.workers[2].model), "one instance per device by default");
        assert!(p.config.reasons.is_empty(), "{:?}", p.config.reasons);
    }

    #[test]
    fn a_budget_out_of_range_is_refused_and_none_applies_on_the_cpu() {
        use crate::engine::MemoryBudget;
        let e = plan(&Engine::builder(add_one()).devices(vec![Device::Cpu]).memory_budget(MemoryBudget::FractionOfFree(1.5))).unwrap_err();
        assert!(matches!(&e, EngineError::Build(m) if m.contains("FractionOfFree(1.5)) is out of range")), "{e}");
        let p = plan(&Engine::builder(add_one()).devices(vec![Device::Cpu]).memory_budget(MemoryBudget::Bytes(1)).warmup(false)).unwrap();
        assert_eq!((p.config.memory_budget, p.config.memory_estimate), (None, None));
        assert!(p.budgets.is_empty());
    }

    #[test]
    fn buckets_far_over_a_given_max_batch_are_refused() {
        let b = Engine::builder(add_one())
            .devices(vec![Device::Cpu])
            .batching(Batching::Dynamic { max_batch: 2, max_wait: Duration::ZERO })
            .buckets(vec![2, 64]);
        let e = plan(&b).unwrap_err();
        assert!(matches!(&e, EngineError::Build(m) if m.starts_with("buckets [64] are over 8 x max_batch 2")), "{e}");
    }
}

