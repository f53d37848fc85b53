//! The built-in workloads, written with `tch::nn`, with deterministic weights so that every
//! instance (per worker, per device, per process) computes the same function.

use super::{Forward, ForwardError, Outputs};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builtin {
    /// MLP 512-1024-1024-512 (ReLU); samples of shape `[512]`; default batch 1.
    SmallMlp,
    /// MLP 2048-4096-4096-2048 (ReLU); samples of shape `[2048]`; default batch 64.
    LargeMlp,
    /// Transformer encoder layer, d_model 256, 4 heads, feed-forward 1024, post-norm, ReLU;
    /// samples of shape `[64, 256]` (sequence 64); default batch 1.
    Transformer,
}

impl Builtin {
    /// All built-ins, in the order benchmarks list them.
    pub const ALL: [Builtin; 3] = [Builtin::SmallMlp, Builtin::LargeMlp, Builtin::Transformer];

    /// CLI / JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::SmallMlp => "small-mlp",
            Builtin::LargeMlp => "large-mlp",
            Builtin::Transformer => "transformer",
        }
    }

    /// Shape of one sample (no batch dimension).
    pub fn sample_shape(self) -> Vec<i64> {
        match self {
            Builtin::SmallMlp => vec![512],
            Builtin::LargeMlp => vec![2048],
            Builtin::Transformer => vec![64, 256],
        }
    }

    /// The batch size of one request in the reference workloads.
    pub fn default_batch(self) -> i64 {
        match self {
            Builtin::LargeMlp => 64,
            _ => 1,
        }
    }

    /// Builds an instance on `device`. The weights are made on the host and copied over: no
    /// random numbers are drawn on the device (its generator may be in use by a CUDA graph
    /// capture on another thread, which would make a draw fail).
    pub fn build(self, device: Device) -> Arc<dyn Forward> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let model: Arc<dyn Forward> = match self {
            Builtin::SmallMlp => Arc::new(Mlp::new(&root, &[512, 1024, 1024, 512])),
            Builtin::LargeMlp => Arc::new(Mlp::new(&root, &[2048, 4096, 4096, 2048])),
            Builtin::Transformer => Arc::new(TransformerLayer::new(&root, 256, 4, 1024)),
        };
        deterministic_init(&vs);
        if device != Device::Cpu {
            vs.set_device(device); // moves every variable; the modules share them
        }
        model
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Builtin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Builtin::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown built-in model '{s}'; expected small-mlp, large-mlp or transformer"))
    }
}

/// Overwrites every variable with a fixed pattern scaled like a fan-in init: no RNG, so no
/// global state is touched and all instances are equal.
fn deterministic_init(vs: &nn::VarStore) {
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (name, mut var)) in vars.into_iter().enumerate() {
            let n = var.numel() as i64;
            let fan_in = if var.dim() >= 2 { var.size()[1] } else { n.max(1) } as f64;
            let pattern = Tensor::arange(n, (Kind::Float, var.device())).view(var.size().as_slice());
            let values = if name.ends_with("weight") && var.dim() == 1 {
                pattern.zeros_like() + 1.0 // layer-norm gains
            } else {
                (pattern * 0.7311 + (i as f64) * 0.37).sin() / fan_in.sqrt()
            };
            var.copy_(&values);
        }
    });
}

/// A multi-layer perceptron with ReLU between layers.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    /// Layers of the given widths (`dims[0]` in, `dims.last()` out).
    pub fn new(root: &nn::Path, dims: &[i64]) -> Mlp {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(root / format!("fc{i}"), w[0], w[1], Default::default()))
            .collect();
        Mlp { layers }
    }
}

// SAFETY: `forward` only reads the parameter tensors (never modifies them in place), and
// concurrent reads of an at::Tensor are safe in libtorch (atomic refcounts, immutable metadata).
unsafe impl Sync for Mlp {}

/// The one input of a built-in, or an error naming how many came.
fn single(inputs: &[Tensor]) -> Result<&Tensor, ForwardError> {
    match inputs {
        [x] => Ok(x),
        _ => Err(ForwardError::Inputs(format!("built-in models take 1 input, got {}", inputs.len()))),
    }
}

impl Forward for Mlp {
    fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError> {
        let last = self.layers.len() - 1;
        let mut x = single(inputs)?.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = x.f_linear(&l.ws, l.bs.as_ref())?;
            if i < last {
                x = x.f_relu()?;
            }
        }
        Ok(Outputs::Tensor(x))
    }
}

/// A post-norm transformer encoder layer (self-attention + feed-forward, ReLU, no dropout).
#[derive(Debug)]
pub struct TransformerLayer {
    heads: i64,
    in_proj: nn::Linear,
    out_proj: nn::Linear,
    ff1: nn::Linear,
    ff2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
}

impl TransformerLayer {
    /// A layer of width `d_model` with `heads` attention heads and a `ff`-wide feed-forward.
    pub fn new(root: &nn::Path, d_model: i64, heads: i64, ff: i64) -> TransformerLayer {
        let lin = |name: &str, i, o| nn::linear(root / name, i, o, Default::default());
        let norm = |name: &str| nn::layer_norm(root / name, vec![d_model], Default::default());
        TransformerLayer {
            heads,
            in_proj: lin("in_proj", d_model, 3 * d_model),
            out_proj: lin("out_proj", d_model, d_model),
            ff1: lin("ff1", d_model, ff),
            ff2: lin("ff2", ff, d_model),
            norm1: norm("norm1"),
            norm2: norm("norm2"),
        }
    }

    fn try_forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let (b, s, d) = x.size3()?;
        let dh = d / self.heads;
        // [B, S, 3D] -> [3, B, H, S, dh]
        let qkv = self.in_proj.forward(x).f_view([b, s, 3, self.heads, dh])?.f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let att = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)?;
        let att = self.out_proj.forward(&att.f_transpose(1, 2)?.f_reshape([b, s, d])?);
        let x = self.norm1.forward(&(x + att));
        let ff = self.ff2.forward(&self.ff1.forward(&x).f_relu()?);
        Ok(self.norm2.forward(&(x + ff)))
    }
}

// SAFETY: as for Mlp: parameters are only read.
unsafe impl Sync for TransformerLayer {}

impl Forward for TransformerLayer {
    fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError> {
        let input = single(inputs)?;
        if input.dim() != 3 {
            return Err(ForwardError::Inputs(format!("transformer expects [batch, seq, 256], got {:?}", input.size())));
        }
        Ok(Outputs::Tensor(self.try_forward(input)?))
    }
}
