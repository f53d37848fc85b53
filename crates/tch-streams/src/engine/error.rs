//! Errors a request or the engine's construction can end with.

/// Why a request (or building the engine) failed. Each failed request gets exactly one of these;
/// nothing is dropped silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The input does not fit the model (rank, shape, dtype, device, or an empty batch).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model raised an error on this request; libtorch's message.
    #[error("model error: {0}")]
    Model(String),
    /// The model answered, but its output cannot be served: an output without the batch as its
    /// first dimension (a scalar, a reduction over the batch), a structure the engine cannot
    /// split, or not the single tensor asked for.
    #[error("unusable model output: {0}")]
    Output(String),
    /// The model panicked while serving this request; the worker was replaced.
    #[error("the model panicked (worker replaced): {0}")]
    ModelPanicked(String),
    /// The worker holding this request stopped without answering it.
    #[error("the worker serving this request died before answering it")]
    WorkerDied,
    /// Every worker that could serve this request has died (a model panic, then a replacement
    /// that could not start); the message names the device.
    #[error("no worker left: {0}")]
    NoWorkers(String),
    /// `shutdown_timeout` gave up waiting: the request was still queued, or its worker was stuck.
    #[error("the engine's shutdown timed out before this request was served")]
    ShutdownTimeout,
    /// The engine was shut down before the request was accepted.
    #[error("the engine is shut down")]
    ShutDown,
    /// The queue is full (`try_submit` only; `submit` waits instead).
    #[error("the engine's queue is full; retry later or use submit() to wait")]
    Busy,
    /// The engine could not be built; the message says why and what to do.
    #[error("cannot build the engine: {0}")]
    Build(String),
    /// The engine could not be built because the library refused something (a device index out
    /// of range, a backend or capability missing, a model file that cannot be loaded). The
    /// typed error is kept as this error's source, so a caller (e.g. the CLI's exit code) can
    /// downcast it; the message is the same as [`Build`](EngineError::Build)'s would be.
    #[error("cannot build the engine: {0}")]
    Setup(#[from] crate::Error),
}

impl From<crate::models::ForwardError> for EngineError {
    fn from(e: crate::models::ForwardError) -> Self {
        use crate::models::ForwardError as F;
        match e {
            F::Structure(m) => EngineError::Output(m),
            F::Torch(m) | F::Inputs(m) | F::Other(m) => EngineError::Model(m),
        }
    }
}
