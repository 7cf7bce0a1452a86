//! Prometheus metrics. Counters that code anywhere adds to live in one
//! process-wide set ([`global`]); what a daemon already counts for itself
//! (ServeTarget, garbage collection) and what is measured (the build root,
//! the process) is read when scraped ([`Scrape`]). http.rs serves them.

pub mod http;
pub mod layer;
mod process;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::digest::HashFunction;

/// A gRPC method and the status code it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: &'static str,
    pub code: &'static str,
}

/// A gRPC method (of jserve's services, or of the associated endpoint).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

/// A SourceTree RPC and the status of its answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcStatus {
    pub rpc: &'static str,
    pub status: &'static str,
}

/// Objects moving through the CAS: `in` (uploaded to jserve) or `out`
/// (read from it), in `native` or `compatible` mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transfer {
    pub direction: &'static str,
    pub hash: &'static str,
}

impl Transfer {
    pub fn new(direction: &'static str, hash: HashFunction) -> Transfer {
        Transfer {
            direction,
            hash: if hash.is_native() {
                "native"
            } else {
                "compatible"
            },
        }
    }
}

/// How an executed action ended: `executed` (ran, exit 0), `failed` (ran,
/// nonzero exit, or could not run), `cached` (answered from the action cache).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionOutcome {
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Counters of the shared cache, by fact kind and outcome.
pub type FactFamily = Family<crate::shared_cache::FactOutcome, Counter>;

/// Seconds from 100 µs up to about 7 minutes, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 23))
}

/// Build durations, 10 ms up to about 3 hours.
pub fn build_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// The process-wide counters.
pub struct Global {
    pub grpc_requests: Family<MethodCode, Counter>,
    pub grpc_duration: HistogramFamily<Method>,
    pub source_tree_answers: Family<RpcStatus, Counter>,
    pub archives_unpacked: Counter,
    pub archive_bytes: Counter,
    pub archive_entries: Counter,
    pub actions: Family<ActionOutcome, Counter>,
    pub actions_running: Gauge,
    pub actions_queued: Gauge,
    pub cas_bytes: Family<Transfer, Counter>,
    pub cas_blobs: Family<Transfer, Counter>,
    pub endpoint_calls: Family<Method, Counter>,
    pub endpoint_errors: Family<Method, Counter>,
    pub endpoint_retries: Family<Method, Counter>,
    /// Shared-cache look-ups and records by fact kind and outcome.
    pub shared_cache_lookups: FactFamily,
    pub shared_cache_records: FactFamily,
    /// gRPC requests answered, all methods together.
    pub requests_answered: std::sync::atomic::AtomicU64,
    started: SystemTime,
    methods: OnceLock<std::collections::HashMap<&'static str, MethodMetrics>>,
}

/// The metrics of one gRPC method, looked up once: its duration histogram
/// and its counter for each status code (created when first used, so only
/// codes that happened are exported).
pub struct MethodMetrics {
    pub name: &'static str,
    pub duration: Histogram,
    by_code: [OnceLock<Counter>; 18],
}

impl MethodMetrics {
    /// The counter of answers with `code` (`None`: the client went away).
    pub fn requests(&self, code: Option<tonic::Code>) -> &Counter {
        // Slot 17 is for CANCELLED by the client (no code was sent).
        let slot = code.map_or(17, |c| (c as usize).min(16));
        self.by_code[slot].get_or_init(|| {
            global()
                .grpc_requests
                .get_or_create(&MethodCode {
                    method: self.name,
                    code: code.map_or("CANCELLED", code_name),
                })
                .clone()
        })
    }
}

/// The name gRPC gives a code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The process-wide counters, created on first use.
pub fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| Global {
        grpc_requests: Family::default(),
        grpc_duration: Family::new_with_constructor(latency_buckets),
        source_tree_answers: Family::default(),
        archives_unpacked: Counter::default(),
        archive_bytes: Counter::default(),
        archive_entries: Counter::default(),
        actions: Family::default(),
        actions_running: Gauge::default(),
        actions_queued: Gauge::default(),
        cas_bytes: Family::default(),
        cas_blobs: Family::default(),
        endpoint_calls: Family::default(),
        endpoint_errors: Family::default(),
        endpoint_retries: Family::default(),
        shared_cache_lookups: Family::default(),
        shared_cache_records: Family::default(),
        requests_answered: std::sync::atomic::AtomicU64::new(0),
        started: SystemTime::now(),
        methods: OnceLock::new(),
    })
}

impl Global {
    /// When the daemon started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The metrics of the method at `path`; those of `other` for a path
    /// jserve does not serve, so that clients cannot make up labels.
    pub fn method(&self, path: &str) -> &MethodMetrics {
        let methods = self.methods.get_or_init(|| {
            known_methods()
                .into_iter()
                .chain(["other"])
                .map(|name| {
                    let metrics = MethodMetrics {
                        name,
                        duration: self
                            .grpc_duration
                            .get_or_create(&Method { method: name })
                            .clone(),
                        by_code: Default::default(),
                    };
                    (name, metrics)
                })
                .collect()
        });
        methods.get(path).unwrap_or_else(|| &methods["other"])
    }

