//! `tch-streams serve` against hostile clients (issue #24, items 13–18): slow and stalled bodies,
//! idle and half-sent connections, stalled gRPC streams, huge JSON, abandoned requests, and
//! malformed wire details. Each test bounds the server's memory, file descriptors or answer
//! times with figures read from the server child (/proc/PID) and its metrics, and checks that a
//! good request is answered afterwards. Every wait has a watchdog.

mod serve_common;

use serde_json::json;
use serve_common::{good_mlp_json, good_mlp_grpc, eventually, health, infer_json, memory_kib, open_fds, sample, Grpc, Http, Served};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch_streams_cli::serve::grpc::pb;

const MIB: u64 = 1 << 20;

/// Held by every test here: each loads the machine (floods, huge bodies, seconds of model CPU)
/// and times what the server does under its own load, which another test's would upset on a
/// small machine. They run one at a time.
static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn assert_good(server: &Served) {
    let r = infer_json(&mut Http::connect(&server.http), "small-mlp", &good_mlp_json());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"][0]["shape"], json!([1, 512]));
}

fn metric(server: &Served, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&server.scrape(), name, labels).unwrap_or(0.0)
}

/// Health must answer while an attack runs. The bound is generous on purpose (a loaded 2-core
/// CI machine): a server whose runtime is blocked, or whose connections are exhausted, takes
/// far longer or never answers, which is what this catches.
const HEALTH_BOUND: Duration = Duration::from_secs(2);

/// Issue #24 item 13: 100 clients each declare a 64 MiB body, send 20 MiB of it and stall. The
/// byte budget (128 MiB here) admits two of them; the rest are refused at once with 503 before
/// their bodies are read; the two admitted get 408 when the body timeout passes. The server's
/// peak memory stays within the budget plus a margin (before the fix: +1.8 GB), health answers
/// throughout, and every attacker's request is counted once.
#[test]
fn a_slow_body_flood_stays_within_the_byte_budget_and_health_answers() {
    let _alone = cpu_heavy();
    let budget = 128 * MIB;
    let server = Served::start(&["--builtin", "small-mlp", "--max-buffered-bytes", &budget.to_string(), "--body-timeout-s", "4"]);
    assert_good(&server);
    let (base_rss, _) = memory_kib(server.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut attackers = Vec::new();
    for _ in 0..100 {
        let (addr, stop, statuses) = (server.http.clone(), Arc::clone(&stop), Arc::clone(&statuses));
        attackers.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(&addr) else { return };
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let head = format!("POST /v2/models/small-mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", 64 * MIB);
            let chunk = vec![b' '; MIB as usize];
            let mut ok = s.write_all(head.as_bytes()).is_ok();
            for _ in 0..20 {
                if !ok || stop.load(Ordering::SeqCst) {
                    break;
                }
                ok = s.write_all(&chunk).is_ok();
            }
            // Stalled: read what the server says (a refusal now, or a timeout later).
            let mut buf = [0u8; 512];
            let status = match s.read(&mut buf) {
                Ok(n) if n > 12 => String::from_utf8_lossy(&buf[9..12]).into_owned(),
                Ok(_) => "closed".into(),
                Err(e) => format!("error {:?}", e.kind()),
            };
            statuses.lock().push(status);
        }));
    }
    // While the attack runs: health answers, memory stays bounded.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let (status, took) = health(&server.http, Duration::from_secs(10)).unwrap_or_else(|e| panic!("health failed during the attack: {e}"));
        assert_eq!(status, 200);
        worst = worst.max(took);
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        a.join().expect("attacker thread");
    }
    let (rss, hwm) = memory_kib(server.pid());
    let grew_mib = hwm.saturating_sub(base_rss) / 1024;
    eprintln!("slow-body flood: RSS {} MiB before, peak {} MiB (+{grew_mib} MiB), now {} MiB; health worst {worst:?} over {polls} polls", base_rss / 1024, hwm / 1024, rss / 1024);
    assert!(worst < HEALTH_BOUND, "health took {worst:?} during the attack");
    assert!(grew_mib < budget / MIB + 64, "the server's peak memory grew by {grew_mib} MiB, more than the budget of {} MiB plus 64", budget / MIB);
    // A refused client may see the 503, or (still writing its body when the server closed) a
    // reset: both are refusals; the server's own count below is exact.
    let statuses = statuses.lock().clone();
    let timed_out = statuses.iter().filter(|s| *s == "408").count();
    let answered_ok = statuses.iter().filter(|s| *s == "200" || *s == "400").count();
    assert!(timed_out <= 2 && answered_ok == 0, "statuses: {statuses:?}");
    // Every attacker's request is counted exactly once; the budget is all given back.
    let all_counted = eventually(Duration::from_secs(10), || {
        let t = server.scrape();
        let n = |o: &str| sample(&t, "tch_streams_requests_total", &[("model", "small-mlp"), ("protocol", "http"), ("outcome", o)]).unwrap_or(0.0);
        n("exhausted") + n("body_timeout") == 100.0 && sample(&t, "tch_streams_buffered_bytes", &[]) == Some(0.0)
    });
    assert!(all_counted, "{}", server.scrape());
    assert!(metric(&server, "tch_streams_requests_total", &[("model", "small-mlp"), ("protocol", "http"), ("outcome", "exhausted")]) >= 98.0);
    assert_good(&server);
}

