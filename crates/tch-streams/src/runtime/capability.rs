//! Capabilities a program can require at startup.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Something a program may require of the loaded libtorch (`--require` in the CLI).
///
/// ```
/// use tch_streams::runtime::Capability;
/// assert_eq!("cuda-pool".parse::<Capability>().unwrap(), Capability::CudaPool);
/// assert!("gpu".parse::<Capability>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// A working CUDA stream pool (a GPU and libtorch_cuda).
    CudaPool,
    /// A working MPS stream pool (only a libtorch carrying our MPS patch has one).
    MpsPool,
    /// The loaded libtorch carries exactly the MPS patch id this binary was built against.
    Patched,
}

impl Capability {
    /// Every capability, with its CLI name.
    pub const ALL: [Capability; 3] = [Capability::CudaPool, Capability::MpsPool, Capability::Patched];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Capability::CudaPool => "cuda-pool",
            Capability::MpsPool => "mps-pool",
            Capability::Patched => "patched",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!("unknown capability '{s}'; expected one of: cuda-pool, mps-pool, patched")
        })
    }
}
