//! Two `jserve serve` replicas sharing their cache through one endpoint
//! (`"shared cache": true`), with the reference `just-mr` clients: over
//! `jserve execute` in native and in compatible mode, and over BuildGrid.
//!
//! Replica A knows the dependency's repository and the archives; replica B
//! knows only the dependency's repository (its commit must be known for
//! `just-mr` to set the absent root up). In each world:
//!
//! * client 1 builds through A (a miss: the dependency's actions run once);
//! * client 2, with an empty build root, asks B: served with zero actions,
//!   also the nested export target asked for alone;
//! * an export built at a dispatch endpoint is shared in its own shard: B
//!   serves it for the same dispatch list, and builds it anew without one;
//! * archive and distdir roots set up by `just-mr` through B, which has no
//!   archive, get the trees A computed;
//! * a Remote Asset pushed at A is fetched from B;
//! * B restarted on an empty build root serves all of it again;
//! * B's metrics count its shared hits, local hits and misses.
//!
//! The dependency's actions append to files outside the build, so every
//! run is counted. Without the reference clients or BuildGrid a test prints
//! `SKIPPED:` and passes, except under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::asset::v1::{
    fetch_client::FetchClient, push_client::PushClient, FetchBlobRequest, PushBlobRequest,
};
use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, content_addressable_storage_client::ContentAddressableStorageClient,
};
use common::endpoints::{BuildGrid, Execute, JserveServe};
use common::git::git;
use common::loc;
use common::procs::run_bounded;
use common::reference::{reference_just, reference_just_16, reference_just_mr};
use jserve::digest::{HashFunction, ObjectKind};
use serde_json::{json, Value};

/// The dependency, known to the replicas only; COUNTS is where its actions
/// count their runs.
const DEP_TARGETS: &str = r#"{
  "inner": {"type": "export", "target": "inner-gen"},
  "inner-gen": {"type": "generic", "outs": ["inner.txt"],
    "cmds": ["echo run >> COUNTS/inner", "echo inner > inner.txt"]},
  "outer": {"type": "export", "target": "outer-gen"},
  "outer-gen": {"type": "generic", "outs": ["outer.txt"], "deps": ["inner"],
    "cmds": ["echo run >> COUNTS/outer", "cat inner.txt > outer.txt",
             "echo outer >> outer.txt"]},
  "race": {"type": "export", "target": "race-gen"},
  "race-gen": {"type": "generic", "outs": ["race.txt"],
    "cmds": ["echo run >> COUNTS/race", "sleep 1", "echo race > race.txt"]},
  "dispatched": {"type": "export", "target": "dispatched-gen"},
  "dispatched-gen": {"type": "generic", "outs": ["where.txt"],
    "cmds": ["echo run >> COUNTS/dispatched", "echo ${DISPATCHED:-main} > where.txt"]}
}"#;

const MAIN_TARGETS: &str = r#"{
  "top": {"type": "generic", "outs": ["top.txt"], "deps": [["@", "dep", "", "outer"]],
    "cmds": ["cat outer.txt > top.txt", "echo top >> top.txt"]}
}"#;

/// The instance name BuildGrid serves (and 1.5 clients always send).
const INSTANCE: &str = "remote-execution";

/// What the dispatch endpoint's launcher sets; the dispatched action prints it.
const DISPATCH_LAUNCHER: &str = r#"["env","DISPATCHED=dispatched"]"#;

/// Where the absent roots claim to come from: no client can fetch them.
const UNREACHABLE: &str = "file:///nonexistent/jserve-shared-cache.git";

const CLIENT_LIMIT: Duration = Duration::from_secs(180);

/// The URI a Remote Asset is pushed under.
const ASSET_URI: &str = "urn:jserve-test:shared-asset";

async fn connect(address: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    JserveExecute,
    BuildGrid,
}

struct Client {
    just: PathBuf,
    just_mr: PathBuf,
    /// 1.5.x: no `--remote-instance-name` (always sends [`INSTANCE`]).
    old: bool,
}

