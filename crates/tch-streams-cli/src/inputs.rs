//! Request inputs for `run` and `bench`: `--input SHAPE:DTYPE` specs, integer fill ranges, and
//! `.npy` files of real data. Never panics on user input; errors say what was expected.

use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One positional input of a request: its full shape (batch first) and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct InputArg {
    /// Shape of one request's tensor, batch first (e.g. `[1, 128]`).
    pub shape: Vec<i64>,
    /// Element type.
    pub kind: Kind,
}

/// The dtypes `--input` accepts, with their names.
pub const DTYPES: [(&str, Kind); 6] = [
    ("float32", Kind::Float),
    ("float16", Kind::Half),
    ("bfloat16", Kind::BFloat16),
    ("int64", Kind::Int64),
    ("int32", Kind::Int),
    ("bool", Kind::Bool),
];

/// The `--input` name of a dtype (`Float` → `float32`), or its Debug name for others.
pub fn dtype_name(kind: Kind) -> String {
    DTYPES.iter().find(|(_, k)| *k == kind).map_or_else(|| format!("{kind:?}"), |(n, _)| n.to_string())
}

/// Parses a dtype name: float32, float16, bfloat16, int64, int32, bool (also f32, fp32, f16,
/// fp16, half, bf16, i64, long, i32, int).
///
/// ```
/// use tch_streams_cli::inputs::parse_dtype;
/// assert_eq!(parse_dtype("int64"), Ok(tch::Kind::Int64));
/// assert_eq!(parse_dtype("fp16"), Ok(tch::Kind::Half));
/// assert!(parse_dtype("complex").unwrap_err().contains("expected one of"));
/// ```
pub fn parse_dtype(s: &str) -> Result<Kind, String> {
    let k = match s.trim().to_ascii_lowercase().as_str() {
        "float32" | "f32" | "fp32" | "float" => Kind::Float,
        "float16" | "f16" | "fp16" | "half" => Kind::Half,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "int64" | "i64" | "long" => Kind::Int64,
        "int32" | "i32" | "int" => Kind::Int,
        "bool" => Kind::Bool,
        other => {
            let names: Vec<&str> = DTYPES.iter().map(|(n, _)| *n).collect();
            return Err(format!("bad dtype {other:?}: expected one of {}", names.join(", ")));
        }
    };
    Ok(k)
}

/// Parses `SHAPE[:DTYPE]`, e.g. `1x128:int64` or `8x3x224x224` (float32).
///
/// ```
/// use tch_streams_cli::inputs::parse_input;
/// let a = parse_input("1x128:int64").unwrap();
/// assert_eq!((a.shape, a.kind), (vec![1, 128], tch::Kind::Int64));
/// assert_eq!(parse_input("4x16").unwrap().kind, tch::Kind::Float);
/// assert!(parse_input("1x0:int64").unwrap_err().contains("bad"));
/// ```
pub fn parse_input(s: &str) -> Result<InputArg, String> {
    let (shape, dtype) = match s.split_once(':') {
        Some((shape, dtype)) => (shape, parse_dtype(dtype)?),
        None => (s, Kind::Float),
    };
    let shape = crate::parse::parse_shape(shape)?;
    Ok(InputArg { shape, kind: dtype })
}

/// Integer inputs are filled from `lo..hi` (half-open), so embedding lookups get valid ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    /// Smallest value.
    pub lo: i64,
    /// One past the largest value.
    pub hi: i64,
}

impl Default for IntRange {
    fn default() -> Self {
        IntRange { lo: 0, hi: 100 }
    }
}

/// Parses `LO..HI` with `LO < HI`.
///
/// ```
/// use tch_streams_cli::inputs::{parse_int_range, IntRange};
/// assert_eq!(parse_int_range("0..30522"), Ok(IntRange { lo: 0, hi: 30522 }));
/// assert!(parse_int_range("5..5").unwrap_err().contains("LO < HI"));
/// ```
pub fn parse_int_range(s: &str) -> Result<IntRange, String> {
    let bad = || format!("bad range {s:?}: expected LO..HI with LO < HI, e.g. 0..30522");
    let (lo, hi) = s.trim().split_once("..").ok_or_else(bad)?;
    let lo: i64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: i64 = hi.trim().parse().map_err(|_| bad())?;
    if lo >= hi {
        return Err(bad());
    }
    Ok(IntRange { lo, hi })
}

