//! The engine splits each request's latency into time in the queue and compute time
//! (`EngineStats::{queue,compute}_us_*`). On the CPU, with one worker and a model that sleeps,
//! the split follows from the order the requests run in: the sleeps give lower bounds, and no
//! part can exceed the whole.

mod common;

use common::{accounted, watchdog};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine};
use tch_streams::models::Model;

const FORWARD: Duration = Duration::from_millis(50);

/// Closed, a forward pass waits until it opens: requests submitted while it is closed are all
/// queued before the first forward pass's sleep begins, however the threads are scheduled.
static GATE: AtomicBool = AtomicBool::new(true);

fn slow_double(x: &Tensor) -> Result<Tensor, tch::TchError> {
    while !GATE.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(100));
    }
    std::thread::sleep(FORWARD);
    x.f_mul_scalar(2.0)
}

#[test]
fn queue_and_compute_times_follow_the_order_requests_run_in() {
    watchdog(60, || {
        let one_worker = || Engine::builder(Model::closure(slow_double)).devices(vec![Device::Cpu]).workers(1).batching(Batching::Off).build().unwrap();
        // One request alone on an idle worker: it begins at once, so its time in the queue is
        // far below its compute time, which holds a whole forward pass.
        let engine = one_worker();
        let before = engine.stats();
        assert_eq!((before.queue_us_p50, before.compute_us_p50), (None, None), "nothing answered yet");
        let lone = engine.infer(Tensor::ones([1, 4], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!(lone.double_value(&[0, 0]), 2.0);
        let st = engine.stats();
        let (q, c, l) = (st.queue_us_p50.unwrap(), st.compute_us_p50.unwrap(), st.latency_us_p50.unwrap());
        assert!(q < c && c <= l, "a lone request: queue {q} µs, compute {c} µs, latency {l} µs");
        engine.shutdown();

        let engine = one_worker();
        // Three requests at once on one worker: they run one after another, so the k-th waits for
        // k forward passes before its own begins (all three are queued before the gate opens, and
        // the first forward pass sleeps only after it has opened).
        GATE.store(false, Ordering::Release);
        let xs: Vec<Tensor> = (0..3).map(|i| Tensor::full([1, 4], i as f64, (Kind::Float, Device::Cpu))).collect();
        let tickets: Vec<_> = xs.iter().map(|x| engine.submit(x.shallow_clone())).collect();
        GATE.store(true, Ordering::Release);
        for (i, t) in tickets.into_iter().enumerate() {
            let y = t.wait().unwrap();
            assert_eq!(y.double_value(&[0, 0]), 2.0 * i as f64, "request {i}");
        }
        let st = engine.stats();
        let us = |d: Duration| d.as_micros() as u64;
        let (q50, q99) = (st.queue_us_p50.unwrap(), st.queue_us_p99.unwrap());
        let (c50, c99) = (st.compute_us_p50.unwrap(), st.compute_us_p99.unwrap());
        let (l50, l99) = (st.latency_us_p50.unwrap(), st.latency_us_p99.unwrap());
        // Each request computes for at least one forward pass.
        assert!(c50 >= us(FORWARD), "compute p50 {c50} µs < one forward pass ({FORWARD:?})");
        // The 2nd request (the median of three) waited for at least one forward pass, the 3rd
        // (the largest) for at least two.
        assert!(q50 >= us(FORWARD), "queue p50 {q50} µs: the second request waited for the first");
        assert!(q99 >= 2 * us(FORWARD), "queue p99 {q99} µs: the third request waited for two");
        // Parts of a request's latency: neither exceeds the whole, quantile for quantile.
        assert!(q50 <= l50 && c50 <= l50, "p50: queue {q50}, compute {c50}, latency {l50}");
        assert!(q99 <= l99 && c99 <= l99, "p99: queue {q99}, compute {c99}, latency {l99}");
        engine.shutdown();
        accounted(&engine.stats());
    });
}
