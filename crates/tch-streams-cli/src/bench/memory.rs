//! [`DeviceMemory`]: what the caching device allocator held for one engine (a bench point, or
//! `run`): after its build, and at its peak since just before the build. CUDA only; on other
//! devices there is nothing to read and the figures are absent.

use serde::{Deserialize, Serialize};
use tch::Device;
use tch_streams::stream::{empty_cache, memory_stats, reset_peak_memory};

/// Device memory of one engine, bytes, summed over its CUDA devices.
///
/// `after_build_bytes` is what the allocator had reserved from the driver right after the
/// engine was built (its model instances, warm-up, calibration and graphs, plus whatever else
/// lived on the device then: the benchmark's shared model instance and device-resident inputs);
/// `peak_bytes` the most it reserved from just before the build to the end of the measurement.
/// The `_allocated_` figures are the same moments for live tensors only.
///
/// ```
/// let m: tch_streams_cli::bench::DeviceMemory = serde_json::from_str(r#"{"after_build_bytes": 10,
///   "after_build_allocated_bytes": 8, "peak_bytes": 30, "peak_allocated_bytes": 20}"#)?;
/// assert_eq!((m.after_build_bytes, m.peak_bytes), (10, 30));
/// assert_eq!(format!("{:.2}", m.peak_gb()), "0.00");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Reserved right after the build.
    pub after_build_bytes: i64,
    /// Allocated (live tensors) right after the build.
    pub after_build_allocated_bytes: i64,
    /// Highest reserved since just before the build.
    pub peak_bytes: i64,
    /// Highest allocated since just before the build.
    pub peak_allocated_bytes: i64,
    /// Highest reserved after the build: what serving itself needed (the build's calibration
    /// and trial can need more for a moment; `peak_bytes` counts them).
    #[serde(default)]
    pub serving_peak_bytes: i64,
}

impl DeviceMemory {
    /// `after_build_bytes` in GB (10^9 bytes).
    pub fn after_build_gb(&self) -> f64 {
        self.after_build_bytes as f64 / 1e9
    }

    /// `peak_bytes` in GB (10^9 bytes).
    pub fn peak_gb(&self) -> f64 {
        self.peak_bytes as f64 / 1e9
    }
}

/// The CUDA devices among `devices`, each once: those with a caching allocator to read.
pub fn measured_devices(devices: &[Device]) -> Vec<Device> {
    let mut out: Vec<Device> = Vec::new();
    for &d in devices {
        if matches!(d, Device::Cuda(_)) && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Watches the device memory of an engine about to be built on `devices`.
///
/// [`MemoryWatch::start`] returns the cached free blocks of each CUDA device to the driver (so
/// that what earlier work left cached does not count) and starts its peak figures afresh;
/// [`after_build`](MemoryWatch::after_build) and [`finish`](MemoryWatch::finish) read them. With
/// no CUDA device, or when the allocator cannot be read, every reading is `None`.
#[derive(Debug)]
pub struct MemoryWatch {
    devices: Vec<Device>,
    after_build: Option<Reading>,
}

/// One reading of the watched devices, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    allocated: i64,
    reserved: i64,
    peak_allocated: i64,
    peak_reserved: i64,
}

impl MemoryWatch {
    /// Call just before the build. Resets the devices' peak figures, which are process-wide.
    pub fn start(devices: &[Device]) -> MemoryWatch {
        let devices = measured_devices(devices);
        let mut ok = !devices.is_empty();
        for &d in &devices {
            if let Err(e) = empty_cache(d).and_then(|()| reset_peak_memory(d)) {
                tracing::warn!("device memory of {d:?} is not reported: {e}");
                ok = false;
            }
        }
        MemoryWatch { devices: if ok { devices } else { Vec::new() }, after_build: None }
    }

    /// Call right after the build: notes what the devices hold now and the peak so far, then
    /// starts the peak figures afresh for the serving peak.
    pub fn after_build(&mut self) {
        self.after_build = self.read();
        for &d in &self.devices {
            let _ = reset_peak_memory(d);
        }
    }

    /// Call after the measurement: the figures, or `None` on CPU (or when a reading failed).
    pub fn finish(&self) -> Option<DeviceMemory> {
        let (built, end) = (self.after_build?, self.read()?);
        Some(DeviceMemory {
            after_build_bytes: built.reserved,
            after_build_allocated_bytes: built.allocated,
            peak_bytes: end.peak_reserved.max(built.peak_reserved),
            peak_allocated_bytes: end.peak_allocated.max(built.peak_allocated),
            serving_peak_bytes: end.peak_reserved,
        })
    }

    /// The devices' statistics, summed; `None` without devices or when one cannot be read.
    fn read(&self) -> Option<Reading> {
        if self.devices.is_empty() {
            return None;
        }
        let mut sum = Reading::default();
        for &d in &self.devices {
            let s = memory_stats(d).map_err(|e| tracing::warn!("device memory of {d:?}: {e}")).ok()?;
            sum.allocated += s.allocated;
            sum.reserved += s.reserved;
            sum.peak_allocated += s.peak_allocated;
            sum.peak_reserved += s.peak_reserved;
        }
        Some(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_has_nothing_to_watch() {
        assert!(measured_devices(&[Device::Cpu, Device::Cpu]).is_empty());
        assert_eq!(measured_devices(&[Device::Cuda(1), Device::Cpu, Device::Cuda(1), Device::Cuda(0)]), vec![Device::Cuda(1), Device::Cuda(0)]);
        let mut w = MemoryWatch::start(&[Device::Cpu]);
        w.after_build();
        assert_eq!(w.finish(), None);
    }
}
