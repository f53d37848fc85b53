//! The library's error type. Every message says what happened and what to do next.

use crate::backend::Backend;
use crate::runtime::{Capability, LibIdentity};
use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `tch_streams`. Errors never come as panics or crashes:
/// libtorch's C++ exceptions are caught in the shim and arrive here with libtorch's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The process loaded a different libtorch from the one this binary was built against.
    #[error("{}", mismatch_message(built, loaded))]
    LibtorchMismatch {
        /// What the build linked.
        built: LibIdentity,
        /// What the running process mapped.
        loaded: LibIdentity,
    },

    /// A capability the caller required is not available in this process.
    #[error("required capability `{capability}` is missing: {detail}")]
    MissingCapability {
        /// The capability asked for.
        capability: Capability,
        /// Why it is missing and what would provide it.
        detail: String,
    },

    /// The backend cannot do what was asked (e.g. a pool stream from stock MPS).
    #[error("{backend} does not support {op}: {detail}")]
    Unsupported {
        /// The backend asked.
        backend: Backend,
        /// The operation asked for.
        op: &'static str,
        /// libtorch's message, or why the operation has no meaning there.
        detail: String,
    },

    /// The loaded libtorch has no implementation of that backend at all.
    #[error("{backend} is not available in this libtorch: {detail}")]
    BackendUnavailable {
        /// The backend asked.
        backend: Backend,
        /// libtorch's message.
        detail: String,
    },

    /// A device index outside the devices this process sees.
    #[error("{backend} device index {index} is out of range: {}", device_range(*backend, *count))]
    DeviceIndex {
        /// The backend asked.
        backend: Backend,
        /// The index asked for.
        index: usize,
        /// How many devices of that backend the process sees.
        count: usize,
    },

    /// libtorch raised an error; its message is kept verbatim.
    #[error("libtorch error in {op}: {message}")]
    Torch {
        /// The operation that failed.
        op: &'static str,
        /// libtorch's message.
        message: String,
    },

    /// An argument this crate rejected before reaching libtorch.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A model file could not be loaded (missing, unreadable, or not TorchScript).
    #[error("cannot load the model {path}: {message}")]
    ModelLoad {
        /// The file.
        path: String,
        /// libtorch's message, without its C++ stack trace.
        message: String,
    },

    /// Reading a file (e.g. hashing the loaded libtorch) failed.
    #[error("I/O error on {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

fn device_range(backend: Backend, count: usize) -> String {
    match count {
        0 => format!("this process sees no {backend} device"),
        1 => format!("this process sees 1 {backend} device: use index 0"),
        n => format!("this process sees {n} {backend} devices: use an index in 0..={}", n - 1),
    }
}

fn mismatch_message(built: &LibIdentity, loaded: &LibIdentity) -> String {
    format!(
        "this process loaded a different libtorch from the one it was built against.\n  \
         built against: {built}\n  loaded:        {loaded}\n\
         Fix: rebuild against the loaded library (`cargo clean -p tch-streams && cargo build`), or \
         make the loader pick the built one: unset or correct LD_LIBRARY_PATH / LD_PRELOAD \
         (DYLD_LIBRARY_PATH on macOS) so that {} is found first. \
         Set TCH_STREAMS_ALLOW_MISMATCH=1 to run anyway (not recommended).",
        built.path
    )
}

impl Error {
    /// The process exit code `tch-streams preflight` uses for this error: 2 for a libtorch
    /// mismatch, 3 for a missing required capability, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::LibtorchMismatch { .. } => 2,
            Error::MissingCapability { .. } => 3,
            _ => 1,
        }
    }
}

impl fmt::Display for LibIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sha256 {})", self.path, self.sha256)
    }
}
