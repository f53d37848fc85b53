//! The Python peer (`crates/tch-streams-cli/peer/python_peer.py`): finding it, checking that the chosen Python has
//! torch, running it with the same sweep as ours, and reading its `tch-streams-bench/1` JSON.

use super::config::{BenchConfig, Workload};
use super::error::BenchError;
use super::report::PeerDoc;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The process group of the peer now running (0: none): a SIGTERM or SIGINT to us ends it too.
static PEER_GROUP: AtomicI32 = AtomicI32::new(0);

/// Sends `signal` (e.g. "KILL") to every process of group `pgid`. Through kill(1): the peer and
/// whatever it started (torch's worker processes) share the group.
fn signal_group(pgid: i32, signal: &str) {
    if pgid > 0 {
        let _ = Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pgid}")]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Once per process: a thread that, on SIGTERM or SIGINT, ends the running peer's process group,
/// then exits 143 or 130 as the default action would have.
fn forward_signals_to_the_peer() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() else {
            tracing::warn!("could not watch for SIGTERM/SIGINT: a signal would leave the Python peer running");
            return;
        };
        let registered = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        });
        let Ok((mut term, mut int)) = registered else {
            tracing::warn!("could not watch for SIGTERM/SIGINT: a signal would leave the Python peer running");
            return;
        };
        let _ = std::thread::Builder::new().name("peer-signals".into()).spawn(move || {
            let code = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => 143,
                    _ = int.recv() => 130,
                }
            });
            signal_group(PEER_GROUP.load(Ordering::SeqCst), "KILL");
            eprintln!("signal received: stopped the Python peer");
            std::process::exit(code);
        });
    });
}

/// Where the peer script lives relative to the project root.
pub const PEER_SCRIPT: &str = "peer/python_peer.py";

/// Where the peer lies relative to the project root.
const PEER_FROM_ROOT: &str = "crates/tch-streams-cli/peer/python_peer.py";

/// Runs the Python peer with a given interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRunner {
    /// The Python interpreter (a name on `PATH` or a path). Default `python3`.
    pub python: PathBuf,
    /// The peer script.
    pub script: PathBuf,
}

impl PeerRunner {
    /// A runner for `python` and the peer script found by [`find_script`].
    pub fn new(python: impl Into<PathBuf>) -> Result<PeerRunner, BenchError> {
        let script = find_script().ok_or_else(|| {
            BenchError::Peer(format!("{PEER_SCRIPT} not found here, in a directory above, or in the source tree; run from the project root or set TCH_STREAMS_PEER"))
        })?;
        Ok(PeerRunner { python: python.into(), script })
    }

