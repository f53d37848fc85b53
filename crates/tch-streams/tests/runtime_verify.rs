//! The verifier against the real libtorch this test binary loaded (nothing mocked), plus its
//! decision rules on constructed records.

use tch_streams::runtime::{
    check_capability, check_identity, expected_mps_patch_id, load_backends, mps_patch_versions, probe_pool, verify,
    BuildRecord, BuiltLib, Capability, CudaLoad, LibIdentity, LoadedLibtorch, Policy, PoolProbe, Report,
};
use tch_streams::{Backend, Error};

#[test]
fn verify_accepts_the_libtorch_the_build_linked() {
    let report = verify(&Policy { required: vec![], allow_mismatch: false }).expect("built and loaded libtorch agree");
    assert_eq!(report.loaded.cpu.sha256, report.built.cpu_sha256);
    assert_eq!(report.loaded.cpu.sha256.len(), 64);
    assert!(report.loaded.cpu.path.ends_with("libtorch_cpu.so") || report.loaded.cpu.path.ends_with("libtorch_cpu.dylib"));
    // The shim's headers, the build record and the loaded library agree on the version.
    assert_eq!(report.loaded.compiled_version, report.built.torch_version);
    assert_eq!(report.loaded.loaded_version.as_deref(), Some(report.built.torch_version.as_str()));
    assert!(["2.11.0", "2.12.0", "2.13.0"].contains(&report.built.torch_version.as_str()), "{}", report.built.torch_version);
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
        libs: vec![
            BuiltLib { name: "libc10.so".into(), sha256: "c10c10".into() },
            BuiltLib { name: "libtorch_cpu.so".into(), sha256: sha.into() },
        ],
    }
}

fn loaded(path: &str, sha: &str) -> LoadedLibtorch {
    let mut l = LoadedLibtorch::detect().unwrap();
    l.cpu = LibIdentity { path: path.into(), sha256: sha.into() };
    l.cuda = None;
    l.libs = vec![l.cpu.clone()];
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
fn a_different_libc10_is_a_mismatch_naming_both_files() {
    let mut l = loaded("/opt/built/lib/libtorch_cpu.so", "cccc");
    l.libs.push(LibIdentity { path: "/tmp/drill/libc10.so".into(), sha256: "eeee".into() });
    let err = check_identity(&record("cccc"), &l).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    for needle in ["/opt/built/lib/libc10.so", "c10c10", "/tmp/drill/libc10.so", "eeee"] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    // The same bytes from another directory are accepted.
    l.libs[1].sha256 = "c10c10".into();
    assert_eq!(check_identity(&record("cccc"), &l), Ok(()));
}

#[test]
fn a_mapped_libtorch_library_absent_from_the_record_is_a_mismatch() {
    let mut l = loaded("/opt/built/lib/libtorch_cpu.so", "cccc");
    l.libs.push(LibIdentity { path: "/elsewhere/libtorch_extra.so".into(), sha256: "ffff".into() });
    let err = check_identity(&record("cccc"), &l).unwrap_err();
    assert!(err.to_string().contains("libtorch_extra.so (absent at build time)"), "{err}");
}

#[test]
fn the_real_record_covers_every_mapped_libtorch_library() {
    let report = verify(&Policy { required: vec![], allow_mismatch: false }).unwrap();
    for name in ["libc10", "libtorch_cpu"] {
        assert!(report.loaded.libs.iter().any(|l| l.path.contains(name)), "{name} not fingerprinted: {:?}", report.loaded.libs);
        assert!(report.built.libs.iter().any(|l| l.name.starts_with(name)), "{name} not recorded: {:?}", report.built.libs);
    }
    for lib in &report.loaded.libs {
        let name = lib.path.rsplit('/').next().unwrap();
        assert_eq!(report.built.lib(name).map(|b| b.sha256.as_str()), Some(lib.sha256.as_str()), "{name}");
    }
}

#[test]
fn libtorch_cuda_is_loaded_by_the_library_whenever_it_ships() {
    // This test binary is not linked against libtorch_cuda (no --no-as-needed anywhere): CUDA is
    // registered only if the library loaded it.
    let outcome = load_backends();
    let report = verify(&Policy::default()).unwrap();
    if report.built.cuda_sha256.is_some() {
        assert!(matches!(outcome, CudaLoad::Loaded { .. } | CudaLoad::AlreadyMapped { .. }), "{outcome}");
        assert!(tch_streams::has_backend(Backend::Cuda), "CUDA guard registered");
        assert_eq!(report.loaded.cuda.as_ref().map(|c| &c.sha256), report.built.cuda_sha256.as_ref());
    } else {
        assert!(matches!(outcome, CudaLoad::NotShipped { .. }), "{outcome}");
    }
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
    // Built and loaded agree, but on an id that is not the one of the patch this crate ships for
    // the loaded version: refused, naming the expected id.
    report.loaded.patch_marker = Some("tch-streams-mps/aaaa".into());
    let version = report.loaded.loaded_version.clone().unwrap_or_else(|| report.loaded.compiled_version.clone());
    let err = check_capability(Capability::Patched, &report).unwrap_err().to_string();
    match expected_mps_patch_id(&version) {
        Some(expected) => {
            assert!(err.contains(&expected), "{err}");
            // Exactly the id for the loaded version passes ...
            report.built.patch_id = Some(expected.clone());
            report.loaded.patch_marker = Some(expected);
            assert_eq!(check_capability(Capability::Patched, &report), Ok(()));
            // ... and the other version's id does not.
            for other in mps_patch_versions().filter(|v| *v != version.split('+').next().unwrap()) {
                let other_id = expected_mps_patch_id(other).unwrap();
                report.built.patch_id = Some(other_id.clone());
                report.loaded.patch_marker = Some(other_id);
                assert!(check_capability(Capability::Patched, &report).is_err(), "{other}'s id accepted on {version}");
            }
        }
        None => assert!(err.contains("no MPS patch"), "{err}"),
    }
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
