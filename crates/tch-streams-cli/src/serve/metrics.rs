//! Prometheus metrics of `serve`, in the text exposition format.
//!
//! Request-side series are updated by the request handlers (any runtime thread; the
//! `prometheus` types are atomics). Each served model's request-side series exist from start-up,
//! at zero, resolved once into a [`ModelSeries`]; only the series of rare outcomes (errors,
//! unknown model names) are created when they first happen. Engine-side series (engine
//! counters, batch sizes, workers) come from [`EngineCollector`], a collector registered beside
//! them: it reads [`Engine::stats`](tch_streams::engine::Engine::stats) when `/metrics` is
//! scraped, minus the start-up probe, so they count client requests only.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `tch_streams_requests_total` | counter | model, protocol (http, grpc), outcome (success, bad_request, not_found, too_large, unavailable, timeout, error, exhausted, body_timeout, unsupported, cancelled: the client went away) |
//! | `tch_streams_skipped_requests_total` | counter | model: requests whose client went away before they reached the engine (never run) |
//! | `tch_streams_request_duration_seconds` | histogram | model, protocol: body received to answer encoded |
//! | `tch_streams_engine_duration_seconds` | histogram | model: submitted to the engine until answered (queue + compute) |
//! | `tch_streams_request_stage_seconds` | histogram | model, protocol, stage (decode, admission, engine, encode; see [`stages`](super::stages)): successful requests only |
//! | `tch_streams_inflight_requests` | gauge | model: admitted until the engine answers (waiting for the window, queued, running); a request leaves it before its answer is encoded and its outcome counted in `tch_streams_requests_total` |
//! | `tch_streams_buffered_bytes` | gauge | — : bytes held from the `--max-buffered-bytes` budget |
//! | `tch_streams_open_connections` | gauge | — : connections open on the HTTP and gRPC ports |
//! | `tch_streams_engine_requests_total` | counter | model, result (submitted, completed, failed, cancelled) |
//! | `tch_streams_engine_latency_microseconds` | gauge | model, quantile (0.5, 0.95, 0.99): the engine's own queue + compute latency |
//! | `tch_streams_queue_microseconds` | gauge | model, quantile (0.5, 0.99): submitted until a worker began the request's batch (batching wait included) |
//! | `tch_streams_compute_microseconds` | gauge | model, quantile (0.5, 0.99): the batch's begin until the answer (ordering, assembly, forward, completion) |
//! | `tch_streams_batch_size` | histogram | model: requests per batch the engine ran |
//! | `tch_streams_workers` | gauge | model, device |

use super::model::ServedModel;
use super::stages::STAGES;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::core::{Collector, Desc};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The request-side series, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    /// Requests by model, protocol and outcome.
    pub requests: IntCounterVec,
    /// Seconds from a request's body to its encoded answer.
    pub request_seconds: HistogramVec,
    /// Seconds from submission to the engine until its answer.
    pub engine_seconds: HistogramVec,
    /// Seconds of each stage of a successful request (see [`stages`](super::stages)).
    pub stage_seconds: HistogramVec,
    /// Requests admitted and not yet answered by their engine (see the module table).
    pub inflight: IntGaugeVec,
    /// Bytes held by requests being read and decoded (the `--max-buffered-bytes` budget's use),
    /// set when scraped.
    pub buffered: IntGauge,
    /// Connections open on the HTTP and gRPC ports.
    pub connections: IntGauge,
    /// Requests whose client went away while they waited for their model's window: never run.
    pub skipped: IntCounterVec,
}

/// Stage buckets from 10 µs to about 10.5 s (21 powers of two).
fn stage_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(10e-6, 2.0, 21).unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec())
}

/// Latency buckets from 50 µs to about 6.5 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(50e-6, 2.0, 18).unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec())
}