    /// Counts a CAS transfer of `blobs` objects, `bytes` in all.
    pub fn cas_transfer(
        &self,
        direction: &'static str,
        hash: HashFunction,
        blobs: u64,
        bytes: u64,
    ) {
        let labels = Transfer::new(direction, hash);
        self.cas_blobs.get_or_create(&labels).inc_by(blobs);
        self.cas_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Counts one call to the associated endpoint, and whether it failed.
    pub fn endpoint_call(&self, method: &'static str, failed: bool) {
        let labels = Method { method };
        self.endpoint_calls.get_or_create(&labels).inc();
        if failed {
            self.endpoint_errors.get_or_create(&labels).inc();
        }
    }
}

/// Every method of the services jserve can serve, from the descriptors
/// gRPC reflection serves.
fn known_methods() -> HashSet<&'static str> {
    use prost::Message;
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    let path = format!("/{package}.{name}/{}", method.name.unwrap_or_default());
                    // A fixed set, made once: leaking it gives static labels.
                    methods.insert(&*Box::leak(path.into_boxed_str()));
                }
            }
        }
    }
    methods
}

/// What one daemon counts for itself, read when scraped.
#[derive(Clone, Default)]
pub struct Scrape {
    pub target: Option<Arc<crate::targets::TargetStats>>,
    pub gc: Option<Arc<crate::storage::gc::collector::GcStats>>,
    /// The build root, measured every [`MEASURE_EVERY`] by the listener.
    pub root: Option<crate::storage::BuildRoot>,
    usage: Arc<Mutex<Option<Measured>>>,
}

/// The build root as last measured.
#[derive(Clone, Debug)]
struct Measured {
    at: std::time::Instant,
    /// By store and generation.
    stores: std::collections::BTreeMap<(&'static str, usize), crate::storage::gc::usage::Part>,
    staging: crate::storage::gc::usage::Part,
}

/// How often the metrics listener measures the build root.
pub(crate) const MEASURE_EVERY: Duration = Duration::from_secs(60);

impl Scrape {
    pub fn new(
        target: Option<Arc<crate::targets::TargetStats>>,
        gc: Option<Arc<crate::storage::gc::collector::GcStats>>,
        root: Option<crate::storage::BuildRoot>,
    ) -> Scrape {
        Scrape {
            target,
            gc,
            root,
            usage: Arc::default(),
        }
    }

    /// Measures the build root (a walk of the whole root: on the blocking
    /// pool); scrapes report the last measurement.
    pub async fn measure(&self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        let measured = tokio::task::spawn_blocking(move || {
            use crate::storage::gc::usage::{measure_dir, measure_stores};
            Measured {
                stores: measure_stores(&root),
                staging: measure_dir(&root.tmp_dir()),
                at: std::time::Instant::now(),
            }
        })
        .await;
        if let Ok(measured) = measured {
            *self.usage.lock().expect("usage lock") = Some(measured);
        }
    }

    /// Measures unless the last measurement is younger than `age`.
    pub async fn measure_unless_younger(&self, age: Duration) {
        let fresh = self
            .usage
            .lock()
            .expect("usage lock")
            .as_ref()
            .is_some_and(|m| m.at.elapsed() < age);
        if !fresh {
            self.measure().await;
        }
    }

