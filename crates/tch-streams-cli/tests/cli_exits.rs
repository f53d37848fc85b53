//! Exit codes and messages of `run` and `bench` when something cannot work: usage errors, input
//! errors, inputs that can only fail, and a Python peer that fails, hangs or outlives a SIGTERM.
//! Every child runs under a watchdog (killed when it outlives it). The peer is a stand-in shell
//! script playing `python3`, so these tests need no torch in Python.

mod cli_common;

use cli_common::{bin, cli, cli_env, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `.npy` file (version 1.0) of float32 `values` with `shape`.
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn usage_errors_exit_64_apart_from_a_mismatch_and_help_lists_every_code() {
    let out = cli(&["run", "--no-such-flag"], 60);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("--no-such-flag"), "{}", text(&out));
    let out = cli(&["bench", "--threads", "many"], 60);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    for sub in ["run", "bench", "preflight"] {
        let out = cli(&[sub, "--help"], 60);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        for code in ["0 success", "1 a failure", "2 the loaded libtorch differs", "3 a capability", "64 an argument"] {
            assert!(help.contains(code), "{sub} --help lacks {code:?}: {help}");
        }
    }
}

#[test]
fn an_input_that_cannot_be_made_is_one_line_without_the_cpp_backtrace() {
    // int32 cannot hold 10^10: libtorch refuses the range, with a C++ backtrace in its message.
    let out = cli(&["run", "--device", "cpu", "--input", "1x512:int32", "--int-range", "0..10000000000", "--requests", "1"], 60);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("cannot make an input of shape [1, 512] (int32): "), "{all}");
    assert!(!all.contains("Exception raised from") && !all.contains("frame #"), "{all}");
    assert_eq!(all.trim().lines().count(), 1, "one line: {all}");
}

#[test]
fn an_empty_npy_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.npy");
    write_npy(&empty, &[0, 512], &[]);
    let out = cli(&["run", "--device", "cpu", "--input-file", empty.to_str().unwrap(), "--requests", "1000", "--json"], 120);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("input 0 (0x512:float32) has no samples: every request would fail"), "{all}");
    assert!(!all.contains("failed 1000x"), "refused at start, not failed per request: {all}");
}

#[test]
fn a_wrong_shape_for_a_builtin_is_refused_at_start_by_a_trial_request() {
    let out = cli(&["run", "--device", "cpu", "--shape", "1x3", "--batch-max", "0", "--requests", "1000", "--json"], 120);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the model fails on the declared inputs (1x3:float32): "), "{all}");
    assert!(all.contains("check --input/--shape/--input-file against the model's forward"), "{all}");
    assert!(!all.contains("failed 1000x") && !all.contains("\"completed\""), "refused at start: {all}");
}

/// A stand-in for `python3`: `-c "import torch"` succeeds; the peer run does what `FAKE_PEER`
/// says (fail, hang) and first writes its pid to `$FAKE_PEER_PID`, and its child's to
/// `$FAKE_PEER_PID.child`.
fn fake_python(dir: &Path) -> PathBuf {
    let path = dir.join("python3");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         [ \"$1\" = \"-c\" ] && exit 0\n\
         echo $$ > \"$FAKE_PEER_PID\"\n\
         case \"$FAKE_PEER\" in\n\
         fail) echo 'Traceback: something broke' >&2; exit 3 ;;\n\
         hang) sleep 600 & echo $! > \"$FAKE_PEER_PID.child\"; wait ;;\n\
         esac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const TINY: [&str; 14] =
    ["bench", "--device", "cpu", "--workloads", "small-mlp", "--modes", "tch-default", "--threads", "1", "--reps", "1", "--warmup-s", "0.05", "--duration-s"];

fn bench_args<'a>(python: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = TINY.to_vec();
    v.extend(["0.1", "--out", out, "--with-python", "--python", python]);
    v.extend(extra);
    v
}

/// Whether process `pid` still runs: it exists and is not a zombie (a killed process whose parent
/// has gone may stay a zombie here when no init reaps it).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) STATE ...": the state follows the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z" && state != "X")
}

