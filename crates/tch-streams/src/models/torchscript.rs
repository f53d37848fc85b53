//! TorchScript models (`torch.jit.save` files), served through `tch::CModule`.

use super::Forward;
use crate::error::{Error, Result};
use std::path::Path;
use tch::{CModule, Device, Tensor};

/// A loaded TorchScript module in eval mode on one device.
pub(crate) struct Script {
    module: CModule,
}

impl Script {
    /// Loads `path` onto `device`. MPS cannot be deserialised onto directly: load on CPU, move.
    pub(crate) fn load(path: &Path, device: Device) -> Result<Script> {
        let io = |e: tch::TchError| Error::Io { path: path.display().to_string(), message: e.to_string() };
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
    fn forward(&self, input: &Tensor) -> std::result::Result<Tensor, String> {
        self.module.forward_ts(&[input]).map_err(|e| e.to_string())
    }
}
