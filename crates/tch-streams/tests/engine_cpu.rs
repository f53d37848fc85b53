//! The engine on CPU (what CI runs): every mode against a serial reference, bad input, panics,
//! shutdown under load, a full queue, and tickets awaited without an async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, Output, Replicas};
use tch_streams::models::{Builtin, Model};

/// Row-independent, exactly rounded ops only: batched results must be bitwise equal.
fn affine() -> Model {
    Model::closure(|x: &Tensor| x.f_mul_scalar(3.0)?.f_add_scalar(1.0)?.f_mul(x))
}

fn reference(x: &Tensor) -> Tensor {
    (x * 3.0 + 1.0) * x
}

fn modes() -> Vec<(Batching, Replicas)> {
    let dynamic = Batching::Dynamic { max_batch: 16, max_wait: Duration::from_micros(300) };
    vec![(Batching::Off, Replicas::Shared), (Batching::Off, Replicas::PerWorker), (dynamic, Replicas::Shared), (dynamic, Replicas::PerWorker)]
}

/// 31 client threads × `per_client` requests × `rounds`, every result compared with `expected`.
fn stress(engine: &Arc<Engine>, per_client: usize, rounds: usize, exact: bool, make: fn(usize, usize, usize) -> Tensor, expected: &(dyn Fn(&Tensor) -> Tensor + Sync)) {
    for round in 0..rounds {
        std::thread::scope(|s| {
            for client in 0..31 {
                let engine = Arc::clone(engine);
                s.spawn(move || {
                    let inputs: Vec<Tensor> = (0..per_client).map(|i| make(round, client, i)).collect();
                    let outs = engine.infer_many(inputs.iter().map(Tensor::shallow_clone).collect());
                    for (x, y) in inputs.iter().zip(outs) {
                        let y = y.unwrap_or_else(|e| panic!("round {round} client {client}: {e}"));
                        let want = expected(x);
                        assert_eq!(y.size(), want.size());
                        if exact {
                            assert!(y.equal(&want), "round {round} client {client}: result differs from serial");
                        } else {
                            assert!(y.allclose(&want, 1e-4, 1e-5, false), "round {round} client {client}: not close to serial");
                        }
                    }
                });
            }
        });
    }
}

fn varied_rows(round: usize, client: usize, i: usize) -> Tensor {
    let rows = 1 + (client + i) % 3; // 1..3 rows: batches split back by size
    Tensor::arange((rows * 8) as i64, (Kind::Float, Device::Cpu)).view([rows as i64, 8]) * 0.25
        + (round * 100_000 + client * 1000 + i) as f64
}

#[test]
fn every_mode_matches_serial_bitwise_under_31_clients() {
    for (batching, replicas) in modes() {
        let engine = Arc::new(
            Engine::builder(affine()).devices(vec![Device::Cpu]).workers(3).batching(batching).replicas(replicas).build().unwrap(),
        );
        stress(&engine, 100, 10, true, varied_rows, &reference);
        engine.shutdown();
        let st = engine.stats();
        assert_eq!(st.completed, 31 * 100 * 10, "{batching:?} {replicas:?}");
        assert_eq!(st.failed, 0);
        assert_eq!(st.submitted, st.completed);
        if batching != Batching::Off {
            assert!(st.batch_sizes.keys().any(|&k| k > 1), "dynamic batching formed no batch: {:?}", st.batch_sizes);
        } else {
            assert_eq!(st.batch_sizes.keys().copied().collect::<Vec<_>>(), vec![1]);
        }
    }
}

#[test]
fn builtin_mlp_matches_serial_in_every_mode() {
    let serial = Builtin::SmallMlp.build(Device::Cpu);
    let _ng = tch::no_grad_guard();
    let expected = move |x: &Tensor| serial.forward(x).unwrap();
    for (batching, replicas) in modes() {
        let engine = Arc::new(
            Engine::builder(Model::Builtin(Builtin::SmallMlp))
                .devices(vec![Device::Cpu])
                .workers(2)
                .batching(batching)
                .replicas(replicas)
                .output(Output::Cpu)
                .build()
                .unwrap(),
        );
        stress(&engine, 4, 2, false, |r, c, i| Tensor::full([1, 512], ((r * 31 + c) * 4 + i) as f64 * 0.01, (Kind::Float, Device::Cpu)), &expected);
    }
}

#[test]
fn incompatible_shapes_go_to_separate_batches() {
    let engine = Engine::builder(affine())
        .devices(vec![Device::Cpu])
        .workers(1)
        .batching(Batching::Dynamic { max_batch: 64, max_wait: Duration::from_millis(5) })
        .build()
        .unwrap();
    let inputs: Vec<Tensor> = (0..40)
        .map(|i| {
            let cols = [4, 8, 16][i % 3];
            Tensor::full([1, cols], i as f64, (Kind::Float, Device::Cpu))
        })
        .collect();
    let outs = engine.infer_many(inputs.iter().map(Tensor::shallow_clone).collect());
    for (x, y) in inputs.iter().zip(outs) {
        assert!(y.unwrap().equal(&reference(x)));
    }
    assert_eq!(engine.stats().failed, 0);
}

