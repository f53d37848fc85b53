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
use super::model::{Payload, ServedModel, WireInput};
use super::protocol::{tensor_to_bytes, tensor_to_json, ApiError, ErrorKind};
use super::state::{Protocol, Server};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

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
        .with_state(server)
}

/// The metrics port's router: `/metrics` only.
pub fn metrics_router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { error(&ApiError::new(ErrorKind::NotFound, "this port serves /metrics only")) })
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

async fn ready(State(s): State<Arc<Server>>) -> StatusCode {
    if s.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    s.metrics.buffered.set(i64::try_from(s.budget.used()).unwrap_or(i64::MAX));
    let models: Vec<&ServedModel> = s.models().map(|m| m.as_ref()).collect();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], s.metrics.render(&models)).into_response()
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

async fn model_metadata(State(s): State<Arc<Server>>, Path(p): Path<ModelPath>) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(m) => json_response(model_metadata_json(m)),
        Err(e) => error(&e),
    }
}

async fn model_ready(State(s): State<Arc<Server>>, Path(p): Path<ModelPath>) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(_) if s.ready() => StatusCode::OK.into_response(),
        Ok(_) => error(&ApiError::new(ErrorKind::Unavailable, "the server is draining")),
        Err(e) => error(&e),
    }
}

async fn model_config(State(s): State<Arc<Server>>, Path(p): Path<ModelPath>) -> Response {
    match s.model(&p.name, p.version.as_deref()) {
        Ok(m) => json_response(model_config_json(m)),
        Err(e) => error(&e),
    }
}

/// The JSON part of an inference request.
#[derive(Deserialize)]
struct RequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Refuses parameters this server does not implement (shared memory, classification).
fn check_parameters(what: &str, p: &Map<String, Value>) -> Result<(), ApiError> {
    for k in p.keys() {
        if k.starts_with("shared_memory") || k == "classification" {
            return Err(ApiError::bad(format!("{what}: parameter {k:?} is not supported by this server")));
        }
    }
    Ok(())
}

async fn infer(State(s): State<Arc<Server>>, Path(p): Path<ModelPath>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = infer_inner(&s, &p, &headers, body).await;
    s.record(&p.name, Protocol::Http, started, result.as_ref().map(|_| ()).map_err(|e| e.kind));
    result.unwrap_or_else(|e| error(&e))
}

/// The body, read whole under the size limit, the byte budget and the body timeout; its
/// reservation is held until the request is answered.
async fn read_body(s: &Server, headers: &HeaderMap, body: Body) -> Result<(Bytes, Reservation), ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let bounds = Bounds { max_bytes: s.limits.max_request_bytes, timeout: s.limits.body_timeout, grpc: false };
    body::read(body, declared, bounds, &s.budget).await
}

async fn infer_inner(s: &Server, p: &ModelPath, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    // The body first, even for an unknown model: a connection whose request body was left
    // unread cannot be reused, and the client's next request on it would fail.
    let (body, _held) = read_body(s, headers, body).await?;
    let model = Arc::clone(s.model(&p.name, p.version.as_deref())?);
    // The JSON part, then binary tensors when the header says where the JSON ends.
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| ApiError::bad(format!("{HEADER_LENGTH}: {v:?} is not a length within the body's {} bytes", body.len())))?,
    };
    let (head, mut binary) = body.split_at(json_len);
    let req: RequestJson = serde_json::from_slice(head).map_err(|e| ApiError::bad(format!("malformed inference request JSON: {e}")))?;
    check_parameters("request", &req.parameters)?;
    let mut wire = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        check_parameters(&format!("input {:?}", input.name), &input.parameters)?;
        let data = match input.parameters.get("binary_data_size") {
            Some(n) => {
                let n = n.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| ApiError::bad(format!("input {:?}: binary_data_size {n} is not a byte count", input.name)))?;
                if n > binary.len() {
                    return Err(ApiError::bad(format!("input {:?}: binary_data_size {n} but only {} binary byte(s) remain in the body", input.name, binary.len())));
                }
                let (this, rest) = binary.split_at(n);
                binary = rest;
                Payload::Bytes(this)
            }
            None => input.data.as_ref().map_or(Payload::Missing, Payload::Json),
        };
        wire.push(WireInput { name: input.name.clone(), datatype: input.datatype.clone(), shape: input.shape.clone(), data });
    }
    if !binary.is_empty() {
        return Err(ApiError::bad(format!("{} byte(s) of binary data after the last input's binary_data_size", binary.len())));
    }
    let tensors = model.admit(wire)?;
    // Binary answers: per output, else the request's binary_data_output, else JSON.
    let all_binary = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut binary_of = std::collections::HashMap::new();
    for o in &req.outputs {
        check_parameters(&format!("output {:?}", o.name), &o.parameters)?;
        binary_of.insert(o.name.clone(), o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary));
    }
    let wanted: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = s.infer(&model, tensors, &wanted).await?;
    let mut described = Vec::with_capacity(outputs.len());
    let mut tail: Vec<u8> = Vec::new();
    for (name, t) in &outputs {
        let meta = model.outputs.iter().find(|o| &o.name == name);
        let datatype = meta.map_or("INVALID", |o| o.datatype());
        let mut o = json!({ "name": name, "datatype": datatype, "shape": t.size() });
        if *binary_of.get(name).unwrap_or(&all_binary) {
            let bytes = tensor_to_bytes(t)?;
            o["parameters"] = json!({ "binary_data_size": bytes.len() });
            tail.extend_from_slice(&bytes);
        } else {
            o["data"] = tensor_to_json(t)?;
        }
        described.push(o);
    }
    let mut doc = json!({ "model_name": model.name, "model_version": "1", "outputs": described });
    if let Some(id) = req.id {
        doc["id"] = Value::String(id);
    }
    let head = doc.to_string().into_bytes();
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
