//! HTTP/REST endpoints of the Open Inference Protocol, with the binary tensor extension and
//! the model-configuration subset load generators read.
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /v2/health/live` | 200 |
//! | `GET /v2/health/ready` | 200, or 503 while draining |
//! | `GET /v2` | server metadata |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata (404 if unknown) |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200, 503 while draining, 404 |
//! | `GET /v2/models/{name}[/versions/{v}]/config` | `name`, `platform`, `max_batch_size`, `input`, `output`, `dynamic_batching` |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | inference: JSON, or JSON + binary with `Inference-Header-Content-Length` |
//! | `GET /metrics` | Prometheus text (also on the metrics port) |
//!
//! Errors are `{"error": "..."}` with 400 (malformed or mismatched request), 404 (unknown
//! model or route), 413 (body over `--max-request-bytes`), 500 (model failure), 503 (in-flight
//! cap, draining), 504 (`--request-timeout-ms`). Handlers run on the async runtime's threads;
//! the only wait is on the engine's ticket (a future).

use super::body::{self, Bounds};
use super::budget::Reservation;
use super::json;
use super::model::ServedModel;
use super::protocol::{shown, tensor_to_bytes, ApiError, ErrorKind};
use super::request;
use super::stages::{Stage, Stages};
use super::state::{Protocol, Recorder, Server};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use tch::Tensor;

/// The header that gives the JSON part's length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Every route, over `server`.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(model_config))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(&ApiError::new(ErrorKind::NotFound, "no such route; see /v2 and /v2/models/{name}")) })
        .method_not_allowed_fallback(|method: Method| async move {
            error(&ApiError::new(ErrorKind::MethodNotAllowed, format!("{method} is not served on this route (GET for health, metadata, ready and config; POST for infer)")))
        })
        .with_state(server)
}

/// The metrics port's router: `/metrics` only.
pub fn metrics_router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { error(&ApiError::new(ErrorKind::NotFound, "this port serves /metrics only")) })
        .method_not_allowed_fallback(|method: Method| async move { error(&ApiError::new(ErrorKind::MethodNotAllowed, format!("{method} is not served on /metrics (GET)"))) })
        .with_state(server)
}

/// `{"error": message}` with the error's status.
pub fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": e.message }).to_string()).into_response()
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// `{name}` and the optional `{version}` of a model route.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

/// A model route's path; one that does not decode (not UTF-8 once percent-decoded) is answered
/// 400 with the protocol's JSON error, like every other refusal.
struct ModelRoute(ModelPath);

impl<S: Send + Sync> FromRequestParts<S> for ModelRoute {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<ModelPath>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(ModelRoute(p)),
            Err(e) => Err(error(&ApiError::bad(format!("malformed URL path: {}", shown(&e.body_text()))))),
        }
    }
}

async fn ready(State(s): State<Arc<Server>>) -> StatusCode {
    if s.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    s.metrics.buffered.set(i64::try_from(s.budget.used()).unwrap_or(i64::MAX));
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], s.metrics.render()).into_response()
}

/// Server metadata: name, version, extensions.
pub fn server_metadata_json() -> Value {
    json!({ "name": "tch-streams", "version": env!("CARGO_PKG_VERSION"), "extensions": super::EXTENSIONS })
}

async fn server_metadata() -> Response {
    json_response(server_metadata_json())
}

/// Model metadata: inputs and outputs with `-1` for the batch.
pub fn model_metadata_json(m: &ServedModel) -> Value {
    let tensors = |ts: &[super::model::TensorInfo]| -> Vec<Value> {
        ts.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype(), "shape": t.shape() })).collect()
    };
    json!({ "name": m.name, "versions": ["1"], "platform": m.platform, "inputs": tensors(&m.inputs), "outputs": tensors(&m.outputs) })
}

/// The model-configuration subset: per-sample dims, `max_batch_size`, batching.
pub fn model_config_json(m: &ServedModel) -> Value {
    let tensors = |ts: &[super::model::TensorInfo]| -> Vec<Value> {
        ts.iter().map(|t| json!({ "name": t.name, "data_type": super::protocol::config_type_name(t.kind), "dims": t.dims })).collect()
    };
    let mut v = json!({
        "name": m.name, "platform": m.platform, "max_batch_size": m.max_batch_size,
        "input": tensors(&m.inputs), "output": tensors(&m.outputs),
    });
    if m.dynamic_batching {
        v["dynamic_batching"] = json!({});
    }
    v
}

async fn model_metadata(State(s): State<Arc<Server>>, ModelRoute(p): ModelRoute) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(m) => json_response(model_metadata_json(m)),
        Err(e) => error(&e),
    }
}

async fn model_ready(State(s): State<Arc<Server>>, ModelRoute(p): ModelRoute) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(_) if s.ready() => StatusCode::OK.into_response(),
        Ok(_) => error(&ApiError::new(ErrorKind::Unavailable, "the server is draining")),
        Err(e) => error(&e),
    }
}

async fn model_config(State(s): State<Arc<Server>>, ModelRoute(p): ModelRoute) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(m) => json_response(model_config_json(m)),
        Err(e) => error(&e),
    }
}

async fn infer(State(s): State<Arc<Server>>, ModelRoute(p): ModelRoute, headers: HeaderMap, body: Body) -> Response {
    // Counted as cancelled if the client goes away and this future is dropped.
    let rec = Recorder::new(&s, &p.name, Protocol::Http);
    let mut stages = Stages::starting_now();
    let result = infer_inner(&s, &p, &headers, body, &mut stages).await;
    rec.finish_with(result.as_ref().map(|_| ()).map_err(|e| e.kind), &stages);
    result.unwrap_or_else(|e| error(&e))
}

/// A compressed body's encoding: `gzip` or `deflate` (what tritonclient sends); none for
/// `identity` or no header; 415 for any other.
fn content_encoding(headers: &HeaderMap) -> Result<Option<&'static str>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else { return Ok(None) };
    match v.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Ok("gzip") | Ok("x-gzip") => Ok(Some("gzip")),
        Ok("deflate") => Ok(Some("deflate")),
        Ok("identity") | Ok("") => Ok(None),
        _ => Err(ApiError::new(
            ErrorKind::Unsupported,
            format!("Content-Encoding {:?} is not supported: send the body uncompressed, gzip or deflate", shown(&String::from_utf8_lossy(v.as_bytes()))),
        )),
    }
}

/// Decompresses a body, each decompressed byte reserved from the budget first and the whole
/// bounded by `--max-request-bytes` (a small body cannot inflate past it).
fn inflate(encoding: &str, body: &[u8], max: usize, held: &mut Reservation) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let mut reader: Box<dyn Read + '_> = match encoding {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        _ => Box::new(flate2::read::ZlibDecoder::new(body)),
    };
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| ApiError::bad(format!("cannot decompress the {encoding} body: {e}")))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(ApiError::new(ErrorKind::TooLarge, format!("the request body is larger than {max} bytes (--max-request-bytes) once decompressed")));
        }
        held.grow(n)?;
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Whether `part` lies inside `whole`'s memory (`Bytes::slice_ref` needs it to).
fn within(whole: &Bytes, part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    !part.is_empty() && p >= w && p + part.len() <= w + whole.len()
}

/// The `Inference-Header-Content-Length` header: `None` when absent, `Some(None)` when it is not
/// a number.
fn json_length(headers: &HeaderMap) -> Option<Option<usize>> {
    headers.get(HEADER_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()))
}

/// The body, read whole under the size limit, the byte budget and the body timeout, placed so
/// that byte `align_at` (where binary tensors begin) is aligned; its reservation is held until
/// the request is answered.
async fn read_body(s: &Server, headers: &HeaderMap, body: Body, align_at: usize) -> Result<(Bytes, Reservation), ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let bounds = Bounds { max_bytes: s.limits.max_request_bytes, timeout: s.limits.body_timeout, grpc: false, align_at };
    body::read(body, declared, bounds, &s.budget).await
}

async fn infer_inner(s: &Arc<Server>, p: &ModelPath, headers: &HeaderMap, body: Body, stages: &mut Stages) -> Result<Response, ApiError> {
    let header_len = json_length(headers);
    // Binary tensors begin after the JSON part (of a body sent as is, not compressed).
    let compressed = headers.contains_key(header::CONTENT_ENCODING);
    let align_at = header_len.flatten().filter(|_| !compressed).unwrap_or(0);
    // The body first, even for an unknown model: a connection whose request body was left
    // unread cannot be reused, and the client's next request on it would fail.
    let (body, mut held) = read_body(s, headers, body, align_at).await?;
    stages.restart();
    let encoding = content_encoding(headers)?;
    let model = Arc::clone(s.model(&p.name, p.version.as_deref())?);
    let max = s.limits.max_request_bytes;
    // The JSON part, then binary tensors when the header says where the JSON ends.
    // (Of the decompressed body, when it is compressed.)
    let json_len = match header_len {
        None => None,
        Some(n) => Some(n.filter(|&n| encoding.is_some() || n <= body.len()).ok_or_else(|| {
            let raw = headers.get(HEADER_LENGTH).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
            ApiError::bad(format!("{HEADER_LENGTH}: {:?} is not a length within the body's {} bytes", shown(&raw), body.len()))
        })?),
    };
    let m = Arc::clone(&model);
    let (admitted, held) = s
        .offload(body.len(), move || {
            let body = match encoding {
                Some(e) => {
                    let plain = inflate(e, &body, max, &mut held)?;
                    held.release(body.len());
                    Bytes::from(plain)
                }
                None => body,
            };
            let json_len = json_len.unwrap_or(body.len());
            if json_len > body.len() {
                return Err(ApiError::bad(format!("{HEADER_LENGTH}: {json_len} is not a length within the body's {} bytes", body.len())));
            }
            // Binary tensors in place where aligned: each holds the body's buffer until the engine
            // lets go of it (the tensors' bytes stay in the budget; the JSON part beside them
            // leaves it now).
            let owner_of = |part: &[u8]| within(&body, part).then(|| body.slice_ref(part));
            let admitted = m.admit(request::from_http(&body, json_len)?, &owner_of, &mut held)?;
            // The body is dropped here: its bytes leave the budget, the tensors stay in it.
            let len = body.len();
            drop(body);
            held.release(len);
            Ok::<_, ApiError>((admitted, held))
        })
        .await??;
    stages.end(Stage::Decode);
    let outputs = s.infer(&model, admitted.tensors, &admitted.wanted, None, stages).await?;
    drop(held);
    let bytes: usize = outputs.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum();
    let (binary, all_binary, id) = (admitted.binary, admitted.all_binary, admitted.id);
    let is_binary = move |name: &str| binary.iter().find(|(n, _)| n == name).map_or(all_binary, |(_, b)| *b);
    let response = s.offload(bytes, move || answer(&model, id, &outputs, is_binary)).await?;
    stages.end(Stage::Encode);
    response
}

/// The answer: a JSON head (outputs with their data, or with `binary_data_size` and their bytes
/// after the head).
fn answer(model: &ServedModel, id: Option<String>, outputs: &[(String, Tensor)], binary: impl Fn(&str) -> bool) -> Result<Response, ApiError> {
    let mut head: Vec<u8> = Vec::with_capacity(256);
    let mut tail: Vec<u8> = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    head.extend_from_slice(b"{\"model_name\":");
    string(&mut head, &model.name);
    head.extend_from_slice(b",\"model_version\":\"1\"");
    if let Some(id) = &id {
        head.extend_from_slice(b",\"id\":");
        string(&mut head, id);
    }
    head.extend_from_slice(b",\"outputs\":[");
    for (k, (name, t)) in outputs.iter().enumerate() {
        if k > 0 {
            head.push(b',');
        }
        let datatype = model.outputs.iter().find(|o| &o.name == name).map_or("INVALID", |o| o.datatype());
        head.extend_from_slice(b"{\"name\":");
        string(&mut head, name);
        let _ = write!(head, ",\"datatype\":\"{datatype}\",\"shape\":{}", json!(t.size()));
        if binary(name) {
            let bytes = tensor_to_bytes(t)?;
            let _ = write!(head, ",\"parameters\":{{\"binary_data_size\":{}}}}}", bytes.len());
            tail.extend_from_slice(&bytes);
        } else {
            head.extend_from_slice(b",\"data\":");
            json::write_data(t, &mut head)?;
            head.push(b'}');
        }
    }
    head.extend_from_slice(b"]}");
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], head).into_response());
    }
    let head_len = head.len();
    let mut out = head;
    out.extend_from_slice(&tail);
    let mut r = out.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(head_len));
    Ok(r)
}
