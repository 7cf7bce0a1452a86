//! Garbage collection of jserve's build root with the real programs: the
//! reference `just-mr` as client, `jserve serve` as its own endpoint, and
//! `jserve gc` beside it.
//!
//! * a root bounded at a few MB stays within its bound while export targets
//!   and archives are served well past it, and every earlier request is
//!   answered again correctly afterwards (rebuilt or unpacked anew);
//! * collections (the daemon's own and `jserve gc --rotate`) racing with
//!   clients whose requests hit the target cache and the action cache: no
//!   request fails, and `jserve gc --check` finds every entry complete;
//! * `jserve gc --rotate` killed at many points: every generation left is
//!   complete, and the next collection finishes.
//!
//! Without the reference clients the client tests print `SKIPPED:` and
//! pass, except under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::endpoints::JserveServe;
use common::git::git;
use common::loc;
use common::procs::run_bounded;
use common::reference::{reference_just_16, reference_just_mr};
use jserve::digest::{serialize_git_tree, GitTreeEntry, HashFunction, ObjectKind};
use jserve::storage::gc::usage::measure_dir;
use jserve::storage::BuildRoot;
use serde_json::{json, Value};

/// Bound on any one program run.
const LIMIT: Duration = Duration::from_secs(180);

/// Export targets big-0 … big-7, each with an output of about 400 KB.
const BIG: usize = 8;
const BIG_BYTES: usize = 400_000;

/// The project: a dependency jserve knows and the client does not (an
/// absent root), and the client's own target using one of its exports.
struct World {
    dir: PathBuf,
    serve: JserveServe,
    config: PathBuf,
    dep_commit: String,
    archives: Vec<String>,
    just: PathBuf,
}

fn dep_targets() -> String {
    let mut targets = serde_json::Map::new();
    for i in 0..BIG {
        targets.insert(
            format!("big-{i}"),
            json!({"type": "export", "target": format!("big-{i}-gen")}),
        );
        targets.insert(
            format!("big-{i}-gen"),
            json!({"type": "generic", "outs": ["big.txt"], "cmds": [
                format!("head -c {BIG_BYTES} /dev/zero | tr '\\0' x > big.txt"),
                "echo >> big.txt".to_string(),
                format!("echo {i} >> big.txt")]}),
        );
    }
    Value::Object(targets).to_string()
}

