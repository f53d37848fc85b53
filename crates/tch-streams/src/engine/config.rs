//! [`EngineBuilder`]: every knob of the engine, each with a documented default.

use super::budget::MemoryBudget;
use super::error::EngineError;
use super::request::Expected;
use crate::models::Model;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// How model instances are shared between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicas {
    /// One instance per device, shared by that device's workers (default; least memory).
    #[default]
    Shared,
    /// One instance per worker.
    PerWorker,
}

/// The wait front ends (`tch-streams run`, `tch-streams serve`) give [`Batching::Dynamic`] when a
/// user sets the largest batch but not the wait: long enough for a few requests to arrive
/// together, short against a GPU forward pass. [`Batching::Auto`] adds no wait at all.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_micros(200);

/// Whether and how requests are merged into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Batching {
    /// The engine decides (default): dynamic batching when every input's shape is known and the
    /// model passes the batch-independence check (see [`Batching::Dynamic`]; a model the check
    /// refuses or cannot decide on is served unbatched, with the reason in the configuration), with `max_batch` from a short calibration at
    /// build time (forward times at 1, 2, 4, … samples up to
    /// [`AUTO_MAX_BATCH`](super::AUTO_MAX_BATCH); the smallest size within 90 % of the best
    /// throughput measured) and no wait beyond what is already queued, kept only if a short trial
    /// on the engine's own workers (each on its stream, concurrently, with CUDA graphs where they
    /// are on, requests joined and answers split) serves more requests per second batched at
    /// that size than unbatched; otherwise off. [`Engine::config`](super::Engine::config)
    /// says what was chosen, with both rates.
    #[default]
    Auto,
    /// Each request runs alone.
    Off,
    /// Requests of compatible shape are concatenated along dim 0, up to `max_batch` samples or
    /// until `max_wait` has passed since the first one was taken, padded to the next bucket size
    /// (see [`EngineBuilder::buckets`]), run once, and split back without the padding.
    ///
    /// When every input's shape is known ([`EngineBuilder::inputs`]), `build()` first runs the
    /// batch-independence check: two samples alone, then together, every output compared. A
    /// model whose answers change with company (batch statistics, a reduction over dim 0, an
    /// output whose shape depends on the batch), or that the check cannot run (the model fails on
    /// the check's samples), is a build error that says so. Without the shapes nothing is checked
    /// (the engine's configuration says so in its reasons).
    Dynamic {
        /// Most samples (rows along dim 0) in one batch.
        max_batch: usize,
        /// Longest a request waits for company.
        max_wait: Duration,
    },
}

/// Where results are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// On the worker's device (default). The worker synchronised its stream first, so the
    /// values are final; if you then use the tensor on another stream and drop it there before
    /// that stream's work is done, call [`record_stream`](crate::stream::record_stream) first.
    #[default]
    OnDevice,
    /// Copied to host memory.
    Cpu,
}

/// One input of the model: its per-sample shape (no batch dimension) and dtype.
///
/// ```
/// use tch_streams::engine::InputSpec;
/// let ids = InputSpec::new([128], tch::Kind::Int64);
/// assert_eq!(ids.to_string(), "[batch, 128] Int64");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Per-sample shape: the input is `[batch, shape...]`.
    pub shape: Vec<i64>,
    /// Element type.
    pub kind: Kind,
}

impl InputSpec {
    /// An input of `[batch, shape...]` elements of `kind`.
    pub fn new(shape: impl Into<Vec<i64>>, kind: Kind) -> InputSpec {
        InputSpec { shape: shape.into(), kind }
    }
}

impl std::fmt::Display for InputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = std::iter::once("batch".to_string()).chain(self.shape.iter().map(i64::to_string)).collect();
        write!(f, "[{}] {:?}", dims.join(", "), self.kind)
    }
}

