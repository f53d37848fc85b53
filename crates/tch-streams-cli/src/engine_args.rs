//! The engine flags of `run`, `serve` and `bench`, declared once: [`DeviceArgs`] (every command)
//! and [`EngineArgs`] (the engine's limits and switches), each a flattened clap struct, checked
//! against the engine's own limits ([`tch_streams::engine::MAX_WORKERS`] and the rest) and
//! mapped onto an [`EngineBuilder`] in one place ([`EngineArgs::configure`]).
//!
//! Where the commands differ, each command says so where it flattens these structs:
//! - the `--help` text of `--device`, `--workers`, `--batch-max`, `--batch-wait-us` and
//!   `--cuda-graphs` is each command's own (set with `mut_arg`), the flags and defaults are these;
//! - `serve` refuses `--batch-wait-us` without `--batch-max` (clap's `requires`), while `run`
//!   accepts it and ignores it (the engine's batching is then automatic, with no wait);
//! - `bench` takes only `--device` (its engine points run on the engine's defaults).
//!
//! ```
//! use clap::{Args, FromArgMatches};
//! use tch_streams::engine::Batching;
//! use tch_streams_cli::engine_args::EngineArgs;
//! let cmd = EngineArgs::augment_args(clap::Command::new("t").no_binary_name(true));
//! let parse = |argv: &[&str]| EngineArgs::from_arg_matches(&cmd.clone().try_get_matches_from(argv).unwrap()).unwrap();
//! assert_eq!(parse(&["--device", "cpu"]).batching(), None); // the engine's choice
//! assert_eq!(parse(&["--batch-max", "0"]).batching(), Some(Batching::Off));
//! let a = parse(&["--batch-max", "8", "--batch-wait-us", "50"]);
//! assert_eq!(a.batching(), Some(Batching::Dynamic { max_batch: 8, max_wait: std::time::Duration::from_micros(50) }));
//! assert!(parse(&["--workers", "0"]).check().unwrap_err().to_string().contains("--workers 0 is out of range: expected 1..=1024"));
//! ```

use crate::parse::{parse_devices, parse_memory};
use anyhow::bail;
use std::time::Duration;
use tch::Device;
use tch_streams::engine::{Batching, EngineBuilder, MemoryBudget, Replicas, DEFAULT_MAX_WAIT, MAX_BATCH, MAX_BUCKETS, MAX_BUCKET_OVER_BATCH, MAX_WORKERS};

/// A parsed `--device` list (one clap value): never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Devices(pub Vec<Device>);

impl Devices {
    /// The first device: where inputs are made and single-device work runs.
    pub fn first(&self) -> Device {
        self.0.first().copied().unwrap_or(Device::Cpu)
    }
}

/// Longest `--batch-wait-us`: 10 s (the engine accepts any wait; a longer one is a typo).
pub const MAX_WAIT_US: u64 = 10_000_000;

/// `--device`, the one engine flag every command takes.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct DeviceArgs {
    /// Devices: auto, cpu, mps, cuda:N, or a list like cuda:0,cuda:1 (workers go round-robin).
    #[arg(long, default_value = "auto", value_parser = |s: &str| parse_devices(s).map(Devices))]
    pub device: Devices,
}

/// The engine's flags as `run`, `serve` and `bench` take them. `None`/`false` leaves the
/// builder's own default (and so any automatic choice of the engine) in place. `bench` applies
/// them to its engine modes and refuses the graph flags (its modes decide graphs).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub devices: DeviceArgs,
    /// Worker threads in all, each with its own stream [default: the engine's choice, 4 per GPU, 2 for the CPU].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Dynamic batching: most samples per batch; 0 turns batching off [default: the engine's choice, calibrated at start-up when the model's inputs are known].
    #[arg(long)]
    pub batch_max: Option<usize>,
    /// Dynamic batching: longest a request waits for company, microseconds [default: 0, with --batch-max: 200].
    #[arg(long)]
    pub batch_wait_us: Option<u64>,
    /// Batch sizes batches are padded to, comma-separated (e.g. 1,8,64); needs batching [default: powers of two up to the largest batch].
    #[arg(long, value_delimiter = ',')]
    pub buckets: Vec<usize>,
    /// Capture and replay CUDA graphs [default: on for CUDA when the build has them].
    #[arg(long, conflicts_with = "no_cuda_graphs")]
    pub cuda_graphs: bool,
    /// Never use CUDA graphs.
    #[arg(long)]
    pub no_cuda_graphs: bool,
    /// One model instance per worker instead of one per device.
    #[arg(long)]
    pub per_worker_replicas: bool,
    /// Most GPU memory the engine may hold per device (weights, CUDA graphs, the working memory
    /// of its largest batches): a size like 8GiB, 512MiB or 2GB, or a share of the free memory
    /// like 50%. The calibrated largest batch, then (when --workers is not given) the workers,
    /// are lowered to fit, and start-up fails if the engine holds more after warm-up. `serve`
    /// divides it between its models [default: 80% of the free memory].
    #[arg(long, value_parser = parse_memory, value_name = "SIZE|PCT%")]
    pub gpu_memory: Option<MemoryBudget>,
}

