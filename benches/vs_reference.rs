//! jserve and the reference `just serve` side by side on the same
//! workloads, printing the ratios.
//!
//!   cargo bench --bench vs_reference [-- FILTER]   FILTER: compat, commit, archive, target,
//!                                                  cold, cold-archive, cold-large, cold-target,
//!                                                  cold-remote
//!
//! Both servers run as processes with the same configuration (a fresh build
//! root each, one repository), pinned to CPU 0 when there are two or more;
//! the clients run in this process on the other CPUs, each with a
//! connection of its own, as separate `just` processes would. Every case
//! runs for a fixed time, alternating reference and jserve twice; the better
//! of each server's two runs counts.
//!
//! compat: Configuration.Compatibility, the gRPC stack's own limit;
//! commit: ServeCommitTree of a subdirectory of a commit (no sync);
//! archive: ServeArchiveTree of a tar.gz known from a first request (no sync);
//! target: ServeTarget cache hits of an export target built once before;
//! cold-archive: ServeArchiveTree of a 10,000-file tar.gz on a fresh server,
//!   then the same with sync;
//! cold-large: ServeCommitTree with sync of 100,000 small files, then
//!   GetRemoteTree of that tree, and the server's peak memory;
//! cold-remote: the same with `jserve execute` as each server's external
//!   endpoint (a fresh one each run): the sync goes over gRPC, and
//!   GetRemoteTree reads the tree back from there (native digests without
//!   sizes, which jserve batches);
//! cold-target: ServeTarget on a fresh server of an export target over 500
//!   actions, then the reference's load scenario (an export chain 1,000 deep
//!   plus 1,000 export targets wide) asked by two clients at once.
//!
//! The reference comes from scripts/install-reference-just (or
//! JSERVE_REFERENCE_JUST); without it the bench says so and stops.
//! JSERVE_BENCH_JSERVE names another jserve binary to compare (an older
//! build, say).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::SourceTree;
use common::git::{commit_all, git};
use common::targets::request_at;
use jserve::digest::HashFunction;
use jserve::proto::configuration_client::ConfigurationClient;
use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::target_client::TargetClient;
use jserve::proto::{CompatibilityRequest, ServeTargetRequest};
use serde_json::json;
use tonic::transport::Channel;

/// How long one case runs against one server.
const RUN: Duration = Duration::from_secs(2);

/// The peak RSS (KiB) of the server listening on `port`, from
/// /proc/PID/status (VmHWM); 0 if unknown.
fn peak_rss_kib(port: u16) -> u64 {
    let pid = SERVERS
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(p, _)| *p == port)
        .map(|(_, pid)| *pid);
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Port and pid of every server started.
static SERVERS: std::sync::Mutex<Vec<(u16, u32)>> = std::sync::Mutex::new(Vec::new());

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // only touch the set and this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `program serve CONFIG` over `repo` with its build root in `dir`.
fn start(program: &Path, dir: &Path, repo: &Path) -> Server {
    start_with(program, dir, repo, None)
}

