//! The benchmark harness behind `tch-streams bench`: scaling sweeps of the ways to run a model
//! from many threads, with the Python PyTorch peer measured side by side in the same run.
//!
//! # What it measures
//! For every workload × mode × thread count T, samples per second (a sample is one row along
//! dim 0 of the input), over `reps` repetitions (median, min, max):
//!
//! | mode            | what runs                                                                         |
//! |-----------------|-----------------------------------------------------------------------------------|
//! | `tch-default`   | T threads call `forward` in a loop on the default stream (the Rust status quo)     |
//! | `tch-streams`   | as `tch-default`, each thread bound to its own pool stream (not on CPU: one stream) |
//! | `engine`        | the [`Engine`](tch_streams::engine::Engine) on its defaults, CUDA graphs off, fed by T clients with 8 requests in flight each |
//! | `engine-graphs` | the engine on its defaults with CUDA graphs on (its default on CUDA; CUDA only)     |
//! | `limit`         | one thread, one call on the T inputs concatenated (T × batch samples per call), inputs and answer on the device |
//! | `limit-host`    | as `limit`, the input in pinned host memory (plain on CPU): copied in asynchronously on a stream, forward, copied out into pinned host memory, synchronised — the limit of host-I/O serving |
//!
//! With [`BenchConfig::host_io`] (`--host-io`) the serving modes take their inputs from host
//! memory and deliver their answers to it: `tch-default`/`tch-streams` copy each input to the
//! device, run, and copy every output back (which synchronises the thread's stream); the engine
//! modes submit host tensors with [`Output::Cpu`](tch_streams::engine::Output::Cpu). The limits
//! are the same either way; the ours/limit ratios then use `limit-host`. The JSON config records
//! `"host_io"`; the peer gets the flag too. On CPU it changes nothing.
//!
//! Every engine point on CUDA (engine, engine-graphs, engine-spread, tune) also records its
//! [`DeviceMemory`] under `"memory"`: the allocator's cached blocks are released and its peaks
//! reset just before the engine is built; `after_build_bytes` is what it reserved right after the
//! build, `peak_bytes` the most it reserved until the end of the point's timed phases (summed over
//! the point's devices). Absent on CPU.
//!
//! Workloads: the built-ins with the peer's inputs, small-mlp `[1,512]`, large-mlp `[64,2048]`,
//! transformer `[1,64,256]`, or a TorchScript file with a given shape. All threads share one
//! model instance; grad is off in every thread. A mode the device or build cannot run, and a
//! point that fails, are listed under `skipped` with the reason.
//!
//! The protocol is the peer's (see `crates/tch-streams-cli/peer/python_peer.py`): threads and inputs are made
//! before timing (on the device, or on the host with `--host-io` and for `limit-host`); barrier; warm-up; every thread synchronises; barrier; timed phase;
//! every thread synchronises its stream (engine clients: wait for their tickets, whose results
//! are final); the elapsed time includes that synchronisation.
//!
//! # Outputs
//! [`write_outputs`] writes `<dir>/<date>-<device>.json` (schema `tch-streams-bench/1`, the peer's
//! document under a top-level `"peer"` key when it ran), `.csv` (one row per tool, workload, mode,
//! threads, with the efficiency throughput(T) / (T × throughput(1))) and `.png` (throughput vs
//! threads, one panel per workload, the peer's lines as `py-…`, the limits dashed).
//! [`BenchReport::render`] is the text summary with ours/peer and ours/limit ratios.
//!
//! # From the command line
//! ```text
//! scripts/bench.sh --quick                     # setup, build, CPU-sized sweep with the peer
//! tch-streams bench --device cuda:0 --with-python --out results/
//! tch-streams bench --workloads small-mlp --modes tch-default,engine,limit --threads 1,4,16 --reps 5
//! tch-streams bench --model net.pt --shape 8x3x224x224 --threads 1,2,4
//! tch-streams bench --device cuda:0 --model bert_mini.pt --input 1x128:int64 --input 1x128:int64 \
//!     --int-range 0..30522 --host-io --with-python
//! ```
//!
//! # From Rust
//! ```
//! use tch_streams_cli::bench::{self, BenchConfig, Mode, Workload};
//! use tch_streams::models::Builtin;
//! let mut cfg = BenchConfig::quick(tch::Device::Cpu);
//! cfg.workloads = vec![Workload::Builtin(Builtin::SmallMlp)];
//! cfg.modes = vec![Mode::TchDefault, Mode::Limit];
//! (cfg.threads, cfg.reps, cfg.warmup_s, cfg.duration_s) = (vec![1, 2], 1, 0.0, 0.05);
//! let report = bench::run(&cfg)?;
//! assert_eq!(report.ours.results.len(), 4); // 2 modes x 2 thread counts
//! assert!(report.ours.results.iter().all(|r| r.samples_per_s.median > 0.0));
//! let dir = std::env::temp_dir().join(format!("tch-streams-bench-doc-{}", std::process::id()));
//! let files = bench::write_outputs(&report, &dir)?;
//! assert!(files.png.exists());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), tch_streams_cli::bench::BenchError>(())
//! ```

