//! Models the engine can serve: a TorchScript file, the built-in workloads, or any closure.
//!
//! A [`Model`] is a *recipe*; [`Model::instantiate`] makes a [`Forward`] on a device. The engine
//! instantiates one per device (shared by that device's workers) or one per worker.

mod builtin;
mod error;
mod outputs;
mod torchscript;

pub use builtin::{Builtin, Mlp, TransformerLayer};
pub use error::{torch_message, ForwardError};
pub use outputs::{Inputs, Outputs};

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{CModule, Device, Kind, Tensor};

/// A model instance the engine may call from several threads at once.
///
/// Implementations must only *read* their parameters in `run` (no in-place updates), so
/// concurrent calls from workers on different streams are safe. The engine batches requests
/// by concatenating each input along dim 0 and splitting every output along dim 0: that
/// assumes the model treats samples independently (no batch statistics, no cross-sample
/// attention). A model that mixes samples must be served with `Batching::Off`.
///
/// ```
/// use tch_streams::models::{Forward, ForwardError, Outputs};
/// use tch::Tensor;
/// struct AddMul;
/// impl Forward for AddMul {
///     fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError> {
///         let [a, b] = inputs else { return Err(ForwardError::Inputs(format!("expected 2 inputs, got {}", inputs.len()))) };
///         Ok(Outputs::Tuple(vec![a.f_add(b)?, a.f_mul(b)?]))
///     }
/// }
/// let x = Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu));
/// let out = AddMul.run(&[x.shallow_clone(), x.shallow_clone()])?;
/// assert_eq!(out.len(), 2);
/// // The single-tensor shorthand refuses a tuple, with a message that says so.
/// assert!(AddMul.forward(&x).is_err());
/// # Ok::<(), ForwardError>(())
/// ```
pub trait Forward: Send + Sync {
    /// Runs the model on one batch: positional inputs, each with the batch along dim 0.
    fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError>;

    /// Shorthand for one input and one output tensor.
    fn forward(&self, input: &Tensor) -> Result<Tensor, ForwardError> {
        self.run(std::slice::from_ref(input))?.into_tensor()
    }
}

type ClosureFn = dyn Fn(&[Tensor]) -> Result<Outputs, ForwardError> + Send + Sync;

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
    /// A TorchScript file (`torch.jit.save`), loaded once per device (or per worker). On MPS it
    /// is loaded on CPU and then moved, since libtorch cannot deserialise straight onto MPS.
    TorchScript(PathBuf),
    /// A TorchScript module the app already loaded ([`Model::from`] a `CModule`). It is shared
    /// by every worker as it is, so load it on the engine's device.
    Module(Arc<CModule>),
    /// A model instance the app already has ([`Model::instance`]), shared by every worker.
    Instance(Arc<dyn Forward>),
    /// One of the built-in workloads, with deterministic weights (equal on every instantiation).
    Builtin(Builtin),
    /// Any function of the inputs.
    Closure(Arc<ClosureFn>),
}

impl From<CModule> for Model {
    /// Serves a module the app loaded (`CModule::load_on_device`), as it is: every worker
    /// shares it, so it must be on the engine's device. Eval mode is the app's choice.
    fn from(module: CModule) -> Model {
        Model::Module(Arc::new(module))
    }
}

impl Model {
    /// Wraps a closure of one tensor; its error type only needs `Display` (e.g.
    /// `tch::TchError` from `f_` ops).
    pub fn closure<F, E>(f: F) -> Model
    where
        F: Fn(&Tensor) -> Result<Tensor, E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        Model::Closure(Arc::new(move |xs: &[Tensor]| match xs {
            [x] => f(x).map(Outputs::Tensor).map_err(|e| ForwardError::Other(e.to_string())),
            _ => Err(ForwardError::Inputs(format!("this model takes 1 input, got {}", xs.len()))),
        }))
    }

    /// Wraps a closure of all the request's inputs that returns any [`Outputs`] structure.
    ///
    /// ```
    /// use tch_streams::models::{Model, Outputs};
    /// let m = Model::closure_many(|xs: &[tch::Tensor]| -> Result<Outputs, tch::TchError> {
    ///     Ok(Outputs::Tuple(vec![xs[0].f_add(&xs[1])?, xs[0].f_sub(&xs[1])?]))
    /// });
    /// let x = tch::Tensor::ones([1, 2], (tch::Kind::Float, tch::Device::Cpu));
    /// let out = m.instantiate(tch::Device::Cpu)?.run(&[x.shallow_clone(), x]).unwrap();
    /// assert_eq!(out.describe(), "a tuple of 2 tensors");
    /// # Ok::<(), tch_streams::Error>(())
    /// ```
    pub fn closure_many<F, O, E>(f: F) -> Model
    where
        F: Fn(&[Tensor]) -> Result<O, E> + Send + Sync + 'static,
        O: Into<Outputs>,
        E: fmt::Display,
    {
        Model::Closure(Arc::new(move |xs: &[Tensor]| f(xs).map(Into::into).map_err(|e| ForwardError::Other(e.to_string()))))
    }

    /// Serves an instance the app already has; every worker shares it.
    pub fn instance(model: Arc<dyn Forward>) -> Model {
        Model::Instance(model)
    }

    /// Makes an instance on `device`. Closures, app-loaded modules and instances are returned as
    /// they are.
    pub fn instantiate(&self, device: Device) -> crate::Result<Arc<dyn Forward>> {
        match self {
            Model::TorchScript(path) => Ok(Arc::new(torchscript::Script::load(path, device)?)),
            Model::Module(m) => Ok(Arc::new(torchscript::Shared(Arc::clone(m)))),
            Model::Instance(m) => Ok(Arc::clone(m)),
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
            Model::Module(_) => f.write_str("Module"),
            Model::Instance(_) => f.write_str("Instance"),
            Model::Builtin(b) => write!(f, "Builtin({b})"),
            Model::Closure(_) => f.write_str("Closure"),
        }
    }
}

struct ClosureModel(Arc<ClosureFn>);

impl Forward for ClosureModel {
    fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError> {
        (self.0)(inputs)
    }
}
