//! What this binary was built against, recorded by `build.rs` as compile-time constants.

use serde::Serialize;

include!(concat!(env!("OUT_DIR"), "/built_libs.rs"));

/// One libtorch library of the lib dir the build linked, by file name and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuiltLib {
    /// File name in the lib dir (e.g. `libc10.so`).
    pub name: String,
    /// SHA-256 of its bytes at build time, hex.
    pub sha256: String,
}

/// The libtorch the build linked: where, which version, which exact bytes, which patch.
///
/// ```
/// let r = tch_streams::runtime::BuildRecord::current();
/// assert_eq!(r.cpu_sha256.len(), 64);
/// assert!(["2.11", "2.12", "2.13"].iter().any(|v| r.torch_version.starts_with(v)));
/// // Every libtorch library of the lib dir is recorded, libc10 included.
/// assert!(r.libs.iter().any(|l| l.name.starts_with("libc10.")));
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
    /// Every libtorch library in `lib_dir` at build time, sorted by name.
    pub libs: Vec<BuiltLib>,
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
            libs: BUILT_LIBS.iter().map(|(name, sha)| BuiltLib { name: name.to_string(), sha256: sha.to_string() }).collect(),
        }
    }

    /// The recorded library with this file name.
    pub fn lib(&self, name: &str) -> Option<&BuiltLib> {
        self.libs.iter().find(|l| l.name == name)
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
