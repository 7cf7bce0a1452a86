//! Garbage collection at scale: `jserve serve` in-process (its own
//! endpoint) on a build root of a million small objects, collected the way
//! the daemon's collector does it, while a client keeps asking for a
//! ServeTarget cache hit.
//!
//!   cargo bench --bench gc
//!
//! JSERVE_BENCH_GC_OBJECTS sets the number of objects (default 1,000,000);
//! scratch build roots go to `$TMPDIR`. Figures: the time to measure the
//! root, the time of the collection (measure, rotate, delete what was
//! dropped), the growth of the process's peak memory during it, and the hit
//! latency (p50/p99) before and during the collection.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::git::commit_all;
use common::reference::reference_just;
use common::targets::{ask, request};
use common::{config_in, loc};
use jserve::config::GcConfig;
use jserve::digest::{HashFunction, ObjectKind};
use jserve::proto::target_client::TargetClient;
use jserve::storage::gc::collector::{collect_once, rotate_and_delete, Plan, Reason};
use jserve::storage::gc::usage::{human, measure};
use serde_json::json;
use tonic::transport::Channel;

/// Peak resident memory of this process so far (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Latencies in 10 µs buckets up to 1 s (the last bucket takes the rest):
/// memory fixed up front, so that it does not count as the collection's.
struct Latencies(Vec<u32>);

const BUCKET_US: u128 = 10;
const BUCKETS: usize = 100_000;

impl Latencies {
    fn new() -> Latencies {
        Latencies(vec![0; BUCKETS])
    }