/// Bytes that do not compress (xorshift), so archives take their size on disk.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl World {
    fn start(dir: &Path, max_bytes: u64, interval: f64, min_age: f64) -> Option<World> {
        let just = reference_just_16()?;
        let dep = dir.join("dep");
        std::fs::create_dir_all(&dep).unwrap();
        git(&dep, &["init", "-q"]);
        std::fs::write(dep.join("TARGETS"), dep_targets()).unwrap();
        let mut archives = Vec::new();
        for i in 0..3u64 {
            let src = dir.join(format!("archive-{i}"));
            std::fs::create_dir_all(src.join("d")).unwrap();
            std::fs::write(src.join("d/noise.bin"), noise(i + 1, 300_000)).unwrap();
            let tar = dep.join(format!("pkg-{i}.tar.gz"));
            let out = Command::new("tar")
                .arg("czf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("d")
                .output()
                .unwrap();
            assert!(out.status.success(), "tar: {out:?}");
        }
        git(&dep, &["add", "."]);
        git(&dep, &["commit", "-q", "-m", "dep"]);
        for i in 0..3 {
            archives.push(git(&dep, &["rev-parse", &format!("HEAD:pkg-{i}.tar.gz")]));
        }
        let dep_commit = git(&dep, &["rev-parse", "HEAD"]);
        let serve_dir = dir.join("serve");
        let serve = JserveServe::start(
            &serve_dir,
            json!({
                "local build root": loc(&dir.join("serve-root")),
                "repositories": [loc(&dep)],
                "remote service": {"port": 0},
                "gc": {"max bytes": max_bytes, "interval seconds": interval,
                       "min age seconds": min_age},
                "metrics": {"port": 0},
            }),
        );
        let main = dir.join("main");
        std::fs::create_dir_all(&main).unwrap();
        let mut top = serde_json::Map::new();
        for i in 0..BIG {
            top.insert(
                format!("top-{i}"),
                json!({"type": "generic", "outs": ["top.txt"],
                    "deps": [["@", "dep", "", format!("big-{i}")]],
                    "cmds": ["tail -n 1 big.txt > top.txt", "wc -c < big.txt >> top.txt"]}),
            );
        }
        std::fs::write(main.join("TARGETS"), Value::Object(top).to_string()).unwrap();
        Some(World {
            dir: dir.to_path_buf(),
            config: serve_dir.join("serve.json"),
            serve,
            dep_commit,
            archives,
            just,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.join("serve-root")
    }

    /// The stores' size now (every generation of both areas).
    fn stores_bytes(&self) -> u64 {
        ["protocol-dependent", "repositories"]
            .iter()
            .map(|area| measure_dir(&self.root().join(area)).bytes)
            .sum()
    }

    /// `just-mr install top-I` with a fresh client build root `name`;
    /// checks the output and returns the client's log.
    fn install_top(&self, i: usize, name: &str) -> String {
        let repos = json!({
            "main": "main",
            "repositories": {
                "main": {
                    "repository": {"type": "file", "path": self.dir.join("main").to_str().unwrap()},
                    "bindings": {"dep": "dep"}
                },
                "dep": {"repository": {
                    "type": "git", "repository": "file:///nonexistent/jserve-gc.git",
                    "branch": "main", "commit": self.dep_commit,
                    "pragma": {"absent": true}}}
            }
        });
        let repos_path = self.dir.join(format!("repos-{name}.json"));
        std::fs::write(&repos_path, repos.to_string()).unwrap();
        let out_dir = self.dir.join(format!("out-{name}"));
        let mut cmd = Command::new(reference_just_mr(&self.just));
        cmd.current_dir(&self.dir)
            .args(["--norc", "--plain-log", "--just"])
            .arg(&self.just)
            .arg("--local-build-root")
            .arg(self.dir.join(format!("client-{name}")))
            .args(["-R", &self.serve.address(), "-r", &self.serve.address()])
            .arg("-C")
            .arg(&repos_path)
            .args(["install", "-o"])
            .arg(&out_dir)
            .arg(format!("top-{i}"));
        let out = run_bounded(cmd, &format!("just-mr install top-{i}"), LIMIT);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            let serve_log = self.serve.log();
            let warnings: Vec<&str> = serve_log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            panic!(
                "top-{i} ({name}) failed:\n{log}\njserve's warnings:\n{}",
                warnings.join("\n")
            );
        }
        let got = std::fs::read_to_string(out_dir.join("top.txt")).unwrap();
        assert_eq!(got, format!("{i}\n{}\n", BIG_BYTES + 3), "top-{i} ({name})");
        log
    }

    /// `jserve archive-tree` of archive `i`, synced to the CAS: its tree.
    fn archive_tree(&self, i: usize) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
        cmd.args(["archive-tree", &self.archives[i], "--sync", "--json"])
            .args(["-R", &self.serve.address()]);
        let out = run_bounded(cmd, "jserve archive-tree", LIMIT);
        assert!(out.status.success(), "archive-tree {i}: {out:?}");
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["status"], "OK", "archive-tree {i}: {answer}");
        answer["tree"].as_str().unwrap().to_string()
    }

    fn gc(&self, args: &[&str]) -> Output {
        jserve_gc(&self.config, args)
    }

    fn assert_consistent(&self, what: &str) {
        let out = self.gc(&["--check"]);
        assert!(
            out.status.success(),
            "{what}: jserve gc --check:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn jserve_gc(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.arg("gc").arg(config).args(args);
    run_bounded(cmd, "jserve gc", LIMIT)
}

/// Waits (bounded) until `done` holds; the daemon's collector works at its
/// own pace.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bounded_root_stays_within_its_bound_and_answers_again() {
    let tmp = tempfile::tempdir().unwrap();
    let max_bytes = 2_500_000;
    let Some(w) = World::start(tmp.path(), max_bytes, 0.1, 0.0) else {
        return;
    };
    let mut trees = Vec::new();
    for i in 0..BIG {
        w.install_top(i, &format!("first-{i}"));
        if i < w.archives.len() {
            trees.push(w.archive_tree(i));
        }
    }
    let served = (BIG_BYTES * BIG) as u64;
    assert!(served > max_bytes, "the test must serve past the bound");
    wait_until("the stores stay above the bound", || {
        w.stores_bytes() <= max_bytes
    });
    let log = w.serve.log();
    assert!(log.contains("gc: "), "no collection logged:\n{log}");
    // The metrics count the collections and what they removed.
    let metrics = common::http::metrics_address(&log).expect("metrics address logged");
    let (_, _, text) = common::http::get(metrics, "/metrics");
    let runs = common::http::sample(&text, "jserve_gc_runs_total").unwrap();
    let removed = common::http::sample(&text, "jserve_gc_removed_bytes_total").unwrap();
    assert!(runs >= 1.0 && removed > 0.0, "{text}");
    assert!(log.contains("bound 2.4 MiB"), "no start-up line:\n{log}");
    w.assert_consistent("after the collections");

    // Everything again, each client with an empty build root, the most
    // recent first: that one is still there, the oldest are not.
    let mark = w.serve.log().len();
    w.install_top(BIG - 1, "again-last");
    let latest = w.serve.log_since(mark);
    // A hit either way: computed, or remembered in memory when no rotation
    // came after the build (memory forgets with every rotation).
    assert!(
        latest.contains(": cache hit") && !latest.contains(": built ("),
        "the most recent entry did not survive:\n{latest}"
    );
    for i in (0..BIG - 1).rev() {
        w.install_top(i, &format!("again-{i}"));
    }
    for (i, tree) in trees.iter().enumerate() {
        assert_eq!(&w.archive_tree(i), tree, "archive {i} answered differently");
    }
    let again = w.serve.log_since(mark);
    assert!(
        again.contains(": built ("),
        "nothing was collected, nothing built again:\n{again}"
    );
    wait_until("the stores stay above the bound", || {
        w.stores_bytes() <= max_bytes
    });
    w.assert_consistent("at the end");
}

