//! The verifier against the real libtorch this test binary loaded (nothing mocked), plus its
//! decision rules on constructed records.

use tch_streams::runtime::{
    check_capability, check_identity, probe_pool, verify, BuildRecord, Capability, LibIdentity, LoadedLibtorch, Policy,
    PoolProbe, Report,
};
use tch_streams::{Backend, Error};

#[test]
fn verify_accepts_the_libtorch_the_build_linked() {
    let report = verify(&Policy { required: vec![], allow_mismatch: false }).expect("built and loaded libtorch agree");
    assert_eq!(report.loaded.cpu.sha256, report.built.cpu_sha256);
    assert_eq!(report.loaded.cpu.sha256.len(), 64);
    assert!(report.loaded.cpu.path.ends_with("libtorch_cpu.so") || report.loaded.cpu.path.ends_with("libtorch_cpu.dylib"));
    assert_eq!(report.loaded.compiled_version, "2.11.0");
    assert_eq!(report.loaded.loaded_version.as_deref(), Some("2.11.0"));
    assert!(report.warnings.is_empty());
    // The loaded path is the built one, or the same content elsewhere (then a note says so).
    if report.loaded.cpu.path != report.built.cpu_lib_path() {
        assert!(report.notes.iter().any(|n| n.contains("same content")), "{:?}", report.notes);
    }
}

#[test]
fn loaded_libtorch_reports_its_build_configuration() {
    let l = LoadedLibtorch::detect().unwrap();
    assert!(l.build_config.contains("PyTorch built with"), "{}", l.build_config);
    assert_eq!(l.cuda_available, l.cuda_device_count > 0);
    assert_eq!(l.cuda_device_names.len(), l.cuda_device_count);
    // Stock libtorch: no patch marker.
    assert_eq!(l.patch_marker, None);
    // Cached: a second call is the same answer.
    assert_eq!(LoadedLibtorch::detect().unwrap(), l);
}

fn record(sha: &str) -> BuildRecord {
    BuildRecord {
        lib_dir: "/opt/built/lib".into(),
        torch_version: "2.11.0".into(),
        cpu_sha256: sha.into(),
        cuda_sha256: None,
        patch_id: None,
    }
}

fn loaded(path: &str, sha: &str) -> LoadedLibtorch {
    let mut l = LoadedLibtorch::detect().unwrap();
    l.cpu = LibIdentity { path: path.into(), sha256: sha.into() };
    l.cuda = None;
    l
}

#[test]
fn different_content_is_a_mismatch_naming_both_paths_and_hashes() {
    let err = check_identity(&record("aaaa"), &loaded("/elsewhere/lib/libtorch_cpu.so", "bbbb")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::LibtorchMismatch { .. }));
    assert_eq!(err.exit_code(), 2);
    for needle in ["/opt/built/lib/libtorch_cpu", "/elsewhere/lib/libtorch_cpu.so", "aaaa", "bbbb", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
}

#[test]
fn same_content_at_another_path_passes() {
    assert_eq!(check_identity(&record("cccc"), &loaded("/copy/lib/libtorch_cpu.so", "cccc")), Ok(()));
}

#[test]
fn cuda_library_presence_must_match_the_build() {
    let mut built = record("cccc");
    built.cuda_sha256 = Some("dddd".into());
    let err = check_identity(&built, &loaded("/x/libtorch_cpu.so", "cccc")).unwrap_err();
    assert!(err.to_string().contains("libtorch_cuda not loaded"), "{err}");
}

#[test]
fn allow_mismatch_turns_the_error_into_a_warning() {
    let mut report = Report::gather().unwrap();
    report.built.cpu_sha256 = "0".repeat(64);
    let strict = report.clone().enforce(&Policy { required: vec![], allow_mismatch: false });
    assert!(matches!(strict, Err(Error::LibtorchMismatch { .. })));
    report.enforce(&Policy { required: vec![], allow_mismatch: true }).expect("allowed");
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].contains("TCH_STREAMS_ALLOW_MISMATCH=1"));
}

#[test]
fn cpu_has_no_stream_pool() {
    match probe_pool(Backend::Cpu) {
        PoolProbe::Unsupported { message } => assert!(message.contains("doesn't support"), "{message}"),
        PoolProbe::DefaultOnly { .. } => {}
        other => panic!("CPU must not report a pool: {other}"),
    }
}

#[test]
fn cuda_pool_requirement_matches_the_hardware() {
    let report = Report::gather().unwrap();
    let result = check_capability(Capability::CudaPool, &report);
    if tch::Cuda::is_available() {
        assert_eq!(result, Ok(()));
    } else {
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("cuda-pool"), "{err}");
        assert!(err.to_string().contains("GPU"), "{err}");
    }
}

#[test]
fn patched_and_mps_pool_are_missing_on_stock_libtorch() {
    let report = Report::gather().unwrap();
    let err = check_capability(Capability::Patched, &report).unwrap_err();
    assert!(matches!(err, Error::MissingCapability { capability: Capability::Patched, .. }));
    assert!(err.to_string().contains("stock libtorch"), "{err}");
    let err = check_capability(Capability::MpsPool, &report).unwrap_err();
    assert!(err.to_string().contains("mps-pool"), "{err}");
    assert!(err.to_string().contains("scripts/build-libtorch.sh"), "{err}");
}

#[test]
fn patched_requires_the_exact_id() {
    let mut report = Report::gather().unwrap();
    report.built.patch_id = Some("tch-streams-mps/aaaa".into());
    report.loaded.patch_marker = Some("tch-streams-mps/bbbb".into());
    let err = check_capability(Capability::Patched, &report).unwrap_err();
    assert!(err.to_string().contains("tch-streams-mps/bbbb") && err.to_string().contains("tch-streams-mps/aaaa"), "{err}");
    report.loaded.patch_marker = Some("tch-streams-mps/aaaa".into());
    assert_eq!(check_capability(Capability::Patched, &report), Ok(()));
}

#[test]
fn capability_names_round_trip() {
    for c in Capability::ALL {
        assert_eq!(c.name().parse::<Capability>(), Ok(c));
    }
    assert!("cuda".parse::<Capability>().unwrap_err().contains("cuda-pool, mps-pool, patched"));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_probe_reports_a_cuda_pool_with_two_distinct_ids() {
    match probe_pool(Backend::Cuda) {
        PoolProbe::Yes { first, second } => {
            assert_ne!(first, second);
            assert_ne!(first, 0, "pool streams are not the default stream");
            println!("cuda pool: yes (ids {first}, {second})");
        }
        other => panic!("expected a CUDA pool, got {other}"),
    }
    let report = verify(&Policy::default().require(Capability::CudaPool)).expect("cuda-pool present");
    assert!(report.loaded.cuda.is_some());
    assert!(!report.loaded.cuda_device_names.is_empty());
}
