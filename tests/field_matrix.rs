//! The field matrix: jserve as a drop-in for `just serve` with the clients
//! and endpoints justbuild users run. Clients: the reference `just`/`just-mr`
//! 1.5.1 (Debian stable) and 1.6.5. Associated endpoints: jserve itself,
//! `just execute` 1.5.1 and 1.6.5, in native and compatible mode, and
//! BuildGrid (compatible only). One test per endpoint and mode; in each, one
//! jserve and one endpoint serve both clients, whose cases run side by side:
//!
//! * absent roots set up by `just-mr` through serve: `git` (whole and a
//!   subdirectory), `git tree`, `archive` and `zip` (symlinks kept and
//!   resolved), `distdir`, and a `file` root with `to_git` that only the
//!   client has (it reaches serve through the endpoint, GetRemoteTree); each
//!   gives the tree the client computes itself for the same root present;
//! * ServeTarget: a miss built on the endpoint, a hit for a second client
//!   with an empty build root (nothing runs), a nested export asked for
//!   alone, a failing export whose log `just install-cas` reads back (it
//!   names the requested target and the action's configured target), an
//!   export whose actions go to a dispatch endpoint, and `just describe` of
//!   an absent export target;
//! * with `just execute`: the endpoint's build root emptied by two
//!   rotations; a hit at jserve uploads the artifacts again, trees after
//!   their parts, and nothing is built again;
//! * `just gc` and `just-mr gc-repo` (and once `jserve gc --rotate`)
//!   rotating jserve's build root: what is used between rotations is still
//!   served from the cache, what is unused for two rotations is built anew,
//!   and `jserve gc --check` finds every generation complete;
//! * fair local execution (not on BuildGrid, whose test bot runs one action
//!   at a time): 20 clients ask for export targets of 1 to 20 one-second
//!   steps, the 16 longest are killed after 7 s; the short ones and a new
//!   request are served in about their own actions' time, while the
//!   abandoned builds go on and fill the cache.
//!
//! The dependency's actions append to files outside the build, so every run
//! of an action is counted. Without the reference clients, BuildGrid or
//! PostgreSQL a test prints `SKIPPED:` and passes, except under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::endpoints::{BuildGrid, Execute, JserveServe};
use common::git::git;
use common::loc;
use common::procs::{run_bounded, Group};
use common::reference::{reference_just, reference_just_16, reference_just_mr};
use jserve::digest::HashFunction;
use serde_json::{json, Value};

/// The dependency, known to jserve only. COUNTS becomes a directory the
/// actions append to, one line per run; SLOW_TARGETS the fairness targets.
const DEP_TARGETS: &str = r#"{
  "inner": {"type": "export", "target": "inner-gen"},
  "inner-gen": {"type": "generic", "outs": ["inner.txt"],
    "cmds": ["echo run >> COUNTS/inner", "echo inner > inner.txt"]},
  "outer": {"type": "export", "target": "outer-gen",
    "doc": ["The outer export target."], "flexible_config": ["FLAVOUR"]},
  "outer-gen": {"type": "generic", "outs": ["outer.txt"], "deps": ["inner"],
    "cmds": ["echo run >> COUNTS/outer", "cat inner.txt > outer.txt",
             "echo outer >> outer.txt"]},
  "bad": {"type": "export", "target": "bad-gen"},
  "bad-gen": {"type": "generic", "outs": ["x"],
    "cmds": ["echo failing-output", "exit 42"]},
  "dispatched": {"type": "export", "target": "dispatched-gen"},
  "dispatched-gen": {"type": "generic", "outs": ["where.txt"], "deps": ["data"],
    "cmds": ["echo run >> COUNTS/dispatched", "echo ${DISPATCHED:-main} > where.txt",
             "cat data/sub/b.txt >> where.txt"]},
  "data": {"type": "tree", "name": "data", "deps": ["a.txt", "sub/b.txt"]},
  "layout": {"type": "export", "target": "layout-gen"},
  "layout-gen": {"type": "generic", "out_dirs": ["d"],
    "cmds": ["echo run >> COUNTS/layout", "mkdir -p d/sub/deeper", "echo top > d/top.txt",
             "echo deep > d/sub/deeper/deep.txt", "ln -s deeper/deep.txt d/sub/link"]}
  SLOW_TARGETS
}"#;

/// The client's own project (a plain directory) using the dependency.
const MAIN_TARGETS: &str = r#"{
  "top": {"type": "generic", "outs": ["top.txt"], "deps": [["@", "dep", "", "outer"]],
    "cmds": ["cat outer.txt > top.txt", "echo top >> top.txt"]},
  "broken": {"type": "generic", "outs": ["y"], "deps": [["@", "dep", "", "bad"]],
    "cmds": ["cp x y"]}
}"#;

/// The REAPI instance name 1.5 clients always send (they have no option for
/// it). BuildGrid checks it, so jserve and 1.6 clients are given it too.
/// 1.6 clients need a non-empty one with `just execute` 1.5 as well: with
/// the empty default they name blobs `blobs/…` for ByteStream, which 1.5's
/// server cannot parse (without serve in the picture too).
const INSTANCE_15: &str = "remote-execution";

/// What a dispatch endpoint's launcher sets; the dispatched action prints it.
const DISPATCH_LAUNCHER: &str = r#"["env","DISPATCHED=dispatched"]"#;