    fn add(&mut self, d: Duration) {
        let i = ((d.as_micros() / BUCKET_US) as usize).min(BUCKETS - 1);
        self.0[i] += 1;
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|&n| u64::from(n)).sum()
    }

    /// The `p` quantile in milliseconds (upper edge of its bucket).
    fn percentile(&self, p: f64) -> f64 {
        let want = ((self.count() as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.0.iter().enumerate() {
            seen += u64::from(n);
            if seen >= want {
                return ((i as u128 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// Writes `n` distinct small blobs straight into the CAS layout of
/// generation 0 (no fsync: setting up, not measuring).
fn populate(storage: &std::path::Path, n: usize) {
    let hash = HashFunction::GitSha1;
    let casf = storage.join("casf");
    for shard in 0..256 {
        std::fs::create_dir_all(casf.join(format!("{shard:02x}"))).unwrap();
    }
    for i in 0..n {
        let data = format!("gc bench object {i}");
        let id = hash.hash_bytes(ObjectKind::File, data.as_bytes());
        std::fs::write(casf.join(&id[..2]).join(&id[2..]), data).unwrap();
        if i % 100_000 == 99_999 {
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
}

/// Asks `request` until `stop` (or `at_most` times); the latencies.
async fn hits_until(
    mut client: TargetClient<Channel>,
    request: jserve::proto::ServeTargetRequest,
    stop: Arc<AtomicBool>,
    at_most: u64,
) -> Latencies {
    let mut times = Latencies::new();
    while !stop.load(Ordering::SeqCst) && times.count() < at_most {
        let t = Instant::now();
        ask(&mut client, &request).await;
        times.add(t.elapsed());
    }
    times
}

/// Seconds the rotation by `command` takes that drops `objects` objects:
/// written into a fresh `root`, rotated once into generation 1, then timed.
fn cli_drop(
    root: &std::path::Path,
    objects: usize,
    command: &dyn Fn(&std::path::Path) -> std::process::Command,
) -> f64 {
    populate(
        &root.join("protocol-dependent/generation-0/git-sha1"),
        objects,
    );
    let run = || {
        let out = command(root).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    run();
    let t = Instant::now();
    run();
    t.elapsed().as_secs_f64()
}

fn main() {
    let objects: usize = std::env::var("JSERVE_BENCH_GC_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("TARGETS"), common::targets::one_action_export()).unwrap();
        let (_, tree) = commit_all(&repo);

        let config = config_in(dir.path(), json!({"repositories": [loc(&repo)]}));
        let (ctx, endpoint) = common::start_serve(&config, HashFunction::GitSha1).await;
        let channel = endpoint.channel.clone();
        let one = request(&endpoint, &tree, "one", json!({})).await;
        ask(&mut TargetClient::new(channel.clone()), &one).await;

        let root = ctx.build_root.clone();
        let started = Instant::now();
        eprintln!("writing {objects} objects");
        populate(&root.storage_dir(HashFunction::GitSha1), objects);
        eprintln!("written in {:.1} s", started.elapsed().as_secs_f64());

        let baseline = hits_until(
            TargetClient::new(channel.clone()),
            one.clone(),
            Arc::default(),
            2000,
        )
        .await;

        let rss_before = peak_rss();
        let t = Instant::now();
        let usage = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || measure(&root))
                .await
                .unwrap()
        };
        let measured_in = t.elapsed();
        let rss_measure = peak_rss();

        // The objects into generation 1, as an earlier rotation would have
        // left them; the hit copies its entry forward again.
        let exclusive = ctx
            .gc
            .exclusive(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        let before = usage.clone();
        let r = root.clone();
        tokio::task::spawn_blocking(move || {
            let plan = Plan {
                rotations: 1,
                min_age: Duration::ZERO,
                delete_threads: 1,
            };
            rotate_and_delete(&r, exclusive, plan, Reason::Asked, before, Instant::now())
        })
        .await
        .unwrap()
        .unwrap();
        ask(&mut TargetClient::new(channel.clone()), &one).await;

        // The collection, with hits asked all along.
        let stop = Arc::new(AtomicBool::new(false));
        let asking = tokio::spawn(hits_until(
            TargetClient::new(channel.clone()),
            one.clone(),
            stop.clone(),
            u64::MAX,
        ));
        let gc = GcConfig {
            max_bytes: 1 << 20,
            interval: Duration::from_secs(60),
            min_age: Duration::ZERO,
        };
        let t = Instant::now();
        let (_, collection) = collect_once(&ctx.gc, &root, &gc).await.unwrap();
        let collected_in = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        let during = asking.await.unwrap();
        let collection = collection.expect("a collection");
        let rss_collect = peak_rss();

        println!("gc bench: {objects} objects of ~25 bytes in generation 1");
        println!(
            "  measure: {:.2} s for {} files, {} (peak RSS +{})",
            measured_in.as_secs_f64(),
            usage.stores().files,
            human(usage.stores().bytes),
            human(rss_measure.saturating_sub(rss_before))
        );
        println!(
            "  collection (measure, rotate, delete): {:.2} s; {} (peak RSS +{})",
            collected_in.as_secs_f64(),
            collection,
            human(rss_collect.saturating_sub(rss_measure))
        );
        println!(
            "  ServeTarget hit before: p50 {:.3} ms, p99 {:.3} ms ({} requests)",
            baseline.percentile(0.5),
            baseline.percentile(0.99),
            baseline.count()
        );
        println!(
            "  ServeTarget hit during: p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms ({} requests)",
            during.percentile(0.5),
            during.percentile(0.99),
            during.percentile(1.0),
            during.count()
        );
        endpoint.server.shutdown().await.unwrap();

        // Dropping the same number of objects from the command line, with
        // no other load: `jserve gc --rotate` and the reference's `just gc`.
        let jserve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
        let ours = cli_drop(&dir.path().join("jserve-root"), objects, &|root| {
            let mut cmd = std::process::Command::new(&jserve);
            cmd.args(["gc", "--rotate", "--min-age", "0", "--local-build-root"])
                .arg(root);
            cmd
        });
        println!("  `jserve gc --rotate` dropping {objects} objects: {ours:.2} s");
        if let Some(just) = reference_just() {
            let theirs = cli_drop(&dir.path().join("reference-root"), objects, &|root| {
                let mut cmd = std::process::Command::new(&just);
                cmd.args(["gc", "--local-build-root"]).arg(root);
                cmd
            });
            println!(
                "  reference `just gc` dropping {objects} objects: {theirs:.2} s (ratio {:.2})",
                ours / theirs
            );
        }
    });
}
