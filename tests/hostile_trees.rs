//! Deep trees against the real daemon (`jserve serve`, native mode, its own
//! endpoint): a chain of nested git trees uploaded through the CAS on the
//! serve port, then named in every RPC that walks trees. Trees as deep as
//! [`SUPPORTED`] levels are served; deeper ones get a clear error; the daemon
//! never falls over.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::clients::SourceTree;
use common::endpoints::JserveServe;
use common::loc;
use jserve::digest::{serialize_git_tree, GitTreeEntry, HashFunction, ObjectKind};
use jserve::proto::check_root_tree_response::CheckRootTreeStatus;
use jserve::proto::compute_tree_structure_response::ComputeTreeStructureStatus;
use jserve::proto::get_remote_tree_response::GetRemoteTreeStatus;
use jserve::proto::serve_tree_response::ServeTreeStatus;
use serde_json::json;
use tonic::transport::Channel;

/// Levels the daemon must serve (the reference's own tests use 900).
const SUPPORTED: usize = 10_500;

/// A chain of `depth` trees, each holding the next as `d`, the innermost a
/// blob (`salt` its content, so chains share nothing): (root id, objects
/// innermost first as (id, is_tree, bytes)).
fn chain(depth: usize, salt: &str) -> (String, Vec<(String, bool, Vec<u8>)>) {
    let hf = HashFunction::GitSha1;
    let blob = salt.as_bytes().to_vec();
    let blob_id = hf.hash_bytes(ObjectKind::File, &blob);
    let mut objects = vec![(blob_id.clone(), false, blob)];
    let mut inner = (blob_id, ObjectKind::File, "f");
    for _ in 0..depth {
        let mut id = [0u8; 20];
        hex::decode_to_slice(&inner.0, &mut id).unwrap();
        let bytes = serialize_git_tree(vec![GitTreeEntry {
            name: inner.2.as_bytes().to_vec(),
            kind: inner.1,
            id,
        }])
        .unwrap();
        let tree_id = hf.hash_bytes(ObjectKind::Tree, &bytes);
        objects.push((tree_id.clone(), true, bytes));
        inner = (tree_id, ObjectKind::Tree, "d");
    }
    (inner.0, objects)
}

/// Uploads `objects` in order, in batches (each tree after its entry).
async fn upload(channel: Channel, objects: &[(String, bool, Vec<u8>)]) {
    let hf = HashFunction::GitSha1;
    for batch in objects.chunks(2_000) {
        let digests: Vec<_> = batch
            .iter()
            .map(|(id, is_tree, bytes)| {
                jserve::digest::Digest {
                    hash: id.clone(),
                    size: bytes.len() as u64,
                    is_tree: *is_tree,
                }
                .to_wire(hf)
            })
            .collect();
        let blobs: Vec<_> = digests
            .iter()
            .zip(batch)
            .map(|(d, (_, _, bytes))| (d, bytes.as_slice()))
            .collect();
        common::reapi::batch_upload(channel.clone(), &blobs).await;
    }
}

/// The statuses of the tree-walking RPCs for `root`, in the order asked:
/// GetRemoteTree (imports it from the CAS into the git cache), CheckRootTree,
/// ServeTree, ComputeTreeStructure.
async fn walk_all(c: &mut SourceTree, root: &str, size: u64) -> [i32; 4] {
    let digest = jserve::digest::Digest {
        hash: root.to_string(),
        size,
        is_tree: true,
    }
    .to_wire(HashFunction::GitSha1);
    [
        c.get_remote_tree(digest).await.status,
        c.check_root_tree(root).await.status,
        c.tree(root).await.status,
        c.tree_structure(root).await.status,
    ]
}

/// Runs `true` with the tree `root` as input root, through the endpoint on
/// the serve port; returns the final response.
async fn execute_on(channel: Channel, root: &str, size: u64) -> reapi::ExecuteResponse {
    use prost::Message;
    let hf = HashFunction::GitSha1;
    let blob = |bytes: &[u8]| hf.digest_bytes(ObjectKind::File, bytes).to_wire(hf);
    let command = reapi::Command {
        arguments: vec!["true".to_string()],
        ..Default::default()
    }
    .encode_to_vec();
    let command_digest = blob(&command);
    let input = jserve::digest::Digest {
        hash: root.to_string(),
        size,
        is_tree: true,
    }
    .to_wire(hf);
    let action = reapi::Action {
        command_digest: Some(command_digest.clone()),
        input_root_digest: Some(input),
        do_not_cache: true,
        ..Default::default()
    }
    .encode_to_vec();
    let action_digest = blob(&action);
    common::reapi::batch_upload(
        channel.clone(),
        &[(&command_digest, &command), (&action_digest, &action)],
    )
    .await;
    let op = common::reapi::execute(channel, &action_digest, true).await;
    common::reapi::response_of(&op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_trees_are_served_and_deeper_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    // JSERVE_KEEP_TEST_DIRS=1 keeps the daemon's log and build root.
    let dir = if std::env::var_os("JSERVE_KEEP_TEST_DIRS").is_some() {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    let serve = JserveServe::start(
        &dir.join("serve"),
        json!({
            "local build root": loc(&dir.join("root")),
            "remote service": {"port": 0},
        }),
    );
    let channel = common::channel(serve.port).await;
    let mut c = SourceTree::new(channel.clone());

    let (root, objects) = chain(SUPPORTED, "supported");
    upload(channel.clone(), &objects).await;
    let size = objects.last().unwrap().2.len() as u64;
    assert_eq!(
        walk_all(&mut c, &root, size).await,
        [
            GetRemoteTreeStatus::Ok as i32,
            CheckRootTreeStatus::Ok as i32,
            ServeTreeStatus::Ok as i32,
            ComputeTreeStructureStatus::Ok as i32,
        ],
        "{SUPPORTED} levels\n{}",
        serve.log()
    );

    // The same tree as an action's input root: staged level by level until
    // paths grow too long for the file system, a clear status, no crash.
    let staged = execute_on(channel.clone(), &root, size).await;
    let status = staged.status.unwrap_or_default();
    assert_eq!(
        status.code,
        tonic::Code::InvalidArgument as i32,
        "{status:?}"
    );
    assert!(
        status.message.contains("past the longest path"),
        "{status:?}"
    );

    // Far deeper than any source tree: refused, and the daemon stays up.
    let (root, objects) = chain(jserve::digest::MAX_TREE_DEPTH + 1, "too deep");
    upload(channel.clone(), &objects).await;
    let size = objects.last().unwrap().2.len() as u64;
    // Importing from the CAS into the git cache and looking the tree up walk
    // nothing recursively; syncing it and computing its structure refuse.
    let statuses = walk_all(&mut c, &root, size).await;
    assert_eq!(
        statuses,
        [
            GetRemoteTreeStatus::Ok as i32,
            CheckRootTreeStatus::Ok as i32,
            ServeTreeStatus::SyncError as i32,
            ComputeTreeStructureStatus::InternalError as i32,
        ],
        "{}",
        serve.log()
    );
    assert!(
        serve.log().contains("deeper than"),
        "no clear error:\n{}",
        serve.log()
    );
    // Still serving.
    let (root, objects) = chain(3, "shallow");
    upload(channel.clone(), &objects).await;
    let size = objects.last().unwrap().2.len() as u64;
    assert_eq!(walk_all(&mut c, &root, size).await, [0, 0, 0, 0]);
}
