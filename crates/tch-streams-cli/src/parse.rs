//! Parsing of the CLI's device lists and shapes. Never panics; errors say what was expected.

use tch::Device;

/// Parses `auto`, `cpu`, `mps`, `cuda`, `cuda:N`, or a comma-separated list of those.
/// `auto` picks `cuda:0` when a GPU is visible, else `mps` when available, else `cpu`.
///
/// ```
/// use tch_streams_cli::parse::parse_devices;
/// assert_eq!(parse_devices("cuda:0,cuda:1").unwrap(), vec![tch::Device::Cuda(0), tch::Device::Cuda(1)]);
/// assert_eq!(parse_devices("cpu").unwrap(), vec![tch::Device::Cpu]);
/// assert!(parse_devices("gpu").unwrap_err().contains("expected"));
/// ```
pub fn parse_devices(s: &str) -> Result<Vec<Device>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty device list; expected auto, cpu, mps, cuda or cuda:N[,cuda:M...]".into());
    }
    s.split(',').map(|d| parse_device(d.trim())).collect()
}

fn parse_device(d: &str) -> Result<Device, String> {
    match d {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else if tch::utils::has_mps() {
            Device::Mps
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "mps" => Ok(Device::Mps),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match d.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<u8>()
                .map(|i| Device::Cuda(i as usize))
                .map_err(|_| format!("bad CUDA index in '{d}'; expected cuda:N with N in 0..=255")),
            None => Err(format!("unknown device '{d}'; expected auto, cpu, mps, cuda or cuda:N")),
        },
    }
}

/// Parses a shape like `1x512` or `4x64x256` (dims ≥ 1, at most 8 of them).
///
/// ```
/// use tch_streams_cli::parse::parse_shape;
/// assert_eq!(parse_shape("1x64x256").unwrap(), vec![1, 64, 256]);
/// assert!(parse_shape("1x0").is_err());
/// ```
pub fn parse_shape(s: &str) -> Result<Vec<i64>, String> {
    let dims: Vec<&str> = s.trim().split(['x', 'X', ',']).collect();
    if dims.is_empty() || dims.len() > 8 || dims.iter().any(|d| d.is_empty()) {
        return Err(format!("bad shape '{s}'; expected dims separated by 'x', e.g. 1x512 (1 to 8 dims)"));
    }
    dims.iter()
        .map(|d| match d.trim().parse::<i64>() {
            Ok(n) if (1..=1 << 24).contains(&n) => Ok(n),
            _ => Err(format!("bad dimension '{d}' in shape '{s}'; each dim must be an integer in 1..=16777216")),
        })
        .collect()
}