/// Most elements one generated input may hold (4 Gi): refuses shapes that could only fail later.
const MAX_ELEMENTS: i64 = 1 << 32;

/// Makes one input of `arg`'s shape and dtype on `device`: floats from a standard normal, integers
/// uniform in `ints`, bools fair coins. Errors (never panics) on shapes too large to allocate.
pub fn generate(arg: &InputArg, ints: IntRange, device: Device) -> Result<Tensor, String> {
    let n = arg.shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
    if n.is_none() {
        return Err(format!("input shape {:?} has more than {MAX_ELEMENTS} elements", arg.shape));
    }
    let shape = arg.shape.as_slice();
    let t = match arg.kind {
        Kind::Bool => Tensor::f_rand(shape, (Kind::Float, device)).and_then(|t| t.f_gt(0.5)),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {
            Tensor::f_randint_low(ints.lo, ints.hi, shape, (arg.kind, device))
        }
        k => Tensor::f_randn(shape, (Kind::Float, device)).and_then(|t| t.f_to_kind(k)),
    };
    t.map_err(|e| format!("cannot make an input of shape {:?} ({}): {e}", arg.shape, dtype_name(arg.kind)))
}

/// Reads a `.npy` file into a host tensor: float32/64, float16, int64/32/16/8, uint8, bool; any
/// rank ≥ 1 (dim 0 = samples); C order.
pub fn read_npy(path: &Path) -> Result<Tensor, String> {
    use npyz::{DType, TypeChar};
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| err(&e))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| err(&e))?;
    if npy.order() != npyz::Order::C {
        return Err(err(&"Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    if shape.is_empty() {
        return Err(err(&"a 0-d array has no batch dimension; save at least one dimension (samples first)"));
    }
    let (tc, size) = match npy.dtype() {
        DType::Plain(ts) => (ts.type_char(), ts.size_field()),
        other => return Err(err(&format!("unsupported dtype {}: expected a plain numeric or bool array", other.descr()))),
    };
    let t = match (tc, size) {
        (TypeChar::Float, 4) => Tensor::from_slice(&npy.into_vec::<f32>().map_err(|e| err(&e))?),
        (TypeChar::Float, 8) => Tensor::from_slice(&npy.into_vec::<f64>().map_err(|e| err(&e))?),
        (TypeChar::Float, 2) => {
            let v: Vec<f32> = npy.into_vec::<half::f16>().map_err(|e| err(&e))?.into_iter().map(f32::from).collect();
            Tensor::from_slice(&v).to_kind(Kind::Half)
        }
        (TypeChar::Int, 8) => Tensor::from_slice(&npy.into_vec::<i64>().map_err(|e| err(&e))?),
        (TypeChar::Int, 4) => Tensor::from_slice(&npy.into_vec::<i32>().map_err(|e| err(&e))?),
        (TypeChar::Int, 2) => Tensor::from_slice(&npy.into_vec::<i16>().map_err(|e| err(&e))?),
        (TypeChar::Int, 1) => Tensor::from_slice(&npy.into_vec::<i8>().map_err(|e| err(&e))?),
        (TypeChar::Uint, 1) => Tensor::from_slice(&npy.into_vec::<u8>().map_err(|e| err(&e))?),
        (TypeChar::Bool, 1) => Tensor::from_slice(&npy.into_vec::<bool>().map_err(|e| err(&e))?),
        (tc, size) => return Err(err(&format!("unsupported element type {tc:?} of {size} byte(s)"))),
    };
    t.f_reshape(shape.as_slice()).map_err(|e| err(&e))
}

/// The shape and dtype of a tensor read from a file, as an [`InputArg`].
pub fn describe(t: &Tensor) -> InputArg {
    InputArg { shape: t.size(), kind: t.kind() }
}

/// `1x128:int64`, the form `--input` takes.
pub fn format_input(arg: &InputArg) -> String {
    let dims: Vec<String> = arg.shape.iter().map(i64::to_string).collect();
    format!("{}:{}", dims.join("x"), dtype_name(arg.kind))
}
