//! The client commands (`jserve commit-tree`, `content`, `distdir-tree`,
//! `remote-endpoint`, ...) against a serve endpoint started in-process.

mod common;

use common::git::git;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn jserve(args: &[&str], port: u16) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jserve"))
        .args(args)
        .args(["-R", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    std::fs::write(repo.join("sub/f"), "f\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "c"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let sub = git(&repo, &["rev-parse", "HEAD:sub"]);
    let blob = git(&repo, &["rev-parse", "HEAD:sub/f"]);
    let server = start(&config_in(
        dir.path(),
        json!({"repositories": [loc(&repo)]}),
    ))
    .await;
    let port = server.addr.port();

    let blob_id = blob.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let blob = blob_id;
        vec![
            jserve(&["commit-tree", &commit, "--subdir", "sub"], port),
            jserve(
                &[
                    "commit-tree",
                    &commit,
                    "--subdir",
                    "sub",
                    "--sync",
                    "--json",
                ],
                port,
            ),
            jserve(&["commit-tree", &"1".repeat(40)], port),
            jserve(&["content", &blob, "--json"], port),
            jserve(&["distdir-tree", &format!("x={blob}:x"), "--json"], port),
            jserve(&["remote-endpoint", "--json"], port),
        ]
    })
    .await
    .unwrap();

    let (code, text) = &outputs[0];
    assert_eq!(*code, Some(0));
    assert!(
        text.contains(&format!("tree: {sub}")) && text.contains("status: OK"),
        "{text}"
    );

    let (code, text) = &outputs[1];
    assert_eq!(*code, Some(0));
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["tree"], sub.as_str());
    assert_eq!(v["digest"], format!("74{sub}:0"));
    assert_eq!(v["status"], "OK");

    let (code, text) = &outputs[2];
    assert_eq!(*code, Some(1), "not OK means a non-zero exit");
    assert!(text.contains("status: NOT_FOUND"), "{text}");

    let v: Value = serde_json::from_str(&outputs[3].1).unwrap();
    assert_eq!(v["digest"], format!("62{blob}:0"));
    let v: Value = serde_json::from_str(&outputs[4].1).unwrap();
    assert_eq!(v["status"], "OK");
    assert_eq!(v["tree"].as_str().unwrap().len(), 40);
    let v: Value = serde_json::from_str(&outputs[5].1).unwrap();
    assert_eq!(v["compatible"], false);
    server.shutdown().await.unwrap();
}

/// `jserve status`: the daemon's counters, as a table and as JSON; a server
/// without the Status service (the reference `just serve`) is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_daemons_counters() {
    use jserve::digest::HashFunction;
    use jserve::proto::target_client::TargetClient;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("TARGETS"), common::targets::one_action_export()).unwrap();
    let (_, tree) = common::git::commit_all(&repo);
    let (_ctx, endpoint) = common::start_serve(
        &config_in(dir.path(), json!({"repositories": [loc(&repo)]})),
        HashFunction::GitSha1,
    )
    .await;
    let port = endpoint.server.addr.port();
    let request = common::targets::request(&endpoint, &tree, "one", json!({})).await;
    let mut target = TargetClient::new(endpoint.channel.clone());
    for _ in 0..4 {
        common::targets::ask(&mut target, &request).await;
    }
    let (code, out, table) = tokio::task::spawn_blocking(move || {
        let (code, out) = jserve(&["status", "--json"], port);
        let (_, table) = jserve(&["status"], port);
        (code, out, table)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["role"], "serve, its own endpoint");
    assert_eq!(s["serve_target_requests"], 4);
    assert_eq!(s["serve_target_hits"], 3);
    assert_eq!(s["builds_running"], 0);
    assert_eq!(s["actions_running"], 0);
    assert_eq!(s["endpoint_reachable"], true);
    assert!(s["requests"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["build_root_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0, "{s}");
    assert!(
        table.contains("ServeTarget hits") && table.contains("3 of 4 requests (75.0 %)"),
        "{table}"
    );
    assert!(table.contains("build root"), "{table}");
    endpoint.server.shutdown().await.unwrap();

    // The reference `just serve` has no such service.
    let Some(just) = common::reference::reference_just() else {
        return;
    };
    let reference = common::reference::start_server(
        &just,
        &["serve"],
        &dir.path().join("reference"),
        &repo,
        false,
    );
    let port = reference.port;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_jserve"))
            .args(["status", "-R", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no jserve Status service"), "{stderr}");
}
