//! The example as a user meets it: its binary started with no LD_LIBRARY_PATH (it finds libtorch
//! through the one documented build.rs line, and CUDA through the library's own loading), serving
//! a TorchScript file written by Python's torch; and the same binary refused (exit 2) when a
//! modified libtorch_cpu comes first on LD_LIBRARY_PATH.
//!
//! On another machine, `TCH_STREAMS_EXAMPLES_DIR` names the directory holding the example
//! binaries and `TCH_STREAMS_FIXTURES` a directory that already holds `mlp.pt`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> PathBuf {
    match std::env::var_os("TCH_STREAMS_EXAMPLES_DIR") {
        Some(d) => Path::new(&d).join("serve-torchscript"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_serve-torchscript")),
    }
}

/// `mlp.pt` from the fixture script, run by the `python3` on PATH (the venv setup made).
fn model() -> PathBuf {
    if let Some(d) = std::env::var_os("TCH_STREAMS_FIXTURES") {
        return Path::new(&d).join("mlp.pt");
    }
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/make_models.py");
        let out = Command::new("python3").arg(&script).arg(dir.path()).output().expect("python3 on PATH (scripts/setup.sh --print-env puts the venv first)");
        assert!(out.status.success(), "fixture script failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    });
    dir.path().join("mlp.pt")
}

/// Runs the example in a clean loader environment, under a watchdog.
fn run(args: &[&str], ld_library_path: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("LD_LIBRARY_PATH").env_remove("LD_PRELOAD").env_remove("TCH_STREAMS_ALLOW_MISMATCH");
    if let Some(d) = ld_library_path {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(300)).expect("the example finished within 300 s").expect("the example started")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn starts_without_ld_library_path_verifies_and_serves_equal_to_serial() {
    let m = model();
    let out = run(&[m.to_str().unwrap(), "--device", "cpu", "--threads", "4", "--requests", "25", "--workers", "2"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("verified"), "{all}");
    assert!(all.contains("results equal to serial: 100/100"), "{all}");
    assert!(all.contains("stats: submitted 100 completed 100 failed 0"), "{all}");
    assert!(all.contains("workers: 2 on "), "{all}");
}

#[test]
fn serves_with_dynamic_batching_within_rounding_of_serial() {
    let m = model();
    let out = run(&[m.to_str().unwrap(), "--device", "cpu", "--threads", "8", "--requests", "20", "--batch-max", "8"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("results equal to serial: 160/160"), "{all}");
    assert!(all.contains("submitted 160 completed 160 failed 0"), "{all}");
}

#[test]
fn a_modified_libtorch_cpu_first_on_ld_library_path_exits_2_naming_both_files() {
    let loaded = tch_streams::runtime::LoadedLibtorch::detect().unwrap();
    let real = PathBuf::from(&loaded.cpu.path);
    // A sibling of the real lib dir keeps the wheel's relative rpaths to its CUDA libraries valid.
    let dir = tempfile::Builder::new().prefix("example-drill-").tempdir_in(real.parent().unwrap().parent().unwrap()).unwrap();
    let copy = dir.path().join(real.file_name().unwrap());
    std::fs::copy(&real, &copy).unwrap();
    {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&copy).unwrap().write_all(b"not the built bytes").unwrap();
    }
    let m = model();
    let out = run(&[m.to_str().unwrap(), "--device", "cpu"], Some(dir.path()));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let copy_path = std::fs::canonicalize(&copy).unwrap().display().to_string();
    assert!(all.contains(&copy_path), "names the loaded file: {all}");
    let built = tch_streams::runtime::BuildRecord::current();
    assert!(all.contains(&built.cpu_lib_path()), "names the built file: {all}");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let out = run(&["/nonexistent/model.pt", "--device", "cpu"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("cannot load /nonexistent/model.pt"), "{all}");
}

/// On a GPU machine: CUDA registered with no link flag, one pool stream per worker, results
/// equal to serial.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn on_cuda_each_worker_owns_a_pool_stream_and_results_equal_serial() {
    let m = model();
    let out = run(&[m.to_str().unwrap(), "--device", "cuda:0", "--threads", "8", "--requests", "50", "--workers", "4"], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("cuda registered: yes"), "{all}");
    assert!(all.contains("workers: 4 on 4 distinct stream(s)"), "{all}");
    assert!(all.contains("results equal to serial: 400/400"), "{all}");
}
