//! What the `serve_*` tests share: a server child process on ephemeral ports (killed on drop),
//! a small blocking HTTP/1.1 client, the tritonclient driver (`serve_client.py`), and a reader
//! of the Prometheus text. Every wait has a bound, so a hung server fails the test instead of
//! hanging it. `TCH_STREAMS_BIN` and `TCH_STREAMS_FIXTURES` override the binary and fixtures.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `tch-streams` binary under test.
pub fn binary() -> String {
    std::env::var("TCH_STREAMS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tch-streams").into())
}

/// The TorchScript fixtures, written once per test process by scripts/fixtures/make_models.py.
pub fn fixture(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| match std::env::var_os("TCH_STREAMS_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = std::env::temp_dir().join(format!("tch-streams-serve-fixtures-{}", std::process::id()));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/make_models.py");
            let done = Command::new("python3").arg(script).arg(&out).output().expect("python3 runs");
            assert!(done.status.success(), "make_models.py: {}", String::from_utf8_lossy(&done.stderr));
            out
        }
    });
    dir.join(name)
}

/// A running `tch-streams serve`; killed (if still running) when dropped.
pub struct Served {
    child: Option<Child>,
    /// HTTP address, e.g. 127.0.0.1:41234.
    pub http: String,
    /// gRPC address.
    pub grpc: String,
    /// Metrics address.
    pub metrics: String,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `serve` on CPU with ephemeral ports and `args`; waits (at most 180 s) until it listens.
    pub fn start(args: &[&str]) -> Served {
        let mut child = Command::new(binary())
            .arg("serve")
            .args(["--device", "cpu", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"])
            .args(args)
            .env("TCH_STREAMS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("the server starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("listening ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut served = Served { child: Some(child), http: String::new(), grpc: String::new(), metrics: String::new(), stderr };
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => {
                let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_default().to_string();
                served.http = field("http=");
                served.grpc = field("grpc=");
                served.metrics = field("metrics=");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(200)); // the last stderr lines
                panic!("the server exited before listening; stderr:\n{}", served.stderr())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("watchdog: the server did not listen within 180 s; stderr:\n{}", served.stderr()),
        }
        served
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill runs");
        assert!(ok.success(), "kill -TERM failed");
    }

    /// Waits at most `limit` for the server to exit; its exit code and stderr.
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Let the stderr reader take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return (status.code(), self.stderr());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("watchdog: the server did not exit within {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Prometheus text of the metrics port.
    pub fn scrape(&self) -> String {
        let r = Http::connect(&self.metrics).send("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection; every read is bounded by a 60 s timeout.
pub struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    /// Connects (panics if it cannot).
    pub fn connect(addr: &str) -> Http {
        Http::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects, or the error.
    pub fn try_connect(addr: &str) -> std::io::Result<Http> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        Ok(Http { reader: BufReader::new(s) })
    }

    /// Sends one request and reads its response (panics on an I/O error).
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
        self.try_send(method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends one request and reads its response.
    pub fn try_send(&mut self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<Reply> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok(Reply { status, headers, body })
    }
}

/// POSTs a JSON inference request to `/v2/models/{model}/infer`.
pub fn infer_json(conn: &mut Http, model: &str, doc: &serde_json::Value) -> Reply {
    conn.send("POST", &format!("/v2/models/{model}/infer"), &[("content-type", "application/json".into())], doc.to_string().as_bytes())
}

/// Runs `serve_client.py` with the venv's python3 (at most `secs`), returns its JSON.
pub fn tritonclient(args: &[&str], secs: u64) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    let out = rx.recv_timeout(Duration::from_secs(secs)).expect("watchdog: serve_client.py did not finish in time").expect("python3 runs");
    assert!(
        out.status.success(),
        "serve_client.py {args:?} failed (is tritonclient installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("serve_client.py printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The value of the sample `name{labels}` in Prometheus text (labels in any order), or None.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let have: Vec<&str> = rest.trim_end_matches('}').split(',').filter(|s| !s.is_empty()).collect();
        let all = labels.iter().all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()));
        (all && have.len() == labels.len()).then(|| value.parse().ok()).flatten()
    })
}

/// The server child's resident memory now and its peak, KiB (`VmRSS`, `VmHWM` of
/// /proc/PID/status).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open file descriptors of a process (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `GET /v2/health/live` on a fresh connection: its status and how long the answer took, or the
/// error (connect or read; every read is bounded by `limit`).
pub fn health(addr: &str, limit: Duration) -> Result<(u16, Duration), String> {
    let start = Instant::now();
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut conn = Http { reader: BufReader::new(s) };
    let r = conn.try_send("GET", "/v2/health/live", &[], b"").map_err(|e| format!("after {:?}: {e}", start.elapsed()))?;
    Ok((r.status, start.elapsed()))
}

/// Polls `f` every 50 ms until it is true; false if `limit` passed first.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One gRPC answer as the wire carried it.
#[derive(Debug)]
pub struct GrpcReply {
    /// `grpc-status` (trailers, or headers of a trailers-only answer); None if absent.
    pub code: Option<i32>,
    /// `grpc-message`, percent-decoded.
    pub message: String,
    /// The answer's message bytes (without the 5-byte prefix), if any.
    pub body: Vec<u8>,
}

/// A raw HTTP/2 connection for gRPC calls, with its own small runtime; every call is bounded.
pub struct Grpc {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<bytes::Bytes>,
}

/// A gRPC message frame: uncompressed flag, big-endian length, bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Grpc {
    /// Connects to a gRPC address (panics if it cannot within 10 s).
    pub fn connect(addr: &str) -> Grpc {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let addr = addr.to_string();
        let send = rt
            .block_on(async move {
                tokio::time::timeout(Duration::from_secs(10), async move {
                    let tcp = tokio::net::TcpStream::connect(&addr).await?;
                    let (send, conn) = h2::client::Builder::new().initial_window_size(8 << 20).handshake(tcp).await.map_err(std::io::Error::other)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok::<_, std::io::Error>(send)
                })
                .await
            })
            .expect("watchdog: gRPC connect within 10 s")
            .expect("gRPC connect");
        let g = Grpc { rt, send };
        // One round trip: the server's SETTINGS (its stream cap among them) are in force after it.
        let live = g.call_raw("ServerLive", grpc_frame(&[]), &[], Duration::from_secs(10)).expect("ServerLive");
        assert_eq!(live.code, Some(0), "ServerLive: {}", live.message);
        g
    }

    /// Calls `method` (e.g. `ModelInfer`) with `body` (already framed) and extra headers;
    /// the reply, or an error if the stream failed or `limit` passed.
    pub fn call_raw(&self, method: &str, body: Vec<u8>, headers: &[(&str, &str)], limit: Duration) -> Result<GrpcReply, String> {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://test/inference.GRPCInferenceService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).expect("a request");
        let send = self.send.clone();
        self.rt.block_on(async move {
            let work = async move {
                let mut send = send.ready().await.map_err(|e| e.to_string())?;
                let (resp, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
                stream.send_data(bytes::Bytes::from(body), true).map_err(|e| e.to_string())?;
                let resp = resp.await.map_err(|e| e.to_string())?;
                let (parts, mut recv) = resp.into_parts();
                let mut data = Vec::new();
                while let Some(chunk) = recv.data().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                let trailers = recv.trailers().await.map_err(|e| e.to_string())?.unwrap_or_default();
                let get = |k: &str| trailers.get(k).or_else(|| parts.headers.get(k)).and_then(|v| v.to_str().ok()).map(str::to_string);
                Ok(GrpcReply {
                    code: get("grpc-status").and_then(|v| v.parse().ok()),
                    message: get("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default(),
                    body: if data.len() >= 5 { data[5..].to_vec() } else { data },
                })
            };
            tokio::time::timeout(limit, work).await.map_err(|_| format!("no answer within {limit:?}"))?
        })
    }

    /// Calls `method` with a prost message.
    pub fn call<M: prost::Message>(&self, method: &str, message: &M, limit: Duration) -> Result<GrpcReply, String> {
        self.call_raw(method, grpc_frame(&message.encode_to_vec()), &[], limit)
    }

    /// Opens a ModelInfer stream, sends `bytes` of its body and leaves it open (stalled); the
    /// stream handle keeps it so until dropped.
    pub fn stall(&self, bytes: Vec<u8>, limit: Duration) -> Result<(h2::SendStream<bytes::Bytes>, h2::client::ResponseFuture), String> {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://test/inference.GRPCInferenceService/ModelInfer")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let send = self.send.clone();
        self.rt.block_on(async move {
            let work = async move {
                let mut send = send.ready().await.map_err(|e| e.to_string())?;
                let (resp, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
                stream.reserve_capacity(bytes.len());
                stream.send_data(bytes::Bytes::from(bytes), false).map_err(|e| e.to_string())?;
                Ok((stream, resp))
            };
            tokio::time::timeout(limit, work).await.map_err(|_| format!("could not open a stream within {limit:?}"))?
        })
    }

    /// Sends a whole request (`bytes`, framed) on a new ModelInfer stream without waiting for the
    /// answer; dropping the returned handles resets the stream (a client's cancellation).
    pub fn stall_with_end(&self, bytes: Vec<u8>) -> Result<(h2::SendStream<bytes::Bytes>, h2::client::ResponseFuture), String> {
        let (mut stream, resp) = self.stall(Vec::new(), Duration::from_secs(10))?;
        stream.send_data(bytes::Bytes::from(bytes), true).map_err(|e| e.to_string())?;
        Ok((stream, resp))
    }

    /// Waits (at most `limit`) for the answer of a stalled stream: its grpc-status, or the error.
    pub fn answer_of(&self, resp: h2::client::ResponseFuture, limit: Duration) -> Result<Option<i32>, String> {
        self.rt.block_on(async move {
            let work = async move {
                let resp = resp.await.map_err(|e| e.to_string())?;
                let (parts, mut recv) = resp.into_parts();
                if let Some(code) = parts.headers.get("grpc-status") {
                    return Ok(code.to_str().ok().and_then(|v| v.parse().ok()));
                }
                while let Some(chunk) = recv.data().await {
                    let _ = chunk.map_err(|e| e.to_string())?;
                }
                let t = recv.trailers().await.map_err(|e| e.to_string())?.unwrap_or_default();
                Ok(t.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
            };
            tokio::time::timeout(limit, work).await.map_err(|_| format!("no answer within {limit:?}"))?
        })
    }
}

/// A JSON inference request the built-in small MLP accepts: one sample of 512 floats.
pub fn good_mlp_json() -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec![0.25f32; 512]}]})
}

/// A gRPC ModelInfer request the built-in small MLP accepts, as raw contents.
pub fn good_mlp_grpc() -> tch_streams_cli::serve::grpc::pb::ModelInferRequest {
    use tch_streams_cli::serve::grpc::pb;
    pb::ModelInferRequest {
        model_name: "small-mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor { name: "input0".into(), datatype: "FP32".into(), shape: vec![1, 512], ..Default::default() }],
        raw_input_contents: vec![vec![0u8; 2048].into()],
        ..Default::default()
    }
}
