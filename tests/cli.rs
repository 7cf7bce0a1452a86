//! The `jserve` binary: configuration errors at start, the start-up line, and
//! graceful shutdown on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn jserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jserve"))
}

fn serve_with_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, text).unwrap();
    jserve()
        .arg("serve")
        .arg(&path)
        .env("HOME", dir.path())
        .output()
        .unwrap()
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let cases = [
        (
            r#"{"remote service": {"port": "8080"}}"#,
            "\"remote service\".\"port\": expected a number",
        ),
        (
            r#"{"build": {"target-cache write strategy": "always"}}"#,
            "unknown value \"always\"",
        ),
        (r#"{"jobs": "#, "not valid JSON"),
        (r#"[1, 2]"#, "expected an object"),
    ];
    for (config, expected) in cases {
        let out = serve_with_config(config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{config}: {stderr:?} lacks {expected:?}"
        );
    }
    let out = jserve()
        .args(["serve", "/nonexistent/jserve.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn starts_logs_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path(), json!({"logging": {"plain": true}}));
    config["colour"] = json!("unknown keys only warn");
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let child = jserve()
        .arg("serve")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let info_path = dir.path().join("info.json");
    procs::wait_for_info_port(&info_path, || None);
    let info = read_info(&info_path);
    assert_eq!(info["pid"], child.id());
    assert!(info["port"].as_u64().unwrap() > 0);

    term(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit after SIGTERM: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("serve and execute services started: {\"interface\":\"127.0.0.1\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("\"port\":{}", info["port"])),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"colour\""),
        "unknown key warned about: {stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!info_path.exists(), "info file removed");
}

#[test]
fn execute_starts_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let info_path = dir.path().join("info.json");
    let child = jserve()
        .arg("execute")
        .args([
            "--local-build-root",
            dir.path().join("root").to_str().unwrap(),
        ])
        .args([
            "--info-file",
            info_path.to_str().unwrap(),
            "--compatible",
            "--plain-log",
        ])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    procs::wait_for_info_port(&info_path, || None);
    assert_eq!(read_info(&info_path)["pid"], child.id());
    // The empty blob is always present, as with `just execute`.
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(dir
        .path()
        .join("root/protocol-dependent/generation-0/compatible-sha256/casf/e3")
        .join(&empty[2..])
        .is_file());
    term(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("compatible execution service started: {"),
        "{stderr}"
    );
}

#[test]
fn execute_rejects_bad_options() {
    let out = jserve()
        .args(["execute", "-L", "not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--local-launcher"));
    let out = jserve()
        .args(["execute", "--tls-server-cert", "x.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "cert without key");
}

#[test]
fn gc_rejects_bad_options_before_touching_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (args, names) in [
        (vec!["--max-bytes", "0"], "--max-bytes"),
        (vec!["--rotate", "--min-age", "1e300"], "--min-age"),
        (vec!["--rotate", "--min-age=-1"], "--min-age"),
        (vec!["--check", "--max-bytes", "5"], "--max-bytes"),
        (vec!["--rotate", "--max-bytes", "5"], "--max-bytes"),
    ] {
        let out = jserve()
            .arg("gc")
            .arg("--local-build-root")
            .arg(&root)
            .args(&args)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(names), "{args:?}: {said}");
        assert!(!root.exists(), "{args:?} created the build root");
    }
    let out = jserve()
        .args(["execute", "--gc-max-bytes", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--gc-max-bytes 0");
}

/// A call that never ends: a ByteStream write that sent one chunk and keeps
/// its stream open. Returns the sender that keeps it open.
async fn hold_a_call(
    port: u16,
) -> tokio::sync::mpsc::Sender<bazel_remote_apis::google::bytestream::WriteRequest> {
    use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
    use bazel_remote_apis::google::bytestream::WriteRequest;
    use jserve::digest::{HashFunction, ObjectKind};
    let hf = HashFunction::GitSha1;
    let data = vec![7u8; 1 << 20];
    let digest = hf.digest_bytes(ObjectKind::File, &data).to_wire(hf);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WriteRequest {
        resource_name: format!(
            "uploads/1f6a2c0e-0000-4000-8000-000000000001/blobs/{}/{}",
            digest.hash, digest.size_bytes
        ),
        write_offset: 0,
        finish_write: false,
        data: data[..1024].to_vec(),
    })
    .await
    .unwrap();
    let mut client = ByteStreamClient::new(channel(port).await);
    tokio::spawn(async move {
        let _ = client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
    });
    tx
}

/// SIGTERM to `pid`.
fn term(pid: u32) {
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits for `child` to exit; the time it took from `since`.
fn exit_time(child: &mut std::process::Child, since: Instant) -> Duration {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit: {status:?}");
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(60), "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A graceful stop waits for running calls only up to "stop timeout", and a
/// second signal stops at once; pid and info files go in both cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_bounded_and_a_second_signal_forces_it() {
    for (timeout, second_signal) in [(Some(2.0), false), (None, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path(), json!({"logging": {"plain": true}}));
        if let Some(seconds) = timeout {
            config["stop timeout"] = json!(seconds);
        }
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = jserve()
            .arg("serve")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let info_path = dir.path().join("info.json");
        procs::wait_for_info_port(&info_path, || None);
        let port = read_info(&info_path)["port"].as_u64().unwrap() as u16;
        let _held = hold_a_call(port).await;
        // The write has reached the daemon once its partial upload exists.
        let uploads = dir.path().join("build-root");
        let started = Instant::now();
        while !String::from_utf8_lossy(
            &Command::new("find")
                .arg(&uploads)
                .args(["-type", "f", "-size", "+0"])
                .output()
                .unwrap()
                .stdout,
        )
        .contains("tmp")
        {
            assert!(started.elapsed() < TIMEOUT, "the upload never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = Instant::now();
        term(child.id());
        if second_signal {
            while !std::fs::read_to_string(&log)
                .unwrap()
                .contains("another signal stops at once")
            {
                assert!(sent.elapsed() < TIMEOUT, "first signal not taken");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            term(child.id());
        }
        let took = exit_time(&mut child, sent);
        let stderr = std::fs::read_to_string(&log).unwrap();
        // Without the bound the held call keeps the daemon up for good.
        assert!(took < Duration::from_secs(10), "took {took:?}:\n{stderr}");
        if second_signal {
            assert!(
                stderr.contains("received again: stopping at once"),
                "{stderr}"
            );
        } else {
            assert!(took >= Duration::from_secs(2), "took {took:?}");
            assert!(stderr.contains("were cut off"), "{stderr}");
        }
        assert!(!info_path.exists(), "info file removed");
    }
}

/// Every line of a JSON log (`"logging": {"format": "json"}`, and
/// `--log-format json`) is one JSON object; the end of an RPC says when,
/// how bad, which request and method, what about, and how long it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line() {
    use common::clients::SourceTree;
    use serde_json::Value;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("f"), "f\n").unwrap();
    let (commit, _) = common::git::commit_all(&repo);
    let serve = serve_repo(
        dir.path(),
        &repo,
        json!({"logging": {"format": "json", "limit": 5}}),
    );
    let channel = common::channel(serve.port).await;
    let mut sources = SourceTree::new(channel.clone());
    assert_eq!(sources.commit_tree(&commit, ".", false).await.status, 0);
    let status = jserve::proto::target_client::TargetClient::new(channel)
        .serve_target(jserve::proto::ServeTargetRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The answer's end is logged once its body is done: wait for both.
    let deadline = Instant::now() + TIMEOUT;
    let lines = loop {
        let log = serve.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let ends = lines.iter().filter(|l| l["message"] == "answered").count();
        if ends >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let end_of = |method: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "answered" && l["span"]["method"] == method)
            .unwrap_or_else(|| panic!("no end of {method} in {lines:?}"))
            .clone()
    };
    let commit_end = end_of("/justbuild.just_serve.SourceTree/ServeCommitTree");
    assert_eq!(commit_end["code"], "OK");
    assert_eq!(commit_end["level"], "DEBUG");
    assert_eq!(commit_end["span"]["subject"], commit.as_str());
    assert!(commit_end["span"]["id"].is_u64(), "{commit_end}");
    assert!(
        commit_end["ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{commit_end}"
    );
    // The other lines of that request carry the same request id.
    let id = &commit_end["span"]["id"];
    assert!(lines
        .iter()
        .any(|l| l["span"]["id"] == *id && l["message"] != "answered"));
    let target_end = end_of("/justbuild.just_serve.Target/ServeTarget");
    assert_eq!(target_end["code"], "INVALID_ARGUMENT");
    assert_eq!(
        target_end["level"], "INFO",
        "failures are logged at info level"
    );
    drop(serve);

    // The same with `jserve execute --log-format json`.
    let exec_dir = dir.path().join("execute");
    let execute = common::endpoints::Execute::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_jserve")),
        &exec_dir,
        false,
        &["--log-format", "json"],
    );
    let log = execute.group.log();
    let started: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        started.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("execution service started"))),
        "{log}"
    );
}

/// Long work logs how far it got at the progress interval: a build (actions
/// done, running, queued, the longest-running by name) and an archive
/// import (entries and bytes so far, reported by the unpacking process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_logs_its_progress() {
    use common::clients::SourceTree;
    use jserve::digest::HashFunction;
    use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let targets = json!({
        "slow": {"type": "export", "target": "slow-gen"},
        "slow-gen": {"type": "generic", "outs": ["late.txt"],
                     "cmds": ["sleep 1", "echo late > late.txt"]}});
    std::fs::write(repo.join("TARGETS"), targets.to_string()).unwrap();
    let (_, tree) = common::git::commit_all(&repo);
    let serve = serve_repo(
        dir.path(),
        &repo,
        json!({"build": {"progress interval": 0.05}}),
    );
    let channel = common::channel(serve.port).await;
    let request =
        common::targets::request_at(&channel, HashFunction::GitSha1, &tree, "slow", json!({}))
            .await;
    let mut target = jserve::proto::target_client::TargetClient::new(channel.clone());
    common::targets::ask(&mut target, &request).await;
    let log = serve.log();
    let progress = log
        .lines()
        .find(|l| l.contains("1 running, 0 queued; longest: "))
        .unwrap_or_else(|| panic!("no progress of the build:\n{log}"));
    assert!(progress.contains("making late.txt"), "{progress}");
    assert!(progress.contains("0 of 1 actions done"), "{progress}");

    // An archive large enough to take a while to unpack.
    let archive = dir.path().join("big.tar.gz");
    common::corpus::make_tar_gz(&archive, 2000, 8 << 10, common::corpus::Corpus::Words);
    let data = std::fs::read(&archive).unwrap();
    let digest = HashFunction::GitSha1.digest_bytes(jserve::digest::ObjectKind::File, &data);
    // Through ByteStream: larger than a batch may be.
    use jserve::remote::RemoteCas;
    let address = jserve::config::Address::parse(&serve.address()).unwrap();
    let cas = jserve::remote::grpc::GrpcCas::connect(jserve::remote::grpc::GrpcCasConfig::new(
        address,
        "",
        HashFunction::GitSha1,
    ))
    .await
    .unwrap();
    cas.upload_file(&digest, &archive).await.unwrap();
    let r = SourceTree::new(channel)
        .archive_tree(
            &digest.hash,
            ArchiveType::Tar,
            ".",
            SymlinksResolve::None,
            false,
        )
        .await;
    assert_eq!(r.status, 0);
    let log = serve.log();
    let unpacking: Vec<&str> = log.lines().filter(|l| l.contains("unpacking: ")).collect();
    assert!(!unpacking.is_empty(), "no progress of the import:\n{log}");
    assert!(
        unpacking
            .iter()
            .any(|l| l.contains(" entries, ") && l.contains(&digest.hash[2..])),
        "{unpacking:?}"
    );
}

