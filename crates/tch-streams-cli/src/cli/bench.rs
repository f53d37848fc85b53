//! `tch-streams bench`: scaling sweeps of every way to run a model from many threads, with the
//! Python PyTorch peer side by side; JSON, CSV and a PNG plot.

use super::run::Shape;
use anyhow::Context;
use std::path::PathBuf;
use tch_streams_cli::bench::{self, BenchConfig, Mode, PeerRunner, Workload};
use tch_streams::models::Builtin;
use tch_streams_cli::inputs::{parse_input, parse_int_range, InputArg, IntRange};
use tch_streams_cli::engine_args::EngineArgs;
use tch_streams_cli::parse::parse_shape;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Modes, each run for every thread count T:
  tch-default    T threads call forward in a loop on the default stream (the Rust status quo)
  tch-streams    as tch-default, each thread bound to its own pool stream (skipped on CPU)
  engine         the Engine on its defaults (workers, batching, buckets chosen by the engine),
                 CUDA graphs off; T clients with 8 requests in flight each
  engine-graphs  the Engine on its defaults, CUDA graphs on (what the defaults do on CUDA)
  engine-spread  the Engine on its defaults over every device of --device (needs two or more,
                 e.g. cuda:0,cuda:1; client i's input on device i mod D); the report gives
                 engine-spread/engine
  limit          one thread, one call on the T inputs concatenated (T x batch samples per call),
                 inputs and answer on the device
  limit-host     as limit, the input in pinned host memory (plain on CPU): copied in
                 asynchronously on a stream, forward, copied out to pinned host memory,
                 synchronised; the limit of serving with host I/O
Workloads (the Python peer's inputs): small-mlp [1,512], large-mlp [64,2048], transformer [1,64,256].

Protocol (the peer's): threads and inputs are made on the device before timing; per repetition
a warm-up, then a timed phase; every thread synchronises its stream and the elapsed time
includes that. Reported: samples/s, median with min-max over the repetitions, and the
efficiency throughput(T) / (T x throughput(1)) per mode; for engine points on CUDA, the device
memory reserved after the engine's build and at its peak (JSON \"memory\").

--host-io: the serving modes' inputs are made on the host and their answers end there (both
tools): tch-default/tch-streams copy in, run and copy out per call; the engine gets host
tensors and delivers on the host (Output::Cpu). The ours/limit ratios then use limit-host.
Recorded as \"host_io\" in the JSON config. On CPU it changes nothing.

Writes <out>/<date>-<device>.json (schema tch-streams-bench/1; the peer's document under
\"peer\"), .csv (tool,workload,mode,threads,batch,median,min,max,efficiency) and .png
(throughput vs threads per workload; the peer's lines are py-*, limits dashed).

Engine flags (--workers, --batch-max, --batch-wait-us, --buckets, --per-worker-replicas, as
`run` and `serve` take them) apply to every engine mode, on top of the engine's defaults, and
are recorded as \"engine_flags\" in the JSON config; without them the engine modes run on the
defaults. The modes decide CUDA graphs, so --cuda-graphs/--no-cuda-graphs are refused.

--tune adds the engine on hand-set configurations (workers 1,2,4,8,16 x batching off/on x
graphs off/on) at the --tune-threads counts, and reports the best beside the defaults.

Examples:
  tch-streams bench --quick --device cpu --with-python
  tch-streams bench --device cuda:0 --with-python --python /opt/venv/bin/python
  tch-streams bench --workloads small-mlp --modes tch-default,engine,limit --threads 1,4,16 --reps 5
  tch-streams bench --model net.pt --shape 8x3x224x224 --threads 1,2,4
  tch-streams bench --model bert.pt --input 1x128:int64 --input 1x128:int64 --int-range 0..30522
  tch-streams bench --device cuda:0 --model resnet18.pt --shape 1x3x224x224 --host-io --with-python
  tch-streams bench --device cuda:0,cuda:1 --workloads large-mlp --modes engine,engine-spread
  tch-streams bench --device cuda:0 --model resnet18.pt --shape 1x3x224x224 --host-io --batch-max 0 --workers 8")]
#[command(mut_arg("device", |a| a.help("Device: auto, cpu, mps or cuda:N (auto: cuda:0 if a GPU is visible, else mps, else cpu). A list (cuda:0,cuda:1) adds the devices engine-spread spreads over; every other mode runs on the first")))]
pub struct Args {
    /// Built-in workloads, comma-separated: small-mlp, large-mlp, transformer [default: all].
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.trim().parse::<Builtin>(), conflicts_with = "model")]
    workloads: Vec<Builtin>,
    /// A TorchScript file to benchmark instead of the built-ins (needs --input or --shape).
    #[arg(long, value_name = "FILE.pt")]
    model: Option<PathBuf>,
    /// Input shape of one call for --model, batch first (e.g. 8x3x224x224): one float32 input.
    #[arg(long, value_parser = |s: &str| parse_shape(s).map(Shape), requires = "model", conflicts_with = "input")]
    shape: Option<Shape>,
    /// One input of --model per call, SHAPE:DTYPE with the batch first, repeated in the order of
    /// forward's arguments (e.g. --input 1x128:int64 --input 1x128:int64). Dtypes: float32,
    /// float16, bfloat16, int64, int32, bool. The Python peer gets the same specs.
    #[arg(long, value_name = "SHAPE:DTYPE", value_parser = parse_input, requires = "model")]
    input: Vec<InputArg>,
    /// Integer inputs are filled uniformly from LO..HI (HI excluded).
    #[arg(long, value_name = "LO..HI", default_value = "0..100", value_parser = parse_int_range)]
    int_range: IntRange,
    /// Real data for one input of --model: a .npy file (samples along dim 0), repeated in the
    /// order of forward's arguments; every call sends the whole array. The Python peer reads
    /// the same files.
    #[arg(long, value_name = "FILE.npy", requires = "model", conflicts_with_all = ["input", "shape"])]
    input_file: Vec<PathBuf>,
    /// Modes, comma-separated: tch-default, tch-streams, engine, engine-graphs, engine-spread,
    /// limit, limit-host [default: all; those the device or build cannot run are listed as
    /// skipped].
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<Mode>())]
    modes: Vec<Mode>,
    /// Thread counts, comma-separated [default: 1,4,16,64; --quick: 1,2].
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions per point [default: 3].
    #[arg(long)]
    reps: Option<usize>,
    /// Warm-up seconds per repetition [default: 1.0; --quick: 0.1].
    #[arg(long, value_name = "SECONDS")]
    warmup_s: Option<f64>,
    /// Timed seconds per repetition [default: 2.0; --quick: 0.3].
    #[arg(long, value_name = "SECONDS")]
    duration_s: Option<f64>,
    /// Short smoke sweep (threads 1,2; reps 3; warm-up 0.1 s; timed 0.3 s); explicit flags
    /// override its values.
    #[arg(long)]
    quick: bool,
    // The engine flags, as `run` and `serve` have them (--device's help is bench's own, see
    // `Args`). Without any beyond --device the engine modes run on the engine's defaults; given,
    // they apply to every engine mode (not to --tune's grid) and are recorded in the JSON.
    #[command(flatten)]
    engine: EngineArgs,
    /// Directory for the JSON, CSV and PNG (created if needed).
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// Also run the Python peer (crates/tch-streams-cli/peer/python_peer.py) with the same sweep, after ours, and show
    /// both. Our results are written first; when the peer cannot run (no Python that imports
    /// torch), fails or runs out of time, they stay written and the exit code is 1.
    #[arg(long)]
    with_python: bool,
    /// Longest the Python peer may run, seconds; past it the peer (its whole process group) is
    /// stopped [default: 3 x our sweep's time + 120 s].
    #[arg(long, value_name = "SECONDS", requires = "with_python")]
    peer_timeout_s: Option<f64>,
    /// The Python interpreter for --with-python.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    python: PathBuf,
    /// Requests each engine client keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Also sweep the engine over hand-set configurations (workers 1, 2, 4, 8, 16 x batching
    /// off/on x CUDA graphs off/on where available) and report the best point per workload and
    /// thread count beside the defaults.
    #[arg(long)]
    tune: bool,
    /// Longest an engine point may run past its own time (reps x (warm-up + timed)) with
    /// requests unanswered, seconds; the point is then reported as stuck, with the reason, the
    /// sweep goes on, the other results are written and the exit code is 1 [default: 60].
    #[arg(long, value_name = "SECONDS")]
    point_grace_s: Option<f64>,
    /// Host I/O: the serving modes (ours and the peer's) take their inputs from host memory and
    /// deliver their answers to it, copies included in the time; ours/limit ratios use
    /// limit-host. Recorded in the JSON config as "host_io".
    #[arg(long)]
    host_io: bool,
    /// Thread counts of the --tune sweep, comma-separated [default: 16].
    #[arg(long, value_delimiter = ',', requires = "tune")]
    tune_threads: Vec<usize>,
}

