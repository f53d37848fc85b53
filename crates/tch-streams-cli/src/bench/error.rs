//! [`BenchError`]: what can stop a benchmark run. A single point that fails at run time is not
//! an error: it is recorded under `skipped` with its reason and the sweep goes on.

use tch_streams::engine::EngineError;

/// Everything that can stop the harness as a whole. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration cannot be run (empty lists, zero repetitions, a bad duration...).
    #[error("invalid benchmark configuration: {0}")]
    Config(String),

    /// The stream layer or libtorch failed outside any single point (e.g. loading a model).
    #[error(transparent)]
    Torch(#[from] tch_streams::Error),

    /// The engine failed outside any single point.
    #[error(transparent)]
    Engine(#[from] EngineError),

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        message: String,
    },

    /// A JSON document could not be read or does not follow `tch-streams-bench/1`.
    #[error("bad benchmark JSON {path}: {message}")]
    Json {
        /// Where it came from.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// Drawing or encoding the PNG failed (e.g. the directory is not writable).
    #[error("could not draw the plot {path}: {message}")]
    Plot {
        /// The PNG being written.
        path: String,
        /// plotters' message.
        message: String,
    },

    /// The Python peer could not be run or failed.
    #[error("the Python peer failed: {0}")]
    Peer(String),
}

impl BenchError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> BenchError {
        BenchError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}
