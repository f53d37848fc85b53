//! Models the engine can serve: a TorchScript file, the built-in workloads, or any closure.
//!
//! A [`Model`] is a *recipe*; [`Model::instantiate`] makes a [`Forward`] on a device. The engine
//! instantiates one per device (shared by that device's workers) or one per worker.

mod builtin;
mod torchscript;

pub use builtin::{Builtin, Mlp, TransformerLayer};

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A model instance the engine may call from several threads at once.
///
/// Implementations must only *read* their parameters in `forward` (no in-place updates), so
/// concurrent calls from workers on different streams are safe. Errors carry libtorch's message.
pub trait Forward: Send + Sync {
    /// Runs the model on a batch (dim 0 is the batch dimension).
    fn forward(&self, input: &Tensor) -> Result<Tensor, String>;
}

type ClosureFn = dyn Fn(&Tensor) -> Result<Tensor, String> + Send + Sync;

/// What the engine serves.
///
/// ```
/// use tch_streams::models::{Builtin, Model};
/// let m = Model::closure(|x: &tch::Tensor| x.f_mul_scalar(2.0));
/// let f = m.instantiate(tch::Device::Cpu)?;
/// let y = f.forward(&tch::Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu))).unwrap();
/// assert_eq!(y.sum(tch::Kind::Float).double_value(&[]), 12.0);
/// assert_eq!(Model::Builtin(Builtin::SmallMlp).input_shape(), Some(vec![512]));
/// # Ok::<(), tch_streams::Error>(())
/// ```
#[derive(Clone)]
pub enum Model {
    /// A TorchScript file (`torch.jit.save`). On MPS it is loaded on CPU and then moved, since
    /// libtorch cannot deserialise straight onto MPS.
    TorchScript(PathBuf),
    /// One of the built-in workloads, with deterministic weights (equal on every instantiation).
    Builtin(Builtin),
    /// Any function of a batch.
    Closure(Arc<ClosureFn>),
}

impl Model {
    /// Wraps a closure; its error type only needs `Display` (e.g. `tch::TchError` from `f_` ops).
    pub fn closure<F, E>(f: F) -> Model
    where
        F: Fn(&Tensor) -> Result<Tensor, E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        Model::Closure(Arc::new(move |x: &Tensor| f(x).map_err(|e| e.to_string())))
    }

    /// Makes an instance on `device`. Closures are device-agnostic and returned as they are.
    pub fn instantiate(&self, device: Device) -> crate::Result<Arc<dyn Forward>> {
        match self {
            Model::TorchScript(path) => Ok(Arc::new(torchscript::Script::load(path, device)?)),
            Model::Builtin(b) => Ok(b.build(device)),
            Model::Closure(f) => Ok(Arc::new(ClosureModel(Arc::clone(f)))),
        }
    }

    /// Per-sample input shape (without the batch dimension), when the model declares one.
    pub fn input_shape(&self) -> Option<Vec<i64>> {
        match self {
            Model::Builtin(b) => Some(b.sample_shape()),
            _ => None,
        }
    }

    /// Input dtype, when the model declares one.
    pub fn input_kind(&self) -> Option<Kind> {
        match self {
            Model::Builtin(_) => Some(Kind::Float),
            _ => None,
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::TorchScript(p) => write!(f, "TorchScript({})", p.display()),
            Model::Builtin(b) => write!(f, "Builtin({b})"),
            Model::Closure(_) => f.write_str("Closure"),
        }
    }
}

struct ClosureModel(Arc<ClosureFn>);

impl Forward for ClosureModel {
    fn forward(&self, input: &Tensor) -> Result<Tensor, String> {
        (self.0)(input)
    }
}
