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
    t.map_err(|e| format!("cannot make an input of shape {:?} ({}): {}", arg.shape, dtype_name(arg.kind), one_line(&e)))
}

/// A sample-input maker for the engine (see `EngineBuilder::sample_inputs`): `rows` samples of
/// every input in `specs` (their shapes past the batch), made as [`generate`] makes requests.
pub fn sample_maker(specs: Vec<InputArg>, ints: IntRange) -> impl Fn(usize, Device) -> Result<Vec<Tensor>, String> + Send + Sync + 'static {
    move |rows, device| {
        specs
            .iter()
            .map(|s| {
                let mut shape = vec![rows as i64];
                shape.extend_from_slice(&s.shape[1..]);
                generate(&InputArg { shape, kind: s.kind }, ints, device)
            })
            .collect()
    }
}

/// A sample-input maker for the engine from real data: `rows` samples taken from `data`'s rows
/// in turn (repeated when `rows` is larger). Errors if an input has no rows.
pub fn sample_rows(data: &[Tensor]) -> Result<impl Fn(usize, Device) -> Result<Vec<Tensor>, String> + Send + Sync + 'static, String> {
    let host = data
        .iter()
        .map(|t| t.f_to_device(Device::Cpu).map_err(|e| one_line(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((i, _)) = host.iter().enumerate().find(|(_, t)| t.size().first().is_none_or(|&n| n < 1)) {
        return Err(format!("input {i} has no samples: give at least one row"));
    }
    let host = std::sync::Mutex::new(host);
    Ok(move |rows: usize, device: Device| -> Result<Vec<Tensor>, String> {
        let host = host.lock().map_err(|_| "the sample data's lock is poisoned".to_string())?;
        host.iter()
            .map(|t| {
                let n = t.size()[0];
                let idx = Tensor::f_arange(rows as i64, (tch::Kind::Int64, Device::Cpu))?.f_remainder(n)?;
                t.f_index_select(0, &idx)?.f_to_device(device)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| one_line(&e))
    })
}

/// The message of a libtorch error without the C++ backtrace libtorch appends to it: its first
/// non-empty line.
///
/// ```
/// use tch_streams_cli::inputs::one_line;
/// assert_eq!(one_line(&"bad value\nException raised from f at x.cpp:1\nframe #0: g"), "bad value");
/// ```
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message").to_string()
}

/// Longest `.npy` header read, in bytes (numpy's own reader refuses longer ones by default).
const MAX_NPY_HEADER: usize = 10_000;

/// Deepest bracket nesting read in a `.npy` header. A plain array's header nests 2 deep (the
/// dict, the shape tuple); a structured dtype (refused later, by name) a little deeper. The
/// parser's time grows exponentially with nesting (12 levels of `{`: 2 s, 16 levels: 110 s).
const MAX_NPY_NESTING: usize = 4;

/// Checks the form of a `.npy` file's header before the parser sees it: the magic string, a
/// known version, a header length within [`MAX_NPY_HEADER`] and within the file, text, a dict
/// literal, brackets balanced and at most [`MAX_NPY_NESTING`] deep (outside quoted strings).
fn check_npy_header(bytes: &[u8]) -> Result<(), String> {
    let damaged = "the file is damaged or not a .npy array numpy wrote";
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Err("not a .npy file (it does not start with \\x93NUMPY); write arrays with numpy.save".into());
    }
    let (len, start) = match (bytes[6], bytes[7]) {
        (1, 0) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        (2 | 3, 0) if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        (2 | 3, 0) => return Err(format!("the file ends inside its header: {damaged}")),
        (major, minor) => return Err(format!("unsupported .npy format version {major}.{minor}: expected 1.0, 2.0 or 3.0")),
    };
    if len > MAX_NPY_HEADER {
        return Err(format!("it announces a header of {len} bytes; at most {MAX_NPY_HEADER} are read (as numpy does): {damaged}"));
    }
    let header = bytes.get(start..start + len).ok_or_else(|| format!("the file ends inside its {len}-byte header: {damaged}"))?;
    let text = std::str::from_utf8(header).map_err(|_| format!("its header is not text: {damaged}"))?.trim();
    if !(text.starts_with('{') && text.ends_with('}')) {
        return Err(format!("its header is not a dict ({{'descr': ..., 'fortran_order': ..., 'shape': (...)}}): {damaged}"));
    }
    let (mut depth, mut quote, mut escaped) = (0usize, None, false);
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '{' | '[' | '(' => {
                    depth += 1;
                    if depth > MAX_NPY_NESTING {
                        return Err(format!("its header nests brackets deeper than {MAX_NPY_NESTING} (a plain array's nests 2): {damaged}"));
                    }
                }
                '}' | ']' | ')' => depth = depth.checked_sub(1).ok_or_else(|| format!("its header has unbalanced brackets: {damaged}"))?,
                _ => {}
            },
        }
    }
    if depth != 0 || quote.is_some() {
        return Err(format!("its header has unbalanced brackets or quotes: {damaged}"));
    }
    Ok(())
}

