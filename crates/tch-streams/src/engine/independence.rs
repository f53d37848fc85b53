//! The batch-independence check: dynamic batching concatenates requests along dim 0 and splits
//! the outputs back, which is only right for a model that treats samples independently. Before
//! serving with batching, the engine runs two different samples alone and then together; a
//! model whose answer for one sample changes when the other is present (batch statistics,
//! attention across the batch, a reduction over dim 0) is refused with a message that says so.
//!
//! Runs once, in `build()`, on the calling thread, with grad off. It needs every input's shape.
//! Answers with NaN or infinities, or a model that fails on the synthetic samples, leave the
//! check undecided: a warning, and batching goes ahead (warm-up then reports real failures).

use super::error::EngineError;
use crate::models::{Forward, Outputs};
use tch::{Device, Kind, Tensor};

/// Relative difference (to the answer's scale) above which a sample's answer is taken to depend
/// on the other sample. Loose on purpose: batched kernels legitimately differ by rounding (TF32
/// and float16 included); a mixing model differs by the size of the answer itself.
const TOLERANCE: f64 = 5e-2;

/// Sample `which` (0 or 1) of an input: deterministic, different between the two samples, and
/// valid for embedding lookups (integer values 0 and 1 only) and masks.
fn sample(shape: &[i64], kind: Kind, which: i64, device: Device) -> Result<Tensor, tch::TchError> {
    let n: i64 = shape.iter().product();
    let mut dims = vec![1];
    dims.extend_from_slice(shape);
    let idx = Tensor::f_arange(n, (Kind::Int64, Device::Cpu))?;
    let t = match kind {
        Kind::Bool => idx.f_add_scalar(which)?.f_remainder(2)?.f_eq(0)?,
        Kind::Int | Kind::Int64 | Kind::Int16 | Kind::Int8 | Kind::Uint8 => idx.f_add_scalar(which)?.f_remainder(2)?.f_to_kind(kind)?,
        _ => idx.f_to_kind(Kind::Float)?.f_mul_scalar(0.37)?.f_add_scalar(1.3 * (which + 1) as f64)?.f_sin()?.f_to_kind(kind)?,
    };
    t.f_reshape(dims.as_slice())?.f_to_device(device)
}

fn outcome(model: &dyn Forward, xs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let out: Outputs = model.run(xs).map_err(|e| e.to_string())?;
    out.tensors().into_iter().map(|t| t.f_to_device(Device::Cpu).map_err(|e| e.to_string())).collect()
}

/// Checks `model` on `device` with inputs of these per-sample shapes and dtypes.
pub(crate) fn check(model: &dyn Forward, device: Device, specs: &[(Vec<i64>, Kind)]) -> Result<(), EngineError> {
    let _no_grad = tch::no_grad_guard();
    let make = |which| specs.iter().map(|(s, k)| sample(s, *k, which, device)).collect::<Result<Vec<_>, _>>();
    let (a, b) = match (make(0), make(1)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("batch-independence check skipped: cannot make sample inputs ({e})");
            return Ok(());
        }
    };
    let both: Result<Vec<Tensor>, _> = a.iter().zip(&b).map(|(x, y)| Tensor::f_cat(&[x, y], 0)).collect();
    let runs = (|| Ok::<_, String>((outcome(model, &a)?, outcome(model, &b)?, outcome(model, &both.map_err(|e| e.to_string())?)?)))();
    let (alone_a, alone_b, together) = match runs {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("batch-independence check skipped: the model failed on sample inputs ({e})");
            return Ok(());
        }
    };
    for (i, t) in together.iter().enumerate() {
        if t.dim() == 0 || t.size()[0] != 2 {
            continue; // not batch-shaped: every request will fail with an `Output` error saying so
        }
        for (row, alone) in [(0i64, &alone_a[i]), (1, &alone_b[i])] {
            let Ok(part) = t.f_narrow(0, row, 1) else { continue };
            if part.size() != alone.size() {
                continue;
            }
            let (Ok(part), Ok(alone)) = (part.f_to_kind(Kind::Double), alone.f_to_kind(Kind::Double)) else { continue };
            let scale = alone.abs().max().double_value(&[]).max(part.abs().max().double_value(&[]));
            let diff = (&part - &alone).abs().max().double_value(&[]);
            if !scale.is_finite() || !diff.is_finite() {
                tracing::warn!("batch-independence check skipped: non-finite outputs on sample inputs");
                return Ok(());
            }
            if diff > TOLERANCE * scale.max(1e-6) {
                return Err(EngineError::Build(format!(
                    "the model mixes samples across the batch: output {i} for sample {row} changes by {diff:.3e} \
                     (outputs up to {scale:.3e}) when another sample is in the same batch. Dynamic batching assumes \
                     samples are independent; serve this model with Batching::Off (CLI: no --batch-max)"
                )));
            }
        }
    }
    Ok(())
}
