//! The gRPC CAS client against another REAPI implementation: a BuildGrid
//! server (`bgd`, pip package `buildgrid`) with an in-memory CAS in
//! compatible (SHA-256) mode. `bgd` is taken from `JSERVE_BGD` or `PATH`;
//! without it the test is skipped, except under CI.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::procs::{find_bgd, free_port, Group};

use jserve::config::{Address, RetryConfig};
use jserve::digest::{Digest, HashFunction, ObjectKind};
use jserve::remote::grpc::{GrpcCas, GrpcCasConfig};
use jserve::remote::RemoteCas;

const MIB: usize = 1 << 20;

/// In-memory CAS, ByteStream and action cache for the default instance.
const CONFIG: &str = r#"server:
  - !channel
    address: "127.0.0.1:PORT"
    insecure-mode: true
instances:
  - name: ''
    description: In-memory CAS and action cache.
    storages:
      - !lru-storage &cas-storage
        size: 256MB
    caches:
      - !lru-action-cache &ac
        storage: *cas-storage
        max-cached-refs: 10000
        allow-updates: true
    services:
      - !cas
        storage: *cas-storage
      - !bytestream
        storage: *cas-storage
      - !action-cache
        cache: *ac
"#;

/// `bgd server start` on the in-memory configuration, in its own process group.
fn start_buildgrid(bgd: &Path, dir: &Path, port: u16) -> Group {
    let config = dir.join("buildgrid.yml");
    std::fs::write(&config, CONFIG.replace("PORT", &port.to_string())).unwrap();
    let mut cmd = Command::new(bgd);
    cmd.args(["server", "start"]).arg(&config);
    Group::spawn(cmd, dir.join("bgd.log"))
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x2545_f491_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_with_buildgrid() {
    let Some(bgd) = find_bgd() else { return };
    let hf = HashFunction::Sha256;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start_buildgrid(&bgd, dir.path(), port);

    let mut config = GrpcCasConfig::new(
        Address {
            host: "127.0.0.1".into(),
            port,
        },
        "",
        hf,
    );
    config.retry = RetryConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    };
    // Wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let cas = loop {
        match GrpcCas::connect(config.clone()).await {
            Ok(cas) => break cas,
            Err(e) => {
                if let Some(status) = server.try_wait() {
                    panic!("bgd exited ({status}):\n{}", server.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "bgd does not answer: {e}\n{}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let limit = cas.max_batch_bytes().await.unwrap();
    assert!(limit > 0 && limit < 4 * MIB, "{limit}");

    let blobs: Vec<(Digest, Vec<u8>)> = [
        content(0, 0),
        content(10, 1),
        content(100_000, 2),
        content(1_500_000, 3),
        content(1_500_000, 4),
        // Larger than any batch: ByteStream.
        content(5 * MIB + 7, 5),
    ]
    .into_iter()
    .map(|data| (hf.digest_bytes(ObjectKind::File, &data), data))
    .collect();
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    let non_empty = digests[1..].to_vec();

    assert_eq!(
        cas.find_missing(non_empty.clone()).await.unwrap(),
        non_empty
    );
    cas.upload_blobs(blobs.clone()).await.unwrap();
    assert!(cas.find_missing(digests.clone()).await.unwrap().is_empty());
    for (d, data) in &blobs {
        assert_eq!(
            cas.read_blob(d).await.unwrap().as_deref(),
            Some(&data[..]),
            "{d}"
        );
    }
    let absent = hf.digest_bytes(ObjectKind::File, b"not in BuildGrid");
    assert_eq!(cas.read_blob(&absent).await.unwrap(), None);

    // Files both ways, small and through ByteStream.
    let files = tempfile::tempdir().unwrap();
    for (i, len) in [(0u8, 3000usize), (1, 7 * MIB + 1)] {
        let data = content(len, 10 + i);
        let d = hf.digest_bytes(ObjectKind::File, &data);
        let src = files.path().join(format!("src{i}"));
        std::fs::write(&src, &data).unwrap();
        assert_eq!(
            cas.find_missing(vec![d.clone()]).await.unwrap(),
            vec![d.clone()]
        );
        cas.upload_file(&d, &src).await.unwrap();
        let dest = files.path().join(format!("dest{i}"));
        assert!(cas.download_to_file(&d, &dest).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
    assert!(!cas
        .download_to_file(&absent, &files.path().join("absent"))
        .await
        .unwrap());
    assert!(!files.path().join("absent").exists());

    // jserve serve with BuildGrid as its execution endpoint: a synced commit
    // tree arrives there as Directory messages and blobs.
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    std::fs::write(repo.join("sub/file.txt"), "synced to BuildGrid\n").unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "c"]);
    let commit = git(&["rev-parse", "HEAD"]);
    let serve_config = common::config_in(
        &dir.path().join("serve"),
        serde_json::json!({"repositories": [common::loc(&repo)],
               "execution endpoint": {"address": format!("127.0.0.1:{port}"), "compatible": true}}),
    );
    let serve = common::start(&serve_config).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", serve.addr.port()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let answer = jserve::proto::source_tree_client::SourceTreeClient::new(channel)
        .serve_commit_tree(jserve::proto::ServeCommitTreeRequest {
            commit,
            subdir: ".".into(),
            sync_tree: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 0, "synced to BuildGrid");
    let root = hf.digest_from_wire(&answer.digest.unwrap()).unwrap();
    assert!(
        cas.read_blob(&root).await.unwrap().is_some(),
        "root Directory in BuildGrid"
    );
    let file = hf.digest_bytes(ObjectKind::File, b"synced to BuildGrid\n");
    assert!(
        cas.read_blob(&file).await.unwrap().is_some(),
        "file blob in BuildGrid"
    );
    serve.shutdown().await.unwrap();
    drop(server);
}