/// Issue #24 item 13: 300 idle connections and 100 that send half a request head. With
/// `--max-connections 64` the server never holds more than the cap (its open file descriptors
/// say so), makes room by closing the connection idle the longest, so health still connects
/// and answers; and the idle timeout closes them all (before the fix: all 400 stayed open).
#[test]
fn idle_and_half_sent_connections_are_capped_evicted_and_timed_out() {
    let _alone = cpu_heavy();
    let server = Served::start(&["--builtin", "small-mlp", "--max-connections", "64", "--idle-timeout-s", "3"]);
    assert_good(&server);
    std::thread::sleep(Duration::from_millis(200));
    let base_fds = open_fds(server.pid());
    let mut held = Vec::new();
    for i in 0..400 {
        let Ok(mut s) = TcpStream::connect(&server.http) else { break };
        if i % 4 == 0 {
            let _ = s.write_all(b"POST /v2/models/small-mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-le");
        }
        held.push(s);
    }
    // Health gets through while all 400 are held: the cap evicts idle connections for it.
    for _ in 0..5 {
        let (status, took) = health(&server.http, Duration::from_secs(10)).unwrap_or_else(|e| panic!("health during the flood: {e}"));
        assert_eq!(status, 200);
        assert!(took < HEALTH_BOUND, "health took {took:?}");
    }
    let fds = open_fds(server.pid());
    eprintln!("idle flood: {base_fds} fds before, {fds} with 400 connections held (cap 64)");
    assert!(fds <= base_fds + 64 + 2, "{fds} open fds with 400 connections held: the cap is 64 (base {base_fds})");
    // The idle timeout closes them all.
    let closed = eventually(Duration::from_secs(15), || open_fds(server.pid()) <= base_fds + 1);
    assert!(closed, "{} fds still open after the idle timeout (base {base_fds})", open_fds(server.pid()));
    let open = metric(&server, "tch_streams_open_connections", &[]);
    assert!(open <= 1.0, "{open} connections open");
    drop(held);
    assert_good(&server);
}