impl Args {
    fn config(&self) -> anyhow::Result<BenchConfig> {
        let device = self.engine.devices.device.0.first().copied().unwrap_or(tch::Device::Cpu);
        let mut cfg = if self.quick { BenchConfig::quick(device) } else { BenchConfig::full(device) };
        if !self.engine.devices.device.0.is_empty() {
            cfg.spread_devices = self.engine.devices.device.0.clone();
        }
        if let Some(path) = &self.model {
            let inputs = match &self.shape {
                Some(shape) => vec![InputArg { shape: shape.0.clone(), kind: tch::Kind::Float }],
                None if !self.input_file.is_empty() => self
                    .input_file
                    .iter()
                    .map(|f| tch_streams_cli::inputs::read_npy(f).map(|t| tch_streams_cli::inputs::describe(&t)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?,
                None if !self.input.is_empty() => self.input.clone(),
                None => anyhow::bail!("--model needs its inputs: --input SHAPE:DTYPE per argument of forward, or --shape for one float32 input"),
            };
            let rows = inputs[0].shape[0];
            if let Some((i, _)) = inputs.iter().enumerate().find(|(_, s)| s.shape[0] != rows) {
                anyhow::bail!("--input {i} has another batch size than input 0 ({rows}): every input carries the same samples");
            }
            cfg.workloads = vec![Workload::TorchScript { path: path.clone(), inputs, int_range: self.int_range, data: self.input_file.clone() }];
        } else if !self.workloads.is_empty() {
            cfg.workloads = self.workloads.iter().copied().map(Workload::Builtin).collect();
        }
        if !self.modes.is_empty() {
            cfg.modes = self.modes.clone();
        }
        if !self.threads.is_empty() {
            cfg.threads = self.threads.clone();
        }
        cfg.reps = self.reps.unwrap_or(cfg.reps);
        cfg.warmup_s = self.warmup_s.unwrap_or(cfg.warmup_s);
        cfg.duration_s = self.duration_s.unwrap_or(cfg.duration_s);
        cfg.window = self.window;
        cfg.point_grace_s = self.point_grace_s.unwrap_or(cfg.point_grace_s);
        cfg.host_io = self.host_io;
        self.engine.check()?;
        if self.engine.cuda_graphs || self.engine.no_cuda_graphs {
            anyhow::bail!("bench decides CUDA graphs per mode (engine: off, engine-graphs: on); leave out --cuda-graphs/--no-cuda-graphs and pick the modes with --modes");
        }
        cfg.engine = self.engine.given().is_some().then(|| self.engine.clone());
        if self.tune {
            cfg.tune_threads = if self.tune_threads.is_empty() { vec![16] } else { self.tune_threads.clone() };
        }
        cfg.progress = true;
        Ok(cfg)
    }
}

/// Longest --peer-timeout-s: one day.
const MAX_PEER_TIMEOUT_S: f64 = 86_400.0;

pub fn run(a: Args) -> anyhow::Result<i32> {
    if let Some(t) = a.peer_timeout_s {
        if !(t.is_finite() && t > 0.0 && t <= MAX_PEER_TIMEOUT_S) {
            anyhow::bail!("--peer-timeout-s {t} is out of range: expected seconds in (0, {MAX_PEER_TIMEOUT_S}] (one day)");
        }
    }
    let cfg = a.config()?;
    cfg.validate()?;
    // The output directory must take files before the sweep spends its time, not after.
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}: cannot create the directory", a.out.display()))?;
    let probe = a.out.join(".tch-streams-write-check");
    std::fs::write(&probe, b"").with_context(|| format!("--out {}: cannot write there", a.out.display()))?;
    let _ = std::fs::remove_file(&probe);
    tch_streams::runtime::verify(&Default::default()).context("preflight failed")?;
    let names: Vec<String> = cfg.workloads.iter().map(Workload::name).collect();
    let modes: Vec<&str> = cfg.modes.iter().map(|m| m.name()).collect();
    println!(
        "bench on {}: workloads {}; modes {}; threads {:?}; {} reps, warm-up {} s, timed {} s{}",
        cfg.spread_devices.iter().map(|&d| bench::device_label(d)).collect::<Vec<_>>().join(","),
        names.join(","),
        modes.join(","),
        cfg.threads,
        cfg.reps,
        cfg.warmup_s,
        cfg.duration_s,
        if cfg.host_io { "; host I/O" } else { "" }
    );
    let sweep_started = std::time::Instant::now();
    let mut report = bench::run(&cfg)?;
    let sweep = sweep_started.elapsed();
    if report.ours.results.is_empty() {
        for s in &report.ours.skipped {
            eprintln!("skipped {} {}: {}", s.workload, s.mode, s.reason);
        }
        anyhow::bail!("nothing was measured: every point was skipped (reasons above)");
    }
    // Ours are written before the peer runs: a peer that fails, hangs or is stopped loses
    // nothing we measured.
    let mut files = bench::write_outputs(&report, &a.out)?;
    let mut code = 0;
    for s in report.ours.skipped.iter().filter(|s| s.stuck) {
        eprintln!("error: {} {} {}", s.workload, s.mode, s.reason);
        code = 1;
    }
    if a.with_python {
        let timeout = a.peer_timeout_s.map_or(sweep * 3 + std::time::Duration::from_secs(120), std::time::Duration::from_secs_f64);
        match peer(&a, &cfg, &report.ours, timeout) {
            Ok(doc) => {
                report.attach_peer(doc);
                files = bench::write_outputs(&report, &a.out)?;
            }
            Err(why) => {
                eprintln!("error: the Python peer: {why}; our results are written without it");
                code = 1;
            }
        }
    }
    println!("\n{}", report.render());
    println!("wrote {}\n      {}\n      {}", files.json.display(), files.csv.display(), files.png.display());
    Ok(code)
}

/// Runs the peer when possible; `Err` is the note to print.
fn peer(a: &Args, cfg: &BenchConfig, ours: &bench::BenchDoc, timeout: std::time::Duration) -> Result<bench::PeerDoc, String> {
    let runner = PeerRunner::new(&a.python).map_err(|e| e.to_string())?;
    runner.check_torch()?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("could not create {}: {e}", a.out.display()))?;
    let path = a.out.join(format!(".{}-peer.json", bench::file_stem(ours)));
    eprintln!("running the Python peer: {} {}", runner.python.display(), runner.script.display());
    let doc = runner.run(cfg, &path, timeout).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path); // its content is kept in our JSON, under "peer"
    Ok(doc)
}
