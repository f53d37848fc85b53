//! Host inputs through pinned staging: a worker on a CUDA device joins a batch of host requests
//! straight into a page-locked buffer of its own and copies it to the device with one
//! asynchronous copy on its stream; answers for the host come back into page-locked memory the
//! same way (see [`to_host`]).
//!
//! Without it a batch of host inputs is joined in ordinary (pageable) memory and copied with a
//! synchronous, driver-staged copy: two to three times slower than from pinned memory, and the
//! worker's thread waits for it.
//!
//! Invariants:
//! - **One owner.** A [`Staging`] belongs to one worker and is used only on its thread, with the
//!   worker's stream current. It holds one buffer per input, grown to the largest batch seen
//!   (bounded by the largest bucket, or by `max_batch`).
//! - **Reuse after the copy.** A buffer is written again only after the copy that read it is
//!   done: an event recorded on the worker's stream after the copies is waited for on the host
//!   before the next batch is joined into the buffers. (Usually long done: the worker waits for
//!   its stream before it answers.)
//! - **New memory for the model.** What reaches the model is a device tensor the copy made, as
//!   with [`join_padded`](super::buckets::join_padded): never a caller's tensor.

use crate::stream::{Event, Stream};
use tch::{Device, Kind, TchError, Tensor};

/// A worker's page-locked input buffers and the event that guards their reuse.
#[derive(Default)]
pub(crate) struct Staging {
    /// Per input: a pinned host tensor `[capacity, sample shape...]` of the input's dtype.
    buffers: Vec<Option<Tensor>>,
    /// Recorded on the worker's stream after the last batch's copies.
    copied: Option<Event>,
    /// Set when pinning failed once (no pinned memory to be had): ordinary joins from then on.
    unavailable: bool,
}

impl Staging {
    /// Whether this batch goes through staging: a CUDA worker, every part on the host.
    pub(crate) fn applies(&self, device: Device, parts: &[Vec<&Tensor>]) -> bool {
        !self.unavailable && matches!(device, Device::Cuda(_)) && parts.iter().flatten().all(|x| x.device() == Device::Cpu)
    }

    /// Joins each input's parts (padded with `pad` copies of the first sample) into its pinned
    /// buffer and queues one asynchronous copy per input to `device` on `stream` (the calling
    /// thread's current stream). `None` if pinned memory cannot be had: the caller joins the
    /// ordinary way (and so does every later batch).
    pub(crate) fn stage(&mut self, parts: &[Vec<&Tensor>], pad: i64, device: Device, stream: &Stream) -> Option<Result<Vec<Tensor>, TchError>> {
        if let Some(e) = &self.copied {
            // The previous batch's copies must have read the buffers before they are rewritten.
            if let Err(err) = e.synchronize() {
                tracing::warn!("staging: could not wait for the previous copy ({err}); joining the ordinary way from now on");
                self.unavailable = true;
                return None;
            }
        }
        if self.buffers.len() < parts.len() {
            self.buffers.resize_with(parts.len(), || None);
        }
        let mut out = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let rows: i64 = p.iter().map(|t| t.size().first().copied().unwrap_or(0)).sum::<i64>() + pad;
            let buffer = match self.buffer(i, p[0], rows) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("staging: no pinned host memory ({e}); joining the ordinary way from now on");
                    self.unavailable = true;
                    return None;
                }
            };
            out.push(join_into(&buffer, p, pad, rows).and_then(|joined| joined.f_to_device_(device, joined.kind(), true, false)));
        }
        let mut copied = match self.copied.take() {
            Some(e) => e,
            None => match Event::new(device) {
                Ok(e) => e,
                Err(e) => {
                    // Without an event the buffers cannot be reused safely: wait for the copies now.
                    tracing::warn!("staging: no event ({e}); waiting for the copies");
                    let _ = stream.synchronize();
                    return Some(out.into_iter().collect());
                }
            },
        };
        if let Err(e) = copied.record(stream) {
            tracing::warn!("staging: could not record the copies ({e}); waiting for them");
            let _ = stream.synchronize();
        }
        self.copied = Some(copied);
        Some(out.into_iter().collect())
    }

    /// Input `i`'s buffer, holding at least `rows` samples shaped and typed like `like`:
    /// the existing one, or a new one (the old one is dropped: its last copy is done, see above).
    fn buffer(&mut self, i: usize, like: &Tensor, rows: i64) -> Result<Tensor, TchError> {
        let sample: Vec<i64> = like.size()[1..].to_vec();
        let fits = |b: &Tensor| b.kind() == like.kind() && b.size()[1..] == sample[..] && b.size()[0] >= rows;
        if let Some(b) = &self.buffers[i] {
            if fits(b) {
                return Ok(b.shallow_clone());
            }
        }
        let capacity = self.buffers[i].as_ref().filter(|b| b.kind() == like.kind() && b.size()[1..] == sample[..]).map_or(rows, |b| b.size()[0].max(rows));
        let mut dims = vec![capacity];
        dims.extend_from_slice(&sample);
        let pinned = pinned_empty(&dims, like.kind())?;
        self.buffers[i] = Some(pinned.shallow_clone());
        Ok(pinned)
    }
}

