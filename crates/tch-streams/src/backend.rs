//! Which libtorch backend a device belongs to, and the mapping to c10's device-type codes.

use serde::Serialize;
use std::fmt;

/// A libtorch backend this crate can drive through c10's device-generic guard interface.
///
/// ```
/// use tch_streams::Backend;
/// assert_eq!(Backend::of(tch::Device::Cuda(1)), (Backend::Cuda, 1));
/// assert_eq!(Backend::Mps.to_string(), "mps");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Host CPU: one stream, every stream operation a no-op.
    Cpu,
    /// NVIDIA CUDA (registered when libtorch_cuda is loaded).
    Cuda,
    /// Apple Metal Performance Shaders.
    Mps,
}

impl Backend {
    /// All backends, in the order reports list them.
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Cuda, Backend::Mps];

    /// The `c10::DeviceType` value of this backend.
    pub fn c10_device_type(self) -> i8 {
        match self {
            Backend::Cpu => 0,
            Backend::Cuda => 1,
            Backend::Mps => 13,
        }
    }

    /// Backend and device index of a `tch::Device` (CPU and MPS have index 0).
    ///
    /// `tch::Device::Vulkan` is not a stream backend and maps to CPU's single stream.
    pub fn of(device: tch::Device) -> (Backend, usize) {
        match device {
            tch::Device::Cuda(i) => (Backend::Cuda, i),
            tch::Device::Mps => (Backend::Mps, 0),
            tch::Device::Cpu | tch::Device::Vulkan => (Backend::Cpu, 0),
        }
    }

    /// The `tch::Device` of this backend with the given index.
    pub fn device(self, index: usize) -> tch::Device {
        match self {
            Backend::Cpu => tch::Device::Cpu,
            Backend::Cuda => tch::Device::Cuda(index),
            Backend::Mps => tch::Device::Mps,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Mps => "mps",
        })
    }
}
