//! Storage benchmarks: local CAS put/get in both hash modes, and importing a
//! directory into git (with the git CLI for comparison).
//!
//! A plain binary (no criterion): every case is run a few times and the median
//! and best wall times are printed. `cargo bench --bench storage -- FILTER`
//! runs only the cases whose name contains FILTER (e.g. `cas`, `git`, `1k`).
//! Results are for a warm page cache: reads follow the writes.

use std::any::Any;
use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jserve::digest::{HashFunction, ObjectKind};
use jserve::storage::{BuildRoot, Cas};

const SMALL_SIZE: usize = 1024;
const SMALL_COUNT: usize = 10_000;
const LARGE_SIZE: usize = 16 << 20;
const LARGE_COUNT: usize = 8;
const REPEATS: usize = 5;
/// New puts cost an fsync each, so new small blobs are timed in chunks of
/// 2,000 (one growing store) rather than as repeated runs over all 10,000.
const SMALL_CHUNKS: usize = 5;
/// Large new puts: 4 runs of 2 blobs.
const LARGE_CHUNKS: usize = 4;

/// Rounds of the raw-write comparison.
const FS_ROUNDS: usize = 3;
/// Runs of the git cases (each writes 10,000 loose objects).
const GIT_REPEATS: usize = 3;

const TREE_DIRS: usize = 100;
const TREE_FILES_PER_DIR: usize = 100;

/// Deterministic pseudo-random bytes (splitmix64), so blobs are distinct and incompressible.
fn fill(buf: &mut [u8], seed: u64) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn blobs(count: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut b = vec![0u8; size];
            fill(&mut b, seed + i as u64);
            b
        })
        .collect()
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

struct Bench {
    filter: Option<String>,
    /// Temporary trees are only deleted at exit: this ext4 has no journal, and
    /// there file creation after a mass deletion crawls for a minute or more
    /// (the inode allocator skips recently deleted inodes one by one), which
    /// would bleed into the next timed case.
    graveyard: RefCell<Vec<Box<dyn Any>>>,
}

impl Bench {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    fn bury(&self, x: impl Any) {
        self.graveyard.borrow_mut().push(Box::new(x));
    }

    /// Prints one result line; `ops` and `bytes` are per run (no bytes: no MB/s).
    fn report(&self, name: &str, times: &[Duration], ops: usize, bytes: usize) {
        let med = median(times);
        let best = *times.iter().min().expect("at least one run");
        let secs = med.as_secs_f64();
        let mb_s = if bytes == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", bytes as f64 / 1e6 / secs)
        };
        println!(
            "{name:<36} {runs:>4} {med:>10.1} {best:>10.1} {ops_s:>12.0} {mb_s:>10}",
            runs = times.len(),
            med = secs * 1e3,
            best = best.as_secs_f64() * 1e3,
            ops_s = ops as f64 / secs,
        );
    }

    /// Runs `setup` (untimed) then `body` (timed) `repeats` times and reports.
    fn run<S: 'static>(
        &self,
        name: &str,
        repeats: usize,
        ops: usize,
        bytes: usize,
        mut setup: impl FnMut() -> S,
        mut body: impl FnMut(&mut S),
    ) {
        if !self.wants(name) {
            return;
        }
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let mut state = setup();
            settle();
            let start = Instant::now();
            body(&mut state);
            times.push(start.elapsed());
            self.bury(state);
        }
        self.report(name, &times, ops, bytes);
    }
}

/// A fresh build root in a temporary directory and its CAS of mode `hf`.
fn fresh_cas(hf: HashFunction) -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cas = BuildRoot::open(dir.path()).expect("build root").cas(hf);
    (dir, cas)
}

fn put_all(cas: &Cas, data: &[Vec<u8>]) {
    for b in data {
        cas.put_bytes(ObjectKind::File, b).expect("put");
    }
}

fn mode_name(hf: HashFunction) -> &'static str {
    match hf {
        HashFunction::GitSha1 => "sha1",
        HashFunction::Sha256 => "sha256",
    }
}

