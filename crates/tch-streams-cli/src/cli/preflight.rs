//! `tch-streams preflight`: print the verifier's report and enforce `--require`.

use anyhow::Context;
use serde_json::json;
use tch_streams::runtime::{Capability, Policy, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Fail (exit 3) unless this capability is present: cuda-pool, mps-pool or patched.
    /// May be given several times.
    #[arg(long, value_name = "CAPABILITY", value_parser = parse_capability)]
    require: Vec<Capability>,
}

fn parse_capability(s: &str) -> Result<Capability, String> {
    s.parse()
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut report = Report::gather().context("could not inspect the loaded libtorch")?;
    let policy = args.require.iter().fold(Policy::default(), |p, &c| p.require(c));
    let outcome = report.enforce(&policy);
    let code = outcome.as_ref().map_or_else(|e| e.exit_code(), |_| 0);
    if args.json {
        let error = outcome.as_ref().err().map(|e| json!({ "kind": kind(e), "message": e.to_string() }));
        let doc = json!({
            "ok": outcome.is_ok(),
            "exit_code": code,
            "required": args.require,
            "report": report,
            "error": error,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{report}");
        match &outcome {
            Ok(()) if args.require.is_empty() => println!("result: ok"),
            Ok(()) => println!(
                "result: ok (required: {})",
                args.require.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => println!("result: FAILED (exit {code})"),
        }
    }
    if let Err(e) = &outcome {
        eprintln!("error: {e}");
    }
    Ok(code)
}

fn kind(e: &tch_streams::Error) -> &'static str {
    match e {
        tch_streams::Error::LibtorchMismatch { .. } => "libtorch-mismatch",
        tch_streams::Error::MissingCapability { .. } => "missing-capability",
        _ => "other",
    }
}
