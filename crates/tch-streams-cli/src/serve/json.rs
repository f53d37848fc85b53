//! JSON tensors without a JSON tree: request `data` arrays are parsed straight into a tensor of
//! the input's dtype (its size known from the validated shape), and answers are written
//! straight into the response text.
//!
//! A `serde_json::Value` tree costs about 20 times the text it came from (one 64 MiB body held
//! 1.37 GB); here a request holds its body, the bounded structure around the data (names,
//! shapes, parameters: see [`super::request`]) and one tensor — nothing per element beyond the
//! element itself. Called on blocking threads (see [`super::state::Server::offload`]).
//!
//! Numbers must fit the datatype: integers its range, floats its finite range (`1e39` is not an
//! FP32). Answers write NaN and ±infinity as `NaN`, `Infinity` and `-Infinity`, as Triton does
//! and tritonclient reads them (strict JSON has no spelling for them; ask for binary outputs to
//! avoid them).

use super::protocol::{datatype, elements, ApiError, ErrorKind};
use serde::de::{self, DeserializeSeed, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::io::Write;
use tch::{Device, Kind, Tensor};

/// One JSON scalar as the parser saw it.
#[derive(Debug, Clone, Copy)]
enum Num {
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Bool(b) => write!(f, "{b}"),
            Num::U(u) => write!(f, "{u}"),
            Num::I(i) => write!(f, "{i}"),
            Num::F(x) => write!(f, "{x:?}"),
        }
    }
}

/// How one JSON scalar becomes an element; the error says what was expected.
type Convert<T> = fn(Num) -> Result<T, Problem>;

/// Why a value does not fit.
enum Problem {
    /// The JSON kind is wrong: "a number", "an integer", "true or false".
    Expected(&'static str),
    /// The value is outside the datatype's range.
    Range,
}

/// A JSON string as a message may show it: quoted, at most 64 characters.
pub fn shown_str(s: &str) -> String {
    super::protocol::shown(&serde_json::to_string(s).unwrap_or_default())
}

/// Fills `out` with the flattened elements of a (nested) JSON array, or stops at the first
/// value that does not fit; counts every element, even past `out`'s end.
struct Fill<'s, T> {
    out: &'s mut [T],
    count: usize,
    convert: Convert<T>,
    /// The first misfit: its text and what was wrong.
    bad: &'s mut Option<(String, Problem)>,
}

impl<'de, T> DeserializeSeed<'de> for &mut Fill<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T> Fill<'_, T> {
    fn scalar<E: de::Error>(&mut self, v: Num) -> Result<(), E> {
        if self.count < self.out.len() {
            match (self.convert)(v) {
                Ok(x) => self.out[self.count] = x,
                Err(p) => return self.stop(v.to_string(), p),
            }
        }
        self.count += 1;
        Ok(())
    }

    fn stop<E: de::Error>(&mut self, text: String, p: Problem) -> Result<(), E> {
        *self.bad = Some((text, p));
        Err(E::custom("a data value does not fit"))
    }
}

impl<'de, T> Visitor<'de> for &mut Fill<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Num::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Num::U(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Num::I(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Num::F(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.stop(shown_str(v), Problem::Expected(""))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.stop("null".into(), Problem::Expected(""))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.stop("an object".into(), Problem::Expected(""))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }
}

fn int<T: TryFrom<i64>>(v: Num) -> Result<T, Problem> {
    let i = match v {
        Num::I(i) => i,
        Num::U(u) => i64::try_from(u).map_err(|_| Problem::Range)?,
        _ => return Err(Problem::Expected("an integer")),
    };
    T::try_from(i).map_err(|_| Problem::Range)
}

fn float(v: Num) -> Result<f64, Problem> {
    match v {
        Num::F(x) => Ok(x),
        Num::I(i) => Ok(i as f64),
        Num::U(u) => Ok(u as f64),
        Num::Bool(_) => Err(Problem::Expected("a number")),
    }
}

/// `x` narrowed by `to`, refused when a finite value becomes infinite (out of range).
fn narrow<T>(x: f64, to: fn(f64) -> T, is_inf: fn(&T) -> bool) -> Result<T, Problem> {
    let y = to(x);
    if is_inf(&y) {
        Err(Problem::Range)
    } else {
        Ok(y)
    }
}

/// Parses `raw` into a zero-initialised host tensor of `n` elements of `T` (`kind`).
fn fill<T: tch::kind::Element + Copy>(what: &str, raw: &RawValue, shape: &[i64], kind: Kind, convert: Convert<T>) -> Result<Tensor, ApiError> {
    let n = elements(shape)?;
    let t = Tensor::f_zeros(shape, (kind, Device::Cpu)).map_err(|e| ApiError::bad(format!("{what}: {e}")))?;
    let mut bad = None;
    let count = {
        let out: &mut [T] = if n == 0 {
            &mut []
        } else {
            // SAFETY: `t` is a fresh, contiguous host tensor of `n` zeroed elements of `kind`,
            // whose Rust type is `T` (the caller pairs them); nothing else refers to its storage,
            // and the slice ends before `t` is returned.
            unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) }
        };
        let mut f = Fill { out, count: 0, convert, bad: &mut bad };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let parsed = (&mut f).deserialize(&mut de);
        let count = f.count;
        if let Some((text, problem)) = bad.take() {
            let dt = datatype(kind).unwrap_or("?");
            return Err(ApiError::bad(match problem {
                Problem::Range => format!("{what}: {text} is out of range for {dt}"),
                Problem::Expected(want) => {
                    let want = if want.is_empty() { if kind == Kind::Bool { "true or false" } else if is_float(kind) { "a number" } else { "an integer" } } else { want };
                    format!("{what}: data holds {text}, expected {want} for {dt}")
                }
            }));
        }
        parsed.map_err(|e| ApiError::bad(format!("{what}: malformed data: {e}")))?;
        count
    };
    if count != n {
        return Err(ApiError::bad(format!("{what}: {count} value(s) in data, but shape {shape:?} holds {n}")));
    }
    Ok(t)
}

fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// A host tensor of `shape` and `kind` from a JSON `data` value (a flat or nested array, or one
/// scalar), every element of the datatype's JSON kind and range; the count must equal the
/// shape's. `what` names the input in messages.
///
/// ```
/// use tch_streams_cli::serve::json::tensor_from_json;
/// let raw = serde_json::value::RawValue::from_string("[[1, 2], [3, 4]]".into()).unwrap();
/// let t = tensor_from_json("x", &raw, &[2, 2], tch::Kind::Int64).unwrap();
/// assert_eq!(t.int64_value(&[1, 0]), 3);
/// let big = serde_json::value::RawValue::from_string("[1e39]".into()).unwrap();
/// assert_eq!(tensor_from_json("x", &big, &[1], tch::Kind::Float).unwrap_err().message, "x: 1e39 is out of range for FP32");
/// ```
pub fn tensor_from_json(what: &str, raw: &RawValue, shape: &[i64], kind: Kind) -> Result<Tensor, ApiError> {
    match kind {
        Kind::Bool => fill::<bool>(what, raw, shape, kind, |v| match v {
            Num::Bool(b) => Ok(b),
            _ => Err(Problem::Expected("true or false")),
        }),
        Kind::Uint8 => fill::<u8>(what, raw, shape, kind, int),
        Kind::Int8 => fill::<i8>(what, raw, shape, kind, int),
        Kind::Int16 => fill::<i16>(what, raw, shape, kind, int),
        Kind::Int => fill::<i32>(what, raw, shape, kind, int),
        Kind::Int64 => fill::<i64>(what, raw, shape, kind, int),
        Kind::Float => fill::<f32>(what, raw, shape, kind, |v| narrow(float(v)?, |x| x as f32, |y| y.is_infinite())),
        Kind::Double => fill::<f64>(what, raw, shape, kind, float),
        Kind::Half => fill::<half::f16>(what, raw, shape, kind, |v| narrow(float(v)?, half::f16::from_f64, |y| y.is_infinite())),
        Kind::BFloat16 => fill::<half::bf16>(what, raw, shape, kind, |v| narrow(float(v)?, half::bf16::from_f64, |y| y.is_infinite())),
        other => Err(ApiError::bad(format!("{what}: {other:?} is not a served datatype"))),
    }
}

fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if x.is_infinite() {
        out.extend_from_slice(if x > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        // Debug is the shortest text that reads back as the same value, with an exponent for
        // very large and small magnitudes: always a JSON number.
        let _ = write!(out, "{x:?}");
    }
}

fn write_f32(out: &mut Vec<u8>, x: f32) {
    if x.is_finite() {
        let _ = write!(out, "{x:?}");
    } else {
        write_f64(out, x as f64);
    }
}

