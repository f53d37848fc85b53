//! The engine on a CUDA GPU: streams, batching, CUDA graphs, several devices, inputs made on the
//! caller's stream. Ignored in CI; run on a GPU machine with
//! `cargo test --release --test engine_gpu -- --include-ignored --nocapture`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, Output, Replicas};
use tch_streams::models::{Builtin, Model};
use tch_streams::stream::{with_stream, Priority, Stream};

const GPU: Device = Device::Cuda(0);

fn affine() -> Model {
    Model::closure(|x: &Tensor| x.f_mul_scalar(3.0)?.f_add_scalar(1.0)?.f_mul(x))
}

fn dynamic() -> Batching {
    Batching::Dynamic { max_batch: 32, max_wait: Duration::from_micros(200) }
}

/// How a result is compared with its serial reference.
#[derive(Clone, Copy)]
enum Check {
    /// Bit for bit.
    Exact,
    /// Element-wise: |y - want| <= 1e-4 + 1e-3 |want| (the same kernels, other launch paths).
    Close,
    /// Against the answer's scale: max |y - want| <= 1e-4 max(1, max |want|). For a model run
    /// in batches of other sizes than serially: other GEMM tilings sum in another order, which
    /// moves elements near zero by more than `Close` allows while the answer is the same.
    Scaled,
}

/// 31 clients × `n` requests × `rounds`; every result compared with a serial reference.
fn stress(engine: &Arc<Engine>, n: usize, rounds: usize, sample: &[i64], expected: &(dyn Fn(&Tensor) -> Tensor + Sync), check: Check) {
    for round in 0..rounds {
        std::thread::scope(|s| {
            for c in 0..31usize {
                let engine = Arc::clone(engine);
                s.spawn(move || {
                    let _ng = tch::no_grad_guard();
                    let inputs: Vec<Tensor> = (0..n)
                        .map(|i| {
                            let mut shape = vec![1 + ((c + i) % 2) as i64];
                            shape.extend(sample);
                            Tensor::full(shape.as_slice(), ((round * 31 + c) * n + i) as f64 * 1e-3, (Kind::Float, Device::Cpu))
                        })
                        .collect();
                    let outs = engine.infer_many(inputs.iter().map(Tensor::shallow_clone).collect());
                    for (x, y) in inputs.iter().zip(outs) {
                        let y = y.unwrap_or_else(|e| panic!("client {c}: {e}")).to_device(Device::Cpu);
                        let want = expected(x);
                        let diff = || (&y - &want).abs().max().double_value(&[]);
                        match check {
                            Check::Exact => assert!(y.equal(&want), "client {c}: differs from serial"),
                            Check::Close => assert!(y.allclose(&want, 1e-3, 1e-4, false), "client {c}: max diff {}", diff()),
                            Check::Scaled => {
                                let scale = want.abs().max().double_value(&[]).max(1.0);
                                assert!(diff() <= 1e-4 * scale, "client {c}: max diff {} for answers up to {scale}", diff());
                            }
                        }
                    }
                });
            }
        });
    }
}

