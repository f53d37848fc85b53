//! The engine under faults and bad numbers (CPU): each test reproduces one way it used to hang,
//! lose count or panic, and fails, rather than hangs, if that comes back. Every test runs under a
//! watchdog and checks submitted = completed + failed where an engine served.

mod common;

use common::{accounted, watchdog};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError};
use tch_streams::models::Model;
use tch_streams::stream::{record_stream, Stream};


fn x() -> Tensor {
    Tensor::ones([1, 4], (Kind::Float, Device::Cpu))
}

fn build_err(r: Result<Engine, EngineError>) -> String {
    match r {
        Err(EngineError::Build(m)) => m,
        Err(other) => panic!("expected a Build error, got {other:?}"),
        Ok(_) => panic!("expected a Build error, got an engine"),
    }
}

/// 1. A panic during warm-up, or warm-up inputs that cannot be made, end `build()` with an error.
#[test]
fn a_warm_up_panic_or_impossible_warm_up_input_is_a_build_error_not_a_hang() {
    watchdog(60, || {
        let panics = Model::closure(|_x: &Tensor| -> Result<Tensor, String> { panic!("boom in warm-up") });
        let m = build_err(Engine::builder(panics).devices(vec![Device::Cpu]).workers(3).input_shape(vec![4]).build());
        assert!(m.contains("panicked") && m.contains("boom in warm-up"), "{m}");
        let ok = || Model::closure(|x: &Tensor| x.f_add_scalar(1.0));
        let m = build_err(Engine::builder(ok()).devices(vec![Device::Cpu]).input_shape(vec![-1]).build());
        assert!(m.contains("sample shape [-1] is invalid"), "{m}");
        let m = build_err(Engine::builder(ok()).devices(vec![Device::Cpu]).input_shape(vec![1 << 40]).build());
        assert!(m.contains("at most 2^32 elements"), "{m}");
    });
}

/// 2 and 6. A model panics, then its replacement's warm-up panics: the device has no worker.
/// Queued requests fail (and are counted), new ones are refused, shutdown returns.
#[test]
fn a_device_whose_workers_all_died_fails_its_queue_and_refuses_new_requests() {
    watchdog(60, || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        // Calls 1-2: the first worker's warm-up. Call 3 (the first request) and every later
        // call (the replacement's warm-up) panic.
        let model = Model::closure(move |x: &Tensor| {
            if c.fetch_add(1, Ordering::SeqCst) >= 2 {
                panic!("poisoned");
            }
            x.f_add_scalar(1.0)
        });
        // Batching off: the defaults would also run the model at build (batch-independence
        // check, calibration), which this count of calls leaves out.
        let engine =
            Engine::builder(model).devices(vec![Device::Cpu]).workers(1).batching(Batching::Off).input_shape(vec![4]).build().unwrap();
        let tickets: Vec<_> = (0..4).map(|_| engine.submit(x())).collect();
        let outcomes: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
        assert!(matches!(outcomes[0], Err(EngineError::ModelPanicked(ref m)) if m.contains("poisoned")), "{:?}", outcomes[0]);
        for o in &outcomes[1..] {
            assert!(matches!(o, Err(EngineError::NoWorkers(_)) | Err(EngineError::WorkerDied)), "{o:?}");
        }
        let refused = engine.infer(x()).unwrap_err();
        assert!(matches!(&refused, EngineError::NoWorkers(m) if m.contains("Cpu")), "{refused:?}");
        assert!(matches!(engine.try_submit(x()), Err(EngineError::NoWorkers(_))));
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.submitted, st.completed, st.failed), (5, 0, 5));
    });
}

