//! A request in flight, and the checks a request passes before it is queued.

use super::error::EngineError;
use super::ticket::Promise;
use crate::stream::Event;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Key under which requests may share a batch: everything but dim 0, dtype, device.
pub(crate) type BatchKey = (Vec<i64>, Kind, Device);

/// One submitted input, waiting for a worker. `rows` and `key` are fixed at submission (the
/// batcher compares them many times).
pub(crate) struct Request {
    pub(crate) input: Tensor,
    pub(crate) promise: Promise,
    pub(crate) submitted: Instant,
    /// Recorded on the submitting thread's current stream when the input lives on a GPU; the
    /// worker's stream waits for it before reading the input.
    pub(crate) ready: Option<(Device, Event)>,
    /// Rows along dim 0.
    pub(crate) rows: i64,
    pub(crate) key: BatchKey,
}

impl Request {
    pub(crate) fn new(input: Tensor, promise: Promise, ready: Option<(Device, Event)>) -> Request {
        let size = input.size();
        let rows = size.first().copied().unwrap_or(0);
        let key = (size.get(1..).unwrap_or(&[]).to_vec(), input.kind(), input.device());
        Request { input, promise, submitted: Instant::now(), ready, rows, key }
    }
}

/// What a request must look like (from the model or the builder).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputSpec {
    pub(crate) sample_shape: Option<Vec<i64>>,
    pub(crate) kind: Option<Kind>,
    /// Devices an input may live on: CPU (copied to the worker's device) or the engine's devices.
    pub(crate) devices: Vec<Device>,
}

impl InputSpec {
    /// Checks rank, shape, dtype, device and a non-empty batch; the message says what was expected.
    pub(crate) fn validate(&self, input: &Tensor) -> Result<(), EngineError> {
        let size = input.size();
        if !input.defined() || size.is_empty() {
            return Err(EngineError::InvalidInput(format!(
                "expected a batch (dim 0 = samples), got a tensor of rank {}",
                size.len()
            )));
        }
        if size[0] == 0 {
            return Err(EngineError::InvalidInput("empty batch (dim 0 has size 0)".into()));
        }
        if let Some(shape) = &self.sample_shape {
            if size.len() != shape.len() + 1 {
                return Err(EngineError::InvalidInput(format!(
                    "wrong rank: expected {} dims [batch, {}], got {:?}",
                    shape.len() + 1,
                    join(shape),
                    size
                )));
            }
            if size[1..] != shape[..] {
                return Err(EngineError::InvalidInput(format!(
                    "wrong shape: expected [batch, {}], got {:?}",
                    join(shape),
                    size
                )));
            }
        }
        if let Some(kind) = self.kind {
            if input.kind() != kind {
                return Err(EngineError::InvalidInput(format!("wrong dtype: expected {kind:?}, got {:?}", input.kind())));
            }
        }
        let device = input.device();
        if device != Device::Cpu && !self.devices.contains(&device) {
            return Err(EngineError::InvalidInput(format!(
                "wrong device: the input is on {device:?}; this engine serves {:?} (CPU inputs are copied over)",
                self.devices
            )));
        }
        Ok(())
    }
}

fn join(shape: &[i64]) -> String {
    shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}