/// Appends the flat row-major JSON `data` array of a host tensor to `out` (16-bit floats as the
/// numbers they hold, NaN and infinities as `NaN`, `Infinity`, `-Infinity`).
///
/// ```
/// use tch_streams_cli::serve::json::write_data;
/// let t = tch::Tensor::from_slice(&[0.1f32, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-7]);
/// let mut out = Vec::new();
/// write_data(&t, &mut out).unwrap();
/// assert_eq!(String::from_utf8(out).unwrap(), "[0.1,Infinity,-Infinity,NaN,1e-7]");
/// ```
pub fn write_data(t: &Tensor, out: &mut Vec<u8>) -> Result<(), ApiError> {
    let internal = |e: tch::TchError| ApiError::new(ErrorKind::Internal, format!("cannot read an output tensor: {e}"));
    let flat = t.f_reshape([-1]).map_err(internal)?;
    out.push(b'[');
    let sep = |out: &mut Vec<u8>, i: usize| {
        if i > 0 {
            out.push(b',');
        }
    };
    match t.kind() {
        Kind::Bool => {
            for (i, b) in Vec::<bool>::try_from(&flat).map_err(internal)?.into_iter().enumerate() {
                sep(out, i);
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
        }
        Kind::Float | Kind::Half | Kind::BFloat16 => {
            for (i, x) in Vec::<f32>::try_from(&flat.f_to_kind(Kind::Float).map_err(internal)?).map_err(internal)?.into_iter().enumerate() {
                sep(out, i);
                write_f32(out, x);
            }
        }
        Kind::Double => {
            for (i, x) in Vec::<f64>::try_from(&flat).map_err(internal)?.into_iter().enumerate() {
                sep(out, i);
                write_f64(out, x);
            }
        }
        _ => {
            for (i, x) in Vec::<i64>::try_from(&flat.f_to_kind(Kind::Int64).map_err(internal)?).map_err(internal)?.into_iter().enumerate() {
                sep(out, i);
                let _ = write!(out, "{x}");
            }
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn nested_and_flat_data_fill_every_served_type() {
        for kind in [Kind::Bool, Kind::Uint8, Kind::Int8, Kind::Int16, Kind::Int, Kind::Int64, Kind::Half, Kind::BFloat16, Kind::Float, Kind::Double] {
            let text = if kind == Kind::Bool { "[[true, false, true], [false, true, true]]" } else { "[[0, 1, 2], [3, 4, 5]]" };
            let t = tensor_from_json("x", &raw(text), &[2, 3], kind).unwrap();
            assert_eq!((t.kind(), t.size()), (kind, vec![2, 3]));
            let mut out = Vec::new();
            write_data(&t, &mut out).unwrap();
            let want = if kind == Kind::Bool { "[true,false,true,false,true,true]" } else if is_float(kind) { "[0.0,1.0,2.0,3.0,4.0,5.0]" } else { "[0,1,2,3,4,5]" };
            assert_eq!(String::from_utf8(out).unwrap(), want, "{kind:?}");
        }
        let one = tensor_from_json("x", &raw("7"), &[1], Kind::Int64).unwrap();
        assert_eq!(one.int64_value(&[0]), 7);
    }

    #[test]
    fn misfits_are_refused_with_the_value_and_the_datatype() {
        let msg = |text: &str, shape: &[i64], kind| tensor_from_json("input \"a\"", &raw(text), shape, kind).unwrap_err().message;
        assert_eq!(msg("[1, 2, 3]", &[2, 2], Kind::Float), "input \"a\": 3 value(s) in data, but shape [2, 2] holds 4");
        assert_eq!(msg("[1, 2, 3, 4, 5]", &[2, 2], Kind::Float), "input \"a\": 5 value(s) in data, but shape [2, 2] holds 4");
        assert_eq!(msg("[\"a\"]", &[1], Kind::Float), "input \"a\": data holds \"a\", expected a number for FP32");
        assert_eq!(msg("[1.5]", &[1], Kind::Int64), "input \"a\": data holds 1.5, expected an integer for INT64");
        assert_eq!(msg("[1]", &[1], Kind::Bool), "input \"a\": data holds 1, expected true or false for BOOL");
        assert_eq!(msg("[300]", &[1], Kind::Uint8), "input \"a\": 300 is out of range for UINT8");
        assert_eq!(msg("[-1]", &[1], Kind::Uint8), "input \"a\": -1 is out of range for UINT8");
        assert_eq!(msg("[18446744073709551615]", &[1], Kind::Int64), "input \"a\": 18446744073709551615 is out of range for INT64");
        assert_eq!(msg("[70000]", &[1], Kind::Half), "input \"a\": 70000 is out of range for FP16");
        assert_eq!(msg("[1e39]", &[1], Kind::BFloat16), "input \"a\": 1e39 is out of range for BF16");
        assert_eq!(msg("[null]", &[1], Kind::Float), "input \"a\": data holds null, expected a number for FP32");
        assert!(msg("[1, {\"b\": 2}]", &[2], Kind::Float).contains("data holds an object"));
        let long = format!("[\"{}\"]", "z".repeat(10_000));
        assert!(msg(&long, &[1], Kind::Float).len() < 200, "a long string is not echoed whole");
        // The largest finite FP32 is accepted.
        assert!(tensor_from_json("x", &raw("[3.4028234663852886e38]"), &[1], Kind::Float).is_ok());
    }
}
