//! Host tensors made for copies to a device: CPU tensors over bytes that stay with their owner
//! ([`tensor_over`]: a request's bytes become a model input without being copied into a tensor
//! first), and page-locked ones ([`pinned_empty`]).
//!
//! The tensor holds its owner (boxed) and drops it when libtorch frees the tensor's storage, on
//! whichever thread lets go of the last tensor or view of it: the owner must be `Send`. Nothing
//! may write through such a tensor: its bytes are the owner's, which Rust sees as shared and
//! immutable (a `bytes::Bytes`, a `Vec<u8>` given away). The engine never writes to a caller's
//! input: it joins or copies every request's inputs into memory of its own before the model runs.

use crate::error::{Error, Result};
use crate::ffi;
use std::ffi::c_void;
use tch::{Kind, Tensor};

/// A CPU tensor of `shape` and `kind` over `owner`'s bytes (row-major, native byte order), with
/// no copy. `owner` is dropped when the tensor's storage is freed (or at once, on an error).
///
/// Errors (`InvalidArgument`): the byte count is not the shape's, the bytes are not aligned to
/// the element size (copy them instead: `Tensor::from_data_size`), a dimension is negative.
///
/// # Safety
/// Nothing may write through the returned tensor or any view of it (no in-place operation, no
/// `copy_` into it): its memory belongs to `owner`, which Rust treats as immutable.
///
/// ```
/// let bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// // SAFETY: the tensor is only read.
/// let t = unsafe { tch_streams::host_tensor::tensor_over(bytes, &[2], tch::Kind::Float) }.unwrap();
/// assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.5, -2.0]);
/// ```
pub unsafe fn tensor_over<O>(owner: O, shape: &[i64], kind: Kind) -> Result<Tensor>
where
    O: AsRef<[u8]> + Send + 'static,
{
    let bytes = owner.as_ref();
    let elements = shape.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
    let element = kind.elt_size_in_bytes();
    let Some(expected) = elements.and_then(|n| n.checked_mul(element)) else {
        return Err(Error::InvalidArgument(format!("shape {shape:?} is invalid: dims must be >= 0 and their product fit in memory")));
    };
    if bytes.len() != expected {
        return Err(Error::InvalidArgument(format!("{} byte(s), but shape {shape:?} of {kind:?} needs {expected}", bytes.len())));
    }
    if !bytes.is_empty() && !aligned(bytes, kind) {
        return Err(Error::InvalidArgument(format!("the bytes are not aligned to the {element}-byte elements of {kind:?}")));
    }
    let Some(scalar_type) = scalar_type(kind) else {
        return Err(Error::InvalidArgument(format!("{kind:?} tensors are not made over bytes here")));
    };
    // An empty slice may dangle; libtorch wants a real address even for no elements.
    let data = if bytes.is_empty() { std::ptr::NonNull::<u64>::dangling().as_ptr().cast::<c_void>() } else { bytes.as_ptr() as *mut c_void };
    let boxed = Box::into_raw(Box::new(owner)).cast::<c_void>();
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `data` stays valid while the boxed owner lives, which the shim releases exactly
    // once (when the storage goes, or before returning an error); `shape` outlives the call.
    let status = unsafe {
        ffi::tss_host_tensor_over(data, shape.as_ptr(), shape.len(), scalar_type, boxed, Some(release::<O>), &mut out)
    };
    crate::status::check(status, crate::Backend::Cpu, 0, "from_blob")?;
    // SAFETY: on success `out` is a new at::Tensor*, now owned by the returned Tensor.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// An uninitialised page-locked CPU tensor of `shape` and `kind`, taken straight from the
/// accelerator's caching host allocator (the fast source of asynchronous copies to the device).
/// Errors where the loaded libtorch has no pinned-memory allocator (a CPU-only build).
pub fn pinned_empty(shape: &[i64], kind: Kind) -> Result<Tensor> {
    if shape.iter().any(|&d| d < 0) {
        return Err(Error::InvalidArgument(format!("shape {shape:?} is invalid: dims must be >= 0")));
    }
    let Some(scalar_type) = scalar_type(kind) else {
        return Err(Error::InvalidArgument(format!("{kind:?} tensors are not made pinned here")));
    };
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `shape` outlives the call; `out` is a valid out-pointer.
    let status = unsafe { ffi::tss_host_tensor_pinned(shape.as_ptr(), shape.len(), scalar_type, &mut out) };
    crate::status::check(status, crate::Backend::Cpu, 0, "empty(pinned_memory)")?;
    // SAFETY: on success `out` is a new at::Tensor*, now owned by the returned Tensor.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// c10's number for `kind` (its `ScalarType` enumeration), for the kinds a request carries.
fn scalar_type(kind: Kind) -> Option<i8> {
    Some(match kind {
        Kind::Uint8 => 0,
        Kind::Int8 => 1,
        Kind::Int16 => 2,
        Kind::Int => 3,
        Kind::Int64 => 4,
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::Bool => 11,
        Kind::BFloat16 => 15,
        _ => return None,
    })
}

/// Whether `bytes` may back a tensor of `kind` without a copy: aligned to its element size.
pub fn aligned(bytes: &[u8], kind: Kind) -> bool {
    (bytes.as_ptr() as usize) % kind.elt_size_in_bytes() == 0
}

/// The shim's release function for an owner of type `O`.
unsafe extern "C" fn release<O>(owner: *mut c_void) {
    // SAFETY: `owner` is the Box::into_raw of an `O` made by `tensor_over`, released once.
    drop(unsafe { Box::from_raw(owner.cast::<O>()) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Bytes that count their drops.
    struct Counted(Vec<u8>, Arc<AtomicUsize>);
    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn the_tensor_reads_the_owners_bytes_in_place_and_drops_the_owner_with_its_last_view() {
        let drops = Arc::new(AtomicUsize::new(0));
        let bytes = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let at = bytes.as_ptr() as i64;
        let t = unsafe { tensor_over(Counted(bytes, Arc::clone(&drops)), &[2, 3], Kind::Float) }.unwrap();
        assert_eq!(t.data_ptr() as i64, at, "no copy");
        assert_eq!(t.size(), vec![2, 3]);
        let row = t.narrow(0, 1, 1);
        drop(t);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "a view keeps the owner");
        assert_eq!(Vec::<f32>::try_from(row.reshape([-1])).unwrap(), vec![4.0, 5.0, 6.0]);
        // A copy is memory of its own.
        let copy = row.copy();
        drop(row);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped with the last view");
        assert_eq!(Vec::<f32>::try_from(copy.reshape([-1])).unwrap(), vec![4.0, 5.0, 6.0]);
    }

    #[test]
    fn a_tensor_dropped_on_another_thread_drops_its_owner_there() {
        let drops = Arc::new(AtomicUsize::new(0));
        let t = unsafe { tensor_over(Counted(floats(&[7.0]), Arc::clone(&drops)), &[1], Kind::Float) }.unwrap();
        std::thread::spawn(move || drop(t)).join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wrong_sizes_and_misaligned_bytes_are_refused_and_the_owner_dropped() {
        let drops = Arc::new(AtomicUsize::new(0));
        let e = unsafe { tensor_over(Counted(floats(&[1.0, 2.0]), Arc::clone(&drops)), &[3], Kind::Float) }.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m == "8 byte(s), but shape [3] of Float needs 12"), "{e}");
        let e = unsafe { tensor_over(vec![0u8; 4], &[-1], Kind::Float) }.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("dims must be >= 0")), "{e}");
        // One byte into an 8-aligned buffer: misaligned for f32.
        let backing = vec![0u64; 2];
        let raw: &'static [u8] = Box::leak(bytemuck_bytes(&backing).to_vec().into_boxed_slice());
        let base = raw.as_ptr() as usize;
        let skew = (4 - base % 4) % 4 + 1; // an address that is 1 mod 4
        let slice = &raw[skew..skew + 4];
        assert!(!aligned(slice, Kind::Float) && aligned(slice, Kind::Uint8));
        let e = unsafe { tensor_over(slice, &[1], Kind::Float) }.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m == "the bytes are not aligned to the 4-byte elements of Float"), "{e}");
        // Bytes need no alignment; no elements need no address.
        let t = unsafe { tensor_over(slice, &[4], Kind::Uint8) }.unwrap();
        assert_eq!(t.data_ptr() as usize, slice.as_ptr() as usize);
        let t = unsafe { tensor_over(Vec::<u8>::new(), &[0, 3], Kind::Float) }.unwrap();
        assert_eq!(t.size(), vec![0, 3]);
        drop(t);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the refused owner was dropped");
    }

    #[test]
    fn pinned_tensors_are_page_locked_where_an_accelerator_allocator_exists() {
        match pinned_empty(&[4, 3], Kind::Float) {
            Ok(t) => {
                assert_eq!((t.size(), t.kind(), t.device()), (vec![4, 3], Kind::Float, tch::Device::Cpu));
                assert!(t.f_is_pinned(tch::Device::Cuda(0)).unwrap_or(false), "page-locked");
            }
            // A CPU-only libtorch has no pinned-memory allocator: the error says so.
            Err(e) => assert!(matches!(&e, Error::Torch { op: "empty(pinned_memory)", .. }), "{e}"),
        }
        let e = pinned_empty(&[-1], Kind::Float).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("dims must be >= 0")), "{e}");
    }

    #[test]
    fn every_kind_a_request_carries_keeps_its_values() {
        // One value per kind, through libtorch's own reading of the bytes.
        let cases: [(Kind, Vec<u8>, f64); 9] = [
            (Kind::Uint8, vec![200], 200.0),
            (Kind::Int8, vec![0xfe], -2.0),
            (Kind::Int16, (-300i16).to_le_bytes().to_vec(), -300.0),
            (Kind::Int, 70_000i32.to_le_bytes().to_vec(), 70_000.0),
            (Kind::Int64, (-5_000_000_000i64).to_le_bytes().to_vec(), -5e9),
            (Kind::Float, 0.25f32.to_le_bytes().to_vec(), 0.25),
            (Kind::Double, 1e300f64.to_le_bytes().to_vec(), 1e300),
            (Kind::Bool, vec![1], 1.0),
            (Kind::Half, 0x3c00u16.to_le_bytes().to_vec(), 1.0),
        ];
        for (kind, bytes, want) in cases {
            // Vec<u8> of an 8-byte value from the global allocator is aligned enough.
            let t = unsafe { tensor_over(bytes, &[1], kind) }.unwrap();
            assert_eq!(t.kind(), kind);
            assert_eq!(t.double_value(&[0]), want, "{kind:?}");
        }
        let e = unsafe { tensor_over(vec![0u8; 8], &[1], Kind::ComplexFloat) }.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("ComplexFloat")), "{e}");
    }

    fn bytemuck_bytes(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}
