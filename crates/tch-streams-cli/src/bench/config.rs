//! [`BenchConfig`]: what a sweep measures, and [`Workload`]: what one point runs.

use super::error::BenchError;
use super::modes::Mode;
use tch_streams::models::{Builtin, Model};
use crate::engine_args::EngineArgs;
use crate::inputs::{InputArg, IntRange};
use std::path::PathBuf;
use tch::Device;

/// A model and the input one thread sends per call (batch first).
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// A built-in, with the peer's reference input: small-mlp `[1,512]`, large-mlp `[64,2048]`,
    /// transformer `[1,64,256]`.
    Builtin(Builtin),
    /// A TorchScript file and the inputs of one call (each batch first, one batch size).
    TorchScript {
        /// The `torch.jit.save` file.
        path: PathBuf,
        /// Forward's inputs in order: shape (batch first) and dtype.
        inputs: Vec<InputArg>,
        /// Integer inputs are filled from this range.
        int_range: IntRange,
        /// Real data, one `.npy` file per input (then `inputs` describes them); empty: generated.
        data: Vec<PathBuf>,
    },
}

impl Workload {
    /// The name in tables and JSON: the built-in's name, or the file's stem.
    pub fn name(&self) -> String {
        match self {
            Workload::Builtin(b) => b.name().to_string(),
            Workload::TorchScript { path, .. } => {
                path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
            }
        }
    }

    /// One call's inputs (shape batch first, dtype), in forward's order.
    pub fn inputs(&self) -> Vec<InputArg> {
        match self {
            Workload::Builtin(b) => {
                let mut s = vec![b.default_batch()];
                s.extend(b.sample_shape());
                vec![InputArg { shape: s, kind: tch::Kind::Float }]
            }
            Workload::TorchScript { inputs, .. } => inputs.clone(),
        }
    }

    /// The `.npy` files holding real inputs, if any.
    pub fn data(&self) -> &[PathBuf] {
        match self {
            Workload::Builtin(_) => &[],
            Workload::TorchScript { data, .. } => data,
        }
    }

    /// The range integer inputs are filled from.
    pub fn int_range(&self) -> IntRange {
        match self {
            Workload::Builtin(_) => IntRange::default(),
            Workload::TorchScript { int_range, .. } => *int_range,
        }
    }

    /// Samples in one call (dim 0 of the inputs).
    pub fn batch(&self) -> i64 {
        self.inputs().first().and_then(|i| i.shape.first().copied()).unwrap_or(1)
    }

    /// The recipe the harness instantiates once per workload.
    pub fn model(&self) -> Model {
        match self {
            Workload::Builtin(b) => Model::Builtin(*b),
            Workload::TorchScript { path, .. } => Model::TorchScript(path.clone()),
        }
    }

    /// The engine's `max_batch` (samples) for this workload: 256 small-mlp, 1024 large-mlp,
    /// 128 transformer; 64 calls' worth for a TorchScript file.
    pub fn engine_max_batch(&self) -> usize {
        match self {
            Workload::Builtin(Builtin::SmallMlp) => 256,
            Workload::Builtin(Builtin::LargeMlp) => 1024,
            Workload::Builtin(Builtin::Transformer) => 128,
            Workload::TorchScript { .. } => 64 * self.batch().max(1) as usize,
        }
    }
}

/// A full sweep: workloads × modes × thread counts, each point measured `reps` times.
///
/// [`BenchConfig::full`] and [`BenchConfig::quick`] hold the peer's two presets; change fields
/// freely afterwards (explicit values override a preset).
///
/// ```
/// use tch_streams_cli::bench::BenchConfig;
/// let mut cfg = BenchConfig::quick(tch::Device::Cpu);
/// assert_eq!((cfg.threads.clone(), cfg.reps, cfg.warmup_s, cfg.duration_s), (vec![1, 2], 3, 0.1, 0.3));
/// cfg.threads = vec![1, 2, 4];
/// assert!(cfg.validate().is_ok());
/// cfg.reps = 0;
/// assert!(cfg.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// What to run. Default: the three built-ins.
    pub workloads: Vec<Workload>,
    /// How to run it. Default: every [`Mode`]; those the device or build cannot run are
    /// recorded as skipped, with the reason.
    pub modes: Vec<Mode>,
    /// Thread counts T. Default 1, 4, 16, 64 (quick: 1, 2).
    pub threads: Vec<usize>,
    /// Thread counts at which the `--tune` sweep runs the engine on every configuration of
    /// [`TuneConfig::grid`](super::TuneConfig::grid). Default: none (no tune sweep).
    pub tune_threads: Vec<usize>,
    /// Repetitions per point (at least 1; 3 or more for a meaningful min–max). Default 3.
    pub reps: usize,
    /// Warm-up seconds before each timed phase. Default 1.0 (quick: 0.1).
    pub warmup_s: f64,
    /// Timed seconds per repetition. Default 2.0 (quick: 0.3).
    pub duration_s: f64,
    /// The device every point runs on. Default: CUDA 0 if visible, else CPU.
    pub device: Device,
    /// The devices [`Mode::EngineSpread`] spreads its workers over, `device` first. Default: just
    /// `device` (so `engine-spread` is skipped); the CLI's `--device cuda:0,cuda:1` sets both.
    pub spread_devices: Vec<Device>,
    /// Requests each engine client keeps in flight. Default 8.
    pub window: usize,
    /// Longest an engine point may run past its own time (`reps` x (`warmup_s` + `duration_s`),
    /// from the moment its engine is built) before its unanswered requests count as stuck: the
    /// point is then recorded as skipped and stuck, its engine is abandoned (a stuck worker
    /// cannot be stopped), and the sweep goes on. Seconds in (0, 3600]. Default 60.
    pub point_grace_s: f64,
    /// Host I/O: the serving modes' inputs start on the host and their answers end on it (what
    /// applications and `serve` have). `tch-default`/`tch-streams` copy each input to the device,
    /// run, and copy the answer back (which synchronises the thread's stream); the engine modes
    /// submit host tensors and ask for [`Output::Cpu`](tch_streams::engine::Output::Cpu). The
    /// limits are what they are either way (`limit` on the device, `limit-host` from pinned
    /// host memory); the ours/limit ratios then use `limit-host`. On CPU it changes nothing
    /// but is recorded. Default false.
    pub host_io: bool,
    /// Engine flags for the engine modes (`bench --workers 8 --batch-max 0 …`), applied on top of
    /// the engine's defaults before the mode sets graphs; not to `--tune`'s grid. `None` (the
    /// default): the engine's defaults.
    pub engine: Option<EngineArgs>,
    /// Show a progress bar on stderr. Default false.
    pub progress: bool,
}