/// As [`start`], with `endpoint` (`HOST:PORT`) as the execution endpoint.
fn start_with(program: &Path, dir: &Path, repo: &Path, endpoint: Option<&str>) -> Server {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(dir).unwrap();
    let info = dir.join("info.json");
    let mut config = json!({
        "local build root": {"root": "system", "path": dir.join("root").to_str().unwrap()},
        "repositories": [{"root": "system", "path": repo.to_str().unwrap()}],
        "remote service": {"port": 0,
                           "info file": {"root": "system", "path": info.to_str().unwrap()}},
    });
    if let Some(address) = endpoint {
        config["execution endpoint"] = json!({"address": address});
    }
    let config_path = dir.join("serve.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut cmd = Command::new(program);
    // JSERVE_BENCH_LOGS=DIR keeps each server's log there.
    let log = match std::env::var_os("JSERVE_BENCH_LOGS") {
        Some(logs) => {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let file = std::fs::File::create(Path::new(&logs).join(format!("{name}.log"))).unwrap();
            Stdio::from(file)
        }
        None => Stdio::null(),
    };
    cmd.arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(log);
    if cpus() > 1 {
        // SAFETY: only sched_setaffinity, async-signal-safe, in the child.
        unsafe {
            cmd.pre_exec(|| {
                pin(&[0]);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("server starts");
    let port = common::procs::wait_for_info_port(&info, || {
        let status = child.try_wait().ok().flatten()?;
        Some(format!("{program:?} exited ({status})"))
    });
    SERVERS.lock().unwrap().push((port, child.id()));
    Server { child, port }
}

/// What the clients ask.
#[derive(Clone)]
enum Call {
    Compatibility,
    CommitTree { commit: String, subdir: String },
    ArchiveTree { content: String },
    Target(ServeTargetRequest),
}

impl Call {
    async fn once(&self, channel: &Channel) {
        match self {
            Call::Compatibility => {
                ConfigurationClient::new(channel.clone())
                    .compatibility(CompatibilityRequest {})
                    .await
                    .unwrap();
            }
            Call::CommitTree { commit, subdir } => {
                let r = SourceTree::new(channel.clone())
                    .commit_tree(commit, subdir, false)
                    .await;
                assert_eq!(r.status, 0, "ServeCommitTree answered {}", r.status);
            }
            Call::ArchiveTree { content } => {
                let r = SourceTree::new(channel.clone())
                    .archive_tree(content, ArchiveType::Tar, ".", SymlinksResolve::None, false)
                    .await;
                assert_eq!(r.status, 0, "ServeArchiveTree answered {}", r.status);
            }
            Call::Target(request) => {
                common::targets::ask(&mut TargetClient::new(channel.clone()), request).await;
            }
        }
    }
}

/// Requests per second and median latency of `clients` clients asking
/// `call` for [`RUN`].
async fn rate(port: u16, call: &Call, clients: usize) -> (f64, Duration) {
    let mut channels = Vec::new();
    for _ in 0..clients {
        channels.push(common::channel(port).await);
    }
    // Warm the connections up.
    for channel in &channels {
        call.once(channel).await;
    }
    let start = Instant::now();
    let deadline = start + RUN;
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    call.once(&channel).await;
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let wall = start.elapsed();
    all.sort();
    (all.len() as f64 / wall.as_secs_f64(), all[all.len() / 2])
}

struct Case {
    name: &'static str,
    clients: usize,
}

const CASES: [Case; 8] = [
    Case {
        name: "compat",
        clients: 1,
    },
    Case {
        name: "compat",
        clients: 64,
    },
    Case {
        name: "commit",
        clients: 1,
    },
    Case {
        name: "commit",
        clients: 64,
    },
    Case {
        name: "archive",
        clients: 1,
    },
    Case {
        name: "archive",
        clients: 64,
    },
    Case {
        name: "target",
        clients: 1,
    },
    Case {
        name: "target",
        clients: 64,
    },
];

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let Some(just) = common::reference::reference_just() else {
        eprintln!("vs_reference: the reference `just` is not installed; nothing to compare");
        return;
    };
    // JSERVE_BENCH_JSERVE: another jserve binary, say of an older commit.
    let jserve = std::env::var_os("JSERVE_BENCH_JSERVE").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_jserve")),
        PathBuf::from,
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src/lib")).unwrap();
    std::fs::write(repo.join("src/lib/a.txt"), "a\n").unwrap();
    let mut targets = common::corpus::load_targets(MANY_ACTIONS, LOAD_DEPTH, LOAD_WIDTH);
    let one: serde_json::Value =
        serde_json::from_str(&common::targets::one_action_export()).unwrap();
    targets
        .as_object_mut()
        .unwrap()
        .extend(one.as_object().unwrap().clone());
    std::fs::write(repo.join("TARGETS"), targets.to_string()).unwrap();
    if "cold-archive".contains(&filter) {
        common::corpus::make_tar_gz(
            &repo.join("sources.tar.gz"),
            COLD_FILES,
            10_000,
            common::corpus::Corpus::Words,
        );
    }
    let tar = Command::new("tar")
        .arg("czf")
        .arg(repo.join("pkg.tar.gz"))
        .arg("-C")
        .arg(&repo)
        .arg("src")
        .status()
        .unwrap();
    assert!(tar.success(), "tar");
    if "cold-large".contains(&filter) || "cold-remote".contains(&filter) {
        // LARGE_FILES small files, 100 to a directory.
        for i in 0..LARGE_FILES {
            let dir = repo.join(format!("large/d{:04}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            std::fs::write(dir.join(format!("f{i}")), format!("large file {i}\n")).unwrap();
        }
    }
    let (commit, tree) = commit_all(&repo);
    let archive = git(&repo, &["rev-parse", "HEAD:pkg.tar.gz"]);
    let sources = repo
        .join("sources.tar.gz")
        .exists()
        .then(|| git(&repo, &["rev-parse", "HEAD:sources.tar.gz"]));

    let programs = [just.clone(), jserve.clone()];
    let servers = [
        (
            "reference",
            start(&just, &dir.path().join("reference"), &repo),
        ),
        ("jserve", start(&jserve, &dir.path().join("jserve"), &repo)),
    ];
    if cpus() > 1 {
        pin(&(1..cpus()).collect::<Vec<_>>());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let hot = CASES.iter().any(|c| c.name.contains(&filter));
    runtime.block_on(async {
        if !hot {
            return;
        }
        // The target request of each server, built there once.
        let mut targets = Vec::new();
        for (_, server) in &servers {
            let channel = common::channel(server.port).await;
            let request =
                request_at(&channel, HashFunction::GitSha1, &tree, "one", json!({})).await;
            common::targets::ask(&mut TargetClient::new(channel), &request).await;
            targets.push(request);
        }
        println!(
            "{:<8} {:>7} {:>16} {:>16} {:>7} {:>22}",
            "case", "clients", "reference req/s", "jserve req/s", "ratio", "p50 ms (ref / jserve)"
        );
        for case in CASES.iter().filter(|c| c.name.contains(&filter)) {
            let mut best = [(0.0f64, Duration::MAX); 2];
            for _round in 0..2 {
                for (i, (_, server)) in servers.iter().enumerate() {
                    let call = match case.name {
                        "compat" => Call::Compatibility,
                        "commit" => Call::CommitTree {
                            commit: commit.clone(),
                            subdir: "src/lib".into(),
                        },
                        "archive" => Call::ArchiveTree {
                            content: archive.clone(),
                        },
                        _ => Call::Target(targets[i].clone()),
                    };
                    let (per_second, p50) = rate(server.port, &call, case.clients).await;
                    if per_second > best[i].0 {
                        best[i] = (per_second, p50);
                    }
                }
            }
            println!(
                "{:<8} {:>7} {:>16.0} {:>16.0} {:>6.2}× {:>10.3} / {:.3}",
                case.name,
                case.clients,
                best[0].0,
                best[1].0,
                best[1].0 / best[0].0,
                best[0].1.as_secs_f64() * 1000.0,
                best[1].1.as_secs_f64() * 1000.0
            );
        }
    });
    drop(servers);
    let cold = Cold {
        programs,
        dir: dir.path().to_path_buf(),
        repo,
    };
    runtime.block_on(async {
        if let Some(sources) = &sources {
            cold.archive(sources).await;
        }
        if "cold-target".contains(&filter) {
            cold.targets(&tree).await;
        }
        if "cold-large".contains(&filter) {
            cold.large(&commit, false).await;
        }
        if "cold-remote".contains(&filter) {
            cold.large(&commit, true).await;
        }
    });
}

/// Files of the large tree synced and fetched cold.
const LARGE_FILES: usize = 100_000;

/// Files of the archive imported cold (about 10 kB each).
const COLD_FILES: usize = 10_000;
/// The cold targets: independent actions of "many", and the export chain's
/// depth and the export targets' width of "load".
const MANY_ACTIONS: usize = 500;
const LOAD_DEPTH: usize = 1000;
const LOAD_WIDTH: usize = 1000;

/// Cases that need a fresh server each time: every run starts both servers
/// anew on empty build roots, alternating, and the better of two runs counts.
struct Cold {
    programs: [PathBuf; 2],
    dir: PathBuf,
    repo: PathBuf,
}

impl Cold {
    /// Runs `work` on fresh servers, twice each; the best wall times.
    async fn best<F, Fut>(&self, name: &str, phases: usize, work: F) -> Vec<[Duration; 2]>
    where
        F: Fn(u16) -> Fut,
        Fut: std::future::Future<Output = Vec<Duration>>,
    {
        self.best_with(name, phases, false, work).await
    }

    /// As [`Cold::best`]; with `remote`, each server has a fresh `jserve
    /// execute` (native) as its external endpoint.
    async fn best_with<F, Fut>(
        &self,
        name: &str,
        phases: usize,
        remote: bool,
        work: F,
    ) -> Vec<[Duration; 2]>
    where
        F: Fn(u16) -> Fut,
        Fut: std::future::Future<Output = Vec<Duration>>,
    {
        let mut best = vec![[Duration::MAX; 2]; phases];
        for round in 0..2 {
            for (i, program) in self.programs.iter().enumerate() {
                let dir = self.dir.join(format!("{name}-{round}-{i}"));
                let endpoint = remote.then(|| {
                    common::endpoints::Execute::start(
                        Path::new(env!("CARGO_BIN_EXE_jserve")),
                        &dir.join("endpoint"),
                        false,
                        None,
                    )
                });
                let address = endpoint.as_ref().map(|e| e.address());
                let server = start_with(program, &dir, &self.repo, address.as_deref());
                let times = work(server.port).await;
                drop(endpoint);
                // Build roots stay until the end: on ext4, files created
                // after a mass deletion are slow for a minute, which would
                // weigh on whichever server runs next.
                drop(server);
                for (phase, t) in times.into_iter().enumerate() {
                    best[phase][i] = best[phase][i].min(t);
                }
            }
        }
        best
    }

    fn print(label: &str, [reference, jserve]: [Duration; 2]) {
        println!(
            "{label:<58} {:>9.2} s {:>9.2} s {:>7.2}×",
            reference.as_secs_f64(),
            jserve.as_secs_f64(),
            jserve.as_secs_f64() / reference.as_secs_f64()
        );
    }

    /// ServeCommitTree with sync of a directory of [`LARGE_FILES`] files
    /// (the commit is in a configured repository: everything goes to the
    /// endpoint's CAS, the server's own or, with `remote`, a `jserve
    /// execute`), then GetRemoteTree of that tree (from that CAS into the git
    /// cache); the server's peak RSS after both.
    async fn large(&self, commit: &str, remote: bool) {
        let name = if remote { "cold-remote" } else { "cold-large" };
        let best = self
            .best_with(name, 3, remote, |port| async move {
                let mut client = SourceTree::new(common::channel(port).await);
                let start = Instant::now();
                let r = client.commit_tree(commit, "large", true).await;
                let sync = start.elapsed();
                assert_eq!(r.status, 0, "ServeCommitTree answered {}", r.status);
                // The tree's digest at the endpoint, as the server gave it.
                let digest = r.digest.clone().expect("a synced tree has a digest");
                let start = Instant::now();
                let g = client.get_remote_tree(digest).await;
                let fetch = start.elapsed();
                assert_eq!(g.status, 0, "GetRemoteTree answered {}", g.status);
                vec![sync, fetch, Duration::from_millis(peak_rss_kib(port))]
            })
            .await;
        let files = if remote {
            format!("{LARGE_FILES} files, to jserve execute")
        } else {
            format!("{LARGE_FILES} files")
        };
        Self::print(&format!("ServeCommitTree + sync, {files}"), best[0]);
        Self::print("  GetRemoteTree of that tree into the git cache", best[1]);
        println!(
            "{:<58} {:>9} MiB {:>7} MiB",
            "  peak RSS of the server",
            best[2][0].as_millis() >> 10,
            best[2][1].as_millis() >> 10
        );
    }

    /// ServeArchiveTree of an archive nobody asked for before, then the
    /// same with the tree synced to the server's CAS.
    async fn archive(&self, content: &str) {
        let best = self
            .best("cold-archive", 2, |port| async move {
                let channel = common::channel(port).await;
                let mut client = SourceTree::new(channel);
                let mut times = Vec::new();
                for sync in [false, true] {
                    let start = Instant::now();
                    let r = client
                        .archive_tree(content, ArchiveType::Tar, ".", SymlinksResolve::None, sync)
                        .await;
                    times.push(start.elapsed());
                    assert_eq!(r.status, 0, "ServeArchiveTree answered {}", r.status);
                }
                times
            })
            .await;
        println!(
            "{:<58} {:>11} {:>11} {:>8}",
            "cold case (fresh server each run, wall time)", "reference", "jserve", "ratio"
        );
        let files = format!("{COLD_FILES} files of 10 kB");
        Self::print(&format!("ServeArchiveTree cold, {files}"), best[0]);
        Self::print("  then the same tree synced to the server's CAS", best[1]);
    }

    /// ServeTarget of export targets nobody built before: "many" (one
    /// client), then "load" asked by two clients at once.
    async fn targets(&self, tree: &str) {
        let best = self
            .best("cold-target", 2, |port| async move {
                let channel = common::channel(port).await;
                let mut times = Vec::new();
                let many =
                    request_at(&channel, HashFunction::GitSha1, tree, "many", json!({})).await;
                let start = Instant::now();
                common::targets::ask(&mut TargetClient::new(channel.clone()), &many).await;
                times.push(start.elapsed());
                let load =
                    request_at(&channel, HashFunction::GitSha1, tree, "load", json!({})).await;
                let start = Instant::now();
                let both: Vec<_> = (0..2)
                    .map(|_| {
                        let (channel, load) = (channel.clone(), load.clone());
                        tokio::spawn(async move {
                            common::targets::ask(&mut TargetClient::new(channel), &load).await
                        })
                    })
                    .collect();
                for client in both {
                    client.await.unwrap();
                }
                times.push(start.elapsed());
                times
            })
            .await;
        Self::print(
            &format!("ServeTarget cold, export over {MANY_ACTIONS} actions"),
            best[0],
        );
        Self::print(
            &format!("  load: chain {LOAD_DEPTH} deep + {LOAD_WIDTH} wide, 2 clients"),
            best[1],
        );
    }
}
