//! Moving the objects a target-cache entry names between serve's local CAS
//! and the endpoint's CAS, and serving objects the builder needs from the
//! local CAS and serve's git repositories.

use std::collections::HashSet;
use std::sync::Arc;

use crate::build::builder::{LocalError, LocalFile, LocalObjects};
use crate::build::cache_entry::ObjectInfo;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::git::RepoSet;
use crate::remote::upload::{upload_all, Content};
use crate::remote::RemoteCas;
use crate::storage::trees::{read_tree, tree_children, Node};
use crate::storage::Cas;

/// Why objects could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("{0}")]
    Remote(#[from] crate::remote::RemoteError),
    #[error("local CAS: {0}")]
    Local(String),
    #[error("object {0} is neither in the local CAS nor at the endpoint")]
    Missing(String),
}

fn local_err(e: impl std::fmt::Display) -> ObjectsError {
    ObjectsError::Local(e.to_string())
}

/// Every object of `roots` (trees with everything below them), each after
/// everything it names: the order native endpoints accept uploads in.
/// Symlink targets come along as blobs in both modes: git trees name them,
/// and justbuild clients read them as blobs from compatible trees too.
fn closure(cas: &Cas, roots: &[ObjectInfo]) -> Result<Vec<Object>, ObjectsError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    // (object, whether its children have been pushed already)
    let mut todo: Vec<(Digest, ObjectKind, bool)> = roots
        .iter()
        .rev()
        .map(|o| (o.digest.clone(), o.kind, false))
        .collect();
    while let Some((d, kind, expanded)) = todo.pop() {
        if expanded {
            out.push(Object::Stored(d, kind));
            continue;
        }
        if !seen.insert((d.hash.clone(), kind.is_tree())) {
            continue;
        }
        if !kind.is_tree() {
            out.push(Object::Stored(d, kind));
            continue;
        }
        let nodes = read_tree(cas, &d)
            .map_err(local_err)?
            .ok_or_else(|| ObjectsError::Missing(d.hash.clone()))?;
        todo.push((d, kind, true));
        for n in nodes {
            match n {
                Node::File {
                    digest, executable, ..
                } => todo.push((digest, ObjectKind::blob(executable), false)),
                Node::Dir { digest, .. } => todo.push((digest, ObjectKind::Tree, false)),
                Node::Symlink { target, .. } => {
                    let digest = cas.hash_function().digest_bytes(ObjectKind::File, &target);
                    if seen.insert((digest.hash.clone(), false)) {
                        out.push(Object::Inline(digest, target));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// An object to have at the endpoint: in the local CAS, or known by content.
enum Object {
    Stored(Digest, ObjectKind),
    Inline(Digest, Vec<u8>),
}

/// Makes sure the endpoint has `objects` (trees completely), uploading what
/// it lacks from the local CAS, children first and batched.
pub async fn ensure_at_endpoint(
    cas: &Cas,
    remote: &dyn RemoteCas,
    objects: &[ObjectInfo],
) -> Result<(), ObjectsError> {
    let all = {
        let cas = cas.clone();
        let objects = objects.to_vec();
        tokio::task::spawn_blocking(move || closure(&cas, &objects))
            .await
            .map_err(local_err)??
    };
    // Sizes (git trees name objects without them) and paths, off the workers.
    let located = {
        let cas = cas.clone();
        tokio::task::spawn_blocking(move || {
            all.into_iter()
                .map(|object| match object {
                    Object::Inline(d, bytes) => (d, Some(Content::Bytes(bytes))),
                    Object::Stored(mut d, kind) => {
                        let stored = if kind.is_tree() {
                            ObjectKind::Tree
                        } else {
                            kind
                        };
                        let path = cas
                            .find(stored, &d.hash)
                            .or_else(|| cas.find(ObjectKind::File, &d.hash));
                        if d.size == 0 {
                            if let Some(p) = &path {
                                d.size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                            }
                        }
                        (d, path.map(Content::File))
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(local_err)?
    };
    let digests: Vec<Digest> = located.iter().map(|(d, _)| d.clone()).collect();
    let missing: HashSet<String> = remote
        .find_missing(digests)
        .await?
        .into_iter()
        .map(|d| d.hash)
        .collect();
    let mut sent = HashSet::new();
    let mut todo = Vec::new();
    for (d, content) in located {
        if !missing.contains(&d.hash) || !sent.insert(d.hash.clone()) {
            continue;
        }
        let content = content.ok_or_else(|| ObjectsError::Missing(d.hash.clone()))?;
        todo.push((d, content));
    }
    if !todo.is_empty() {
        tracing::debug!(objects = todo.len(), "uploading artifacts to the endpoint");
        upload_all(remote, todo).await?;
    }
    Ok(())
}

/// Copies `objects` (trees with everything below them) from the endpoint
/// into the local CAS where missing, each tree after everything it names,
/// so that the local CAS never holds a tree without its parts.
pub async fn fetch_to_local(
    cas: &Cas,
    remote: &dyn RemoteCas,
    objects: &[ObjectInfo],
) -> Result<(), ObjectsError> {
    enum LocalObject {
        Blob,
        Tree(Vec<u8>),
        Missing,
    }
    enum Step {
        Visit(Digest, ObjectKind),
        /// A fetched tree, written once its children are.
        Store(Digest, Vec<u8>),
    }
    let hash = cas.hash_function();
    let mut todo: Vec<Step> = objects
        .iter()
        .map(|o| Step::Visit(o.digest.clone(), o.kind))
        .collect();
    let mut seen = HashSet::new();
    while let Some(step) = todo.pop() {
        let (d, kind) = match step {
            Step::Visit(d, kind) => (d, kind),
            Step::Store(d, bytes) => {
                let c = cas.clone();
                tokio::task::spawn_blocking(move || {
                    c.put_bytes_checked(ObjectKind::Tree, &bytes, Some(&d.hash))
                })
                .await
                .map_err(local_err)?
                .map_err(local_err)?;
                continue;
            }
        };
        if !seen.insert((d.hash.clone(), kind.is_tree())) {
            continue;
        }
        let stored = if kind.is_tree() {
            ObjectKind::Tree
        } else {
            kind
        };
        let (c, id) = (cas.clone(), d.hash.clone());
        let local = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::storage::CasError>(if stored.is_tree() {
                c.read(stored, &id)?
                    .map_or(LocalObject::Missing, LocalObject::Tree)
            } else if c.contains(stored, &id) {
                LocalObject::Blob
            } else {
                LocalObject::Missing
            })
        })
        .await
        .map_err(local_err)?
        .map_err(local_err)?;
        let bytes = match local {
            // A blob present is done; a tree present is still walked, since
            // stores written before trees were checked may lack parts.
            LocalObject::Blob => continue,
            LocalObject::Tree(bytes) => bytes,
            LocalObject::Missing => {
                let bytes = remote
                    .read_blob(&d)
                    .await?
                    .ok_or_else(|| ObjectsError::Missing(d.hash.clone()))?;
                if !kind.is_tree() {
                    let (c, expected) = (cas.clone(), d.hash.clone());
                    tokio::task::spawn_blocking(move || {
                        c.put_bytes_checked(stored, &bytes, Some(&expected))
                    })
                    .await
                    .map_err(local_err)?
                    .map_err(local_err)?;
                    continue;
                }
                todo.push(Step::Store(d.clone(), bytes.clone()));
                bytes
            }
        };
        for (child, child_kind) in tree_children(hash, &d.hash, &bytes).map_err(local_err)? {
            todo.push(Step::Visit(child, child_kind));
        }
    }
    Ok(())
}

/// The builder's source for objects the endpoint lacks: serve's local CAS,
/// then (native mode, where ids are git ids) its git repositories.
pub struct ServeObjects {
    pub cas: Cas,
    pub repos: RepoSet,
}

#[tonic::async_trait]
impl LocalObjects for ServeObjects {
    async fn read_local(&self, _: &str, _: &str) -> Result<Option<LocalFile>, LocalError> {
        // Serve's roots are git trees: there are no LOCAL artifacts.
        Ok(None)
    }

    async fn read_known(
        &self,
        digest: &Digest,
        kind: ObjectKind,
        _repository: Option<&str>,
    ) -> Result<Option<Vec<u8>>, LocalError> {
        let cas = self.cas.clone();
        let repos = self.repos.clone();
        let id = digest.hash.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, LocalError> {
            let stored = if kind.is_tree() {
                ObjectKind::Tree
            } else {
                kind
            };
            if let Some(bytes) = cas.read(stored, &id)? {
                return Ok(Some(bytes));
            }
            if let Some(bytes) = cas.read(ObjectKind::File, &id)? {
                return Ok(Some(bytes));
            }
            if cas.hash_function() != HashFunction::GitSha1 {
                return Ok(None);
            }
            let oid = match git2::Oid::from_str(&id) {
                Ok(o) => o,
                Err(_) => return Ok(None),
            };
            for index in 0..repos.paths().len() {
                if !repos.paths()[index].exists() {
                    continue;
                }
                let Ok(repo) = repos.open(index) else {
                    continue;
                };
                let data = repo
                    .odb()
                    .ok()
                    .and_then(|odb| odb.read(oid).ok().map(|obj| obj.data().to_vec()));
                if data.is_some() {
                    return Ok(data);
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| -> LocalError { Box::new(e) })??;
        Ok(found)
    }
}

/// Shared handle for the builder.
pub fn serve_objects(cas: Cas, repos: RepoSet) -> Arc<dyn LocalObjects> {
    Arc::new(ServeObjects { cas, repos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::runner::RunnerConfig;
    use crate::execute::{EndpointConfig, LocalEndpoint};
    use crate::remote::local::LocalRemote;
    use crate::storage::BuildRoot;

    #[tokio::test]
    async fn a_native_endpoint_gets_every_tree_after_what_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b/c")).unwrap();
        std::fs::write(src.join("a/b/c/deep"), "deep").unwrap();
        std::fs::write(src.join("a/top"), "top").unwrap();
        std::fs::write(src.join("x"), "x").unwrap();
        let hash = HashFunction::GitSha1;
        let serve = BuildRoot::open(&tmp.path().join("serve")).unwrap();
        let cas = serve.cas(hash);
        let root = crate::storage::trees::store_directory(&cas, &src)
            .unwrap()
            .root;
        // The endpoint refuses a native tree whose entries it lacks.
        let endpoint = LocalEndpoint::new(
            &BuildRoot::open(&tmp.path().join("endpoint")).unwrap(),
            EndpointConfig {
                hash,
                instance_name: None,
                runner: RunnerConfig {
                    launcher: vec![],
                    default_timeout: std::time::Duration::from_secs(1),
                    jobs: 1,
                },
            },
        );
        let remote = LocalRemote::new(endpoint.clone());
        let objects = [ObjectInfo {
            digest: root.clone(),
            kind: ObjectKind::Tree,
        }];
        ensure_at_endpoint(&cas, &remote, &objects).await.unwrap();
        assert!(endpoint.contains(&root));
    }
}