/// Builds an [`Engine`](super::Engine). Start with [`Engine::builder`](super::Engine::builder).
///
/// ```
/// use std::time::Duration;
/// use tch_streams::engine::{Batching, Engine, Output, Replicas};
/// use tch_streams::models::{Builtin, Model};
/// let engine = Engine::builder(Model::Builtin(Builtin::SmallMlp))
///     .devices(vec![tch::Device::Cpu])
///     .workers(2)
///     .replicas(Replicas::Shared)
///     .batching(Batching::Dynamic { max_batch: 32, max_wait: Duration::from_micros(200) })
///     .output(Output::Cpu)
///     .build()?;
/// let y = engine.infer(tch::Tensor::ones([1, 512], (tch::Kind::Float, tch::Device::Cpu)))?;
/// assert_eq!(y.size(), vec![1, 512]);
/// # Ok::<(), tch_streams::engine::EngineError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    pub(crate) model: Model,
    pub(crate) devices: Vec<Device>,
    pub(crate) workers: Option<usize>,
    pub(crate) replicas: Replicas,
    pub(crate) batching: Batching,
    pub(crate) buckets: Option<Vec<usize>>,
    pub(crate) cuda_graphs: Option<bool>,
    pub(crate) queue_capacity: usize,
    pub(crate) output: Output,
    pub(crate) require_stream_pool: bool,
    pub(crate) inputs: Vec<Expected>,
    pub(crate) arity: Option<usize>,
    pub(crate) warmup: bool,
    pub(crate) inputs_ready: bool,
    pub(crate) samples: Option<SampleInputs>,
    pub(crate) calibration_step_limit: Duration,
    pub(crate) memory_budget: MemoryBudget,
}

// The engine's limits: what the builder accepts. The CLI validates its flags against these.

/// Most workers one engine starts.
pub const MAX_WORKERS: usize = 1024;
/// Largest `queue_capacity` (requests per device lane; a count, not preallocated).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 24;
/// Largest `max_batch` of dynamic batching, in samples.
pub const MAX_BATCH: usize = 1 << 20;
/// Most elements of one input at the largest bucket: warm-up allocates it on every worker.
pub const MAX_WARMUP_ELEMENTS: i64 = 1 << 28;
/// Largest bucket, as a multiple of `max_batch`.
pub const MAX_BUCKET_OVER_BATCH: usize = 8;
/// Most bucket sizes one engine accepts.
pub const MAX_BUCKETS: usize = 64;
/// Most graphs one worker keeps (each holds its static input, output and a memory pool).
pub const MAX_GRAPHS: usize = 32;
/// Default of [`EngineBuilder::calibration_step_limit`].
pub const DEFAULT_CALIBRATION_STEP_LIMIT: Duration = Duration::from_secs(30);
/// Longest [`EngineBuilder::calibration_step_limit`]: one hour.
pub const MAX_CALIBRATION_STEP_LIMIT: Duration = Duration::from_secs(3600);

/// Makes `rows` samples of every input on `device`, in the order of forward's arguments (each
/// tensor `[rows, sample shape...]` of its declared dtype): what warm-up, calibration and the
/// batch-independence check run the model on. `Err` says why the inputs cannot be made.
pub type SampleFn = dyn Fn(usize, Device) -> Result<Vec<Tensor>, String> + Send + Sync;

/// The builder's [`SampleFn`], shared by the workers (and their replacements).
#[derive(Clone)]
pub(crate) struct SampleInputs(pub(crate) Arc<SampleFn>);

impl std::fmt::Debug for SampleInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleInputs(..)")
    }
}

impl SampleInputs {
    /// `rows` samples of every input in `specs` on `device`: the provider's, checked against the
    /// declared shapes and dtypes, or zeros without a provider.
    pub(crate) fn make(this: Option<&SampleInputs>, specs: &[(Vec<i64>, Kind)], rows: usize, device: Device) -> Result<Vec<Tensor>, String> {
        let dims = |shape: &[i64]| {
            let mut d = vec![rows as i64];
            d.extend_from_slice(shape);
            d
        };
        let Some(provider) = this else {
            return specs
                .iter()
                .map(|(shape, kind)| Tensor::f_zeros(dims(shape).as_slice(), (*kind, device)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string());
        };
        // Made on the host and copied: a provider drawing random numbers on a GPU would advance
        // the device's default generator, which fails while another worker of the process
        // captures a CUDA graph (the generator is registered with every capture under way).
        let xs = (provider.0)(rows, Device::Cpu).map_err(|e| format!("the sample inputs could not be made: {e}"))?;
        if xs.len() != specs.len() {
            return Err(format!("the sample inputs hold {} tensor(s) where {} input(s) are declared", xs.len(), specs.len()));
        }
        for (i, (x, (shape, kind))) in xs.iter().zip(specs).enumerate() {
            if x.size() != dims(shape) || x.kind() != *kind || x.device() != Device::Cpu {
                return Err(format!(
                    "sample input {i} is {:?} {:?} on {:?} where {:?} {kind:?} on Cpu was asked for",
                    x.size(),
                    x.kind(),
                    x.device(),
                    dims(shape)
                ));
            }
        }
        if device == Device::Cpu {
            return Ok(xs);
        }
        xs.iter().map(|x| x.f_to_device(device)).collect::<Result<Vec<_>, _>>().map_err(|e| format!("the sample inputs could not be copied to {device:?}: {e}"))
    }

    /// What the inputs are called in messages.
    pub(crate) fn name(this: Option<&SampleInputs>) -> &'static str {
        if this.is_some() { "sample" } else { "zero" }
    }
}

