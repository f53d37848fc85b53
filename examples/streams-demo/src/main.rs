//! streams-demo: threads that each own a pool stream, handing tensors to one another through
//! events, as an app that uses tch-streams' stream API directly would.
//!
//! Each of N pairs runs a producer and a consumer thread. The producer binds a pool stream,
//! computes on it, records an [`Event`] and sends tensor + event to its consumer. The consumer,
//! on its own pool stream, waits for the event on the device (no host sync), computes, marks the
//! tensor as used by its stream (`record_stream`), synchronises, and checks the values.
//!
//! ```text
//! streams-demo [--device auto|cpu|cuda:N] [--pairs 4] [--rounds 20]
//! ```
//! Exit codes: 0 every value right; 1 a wrong value or an error; 2 libtorch mismatch.

use std::collections::BTreeSet;
use std::sync::mpsc;
use tch::{Device, Kind, Tensor};
use tch_streams::runtime::{self, Policy};
use tch_streams::stream::{bind_thread, record_stream, Event, Priority, Stream};
use tch_streams::{has_backend, Backend};

const SIZE: i64 = 1 << 20;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("streams-demo: {msg}");
    std::process::exit(1)
}

fn main() {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("usage: streams-demo [--device auto|cpu|cuda:N] [--pairs 4] [--rounds 20]");
        return;
    }
    let report = runtime::verify(&Policy::default()).unwrap_or_else(|e| {
        eprintln!("streams-demo: {e}");
        std::process::exit(e.exit_code())
    });
    println!("libtorch {} verified; cuda registered: {}", report.built.torch_version, if has_backend(Backend::Cuda) { "yes" } else { "no" });

    let device = match arg("--device", "auto").as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        d => d.strip_prefix("cuda:").and_then(|i| i.parse().ok()).map(Device::Cuda).unwrap_or_else(|| fail(format!("--device {d:?}: expected auto, cpu or cuda:N"))),
    };
    let pairs: usize = arg("--pairs", "4").parse().ok().filter(|n| (1..=64).contains(n)).unwrap_or_else(|| fail("--pairs: expected 1..=64"));
    let rounds: usize = arg("--rounds", "20").parse().ok().filter(|n| (1..=100_000).contains(n)).unwrap_or_else(|| fail("--rounds: expected 1..=100000"));

    let mut threads = Vec::new();
    for p in 0..pairs {
        let (tx, rx) = mpsc::sync_channel::<(Tensor, Event, f64)>(2);
        threads.push(std::thread::spawn(move || -> Result<(String, i64, usize), String> {
            let stream = Stream::from_pool(device, Priority::Normal).map_err(|e| e.to_string())?;
            bind_thread(&stream).map_err(|e| e.to_string())?;
            let _no_grad = tch::no_grad_guard();
            for r in 0..rounds {
                let value = (p * 1000 + r) as f64;
                let x = produce(value, device);
                let mut ev = Event::new(device).map_err(|e| e.to_string())?;
                ev.record(&stream).map_err(|e| e.to_string())?;
                tx.send((x, ev, value)).map_err(|e| e.to_string())?;
            }
            Ok(("producer".into(), stream.id(), rounds))
        }));
        threads.push(std::thread::spawn(move || -> Result<(String, i64, usize), String> {
            let stream = Stream::from_pool(device, Priority::Normal).map_err(|e| e.to_string())?;
            bind_thread(&stream).map_err(|e| e.to_string())?;
            let _no_grad = tch::no_grad_guard();
            let mut right = 0;
            for (x, ev, value) in rx {
                ev.wait(&stream).map_err(|e| e.to_string())?; // device-side: this stream after the producer's
                let y = &x * 2.0 + 1.0;
                record_stream(&x, &stream).map_err(|e| e.to_string())?; // x's memory is read here too
                drop(x);
                stream.synchronize().map_err(|e| e.to_string())?;
                let (lo, hi) = (y.min().double_value(&[]), y.max().double_value(&[]));
                let want = 2.0 * value + 1.0;
                if lo == want && hi == want {
                    right += 1;
                } else {
                    return Err(format!("pair {p}: expected {want}, got values in [{lo}, {hi}]"));
                }
            }
            Ok(("consumer".into(), stream.id(), right))
        }));
    }
    let mut ids = BTreeSet::new();
    let mut right = 0;
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().expect("demo thread") {
            Ok((role, id, n)) => {
                println!("pair {} {role}: {device:?} stream {id}", i / 2);
                ids.insert(id);
                if role == "consumer" {
                    right += n;
                }
            }
            Err(e) => fail(e),
        }
    }
    println!("{} thread(s) on {} distinct stream(s)", pairs * 2, ids.len());
    println!("values right: {right}/{}", pairs * rounds);
    std::process::exit(if right == pairs * rounds { 0 } else { 1 });
}

/// A tensor of `SIZE` elements all equal to `value`, made by enough kernels on the current
/// stream that a consumer reading it without waiting would likely see unfinished memory.
fn produce(value: f64, device: Device) -> Tensor {
    let mut x = Tensor::zeros([SIZE], (Kind::Float, device));
    for _ in 0..16 {
        x = x * 0.5 + value * 0.5;
    }
    // The loop approaches `value`; the last kernel makes it exact.
    x.fill_(value)
}