/// Fairness: targets slow-1 … slow-20 of that many one-second steps.
const SLOW: usize = 20;
const SHORT: usize = 4;

/// Where absent git repositories claim to come from: no client can fetch
/// them, so serve must answer.
const UNREACHABLE: &str = "file:///nonexistent/jserve-field-matrix.git";

/// Bound on any one client run.
const CLIENT_LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// jserve serve is its own endpoint.
    Jserve,
    JustExecute15,
    JustExecute16,
    BuildGrid,
}

struct Client {
    /// The version `just version` reports, e.g. "1.5.1".
    label: String,
    /// 1.5.x: no --remote-instance-name, the description named by hash only.
    old: bool,
    just: PathBuf,
    just_mr: PathBuf,
}

impl Client {
    /// `--remote-instance-name` where the world wants one; 1.5 has no such
    /// option and always sends [`INSTANCE_15`].
    fn instance_args(&self, w: &World) -> Vec<String> {
        match w.instance {
            Some(name) if !self.old => {
                vec!["--remote-instance-name".into(), name.into()]
            }
            _ => Vec::new(),
        }
    }
}

/// Both client generations, or none (reported missing) when either is.
fn clients() -> Option<Vec<Client>> {
    let old = reference_just();
    let new = reference_just_16();
    let client = |just: PathBuf| {
        let out = Command::new(&just).arg("version").output().unwrap();
        let info: Value = serde_json::from_slice(&out.stdout).expect("`just version` is JSON");
        let version: Vec<u64> = info["version"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        Client {
            label: format!("{}.{}.{}", version[0], version[1], version[2]),
            old: version[..2] == [1, 5],
            just_mr: reference_just_mr(&just),
            just,
        }
    };
    let clients = vec![client(old?), client(new?)];
    assert!(
        clients[0].old && !clients[1].old,
        "the clients are not of the 1.5 and 1.6 generations"
    );
    Some(clients)
}

/// Processes kept running for a world; dropped with it.
enum Guard {
    Execute(#[allow(dead_code)] Execute),
    BuildGrid(#[allow(dead_code)] Box<BuildGrid>),
}

/// One endpoint and mode: the endpoint, a dispatch endpoint, jserve, and the
/// repositories jserve knows (a dependency per client, and the sources of
/// the absent roots).
struct World {
    kind: Kind,
    compatible: bool,
    dir: PathBuf,
    serve: JserveServe,
    /// The main endpoint, for clients and jserve.
    remote: String,
    /// The instance name 1.6 clients give (None: their default).
    instance: Option<&'static str>,
    dispatch: Execute,
    sources: Sources,
    // Dropped after jserve: the endpoints it talks to.
    _guards: Vec<Guard>,
}

/// The sources repository and the archives in it.
struct Sources {
    repo: PathBuf,
    commit: String,
    distfiles: PathBuf,
    tar_id: String,
    zip_id: String,
}

/// One client's project in a world: its own dependency repository, so the
/// two clients' actions differ and each sees its own misses and hits.
struct Project<'w> {
    world: &'w World,
    client: &'w Client,
    dir: PathBuf,
    counts: PathBuf,
    repos: PathBuf,
}

/// What a client run left: exit status and its log (stderr).
struct Run {
    ok: bool,
    log: String,
    stdout: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

fn slow_targets() -> String {
    let mut text = String::new();
    let steps = (1..=SLOW).map(|k| (format!("slow-{k}"), k));
    for (name, k) in steps.chain([("slow-new".to_string(), 1)]) {
        text.push_str(&format!(
            r#", "{name}": {{"type": "export", "target": "{name}-gen"}}
  , "{name}-gen": {{"type": "generic", "outs": ["slow.txt"],
      "cmds": ["echo start >> COUNTS/{name}", "for i in $(seq {k}); do sleep 1; done",
               "echo end >> COUNTS/{name}", "echo {k} > slow.txt"]}}
"#
        ));
    }
    text
}

fn make_dep(dir: &Path, counts: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(counts).unwrap();
    let targets = DEP_TARGETS
        .replace("SLOW_TARGETS", &slow_targets())
        .replace("COUNTS", counts.to_str().unwrap());
    std::fs::write(dir.join("TARGETS"), targets).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "a\n").unwrap();
    std::fs::write(dir.join("sub/b.txt"), "b\n").unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "dep"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A small package as a tar.gz and a zip (a symlink inside), committed into
/// a repository with a `src` directory, and copied to a distfiles directory.
fn make_sources(dir: &Path) -> Sources {
    let repo = dir.join("sources");
    let pkg = dir.join("archive-src/pkg");
    std::fs::create_dir_all(pkg.join("sub")).unwrap();
    std::fs::create_dir_all(repo.join("src/lib")).unwrap();
    std::fs::write(pkg.join("a.txt"), "a\n").unwrap();
    std::fs::write(pkg.join("sub/b.txt"), "b\n").unwrap();
    std::os::unix::fs::symlink("../a.txt", pkg.join("sub/up")).unwrap();
    std::fs::write(repo.join("README"), "sources\n").unwrap();
    std::fs::write(repo.join("src/main.c"), "int main() { return 0; }\n").unwrap();
    std::fs::write(repo.join("src/lib/util.h"), "#pragma once\n").unwrap();
    std::os::unix::fs::symlink("main.c", repo.join("src/entry.c")).unwrap();
    let status = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    status(
        Command::new("tar")
            .arg("-czf")
            .arg(repo.join("pkg.tar.gz"))
            .arg("pkg")
            .current_dir(pkg.parent().unwrap()),
    );
    status(
        Command::new("zip")
            .arg("-qry")
            .arg(repo.join("pkg.zip"))
            .arg("pkg")
            .current_dir(pkg.parent().unwrap()),
    );
    let distfiles = dir.join("distfiles");
    std::fs::create_dir_all(&distfiles).unwrap();
    for name in ["pkg.tar.gz", "pkg.zip"] {
        std::fs::copy(repo.join(name), distfiles.join(name)).unwrap();
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "sources"]);
    Sources {
        commit: git(&repo, &["rev-parse", "HEAD"]),
        tar_id: git(&repo, &["rev-parse", "HEAD:pkg.tar.gz"]),
        zip_id: git(&repo, &["rev-parse", "HEAD:pkg.zip"]),
        repo,
        distfiles,
    }
}

impl World {
    fn start(kind: Kind, compatible: bool, clients: &[Client], dir: &Path) -> Option<World> {
        let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
        let mut guards = Vec::new();
        let (remote, instance, dispatch_program) = match kind {
            Kind::Jserve => (None, None, jserve.clone()),
            Kind::JustExecute15 | Kind::JustExecute16 => {
                let just = &clients[usize::from(kind == Kind::JustExecute16)].just;
                let endpoint = Execute::start(just, &dir.join("endpoint"), compatible, None);
                let address = endpoint.address();
                guards.push(Guard::Execute(endpoint));
                let instance = (kind == Kind::JustExecute15).then_some(INSTANCE_15);
                (Some(address), instance, just.clone())
            }
            Kind::BuildGrid => {
                let (bgd, pg_bin) = BuildGrid::find()?;
                let grid_dir = dir.join("buildgrid");
                std::fs::create_dir_all(&grid_dir).unwrap();
                let grid = BuildGrid::start(&bgd, pg_bin, &grid_dir, INSTANCE_15);
                let address = format!("127.0.0.1:{}", grid.port);
                guards.push(Guard::BuildGrid(Box::new(grid)));
                (Some(address), Some(INSTANCE_15), jserve.clone())
            }
        };
        let dispatch = Execute::start(
            &dispatch_program,
            &dir.join("dispatch"),
            compatible,
            Some(DISPATCH_LAUNCHER),
        );
        let sources = make_sources(dir);
        let mut repositories = vec![loc(&sources.repo)];
        for client in clients {
            let project = dir.join(&client.label);
            repositories.push(loc(&project.join("dep")));
            make_dep(&project.join("dep"), &project.join("counts"));
        }
        let mut endpoint = json!({"compatible": compatible});
        if let Some(address) = &remote {
            endpoint["address"] = json!(address);
        }
        if kind == Kind::BuildGrid {
            endpoint["instance name"] = json!(INSTANCE_15);
        }
        let serve = JserveServe::start(
            &dir.join("serve"),
            json!({
                "local build root": loc(&dir.join("serve/serve-root")),
                "repositories": repositories,
                "remote service": {"port": 0},
                "execution endpoint": endpoint,
            }),
        );
        let remote = remote.unwrap_or_else(|| serve.address());
        Some(World {
            kind,
            compatible,
            dir: dir.to_path_buf(),
            serve,
            remote,
            instance,
            dispatch,
            sources,
            _guards: guards,
        })
    }

    /// Names the world in failure messages.
    fn name(&self) -> String {
        let mode = if self.compatible {
            "compatible"
        } else {
            "native"
        };
        format!("{:?}, {mode}", self.kind)
    }

    fn hash_function(&self) -> HashFunction {
        if self.compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        }
    }

    /// Where jserve's local CAS keeps the blob `hash`.
    fn serve_cas_file(&self, hash: &str) -> PathBuf {
        cas_file(
            &self.dir.join("serve/serve-root"),
            self.hash_function(),
            hash,
        )
    }

    fn project<'w>(&'w self, client: &'w Client) -> Project<'w> {
        let dir = self.dir.join(&client.label);
        let dep_commit = git(&dir.join("dep"), &["rev-parse", "HEAD"]);
        let main = dir.join("main");
        std::fs::create_dir_all(&main).unwrap();
        std::fs::write(main.join("TARGETS"), MAIN_TARGETS).unwrap();
        // The client never has the dependency: its root is absent, so just-mr
        // asks serve for the commit's tree and just asks serve for its targets.
        let repos = json!({
            "main": "main",
            "repositories": {
                "main": {
                    "repository": {"type": "file", "path": main.to_str().unwrap()},
                    "bindings": {"dep": "dep"}
                },
                "dep": {
                    "repository": {
                        "type": "git",
                        "repository": UNREACHABLE,
                        "branch": "main",
                        "commit": dep_commit,
                        "pragma": {"absent": true}
                    }
                }
            }
        });
        let repos_path = dir.join("repos.json");
        std::fs::write(&repos_path, repos.to_string()).unwrap();
        Project {
            world: self,
            client,
            counts: dir.join("counts"),
            dir,
            repos: repos_path,
        }
    }
}

fn cas_file(root: &Path, hash_function: HashFunction, hash: &str) -> PathBuf {
    root.join("protocol-dependent/generation-0")
        .join(hash_function.storage_dir_name())
        .join("casf")
        .join(&hash[..2])
        .join(&hash[2..])
}

impl Project<'_> {
    fn name(&self) -> String {
        format!("{}, client {}", self.world.name(), self.client.label)
    }

    /// The options every `just-mr` call towards serve and the endpoint takes.
    fn just_mr_command(&self, client_root: &str) -> Command {
        let w = self.world;
        let mut cmd = Command::new(&self.client.just_mr);
        cmd.current_dir(&self.dir)
            .args(["--norc", "--plain-log", "--just"])
            .arg(&self.client.just)
            .arg("--local-build-root")
            .arg(self.dir.join(client_root))
            .args(["-R", &w.serve.address(), "-r", &w.remote]);
        cmd.args(self.client.instance_args(w));
        if w.compatible {
            cmd.arg("--compatible");
        }
        cmd
    }

    /// `just-mr ... SUBCOMMAND ARGS` on the project, with a build root of
    /// its own (`client_root`).
    fn just_mr(
        &self,
        client_root: &str,
        main: Option<&str>,
        subcommand: &str,
        args: &[&str],
    ) -> Run {
        let mut cmd = self.just_mr_command(client_root);
        cmd.arg("-C").arg(&self.repos);
        if let Some(main) = main {
            cmd.args(["--main", main]);
        }
        cmd.arg(subcommand).args(args);
        run_bounded(cmd, &format!("just-mr {subcommand} {args:?}"), CLIENT_LIMIT).into()
    }

    fn client_root(&self, client_root: &str) -> PathBuf {
        self.dir.join(client_root)
    }

    /// Runs of the dependency's action `name` so far.
    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.counts.join(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l != "end")
            .count()
    }

    /// Whether the action `name` has finished a run.
    fn ended(&self, name: &str) -> bool {
        std::fs::read_to_string(self.counts.join(name))
            .unwrap_or_default()
            .lines()
            .any(|l| l == "end")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The object id `just install-cas` takes for a blob jserve holds: the
    /// hash alone in native mode; compatible mode needs the size too, which
    /// the client's message does not give, so it is read from jserve's CAS.
    fn blob_id(&self, hash: &str) -> String {
        if !self.world.compatible {
            return hash.to_string();
        }
        let file = self.world.serve_cas_file(hash);
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("log blob {hash} in jserve's CAS: {e}"))
            .len();
        format!("{hash}:{size}:f")
    }
}

