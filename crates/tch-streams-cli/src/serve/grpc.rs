//! The gRPC `inference.GRPCInferenceService` of the Open Inference Protocol, with tonic.
//!
//! Each HTTP/2 stream goes through [`Front`] first (message size, byte budget, body timeout, the
//! client's `grpc-timeout`, counting), then tonic's service, except ModelInfer with one plain
//! message: the front decodes that itself and frames the answer ([`super::unary`]), which spares
//! every inference request tonic's copy of the message and its codec. ModelInfer decodes its
//! message into the protocol-neutral [`request::InferRequest`] that HTTP also produces, and the
//! model validates it once ([`ServedModel::admit`](super::model::ServedModel::admit)): both
//! protocols refuse the same requests with the same messages. Inputs come as `raw_input_contents`
//! (one entry per input, in order) or typed `contents`; outputs always go back as
//! `raw_output_contents`. Errors map to status codes: INVALID_ARGUMENT (malformed or mismatched
//! request), NOT_FOUND (unknown model), OUT_OF_RANGE (message over `--max-request-bytes`),
//! RESOURCE_EXHAUSTED (the byte budget), UNAVAILABLE (in-flight cap), DEADLINE_EXCEEDED
//! (`--request-timeout-ms`, the client's deadline, `--body-timeout-s`), INTERNAL (model failure).
//! Methods run on the async runtime's threads; large messages are decoded on blocking threads.

use super::body::{self, Bounds};
use super::listen::{Active, Conn, Tracked};
use super::protocol::{tensor_to_bytes, ApiError, ErrorKind};
use super::request;
use super::stages::{Stage, Stages};
use super::unary;
use prost::Message;
use super::state::{Protocol, Recorder, Server};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Code generated from `proto/inference.proto` at build time.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::model_infer_response::InferOutputTensor;

/// The service over a shared [`Server`].
pub struct Grpc(pub Arc<Server>);

/// The path of ModelInfer, the one method counted in the request metrics.
const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// When the front had read a request's whole message: its decode stage starts there.
#[derive(Clone, Copy, Debug)]
pub struct MessageRead(pub Instant);

/// The client's deadline (its `grpc-timeout` header), from when the request arrived.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
///
/// ```
/// use std::time::Duration;
/// use tch_streams_cli::serve::grpc::parse_timeout;
/// assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
/// assert_eq!(parse_timeout("123456789S"), None);
/// assert_eq!(parse_timeout("5x"), None);
/// ```
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Counts a ModelInfer request in the front until its handler takes it over: dropped before
/// that (the client went away while its message was being read), it counts as cancelled.
struct FrontCount {
    rec: Option<Recorder>,
    /// Made when the request goes on to tonic's handler ([`FrontCount::watch`]), which marks it
    /// once it counts the request itself.
    flag: Option<Recorded>,
}

impl FrontCount {
    /// A flag for tonic's handler to mark once it has counted the request.
    fn watch(&mut self) -> Recorded {
        self.flag.get_or_insert_with(Recorded::default).clone()
    }

    /// Whether a handler has counted the request.
    fn handled(&self) -> bool {
        self.flag.as_ref().is_some_and(|f| f.0.load(Ordering::Acquire))
    }

    /// Counts the request with `outcome`, unless a handler counted it.
    fn finish(mut self, outcome: Result<(), ErrorKind>) {
        if let Some(rec) = self.rec.take() {
            if self.handled() {
                rec.disarm();
            } else {
                rec.finish(outcome);
            }
        }
    }

    /// Leaves the counting to the front's own handler, which counts the request from here on.
    fn hand_over(mut self) {
        if let Some(rec) = self.rec.take() {
            rec.disarm();
        }
    }
}

impl Drop for FrontCount {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            if self.handled() {
                rec.disarm();
            } // else: dropped here, it counts as cancelled
        }
    }
}

/// Set by the ModelInfer handler once it has counted its request: what the front finds unset
/// was refused before the handler (a malformed message, an encoding tonic does not read).
#[derive(Clone, Default)]
pub struct Recorded(Arc<AtomicBool>);