fn our_json(dir: &Path) -> serde_json::Value {
    let json = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "json"));
    let json = json.unwrap_or_else(|| panic!("no JSON written in {}", dir.display()));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn bench_exits_1_when_the_peer_fails_and_keeps_its_own_results() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(dir.path());
    let out_dir = dir.path().join("out");
    let pidfile = dir.path().join("peer.pid");
    let args = bench_args(python.to_str().unwrap(), out_dir.to_str().unwrap(), &[]);
    let out = cli_env(&args, &[("FAKE_PEER", "fail"), ("FAKE_PEER_PID", pidfile.to_str().unwrap())], 300);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("error: the Python peer: ") && all.contains("exited with exit status: 3"), "{all}");
    let doc = our_json(&out_dir);
    assert_eq!(doc["results"][0]["workload"], "small-mlp", "{doc}");
    assert!(doc.get("peer").is_none(), "{doc}");
}

#[test]
fn bench_stops_a_stuck_peer_after_its_timeout_and_keeps_its_own_results() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(dir.path());
    let out_dir = dir.path().join("out");
    let pidfile = dir.path().join("peer.pid");
    let args = bench_args(python.to_str().unwrap(), out_dir.to_str().unwrap(), &["--peer-timeout-s", "2"]);
    let out = cli_env(&args, &[("FAKE_PEER", "hang"), ("FAKE_PEER_PID", pidfile.to_str().unwrap())], 300);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("did not finish in 2 s and was stopped (raise --peer-timeout-s if it needs longer)"), "{all}");
    assert_eq!(our_json(&out_dir)["results"][0]["workload"], "small-mlp");
    let child = std::fs::read_to_string(dir.path().join("peer.pid.child")).unwrap();
    assert!(!alive(child.trim()), "the peer's own child was left running");
}

#[test]
fn a_sigterm_to_bench_ends_the_peer_and_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(dir.path());
    let out_dir = dir.path().join("out");
    let pidfile = dir.path().join("peer.pid");
    let args = bench_args(python.to_str().unwrap(), out_dir.to_str().unwrap(), &[]);
    let mut child = Command::new(bin())
        .args(&args)
        .env("FAKE_PEER", "hang")
        .env("FAKE_PEER_PID", &pidfile)
        .env("TCH_STREAMS_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watchdog = Instant::now();
    let grandchild = dir.path().join("peer.pid.child");
    while !grandchild.exists() {
        assert!(watchdog.elapsed() < Duration::from_secs(300), "watchdog: the peer never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (peer, sleeper) = (std::fs::read_to_string(&pidfile).unwrap(), std::fs::read_to_string(&grandchild).unwrap());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if watchdog.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = Command::new("kill").args(["-9", peer.trim(), sleeper.trim()]).status();
            panic!("watchdog: bench did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<&str> = [peer.trim(), sleeper.trim()].into_iter().filter(|p| alive(p)).collect();
    let _ = Command::new("kill").args(["-9", peer.trim(), sleeper.trim()]).stderr(Stdio::null()).status();
    assert!(left.is_empty(), "left running after bench's SIGTERM: {left:?}");
    assert_eq!(code, Some(143), "SIGTERM: exit 143");
}

#[test]
fn buckets_over_batch_max_and_too_many_requests_in_flight_are_refused_by_name() {
    let out = cli(&["run", "--device", "cpu", "--batch-max", "8", "--buckets", "1,65536", "--requests", "10"], 60);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--buckets: size 65536 is over 8 x --batch-max 8: batches would be padded up to it; give sizes of at most 64"), "{}", text(&out));
    let out = cli(&["run", "--device", "cpu", "--clients", "4096", "--inflight", "65536", "--requests", "10"], 60);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--clients 4096 x --inflight 65536 = 268435456 requests in flight is over the limit of 1048576"), "{}", text(&out));
}