impl BenchConfig {
    /// The full sweep: threads 1, 4, 16, 64; 3 reps; 1 s warm-up; 2 s timed.
    pub fn full(device: Device) -> BenchConfig {
        BenchConfig {
            workloads: Builtin::ALL.into_iter().map(Workload::Builtin).collect(),
            modes: Mode::ALL.to_vec(),
            threads: vec![1, 4, 16, 64],
            tune_threads: Vec::new(),
            reps: 3,
            warmup_s: 1.0,
            duration_s: 2.0,
            device,
            spread_devices: vec![device],
            window: 8,
            point_grace_s: 60.0,
            host_io: false,
            engine: None,
            progress: false,
        }
    }

    /// The smoke sweep: threads 1, 2; 3 reps; 0.1 s warm-up; 0.3 s timed.
    pub fn quick(device: Device) -> BenchConfig {
        BenchConfig { threads: vec![1, 2], warmup_s: 0.1, duration_s: 0.3, ..BenchConfig::full(device) }
    }

    /// Checks that the sweep can run; the message names the offending setting.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Config(m.to_string()));
        if self.workloads.is_empty() {
            return bad("no workloads; name at least one (small-mlp, large-mlp, transformer or --model FILE.pt)");
        }
        if self.modes.is_empty() {
            return bad("no modes; name at least one of tch-default, tch-streams, engine, engine-graphs, engine-spread, limit, limit-host");
        }
        if self.spread_devices.first() != Some(&self.device) {
            return bad("spread_devices must start with the sweep's device");
        }
        if self.threads.is_empty() || self.threads.iter().any(|&t| t == 0 || t > 1024) {
            return bad("thread counts must be a non-empty list of integers in 1..=1024");
        }
        if self.tune_threads.iter().any(|&t| t == 0 || t > 1024) {
            return bad("tune thread counts must be integers in 1..=1024");
        }
        if self.reps == 0 || self.reps > 1000 {
            return bad("reps must be in 1..=1000 (3 or more for a meaningful min-max)");
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s <= 3600.0) {
            return bad("warm-up seconds must be in 0..=3600");
        }
        if !(self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            return bad("duration seconds must be in (0, 3600]");
        }
        if !(self.point_grace_s > 0.0 && self.point_grace_s <= 3600.0) {
            return bad("the engine points' grace seconds must be in (0, 3600]");
        }
        if self.window == 0 || self.window > 65_536 {
            return bad("the engine clients' window must be in 1..=65536");
        }
        for w in &self.workloads {
            if let Workload::TorchScript { path, data, .. } = w {
                if !path.is_file() {
                    return Err(BenchError::Config(format!("--model {}: no such file", path.display())));
                }
                if let Some(f) = data.iter().find(|f| !f.is_file()) {
                    return Err(BenchError::Config(format!("--input-file {}: no such file", f.display())));
                }
            }
        }
        for w in &self.workloads {
            if let Workload::TorchScript { inputs, .. } = w {
                if inputs.is_empty() || inputs.iter().any(|i| i.shape.is_empty() || i.shape.iter().any(|&d| d < 1)) {
                    return bad("a TorchScript workload needs its inputs, each shape batch first, e.g. 1x3x224x224");
                }
                if inputs.iter().any(|i| i.shape[0] != inputs[0].shape[0]) {
                    return bad("every input of a TorchScript workload needs the same batch size (dim 0)");
                }
            }
        }
        Ok(())
    }
}
