//! The two clients of the load generator: KServe v2 over HTTP/1.1 with the binary tensor
//! extension, and over gRPC (HTTP/2, `raw_input_contents`). Each request is encoded once, before
//! the run; sending it again clones a reference-counted [`Bytes`], never the bytes.

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use prost::Message;
use serde_json::{json, Value};
use tch_streams_cli::serve::coalesce::Coalesced;
use tch_streams_cli::serve::grpc::pb;
use tokio::net::TcpStream;

/// The header that gives the JSON part's length when binary tensors follow it.
const HEADER_LENGTH: &str = "Inference-Header-Content-Length";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";

/// Which protocol the load goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with the binary tensor extension: one connection per request in flight.
    Http,
    /// gRPC over HTTP/2: requests multiplexed over --grpc-connections connections.
    Grpc,
}

/// One input: name, KServe datatype, shape (batch first).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Input {
    /// `input0`, ...
    pub name: String,
    /// `FP32`, `INT64`, ...
    pub datatype: String,
    /// Dimensions, the batch first.
    pub shape: Vec<i64>,
}

/// Bytes per element of a KServe datatype (BYTES is not supported).
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "FP16" | "BF16" | "INT16" | "UINT16" => 2,
        "FP32" | "INT32" | "UINT32" => 4,
        "FP64" | "INT64" | "UINT64" => 8,
        _ => return None,
    })
}

/// The input's raw little-endian bytes: floats drawn from a fixed sequence in [-1, 1), every
/// other type zeros (valid indices for embeddings, false for booleans).
pub fn payload(input: &Input) -> anyhow::Result<Vec<u8>> {
    let size = element_size(&input.datatype).ok_or_else(|| anyhow!("input {}: datatype {} is not supported (numeric types only)", input.name, input.datatype))?;
    let n: i64 = input.shape.iter().product();
    if input.shape.iter().any(|&d| d < 0) {
        bail!("input {}: shape {:?} has an unknown dimension; give it with --input", input.name, input.shape);
    }
    let n = usize::try_from(n)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(n * size);
    match input.datatype.as_str() {
        "FP32" => (0..n).for_each(|_| out.extend_from_slice(&(next() as f32).to_le_bytes())),
        "FP64" => (0..n).for_each(|_| out.extend_from_slice(&next().to_le_bytes())),
        "FP16" => (0..n).for_each(|_| out.extend_from_slice(&half::f16::from_f64(next()).to_le_bytes())),
        "BF16" => (0..n).for_each(|_| out.extend_from_slice(&half::bf16::from_f64(next()).to_le_bytes())),
        _ => out.resize(n * size, 0),
    }
    Ok(out)
}

/// The HTTP request body (JSON head + raw tensors, outputs asked as binary) and the head's length.
pub fn http_body(model: &str, inputs: &[Input], data: &[Vec<u8>]) -> (Bytes, usize) {
    let described: Vec<Value> = inputs
        .iter()
        .zip(data)
        .map(|(i, d)| json!({ "name": i.name, "datatype": i.datatype, "shape": i.shape, "parameters": { "binary_data_size": d.len() } }))
        .collect();
    let head = json!({ "model_name": model, "inputs": described, "parameters": { "binary_data_output": true } }).to_string();
    let mut body = head.clone().into_bytes();
    data.iter().for_each(|d| body.extend_from_slice(d));
    (Bytes::from(body), head.len())
}

/// The gRPC ModelInfer message, framed (a 5-byte prefix: uncompressed, length).
pub fn grpc_body(model: &str, inputs: &[Input], data: &[Vec<u8>]) -> Bytes {
    let message = pb::ModelInferRequest {
        model_name: model.into(),
        inputs: inputs.iter().map(|i| pb::model_infer_request::InferInputTensor { name: i.name.clone(), datatype: i.datatype.clone(), shape: i.shape.clone(), ..Default::default() }).collect(),
        raw_input_contents: data.iter().map(|d| Bytes::from(d.clone())).collect(),
        ..Default::default()
    };
    frame(&message)
}

