//! What the CLI's black-box tests share: the binary under test, a watchdog around every child
//! (killed when it outlives it), and the TorchScript fixtures written by
//! `scripts/fixtures/make_models.py`. `TCH_STREAMS_BIN` and `TCH_STREAMS_FIXTURES` override the
//! binary and the fixture directory (to run the tests against an installed CLI elsewhere).
#![allow(dead_code)] // each test file uses its own part

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// The CLI binary under test.
pub fn bin() -> String {
    std::env::var("TCH_STREAMS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tch-streams").to_string())
}

/// Runs the CLI with `args` and `envs` (stdin closed, logs at error level); `None` if it outlived
/// `secs`, in which case it was killed.
pub fn try_cli<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)], secs: u64) -> Option<Output> {
    let child = Command::new(bin())
        .args(args)
        .envs(envs.iter().copied())
        .env("TCH_STREAMS_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the CLI");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => Some(out.expect("wait for the CLI")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            None
        }
    }
}

/// [`try_cli`] that fails the test when the watchdog fires.
pub fn cli_env(args: &[&str], envs: &[(&str, &str)], secs: u64) -> Output {
    try_cli(args, envs, secs).unwrap_or_else(|| panic!("watchdog: {args:?} did not finish in {secs} s"))
}

/// [`cli_env`] without extra environment.
pub fn cli(args: &[&str], secs: u64) -> Output {
    cli_env(args, &[], secs)
}

/// Standard output and error together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The fixture directory, written once per test process.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("TCH_STREAMS_FIXTURES") {
            return PathBuf::from(d);
        }
        let dir = std::env::temp_dir().join(format!("tch-streams-cli-fixtures-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/make_models.py");
        let out = Command::new("python3").arg(&script).arg(&dir).output().expect("python3 on PATH");
        assert!(out.status.success(), "fixture script failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// One fixture file's path.
pub fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}
