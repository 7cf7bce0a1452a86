//! ServeTarget benchmark: `jserve serve` in-process (its own endpoint, so
//! actions really run on this machine), driven over loopback gRPC the way a
//! `just` client drives it: compute the target-cache key of an export target
//! whose root is an absent git tree, upload the key blobs, ask.
//!
//!   cargo bench --bench serve_target [-- FILTER]
//!
//! FILTER selects cases by substring of their names, `MODE/hit` and
//! `MODE/cold/RUN` (MODE: native, compatible; RUN: jobs2, jobs8, spawn),
//! e.g. `native`, `hit`, `native/cold/spawn`. Scratch build roots go to
//! `$TMPDIR` (point it at a tmpfs to take the disk out). Set RUST_LOG
//! (e.g. `jserve=info`) for the server's log with timestamps.
//!
//! cold: a miss on an export target over 501 actions (500 generic targets
//!       running `echo`, one more concatenating their outputs), each run
//!       with a fresh build root: "build jobs" 2 (the core count, the
//!       default), 8, and 2 with the launcher's absolute path (`spawn`, see
//!       COLD_RUNS). Prints the ServeTarget wall time against the run times
//!       of the actions, taken from the `execution_metadata` of their
//!       ActionResults (worker start to worker completed: spawn to exit of
//!       the action's process), the CPU time used, and as a baseline 100
//!       similar actions executed one at a time straight at the endpoint.
//! hit:  after the first cold build, ServeTarget latency of cache hits with
//!       1 client, with 64 clients asking for the same key, and with 64
//!       clients each asking for a key of its own (64 more small targets
//!       built first).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use common::git::commit_all;
use common::reapi::Endpoint;
use common::targets::ask;
use common::{config_in, loc};
use jserve::context::ServeContext;
use jserve::digest::HashFunction;
use jserve::proto::target_client::TargetClient;
use jserve::proto::ServeTargetRequest;
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

/// Generic targets the big export target depends on (one action each).
const LEAVES: usize = 500;
/// Clients of the concurrent hit cases.
const CLIENTS: usize = 64;
/// Requests of the single-client hit case.
const SEQUENTIAL: usize = 2000;

/// The targets file: `big` exports `all`, which concatenates the outputs of
/// LEAVES generic targets; `small` is a one-action export whose key (and
/// action) depends on the configuration variable N.
fn targets_file() -> String {
    let mut targets = Map::new();
    let mut deps = Vec::new();
    for i in 0..LEAVES {
        let name = format!("leaf{i}");
        targets.insert(
            name.clone(),
            json!({"type": "generic", "outs": [format!("o{i}")],
                   "cmds": [format!("echo leaf {i} > o{i}")]}),
        );
        deps.push(Value::String(name));
    }
    targets.insert(
        "all".into(),
        json!({"type": "generic", "outs": ["all"], "deps": deps, "cmds": ["cat o* > all"]}),
    );
    targets.insert("big".into(), json!({"type": "export", "target": "all"}));
    targets.insert(
        "small-gen".into(),
        json!({"type": "generic", "arguments_config": ["N"], "outs": ["s"],
               "env": {"type": "singleton_map", "key": "N",
                       "value": {"type": "var", "name": "N", "default": "none"}},
               "cmds": ["echo \"$N\" > s"]}),
    );
    targets.insert(
        "small".into(),
        json!({"type": "export", "target": "small-gen", "flexible_config": ["N"]}),
    );
    serde_json::to_string_pretty(&Value::Object(targets)).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How a server runs actions.
struct Run {
    /// Selects the case: `MODE/cold/NAME`.
    name: &'static str,
    /// "build jobs"
    jobs: usize,
    /// Whether the launcher is `env --` with env's absolute path (found on
    /// PATH) rather than the default bare name.
    absolute_launcher: bool,
}

/// The cold cases. With a cleared environment the standard library forks
/// (copying the server's page tables) for a program name without a slash,
/// and uses posix_spawn (vfork) for a path: `spawn` shows the difference.
const COLD_RUNS: [Run; 3] = [
    Run {
        name: "jobs2",
        jobs: 2,
        absolute_launcher: false,
    },
    Run {
        name: "jobs8",
        jobs: 8,
        absolute_launcher: false,
    },
    Run {
        name: "spawn",
        jobs: 2,
        absolute_launcher: true,
    },
];

impl Run {
    fn launcher(&self) -> Vec<String> {
        let env = if self.absolute_launcher {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join("env"))
                .find(|p| p.is_file())
                .expect("env on PATH")
                .to_str()
                .unwrap()
                .to_string()
        } else {
            "env".to_string()
        };
        vec![env, "--".to_string()]
    }
}