impl Metrics {
    /// Registers the series. Errors only on a programming mistake (a duplicate name).
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tch_streams_requests_total", "Inference requests answered, by model, protocol and outcome"),
            &["model", "protocol", "outcome"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("tch_streams_request_duration_seconds", "Request body received to answer encoded").buckets(latency_buckets()),
            &["model", "protocol"],
        )?;
        let engine_seconds = HistogramVec::new(
            HistogramOpts::new("tch_streams_engine_duration_seconds", "Submitted to the engine until answered: queue plus compute").buckets(latency_buckets()),
            &["model"],
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("tch_streams_request_stage_seconds", "Seconds of each stage of a successful request: decode, admission, engine, encode").buckets(stage_buckets()),
            &["model", "protocol", "stage"],
        )?;
        let inflight = IntGaugeVec::new(Opts::new("tch_streams_inflight_requests", "Inference requests admitted and not yet answered by the engine (waiting for the model's window, queued or running); a request leaves before its answer is encoded and its outcome counted"), &["model"])?;
        let buffered = IntGauge::new("tch_streams_buffered_bytes", "Bytes held by request bodies being read and the tensors decoded from them")?;
        let connections = IntGauge::new("tch_streams_open_connections", "Connections open on the HTTP and gRPC ports")?;
        registry.register(Box::new(buffered.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        let skipped = IntCounterVec::new(
            Opts::new("tch_streams_skipped_requests_total", "Requests whose client went away (timeout, disconnect, cancellation) before they reached the engine: never run"),
            &["model"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(engine_seconds.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        Ok(Metrics { registry, requests, request_seconds, engine_seconds, stage_seconds, inflight, buffered, connections, skipped })
    }

    /// Registers the engine-side series of `models` (an [`EngineCollector`]). Errors only on a
    /// programming mistake (a name registered twice, e.g. by a second call).
    pub fn watch(&self, models: Vec<Arc<ServedModel>>) -> prometheus::Result<()> {
        self.registry.register(Box::new(EngineCollector::new(models)?))
    }

    /// The series every request of `model` updates, their labels resolved now (see
    /// [`ModelSeries`]); `protocols` are the protocol labels, in the order their series are kept.
    pub fn series_of(&self, model: &str, protocols: [&str; 2]) -> ModelSeries {
        let by_protocol = protocols.map(|p| ProtocolSeries {
            succeeded: self.requests.with_label_values(&[model, p, "success"]),
            request_seconds: self.request_seconds.with_label_values(&[model, p]),
            stages: STAGES.map(|st| self.stage_seconds.with_label_values(&[model, p, st])),
        });
        ModelSeries {
            inflight: self.inflight.with_label_values(&[model]),
            skipped: self.skipped.with_label_values(&[model]),
            engine_seconds: self.engine_seconds.with_label_values(&[model]),
            by_protocol,
        }
    }

    /// The text exposition of every registered series, the engine-side ones read now.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One served model's request-side series, their labels resolved once at start-up: what each of
/// its requests updates, without the label lookup (a hash of the labels and a shared lock) that
/// every `with_label_values` costs. Handles to the same series as the families in [`Metrics`]:
/// a scrape shows their updates. Shared by every runtime thread (the handles are atomics).
pub struct ModelSeries {
    /// `tch_streams_inflight_requests{model}`.
    pub inflight: IntGauge,
    /// `tch_streams_skipped_requests_total{model}`.
    pub skipped: IntCounter,
    /// `tch_streams_engine_duration_seconds{model}`.
    pub engine_seconds: prometheus::Histogram,
    /// Per protocol, in the order given to [`Metrics::series_of`].
    pub by_protocol: [ProtocolSeries; 2],
}

/// One model's series of one protocol (see [`ModelSeries`]).
pub struct ProtocolSeries {
    /// `tch_streams_requests_total{model,protocol,outcome="success"}`: the other outcomes are
    /// rare and looked up when they happen.
    pub succeeded: IntCounter,
    /// `tch_streams_request_duration_seconds{model,protocol}`.
    pub request_seconds: prometheus::Histogram,
    /// `tch_streams_request_stage_seconds{model,protocol,stage}`, in [`STAGES`] order.
    pub stages: [prometheus::Histogram; 4],
}

/// The engine families of every served model, each with its name, help and labels fixed here:
/// (name, help, labels).
const ENGINE_SERIES: [(&str, &str, &[&str]); 6] = [
    ("tch_streams_engine_requests_total", "Engine requests by result, client requests only", &["model", "result"]),
    ("tch_streams_engine_latency_microseconds", "Engine latency (queue plus compute) quantiles since start", &["model", "quantile"]),
    ("tch_streams_queue_microseconds", "Engine queue time quantiles since start: submitted until a worker began the request's batch", &["model", "quantile"]),
    ("tch_streams_compute_microseconds", "Engine compute time quantiles since start: the batch's begin until the answer", &["model", "quantile"]),
    ("tch_streams_batch_size", "Requests per batch the engine ran", &["model"]),
    ("tch_streams_workers", "Engine worker threads per device", &["model", "device"]),
];

/// A prometheus collector of the engines' own statistics: on each scrape it reads every
/// model's [`Engine::stats`](tch_streams::engine::Engine::stats) (minus the model's baseline)
/// and its workers. Its descriptors are `ENGINE_SERIES`; a family with no sample yet (no
/// latency before the first request) is left out of the scrape.
pub struct EngineCollector {
    models: Vec<Arc<ServedModel>>,
    descs: Vec<Desc>,
}

impl EngineCollector {
    /// The collector of `models`' engines.
    pub fn new(models: Vec<Arc<ServedModel>>) -> prometheus::Result<EngineCollector> {
        let descs = ENGINE_SERIES
            .iter()
            .map(|(name, help, labels)| Desc::new(name.to_string(), help.to_string(), labels.iter().map(|l| l.to_string()).collect(), Default::default()))
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(EngineCollector { models, descs })
    }
}

impl Collector for EngineCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let models: Vec<&ServedModel> = self.models.iter().map(Arc::as_ref).collect();
        // The encoder refuses a family without samples (e.g. no latency yet).
        engine_families(&models).into_iter().filter(|f| !f.get_metric().is_empty()).collect()
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// Engine counters, latency quantiles, the batch-size histogram and worker counts, since the
/// probe.
fn engine_families(models: &[&ServedModel]) -> Vec<MetricFamily> {
    let (mut counts, mut quantiles, mut batches, mut workers) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut queue, mut compute) = (Vec::new(), Vec::new());
    for m in models {
        let s = m.engine.stats();
        let b = &m.baseline;
        for (result, now, then) in [
            ("submitted", s.submitted, b.submitted),
            ("completed", s.completed, b.completed),
            ("failed", s.failed, b.failed),
            ("cancelled", s.cancelled, b.cancelled),
        ] {
            counts.push(counter(vec![label("model", &m.name), label("result", result)], now.saturating_sub(then) as f64));
        }
        for (q, v) in [("0.5", s.latency_us_p50), ("0.95", s.latency_us_p95), ("0.99", s.latency_us_p99)] {
            if let Some(v) = v {
                quantiles.push(gauge(vec![label("model", &m.name), label("quantile", q)], v as f64));
            }
        }
        for (q, qv, cv) in [("0.5", s.queue_us_p50, s.compute_us_p50), ("0.99", s.queue_us_p99, s.compute_us_p99)] {
            if let Some(v) = qv {
                queue.push(gauge(vec![label("model", &m.name), label("quantile", q)], v as f64));
            }
            if let Some(v) = cv {
                compute.push(gauge(vec![label("model", &m.name), label("quantile", q)], v as f64));
            }
        }
        // Batch sizes since the probe, as a cumulative histogram over powers of two.
        let mut sizes: BTreeMap<usize, u64> = s.batch_sizes.clone();
        for (k, v) in &b.batch_sizes {
            if let Some(x) = sizes.get_mut(k) {
                *x = x.saturating_sub(*v);
            }
        }
        let largest = sizes.keys().last().copied().unwrap_or(1).max(1);
        let mut bounds = vec![1usize];
        while *bounds.last().unwrap_or(&1) < largest {
            let next = bounds.last().unwrap_or(&1) * 2;
            bounds.push(next);
        }
        let mut h = Histogram::default();
        h.set_sample_count(sizes.values().sum());
        h.set_sample_sum(sizes.iter().map(|(k, v)| (*k as u64 * v) as f64).sum());
        h.set_bucket(
            bounds
                .iter()
                .map(|&ub| {
                    let mut bk = Bucket::default();
                    bk.set_upper_bound(ub as f64);
                    bk.set_cumulative_count(sizes.range(..=ub).map(|(_, v)| v).sum());
                    bk
                })
                .collect(),
        );
        let mut metric = Metric::from_label(vec![label("model", &m.name)]);
        metric.set_histogram(h);
        batches.push(metric);
        let mut per_device: BTreeMap<String, u64> = BTreeMap::new();
        for w in m.engine.workers() {
            *per_device.entry(format!("{:?}", w.device).to_lowercase()).or_default() += 1;
        }
        for (device, n) in per_device {
            workers.push(gauge(vec![label("model", &m.name), label("device", &device)], n as f64));
        }
    }
    let kinds = [MetricType::COUNTER, MetricType::GAUGE, MetricType::GAUGE, MetricType::GAUGE, MetricType::HISTOGRAM, MetricType::GAUGE];
    let samples = [counts, quantiles, queue, compute, batches, workers];
    ENGINE_SERIES.iter().zip(kinds).zip(samples).map(|(((name, help, _), kind), metrics)| family(name, help, kind, metrics)).collect()
}