impl Recorded {
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What the gRPC port runs for each HTTP/2 stream, in front of tonic's service: reads the
/// message under the size limit, the byte budget and the body timeout (see [`body`]), counts
/// the request as in progress on its connection until the answer is written, and counts
/// ModelInfer requests refused before their handler.
#[derive(Clone)]
pub struct Front {
    server: Arc<Server>,
    inner: GrpcInferenceServiceServer<Grpc>,
    conn: Arc<Conn>,
}

impl Front {
    /// The front of `inner` for one connection.
    pub fn new(server: Arc<Server>, inner: GrpcInferenceServiceServer<Grpc>, conn: Arc<Conn>) -> Front {
        Front { server, inner, conn }
    }
}

/// Waits until `svc` is ready, then calls it.
async fn call_ready<S: tower_service::Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

/// The outcome a gRPC status code stands for in the request metrics.
fn kind_of_code(code: tonic::Code) -> ErrorKind {
    match code {
        tonic::Code::InvalidArgument => ErrorKind::BadRequest,
        tonic::Code::NotFound => ErrorKind::NotFound,
        tonic::Code::OutOfRange => ErrorKind::TooLarge,
        tonic::Code::ResourceExhausted => ErrorKind::Exhausted,
        tonic::Code::Unavailable => ErrorKind::Unavailable,
        tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
        tonic::Code::Cancelled => ErrorKind::Cancelled,
        tonic::Code::Unimplemented => ErrorKind::Unsupported,
        _ => ErrorKind::Internal,
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Front {
    type Response = hyper::Response<Tracked<tonic::body::Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let active = self.conn.enter();
        let (server, mut inner) = (Arc::clone(&self.server), self.inner.clone());
        Box::pin(async move {
            let arrived = Instant::now();
            let infer = req.uri().path() == INFER_PATH;
            // The model's name is in the message, not yet read: a request refused before its
            // handler is counted without one.
            let mut count = FrontCount { rec: infer.then(|| Recorder::new(&server, "", Protocol::Grpc)), flag: None };
            let (mut parts, body) = req.into_parts();
            if let Some(t) = parts.headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout) {
                parts.extensions.insert(Deadline(arrived + t));
            }
            let declared = parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            let bounds = Bounds { max_bytes: server.limits.max_request_bytes, timeout: server.limits.body_timeout, grpc: true, align_at: 0 };
            let (bytes, mut held) = match body::read(body, declared, bounds, &server.budget).await {
                Ok(x) => x,
                Err(e) => {
                    count.finish(Err(e.kind));
                    return Ok(refused(e.kind.grpc_code(), e.message, active));
                }
            };
            // ModelInfer with one plain message: decoded here, straight from the bytes read.
            if let Some(message) = infer.then(|| unary::only_message(&bytes)).flatten() {
                let message = match pb::ModelInferRequest::decode(message) {
                    Ok(m) => m,
                    Err(e) => {
                        count.finish(Err(ErrorKind::BadRequest));
                        return Ok(refused(tonic::Code::InvalidArgument, format!("malformed request message: {e}"), active));
                    }
                };
                count.hand_over();
                let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
                let result = Grpc(Arc::clone(&server))
                    .recorded_infer(message, deadline, Instant::now(), |answer| {
                        unary::framed(&answer).ok_or_else(|| ApiError::new(ErrorKind::Exhausted, "the answer is over gRPC's 4 GiB message limit"))
                    })
                    .await;
                drop(held);
                return Ok(match result {
                    Ok(framed) => unary::ok(framed).map(|b| Tracked::new(tonic::body::Body::new(b), active)),
                    Err(e) => refused(e.kind.grpc_code(), e.message, active),
                });
            }
            // tonic copies the message into its own buffer to decode it: count that too.
            if let Err(e) = held.grow(bytes.len()) {
                count.finish(Err(e.kind));
                return Ok(refused(e.kind.grpc_code(), e.message, active));
            }
            let flag = count.watch();
            parts.extensions.insert(flag.clone());
            parts.extensions.insert(MessageRead(Instant::now()));
            let req = hyper::Request::from_parts(parts, http_body_util::Full::new(bytes));
            let mut resp = call_ready(&mut inner, req).await.unwrap_or_else(|e| match e {});
            drop(held);
            let mut code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map_or(tonic::Code::Ok, tonic::Code::from);
            if code == tonic::Code::Internal && !flag.0.load(Ordering::Acquire) {
                // tonic could not decode the message: the client's mistake, not ours.
                let said = tonic::Status::from_header_map(resp.headers()).map(|s| s.message().to_string()).unwrap_or_default();
                code = tonic::Code::InvalidArgument;
                resp = Status::invalid_argument(format!("malformed request message: {said}")).into_http::<tonic::body::Body>();
            }
            count.finish(if code == tonic::Code::Ok { Ok(()) } else { Err(kind_of_code(code)) });
            Ok(resp.map(|b| Tracked::new(b, active)))
        })
    }
}

/// A trailers-only answer with `code` and `message`, counted in progress until written.
fn refused(code: tonic::Code, message: String, active: Active) -> hyper::Response<Tracked<tonic::body::Body>> {
    Status::new(code, message).into_http::<tonic::body::Body>().map(|b| Tracked::new(b, active))
}

/// The tonic service, with the message size limit of `--max-request-bytes`.
pub fn service(server: Arc<Server>) -> GrpcInferenceServiceServer<Grpc> {
    let limit = server.limits.max_request_bytes;
    GrpcInferenceServiceServer::new(Grpc(server)).max_decoding_message_size(limit)
}

fn status(e: ApiError) -> Status {
    Status::new(e.kind.grpc_code(), e.message)
}

impl Grpc {
    /// One ModelInfer request, counted in the request metrics with its stages (from `read`, when
    /// its message had been read): as cancelled if this future is dropped (the client cancelled,
    /// or its deadline passed), else with the outcome of the inference and then of `answer`,
    /// which turns the response into what is sent. What both paths to ModelInfer (the front's
    /// own and tonic's) run once the message is decoded.
    async fn recorded_infer<T>(
        &self,
        r: pb::ModelInferRequest,
        deadline: Option<Instant>,
        read: Instant,
        answer: impl FnOnce(pb::ModelInferResponse) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let rec = Recorder::new(&self.0, &r.model_name, Protocol::Grpc);
        let mut stages = Stages::starting(read);
        let result = self.infer(r, deadline, &mut stages).await.and_then(answer);
        rec.finish_with(result.as_ref().map(|_| ()).map_err(|e| e.kind), &stages);
        result
    }