    /// Whether the interpreter runs and imports torch; `Err` says why not, in one line.
    pub fn check_torch(&self) -> Result<(), String> {
        let out = Command::new(&self.python)
            .args(["-c", "import torch"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run {}: {e}", self.python.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        Err(format!("{} cannot import torch ({last})", self.python.display()))
    }

    /// The peer's arguments for the sweep `cfg`, writing its JSON to `out`: the built-in
    /// workloads by name, or a TorchScript workload as `--model FILE --input SHAPE:DTYPE ...
    /// --int-range LO..HI` (the same specs, so both sides feed the model alike).
    pub fn args(&self, cfg: &BenchConfig, out: &Path) -> Result<Vec<String>, BenchError> {
        let join = |v: Vec<String>| v.join(",");
        let mut args = vec![self.script.display().to_string(), "--device".into(), super::device_label(cfg.device)];
        let builtins: Vec<String> = cfg
            .workloads
            .iter()
            .filter_map(|w| match w {
                Workload::Builtin(b) => Some(b.name().to_string()),
                Workload::TorchScript { .. } => None,
            })
            .collect();
        let scripts: Vec<&Workload> = cfg.workloads.iter().filter(|w| matches!(w, Workload::TorchScript { .. })).collect();
        match (builtins.is_empty(), scripts.as_slice()) {
            (false, []) => args.extend(["--workloads".into(), join(builtins)]),
            (true, [Workload::TorchScript { path, inputs, int_range, data }]) => {
                args.extend(["--model".into(), path.display().to_string()]);
                if data.is_empty() {
                    for i in inputs {
                        args.extend(["--input".into(), crate::inputs::format_input(i)]);
                    }
                } else {
                    for f in data {
                        args.extend(["--input-file".into(), f.display().to_string()]);
                    }
                }
                args.extend(["--int-range".into(), format!("{}..{}", int_range.lo, int_range.hi)]);
            }
            _ => return Err(BenchError::Peer("the peer runs either built-in workloads or one TorchScript file per sweep".into())),
        }
        args.extend([
            "--threads".into(),
            join(cfg.threads.iter().map(usize::to_string).collect()),
            "--reps".into(),
            cfg.reps.to_string(),
            "--warmup-s".into(),
            cfg.warmup_s.to_string(),
            "--duration-s".into(),
            cfg.duration_s.to_string(),
            // The batcher modes' clients keep as many requests in flight as ours.
            "--window".into(),
            cfg.window.to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        if cfg.host_io {
            args.push("--host-io".into());
        }
        Ok(args)
    }

    /// Runs the peer for `cfg` (after ours, never at the same time) and reads its document from
    /// `out`. Its per-point progress goes to stderr when `cfg.progress` is set; its own table is
    /// not shown (ours shows both).
    ///
    /// The peer runs in its own process group: past `timeout`, or when we get SIGTERM or SIGINT,
    /// the whole group is killed.
    pub fn run(&self, cfg: &BenchConfig, out: &Path, timeout: Duration) -> Result<PeerDoc, BenchError> {
        let args = self.args(cfg, out)?;
        forward_signals_to_the_peer();
        let mut child = Command::new(&self.python)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if cfg.progress { Stdio::inherit() } else { Stdio::piped() })
            .process_group(0)
            .spawn()
            .map_err(|e| BenchError::Peer(format!("could not run {}: {e}", self.python.display())))?;
        let pgid = i32::try_from(child.id()).unwrap_or(0);
        PEER_GROUP.store(pgid, Ordering::SeqCst);
        // Its stderr is read while it runs, so that a chatty peer never blocks on a full pipe.
        let reader = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = e.read_to_end(&mut v);
                v
            })
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if started.elapsed() >= timeout => break Err(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    signal_group(pgid, "KILL");
                    let _ = child.wait();
                    PEER_GROUP.store(0, Ordering::SeqCst);
                    return Err(BenchError::Peer(format!("lost track of {}: {e}", self.python.display())));
                }
            }
        };
        // Whatever the peer left behind in its group goes with it.
        signal_group(pgid, "KILL");
        let status = match status {
            Ok(status) => status,
            Err(()) => {
                let _ = child.wait();
                PEER_GROUP.store(0, Ordering::SeqCst);
                return Err(BenchError::Peer(format!(
                    "{} {} did not finish in {} s and was stopped (raise --peer-timeout-s if it needs longer)",
                    self.python.display(),
                    self.script.display(),
                    timeout.as_secs_f64()
                )));
            }
        };
        PEER_GROUP.store(0, Ordering::SeqCst);
        let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
        if !status.success() {
            let err = String::from_utf8_lossy(&stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            let shown = if cfg.progress { "see its messages above".to_string() } else { tail.join(" | ") };
            return Err(BenchError::Peer(format!("{} {} exited with {}: {shown}", self.python.display(), self.script.display(), status)));
        }
        read_peer(out)
    }
}

/// The peer script: `TCH_STREAMS_PEER` when set; else `peer/python_peer.py` or
/// `crates/tch-streams-cli/peer/python_peer.py` under the current directory or any directory
/// above it (a binary run from inside a checkout finds it); else under this crate's source tree.
pub fn find_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TCH_STREAMS_PEER") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cwd = std::env::current_dir().ok();
    let around = cwd.iter().flat_map(|d| d.ancestors()).flat_map(|d| [d.join(PEER_SCRIPT), d.join(PEER_FROM_ROOT)]);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(PEER_SCRIPT);
    around.chain(std::iter::once(source)).find(|p| p.is_file()).map(|p| p.canonicalize().unwrap_or(p))
}

/// Reads and checks a peer document from a file.
pub fn read_peer(path: &Path) -> Result<PeerDoc, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BenchError::Json { path: path.display().to_string(), message: e.to_string() })?;
    PeerDoc::from_value(raw, &path.display().to_string())
}
