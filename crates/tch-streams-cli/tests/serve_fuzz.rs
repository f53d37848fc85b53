//! A seeded fuzz of `tch-streams serve` (issue #24): generated HTTP bodies, headers and request
//! lines, and gRPC messages (raw bytes, mutated valid messages, generated fields), each followed
//! by a good request over the same protocol. The server must never fail (no crash, no 500, only
//! the protocol's refusals), answer every good request, and its counters must add up at the end:
//! every inference request counted once, the engine's submitted = completed + failed +
//! cancelled, nothing left in flight or in the byte budget.
//!
//! The generator is a seeded xorshift: `TCH_STREAMS_FUZZ_SEED=N` replays a run, and a failure
//! prints the seed and the case. `TCH_STREAMS_FUZZ_CASES` sets how many cases per protocol
//! (default 400).

mod serve_common;

use serde_json::{json, Value};
use serve_common::{good_mlp_json, good_mlp_grpc, grpc_frame, sample, Grpc, Http, Served};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tch_streams_cli::serve::grpc::pb;

/// xorshift64*: small, seeded, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
}

const DATATYPES: [&str; 13] = ["FP32", "FP64", "FP16", "BF16", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL", "BYTES", "fp32", ""];

/// A JSON value of the kind a data array might hold, or not.
fn scalar(r: &mut Rng) -> Value {
    match r.below(9) {
        0 => json!(r.below(1000)),
        1 => json!(-(r.below(1 << 40) as i64)),
        2 => json!((r.next() as f64) / 7.0 - 1e18),
        3 => json!(r.chance(50)),
        4 => json!("x"),
        5 => Value::Null,
        6 => json!(1e300),
        7 => json!(u64::MAX),
        _ => json!(0.25),
    }
}

fn shape(r: &mut Rng) -> Vec<i64> {
    match r.below(6) {
        0 => vec![1, 512],
        1 => vec![r.below(4) as i64, 512],
        2 => vec![-1, 512],
        3 => (0..r.below(70)).map(|_| r.below(3) as i64).collect(),
        4 => vec![i64::MAX, i64::MAX],
        _ => vec![(r.below(3) + 1) as i64, r.below(600) as i64],
    }
}

fn data(r: &mut Rng, n: usize) -> Value {
    match r.below(5) {
        0 => Value::Array((0..n).map(|_| scalar(r)).collect()),
        1 => json!([vec![0.5f32; n.min(4096)]]),
        2 => scalar(r),
        3 => {
            // Deep nesting.
            let mut v = json!(1.0);
            for _ in 0..r.below(200) {
                v = json!([v]);
            }
            v
        }
        _ => json!(vec![0.25f32; n.min(4096)]),
    }
}

fn params(r: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..r.below(3) {
        let (k, v) = match r.below(7) {
            0 => ("binary_data_size", json!(r.below(5000))),
            1 => ("binary_data_size", json!("a lot")),
            2 => ("binary_data", json!(r.chance(50))),
            3 => ("binary_data_output", scalar(r)),
            4 => ("shared_memory_region", json!("r")),
            5 => ("classification", json!(3)),
            _ => ("anything", data(r, 10)),
        };
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// One generated HTTP inference request: body and headers.
fn http_case(r: &mut Rng) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let mut headers = Vec::new();
    let s = shape(r);
    let n = s.iter().map(|&d| d.clamp(0, 4096) as usize).product::<usize>().min(8192);
    let mut doc = json!({"inputs": [{"name": if r.chance(90) { "input0" } else { "x" }, "datatype": r.pick(&DATATYPES), "shape": s, "data": data(r, n)}]});
    if r.chance(30) {
        doc["inputs"][0]["parameters"] = params(r);
    }
    if r.chance(30) {
        doc["parameters"] = params(r);
    }
    if r.chance(30) {
        doc["outputs"] = json!([{"name": if r.chance(70) { "output0" } else { "y" }, "parameters": params(r)}]);
    }
    if r.chance(10) {
        doc["id"] = scalar(r);
    }
    let mut body = doc.to_string().into_bytes();
    if r.chance(25) {
        // Binary tail with a head length, right or wrong.
        let head = body.len();
        body.extend(r.some_bytes(3000));
        let claimed = match r.below(4) {
            0 => head.to_string(),
            1 => (head + r.below(100) as usize).to_string(),
            2 => "-1".into(),
            _ => "not a number".into(),
        };
        headers.push(("inference-header-content-length", claimed));
    }
    match r.below(10) {
        0 => {
            // Mutate a few bytes.
            for _ in 0..1 + r.below(8) {
                if body.is_empty() {
                    break;
                }
                let i = r.below(body.len() as u64) as usize;
                body[i] = r.next() as u8;
            }
        }
        1 => body.truncate(r.below(body.len() as u64 + 1) as usize),
        2 => body = r.some_bytes(2000),
        _ => {}
    }
    if r.chance(5) {
        headers.push(("content-encoding", r.pick(&["gzip", "deflate", "br", "identity"]).to_string()));
    }
    (body, headers)
}

/// One generated gRPC ModelInfer request body (framed, or not quite).
fn grpc_case(r: &mut Rng) -> Vec<u8> {
    let good = good_mlp_grpc();
    match r.below(6) {
        0 => r.some_bytes(300),
        1 => {
            let mut f = grpc_frame(&prost::Message::encode_to_vec(&good));
            for _ in 0..1 + r.below(6) {
                let i = 5 + r.below((f.len() - 5) as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
            f
        }
        2 => {
            // A prefix that lies about the length.
            let m = prost::Message::encode_to_vec(&good);
            let mut f = vec![r.below(2) as u8];
            f.extend_from_slice(&((m.len() as u64 + r.below(64)).saturating_sub(32) as u32).to_be_bytes());
            f.extend_from_slice(&m);
            f
        }
        _ => {
            let s = shape(r);
            let n = s.iter().map(|&d| d.clamp(0, 4096) as usize).product::<usize>().min(8192);
            let mut m = pb::ModelInferRequest {
                model_name: r.pick(&["small-mlp", "small-mlp", "nope", ""]).to_string(),
                model_version: r.pick(&["", "1", "2"]).to_string(),
                inputs: vec![pb::model_infer_request::InferInputTensor { name: r.pick(&["input0", "input0", "x"]).to_string(), datatype: r.pick(&DATATYPES).to_string(), shape: s, ..Default::default() }],
                ..Default::default()
            };
            match r.below(3) {
                0 => {
                    let k = r.below(9) as usize;
                    m.raw_input_contents = vec![r.bytes(n * k).into()];
                }
                1 => m.inputs[0].contents = Some(pb::InferTensorContents { fp32_contents: vec![0.5; n], int_contents: vec![300; n], uint_contents: vec![7; n], ..Default::default() }),
                _ => {}
            }
            if r.chance(20) {
                let p = pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)) };
                let key = r.pick(&["classification", "shared_memory_region", "binary_data", "binary_data_size"]).to_string();
                m.outputs.push(pb::model_infer_request::InferRequestedOutputTensor { name: "output0".into(), parameters: [(key, p)].into() });
            }
            grpc_frame(&prost::Message::encode_to_vec(&m))
        }
    }
}

/// A raw request line the generator garbles: method, path, version; answered by a route, by
/// axum's extractors or by hyper itself, always with a JSON error body.
fn raw_line(r: &mut Rng) -> Vec<u8> {
    let method = r.pick(&["GET", "POST", "PUT", "DELETE", "G\u{1}T", ""]).to_string();
    let path = match r.below(5) {
        0 => "/v2/models/%FF/infer".to_string(),
        1 => format!("/v2/models/{}/ready", "a".repeat(r.below(70_000) as usize)),
        2 => "/v2/models/small-mlp/versions/%00/config".to_string(),
        3 => String::from_utf8_lossy(&r.bytes(20)).replace(['\r', '\n', ' '], "_"),
        _ => "/v2/health/ready".to_string(),
    };
    format!("{method} {path} HTTP/1.{}\r\nhost: x\r\ncontent-length: 0\r\n\r\n", r.below(3)).into_bytes()
}

#[test]
fn generated_requests_never_break_the_server_and_the_counters_add_up() {
    let seed: u64 = std::env::var("TCH_STREAMS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2024);
    let cases: usize = std::env::var("TCH_STREAMS_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    eprintln!("fuzz seed {seed} (TCH_STREAMS_FUZZ_SEED), {cases} cases per protocol");
    let mut r = Rng(seed | 1);
    let server = Served::start(&["--builtin", "small-mlp", "--batch-max", "0", "--max-request-bytes", "1048576", "--body-timeout-s", "5"]);
    let http_ok = [200u16, 400, 404, 413, 415, 503];
    let mut http_counted = 0.0;
    let mut conn = Http::connect(&server.http);
    for i in 0..cases {
        let (body, headers) = http_case(&mut r);
        let reply = conn.try_send("POST", "/v2/models/small-mlp/infer", &headers, &body);
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => panic!("seed {seed} HTTP case {i}: no answer ({e}); headers {headers:?}, body {:?}", String::from_utf8_lossy(&body[..body.len().min(300)])),
        };
        http_counted += 1.0;
        assert!(http_ok.contains(&reply.status), "seed {seed} HTTP case {i}: {} {}; body {:?}", reply.status, reply.text(), String::from_utf8_lossy(&body[..body.len().min(300)]));
        if reply.status != 200 {
            assert!(reply.json()["error"].is_string(), "seed {seed} HTTP case {i}: {}", reply.text());
        }
        if reply.header("connection") == Some("close") {
            conn = Http::connect(&server.http);
        }
        let good = conn.send("POST", "/v2/models/small-mlp/infer", &[], good_mlp_json().to_string().as_bytes());
        assert_eq!(good.status, 200, "seed {seed}: the good request after HTTP case {i}: {}", good.text());
        http_counted += 1.0;
    }
    for i in 0..cases / 8 {
        let line = raw_line(&mut r);
        let mut s = TcpStream::connect(&server.http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(&line);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer's head and a little of its body is enough.
        while out.len() < 2 || !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "), "seed {seed} request line {i}: {text:.200}");
        let status: u16 = text[9..12].parse().unwrap_or(0);
        assert!(status != 500 && status != 0, "seed {seed} request line {i}: {text:.300}");
        if status >= 400 {
            assert!(text.to_ascii_lowercase().contains("content-type: application/json"), "seed {seed} request line {i}: {text:.300}");
        }
        let good = Http::connect(&server.http).send("POST", "/v2/models/small-mlp/infer", &[], good_mlp_json().to_string().as_bytes());
        assert_eq!(good.status, 200);
        http_counted += 1.0;
    }
    let grpc_ok = [0, 3, 4, 5, 8, 11, 12];
    let mut grpc_counted = 0.0;
    let mut g = Grpc::connect(&server.grpc);
    for i in 0..cases {
        let body = grpc_case(&mut r);
        let timeout = if r.chance(10) { vec![("grpc-timeout", *r.pick(&["1n", "50m", "99999999S", "x", "5"]))] } else { vec![] };
        let reply = g.call_raw("ModelInfer", body.clone(), &timeout, Duration::from_secs(30));
        grpc_counted += 1.0;
        match reply {
            Ok(reply) => assert!(reply.code.is_some_and(|c| grpc_ok.contains(&c)), "seed {seed} gRPC case {i}: {reply:?}"),
            // The server may reset a stream it cannot read as HTTP/2 (it still counts it).
            Err(e) => {
                eprintln!("seed {seed} gRPC case {i}: stream error {e}");
                g = Grpc::connect(&server.grpc);
            }
        }
        let good = g.call("ModelInfer", &good_mlp_grpc(), Duration::from_secs(30)).unwrap_or_else(|e| panic!("seed {seed}: the good gRPC request after case {i}: {e}"));
        assert_eq!(good.code, Some(0), "seed {seed}: the good gRPC request after case {i}: {}", good.message);
        grpc_counted += 1.0;
    }
    // The counters add up. A handler leaves the in-flight gauge before its outcome is counted,
    // so the totals are awaited too (at least the expected count; the asserts check it exactly).
    let total = |t: &str, protocol: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("tch_streams_requests_total{") && l.contains(&format!("protocol=\"{protocol}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    serve_common::eventually(Duration::from_secs(20), || {
        let t = server.scrape();
        sample(&t, "tch_streams_inflight_requests", &[("model", "small-mlp")]) == Some(0.0)
            && sample(&t, "tch_streams_buffered_bytes", &[]) == Some(0.0)
            && total(&t, "http") >= http_counted
            && total(&t, "grpc") >= grpc_counted
    });
    let t = server.scrape();
    assert_eq!(sample(&t, "tch_streams_inflight_requests", &[("model", "small-mlp")]), Some(0.0), "seed {seed}: requests left in flight\n{t}");
    assert_eq!(sample(&t, "tch_streams_buffered_bytes", &[]), Some(0.0), "seed {seed}: bytes left buffered\n{t}");
    assert_eq!(total(&t, "http"), http_counted, "seed {seed}: HTTP requests counted\n{t}");
    assert_eq!(total(&t, "grpc"), grpc_counted, "seed {seed}: gRPC requests counted\n{t}");
    let engine = |result: &str| sample(&t, "tch_streams_engine_requests_total", &[("model", "small-mlp"), ("result", result)]).unwrap_or(-1.0);
    assert_eq!(engine("submitted"), engine("completed") + engine("failed") + engine("cancelled"), "{t}");
    let errors = t.lines().filter(|l| l.starts_with("tch_streams_requests_total{") && l.contains("outcome=\"error\"")).count();
    assert_eq!(errors, 0, "no request may end as a server error\n{t}");
}
