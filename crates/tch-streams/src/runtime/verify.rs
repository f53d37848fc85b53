//! `verify()`: the one call a program makes at startup to prove which libtorch it runs on.

use super::{fingerprint, probe_pool, BuildRecord, Capability, LibIdentity, LoadedLibtorch, PoolProbe};
use crate::backend::Backend;
use crate::error::{Error, Result};
use serde::Serialize;

/// Environment variable that turns a libtorch mismatch into a loud warning.
pub const ALLOW_MISMATCH_ENV: &str = "TCH_STREAMS_ALLOW_MISMATCH";

/// What `verify` enforces.
///
/// ```
/// use tch_streams::runtime::{Capability, Policy};
/// let p = Policy::default().require(Capability::CudaPool);
/// assert_eq!(p.required, vec![Capability::CudaPool]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Capabilities that must be present; each missing one is an error.
    pub required: Vec<Capability>,
    /// Run despite a mismatch (with a warning). Default: `TCH_STREAMS_ALLOW_MISMATCH=1`.
    pub allow_mismatch: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { required: Vec::new(), allow_mismatch: std::env::var(ALLOW_MISMATCH_ENV).is_ok_and(|v| v == "1") }
    }
}

impl Policy {
    /// Adds a required capability.
    pub fn require(mut self, capability: Capability) -> Self {
        if !self.required.contains(&capability) {
            self.required.push(capability);
        }
        self
    }
}

/// One backend's probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendProbe {
    /// The backend probed.
    pub backend: Backend,
    /// What its pool did.
    pub probe: PoolProbe,
}

/// Everything the verifier found: the build record, the loaded library, the probes, and notes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What the build linked.
    pub built: BuildRecord,
    /// What the process loaded.
    pub loaded: LoadedLibtorch,
    /// Pool probes for every backend.
    pub probes: Vec<BackendProbe>,
    /// Facts worth knowing that are not failures (e.g. same content at another path).
    pub notes: Vec<String>,
    /// Failures that the policy allowed (e.g. a mismatch under TCH_STREAMS_ALLOW_MISMATCH=1).
    pub warnings: Vec<String>,
}

impl Report {
    /// Detects the loaded library and probes every backend; fails only if the loaded library
    /// cannot be read. Mismatches are not judged here: see [`Report::enforce`].
    pub fn gather() -> Result<Report> {
        let loaded = LoadedLibtorch::detect()?;
        let built = BuildRecord::current();
        let probes = Backend::ALL.iter().map(|&backend| BackendProbe { backend, probe: probe_pool(backend) }).collect();
        let notes = identity_notes(&built, &loaded);
        Ok(Report { built, loaded, probes, notes, warnings: Vec::new() })
    }

    /// The probe result for one backend.
    pub fn probe(&self, backend: Backend) -> &PoolProbe {
        &self.probes.iter().find(|p| p.backend == backend).expect("every backend is probed").probe
    }

    /// Applies `policy`: a mismatch is an error unless allowed (then a warning is printed to
    /// stderr and kept in `warnings`); each required capability must be present.
    pub fn enforce(&mut self, policy: &Policy) -> Result<()> {
        if let Err(e) = check_identity(&self.built, &self.loaded) {
            if !policy.allow_mismatch {
                return Err(e);
            }
            let warning = format!("{ALLOW_MISMATCH_ENV}=1: running despite a libtorch mismatch. {e}");
            // Once, on stderr, whether or not the app installed a tracing subscriber.
            eprintln!("\n!!!!!!!! WARNING !!!!!!!!\n{warning}\n!!!!!!!!!!!!!!!!!!!!!!!!\n");
            self.warnings.push(warning);
        }
        for &capability in &policy.required {
            check_capability(capability, self)?;
        }
        Ok(())
    }
}

/// Verifies the process at startup: gathers the [`Report`] and enforces `policy`.
///
/// Call it once, first thing in `main`. Errors: [`Error::LibtorchMismatch`] when the loaded
/// libtorch's bytes differ from the ones built against; [`Error::MissingCapability`] for each
/// required capability that is absent.
///
/// ```
/// use tch_streams::runtime::{verify, Policy};
/// let report = verify(&Policy::default()).expect("tests run on the libtorch they were built against");
/// assert_eq!(report.loaded.cpu.sha256, report.built.cpu_sha256);
/// ```
pub fn verify(policy: &Policy) -> Result<Report> {
    let mut report = Report::gather()?;
    report.enforce(policy)?;
    Ok(report)
}

