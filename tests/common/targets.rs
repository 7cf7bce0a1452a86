//! ServeTarget as a `just` client drives it: compute the target-cache key of
//! an export target whose root is a git tree serve knows, upload the key
//! blobs to the endpoint, ask.

#![allow(dead_code)]

use jserve::build::keys::export_target_key;
use jserve::build::names::NamedTarget;
use jserve::build::repo_config::RepositoryConfig;
use jserve::proto::target_client::TargetClient;
use jserve::proto::ServeTargetRequest;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::reapi::{batch_upload, Endpoint};
use jserve::digest::{HashFunction, ObjectKind};

/// A targets file with one export target, `one`, of one action.
pub fn one_action_export() -> String {
    json!({"one": {"type": "export", "target": "one-gen"},
           "one-gen": {"type": "generic", "outs": ["o"], "cmds": ["echo one > o"]}})
    .to_string()
}

/// Uploads the key, the repository description and an empty dispatch list
/// for target `name` of the repository whose root is `tree`, configured by
/// `config`, to `endpoint`, as a client does; the request to send.
pub async fn request(
    endpoint: &Endpoint,
    tree: &str,
    name: &str,
    config: Value,
) -> ServeTargetRequest {
    request_at(&endpoint.channel, endpoint.hash, tree, name, config).await
}

/// As [`request`], to the CAS of any server behind `channel` (jserve or the
/// reference `just serve` as its own endpoint).
pub async fn request_at(
    channel: &Channel,
    hash: HashFunction,
    tree: &str,
    name: &str,
    config: Value,
) -> ServeTargetRequest {
    let repos = RepositoryConfig::from_json(
        &json!({"main": "", "repositories": {"": {"workspace_root": ["git tree", tree]}}}),
        None,
    )
    .unwrap();
    let (repo_key, key) =
        export_target_key(&repos, &NamedTarget::new("", "", name), &config, hash).unwrap();
    let upload = |data: Vec<u8>| async move {
        let d = hash.digest_bytes(ObjectKind::File, &data).to_wire(hash);
        batch_upload(channel.clone(), &[(&d, &data)]).await;
        d
    };
    let repo_key = upload(repo_key.json.into_bytes()).await;
    let key = upload(key.json.into_bytes()).await;
    let dispatch = upload(b"[]".to_vec()).await;
    ServeTargetRequest {
        target_cache_key_id: Some(key),
        execution_properties: vec![],
        dispatch_info: Some(dispatch),
        required_digests: vec![repo_key],
        keep_artifact_root: false,
    }
}

/// Asks once; panics unless the answer is a value.
pub async fn ask(client: &mut TargetClient<Channel>, request: &ServeTargetRequest) {
    let r = client
        .serve_target(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(r.log.is_none(), "ServeTarget answered with a failure log");
    assert!(r.target_value.is_some(), "ServeTarget answered a value");
}