/// A page-locked host tensor of `dims`, from libtorch's caching host allocator (made once per
/// buffer).
fn pinned_empty(dims: &[i64], kind: Kind) -> Result<Tensor, TchError> {
    crate::host_tensor::pinned_empty(dims, kind).map_err(|e| TchError::Torch(e.to_string()))
}

/// Writes the parts and `pad` copies of the first sample into the first `rows` rows of
/// `buffer`; returns that view.
fn join_into(buffer: &Tensor, parts: &[&Tensor], pad: i64, rows: i64) -> Result<Tensor, TchError> {
    let target = buffer.f_narrow(0, 0, rows)?;
    let filler;
    let mut all: Vec<&Tensor> = parts.to_vec();
    if pad > 0 {
        let first = parts[0].f_narrow(0, 0, 1)?;
        let mut dims = first.size();
        dims[0] = pad;
        filler = first.f_expand(dims.as_slice(), false)?;
        all.push(&filler);
    }
    let _written = Tensor::f_cat_out(&target, &all, 0)?;
    Ok(target)
}

/// An answer's tensor on its way to the host: copied asynchronously into page-locked memory
/// (libtorch pins the destination of a non-blocking device-to-host copy). The values are valid
/// once the stream it was queued on is synchronised, which the worker does before it answers.
pub(crate) fn to_host(t: &Tensor) -> Result<Tensor, TchError> {
    if t.device() == Device::Cpu {
        return Ok(t.shallow_clone());
    }
    t.f_to_device_(Device::Cpu, t.kind(), true, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_into_pads_with_the_first_sample_and_fills_only_the_rows_asked() {
        let buffer = Tensor::full([6, 2], -1.0, (Kind::Float, Device::Cpu));
        let a = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
        let b = Tensor::from_slice(&[3.0f32, 4.0, 5.0, 6.0]).view([2, 2]);
        let joined = join_into(&buffer, &[&a, &b], 2, 5).unwrap();
        assert_eq!(joined.size(), vec![5, 2]);
        let got: Vec<f32> = Vec::try_from(buffer.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 1.0, 2.0, -1.0, -1.0]);
    }

    #[test]
    fn staging_applies_only_to_host_parts_on_a_cuda_worker() {
        let s = Staging::default();
        let x = Tensor::ones([1, 2], (Kind::Float, Device::Cpu));
        assert!(s.applies(Device::Cuda(0), &[vec![&x]]));
        assert!(!s.applies(Device::Cpu, &[vec![&x]]));
        let off = Staging { unavailable: true, ..Staging::default() };
        assert!(!off.applies(Device::Cuda(0), &[vec![&x]]));
    }

    #[test]
    fn to_host_keeps_a_host_tensor() {
        let x = Tensor::ones([2], (Kind::Float, Device::Cpu));
        assert_eq!(to_host(&x).unwrap().data_ptr(), x.data_ptr());
    }
}
