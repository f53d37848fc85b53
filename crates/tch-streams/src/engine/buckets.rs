//! Shape buckets: the batch sizes a dynamic batch is padded up to, so that a worker only ever
//! runs a few shapes — each warmed up (and captured as a CUDA graph) before serving — instead of
//! every total the queue happens to form.
//!
//! Padding rows are copies of the batch's first sample; their outputs are dropped before the
//! answers are split. They never change a real row's answer: batching only runs for models that
//! passed the batch-independence check, and the padded batch is one fixed shape per bucket.

use tch::{Device, TchError, Tensor};

/// Sorted, distinct bucket sizes in samples. Empty: no padding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Buckets(Vec<usize>);

impl Buckets {
    /// The given sizes, sorted and without repeats.
    pub(crate) fn from_sizes(mut sizes: Vec<usize>) -> Buckets {
        sizes.sort_unstable();
        sizes.dedup();
        Buckets(sizes)
    }

    /// 1, 2, 4, … up to `max_batch`, and `max_batch` itself when it is not a power of two.
    pub(crate) fn powers_of_two(max_batch: usize) -> Buckets {
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |&b| b.checked_mul(2)).take_while(|&b| b <= max_batch).collect();
        if max_batch > 0 && sizes.last() != Some(&max_batch) {
            sizes.push(max_batch);
        }
        Buckets(sizes)
    }

    pub(crate) fn sizes(&self) -> &[usize] {
        &self.0
    }

    /// The size a batch of `rows` samples runs as: the smallest bucket that holds it, or `rows`
    /// itself when none does (or there are no buckets).
    pub(crate) fn fit(&self, rows: i64) -> i64 {
        self.0.iter().map(|&b| b as i64).find(|&b| b >= rows).unwrap_or(rows)
    }
}

impl Buckets {
    /// The largest bucket of at most `rows` samples, if any.
    pub(crate) fn largest_at_most(&self, rows: i64) -> Option<i64> {
        self.0.iter().rev().map(|&b| b as i64).find(|&b| b <= rows)
    }
}

/// Joins the requests' parts of one input along dim 0, appends `pad` copies of the first
/// sample, and puts the result on `device`. The result is always new memory that only the engine
/// holds, never a caller's tensor: one request without padding is copied too (straight to
/// `device`, one copy either way), so an in-place model cannot change a caller's input, and an
/// answer that aliases the model's input does not alias the caller's.
pub(crate) fn join_padded(parts: &[&Tensor], pad: i64, device: Device) -> Result<Tensor, TchError> {
    let joined = match (parts, pad) {
        ([one], 0) if one.device() == device => return one.f_detach_copy(),
        ([one], 0) => return one.f_to_device(device), // another device: a copy by nature
        (_, 0) => Tensor::f_cat(parts, 0)?,
        _ => {
            let first = parts[0].f_narrow(0, 0, 1)?;
            let mut dims = first.size();
            dims[0] = pad;
            let filler = first.f_expand(dims.as_slice(), false)?;
            let mut all: Vec<&Tensor> = parts.to_vec();
            all.push(&filler);
            Tensor::f_cat(&all, 0)?
        }
    };
    if joined.device() == device { Ok(joined) } else { joined.f_to_device(device) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn powers_of_two_end_at_max_batch() {
        assert_eq!(Buckets::powers_of_two(1).sizes(), &[1]);
        assert_eq!(Buckets::powers_of_two(8).sizes(), &[1, 2, 4, 8]);
        assert_eq!(Buckets::powers_of_two(100).sizes(), &[1, 2, 4, 8, 16, 32, 64, 100]);
        assert!(Buckets::powers_of_two(0).sizes().is_empty());
    }

    #[test]
    fn fit_takes_the_smallest_bucket_that_holds_the_batch() {
        let b = Buckets::from_sizes(vec![64, 8, 8, 1, 16]);
        assert_eq!(b.sizes(), &[1, 8, 16, 64]);
        assert_eq!([1, 2, 8, 9, 16, 17, 64, 65].map(|r| b.fit(r)), [1, 8, 8, 16, 16, 64, 64, 65]);
        assert_eq!(Buckets::default().fit(7), 7);
        assert_eq!([0, 1, 7, 8, 63, 64, 1000].map(|r| b.largest_at_most(r)), [None, Some(1), Some(1), Some(8), Some(16), Some(64), Some(64)]);
    }

    #[test]
    fn padding_repeats_the_first_sample_after_the_parts() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]);
        let b = Tensor::from_slice(&[3.0f32, 4.0, 5.0, 6.0]).reshape([2, 2]);
        let x = join_padded(&[&a, &b], 2, Device::Cpu).unwrap();
        assert_eq!(x.size(), vec![5, 2]);
        let v: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 1.0, 2.0]);
        let ints = Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu));
        assert_eq!(join_padded(&[&ints], 3, Device::Cpu).unwrap().size(), vec![4, 3]);
    }

    #[test]
    fn one_unpadded_part_is_copied_never_passed_through() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]);
        let mut one = join_padded(&[&a], 0, Device::Cpu).unwrap();
        assert_ne!(one.data_ptr(), a.data_ptr(), "the engine's own memory, not the caller's");
        let _ = one.f_add_scalar_(1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(), vec![1.0, 2.0], "changing the copy leaves the input alone");
        let strided = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).tr();
        let copy = join_padded(&[&strided], 0, Device::Cpu).unwrap();
        assert!(copy.equal(&strided));
    }
}
