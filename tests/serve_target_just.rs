//! ServeTarget end to end with the reference clients: `just-mr` sets up a
//! project whose dependency is an absent git repository that only `jserve
//! serve` holds, and `just` asks jserve for the dependency's export targets.
//! Covered in native and compatible mode: a miss built on jserve, a hit for
//! a second client with an empty build root (no action runs again), a nested
//! export target that got its own entry on the way, and a failing export
//! target whose log blob the client can read. The dependency's actions append
//! to side-effect files, so every run is counted.
//!
//! The same runs go through BuildGrid as jserve's external execution
//! endpoint too (compatible mode): BuildGrid's scheduler, a PostgreSQL server
//! and a small host-tools bot written here do the executing.
//!
//! Skipped (with a `SKIPPED:` line) when the reference is not installed,
//! except under CI; the BuildGrid run also when `bgd`, PostgreSQL or the
//! `psycopg2` module for `bgd`'s Python is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::git::git;
use common::loc;
use common::reference::{reference_just, reference_just_mr};
use jserve::digest::HashFunction;
use serde_json::{json, Value};

/// The dependency, known to jserve only. COUNTS becomes a directory the
/// actions append to, one line per run.
const DEP_TARGETS: &str = r#"{
  "inner": {"type": "export", "target": "inner-gen"},
  "inner-gen": {"type": "generic", "outs": ["inner.txt"],
    "cmds": ["echo run >> COUNTS/inner", "echo inner > inner.txt"]},
  "outer": {"type": "export", "target": "outer-gen"},
  "outer-gen": {"type": "generic", "outs": ["outer.txt"], "deps": ["inner"],
    "cmds": ["echo run >> COUNTS/outer", "cat inner.txt > outer.txt",
             "echo outer >> outer.txt"]},
  "bad": {"type": "export", "target": "bad-gen"},
  "bad-gen": {"type": "generic", "outs": ["x"],
    "cmds": ["echo failing-output", "exit 42"]}
}"#;

/// The client's own project (a plain directory) using the dependency.
const MAIN_TARGETS: &str = r#"{
  "top": {"type": "generic", "outs": ["top.txt"], "deps": [["@", "dep", "", "outer"]],
    "cmds": ["cat outer.txt > top.txt", "echo top >> top.txt"]},
  "broken": {"type": "generic", "outs": ["y"], "deps": [["@", "dep", "", "bad"]],
    "cmds": ["cp x y"]}
}"#;

/// The REAPI instance name the 1.5 clients use; BuildGrid checks it.
const INSTANCE: &str = "remote-execution";

/// A `jserve serve` process whose log (plain text, stderr) goes to a file;
/// killed on drop.
struct Jserve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Jserve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jserve {
    fn start(dir: &Path, repo: &Path, endpoint: Value) -> Jserve {
        std::fs::create_dir_all(dir).unwrap();
        let info = dir.join("info.json");
        let config = json!({
            "local build root": loc(&dir.join("serve-root")),
            "repositories": [loc(repo)],
            "remote service": {"port": 0, "info file": loc(&info)},
            "execution endpoint": endpoint,
            "logging": {"plain": true},
        });
        let config_path = dir.join("serve.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_jserve"))
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("jserve starts");
        let start = Instant::now();
        let port = loop {
            let text = std::fs::read_to_string(&info).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                break v["port"].as_u64().unwrap() as u16;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "jserve exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "jserve did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Jserve { child, port, log }
    }

    /// The log so far; its length marks where the next step's lines begin.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn log_since(&self, mark: usize) -> String {
        self.log()[mark..].to_string()
    }

    /// Where jserve's local CAS keeps the blob `hash`.
    fn cas_file(&self, hash_function: HashFunction, hash: &str) -> PathBuf {
        self.log
            .with_file_name("serve-root/protocol-dependent/generation-0")
            .join(hash_function.storage_dir_name())
            .join("casf")
            .join(&hash[..2])
            .join(&hash[2..])
    }
}