/// Issue #24 item 13: one gRPC connection opens ModelInfer streams that stall. `--max-streams
/// 16` caps the streams it may have open at once (a 17th cannot open while 16 stall with half
/// a length prefix); then, three rounds of 16 streams each announce a 60 MiB message, send
/// 2 MiB of it and stall: the budget (128 MiB) admits two per round and refuses the rest with
/// RESOURCE_EXHAUSTED as soon as their length prefix arrives, the body timeout ends the
/// admitted ones with DEADLINE_EXCEEDED. Memory stays bounded (before the fix: +1.8 GB for 50
/// such streams), every stream is counted once.
#[test]
fn stalled_grpc_streams_are_capped_and_refused_beyond_the_budget() {
    let _alone = cpu_heavy();
    let budget = 128 * MIB;
    let server = Served::start(&["--builtin", "small-mlp", "--max-buffered-bytes", &budget.to_string(), "--body-timeout-s", "2", "--max-streams", "16"]);
    assert_good(&server);
    let (base_rss, _) = memory_kib(server.pid());
    let g = Grpc::connect(&server.grpc);
    let wait = Duration::from_secs(20);
    // One good call first on this connection: its answer arrives after the server's SETTINGS, so
    // the client knows the stream cap before it opens the streams below (otherwise a loaded
    // machine can open a 17th before learning it, and the server refuses that stream instead).
    let first = g.call("ModelInfer", &good_mlp_grpc(), wait).expect("a good request before the stalls");
    assert_eq!(first.code, Some(0), "{}", first.message);
    // The stream cap.
    let partial: Vec<_> = (0..16).map(|_| g.stall(vec![0u8, 0, 0], Duration::from_secs(5)).expect("a stream under the cap")).collect();
    // A 17th, complete and good, waits for a free stream: it is answered only after a stalled
    // one ended (without the cap it would be answered at once).
    let ok = g.call("ModelInfer", &good_mlp_grpc(), wait).expect("the 17th request");
    assert_eq!(ok.code, Some(0), "{}", ok.message);
    let ended = metric(&server, "tch_streams_requests_total", &[("model", ""), ("protocol", "grpc"), ("outcome", "body_timeout")]);
    assert!(ended >= 1.0, "the 17th stream was served while 16 were open (--max-streams 16)");
    let codes: Vec<_> = partial.into_iter().map(|(_s, resp)| g.answer_of(resp, wait)).collect();
    assert!(codes.iter().all(|c| matches!(c, Ok(Some(4)))), "half-sent streams end with DEADLINE_EXCEEDED: {codes:?}");
    // The budget.
    let mut first = vec![0u8];
    first.extend_from_slice(&((60 * MIB) as u32).to_be_bytes());
    first.extend(vec![0u8; 2 * MIB as usize]);
    let mut codes = Vec::new();
    for _round in 0..3 {
        let open: Vec<_> = (0..16).map(|_| g.stall(first.clone(), Duration::from_secs(10)).expect("a stream")).collect();
        let (status, took) = health(&server.http, Duration::from_secs(10)).expect("health during the stalled streams");
        assert_eq!(status, 200);
        assert!(took < HEALTH_BOUND, "health took {took:?}");
        codes.extend(open.into_iter().map(|(_s, resp)| g.answer_of(resp, wait)));
    }
    let (_, hwm) = memory_kib(server.pid());
    let grew_mib = hwm.saturating_sub(base_rss) / 1024;
    eprintln!("stalled gRPC streams: peak +{grew_mib} MiB; codes {codes:?}");
    assert!(grew_mib < budget / MIB + 64, "peak memory grew by {grew_mib} MiB");
    let exhausted = codes.iter().filter(|c| matches!(c, Ok(Some(8)))).count();
    let deadline = codes.iter().filter(|c| matches!(c, Ok(Some(4)))).count();
    assert_eq!((exhausted, deadline), (42, 6), "codes: {codes:?}");
    let t = server.scrape();
    let n = |o: &str| sample(&t, "tch_streams_requests_total", &[("model", ""), ("protocol", "grpc"), ("outcome", o)]).unwrap_or(0.0);
    assert_eq!((n("exhausted"), n("body_timeout")), (42.0, 22.0), "{t}");
    assert_eq!(sample(&t, "tch_streams_buffered_bytes", &[]), Some(0.0), "{t}");
    // The connection still serves a good request.
    let ok = g.call("ModelInfer", &good_mlp_grpc(), Duration::from_secs(30)).expect("a good gRPC request");
    assert_eq!(ok.code, Some(0), "{}", ok.message);
    assert_good(&server);
}

