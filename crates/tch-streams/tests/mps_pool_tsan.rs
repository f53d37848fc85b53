//! The MPS patch's portable pieces under ThreadSanitizer, on any platform.
//!
//! Two headers that our PyTorch patch adds are free of Metal and of c10, so they can be tested
//! here: the stream pool's slot and thread-local logic (`aten/src/ATen/mps/MPSStreamPoolCore.h`)
//! and the allocator's rule for reusing a freed buffer across streams
//! (`aten/src/ATen/mps/MPSBufferStreamUse.h`). The tests extract them from
//! `patches/v2.11.0/tch-streams-mps-v2.11.0.patch` (their `+` lines), so they test exactly what the patch
//! ships, compile `tests/mps_pool/pool_core_stress.cpp` and `tests/mps_pool/buffer_reuse_stress.cpp`
//! against them with `g++ -fsanitize=thread`, run them and check their summaries.
//!
//! Needs g++ (CI has it); fails with a clear message when it is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PATCH: &str = "patches/v2.11.0/tch-streams-mps-v2.11.0.patch";
const CORE_HEADER: &str = "aten/src/ATen/mps/MPSStreamPoolCore.h";
const STRESS_SOURCE: &str = "crates/tch-streams/tests/mps_pool/pool_core_stress.cpp";
const REUSE_HEADER: &str = "aten/src/ATen/mps/MPSBufferStreamUse.h";
const REUSE_SOURCE: &str = "crates/tch-streams/tests/mps_pool/buffer_reuse_stress.cpp";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The text of a file that `patch` creates, rebuilt from its `+` lines; checks the hunk's count.
fn new_file_from_patch(patch: &str, path: &str) -> Result<String, String> {
    let header = format!("diff --git a/{path} b/{path}");
    let start = patch
        .find(&header)
        .ok_or_else(|| format!("{PATCH} has no diff for {path}"))?;
    let rest = &patch[start + header.len()..];
    let block = match rest.find("\ndiff --git ") {
        Some(end) => &rest[..end + 1],
        None => rest,
    };
    let mut lines = block.lines();
    // The file header runs up to the first hunk; a created file's says "--- /dev/null".
    let file_header: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("@@")).collect();
    if !file_header.contains(&"--- /dev/null") {
        return Err(format!("{PATCH} modifies {path} instead of creating it"));
    }
    let hunk = block
        .lines()
        .find(|l| l.starts_with("@@"))
        .filter(|l| l.starts_with("@@ -0,0 +1"))
        .ok_or_else(|| format!("{path}: expected a single '@@ -0,0 +1,N @@' hunk"))?;
    let expected: usize = hunk
        .trim_start_matches("@@ -0,0 +1")
        .trim_start_matches(',')
        .split(' ')
        .next()
        .and_then(|n| if n.is_empty() { Some(1) } else { n.parse().ok() })
        .ok_or_else(|| format!("{path}: unreadable hunk header '{hunk}'"))?;
    let mut text = String::new();
    let mut count = 0;
    for line in lines {
        if let Some(content) = line.strip_prefix('+') {
            text.push_str(content);
            text.push('\n');
            count += 1;
        } else if line.starts_with('\\') {
            continue; // "\ No newline at end of file"
        } else {
            break;
        }
    }
    if count != expected {
        return Err(format!("{path}: hunk says {expected} lines, found {count}"));
    }
    Ok(text)
}

fn require_gxx() {
    match Command::new("g++").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "g++ is required for the MPS pool ThreadSanitizer test but was not found on PATH \
             (Debian/Ubuntu: apt-get install g++)"
        ),
    }
}

fn run_stress(binary: &Path, without_aslr: bool) -> Output {
    let mut cmd = if without_aslr {
        let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let mut c = Command::new("setarch");
        c.arg(arch).arg("-R").arg(binary);
        c
    } else {
        Command::new(binary)
    };
    cmd.env("TSAN_OPTIONS", "halt_on_error=1 exitcode=66")
        .output()
        .expect("failed to start the pool stress binary")
}