/// 3. `max_wait: Duration::MAX` means "until the batch is full"; it never overflows.
#[test]
fn an_unbounded_batching_wait_serves_full_batches_and_shuts_down() {
    watchdog(60, || {
        let engine = Engine::builder(Model::closure(|x: &Tensor| x.f_mul_scalar(2.0)))
            .devices(vec![Device::Cpu])
            .workers(1)
            .batching(Batching::Dynamic { max_batch: 4, max_wait: Duration::MAX })
            .build()
            .unwrap();
        let tickets: Vec<_> = (0..4).map(|_| engine.submit(x())).collect();
        for t in tickets {
            assert_eq!(t.wait().unwrap().sum(Kind::Float).double_value(&[]), 8.0);
        }
        let lone = engine.submit(x()); // no company: served when shutdown closes the queue
        engine.shutdown();
        assert!(lone.wait().is_ok());
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (5, 0));
    });
}

/// 4. A model that blocks forever: `shutdown_timeout` returns, fails what is queued with a
/// distinct error and reports the stuck worker.
#[test]
fn shutdown_timeout_returns_despite_a_model_that_never_returns() {
    watchdog(60, || {
        let model = Model::closure(|x: &Tensor| {
            if x.double_value(&[0, 0]) > 1.0 {
                loop {
                    std::thread::park(); // stuck for good (this thread is left behind)
                }
            }
            x.f_add_scalar(1.0)
        });
        let engine = Engine::builder(model).devices(vec![Device::Cpu]).workers(1).build().unwrap();
        assert!(engine.infer(x()).is_ok());
        let _stuck = engine.submit(x() * 5.0);
        std::thread::sleep(Duration::from_millis(100)); // the worker takes it and never returns
        let queued = engine.submit(x());
        assert!(!engine.shutdown_timeout(Duration::from_millis(300)), "the worker cannot finish");
        assert_eq!(queued.wait(), Err(EngineError::ShutdownTimeout));
        let st = engine.stats();
        assert_eq!(st.workers_detached, 1);
        assert_eq!((st.submitted, st.completed, st.failed), (3, 1, 1), "the stuck request is still in the model");
        std::mem::forget(engine); // dropping would wait for the stuck worker again
    });
}

/// 5. Two concurrent shutdowns: the second waits for the first; nothing accepted is failed.
#[test]
fn concurrent_shutdowns_let_every_accepted_request_complete() {
    watchdog(60, || {
        let model = Model::closure(|x: &Tensor| {
            std::thread::sleep(Duration::from_millis(2));
            x.f_add_scalar(1.0)
        });
        let engine = Arc::new(Engine::builder(model).devices(vec![Device::Cpu]).workers(1).build().unwrap());
        let tickets: Vec<_> = (0..50).map(|_| engine.submit(x())).collect();
        let barrier = Arc::new(Barrier::new(2));
        let both: Vec<_> = (0..2)
            .map(|_| {
                let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    b.wait();
                    e.shutdown();
                    e.stats().completed
                })
            })
            .collect();
        for h in both {
            assert_eq!(h.join().unwrap(), 50, "a shutdown returned before the queue was served");
        }
        assert!(tickets.into_iter().all(|t| t.wait().is_ok()));
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (50, 0));
    });
}

/// 7. `try_submit` never waits, even while a submitter is blocked on a full queue and a shutdown
/// is in progress.
#[test]
fn try_submit_never_waits_behind_a_blocked_submitter_or_a_shutdown() {
    watchdog(60, || {
        let model = Model::closure(|x: &Tensor| {
            std::thread::sleep(Duration::from_millis(1500));
            x.f_add_scalar(1.0)
        });
        let engine = Arc::new(Engine::builder(model).devices(vec![Device::Cpu]).workers(1).queue_capacity(1).warmup(false).build().unwrap());
        let first = engine.submit(x()); // taken by the worker
        std::thread::sleep(Duration::from_millis(100));
        let queued = engine.submit(x()); // fills the queue
        let e2 = Arc::clone(&engine);
        let blocked = std::thread::spawn(move || e2.submit(x()).wait()); // waits for room
        std::thread::sleep(Duration::from_millis(100));
        let e3 = Arc::clone(&engine);
        let stopping = std::thread::spawn(move || e3.shutdown());
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let r = engine.try_submit(x());
        let waited = t0.elapsed();
        assert!(matches!(r, Err(EngineError::ShutDown) | Err(EngineError::Busy)), "{:?}", r.err());
        // The model takes 1.5 s per request: returning well before that means it did not wait.
        assert!(waited < Duration::from_millis(750), "try_submit waited {waited:?}");
        stopping.join().unwrap();
        assert!(first.wait().is_ok() && queued.wait().is_ok());
        assert!(matches!(blocked.join().unwrap(), Ok(_) | Err(EngineError::ShutDown)));
        accounted(&engine.stats());
    });
}

