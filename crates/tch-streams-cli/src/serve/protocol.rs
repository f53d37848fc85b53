//! Tensors on the wire: the protocol's datatype names, raw little-endian bytes (the binary
//! extension and gRPC's `raw_*_contents`), gRPC's typed contents, and the one error type every
//! endpoint answers with (JSON `data` arrays: [`super::json`]). Pure functions, called on the async runtime's threads; nothing here
//! blocks or touches a device (tensors are host tensors).

use super::grpc::pb::InferTensorContents;
use bytes::Bytes;
use tch::{Kind, Tensor};

/// Why a request failed, and how each protocol says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The class of failure: it picks the HTTP status, the gRPC code and the metrics label.
    pub kind: ErrorKind,
    /// Said to the client as it is (the protocol's `{"error": ...}` or the gRPC message).
    pub message: String,
}

/// Classes of failure, each with one HTTP status and one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed body, wrong datatype/shape/byte size, unknown input or output: 400, INVALID_ARGUMENT.
    BadRequest,
    /// No such model (or version): 404, NOT_FOUND.
    NotFound,
    /// The body exceeds `--max-request-bytes`: 413; over gRPC OUT_OF_RANGE, the code tonic's
    /// decoder gives an oversized message.
    TooLarge,
    /// Draining after SIGTERM, or the in-flight cap is reached: 503, UNAVAILABLE.
    Unavailable,
    /// No answer within `--request-timeout-ms`: 504, DEADLINE_EXCEEDED.
    Timeout,
    /// The model failed on a well-formed request: 500, INTERNAL.
    Internal,
    /// The byte budget for request bodies (`--max-buffered-bytes`) is spent: 503,
    /// RESOURCE_EXHAUSTED.
    Exhausted,
    /// The request body did not arrive within `--body-timeout-s`: 408; over gRPC
    /// DEADLINE_EXCEEDED.
    BodyTimeout,
    /// The client went away (disconnected, cancelled) before its answer: nothing is sent; 499
    /// and CANCELLED name it in logs and metrics.
    Cancelled,
    /// A body encoding this server does not read (`Content-Encoding`): 415, UNIMPLEMENTED.
    Unsupported,
    /// A method the route does not serve: 405 (HTTP only; UNIMPLEMENTED over gRPC).
    MethodNotAllowed,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Internal => 500,
            ErrorKind::Exhausted => 503,
            ErrorKind::BodyTimeout => 408,
            ErrorKind::Cancelled => 499,
            ErrorKind::Unsupported => 415,
            ErrorKind::MethodNotAllowed => 405,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::BadRequest => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::TooLarge => tonic::Code::OutOfRange,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
            ErrorKind::Exhausted => tonic::Code::ResourceExhausted,
            ErrorKind::BodyTimeout => tonic::Code::DeadlineExceeded,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::Unsupported | ErrorKind::MethodNotAllowed => tonic::Code::Unimplemented,
        }
    }

    /// The `outcome` label of `tch_streams_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "error",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl ApiError {
    /// A 400 / INVALID_ARGUMENT with `message`.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError { kind: ErrorKind::BadRequest, message: message.into() }
    }
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `s` as a message may show it: at most 64 characters, then an ellipsis and its length (a
/// client's name or value is never echoed whole: it could be megabytes).
///
/// ```
/// use tch_streams_cli::serve::protocol::shown;
/// assert_eq!(shown("small-mlp"), "small-mlp");
/// assert_eq!(shown(&"x".repeat(1000)), format!("{}… (1000 bytes)", "x".repeat(64)));
/// ```
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// The element types served, with the protocol's datatype name and the model-configuration
/// extension's enum value (`TYPE_*`).
const TYPES: [(Kind, &str, i32); 10] = [
    (Kind::Bool, "BOOL", 1),
    (Kind::Uint8, "UINT8", 2),
    (Kind::Int8, "INT8", 6),
    (Kind::Int16, "INT16", 7),
    (Kind::Int, "INT32", 8),
    (Kind::Int64, "INT64", 9),
    (Kind::Half, "FP16", 10),
    (Kind::Float, "FP32", 11),
    (Kind::Double, "FP64", 12),
    (Kind::BFloat16, "BF16", 14),
];

/// The protocol's datatype name of `kind` (`Float` → `FP32`), if it is served.
///
/// ```
/// use tch_streams_cli::serve::protocol::{datatype, kind_of};
/// assert_eq!(datatype(tch::Kind::BFloat16), Some("BF16"));
/// assert_eq!(kind_of("INT64"), Some(tch::Kind::Int64));
/// assert_eq!(kind_of("BYTES"), None);
/// ```
pub fn datatype(kind: Kind) -> Option<&'static str> {
    TYPES.iter().find(|t| t.0 == kind).map(|t| t.1)
}

/// The tch kind of a protocol datatype name.
pub fn kind_of(datatype: &str) -> Option<Kind> {
    TYPES.iter().find(|t| t.1 == datatype).map(|t| t.0)
}