impl Project<'_> {
    /// `just-mr install top` into `out` with the build root `client_root`.
    ///
    /// A client before justbuild 1.6.2 names the repository description in
    /// its request by hash only (no size, no `required_digests`); BuildGrid
    /// serves no blob without its size, so neither `just serve` nor jserve
    /// can read it there and a request that needs it (a miss) fails. Then
    /// the description is copied from the client's build root into jserve's
    /// local CAS and the client tries again (docs/target-cache.md).
    fn install_top(&self, client_root: &str, out: &str) -> Run {
        let out = self.out(out);
        let args = ["-o", out.to_str().unwrap(), "top"];
        let run = self.just_mr(client_root, None, "install", &args);
        if run.ok || self.world.kind != Kind::BuildGrid || !self.client.old {
            return run;
        }
        let name = self.name();
        let hash = hash_after(&run.log, "Could not retrieve blob ").unwrap_or_else(|| {
            panic!("{name}: the client failed:\n{}", run.log);
        });
        let from = cas_file(
            &self.client_root(client_root),
            self.world.hash_function(),
            &hash,
        );
        let to = self.world.serve_cas_file(&hash);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("{name}: the client has no blob {hash}: {e}"));
        self.just_mr(client_root, None, "install", &args)
    }
}

fn assert_served(run: &Run, what: &str) {
    assert!(run.ok, "{what}: the client failed:\n{}", run.log);
    assert!(
        run.log.contains("0 cached, 1 served, 0 uncached"),
        "{what}: not served:\n{}",
        run.log
    );
}