#[test]
fn collections_racing_with_hits_lose_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    // Generation 0 passes half the bound with about every second build:
    // the daemon's collector rotates as often as the minimum age lets it,
    // and so does `jserve gc --rotate` in a loop beside it.
    let Some(w) = World::start(tmp.path(), 1_000_000, 0.05, 0.5) else {
        return;
    };
    for i in 0..2 {
        w.install_top(i, &format!("warm-{i}"));
    }
    let clients_done = std::sync::atomic::AtomicBool::new(false);
    let rotations = std::thread::scope(|scope| {
        let rotator = scope.spawn(|| {
            let mut n = 0;
            while !clients_done.load(std::sync::atomic::Ordering::SeqCst) {
                // Sooner than the daemon's own minimum age: both rotate.
                let out = w.gc(&["--rotate", "--min-age", "0.25"]);
                assert!(out.status.success(), "jserve gc --rotate: {out:?}");
                if String::from_utf8_lossy(&out.stdout).contains(" rotation(s) (") {
                    n += 1;
                }
            }
            n
        });
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let w = &w;
                scope.spawn(move || {
                    for round in 0..10 {
                        w.install_top((c + round) % 2, &format!("race-{c}-{round}"));
                    }
                })
            })
            .collect();
        for client in clients {
            if let Err(panic) = client.join() {
                clients_done.store(true, std::sync::atomic::Ordering::SeqCst);
                std::panic::resume_unwind(panic);
            }
        }
        clients_done.store(true, std::sync::atomic::Ordering::SeqCst);
        rotator.join().unwrap()
    });
    assert!(rotations > 0, "jserve gc --rotate never rotated");
    let log = w.serve.log();
    assert!(log.contains("gc: "), "the daemon never collected:\n{log}");
    w.assert_consistent("after the race");
}

