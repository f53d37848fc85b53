//! The device memory one engine may hold: the [`MemoryBudget`] a builder gives, what the
//! calibration measured of the model's memory ([`Footprint`]), and how the plan keeps its
//! automatic choices (largest batch, workers) inside the budget.
//!
//! What an engine holds on a device, per device:
//! - the weights: one model instance ([`Replicas::Shared`](super::Replicas::Shared)) or one per
//!   worker;
//! - per worker, the working memory of the largest batch it runs (inputs, activations, outputs):
//!   without CUDA graphs it is cached by the allocator for the worker's stream; with graphs it
//!   is the worker's graph memory pool (its buckets share one pool, largest captured first).
//!
//! Everything here is arithmetic on measured figures; measuring is the calibration's job (see
//! `auto::calibrate`), and the engine checks what it really holds after start-up.

use serde::Serialize;
use tch::Device;

/// Share of the device's free memory an engine may hold by default.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.8;

/// How much device memory an engine may hold on each of its devices: weights, graph memory and
/// the working memory of its workers' largest batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum MemoryBudget {
    /// At most this many bytes per device.
    Bytes(u64),
    /// This share (0 < share <= 1) of the memory free on each device when `build()` starts
    /// (free as the driver sees it: other processes' memory and this process's cached blocks
    /// are not free). Default: [`DEFAULT_MEMORY_FRACTION`].
    FractionOfFree(f64),
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::FractionOfFree(DEFAULT_MEMORY_FRACTION)
    }
}

impl MemoryBudget {
    /// The budget in bytes on `device`; `None` on the CPU, and for a fraction where the backend
    /// cannot say how much is free.
    pub(crate) fn bytes_on(&self, device: Device) -> Option<i64> {
        if device == Device::Cpu {
            return None;
        }
        match *self {
            MemoryBudget::Bytes(n) => Some(n.min(i64::MAX as u64) as i64),
            MemoryBudget::FractionOfFree(share) => {
                let free = crate::stream::device_capacity(device).ok()?.free;
                Some((free as f64 * share) as i64)
            }
        }
    }

    /// Whether the value is usable: a share in (0, 1], or at least one byte.
    pub(crate) fn check(&self) -> Result<(), String> {
        match *self {
            MemoryBudget::Bytes(0) => Err("memory_budget(Bytes(0)): give at least one byte".into()),
            MemoryBudget::FractionOfFree(s) if !(s > 0.0 && s <= 1.0) => {
                Err(format!("memory_budget(FractionOfFree({s})) is out of range: expected a share in (0, 1]"))
            }
            _ => Ok(()),
        }
    }
}

/// What the model costs in device memory, as the calibration measured it on one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Footprint {
    /// One instance's weights and buffers (bytes).
    pub(crate) weights: i64,
    /// (samples per batch, bytes one forward of that size holds at its peak, its inputs and
    /// outputs included), in increasing size.
    pub(crate) working: Vec<(usize, i64)>,
    /// (largest batch, bytes) one worker really held once set up as it will run (its CUDA
    /// graphs' pool, buffers, cuBLAS workspaces), as the start-up trial measured it; preferred
    /// to `working`, which one eager forward measures and which leaves that overhead out.
    pub(crate) per_worker: Option<(usize, i64)>,
    /// Whether warm-ups take turns (CUDA graphs captured; see `device_cache`): at the build's
    /// peak one worker's eager forward of its largest batch is cached on top of what every
    /// worker holds. Without graphs the workers' held memory already is their eager cache.
    pub(crate) warm_up_turns: bool,
}

/// The layout of one device whose memory is estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Layout {
    /// Workers on the device.
    pub(crate) workers: usize,
    /// Model instances on the device (1 when shared).
    pub(crate) instances: usize,
    /// The largest batch a worker runs (the largest bucket).
    pub(crate) largest: usize,
}

impl Footprint {
    /// Working bytes of one forward of `rows` samples: measured, or scaled per sample from the
    /// nearest measured size below (from the smallest when none is below). `None` without
    /// readings.
    pub(crate) fn working(&self, rows: usize) -> Option<i64> {
        if let Some(&(_, w)) = self.working.iter().find(|&&(b, _)| b == rows) {
            return Some(w);
        }
        let &(b, w) = self.working.iter().rev().find(|&&(b, _)| b < rows).or(self.working.first())?;
        Some(((w as f64) * rows as f64 / b.max(1) as f64).ceil() as i64)
    }

