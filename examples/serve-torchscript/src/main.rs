//! serve-torchscript: an app that serves a TorchScript model with tch-streams, from many threads.
//!
//! It does what the README asks of every app: `verify()` first, then load the model, build an
//! engine, and serve. Every answer is checked against the same model run serially on the main
//! thread, so the output says whether concurrency changed any result.
//!
//! ```text
//! serve-torchscript MODEL.pt [--device auto|cpu|cuda:N] [--shape 16] [--threads 8]
//!                   [--requests 50] [--workers 4] [--batch-max 1] [--batch-wait-us 200]
//! ```
//! Exit codes: 0 all answers equal to serial; 1 a failed request, a differing answer or bad
//! arguments; 2 the loaded libtorch is not the one the app was built against; 3 a missing
//! capability.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, Output};
use tch_streams::models::Model;
use tch_streams::runtime::{self, Policy};
use tch_streams::{has_backend, Backend};

const USAGE: &str = "usage: serve-torchscript MODEL.pt [--device auto|cpu|cuda:N] [--shape D1xD2..] \
                     [--threads N] [--requests N] [--workers N] [--batch-max N] [--batch-wait-us N]";

struct Args {
    model: String,
    device: Device,
    shape: Vec<i64>,
    threads: usize,
    requests: usize,
    workers: usize,
    batch_max: usize,
    batch_wait_us: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        model: String::new(),
        device: Device::Cpu,
        shape: vec![16],
        threads: 8,
        requests: 50,
        workers: 4,
        batch_max: 1,
        batch_wait_us: 200,
    };
    let mut device = "auto".to_string();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--device" => device = value("--device")?,
            "--shape" => {
                let v = value("--shape")?;
                args.shape = v
                    .split('x')
                    .map(|d| d.parse::<i64>().ok().filter(|&d| d > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("--shape {v:?}: expected positive sizes joined by 'x', e.g. 3x32x32"))?;
            }
            "--threads" => args.threads = count("--threads", &value("--threads")?)?,
            "--requests" => args.requests = count("--requests", &value("--requests")?)?,
            "--workers" => args.workers = count("--workers", &value("--workers")?)?,
            "--batch-max" => args.batch_max = count("--batch-max", &value("--batch-max")?)?,
            "--batch-wait-us" => args.batch_wait_us = count("--batch-wait-us", &value("--batch-wait-us")?)? as u64,
            "-h" | "--help" => return Err(USAGE.to_string()),
            m if !m.starts_with('-') && args.model.is_empty() => args.model = m.to_string(),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    if args.model.is_empty() {
        return Err(format!("no model file given\n{USAGE}"));
    }
    args.device = match device.as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        d => match d.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => Device::Cuda(i),
            None => return Err(format!("--device {d:?}: expected auto, cpu or cuda:N")),
        },
    };
    Ok(args)
}

fn count(name: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>().ok().filter(|&n| (1..=1_000_000).contains(&n)).ok_or_else(|| format!("{name} {v:?}: expected 1..=1000000"))
}