#[test]
fn extracts_the_pool_core_header_from_the_patch() {
    let patch = fs::read_to_string(repo_root().join(PATCH)).expect("read the cumulative patch");
    let header = new_file_from_patch(&patch, CORE_HEADER).unwrap();
    assert!(header.contains("namespace at::mps::detail"), "unexpected header text");
    assert!(header.contains("constexpr int64_t kPoolStreams = 32;"));
    assert!(header.contains("constexpr int64_t kStreamSlots = kPoolStreams + 1;"));
    for metal in ["<Metal/", "id<MTL", "MTLCommand", "dispatch_queue_t", "#import"] {
        assert!(!header.contains(metal), "the pool core must stay free of Metal types ({metal})");
    }
}

/// Writes `headers` (repository paths of files the patch creates) into a temporary include tree,
/// compiles `source` against them with ThreadSanitizer, runs it (without ASLR when the kernel's
/// mmap layout upsets TSan) and returns its stdout once it exited 0 without a TSan report.
fn run_under_tsan(headers: &[&str], source: &str, binary_name: &str) -> String {
    require_gxx();
    let root = repo_root();
    let patch = fs::read_to_string(root.join(PATCH)).expect("read the cumulative patch");

    let dir = tempfile::tempdir().expect("temp dir");
    let include = dir.path().join("include");
    for path in headers {
        let text = new_file_from_patch(&patch, path).unwrap();
        let relative = path.trim_start_matches("aten/src/");
        let target = include.join(relative);
        fs::create_dir_all(target.parent().expect("header has a directory")).unwrap();
        fs::write(target, text).unwrap();
    }
    let binary = dir.path().join(binary_name);

    let compile = Command::new("g++")
        .args(["-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread"])
        .arg(format!("-I{}", include.display()))
        .arg(root.join(source))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("run g++");
    assert!(
        compile.status.success(),
        "g++ -fsanitize=thread failed for {source}:\n{}",
        String::from_utf8_lossy(&compile.stderr)
    );

    let mut out = run_stress(&binary, false);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if stderr.contains("FATAL: ThreadSanitizer: unexpected memory mapping") {
        // Kernels with high mmap ASLR entropy break TSan's shadow layout; run without ASLR.
        out = run_stress(&binary, true);
    }
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{binary_name} failed (66 = ThreadSanitizer report)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("WARNING: ThreadSanitizer"), "TSan report:\n{stderr}");
    stdout
}

fn assert_lines(stdout: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            stdout.lines().any(|l| l == *line),
            "missing line '{line}' in:\n{stdout}"
        );
    }
}

#[test]
fn pool_core_is_race_free_under_thread_sanitizer() {
    let stdout = run_under_tsan(&[CORE_HEADER], STRESS_SOURCE, "pool_core_stress");
    assert_lines(
        &stdout,
        &[
            "pool-core: ids pool=1..32 distinct=32 refused=yes last=yes",
            "pool-core: creator handed_out=8 leased_by_creator=0 held=8 exit_hooks=8 leased_after=0",
            "pool-core: exclusive threads=32 iterations=500 bindings=16000 violations=0 leased_after=0",
            "pool-core: oversubscribed threads=40 leased=32 shared=8 leased_after=0",
            "pool-core: rebind leased_after=0",
            "pool-core: sync-all streams=33 reached=33 drained=yes",
            "PASS pool_core_stress (0 failed checks)",
        ],
    );
}

#[test]
fn extracts_the_buffer_reuse_header_from_the_patch() {
    let patch = fs::read_to_string(repo_root().join(PATCH)).expect("read the cumulative patch");
    let header = new_file_from_patch(&patch, REUSE_HEADER).unwrap();
    assert!(header.contains("class BufferStreamUse"), "unexpected header text");
    assert!(header.contains("#include <ATen/mps/MPSStreamPoolCore.h>"));
    for foreign in ["<Metal/", "id<MTL", "MTLCommand", "dispatch_queue_t", "#import", "<c10/"] {
        assert!(!header.contains(foreign), "the reuse rule must stay portable ({foreign})");
    }
}

#[test]
fn buffer_reuse_rule_holds_under_thread_sanitizer() {
    let stdout = run_under_tsan(&[CORE_HEADER, REUSE_HEADER], REUSE_SOURCE, "buffer_reuse_stress");
    assert_lines(
        &stdout,
        &[
            "buffer-reuse: rule cases=13 failed=0",
            "buffer-reuse: stress threads=16 streams=8 iterations=300 handout_violations=0 gpu_violations=0",
            "buffer-reuse: control (streams ignored) violations=detected",
            "PASS buffer_reuse_stress (0 failed checks)",
        ],
    );
}
