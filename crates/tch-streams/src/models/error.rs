//! [`ForwardError`]: why a model could not answer.

/// Why a [`Forward`](super::Forward) call failed. libtorch's errors keep their message.
///
/// ```
/// use tch_streams::models::ForwardError;
/// let e = ForwardError::Inputs("expected 2 inputs, got 1".into());
/// assert_eq!(e.to_string(), "wrong inputs for the model: expected 2 inputs, got 1");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// libtorch raised an error (shape mismatch in a kernel, unsupported dtype, …).
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// The inputs do not fit what the model takes (their number, rank or dtype).
    #[error("wrong inputs for the model: {0}")]
    Inputs(String),
    /// The model returned a value the engine cannot serve, or not in the structure asked for.
    #[error("unusable model output: {0}")]
    Structure(String),
    /// Any other failure, in the model's own words (e.g. from a closure's error type).
    #[error("{0}")]
    Other(String),
}
