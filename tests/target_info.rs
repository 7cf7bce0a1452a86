//! ServeTargetVariables and ServeTargetDescription answer as the reference
//! `just serve` does: jserve and the reference run side by side over the same
//! repository and get the same questions.

mod common;

use std::path::PathBuf;

use common::reference::{reference_just, start_server};
use jserve::proto::target_client::TargetClient;
use jserve::proto::{ServeTargetDescriptionRequest, ServeTargetVariablesRequest};
use tonic::transport::Channel;

const TARGETS: &str = r#"{
  "hello": {"type": "export", "target": "x", "doc": ["A glorified hello-world example"],
            "config_doc": {"NAME": ["The name to say hello to"], "COUNT": [3]},
            "flexible_config": ["NAME", "COUNT"]},
  "quiet": {"type": "export", "target": "x"},
  "nulls": {"type": "export", "target": "x", "doc": null, "flexible_config": ["A"]},
  "plain": {"type": "generic", "cmds": ["true"]},
  "untyped": {"target": "x"},
  "bad flex": {"type": "export", "target": "x", "flexible_config": "NAME"},
  "bad entry": {"type": "export", "target": "x", "flexible_config": ["NAME", 7]}
}"#;

async fn client(port: u16) -> TargetClient<Channel> {
    TargetClient::new(
        Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// The answer of one server, comparable across servers.
async fn ask(port: u16, tree: &str, file: &str, target: &str) -> (String, String) {
    let mut c = client(port).await;
    let request = ServeTargetVariablesRequest {
        root_tree: tree.into(),
        target_file: file.into(),
        target: target.into(),
    };
    let variables = match c.serve_target_variables(request).await {
        Ok(r) => format!("OK {:?}", r.into_inner().flexible_config),
        Err(s) => format!("{:?}", s.code()),
    };
    let request = ServeTargetDescriptionRequest {
        root_tree: tree.into(),
        target_file: file.into(),
        target: target.into(),
    };
    let description = match c.serve_target_description(request).await {
        Ok(r) => {
            let d = r.into_inner().description_id.unwrap();
            format!("OK {}:{}", d.hash, d.size_bytes)
        }
        Err(s) => format!("{:?}", s.code()),
    };
    (variables, description)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_reference() {
    let Some(just) = reference_just() else { return };
    let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    std::fs::write(repo.join("TARGETS"), TARGETS).unwrap();
    std::fs::write(repo.join("sub/TARGETS"), "not json").unwrap();
    std::fs::write(repo.join("sub/list"), "[]").unwrap();
    let (_, tree) = common::git::commit_all(&repo);
    let unknown = "0123456789012345678901234567890123456789".to_string();
    let cases = [
        (tree.clone(), "TARGETS", "hello"),
        (tree.clone(), "TARGETS", "quiet"),
        (tree.clone(), "TARGETS", "nulls"),
        (tree.clone(), "TARGETS", "plain"),
        (tree.clone(), "TARGETS", "untyped"),
        (tree.clone(), "TARGETS", "bad flex"),
        (tree.clone(), "TARGETS", "bad entry"),
        (tree.clone(), "TARGETS", "absent"),
        (tree.clone(), "sub/TARGETS", "hello"),
        (tree.clone(), "sub/list", "hello"),
        (tree.clone(), "sub", "hello"),
        (tree.clone(), "NOFILE", "hello"),
        (unknown, "TARGETS", "hello"),
    ];
    for compatible in [false, true] {
        let dir = tmp.path().join(format!("servers-{compatible}"));
        let ours = start_server(&jserve, &["serve"], &dir.join("jserve"), &repo, compatible);
        let reference = start_server(&just, &["serve"], &dir.join("ref"), &repo, compatible);
        for (t, file, target) in &cases {
            let got = ask(ours.port, t, file, target).await;
            let want = ask(reference.port, t, file, target).await;
            assert_eq!(got, want, "{file} {target} (compatible: {compatible})");
        }
        // The interesting answer really carries the documentation.
        let (vars, description) = ask(ours.port, &tree, "TARGETS", "hello").await;
        assert_eq!(vars, "OK [\"NAME\", \"COUNT\"]");
        assert!(description.starts_with("OK "));
    }
}