impl EngineBuilder {
    pub(crate) fn new(model: Model) -> Self {
        let declared = model.input_shape().is_some() || model.input_kind().is_some();
        EngineBuilder {
            inputs: vec![Expected { sample_shape: model.input_shape(), kind: model.input_kind() }],
            arity: declared.then_some(1),
            model,
            devices: vec![Device::cuda_if_available()],
            workers: None,
            replicas: Replicas::Shared,
            batching: Batching::Auto,
            buckets: None,
            cuda_graphs: None,
            queue_capacity: 1024,
            output: Output::OnDevice,
            require_stream_pool: false,
            warmup: true,
            inputs_ready: false,
            samples: None,
            calibration_step_limit: DEFAULT_CALIBRATION_STEP_LIMIT,
            memory_budget: MemoryBudget::default(),
        }
    }

    /// Devices to serve on; workers are spread over them round-robin.
    /// Default: `cuda:0` if a GPU is visible, else CPU.
    pub fn devices(mut self, devices: Vec<Device>) -> Self {
        self.devices = devices;
        self
    }

    /// Number of worker threads in all, each with its own stream, spread round-robin over the
    /// devices. Default: chosen by the engine: 4 per GPU with a stream pool, 1 per GPU without
    /// one, 2 for the CPU.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Shared instance per device, or one per worker. Default [`Replicas::Shared`].
    pub fn replicas(mut self, r: Replicas) -> Self {
        self.replicas = r;
        self
    }

    /// Dynamic batching. Default [`Batching::Auto`].
    pub fn batching(mut self, b: Batching) -> Self {
        self.batching = b;
        self
    }

    /// Batch sizes (samples) a dynamic batch is padded up to: a batch of `n` samples runs as the
    /// smallest bucket `>= n`, with copies of its first sample as padding that is dropped from
    /// the answers (rows never mix: the batch-independence check ran at build). Every bucket is
    /// warmed up, and captured as a CUDA graph when graphs are on, before `build()` returns, so
    /// no request pays a first-shape cost. A batch larger than every bucket runs unpadded.
    /// An empty list turns padding off. Default: powers of two up to `max_batch` (and
    /// `max_batch` itself).
    pub fn buckets(mut self, sizes: Vec<usize>) -> Self {
        self.buckets = Some(sizes);
        self
    }