/// Flushes dirty data of earlier steps (setup, previous cases), so that its
/// writeback does not stall the next timed step.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Times one call of `f`.
fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn bench_cas(b: &Bench, hf: HashFunction, label: &str, data: &[Vec<u8>], chunks: usize) {
    let mode = mode_name(hf);
    let n = data.len();
    let bytes: usize = data.iter().map(Vec::len).sum();
    let name = |what: &str| format!("cas/{mode}/{label}/{what}");

    // Hashing alone, to separate CPU cost from file-system cost.
    b.run(
        &name("hash only"),
        REPEATS,
        n,
        bytes,
        || (),
        |_| {
            for d in data {
                std::hint::black_box(hf.digest_bytes(ObjectKind::File, d));
            }
        },
    );

    let later = ["put new", "put present", "get", "get (open+read)"];
    if !later.iter().any(|w| b.wants(&name(w))) {
        return;
    }
    // Each run puts one chunk of new blobs into the same growing store, so the
    // fsync-bound small case stays affordable and the store ends up holding
    // every blob for the present/get cases below.
    let (dir, cas) = fresh_cas(hf);
    let chunk_len = n / chunks;
    let chunk_bytes: usize = data[..chunk_len].iter().map(Vec::len).sum();
    if b.wants(&name("put new")) {
        let times: Vec<Duration> = data
            .chunks(chunk_len)
            .map(|chunk| {
                settle();
                time(|| put_all(&cas, chunk))
            })
            .collect();
        b.report(&name("put new"), &times, chunk_len, chunk_bytes);
    } else {
        put_all(&cas, data);
    }
    b.run(
        &name("put present"),
        REPEATS,
        n,
        bytes,
        || (),
        |_| put_all(&cas, data),
    );
    // Ids are computed outside the timing.
    let ids: Vec<String> = data
        .iter()
        .map(|d| hf.digest_bytes(ObjectKind::File, d).hash)
        .collect();
    b.run(
        &name("get"),
        REPEATS,
        n,
        bytes,
        || (),
        |_| {
            for (id, d) in ids.iter().zip(data) {
                let got = cas.read(ObjectKind::File, id).expect("read");
                assert_eq!(got.expect("present").len(), d.len());
            }
        },
    );
    // Streaming read through `open`, as large blobs are served.
    b.run(
        &name("get (open+read)"),
        REPEATS,
        n,
        bytes,
        || (),
        |_| {
            let mut buf = vec![0u8; 256 * 1024];
            for id in &ids {
                let mut f = cas.open(ObjectKind::File, id).expect("open");
                let f = f.as_mut().expect("present");
                while f.read(&mut buf).expect("read") > 0 {}
            }
        },
    );
    b.bury(dir);
}

fn bench_put_stream(b: &Bench, hf: HashFunction, label: &str, data: &[Vec<u8>], chunks: usize) {
    let mode = mode_name(hf);
    let n = data.len();
    let bytes: usize = data.iter().map(Vec::len).sum();
    let stream_all = |cas: &Cas, data: &[Vec<u8>]| {
        for d in data {
            cas.put_stream(ObjectKind::File, d.len() as u64, &d[..], None)
                .expect("put_stream");
        }
    };
    let name = |what: &str| format!("cas/{mode}/{label}/{what}");
    if !b.wants(&name("put_stream new")) && !b.wants(&name("put_stream present")) {
        return;
    }
    // As for `put_bytes`: new blobs in chunks into one growing store.
    let (dir, cas) = fresh_cas(hf);
    let chunk_len = n / chunks;
    let chunk_bytes: usize = data[..chunk_len].iter().map(Vec::len).sum();
    if b.wants(&name("put_stream new")) {
        let times: Vec<Duration> = data
            .chunks(chunk_len)
            .map(|chunk| {
                settle();
                time(|| stream_all(&cas, chunk))
            })
            .collect();
        b.report(&name("put_stream new"), &times, chunk_len, chunk_bytes);
    } else {
        stream_all(&cas, data);
    }
    // Without an expected hash the content is staged in full before its id is known.
    b.run(
        &name("put_stream present"),
        REPEATS,
        n,
        bytes,
        || (),
        |_| stream_all(&cas, data),
    );
    b.bury(dir);
}