struct Setup {
    dir: tempfile::TempDir,
    just: PathBuf,
    just_mr: PathBuf,
    compatible: bool,
    counts: PathBuf,
    repos: PathBuf,
    serve: Jserve,
    /// The execution endpoint clients and jserve share.
    remote: String,
}

/// The project in `dir`, and jserve serving its dependency; with `external`
/// (an endpoint address) jserve and the clients build there.
fn setup(just: PathBuf, dir: tempfile::TempDir, compatible: bool, external: Option<&str>) -> Setup {
    let counts = dir.path().join("counts");
    let dep = dir.path().join("dep");
    let main = dir.path().join("main");
    for d in [&counts, &dep, &main] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        dep.join("TARGETS"),
        DEP_TARGETS.replace("COUNTS", counts.to_str().unwrap()),
    )
    .unwrap();
    git(&dep, &["init", "-q"]);
    git(&dep, &["add", "-A"]);
    git(&dep, &["commit", "-q", "-m", "dep"]);
    let commit = git(&dep, &["rev-parse", "HEAD"]);
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
                    "repository": format!("file://{}", dep.display()),
                    "branch": "main",
                    "commit": commit,
                    "pragma": {"absent": true}
                }
            }
        }
    });
    let repos_path = dir.path().join("repos.json");
    std::fs::write(&repos_path, repos.to_string()).unwrap();
    let endpoint = match external {
        Some(address) => {
            json!({"address": address, "compatible": compatible, "instance name": INSTANCE})
        }
        None => json!({"compatible": compatible}),
    };
    let serve = Jserve::start(&dir.path().join("serve"), &dep, endpoint);
    let remote = external
        .map(str::to_string)
        .unwrap_or_else(|| format!("127.0.0.1:{}", serve.port));
    let just_mr = reference_just_mr(&just);
    Setup {
        dir,
        just,
        just_mr,
        compatible,
        counts,
        repos: repos_path,
        serve,
        remote,
    }
}

/// What a client run left: exit status and its log (stderr).
struct Run {
    ok: bool,
    log: String,
}

