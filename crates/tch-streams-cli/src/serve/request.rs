//! One inference request, whichever protocol brought it: HTTP's JSON head (with binary tensors
//! after it) and gRPC's `ModelInferRequest` both decode into an [`InferRequest`], which
//! [`ServedModel::admit`](super::model::ServedModel::admit) validates once — parameters, names,
//! datatypes, shapes, batch, data — for both.
//!
//! An `InferRequest` borrows from what the protocol received (the HTTP body, the gRPC message):
//! nothing is copied until admission makes the input tensors. The HTTP head is parsed without
//! a JSON tree: `data` arrays stay text until admission parses them into their tensor
//! ([`super::json`]), unknown parameters are skipped unread, and the lists a client controls are
//! bounded (inputs, outputs, dims), so decoding costs the body plus a bounded structure.

use super::grpc::pb;
use super::protocol::{shown, ApiError};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// Most inputs, or outputs, one request may name.
pub const MAX_TENSORS: usize = 1024;
/// Most dims one shape may have.
pub const MAX_DIMS: usize = 64;

/// The parameters this server reads, at any level (request, input, output); other names are
/// skipped, except those of extensions it does not serve, which are kept to be refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Params {
    /// `binary_data_size` (HTTP input: its bytes follow the JSON head).
    pub binary_data_size: Option<u64>,
    /// `binary_data` (HTTP output: answer it as binary).
    pub binary_data: Option<bool>,
    /// `binary_data_output` (HTTP request: answer every output as binary).
    pub binary_data_output: Option<bool>,
    /// Names of parameters of extensions this server does not serve (`shared_memory_*`,
    /// `classification`), as sent.
    pub unsupported: Vec<String>,
}

/// Where an input's elements are.
#[derive(Debug)]
pub enum Data<'a> {
    /// Raw little-endian bytes (HTTP binary extension, gRPC `raw_input_contents`).
    Bytes(&'a [u8]),
    /// A JSON `data` value, still text.
    Json(&'a RawValue),
    /// gRPC typed `contents`.
    Contents(&'a pb::InferTensorContents),
    /// None was sent.
    Missing,
}

/// One input as sent.
#[derive(Debug)]
pub struct Input<'a> {
    /// The tensor's name.
    pub name: Cow<'a, str>,
    /// The datatype the client declared.
    pub datatype: Cow<'a, str>,
    /// The full shape the client declared, batch first.
    pub shape: Vec<i64>,
    /// Its parameters.
    pub params: Params,
    /// Its elements.
    pub data: Data<'a>,
}

/// One requested output.
#[derive(Debug)]
pub struct Output<'a> {
    /// The output's name.
    pub name: Cow<'a, str>,
    /// Its parameters.
    pub params: Params,
}

/// An inference request, protocol-neutral.
#[derive(Debug)]
pub struct InferRequest<'a> {
    /// The client's request id, echoed in the answer.
    pub id: Option<Cow<'a, str>>,
    /// Request-level parameters.
    pub params: Params,
    /// Inputs as sent.
    pub inputs: Vec<Input<'a>>,
    /// Outputs asked for (none: all of them).
    pub outputs: Vec<Output<'a>>,
}

impl Params {
    fn note(&mut self, key: &str) -> bool {
        if key.starts_with("shared_memory") || key == "classification" {
            self.unsupported.push(shown(key));
            true
        } else {
            false
        }
    }

    /// Refuses the parameters of extensions this server does not serve; `what` says where they
    /// were ("request", "input \"x\"", "output \"y\"").
    pub fn check(&self, what: &str) -> Result<(), ApiError> {
        match self.unsupported.first() {
            Some(k) => Err(ApiError::bad(format!("{what}: parameter {k:?} is not supported by this server (no shared-memory or classification extension)"))),
            None => Ok(()),
        }
    }

