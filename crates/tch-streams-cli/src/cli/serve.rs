//! `tch-streams serve`: its arguments and entry point. The server itself is
//! [`tch_streams_cli::serve`].

use anyhow::{bail, Context};
use clap::ArgMatches;
use std::path::PathBuf;
use std::time::Duration;
use tch_streams::engine::MemoryBudget;
use tch_streams::models::Builtin;
use tch_streams_cli::engine_args::EngineArgs;
use tch_streams_cli::inputs::{parse_input, InputArg};
use tch_streams_cli::serve::{self, budget, listen, EngineOptions, Limits, ModelEntry, Settings, Source, METRICS_CONNECTIONS};

/// `tch-streams serve` arguments. The engine flags are [`EngineArgs`], as `run` has them, with
/// serve's own help texts, and `--batch-wait-us` requires `--batch-max` here (in `run` it may
/// come alone).
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
#[command(mut_arg("device", |a| a.help("Devices: auto (cuda:0 if a GPU is visible, else mps, else cpu), cpu, mps, cuda:N, or a list like cuda:0,cuda:1")))]
#[command(mut_arg("workers", |a| a.help("Engine worker threads per model, each with its own stream [default: the engine's]")))]
#[command(mut_arg("batch_max", |a| a.help("Dynamic batching: most samples the engine merges into one batch; 0 turns batching off [default: the engine's, calibrated at start-up]")))]
#[command(mut_arg("batch_wait_us", |a| a.requires("batch_max").help("Dynamic batching: longest a request waits for company, microseconds (needs --batch-max) [default: 200]")))]
#[command(mut_arg("cuda_graphs", |a| a.help("Capture and replay CUDA graphs (needs a build with the CUDA graph code) [default: the engine's: on for CUDA when the build has them]")))]
pub struct Args {
    /// A TorchScript file to serve; follow it with its --input specs (and optionally --name).
    /// Repeat --model to serve several models.
    #[arg(long, value_name = "FILE.pt")]
    pub model: Vec<PathBuf>,
    /// A built-in model to serve: small-mlp, large-mlp or transformer (inputs fixed: [batch,
    /// 512], [batch, 2048], [batch, 64, 256] float32). Repeatable.
    #[arg(long, value_name = "NAME", value_parser = |s: &str| s.parse::<Builtin>())]
    pub builtin: Vec<Builtin>,
    /// One input of the preceding --model, SHAPE:DTYPE with the batch first (its size is only
    /// an example: clients send any batch up to --max-batch-size), in forward's order, e.g.
    /// --input 1x128:int64 --input 1x128:int64. Dtypes: float32, float16, bfloat16, int64,
    /// int32, bool. Served as input0, input1, ...
    #[arg(long, value_name = "SHAPE:DTYPE", value_parser = parse_input)]
    pub input: Vec<InputArg>,
    /// The name clients use for the preceding --model/--builtin [default: the file stem, or the
    /// built-in's name].
    #[arg(long, value_name = "NAME")]
    pub name: Vec<String>,
    /// Address to listen on (all three ports). 0.0.0.0 listens on every interface.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// HTTP/REST port (0: any free port; the chosen ports are printed).
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// gRPC port (0: any free port).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,
    /// Prometheus /metrics port (0: any free port).
    #[arg(long, default_value_t = 8002)]
    pub metrics_port: u16,
    // The engine's flags, shared with `run` (--device, --workers, --batch-max, --batch-wait-us,
    // --buckets, --cuda-graphs, --no-cuda-graphs, --per-worker-replicas); their help here is
    // serve's own (see `Args`), and serve refuses --batch-wait-us without --batch-max.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Most samples one request may carry (the model configuration's max_batch_size; larger
    /// requests are refused with 400).
    #[arg(long, default_value_t = 1024)]
    pub max_batch_size: usize,
    /// Longest a request waits for its answer, milliseconds; then 504 / DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Most inference requests served at once, over all models and protocols; more are refused
    /// at once with 503 / UNAVAILABLE.
    #[arg(long, default_value_t = 1024)]
    pub max_inflight: usize,
    /// Largest request body (HTTP) or message (gRPC), bytes; larger ones get 413 / OUT_OF_RANGE.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Bytes that all requests being read and decoded may hold at once (their bodies and the
    /// tensors made from them); beyond it requests get 503 / RESOURCE_EXHAUSTED at once
    /// [default: a quarter of the host's memory, or of the cgroup's limit when lower].
    #[arg(long)]
    pub max_buffered_bytes: Option<usize>,
    /// Longest a request body (HTTP) or message (gRPC) may take to arrive after its headers,
    /// seconds; then 408 / DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 60)]
    pub body_timeout_s: u64,
    /// A connection with no request in progress for this long is closed, seconds (this also
    /// bounds how long a client may take to send a request's headers).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// Most connections open at once over the HTTP and gRPC ports; at the cap the connection
    /// idle the longest is closed to make room, and with none idle newcomers wait in the listen
    /// queue.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (gRPC requests) one connection may open.
    #[arg(long, default_value_t = 128)]
    pub max_streams: u32,
    /// On SIGTERM/Ctrl-C, longest the whole drain may take (answering the requests already
    /// received, then the engines' queues), seconds; then exit 1. A second signal exits at once.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Threads of the async runtime that runs the protocols [default: one per core].
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Threads that run the gRPC connections whole: each connection, with every request
    /// multiplexed on it, stays on one of them (the one with the fewest connections when it
    /// opened), so its requests do not cross threads inside the server; one connection can use
    /// one core at most. On a 16-core H100 host, 8 such threads served 1.15–1.4× the shared
    /// runtime over 4–16 connections and about as much over one. 0: gRPC connections share the
    /// async runtime of --io-threads, their requests on any of its threads [default: half the
    /// cores, at least 1]
    #[arg(long)]
    pub grpc_threads: Option<usize>,
}

