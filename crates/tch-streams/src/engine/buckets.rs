//! Shape buckets: the batch sizes a dynamic batch is padded up to, so that a worker only ever
//! runs a few shapes — each warmed up (and captured as a CUDA graph) before serving — instead of
//! every total the queue happens to form.
//!
//! Padding rows are copies of the batch's first sample; their outputs are dropped before the
//! answers are split. They never change a real row's answer: batching only runs for models that
//! passed the batch-independence check, and the padded batch is one fixed shape per bucket.

use tch::{TchError, Tensor};

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

/// Joins the requests' parts of one input along dim 0 and appends `pad` copies of the first
/// sample. One request without padding is passed through without a copy.
pub(crate) fn join_padded(parts: &[&Tensor], pad: i64) -> Result<Tensor, TchError> {
    if pad == 0 {
        return if parts.len() == 1 { Ok(parts[0].shallow_clone()) } else { Tensor::f_cat(parts, 0) };
    }
    let first = parts[0].f_narrow(0, 0, 1)?;
    let mut dims = first.size();
    dims[0] = pad;
    let filler = first.f_expand(dims.as_slice(), false)?;
    let mut all: Vec<&Tensor> = parts.to_vec();
    all.push(&filler);
    Tensor::f_cat(&all, 0)
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
        let x = join_padded(&[&a, &b], 2).unwrap();
        assert_eq!(x.size(), vec![5, 2]);
        let v: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 1.0, 2.0]);
        let one = join_padded(&[&a], 0).unwrap();
        assert_eq!(one.data_ptr(), a.data_ptr(), "one unpadded part is passed through without a copy");
        let ints = Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu));
        assert_eq!(join_padded(&[&ints], 3).unwrap().size(), vec![4, 3]);
    }
}