/// Compares the loaded libraries with the build record by content. Pure; used by `enforce`.
///
/// Checked, in order: libtorch_cpu; every other libtorch library the process mapped (libc10,
/// libtorch, libc10_cuda, ..., found by file name wherever it was loaded from), which must be
/// in the record with the same bytes; libtorch_cuda, which must be loaded when the build had it.
pub fn check_identity(built: &BuildRecord, loaded: &LoadedLibtorch) -> Result<()> {
    let built_cpu = LibIdentity { path: built.cpu_lib_path(), sha256: built.cpu_sha256.clone() };
    if loaded.cpu.sha256 != built_cpu.sha256 {
        return Err(Error::LibtorchMismatch { built: built_cpu, loaded: loaded.cpu.clone() });
    }
    for lib in &loaded.libs {
        let name = fingerprint::file_name(&lib.path);
        match built.lib(name) {
            Some(b) if b.sha256 == lib.sha256 => {}
            Some(b) => {
                return Err(Error::LibtorchMismatch {
                    built: LibIdentity { path: format!("{}/{}", built.lib_dir, b.name), sha256: b.sha256.clone() },
                    loaded: lib.clone(),
                })
            }
            None => {
                return Err(Error::LibtorchMismatch {
                    built: LibIdentity { path: format!("{}/{name} (absent at build time)", built.lib_dir), sha256: "-".into() },
                    loaded: lib.clone(),
                })
            }
        }
    }
    match (&built.cuda_sha256, &loaded.cuda) {
        (Some(sha), None) => Err(Error::LibtorchMismatch {
            built: LibIdentity { path: built.cuda_lib_path().unwrap_or_default(), sha256: sha.clone() },
            loaded: LibIdentity { path: format!("(libtorch_cuda not loaded: {})", loaded.cuda_load), sha256: "-".into() },
        }),
        _ => Ok(()),
    }
}

fn identity_notes(built: &BuildRecord, loaded: &LoadedLibtorch) -> Vec<String> {
    let mut notes = Vec::new();
    let built_path = built.cpu_lib_path();
    if loaded.cpu.sha256 == built.cpu_sha256 && loaded.cpu.path != built_path {
        notes.push(format!(
            "libtorch_cpu loaded from {} (built against {}): same content, accepted",
            loaded.cpu.path, built_path
        ));
    }
    let moved: Vec<&str> = loaded
        .libs
        .iter()
        .filter(|l| l.path != loaded.cpu.path)
        .filter(|l| {
            let name = fingerprint::file_name(&l.path);
            l.path != format!("{}/{name}", built.lib_dir) && built.lib(name).is_some_and(|b| b.sha256 == l.sha256)
        })
        .map(|l| l.path.as_str())
        .collect();
    if !moved.is_empty() {
        notes.push(format!("also loaded from outside {}, same content, accepted: {}", built.lib_dir, moved.join(", ")));
    }
    if loaded.compiled_version != built.torch_version {
        notes.push(format!("shim headers say {} but the build record says {}", loaded.compiled_version, built.torch_version));
    }
    notes
}

/// Checks one capability against a gathered report.
pub fn check_capability(capability: Capability, report: &Report) -> Result<()> {
    let missing = |detail: String| Err(Error::MissingCapability { capability, detail });
    match capability {
        Capability::CudaPool => match report.probe(Backend::Cuda) {
            PoolProbe::Yes { .. } => Ok(()),
            other => missing(format!("CUDA {other}. It needs an NVIDIA GPU visible to this process and a libtorch built with CUDA (libtorch_cuda loaded).")),
        },
        Capability::MpsPool => match report.probe(Backend::Mps) {
            PoolProbe::Yes { .. } => Ok(()),
            other => missing(format!(
                "MPS {other}. Stock libtorch has no MPS stream pool: build the patched libtorch for its version \
                 (scripts/build-libtorch.sh on a Mac), set LIBTORCH to its prefix, rebuild."
            )),
        },
        Capability::Patched => match (&report.built.patch_id, &report.loaded.patch_marker) {
            (Some(b), Some(l)) if b == l => {
                // Exactly the id of the patch this crate ships for the loaded libtorch's version.
                let version = report.loaded.loaded_version.as_deref().unwrap_or(&report.loaded.compiled_version);
                match super::expected_mps_patch_id(version) {
                    Some(expected) if expected == *l => Ok(()),
                    Some(expected) => missing(format!(
                        "the loaded libtorch {version} carries patch {l}, but the patch this build ships for {version}                          (patches/v{version}) has id {expected}; rebuild libtorch with scripts/build-libtorch.sh --version {version}"
                    )),
                    None => missing(format!(
                        "the loaded libtorch is {version}, for which there is no MPS patch (patched versions: {})",
                        super::mps_patch_versions().collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            (Some(b), Some(l)) => missing(format!("the loaded libtorch carries patch {l} but this binary was built against {b}; rebuild, or load the matching library")),
            (Some(b), None) => missing(format!("this binary was built against patch {b} but the loaded libtorch exports no patch marker (a stock library was picked up; check LD_LIBRARY_PATH / DYLD_LIBRARY_PATH)")),
            (None, _) => missing("this binary was built against a stock libtorch (no tch-streams-patch-id stamp next to its lib dir); build the patched one with scripts/build-libtorch.sh and set LIBTORCH to its prefix".into()),
        },
    }
}