    /// The build root's disk use at the last measurement (stores and
    /// staging), and how long ago that was.
    pub fn last_usage(&self) -> Option<(u64, Duration)> {
        self.usage.lock().expect("usage lock").as_ref().map(|m| {
            let stores: u64 = m.stores.values().map(|p| p.bytes).sum();
            (stores + m.staging.bytes, m.at.elapsed())
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let g = global();
        let mut registry = Registry::with_prefix("jserve");
        registry.register(
            "grpc_requests",
            "gRPC requests answered, by method and status code",
            g.grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a gRPC request's arrival to the end of its answer",
            g.grpc_duration.clone(),
        );
        registry.register(
            "source_tree_answers",
            "SourceTree answers, by RPC and answer status",
            g.source_tree_answers.clone(),
        );
        registry.register(
            "archives_unpacked",
            "Archives unpacked into the git cache",
            g.archives_unpacked.clone(),
        );
        registry.register(
            "archive_inflated_bytes",
            "Bytes of file content unpacked from archives",
            g.archive_bytes.clone(),
        );
        registry.register(
            "archive_entries",
            "Entries unpacked from archives",
            g.archive_entries.clone(),
        );
        registry.register(
            "actions",
            "Actions by outcome: executed, failed, or cached (answered from the action cache)",
            g.actions.clone(),
        );
        registry.register(
            "actions_running",
            "Actions running now",
            g.actions_running.clone(),
        );
        registry.register(
            "actions_queued",
            "Actions waiting for a slot now",
            g.actions_queued.clone(),
        );
        registry.register(
            "cas_bytes",
            "Bytes uploaded to (in) and read from (out) jserve's CAS, by hash mode",
            g.cas_bytes.clone(),
        );
        registry.register(
            "cas_blobs",
            "Objects uploaded to (in) and read from (out) jserve's CAS, by hash mode",
            g.cas_blobs.clone(),
        );
        registry.register(
            "endpoint_calls",
            "Calls to the associated endpoint, by method (attempts, retries included)",
            g.endpoint_calls.clone(),
        );
        registry.register(
            "endpoint_errors",
            "Failed calls to the associated endpoint, by method",
            g.endpoint_errors.clone(),
        );
        registry.register(
            "endpoint_retries",
            "Calls to the associated endpoint made again after a failure, by method",
            g.endpoint_retries.clone(),
        );
        registry.register(
            "shared_cache_lookups",
            "Look-ups in the shared cache at the endpoint, by fact kind and outcome \
             (hit, miss, malformed, error)",
            g.shared_cache_lookups.clone(),
        );
        registry.register(
            "shared_cache_records",
            "Facts recorded in the shared cache at the endpoint, by fact kind and outcome \
             (recorded, refused, error)",
            g.shared_cache_records.clone(),
        );
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// Writes one metric without labels.
fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let counter = |v: &std::sync::atomic::AtomicU64| ConstCounter::new(v.load(Relaxed));
        if let Some(t) = &self.target {
            for (name, help, value) in [
                (
                    "serve_target_requests",
                    "ServeTarget requests.",
                    &t.requests,
                ),
                (
                    "serve_target_hits",
                    "ServeTarget answers from the target cache.",
                    &t.hits,
                ),
                (
                    "serve_target_misses",
                    "ServeTarget requests not in the target cache.",
                    &t.misses,
                ),
                (
                    "serve_target_builds",
                    "ServeTarget misses analysed and built.",
                    &t.builds,
                ),
                (
                    "serve_target_failures",
                    "ServeTarget requests without a value: errors and failed builds.",
                    &t.failures,
                ),
                (
                    "serve_target_shared",
                    "ServeTarget requests that joined an identical one's computation.",
                    &t.shared,
                ),
            ] {
                one(&mut encoder, name, help, &counter(value))?;
            }
            // Where each computation's answer came from (the hits above,
            // split by cache; a miss is analysed and built).
            let shared_hits = t.shared_hits.load(Relaxed);
            let outcomes = &mut encoder.encode_descriptor(
                "serve_target_outcomes",
                "ServeTarget look-ups by outcome: local_hit (the replica's own cache), \
                 shared_hit (the shared cache at the endpoint), miss.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (outcome, value) in [
                (
                    "local_hit",
                    t.hits.load(Relaxed).saturating_sub(shared_hits),
                ),
                ("shared_hit", shared_hits),
                ("miss", t.misses.load(Relaxed)),
            ] {
                ConstCounter::new(value)
                    .encode(outcomes.encode_family(&[("outcome", outcome)])?)?;
            }
            one(
                &mut encoder,
                "serve_target_builds_running",
                "ServeTarget misses being analysed and built now.",
                &ConstGauge::new(t.builds_running.load(Relaxed) as i64),
            )?;
            one(
                &mut encoder,
                "serve_target_build_seconds",
                "Time to analyse and build a ServeTarget miss.",
                &t.build_seconds,
            )?;
        }
        if let Some(gc) = &self.gc {
            for (name, help, value) in [
                (
                    "gc_runs",
                    "Garbage collections (rotations of the build root).",
                    &gc.rotations,
                ),
                (
                    "gc_removed_bytes",
                    "Bytes removed by garbage collection.",
                    &gc.bytes_removed,
                ),
                (
                    "gc_removed_objects",
                    "Files removed by garbage collection.",
                    &gc.files_removed,
                ),
            ] {
                one(&mut encoder, name, help, &counter(value))?;
            }
        }
        if let Some(measured) = self.usage.lock().expect("usage lock").as_ref() {
            let mut metric_encoder = encoder.encode_descriptor(
                "build_root_bytes",
                "Disk use of the build root by store (cas, action-cache, target-cache, git-cache, \
                 source-maps, maps) and generation, and of staging (store staging, no generation).",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for ((store, generation), part) in &measured.stores {
                let generation = generation.to_string();
                let labels = [("store", *store), ("generation", generation.as_str())];
                ConstGauge::new(part.bytes as i64)
                    .encode(metric_encoder.encode_family(&labels)?)?;
            }
            let labels = [("store", "staging"), ("generation", "")];
            ConstGauge::new(measured.staging.bytes as i64)
                .encode(metric_encoder.encode_family(&labels)?)?;
        }
        let p = process::sample();
        let e = &mut encoder;
        one(
            e,
            "process_resident_memory_bytes",
            "Resident memory.",
            &ConstGauge::new(p.resident_bytes as i64),
        )?;
        one(
            e,
            "process_open_fds",
            "Open file descriptors.",
            &ConstGauge::new(p.open_fds as i64),
        )?;
        let started = global()
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        one(
            e,
            "process_start_time_seconds",
            "Start of the process, seconds since the Unix epoch.",
            &ConstGauge::new(started),
        )?;
        Ok(())
    }
}
