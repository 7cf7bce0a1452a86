//! The reference `just` client (scripts/install-reference-just) builds a small
//! project through jserve's own endpoint, in native and compatible mode.
//!
//! Without the client the test says so and passes, except under CI (CI set),
//! where .ci/run installs it and its absence is a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::reapi::start_execute;
use common::reference::reference_just;
use jserve::digest::HashFunction;

fn write_project(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ROOT"), "").unwrap();
    std::fs::write(dir.join("greeting.txt"), "Hello, ").unwrap();
    std::fs::write(dir.join("name.txt"), "world\n").unwrap();
    let targets = r#"{ "hello":
  { "type": "generic"
  , "cmds":
    [ "cat greeting.txt name.txt > hello.txt"
    , "mkdir -p out/sub && echo deep > out/sub/file && ln -s sub/file out/link"
    ]
  , "outs": ["hello.txt"]
  , "out_dirs": ["out"]
  , "deps": ["greeting.txt", "name.txt"]
  }
}"#;
    std::fs::write(dir.join("TARGETS"), targets).unwrap();
}

/// Runs `just ARGS` against the endpoint; returns stderr (just logs there).
fn just(
    bin: &Path,
    project: &Path,
    local_root: &Path,
    port: u16,
    compatible: bool,
    args: &[&str],
) -> String {
    let mut cmd = Command::new(bin);
    cmd.arg(args[0])
        .args(["--workspace-root", project.to_str().unwrap()])
        .args(["--local-build-root", local_root.to_str().unwrap()])
        .args(["-r", &format!("127.0.0.1:{port}")])
        .arg("--plain-log")
        .args(&args[1..]);
    if compatible {
        cmd.arg("--compatible");
    }
    let out = cmd.output().expect("just runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "just {args:?} failed:\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_just_builds_through_jserve_execute() {
    let Some(bin) = reference_just() else { return };
    for (hash, compatible) in [(HashFunction::GitSha1, false), (HashFunction::Sha256, true)] {
        let ep = start_execute(hash, 2).await;
        let port = ep.server.addr.port();
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        write_project(&project);
        let (bin2, project2, base) = (bin.clone(), project.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let out = base.join("installed");
            let log = just(
                &bin2,
                &project2,
                &base.join("client-1"),
                port,
                compatible,
                &["install", "hello", "-o", out.to_str().unwrap()],
            );
            assert!(log.contains("Processed 1 actions, 0 cache hits"), "{log}");
            assert_eq!(
                std::fs::read_to_string(out.join("hello.txt")).unwrap(),
                "Hello, world\n"
            );
            assert_eq!(
                std::fs::read_to_string(out.join("out/sub/file")).unwrap(),
                "deep\n"
            );
            assert_eq!(
                std::fs::read_link(out.join("out/link")).unwrap(),
                Path::new("sub/file")
            );

            // A second client with an empty local root gets the action from jserve's cache.
            let log = just(
                &bin2,
                &project2,
                &base.join("client-2"),
                port,
                compatible,
                &["build", "hello"],
            );
            assert!(log.contains("1 cache hits"), "{log}");
        })
        .await
        .unwrap();
        ep.server.shutdown().await.unwrap();
    }
}