/// An upload to the endpoint that takes longer than the progress interval
/// logs how many objects it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_upload_logs_its_progress() {
    use common::clients::SourceTree;
    use jserve::digest::HashFunction;
    let endpoint = common::reapi::start_execute(HashFunction::GitSha1, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    // 20 MB in all: several batches.
    for i in 0..2000 {
        let line = format!("file {i}\n");
        std::fs::write(repo.join(format!("f{i}")), line.repeat(10_000 / line.len())).unwrap();
    }
    let (commit, _) = common::git::commit_all(&repo);
    let serve = serve_repo(
        dir.path(),
        &repo,
        json!({"execution endpoint": {"address": format!("127.0.0.1:{}", endpoint.server.addr.port())},
               "build": {"progress interval": 0.001}}),
    );
    let mut sources = SourceTree::new(common::channel(serve.port).await);
    assert_eq!(sources.commit_tree(&commit, ".", true).await.status, 0);
    let log = serve.log();
    let line = log
        .lines()
        .find(|l| l.contains("uploading to the endpoint: "))
        .unwrap_or_else(|| panic!("no progress of the upload:\n{log}"));
    assert!(line.contains(" of 2001 objects sent"), "{line}");
    endpoint.server.shutdown().await.unwrap();
}

/// `jserve execute --metrics-port`: the metrics of a bare endpoint.
#[test]
fn execute_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let execute = common::endpoints::Execute::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_jserve")),
        dir.path(),
        false,
        &["--metrics-port", "0"],
    );
    let deadline = Instant::now() + TIMEOUT;
    let addr = loop {
        if let Some(addr) = common::http::metrics_address(&execute.group.log()) {
            break addr;
        }
        assert!(Instant::now() < deadline, "{}", execute.group.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    // The build root is measured in the background from the start.
    let text = loop {
        let (status, _, text) = common::http::get(addr, "/metrics");
        assert!(status.contains(" 200 "), "{status}");
        if text.contains("jserve_build_root_bytes{store=\"staging\"") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the build root is never measured"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        common::http::sample(&text, "jserve_actions_running"),
        Some(0.0)
    );
    // A serve daemon's ServeTarget counters are not there.
    assert!(!text.contains("jserve_serve_target_requests"), "{text}");
}

/// `jserve serve` (its files in `dir/serve`, its build root `dir/root`)
/// over `repo`, with the further config keys of `extra`.
fn serve_repo(
    dir: &std::path::Path,
    repo: &std::path::Path,
    extra: serde_json::Value,
) -> common::endpoints::JserveServe {
    let mut config = json!({"local build root": loc(&dir.join("root")),
                            "remote service": {"port": 0},
                            "repositories": [loc(repo)]});
    for (key, value) in extra.as_object().into_iter().flatten() {
        config[key] = value.clone();
    }
    common::endpoints::JserveServe::start(&dir.join("serve"), config)
}
