//! TorchScript models (`torch.jit.save` files), served through `tch::CModule`.

use super::{Forward, ForwardError, Outputs};
use std::sync::Arc;
use crate::error::{Error, Result};
use std::path::Path;
use tch::{CModule, Device, IValue, Tensor};

/// A loaded TorchScript module in eval mode on one device.
pub(crate) struct Script {
    module: CModule,
}

impl Script {
    /// Loads `path` onto `device`. MPS cannot be deserialised onto directly: load on CPU, move.
    pub(crate) fn load(path: &Path, device: Device) -> Result<Script> {
        let io = |e: tch::TchError| Error::ModelLoad { path: path.display().to_string(), message: super::torch_message(&e) };
        let mut module = if device == Device::Mps {
            let mut m = CModule::load_on_device(path, Device::Cpu).map_err(io)?;
            m.to(Device::Mps, tch::Kind::Float, false);
            m
        } else {
            CModule::load_on_device(path, device).map_err(io)?
        };
        module.set_eval();
        Ok(Script { module })
    }
}

impl Forward for Script {
    fn run(&self, inputs: &[Tensor]) -> std::result::Result<Outputs, ForwardError> {
        run_module(&self.module, inputs)
    }
}

/// A module the app loaded, shared as it is.
pub(crate) struct Shared(pub(crate) Arc<CModule>);

impl Forward for Shared {
    fn run(&self, inputs: &[Tensor]) -> std::result::Result<Outputs, ForwardError> {
        run_module(&self.0, inputs)
    }
}

/// `forward(*inputs)`, whatever structure it returns.
fn run_module(module: &CModule, inputs: &[Tensor]) -> std::result::Result<Outputs, ForwardError> {
    let args: Vec<IValue> = inputs.iter().map(|t| IValue::Tensor(t.shallow_clone())).collect();
    Outputs::from_ivalue(module.forward_is(&args)?)
}