/// One running server with the repository of `targets_file()`.
struct Server {
    ctx: Arc<ServeContext>,
    endpoint: Endpoint,
    tree: String,
    jobs: usize,
}

impl Server {
    async fn start(dir: &Path, repo: &Path, tree: &str, compatible: bool, run: &Run) -> Server {
        let build = json!({"build jobs": run.jobs, "local launcher": run.launcher()});
        let config = config_in(
            dir,
            json!({"repositories": [loc(repo)],
                   "execution endpoint": {"compatible": compatible},
                   "build": build}),
        );
        let hash = if compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        };
        let (ctx, endpoint) = common::start_serve(&config, hash).await;
        Server {
            ctx,
            endpoint,
            tree: tree.to_string(),
            jobs: run.jobs,
        }
    }

    async fn request(&self, name: &str, config: Value) -> ServeTargetRequest {
        common::targets::request(&self.endpoint, &self.tree, name, config).await
    }

    fn port(&self) -> u16 {
        self.endpoint.server.addr.port()
    }

    fn client(&self) -> TargetClient<Channel> {
        TargetClient::new(self.endpoint.channel.clone())
    }

    /// `(executed, cached)` action counters of ServeTarget.
    fn actions(&self) -> (u64, u64) {
        let s = self.ctx.target_stats.snapshot();
        (s[4], s[5])
    }

    /// Every ActionResult in the action cache of the build root.
    fn action_results(&self) -> Vec<reapi::ActionResult> {
        let hash = self.endpoint.hash;
        let root = &self.ctx.build_root;
        let cache = root.action_cache(hash);
        let dir = root.storage_dir(hash).join("ac");
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&dir).unwrap() {
            let shard = shard.unwrap();
            let prefix = shard.file_name().into_string().unwrap();
            for entry in std::fs::read_dir(shard.path()).unwrap() {
                let rest = entry.unwrap().file_name().into_string().unwrap();
                if let Some(result) = cache.get(&format!("{prefix}{rest}")).unwrap() {
                    out.push(result);
                }
            }
        }
        out
    }

    async fn shutdown(self) {
        self.endpoint.server.shutdown().await.unwrap();
    }
}

fn seconds(t: &Option<Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as f64 + t.nanos as f64 * 1e-9
}

/// The cold build of `big`: wall time against the actions' run times.
async fn cold(server: &Server, label: &str, how: &Run) {
    let request = server.request("big", json!({})).await;
    let before = server.actions();
    let cpu_before = cpu_seconds();
    let started = epoch_seconds();
    let start = Instant::now();
    ask(&mut server.client(), &request).await;
    let wall = start.elapsed().as_secs_f64();
    let ended = epoch_seconds();
    let cpu_after = cpu_seconds();
    let after = server.actions();
    let executed = (after.0 - before.0) as usize;
    assert_eq!(executed, LEAVES + 1, "every action ran");
    assert_eq!(after.1, before.1, "no action came from the cache");

    let results = server.action_results();
    assert_eq!(results.len(), LEAVES + 1, "one ActionResult per action");
    let mut run = 0.0;
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for r in &results {
        let m = r.execution_metadata.as_ref().expect("execution metadata");
        let (s, e) = (
            seconds(&m.worker_start_timestamp),
            seconds(&m.worker_completed_timestamp),
        );
        run += e - s;
        first = first.min(s);
        last = last.max(e);
    }
    let n = results.len() as f64;
    let jobs = server.jobs as f64;
    println!(
        "{label}: cold ServeTarget, {} actions, build jobs {}, launcher {}: {:.2} s wall ({:.2} ms per action)",
        results.len(),
        server.jobs,
        how.launcher().join(" "),
        wall,
        wall / n * 1e3
    );
    println!(
        "  action run time (spawn to exit): sum {:.2} s, mean {:.2} ms; sum / jobs {:.2} s",
        run,
        run / n * 1e3,
        run / jobs
    );
    println!(
        "  first action started after {:.2} s; last action ended {:.2} s before the answer (span {:.2} s)",
        first - started,
        ended - last,
        last - first
    );
    // Per action: the wall time beyond perfectly parallel action runs, and
    // the job-slot time not spent inside an action's process.
    println!(
        "  serve overhead per action: {:.2} ms of wall ((wall - sum / jobs) / actions), {:.2} ms of slot time ((wall x jobs - sum) / actions)",
        (wall - run / jobs) / n * 1e3,
        (wall * jobs - run) / n * 1e3
    );
    println!(
        "  CPU during the build: server and bench {:.2} s, action processes {:.2} s ({:.0}% of 2 cores)",
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
        (cpu_after.0 + cpu_after.1 - cpu_before.0 - cpu_before.1) / (2.0 * wall) * 100.0
    );
}

