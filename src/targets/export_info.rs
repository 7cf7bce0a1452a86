//! What clients with absent target roots ask about an export target before
//! computing its cache key: its flexible variables (ServeTargetVariables) and
//! its documentation (ServeTargetDescription), read from the targets file in
//! a git tree the server knows.

use git2::{ObjectType, Oid};
use serde_json::{Map, Value};

use crate::digest::{Digest, ObjectKind};
use crate::sources::Sources;
use ExportInfoError::NotAnExport;

/// Why a question about an export target has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExportInfoError {
    #[error("invalid tree id {0:?}")]
    InvalidTreeId(String),
    /// Neither the git cache nor a configured repository has the tree.
    #[error("missing target-root tree {0}")]
    UnknownRoot(String),
    #[error("target root {tree} has no targets file {file:?}")]
    NoTargetsFile { tree: String, file: String },
    #[error("target root {tree} found, but {file:?} in it is not a file")]
    NotAFile { tree: String, file: String },
    /// The tree is known but the file is in none of its copies.
    #[error("could not read targets file {file:?} in tree {tree}")]
    TargetsFileMissing { tree: String, file: String },
    /// The targets file is not a JSON object.
    #[error("targets file {file:?} {problem}")]
    TargetsFile { file: String, problem: String },
    /// The target is missing, not an export target, or has malformed
    /// fields.
    #[error("{0}")]
    NotAnExport(String),
    #[error("{0}")]
    Git(String),
    #[error("{0}")]
    Upload(String),
    #[error(transparent)]
    Worker(#[from] crate::blocking::WorkerFailed),
}

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
    crate::blocking::run(move || {
        let oid = Oid::from_str(&tree).map_err(|_| ExportInfoError::InvalidTreeId(tree.clone()))?;
        let mut tree_seen = false;
        for index in 0..repos.paths().len() {
            if index == 0 && !repos.paths()[0].exists() {
                continue;
            }
            let repo = repos
                .open(index)
                .map_err(|e| ExportInfoError::Git(e.to_string()))?;
            let Ok(root) = repo.find_tree(oid) else {
                continue;
            };
            tree_seen = true;
            if file == "." || file.is_empty() {
                return Err(ExportInfoError::NoTargetsFile { tree, file });
            }
            let Ok(entry) = root.get_path(std::path::Path::new(&file)) else {
                continue;
            };
            if entry.kind() != Some(ObjectType::Blob) {
                return Err(ExportInfoError::NotAFile { tree, file });
            }
            let blob = repo
                .find_blob(entry.id())
                .map_err(|e| ExportInfoError::Git(e.to_string()))?;
            return Ok(blob.content().to_vec());
        }
        Err(if tree_seen {
            ExportInfoError::TargetsFileMissing { tree, file }
        } else {
            ExportInfoError::UnknownRoot(tree)
        })
    })
    .await
}

/// The description of export target `target` in the targets file.
async fn export_target(
    sources: &Sources,
    root_tree: &str,
    target_file: &str,
    target: &str,
) -> Result<Map<String, Value>, ExportInfoError> {
    let content = targets_file(sources, root_tree, target_file).await?;
    let targets_file = |problem: String| ExportInfoError::TargetsFile {
        file: target_file.to_string(),
        problem,
    };
    let targets: Value =
        serde_json::from_slice(&content).map_err(|e| targets_file(format!("is not JSON: {e}")))?;
    let Value::Object(mut targets) = targets else {
        return Err(targets_file("is not a JSON object".into()));
    };
    let Some(Value::Object(description)) = targets.remove(target) else {
        return Err(NotAnExport(format!(
            "missing target {target:?} in {target_file:?}"
        )));
    };
    match description.get("type") {
        Some(Value::String(t)) if t == "export" => Ok(description),
        Some(Value::String(t)) => Err(NotAnExport(format!(
            "target {target:?} is of type {t:?}, not an export target"
        ))),
        _ => Err(NotAnExport(format!(
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
                    NotAnExport(format!(
                        "flexible_config of {target:?} has a non-string entry {v}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(NotAnExport(format!(
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
        .map_err(|e| ExportInfoError::Upload(e.to_string()))?;
    Ok(digest)
}
