//! [`Mode`]: the ways the harness drives a model, and which of them a device and build can run.

use tch_streams::stream::{Priority, Stream};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// How a point drives the model with T threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The Rust status quo: T threads call `forward` in a loop on the default stream.
    TchDefault,
    /// As `TchDefault`, but each thread binds its own pool stream first
    /// ([`bind_thread`](tch_streams::stream::bind_thread)). Needs a backend with a stream pool.
    TchStreams,
    /// The [`Engine`](tch_streams::engine::Engine) on its defaults (workers, batching and buckets
    /// chosen by the engine) with CUDA graphs off, fed by T client threads that each keep a
    /// window of requests in flight.
    Engine,
    /// The engine on its defaults, CUDA graphs on (what the defaults do on CUDA). Needs a build
    /// with the CUDA graph code and a CUDA device.
    EngineGraphs,
    /// The engine on its defaults, with workers spread round-robin over every device of
    /// [`BenchConfig::spread_devices`](super::BenchConfig::spread_devices) (two or more), each
    /// device with its own model instance; client i's input on device i mod D (the engine serves
    /// an input on the device it lies on). Compared with `Engine` at
    /// the same T, it gives the multi-device scaling ([`BenchReport::spread_ratios`](super::BenchReport::spread_ratios)).
    EngineSpread,
    /// The batched limit: one thread, one call on the T threads' inputs concatenated along dim 0,
    /// inputs and answers on the device.
    Limit,
    /// The batched limit of host-I/O serving: one thread, one call on the T threads' inputs
    /// concatenated along dim 0, held in pinned host memory (plain memory on CPU), copied to the
    /// device asynchronously on the thread's stream, run, the answer copied back asynchronously
    /// into pinned host memory, and the stream synchronised: both copies are timed.
    LimitHost,
}

impl Mode {
    /// Every mode, in table and plot order.
    pub const ALL: [Mode; 7] =
        [Mode::TchDefault, Mode::TchStreams, Mode::Engine, Mode::EngineGraphs, Mode::EngineSpread, Mode::Limit, Mode::LimitHost];

    /// The CLI and JSON name.
    ///
    /// ```
    /// use tch_streams_cli::bench::Mode;
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
            Mode::EngineSpread => "engine-spread",
            Mode::Limit => "limit",
            Mode::LimitHost => "limit-host",
        }
    }

    /// Why this mode cannot run on `device` with this build, or `None` when it can.
    /// (`EngineSpread` also needs two or more devices: see [`unavailable_on`](Mode::unavailable_on).)
    ///
    /// ```
    /// use tch_streams_cli::bench::Mode;
    /// assert_eq!(Mode::TchDefault.unavailable(tch::Device::Cpu), None);
    /// assert!(Mode::EngineGraphs.unavailable(tch::Device::Cpu).is_some());
    /// ```
    pub fn unavailable(self, device: Device) -> Option<String> {
        match self {
            Mode::TchDefault | Mode::Engine | Mode::EngineSpread | Mode::Limit | Mode::LimitHost => None,
            Mode::TchStreams if device == Device::Cpu => {
                Some("CPU has a single stream, so tch-streams would measure tch-default again".into())
            }
            Mode::TchStreams => match Stream::from_pool(device, Priority::Normal) {
                Ok(_) => None,
                Err(e) => Some(format!("no stream pool on {device:?}: {e}")),
            },
            Mode::EngineGraphs if !tch_streams::engine::CUDA_GRAPHS_BUILT => {
                Some("this build has no CUDA graph code (it compiles in when the build finds the CUDA headers; scripts/setup.sh installs them)".into())
            }
            Mode::EngineGraphs if !matches!(device, Device::Cuda(_)) => Some("CUDA graphs need a CUDA device".into()),
            Mode::EngineGraphs => None,
        }
    }

    /// Why this mode cannot run on the device list `devices` (the first one is the sweep's
    /// device), or `None` when it can.
    ///
    /// ```
    /// use tch::Device;
    /// use tch_streams_cli::bench::Mode;
    /// assert!(Mode::EngineSpread.unavailable_on(&[Device::Cpu]).unwrap().contains("two or more"));
    /// assert_eq!(Mode::EngineSpread.unavailable_on(&[Device::Cpu, Device::Cpu]), None);
    /// assert_eq!(Mode::Engine.unavailable_on(&[Device::Cpu]), None);
    /// ```
    pub fn unavailable_on(self, devices: &[Device]) -> Option<String> {
        let Some(&first) = devices.first() else { return Some("no device given".into()) };
        if self == Mode::EngineSpread && devices.len() < 2 {
            return Some("needs two or more devices in --device (e.g. cuda:0,cuda:1)".into());
        }
        self.unavailable(first)
    }

    /// Whether the mode is a batched limit (ours `limit` and `limit-host`, the peer's `py-limit`
    /// and `py-limit-host`) rather than a way of serving concurrent callers.
    ///
    /// ```
    /// use tch_streams_cli::bench::Mode;
    /// assert!(Mode::is_limit_name("limit-host") && Mode::is_limit_name("py-limit-host") && Mode::is_limit_name("py-limit"));
    /// assert!(!Mode::is_limit_name("engine") && !Mode::is_limit_name("tune:w4-batch-graphs"));
    /// ```
    pub fn is_limit_name(name: &str) -> bool {
        name.split('-').any(|part| part == "limit")
    }

    /// Whether the mode runs the [`Engine`](tch_streams::engine::Engine).
    pub fn is_engine(self) -> bool {
        matches!(self, Mode::Engine | Mode::EngineGraphs | Mode::EngineSpread)
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
            format!("unknown mode '{s}'; expected tch-default, tch-streams, engine, engine-graphs, engine-spread, limit or limit-host")
        })
    }
}
