//! The batch-independence check: dynamic batching concatenates requests along dim 0 and splits
//! the outputs back, which is only right for a model that treats samples independently. Before
//! serving with batching, the engine runs two different samples alone and then together, and
//! compares every output: a model whose answer for one sample changes when the other is present
//! (batch statistics, attention across the batch, a reduction over dim 0, an output whose shape
//! depends on the batch) is refused with a message that says so.
//!
//! Runs once, in `build()`, on the calling thread, with grad off. It needs every input's shape.
//!
//! What counts as a difference, output by output (every output is compared; none is skipped):
//! - a shape or dtype that is not "each sample's own answer, stacked along dim 0";
//! - a value that is finite alone and NaN or infinite together, or the other way round;
//! - a NaN or infinity alone that is not the same NaN or infinity together;
//! - finite values that differ by more than [`TOLERANCE`] of the output's scale.
//!
//! 0-d outputs (alone and together) are not compared: the engine answers every request with an
//! [`Output`](super::EngineError::Output) error for them, batched or not. An output with no
//! elements has nothing to compare once its shapes agree.
//!
//! When the check cannot decide (the sample inputs cannot be made, the model fails or panics on
//! them, the outputs cannot be compared) it refuses too ([`Refusal::Undecided`]): explicit
//! batching is a build error and the defaults leave batching off, saying why.

use super::config::SampleInputs;
use super::threads::panic_message;
use crate::models::{Forward, Outputs};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::{Device, Kind, TchError, Tensor};

/// Relative difference (to the answer's scale) above which a sample's answer is taken to depend
/// on the other sample. Loose on purpose: batched kernels legitimately differ by rounding (TF32
/// and float16 included); a mixing model differs by the size of the answer itself.
const TOLERANCE: f64 = 5e-2;

/// Why the check refuses dynamic batching for a model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// A sample's answer depends on the other samples of its batch (the detail says where).
    Mixing(String),
    /// The check could not tell (the detail says what went wrong).
    Undecided(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Mixing(detail) => write!(
                f,
                "the model mixes samples across the batch: {detail}. Dynamic batching concatenates requests along dim 0 and \
                 splits every output along it, so answers would depend on (or hold) other requests' inputs; serve this model \
                 with Batching::Off (CLI: --batch-max 0)"
            ),
            Refusal::Undecided(detail) => write!(
                f,
                "the batch-independence check could not decide whether the model keeps samples apart: {detail}. Dynamic \
                 batching is only used for models that pass it; serve this model with Batching::Off (CLI: --batch-max 0), or \
                 make it run on inputs of the declared shapes (the check's samples hold floats in [-1, 1] and integers and \
                 bools 0 and 1)"
            ),
        }
    }
}

