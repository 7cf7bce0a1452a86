//! Making the graph's leaves available at the endpoint before anything runs:
//! the blobs the analysis produced, `LOCAL` files, and `KNOWN` objects the
//! CAS lacks (taken from serve's own objects; a tree with everything below
//! it that is missing too, children first as native CAS invariants demand).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::build::graph::ActionGraph;
use crate::digest::{Digest, ObjectKind};
use crate::remote::upload::{upload_all, Content};
use crate::remote::RemoteCas;

use super::plan::KnownObject;
use super::tree::{parse, Entry};
use super::{BuildError, LocalObjects};

/// Uploads those of `blobs` the endpoint lacks, in the given order.
pub async fn upload_missing(
    cas: &dyn RemoteCas,
    blobs: Vec<(Digest, Vec<u8>)>,
) -> Result<(), BuildError> {
    let blobs = blobs
        .into_iter()
        .map(|(d, data)| (d, Content::Bytes(data)))
        .collect();
    crate::remote::upload::upload_missing(cas, blobs).await?;
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

/// Reads the object `known` from the local source, checking its id; the
/// digest comes back with the content's size.
async fn read_checked(
    cas: &dyn RemoteCas,
    local: &dyn LocalObjects,
    known: &KnownObject,
) -> Result<(Digest, Vec<u8>), BuildError> {
    let hash = cas.hash_function();
    let data = local
        .read_known(&known.digest, known.kind, known.repository.as_deref())
        .await
        .map_err(|e| BuildError::LocalSource {
            id: known.digest.hash.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(|| BuildError::MissingKnown {
            id: known.digest.hash.clone(),
            kind: known.kind,
        })?;
    if hash.hash_bytes(known.digest.framing(), &data) != known.digest.hash {
        return Err(BuildError::LocalSource {
            id: known.digest.hash.clone(),
            message: "the local source gave content of another id".into(),
        });
    }
    let digest = Digest {
        size: data.len() as u64,
        ..known.digest.clone()
    };
    Ok((digest, data))
}

/// Bytes read ahead before they are sent.
const GROUP_BYTES: usize = 32 << 20;

/// Makes sure every one of `knowns` is in the CAS: what is missing, with
/// whatever below a missing tree is missing too, goes up from the local
/// source, every tree after what it names, in batches.
pub async fn ensure_present(
    cas: &dyn RemoteCas,
    local: &dyn LocalObjects,
    knowns: Vec<KnownObject>,
) -> Result<(), BuildError> {
    enum Step {
        Visit(KnownObject),
        /// A tree whose missing children are all sent before it.
        Finish(Digest, Vec<u8>),
    }
    if knowns.is_empty() {
        return Ok(());
    }
    let hash = cas.hash_function();
    let missing = |list: Vec<KnownObject>| async move {
        let digests = list.iter().map(|k| k.digest.clone()).collect();
        let absent: HashSet<String> = cas
            .find_missing(digests)
            .await?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        Ok::<_, BuildError>(
            list.into_iter()
                .filter(|k| absent.contains(&k.digest.hash))
                .collect::<Vec<_>>(),
        )
    };
    let mut steps: Vec<Step> = missing(knowns)
        .await?
        .into_iter()
        .map(Step::Visit)
        .collect();
    let mut seen = HashSet::new();
    let mut ready: Vec<(Digest, Content)> = Vec::new();
    let mut ready_bytes = 0usize;
    while let Some(step) = steps.pop() {
        let (digest, data) = match step {
            Step::Finish(digest, data) => (digest, data),
            Step::Visit(known) => {
                if !seen.insert(known.digest.hash.clone()) {
                    continue;
                }
                tracing::debug!(
                    "uploading KNOWN object {} from serve's repositories",
                    known.digest.hash
                );
                let (digest, data) = read_checked(cas, local, &known).await?;
                if !known.kind.is_tree() {
                    (digest, data)
                } else {
                    let entries =
                        parse(hash, &digest, &data).map_err(|message| BuildError::LocalSource {
                            id: digest.hash.clone(),
                            message,
                        })?;
                    // Symlinks of Directory messages are inline; git trees name blobs.
                    let children: BTreeMap<String, KnownObject> = entries
                        .into_values()
                        .filter(|e| hash.is_native() || e.kind != ObjectKind::Symlink)
                        .filter(|e| !seen.contains(&e.digest.hash))
                        .map(|e| {
                            let child = KnownObject {
                                digest: e.digest,
                                kind: e.kind,
                                repository: known.repository.clone(),
                            };
                            (child.digest.hash.clone(), child)
                        })
                        .collect();
                    steps.push(Step::Finish(digest, data));
                    let absent = missing(children.into_values().collect()).await?;
                    steps.extend(absent.into_iter().map(Step::Visit));
                    continue;
                }
            }
        };
        ready_bytes += data.len();
        ready.push((digest, Content::Bytes(data)));
        if ready_bytes >= GROUP_BYTES {
            upload_all(cas, std::mem::take(&mut ready)).await?;
            ready_bytes = 0;
        }
    }
    upload_all(cas, ready).await?;
    Ok(())
}
