//! What the running process really loaded, as opposed to what it was built against.

use super::{fingerprint, is_torch_library, load_backends, CudaLoad};
use crate::error::{Error, Result};
use crate::ffi;
use serde::Serialize;
use std::ffi::CStr;
use std::sync::OnceLock;

/// A library file, identified by real path and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibIdentity {
    /// Canonical path of the file.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// The libtorch this process mapped, found through the dynamic loader (not through env vars).
///
/// ```
/// let l = tch_streams::runtime::LoadedLibtorch::detect().unwrap();
/// assert!(l.cpu.path.contains("libtorch_cpu"));
/// assert!(l.libs.iter().any(|lib| lib.path.contains("libc10")));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedLibtorch {
    /// libtorch_cpu as mapped (dladdr on a symbol it defines).
    pub cpu: LibIdentity,
    /// libtorch_cuda as mapped, if the process loaded it.
    pub cuda: Option<LibIdentity>,
    /// Every libtorch library the process mapped (libc10, libtorch, libtorch_cpu, libc10_cuda,
    /// ...), wherever it came from, in the loader's order.
    pub libs: Vec<LibIdentity>,
    /// What happened when the library looked for libtorch_cuda.
    pub cuda_load: CudaLoad,
    /// `TORCH_VERSION` of the headers this crate's shim was compiled against.
    pub compiled_version: String,
    /// `TORCH_VERSION=` as reported by the loaded library's own build configuration.
    pub loaded_version: Option<String>,
    /// libtorch's build configuration string (`at::show_config()`).
    pub build_config: String,
    /// Whether CUDA is usable (driver present and at least one device).
    pub cuda_available: bool,
    /// Number of CUDA devices visible to the process.
    pub cuda_device_count: usize,
    /// Names of those devices, when the driver reports them.
    pub cuda_device_names: Vec<String>,
    /// Whether MPS is usable.
    pub mps_available: bool,
    /// Value of our MPS patch marker symbol, if the loaded library exports it.
    pub patch_marker: Option<String>,
}

impl LoadedLibtorch {
    /// Inspects the process once (hashing ~0.5 GB per library) and returns the cached answer
    /// on later calls. Safe to call from any thread.
    pub fn detect() -> Result<LoadedLibtorch> {
        static DETECTED: OnceLock<Result<LoadedLibtorch>> = OnceLock::new();
        DETECTED.get_or_init(Self::detect_uncached).clone()
    }

    fn detect_uncached() -> Result<LoadedLibtorch> {
        let cuda_load = load_backends().clone();
        let cpu_path = fingerprint::libtorch_cpu_path().ok_or_else(|| Error::Io {
            path: "libtorch_cpu".into(),
            message: "the dynamic loader could not name the file holding libtorch_cpu".into(),
        })?;
        let cpu = LibIdentity { sha256: fingerprint::sha256_of(&cpu_path)?, path: cpu_path };
        let mut libs = Vec::new();
        for path in fingerprint::mapped_objects() {
            if is_torch_library(fingerprint::file_name(&path)) && !libs.iter().any(|l: &LibIdentity| l.path == path) {
                libs.push(LibIdentity { sha256: fingerprint::sha256_of(&path)?, path });
            }
        }
        let cuda = libs.iter().find(|l| fingerprint::file_name(&l.path).starts_with("libtorch_cuda.")).cloned();
        let build_config = build_config();
        let loaded_version = build_config
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|tok| tok.strip_prefix("TORCH_VERSION="))
            .map(str::to_string);
        let cuda_device_count = tch::Cuda::device_count().max(0) as usize;
        Ok(LoadedLibtorch {
            cpu,
            cuda,
            libs,
            cuda_load,
            // SAFETY: returns a static NUL-terminated string.
            compiled_version: unsafe { CStr::from_ptr(ffi::tss_compiled_torch_version()) }
                .to_string_lossy()
                .into_owned(),
            loaded_version,
            build_config,
            cuda_available: tch::Cuda::is_available(),
            cuda_device_count,
            cuda_device_names: fingerprint::cuda_device_names(cuda_device_count),
            mps_available: tch::utils::has_mps(),
            patch_marker: fingerprint::patch_marker(),
        })
    }
}

fn build_config() -> String {
    let mut out: *mut libc::c_char = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer; on success it owns a malloc'ed string we free below.
    let status = unsafe { ffi::tss_build_config(&mut out) };
    if status != ffi::TssStatus::TSS_OK as i32 || out.is_null() {
        return format!("(unavailable: {})", crate::status::last_error());
    }
    // SAFETY: `out` is a NUL-terminated string from the shim, freed exactly once here.
    let s = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
    unsafe { ffi::tss_string_free(out) };
    s
}
