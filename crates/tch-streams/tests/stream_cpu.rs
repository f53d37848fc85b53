//! The stream API on CPU (what CI can run): CPU's single stream, guards, events, errors, and the
//! rayon pool.

use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::stream::{
    bind_thread, record_stream, synchronize_device, with_stream, Event, Priority, Stream, StreamGuard, StreamThreadPool,
};
use tch_streams::{Backend, Error};

#[test]
fn every_cpu_stream_request_returns_the_single_stream() {
    let pool = Stream::from_pool(Device::Cpu, Priority::High).unwrap();
    assert_eq!(pool, Stream::default_for(Device::Cpu).unwrap());
    assert_eq!(pool, Stream::current(Device::Cpu).unwrap());
    assert_eq!((pool.id(), pool.device(), pool.backend()), (0, Device::Cpu, Backend::Cpu));
    assert_eq!(pool.query(), Ok(true));
    assert_eq!(pool.synchronize(), Ok(()));
    assert_eq!(pool.to_string(), "cpu/stream 0");
}

#[test]
fn cpu_guards_nest_and_leave_the_current_stream_unchanged() {
    let s = Stream::from_pool(Device::Cpu, Priority::Normal).unwrap();
    let outer = StreamGuard::new(&s).unwrap();
    let inner = StreamGuard::new(&s).unwrap();
    assert_eq!(outer.original_stream(), None, "a CPU guard has nothing to restore");
    assert_eq!(Stream::current(Device::Cpu).unwrap(), s);
    drop(inner);
    drop(outer);
    assert_eq!(Stream::current(Device::Cpu).unwrap(), s);
    assert_eq!(with_stream(&s, || 6 * 7).unwrap(), 42);
}

#[test]
fn with_stream_propagates_a_panic_and_the_thread_keeps_working() {
    let s = Stream::from_pool(Device::Cpu, Priority::Normal).unwrap();
    let caught = std::panic::catch_unwind(|| with_stream(&s, || panic!("inside the guard")));
    assert!(caught.is_err());
    assert_eq!(Stream::current(Device::Cpu).unwrap(), s);
    assert_eq!(bind_thread(&s).unwrap(), s);
}

#[test]
fn a_device_index_out_of_range_is_an_error_not_a_crash() {
    let visible = tch_streams::device_count(Backend::Cuda);
    for result in [
        Stream::from_pool(Device::Cuda(7), Priority::Normal),
        Stream::default_for(Device::Cuda(7)),
        Stream::current(Device::Cuda(7)),
    ] {
        match result {
            Err(Error::DeviceIndex { backend: Backend::Cuda, index: 7, count }) => assert_eq!(count, visible),
            other => panic!("expected DeviceIndex, got {other:?}"),
        }
    }
    let err = synchronize_device(Device::Cuda(7)).unwrap_err();
    assert!(err.to_string().contains("cuda device index 7 is out of range"), "{err}");
    // Indices that do not even fit c10's DeviceIndex are rejected before the FFI boundary.
    assert!(matches!(Stream::from_pool(Device::Cuda(300), Priority::Normal), Err(Error::DeviceIndex { index: 300, .. })));
}

#[test]
#[cfg(not(target_os = "macos"))]
fn mps_on_a_libtorch_without_it_is_backend_unavailable() {
    let err = Stream::from_pool(Device::Mps, Priority::Normal).unwrap_err();
    match &err {
        Error::BackendUnavailable { backend: Backend::Mps, detail } => assert!(detail.contains("no mps backend"), "{detail}"),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

#[test]
fn cpu_events_record_wait_query_and_time_host_work() {
    let s = Stream::from_pool(Device::Cpu, Priority::Normal).unwrap();
    let mut start = Event::with_timing(Device::Cpu).unwrap();
    let mut end = Event::with_timing(Device::Cpu).unwrap();
    start.record(&s).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    end.record(&s).unwrap();
    end.wait(&s).unwrap();
    end.synchronize().unwrap();
    assert_eq!(end.query(), Ok(true));
    let dt = start.elapsed(&end).unwrap();
    assert!(dt >= Duration::from_millis(20), "{dt:?}");
    // Events cross threads.
    let handle = std::thread::spawn(move || end.query());
    assert_eq!(handle.join().unwrap(), Ok(true));
}

#[test]
fn event_misuse_is_reported() {
    let plain = Event::new(Device::Cpu).unwrap();
    let timed = Event::with_timing(Device::Cpu).unwrap();
    let err = plain.elapsed(&timed).unwrap_err();
    assert!(err.to_string().contains("Event::with_timing"), "{err}");
    let err = timed.elapsed(&Event::with_timing(Device::Cpu).unwrap()).unwrap_err();
    assert!(err.to_string().contains("recorded"), "{err}");
}

#[test]
fn record_stream_checks_the_device() {
    let s = Stream::from_pool(Device::Cpu, Priority::Normal).unwrap();
    let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
    assert_eq!(record_stream(&t, &s), Ok(()));
    if let Ok(cuda_stream) = Stream::from_pool(Device::Cuda(0), Priority::Normal) {
        let err = record_stream(&t, &cuda_stream).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("tensor is on Cpu")), "{err}");
    }
}

#[test]
fn rayon_pool_threads_each_report_their_binding_and_run_without_grad() {
    let pool = StreamThreadPool::new(Device::Cpu, 3).unwrap();
    assert_eq!(pool.threads(), 3);
    assert_eq!(pool.bindings(), vec![Some(Stream::from_pool(Device::Cpu, Priority::Normal).unwrap()); 3]);
    assert_eq!(StreamThreadPool::current_stream(), None, "the test thread is not a pool thread");
    let names: Vec<String> = pool.rayon().broadcast(|_| std::thread::current().name().unwrap_or("").to_string());
    assert_eq!(names, vec!["tch-streams-0", "tch-streams-1", "tch-streams-2"]);
    use rayon::prelude::*;
    let out: Vec<(f64, bool)> = pool.install(|| {
        (0..12)
            .into_par_iter()
            .map(|i| {
                let w = Tensor::full([4], 1.0, (Kind::Float, Device::Cpu)).set_requires_grad(true);
                let y = &w * (i as f64);
                (y.sum(Kind::Float).double_value(&[]), y.requires_grad())
            })
            .collect()
    });
    for (i, (sum, grad)) in out.into_iter().enumerate() {
        assert_eq!(sum, 4.0 * i as f64);
        assert!(!grad, "pool threads run with grad disabled");
    }
}

#[test]
fn rayon_pool_rejects_zero_threads() {
    let err = StreamThreadPool::new(Device::Cpu, 0).err().expect("error");
    assert!(err.to_string().contains("at least one thread"), "{err}");
}

#[test]
fn releasing_thread_workspaces_is_a_no_op_on_cpu_and_an_error_without_the_device() {
    assert_eq!(tch_streams::stream::release_thread_workspaces(Device::Cpu).unwrap(), 0);
    if tch::Cuda::device_count() == 0 {
        let err = tch_streams::stream::release_thread_workspaces(Device::Cuda(0)).unwrap_err();
        // A CUDA libtorch on a machine without a GPU: no device 0. (A build without the CUDA
        // shim says Unsupported instead.)
        assert!(
            matches!(err, Error::DeviceIndex { backend: Backend::Cuda, index: 0, count: 0 } | Error::Unsupported { backend: Backend::Cuda, .. }),
            "{err:?}"
        );
    }
}