/// Sample `which` (0 or 1) of an input: deterministic, different between the two samples, and
/// valid for embedding lookups (integer values 0 and 1 only) and masks.
fn sample(shape: &[i64], kind: Kind, which: i64, device: Device) -> Result<Tensor, TchError> {
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

/// Runs the model on `xs` (a copy: an in-place model cannot change the check's samples) and
/// brings every output to the host. A failure or a panic leaves the check undecided.
fn outcome(model: &dyn Forward, xs: &[Tensor], on: &str) -> Result<(Outputs, Vec<Tensor>), Refusal> {
    let undecided = |what: &str, why: String| Refusal::Undecided(format!("the model {what} on {on} ({why})"));
    let copies = xs.iter().map(|x| x.f_detach_copy()).collect::<Result<Vec<_>, _>>().map_err(|e| undecided("could not be given its inputs", e.to_string()))?;
    let out = catch_unwind(AssertUnwindSafe(|| model.run(&copies)))
        .map_err(|p| undecided("panicked", panic_message(&*p)))?
        .map_err(|e| undecided("failed", e.to_string()))?;
    let host = out.tensors().into_iter().map(|t| t.f_to_device(Device::Cpu)).collect::<Result<Vec<_>, _>>().map_err(|e| undecided("answered with tensors that cannot be read", e.to_string()))?;
    Ok((out, host))
}

/// Checks `model` on `device` with inputs of these per-sample shapes and dtypes.
///
/// With the builder's sample inputs, the two samples are the two rows of one call of it, unless
/// those rows are equal (two equal samples could not show mixing): then the check's own.
pub(crate) fn check(model: &dyn Forward, device: Device, specs: &[(Vec<i64>, Kind)], samples: Option<&SampleInputs>) -> Result<(), Refusal> {
    let _no_grad = tch::no_grad_guard();
    let given = match samples {
        Some(_) => {
            let two = SampleInputs::make(samples, specs, 2, device).map_err(|e| Refusal::Undecided(format!("cannot make the sample inputs ({e})")))?;
            let rows = |i: i64| two.iter().map(|t| t.f_narrow(0, i, 1)).collect::<Result<Vec<_>, _>>();
            let (a, b) = rows(0).and_then(|a| Ok((a, rows(1)?))).map_err(|e| Refusal::Undecided(format!("cannot split the sample inputs ({e})")))?;
            let differ = a.iter().zip(&b).any(|(x, y)| !x.equal(y));
            differ.then_some((a, b))
        }
        None => None,
    };
    let inputs = || -> Result<[Vec<Tensor>; 3], TchError> {
        let make = |which| specs.iter().map(|(s, k)| sample(s, *k, which, device)).collect::<Result<Vec<_>, _>>();
        let (a, b) = match given {
            Some(ab) => ab,
            None => (make(0)?, make(1)?),
        };
        let both = a.iter().zip(&b).map(|(x, y)| Tensor::f_cat(&[x, y], 0)).collect::<Result<Vec<_>, _>>()?;
        Ok([a, b, both])
    };
    let [a, b, both] = inputs().map_err(|e| Refusal::Undecided(format!("cannot make the sample inputs ({e})")))?;
    let (_, alone_a) = outcome(model, &a, "the first sample alone")?;
    let (_, alone_b) = outcome(model, &b, "the second sample alone")?;
    let (structure, together) = outcome(model, &both, "both samples together")?;
    if alone_a.len() != together.len() || alone_b.len() != together.len() {
        return Err(Refusal::Mixing(format!(
            "it returns {} tensor(s) for one sample alone, {} for the other, and {} for two samples together",
            alone_a.len(),
            alone_b.len(),
            together.len()
        )));
    }
    for (i, name) in structure.names().iter().enumerate() {
        compare(name, [&alone_a[i], &alone_b[i]], &together[i])?;
    }
    Ok(())
}

/// One output: the two samples' answers alone against their rows of the answer together.
fn compare(name: &str, alone: [&Tensor; 2], together: &Tensor) -> Result<(), Refusal> {
    if alone.iter().all(|t| t.dim() == 0) && together.dim() == 0 {
        return Ok(()); // never served: every request gets an `Output` error, batched or not
    }
    let per_sample = |t: &Tensor| t.dim() >= 1 && t.size()[0] == 1;
    let [a, b] = alone;
    if !per_sample(a) || !per_sample(b) {
        return Err(Refusal::Mixing(format!(
            "{name} has shape {:?} for one sample alone: dim 0 is not the sample, so a batch's {name} cannot be split into \
             answers of their own for its requests",
            if per_sample(a) { b.size() } else { a.size() }
        )));
    }
    let mut stacked = a.size();
    stacked[0] = 2;
    if a.size() != b.size() || together.size() != stacked {
        return Err(Refusal::Mixing(format!(
            "{name} has shape {:?} for one sample alone, {:?} for the other, and {:?} for two samples together, where \
             batching needs {stacked:?} (each sample's own answer, stacked along dim 0)",
            a.size(),
            b.size(),
            together.size()
        )));
    }
    if a.kind() != together.kind() || b.kind() != together.kind() {
        return Err(Refusal::Mixing(format!(
            "{name} is {:?} for one sample alone and {:?} for two samples together",
            a.kind(),
            together.kind()
        )));
    }
    for (row, alone) in [a, b].into_iter().enumerate() {
        let differs = together
            .f_narrow(0, row as i64, 1)
            .and_then(|part| difference(alone, &part))
            .map_err(|e| Refusal::Undecided(format!("{name} could not be compared ({e})")))?;
        if let Some(how) = differs {
            return Err(Refusal::Mixing(format!("{name} for sample {row} changes when another sample is in the same batch: {how}")));
        }
    }
    Ok(())
}

/// Real values in double precision (a complex tensor as its real and imaginary parts).
fn real(t: &Tensor) -> Result<Tensor, TchError> {
    if t.is_complex() { t.f_view_as_real()?.f_to_kind(Kind::Double) } else { t.f_to_kind(Kind::Double) }
}

fn count(mask: &Tensor) -> Result<i64, TchError> {
    mask.f_sum(Kind::Int64)?.f_int64_value(&[])
}

/// How `part` (a sample's rows of the batched answer) differs from `alone` (its answer alone),
/// if it does. Same shape on both sides.
fn difference(alone: &Tensor, part: &Tensor) -> Result<Option<String>, TchError> {
    if alone.numel() == 0 {
        return Ok(None); // same shape, no elements: nothing that could differ
    }
    let (x, y) = (real(alone)?, real(part)?);
    let (fx, fy) = (x.f_isfinite()?, y.f_isfinite()?);
    let only_together = count(&fx.f_logical_not()?.f_logical_and(&fy)?)?;
    if only_together > 0 {
        return Ok(Some(format!("{only_together} value(s) are NaN or infinite alone but finite in the batch")));
    }
    let only_alone = count(&fx.f_logical_and(&fy.f_logical_not()?)?)?;
    if only_alone > 0 {
        return Ok(Some(format!("{only_alone} value(s) are finite alone but NaN or infinite in the batch")));
    }
    // Non-finite on both sides: the same NaN, or the same infinity.
    let same = x.f_isnan()?.f_logical_and(&y.f_isnan()?)?.f_logical_or(&x.f_eq_tensor(&y)?)?;
    let changed = count(&fx.f_logical_not()?.f_logical_and(&same.f_logical_not()?)?)?;
    if changed > 0 {
        return Ok(Some(format!("{changed} NaN or infinite value(s) alone are a different NaN or infinity in the batch")));
    }
    let zero = x.f_zeros_like()?;
    let (x, y) = (x.f_where_self(&fx, &zero)?, y.f_where_self(&fy, &zero)?);
    let largest = |t: &Tensor| -> Result<f64, TchError> { t.f_abs()?.f_max()?.f_double_value(&[]) };
    let scale = largest(&x)?.max(largest(&y)?);
    let diff = largest(&x.f_sub(&y)?)?;
    Ok((diff > TOLERANCE * scale.max(1e-6)).then(|| format!("it changes by {diff:.3e} (values up to {scale:.3e})")))
}