/// Processes a world keeps running; dropped with it.
enum Guard {
    Execute(#[allow(dead_code)] Execute),
    BuildGrid(#[allow(dead_code)] Box<BuildGrid>),
}

struct World {
    dir: PathBuf,
    compatible: bool,
    kind: Kind,
    client: Client,
    endpoint: String,
    dispatch: Execute,
    dep: PathBuf,
    counts: PathBuf,
    archive_id: String,
    a: JserveServe,
    b: JserveServe,
    _guards: Vec<Guard>,
}

struct Run {
    ok: bool,
    log: String,
    stdout: String,
}

impl World {
    fn start(kind: Kind, compatible: bool, client: Client, dir: &Path) -> Option<World> {
        let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
        let mut guards = Vec::new();
        let endpoint = match kind {
            Kind::JserveExecute => {
                let e = Execute::start(&jserve, &dir.join("endpoint"), compatible, None);
                let address = e.address();
                guards.push(Guard::Execute(e));
                address
            }
            Kind::BuildGrid => {
                let (bgd, pg_bin) = BuildGrid::find()?;
                let grid_dir = dir.join("buildgrid");
                std::fs::create_dir_all(&grid_dir).unwrap();
                let grid = BuildGrid::start(&bgd, pg_bin, &grid_dir, INSTANCE);
                let address = format!("127.0.0.1:{}", grid.port);
                guards.push(Guard::BuildGrid(Box::new(grid)));
                address
            }
        };
        let dispatch = Execute::start(
            &jserve,
            &dir.join("dispatch"),
            compatible,
            Some(DISPATCH_LAUNCHER),
        );
        let counts = dir.join("counts");
        std::fs::create_dir_all(&counts).unwrap();
        let dep = dir.join("dep");
        std::fs::create_dir_all(&dep).unwrap();
        std::fs::write(
            dep.join("TARGETS"),
            DEP_TARGETS.replace("COUNTS", counts.to_str().unwrap()),
        )
        .unwrap();
        git(&dep, &["init", "-q"]);
        git(&dep, &["add", "-A"]);
        git(&dep, &["commit", "-q", "-m", "dep"]);
        let (sources, archive_id) = make_sources(dir);
        let replica = |name: &str, repositories: Vec<Value>| {
            start_replica(&dir.join(name), kind, compatible, &endpoint, repositories)
        };
        let a = replica("a", vec![loc(&dep), loc(&sources)]);
        let b = replica("b", vec![loc(&dep)]);
        Some(World {
            dir: dir.to_path_buf(),
            compatible,
            kind,
            client,
            dispatch,
            a,
            b,
            dep,
            counts,
            archive_id,
            endpoint,
            _guards: guards,
        })
    }

    /// Replica B anew, on an empty build root in `dir/name`.
    fn restart_b(&mut self, name: &str) {
        self.b = start_replica(
            &self.dir.join(name),
            self.kind,
            self.compatible,
            &self.endpoint,
            vec![loc(&self.dep)],
        );
    }

    fn name(&self) -> String {
        let mode = if self.compatible {
            "compatible"
        } else {
            "native"
        };
        format!("{:?}, {mode}", self.kind)
    }

    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.counts.join(name))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// `just-mr` through `serve` with the build root `client_root`.
    fn just_mr(&self, serve: &JserveServe, client_root: &str, config: &Path, args: &[&str]) -> Run {
        let c = &self.client;
        let mut cmd = Command::new(&c.just_mr);
        cmd.current_dir(&self.dir)
            .args(["--norc", "--plain-log", "--just"])
            .arg(&c.just)
            .arg("--local-build-root")
            .arg(self.dir.join("clients").join(client_root))
            .args(["-R", &serve.address(), "-r", &self.endpoint]);
        if self.kind == Kind::BuildGrid && !c.old {
            cmd.args(["--remote-instance-name", INSTANCE]);
        }
        if self.compatible {
            cmd.arg("--compatible");
        }
        cmd.arg("-C").arg(config).args(args);
        let out = run_bounded(cmd, &format!("just-mr {args:?}"), CLIENT_LIMIT);
        Run {
            ok: out.status.success(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// The client's project: `top` over the absent dependency.
    fn project(&self) -> PathBuf {
        let main = self.dir.join("main");
        std::fs::create_dir_all(&main).unwrap();
        std::fs::write(main.join("TARGETS"), MAIN_TARGETS).unwrap();
        let repos = json!({
            "main": "main",
            "repositories": {
                "main": {
                    "repository": {"type": "file", "path": main.to_str().unwrap()},
                    "bindings": {"dep": "dep"}
                },
                "dep": {
                    "repository": {
                        "type": "git", "repository": UNREACHABLE, "branch": "main",
                        "commit": git(&self.dep, &["rev-parse", "HEAD"]),
                        "pragma": {"absent": true}
                    }
                }
            }
        });
        let path = self.dir.join("repos.json");
        std::fs::write(&path, repos.to_string()).unwrap();
        path
    }

    /// `just-mr install` of `top` (or `--main dep` of `target`) into `out`.
    fn install(&self, serve: &JserveServe, client_root: &str, target: &str, extra: &[&str]) -> Run {
        let repos = self.project();
        let out = self.dir.join("out").join(client_root);
        let mut args = Vec::new();
        if target != "top" {
            args.extend(["--main", "dep"]);
        }
        args.extend(["install", "-o", out.to_str().unwrap()]);
        args.extend(extra);
        args.push(target);
        self.just_mr(serve, client_root, &repos, &args)
    }

    fn out(&self, client_root: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("out").join(client_root).join(file))
            .unwrap_or_else(|e| panic!("{}: {client_root}/{file}: {e}", self.name()))
    }

    /// `just-mr setup` of an absent root through `serve`: the tree it gets.
    fn absent_root(&self, serve: &JserveServe, case: &str, root: Value) -> Result<String, String> {
        let mut config = json!({"main": "main", "repositories": {}});
        let repositories = config["repositories"].as_object_mut().unwrap();
        let mut main = root;
        if let Some(parts) = main.as_object_mut().unwrap().remove("parts") {
            for (name, part) in parts.as_object().unwrap() {
                repositories.insert(name.clone(), json!({"repository": part}));
            }
        }
        repositories.insert("main".into(), json!({"repository": main}));
        let path = self.dir.join(format!("root-{case}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let run = self.just_mr(serve, &format!("roots-{case}"), &path, &["setup"]);
        if !run.ok {
            return Err(run.log);
        }
        let setup: Value =
            serde_json::from_str(&std::fs::read_to_string(run.stdout.trim()).unwrap()).unwrap();
        let root = &setup["repositories"]["main"]["workspace_root"];
        Ok(root[1].as_str().unwrap_or_default().to_string())
    }

    fn archive_root(&self) -> Value {
        json!({"type": "archive", "content": self.archive_id,
               "fetch": "https://invalid.example/pkg.tar.gz", "subdir": "pkg",
               "pragma": {"absent": true}})
    }

    fn distdir_root(&self) -> Value {
        json!({"type": "distdir", "repositories": ["tgz"], "pragma": {"absent": true},
               "parts": {"tgz": self.archive_root()}})
    }

    /// Uploads a blob to the endpoint and pushes it at A under [`ASSET_URI`].
    async fn push_blob_at_a(&self) -> reapi::Digest {
        let hash = if self.compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        };
        let data = format!("asset of {}", self.name()).into_bytes();
        let digest = hash.digest_bytes(ObjectKind::File, &data).to_wire(hash);
        let instance = if self.kind == Kind::BuildGrid {
            INSTANCE
        } else {
            ""
        };
        let mut cas = ContentAddressableStorageClient::new(connect(&self.endpoint).await);
        let stored = cas
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                instance_name: instance.into(),
                requests: vec![reapi::batch_update_blobs_request::Request {
                    digest: Some(digest.clone()),
                    data,
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stored.responses[0].status.as_ref().map_or(0, |s| s.code), 0);
        PushClient::new(connect(&self.a.address()).await)
            .push_blob(PushBlobRequest {
                uris: vec![ASSET_URI.into()],
                blob_digest: Some(digest.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        digest
    }

    /// FetchBlob of [`ASSET_URI`] at B: the digest, if found.
    async fn fetch_blob_at_b(&self) -> Option<reapi::Digest> {
        let answer = FetchClient::new(connect(&self.b.address()).await)
            .fetch_blob(FetchBlobRequest {
                uris: vec![ASSET_URI.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        answer.blob_digest
    }

    /// B's metrics sample `name{labels}`.
    fn b_metric(&self, sample: &str) -> f64 {
        let addr = common::http::metrics_address(&self.b.log()).expect("B logs its metrics");
        let (_, _, text) = common::http::get(addr, "/metrics");
        common::http::sample(&text, sample).unwrap_or(0.0)
    }
}

/// A replica with its own build root in `dir`, sharing its cache through
/// `endpoint`, with metrics on a port of its choice.
fn start_replica(
    dir: &Path,
    kind: Kind,
    compatible: bool,
    endpoint: &str,
    repositories: Vec<Value>,
) -> JserveServe {
    let mut execution = json!({
        "address": endpoint,
        "compatible": compatible,
        "shared cache": true,
    });
    if kind == Kind::BuildGrid {
        execution["instance name"] = json!(INSTANCE);
    }
    JserveServe::start(
        dir,
        json!({
            "local build root": loc(&dir.join("root")),
            "repositories": repositories,
            "remote service": {"port": 0},
            "execution endpoint": execution,
            "metrics": {"port": 0},
        }),
    )
}

/// A small package as a tar.gz in a repository of its own.
fn make_sources(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("sources");
    let pkg = dir.join("archive-src/pkg");
    std::fs::create_dir_all(pkg.join("sub")).unwrap();
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(pkg.join("a.txt"), format!("a of {}\n", dir.display())).unwrap();
    std::fs::write(pkg.join("sub/b.txt"), "b\n").unwrap();
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(repo.join("pkg.tar.gz"))
        .arg("pkg")
        .current_dir(pkg.parent().unwrap())
        .status()
        .unwrap();
    assert!(tar.success());
    // Not the archive alone: the repository's tree must not be the distdir's.
    std::fs::write(repo.join("README"), "sources\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "sources"]);
    let id = git(&repo, &["rev-parse", "HEAD:pkg.tar.gz"]);
    (repo, id)
}

fn assert_served(w: &World, run: &Run, what: &str) {
    let name = w.name();
    assert!(run.ok, "{name}, {what}: the client failed:\n{}", run.log);
    assert!(
        run.log.contains("0 cached, 1 served, 0 uncached"),
        "{name}, {what}: not served:\n{}",
        run.log
    );
}

fn client(old: bool) -> Option<Client> {
    let just = if old {
        reference_just()?
    } else {
        reference_just_16()?
    };
    Some(Client {
        just_mr: reference_just_mr(&just),
        just,
        old,
    })
}

fn shared_between_replicas(kind: Kind, compatible: bool, old_client: bool) {
    let Some(client) = client(old_client) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut w) = World::start(kind, compatible, client, tmp.path()) else {
        return;
    };
    let name = w.name();

    // Client 1 through A: a miss, built at the endpoint.
    let run = w.install(&w.a, "client-1", "top", &[]);
    assert_served(&w, &run, "client 1 through A");
    assert_eq!(
        w.out("client-1", "top.txt"),
        "inner\nouter\ntop\n",
        "{name}"
    );
    assert_eq!((w.runs("outer"), w.runs("inner")), (1, 1), "{name}");

    // Client 2 through B, which never built anything: the shared cache.
    let mark = w.b.log().len();
    let run = w.install(&w.b, "client-2", "top", &[]);
    assert_served(&w, &run, "client 2 through B");
    assert!(
        run.log.contains("Processed 1 actions, 1 cache hits"),
        "{name}: client 2 ran its own action:\n{}",
        run.log
    );
    assert_eq!(
        w.out("client-2", "top.txt"),
        "inner\nouter\ntop\n",
        "{name}"
    );
    assert_eq!((w.runs("outer"), w.runs("inner")), (1, 1), "{name}");
    let log = w.b.log_since(mark);
    assert!(log.contains("shared cache hit"), "{name}: B's log:\n{log}");
    assert!(
        !log.contains("analysing and building"),
        "{name}: B's log:\n{log}"
    );

    // The nested export target, recorded when A built `outer`.
    let run = w.install(&w.b, "client-3", "inner", &[]);
    assert_served(&w, &run, "the nested export through B");
    assert_eq!(w.out("client-3", "inner.txt"), "inner\n", "{name}");
    assert_eq!((w.runs("outer"), w.runs("inner")), (1, 1), "{name}");

    // An export built at a dispatch endpoint: its own shard, shared too.
    let list = w.dir.join("dispatch.json");
    std::fs::write(
        &list,
        json!([[{"runner": "dispatched"}, w.dispatch.address()]]).to_string(),
    )
    .unwrap();
    let dispatched = [
        "--endpoint-configuration",
        list.to_str().unwrap(),
        "--remote-execution-property",
        "runner:dispatched",
    ];
    let run = w.install(&w.a, "client-d1", "dispatched", &dispatched);
    assert_served(&w, &run, "the dispatched export through A");
    assert_eq!(w.out("client-d1", "where.txt"), "dispatched\n", "{name}");
    let run = w.install(&w.b, "client-d2", "dispatched", &dispatched);
    assert_served(&w, &run, "the dispatched export through B");
    assert_eq!(w.out("client-d2", "where.txt"), "dispatched\n", "{name}");
    assert_eq!(w.runs("dispatched"), 1, "{name}");
    // Without the dispatch list it is another backend: a miss, built at the
    // main endpoint.
    let run = w.install(&w.b, "client-d3", "dispatched", &[]);
    assert_served(&w, &run, "the export without dispatch through B");
    assert_eq!(w.out("client-d3", "where.txt"), "main\n", "{name}");
    assert_eq!(w.runs("dispatched"), 2, "{name}");

    // Archive and distdir roots: A has the archive, B only the shared facts.
    let mut trees = Vec::new();
    for (case, root) in [("archive", w.archive_root()), ("distdir", w.distdir_root())] {
        let from_a = w
            .absent_root(&w.a, &format!("{case}-a"), root.clone())
            .unwrap_or_else(|log| panic!("{name}: absent {case} through A:\n{log}"));
        let from_b = w
            .absent_root(&w.b, &format!("{case}-b"), root.clone())
            .unwrap_or_else(|log| {
                panic!(
                    "{name}: absent {case} through B:\n{log}\nA:\n{}\nB:\n{}",
                    w.a.log(),
                    w.b.log()
                )
            });
        assert_eq!(from_b, from_a, "{name}: absent {case}");
        trees.push((case, root, from_a));
    }
    assert!(
        w.b.log().contains("answered from the shared cache"),
        "{name}: B's log:\n{}",
        w.b.log()
    );

    // B's metrics: two shared hits (outer, inner) and the dispatched one,
    // one miss (the export without dispatch).
    assert_eq!(
        w.b_metric("jserve_serve_target_outcomes_total{outcome=\"shared_hit\"}"),
        3.0,
        "{name}"
    );
    assert_eq!(
        w.b_metric("jserve_serve_target_outcomes_total{outcome=\"miss\"}"),
        1.0,
        "{name}"
    );
    // Asked again, B answers from what it remembers.
    let run = w.install(&w.b, "client-4", "top", &[]);
    assert_served(&w, &run, "client 4 through B");
    assert_eq!(
        w.b_metric("jserve_serve_target_outcomes_total{outcome=\"local_hit\"}"),
        1.0,
        "{name}"
    );

    assert_eq!(
        w.b_metric("jserve_serve_target_builds_total"),
        1.0,
        "{name}: B built more than the export without dispatch"
    );

    // Two clients missing the same key at once, one through each replica:
    // both may build and record; both are served the same artifacts.
    let (run_a, run_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| w.install(&w.a, "client-race-a", "race", &[]));
        let b = scope.spawn(|| w.install(&w.b, "client-race-b", "race", &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_served(&w, &run_a, "the race through A");
    assert_served(&w, &run_b, "the race through B");
    assert_eq!(w.out("client-race-a", "race.txt"), "race\n", "{name}");
    assert_eq!(w.out("client-race-b", "race.txt"), "race\n", "{name}");

    // A blob pushed as a Remote Asset at A is fetched from B.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pushed = runtime.block_on(w.push_blob_at_a());
    assert_eq!(
        runtime.block_on(w.fetch_blob_at_b()),
        Some(pushed.clone()),
        "{name}"
    );

    // B restarted on an empty build root: everything again, nothing built.
    w.restart_b("b-restarted");
    assert_eq!(
        runtime.block_on(w.fetch_blob_at_b()),
        Some(pushed),
        "{name}"
    );
    let run = w.install(&w.b, "client-5", "top", &[]);
    assert_served(&w, &run, "client 5 through the restarted B");
    assert_eq!(
        w.out("client-5", "top.txt"),
        "inner\nouter\ntop\n",
        "{name}"
    );
    let run = w.install(&w.b, "client-6", "inner", &[]);
    assert_served(&w, &run, "the nested export through the restarted B");
    let run = w.install(&w.b, "client-7", "race", &[]);
    assert_served(&w, &run, "the race's target through the restarted B");
    assert_eq!((w.runs("outer"), w.runs("inner")), (1, 1), "{name}");
    let log = w.b.log();
    assert_eq!(
        log.matches("shared cache hit").count(),
        3,
        "{name}: B's log:\n{log}"
    );
    assert!(
        !log.contains("analysing and building"),
        "{name}: B's log:\n{log}"
    );
    for (case, root, tree) in trees {
        let again = w
            .absent_root(&w.b, &format!("{case}-restarted"), root)
            .unwrap_or_else(|log| panic!("{name}: absent {case} through restarted B:\n{log}"));
        assert_eq!(again, tree, "{name}: absent {case} after the restart");
    }
}

#[test]
fn jserve_execute_native() {
    shared_between_replicas(Kind::JserveExecute, false, false);
}

#[test]
fn jserve_execute_compatible() {
    shared_between_replicas(Kind::JserveExecute, true, true);
}

#[test]
fn buildgrid() {
    shared_between_replicas(Kind::BuildGrid, true, false);
}
