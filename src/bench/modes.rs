//! [`Mode`]: the ways the harness drives a model, and which of them a device and build can run.

use crate::stream::{Priority, Stream};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// How a point drives the model with T threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The Rust status quo: T threads call `forward` in a loop on the default stream.
    TchDefault,
    /// As `TchDefault`, but each thread binds its own pool stream first
    /// ([`bind_thread`](crate::stream::bind_thread)). Needs a backend with a stream pool.
    TchStreams,
    /// The [`Engine`](crate::engine::Engine) with `min(T, 16)` workers and dynamic batching, fed by
    /// T client threads that each keep a window of requests in flight.
    Engine,
    /// As `Engine`, with CUDA graphs. Needs the `cuda-graphs` cargo feature and a CUDA device.
    EngineGraphs,
    /// The batched limit: one thread, one call on the T threads' inputs concatenated along dim 0.
    Limit,
}

impl Mode {
    /// Every mode, in table and plot order.
    pub const ALL: [Mode; 5] = [Mode::TchDefault, Mode::TchStreams, Mode::Engine, Mode::EngineGraphs, Mode::Limit];

    /// The CLI and JSON name.
    ///
    /// ```
    /// use tch_streams::bench::Mode;
    /// assert_eq!(Mode::EngineGraphs.name(), "engine-graphs");
    /// assert_eq!("tch-streams".parse::<Mode>(), Ok(Mode::TchStreams));
    /// assert!("fast".parse::<Mode>().unwrap_err().contains("expected"));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Mode::TchDefault => "tch-default",
            Mode::TchStreams => "tch-streams",
            Mode::Engine => "engine",
            Mode::EngineGraphs => "engine-graphs",
            Mode::Limit => "limit",
        }
    }

    /// Why this mode cannot run on `device` with this build, or `None` when it can.
    ///
    /// ```
    /// use tch_streams::bench::Mode;
    /// assert_eq!(Mode::TchDefault.unavailable(tch::Device::Cpu), None);
    /// assert!(Mode::EngineGraphs.unavailable(tch::Device::Cpu).is_some());
    /// ```
    pub fn unavailable(self, device: Device) -> Option<String> {
        match self {
            Mode::TchDefault | Mode::Engine | Mode::Limit => None,
            Mode::TchStreams if device == Device::Cpu => {
                Some("CPU has a single stream, so tch-streams would measure tch-default again".into())
            }
            Mode::TchStreams => match Stream::from_pool(device, Priority::Normal) {
                Ok(_) => None,
                Err(e) => Some(format!("no stream pool on {device:?}: {e}")),
            },
            Mode::EngineGraphs if !cfg!(feature = "cuda-graphs") => {
                Some("needs a build with --features cuda-graphs (and a CUDA device)".into())
            }
            Mode::EngineGraphs if !matches!(device, Device::Cuda(_)) => Some("CUDA graphs need a CUDA device".into()),
            Mode::EngineGraphs => None,
        }
    }

    /// Whether the mode is a batched limit (ours `limit`, the peer's `py-limit`) rather than a
    /// way of serving concurrent callers.
    pub fn is_limit_name(name: &str) -> bool {
        name == "limit" || name.ends_with("-limit")
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL.into_iter().find(|m| m.name() == s.trim()).ok_or_else(|| {
            format!("unknown mode '{s}'; expected tch-default, tch-streams, engine, engine-graphs or limit")
        })
    }
}
