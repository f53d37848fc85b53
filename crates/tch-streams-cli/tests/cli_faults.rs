//! The CLI under bad numbers, as a hostile user runs it: every value is refused with a message
//! naming the flag, never a panic (exit 101), an abort (134) or a signal. Each child runs under a
//! watchdog. The last test fuzzes the numeric and shape flags with proptest.

mod cli_common;

use cli_common::{bin, text, try_cli};
use proptest::prelude::*;
use std::process::{Command, Output};

/// Runs the CLI; `None` if it outlived `secs` (then it is killed).
fn cli(args: &[String], secs: u64) -> Option<Output> {
    try_cli(args, &[], secs)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs and checks: exit `code`, no panic, and `needle` in the output.
fn refused(args: &[&str], code: i32, needle: &str) {
    let out = cli(&strs(args), 120).unwrap_or_else(|| panic!("{args:?}: hung"));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {all}");
    assert!(!all.contains("panicked"), "{args:?}: {all}");
    assert!(all.contains(needle), "{args:?}: expected {needle:?} in {all}");
}

/// 8. Durations: negative, NaN, infinite or absurd are refused by name.
#[test]
fn bad_durations_are_refused_by_name() {
    for d in ["-1", "NaN", "inf", "1e20", "0"] {
        refused(&["run", "--device", "cpu", &format!("--duration={d}")], 1, "--duration");
    }
    for (flag, v) in [("--duration-s", "1e20"), ("--warmup-s", "1e20"), ("--duration-s", "NaN"), ("--warmup-s", "-1")] {
        refused(&["bench", "--quick", "--device", "cpu", &format!("{flag}={v}")], 1, "seconds must be");
    }
}

/// 9 and 10. Counts and sizes beyond any real use are refused before anything is allocated.
#[test]
fn huge_counts_and_shapes_are_refused_by_name() {
    refused(&["run", "--device", "cpu", "--workers", "100000"], 1, "--workers 100000 is out of range: expected 1..=1024");
    refused(&["run", "--device", "cpu", "--clients", "100000"], 1, "--clients 100000 is out of range");
    refused(&["run", "--device", "cpu", "--inflight", "1000000000"], 1, "--inflight 1000000000 is out of range");
    refused(&["run", "--device", "cpu", "--clients", "4294967296", "--inflight", "4294967296"], 1, "--clients 4294967296 is out of range");
    refused(&["run", "--device", "cpu", "--batch-max", "9223372036854775808"], 1, "--batch-max 9223372036854775808 is out of range");
    refused(&["run", "--device", "cpu", "--shape", "16777216x16777216"], 1, "more than 4294967296 elements");
    refused(&["run", "--device", "cpu", "--batch-wait-us", "18446744073709551615", "--batch-max", "8"], 1, "--batch-wait-us");
}

/// 14. A libtorch mismatch exits 2 in `run` and `bench`, as in `preflight`.
#[test]
fn a_mismatch_exits_2_in_run_and_bench() {
    let loaded = tch_streams::runtime::LoadedLibtorch::detect().unwrap();
    let real = std::path::PathBuf::from(&loaded.cpu.path);
    let dir = tempfile::Builder::new().prefix("cli-drill-").tempdir_in(real.parent().unwrap().parent().unwrap()).unwrap();
    let copy = dir.path().join(real.file_name().unwrap());
    std::fs::copy(&real, &copy).unwrap();
    {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&copy).unwrap().write_all(b"drill").unwrap();
    }
    for args in [&["run", "--device", "cpu", "--requests", "1"][..], &["bench", "--quick", "--device", "cpu", "--out", "/tmp"][..]] {
        let out = Command::new(bin()).args(args).env("LD_LIBRARY_PATH", dir.path()).env_remove("TCH_STREAMS_ALLOW_MISMATCH").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("different libtorch"), "{}", text(&out));
    }
}

/// 15. `bench` refuses a missing model and an unwritable output directory before the sweep.
#[test]
fn bench_checks_its_model_and_output_directory_before_the_sweep() {
    refused(&["bench", "--quick", "--device", "cpu", "--model", "/nonexistent.pt", "--shape", "1x4"], 1, "--model /nonexistent.pt: no such file");
    refused(&["bench", "--quick", "--device", "cpu", "--out", "/proc/nope"], 1, "--out /proc/nope");
}

/// 16. A model that cannot load: one clear line (no C++ frames, not once per worker), and no
/// colour codes in logs that go to a pipe.
#[test]
fn a_model_load_error_is_one_clean_message() {
    let out = cli(&strs(&["run", "--device", "cpu", "--model", "/nonexistent/model.pt", "--input", "1x4", "--workers", "4"]), 60).expect("no hang");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(all.matches("cannot load the model /nonexistent/model.pt").count(), 1, "{all}");
    assert!(!all.contains("frame #") && !all.contains("Exception raised from") && !all.contains("I/O error"), "{all}");
    assert!(!all.contains('\u{1b}'), "ANSI codes in piped output: {all:?}");
}

/// A value for a numeric flag: in range, at the edges, or hostile.
fn numeric() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..300).prop_map(|v| v.to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("4294967296".to_string()),
        Just("1e20".to_string()),
        Just("NaN".to_string()),
        Just("abc".to_string()),
        Just("".to_string()),
    ]
}

fn shape() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(0i64..40, 1..4).prop_map(|d| d.iter().map(i64::to_string).collect::<Vec<_>>().join("x")),
        Just("16777216x16777216".to_string()),
        Just("1x-3".to_string()),
        Just("x".to_string()),
        Just("1x512:int64".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    /// The oracle: whatever the numbers, `run` exits 0, 1 or 64 (usage) within the timeout, with no Rust
    /// panic message (never 101, 134 or a signal).
    #[test]
    fn run_never_panics_or_hangs_on_hostile_numbers(
        flag in prop_oneof![Just("--workers"), Just("--clients"), Just("--inflight"), Just("--batch-max"), Just("--batch-wait-us"), Just("--requests"), Just("--duration")],
        value in numeric(),
        shape in shape(),
    ) {
        // Both limits given: the run stops at whichever comes first, whatever the fuzzed value.
        let mut args = strs(&["run", "--device", "cpu", "--shape", &shape, flag, &value]);
        if flag != "--requests" {
            args.extend(strs(&["--requests", "20"]));
        }
        if flag != "--duration" {
            args.extend(strs(&["--duration", "2"]));
        }
        let out = cli(&args, 120);
        prop_assert!(out.is_some(), "{:?}: hung", args);
        let out = out.unwrap();
        let code = out.status.code();
        prop_assert!(matches!(code, Some(0) | Some(1) | Some(64)), "{:?}: exit {:?}: {}", args, code, text(&out));
        prop_assert!(!text(&out).contains("panicked"), "{:?}: {}", args, text(&out));
    }
}
