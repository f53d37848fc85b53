//! Parsing of the CLI's device lists and shapes. Never panics; errors say what was expected.

use tch::Device;
use tch_streams::engine::MemoryBudget;

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

/// Parses a device memory budget: a size with a unit (`512MiB`, `8GiB`, `8G`, `1.5GB`; `K`/`M`/`G`
/// and `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` of 1000; plain digits are bytes) or a
/// share of the free memory (`50%`, 1 to 100).
///
/// ```
/// use tch_streams::engine::MemoryBudget;
/// use tch_streams_cli::parse::parse_memory;
/// assert_eq!(parse_memory("8GiB").unwrap(), MemoryBudget::Bytes(8 << 30));
/// assert_eq!(parse_memory("1.5G").unwrap(), MemoryBudget::Bytes(3 << 29));
/// assert_eq!(parse_memory("2GB").unwrap(), MemoryBudget::Bytes(2_000_000_000));
/// assert_eq!(parse_memory("50%").unwrap(), MemoryBudget::FractionOfFree(0.5));
/// assert!(parse_memory("0").unwrap_err().contains("at least"));
/// assert!(parse_memory("150%").unwrap_err().contains("1 to 100"));
/// assert!(parse_memory("8 parsecs").unwrap_err().contains("expected"));
/// ```
pub fn parse_memory(s: &str) -> Result<MemoryBudget, String> {
    let t = s.trim();
    let expected = || format!("bad memory size '{s}'; expected a size like 512MiB, 8GiB, 8G or 2GB, or a share of the free memory like 50%");
    if let Some(pct) = t.strip_suffix('%') {
        return match pct.trim().parse::<f64>() {
            Ok(p) if (1.0..=100.0).contains(&p) => Ok(MemoryBudget::FractionOfFree(p / 100.0)),
            Ok(_) => Err(format!("--gpu-memory {s}: a share must be 1 to 100 %")),
            Err(_) => Err(expected()),
        };
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(expected()),
    };
    let bytes = number * scale;
    if !(bytes >= 1.0) || bytes > 1e15 {
        return Err(format!("--gpu-memory {s}: give at least one byte and at most 1 PB"));
    }
    Ok(MemoryBudget::Bytes(bytes.round() as u64))
}