fn frame<M: Message>(m: &M) -> Bytes {
    let mut out = Vec::with_capacity(5 + m.encoded_len());
    out.push(0);
    out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
    m.encode(&mut out).expect("a Vec grows");
    Bytes::from(out)
}

/// `host:port` of a URL given as `host:port`, `http://host:port` or `http://host:port/`.
pub fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if url.starts_with("https://") {
        bail!("--url {url:?}: https is not supported (plain HTTP and h2c gRPC only)");
    }
    let a = rest.trim_end_matches('/');
    if a.is_empty() || a.contains('/') || !a.contains(':') {
        bail!("--url {url:?} is not host:port or http://host:port");
    }
    Ok(a.to_string())
}

/// A connection to the server that sends requests.
pub enum Conn {
    /// HTTP/1.1: one request at a time.
    Http(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2: shared by the requests multiplexed over it. Driven with `h2` itself: each
    /// request is sent and its answer read by the task that awaits it, where hyper's client
    /// would hand both to tasks of its own (a dispatch channel and two tasks per request), and
    /// one task, spawned with the connection, does the I/O.
    Grpc(h2::client::SendRequest<Bytes>, Arc<AtomicBool>),
}

async fn tcp(authority: &str) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect(authority).await.with_context(|| format!("cannot connect to {authority}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl Conn {
    /// Opens a connection of `protocol` to `authority`.
    pub async fn open(protocol: Protocol, authority: String) -> anyhow::Result<Conn> {
        let authority = authority.as_str();
        let tcp = tcp(authority).await?;
        Ok(match protocol {
            Protocol::Http => {
                let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.with_context(|| format!("HTTP handshake with {authority}"))?;
                tokio::spawn(conn);
                Conn::Http(send)
            }
            Protocol::Grpc => {
                let mut b = h2::client::Builder::new();
                // Windows large enough that a request or answer never waits for a window update.
                b.initial_window_size(4 << 20).initial_connection_window_size(16 << 20);
                // Requests sent together leave in one write, as the server's answers do.
                let (send, conn) = b.handshake(Coalesced::new(tcp)).await.with_context(|| format!("HTTP/2 handshake with {authority} (is it the gRPC port?)"))?;
                let closed = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&closed);
                tokio::spawn(async move {
                    let _ = conn.await;
                    flag.store(true, Ordering::Release);
                });
                Conn::Grpc(send, closed)
            }
        })
    }

    /// Another handle on this connection, for an HTTP/2 one (requests multiplex over it); none
    /// for HTTP/1.1 (one request at a time).
    pub fn share(&self) -> Option<Conn> {
        match self {
            Conn::Grpc(s, closed) => Some(Conn::Grpc(s.clone(), Arc::clone(closed))),
            Conn::Http(_) => None,
        }
    }

    /// Whether the connection can take no more requests (closed by the server).
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Http(s) => s.is_closed(),
            Conn::Grpc(_, closed) => closed.load(Ordering::Acquire),
        }
    }

    /// Sends one request (`body` is already encoded) and reads the whole answer; Ok only for a
    /// success (HTTP 200; gRPC status 0). Returns the answer's body bytes.
    pub async fn send(&mut self, authority: &str, path: &str, body: Bytes, http_head_len: Option<usize>) -> anyhow::Result<Bytes> {
        match self {
            Conn::Http(s) => {
                // An empty body is the metadata GET; anything else is an inference POST.
                let method = if body.is_empty() { hyper::Method::GET } else { hyper::Method::POST };
                let mut req = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, authority).header(hyper::header::CONTENT_LENGTH, body.len());
                if let Some(n) = http_head_len {
                    req = req.header(HEADER_LENGTH, n).header(hyper::header::CONTENT_TYPE, "application/octet-stream");
                }
                let req = req.body(Full::new(body))?;
                std::future::poll_fn(|cx| s.poll_ready(cx)).await?;
                let resp = s.send_request(req).await?;
                let status = resp.status();
                let bytes = resp.into_body().collect().await?.to_bytes();
                if status != hyper::StatusCode::OK {
                    bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
                }
                Ok(bytes)
            }
            Conn::Grpc(s, _) => {
                let req = hyper::Request::post(format!("http://{authority}{path}"))
                    .header(hyper::header::CONTENT_TYPE, "application/grpc")
                    .header("te", "trailers")
                    .body(())?;
                std::future::poll_fn(|cx| s.poll_ready(cx)).await?;
                let (answer, mut out) = s.send_request(req, false)?;
                out.send_data(body, true)?;
                let (parts, mut incoming) = answer.await?.into_parts();
                let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
                while let Some(chunk) = incoming.data().await {
                    let chunk = chunk?;
                    let _ = incoming.flow_control().release_capacity(chunk.len());
                    chunks.push(chunk);
                }
                // Usually one chunk, kept as it came; only an answer split in several is copied.
                let bytes = if chunks.len() == 1 { chunks.swap_remove(0) } else { Bytes::from(chunks.concat()) };
                let trailers = incoming.trailers().await?;
                if parts.status != hyper::StatusCode::OK {
                    bail!("HTTP/2 status {} (is it the gRPC port?)", parts.status);
                }
                let headers = trailers.as_ref().filter(|t| t.contains_key("grpc-status")).unwrap_or(&parts.headers);
                let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
                match code {
                    Some(0) => Ok(bytes),
                    Some(c) => {
                        let msg = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
                        bail!("gRPC status {c}: {msg}")
                    }
                    None => bail!("gRPC answer without grpc-status"),
                }
            }
        }
    }
}

