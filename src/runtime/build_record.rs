//! What this binary was built against, recorded by `build.rs` as compile-time constants.

use serde::Serialize;

/// The libtorch the build linked: where, which version, which exact bytes, which patch.
///
/// ```
/// let r = tch_streams::runtime::BuildRecord::current();
/// assert_eq!(r.cpu_sha256.len(), 64);
/// assert!(r.torch_version.starts_with("2.11"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildRecord {
    /// Canonical libtorch lib directory the build linked and put in the rpath.
    pub lib_dir: String,
    /// `TORCH_VERSION` from the headers the shim compiled against.
    pub torch_version: String,
    /// SHA-256 of libtorch_cpu at build time.
    pub cpu_sha256: String,
    /// SHA-256 of libtorch_cuda at build time, when that library existed.
    pub cuda_sha256: Option<String>,
    /// Our MPS stream-pool patch id, when the linked libtorch carried its stamp.
    pub patch_id: Option<String>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl BuildRecord {
    /// The record compiled into this binary.
    pub fn current() -> BuildRecord {
        BuildRecord {
            lib_dir: env!("TCH_STREAMS_BUILT_LIB_DIR").to_string(),
            torch_version: env!("TCH_STREAMS_BUILT_TORCH_VERSION").to_string(),
            cpu_sha256: env!("TCH_STREAMS_BUILT_CPU_SHA256").to_string(),
            cuda_sha256: non_empty(env!("TCH_STREAMS_BUILT_CUDA_SHA256")),
            patch_id: non_empty(env!("TCH_STREAMS_BUILT_PATCH_ID")),
        }
    }

    /// Path of the libtorch_cpu file the build hashed.
    pub fn cpu_lib_path(&self) -> String {
        let so = if cfg!(target_os = "macos") { "dylib" } else { "so" };
        format!("{}/libtorch_cpu.{so}", self.lib_dir)
    }

    /// Path of the libtorch_cuda file the build hashed, if it had one.
    pub fn cuda_lib_path(&self) -> Option<String> {
        self.cuda_sha256.as_ref().map(|_| format!("{}/libtorch_cuda.so", self.lib_dir))
    }
}
