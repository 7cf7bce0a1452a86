//! The execution endpoints of the end-to-end tests, each a real program in
//! a process group of its own: `jserve serve` and `jserve execute`, the
//! reference `just execute` of either generation, and BuildGrid executing
//! through a PostgreSQL-backed scheduler and a small host-tools bot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::loc;
use super::procs::{free_port, Group};

/// `jserve serve CONFIG` with a plain-text log; `config` gets the info file.
pub struct JserveServe {
    pub group: Group,
    pub port: u16,
}

impl JserveServe {
    pub fn start(dir: &Path, config: Value) -> JserveServe {
        JserveServe::start_with_descriptors(dir, config, None)
    }

    /// `jserve serve` with its build root in `dir/root` and its files in
    /// `dir/serve`; `service` holds further `"remote service"` keys.
    pub fn start_in(dir: &Path, service: Value, descriptors: Option<u64>) -> JserveServe {
        let mut remote = serde_json::json!({"port": 0});
        if let (Some(remote), Some(extra)) = (remote.as_object_mut(), service.as_object()) {
            remote.extend(extra.clone());
        }
        let config = serde_json::json!({
            "local build root": loc(&dir.join("root")),
            "remote service": remote,
        });
        JserveServe::start_with_descriptors(&dir.join("serve"), config, descriptors)
    }

    /// As [`JserveServe::start`], under a descriptor limit (soft and hard)
    /// of `descriptors`, when given.
    pub fn start_with_descriptors(
        dir: &Path,
        mut config: Value,
        descriptors: Option<u64>,
    ) -> JserveServe {
        std::fs::create_dir_all(dir).unwrap();
        let info = dir.join("info.json");
        config["remote service"]["info file"] = loc(&info);
        // Plain text unless the test asks for more.
        match config.get_mut("logging").and_then(Value::as_object_mut) {
            Some(logging) => {
                logging.insert("plain".into(), true.into());
            }
            None => config["logging"] = serde_json::json!({"plain": true}),
        }
        let config_path = dir.join("serve.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
        cmd.arg("serve").arg(&config_path);
        if let Some(n) = descriptors {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut group = Group::spawn(cmd, dir.join("serve.log"));
        let port = group.wait_for_port(&info);
        JserveServe { group, port }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The log so far; its length marks where a later step's lines begin.
    pub fn log(&self) -> String {
        self.group.log()
    }

    pub fn log_since(&self, mark: usize) -> String {
        self.log().get(mark..).unwrap_or_default().to_string()
    }
}

/// An execution endpoint process: `jserve execute` or the reference `just
/// execute` (`program`), with `launcher` as its local launcher.
pub struct Execute {
    pub group: Group,
    pub port: u16,
}

impl Execute {
    pub fn start(program: &Path, dir: &Path, compatible: bool, launcher: Option<&str>) -> Execute {
        let launcher = launcher.map(|l| ["-L", l]);
        Execute::start_with(
            program,
            dir,
            compatible,
            launcher.as_ref().map_or(&[], |a| &a[..]),
        )
    }

    /// As [`Execute::start`], with further options.
    pub fn start_with(program: &Path, dir: &Path, compatible: bool, args: &[&str]) -> Execute {
        std::fs::create_dir_all(dir).unwrap();
        let info = dir.join("info.json");
        let mut cmd = Command::new(program);
        cmd.arg("execute")
            .arg("--local-build-root")
            .arg(dir.join("root"))
            .arg("--info-file")
            .arg(&info)
            .arg("--plain-log");
        if compatible {
            cmd.arg("--compatible");
        }
        cmd.args(args);
        let mut group = Group::spawn(cmd, dir.join("execute.log"));
        let port = group.wait_for_port(&info);
        Execute { group, port }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------
// BuildGrid executing actions.

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

/// A PostgreSQL server in a directory of its own; stopped on drop. As root,
/// it runs as the `postgres` user (PostgreSQL refuses root).
pub struct Postgres {
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

    pub fn start(bin: PathBuf, dir: &Path) -> Postgres {
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

    pub fn url(&self) -> String {
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

/// BuildGrid executing through the bot; dropped in reverse order.
pub struct BuildGrid {
    pub bot: Group,
    pub server: Group,
    _postgres: Postgres,
    pub port: u16,
}

impl BuildGrid {
    pub fn start(bgd: &Path, pg_bin: PathBuf, dir: &Path, instance: &str) -> BuildGrid {
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
                .replace("INSTANCE", instance),
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
            .arg(instance);
        let mut bot = Group::spawn(cmd, dir.join("bot.log"));
        let start = Instant::now();
        while !bot.log().lines().any(|l| l.starts_with("ready ")) {
            let exited = bot.try_wait();
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
    pub fn ran(&self) -> usize {
        self.bot
            .log()
            .lines()
            .filter(|l| l.starts_with("ran "))
            .count()
    }
}

impl BuildGrid {
    /// What BuildGrid needs here: `bgd`, PostgreSQL's binaries, and the
    /// `psycopg2` module for `bgd`'s Python; each missing one is reported.
    pub fn find() -> Option<(PathBuf, PathBuf)> {
        let bgd = super::procs::find_bgd()?;
        let pg_bin = super::procs::find_postgres()?;
        let python = bgd.with_file_name("python3");
        let has_driver = Command::new(&python)
            .args(["-c", "import psycopg2"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_driver {
            super::procs::skip(&format!(
                "{python:?} cannot import psycopg2 (pip install psycopg2-binary)"
            ));
            return None;
        }
        Some((bgd, pg_bin))
    }
}