    /// Bytes one worker holds when its largest batch is `rows`: the trial's measurement, scaled
    /// by the working memory of `rows` against that of the measured size; else the working
    /// memory alone.
    pub(crate) fn per_worker(&self, rows: usize) -> Option<i64> {
        match self.per_worker {
            Some((b, held)) if b == rows => Some(held),
            Some((b, held)) => {
                let (at_rows, at_b) = (self.working(rows)?, self.working(b)?);
                Some((held as f64 * at_rows as f64 / at_b.max(1) as f64).ceil() as i64)
            }
            None => self.working(rows),
        }
    }

    /// Bytes the engine holds on a device laid out as `l` at its peak (see the module docs):
    /// the weights, every worker's share, and with warm-up turns one eager forward of the
    /// largest batch (the warm-up in progress).
    pub(crate) fn estimate(&self, l: Layout) -> Option<i64> {
        let turn = if self.warm_up_turns { self.working(l.largest).unwrap_or(0) } else { 0 };
        Some(self.weights * l.instances as i64 + l.workers as i64 * self.per_worker(l.largest)? + turn)
    }
}

/// Automatic choices after fitting them into the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fitted {
    pub(crate) max_batch: usize,
    pub(crate) workers: usize,
    pub(crate) estimate: i64,
}

/// The largest `max_batch` (halving from `max_batch`) and then, when `workers_free`, the most
/// workers (from `l.workers` down) whose estimate fits `budget`. Err: the estimate of the
/// smallest configuration allowed, over the budget. `None` without readings.
pub(crate) fn fit(fp: &Footprint, l: Layout, budget: i64, workers_free: bool) -> Option<Result<Fitted, i64>> {
    let mut layout = l;
    loop {
        let estimate = fp.estimate(layout)?;
        if estimate <= budget {
            return Some(Ok(Fitted { max_batch: layout.largest, workers: layout.workers, estimate }));
        }
        if layout.largest > 1 {
            layout.largest /= 2;
        } else if workers_free && layout.workers > 1 {
            layout.workers -= 1;
            layout.instances = layout.instances.min(layout.workers);
        } else {
            return Some(Err(estimate));
        }
    }
}

/// After start-up, per GPU of `budgets` (device, budget, bytes reserved when planning began):
/// gives the allocator's unused cached blocks back (what warm-up's eager runs left; the graphs'
/// pools and live tensors stay), then refuses an engine holding more than its budget: the rise
/// of the device's reserved bytes since planning began.
pub(crate) fn check_after_start(budgets: &[(Device, i64, i64)]) -> Result<(), super::EngineError> {
    for &(device, limit, before) in budgets {
        super::device_cache::give_back(device);
        let Ok(now) = crate::stream::memory_stats(device) else { continue };
        let held = now.reserved - before;
        if held > limit {
            return Err(super::EngineError::Build(format!(
                "memory: the engine holds {} MiB on {device:?} after start-up, over its budget of {} MiB; lower the largest batch \
                 or bucket sizes, the workers, use a shared model instance or turn CUDA graphs off, or raise the budget \
                 (memory_budget, --gpu-memory)",
                mib(held),
                mib(limit)
            )));
        }
    }
    Ok(())
}

