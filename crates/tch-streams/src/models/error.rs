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
    /// libtorch raised an error (shape mismatch in a kernel, unsupported dtype, …); its message
    /// without the C++ stack trace libtorch appends.
    #[error("{0}")]
    Torch(String),
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

impl From<tch::TchError> for ForwardError {
    fn from(e: tch::TchError) -> Self {
        ForwardError::Torch(torch_message(&e))
    }
}

/// libtorch's message without the C++ frames it appends ("Exception raised from … frame #0 …"),
/// which say where in libtorch the check was, not what to change.
///
/// ```
/// let e = tch::TchError::Torch("open file failed, file path: x.pt\nException raised from RAIIFile at f.cc:24 (most recent call first):\nframe #0: ...".into());
/// assert_eq!(tch_streams::models::torch_message(&e), "open file failed, file path: x.pt");
/// ```
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let cut = text.find("\nException raised from ").unwrap_or(text.len());
    let text = text[..cut].trim_end();
    text.strip_prefix("Internal torch error: ").unwrap_or(text).to_string()
}
