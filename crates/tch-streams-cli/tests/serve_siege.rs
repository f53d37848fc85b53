//! `tch-streams serve` under a mixed hostile load for several seconds (issue #24): slow bodies
//! that trickle in and stall, idle and half-sent connections past the connection cap, a flood of
//! connections opened and closed, stalled gRPC streams, and large JSON bodies — while honest
//! clients keep sending requests over both protocols. The server's memory stays within its byte
//! budget plus a margin (VmHWM of the child), health answers every poll, every honest request is
//! answered (a client whose idle connection was closed to make room reconnects once, as clients
//! do), and once the attack stops everything it held is given back. Every wait has a watchdog.

mod serve_common;

use serve_common::{good_mlp_grpc, good_mlp_json, eventually, health, memory_kib, open_fds, sample, Grpc, Http, Served};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const ATTACK: Duration = Duration::from_secs(8);

fn good_json() -> Vec<u8> {
    good_mlp_json().to_string().into_bytes()
}

/// Runs `f` in a loop on its own thread until `stop`.
fn attacker(stop: &Arc<AtomicBool>, f: impl Fn() + Send + 'static) -> JoinHandle<()> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            f();
        }
    })
}

#[test]
fn a_mixed_siege_keeps_memory_bounded_health_quick_and_honest_clients_answered() {
    let budget = 256 * MIB;
    let server = Served::start(&[
        "--builtin", "small-mlp", "--batch-max", "0", "--max-buffered-bytes", &budget.to_string(), "--max-request-bytes", &(16 * MIB).to_string(),
        "--max-connections", "256", "--idle-timeout-s", "3", "--body-timeout-s", "3", "--max-streams", "16",
    ]);
    assert_eq!(Http::connect(&server.http).send("POST", "/v2/models/small-mlp/infer", &[], &good_json()).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (base_rss, _) = memory_kib(server.pid());
    let base_fds = open_fds(server.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // 300 idle connections, and 100 that send half a request head.
    let mut idle = Vec::new();
    for i in 0..400 {
        if let Ok(mut s) = TcpStream::connect(&server.http) {
            if i % 4 == 0 {
                let _ = s.write_all(b"POST /v2/models/small-mlp/infer HTTP/1.1\r\nhost: x\r\n");
            }
            idle.push(s);
        }
    }
    // 40 slow bodies: 2 MiB declared, 64 KiB every 300 ms, so the body timeout ends them.
    for _ in 0..40 {
        let addr = server.http.clone();
        threads.push(attacker(&stop, move || {
            let Ok(mut s) = TcpStream::connect(&addr) else { return };
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let head = format!("POST /v2/models/small-mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 2 * MIB);
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(300));
                if s.write_all(&[b' '; 64 << 10]).is_err() {
                    return;
                }
            }
        }));
    }
    // A flood of connections opened and closed (some with half a head).
    for k in 0..2 {
        let addr = server.http.clone();
        threads.push(attacker(&stop, move || {
            if let Ok(mut s) = TcpStream::connect(&addr) {
                if k == 1 {
                    let _ = s.write_all(b"GET /v2/heal");
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }));
    }
    // Stalled gRPC streams: 16 per connection (the cap), each announcing 4 MiB.
    for _ in 0..2 {
        let addr = server.grpc.clone();
        threads.push(std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let g = Grpc::connect(&addr);
                let mut first = vec![0u8];
                first.extend_from_slice(&((4 * MIB) as u32).to_be_bytes());
                first.extend(vec![0u8; 256 << 10]);
                while !stop.load(Ordering::SeqCst) {
                    let open: Vec<_> = (0..16).filter_map(|_| g.stall(first.clone(), Duration::from_secs(10)).ok()).collect();
                    for (_s, resp) in open {
                        let _ = g.answer_of(resp, Duration::from_secs(20));
                    }
                }
            }
        }));
    }
    // Large JSON bodies (8 MiB of numbers), one after another.
    {
        let addr = server.http.clone();
        let rows = 8 * MIB as usize / (512 * 5);
        let mut body = format!(r#"{{"inputs":[{{"name":"input0","datatype":"FP32","shape":[{rows},512],"data":["#).into_bytes();
        for i in 0..rows * 512 {
            body.extend_from_slice(if i + 1 == rows * 512 { b"0.25" } else { b"0.25," });
        }
        body.extend_from_slice(b"]}]}");
        let body = Arc::new(body);
        threads.push(attacker(&stop, move || {
            if let Ok(mut c) = Http::try_connect(&addr) {
                let _ = c.try_send("POST", "/v2/models/small-mlp/infer", &[], &body);
            }
        }));
    }
    // Honest clients: 3 over HTTP, 1 over gRPC; every request must be answered 200.
    let honest = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    for _ in 0..3 {
        let (addr, stop, honest, failures) = (server.http.clone(), Arc::clone(&stop), Arc::clone(&honest), Arc::clone(&failures));
        threads.push(std::thread::spawn(move || {
            let mut conn = Http::try_connect(&addr).ok();
            while !stop.load(Ordering::SeqCst) {
                let mut answered = None;
                for _attempt in 0..2 {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => {
                            conn = Http::try_connect(&addr).ok();
                            continue;
                        }
                    };
                    match c.try_send("POST", "/v2/models/small-mlp/infer", &[], &good_json()) {
                        Ok(r) => {
                            answered = Some(r.status);
                            break;
                        }
                        // Closed while idle to make room: reconnect and send it again.
                        Err(_) => conn = Http::try_connect(&addr).ok(),
                    }
                }
                match answered {
                    Some(200) => {
                        honest.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().push(format!("HTTP: {other:?}")),
                }
            }
        }));
    }
    {
        let (addr, stop, honest, failures) = (server.grpc.clone(), Arc::clone(&stop), Arc::clone(&honest), Arc::clone(&failures));
        threads.push(std::thread::spawn(move || {
            let mut g = Grpc::connect(&addr);
            while !stop.load(Ordering::SeqCst) {
                let mut r = g.call("ModelInfer", &good_mlp_grpc(), Duration::from_secs(30));
                if r.is_err() {
                    g = Grpc::connect(&addr);
                    r = g.call("ModelInfer", &good_mlp_grpc(), Duration::from_secs(30));
                }
                match r {
                    Ok(reply) if reply.code == Some(0) => {
                        honest.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().push(format!("gRPC: {other:?}")),
                }
            }
        }));
    }
    // Health and memory while the siege runs.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    let mut peak_fds = 0;
    while start.elapsed() < ATTACK {
        let (status, took) = health(&server.http, Duration::from_secs(10)).unwrap_or_else(|e| panic!("health failed under the siege: {e}"));
        assert_eq!(status, 200);
        worst = worst.max(took);
        polls += 1;
        peak_fds = peak_fds.max(open_fds(server.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    drop(idle);
    let (rss, hwm) = memory_kib(server.pid());
    for t in threads {
        t.join().expect("a siege thread");
    }
    let grew_mib = hwm.saturating_sub(base_rss) / 1024;
    let answered = honest.load(Ordering::SeqCst);
    eprintln!(
        "siege: RSS {} MiB before, peak {} MiB (+{grew_mib}), {} MiB at the end; health worst {worst:?} over {polls} polls; \
         {answered} honest requests answered; fds {base_fds} before, peak {peak_fds}",
        base_rss / 1024,
        hwm / 1024,
        rss / 1024
    );
    assert!(worst < Duration::from_secs(2), "health took {worst:?} under the siege");
    assert!(grew_mib < budget / MIB + 128, "peak memory grew by {grew_mib} MiB (budget {} MiB)", budget / MIB);
    assert!(peak_fds <= base_fds + 256 + 8, "{peak_fds} fds open (cap 256 connections, {base_fds} before)");
    let failures = failures.lock().clone();
    assert!(failures.is_empty(), "honest requests not answered: {failures:?}");
    assert!(answered >= 20, "only {answered} honest requests in {ATTACK:?}");
    // Everything is given back once the attackers are gone.
    let settled = eventually(Duration::from_secs(20), || {
        let t = server.scrape();
        sample(&t, "tch_streams_buffered_bytes", &[]) == Some(0.0) && sample(&t, "tch_streams_inflight_requests", &[("model", "small-mlp")]) == Some(0.0) && open_fds(server.pid()) <= base_fds + 2
    });
    assert!(settled, "fds {} (base {base_fds})\n{}", open_fds(server.pid()), server.scrape());
    let t = server.scrape();
    assert!(!t.contains("outcome=\"error\""), "{t}");
}
