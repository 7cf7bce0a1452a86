//! Making the graph's leaves available at the endpoint before anything runs:
//! the blobs the analysis produced, `LOCAL` files, and `KNOWN` objects the
//! CAS lacks (taken from serve's own objects; a tree with everything below
//! it that is missing too, children first as native CAS invariants demand).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use crate::build::graph::ActionGraph;
use crate::digest::{Digest, ObjectKind};
use crate::remote::RemoteCas;

use super::plan::KnownObject;
use super::tree::{parse, Entry};
use super::{BuildError, LocalObjects};

/// Uploads those of `blobs` the endpoint lacks, in the given order.
pub async fn upload_missing(
    cas: &dyn RemoteCas,
    blobs: Vec<(Digest, Vec<u8>)>,
) -> Result<(), BuildError> {
    if blobs.is_empty() {
        return Ok(());
    }
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    let missing: HashSet<String> = cas
        .find_missing(digests)
        .await?
        .into_iter()
        .map(|d| d.hash)
        .collect();
    let mut sent = HashSet::new();
    let todo: Vec<(Digest, Vec<u8>)> = blobs
        .into_iter()
        .filter(|(d, _)| missing.contains(&d.hash) && sent.insert(d.hash.clone()))
        .collect();
    if !todo.is_empty() {
        cas.upload_blobs(todo).await?;
    }
    Ok(())
}

/// The blobs of the graph (`BLOB`/`SYMLINK` contents and the like).
pub async fn upload_graph_blobs(
    cas: &dyn RemoteCas,
    graph: &ActionGraph,
) -> Result<(), BuildError> {
    let hash = cas.hash_function();
    let blobs = graph
        .blobs
        .iter()
        .map(|content| {
            let data = content.as_bytes().to_vec();
            (hash.digest_bytes(ObjectKind::File, &data), data)
        })
        .collect();
    upload_missing(cas, blobs).await
}

/// Reads and uploads `LOCAL` artifacts; their objects by (repository, path).
pub async fn upload_locals(
    cas: &dyn RemoteCas,
    local: &dyn LocalObjects,
    wanted: impl IntoIterator<Item = &(String, String)>,
) -> Result<HashMap<(String, String), Entry>, BuildError> {
    let hash = cas.hash_function();
    let mut found = HashMap::new();
    let mut blobs = Vec::new();
    for (repository, path) in wanted {
        let failed = |message: String| BuildError::Local {
            repository: repository.clone(),
            path: path.clone(),
            message,
        };
        let file = local
            .read_local(repository, path)
            .await
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed("no such file".to_string()))?;
        if file.kind.is_tree() {
            return Err(failed("a LOCAL artifact must not be a directory".into()));
        }
        let digest = hash.digest_bytes(ObjectKind::File, &file.content);
        let target = if file.kind == ObjectKind::Symlink {
            Some(
                String::from_utf8(file.content.clone())
                    .map_err(|_| failed("the symlink's target is not UTF-8".into()))?,
            )
        } else {
            None
        };
        found.insert(
            (repository.clone(), path.clone()),
            Entry {
                kind: file.kind,
                digest: digest.clone(),
                target,
            },
        );
        blobs.push((digest, file.content));
    }
    upload_missing(cas, blobs).await?;
    Ok(found)
}

type Boxed<'a> = Pin<Box<dyn Future<Output = Result<(), BuildError>> + Send + 'a>>;

/// Uploads the missing object `known` from the local source, and for a tree
/// first whatever below it is missing as well.
fn provide<'a>(
    cas: &'a dyn RemoteCas,
    local: &'a dyn LocalObjects,
    known: KnownObject,
) -> Boxed<'a> {
    Box::pin(async move {
        let hash = cas.hash_function();
        let missing = || BuildError::MissingKnown {
            id: known.digest.hash.clone(),
            kind: known.kind,
        };
        let data = local
            .read_known(&known.digest, known.kind, known.repository.as_deref())
            .await
            .map_err(|e| BuildError::LocalSource {
                id: known.digest.hash.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(missing)?;
        if hash.hash_bytes(known.digest.is_tree, &data) != known.digest.hash {
            return Err(BuildError::LocalSource {
                id: known.digest.hash.clone(),
                message: "the local source gave content of another id".into(),
            });
        }
        let digest = Digest {
            size: data.len() as u64,
            ..known.digest.clone()
        };
        if known.kind.is_tree() {
            let entries =
                parse(hash, &digest, &data).map_err(|message| BuildError::LocalSource {
                    id: digest.hash.clone(),
                    message,
                })?;
            // Symlinks of Directory messages are inline; git trees name blobs.
            let children: BTreeMap<String, KnownObject> = entries
                .into_values()
                .filter(|e| hash.is_native() || e.kind != ObjectKind::Symlink)
                .map(|e| {
                    let child = KnownObject {
                        digest: e.digest,
                        kind: e.kind,
                        repository: known.repository.clone(),
                    };
                    (child.digest.hash.clone(), child)
                })
                .collect();
            ensure_present(cas, local, children.into_values().collect()).await?;
        }
        cas.upload_blobs(vec![(digest, data)]).await?;
        Ok(())
    })
}

/// Makes sure every one of `knowns` is in the CAS.
pub async fn ensure_present(
    cas: &dyn RemoteCas,
    local: &dyn LocalObjects,
    knowns: Vec<KnownObject>,
) -> Result<(), BuildError> {
    if knowns.is_empty() {
        return Ok(());
    }
    let digests = knowns.iter().map(|k| k.digest.clone()).collect();
    let missing: HashSet<String> = cas
        .find_missing(digests)
        .await?
        .into_iter()
        .map(|d| d.hash)
        .collect();
    for known in knowns {
        if missing.contains(&known.digest.hash) {
            tracing::debug!(
                "uploading KNOWN object {} from serve's repositories",
                known.digest.hash
            );
            provide(cas, local, known).await?;
        }
    }
    Ok(())
}