/// User + system CPU seconds of this process, and of its waited-for children.
fn cpu_seconds() -> (f64, f64) {
    let of = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    (of(libc::RUSAGE_SELF), of(libc::RUSAGE_CHILDREN))
}

/// The baseline: `count` actions like the leaves', executed one at a time
/// straight at the endpoint (no ServeTarget, no concurrency).
async fn execute_alone(server: &Server, count: usize) {
    let ep = &server.endpoint;
    let root = ep.upload_tree(&BTreeMap::new()).await;
    let mut round_trips = Vec::new();
    let mut runs = Vec::new();
    for i in 0..count {
        let command = format!("echo alone {i} > o");
        let action = ep
            .action(&root, &["sh", "-c", &command], &["o"], 0, false)
            .await;
        let t = Instant::now();
        let op = ep.execute(&action, true).await;
        round_trips.push(t.elapsed());
        let result = common::reapi::response_of(&op).result.expect("a result");
        assert_eq!(result.exit_code, 0);
        let m = result.execution_metadata.expect("execution metadata");
        let run = seconds(&m.worker_completed_timestamp) - seconds(&m.worker_start_timestamp);
        runs.push(Duration::from_secs_f64(run));
    }
    round_trips.sort();
    runs.sort();
    println!(
        "  alone, {count} such actions one at a time via Execute: round trip p50 {:.2} ms, spawn to exit p50 {:.2} ms",
        ms(percentile(&round_trips, 0.5)),
        ms(percentile(&runs, 0.5))
    );
}

/// Wall-clock time, comparable with the endpoint's timestamps.
fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Hit latency of `requests[i % len]` asked by `clients` concurrent clients.
async fn hits(server: &Server, requests: &[ServeTargetRequest], clients: usize, per: usize) {
    // A connection per client, as separate `just` processes would have.
    let mut connected = Vec::new();
    for _ in 0..clients {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        connected.push(TargetClient::new(channel));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in connected.into_iter().enumerate() {
        let request = requests[c % requests.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                ask(&mut client, &request).await;
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
    let keys = if requests.len() == 1 {
        "same key".to_string()
    } else {
        format!("{} keys", requests.len())
    };
    println!(
        "  hit, {clients:>2} clients ({keys}): p50 {:.3} ms, p99 {:.3} ms, {:.0} requests/s ({} requests)",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        all.len() as f64 / wall.as_secs_f64(),
        all.len()
    );
}

async fn hit_cases(server: &Server, label: &str) {
    let big = server.request("big", json!({})).await;
    // The warm-up build (a no-op when the cold case ran on this server).
    ask(&mut server.client(), &big).await;
    let mut small = Vec::new();
    for i in 0..CLIENTS {
        let r = server.request("small", json!({"N": i.to_string()})).await;
        ask(&mut server.client(), &r).await;
        small.push(r);
    }
    let before = server.ctx.target_stats.snapshot();
    println!("{label}: ServeTarget cache hits");
    hits(server, std::slice::from_ref(&big), 1, SEQUENTIAL).await;
    let per = SEQUENTIAL / CLIENTS + 20;
    hits(server, std::slice::from_ref(&big), CLIENTS, per).await;
    hits(server, &small, CLIENTS, per).await;
    let after = server.ctx.target_stats.snapshot();
    assert_eq!(after[3], before[3], "no build during the hit cases");
    println!(
        "  {} requests, {} computations (identical concurrent requests share one)",
        after[0] - before[0],
        after[1] - before[1]
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("TARGETS"), targets_file()).unwrap();
        let (_, tree) = commit_all(&repo);
        for (mode, compatible) in [("native", false), ("compatible", true)] {
            let selected = |case: &str| format!("{mode}/{case}").contains(&filter);
            // Each server gets a fresh build root, so its first build is cold;
            // the hit cases run on the first one when it ran.
            let mut hits_done = !selected("hit");
            for run in &COLD_RUNS {
                if !selected(&format!("cold/{}", run.name)) {
                    continue;
                }
                let root = tempfile::tempdir_in(dir.path()).unwrap();
                let server = Server::start(root.path(), &repo, &tree, compatible, run).await;
                cold(&server, mode, run).await;
                if run.jobs == 2 {
                    execute_alone(&server, 100).await;
                }
                if !hits_done {
                    hit_cases(&server, mode).await;
                    hits_done = true;
                }
                server.shutdown().await;
            }
            if !hits_done {
                let root = tempfile::tempdir_in(dir.path()).unwrap();
                let server =
                    Server::start(root.path(), &repo, &tree, compatible, &COLD_RUNS[0]).await;
                hit_cases(&server, mode).await;
                server.shutdown().await;
            }
        }
    });
}