/// Reads a `.npy` file into a host tensor: float32/64, float16, int64/32/16/8, uint8, bool; any
/// rank ≥ 1 (dim 0 = samples); C order. The header's form is checked before it is parsed.
pub fn read_npy(path: &Path) -> Result<Tensor, String> {
    use npyz::{DType, TypeChar};
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| err(&e))?;
    check_npy_header(&bytes).map_err(|e| err(&e))?;
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

#[cfg(test)]
mod tests {
    use super::read_npy;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A version 1.0 `.npy` file: magic, version, header length, the header padded with spaces
    /// and a newline to a multiple of 64 bytes (as numpy writes it), then `data`.
    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut text = header.to_string();
        while (10 + text.len() + 1) % 64 != 0 {
            text.push(' ');
        }
        text.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Reads `bytes` as a `.npy` file on another thread; fails the test if that takes longer than
    /// `secs` (a hang). The shape of the tensor read, or the error.
    fn read_within(secs: u64, bytes: Vec<u8>) -> Result<Vec<i64>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, bytes).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_npy(&path).map(|t| t.size()));
        });
        let out = rx.recv_timeout(Duration::from_secs(secs));
        drop(dir);
        out.unwrap_or_else(|_| panic!("watchdog: reading the file took longer than {secs} s (a hang)"))
    }

    /// Issue #24, item 6: nested brackets in a header used to take the parser exponential time
    /// (measured: 12 levels of `{` 2.3 s, 14 levels 17 s, 16 levels 110 s). The header's form is
    /// checked first.
    #[test]
    fn a_header_of_nested_brackets_is_refused_at_once() {
        let deep = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': {} }}", "{".repeat(30));
        let bytes = npy(&deep, &[0; 4]);
        assert_eq!(bytes.len(), 128 + 4, "a 128-byte header");
        let err = read_within(20, bytes).unwrap_err();
        assert!(err.contains("nests brackets deeper than 4") && err.contains("not a .npy array numpy wrote"), "{err}");
        let unbalanced = npy("{'descr': '<f4', 'fortran_order': False, 'shape': ((1,), }", &[0; 4]);
        let err = read_within(20, unbalanced).unwrap_err();
        assert!(err.contains("unbalanced brackets"), "{err}");
        // A version 2.0 header that announces 4 GiB is refused before anything is allocated.
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_within(20, huge).unwrap_err();
        assert!(err.contains("header of 4294967295 bytes") && err.contains("at most 10000"), "{err}");
    }

    /// Headers of the form numpy writes still read, brackets inside the dtype string included.
    #[test]
    fn plain_headers_still_read() {
        let floats: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let plain = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &floats);
        assert_eq!(read_within(20, plain), Ok(vec![2, 3]));
        let vector = npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", &7i64.to_le_bytes());
        assert_eq!(read_within(20, vector), Ok(vec![1]));
        let err = read_within(20, b"not numpy".to_vec()).unwrap_err();
        assert!(err.contains("not a .npy file"), "{err}");
    }
}
