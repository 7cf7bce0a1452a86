//! What clients with absent target roots ask about an export target before
//! computing its cache key: its flexible variables (ServeTargetVariables) and
//! its documentation (ServeTargetDescription), read from the targets file in
//! a git tree the server knows.

use git2::{ObjectType, Oid};
use serde_json::{Map, Value};

use crate::digest::{Digest, ObjectKind};
use crate::sources::Sources;

/// Why a question about an export target has no answer; the variants are
/// the gRPC codes clients see.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportInfoError {
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

use ExportInfoError::{FailedPrecondition, Internal};

/// The content of `target_file` in tree `root_tree`, from the git cache or a
/// configured repository (in that order).
async fn targets_file(
    sources: &Sources,
    root_tree: &str,
    target_file: &str,
) -> Result<Vec<u8>, ExportInfoError> {
    let (repos, tree, file) = (
        sources.repos.clone(),
        root_tree.to_string(),
        target_file.to_string(),
    );
    let found = crate::blocking::run(move || {
        let oid = Oid::from_str(&tree).map_err(|_| format!("invalid tree id {tree:?}"))?;
        let mut tree_seen = false;
        for index in 0..repos.paths().len() {
            if index == 0 && !repos.paths()[0].exists() {
                continue;
            }
            let repo = repos.open(index).map_err(|e| e.to_string())?;
            let Ok(root) = repo.find_tree(oid) else {
                continue;
            };
            tree_seen = true;
            if file == "." || file.is_empty() {
                return Ok(Err(format!(
                    "target root {tree} has no targets file {file:?}"
                )));
            }
            let Ok(entry) = root.get_path(std::path::Path::new(&file)) else {
                continue;
            };
            if entry.kind() != Some(ObjectType::Blob) {
                return Ok(Err(format!(
                    "target root {tree} found, but {file:?} in it is not a file"
                )));
            }
            let blob = repo.find_blob(entry.id()).map_err(|e| e.to_string())?;
            return Ok(Ok(blob.content().to_vec()));
        }
        if tree_seen {
            Err(format!(
                "could not read targets file {file:?} in tree {tree}"
            ))
        } else {
            Ok(Err(format!("missing target-root tree {tree}")))
        }
    })
    .await;
    match found {
        Ok(Ok(content)) => Ok(content),
        Ok(Err(precondition)) => Err(FailedPrecondition(precondition)),
        Err(internal) => Err(Internal(internal)),
    }
}

/// The description of export target `target` in the targets file.
async fn export_target(
    sources: &Sources,
    root_tree: &str,
    target_file: &str,
    target: &str,
) -> Result<Map<String, Value>, ExportInfoError> {
    let content = targets_file(sources, root_tree, target_file).await?;
    let targets: Value = serde_json::from_slice(&content).map_err(|e| {
        FailedPrecondition(format!("targets file {target_file:?} is not JSON: {e}"))
    })?;
    let Value::Object(mut targets) = targets else {
        return Err(FailedPrecondition(format!(
            "targets file {target_file:?} is not a JSON object"
        )));
    };
    let Some(Value::Object(description)) = targets.remove(target) else {
        return Err(FailedPrecondition(format!(
            "missing target {target:?} in {target_file:?}"
        )));
    };
    match description.get("type") {
        Some(Value::String(t)) if t == "export" => Ok(description),
        Some(Value::String(t)) => Err(FailedPrecondition(format!(
            "target {target:?} is of type {t:?}, not an export target"
        ))),
        _ => Err(FailedPrecondition(format!(
            "target {target:?} has no string \"type\""
        ))),
    }
}

/// ServeTargetVariables: the export target's flexible variables.
pub async fn target_variables(
    sources: &Sources,
    root_tree: &str,
    target_file: &str,
    target: &str,
) -> Result<Vec<String>, ExportInfoError> {
    let description = export_target(sources, root_tree, target_file, target).await?;
    match description.get("flexible_config") {
        None => Ok(Vec::new()),
        Some(Value::Array(vars)) => vars
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    FailedPrecondition(format!(
                        "flexible_config of {target:?} has a non-string entry {v}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(FailedPrecondition(format!(
            "flexible_config of {target:?} is not a list: {other}"
        ))),
    }
}

/// ServeTargetDescription: `doc`, `config_doc` and `flexible_config` of the
/// export target as a pretty JSON blob in the endpoint's CAS; its digest.
pub async fn target_description(
    sources: &Sources,
    root_tree: &str,
    target_file: &str,
    target: &str,
) -> Result<Digest, ExportInfoError> {
    let description = export_target(sources, root_tree, target_file, target).await?;
    let mut shown = Map::new();
    for key in ["doc", "config_doc", "flexible_config"] {
        match description.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                shown.insert(key.to_string(), v.clone());
            }
        }
    }
    let text = crate::build::json::dump_pretty(&Value::Object(shown));
    let digest = sources
        .remote_hash()
        .digest_bytes(ObjectKind::File, text.as_bytes());
    sources
        .remote
        .upload_blobs(vec![(digest.clone(), text.into_bytes())])
        .await
        .map_err(|e| ExportInfoError::Unavailable(e.to_string()))?;
    Ok(digest)
}