/// Where the time of a new put goes: a plain create+write+close, the same with
/// fsync, with fsync and a rename into a shard directory (the CAS's steps
/// without hashing), and `put_bytes` itself. The variants take turns on the
/// same chunk of blobs so that drifting fsync latency hits them alike.
fn bench_raw_writes(b: &Bench, label: &str, data: &[Vec<u8>], chunks: usize) {
    const VARIANTS: [&str; 4] = ["write", "write+fsync", "write+fsync+rename", "cas put new"];
    let names: Vec<String> = VARIANTS.iter().map(|v| format!("fs/{label}/{v}")).collect();
    if !names.iter().any(|n| b.wants(n)) {
        return;
    }
    let chunk_len = data.len() / chunks;
    let chunk_bytes: usize = data[..chunk_len].iter().map(Vec::len).sum();
    let write = |dir: &Path, i: usize, d: &[u8], sync: bool| {
        let path = dir.join(format!("f{i}"));
        let mut f = fs::File::create(&path).expect("create");
        f.write_all(d).expect("write");
        if sync {
            f.sync_data().expect("fsync");
        }
        path
    };
    let mut times = vec![Vec::new(); VARIANTS.len()];
    // Three rounds: every small file costs a discard when deleted at exit.
    for chunk in data.chunks(chunk_len).take(FS_ROUNDS) {
        for (v, name) in names.iter().enumerate() {
            if !b.wants(name) {
                continue;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path();
            let cas = BuildRoot::open(root)
                .expect("build root")
                .cas(HashFunction::GitSha1);
            settle();
            let t = time(|| {
                for (i, d) in chunk.iter().enumerate() {
                    match v {
                        0 | 1 => {
                            write(root, i, d, v == 1);
                        }
                        2 => {
                            let tmp = write(&root.join("tmp"), i, d, true);
                            let shard = root.join(format!("{:02x}", i % 256));
                            fs::create_dir_all(&shard).expect("mkdir");
                            fs::rename(tmp, shard.join(format!("f{i}"))).expect("rename");
                        }
                        _ => {
                            cas.put_bytes(ObjectKind::File, d).expect("put");
                        }
                    }
                }
            });
            times[v].push(t);
            b.bury(dir);
        }
    }
    for (name, t) in names.iter().zip(&times) {
        if !t.is_empty() {
            b.report(name, t, chunk_len, chunk_bytes);
        }
    }
}

/// A source tree: `TREE_DIRS` directories of ~100-byte files, a few executables and symlinks.
fn make_tree(root: &Path) -> usize {
    let mut count = 0;
    let mut buf = [0u8; 128];
    for d in 0..TREE_DIRS {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..TREE_FILES_PER_DIR {
            let i = d * TREE_FILES_PER_DIR + f;
            let path = dir.join(format!("file{f:03}.txt"));
            if i % 500 == 7 {
                symlink(
                    format!("file{:03}.txt", (f + 1) % TREE_FILES_PER_DIR),
                    &path,
                )
                .expect("symlink");
            } else {
                fill(&mut buf[..90 + i % 20], i as u64);
                fs::write(&path, &buf[..90 + i % 20]).expect("write");
                if i % 500 == 3 {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
                }
            }
            count += 1;
        }
    }
    count
}

fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The git CLI with user and system configuration out of the way.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn bench_git(b: &Bench) {
    if !b.wants("git/import_directory") && !b.wants("git/cli add+write-tree") {
        return;
    }
    let src = tempfile::tempdir().expect("tempdir");
    let files = make_tree(src.path());
    let mut jserve_tree = None;
    b.run(
        "git/import_directory",
        GIT_REPEATS,
        files,
        0,
        || {
            let dir = tempfile::tempdir().expect("tempdir");
            let repo = BuildRoot::open(dir.path())
                .expect("build root")
                .init_git_cache()
                .expect("git cache");
            (dir, repo)
        },
        |(_, repo)| {
            let oid = jserve::git::import_directory(repo, src.path()).expect("import");
            jserve_tree = Some(oid.to_string());
        },
    );
    if !b.wants("git/cli add+write-tree") {
        return;
    }
    if !git_available() {
        println!("git/cli add+write-tree               (git not found, skipped)");
        return;
    }
    let mut cli_tree = None;
    b.run(
        "git/cli add+write-tree",
        GIT_REPEATS,
        files,
        0,
        || {
            // A fresh repository whose work tree is the source (which stays free of `.git`).
            let dir = tempfile::tempdir().expect("tempdir");
            git(dir.path(), &["init", "-q"]);
            dir
        },
        |dir| {
            let git_dir = format!("--git-dir={}", dir.path().join(".git").display());
            let work_tree = format!("--work-tree={}", src.path().display());
            git(dir.path(), &[&git_dir, &work_tree, "add", "-A"]);
            cli_tree = Some(git(dir.path(), &[&git_dir, "write-tree"]));
        },
    );
    // Both must describe the same tree, or the comparison is meaningless.
    if let (Some(a), Some(c)) = (&jserve_tree, &cli_tree) {
        assert_eq!(a, c, "import_directory and git write-tree disagree");
    }
}

/// File creation speed before anything else, to judge the run: it drops
/// tenfold for a minute or more after mass deletions on this file system
/// (see `Bench::graveyard`), e.g. by a previous run or a concurrent build.
fn probe(b: &Bench) {
    let n = 500;
    let times: Vec<Duration> = (0..REPEATS)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tempdir");
            settle();
            let t = time(|| {
                for i in 0..n {
                    // Empty: deleting files with data is slow here (discard).
                    fs::File::create(dir.path().join(format!("f{i}"))).expect("create");
                }
            });
            b.bury(dir);
            t
        })
        .collect();
    b.report("probe/create 500 files", &times, n, 0);
}

fn main() {
    let start = Instant::now();
    // cargo passes `--bench`; any non-flag argument is the filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let b = Bench {
        filter,
        graveyard: RefCell::new(Vec::new()),
    };
    println!(
        "{:<36} {:>4} {:>10} {:>10} {:>12} {:>10}",
        "case", "runs", "median ms", "best ms", "ops/s", "MB/s"
    );
    probe(&b);
    let small = blobs(SMALL_COUNT, SMALL_SIZE, 1);
    let large = blobs(LARGE_COUNT, LARGE_SIZE, 1_000_000);
    for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
        bench_cas(&b, hf, "1k", &small, SMALL_CHUNKS);
        bench_cas(&b, hf, "16m", &large, LARGE_CHUNKS);
        bench_put_stream(&b, hf, "16m", &large, LARGE_CHUNKS);
    }
    bench_raw_writes(&b, "1k", &small, SMALL_CHUNKS);
    bench_raw_writes(&b, "16m", &large, LARGE_CHUNKS);
    bench_git(&b);
    let cleanup = Instant::now();
    drop(b);
    println!(
        "total {:.0} s, of which deleting the temporary trees {:.1} s",
        start.elapsed().as_secs_f64(),
        cleanup.elapsed().as_secs_f64()
    );
}