    /// Capture a CUDA graph per worker and input shape (every bucket, at build) and replay it.
    /// CUDA only; needs a build with CUDA graphs compiled in ([`CUDA_GRAPHS_BUILT`](super::CUDA_GRAPHS_BUILT)).
    /// Default: on when compiled in, the engine serves a CUDA device, and every input's shape
    /// is known (so that buckets are captured up front); off otherwise.
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = Some(on);
        self
    }

    /// Requests that may wait in each device's queue; `submit` blocks and `try_submit` returns
    /// [`EngineError::Busy`] when the input's queue is full. Default 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Where results are delivered. Default [`Output::OnDevice`].
    pub fn output(mut self, o: Output) -> Self {
        self.output = o;
        self
    }

    /// Fail `build()` (with the verifier's message) when a GPU backend has no stream pool,
    /// instead of falling back to one worker on it with a warning. Default false.
    pub fn require_stream_pool(mut self, on: bool) -> Self {
        self.require_stream_pool = on;
        self
    }

    /// Per-sample shape (no batch dimension) of the first input, to validate requests against.
    /// Default: the model's own (built-ins declare theirs), else no shape check. For several
    /// inputs use [`inputs`](EngineBuilder::inputs).
    pub fn input_shape(mut self, shape: Vec<i64>) -> Self {
        self.inputs[0].sample_shape = Some(shape);
        self
    }

    /// Dtype of the first input, to validate requests against. Default: the model's own, else
    /// none.
    pub fn input_kind(mut self, kind: Kind) -> Self {
        self.inputs[0].kind = Some(kind);
        self
    }

    /// Every input of the model, in the order of its forward's arguments: requests must carry
    /// exactly these (each `[batch, shape...]` of its dtype, one batch size for all), and
    /// warm-up and the batch-independence check use them. Default: unknown (one input checked
    /// only as far as `input_shape`/`input_kind` say).
    pub fn inputs(mut self, specs: Vec<InputSpec>) -> Self {
        self.arity = Some(specs.len());
        self.inputs = specs.into_iter().map(|s| Expected { sample_shape: Some(s.shape), kind: Some(s.kind) }).collect();
        if self.inputs.is_empty() {
            self.inputs.push(Expected::default());
        }
        self
    }

    /// Run each worker's model on every bucket size before serving (the first size twice), on
    /// zero inputs or those of [`sample_inputs`](Self::sample_inputs) (needs every input's
    /// shape). Default true.
    pub fn warmup(mut self, on: bool) -> Self {
        self.warmup = on;
        self
    }

    /// Inputs for warm-up, calibration and the batch-independence check, made by `f(rows,
    /// device)`, instead of zeros (and the check's own samples): for a model that refuses zeros
    /// (e.g. ids that must be at least 1) or behaves differently on them. Each call must return
    /// one tensor per declared input ([`inputs`](Self::inputs)), `[rows, shape...]` of its dtype,
    /// on `device`; anything else is a build error that says what was asked for. Default: zeros.
    /// The engine always asks for `Device::Cpu` and copies the result to the worker's device:
    /// random numbers drawn on a GPU while another worker captures a CUDA graph would fail.
    ///
    /// ```
    /// use tch::{Device, Kind, Tensor};
    /// use tch_streams::engine::{Engine, InputSpec};
    /// use tch_streams::models::Model;
    /// // Refuses zeros: every id must be at least 1.
    /// let model = Model::closure(|x: &Tensor| if x.f_eq(0)?.f_any()?.f_int64_value(&[])? != 0 { Err(tch::TchError::Torch("id 0".into())) } else { x.f_to_kind(Kind::Float) });
    /// let engine = Engine::builder(model)
    ///     .devices(vec![Device::Cpu])
    ///     .inputs(vec![InputSpec::new([8], Kind::Int64)])
    ///     .sample_inputs(|rows, device| Ok(vec![Tensor::f_ones([rows as i64, 8], (Kind::Int64, device)).map_err(|e| e.to_string())?]))
    ///     .build()?;
    /// assert!(engine.infer(Tensor::ones([1, 8], (Kind::Int64, Device::Cpu))).is_ok());
    /// # Ok::<(), tch_streams::engine::EngineError>(())
    /// ```
    pub fn sample_inputs(mut self, f: impl Fn(usize, Device) -> Result<Vec<Tensor>, String> + Send + Sync + 'static) -> Self {
        self.samples = Some(SampleInputs(Arc::new(f)));
        self
    }

    /// Longest one step of the calibration may take (one batch size: a first run and three timed
    /// ones). A step that outlives it ends the calibration with the best of the sizes measured
    /// before, and [`EngineConfig::calibration_stopped`](super::EngineConfig::calibration_stopped)
    /// says so: a model stuck at some batch size cannot hold `build()` forever. Range 1 ms..=1 h;
    /// default 30 s.
    pub fn calibration_step_limit(mut self, limit: Duration) -> Self {
        self.calibration_step_limit = limit;
        self
    }

    /// Promise that GPU inputs are complete when submitted (their producer stream was
    /// synchronised, e.g. inputs prepared once up front). Workers then skip ordering each batch
    /// after the submitting threads' streams (an event recorded and waited for per distinct
    /// stream and batch). Wrong if the promise is broken: workers may read unfinished inputs.
    /// Default false.
    pub fn inputs_ready(mut self, on: bool) -> Self {
        self.inputs_ready = on;
        self
    }

    /// Most device memory the engine may hold on each of its GPUs: its weights, graph memory
    /// and the working memory of its workers' largest batches. Automatic choices are fitted
    /// into it: the calibration stops after a batch size whose working memory one worker
    /// could not hold, the calibrated `max_batch` is halved, then (when not given) workers
    /// dropped, until the estimate from the calibration's measurements fits; the
    /// configuration's reasons say what was fitted. The estimate counts the weights and, per
    /// worker, what the start-up trial measured one worker holding (its graph pool, buffers and
    /// cuBLAS workspaces; one eager forward of the largest batch where no trial ran). The
    /// build's own moment, the start-up trial on every worker at once, can briefly need more
    /// than the budget. After start-up the engine checks what it really holds on
    /// each GPU (memory reserved since `build()` began, warm-up's cached blocks given back) and
    /// refuses to start over the budget, naming both figures. Engines built at the same time
    /// on one device see each other's memory in that check: build them one after the other.
    /// Not applied on the CPU. Default: [`MemoryBudget::FractionOfFree`] of
    /// [`DEFAULT_MEMORY_FRACTION`](super::DEFAULT_MEMORY_FRACTION) (share a device between engines by giving each its bytes).
    ///
    /// ```
    /// use tch_streams::engine::{Engine, MemoryBudget};
    /// use tch_streams::models::{Builtin, Model};
    /// let builder = Engine::builder(Model::Builtin(Builtin::SmallMlp)).memory_budget(MemoryBudget::Bytes(4 << 30));
    /// # let _ = builder;
    /// ```
    pub fn memory_budget(mut self, budget: MemoryBudget) -> Self {
        self.memory_budget = budget;
        self
    }

    /// Every value in range, with an error that names it and the accepted range.
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Build(m));
        if self.devices.is_empty() {
            return bad("devices: the list is empty; give at least one device".into());
        }
        if let Some(d) = self.devices.iter().find(|d| !matches!(d, Device::Cpu | Device::Cuda(_) | Device::Mps)) {
            return bad(format!("devices: {d:?} is not served; the engine serves Cpu, Cuda(n) and Mps"));
        }
        if let Some(w) = self.workers {
            if w == 0 || w > MAX_WORKERS {
                return bad(format!("workers({w}) is out of range: expected 1..={MAX_WORKERS}"));
            }
        }
        if let Some(sizes) = &self.buckets {
            if sizes.len() > MAX_BUCKETS {
                return bad(format!("buckets: {} sizes given; at most {MAX_BUCKETS}", sizes.len()));
            }
            if let Some(b) = sizes.iter().find(|&&b| b == 0 || b > MAX_BATCH) {
                return bad(format!("buckets: size {b} is out of range: expected 1..={MAX_BATCH} samples"));
            }
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return bad(format!("queue_capacity({}) is out of range: expected 1..={MAX_QUEUE_CAPACITY}", self.queue_capacity));
        }
        if let Batching::Dynamic { max_batch, .. } = self.batching {
            if max_batch == 0 || max_batch > MAX_BATCH {
                return bad(format!("Batching::Dynamic max_batch {max_batch} is out of range: expected 1..={MAX_BATCH} samples"));
            }
        }
        if self.calibration_step_limit < Duration::from_millis(1) || self.calibration_step_limit > MAX_CALIBRATION_STEP_LIMIT {
            return bad(format!(
                "calibration_step_limit({:?}) is out of range: expected 1 ms..=1 h",
                self.calibration_step_limit
            ));
        }
        if let Err(m) = self.memory_budget.check() {
            return bad(m);
        }
        if self.arity == Some(0) {
            return bad("inputs(vec![]): a model needs at least one input".into());
        }
        for (i, e) in self.inputs.iter().enumerate() {
            if let Some(shape) = &e.sample_shape {
                let elements = shape.iter().try_fold(1i64, |acc, &d| if d >= 1 { acc.checked_mul(d) } else { None });
                if elements.is_none_or(|n| n > 1 << 32) {
                    return bad(format!(
                        "input {i}: sample shape {shape:?} is invalid: every size must be >= 1 and a sample at most 2^32 elements"
                    ));
                }
            }
        }
        Ok(())
    }
}
