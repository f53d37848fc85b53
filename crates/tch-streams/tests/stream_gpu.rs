//! The stream API on a CUDA GPU. Ignored in CI (no GPU there); run on a GPU machine with
//! `cargo test --release --test stream_gpu -- --include-ignored --nocapture`.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use tch::{Device, Kind, Tensor};
use tch_streams::stream::{
    record_stream, synchronize_device, with_stream, Event, Priority, Stream, StreamGuard, StreamThreadPool,
};

const GPU: Device = Device::Cuda(0);

fn pool() -> Stream {
    Stream::from_pool(GPU, Priority::Normal).expect("cuda pool stream")
}

/// ~`n` GPU-bound matmuls that use only a few SMs each (a 128x128 output), so two streams can
/// run theirs side by side.
fn narrow_work(n: usize) -> Tensor {
    let a = Tensor::ones([128, 8192], (Kind::Float, GPU));
    let b = Tensor::ones([8192, 128], (Kind::Float, GPU)) / 8192.0;
    let mut acc = Tensor::zeros([128, 128], (Kind::Float, GPU));
    for _ in 0..n {
        acc += a.matmul(&b);
    }
    acc
}

/// Tens of milliseconds of GPU time from a handful of launches (4096² fp32 matmuls), so the
/// host is far ahead of the device when it returns.
fn long_work(n: usize) -> Tensor {
    let a = Tensor::ones([4096, 4096], (Kind::Float, GPU)) / 4096.0;
    let mut x = Tensor::ones([4096, 4096], (Kind::Float, GPU));
    for _ in 0..n {
        x = x.matmul(&a);
    }
    x
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pool_ids_are_distinct_and_not_the_default() {
    let default = Stream::default_for(GPU).unwrap();
    let streams: Vec<Stream> = (0..8).map(|_| pool()).collect();
    let ids: HashSet<i64> = streams.iter().map(Stream::id).collect();
    assert_eq!(ids.len(), 8, "{streams:?}");
    assert!(!ids.contains(&default.id()));
    let high = Stream::from_pool(GPU, Priority::High).unwrap();
    assert!(!ids.contains(&high.id()));
    println!("default {default}; pool {}; high {high}", streams.iter().map(|s| s.id().to_string()).collect::<Vec<_>>().join(", "));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn guards_change_current_nest_and_restore_also_on_panic() {
    let default = Stream::default_for(GPU).unwrap();
    let (a, b) = (pool(), pool());
    assert_eq!(Stream::current(GPU).unwrap(), default);
    {
        let ga = StreamGuard::new(&a).unwrap();
        assert_eq!(ga.original_stream(), Some(default));
        assert_eq!(Stream::current(GPU).unwrap(), a);
        {
            let _gb = StreamGuard::new(&b).unwrap();
            assert_eq!(Stream::current(GPU).unwrap(), b);
        }
        assert_eq!(Stream::current(GPU).unwrap(), a);
    }
    assert_eq!(Stream::current(GPU).unwrap(), default);
    let caught = std::panic::catch_unwind(|| {
        with_stream(&a, || {
            assert_eq!(Stream::current(GPU).unwrap(), a);
            panic!("model failed")
        })
    });
    assert!(caught.is_err());
    assert_eq!(Stream::current(GPU).unwrap(), default, "restored during unwinding");
}

/// Runs `narrow_work` on two threads at once, each on `streams[i]`, and returns each thread's
/// (start, end) in ms relative to a reference event, measured with timing events.
fn timed_pair(streams: [Stream; 2], n: usize) -> Vec<(f64, f64)> {
    let reference_stream = pool();
    let mut reference = Event::with_timing(GPU).unwrap();
    reference.record(&reference_stream).unwrap();
    reference.synchronize().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let _g = StreamGuard::new(&s).unwrap();
                let _ng = tch::no_grad_guard();
                let (mut start, mut end) = (Event::with_timing(GPU).unwrap(), Event::with_timing(GPU).unwrap());
                barrier.wait();
                start.record(&s).unwrap();
                let out = narrow_work(n);
                end.record(&s).unwrap();
                end.synchronize().unwrap();
                assert_eq!(Stream::current(GPU).unwrap(), s);
                assert!((out.mean(Kind::Float).double_value(&[]) - n as f64).abs() < 1e-3 * n as f64);
                (start, end)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            let (s, e) = h.join().unwrap();
            (reference.elapsed(&s).unwrap().as_secs_f64() * 1e3, reference.elapsed(&e).unwrap().as_secs_f64() * 1e3)
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn two_threads_on_their_own_streams_run_concurrently() {
    let _ = timed_pair([pool(), pool()], 20); // warm up cuBLAS and the allocator
    let n = 300;
    let (a, b) = (pool(), pool());
    assert_ne!(a, b);
    let both = timed_pair([a, b], n);
    let busy: f64 = both.iter().map(|(s, e)| e - s).sum();
    let wall = both.iter().map(|p| p.1).fold(0.0, f64::max) - both.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    let overlap = both[0].1.min(both[1].1) - both[0].0.max(both[1].0);
    let default = Stream::default_for(GPU).unwrap();
    let shared = timed_pair([default, default], n);
    let shared_wall = shared.iter().map(|p| p.1).fold(0.0, f64::max) - shared.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    println!(
        "two pool streams {a} and {b}: intervals {both:?} ms, overlap {overlap:.2} ms, wall {wall:.2} ms, \
         sum of busy {busy:.2} ms; both on the default stream: wall {shared_wall:.2} ms"
    );
    assert!(overlap > 0.0, "the two streams' work intervals must overlap: {both:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_event_makes_the_consumer_wait_for_a_long_producer() {
    let (producer, consumer) = (pool(), pool());
    for round in 0..5 {
        let out = Tensor::zeros([1 << 20], (Kind::Float, GPU));
        synchronize_device(GPU).unwrap();
        let mut ready = Event::new(GPU).unwrap();
        with_stream(&producer, || {
            let _busy = long_work(40); // deliberately long
            let _ = out.shallow_clone().fill_(7.0 + round as f64);
            ready.record(&producer).unwrap();
        })
        .unwrap();
        let doubled = with_stream(&consumer, || {
            ready.wait(&consumer).unwrap();
            &out * 2.0
        })
        .unwrap();
        let still_running = !ready.query().unwrap();
        consumer.synchronize().unwrap();
        println!("round {round}: producer still running when the read was queued: {still_running}");
        let expected = 2.0 * (7.0 + round as f64);
        assert_eq!(doubled.min().double_value(&[]), expected);
        assert_eq!(doubled.max().double_value(&[]), expected);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn record_stream_keeps_memory_valid_through_allocator_churn() {
    let (alloc, reader) = (pool(), pool());
    for round in 0..20 {
        let value = round as f64 + 1.0;
        let mut made = Event::new(GPU).unwrap();
        let x = with_stream(&alloc, || {
            let x = Tensor::full([1 << 22], value, (Kind::Float, GPU));
            made.record(&alloc).unwrap();
            x
        })
        .unwrap();
        let result = with_stream(&reader, || {
            made.wait(&reader).unwrap();
            let delay = narrow_work(50); // keeps `reader` busy so the read of x comes late
            record_stream(&x, &reader).unwrap();
            &x + (delay.sum(Kind::Float) * 0.0)
        })
        .unwrap();
        drop(x); // freed on `alloc`'s side while `reader` may still be queued on it
        with_stream(&alloc, || {
            for _ in 0..8 {
                let _garbage = Tensor::full([1 << 22], -99.0, (Kind::Float, GPU)); // churn: same size class
            }
        })
        .unwrap();
        reader.synchronize().unwrap();
        assert_eq!(result.min().double_value(&[]), value, "round {round}");
        assert_eq!(result.max().double_value(&[]), value, "round {round}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn synchronize_device_waits_for_every_stream() {
    let streams: Vec<Stream> = (0..4).map(|_| pool()).collect();
    let mut events = Vec::new();
    let mut outs = Vec::new();
    for s in &streams {
        with_stream(s, || {
            outs.push(long_work(20));
            let mut e = Event::new(GPU).unwrap();
            e.record(s).unwrap();
            events.push(e);
        })
        .unwrap();
    }
    assert!(!streams[3].query().unwrap(), "work is still queued before the device sync");
    synchronize_device(GPU).unwrap();
    for (s, e) in streams.iter().zip(&events) {
        assert!(s.query().unwrap(), "{s} idle after synchronize_device");
        assert!(e.query().unwrap());
    }
    assert!(outs.iter().all(|o| (o.mean(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-3));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rayon_pool_threads_hold_distinct_streams() {
    let pool = StreamThreadPool::new(GPU, 8).unwrap();
    let bound: Vec<Stream> = pool.bindings().into_iter().map(|b| b.expect("bound")).collect();
    let ids: HashSet<i64> = bound.iter().map(Stream::id).collect();
    assert_eq!(ids.len(), 8, "{bound:?}");
    let seen: Vec<(Stream, Stream)> =
        pool.rayon().broadcast(|_| (StreamThreadPool::current_stream().unwrap(), Stream::current(GPU).unwrap()));
    for (mine, current) in &seen {
        assert_eq!(mine, current, "each thread's current stream is its own");
    }
    use rayon::prelude::*;
    let sums: Vec<f64> = pool.install(|| {
        (0..64)
            .into_par_iter()
            .map(|i| {
                let t = Tensor::full([1000], i as f64, (Kind::Float, GPU)).sum(Kind::Float);
                StreamThreadPool::current_stream().unwrap().synchronize().unwrap();
                t.double_value(&[])
            })
            .collect()
    });
    assert_eq!(sums, (0..64).map(|i| 1000.0 * i as f64).collect::<Vec<_>>());
    println!("rayon pool streams: {}", bound.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "));
}
