//! One served model: its engine, its named inputs and outputs, and the admission of a request's
//! decoded tensors (names, datatypes, shapes, batch) before anything reaches the engine.
//!
//! A [`ServedModel`] is built on the main thread before the servers start, then shared
//! read-only (`Arc`) by every request handler; only its [`Engine`] has interior state, and the
//! engine is `Send + Sync`.

use super::budget::Reservation;
use super::json;
use super::protocol::{datatype, elements, shown, tensor_from_contents, tensor_from_request_bytes, ApiError};
use super::request::{Data, InferRequest};
use anyhow::{bail, Context};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineStats, InputSpec, Output};
use tch_streams::models::{Builtin, Model, Outputs};
use crate::engine_args::EngineArgs;
use crate::inputs::InputArg;

/// What a model is made from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A TorchScript file; its inputs come from `--input`.
    TorchScript(PathBuf),
    /// A built-in model (fixed inputs).
    Builtin(Builtin),
}

/// One `--model`/`--builtin` entry of the command line, with the `--input`s and `--name` that
/// followed it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The model.
    pub source: Source,
    /// `--name`, else the file stem or the built-in's name.
    pub name: Option<String>,
    /// `--input SHAPE:DTYPE` specs (batch first), in forward's order.
    pub inputs: Vec<InputArg>,
}

impl ModelEntry {
    /// The name clients use: `--name`, else the file stem, else the built-in's name.
    pub fn served_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.source {
            Source::TorchScript(p) => p.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
            Source::Builtin(b) => b.name().to_string(),
        }
    }
}

/// The engine options `serve` passes through: the shared engine flags (each left out keeps the
/// engine's default, so its automatic configuration applies) and the queue capacity.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// `--device`, `--workers`, `--batch-max`, ... as `run` has them.
    pub engine: EngineArgs,
    /// Requests that may wait per device queue: the server's in-flight cap, so a request the
    /// server admitted always finds room.
    pub queue_capacity: usize,
}

/// A named tensor of a model: per-sample dims (the batch dimension comes first on the wire).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// `input0`, `input1`, …; `output0`, … or the keys of a dict output.
    pub name: String,
    /// Element type.
    pub kind: Kind,
    /// Dims of one sample.
    pub dims: Vec<i64>,
}

impl TensorInfo {
    /// The protocol's datatype name (`FP32`).
    pub fn datatype(&self) -> &'static str {
        datatype(self.kind).unwrap_or("INVALID")
    }

    /// The shape metadata shows: `-1` for the batch, then the sample's dims.
    pub fn shape(&self) -> Vec<i64> {
        std::iter::once(-1).chain(self.dims.iter().copied()).collect()
    }
}

/// A request admitted to a model: its input tensors in forward's order, and the outputs asked
/// for with how each is answered.
#[derive(Debug)]
pub struct Admitted {
    /// Input tensors in forward's order (host tensors).
    pub tensors: Vec<Tensor>,
    /// Outputs asked for, in the request's order; empty: all of them.
    pub wanted: Vec<String>,
    /// Per output asked for, whether to answer it as binary (HTTP); outputs not named follow
    /// `all_binary`.
    pub binary: Vec<(String, bool)>,
    /// The request's `binary_data_output` (HTTP).
    pub all_binary: bool,
    /// The client's request id.
    pub id: Option<String>,
}

impl Admitted {
    /// Whether output `name` is answered as binary (HTTP).
    pub fn binary(&self, name: &str) -> bool {
        self.binary.iter().find(|(n, _)| n == name).map_or(self.all_binary, |(_, b)| *b)
    }
}

/// A model being served.
pub struct ServedModel {
    /// The name in URLs and requests.
    pub name: String,
    /// `pytorch_libtorch` for TorchScript files, `tch_streams_builtin` for built-ins.
    pub platform: &'static str,
    /// The engine that runs it (results delivered on the host).
    pub engine: Engine,
    /// Inputs in forward's order.
    pub inputs: Vec<TensorInfo>,
    /// Outputs, in the model's order (learned from a probe at start-up: the model run once on
    /// zeros, outside the engine).
    pub outputs: Vec<TensorInfo>,
    /// Most samples one request may carry (`max_batch_size` of the model configuration).
    pub max_batch_size: usize,
    /// Whether the engine merges requests, as it resolved its configuration.
    pub dynamic_batching: bool,
    /// The engine's counters once it was built: metrics report what came after (client requests).
    pub baseline: EngineStats,
    /// Requests this model's engine may hold at once (see [`window_size`]); more wait in the
    /// server, where a request whose client has gone leaves the line without running.
    pub window: Arc<tokio::sync::Semaphore>,
}

