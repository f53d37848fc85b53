//! Which library files the process really mapped, and their content hashes.
//!
//! Paths come from the dynamic loader itself (dladdr on an address inside the library, or the
//! loader's list of mapped objects), never from environment variables or build-time guesses.

use crate::error::{Error, Result};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::io::Read;
use std::sync::OnceLock;

/// Real (symlink-resolved) path of the shared object mapped at address `addr` (a number: it is
/// looked up in the loader's tables, never dereferenced).
pub fn path_of_address(addr: usize) -> Option<String> {
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only looks the address up and writes `info`, a valid out-pointer.
    let found = unsafe { libc::dladdr(addr as *const c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, valid while mapped.
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    Some(canonical(&name))
}

/// Real path of the first mapped object whose file name starts with `stem` (e.g. "libtorch_cuda.").
pub fn mapped_library(stem: &str) -> Option<String> {
    mapped_objects().into_iter().find(|p| file_name(p).starts_with(stem))
}

/// Real path of the file holding libtorch_cpu, as the loader mapped it.
pub fn libtorch_cpu_path() -> Option<String> {
    // SAFETY: returns the address of a function defined in libtorch_cpu; no dereference.
    let anchor = unsafe { crate::ffi::tss_libtorch_cpu_anchor() };
    path_of_address(anchor as usize)
}

/// The file-name part of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Real paths of every shared object the process has mapped, in the loader's order.
#[cfg(target_os = "linux")]
pub fn mapped_objects() -> Vec<String> {
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut c_void) -> libc::c_int {
        // SAFETY: `data` is the &mut Vec passed below; `info` is valid for this callback.
        let names = unsafe { &mut *(data as *mut Vec<String>) };
        let name_ptr = unsafe { (*info).dlpi_name };
        if !name_ptr.is_null() {
            // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
            let name = unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy();
            if !name.is_empty() {
                names.push(name.into_owned());
            }
        }
        0
    }
    let mut names: Vec<String> = Vec::new();
    // SAFETY: the callback only touches `names`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut names as *mut Vec<String> as *mut c_void) };
    names.iter().map(|p| canonical(p)).collect()
}

/// Real paths of every image the process has mapped, in dyld's order.
#[cfg(target_os = "macos")]
pub fn mapped_objects() -> Vec<String> {
    extern "C" {
        fn _dyld_image_count() -> u32;
        fn _dyld_get_image_name(index: u32) -> *const libc::c_char;
    }
    let mut names = Vec::new();
    // SAFETY: dyld's image list is readable from any thread; names are NUL-terminated.
    unsafe {
        for i in 0.._dyld_image_count() {
            let p = _dyld_get_image_name(i);
            if !p.is_null() {
                names.push(canonical(&CStr::from_ptr(p).to_string_lossy()));
            }
        }
    }
    names
}

fn canonical(path: &str) -> String {
    std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| path.to_string())
}

/// SHA-256 of a file, hex. Computed once per path per process, then served from memory.
pub fn sha256_of(path: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(h) = cache.lock().get(path) {
        return Ok(h.clone());
    }
    let io = |e: std::io::Error| Error::Io { path: path.to_string(), message: e.to_string() };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    cache.lock().insert(path.to_string(), hex.clone());
    Ok(hex)
}

/// The value of our MPS patch marker, if the process has a symbol `tch_streams_mps_patch_id`.
pub fn patch_marker() -> Option<String> {
    // SAFETY: dlsym with RTLD_DEFAULT searches every loaded object; the name is NUL-terminated.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"tch_streams_mps_patch_id".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: the patched libtorch defines this symbol as `const char* (void)` returning a
    // static NUL-terminated string.
    let f: extern "C" fn() -> *const libc::c_char = unsafe { std::mem::transmute(sym) };
    let p = f();
    if p.is_null() {
        return None;
    }
    // SAFETY: see above: a static string.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Names of the visible CUDA devices, read through the CUDA driver libtorch already loaded.
/// Empty when the driver is not loaded (no GPU) or does not answer.
pub fn cuda_device_names(count: usize) -> Vec<String> {
    type GetDevice = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type GetName = unsafe extern "C" fn(*mut libc::c_char, i32, i32) -> i32;
    // SAFETY: RTLD_NOLOAD never loads anything new: we only look at a driver already mapped.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return Vec::new();
    }
    // SAFETY: symbol lookups on a valid handle.
    let (get_dev, get_name) = unsafe {
        (libc::dlsym(handle, c"cuDeviceGet".as_ptr()), libc::dlsym(handle, c"cuDeviceGetName".as_ptr()))
    };
    let mut names = Vec::new();
    if !get_dev.is_null() && !get_name.is_null() {
        // SAFETY: these driver entry points have exactly these C signatures (CUdevice is int).
        let (get_dev, get_name) = unsafe {
            (std::mem::transmute::<*mut c_void, GetDevice>(get_dev), std::mem::transmute::<*mut c_void, GetName>(get_name))
        };
        for ordinal in 0..count as i32 {
            let mut dev = 0;
            let mut buf = [0 as libc::c_char; 256];
            // SAFETY: valid out-pointers; the driver was initialised by libtorch's CUDA runtime.
            let ok = unsafe { get_dev(&mut dev, ordinal) == 0 && get_name(buf.as_mut_ptr(), buf.len() as i32, dev) == 0 };
            if ok {
                // SAFETY: the driver NUL-terminates within the buffer.
                names.push(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned());
            }
        }
    }
    // SAFETY: balances the dlopen above (RTLD_NOLOAD still takes a reference).
    unsafe { libc::dlclose(handle) };
    names
}
