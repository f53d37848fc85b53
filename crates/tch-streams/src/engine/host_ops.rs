//! GPU workers run libtorch's CPU operations (joining a batch of host inputs into pinned memory,
//! splitting answers) on their own thread alone.
//!
//! libtorch runs a large CPU operation (a copy of tens of megabytes) as an OpenMP parallel
//! region, and an OpenMP team belongs to the thread that starts it, one team thread per core by
//! default. Four workers joining batches at once thus start four teams of one thread per core,
//! whose threads then spin waiting for the next region (OpenMP's default wait policy) on the
//! cores that the other workers, the completion threads and the app's own threads need. On a
//! 16-core H100 host, with inputs on the host and 64 clients, ResNet-18's defaults served 0.78
//! of one batched call from pinned memory (`limit-host`) this way, 1.04 with one-thread teams
//! for the whole process (`OMP_NUM_THREADS=1`), and 0.89 with this per-worker setting
//! (MobileNet v3: 0.90, 0.99, 1.08).
//!
//! On a GPU the engine's parallelism is its workers, so each GPU worker (and each thread of the
//! start-up trial, which runs the workers' code) sets its own team size to one. OpenMP keeps that
//! setting per thread: every other thread of the process, the app's included, keeps its own.
//! Workers on the CPU keep theirs too: there the model's own operations run on the worker's
//! thread and use the team.
//!
//! The setting goes to the OpenMP runtime that libtorch_cpu itself links (looked up among that
//! library's dependencies, not wherever the name is first found), so an app with an OpenMP of
//! its own is not touched. A libtorch without OpenMP is left as it is.

use std::ffi::CString;
use std::sync::OnceLock;

type SetNumThreads = unsafe extern "C" fn(libc::c_int);

/// `omp_set_num_threads` of the OpenMP runtime libtorch_cpu links, if it has one.
fn set_num_threads_fn() -> Option<SetNumThreads> {
    static FOUND: OnceLock<Option<usize>> = OnceLock::new();
    let addr = *FOUND.get_or_init(|| {
        let path = CString::new(crate::runtime::fingerprint::libtorch_cpu_path()?).ok()?;
        // SAFETY: RTLD_NOLOAD only looks up an object already mapped (libtorch_cpu is, for the
        // process has called into it) and adds a reference, never released: it stays mapped
        // for the life of the process anyway.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: dlsym on a handle searches that object and its dependencies; the name is
        // NUL-terminated.
        let sym = unsafe { libc::dlsym(handle, c"omp_set_num_threads".as_ptr()) };
        (!sym.is_null()).then_some(sym as usize)
    });
    // SAFETY: the symbol is OpenMP's `void omp_set_num_threads(int)`.
    addr.map(|a| unsafe { std::mem::transmute::<usize, SetNumThreads>(a) })
}

/// On a GPU `device`, [`serial_on_this_thread`]; elsewhere nothing. What each worker and each
/// trial thread calls on its own thread before it warms up.
pub(crate) fn serial_for_gpu_worker(device: tch::Device) {
    if matches!(device, tch::Device::Cuda(_)) && !serial_on_this_thread() {
        tracing::debug!("libtorch has no OpenMP runtime to size: its CPU operations keep their threads");
    }
}

/// Has libtorch run the CPU operations of the calling thread on this thread alone, from now on;
/// returns whether it now does (false: a libtorch without OpenMP, where nothing changed).
/// Other threads are not affected.
pub(crate) fn serial_on_this_thread() -> bool {
    // libtorch sizes each thread's team once, lazily, on the thread's first parallel operation
    // or first question about it: asked first, it will not overwrite the size set below.
    let _ = tch::get_num_threads();
    let Some(set) = set_num_threads_fn() else {
        return false;
    };
    // SAFETY: sets this thread's own OpenMP setting; any thread may call it at any time outside a
    // parallel region, which a worker's thread is not in here.
    unsafe { set(1) };
    tch::get_num_threads() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_runs_its_cpu_operations_alone() {
        let fresh = || std::thread::spawn(tch::get_num_threads).join().unwrap();
        let before = fresh();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let serial = serial_on_this_thread();
            let first = tch::get_num_threads();
            // Still so after an operation large enough to be parallel.
            let x = tch::Tensor::ones([1 << 22], (tch::Kind::Float, tch::Device::Cpu));
            let _ = x.sum(tch::Kind::Float);
            tx.send((serial, first, tch::get_num_threads())).unwrap();
        });
        let (serial, first, after) = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("watchdog");
        // The Linux and macOS libtorch builds this crate links use OpenMP.
        assert!(serial, "libtorch_cpu's OpenMP runtime was not found");
        assert_eq!((first, after), (1, 1));
        // Other threads keep libtorch's default.
        assert_eq!(fresh(), before);
        assert_eq!(before, tch::get_num_threads());
    }
}