#[test]
fn each_kind_of_bad_input_gets_its_error_and_the_engine_keeps_serving() {
    let engine = Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![Device::Cpu]).workers(2).build().unwrap();
    let good = || Tensor::ones([2, 512], (Kind::Float, Device::Cpu));
    let cases: Vec<(Tensor, &str)> = vec![
        (Tensor::ones([512], (Kind::Float, Device::Cpu)), "wrong rank"),
        (Tensor::ones([1, 256], (Kind::Float, Device::Cpu)), "wrong shape: expected [batch, 512]"),
        (Tensor::ones([1, 512], (Kind::Double, Device::Cpu)), "wrong dtype: expected Float"),
        (Tensor::ones([0, 512], (Kind::Float, Device::Cpu)), "empty batch"),
        (Tensor::ones([2, 3, 512], (Kind::Float, Device::Cpu)), "wrong rank"),
    ];
    for (bad, needle) in cases {
        match engine.infer(bad) {
            Err(EngineError::InvalidInput(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected InvalidInput({needle}), got {other:?}"),
        }
        assert_eq!(engine.infer(good()).unwrap().size(), vec![2, 512], "still serving after {needle}");
    }
    let st = engine.stats();
    assert_eq!((st.failed, st.completed), (5, 5));
}

#[test]
fn a_model_that_throws_fails_only_that_request_with_libtorchs_message() {
    let w = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
    // SAFETY of sharing `w`: only read.
    let w = Arc::new(std::sync::Mutex::new(w));
    let model = Model::closure(move |x: &Tensor| {
        let w = w.lock().unwrap().shallow_clone();
        x.f_matmul(&w)
    });
    let engine = Engine::builder(model)
        .devices(vec![Device::Cpu])
        .workers(1)
        .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(2) })
        .build()
        .unwrap();
    let bad = engine.submit(Tensor::ones([1, 5], (Kind::Float, Device::Cpu)));
    let good = engine.submit(Tensor::ones([1, 8], (Kind::Float, Device::Cpu)));
    match bad.wait() {
        Err(EngineError::Model(m)) => assert!(m.contains("cannot be multiplied"), "{m}"),
        other => panic!("expected a model error, got {other:?}"),
    }
    assert_eq!(good.wait().unwrap().sum(Kind::Float).double_value(&[]), 32.0);
}

#[test]
fn a_panicking_model_fails_its_requests_and_the_worker_is_replaced() {
    let model = Model::closure(|x: &Tensor| {
        if x.max().double_value(&[]) == 666.0 {
            panic!("poisoned input");
        }
        x.f_add_scalar(1.0)
    });
    for batching in [Batching::Off, Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(2) }] {
        let engine = Engine::builder(model.clone()).devices(vec![Device::Cpu]).workers(1).batching(batching).build().unwrap();
        let inputs: Vec<Tensor> =
            (0..30).map(|i| Tensor::full([1, 4], if i % 10 == 3 { 666.0 } else { i as f64 }, (Kind::Float, Device::Cpu))).collect();
        let outs = engine.infer_many(inputs);
        for (i, out) in outs.into_iter().enumerate() {
            if i % 10 == 3 {
                match out {
                    Err(EngineError::ModelPanicked(m)) => assert!(m.contains("poisoned input"), "{m}"),
                    other => panic!("request {i}: expected ModelPanicked, got {other:?}"),
                }
            } else {
                assert_eq!(out.unwrap().min().double_value(&[]), i as f64 + 1.0, "request {i}");
            }
        }
        let st = engine.stats();
        assert_eq!((st.completed, st.failed), (27, 3));
        assert_eq!(st.workers_replaced, 3, "{batching:?}");
        engine.shutdown();
    }
}

#[test]
fn shutdown_under_load_answers_every_request() {
    let engine = Arc::new(
        Engine::builder(affine())
            .devices(vec![Device::Cpu])
            .workers(2)
            .queue_capacity(32)
            .batching(Batching::Dynamic { max_batch: 4, max_wait: Duration::from_micros(100) })
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut ok, mut shut) = (0u64, 0u64);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) || i < 50 {
                    let x = Tensor::full([1, 4], (c * 10_000 + i) as f64, (Kind::Float, Device::Cpu));
                    let ticket = engine.submit(x.shallow_clone());
                    match ticket.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("a ticket was never answered")) {
                        Ok(y) => {
                            assert!(y.equal(&reference(&x)));
                            ok += 1;
                        }
                        Err(EngineError::ShutDown) => shut += 1,
                        Err(e) => panic!("unexpected {e}"),
                    }
                    i += 1;
                    if shut > 0 {
                        break;
                    }
                }
                (ok, shut)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    engine.shutdown();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut shut) = (0, 0);
    for c in clients {
        let (o, s) = c.join().unwrap();
        ok += o;
        shut += s;
    }
    let st = engine.stats();
    assert!(ok > 0);
    assert_eq!(st.completed, ok, "every accepted request completed");
    assert_eq!(st.failed, shut, "every refused request was failed explicitly");
    assert_eq!(st.submitted, st.completed + st.failed, "nothing unaccounted for");
    assert!(matches!(engine.infer(Tensor::ones([1, 4], (Kind::Float, Device::Cpu))), Err(EngineError::ShutDown)));
}