const AFTER_HELP: &str = "\
Endpoints (Open Inference Protocol / KServe v2):
  HTTP  GET  /v2/health/live, /v2/health/ready, /v2 (server metadata)
        GET  /v2/models/NAME, /v2/models/NAME/ready, /v2/models/NAME/config
        POST /v2/models/NAME/infer   JSON tensors, or Triton's binary tensor extension
                                     (binary_data, Inference-Header-Content-Length)
        (also under /v2/models/NAME/versions/1/...)
  gRPC  inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata,
        ModelMetadata, ModelInfer (raw_input_contents / raw_output_contents), ModelConfig
  METRICS  GET /metrics (Prometheus text) on --metrics-port, also on the HTTP port

Tensors: inputs input0, input1, ... (forward's order); outputs output0, output1, ... or a dict's
keys. Datatypes BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64. Shapes are
[-1, sample dims...]: any batch from 1 to --max-batch-size.

Errors: {\"error\": \"...\"} with 400 (malformed JSON, wrong datatype/shape/byte count), 404 (unknown
model), 413 (body too large), 500 (model failure), 503 (--max-inflight reached), 504 (timeout);
gRPC: INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED.

SIGTERM or Ctrl-C: stop listening, answer every request already received, drain the engines,
exit 0 (1 if --drain-timeout-s ran out); a second signal exits at once (1).

Examples:
  tch-streams serve --builtin small-mlp
  tch-streams serve --model bert.pt --input 1x128:int64 --input 1x128:int64 --name bert --batch-max 32
  tch-streams serve --model a.pt --input 1x16 --model b.pt --input 1x8:int64 --http-port 0";

/// Bounds of the numeric flags.
const MAX_INFLIGHT: usize = 1 << 20;
const MAX_TIMEOUT_MS: u64 = 86_400_000;
const MAX_DRAIN_S: u64 = 86_400;
const MAX_IO_THREADS: usize = 1024;
const MAX_CONNECTIONS: usize = 1 << 20;
const MAX_STREAMS: u32 = 1 << 16;

impl Args {
    /// Every numeric flag in range, with an error that names the flag and the accepted range.
    pub fn check(&self) -> anyhow::Result<()> {
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                bail!("--{name} {v} is out of range: expected {lo}..={hi}");
            }
            Ok(())
        };
        self.engine.check()?;
        within("max-batch-size", self.max_batch_size as u64, 1, i32::MAX as u64)?;
        within("request-timeout-ms", self.request_timeout_ms, 1, MAX_TIMEOUT_MS)?;
        within("max-inflight", self.max_inflight as u64, 1, MAX_INFLIGHT as u64)?;
        within("max-request-bytes", self.max_request_bytes as u64, 1024, 1 << 34)?;
        within("drain-timeout-s", self.drain_timeout_s, 1, MAX_DRAIN_S)?;
        within("body-timeout-s", self.body_timeout_s, 1, MAX_DRAIN_S)?;
        within("idle-timeout-s", self.idle_timeout_s, 1, MAX_DRAIN_S)?;
        within("max-connections", self.max_connections as u64, 1, MAX_CONNECTIONS as u64)?;
        within("max-streams", self.max_streams as u64, 1, MAX_STREAMS as u64)?;
        if let Some(b) = self.max_buffered_bytes {
            within("max-buffered-bytes", b as u64, 1 << 20, 1 << 50)?;
            if b < self.max_request_bytes {
                bail!("--max-buffered-bytes {b} is smaller than --max-request-bytes {}: a largest request could never be read", self.max_request_bytes);
            }
        }
        if let Some(n) = self.io_threads {
            within("io-threads", n as u64, 1, MAX_IO_THREADS as u64)?;
        }
        if let Some(n) = self.grpc_threads {
            within("grpc-threads", n as u64, 0, MAX_IO_THREADS as u64)?;
        }
        Ok(())
    }
}

