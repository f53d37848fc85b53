//! Command-line interface: argument definitions and dispatch to one module per subcommand.

mod bench;
mod loadgen;
mod preflight;
mod run;
mod serve;

use clap::{Parser, Subcommand};

/// Exit code of an argument that clap refuses (unknown flag, unparsable value): EX_USAGE.
pub const EXIT_USAGE: i32 = 64;

/// Every exit code of the binary, as `--help` shows them.
pub const EXIT_CODES: &str = "Exit codes: 0 success; 1 a failure (a request failed or stayed unanswered, a flag out of \
range, a model or input refused at start, the Python peer failed); 2 the loaded libtorch differs from the one this \
binary was built against (rebuild against it, or set TCH_STREAMS_ALLOW_MISMATCH=1); 3 a capability asked for with \
--require is missing; 64 an argument clap could not parse (see --help); 130/143 stopped by SIGINT/SIGTERM.";

/// Parallel inference for Rust tch on GPU streams.
#[derive(Debug, Parser)]
#[command(name = "tch-streams", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prove which libtorch this process loaded and what its stream pools can do.
    ///
    /// Compares the loaded libtorch_cpu (and libtorch_cuda) with the ones this binary was built
    /// against, by SHA-256, and probes every backend's stream pool by behaviour.
    /// Exit codes: 0 ok; 2 the loaded libtorch differs from the built one; 3 a required
    /// capability is missing; 64 an argument that does not parse; 1 any other failure.
    #[command(after_help = EXIT_CODES)]
    Preflight(preflight::Args),
    /// Serve a model with the engine from many client threads; report throughput and latency.
    ///
    /// Verifies the loaded libtorch first. Defaults run the built-in small MLP for 5 s from 16
    /// clients on the best device found.
    #[command(after_help = EXIT_CODES)]
    Run(run::Args),
    /// Sweep threads x modes x workloads, with the Python PyTorch peer side by side; write JSON,
    /// CSV and a PNG plot.
    ///
    /// Verifies the loaded libtorch first. Modes: tch-default, tch-streams, engine,
    /// engine-graphs, limit; workloads: small-mlp, large-mlp, transformer or a TorchScript file.
    /// --quick runs a short sweep sized for a CPU.
    #[command(after_help = EXIT_CODES)]
    Bench(bench::Args),
    /// Serve models over the Open Inference Protocol (KServe v2): HTTP/REST and gRPC, with
    /// Prometheus metrics; SIGTERM or Ctrl-C drains, then exits 0.
    ///
    /// Verifies the loaded libtorch first. Engine options left out take the engine's defaults.
    #[command(after_help = EXIT_CODES)]
    Serve(serve::Args),
    /// Load a KServe v2 server (ours or any) over HTTP or gRPC at one or more concurrencies;
    /// report infer/s, samples/s, latency percentiles and errors.
    ///
    /// Closed loop with exactly --concurrency requests in flight, each resending its encoded
    /// bytes: memory does not grow with the run. Needs no libtorch at run time.
    #[command(after_help = EXIT_CODES)]
    Loadgen(loadgen::Args),
}

/// The exit code of a failed command: a libtorch mismatch or a missing capability keeps its own
/// code (2, 3) wherever it arose, found by walking the error's chain of sources and downcasting
/// each to the library's typed [`tch_streams::Error`] (an engine error keeps it as its source);
/// any other failure is 1. [`EXIT_CODES`] lists them all.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain().find_map(|c| c.downcast_ref::<tch_streams::Error>()).map_or(1, tch_streams::Error::exit_code)
}

/// The error's message with its causes, `outer: inner: ...`, leaving out a cause whose text the
/// message already ends with (an error that shows its source in its own message).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

/// Runs the chosen subcommand; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Preflight(args) => preflight::run(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => {
            // The positions of --model/--input/--name say which input belongs to which model.
            let matches = <Cli as clap::CommandFactory>::command().get_matches();
            let serve = matches.subcommand_matches("serve").ok_or_else(|| anyhow::anyhow!("serve: no arguments"))?;
            serve::run(args, serve)
        }
        Command::Loadgen(args) => loadgen::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use tch_streams::engine::EngineError;
    use tch_streams::runtime::Capability;

    fn missing() -> tch_streams::Error {
        tch_streams::Error::MissingCapability { capability: Capability::CudaPool, detail: "not in this build".into() }
    }

    #[test]
    fn a_typed_error_keeps_its_exit_code_through_the_engine_and_context() {
        let e = anyhow::Error::from(EngineError::from(missing())).context("model m");
        assert_eq!(exit_code(&e), 3);
        let built = Err::<(), _>(EngineError::Build("no".into())).context("model m").unwrap_err();
        assert_eq!(exit_code(&built), 1);
        // The message names every cause once.
        let text = message(&e);
        assert!(text.starts_with("model m: cannot build the engine: required capability"), "{text}");
        assert_eq!(text.matches("not in this build").count(), 1, "{text}");
    }
}
