//! Loading the backends that live in their own libraries: libtorch_cuda.
//!
//! CUDA's guard implementation and hooks register from libtorch_cuda's static initialisers, so
//! they exist only once that library is mapped. Nothing in an app references it, and no link
//! flag of ours can reach an app's binary (cargo applies `rustc-link-arg` only to the package
//! that prints it), so the linker's `--as-needed` drops it. The library therefore opens it itself,
//! with `RTLD_GLOBAL`: first by name, which the loader resolves exactly as it would have resolved
//! a linked `-ltorch_cuda` (LD_LIBRARY_PATH, then the executable's RUNPATH), then beside the
//! libtorch_cpu the process mapped. Whichever file it gets, the verifier then compares its bytes
//! with the build record.
//!
//! When: once per process, (1) at start-up from an ELF constructor on Linux, before `main` and
//! before any `tch` call can ask libtorch whether CUDA exists (libtorch caches that answer), and
//! (2) as a fallback at every entry point of this crate ([`load_backends`] is idempotent).
//! `TCH_STREAMS_LOAD_CUDA=0` turns it off (CPU only, even on a GPU machine).

use serde::Serialize;
use std::fmt;
use std::sync::OnceLock;

/// Environment variable that, set to `0`, stops the library from loading libtorch_cuda.
pub const LOAD_CUDA_ENV: &str = "TCH_STREAMS_LOAD_CUDA";

/// What happened to libtorch_cuda when the library looked for it. Any thread may read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CudaLoad {
    /// It was already mapped (linked by the app, or loaded by someone else).
    AlreadyMapped {
        /// Real path of the mapped file.
        path: String,
    },
    /// The library opened it (`RTLD_GLOBAL`) from beside the loaded libtorch_cpu.
    Loaded {
        /// Real path of the opened file.
        path: String,
    },
    /// The loaded libtorch has no libtorch_cuda beside libtorch_cpu (a CPU-only build, or macOS).
    NotShipped {
        /// The directory looked in.
        dir: String,
    },
    /// It exists but the dynamic loader refused it; the loader's message.
    Failed {
        /// The file tried.
        path: String,
        /// `dlerror()`'s message.
        message: String,
    },
    /// `TCH_STREAMS_LOAD_CUDA=0` was set.
    Disabled,
}

impl fmt::Display for CudaLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaLoad::AlreadyMapped { path } => write!(f, "mapped at start ({path})"),
            CudaLoad::Loaded { path } => write!(f, "loaded by tch-streams ({path})"),
            CudaLoad::NotShipped { dir } => write!(f, "not shipped (no libtorch_cuda in {dir})"),
            CudaLoad::Failed { path, message } => write!(
                f,
                "could not be loaded: {message} (file {path}). Its CUDA dependencies are found through \
                 its own rpath inside the torch wheel; set LD_LIBRARY_PATH to the directories holding \
                 them (e.g. site-packages/nvidia/*/lib), or install the matching CUDA runtime"
            ),
            CudaLoad::Disabled => write!(f, "not loaded ({LOAD_CUDA_ENV}=0)"),
        }
    }
}

/// Makes sure every backend library of the loaded libtorch is mapped, once per process, and
/// says what happened. Safe to call from any thread, any number of times; cheap after the
/// first call.
///
/// Call it (or [`verify`](super::verify), which calls it) before the first `tch` call in a
/// program that does not link libtorch_cuda itself; on Linux a constructor already did it
/// before `main`, so this only matters where constructors do not run.
///
/// ```
/// use tch_streams::runtime::{load_backends, CudaLoad};
/// let outcome = load_backends();
/// if tch_streams::has_backend(tch_streams::Backend::Cuda) {
///     assert!(matches!(outcome, CudaLoad::AlreadyMapped { .. } | CudaLoad::Loaded { .. }));
/// }
/// ```
pub fn load_backends() -> &'static CudaLoad {
    static OUTCOME: OnceLock<CudaLoad> = OnceLock::new();
    OUTCOME.get_or_init(load_cuda)
}

/// Runs [`load_backends`] when the process starts, before `main` (and before any `tch` call that
/// could make libtorch cache "no CUDA"). A plain function pointer in `.init_array`: it only
/// queries the loader and calls `dlopen`, both allowed during start-up.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LOAD_AT_START: extern "C" fn() = {
    extern "C" fn load_at_start() {
        let _ = load_backends();
    }
    load_at_start
};

#[cfg(target_os = "linux")]
fn load_cuda() -> CudaLoad {
    use super::fingerprint;
    if std::env::var(LOAD_CUDA_ENV).is_ok_and(|v| v == "0") {
        return CudaLoad::Disabled;
    }
    if let Some(path) = fingerprint::mapped_library("libtorch_cuda.") {
        return CudaLoad::AlreadyMapped { path };
    }
    let loaded = |fallback: &str| CudaLoad::Loaded {
        path: fingerprint::mapped_library("libtorch_cuda.").unwrap_or_else(|| fallback.to_string()),
    };
    // 1. By name: the loader searches LD_LIBRARY_PATH, then the executable's RUNPATH (the app's
    //    one build.rs line), exactly as it would have for a linked `-ltorch_cuda`.
    let by_name = match open_global("libtorch_cuda.so") {
        Ok(()) => return loaded("libtorch_cuda.so"),
        Err(message) => message,
    };
    // 2. Beside the libtorch_cpu the process actually mapped.
    let dir = fingerprint::libtorch_cpu_path()
        .and_then(|p| std::path::Path::new(&p).parent().map(|d| d.display().to_string()))
        .unwrap_or_default();
    let beside = format!("{dir}/libtorch_cuda.so");
    if std::path::Path::new(&beside).is_file() {
        return match open_global(&beside) {
            Ok(()) => loaded(&beside),
            Err(message) => CudaLoad::Failed { path: beside, message },
        };
    }
    // Not found at all is a CPU-only libtorch; found but refused (a CUDA dependency missing) is
    // a failure worth its message.
    if by_name.starts_with("libtorch_cuda.so:") && by_name.contains("cannot open shared object file") {
        CudaLoad::NotShipped { dir }
    } else {
        CudaLoad::Failed { path: "libtorch_cuda.so".into(), message: by_name }
    }
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`; the loader's message on failure.
#[cfg(target_os = "linux")]
fn open_global(path: &str) -> Result<(), String> {
    let c_path = std::ffi::CString::new(path).map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: a NUL-terminated path; RTLD_GLOBAL so that libtorch's registries see the CUDA
    // implementations. The handle is kept for the life of the process on purpose (a backend is
    // never unloaded).
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns a thread-local NUL-terminated string or null.
    let err = unsafe { libc::dlerror() };
    Err(if err.is_null() {
        "unknown loader error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
    })
}

#[cfg(not(target_os = "linux"))]
fn load_cuda() -> CudaLoad {
    // macOS: MPS lives in libtorch_cpu itself, and there is no CUDA build.
    let dir = super::fingerprint::libtorch_cpu_path()
        .and_then(|p| std::path::Path::new(&p).parent().map(|d| d.display().to_string()))
        .unwrap_or_default();
    CudaLoad::NotShipped { dir }
}