/// A `data` array of `rows` x 512 FP32 values `0.25` whose last value is a string: the server
/// must decode all of it (about 5 bytes per value) before it can refuse it.
fn huge_json(rows: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"inputs":[{{"name":"input0","datatype":"FP32","shape":[{rows},512],"data":["#).into_bytes();
    for _ in 0..rows * 512 - 1 {
        body.extend_from_slice(b"0.25,");
    }
    body.extend_from_slice(b"\"x\"]}]}");
    body
}

/// Issue #24 item 14: two 64 MiB JSON bodies decoded at once. Decoding runs on blocking
/// threads straight into the tensor (no JSON tree), so health answers meanwhile (before: 1.7 to
/// 6.4 s) and the server's peak memory grows by about the bodies and their tensors (before:
/// 2.6 GB for two); decoding is counted in the byte budget: a request whose tensor alone
/// exceeds it is refused with 503 before anything is parsed.
#[test]
fn huge_json_bodies_decode_off_the_async_threads_within_the_budget() {
    let _alone = cpu_heavy();
    let budget = 240 * MIB;
    let server = Served::start(&["--builtin", "small-mlp", "--max-batch-size", "131072", "--max-buffered-bytes", &budget.to_string()]);
    assert_good(&server);
    let (base_rss, _) = memory_kib(server.pid());
    let body = Arc::new(huge_json(25_000));
    assert!(body.len() < 64 * MIB as usize);
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (addr, body) = (server.http.clone(), Arc::clone(&body));
            std::thread::spawn(move || {
                let r = Http::connect(&addr).send("POST", "/v2/models/small-mlp/infer", &[], &body);
                (r.status, r.text())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    while !senders.iter().all(|s| s.is_finished()) {
        let (status, took) = health(&server.http, Duration::from_secs(20)).unwrap_or_else(|e| panic!("health during decoding: {e}"));
        assert_eq!(status, 200);
        worst = worst.max(took);
        polls += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in senders {
        let (status, text) = s.join().expect("sender");
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(r#"input \"input0\": data holds \"x\", expected a number for FP32"#), "{text}");
    }
    let (_, hwm) = memory_kib(server.pid());
    let grew_mib = hwm.saturating_sub(base_rss) / 1024;
    eprintln!("two 64 MiB JSON bodies: peak +{grew_mib} MiB; health worst {worst:?} over {polls} polls");
    assert!(polls >= 3, "the decoding took {polls} health polls: too quick to measure anything");
    assert!(worst < HEALTH_BOUND, "health took {worst:?} while JSON was decoded");
    assert!(grew_mib < 600, "peak memory grew by {grew_mib} MiB for two 64 MiB JSON bodies");
    // A tensor of 256 MiB (131072 x 512 FP32) does not fit a 240 MiB budget: refused before its
    // data is parsed.
    let r = infer_json(&mut Http::connect(&server.http), "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [131072, 512], "data": [0]}]}));
    assert_eq!(r.status, 503, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.starts_with("the server cannot buffer 268435456 more byte(s)") && e.contains("(--max-buffered-bytes)"), "{e}");
    assert_eq!(metric(&server, "tch_streams_buffered_bytes", &[]), 0.0);
    assert_good(&server);
}

/// A binary request for the large MLP of `rows` x 2048 zeros (8 KiB a row): its body and head
/// length header.
fn large_mlp_request(rows: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let head = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [rows, 2048], "parameters": {"binary_data_size": rows * 8192}}],
                      "outputs": [{"name": "output0", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.resize(head.len() + rows * 8192, 0);
    (body, vec![("inference-header-content-length", head.len().to_string())])
}

fn large_mlp_grpc(rows: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "large-mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor { name: "input0".into(), datatype: "FP32".into(), shape: vec![rows as i64, 2048], ..Default::default() }],
        raw_input_contents: vec![vec![0u8; rows * 8192].into()],
        ..Default::default()
    }
}

/// Issue #24 item 15: with one worker and no batching, one long request (6144 x 2048 through
/// the large MLP, seconds of compute on a 2-core machine) is running when 9 more HTTP clients
/// send a small request (64 rows) and 10 gRPC requests arrive; then every client goes (HTTP
/// disconnects, gRPC cancellations). Only the two requests inside the model's window reach the
/// engine; the other 18 leave the line unrun (tch_streams_skipped_requests_total) and all 20 are
/// counted as cancelled. A trivial request afterwards is answered (before the fix every abandoned
/// request ran: the next one waited about 20 s and timed out). The small requests take
/// milliseconds to send, so they are all in while the long one still runs, however loaded the
/// machine.
#[test]
fn abandoned_requests_are_skipped_before_the_engine_and_counted_as_cancelled() {
    let _alone = cpu_heavy();
    let server = Served::start(&["--builtin", "large-mlp", "--workers", "1", "--batch-max", "0", "--request-timeout-ms", "60000", "--max-batch-size", "8192"]);
    let send = |rows: usize| {
        let (body, headers) = large_mlp_request(rows);
        let mut s = TcpStream::connect(&server.http).expect("connect");
        let mut head = format!("POST /v2/models/large-mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body)).expect("send");
        s
    };
    let mut gone = vec![send(6144)];
    let running = eventually(Duration::from_secs(30), || metric(&server, "tch_streams_inflight_requests", &[("model", "large-mlp")]) == 1.0);
    assert!(running, "the long request never arrived: {}", server.scrape());
    for _ in 0..9 {
        gone.push(send(64));
    }
    let g = Grpc::connect(&server.grpc);
    let message = serve_common::grpc_frame(&prost::Message::encode_to_vec(&large_mlp_grpc(64)));
    let cancelled: Vec<_> = (0..10).map(|_| g.stall_with_end(message.clone()).expect("a gRPC request")).collect();
    // Every request is in the server (read and waiting, or running) before the clients go.
    let all_in = eventually(Duration::from_secs(30), || metric(&server, "tch_streams_inflight_requests", &[("model", "large-mlp")]) == 20.0);
    assert!(all_in, "{}", server.scrape());
    drop(gone); // the HTTP clients disconnect
    drop(cancelled); // the gRPC streams are reset (CANCEL)
    // A handler leaves the in-flight gauge (end of its engine stage) before its outcome is
    // counted, so both are awaited: the gauge at zero, then the counts the asserts check.
    let cancelled_by = |t: &str, p: &str| sample(t, "tch_streams_requests_total", &[("model", "large-mlp"), ("protocol", p), ("outcome", "cancelled")]).unwrap_or(0.0);
    let all_gone = eventually(Duration::from_secs(10), || {
        let t = server.scrape();
        sample(&t, "tch_streams_inflight_requests", &[("model", "large-mlp")]) == Some(0.0) && cancelled_by(&t, "http") + cancelled_by(&t, "grpc") >= 20.0
    });
    assert!(all_gone, "{}", server.scrape());
    let t = server.scrape();
    assert_eq!((cancelled_by(&t, "http"), cancelled_by(&t, "grpc")), (10.0, 10.0), "{t}");
    assert_eq!(sample(&t, "tch_streams_skipped_requests_total", &[("model", "large-mlp")]), Some(18.0), "{t}");
    // The trivial request waits at most for the two abandoned requests the engine holds.
    let (small, small_headers) = large_mlp_request(1);
    let r = Http::connect(&server.http).send("POST", "/v2/models/large-mlp/infer", &small_headers, &small);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = server.scrape();
    assert_eq!(sample(&t, "tch_streams_engine_requests_total", &[("model", "large-mlp"), ("result", "submitted")]), Some(3.0), "{t}");
}

/// One bad request, as each protocol would carry it: the input's datatype, shape, byte count and
/// name, and the parameters at each level (name -> integer value).
struct Case {
    input: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    bytes: usize,
    request_params: &'static [&'static str],
    input_params: &'static [&'static str],
    output: Option<(&'static str, &'static [&'static str])>,
}

impl Case {
    fn good() -> Case {
        Case { input: "input0", datatype: "FP32", shape: vec![1, 512], bytes: 2048, request_params: &[], input_params: &[], output: None }
    }

    fn http(&self, server: &Served) -> (u16, String) {
        let params = |names: &[&str]| names.iter().map(|n| (n.to_string(), json!(2))).collect::<serde_json::Map<_, _>>();
        let mut input_params = params(self.input_params);
        input_params.insert("binary_data_size".into(), json!(self.bytes));
        let mut head = json!({"parameters": params(self.request_params),
                              "inputs": [{"name": self.input, "datatype": self.datatype, "shape": self.shape, "parameters": input_params}]});
        if let Some((name, p)) = self.output {
            head["outputs"] = json!([{"name": name, "parameters": params(p)}]);
        }
        let head = head.to_string();
        let mut body = head.clone().into_bytes();
        body.resize(head.len() + self.bytes, 0);
        let r = Http::connect(&server.http).send("POST", "/v2/models/small-mlp/infer", &[("inference-header-content-length", head.len().to_string())], &body);
        (r.status, r.json()["error"].as_str().unwrap_or_default().to_string())
    }

    fn grpc(&self, g: &Grpc) -> (Option<i32>, String) {
        let params = |names: &[&str]| {
            names.iter().map(|n| (n.to_string(), pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(2)) })).collect()
        };
        let r = pb::ModelInferRequest {
            model_name: "small-mlp".into(),
            parameters: params(self.request_params),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: self.input.into(),
                datatype: self.datatype.into(),
                shape: self.shape.clone(),
                parameters: params(self.input_params),
                ..Default::default()
            }],
            outputs: self.output.map_or_else(Vec::new, |(name, p)| vec![pb::model_infer_request::InferRequestedOutputTensor { name: name.into(), parameters: params(p) }]),
            raw_input_contents: vec![vec![0u8; self.bytes].into()],
            ..Default::default()
        };
        let reply = g.call("ModelInfer", &r, Duration::from_secs(30)).expect("a gRPC answer");
        (reply.code, reply.message)
    }
}

/// Issue #24 item 16: both protocols decode into one request and validate it once, so every bad
/// request is refused by both, with the same message (HTTP 400 / INVALID_ARGUMENT). Before the
/// fix gRPC ignored output `classification` and request or output `shared_memory_*` parameters
/// and answered them.
#[test]
fn both_protocols_refuse_the_same_requests_with_the_same_messages() {
    let _alone = cpu_heavy();
    let server = Served::start(&["--builtin", "small-mlp", "--max-batch-size", "64"]);
    let g = Grpc::connect(&server.grpc);
    let cases = [
        ("classification on an output", Case { output: Some(("output0", &["classification"])), ..Case::good() }, "output \"output0\": parameter \"classification\" is not supported by this server"),
        ("shared memory on an input", Case { input_params: &["shared_memory_region"], ..Case::good() }, "input \"input0\": parameter \"shared_memory_region\" is not supported"),
        ("shared memory on an output", Case { output: Some(("output0", &["shared_memory_byte_size"])), ..Case::good() }, "output \"output0\": parameter \"shared_memory_byte_size\" is not supported"),
        ("shared memory on the request", Case { request_params: &["shared_memory_region"], ..Case::good() }, "request: parameter \"shared_memory_region\" is not supported"),
        ("an unknown output", Case { output: Some(("logits", &[])), ..Case::good() }, "unknown output \"logits\" for model small-mlp: its outputs are output0"),
        ("an unknown input", Case { input: "x", ..Case::good() }, "unknown input \"x\" for model small-mlp: its inputs are input0"),
        ("a wrong datatype", Case { datatype: "FP64", bytes: 4096, ..Case::good() }, "input \"input0\": datatype FP64 but the model takes FP32"),
        ("a wrong shape", Case { shape: vec![1, 511], bytes: 2044, ..Case::good() }, "input \"input0\": shape [1, 511] but the model takes [-1, 512]"),
        ("a batch over the maximum", Case { shape: vec![65, 512], bytes: 65 * 2048, ..Case::good() }, "input \"input0\": batch 65 is out of range: expected 1..=64 (max_batch_size)"),
        ("a wrong byte count", Case { bytes: 2044, ..Case::good() }, "input \"input0\": 2044 byte(s) of data, but shape [1, 512] of FP32 needs 2048"),
    ];
    for (what, case, message) in &cases {
        let (status, http_msg) = case.http(&server);
        let (code, grpc_msg) = case.grpc(&g);
        assert_eq!((status, code), (400, Some(3)), "{what}: HTTP {http_msg:?}, gRPC {grpc_msg:?}");
        assert!(http_msg.starts_with(message), "{what}: {http_msg:?} does not start with {message:?}");
        assert_eq!(grpc_msg, http_msg, "{what}: the protocols say it differently");
    }
    // The good request over both.
    let (status, _) = Case::good().http(&server);
    let (code, message) = Case::good().grpc(&g);
    assert_eq!((status, code), (200, Some(0)), "{message}");
    let t = server.scrape();
    let n = |p: &str| sample(&t, "tch_streams_requests_total", &[("model", "small-mlp"), ("protocol", p), ("outcome", "bad_request")]).unwrap_or(0.0);
    assert_eq!((n("http"), n("grpc")), (cases.len() as f64, cases.len() as f64), "{t}");
}
