//! Mismatch drills against the real `tch-streams preflight` binary: the loader is made to pick up
//! a different libtorch_cpu (LD_LIBRARY_PATH, LD_PRELOAD) and preflight must refuse, naming both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch_streams::runtime::LoadedLibtorch;

/// The binary under test; `TCH_STREAMS_BIN` overrides cargo's path when the tests run on a
/// machine other than the one that built them.
fn bin() -> String {
    std::env::var("TCH_STREAMS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tch-streams").to_string())
}

fn preflight(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("preflight").args(args).env_remove("TCH_STREAMS_ALLOW_MISMATCH").env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, with_inherited(k, v));
    }
    cmd.output().expect("run tch-streams")
}

/// `LD_LIBRARY_PATH` gets the drill directory *in front of* what the environment already has
/// (on machines whose binary finds libtorch through it rather than through the rpath).
fn with_inherited(key: &str, dir: &Path) -> std::ffi::OsString {
    let mut v = dir.as_os_str().to_owned();
    if key == "LD_LIBRARY_PATH" {
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|o| !o.is_empty()) {
            v.push(":");
            v.push(old);
        }
    }
    v
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A temporary sibling directory of the loaded lib dir holding a copy of libtorch_cpu (a sibling
/// keeps the wheel's relative `$ORIGIN/../../nvidia/...` rpaths resolving). `extra` bytes are
/// appended to the copy: the ELF still loads, but its content (and hash) differs.
fn lib_copy(extra: &[u8]) -> (tempfile::TempDir, PathBuf, String) {
    lib_copy_of(&LoadedLibtorch::detect().unwrap().cpu.path, extra)
}

/// The same for any loaded library, given its real path.
fn lib_copy_of(real: &str, extra: &[u8]) -> (tempfile::TempDir, PathBuf, String) {
    let real = PathBuf::from(real);
    let lib_dir = real.parent().unwrap();
    let dir = tempfile::Builder::new().prefix("lib-drill-").tempdir_in(lib_dir.parent().unwrap()).unwrap();
    let copy = dir.path().join(real.file_name().unwrap());
    std::fs::copy(&real, &copy).unwrap();
    if !extra.is_empty() {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&copy).unwrap().write_all(extra).unwrap();
    }
    let canonical = std::fs::canonicalize(&copy).unwrap().display().to_string();
    (dir, copy, canonical)
}

#[test]
fn the_built_libtorch_passes() {
    let out = preflight(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("result: ok"));
}

#[test]
fn a_different_libtorch_on_ld_library_path_is_refused_with_exit_2() {
    let (dir, _copy, copy_path) = lib_copy(b"tch-streams drill: not the built bytes");
    let out = preflight(&[], &[("LD_LIBRARY_PATH", dir.path())]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains(&copy_path), "names the loaded copy: {all}");
    let built = tch_streams::runtime::BuildRecord::current();
    assert!(all.contains(&built.cpu_lib_path()), "names the built library: {all}");
    assert!(all.contains(&built.cpu_sha256), "{all}");
    assert!(all.contains("LD_LIBRARY_PATH"), "{all}");
}

#[test]
fn a_different_libc10_on_ld_library_path_is_refused_with_exit_2() {
    let loaded = LoadedLibtorch::detect().unwrap();
    let c10 = loaded.libs.iter().find(|l| l.path.rsplit('/').next().unwrap().starts_with("libc10.")).expect("libc10 is mapped");
    let (dir, _copy, copy_path) = lib_copy_of(&c10.path, b"one more byte");
    let out = preflight(&[], &[("LD_LIBRARY_PATH", dir.path())]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains(&copy_path), "names the loaded libc10 copy: {all}");
    let built = tch_streams::runtime::BuildRecord::current();
    let built_c10 = built.libs.iter().find(|l| l.name.starts_with("libc10.")).expect("libc10 recorded");
    assert!(all.contains(&format!("{}/{}", built.lib_dir, built_c10.name)), "names the built libc10: {all}");
    assert!(all.contains(&built_c10.sha256), "{all}");
}

#[test]
fn preflight_fingerprints_every_mapped_libtorch_library() {
    let out = preflight(&[], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let line = all.lines().find(|l| l.contains("fingerprinted")).unwrap_or_else(|| panic!("no fingerprint line: {all}"));
    for lib in ["libc10.", "libtorch_cpu."] {
        assert!(line.contains(lib), "{lib} missing from {line}");
    }
}

#[test]
fn a_different_libtorch_through_ld_preload_is_refused_with_exit_2() {
    let (_dir, copy, copy_path) = lib_copy(b"preloaded drill bytes");
    let out = preflight(&[], &[("LD_PRELOAD", copy.as_path())]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains(&copy_path), "{all}");
}

#[test]
fn allow_mismatch_runs_with_a_loud_warning() {
    let (dir, _copy, _) = lib_copy(b"drill");
    let mut cmd = Command::new(bin());
    cmd.arg("preflight").env("LD_LIBRARY_PATH", with_inherited("LD_LIBRARY_PATH", dir.path())).env("TCH_STREAMS_ALLOW_MISMATCH", "1");
    let out = cmd.output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("WARNING") && all.contains("TCH_STREAMS_ALLOW_MISMATCH=1"), "{all}");
}

#[test]
fn a_byte_identical_copy_elsewhere_passes_with_a_note() {
    let (dir, _copy, copy_path) = lib_copy(b"");
    let out = preflight(&[], &[("LD_LIBRARY_PATH", dir.path())]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&copy_path), "the report shows the copy was loaded: {all}");
    assert!(all.contains("same content, accepted"), "{all}");
}

#[test]
fn json_report_has_the_documented_shape() {
    let out = preflight(&["--json"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON on stdout");
    assert_eq!(v["ok"], true);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["report"]["loaded"]["compiled_version"], v["report"]["built"]["torch_version"]);
    assert!(v["report"]["built"]["libs"].as_array().is_some_and(|l| l.len() >= 3), "{v}");
    assert!(v["report"]["loaded"]["cuda_load"]["state"].is_string(), "{v}");
    assert_eq!(v["report"]["built"]["cpu_sha256"], v["report"]["loaded"]["cpu"]["sha256"]);
    let probes = v["report"]["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3);
    assert_eq!(probes[0]["backend"], "cpu");
    assert!(probes[0]["probe"]["pool"].is_string());
}

#[test]
fn require_cuda_pool_without_a_gpu_exits_3() {
    if tch::Cuda::is_available() {
        let out = preflight(&["--require", "cuda-pool"], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        return;
    }
    let out = preflight(&["--require", "cuda-pool"], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("required capability `cuda-pool` is missing"), "{all}");
    let out = preflight(&["--require", "patched", "--json"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "missing-capability");
}

#[test]
fn unknown_capability_is_a_usage_error() {
    let out = preflight(&["--require", "gpu"], &[]);
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64 (2 is a libtorch mismatch)");
    assert!(text(&out).contains("expected one of: cuda-pool, mps-pool, patched"), "{}", text(&out));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_require_cuda_pool_exits_0() {
    let out = preflight(&["--require", "cuda-pool"], &[]);
    let all = text(&out);
    println!("{all}");
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("cuda  pool: yes (ids"), "{all}");
}
