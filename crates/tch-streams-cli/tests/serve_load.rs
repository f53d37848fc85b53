//! `tch-streams serve` under load: 32 client threads x 200 requests with nothing lost and the
//! metrics counting exactly what was sent; and SIGTERM under load, after which every request
//! the server accepted is answered and it exits 0. Raw HTTP/1.1 clients (no Python GIL in the
//! way); every wait has a watchdog.

mod serve_common;

use serde_json::json;
use serve_common::{infer_json, sample, Http, Served};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const REQUESTS: usize = 200;

/// A request for the small MLP whose sample is `v` everywhere, binary or JSON.
fn request(v: f32, binary: bool) -> (Vec<u8>, Vec<(&'static str, String)>) {
    if binary {
        let head = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "parameters": {"binary_data_size": 2048}}],
                          "outputs": [{"name": "output0", "parameters": {"binary_data": true}}]})
        .to_string();
        let mut body = head.clone().into_bytes();
        for _ in 0..512 {
            body.extend_from_slice(&v.to_le_bytes());
        }
        (body, vec![("inference-header-content-length", head.len().to_string())])
    } else {
        (json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec![v; 512]}]}).to_string().into_bytes(), vec![])
    }
}

/// The first output value of an answer, binary or JSON.
fn first_value(r: &serve_common::Reply) -> f32 {
    match r.header("inference-header-content-length") {
        Some(n) => {
            let n: usize = n.parse().unwrap();
            f32::from_le_bytes(r.body[n..n + 4].try_into().unwrap())
        }
        None => r.json()["outputs"][0]["data"][0].as_f64().unwrap() as f32,
    }
}

