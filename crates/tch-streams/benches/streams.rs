//! Micro-benchmarks of the stream API's fixed costs: pool acquire, guard enter+exit, and event
//! record+query. Runs on CUDA when a GPU is visible, else on CPU (where these are no-ops).
//! `cargo bench --bench streams`

use criterion::{criterion_group, criterion_main, Criterion};
use tch_streams::stream::{Event, Priority, Stream, StreamGuard};

fn bench(c: &mut Criterion) {
    let device = tch::Device::cuda_if_available();
    let tag = if device == tch::Device::Cpu { "cpu" } else { "cuda" };
    let s = Stream::from_pool(device, Priority::Normal).expect("pool stream");
    c.bench_function(&format!("{tag}/pool_acquire"), |b| {
        b.iter(|| Stream::from_pool(device, Priority::Normal).unwrap())
    });
    c.bench_function(&format!("{tag}/guard_enter_exit"), |b| b.iter(|| drop(StreamGuard::new(&s).unwrap())));
    c.bench_function(&format!("{tag}/acquire_and_guard"), |b| {
        b.iter(|| {
            let s = Stream::from_pool(device, Priority::Normal).unwrap();
            drop(StreamGuard::new(&s).unwrap())
        })
    });
    let mut e = Event::new(device).expect("event");
    c.bench_function(&format!("{tag}/event_record_query"), |b| {
        b.iter(|| {
            e.record(&s).unwrap();
            e.query().unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