impl EngineArgs {
    /// The devices of `--device`.
    pub fn devices(&self) -> &[Device] {
        &self.devices.device.0
    }

    /// Every engine flag in range, with an error that names the flag and the accepted range
    /// (the engine's own limits).
    pub fn check(&self) -> anyhow::Result<()> {
        let within = |name: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                bail!("--{name} {v} is out of range: expected {lo}..={hi}");
            }
            Ok(())
        };
        if let Some(w) = self.workers {
            within("workers", w, 1, MAX_WORKERS)?;
        }
        if let Some(b) = self.batch_max {
            within("batch-max", b, 0, MAX_BATCH)?;
        }
        if let Some(w) = self.batch_wait_us {
            if w > MAX_WAIT_US {
                bail!("--batch-wait-us {w} is out of range: expected 0..={MAX_WAIT_US} (10 s)");
            }
        }
        if self.buckets.len() > MAX_BUCKETS {
            bail!("--buckets: {} sizes given; at most {MAX_BUCKETS}", self.buckets.len());
        }
        if let Some(b) = self.buckets.iter().find(|&&b| b == 0 || b > MAX_BATCH) {
            bail!("--buckets: size {b} is out of range: expected 1..={MAX_BATCH}");
        }
        if let (Some(max), Some(b)) = (self.batch_max.filter(|&m| m > 0), self.buckets.iter().max()) {
            if *b > max.saturating_mul(MAX_BUCKET_OVER_BATCH) {
                bail!(
                    "--buckets: size {b} is over {MAX_BUCKET_OVER_BATCH} x --batch-max {max}: batches would be padded up to it; give sizes of at most {}",
                    max * MAX_BUCKET_OVER_BATCH
                );
            }
        }
        if !self.buckets.is_empty() && self.batch_max == Some(0) {
            bail!("--buckets needs batching: leave --batch-max out (the engine batches by default) or give it a size");
        }
        Ok(())
    }

    /// `--batch-max`/`--batch-wait-us` as the engine's [`Batching`]: 0 is off, a size is dynamic
    /// batching with the given wait (default [`DEFAULT_MAX_WAIT`]); `None` leaves the engine's
    /// choice ([`Batching::Auto`]), and the wait is then unused.
    pub fn batching(&self) -> Option<Batching> {
        match self.batch_max? {
            0 => Some(Batching::Off),
            max_batch => Some(Batching::Dynamic { max_batch, max_wait: self.batch_wait_us.map_or(DEFAULT_MAX_WAIT, Duration::from_micros) }),
        }
    }

    /// `--cuda-graphs`/`--no-cuda-graphs`; `None`: the engine's choice.
    pub fn cuda_graphs(&self) -> Option<bool> {
        (self.cuda_graphs || self.no_cuda_graphs).then_some(self.cuda_graphs)
    }

    /// The one mapping of these flags onto a builder: devices always; every other setting only
    /// when its flag was given.
    pub fn configure(&self, builder: EngineBuilder) -> EngineBuilder {
        self.configure_settings(builder.devices(self.devices().to_vec()))
    }

    /// As [`configure`](Self::configure), without the devices (`bench` sets them per mode).
    pub fn configure_settings(&self, builder: EngineBuilder) -> EngineBuilder {
        let mut b = builder;
        if let Some(w) = self.workers {
            b = b.workers(w);
        }
        if let Some(batching) = self.batching() {
            b = b.batching(batching);
        }
        if !self.buckets.is_empty() {
            b = b.buckets(self.buckets.clone());
        }
        if let Some(on) = self.cuda_graphs() {
            b = b.cuda_graphs(on);
        }
        if self.per_worker_replicas {
            b = b.replicas(Replicas::PerWorker);
        }
        if let Some(m) = self.gpu_memory {
            b = b.memory_budget(m);
        }
        b
    }
}

impl EngineArgs {
    /// The flags given beyond `--device`, as they would be typed (`--workers 8 --batch-max 0`);
    /// `None` when none was given (the engine's defaults).
    pub fn given(&self) -> Option<String> {
        let mut v: Vec<String> = Vec::new();
        if let Some(w) = self.workers {
            v.push(format!("--workers {w}"));
        }
        if let Some(b) = self.batch_max {
            v.push(format!("--batch-max {b}"));
        }
        if let Some(w) = self.batch_wait_us {
            v.push(format!("--batch-wait-us {w}"));
        }
        if !self.buckets.is_empty() {
            v.push(format!("--buckets {}", self.buckets.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")));
        }
        if self.cuda_graphs {
            v.push("--cuda-graphs".into());
        }
        if self.no_cuda_graphs {
            v.push("--no-cuda-graphs".into());
        }
        if self.per_worker_replicas {
            v.push("--per-worker-replicas".into());
        }
        if let Some(m) = self.gpu_memory {
            v.push(match m {
                MemoryBudget::Bytes(n) => format!("--gpu-memory {n}"),
                MemoryBudget::FractionOfFree(f) => format!("--gpu-memory {}%", f * 100.0),
            });
        }
        (!v.is_empty()).then(|| v.join(" "))
    }
}