/// The models of the command line, in order: each `--input` and `--name` belongs to the
/// `--model`/`--builtin` before it. `matches` are those of the `serve` subcommand (they carry
/// the positions).
pub fn entries(args: &Args, matches: &ArgMatches) -> anyhow::Result<Vec<ModelEntry>> {
    #[derive(Clone, Copy)]
    enum Item {
        Model(usize),
        Builtin(usize),
        Input(usize),
        Name(usize),
    }
    let mut items: Vec<(usize, Item)> = Vec::new();
    let mut collect = |id: &str, make: fn(usize) -> Item| {
        if let Some(ix) = matches.indices_of(id) {
            items.extend(ix.enumerate().map(|(i, at)| (at, make(i))));
        }
    };
    collect("model", Item::Model);
    collect("builtin", Item::Builtin);
    collect("input", Item::Input);
    collect("name", Item::Name);
    items.sort_by_key(|(at, _)| *at);
    let mut out: Vec<ModelEntry> = Vec::new();
    for (_, item) in items {
        match item {
            Item::Model(i) => out.push(ModelEntry { source: Source::TorchScript(args.model[i].clone()), name: None, inputs: vec![] }),
            Item::Builtin(i) => out.push(ModelEntry { source: Source::Builtin(args.builtin[i]), name: None, inputs: vec![] }),
            Item::Input(i) => match out.last_mut() {
                Some(e) => e.inputs.push(args.input[i].clone()),
                None => bail!("--input {} comes before any --model: put each model's --input after its --model", tch_streams_cli::inputs::format_input(&args.input[i])),
            },
            Item::Name(i) => match out.last_mut() {
                Some(e) if e.name.is_none() => e.name = Some(args.name[i].clone()),
                Some(e) => bail!("--name {} follows --name {} for the same model", args.name[i], e.name.clone().unwrap_or_default()),
                None => bail!("--name {} comes before any --model/--builtin: put it after the model it names", args.name[i]),
            },
        }
    }
    if out.is_empty() {
        bail!("nothing to serve: give --model FILE.pt (with its --input specs) or --builtin NAME");
    }
    let mut names: Vec<String> = out.iter().map(ModelEntry::served_name).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two models are called {:?}: give one of them another --name", w[0]);
    }
    Ok(out)
}

/// The engine flags each model's engine gets: `--gpu-memory` (default: the engine's default
/// share of the free memory), resolved once on the first GPU before any model loads and divided
/// evenly between the `models`, so that they share one budget instead of each taking a share of
/// what the models before it left.
fn shared_memory(engine: &EngineArgs, models: usize) -> EngineArgs {
    let mut engine = engine.clone();
    let Some(&gpu) = engine.devices().iter().find(|d| **d != tch::Device::Cpu) else { return engine };
    let total = match engine.gpu_memory.unwrap_or_default() {
        MemoryBudget::Bytes(n) => n,
        MemoryBudget::FractionOfFree(share) => match tch_streams::stream::device_capacity(gpu) {
            Ok(c) => (c.free as f64 * share) as u64,
            Err(_) => return engine, // the engine's own default then applies per model
        },
    };
    let each = (total / models.max(1) as u64).max(1);
    if models > 1 {
        eprintln!("GPU memory: {} MiB for each of {models} models ({} MiB in all)", each >> 20, total >> 20);
    }
    engine.gpu_memory = Some(MemoryBudget::Bytes(each));
    engine
}

