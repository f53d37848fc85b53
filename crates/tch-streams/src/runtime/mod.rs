//! Which libtorch is loaded, what it can do, and the startup `verify()` policy.
//!
//! The build script records what it linked ([`BuildRecord`]); at run time
//! [`LoadedLibtorch::detect`] asks the dynamic loader which files the process really mapped and
//! hashes them; [`probe_pool`] asks each backend for pool streams *by behaviour*; [`verify`]
//! compares and enforces a [`Policy`]. Call `verify` once at the start of a program:
//!
//! ```
//! use tch_streams::runtime::{verify, Policy};
//! let report = verify(&Policy::default())?;
//! println!("{}", report.loaded.cpu);
//! # Ok::<(), tch_streams::Error>(())
//! ```

mod backends;
mod build_record;
mod library_names;
mod capability;
pub mod fingerprint;
mod loaded;
mod mps_patch;
mod probe;
mod report_text;
mod verify;

pub use backends::{load_backends, CudaLoad, LOAD_CUDA_ENV};
pub use build_record::{BuildRecord, BuiltLib};
pub use library_names::is_torch_library;
pub use capability::Capability;
pub use loaded::{LibIdentity, LoadedLibtorch};
pub use mps_patch::{expected_mps_patch_id, mps_patch_versions};
pub use probe::{probe_pool, PoolProbe};
pub use verify::{check_capability, check_identity, verify, BackendProbe, Policy, Report, ALLOW_MISMATCH_ENV};