#[test]
fn a_full_queue_makes_try_submit_busy_and_submit_wait() {
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let g = Arc::clone(&gate);
    let model = Model::closure(move |x: &Tensor| {
        let (open, cv) = &*g;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        x.f_add_scalar(0.0)
    });
    let engine = Arc::new(Engine::builder(model).devices(vec![Device::Cpu]).workers(1).queue_capacity(2).build().unwrap());
    let x = || Tensor::ones([1, 2], (Kind::Float, Device::Cpu));
    let first = engine.submit(x()); // taken by the worker, which blocks at the gate
    std::thread::sleep(Duration::from_millis(100));
    let queued: Vec<_> = (0..2).map(|_| engine.try_submit(x()).expect("room for two")).collect();
    assert!(matches!(engine.try_submit(x()), Err(EngineError::Busy)));
    let e2 = Arc::clone(&engine);
    let blocked = std::thread::spawn(move || e2.submit(x()).wait());
    std::thread::sleep(Duration::from_millis(100));
    assert!(!blocked.is_finished(), "submit waits while the queue is full");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    assert!(first.wait().is_ok());
    for t in queued {
        assert!(t.wait().is_ok());
    }
    assert!(blocked.join().unwrap().is_ok());
    let st = engine.stats();
    assert_eq!((st.submitted, st.completed), (4, 4), "the Busy request was not counted");
}

#[test]
fn tickets_are_awaitable_without_an_async_runtime() {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let engine = Engine::builder(affine()).devices(vec![Device::Cpu]).workers(1).build().unwrap();
    let x = Tensor::full([2, 3], 2.0, (Kind::Float, Device::Cpu));
    let mut fut = Box::pin(engine.submit(x.shallow_clone()));
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let out = loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => break v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    };
    assert!(out.unwrap().equal(&reference(&x)));
}

#[test]
fn workers_spread_round_robin_over_a_device_list() {
    let engine = Engine::builder(affine()).devices(vec![Device::Cpu, Device::Cpu]).workers(4).build().unwrap();
    assert_eq!(engine.workers().len(), 4);
    assert!(engine.workers().iter().all(|w| w.device == Device::Cpu && w.stream.id() == 0));
    let outs = engine.infer_many((0..20).map(|i| Tensor::full([1, 2], i as f64, (Kind::Float, Device::Cpu))).collect());
    assert!(outs.iter().all(Result::is_ok));
}

#[test]
fn build_errors_are_explained() {
    let no_workers = Engine::builder(affine()).devices(vec![Device::Cpu]).workers(0).build();
    assert!(matches!(no_workers, Err(EngineError::Build(ref m)) if m.contains("workers(0) is out of range: expected 1..=1024")), "{:?}", no_workers.err());
    let graphs = Engine::builder(affine()).devices(vec![Device::Cpu]).cuda_graphs(true).build();
    match graphs {
        Err(EngineError::Build(m)) => assert!(m.contains("cuda-graphs") || m.contains("CUDA device"), "{m}"),
        _ => panic!("CUDA graphs on CPU must not build"),
    }
    let bad_device = Engine::builder(affine()).devices(vec![Device::Cuda(9)]).build();
    // The library's typed error is kept as the source, with its message.
    let err = bad_device.err().expect("cuda:9 must not build");
    assert!(matches!(err, EngineError::Setup(tch_streams::Error::DeviceIndex { index: 9, .. })), "{err:?}");
    assert!(err.to_string().contains("out of range"), "{err}");
    let warmup_fails = Engine::builder(Model::closure(|_x: &Tensor| Err::<Tensor, _>("cannot run")))
        .devices(vec![Device::Cpu])
        .input_shape(vec![4])
        .build();
    assert!(matches!(warmup_fails, Err(EngineError::Build(ref m)) if m.contains("warm-up with zero inputs [batch, 4] Float failed: cannot run")), "{:?}", warmup_fails.err());
}

#[test]
fn concurrent_clients_with_barrier_start() {
    // All clients start at once; every one of them gets its own values back.
    let engine = Arc::new(Engine::builder(affine()).devices(vec![Device::Cpu]).workers(2).build().unwrap());
    let barrier = Arc::new(Barrier::new(16));
    let hs: Vec<_> = (0..16)
        .map(|c| {
            let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
            std::thread::spawn(move || {
                b.wait();
                let x = Tensor::full([1, 3], c as f64, (Kind::Float, Device::Cpu));
                e.infer(x.shallow_clone()).unwrap().equal(&reference(&x))
            })
        })
        .collect();
    assert!(hs.into_iter().all(|h| h.join().unwrap()));
}