/// Runs `cmd` to its end; a client stuck (say, on an endpoint that never
/// executes) is killed after two minutes rather than hanging the suite.
fn run_bounded(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

impl Setup {
    fn serve_address(&self) -> String {
        format!("127.0.0.1:{}", self.serve.port)
    }

    /// `just-mr ... SUBCOMMAND ARGS` with a build root of its own (`client`).
    fn just_mr(&self, client: &str, main: Option<&str>, subcommand: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.just_mr);
        cmd.current_dir(self.dir.path())
            .args(["--norc", "--plain-log", "--just"])
            .arg(&self.just)
            .arg("-C")
            .arg(&self.repos)
            .arg("--local-build-root")
            .arg(self.client_root(client))
            .args(["-R", &self.serve_address(), "-r", &self.remote]);
        if let Some(main) = main {
            cmd.args(["--main", main]);
        }
        if self.compatible {
            cmd.arg("--compatible");
        }
        cmd.arg(subcommand).args(args);
        let out = run_bounded(cmd, &format!("just-mr {subcommand} {args:?}"));
        Run {
            ok: out.status.success(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn client_root(&self, client: &str) -> PathBuf {
        self.dir.path().join(client)
    }

    /// Runs of the dependency's action `name` so far.
    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.counts.join(name))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn hash_function(&self) -> HashFunction {
        if self.compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        }
    }

    /// Names the run in failure messages.
    fn mode(&self) -> String {
        let hashes = if self.compatible {
            "compatible"
        } else {
            "native"
        };
        if self.remote == self.serve_address() {
            hashes.to_string()
        } else {
            format!("{hashes}, endpoint {}", self.remote)
        }
    }

    /// The object id `just install-cas` takes for a blob jserve holds: the
    /// hash alone in native mode; compatible mode needs the size too, which
    /// the client's message does not give, so it is read from jserve's CAS.
    fn blob_id(&self, hash: &str) -> String {
        if !self.compatible {
            return hash.to_string();
        }
        let file = self.serve.cas_file(self.hash_function(), hash);
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("log blob {hash} in jserve's CAS: {e}"))
            .len();
        format!("{hash}:{size}:f")
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

/// The first client: a miss, so jserve analyses and builds `outer` (and the
/// nested `inner`) on its endpoint.
///
/// A client before justbuild 1.6.2 names the repository description in its
/// request by hash only (no size, no `required_digests`); an endpoint such as
/// BuildGrid serves no blob without its size, so neither `just serve` nor
/// jserve can read it there and the request fails. Then the description is
/// copied from the client's build root into jserve's local CAS and the
/// client tries again (docs/target-cache.md).
fn first_build(s: &Setup) {
    let mode = s.mode();
    let install = |dir: &str| {
        s.just_mr(
            "client-1",
            None,
            "install",
            &["-o", s.out(dir).to_str().unwrap(), "top"],
        )
    };
    let mut run = install("out-1");
    if !run.ok && s.remote != s.serve_address() {
        let hash = hash_after(&run.log, "Could not retrieve blob ").unwrap_or_else(|| {
            panic!("{mode}: the first client failed:\n{}", run.log);
        });
        let hf = s.hash_function();
        let from = s
            .client_root("client-1")
            .join("protocol-dependent/generation-0")
            .join(hf.storage_dir_name())
            .join("casf")
            .join(&hash[..2])
            .join(&hash[2..]);
        let to = s.serve.cas_file(hf, &hash);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("{mode}: the client has no blob {hash}: {e}"));
        assert_eq!((s.runs("outer"), s.runs("inner")), (0, 0), "{mode}");
        run = install("out-1");
    }
    assert_served(&run, &format!("{mode}, first client"));
    assert_eq!(
        std::fs::read_to_string(s.out("out-1/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{mode}"
    );
    assert_eq!((s.runs("outer"), s.runs("inner")), (1, 1), "{mode}");
    let log = s.serve.log();
    assert!(log.contains(": built ("), "{mode}: no build logged:\n{log}");
}

/// A second client with an empty build root: served from jserve's target
/// cache; the client's own action is an action-cache hit at the endpoint,
/// so nothing runs at all.
fn second_client(s: &Setup) {
    let mode = s.mode();
    let mark = s.serve.log().len();
    let run = s.just_mr(
        "client-2",
        None,
        "install",
        &["-o", s.out("out-2").to_str().unwrap(), "top"],
    );
    assert_served(&run, &format!("{mode}, second client"));
    assert!(
        run.log.contains("Processed 1 actions, 1 cache hits"),
        "{mode}:\n{}",
        run.log
    );
    assert_eq!(
        std::fs::read_to_string(s.out("out-2/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{mode}"
    );
    assert_eq!((s.runs("outer"), s.runs("inner")), (1, 1), "{mode}");
    let log = s.serve.log_since(mark);
    assert!(
        log.contains(": cache hit ("),
        "{mode}: no hit logged:\n{log}"
    );
    assert!(
        !log.contains("executing") && !log.contains(": built ("),
        "{mode}: jserve ran something for the second client:\n{log}"
    );
}

/// The nested export target, asked for alone (the absent repository as the
/// main one): its entry was written while `outer` was built, and its
/// artifact comes from the endpoint.
fn nested_export(s: &Setup) {
    let mode = s.mode();
    let mark = s.serve.log().len();
    let run = s.just_mr(
        "client-3",
        Some("dep"),
        "install",
        &["-o", s.out("out-3").to_str().unwrap(), "inner"],
    );
    assert_served(&run, &format!("{mode}, nested export"));
    assert_eq!(
        std::fs::read_to_string(s.out("out-3/inner.txt")).unwrap(),
        "inner\n",
        "{mode}"
    );
    assert_eq!(s.runs("inner"), 1, "{mode}");
    let log = s.serve.log_since(mark);
    assert!(
        log.contains(": cache hit ("),
        "{mode}: no hit logged:\n{log}"
    );
    assert!(!log.contains(": built ("), "{mode}: rebuilt:\n{log}");
}

/// A failing export target: the client fails, naming the target and the
/// log blob, which it can fetch from the endpoint.
fn failing_export(s: &Setup) {
    let mode = s.mode();
    let run = s.just_mr("client-4", None, "build", &["broken"]);
    assert!(!run.ok, "{mode}: a failing dependency built:\n{}", run.log);
    assert!(
        run.log
            .contains(r#"Failure to remotely analyse or build absent target ["@","dep","","bad"]"#),
        "{mode}:\n{}",
        run.log
    );
    let hash = hash_after(&run.log, "as blob ").unwrap_or_else(|| {
        panic!("{mode}: no log blob named:\n{}", run.log);
    });
    let hash_len = if s.compatible { 64 } else { 40 };
    assert_eq!(hash.len(), hash_len, "{mode}: {}", run.log);
    let mut cmd = Command::new(&s.just);
    cmd.args(["install-cas", "--local-build-root"])
        .arg(s.client_root("client-4"))
        .args(["-r", &s.remote])
        .args(if s.compatible {
            &["--compatible"][..]
        } else {
            &[]
        })
        .arg(s.blob_id(&hash));
    let out = run_bounded(cmd, "just install-cas");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: install-cas:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("failing-output"), "{mode}: log:\n{text}");
    assert!(text.contains("exit code 42"), "{mode}: log:\n{text}");
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
            "{mode}: {part:?} not in the log:\n{text}"
        );
    }
    // Nothing else ran for the failure.
    assert_eq!((s.runs("outer"), s.runs("inner")), (1, 1), "{mode}");
}

/// `just gc` (or `just-mr gc-repo`) on jserve's build root while it runs.
fn collect(s: &Setup, repositories: bool) {
    let root = s.dir.path().join("serve/serve-root");
    let mut cmd = if repositories {
        let mut c = Command::new(&s.just_mr);
        c.args(["--norc", "--local-build-root"])
            .arg(&root)
            .arg("gc-repo");
        c
    } else {
        let mut c = Command::new(&s.just);
        c.args(["gc", "--local-build-root"]).arg(&root);
        c
    };
    cmd.current_dir(s.dir.path());
    let out = run_bounded(cmd, "gc");
    assert!(
        out.status.success(),
        "{}: gc failed:\n{}",
        s.mode(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After one rotation of everything jserve stores, what it holds lives in
/// generation 1: a client with an empty build root is still served from
/// the target cache and the endpoint's action cache (nothing runs). After
/// two more rotations without use it is gone and gets built anew.
fn rotations(s: &Setup) {
    let mode = s.mode();
    let before = (s.runs("outer"), s.runs("inner"));
    collect(s, false);
    collect(s, true);
    let mark = s.serve.log().len();
    let run = s.just_mr(
        "client-5",
        None,
        "install",
        &["-o", s.out("out-5").to_str().unwrap(), "top"],
    );
    assert_served(&run, &format!("{mode}, after a rotation"));
    assert_eq!(
        std::fs::read_to_string(s.out("out-5/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{mode}"
    );
    let log = s.serve.log_since(mark);
    assert!(
        run.log.contains("Processed 1 actions, 1 cache hits"),
        "{mode}: after a rotation:\n{}\njserve:\n{log}",
        run.log
    );
    assert!(
        log.contains(": cache hit ("),
        "{mode}: no hit after a rotation:\n{log}"
    );
    assert_eq!((s.runs("outer"), s.runs("inner")), before, "{mode}");

    // Used between two rotations, it survives the second one too.
    collect(s, false);
    collect(s, true);
    let run = s.just_mr(
        "client-6",
        None,
        "install",
        &["-o", s.out("out-6").to_str().unwrap(), "top"],
    );
    assert_served(&run, &format!("{mode}, after a second rotation"));
    assert_eq!((s.runs("outer"), s.runs("inner")), before, "{mode}");

    // Unused for two rotations, it is gone: built anew.
    for _ in 0..2 {
        collect(s, false);
        collect(s, true);
    }
    let run = s.just_mr(
        "client-7",
        None,
        "install",
        &["-o", s.out("out-7").to_str().unwrap(), "top"],
    );
    assert_served(&run, &format!("{mode}, after two unused rotations"));
    assert_eq!(
        std::fs::read_to_string(s.out("out-7/top.txt")).unwrap(),
        "inner\nouter\ntop\n",
        "{mode}"
    );
    assert_eq!(
        (s.runs("outer"), s.runs("inner")),
        (before.0 + 1, before.1 + 1),
        "{mode}: not rebuilt after two unused rotations"
    );
}

fn scenario(compatible: bool) {
    let Some(just) = reference_just() else { return };
    let s = setup(just, tempfile::tempdir().unwrap(), compatible, None);
    first_build(&s);
    second_client(&s);
    nested_export(&s);
    failing_export(&s);
    rotations(&s);
}

#[test]
fn absent_dependency_served_by_jserve_native() {
    scenario(false);
}

#[test]
fn absent_dependency_served_by_jserve_compatible() {
    scenario(true);
}

// ---------------------------------------------------------------------------
// BuildGrid as the execution endpoint.

/// A host-tools bot for BuildGrid's Remote Workers API (BuildGrid's own
/// workers, buildbox-worker with buildbox-run-hosttools, are packaged
/// neither on PyPI nor in Debian). It takes one lease at a time, stages the
/// input root, runs the command and uploads the outputs; SHA-256 only.
const BOT: &str = r#"
import hashlib, os, shutil, subprocess, sys, tempfile
import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2

address, instance = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(address)
grpc.channel_ready_future(channel).result(timeout=60)
cas = re_grpc.ContentAddressableStorageStub(channel)
bots = bots_pb2_grpc.BotsStub(channel)

def digest(data):
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

def read(d):
    if d.size_bytes == 0:
        return b""
    r = cas.BatchReadBlobs(re.BatchReadBlobsRequest(instance_name=instance, digests=[d]))
    assert r.responses[0].status.code == 0, r.responses[0].status
    return r.responses[0].data

def upload(blobs):
    requests = [re.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs]
    r = cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(instance_name=instance, requests=requests))
    assert all(x.status.code == 0 for x in r.responses), r

def stage(d, path):
    os.makedirs(path, exist_ok=True)
    directory = re.Directory()
    directory.ParseFromString(read(d))
    for f in directory.files:
        p = os.path.join(path, f.name)
        with open(p, "wb") as out:
            out.write(read(f.digest))
        os.chmod(p, 0o755 if f.is_executable else 0o644)
    for l in directory.symlinks:
        os.symlink(l.target, os.path.join(path, l.name))
    for sub in directory.directories:
        stage(sub.digest, os.path.join(path, sub.name))

def collect(path, blobs, children):
    directory = re.Directory()
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.islink(p):
            directory.symlinks.add(name=name, target=os.readlink(p))
        elif os.path.isdir(p):
            sub = collect(p, blobs, children)
            children.append(sub)
            directory.directories.add(name=name, digest=digest(sub.SerializeToString()))
        else:
            data = open(p, "rb").read()
            blobs.append(data)
            directory.files.add(name=name, digest=digest(data), is_executable=os.access(p, os.X_OK))
    return directory

def execute(action):
    command = re.Command()
    command.ParseFromString(read(action.command_digest))
    root = tempfile.mkdtemp(prefix="bot-")
    try:
        stage(action.input_root_digest, root)
        cwd = os.path.join(root, command.working_directory)
        outs = list(command.output_paths) or list(command.output_files) + list(command.output_directories)
        for o in outs:
            os.makedirs(os.path.dirname(os.path.join(cwd, o)), exist_ok=True)
        env = {v.name: v.value for v in command.environment_variables}
        p = subprocess.run(list(command.arguments), cwd=cwd, env=env, capture_output=True)
        result = re.ActionResult(exit_code=p.returncode)
        result.stdout_digest.CopyFrom(digest(p.stdout))
        result.stderr_digest.CopyFrom(digest(p.stderr))
        blobs = [p.stdout, p.stderr]
        for o in outs:
            full = os.path.join(cwd, o)
            if os.path.islink(full):
                result.output_symlinks.add(path=o, target=os.readlink(full))
            elif os.path.isdir(full):
                children = []
                top = collect(full, blobs, children)
                blobs.extend(c.SerializeToString() for c in children)
                tree = re.Tree(root=top, children=children).SerializeToString()
                blobs.append(tree)
                result.output_directories.add(path=o, tree_digest=digest(tree))
            elif os.path.isfile(full):
                data = open(full, "rb").read()
                blobs.append(data)
                result.output_files.add(path=o, digest=digest(data), is_executable=os.access(full, os.X_OK))
        upload(blobs)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)

# Both calls wait for work until their deadline: short ones keep the loop turning.
session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
    parent=instance,
    bot_session=bots_pb2.BotSession(
        bot_id="jserve-test-bot", status=bots_pb2.BotStatus.OK,
        worker=worker_pb2.Worker(devices=[worker_pb2.Device(handle="host")]))), timeout=2)
print("ready", session.name, flush=True)
while True:
    for lease in session.leases:
        if lease.state != bots_pb2.LeaseState.ACTIVE:
            continue
        action = re.Action()
        if not lease.payload.Unpack(action):
            d = re.Digest()
            lease.payload.Unpack(d)
            action.ParseFromString(read(d))
        result = execute(action)
        print("ran", lease.id, "exit", result.exit_code, flush=True)
        lease.result.Pack(result)
        lease.state = bots_pb2.LeaseState.COMPLETED
    try:
        session = bots.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=2)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
"#;

/// BuildGrid with CAS, action cache and execution: the scheduler keeps its
/// state in PostgreSQL (0.4 supports nothing else).
const BUILDGRID_CONFIG: &str = r#"server:
  - !channel
    address: "127.0.0.1:PORT"
    insecure-mode: true
connections:
  - !sql-connection &sql
    connection-string: DATABASE
    pool-size: 5
    pool-timeout: 30
    max-overflow: 10
storages:
  - !lru-storage &cas
    size: 256MB
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 10000
    allow-updates: true
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    poll-interval: 0.1
    bot-poll-interval: 0.1
    job-assignment-interval: 0.1
    property-set: !dynamic-property-set
      wildcard-property-keys: []
instances:
  - name: INSTANCE
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
"#;

/// Reports a missing tool: visible locally, a failure under CI (which
/// installs everything, see .ci/run).
fn skip(msg: &str) {
    use std::io::Write;
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must have it");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
}

fn find_bgd() -> Option<PathBuf> {
    let found = std::env::var_os("JSERVE_BGD")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("bgd"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        let msg = "BuildGrid's `bgd` not found (set JSERVE_BGD to its `bgd`)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must have it");
        }
        skip(msg);
    }
    found
}

/// The directory with PostgreSQL's `initdb` and `pg_ctl`: on PATH, or
/// where Debian's packages put them.
fn find_postgres() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("pg_ctl").is_file()));
    let debian = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    on_path
        .or_else(debian)
        .filter(|d| d.join("initdb").is_file())
}