/// The model-configuration enum value of `kind` (`Float` → 11, `TYPE_FP32`).
pub fn config_type(kind: Kind) -> i32 {
    TYPES.iter().find(|t| t.0 == kind).map_or(0, |t| t.2)
}

/// The model-configuration name of `kind` (`TYPE_FP32`), as the HTTP config shows it.
pub fn config_type_name(kind: Kind) -> String {
    datatype(kind).map_or_else(|| "TYPE_INVALID".into(), |d| format!("TYPE_{d}"))
}

/// Elements of `shape`, or an error if a dim is negative or the product overflows.
pub fn elements(shape: &[i64]) -> Result<usize, ApiError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
        .ok_or_else(|| ApiError::bad(format!("shape {shape:?} is invalid: dims must be >= 0 and their product fit in memory")))
}

/// A host tensor of `shape` and `kind` from row-major little-endian bytes; the byte count must
/// be exactly elements × element size. `what` names the input in messages.
pub fn tensor_from_bytes(what: &str, bytes: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, ApiError> {
    check_bytes(what, bytes, shape, kind)?;
    Tensor::f_from_data_size(bytes, shape, kind).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

/// As [`tensor_from_bytes`], for bytes of a request that `owner` holds (the body or message
/// they lie in): where they are aligned to the element size, the tensor is made over them in
/// place, holding `owner` until the engine lets go of it, and no byte is copied; elsewhere
/// (no owner, misaligned bytes) they are copied. Returns the tensor and whether it was copied.
pub fn tensor_from_request_bytes(what: &str, bytes: &[u8], owner: Option<Bytes>, shape: &[i64], kind: Kind) -> Result<(Tensor, bool), ApiError> {
    check_bytes(what, bytes, shape, kind)?;
    let copied = || Tensor::f_from_data_size(bytes, shape, kind).map(|t| (t, true)).map_err(|e| ApiError::bad(format!("{what}: {e}")));
    let Some(owner) = owner.filter(|o| o.as_ptr() == bytes.as_ptr() && o.len() == bytes.len()) else { return copied() };
    if !tch_streams::host_tensor::aligned(bytes, kind) {
        return copied();
    }
    // SAFETY: the tensor is only read: the engine joins or copies every request's inputs into
    // memory of its own before a model sees them, and nothing else here holds the tensor.
    match unsafe { tch_streams::host_tensor::tensor_over(owner, shape, kind) } {
        Ok(t) => Ok((t, false)),
        Err(_) => copied(), // a kind not made over bytes: the owner went, the bytes are still ours
    }
}

/// That `bytes` hold exactly `shape` of `kind` (and, for BOOL, only 0 and 1).
fn check_bytes(what: &str, bytes: &[u8], shape: &[i64], kind: Kind) -> Result<(), ApiError> {
    let n = elements(shape)?;
    let expected = n.checked_mul(kind.elt_size_in_bytes()).ok_or_else(|| ApiError::bad(format!("{what}: shape {shape:?} is too large")))?;
    if bytes.len() != expected {
        return Err(ApiError::bad(format!(
            "{what}: {} byte(s) of data, but shape {shape:?} of {} needs {expected}",
            bytes.len(),
            datatype(kind).unwrap_or("?")
        )));
    }
    if kind == Kind::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(ApiError::bad(format!("{what}: BOOL data must be bytes 0 or 1")));
    }
    Ok(())
}

/// The row-major little-endian bytes of a host tensor.
pub fn tensor_to_bytes(t: &Tensor) -> Result<Vec<u8>, ApiError> {
    let internal = |e: tch::TchError| ApiError::new(ErrorKind::Internal, format!("cannot read an output tensor: {e}"));
    let t = t.f_contiguous().map_err(internal)?;
    let n = t.numel();
    let mut out = vec![0u8; n * t.kind().elt_size_in_bytes()];
    if n > 0 {
        t.f_copy_data_u8(&mut out, n).map_err(internal)?;
    }
    Ok(out)
}

/// A tensor from gRPC typed `contents`: the field that matches the datatype, with exactly the
/// shape's element count. 16-bit floats have no typed field: they come as raw bytes only.
pub fn tensor_from_contents(what: &str, datatype: &str, shape: &[i64], c: &InferTensorContents) -> Result<Tensor, ApiError> {
    let kind = kind_of(datatype).ok_or_else(|| ApiError::bad(format!("{what}: unknown datatype {}", shown(datatype))))?;
    let n = elements(shape)?;
    let count = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(ApiError::bad(format!("{what}: {len} value(s) in contents, but shape {shape:?} holds {n}")))
        }
    };
    let bad = |e: tch::TchError| ApiError::bad(format!("{what}: {e}"));
    let t = match kind {
        Kind::Float => count(c.fp32_contents.len()).and_then(|_| Tensor::f_from_slice(&c.fp32_contents).map_err(bad))?,
        Kind::Double => count(c.fp64_contents.len()).and_then(|_| Tensor::f_from_slice(&c.fp64_contents).map_err(bad))?,
        Kind::Int64 => count(c.int64_contents.len()).and_then(|_| Tensor::f_from_slice(&c.int64_contents).map_err(bad))?,
        Kind::Bool => count(c.bool_contents.len()).and_then(|_| Tensor::f_from_slice(&c.bool_contents).map_err(bad))?,
        Kind::Int | Kind::Int16 | Kind::Int8 => {
            count(c.int_contents.len())?;
            let (lo, hi) = match kind {
                Kind::Int16 => (i16::MIN as i32, i16::MAX as i32),
                Kind::Int8 => (i8::MIN as i32, i8::MAX as i32),
                _ => (i32::MIN, i32::MAX),
            };
            if let Some(x) = c.int_contents.iter().find(|x| !(lo..=hi).contains(*x)) {
                return Err(ApiError::bad(format!("{what}: {x} is out of range for {datatype}")));
            }
            Tensor::f_from_slice(&c.int_contents).and_then(|t| t.f_to_kind(kind)).map_err(bad)?
        }
        Kind::Uint8 => {
            count(c.uint_contents.len())?;
            if let Some(x) = c.uint_contents.iter().find(|&&x| x > 255) {
                return Err(ApiError::bad(format!("{what}: {x} is out of range for UINT8")));
            }
            let v: Vec<u8> = c.uint_contents.iter().map(|&x| x as u8).collect();
            Tensor::f_from_slice(&v).map_err(bad)?
        }
        _ => return Err(ApiError::bad(format!("{what}: {datatype} has no typed contents field; send it in raw_input_contents"))),
    };
    t.f_reshape(shape).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_served_type() {
        for (kind, _, _) in TYPES {
            let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).f_to_kind(kind).unwrap().reshape([2, 3]);
            let b = tensor_to_bytes(&t).unwrap();
            assert_eq!(b.len(), 6 * kind.elt_size_in_bytes());
            let back = tensor_from_bytes("x", &b, &[2, 3], kind).unwrap();
            assert!(back.equal(&t), "{kind:?}");
        }
    }

    #[test]
    fn aligned_request_bytes_become_tensors_in_place_and_the_rest_are_copied() {
        for (kind, _, _) in TYPES {
            let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).f_to_kind(kind).unwrap().reshape([2, 3]);
            let data = tensor_to_bytes(&t).unwrap();
            // A body: 3 bytes of header, then the tensor at an 8-aligned address.
            let mut v = vec![0u8; 8 + data.len()];
            let start = (8 - (v.as_ptr() as usize + 3) % 8) % 8; // header at `start`, tensor at start + 3
            v.truncate(start + 3 + data.len());
            v[start + 3..].copy_from_slice(&data);
            let body = Bytes::from(v);
            let part = body.slice(start + 3..);
            let (t2, copied) = tensor_from_request_bytes("x", &part, Some(part.clone()), &[2, 3], kind).unwrap();
            assert!(!copied, "{kind:?}");
            assert_eq!(t2.data_ptr() as usize, part.as_ptr() as usize, "{kind:?}: in place");
            assert!(t2.equal(&t), "{kind:?}");
            // No owner, or an owner of other bytes: copied.
            for owner in [None, Some(body.clone())] {
                let (t3, copied) = tensor_from_request_bytes("x", &part, owner, &[2, 3], kind).unwrap();
                assert!(copied && t3.equal(&t), "{kind:?}");
            }
            // Misaligned for any element wider than a byte: copied.
            if kind.elt_size_in_bytes() > 1 {
                let skewed = body.slice(start + 4..start + 4 + kind.elt_size_in_bytes());
                let (_, copied) = tensor_from_request_bytes("x", &skewed, Some(skewed.clone()), &[1, 1], kind).unwrap();
                assert!(copied, "{kind:?}");
            }
        }
        // In place or not, the checks are the same.
        let b = Bytes::from(vec![0u8, 2]);
        let e = tensor_from_request_bytes("flags", &b, Some(b.clone()), &[1, 2], Kind::Bool).unwrap_err();
        assert_eq!(e.message, "flags: BOOL data must be bytes 0 or 1");
        let b = Bytes::from(vec![0u8; 7]);
        let e = tensor_from_request_bytes("input0", &b, Some(b.clone()), &[2, 1], Kind::Float).unwrap_err();
        assert_eq!(e.message, "input0: 7 byte(s) of data, but shape [2, 1] of FP32 needs 8");
    }

    #[test]
    fn wrong_byte_counts_and_shapes_are_refused_with_the_numbers() {
        let e = tensor_from_bytes("input0", &[0; 7], &[2, 1], Kind::Float).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.message, "input0: 7 byte(s) of data, but shape [2, 1] of FP32 needs 8");
        assert!(elements(&[-1, 3]).is_err());
        assert!(elements(&[i64::MAX, i64::MAX]).is_err());
    }
}