fn report(name: &str, engine: &Engine) {
    let st = engine.stats();
    println!(
        "{name}: completed {} failed {} replaced {}, batches {:?}, workers: {}",
        st.completed,
        st.failed,
        st.workers_replaced,
        st.batch_sizes,
        engine.workers().iter().map(|w| format!("{}@{:?}", w.stream, w.device)).collect::<Vec<_>>().join(" ")
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn streams_and_batching_match_serial_with_16_workers() {
    let cpu_affine = |x: &Tensor| (x * 3.0 + 1.0) * x;
    for (batching, replicas) in [(Batching::Off, Replicas::Shared), (dynamic(), Replicas::Shared), (dynamic(), Replicas::PerWorker)] {
        let engine = Arc::new(Engine::builder(affine()).devices(vec![GPU]).workers(16).batching(batching).replicas(replicas).build().unwrap());
        let ids: HashSet<i64> = engine.workers().iter().map(|w| w.stream.id()).collect();
        assert_eq!(ids.len(), 16, "each worker owns its own stream");
        assert!(!ids.contains(&0));
        stress(&engine, 40, 3, &[64], &cpu_affine, Check::Exact);
        engine.shutdown();
        assert_eq!(engine.stats().failed, 0);
        report(&format!("affine {batching:?} {replicas:?}"), &engine);
    }
    // The built-in MLP against the same model run serially on the GPU.
    let serial = Builtin::SmallMlp.build(GPU);
    let expected = move |x: &Tensor| {
        let _ng = tch::no_grad_guard();
        serial.forward(&x.to_device(GPU)).unwrap().to_device(Device::Cpu)
    };
    let engine = Arc::new(
        Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![GPU]).workers(16).batching(dynamic()).output(Output::Cpu).build().unwrap(),
    );
    stress(&engine, 20, 2, &[512], &expected, Check::Close);
    report("small-mlp dynamic", &engine);
}

/// Every visible GPU (cuda:0,cuda:1,...), or cuda:0 twice on a one-GPU machine (the same code
/// path, without the second device).
fn device_list() -> Vec<Device> {
    match tch::Cuda::device_count() {
        n if n >= 2 => (0..n as usize).map(Device::Cuda).collect(),
        _ => vec![GPU, GPU],
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn workers_spread_over_a_device_list() {
    let devices = device_list();
    let workers = 3 * devices.len();
    let engine = Arc::new(Engine::builder(affine()).devices(devices.clone()).workers(workers).batching(dynamic()).build().unwrap());
    assert_eq!(engine.workers().len(), workers);
    for w in engine.workers() {
        assert_eq!(w.device, devices[w.index % devices.len()], "worker {} is assigned round-robin", w.index);
        assert_eq!(w.stream.device(), w.device, "worker {}'s stream is on its own device", w.index);
    }
    stress(&engine, 20, 1, &[16], &|x: &Tensor| (x * 3.0 + 1.0) * x, Check::Exact);
    let label: Vec<String> = devices.iter().map(|d| format!("{d:?}")).collect();
    report(&label.join(","), &engine);
}

/// Ten rounds of 8 requests: a long producer on the caller's own pool stream (on the input's
/// device, `input_devices` in turn) writes the value the engine must see; every answer must be
/// computed from that value, not from what the buffer held before. Returns the (input device,
/// answer device) pairs seen.
fn waits_for_the_callers_stream(engine_devices: &[Device], workers: usize, input_devices: &[Device]) -> HashSet<(Device, Device)> {
    let engine = Engine::builder(affine()).devices(engine_devices.to_vec()).workers(workers).build().unwrap();
    let mut seen = HashSet::new();
    for round in 0..10 {
        let mut pending = Vec::new();
        for j in 0..8 {
            let device = input_devices[j % input_devices.len()];
            let mine = Stream::from_pool(device, Priority::Normal).unwrap();
            let (x, ticket) = with_stream(&mine, || {
                let a = Tensor::ones([4096, 4096], (Kind::Float, device)) / 4096.0;
                let mut busy = Tensor::ones([4096, 4096], (Kind::Float, device));
                for _ in 0..20 {
                    busy = busy.matmul(&a);
                }
                let mut x = Tensor::zeros([1, 1024], (Kind::Float, device));
                x.copy_(&(busy.narrow(0, 0, 1).narrow(1, 0, 1024) * 0.0 + round as f64));
                let t = engine.submit(x.shallow_clone());
                (x, t)
            })
            .unwrap();
            pending.push((device, x, ticket));
        }
        let v = round as f64;
        for (device, x, ticket) in pending {
            let y = ticket.wait().unwrap();
            seen.insert((device, y.device()));
            assert_eq!(y.min().double_value(&[]), (v * 3.0 + 1.0) * v, "round {round}, input on {device:?}");
            assert_eq!(y.max().double_value(&[]), (v * 3.0 + 1.0) * v);
            drop(x);
        }
    }
    println!("(input device, answer device) pairs: {seen:?}");
    seen
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn inputs_made_on_the_callers_stream_are_waited_for() {
    assert_eq!(waits_for_the_callers_stream(&[GPU], 4, &[GPU]), HashSet::from([(GPU, GPU)]));
}

/// Workers on cuda:0 and cuda:1, inputs made on both: each is served on the device it lies on.
/// Then workers on cuda:0 only (one worker for two devices) and inputs on cuda:1: the cuda:0
/// worker gathers and copies them with kernels on cuda:1's stream of its thread, which a wait on
/// its own stream would not order; it waits for their producer on the host instead.
#[test]
#[ignore = "needs two CUDA GPUs"]
fn inputs_are_served_where_they_lie_and_waited_for_across_devices() {
    assert!(tch::Cuda::device_count() >= 2, "this test needs two CUDA GPUs");
    let (g0, g1) = (GPU, Device::Cuda(1));
    assert_eq!(waits_for_the_callers_stream(&[g0, g1], 8, &[g0, g1]), HashSet::from([(g0, g0), (g1, g1)]));
    assert_eq!(waits_for_the_callers_stream(&[g0, g1], 1, &[g1]), HashSet::from([(g1, g0)]));
}

#[test]
#[ignore = "needs a CUDA GPU (and CUDA graphs in the build)"]
fn cuda_graphs_replay_equals_eager() {
    if !tch_streams::engine::CUDA_GRAPHS_BUILT {
        let err = Engine::builder(affine()).devices(vec![GPU]).cuda_graphs(true).build().err().unwrap();
        assert!(err.to_string().contains("no CUDA graph code"), "{err}");
        println!("built without CUDA graphs: refused as expected ({err})");
        return;
    }
    for builtin in [Builtin::SmallMlp, Builtin::Transformer] {
        let serial = builtin.build(GPU);
        let mut shape = vec![1];
        shape.extend(builtin.sample_shape());
        let expected = move |x: &Tensor| {
            let _ng = tch::no_grad_guard();
            serial.forward(&x.to_device(GPU)).unwrap().to_device(Device::Cpu)
        };
        let sample = builtin.sample_shape();
        // Graph replay against eager, request by request.
        let engine = Arc::new(
            Engine::builder(Model::Builtin(builtin))
                .devices(vec![GPU])
                .workers(8)
                .batching(Batching::Off)
                .cuda_graphs(true)
                .output(Output::Cpu)
                .build()
                .unwrap(),
        );
        stress(&engine, 10, 2, &sample, &expected, Check::Close);
        report(&format!("{builtin} graphs"), &engine);
        // The defaults: batches padded to buckets, a graph per bucket.
        let engine = Arc::new(Engine::builder(Model::Builtin(builtin)).devices(vec![GPU]).workers(8).output(Output::Cpu).build().unwrap());
        assert!(engine.config().cuda_graphs && !engine.config().buckets.is_empty(), "{}", engine.config());
        stress(&engine, 10, 2, &sample, &expected, Check::Scaled);
        report(&format!("{builtin} defaults (buckets, graphs)"), &engine);
    }
    let engine = Arc::new(Engine::builder(affine()).devices(vec![GPU]).workers(8).cuda_graphs(true).batching(dynamic()).build().unwrap());
    stress(&engine, 30, 2, &[64], &|x: &Tensor| (x * 3.0 + 1.0) * x, Check::Exact);
    report("affine graphs + batching", &engine);
}

/// A model that panics while a CUDA graph is being captured: the capture is ended (RAII), the
/// request fails alone, the worker is replaced, and the stream serves (and captures) again.
#[test]
#[ignore = "needs a CUDA GPU (and CUDA graphs in the build)"]
fn a_panic_during_graph_capture_ends_the_capture_and_the_engine_recovers() {
    if !tch_streams::engine::CUDA_GRAPHS_BUILT {
        println!("built without cuda-graphs: nothing to capture");
        return;
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    // Call 1 runs eagerly; call 2 is the capture (the shape's second sighting): it panics.
    let model = Model::closure(move |x: &Tensor| {
        if c.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("panic inside capture");
        }
        x.f_mul_scalar(3.0)?.f_add_scalar(1.0)?.f_mul(x)
    });
    let engine = Engine::builder(model).devices(vec![GPU]).workers(1).cuda_graphs(true).output(Output::Cpu).build().unwrap();
    let x = Tensor::full([4, 8], 2.0, (Kind::Float, GPU));
    assert!(engine.infer(x.shallow_clone()).is_ok());
    let err = engine.infer(x.shallow_clone()).unwrap_err();
    assert!(matches!(&err, EngineError::ModelPanicked(m) if m.contains("panic inside capture")), "{err:?}");
    for _ in 0..5 {
        let y = engine.infer(x.shallow_clone()).unwrap();
        assert_eq!(y.double_value(&[0, 0]), 14.0);
    }
    // Work on this thread's default stream is not caught in a capture either.
    let z = (&x * 2).to_device(Device::Cpu);
    assert_eq!(z.double_value(&[0, 0]), 4.0);
    engine.shutdown();
    let st = engine.stats();
    assert_eq!(st.submitted, st.completed + st.failed);
    assert_eq!((st.completed, st.failed, st.workers_replaced), (6, 1, 1));
}

/// Random sample inputs (as `run --model` makes them) with CUDA graphs on 4 workers: every worker
/// warms its buckets while others capture. Sample inputs drawn on the GPU would advance the
/// default generator during another worker's capture and fail the build; the engine asks for them
/// on the host. Also: graphs share one pool per worker, and memory is reported.
#[test]
#[ignore = "needs a CUDA GPU"]
fn random_sample_inputs_with_graphs_on_several_workers_build_and_serve() {
    tch_streams::stream::reset_peak_memory(GPU).unwrap();
    let engine = Engine::builder(Model::Builtin(Builtin::SmallMlp))
        .devices(vec![GPU])
        .workers(4)
        .batching(Batching::Dynamic { max_batch: 64, max_wait: Duration::from_micros(100) })
        .cuda_graphs(true)
        .sample_inputs(|rows, device| Ok(vec![Tensor::f_rand([rows as i64, 512], (Kind::Float, device)).map_err(|e| e.to_string())?]))
        .build()
        .expect("random sample inputs must not fail the build");
    let serial = Builtin::SmallMlp.build(GPU);
    let x = Tensor::rand([3, 512], (Kind::Float, GPU));
    let y = engine.infer(x.shallow_clone()).unwrap();
    let want = tch::no_grad(|| serial.forward(&x).unwrap());
    assert!(y.allclose(&want, 1e-3, 1e-4, false));
    let st = engine.stats();
    assert_eq!(st.memory.len(), 1, "{:?}", st.memory);
    let m = &st.memory[0];
    assert_eq!(m.device, "cuda:0");
    assert!(m.after_build.allocated > 0 && m.now.peak_reserved >= m.after_build.reserved, "{m:?}");
    println!("random sample inputs, graphs on 4 workers: {:?}", st.memory);
}

/// A budget smaller than the engine's memory is refused after start-up with both figures; the
/// defaults under a budget they fit report it with an estimate inside it; under a tight one the
/// calibration stops early (or the engine is refused, naming the budget).
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_memory_budget_is_fitted_or_refused_with_the_figures() {
    use tch_streams::engine::MemoryBudget;
    // Three builds with calibration and trial: a watchdog in case one never returns.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(300));
        eprintln!("a_memory_budget_is_fitted_or_refused_with_the_figures: still running after 300 s");
        std::process::exit(3);
    });
    let err = Engine::builder(Model::Builtin(Builtin::LargeMlp))
        .devices(vec![GPU])
        .workers(2)
        .batching(Batching::Off)
        .memory_budget(MemoryBudget::Bytes(1 << 20))
        .build()
        .err()
        .expect("a 1 MiB budget cannot hold the large MLP");
    let m = err.to_string();
    assert!(m.contains("memory:") && m.contains("over its budget of 1 MiB"), "{m}");
    // The defaults under a budget they fit: calibrated as usual, the budget and the estimate
    // reported, the estimate within the budget, and the engine serves.
    let engine = Engine::builder(Model::Builtin(Builtin::LargeMlp))
        .devices(vec![GPU])
        .memory_budget(MemoryBudget::Bytes(4 << 30))
        .output(Output::Cpu)
        .build()
        .unwrap();
    let config = engine.config();
    println!("4 GiB: {config}; {:?}", config.reasons);
    assert_eq!(config.memory_budget, Some(4 << 30));
    assert!(config.memory_estimate.is_some_and(|e| e > 0 && e <= 4 << 30), "{config:?}");
    assert!(config.reasons.iter().any(|r| r.starts_with("memory: estimated")), "{:?}", config.reasons);
    let y = engine.infer(Tensor::ones([3, 2048], (Kind::Float, Device::Cpu))).unwrap();
    assert_eq!(y.size(), vec![3, 2048]);
    // A budget the defaults' calibration runs past: it stops there and the choice comes down.
    let unbounded = config.calibration.last().map(|&(n, _)| n).unwrap_or(1);
    let tight = Engine::builder(Model::Builtin(Builtin::LargeMlp)).devices(vec![GPU]).memory_budget(MemoryBudget::Bytes(600 << 20)).build();
    match tight {
        Ok(e) => {
            let c = e.config();
            println!("600 MiB: {c}; {:?}", c.reasons);
            assert!(c.calibration.last().map(|&(n, _)| n).unwrap_or(1) <= unbounded);
            assert!(c.memory_estimate.is_some_and(|est| est <= 600 << 20), "{c:?}");
        }
        Err(e) => assert!(e.to_string().contains("budget of 600 MiB"), "{e}"),
    }
}