/// The model's inputs from the server's model metadata (HTTP `GET /v2/models/{model}`, or gRPC
/// ModelMetadata), the batch dimension (-1) set to `batch`.
pub async fn metadata(protocol: Protocol, authority: &str, model: &str, batch: i64) -> anyhow::Result<Vec<Input>> {
    let mut conn = Conn::open(protocol, authority.to_string()).await?;
    let inputs: Vec<Input> = match protocol {
        Protocol::Http => {
            let bytes = conn.send(authority, &format!("/v2/models/{model}"), Bytes::new(), None).await.with_context(|| format!("model metadata of {model:?}"))?;
            let v: Value = serde_json::from_slice(&bytes).context("model metadata is not JSON")?;
            let list = v["inputs"].as_array().ok_or_else(|| anyhow!("model metadata has no inputs: {v}"))?;
            list.iter()
                .map(|i| {
                    Ok(Input {
                        name: i["name"].as_str().ok_or_else(|| anyhow!("an input without a name: {i}"))?.into(),
                        datatype: i["datatype"].as_str().ok_or_else(|| anyhow!("an input without a datatype: {i}"))?.into(),
                        shape: i["shape"].as_array().ok_or_else(|| anyhow!("an input without a shape: {i}"))?.iter().map(|d| d.as_i64().unwrap_or(-1)).collect(),
                    })
                })
                .collect::<anyhow::Result<_>>()?
        }
        Protocol::Grpc => {
            let body = frame(&pb::ModelMetadataRequest { name: model.into(), version: String::new() });
            let mut bytes = conn.send(authority, METADATA, body, None).await.with_context(|| format!("model metadata of {model:?}"))?;
            if bytes.len() < 5 {
                bail!("model metadata: an empty gRPC answer");
            }
            bytes.advance(5);
            let m = pb::ModelMetadataResponse::decode(bytes).context("model metadata: a malformed message")?;
            m.inputs.into_iter().map(|i| Input { name: i.name, datatype: i.datatype, shape: i.shape }).collect()
        }
    };
    Ok(inputs.into_iter().map(|mut i| {
        if let Some(first) = i.shape.first_mut() {
            if *first < 0 {
                *first = batch;
            }
        }
        i
    }).collect())
}

/// The path requests go to.
pub fn infer_path(protocol: Protocol, model: &str) -> String {
    match protocol {
        Protocol::Http => format!("/v2/models/{model}/infer"),
        Protocol::Grpc => INFER.into(),
    }
}