    /// The parameters of a gRPC map.
    pub fn from_grpc(map: &std::collections::HashMap<String, pb::InferParameter>) -> Result<Params, ApiError> {
        use pb::infer_parameter::ParameterChoice as C;
        let mut p = Params::default();
        for (k, v) in map {
            if p.note(k) {
                continue;
            }
            let choice = v.parameter_choice.as_ref();
            match k.as_str() {
                "binary_data_size" => match choice {
                    Some(C::Int64Param(n)) if *n >= 0 => p.binary_data_size = Some(*n as u64),
                    Some(C::Uint64Param(n)) => p.binary_data_size = Some(*n),
                    _ => return Err(ApiError::bad("parameter binary_data_size is not a byte count")),
                },
                "binary_data" | "binary_data_output" => {
                    let Some(C::BoolParam(b)) = choice else { return Err(ApiError::bad(format!("parameter {k} is not true or false"))) };
                    if k == "binary_data" {
                        p.binary_data = Some(*b);
                    } else {
                        p.binary_data_output = Some(*b);
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Params, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameters object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut p = Params::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if p.note(&key) {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    match key.as_ref() {
                        "binary_data_size" => {
                            let raw: &RawValue = map.next_value()?;
                            let n = serde_json::from_str::<u64>(raw.get()).map_err(|_| de::Error::custom(format!("binary_data_size {} is not a byte count", shown(raw.get()))))?;
                            p.binary_data_size = Some(n);
                        }
                        "binary_data" | "binary_data_output" => {
                            let raw: &RawValue = map.next_value()?;
                            let b = serde_json::from_str::<bool>(raw.get()).map_err(|_| de::Error::custom(format!("{key} {} is not true or false", shown(raw.get()))))?;
                            if key == "binary_data" {
                                p.binary_data = Some(b);
                            } else {
                                p.binary_data_output = Some(b);
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

/// A list of at most `N` elements (more is an error, found before they are stored).
struct Bounded<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    if out.len() == N {
                        return Err(de::Error::custom(format!("more than {N} elements in a list (the most this server reads)")));
                    }
                    out.push(x);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

#[derive(Deserialize)]
struct HeadJson<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Params,
    #[serde(borrow)]
    inputs: Bounded<InputJson<'a>, MAX_TENSORS>,
    #[serde(borrow, default)]
    outputs: Option<Bounded<OutputJson<'a>, MAX_TENSORS>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    shape: Bounded<i64, MAX_DIMS>,
    #[serde(default)]
    parameters: Params,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    parameters: Params,
}

/// Decodes an HTTP inference body: the JSON head in `body[..json_len]`, then the inputs'
/// binary data in order of their `binary_data_size`.
pub fn from_http(body: &[u8], json_len: usize) -> Result<InferRequest<'_>, ApiError> {
    let (head, mut binary) = body.split_at(json_len.min(body.len()));
    let head = std::str::from_utf8(head).map_err(|e| ApiError::bad(format!("malformed inference request JSON: not UTF-8 ({e})")))?;
    let h: HeadJson<'_> = serde_json::from_str(head).map_err(|e| ApiError::bad(format!("malformed inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(h.inputs.0.len());
    for i in h.inputs.0 {
        let data = match i.parameters.binary_data_size {
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > binary.len() {
                    return Err(ApiError::bad(format!("input {:?}: binary_data_size {n} but only {} binary byte(s) remain in the body", shown(&i.name), binary.len())));
                }
                let (this, rest) = binary.split_at(n);
                binary = rest;
                Data::Bytes(this)
            }
            None => i.data.map_or(Data::Missing, Data::Json),
        };
        inputs.push(Input { name: i.name, datatype: i.datatype, shape: i.shape.0, params: i.parameters, data });
    }
    if !binary.is_empty() {
        return Err(ApiError::bad(format!("{} byte(s) of binary data after the last input's binary_data_size", binary.len())));
    }
    let outputs = h.outputs.map_or_else(Vec::new, |o| o.0.into_iter().map(|o| Output { name: o.name, params: o.parameters }).collect());
    Ok(InferRequest { id: h.id, params: h.parameters, inputs, outputs })
}

/// Decodes a gRPC `ModelInferRequest`: inputs from `raw_input_contents` (one per input, in
/// order) or typed `contents`.
pub fn from_grpc(r: &pb::ModelInferRequest) -> Result<InferRequest<'_>, ApiError> {
    if r.inputs.len() > MAX_TENSORS || r.outputs.len() > MAX_TENSORS {
        return Err(ApiError::bad(format!("more than {MAX_TENSORS} inputs or outputs (the most this server reads)")));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ApiError::bad(format!("{} raw_input_contents for {} inputs: give one per input, in order", r.raw_input_contents.len(), r.inputs.len())));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, input) in r.inputs.iter().enumerate() {
        let data = match (r.raw_input_contents.get(i), &input.contents) {
            (Some(_), Some(_)) => return Err(ApiError::bad(format!("input {:?}: both raw_input_contents and contents", shown(&input.name)))),
            (Some(raw), None) => Data::Bytes(raw),
            (None, Some(c)) => Data::Contents(c),
            (None, None) => Data::Missing,
        };
        if input.shape.len() > MAX_DIMS {
            return Err(ApiError::bad(format!("input {:?}: more than {MAX_DIMS} dims", shown(&input.name))));
        }
        let params = Params::from_grpc(&input.parameters)?;
        inputs.push(Input { name: Cow::Borrowed(&input.name), datatype: Cow::Borrowed(&input.datatype), shape: input.shape.clone(), params, data });
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in &r.outputs {
        outputs.push(Output { name: Cow::Borrowed(&o.name), params: Params::from_grpc(&o.parameters)? });
    }
    let id = (!r.id.is_empty()).then_some(Cow::Borrowed(r.id.as_str()));
    Ok(InferRequest { id, params: Params::from_grpc(&r.parameters)?, inputs, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_head_decodes_without_copying_data_and_with_its_parameters() {
        let head = r#"{"id": "r1", "parameters": {"binary_data_output": true, "other": [1, 2, {"x": 3}]},
            "inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 2], "data": [[1.5, 2]]},
                       {"name": "input1", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}],
            "outputs": [{"name": "output0", "parameters": {"binary_data": false, "classification": 2}}]}"#;
        let mut body = head.as_bytes().to_vec();
        body.extend_from_slice(&7i64.to_le_bytes());
        let r = from_http(&body, head.len()).unwrap();
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.params.binary_data_output, Some(true));
        assert!(matches!(r.inputs[0].data, Data::Json(raw) if raw.get() == "[[1.5, 2]]"));
        assert!(matches!(r.inputs[1].data, Data::Bytes(b) if b == 7i64.to_le_bytes()));
        assert_eq!(r.outputs[0].params.unsupported, vec!["classification".to_string()]);
        assert_eq!(r.outputs[0].params.check("output \"output0\"").unwrap_err().message, "output \"output0\": parameter \"classification\" is not supported by this server (no shared-memory or classification extension)");
    }

    #[test]
    fn lists_a_client_controls_are_bounded() {
        let dims = format!(r#"{{"inputs": [{{"name": "a", "datatype": "FP32", "shape": [{}]}}]}}"#, vec!["1"; MAX_DIMS + 1].join(","));
        let e = from_http(dims.as_bytes(), dims.len()).unwrap_err();
        assert!(e.message.contains("more than 64 elements in a list"), "{}", e.message);
        let body = br#"{"inputs": [], "parameters": {"binary_data_output": 3}}"#;
        let e = from_http(body, body.len()).unwrap_err();
        assert!(e.message.contains("binary_data_output 3 is not true or false"), "{}", e.message);
    }
}
