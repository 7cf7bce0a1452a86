//! SourceTree benchmark: `jserve serve` in-process (its own endpoint, native
//! mode) driven over loopback gRPC.
//!
//!   cargo bench --bench source_tree [-- FILTER]     FILTER: commit, archive
//!
//! commit:  ServeCommitTree latency (p50/p99) and throughput with 1, 8 and 64
//!          concurrent clients.
//! archive: ServeArchiveTree cold for a generated tar.gz of 20,000 files /
//!          200 MB, and the same steps timed one by one (decompression alone,
//!          unpacking to disk, importing into git) to show where time goes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::source_tree_client::SourceTreeClient;
use jserve::proto::*;
use serde_json::json;
use tonic::transport::Channel;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@b"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn commit_tree(port: u16, commit: &str) {
    for clients in [1usize, 8, 64] {
        let per_client = 2000 / clients.max(1) + 20;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let commit = commit.to_string();
            tasks.push(tokio::spawn(async move {
                let mut c = SourceTreeClient::new(channel(port).await);
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = c
                        .serve_commit_tree(ServeCommitTreeRequest {
                            commit: commit.clone(),
                            subdir: ".".into(),
                            sync_tree: false,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(r.status, 0);
                    times.push(t.elapsed());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let wall = start.elapsed();
        all.sort();
        println!(
            "ServeCommitTree, {clients:>2} clients: p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s",
            percentile(&all, 0.5).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.len() as f64 / wall.as_secs_f64()
        );
    }
}

/// Writes a tar.gz of `files` files of `size` bytes each (content differs per file).
fn make_tar_gz(path: &Path, files: usize, size: usize) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut content = vec![0u8; size];
    for i in 0..files {
        for chunk in content.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Text-like bytes: compressible, as real sources are.
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = b'a' + ((state >> (j * 8)) as u8 % 16);
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("pkg/dir{:03}/file{i:05}.txt", i % 200),
            &content[..],
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

async fn archive(dir: &Path, port: u16, archive_id: &str, archive_path: &Path) {
    let mut c = SourceTreeClient::new(channel(port).await);
    let start = Instant::now();
    let r = c
        .serve_archive_tree(ServeArchiveTreeRequest {
            content: archive_id.to_string(),
            archive_type: ArchiveType::Tar as i32,
            subdir: ".".into(),
            resolve_symlinks: SymlinksResolve::None as i32,
            sync_tree: false,
        })
        .await
        .unwrap()
        .into_inner();
    let cold = start.elapsed();
    assert_eq!(r.status, 0, "archive served");
    let start = Instant::now();
    c.serve_archive_tree(ServeArchiveTreeRequest {
        content: archive_id.to_string(),
        archive_type: ArchiveType::Tar as i32,
        subdir: ".".into(),
        resolve_symlinks: SymlinksResolve::None as i32,
        sync_tree: false,
    })
    .await
    .unwrap();
    let warm = start.elapsed();

    // The steps one by one, outside the server.
    let start = Instant::now();
    let mut decoder = flate2::read::GzDecoder::new(std::fs::File::open(archive_path).unwrap());
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = decoder.read(&mut sink).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    let decompress = start.elapsed();
    let out = dir.join("unpacked");
    std::fs::create_dir_all(&out).unwrap();
    let start = Instant::now();
    jserve::archive::unpack(
        archive_path,
        jserve::archive::ArchiveFormat::Tar,
        &out,
        &Default::default(),
    )
    .unwrap();
    let unpack = start.elapsed();
    let repo = git2::Repository::init_bare(dir.join("scratch.git")).unwrap();
    let start = Instant::now();
    jserve::git::import_directory(&repo, &out).unwrap();
    let import = start.elapsed();
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "ServeArchiveTree cold, 20,000 files / {} MB tar.gz ({} MB compressed): {:.2} s; warm (tree map): {:.3} ms",
        total >> 20,
        std::fs::metadata(archive_path).unwrap().len() >> 20,
        s(cold),
        s(warm) * 1e3
    );
    println!(
        "  steps alone: decompress {:.2} s, unpack to disk (decompress + write) {:.2} s, git import (hash + write objects) {:.2} s",
        s(decompress),
        s(unpack),
        s(import)
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("README"), "bench\n").unwrap();
        let archive_path = dir.path().join("big.tar.gz");
        if "archive".contains(&filter) {
            make_tar_gz(&archive_path, 20_000, 10_000);
            std::fs::copy(&archive_path, repo.join("big.tar.gz")).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "bench"]);
        let commit = git(&repo, &["rev-parse", "HEAD"]);
        let config = common::config_in(dir.path(), json!({"repositories": [common::loc(&repo)]}));
        let server = common::start(&config).await;
        let port = server.addr.port();
        if "commit".contains(&filter) {
            commit_tree(port, &commit).await;
        }
        if "archive".contains(&filter) {
            let id = git(&repo, &["rev-parse", "HEAD:big.tar.gz"]);
            archive(dir.path(), port, &id, &archive_path).await;
        }
        server.shutdown().await.unwrap();
    });
}
