//! Micro-benchmarks of the engine's fixed costs on CPU, with an identity model so that only the
//! engine is measured: (a) submit→result of one request through one worker without batching;
//! (b) dynamic batching, per request, with 32 requests submitted together and gathered into
//! batches (no wait). Throughput figures of real models come from `tch-streams bench`.
//! `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine};
use tch_streams::models::Model;

fn identity() -> Model {
    Model::closure(|x: &Tensor| Ok::<_, tch::TchError>(x.shallow_clone()))
}

fn bench(c: &mut Criterion) {
    let _no_grad = tch::no_grad_guard();
    let x = Tensor::ones([1, 16], (Kind::Float, Device::Cpu));

    let single = Engine::builder(identity())
        .devices(vec![Device::Cpu])
        .workers(1)
        .batching(Batching::Off)
        .build()
        .expect("engine with one worker");
    c.bench_function("cpu/engine_infer_1x16_identity", |b| b.iter(|| single.infer(x.shallow_clone()).expect("identity result")));
    single.shutdown();

    let batched = Engine::builder(identity())
        .devices(vec![Device::Cpu])
        .workers(1)
        .batching(Batching::Dynamic { max_batch: 32, max_wait: Duration::ZERO })
        .build()
        .expect("engine with dynamic batching");
    let mut group = c.benchmark_group("cpu/engine_dynamic_batching");
    group.throughput(Throughput::Elements(32));
    group.bench_function("infer_many_32_requests_1x16_identity", |b| {
        b.iter(|| {
            let outs = batched.infer_many((0..32).map(|_| x.shallow_clone()).collect());
            assert!(outs.iter().all(Result::is_ok));
            outs
        })
    });
    group.finish();
    batched.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
