//! Reliability on a CUDA GPU: thread churn, out-of-memory isolation, dropped tickets, memory back
//! to baseline, a sanitizer stress target, and a soak. Ignored in CI; on a GPU machine:
//! `cargo test --release --test reliability_gpu -- --include-ignored --nocapture --test-threads=1`
//! (`TCH_STREAMS_SOAK_SECS=600` for the 10-minute soak; default 30 s).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, Output};
use tch_streams::models::{Builtin, Model};
use tch_streams::stream::{memory_stats, release_thread_workspaces, synchronize_device, with_stream, Priority, Stream, StreamGuard};

const GPU: Device = Device::Cuda(0);
const MIB: i64 = 1 << 20;

fn allocated() -> i64 {
    synchronize_device(GPU).unwrap();
    memory_stats(GPU).unwrap().allocated
}

fn affine() -> Model {
    Model::closure(|x: &Tensor| x.f_mul_scalar(3.0)?.f_add_scalar(1.0)?.f_mul(x))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn thread_churn_200_threads_bind_pool_streams() {
    let before = allocated();
    let mut ids = HashSet::new();
    for wave in 0..4 {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let v = (wave * 50 + i) as f64;
                std::thread::spawn(move || {
                    let _ng = tch::no_grad_guard();
                    let s = Stream::from_pool(GPU, Priority::Normal).unwrap();
                    let y = with_stream(&s, || (Tensor::full([1 << 16], v, (Kind::Float, GPU)) * 2.0).sum(Kind::Float)).unwrap();
                    s.synchronize().unwrap();
                    (y.double_value(&[]), s.id())
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (sum, id) = h.join().unwrap();
            assert_eq!(sum, 2.0 * (wave * 50 + i) as f64 * 65536.0);
            ids.insert(id);
        }
    }
    let after = allocated();
    println!("churn: 200 threads, {} distinct pool streams, allocated before {before} after {after} bytes", ids.len());
    assert!(ids.len() >= 32, "threads spread over the whole pool");
    assert_eq!(after, before, "no memory kept by finished threads");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_out_of_memory_request_fails_alone_and_the_next_is_served() {
    let model = Model::closure(|x: &Tensor| {
        if x.max().double_value(&[]) == 7.0 {
            // 4 TiB: far beyond any GPU; libtorch raises its out-of-memory error.
            let huge = Tensor::f_empty([1i64 << 40], (Kind::Float, x.device()))?;
            return huge.f_add_scalar(1.0);
        }
        x.f_add_scalar(1.0)
    });
    let engine = Engine::builder(model).devices(vec![GPU]).workers(2).build().unwrap();
    for i in 0..10 {
        let x = Tensor::full([1, 8], i as f64, (Kind::Float, GPU));
        match engine.infer(x) {
            Err(EngineError::Model(m)) if i == 7 => {
                assert!(m.contains("out of memory"), "{m}");
                println!("oom request: {}", m.lines().next().unwrap_or(""));
            }
            Ok(y) if i != 7 => assert_eq!(y.min().double_value(&[]), i as f64 + 1.0),
            other => panic!("request {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(engine.stats().failed, 1);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dropped_tickets_leak_no_device_memory() {
    let warm = Engine::builder(affine()).devices(vec![GPU]).workers(4).build().unwrap();
    drop(warm.infer_many((0..64).map(|_| Tensor::ones([1, 1024], (Kind::Float, GPU))).collect()));
    drop(warm);
    let before = allocated();
    let engine = Engine::builder(affine())
        .devices(vec![GPU])
        .workers(4)
        .batching(Batching::Dynamic { max_batch: 32, max_wait: Duration::from_micros(100) })
        .build()
        .unwrap();
    for i in 0..5000 {
        drop(engine.submit(Tensor::full([1, 1024], i as f64, (Kind::Float, GPU))));
    }
    engine.shutdown();
    let st = engine.stats();
    drop(engine);
    let after = allocated();
    println!("dropped tickets: completed {} cancelled {} failed {}; allocated before {before} after {after}", st.completed, st.cancelled, st.failed);
    // Each dropped ticket is skipped (cancelled) or, if a worker took it first, completed.
    assert_eq!((st.completed + st.cancelled, st.failed), (5000, 0));
    assert!((after - before).abs() <= MIB, "device memory back to baseline: {before} -> {after}");
}

/// The target for compute-sanitizer (memcheck, racecheck, synccheck): the engine with streams and
/// batching, 16 workers, several clients, results checked.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sanitizer_stress_engine_streams_batching_16_workers() {
    let serial = Builtin::SmallMlp.build(GPU);
    let engine = Arc::new(
        Engine::builder(Model::Builtin(Builtin::SmallMlp))
            .devices(vec![GPU])
            .workers(16)
            .batching(Batching::Dynamic { max_batch: 16, max_wait: Duration::from_micros(200) })
            .output(Output::Cpu)
            .build()
            .unwrap(),
    );
    let n = std::env::var("TCH_STREAMS_SANITIZER_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(8usize);
    std::thread::scope(|s| {
        for c in 0..8 {
            let (engine, serial) = (Arc::clone(&engine), Arc::clone(&serial));
            s.spawn(move || {
                let _ng = tch::no_grad_guard();
                for i in 0..n {
                    let x = Tensor::full([1 + (i % 2) as i64, 512], (c * 100 + i) as f64 * 1e-3, (Kind::Float, Device::Cpu));
                    let y = engine.infer(x.shallow_clone()).unwrap();
                    let want = serial.forward(&x.to_device(GPU)).unwrap().to_device(Device::Cpu);
                    assert!(y.allclose(&want, 1e-3, 1e-4, false));
                }
            });
        }
    });
    println!("sanitizer stress: {} requests completed, {} failed", engine.stats().completed, engine.stats().failed);
}

/// Mixed load with shutdown/restart cycles: valid and malformed requests, changing shapes,
/// dropped tickets. Per cycle: every request accounted for, device memory back to the warm
/// baseline (± 1 MiB), no unexpected error.
///
/// libtorch keeps one cuBLAS workspace (32 MiB on Hopper) per (cuBLAS handle, stream) pair for
/// the life of the process, and restarts pair recycled handles with new pool streams; each worker
/// frees its thread's workspaces as it ends (`stream::release_thread_workspaces`), which is what
/// keeps this at the baseline with libtorch's default workspace configuration.
#[test]
#[ignore = "needs a CUDA GPU; long"]
fn soak_mixed_load_with_restarts() {
    let secs: u64 = std::env::var("TCH_STREAMS_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let cycle_secs: u64 = std::env::var("TCH_STREAMS_SOAK_CYCLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let cycle = Duration::from_secs(cycle_secs.min(secs.max(1)));
    // Warm-up cycle touching every pool stream (per-stream library workspaces stay allocated).
    run_cycle(32, Batching::Off, false, Duration::from_secs(1), 0);
    let baseline = allocated();
    let start = Instant::now();
    let (mut cycles, mut total) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let workers = [4, 8, 16][cycles as usize % 3];
        let batching = if cycles % 2 == 0 {
            Batching::Dynamic { max_batch: 64, max_wait: Duration::from_micros(150) }
        } else {
            Batching::Off
        };
        let every: u64 = std::env::var("TCH_STREAMS_SOAK_GRAPHS_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
        let graphs = tch_streams::engine::CUDA_GRAPHS_BUILT && cycles % every == every - 1;
        let (submitted, ok, bad, dropped) = run_cycle(workers, batching, graphs, cycle, cycles);
        let now = allocated();
        println!(
            "cycle {cycles:>3} t={:>5.0}s workers {workers:>2} batching {} graphs {graphs}: submitted {submitted} ok {ok} refused {bad} dropped {dropped}; allocated {} (baseline {baseline})",
            start.elapsed().as_secs_f64(),
            batching != Batching::Off,
            now
        );
        assert!((now - baseline).abs() <= MIB, "cycle {cycles}: device memory {now} vs baseline {baseline}");
        cycles += 1;
        total += submitted;
    }
    println!("soak: {cycles} cycles, {total} requests in {:.0} s, no crash, all accounted for, memory at baseline", start.elapsed().as_secs_f64());
}

/// One engine lifetime under mixed load; returns (submitted, ok, refused-as-invalid, dropped).
fn run_cycle(workers: usize, batching: Batching, graphs: bool, length: Duration, seed: u64) -> (u64, u64, u64, u64) {
    let engine = Arc::new(
        Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![GPU]).workers(workers).batching(batching).cuda_graphs(graphs).build().unwrap(),
    );
    let (ok, bad, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + length;
    std::thread::scope(|s| {
        for c in 0..16u64 {
            let (engine, ok, bad, dropped) = (Arc::clone(&engine), Arc::clone(&ok), Arc::clone(&bad), Arc::clone(&dropped));
            s.spawn(move || {
                let mut i = seed * 7919 + c;
                while Instant::now() < deadline {
                    i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let pick = (i >> 33) % 20;
                    let rows = 1 + ((i >> 40) % 8) as i64; // changing shapes
                    let on_gpu = (i >> 45) % 2 == 0;
                    let dev = if on_gpu { GPU } else { Device::Cpu };
                    let x = match pick {
                        0 => Tensor::zeros([rows, 256], (Kind::Float, dev)),  // wrong shape
                        1 => Tensor::zeros([rows, 512], (Kind::Double, dev)), // wrong dtype
                        2 => Tensor::zeros([0, 512], (Kind::Float, dev)),     // empty batch
                        _ => Tensor::ones([rows, 512], (Kind::Float, dev)),
                    };
                    let ticket = engine.submit(x);
                    if pick == 3 {
                        drop(ticket); // caller gone
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match ticket.wait() {
                        Ok(y) => {
                            assert!(pick >= 3);
                            assert_eq!(y.size(), vec![rows, 512]);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(EngineError::InvalidInput(_)) if pick < 3 => {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            });
        }
    });
    engine.shutdown();
    let st = engine.stats();
    let (ok, bad, dropped) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed), dropped.load(Ordering::Relaxed));
    assert_eq!(st.submitted, st.completed + st.failed + st.cancelled, "every request accounted for");
    assert_eq!(st.failed, bad, "the only failures are the malformed requests");
    // A dropped ticket is skipped (cancelled) unless a worker had taken it already (completed).
    assert_eq!(st.completed + st.cancelled, ok + dropped);
    assert!(st.cancelled <= dropped, "only dropped tickets are cancelled: {} > {dropped}", st.cancelled);
    (st.submitted, ok, bad, dropped)
}

/// Threads that come and go on pool streams, each running a matrix product: without releasing,
/// libtorch keeps a cuBLAS workspace for every (handle, stream) pair met; with
/// `release_thread_workspaces` at each thread's end, allocated memory is back where it started.
#[test]
#[ignore = "needs a CUDA GPU"]
fn released_workspaces_leave_no_memory_behind_threads_on_new_streams() {
    let a = Tensor::ones([64, 64], (Kind::Float, GPU));
    let run = |release: bool| {
        let a = a.shallow_clone();
        std::thread::spawn(move || {
            let s = Stream::from_pool(GPU, Priority::Normal).unwrap();
            let _g = StreamGuard::new(&s).unwrap();
            let y = a.matmul(&a);
            assert_eq!(y.double_value(&[0, 0]), 64.0);
            drop(y);
            s.synchronize().unwrap();
            if release { release_thread_workspaces(GPU).unwrap() } else { 0 }
        })
        .join()
        .unwrap()
    };
    let used = |f: &dyn Fn()| {
        synchronize_device(GPU).unwrap();
        let before = memory_stats(GPU).unwrap().allocated;
        f();
        synchronize_device(GPU).unwrap();
        memory_stats(GPU).unwrap().allocated - before
    };
    // 40 threads in turn: more than the pool's 32 streams, so pairs with reused handles appear.
    // Releasing first: a release also frees what earlier threads left on the same handle.
    let released = std::sync::atomic::AtomicUsize::new(0);
    let left = used(&|| (0..40).for_each(|_| {
        released.fetch_add(run(true), std::sync::atomic::Ordering::Relaxed);
    }));
    let kept = used(&|| (0..40).for_each(|_| assert_eq!(run(false), 0)));
    println!("40 threads: {kept} bytes kept without releasing; {left} bytes left with it ({} workspaces released)", released.into_inner());
    assert!(kept > 0, "without releasing, the workspaces stay allocated");
    assert_eq!(left, 0, "with releasing, nothing stays allocated");
    assert_eq!(release_thread_workspaces(Device::Cpu).unwrap(), 0);
}
