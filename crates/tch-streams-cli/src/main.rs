//! `tch-streams`: preflight (prove which libtorch is loaded), and the inference tools built on it.

mod cli;
mod loadgen;


fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TCH_STREAMS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // No colour codes in logs that go to a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Argument errors exit 64 (EX_USAGE), apart from 2, which is a libtorch mismatch's.
    use clap::Parser;
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { cli::EXIT_USAGE } else { 0 });
        }
    };
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::message(&e));
            cli::exit_code(&e)
        }
    };
    std::process::exit(code);
}