/// Runs the server until SIGTERM or Ctrl-C; returns the exit code (0 after a full drain).
pub fn run(args: Args, matches: &ArgMatches) -> anyhow::Result<i32> {
    args.check()?;
    let entries = entries(&args, matches)?;
    if let Some(files) = listen::raise_open_files() {
        // Listeners, the engine's own files, logs: keep some descriptors for them.
        if (args.max_connections as u64).saturating_add(METRICS_CONNECTIONS as u64 + 64) > files {
            bail!("--max-connections {} does not fit the open-file limit of {files} (ulimit -n): lower it, or raise the limit", args.max_connections);
        }
    }
    tch_streams::runtime::verify(&Default::default()).context("preflight failed")?;
    let limits = Limits {
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_inflight: args.max_inflight,
        max_request_bytes: args.max_request_bytes,
        body_timeout: Duration::from_secs(args.body_timeout_s),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        max_connections: args.max_connections,
        max_streams: args.max_streams,
        max_buffered_bytes: args.max_buffered_bytes.unwrap_or_else(|| budget::default_limit(args.max_request_bytes)),
    };
    let settings = Settings {
        // The in-flight cap: a request the server admitted always finds room in its engine.
        engine: EngineOptions { engine: shared_memory(&args.engine, entries.len()), queue_capacity: args.max_inflight.min(1 << 24) },
        max_batch_size: args.max_batch_size,
        limits,
        host: args.host.clone(),
        ports: [args.http_port, args.grpc_port, args.metrics_port],
        drain: Duration::from_secs(args.drain_timeout_s),
        io_threads: args.io_threads,
        grpc_threads: args.grpc_threads.unwrap_or_else(tch_streams_cli::conn_threads::default_count),
    };
    serve::serve(&entries, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args as _, FromArgMatches};

    fn parse(argv: &[&str]) -> anyhow::Result<Vec<ModelEntry>> {
        let cmd = Args::augment_args(clap::Command::new("serve").no_binary_name(true));
        let m = cmd.try_get_matches_from(argv)?;
        let args = Args::from_arg_matches(&m)?;
        entries(&args, &m)
    }

    #[test]
    fn inputs_and_names_belong_to_the_model_before_them() {
        let e = parse(&["--model", "a.pt", "--input", "1x4", "--name", "x", "--builtin", "small-mlp", "--model", "dir/b.pt", "--input", "1x2:int64", "--input", "1x3"]).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].served_name(), e[0].inputs.len()), ("x".to_string(), 1));
        assert_eq!(e[1].source, Source::Builtin(Builtin::SmallMlp));
        assert_eq!((e[1].served_name(), e[1].inputs.len()), ("small-mlp".to_string(), 0));
        assert_eq!(e[2].served_name(), "b");
        assert_eq!(e[2].inputs.iter().map(|a| (a.shape.clone(), a.kind)).collect::<Vec<_>>(), vec![(vec![1, 2], tch::Kind::Int64), (vec![1, 3], tch::Kind::Float)]);
    }

    #[test]
    fn misplaced_or_duplicate_entries_are_refused() {
        let msg = |argv: &[&str]| parse(argv).unwrap_err().to_string();
        assert!(msg(&["--name", "x", "--builtin", "small-mlp"]).contains("--name x comes before any --model/--builtin"));
        assert!(msg(&["--builtin", "small-mlp", "--name", "a", "--name", "b"]).contains("--name b follows --name a"));
        assert!(msg(&["--model", "m.pt", "--input", "1x2", "--model", "other/m.pt", "--input", "1x2"]).contains("two models are called \"m\""));
        assert!(msg(&[]).contains("nothing to serve"));
        // --batch-wait-us needs --batch-max (clap says so).
        assert!(parse(&["--builtin", "small-mlp", "--batch-wait-us", "10"]).is_err());
    }
}
