//! The Prometheus metrics (`"metrics"`), scraped over HTTP after a known
//! sequence of requests and read with the official Prometheus client's
//! OpenMetrics parser (Python `prometheus_client`): each counter has the
//! value the sequence gives it. One test function, so that no other test in
//! this process adds to the process-wide counters meanwhile.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::clients::SourceTree;
use common::reapi::response_of;
use common::{config_in, loc};
use jserve::digest::HashFunction;
use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::target_client::TargetClient;
use jserve::proto::*;
use serde_json::json;

/// One sample: metric name and labels.
type Key = (String, BTreeMap<String, String>);

/// A scrape, parsed: every sample's value.
struct Samples(BTreeMap<Key, f64>);

impl Samples {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let key = (name.to_string(), labels);
        *self
            .0
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key:?}"))
    }

    /// The value, 0 when the sample is not there (yet).
    fn or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

/// The parser, given the exposition on stdin: one JSON sample a line.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([s.name, s.labels, s.value]))
"#;

/// A Python with `prometheus_client` (the one on PATH, or the system's,
/// where Debian's python3-prometheus-client goes).
fn parser_python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn scrape(addr: SocketAddr) -> Samples {
    let (status, content_type, body) = common::http::get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let python = parser_python().expect("checked at the start");
    let mut parse = std::process::Command::new(python);
    parse.args(["-c", PARSE]);
    let out = common::procs::output_with_stdin(&mut parse, body.as_bytes());
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (name, labels, value): (String, BTreeMap<String, String>, f64) =
            serde_json::from_str(line).unwrap();
        samples.insert((name, labels), value);
    }
    Samples(samples)
}

const TARGETS: &str = r#"{
  "one": {"type": "export", "target": "one-gen"},
  "one-gen": {"type": "generic", "outs": ["o"], "cmds": ["echo one > o"]},
  "failing": {"type": "export", "target": "bad"},
  "bad": {"type": "generic", "outs": ["x"], "cmds": ["exit 3"]}
}"#;

