//! SourceTree benchmark: `jserve serve` in-process (its own endpoint, native
//! mode) driven over loopback gRPC.
//!
//!   cargo bench --bench source_tree [-- FILTER]     FILTER: commit, archive
//!
//! commit:  ServeCommitTree latency (p50/p99) and throughput with 1, 8 and 64
//!          concurrent clients.
//! archive: ServeArchiveTree cold for generated tar.gz archives (20,000
//!          files of hard-to-compress letters, 20,000 and 5,000 files of
//!          source-like words), against the floor (inflate, parse and git-hash
//!          alone, writing nothing); the unpacker alone at zlib levels 0, 1
//!          and 6; the unpack helper's peak memory. JSERVE_BENCH_ARCHIVE=FILE
//!          adds a tar.gz of one's own (e.g. real sources).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::corpus::{make_tar_gz, Corpus};
use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::source_tree_client::SourceTreeClient;
use jserve::proto::*;
use serde_json::json;

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

async fn commit_tree(port: u16, commit: &str) {
    for clients in [1usize, 8, 64] {
        let per_client = 2000 / clients.max(1) + 20;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let commit = commit.to_string();
            tasks.push(tokio::spawn(async move {
                let mut c = SourceTreeClient::new(common::channel(port).await);
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

/// The least any import must do: inflate, parse the tar, git-hash every
/// file. Nothing is written.
fn inflate_and_hash(archive: &Path) -> usize {
    use sha1::Digest as _;
    let file = std::io::BufReader::new(std::fs::File::open(archive).unwrap());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut buf = Vec::new();
    let mut files = 0;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        buf.clear();
        entry.read_to_end(&mut buf).unwrap();
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", buf.len()));
        h.update(&buf);
        std::hint::black_box(h.finalize());
        files += 1;
    }
    files
}

/// Runs the daemon's unpack helper on `archive` under `/usr/bin/time` (a
/// child forked from this large process would report this process's peak as
/// its own) and returns its wall time and peak RSS in KiB, if measured.
fn helper_run(archive: &Path, scratch: &Path, level: u32) -> (Duration, Option<u64>) {
    std::fs::create_dir_all(scratch).unwrap();
    let timer = Path::new("/usr/bin/time");
    let mut cmd = if timer.exists() {
        let mut c = Command::new(timer);
        c.args(["-f", "%M"]).arg(env!("CARGO_BIN_EXE_jserve"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_jserve"))
    };
    cmd.args(["__unpack", "tar"])
        .arg(archive)
        .arg(scratch)
        // No progress reports: stderr carries the peak RSS alone.
        .args([
            &(16u64 << 30).to_string(),
            "1000000",
            &level.to_string(),
            "3600000",
        ]);
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_dir_all(scratch).unwrap();
    let rss = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok());
    (took, rss)
}

async fn archive(dir: &Path, port: u16, archive_id: &str, archive_path: &Path, label: &str) {
    let mut c = SourceTreeClient::new(common::channel(port).await);
    let ask = || ServeArchiveTreeRequest {
        content: archive_id.to_string(),
        archive_type: ArchiveType::Tar as i32,
        subdir: ".".into(),
        resolve_symlinks: SymlinksResolve::None as i32,
        sync_tree: false,
    };
    let start = Instant::now();
    let r = c.serve_archive_tree(ask()).await.unwrap().into_inner();
    let cold = start.elapsed();
    assert_eq!(r.status, 0, "archive served");
    let start = Instant::now();
    c.serve_archive_tree(ask()).await.unwrap();
    let warm = start.elapsed();

    // The floor, and the unpacker alone at three zlib levels.
    let s = |d: Duration| d.as_secs_f64();
    let start = Instant::now();
    let files = inflate_and_hash(archive_path);
    let floor = start.elapsed();
    let mut levels = Vec::new();
    for level in [0u32, 1, 6] {
        let scratch = dir.join(format!("unpack-{level}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let start = Instant::now();
        let done = jserve::archive::unpack(
            archive_path,
            jserve::archive::ArchiveFormat::Tar,
            &scratch,
            &Default::default(),
            level,
        )
        .unwrap();
        let took = start.elapsed();
        assert_eq!(
            done.root.to_string(),
            r.tree,
            "the same tree at level {level}"
        );
        let pack: u64 = done
            .packs
            .iter()
            .map(|p| std::fs::metadata(&p.pack).unwrap().len())
            .sum();
        std::fs::remove_dir_all(&scratch).unwrap();
        levels.push(format!(
            "level {level} {:.2} s ({:.2}x, pack {} MB)",
            s(took),
            s(took) / s(floor),
            pack / 1_000_000
        ));
    }
    let (helper, rss) = helper_run(archive_path, &dir.join("helper"), 1);
    let rss = rss.map_or("not measured (no /usr/bin/time)".to_string(), |k| {
        format!("{} MiB", k >> 10)
    });
    println!(
        "ServeArchiveTree cold, {label}: {files} files, {} MB tar.gz: {:.2} s ({:.2}x the floor); warm (tree map): {:.3} ms",
        std::fs::metadata(archive_path).unwrap().len() / 1_000_000,
        s(cold),
        s(cold) / s(floor),
        s(warm) * 1e3
    );
    println!(
        "  floor (inflate + parse + git-hash, nothing written) {:.2} s; unpack alone: {}; helper process {:.2} s, peak RSS {rss}",
        s(floor),
        levels.join(", "),
        s(helper),
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
        // name, files, bytes per file, corpus
        let mut archives = vec![
            (
                "letters, 20,000 files of 10 kB".to_string(),
                20_000,
                10_000,
                Corpus::Letters,
            ),
            (
                "words, 20,000 files of 10 kB".to_string(),
                20_000,
                10_000,
                Corpus::Words,
            ),
            (
                "words, 5,000 files of 10 kB".to_string(),
                5_000,
                10_000,
                Corpus::Words,
            ),
        ];
        // A real archive of one's own choice joins them.
        let own = std::env::var_os("JSERVE_BENCH_ARCHIVE").map(std::path::PathBuf::from);
        if "archive".contains(&filter) {
            for (i, (_, files, size, corpus)) in archives.iter().enumerate() {
                let path = repo.join(format!("a{i}.tar.gz"));
                make_tar_gz(&path, *files, *size, *corpus);
            }
            if let Some(own) = &own {
                std::fs::copy(own, repo.join(format!("a{}.tar.gz", archives.len()))).unwrap();
                archives.push((own.display().to_string(), 0, 0, Corpus::Words));
            }
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
            for (i, (label, ..)) in archives.iter().enumerate() {
                let id = git(&repo, &["rev-parse", &format!("HEAD:a{i}.tar.gz")]);
                let path = repo.join(format!("a{i}.tar.gz"));
                archive(dir.path(), port, &id, &path, label).await;
            }
        }
        server.shutdown().await.unwrap();
    });
}