/// A process group started for the test, ended (TERM, then KILL) on drop.
struct Group {
    child: Child,
    log: PathBuf,
}

impl Group {
    fn spawn(mut cmd: Command, log: PathBuf) -> Group {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Group { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals only the process group this test started.
        unsafe {
            libc::kill(-group, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server in a directory of its own; stopped on drop. As root,
/// it runs as the `postgres` user (PostgreSQL refuses root).
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    port: u16,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join(program))
                .current_dir(self.data.parent().unwrap());
            cmd
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn start(bin: PathBuf, dir: &Path) -> Postgres {
        let home = dir.join("pg");
        std::fs::create_dir_all(&home).unwrap();
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "no `postgres` user to run PostgreSQL as"
                );
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(&home, Some(id("-u")), Some(id("-g"))).unwrap();
            // The server must reach its directory through the test's own.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut pg = Postgres {
            bin,
            data: home.join("data"),
            as_postgres,
            port: 0,
        };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "bgd", "--no-sync", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.port = free_port();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.port,
            home.display()
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .args(["-o", &options, "-l"])
            .arg(home.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(home.join("log")).unwrap_or_default()
        );
        pg
    }

    fn url(&self) -> String {
        format!("postgresql+psycopg2://bgd@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// BuildGrid executing through the bot; dropped in reverse order.
struct BuildGrid {
    bot: Group,
    server: Group,
    _postgres: Postgres,
    port: u16,
}

impl BuildGrid {
    fn start(bgd: &Path, pg_bin: PathBuf, dir: &Path) -> BuildGrid {
        let postgres = Postgres::start(pg_bin, dir);
        let out = Command::new(bgd)
            .args(["migrate", "apply", &postgres.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bgd migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let config = dir.join("buildgrid.yml");
        std::fs::write(
            &config,
            BUILDGRID_CONFIG
                .replace("PORT", &port.to_string())
                .replace("DATABASE", &postgres.url())
                .replace("INSTANCE", INSTANCE),
        )
        .unwrap();
        let mut cmd = Command::new(bgd);
        cmd.args(["server", "start"]).arg(&config);
        let server = Group::spawn(cmd, dir.join("bgd.log"));
        let script = dir.join("bot.py");
        std::fs::write(&script, BOT).unwrap();
        let mut cmd = Command::new(bgd.with_file_name("python3"));
        cmd.arg(&script)
            .arg(format!("127.0.0.1:{port}"))
            .arg(INSTANCE);
        let mut bot = Group::spawn(cmd, dir.join("bot.log"));
        let start = Instant::now();
        while !bot.log().lines().any(|l| l.starts_with("ready ")) {
            let exited = bot.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(60),
                "the bot did not start ({exited:?}):\n{}\nbgd:\n{}",
                bot.log(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        BuildGrid {
            bot,
            server,
            _postgres: postgres,
            port,
        }
    }

    /// How many actions the bot has run.
    fn ran(&self) -> usize {
        self.bot
            .log()
            .lines()
            .filter(|l| l.starts_with("ran "))
            .count()
    }
}

#[test]
fn absent_dependency_built_on_buildgrid() {
    let Some(just) = reference_just() else { return };
    let Some(bgd) = find_bgd() else { return };
    let Some(pg_bin) = find_postgres() else {
        return skip("PostgreSQL (initdb, pg_ctl) not found: BuildGrid's scheduler needs it");
    };
    let python = bgd.with_file_name("python3");
    let has_driver = Command::new(&python)
        .args(["-c", "import psycopg2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_driver {
        return skip(&format!(
            "{python:?} cannot import psycopg2 (pip install psycopg2-binary)"
        ));
    }
    // Declared first, so removed last: after BuildGrid and its database stopped.
    let grid_dir = tempfile::tempdir().unwrap();
    let grid = BuildGrid::start(&bgd, pg_bin, grid_dir.path());
    let address = format!("127.0.0.1:{}", grid.port);
    let s = setup(just, tempfile::tempdir().unwrap(), true, Some(&address));

    first_build(&s);
    // jserve has no executor of its own here: the bot ran outer, inner and
    // the client's top.
    assert_eq!(grid.ran(), 3, "{}", grid.bot.log());
    second_client(&s);
    nested_export(&s);
    failing_export(&s);
    assert_eq!(grid.ran(), 4, "only the failing action ran since");
    assert!(
        grid.bot.log().contains("exit 42"),
        "{}\nbgd:\n{}",
        grid.bot.log(),
        grid.server.log()
    );
}