/// The hexadecimal word after `marker` in `text`.
fn hash_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    Some(
        text[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Absent roots.

/// `just-mr setup` of a configuration whose main repository is `root`;
/// through serve (and the endpoint) when `absent`, else by the client alone
/// (archives from the distfiles). Returns the main repository's tree id.
fn setup_root(p: &Project, case: &str, root: &Value, absent: bool) -> Result<String, String> {
    let mut root = root.clone();
    let mut config = json!({"main": "main", "repositories": {"main": {"repository": {}}}});
    let mut others = serde_json::Map::new();
    // A distdir names other repositories; they go along, absent as it is.
    if let Some(parts) = root.get("parts").cloned() {
        root.as_object_mut().unwrap().remove("parts");
        for (name, mut part) in parts.as_object().unwrap().clone() {
            part["pragma"] = json!({"absent": absent});
            others.insert(name, json!({"repository": part}));
        }
    }
    let pragma = root
        .as_object_mut()
        .unwrap()
        .entry("pragma")
        .or_insert(json!({}));
    pragma["absent"] = json!(absent);
    config["repositories"]["main"]["repository"] = root;
    config["repositories"]
        .as_object_mut()
        .unwrap()
        .extend(others);
    let tag = if absent { "absent" } else { "present" };
    let config_path = p.dir.join(format!("root-{case}-{tag}.json"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut cmd = if absent {
        p.just_mr_command(&format!("roots-{case}"))
    } else {
        let mut cmd = Command::new(&p.client.just_mr);
        cmd.current_dir(&p.dir)
            .args(["--norc", "--plain-log", "--just"])
            .arg(&p.client.just)
            .arg("--local-build-root")
            .arg(p.dir.join(format!("roots-{case}-local")))
            .arg("--distdir")
            .arg(&p.world.sources.distfiles);
        if p.world.compatible {
            cmd.arg("--compatible");
        }
        cmd
    };
    cmd.arg("-C").arg(&config_path).arg("setup");
    let run: Run = run_bounded(cmd, &format!("just-mr setup ({case}, {tag})"), CLIENT_LIMIT).into();
    if !run.ok {
        return Err(run.log);
    }
    let setup: Value =
        serde_json::from_str(&std::fs::read_to_string(run.stdout.trim()).unwrap()).unwrap();
    let root = &setup["repositories"]["main"]["workspace_root"];
    assert_eq!(root[0], "git tree", "{case} ({tag}): {setup}");
    assert_eq!(
        root.as_array().unwrap().len(),
        if absent { 2 } else { 3 },
        "{case} ({tag}): {setup}"
    );
    Ok(root[1].as_str().unwrap().to_string())
}

fn absent_roots(p: &Project) {
    let name = p.name();
    let s = &p.world.sources;
    let git_root = |subdir: &str| {
        json!({"type": "git", "repository": UNREACHABLE,
               "commit": s.commit, "branch": "main", "subdir": subdir})
    };
    let archive = |kind: &str, content: &str, special: Option<&str>| {
        let mut root = json!({"type": kind, "content": content,
            "fetch": format!("https://invalid.example/pkg.{}", if kind == "zip" {"zip"} else {"tar.gz"}),
            "subdir": "pkg"});
        if let Some(special) = special {
            root["pragma"] = json!({"special": special});
        }
        root
    };
    let local = p.dir.join("local-files");
    std::fs::create_dir_all(local.join("d")).unwrap();
    std::fs::write(
        local.join("d/only-here.txt"),
        format!("{name}: the client alone has this\n"),
    )
    .unwrap();
    let src_tree = git(&s.repo, &["rev-parse", "HEAD:src"]);
    let cases: Vec<(&str, Value, Option<String>)> = vec![
        (
            "git",
            git_root("."),
            Some(git(&s.repo, &["rev-parse", "HEAD^{tree}"])),
        ),
        ("git-subdir", git_root("src"), Some(src_tree.clone())),
        (
            "git-tree",
            json!({"type": "git tree", "id": src_tree, "cmd": ["false"]}),
            Some(src_tree.clone()),
        ),
        ("archive", archive("archive", &s.tar_id, None), None),
        (
            "archive-resolved",
            archive("archive", &s.tar_id, Some("resolve-completely")),
            None,
        ),
        ("zip", archive("zip", &s.zip_id, None), None),
        (
            "zip-resolved",
            archive("zip", &s.zip_id, Some("resolve-completely")),
            None,
        ),
        (
            "distdir",
            json!({"type": "distdir", "repositories": ["tgz", "zip"],
                   "parts": {"tgz": archive("archive", &s.tar_id, None),
                             "zip": archive("zip", &s.zip_id, None)}}),
            None,
        ),
        (
            "file-to-git",
            json!({"type": "file", "path": local.to_str().unwrap(),
                   "pragma": {"to_git": true}}),
            None,
        ),
    ];
    for (case, root, expected) in cases {
        let expected = expected.unwrap_or_else(|| {
            setup_root(p, case, &root, false)
                .unwrap_or_else(|log| panic!("{name}: {case} set up locally:\n{log}"))
        });
        let got = setup_root(p, case, &root, true)
            .unwrap_or_else(|log| panic!("{name}: absent {case} through serve:\n{log}"));
        assert_eq!(got, expected, "{name}: absent {case}");
    }
}

// ---------------------------------------------------------------------------
// ServeTarget.

/// The first client: a miss, so jserve analyses and builds `outer` (and the
/// nested `inner`) on its endpoint.
fn first_build(p: &Project) {
    let name = p.name();
    let run = p.install_top("client-1", "out-1");
    assert_served(&run, &format!("{name}, first client"));
    assert_eq!(
        std::fs::read_to_string(p.out("out-1/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{name}"
    );
    assert_eq!((p.runs("outer"), p.runs("inner")), (1, 1), "{name}");
}

/// A second client with an empty build root: served from jserve's target
/// cache; the client's own action is an action-cache hit at the endpoint,
/// so nothing runs at all.
fn second_client(p: &Project) {
    let name = p.name();
    let run = p.install_top("client-2", "out-2");
    assert_served(&run, &format!("{name}, second client"));
    assert!(
        run.log.contains("Processed 1 actions, 1 cache hits"),
        "{name}:\n{}",
        run.log
    );
    assert_eq!(
        std::fs::read_to_string(p.out("out-2/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{name}"
    );
    assert_eq!((p.runs("outer"), p.runs("inner")), (1, 1), "{name}");
}

/// The nested export target, asked for alone (the absent repository as the
/// main one): its entry was written while `outer` was built, and its
/// artifact comes from the endpoint.
fn nested_export(p: &Project) {
    let name = p.name();
    let run = p.just_mr(
        "client-3",
        Some("dep"),
        "install",
        &["-o", p.out("out-3").to_str().unwrap(), "inner"],
    );
    assert_served(&run, &format!("{name}, nested export"));
    assert_eq!(
        std::fs::read_to_string(p.out("out-3/inner.txt")).unwrap(),
        "inner\n",
        "{name}"
    );
    assert_eq!(p.runs("inner"), 1, "{name}");
}

/// A failing export target: the client fails, naming the target and the
/// log blob, which it can fetch from the endpoint.
fn failing_export(p: &Project) {
    let name = p.name();
    let run = p.just_mr("client-4", None, "build", &["broken"]);
    assert!(!run.ok, "{name}: a failing dependency built:\n{}", run.log);
    assert!(
        run.log
            .contains(r#"Failure to remotely analyse or build absent target ["@","dep","","bad"]"#),
        "{name}:\n{}",
        run.log
    );
    // 1.5 names the blob by its hash, 1.6 as [HASH:SIZE:f].
    let id = match run.log.split_once("as blob [") {
        Some((_, rest)) => rest[..rest.find(']').unwrap()].to_string(),
        None => {
            let hash = hash_after(&run.log, "as blob ").unwrap_or_else(|| {
                panic!("{name}: no log blob named:\n{}", run.log);
            });
            let hash_len = if p.world.compatible { 64 } else { 40 };
            assert_eq!(hash.len(), hash_len, "{name}: {}", run.log);
            p.blob_id(&hash)
        }
    };
    let mut cmd = Command::new(&p.client.just);
    cmd.args(["install-cas", "--local-build-root"])
        .arg(p.client_root("client-4"))
        .args(["-r", &p.world.remote])
        .args(p.client.instance_args(p.world));
    if p.world.compatible {
        cmd.arg("--compatible");
    }
    cmd.arg(&id);
    let out = run_bounded(cmd, "just install-cas", CLIENT_LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: install-cas:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Which export target was asked for, and which configured target
    // defined the failing action, as justbuild's log says it (serve names
    // the repositories of the key's description by number).
    for part in [
        r#"Requested target is [["@","0","","bad"],{}]"#,
        "action returned non-zero exit code 42\nFailed to execute command [",
        "in environment {",
        "\nrequested by\n - [[\"@\",\"0\",\"\",\"bad-gen\"],{}]#0",
        "Stdout of command [",
        "\n  failing-output\n",
    ] {
        assert!(
            text.contains(part),
            "{name}: {part:?} not in the log:\n{text}"
        );
    }
    assert_eq!((p.runs("outer"), p.runs("inner")), (1, 1), "{name}");
}

/// An export target asked for with a property that the client's dispatch
/// list sends to another endpoint: jserve builds it there (whose launcher
/// sets DISPATCHED), copying its input tree over, and the client gets the
/// artifact from its own endpoint.
fn dispatched_export(p: &Project) {
    let name = p.name();
    let list = p.dir.join("dispatch.json");
    std::fs::write(
        &list,
        json!([[{"runner": "dispatched"}, p.world.dispatch.address()]]).to_string(),
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let out = p.out("out-d");
    let args = [
        "-o",
        out.to_str().unwrap(),
        "--endpoint-configuration",
        list,
        "--remote-execution-property",
        "runner:dispatched",
        "dispatched",
    ];
    let run = p.just_mr("client-d", Some("dep"), "install", &args);
    assert_served(&run, &format!("{name}, dispatched export"));
    // Built at the dispatch endpoint, with the source tree `data` copied
    // there (children before parents: a native endpoint checks).
    assert_eq!(
        std::fs::read_to_string(out.join("where.txt")).unwrap(),
        "dispatched\nb\n",
        "{name}: not built at the dispatch endpoint"
    );
    assert_eq!(p.runs("dispatched"), 1, "{name}");
    // A second client with the same properties is served from the cache.
    let run = p.just_mr("client-d2", Some("dep"), "install", &args);
    assert_served(&run, &format!("{name}, dispatched export again"));
    assert_eq!(p.runs("dispatched"), 1, "{name}");
}

/// `just describe` of an absent export target: answered by serve
/// (ServeTargetDescription), printed as for a local target.
fn describe(p: &Project) {
    let name = p.name();
    let run = p.just_mr("client-5", Some("dep"), "describe", &["outer"]);
    assert!(run.ok, "{name}: describe:\n{}", run.log);
    assert_eq!(
        run.stdout,
        "[[\"@\",\"dep\",\"\",\"outer\"],{}] is defined by built-in rule \"export\".\n \
         | The outer export target.\n \
         Flexible configuration variables\n \
         - \"FLAVOUR\"\n",
        "{name}: describe:\n{}",
        run.log
    );
}

fn client_cases(p: &Project) {
    absent_roots(p);
    first_build(p);
    second_client(p);
    nested_export(p);
    failing_export(p);
    dispatched_export(p);
    describe(p);
}

// ---------------------------------------------------------------------------
// An endpoint that lost what jserve built there.

/// `just-mr --main dep install layout` into `out`: a tree artifact.
fn install_layout(p: &Project, client_root: &str, out: &str) {
    let name = p.name();
    let out = p.out(out);
    let run = p.just_mr(
        client_root,
        Some("dep"),
        "install",
        &["-o", out.to_str().unwrap(), "layout"],
    );
    assert_served(&run, &format!("{name}, layout"));
    assert_eq!(
        std::fs::read_to_string(out.join("d/sub/deeper/deep.txt")).unwrap(),
        "deep\n",
        "{name}"
    );
    assert_eq!(
        std::fs::read_link(out.join("d/sub/link")).unwrap(),
        Path::new("deeper/deep.txt"),
        "{name}"
    );
}

/// A `just execute` endpoint whose build root two rotations emptied: a hit
/// at jserve makes the endpoint whole again, uploading the artifacts' trees
/// after their parts (the native endpoint refuses a tree with missing
/// parts), and nothing is built again.
fn endpoint_lost_artifacts(w: &World, clients: &[Client], projects: &[Project]) {
    let name = w.name();
    for p in projects {
        install_layout(p, "lost-1", "out-lost-1");
    }
    let endpoint_just = &clients[usize::from(w.kind == Kind::JustExecute16)].just;
    for _ in 0..2 {
        let mut cmd = Command::new(endpoint_just);
        cmd.args(["gc", "--local-build-root"])
            .arg(w.dir.join("endpoint/root"));
        let out = run_bounded(cmd, "just gc (endpoint)", CLIENT_LIMIT);
        assert!(
            out.status.success(),
            "{name}: gc of the endpoint:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mark = w.serve.log().len();
    for p in projects {
        install_layout(p, "lost-2", "out-lost-2");
        assert_eq!(p.runs("layout"), 1, "{}: built again", p.name());
    }
    let log = w.serve.log_since(mark);
    assert!(
        log.contains(": cache hit (") && !log.contains(": built ("),
        "{name}: not a hit:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Rotations of jserve's build root.

/// `just gc` or `just-mr gc-repo` (of `client`) on jserve's build root.
fn collect(w: &World, client: &Client, repositories: bool) {
    let root = w.dir.join("serve/serve-root");
    let mut cmd = if repositories {
        let mut c = Command::new(&client.just_mr);
        c.args(["--norc", "--local-build-root"])
            .arg(&root)
            .arg("gc-repo");
        c
    } else {
        let mut c = Command::new(&client.just);
        c.args(["gc", "--local-build-root"]).arg(&root);
        c
    };
    cmd.current_dir(&w.dir);
    let out = run_bounded(cmd, "gc", CLIENT_LIMIT);
    assert!(
        out.status.success(),
        "{}: gc ({}) failed:\n{}",
        w.name(),
        client.label,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One rotation of everything jserve stores, by one client generation's tools.
fn rotate(w: &World, client: &Client) {
    collect(w, client, false);
    collect(w, client, true);
}

/// `jserve gc ARGS` on jserve's build root (its config names it).
fn jserve_gc(w: &World, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.arg("gc").arg(w.dir.join("serve/serve.json")).args(args);
    run_bounded(cmd, "jserve gc", CLIENT_LIMIT)
}

/// `jserve gc --check`: every generation of jserve's build root complete.
fn check_generations(w: &World, step: &str) {
    let out = jserve_gc(w, &["--check"]);
    assert!(
        out.status.success(),
        "{}, {step}: jserve gc --check:\n{}",
        w.name(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Each project asks for `top` with a fresh build root; returns the runs of
/// (outer, inner) after it, per project.
fn use_all(projects: &[Project], step: &str) -> Vec<(usize, usize)> {
    projects
        .iter()
        .map(|p| {
            let out = p.out(&format!("out-{step}"));
            let run = p.install_top(&format!("client-{step}"), &format!("out-{step}"));
            assert_served(&run, &format!("{}, {step}", p.name()));
            assert_eq!(
                std::fs::read_to_string(out.join("top.txt")).unwrap(),
                "inner\nouter\ntop\n",
                "{}, {step}",
                p.name()
            );
            (p.runs("outer"), p.runs("inner"))
        })
        .collect()
}

/// After a rotation, what jserve holds lives in generation 1: clients with
/// empty build roots are still served from the target cache (nothing runs).
/// Used between two rotations, it survives the second; unused for two more,
/// it is gone: jserve builds anew (and, as its own endpoint, runs the actions
/// again; an external endpoint keeps its own action cache). The rotations
/// alternate between the two client generations' `just gc`.
fn rotations(w: &World, clients: &[Client], projects: &[Project]) {
    let name = w.name();
    let runs = |ps: &[Project]| -> Vec<(usize, usize)> {
        ps.iter()
            .map(|p| (p.runs("outer"), p.runs("inner")))
            .collect()
    };
    let before = runs(projects);
    for (step, client) in [("rot-1", &clients[0]), ("rot-2", &clients[1])] {
        rotate(w, client);
        check_generations(w, step);
        let mark = w.serve.log().len();
        assert_eq!(use_all(projects, step), before, "{name}, {step}");
        let log = w.serve.log_since(mark);
        assert!(
            log.contains(": cache hit (") && !log.contains(": built ("),
            "{name}, {step}: not answered from the rotated cache:\n{log}"
        );
    }
    // jserve's own rotation counts as one of `just gc`'s.
    rotate(w, &clients[0]);
    let out = jserve_gc(w, &["--rotate", "--min-age", "0"]);
    assert!(out.status.success(), "{name}: jserve gc --rotate: {out:?}");
    check_generations(w, "rot-3");
    let mark = w.serve.log().len();
    let after = use_all(projects, "rot-3");
    let log = w.serve.log_since(mark);
    assert!(
        log.contains(": built (") && !log.contains(": cache hit ("),
        "{name}: entries unused for two rotations still answered:\n{log}"
    );
    if w.kind == Kind::Jserve {
        let rebuilt: Vec<(usize, usize)> = before.iter().map(|(o, i)| (o + 1, i + 1)).collect();
        assert_eq!(after, rebuilt, "{name}: actions not run again");
    }
    check_generations(w, "after rot-3");
}

// ---------------------------------------------------------------------------
// Fair local execution.

/// A client started in the background, killed (with its `just`) on drop.
struct Background {
    group: Group,
    started: Instant,
}

fn fairness(w: &World, projects: &[Project]) {
    let name = w.name();
    let project = |k: usize| &projects[k % projects.len()];
    let start_client = |target: &str, k: usize| {
        let p = project(k);
        let mut cmd = p.just_mr_command(&format!("fair-{target}"));
        cmd.arg("-C")
            .arg(&p.repos)
            .args(["--main", "dep", "build", target]);
        Background {
            group: Group::spawn(cmd, p.dir.join(format!("fair-{target}.log"))),
            started: Instant::now(),
        }
    };
    let mut clients: Vec<Background> = (1..=SLOW)
        .map(|k| start_client(&format!("slow-{k}"), k))
        .collect();
    let t0 = Instant::now();
    // The short ones are served in about the time of their own steps.
    for k in 1..=SHORT {
        let c = &mut clients[k - 1];
        let status = loop {
            if let Some(status) = c.group.try_wait() {
                break status;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{name}: slow-{k} never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = c.started.elapsed();
        assert!(
            status.success(),
            "{name}: slow-{k} ({status}):\n{}",
            c.group.log()
        );
        assert!(
            took < Duration::from_secs(k as u64 + 5),
            "{name}: slow-{k} ({k} s of actions) took {took:?}"
        );
    }
    // The long ones' clients go away after 7 s; their builds go on.
    while t0.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed: Vec<Background> = clients.drain(SHORT..).collect();
    drop(killed);
    let mut fresh = start_client("slow-new", 0);
    let status = loop {
        if let Some(status) = fresh.group.try_wait() {
            break status;
        }
        assert!(
            fresh.started.elapsed() < Duration::from_secs(60),
            "{name}: slow-new never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = fresh.started.elapsed();
    assert!(
        status.success(),
        "{name}: slow-new ({status}):\n{}",
        fresh.group.log()
    );
    assert!(
        took < Duration::from_secs(6),
        "{name}: a new request (1 s of actions) took {took:?} beside abandoned builds"
    );
    let longest = project(SLOW);
    assert!(
        longest.runs(&format!("slow-{SLOW}")) == 1 && !longest.ended(&format!("slow-{SLOW}")),
        "{name}: the abandoned slow-{SLOW} is not running beside the new request"
    );
    // An abandoned build finishes and fills the cache: asked for again, it is
    // served without running.
    let k = 9;
    let pk = project(k);
    let target = format!("slow-{k}");
    while !pk.ended(&target) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name}: the abandoned {target} never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = pk.just_mr("fair-again", Some("dep"), "build", &[&target]);
    assert_served(
        &run,
        &format!("{name}, {target} after its client went away"),
    );
    assert_eq!(pk.runs(&target), 1, "{name}: {target} ran again");
}

// ---------------------------------------------------------------------------
// The matrix.

fn world(kind: Kind, compatible: bool) {
    let Some(clients) = clients() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // JSERVE_KEEP_TEST_DIRS=1 keeps the logs and build roots for a look.
    let tmp_path = if std::env::var_os("JSERVE_KEEP_TEST_DIRS").is_some() {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let Some(w) = World::start(kind, compatible, &clients, &tmp_path) else {
        return;
    };
    let projects: Vec<Project> = clients.iter().map(|c| w.project(c)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = projects
            .iter()
            .map(|p| scope.spawn(move || client_cases(p)))
            .collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    if matches!(kind, Kind::JustExecute15 | Kind::JustExecute16) {
        endpoint_lost_artifacts(&w, &clients, &projects);
    }
    rotations(&w, &clients, &projects);
    if kind != Kind::BuildGrid {
        fairness(&w, &projects);
    }
}

#[test]
fn jserve_endpoint_native() {
    world(Kind::Jserve, false);
}

#[test]
fn jserve_endpoint_compatible() {
    world(Kind::Jserve, true);
}

#[test]
fn just_execute_15_native() {
    world(Kind::JustExecute15, false);
}

#[test]
fn just_execute_15_compatible() {
    world(Kind::JustExecute15, true);
}

#[test]
fn just_execute_16_native() {
    world(Kind::JustExecute16, false);
}

#[test]
fn just_execute_16_compatible() {
    world(Kind::JustExecute16, true);
}

#[test]
fn buildgrid_compatible() {
    world(Kind::BuildGrid, true);
}