#[test]
fn thirty_two_clients_times_200_requests_are_all_answered_and_counted() {
    let server = Served::start(&["--builtin", "small-mlp", "--batch-max", "16", "--batch-wait-us", "500"]);
    // The expected answer of each of 4 distinct inputs, asked once.
    let values = [0.0f32, 0.5, -1.0, 2.0];
    let expected: Vec<f32> = values.iter().map(|&v| first_value(&infer_json(&mut Http::connect(&server.http), "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec![v; 512]}]})))).collect();
    let before = server.scrape();
    let addr = server.http.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    for c in 0..CLIENTS {
        let (addr, tx, expected) = (addr.clone(), tx.clone(), expected.clone());
        std::thread::spawn(move || {
            let mut conn = Http::connect(&addr);
            let mut ok = 0u64;
            for i in 0..REQUESTS {
                let k = (c + i) % values.len();
                let (body, headers) = request(values[k], (c + i) % 2 == 0);
                let r = conn.send("POST", "/v2/models/small-mlp/infer", &headers, &body);
                assert_eq!(r.status, 200, "client {c} request {i}: {}", r.text());
                let y = first_value(&r);
                assert!((y - expected[k]).abs() <= 1e-5 * expected[k].abs().max(1.0), "client {c} request {i}: {y} != {}", expected[k]);
                ok += 1;
            }
            let _ = tx.send(ok);
        });
    }
    drop(tx);
    let mut total = 0;
    for _ in 0..CLIENTS {
        total += rx.recv_timeout(Duration::from_secs(300)).expect("watchdog: a client thread failed or hung");
    }
    assert_eq!(total, (CLIENTS * REQUESTS) as u64);
    let text = server.scrape();
    let grew = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels).unwrap_or(0.0) - sample(&before, name, labels).unwrap_or(0.0);
    let n = (CLIENTS * REQUESTS) as f64;
    assert_eq!(grew("tch_streams_requests_total", &[("model", "small-mlp"), ("protocol", "http"), ("outcome", "success")]), n, "{text}");
    assert_eq!(grew("tch_streams_request_duration_seconds_count", &[("model", "small-mlp"), ("protocol", "http")]), n);
    assert_eq!(grew("tch_streams_engine_duration_seconds_count", &[("model", "small-mlp")]), n);
    assert_eq!(grew("tch_streams_engine_requests_total", &[("model", "small-mlp"), ("result", "completed")]), n);
    assert_eq!(grew("tch_streams_engine_requests_total", &[("model", "small-mlp"), ("result", "submitted")]), n);
    assert_eq!(grew("tch_streams_engine_requests_total", &[("model", "small-mlp"), ("result", "failed")]), 0.0);
    // The batch-size histogram: requests per batch add up to the requests run.
    assert_eq!(grew("tch_streams_batch_size_sum", &[("model", "small-mlp")]), n, "{text}");
    assert_eq!(sample(&text, "tch_streams_inflight_requests", &[("model", "small-mlp")]), Some(0.0));
    assert_eq!(sample(&text, "tch_streams_workers", &[("model", "small-mlp"), ("device", "cpu")]).map(|w| w >= 1.0), Some(true), "{text}");
    assert!(sample(&text, "tch_streams_engine_latency_microseconds", &[("model", "small-mlp"), ("quantile", "0.99")]).is_some(), "{text}");
    // Queue and compute split the engine's latency: each is at most the whole (the three come from
    // one histogram type whose bucket bounds are shared, so the bound holds bucket for bucket).
    let total = sample(&text, "tch_streams_engine_latency_microseconds", &[("model", "small-mlp"), ("quantile", "0.5")]).expect("p50 latency");
    let queue = sample(&text, "tch_streams_queue_microseconds", &[("model", "small-mlp"), ("quantile", "0.5")]).expect("p50 queue time");
    let compute = sample(&text, "tch_streams_compute_microseconds", &[("model", "small-mlp"), ("quantile", "0.5")]).expect("p50 compute time");
    assert!(compute > 0.0, "compute p50 {compute}: a forward pass takes time\n{text}");
    assert!(queue <= total && compute <= total, "queue {queue} and compute {compute} must each be at most the latency {total}\n{text}");
}

#[test]
fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let mut server = Served::start(&["--builtin", "small-mlp", "--batch-max", "8"]);
    let ok = Arc::new(AtomicU64::new(0));
    let not_ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let after_signal = Arc::new(AtomicU64::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (addr, ok, not_ok, refused, after_signal, signalled) =
            (server.http.clone(), Arc::clone(&ok), Arc::clone(&not_ok), Arc::clone(&refused), Arc::clone(&after_signal), Arc::clone(&signalled));
        clients.push(std::thread::spawn(move || {
            let start = Instant::now();
            let mut conn = Http::try_connect(&addr).ok();
            // Bounded: at most 2000 requests or 60 s per client.
            for i in 0..2000 {
                if start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let Some(c_) = conn.as_mut() else { break };
                let (body, headers) = request(1.0, (c + i) % 2 == 0);
                let was_signalled = signalled.load(Ordering::SeqCst);
                match c_.try_send("POST", "/v2/models/small-mlp/infer", &headers, &body) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if was_signalled {
                            after_signal.fetch_add(1, Ordering::SeqCst);
                        }
                        if r.header("connection") == Some("close") {
                            conn = Http::try_connect(&addr).ok();
                        }
                    }
                    Ok(r) => {
                        not_ok.fetch_add(1, Ordering::SeqCst);
                        panic!("an accepted request was answered {}: {}", r.status, r.text());
                    }
                    // The connection was closed before the server read this request: not
                    // accepted. Reconnect; once the listener is gone, that fails and we stop.
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        conn = Http::try_connect(&addr).ok();
                    }
                }
            }
        }));
    }
    // Under load for a moment, then SIGTERM.
    let start = Instant::now();
    while ok.load(Ordering::SeqCst) < 500 {
        assert!(start.elapsed() < Duration::from_secs(120), "watchdog: the load never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    signalled.store(true, Ordering::SeqCst);
    server.sigterm();
    let (code, stderr) = server.wait_exit(Duration::from_secs(60));
    for c in clients {
        c.join().expect("a client saw a non-200 answer to an accepted request");
    }
    eprintln!(
        "answered {} (of which {} sent after SIGTERM), not accepted {}",
        ok.load(Ordering::SeqCst),
        after_signal.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("signal received: draining"), "{stderr}");
    // The server's own count of answers equals what the clients received: nothing accepted was
    // dropped, and nothing failed.
    let ok = ok.load(Ordering::SeqCst);
    let line = stderr.lines().find(|l| l.starts_with("drained: ")).unwrap_or_else(|| panic!("no drain summary: {stderr}"));
    assert_eq!(line, format!("drained: {ok} inference request(s): {ok} answered with a result, 0 with an error, 0 cancelled by their client"), "refused {}", refused.load(Ordering::SeqCst));
    assert_eq!(not_ok.load(Ordering::SeqCst), 0);
    // And the port no longer listens.
    assert!(Http::try_connect(&server.http).is_err());
}