/// Bytes in MiB, for messages.
pub(crate) fn mib(bytes: i64) -> i64 {
    bytes >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: i64 = 1 << 20;

    fn fp() -> Footprint {
        // Weights 50 MiB; 10 MiB per sample.
        Footprint { weights: 50 * MB, working: (0..8).map(|k| (1usize << k, (10 << k) * MB)).collect(), per_worker: None, warm_up_turns: false }
    }

    #[test]
    fn a_measured_worker_replaces_the_working_memory_and_scales_with_it() {
        // The trial saw 1.5x the eager working memory at 64 samples (graph pool, workspaces).
        let f = Footprint { per_worker: Some((64, 960 * MB)), ..fp() };
        assert_eq!(f.per_worker(64), Some(960 * MB));
        assert_eq!(f.per_worker(32), Some(480 * MB), "scaled by working(32) / working(64)");
        assert_eq!(f.estimate(layout(64)), Some(50 * MB + 4 * 960 * MB));
        // Fitting uses it: 2000 MiB holds 4 workers of 32 samples (480 MiB each), not of 64.
        let fitted = fit(&f, layout(64), 2000 * MB, true).unwrap().unwrap();
        assert_eq!((fitted.max_batch, fitted.workers, fitted.estimate), (32, 4, 50 * MB + 4 * 480 * MB));
        // A measurement without calibration readings still answers for its own size.
        let alone = Footprint { weights: 0, working: Vec::new(), per_worker: Some((8, 100)), warm_up_turns: false };
        assert_eq!((alone.per_worker(8), alone.per_worker(4)), (Some(100), None));
    }

    #[test]
    fn with_warm_up_turns_one_eager_forward_of_the_largest_batch_comes_on_top() {
        let f = Footprint { per_worker: Some((64, 960 * MB)), warm_up_turns: true, ..fp() };
        assert_eq!(f.estimate(layout(64)), Some(50 * MB + 4 * 960 * MB + 640 * MB));
        assert_eq!(f.estimate(layout(32)), Some(50 * MB + 4 * 480 * MB + 320 * MB), "the turn's forward scales with the batch");
        let fitted = fit(&f, layout(64), 2000 * MB, true).unwrap().unwrap();
        assert_eq!((fitted.max_batch, fitted.workers, fitted.estimate), (16, 4, 50 * MB + 4 * 240 * MB + 160 * MB));
    }

    fn layout(largest: usize) -> Layout {
        Layout { workers: 4, instances: 1, largest }
    }

    #[test]
    fn working_memory_is_read_or_scaled_from_the_nearest_size_below() {
        let f = fp();
        assert_eq!(f.working(16), Some(160 * MB));
        assert_eq!(f.working(24), Some(240 * MB), "scaled from 16");
        assert_eq!(f.working(1024), Some(10240 * MB), "scaled from 128");
        assert_eq!(Footprint::default().working(4), None);
    }

    #[test]
    fn the_estimate_is_weights_plus_each_workers_largest_batch() {
        let f = fp();
        // 4 workers x 128 samples x 10 MiB + weights.
        assert_eq!(f.estimate(layout(128)), Some(50 * MB + 4 * 1280 * MB));
        // Per-worker instances count their weights once each.
        assert_eq!(f.estimate(Layout { instances: 4, ..layout(1) }), Some(200 * MB + 40 * MB));
    }

    #[test]
    fn fitting_halves_the_batch_then_drops_workers_then_gives_up() {
        let f = fp();
        let fitted = fit(&f, layout(128), 2000 * MB, true).unwrap().unwrap();
        assert_eq!((fitted.max_batch, fitted.workers), (32, 4));
        assert_eq!(fitted.estimate, 50 * MB + 4 * 320 * MB);
        // 1 sample on 4 workers is 90 MiB: only 2 workers fit 75 MiB.
        let fitted = fit(&f, layout(128), 75 * MB, true).unwrap().unwrap();
        assert_eq!((fitted.max_batch, fitted.workers), (1, 2));
        // Workers given by the user are not dropped: the smallest estimate comes back.
        assert_eq!(fit(&f, layout(128), 75 * MB, false).unwrap(), Err(90 * MB));
        assert_eq!(fit(&f, layout(128), 10 * MB, true).unwrap(), Err(60 * MB));
        assert_eq!(fit(&Footprint::default(), layout(8), MB, true), None);
    }

    #[test]
    fn budgets_out_of_range_are_refused() {
        assert!(MemoryBudget::Bytes(0).check().is_err());
        assert!(MemoryBudget::FractionOfFree(0.0).check().is_err());
        assert!(MemoryBudget::FractionOfFree(1.5).check().is_err());
        assert!(MemoryBudget::FractionOfFree(f64::NAN).check().is_err());
        assert!(MemoryBudget::FractionOfFree(0.5).check().is_ok());
        assert_eq!(MemoryBudget::Bytes(8).bytes_on(Device::Cpu), None);
    }
}