/// Fills generation 0 of `root` (native) with `n` trees of three blobs and
/// an action-cache entry naming each tree and blob as outputs.
fn populate(root: &BuildRoot, seed: u64, n: u64) {
    use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
    let hash = HashFunction::GitSha1;
    let cas = root.cas(hash);
    let ac = root.action_cache(hash);
    for i in 0..n {
        let mut entries = Vec::new();
        let mut outputs = Vec::new();
        for j in 0..3u8 {
            let data = format!("{seed}-{i}-{j}");
            let d = cas.put_bytes(ObjectKind::File, data.as_bytes()).unwrap();
            let mut id = [0u8; 20];
            hex::decode_to_slice(&d.hash, &mut id).unwrap();
            entries.push(GitTreeEntry {
                name: format!("f{j}").into_bytes(),
                kind: ObjectKind::File,
                id,
            });
            outputs.push(reapi::OutputFile {
                path: format!("f{j}"),
                digest: Some(d.to_wire(hash)),
                ..Default::default()
            });
        }
        let tree = serialize_git_tree(entries).unwrap();
        let t = cas.put_bytes(ObjectKind::Tree, &tree).unwrap();
        let result = reapi::ActionResult {
            output_files: outputs,
            output_directories: vec![reapi::OutputDirectory {
                path: "t".into(),
                tree_digest: Some(t.to_wire(hash)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let action = hash.hash_bytes(ObjectKind::File, format!("action-{seed}-{i}").as_bytes());
        ac.store(&action, &result).unwrap();
    }
}

/// A build root in `dir` and a config file naming it.
fn root_with_config(dir: &Path) -> (BuildRoot, PathBuf) {
    let root_dir = dir.join("root");
    let config = dir.join("gc.json");
    std::fs::write(
        &config,
        json!({"local build root": loc(&root_dir)}).to_string(),
    )
    .unwrap();
    (BuildRoot::open(&root_dir).unwrap(), config)
}

#[test]
fn a_collection_killed_anywhere_leaves_complete_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, config) = root_with_config(tmp.path());
    // Kill points spread over the renames and the deletion that follows.
    let mut interrupted = 0;
    for (run, delay_ms) in [0u64, 1, 2, 4, 8, 15, 30, 60].into_iter().enumerate() {
        populate(&root, run as u64, 1000);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
        cmd.arg("gc")
            .arg(&config)
            .args(["--rotate", "--min-age", "0"])
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let check = jserve_gc(&config, &["--check"]);
        assert!(
            check.status.success(),
            "run {run}, killed after {delay_ms} ms:\n{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(report.contains("0 problem(s)"), "{report}");
    }
    assert!(interrupted >= 4, "only {interrupted} runs were cut short");
    // And a collection that is not interrupted finishes on what is left.
    let out = jserve_gc(&config, &["--rotate", "--min-age", "0"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 rotation(s)"), "{said}");
    let check = jserve_gc(&config, &["--check"]);
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn the_check_finds_an_entry_without_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, config) = root_with_config(tmp.path());
    populate(&root, 7, 3);
    assert!(jserve_gc(&config, &["--check"]).status.success());
    // What a broken collector would leave: a blob gone under its entries.
    let cas = root.cas(HashFunction::GitSha1);
    let victim = HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"7-1-2");
    std::fs::remove_file(cas.path(ObjectKind::File, &victim)).unwrap();
    let check = jserve_gc(&config, &["--check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{report}");
    assert!(
        report.contains(&format!("lacks its entry {victim}")),
        "{report}"
    );
    assert!(
        report.contains(&format!("its output {victim} is missing")),
        "{report}"
    );
}

#[test]
fn jserve_execute_keeps_its_bound() {
    let Some(just) = reference_just_16() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let max_bytes: u64 = 1_500_000;
    let endpoint = common::endpoints::Execute::start_with(
        Path::new(env!("CARGO_BIN_EXE_jserve")),
        &tmp.path().join("endpoint"),
        false,
        &[
            "--gc-max-bytes",
            &max_bytes.to_string(),
            "--gc-interval",
            "0.1",
            "--gc-min-age",
            "0",
        ],
    );
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("ROOT"), "").unwrap();
    let mut targets = serde_json::Map::new();
    for i in 0..BIG {
        targets.insert(
            format!("big-{i}"),
            json!({"type": "generic", "outs": ["big.txt"], "cmds": [
                format!("head -c {BIG_BYTES} /dev/zero | tr '\\0' x > big.txt"),
                format!("echo {i} >> big.txt")]}),
        );
    }
    std::fs::write(project.join("TARGETS"), Value::Object(targets).to_string()).unwrap();
    for i in 0..BIG {
        let mut cmd = Command::new(&just);
        cmd.current_dir(&project)
            .args(["build", "--local-build-root"])
            .arg(tmp.path().join("client"))
            .args(["-r", &endpoint.address(), &format!("big-{i}")]);
        let out = run_bounded(cmd, "just build", LIMIT);
        assert!(out.status.success(), "big-{i}: {out:?}");
    }
    let root = tmp.path().join("endpoint/root");
    let stores = || {
        ["protocol-dependent", "repositories"]
            .iter()
            .map(|area| measure_dir(&root.join(area)).bytes)
            .sum::<u64>()
    };
    wait_until("the endpoint's stores stay above the bound", || {
        stores() <= max_bytes
    });
    let log = endpoint.group.log();
    assert!(log.contains("gc: "), "no collection logged:\n{log}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.args(["gc", "--check", "--local-build-root"]).arg(&root);
    let check = run_bounded(cmd, "jserve gc --check", LIMIT);
    assert!(check.status.success(), "{check:?}");
}