const SERVE_TARGET: &str = "/justbuild.just_serve.Target/ServeTarget";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_after_a_known_sequence() {
    if parser_python().is_none() {
        common::procs::skip("python3 with prometheus_client not found");
        return;
    }
    let started = std::time::SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("TARGETS"), TARGETS).unwrap();
    let (commit, tree) = common::git::commit_all(&repo);
    let hash = HashFunction::GitSha1;
    let config = config_in(
        dir.path(),
        json!({"repositories": [loc(&repo)], "metrics": {"port": 0}}),
    );
    let (ctx, endpoint) = common::start_serve(&config, hash).await;
    let addr = endpoint.server.metrics_addr.expect("metrics served");

    // Not found elsewhere; only GET.
    assert!(common::http::get(addr, "/").0.contains(" 404 "));

    // The build root is measured in the background from the start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let s = scrape(addr);
        let staging = [("store", "staging"), ("generation", "")];
        if s.or_zero("jserve_build_root_bytes", &staging) > 0.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the build root is never measured"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // ServeTarget: a miss built, the same again (a hit), a failing build.
    let mut target = TargetClient::new(endpoint.channel.clone());
    let one = common::targets::request(&endpoint, &tree, "one", json!({})).await;
    common::targets::ask(&mut target, &one).await;
    common::targets::ask(&mut target, &one).await;
    let failing = common::targets::request(&endpoint, &tree, "failing", json!({})).await;
    let r = target.serve_target(failing).await.unwrap().into_inner();
    assert!(r.log.is_some(), "the failing export answers with a log");

    // SourceTree: a known and an unknown commit, an archive.
    let mut sources = SourceTree::new(endpoint.channel.clone());
    assert_eq!(sources.commit_tree(&commit, ".", false).await.status, 0);
    let unknown = sources.commit_tree("0".repeat(40), ".", false).await;
    assert_eq!(
        unknown.status,
        serve_commit_tree_response::ServeCommitTreeStatus::NotFound as i32
    );
    let files = [("a.txt", "alpha\n"), ("d/b.txt", "beta beta\n")];
    let archive = tar_gz(&files);
    let content = endpoint.upload_blob(&archive).await;
    let r = sources
        .archive_tree(
            &content.hash[2..],
            ArchiveType::Tar,
            ".",
            SymlinksResolve::None,
            false,
        )
        .await;
    assert_eq!(r.status, 0);

    // An unknown method.
    let mut grpc = tonic::client::Grpc::new(endpoint.channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/nope.Nope/Nope");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let status = grpc
        .unary(tonic::Request::new(()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // Execute straight at the endpoint: run, then from the action cache.
    let empty = endpoint.upload_tree(&BTreeMap::new()).await;
    let action = endpoint
        .action(&empty, &["sh", "-c", "echo x > out"], &["out"], 60, false)
        .await;
    assert!(!response_of(&endpoint.execute(&action, false).await).cached_result);
    assert!(response_of(&endpoint.execute(&action, false).await).cached_result);

    // CAS traffic of known size: three blobs in, two read back in a batch,
    // one through ByteStream.
    let cas_before = scrape(addr);
    let blobs: Vec<Vec<u8>> = [11usize, 222, 3333]
        .iter()
        .map(|n| vec![b'c'; *n])
        .collect();
    let mut digests = Vec::new();
    for b in &blobs {
        digests.push(endpoint.blob_digest(b));
    }
    let pairs: Vec<(&reapi::Digest, &[u8])> = digests
        .iter()
        .zip(&blobs)
        .map(|(d, b)| (d, b.as_slice()))
        .collect();
    endpoint.upload(&pairs).await;
    let read = endpoint
        .cas()
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: digests[..2].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses.len(), 2);
    assert_eq!(endpoint.read_blob(&digests[2]).await, blobs[2]);
    let cas_after = scrape(addr);
    let delta = |name: &str, direction: &str| {
        let labels = [("direction", direction), ("hash", "native")];
        cas_after.or_zero(name, &labels) - cas_before.or_zero(name, &labels)
    };
    assert_eq!(delta("jserve_cas_blobs_total", "in"), 3.0);
    assert_eq!(delta("jserve_cas_bytes_total", "in"), 3566.0);
    assert_eq!(delta("jserve_cas_blobs_total", "out"), 3.0);
    assert_eq!(delta("jserve_cas_bytes_total", "out"), 3566.0);

    let s = scrape(addr);
    // ServeTarget.
    assert_eq!(s.get("jserve_serve_target_requests_total", &[]), 3.0);
    assert_eq!(s.get("jserve_serve_target_hits_total", &[]), 1.0);
    assert_eq!(s.get("jserve_serve_target_misses_total", &[]), 2.0);
    assert_eq!(s.get("jserve_serve_target_builds_total", &[]), 2.0);
    assert_eq!(s.get("jserve_serve_target_failures_total", &[]), 1.0);
    assert_eq!(s.get("jserve_serve_target_shared_total", &[]), 0.0);
    let outcome = |o| s.get("jserve_serve_target_outcomes_total", &[("outcome", o)]);
    assert_eq!(
        (outcome("local_hit"), outcome("shared_hit"), outcome("miss")),
        (1.0, 0.0, 2.0)
    );
    assert_eq!(s.get("jserve_serve_target_build_seconds_count", &[]), 2.0);
    // Per gRPC method and status code, with a duration for each.
    let ok = |method: &str| {
        s.get(
            "jserve_grpc_requests_total",
            &[("method", method), ("code", "OK")],
        )
    };
    assert_eq!(ok(SERVE_TARGET), 3.0);
    assert_eq!(ok("/justbuild.just_serve.SourceTree/ServeCommitTree"), 2.0);
    assert_eq!(ok("/justbuild.just_serve.SourceTree/ServeArchiveTree"), 1.0);
    assert_eq!(
        s.get(
            "jserve_grpc_requests_total",
            &[("method", "other"), ("code", "UNIMPLEMENTED")]
        ),
        1.0
    );
    assert_eq!(
        s.get(
            "jserve_grpc_request_duration_seconds_count",
            &[("method", SERVE_TARGET)]
        ),
        3.0
    );
    // SourceTree answers by status.
    let answers = |rpc: &str, status: &str| {
        s.get(
            "jserve_source_tree_answers_total",
            &[("rpc", rpc), ("status", status)],
        )
    };
    assert_eq!(answers("ServeCommitTree", "OK"), 1.0);
    assert_eq!(answers("ServeCommitTree", "NOT_FOUND"), 1.0);
    assert_eq!(answers("ServeArchiveTree", "OK"), 1.0);
    assert_eq!(s.get("jserve_archives_unpacked_total", &[]), 1.0);
    // Two files and the directory d.
    assert_eq!(s.get("jserve_archive_entries_total", &[]), 3.0);
    assert_eq!(s.get("jserve_archive_inflated_bytes_total", &[]), 16.0);
    // Actions: "one" and the direct one ran, "bad" failed, one came from the cache.
    let actions = |outcome: &str| s.get("jserve_actions_total", &[("outcome", outcome)]);
    assert_eq!(actions("executed"), 2.0);
    assert_eq!(actions("failed"), 1.0);
    assert_eq!(actions("cached"), 1.0);
    assert_eq!(s.get("jserve_actions_running", &[]), 0.0);
    assert_eq!(s.get("jserve_actions_queued", &[]), 0.0);
    // No collection ran; the process; the build root grew.
    assert_eq!(s.get("jserve_gc_runs_total", &[]), 0.0);
    assert_eq!(s.get("jserve_gc_removed_bytes_total", &[]), 0.0);
    assert!(s.get("jserve_process_resident_memory_bytes", &[]) > 1e6);
    assert!(s.get("jserve_process_open_fds", &[]) >= 3.0);
    let start = s.get("jserve_process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let test_start = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start <= now && start >= test_start - 5.0, "{start}");
    // The build root by store and generation, as measured at the start.
    let stores: Vec<&BTreeMap<String, String>> = before
        .0
        .keys()
        .filter(|(name, _)| name == "jserve_build_root_bytes")
        .map(|(_, labels)| labels)
        .collect();
    assert!(!stores.is_empty());
    for labels in stores {
        let store = labels["store"].as_str();
        let known = [
            "cas",
            "action-cache",
            "target-cache",
            "git-cache",
            "source-maps",
            "maps",
            "staging",
        ];
        assert!(known.contains(&store), "{labels:?}");
        assert!(
            ["0", "1", ""].contains(&labels["generation"].as_str()),
            "{labels:?}"
        );
    }
    // The daemon's own counters are the ones exported.
    let [requests, _, hits, builds, ..] = ctx.target_stats.snapshot();
    assert_eq!((requests, hits, builds), (3, 1, 2));

    endpoint_counters().await;
    endpoint.server.shutdown().await.unwrap();
}

/// Calls to an external endpoint, its errors and retries: a sync while it
/// is up, and one after it stopped (two attempts, the second a retry).
async fn endpoint_counters() {
    let hash = HashFunction::GitSha1;
    let external = common::reapi::start_execute(hash, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("f"), "first\n").unwrap();
    let (first, _) = common::git::commit_all(&repo);
    std::fs::write(repo.join("f"), "second\n").unwrap();
    common::git::git(&repo, &["commit", "-q", "-am", "second"]);
    let second = common::git::git(&repo, &["rev-parse", "HEAD"]);
    let address = format!("127.0.0.1:{}", external.server.addr.port());
    let config = config_in(
        dir.path(),
        json!({"repositories": [loc(&repo)], "metrics": {"port": 0},
               "execution endpoint": {"address": address},
               "max-attempts": 2, "initial-backoff-seconds": 0.01,
               "max-backoff-seconds": 0.02}),
    );
    let (_ctx, serve) = common::start_serve(&config, hash).await;
    let addr = serve.server.metrics_addr.unwrap();
    let calls = |s: &Samples, what: &str, method: &str| {
        s.or_zero(
            &format!("jserve_endpoint_{what}_total"),
            &[("method", method)],
        )
    };
    let before = scrape(addr);
    let mut sources = SourceTree::new(serve.channel.clone());
    assert_eq!(sources.commit_tree(&first, ".", true).await.status, 0);
    let up = scrape(addr);
    assert_eq!(
        calls(&up, "calls", "FindMissingBlobs") - calls(&before, "calls", "FindMissingBlobs"),
        1.0,
        "one FindMissingBlobs for the tree and its blob"
    );
    assert!(calls(&up, "calls", "BatchUpdateBlobs") > calls(&before, "calls", "BatchUpdateBlobs"));
    assert_eq!(
        calls(&up, "errors", "FindMissingBlobs"),
        calls(&before, "errors", "FindMissingBlobs")
    );

    external.server.shutdown().await.unwrap();
    let r = sources.commit_tree(second.trim(), ".", true).await;
    assert_eq!(
        r.status,
        serve_commit_tree_response::ServeCommitTreeStatus::SyncError as i32
    );
    let down = scrape(addr);
    let delta =
        |what: &str| calls(&down, what, "FindMissingBlobs") - calls(&up, what, "FindMissingBlobs");
    assert_eq!(delta("calls"), 2.0, "two attempts");
    assert_eq!(delta("errors"), 2.0);
    assert_eq!(delta("retries"), 1.0);
    serve.server.shutdown().await.unwrap();
}

/// A gzipped tar of `files` (path, content), directories named by the paths.
fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            dirs.insert(dir.to_string());
        }
    }
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, format!("{dir}/"), std::io::empty())
            .unwrap();
    }
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        tar.append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}