/// How many requests the server lets into a model's engine at once: enough for every worker to
/// run a full batch while the next one forms (two batches of `max_batch` requests per worker;
/// two requests per worker without batching), at most `cap` (the in-flight cap).
///
/// The engine runs every request it was given, even one whose client has gone; a request still
/// waiting for this window when its client goes (a timeout, a disconnect, a gRPC cancellation)
/// is never submitted. So at most this many abandoned requests can still cost engine time.
///
/// ```
/// use tch_streams::engine::Batching;
/// use tch_streams_cli::serve::model::window_size;
/// assert_eq!(window_size(&Batching::Off, 1, 1024), 2);
/// assert_eq!(window_size(&Batching::Dynamic { max_batch: 64, max_wait: Default::default() }, 4, 1024), 512);
/// assert_eq!(window_size(&Batching::Dynamic { max_batch: 64, max_wait: Default::default() }, 16, 1024), 1024);
/// ```
pub fn window_size(batching: &Batching, workers: usize, cap: usize) -> usize {
    let per_worker = match batching {
        Batching::Dynamic { max_batch, .. } => (*max_batch).max(1),
        _ => 1,
    };
    per_worker.saturating_mul(workers.max(1)).saturating_mul(2).min(cap).max(1)
}

/// Names of the outputs of a model's answer, in order: `output0`, `output1`, … or a dict's keys.
pub fn output_names(out: &Outputs) -> Vec<String> {
    match out {
        Outputs::Dict(v) => v.iter().map(|(k, _)| k.clone()).collect(),
        other => (0..other.len()).map(|i| format!("output{i}")).collect(),
    }
}

/// The tensors of an answer with their names, in order.
pub fn named_outputs(out: Outputs) -> Vec<(String, Tensor)> {
    match out {
        Outputs::Tensor(t) => vec![("output0".into(), t)],
        Outputs::Tuple(v) | Outputs::List(v) => v.into_iter().enumerate().map(|(i, t)| (format!("output{i}"), t)).collect(),
        Outputs::Dict(v) => v,
    }
}