/// 11. Library values that used to panic or allocate absurdly are refused with named errors.
#[test]
fn bad_builder_values_and_calls_are_errors_not_panics() {
    watchdog(60, || {
        let m = || Model::closure(|x: &Tensor| x.f_add_scalar(1.0));
        let e = build_err(Engine::builder(m()).devices(vec![Device::Vulkan]).build());
        assert!(e.contains("Vulkan is not served"), "{e}");
        let e = build_err(Engine::builder(m()).devices(vec![Device::Cpu]).queue_capacity(usize::MAX).build());
        assert!(e.contains("queue_capacity(18446744073709551615) is out of range: expected 1..=16777216"), "{e}");
        let e = build_err(Engine::builder(m()).devices(vec![Device::Cpu]).queue_capacity(100_000_000).build());
        assert!(e.contains("queue_capacity(100000000) is out of range"), "{e}");
        let e = build_err(Engine::builder(m()).devices(vec![Device::Cpu]).workers(100_000).build());
        assert!(e.contains("workers(100000) is out of range: expected 1..=1024"), "{e}");
        let e = build_err(
            Engine::builder(m()).devices(vec![Device::Cpu]).batching(Batching::Dynamic { max_batch: 1 << 63, max_wait: Duration::ZERO }).build(),
        );
        assert!(e.contains("max_batch 9223372036854775808 is out of range"), "{e}");
        // The largest capacity builds at once: it is a count, nothing is allocated for it.
        let engine = Engine::builder(m()).devices(vec![Device::Cpu]).workers(1).queue_capacity(1 << 24).build().unwrap();
        let t = engine.submit(x());
        assert!(t.wait_timeout(Duration::MAX).is_ok_and(|o| o.is_ok()), "Duration::MAX is no timeout");
        assert!(engine.submit(x()).wait_outputs_timeout(Duration::MAX).is_ok());
        let err = engine.infer(Tensor::new()).unwrap_err();
        assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("undefined")), "{err:?}");
        engine.shutdown();
        accounted(&engine.stats());
        let s = Stream::default_for(Device::Cpu).unwrap();
        let err = record_stream(&Tensor::new(), &s).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
        // 17. Device-index messages give the real range.
        let err = Stream::default_for(Device::Cuda(99)).unwrap_err().to_string();
        assert!(!err.contains("0..0") && (err.contains("sees no cuda device") || err.contains("use")), "{err}");
    });
}

/// 13. A start that fails part-way leaves no worker running: every started thread is joined
/// (their clones of the model are gone) before `build()` returns.
#[test]
fn a_partial_start_is_torn_down_completely() {
    watchdog(60, || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let witness = Arc::new(());
        let w = Arc::clone(&witness);
        // Two warm-up calls per worker: the third worker's warm-up fails.
        let model = Model::closure(move |x: &Tensor| {
            let _keep = &w;
            if c.fetch_add(1, Ordering::SeqCst) >= 4 {
                std::thread::sleep(Duration::from_millis(50));
                return Err("third worker cannot start".to_string());
            }
            Ok(x.shallow_clone())
        });
        let m = build_err(Engine::builder(model).devices(vec![Device::Cpu]).workers(3).replicas(tch_streams::engine::Replicas::Shared).input_shape(vec![4]).build());
        assert!(m.contains("third worker cannot start"), "{m}");
        assert_eq!(Arc::strong_count(&witness), 1, "a worker (or the model) outlived the failed build");
    });
}