    async fn infer(&self, r: pb::ModelInferRequest, deadline: Option<Instant>, stages: &mut Stages) -> Result<pb::ModelInferResponse, ApiError> {
        let s = &self.0;
        let model = Arc::clone(s.model(&r.model_name, Some(&r.model_version))?);
        let m = Arc::clone(&model);
        let mut held = s.budget.empty();
        let size = r.raw_input_contents.iter().map(|b| b.len()).sum::<usize>() + r.inputs.iter().map(|i| i.contents.as_ref().map_or(0, |c| c.encoded_len())).sum::<usize>();
        let (admitted, held) = s
            .offload(size, move || {
                // Each raw tensor is its own buffer (a slice of the message): in place where aligned.
                let owner_of = |part: &[u8]| r.raw_input_contents.iter().find(|b| b.as_ptr() == part.as_ptr() && b.len() == part.len()).cloned();
                let admitted = m.admit(request::from_grpc(&r)?, &owner_of, &mut held)?;
                Ok::<_, ApiError>((admitted, held))
            })
            .await??;
        stages.end(Stage::Decode);
        let outputs = s.infer(&model, admitted.tensors, &admitted.wanted, deadline, stages).await?;
        drop(held);
        let mut described = Vec::with_capacity(outputs.len());
        let mut raw = Vec::with_capacity(outputs.len());
        for (name, t) in &outputs {
            let datatype = model.outputs.iter().find(|o| &o.name == name).map_or("INVALID", |o| o.datatype());
            described.push(InferOutputTensor { name: name.clone(), datatype: datatype.into(), shape: t.size(), ..Default::default() });
            raw.push(tensor_to_bytes(t)?.into());
        }
        let response = pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: "1".into(),
            id: admitted.id.unwrap_or_default(),
            outputs: described,
            raw_output_contents: raw,
            ..Default::default()
        };
        stages.end(Stage::Encode);
        Ok(response)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.0.ready() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        self.0.model(&r.name, Some(&r.version)).map_err(status)?;
        Ok(Response::new(pb::ModelReadyResponse { ready: self.0.ready() }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "tch-streams".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let m = self.0.model(&r.name, Some(&r.version)).map_err(status)?;
        let tensors = |ts: &[super::model::TensorInfo]| {
            ts.iter()
                .map(|t| pb::model_metadata_response::TensorMetadata { name: t.name.clone(), datatype: t.datatype().into(), shape: t.shape() })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec!["1".into()],
            platform: m.platform.into(),
            inputs: tensors(&m.inputs),
            outputs: tensors(&m.outputs),
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        // The front counts the request only if this handler never ran.
        if let Some(flag) = r.extensions().get::<Recorded>() {
            flag.mark();
        }
        let deadline = r.extensions().get::<Deadline>().map(|d| d.0);
        let read = r.extensions().get::<MessageRead>().map_or_else(Instant::now, |m| m.0);
        self.recorded_infer(r.into_inner(), deadline, read, Ok).await.map(Response::new).map_err(status)
    }

    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = r.into_inner();
        let m = self.0.model(&r.name, Some(&r.version)).map_err(status)?;
        let config = pb::ModelConfig {
            name: m.name.clone(),
            platform: m.platform.into(),
            max_batch_size: i32::try_from(m.max_batch_size).unwrap_or(i32::MAX),
            input: m.inputs.iter().map(|t| pb::ModelInput { name: t.name.clone(), data_type: super::protocol::config_type(t.kind), dims: t.dims.clone() }).collect(),
            output: m.outputs.iter().map(|t| pb::ModelOutput { name: t.name.clone(), data_type: super::protocol::config_type(t.kind), dims: t.dims.clone() }).collect(),
            dynamic_batching: m.dynamic_batching.then_some(pb::ModelDynamicBatching {}),
        };
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config) }))
    }
}

