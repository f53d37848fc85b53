// Which files are libtorch's own libraries. Shared by the build script (which records them) and
// the runtime verifier (which fingerprints them): `build.rs` includes this file, the crate
// declares it as a module. Plain std only.

/// Whether a file name is one of libtorch's own libraries (libc10*, libtorch*, libcaffe2*,
/// libshm*), as opposed to a third-party library a wheel bundles (libgomp), which the system
/// may legitimately provide instead.
///
/// ```
/// use tch_streams::runtime::is_torch_library;
/// assert!(is_torch_library("libc10_cuda.so"));
/// assert!(!is_torch_library("libgomp.so.1"));
/// ```
pub fn is_torch_library(file_name: &str) -> bool {
    let ours = ["libc10", "libtorch", "libcaffe2", "libshm"].iter().any(|p| file_name.starts_with(p));
    ours && (file_name.contains(".so") || file_name.ends_with(".dylib"))
}
