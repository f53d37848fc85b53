//! A request in flight, and the checks a request passes before it is queued.

use super::error::EngineError;
use super::ticket::Promise;
use super::events::ReadyMark;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Key under which requests may share a batch: per input, everything but dim 0, dtype, device.
pub(crate) type BatchKey = Vec<(Vec<i64>, Kind, Device)>;

/// One submitted request (its positional inputs), waiting for a worker. `rows` and `key` are
/// fixed at submission (the batcher compares them many times).
pub(crate) struct Request {
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) promise: Promise,
    pub(crate) submitted: Instant,
    /// Per GPU device the inputs live on: an event recorded on the submitting thread's current
    /// stream there; the worker orders itself after it before reading the inputs.
    pub(crate) ready: Vec<ReadyMark>,
    /// Samples along dim 0 (the same for every input: checked at admission).
    pub(crate) rows: i64,
    pub(crate) key: BatchKey,
}

impl Request {
    pub(crate) fn new(inputs: Vec<Tensor>, promise: Promise, ready: Vec<ReadyMark>) -> Request {
        let rows = inputs.first().and_then(|x| x.size().first().copied()).unwrap_or(0);
        let key = inputs.iter().map(|x| (x.size().get(1..).unwrap_or(&[]).to_vec(), x.kind(), x.device())).collect();
        Request { inputs, promise, submitted: Instant::now(), ready, rows, key }
    }

    /// The request, unless its caller has gone (its ticket was dropped): then it is let go here,
    /// counted as cancelled, and never run. Workers call it when they take a request and again
    /// on a gathered batch; every path that fails queued requests calls it first.
    pub(crate) fn live(self) -> Option<Request> {
        if self.promise.is_cancelled() {
            self.promise.cancel();
            None
        } else {
            Some(self)
        }
    }

    /// Whether its caller has gone (one atomic load; see [`Request::live`]).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.promise.is_cancelled()
    }

    /// Where the request's data lies: the first GPU input's device, else the host.
    pub(crate) fn device(&self) -> Device {
        self.inputs.iter().map(Tensor::device).find(|d| *d != Device::Cpu).unwrap_or(Device::Cpu)
    }
}

/// What one input must look like, as far as it is known (from the model or the builder).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Expected {
    pub(crate) sample_shape: Option<Vec<i64>>,
    pub(crate) kind: Option<Kind>,
}

/// The admission rules of an engine: how many inputs, what each looks like, which devices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Admission {
    /// Expected inputs by position; positions past the end are not checked beyond the batch.
    pub(crate) inputs: Vec<Expected>,
    /// The exact number of inputs, when known.
    pub(crate) arity: Option<usize>,
    /// Devices an input may live on: CPU (copied to the worker's device) or the engine's devices.
    pub(crate) devices: Vec<Device>,
}

impl Admission {
    /// Checks the number of inputs, then each input's rank, batch, shape, dtype and device; the
    /// message names the input (by index when there are several) and says what was expected.
    pub(crate) fn validate(&self, inputs: &[Tensor]) -> Result<(), EngineError> {
        if inputs.is_empty() {
            return Err(EngineError::InvalidInput("a request needs at least one input tensor".into()));
        }
        if let Some(n) = self.arity {
            if inputs.len() != n {
                return Err(EngineError::InvalidInput(format!("expected {n} input(s), got {}", inputs.len())));
            }
        }
        let name = |i: usize| if inputs.len() == 1 { "input".to_string() } else { format!("input {i}") };
        let mut rows = None;
        for (i, input) in inputs.iter().enumerate() {
            if !input.defined() {
                return Err(EngineError::InvalidInput(format!("{}: the tensor is undefined (Tensor::new() holds no data)", name(i))));
            }
            let size = input.size();
            if size.is_empty() {
                return Err(EngineError::InvalidInput(format!("{}: expected a batch (dim 0 = samples), got a 0-d tensor", name(i))));
            }
            if size[0] == 0 {
                return Err(EngineError::InvalidInput(format!("{}: empty batch (dim 0 has size 0)", name(i))));
            }
            match rows {
                None => rows = Some(size[0]),
                Some(r) if r != size[0] => {
                    return Err(EngineError::InvalidInput(format!(
                        "input {i} has {} sample(s) along dim 0 but input 0 has {r}: every input of a request carries the same samples",
                        size[0]
                    )))
                }
                Some(_) => {}
            }
            let expected = self.inputs.get(i).cloned().unwrap_or_default();
            if let Some(shape) = &expected.sample_shape {
                if size.len() != shape.len() + 1 {
                    return Err(EngineError::InvalidInput(format!(
                        "{}: wrong rank: expected {} dims [batch, {}], got {:?}",
                        name(i),
                        shape.len() + 1,
                        join(shape),
                        size
                    )));
                }
                if size[1..] != shape[..] {
                    return Err(EngineError::InvalidInput(format!("{}: wrong shape: expected [batch, {}], got {:?}", name(i), join(shape), size)));
                }
            }
            if let Some(kind) = expected.kind {
                if input.kind() != kind {
                    return Err(EngineError::InvalidInput(format!("{}: wrong dtype: expected {kind:?}, got {:?}", name(i), input.kind())));
                }
            }
            let device = input.device();
            if device != Device::Cpu && !self.devices.contains(&device) {
                return Err(EngineError::InvalidInput(format!(
                    "{}: wrong device: it is on {device:?}; this engine serves {:?} (CPU inputs are copied over)",
                    name(i),
                    self.devices
                )));
            }
        }
        Ok(())
    }
}

fn join(shape: &[i64]) -> String {
    shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}
