//! jserve's own REAPI endpoint, execution side, in both hash modes: outputs of
//! every kind, the action cache, failures, time limits, the job limit, and
//! operations.

mod common;

use std::collections::BTreeMap;

use bazel_remote_apis::build::bazel::remote::execution::v2::{self as reapi};
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use bazel_remote_apis::google::longrunning::GetOperationRequest;
use common::reapi::*;
use jserve::digest::{parse_git_tree, HashFunction, ObjectKind};
use prost::Message;
use tonic::Code;

const MODES: [HashFunction; 2] = [HashFunction::GitSha1, HashFunction::Sha256];

fn script(text: &str) -> BTreeMap<&'static str, TestFile> {
    [
        ("tools/run.sh", exe(text)),
        ("data/in.txt", file("input\n")),
    ]
    .into_iter()
    .collect()
}

#[tokio::test]
async fn outputs_of_every_kind_and_the_action_cache() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let root = ep
            .upload_tree(&script(
                "#!/bin/sh\nmkdir -p out/dir/sub && cp data/in.txt out/file && echo deep > out/dir/sub/deep \
                 && ln -s file out/link && echo done",
            ))
            .await;
        let action = ep
            .action(
                &root,
                &["sh", "tools/run.sh"],
                &["out/file", "out/dir", "out/link", "out/absent"],
                0,
                false,
            )
            .await;
        let op = ep.execute(&action, false).await;
        let response = response_of(&op);
        assert_eq!(
            response.status.clone().unwrap_or_default().code,
            0,
            "{hash:?}: {:?}",
            response.status
        );
        assert!(!response.cached_result);
        let result = response.result.unwrap();
        assert_eq!(result.exit_code, 0);
        assert_eq!(
            ep.read_blob(result.stdout_digest.as_ref().unwrap()).await,
            b"done\n"
        );

        assert_eq!(result.output_files.len(), 1);
        let f = &result.output_files[0];
        assert_eq!(f.path, "out/file");
        assert_eq!(ep.read_blob(f.digest.as_ref().unwrap()).await, b"input\n");
        assert_eq!(result.output_symlinks.len(), 1);
        assert_eq!(result.output_symlinks[0].target, "file");
        assert_eq!(result.output_directories.len(), 1);
        let tree_digest = result.output_directories[0].tree_digest.clone().unwrap();
        let tree_bytes = ep.read_blob(&tree_digest).await;
        match hash {
            HashFunction::GitSha1 => {
                // A git tree id, readable as a tree object.
                assert!(tree_digest.hash.starts_with("74"));
                let entries = parse_git_tree(&tree_bytes).unwrap();
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].name, b"sub");
                assert_eq!(entries[0].kind, ObjectKind::Tree);
            }
            HashFunction::Sha256 => {
                let tree = reapi::Tree::decode(tree_bytes.as_slice()).unwrap();
                assert_eq!(tree.root.unwrap().directories[0].name, "sub");
                assert_eq!(tree.children.len(), 1);
                assert_eq!(tree.children[0].files[0].name, "deep");
            }
        }

        // The same action again comes from the action cache.
        let again = response_of(&ep.execute(&action, false).await);
        assert!(again.cached_result, "{hash:?}");
        assert_eq!(again.result.unwrap().output_files, result.output_files);
        // Unless the client skips the look-up.
        assert!(!response_of(&ep.execute(&action, true).await).cached_result);
        // The action cache answers directly too.
        let cached = ep
            .ac()
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cached.output_files, result.output_files);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn failing_action_is_reported_and_not_cached() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let root = ep
            .upload_tree(&script("#!/bin/sh\necho broken >&2\nexit 3"))
            .await;
        let action = ep
            .action(&root, &["sh", "tools/run.sh"], &[], 0, false)
            .await;
        let response = response_of(&ep.execute(&action, false).await);
        let result = response.result.unwrap();
        assert_eq!(result.exit_code, 3);
        assert_eq!(
            ep.read_blob(result.stderr_digest.as_ref().unwrap()).await,
            b"broken\n"
        );
        assert!(result.stdout_digest.is_none(), "empty stdout has no digest");
        assert!(!response_of(&ep.execute(&action, false).await).cached_result);
        let err = ep
            .ac()
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn timed_out_action_is_killed_and_reported() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    let root = ep
        .upload_tree(&script("#!/bin/sh\necho started\nsleep 30"))
        .await;
    let action = ep
        .action(&root, &["sh", "tools/run.sh"], &[], 1, false)
        .await;
    let started = std::time::Instant::now();
    let response = response_of(&ep.execute(&action, false).await);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "killed, not waited for"
    );
    assert_eq!(response.status.unwrap().code, Code::DeadlineExceeded as i32);
    let result = response.result.unwrap();
    assert_eq!(
        ep.read_blob(result.stdout_digest.as_ref().unwrap()).await,
        b"started\n"
    );
    assert!(!response_of(&ep.execute(&action, false).await).cached_result);
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_most_jobs_actions_run_at_once() {
    let ep = start_execute(HashFunction::Sha256, 2).await;
    let log = ep.dir.path().join("concurrency.log");
    let root = ep
        .upload_tree(&script(
            "#!/bin/sh\necho \"+ $1\" >> \"$2\"\nsleep 0.2\necho \"- $1\" >> \"$2\"",
        ))
        .await;
    let mut actions = Vec::new();
    for i in 0..20 {
        let tag = i.to_string();
        let log = log.to_str().unwrap().to_string();
        actions.push(
            ep.action(&root, &["sh", "tools/run.sh", &tag, &log], &[], 0, false)
                .await,
        );
    }
    let runs = actions.iter().map(|a| ep.execute(a, false));
    for op in futures::future::join_all(runs).await {
        assert_eq!(response_of(&op).result.unwrap().exit_code, 0);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let (mut running, mut most, mut starts) = (0i32, 0i32, 0);
    for line in text.lines() {
        if line.starts_with('+') {
            running += 1;
            starts += 1;
        } else {
            running -= 1;
        }
        most = most.max(running);
    }
    assert_eq!(starts, 20);
    assert_eq!(
        most, 2,
        "with jobs=2, two actions (and never more) run at once:\n{text}"
    );
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_commands_and_missing_inputs_are_refused() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let root = ep.upload_tree(&script("#!/bin/sh\ntrue")).await;
        for outputs in [vec!["../escape"], vec!["/abs/path"], vec!["a/../../b"]] {
            let action = ep.action(&root, &["true"], &outputs, 0, false).await;
            let err = ep
                .exec()
                .execute(reapi::ExecuteRequest {
                    action_digest: Some(action),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{outputs:?}");
        }
        // Outputs may go above the working directory, as long as they stay inside the root.
        let action = ep
            .action_in(
                "tools",
                &root,
                &["sh", "-c", "echo up > ../up.txt"],
                &["../up.txt"],
                0,
                false,
            )
            .await;
        let result = response_of(&ep.execute(&action, false).await)
            .result
            .unwrap();
        assert_eq!(result.output_files.len(), 1, "{hash:?}");
        assert_eq!(result.output_files[0].path, "../up.txt");
        let escaping = ep
            .action_in("tools", &root, &["true"], &["../../out"], 0, false)
            .await;
        let err = ep
            .exec()
            .execute(reapi::ExecuteRequest {
                action_digest: Some(escaping),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // An action that is not in the CAS.
        let unknown = ep.blob_digest(b"no such action");
        let err = ep
            .exec()
            .execute(reapi::ExecuteRequest {
                action_digest: Some(unknown),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn operations_can_be_followed_by_name() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    let root = ep.upload_tree(&script("#!/bin/sh\nsleep 0.3")).await;
    let action = ep
        .action(&root, &["sh", "tools/run.sh"], &[], 0, false)
        .await;
    let mut stream = ep
        .exec()
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.done);
    let name = first.name.clone();
    drop(stream);
    let mut waited = ep
        .exec()
        .wait_execution(reapi::WaitExecutionRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let last = waited.message().await.unwrap().unwrap();
    assert!(last.done);
    assert_eq!(response_of(&last).result.unwrap().exit_code, 0);
    let got = OperationsClient::new(ep.channel.clone())
        .get_operation(GetOperationRequest { name })
        .await
        .unwrap()
        .into_inner();
    assert!(got.done);
    let err = ep
        .exec()
        .wait_execution(reapi::WaitExecutionRequest {
            name: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_action_cannot_corrupt_the_cas_through_its_inputs() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let root = ep
            .upload_tree(&script(
                "#!/bin/sh\nchmod u+w data/in.txt\necho corrupted > data/in.txt",
            ))
            .await;
        let input = ep.blob_digest(b"input\n");
        let action = ep
            .action(&root, &["sh", "tools/run.sh"], &[], 0, false)
            .await;
        let response = response_of(&ep.execute(&action, false).await);
        let status = response.status.unwrap_or_default();
        assert_ne!(status.code, 0, "{hash:?}: a changed input fails the action");
        assert!(
            status.message.contains("changed its input"),
            "{}",
            status.message
        );
        // The CAS never serves the corrupted bytes under the original id.
        let read = ep
            .cas()
            .batch_read_blobs(reapi::BatchReadBlobsRequest {
                digests: vec![input.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let r = &read.responses[0];
        if r.status.clone().unwrap_or_default().code == 0 {
            assert_eq!(r.data, b"input\n");
        }
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn do_not_cache_actions_always_run() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    let root = ep.upload_tree(&script("#!/bin/sh\ntrue")).await;
    let action = ep
        .action(&root, &["sh", "tools/run.sh"], &[], 0, true)
        .await;
    for _ in 0..2 {
        let response = response_of(&ep.execute(&action, false).await);
        assert!(!response.cached_result);
        assert_eq!(response.result.unwrap().exit_code, 0);
    }
    let err = ep
        .ac()
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "do_not_cache results are not stored"
    );
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn update_action_result_needs_its_outputs() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let action = ep.blob_digest(b"some action");
        let absent = ep.blob_digest(b"output not uploaded");
        let result = reapi::ActionResult {
            output_files: vec![reapi::OutputFile {
                path: "out".into(),
                digest: Some(absent.clone()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = ep
            .ac()
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(action.clone()),
                action_result: Some(result.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        ep.upload_blob(b"output not uploaded").await;
        ep.ac()
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(action.clone()),
                action_result: Some(result.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let got = ep
            .ac()
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.output_files, result.output_files);
        ep.server.shutdown().await.unwrap();
    }
}

/// Under the default launcher `env --` a command starts as `env` would
/// start it (argv[0] as named, found along the search path), one `env`
/// cannot start fails as under `env` (exit 127), and what an action leaves
/// running in its process group ends with it.
#[tokio::test]
async fn commands_start_as_under_env_and_leave_nothing_running() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    let root = ep.upload_tree(&script("#!/bin/sh\n")).await;
    let action = ep
        .action(
            &root,
            &["sh", "-c", "echo \"$0\"; sleep 300 & echo $!"],
            &[],
            0,
            false,
        )
        .await;
    let result = response_of(&ep.execute(&action, false).await)
        .result
        .unwrap();
    assert_eq!(result.exit_code, 0);
    let stdout = ep.read_blob(result.stdout_digest.as_ref().unwrap()).await;
    let stdout = String::from_utf8(stdout).unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("sh"), "argv[0] as the action named it");
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    // SIGKILL was sent before the answer; the process is gone or a zombie
    // as soon as the kernel has delivered it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if stat.is_empty() || state == Some("Z") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} still runs: {stat}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let missing = ep
        .action(&root, &["no-such-program-anywhere"], &[], 0, false)
        .await;
    let result = response_of(&ep.execute(&missing, false).await)
        .result
        .unwrap();
    assert_eq!(result.exit_code, 127, "as env exits");
    let stderr = ep.read_blob(result.stderr_digest.as_ref().unwrap()).await;
    assert!(
        String::from_utf8_lossy(&stderr).contains("no-such-program-anywhere"),
        "env names it"
    );
    ep.server.shutdown().await.unwrap();
}