/// Whether a name can appear in a URL path segment as it is.
fn url_safe(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl ServedModel {
    /// Builds the engine for `entry`, then runs the model once on zeros (batch 1), outside the
    /// engine, to learn the outputs' names, datatypes and sample shapes. Blocks (model loading,
    /// warm-up).
    pub fn load(entry: &ModelEntry, opts: &EngineOptions, max_batch_size: usize) -> anyhow::Result<ServedModel> {
        let name = entry.served_name();
        if !url_safe(&name) {
            bail!("model name {name:?} is not usable in URLs: use 1 to 128 of A-Z a-z 0-9 _ . - (set it with --name)");
        }
        let (model, inputs, platform) = match &entry.source {
            Source::TorchScript(path) => {
                if entry.inputs.is_empty() {
                    bail!("--model {} needs its inputs: --input SHAPE:DTYPE after it, one per argument of forward, batch first (e.g. --input 1x16:int64)", path.display());
                }
                let inputs = entry
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        if datatype(a.kind).is_none() {
                            bail!("input {i} of {}: dtype {:?} is not served", path.display(), a.kind);
                        }
                        Ok(TensorInfo { name: format!("input{i}"), kind: a.kind, dims: a.shape[1..].to_vec() })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (Model::TorchScript(path.clone()), inputs, "pytorch_libtorch")
            }
            Source::Builtin(b) => {
                if !entry.inputs.is_empty() {
                    bail!("--builtin {b} has fixed inputs ([batch, {}] float32): drop the --input after it", b.sample_shape().iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
                }
                (Model::Builtin(*b), vec![TensorInfo { name: "input0".into(), kind: Kind::Float, dims: b.sample_shape() }], "tch_streams_builtin")
            }
        };
        let probe_model = model.clone();
        let builder = opts
            .engine
            .configure(Engine::builder(model))
            .output(Output::Cpu)
            .queue_capacity(opts.queue_capacity)
            .inputs(inputs.iter().map(|t| InputSpec::new(t.dims.clone(), t.kind)).collect());
        let engine = builder.build().with_context(|| format!("model {name}"))?;
        // The probe runs the model directly, on the device of the engine's first worker, not
        // through the engine: the engine's counters and latencies then count client requests
        // only.
        let device = engine.workers().first().map_or(Device::Cpu, |w| w.device);
        let probe: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let mut shape = vec![1];
                shape.extend(&t.dims);
                Tensor::zeros(shape.as_slice(), (t.kind, device))
            })
            .collect();
        let answer = {
            let _no_grad = tch::no_grad_guard();
            let instance = probe_model.instantiate(device).with_context(|| format!("model {name}: loading it for the start-up probe"))?;
            instance.run(&probe).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("model {name}: the start-up probe (zeros, batch 1) failed"))?
        };
        let outputs = named_outputs(answer)
            .into_iter()
            .map(|(n, t)| {
                let size = t.size();
                if size.first() != Some(&1) || datatype(t.kind()).is_none() {
                    bail!("model {name}: output {n:?} is {:?} of {:?}; outputs must have the batch first and a served dtype", size, t.kind());
                }
                Ok(TensorInfo { name: n, kind: t.kind(), dims: size[1..].to_vec() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let baseline = engine.stats();
        let dynamic_batching = matches!(engine.config().batching, Batching::Dynamic { .. });
        let window = Arc::new(tokio::sync::Semaphore::new(window_size(&engine.config().batching, engine.workers().len(), opts.queue_capacity)));
        Ok(ServedModel { name, platform, engine, inputs, outputs, max_batch_size, dynamic_batching, baseline, window })
    }

    /// Validates a request against the model, the same way for every protocol: no parameter of
    /// an extension this server does not serve; every requested output known; every input
    /// exactly once, by name, with its datatype, `[batch, dims...]` shape, one batch in
    /// 1..=max_batch_size for all, and its byte or value count. Reserves each input tensor's
    /// bytes from `held`'s budget before making it. Blocks (parses and copies tensors): call it
    /// through [`Server::offload`](super::state::Server::offload) for large requests.
    /// `owner_of` gives, for a request's binary tensor bytes, the buffer that holds exactly them
    /// (a cheap clone of part of the body or message), so that aligned bytes become a tensor in
    /// place; `None` copies them.
    pub fn admit(&self, req: InferRequest<'_>, owner_of: &dyn Fn(&[u8]) -> Option<Bytes>, held: &mut Reservation) -> Result<Admitted, ApiError> {
        req.params.check("request")?;
        for o in &req.outputs {
            o.params.check(&format!("output {:?}", shown(&o.name)))?;
        }
        for i in &req.inputs {
            i.params.check(&format!("input {:?}", shown(&i.name)))?;
        }
        let wanted: Vec<String> = req.outputs.iter().map(|o| o.name.to_string()).collect();
        self.check_outputs(&wanted)?;
        let all_binary = req.params.binary_data_output.unwrap_or(false);
        let binary = req.outputs.iter().map(|o| (o.name.to_string(), o.params.binary_data.unwrap_or(all_binary))).collect();
        let mut slots: Vec<Option<Tensor>> = (0..self.inputs.len()).map(|_| None).collect();
        let mut batch: Option<i64> = None;
        for w in req.inputs {
            let name = shown(&w.name);
            let Some(i) = self.inputs.iter().position(|t| t.name == w.name) else {
                let names: Vec<&str> = self.inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(ApiError::bad(format!("unknown input {name:?} for model {}: its inputs are {}", self.name, names.join(", "))));
            };
            let spec = &self.inputs[i];
            if slots[i].is_some() {
                return Err(ApiError::bad(format!("input {name:?} is given twice")));
            }
            if w.datatype != spec.datatype() {
                return Err(ApiError::bad(format!("input {name:?}: datatype {} but the model takes {}", shown(&w.datatype), spec.datatype())));
            }
            let fits = w.shape.len() == spec.dims.len() + 1 && w.shape[1..] == spec.dims[..];
            if !fits {
                return Err(ApiError::bad(format!("input {name:?}: shape {:?} but the model takes {:?} (-1: any batch)", w.shape, spec.shape())));
            }
            let b = w.shape[0];
            if b < 1 || b as u64 > self.max_batch_size as u64 {
                return Err(ApiError::bad(format!("input {name:?}: batch {b} is out of range: expected 1..={} (max_batch_size)", self.max_batch_size)));
            }
            if batch.is_some_and(|x| x != b) {
                return Err(ApiError::bad(format!("input {name:?}: batch {b} differs from the other inputs' {}", batch.unwrap_or(0))));
            }
            batch = Some(b);
            let what = format!("input {name:?}");
            // The tensor's bytes are reserved before it is made (shape checked above: the
            // product fits).
            let bytes = elements(&w.shape)?.saturating_mul(spec.kind.elt_size_in_bytes());
            held.grow(bytes)?;
            let t = match w.data {
                Data::Bytes(b) => tensor_from_request_bytes(&what, b, owner_of(b), &w.shape, spec.kind)?.0,
                Data::Json(raw) => json::tensor_from_json(&what, raw, &w.shape, spec.kind)?,
                Data::Contents(c) => tensor_from_contents(&what, &w.datatype, &w.shape, c)?,
                Data::Missing => return Err(ApiError::bad(format!("{what} carries no data"))),
            };
            slots[i] = Some(t);
        }
        let tensors = slots
            .into_iter()
            .zip(&self.inputs)
            .map(|(t, spec)| t.ok_or_else(|| ApiError::bad(format!("input {:?} is missing (model {} takes {})", spec.name, self.name, self.inputs.len()))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Admitted { tensors, wanted, binary, all_binary, id: req.id.map(|c| c.into_owned()) })
    }

    /// Checks the names of requested outputs; `None` (nothing asked) means all of them.
    pub fn check_outputs(&self, wanted: &[String]) -> Result<(), ApiError> {
        for w in wanted {
            if !self.outputs.iter().any(|o| &o.name == w) {
                let names: Vec<&str> = self.outputs.iter().map(|t| t.name.as_str()).collect();
                return Err(ApiError::bad(format!("unknown output {:?} for model {}: its outputs are {}", shown(w), self.name, names.join(", "))));
            }
        }
        Ok(())
    }
}