mod config;
mod csv;
mod error;
mod glyphs;
mod measure;
mod memory;
mod modes;
mod peer;
mod plot;
mod report;
mod schema;
mod workloads;

pub use config::{BenchConfig, Workload};
pub use csv::{to_csv, CSV_HEADER};
pub use error::BenchError;
pub use memory::{measured_devices, DeviceMemory, MemoryWatch};
pub use modes::Mode;
pub use peer::{find_script, read_peer, PeerRunner, PEER_SCRIPT};
pub use plot::plot_png;
pub use report::{efficiency, BenchReport, LimitRatio, PeerDoc, PeerRatio, SpreadPeak, SpreadRatio, TuneBest};
pub use schema::{BenchDoc, DocConfig, Latency, PointResult, Skipped, Stats, PEER_TOOL, SCHEMA, TOOL};
pub use workloads::TuneConfig;

use tch_streams::runtime::LoadedLibtorch;
use tch_streams::stream::Stream;
use std::path::{Path, PathBuf};
use tch::Device;

/// Runs our side of the sweep (not the peer: see [`PeerRunner`]). Fails only when the
/// configuration is invalid, the device does not exist, or the loaded libtorch cannot be read;
/// failures of single points are recorded under `skipped`.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    for &device in &cfg.spread_devices {
        Stream::default_for(device)?; // a device index out of range fails here, clearly
    }
    let loaded = LoadedLibtorch::detect()?;
    let date = schema::utc_now();
    let sweep = workloads::sweep(cfg);
    let ours = BenchDoc {
        schema: SCHEMA.into(),
        tool: TOOL.into(),
        date,
        device: device_label(cfg.device),
        device_name: device_name(cfg.device, &loaded),
        torch_version: loaded.loaded_version.clone().unwrap_or_else(|| loaded.compiled_version.clone()),
        config: DocConfig {
            threads: cfg.threads.clone(),
            reps: cfg.reps,
            warmup_s: cfg.warmup_s,
            duration_s: cfg.duration_s,
            spread_devices: if cfg.spread_devices.len() > 1 && cfg.modes.contains(&Mode::EngineSpread) {
                cfg.spread_devices.iter().map(|&d| device_label(d)).collect()
            } else {
                Vec::new()
            },
            host_io: cfg.host_io,
            engine_flags: cfg.engine.as_ref().and_then(|e| e.given()),
        },
        results: sweep.results,
        skipped: sweep.skipped,
        tune: sweep.tune,
    };
    Ok(BenchReport { ours, peer: None })
}

/// The files [`write_outputs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// `<dir>/<stem>.json`
    pub json: PathBuf,
    /// `<dir>/<stem>.csv`
    pub csv: PathBuf,
    /// `<dir>/<stem>.png`
    pub png: PathBuf,
}

/// Writes the JSON, CSV and PNG of `report` into `dir` (created if needed), named after our
/// run's date and device, e.g. `2026-11-23T233000Z-cuda0.json`.
pub fn write_outputs(report: &BenchReport, dir: &Path) -> Result<Outputs, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let stem = file_stem(&report.ours);
    let out = Outputs { json: dir.join(format!("{stem}.json")), csv: dir.join(format!("{stem}.csv")), png: dir.join(format!("{stem}.png")) };
    let mut json = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| BenchError::Json { path: out.json.display().to_string(), message: e.to_string() })?;
    json.push('\n');
    std::fs::write(&out.json, json).map_err(|e| BenchError::io(&out.json, e))?;
    std::fs::write(&out.csv, to_csv(report)).map_err(|e| BenchError::io(&out.csv, e))?;
    plot_png(report, &out.png)?;
    Ok(out)
}

/// `<date>-<device>` with the characters files dislike removed: `2026-11-23T233000Z-cuda0`.
pub fn file_stem(doc: &BenchDoc) -> String {
    format!("{}-{}", doc.date, doc.device).chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect()
}

/// The device as both tools name it: `cpu`, `mps` or `cuda:N`.
///
/// ```
/// assert_eq!(tch_streams_cli::bench::device_label(tch::Device::Cuda(1)), "cuda:1");
/// assert_eq!(tch_streams_cli::bench::device_label(tch::Device::Cpu), "cpu");
/// ```
pub fn device_label(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The GPU's name from the driver, or the CPU model (as the peer reports it), or the backend.
fn device_name(device: Device, loaded: &LoadedLibtorch) -> String {
    match device {
        Device::Cuda(i) => loaded.cuda_device_names.get(i).cloned().unwrap_or_else(|| format!("cuda:{i}")),
        Device::Cpu => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "cpu".into()),
        Device::Mps => "Apple MPS".into(),
        other => format!("{other:?}"),
    }
}
