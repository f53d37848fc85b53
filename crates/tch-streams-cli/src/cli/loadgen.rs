//! `tch-streams loadgen`: its arguments and entry point. The load generator itself is
//! [`crate::loadgen`].

use crate::loadgen::client::{self, Input, Protocol};
use crate::loadgen::{self, Plan};
use anyhow::{bail, Context};
use std::time::Duration;

/// `tch-streams loadgen` arguments.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// The server: host:port or http://host:port (the HTTP port for --protocol http, the gRPC
    /// port for grpc).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub url: String,
    /// http: HTTP/1.1 with the binary tensor extension (Inference-Header-Content-Length), one
    /// connection per request in flight; grpc: ModelInfer with raw_input_contents over HTTP/2.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// The model's name on the server.
    #[arg(long)]
    pub model: String,
    /// An input, NAME=SHAPE:DATATYPE with the batch first, e.g. input0=1x512:FP32 (KServe
    /// datatypes). Repeat for each input. [default: read from the server's model metadata, the
    /// batch dimension set to --batch-size]
    #[arg(long, value_name = "NAME=SHAPE:DATATYPE", value_parser = parse_input)]
    pub input: Vec<Input>,
    /// Samples per request when the inputs come from the model metadata.
    #[arg(long, default_value_t = 1)]
    pub batch_size: i64,
    /// Requests in flight, as a list: one run per value, e.g. 16,64.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub concurrency: Vec<usize>,
    /// Counted seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds before each run whose requests are not counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// gRPC only: HTTP/2 connections the requests in flight share (round robin); at most the
    /// concurrency.
    #[arg(long, default_value_t = 1)]
    pub grpc_connections: usize,
    /// Threads of the client's async runtime [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// gRPC only: threads that run the HTTP/2 connections, each connection with all its
    /// requests on one of them (round robin; never more threads than connections); 0: on the
    /// async runtime of --threads, its requests on any of its threads [default: half the cores,
    /// at least 1]
    #[arg(long)]
    pub grpc_threads: Option<usize>,
    /// Print the reports as one JSON document on stdout (the summary lines go to stderr).
    #[arg(long)]
    pub json: bool,
}

const AFTER_HELP: &str = "\
Closed loop: exactly --concurrency requests are in flight; each task sends its request, reads the \
whole answer and sends again. The request is encoded once and resent from the same bytes; \
latencies go to a fixed-size histogram per task, so memory does not grow with the number of \
requests or the duration. Before the runs one request is sent: a wrong URL, model or input fails \
there with the server's message (exit 1). Exit 1 also when any counted request failed.

Output per concurrency (like perf_analyzer's summary): infer/s, samples/s, latency p50/p90/p99 and \
mean, requests and errors. --json prints {\"url\", \"model\", \"inputs\", \"runs\": [{concurrency, \
protocol, connections, seconds, requests, errors, first_error, requests_per_s, samples_per_s, \
latency_ms_mean, latency_ms_p50, latency_ms_p90, latency_ms_p99}]}.

Example: tch-streams loadgen --url 127.0.0.1:8001 --protocol grpc --model small-mlp --concurrency 16,64 --duration 10";

fn parse_input(s: &str) -> Result<Input, String> {
    let (name, rest) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=SHAPE:DATATYPE, e.g. input0=1x512:FP32"))?;
    let (shape, datatype) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected NAME=SHAPE:DATATYPE"))?;
    let shape = shape.split('x').map(|d| d.trim().parse::<i64>().ok().filter(|&d| d >= 0)).collect::<Option<Vec<_>>>().ok_or_else(|| format!("{s:?}: the shape is dimensions joined by x, e.g. 1x512"))?;
    let datatype = datatype.trim().to_ascii_uppercase();
    if client::element_size(&datatype).is_none() {
        return Err(format!("{s:?}: datatype {datatype} is not one of BOOL, UINT8, INT8, INT16, UINT16, FP16, BF16, INT32, UINT32, FP32, INT64, UINT64, FP64"));
    }
    Ok(Input { name: name.into(), datatype, shape })
}

/// Runs `tch-streams loadgen`; returns the exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency: every value must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) || !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--duration must be positive and --warmup not negative");
    }
    if args.batch_size < 1 {
        bail!("--batch-size must be at least 1");
    }
    let authority = client::authority(&args.url)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("tch-streams-loadgen");
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("cannot start the async runtime")?;
    rt.block_on(async {
        let inputs = if args.input.is_empty() {
            client::metadata(args.protocol, &authority, &args.model, args.batch_size).await.with_context(|| format!("cannot read the inputs of {:?} from {}", args.model, args.url))?
        } else {
            args.input.clone()
        };
        let shown: Vec<String> = inputs.iter().map(|i| format!("{} {:?} {}", i.name, i.shape, i.datatype)).collect();
        eprintln!("loadgen: {} over {:?} at {authority}, inputs {}", args.model, args.protocol, shown.join(", "));
        let plan = Plan {
            authority: authority.clone(),
            protocol: args.protocol,
            model: args.model.clone(),
            inputs: inputs.clone(),
            concurrency: args.concurrency.clone(),
            duration: Duration::from_secs_f64(args.duration),
            warmup: Duration::from_secs_f64(args.warmup),
            grpc_connections: args.grpc_connections,
            grpc_threads: args.grpc_threads.unwrap_or_else(tch_streams_cli::conn_threads::default_count),
        };
        let json = args.json;
        let reports = loadgen::run(&plan, |r| {
            if json {
                eprintln!("{}", r.line());
            } else {
                println!("{}", r.line());
            }
        })
        .await?;
        if json {
            let doc = serde_json::json!({ "url": args.url, "model": args.model, "inputs": inputs, "runs": reports });
            println!("{doc}");
        }
        Ok(if reports.iter().any(|r| r.errors > 0) { 1 } else { 0 })
    })
}