/// The input of request `r` of client `c`: deterministic, different for every request.
fn input(c: usize, r: usize, shape: &[i64]) -> Tensor {
    let mut dims = vec![1];
    dims.extend_from_slice(shape);
    let n: i64 = shape.iter().product();
    let base = (c * 1000 + r) as f64;
    Tensor::arange(n, (Kind::Float, Device::Cpu)).f_mul_scalar(0.001).and_then(|t| t.f_add_scalar(base * 0.01)).and_then(|t| t.f_reshape(dims)).expect("a small host tensor")
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };

    // 1. Prove which libtorch this process runs on before touching a tensor.
    let report = match runtime::verify(&Policy::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serve-torchscript: {e}");
            std::process::exit(e.exit_code());
        }
    };
    println!("libtorch {} verified: {} libraries fingerprinted", report.built.torch_version, report.loaded.libs.len());
    println!("cuda backend: {}", report.loaded.cuda_load);
    println!("cuda registered: {}", if has_backend(Backend::Cuda) { "yes" } else { "no" });

    // 2. The serial reference, on the main thread, with the same model on the same device.
    let model = Model::TorchScript(args.model.clone().into());
    let reference = match model.instantiate(args.device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("serve-torchscript: cannot load {}: {e}", args.model);
            std::process::exit(1);
        }
    };
    let expected: Vec<Vec<Tensor>> = {
        let _no_grad = tch::no_grad_guard();
        (0..args.threads)
            .map(|c| {
                (0..args.requests)
                    .map(|r| {
                        let x = input(c, r, &args.shape).to_device(args.device);
                        match reference.forward(&x) {
                            Ok(y) => y.to_device(Device::Cpu),
                            Err(e) => {
                                eprintln!("serve-torchscript: the model refused input {:?}: {e}", x.size());
                                std::process::exit(1);
                            }
                        }
                    })
                    .collect()
            })
            .collect()
    };

    // 3. The engine: workers that each own a stream on the device.
    let batching = if args.batch_max > 1 {
        Batching::Dynamic { max_batch: args.batch_max, max_wait: Duration::from_micros(args.batch_wait_us) }
    } else {
        Batching::Off
    };
    let engine = match Engine::builder(model)
        .devices(vec![args.device])
        .workers(args.workers)
        .batching(batching)
        .input_shape(args.shape.clone())
        .output(Output::Cpu)
        .build()
    {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("serve-torchscript: cannot start the engine: {e}");
            std::process::exit(1);
        }
    };
    let streams: BTreeSet<i64> = engine.workers().iter().map(|w| w.stream.id()).collect();
    for w in engine.workers() {
        println!("worker {} on {:?}: {}", w.index, w.device, w.stream);
    }
    println!("workers: {} on {} distinct stream(s)", engine.workers().len(), streams.len());

    // 4. Serve from N client threads; compare every answer with the serial one.
    // Tensors are Send but not Sync: each client thread takes its own expected answers.
    let start = Instant::now();
    let clients: Vec<_> = expected
        .into_iter()
        .enumerate()
        .map(|(c, expected)| {
            let (engine, shape) = (Arc::clone(&engine), args.shape.clone());
            // Without batching every request runs alone, as in the serial pass: bitwise equal.
            // A batch may take other kernels (cuDNN picks per batch size; convolutions use TF32
            // by default on NVIDIA GPUs): equal within 1 % of the answer's scale.
            let bitwise = args.batch_max == 1;
            let same = move |y: &Tensor, want: &Tensor| -> (bool, f64) {
                if y.size() != want.size() {
                    return (false, f64::INFINITY);
                }
                if bitwise {
                    return (y.equal(want), 0.0);
                }
                let scale = want.abs().max().double_value(&[]).max(1e-6);
                let rel = (y - want).abs().max().double_value(&[]) / scale;
                (rel <= 1e-2, rel)
            };
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..expected.len()).map(|r| engine.submit(input(c, r, &shape))).collect();
                let (mut equal, mut differ, mut worst, mut failed) = (0usize, 0usize, 0f64, Vec::new());
                for (r, t) in tickets.into_iter().enumerate() {
                    match t.wait() {
                        Ok(y) => {
                            let (ok, rel) = same(&y, &expected[r]);
                            worst = worst.max(rel);
                            if ok {
                                equal += 1;
                            } else {
                                eprintln!("client {c} request {r}: differs from serial (max |diff| / max |serial| = {rel:e})");
                                differ += 1;
                            }
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (equal, differ, worst, failed)
            })
        })
        .collect();
    let (mut equal, mut differ, mut worst, mut failed) = (0, 0, 0f64, Vec::new());
    for c in clients {
        let (e, d, w, f) = c.join().expect("client thread");
        equal += e;
        differ += d;
        worst = worst.max(w);
        failed.extend(f);
    }
    let wall = start.elapsed();
    engine.shutdown();
    let st = engine.stats();
    let total = args.threads * args.requests;
    if args.batch_max == 1 {
        println!("results equal to serial: {equal}/{total}");
    } else {
        println!("results equal to serial: {equal}/{total} (batched: within 1e-2 of each answer's scale; worst {worst:.1e})");
    }
    println!(
        "stats: submitted {} completed {} failed {} in {:.3} s ({:.0} requests/s), p50 {} us, p99 {} us, replaced workers {}",
        st.submitted,
        st.completed,
        st.failed,
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64(),
        st.latency_us_p50.map_or("-".into(), |v| v.to_string()),
        st.latency_us_p99.map_or("-".into(), |v| v.to_string()),
        st.workers_replaced,
    );
    for msg in failed.iter().collect::<BTreeSet<_>>() {
        eprintln!("failed ({}x): {msg}", failed.iter().filter(|m| *m == msg).count());
    }
    std::process::exit(if equal == total && differ == 0 && failed.is_empty() { 0 } else { 1 });
}
