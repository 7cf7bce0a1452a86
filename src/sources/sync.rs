//! Making git objects available in the endpoint's CAS ("sync"). Native
//! endpoints get the git blobs and trees themselves, leaves first; compatible
//! endpoints get SHA-256 blobs and `Directory` messages, and the git id ->
//! SHA-256 correspondence is remembered so the next sync hashes nothing.
//! Only what the endpoint reports missing is sent.

use std::collections::HashSet;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use git2::{ObjectType, Oid, Repository};
use prost::Message;

use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::git::GitError;
use crate::remote::{RemoteCas, RemoteError};
use crate::storage::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("git error: {0}")]
    Git2(#[from] git2::Error),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot record the SHA-256 of {id}: {source}")]
    Rehash { id: String, source: std::io::Error },
    #[error("tree {tree} has an entry {name:?} of unsupported mode {mode:o}")]
    Unsupported {
        tree: String,
        name: String,
        mode: i32,
    },
    #[error("worker task failed: {0}")]
    Join(String),
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
}

/// Upload groups stay below this many bytes of content in memory.
const GROUP_BYTES: usize = 32 << 20;

/// Where the content of an object to upload comes from.
#[derive(Clone, Debug)]
enum Content {
    /// A git object, read when (and only if) it must be sent.
    Git(Oid),
    /// Bytes made here (Directory messages, symlink targets).
    Bytes(Arc<Vec<u8>>),
}

/// Everything one sync may upload, in upload order (leaves first).
struct Plan {
    root: Digest,
    objects: Vec<(Digest, Content)>,
}

/// Syncs git objects to one endpoint.
#[derive(Clone)]
pub struct Syncer {
    remote: Arc<dyn RemoteCas>,
    /// Compatible mode: git id -> `[sha256:size:type]`.
    rehash: IdMap,
}

fn object_info(d: &Digest, kind: ObjectKind) -> String {
    format!("[{}:{}:{}]", d.hash, d.size, kind.type_char())
}

/// Parses `[hash:size:type]`.
pub fn parse_object_info(text: &str) -> Option<(Digest, char)> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut parts = inner.split(':');
    let hash = parts.next()?.to_string();
    let size = parts.next()?.parse().ok()?;
    let kind = parts.next()?.chars().next()?;
    Some((
        Digest {
            hash,
            size,
            is_tree: false,
        },
        kind,
    ))
}

impl Syncer {
    pub fn new(remote: Arc<dyn RemoteCas>, rehash: IdMap) -> Syncer {
        Syncer { remote, rehash }
    }

    pub fn hash_function(&self) -> HashFunction {
        self.remote.hash_function()
    }

    /// The endpoint digest of a git object, if already known without hashing:
    /// native ids are their own digests (size unknown, 0); compatible ones come
    /// from the rehash map.
    pub fn known_digest(&self, id: &str, kind: ObjectKind) -> Option<Digest> {
        match self.hash_function() {
            hash @ HashFunction::GitSha1 => Some(hash.digest(kind, id, 0)),
            HashFunction::Sha256 => self
                .rehash
                .get(id)
                .ok()
                .flatten()
                .and_then(|t| parse_object_info(&t))
                .map(|(d, _)| d),
        }
    }

    /// Compatible mode: notes that the git object `id` is `digest` at the
    /// endpoint (learnt from the shared cache, or from a verified push), so
    /// later syncs and fetches find it without the object at hand.
    /// Blocking (a small file write).
    pub fn remember(&self, id: &str, digest: &Digest, kind: ObjectKind) -> std::io::Result<()> {
        if self.hash_function().is_native() || self.rehash.get(id)?.is_some() {
            return Ok(());
        }
        self.rehash.set(id, &object_info(digest, kind))
    }

    /// Uploads git object `id` (a tree with everything below it, or a blob) from
    /// the repository at `repo_path`; returns its digest at the endpoint.
    pub async fn sync(
        &self,
        repo_path: std::path::PathBuf,
        id: String,
        kind: ObjectKind,
    ) -> Result<Digest, SyncError> {
        let hash = self.hash_function();
        let rehash = self.rehash.clone();
        let path = repo_path.clone();
        let plan = tokio::task::spawn_blocking(move || -> Result<Plan, SyncError> {
            let repo = crate::git::open_exact(&path)?;
            let oid = crate::git::parse_oid(&id)?;
            let mut planner = Planner {
                repo: &repo,
                hash,
                rehash: &rehash,
                seen: HashSet::new(),
                objects: Vec::new(),
            };
            let root = if kind.is_tree() {
                planner.tree(oid)?
            } else {
                planner.blob(oid, ObjectKind::File)?
            };
            Ok(Plan {
                root,
                objects: planner.objects,
            })
        })
        .await
        .map_err(|e| SyncError::Join(e.to_string()))??;
        self.upload_plan(repo_path, plan).await
    }

    async fn upload_plan(
        &self,
        repo_path: std::path::PathBuf,
        plan: Plan,
    ) -> Result<Digest, SyncError> {
        let digests: Vec<Digest> = plan.objects.iter().map(|(d, _)| d.clone()).collect();
        let missing: HashSet<String> = self
            .remote
            .find_missing(digests)
            .await?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let todo: Vec<(Digest, Content)> = plan
            .objects
            .into_iter()
            .filter(|(d, _)| missing.contains(&d.hash))
            .collect();
        if todo.is_empty() {
            return Ok(plan.root);
        }
        tracing::debug!(objects = todo.len(), "uploading to the endpoint");
        // Read and send in bounded groups, keeping the leaves-first order.
        let mut start = 0;
        while start < todo.len() {
            let path = repo_path.clone();
            let rest: Vec<(Digest, Content)> = todo[start..].to_vec();
            let group = tokio::task::spawn_blocking(
                move || -> Result<Vec<(Digest, Vec<u8>)>, SyncError> {
                    let repo = crate::git::open_exact(&path)?;
                    let odb = repo.odb()?;
                    let mut group = Vec::new();
                    let mut bytes = 0usize;
                    for (digest, content) in rest {
                        let data = match content {
                            Content::Bytes(b) => b.as_ref().clone(),
                            Content::Git(oid) => odb.read(oid)?.data().to_vec(),
                        };
                        bytes += data.len();
                        group.push((digest, data));
                        if bytes >= GROUP_BYTES {
                            break;
                        }
                    }
                    Ok(group)
                },
            )
            .await
            .map_err(|e| SyncError::Join(e.to_string()))??;
            start += group.len();
            self.remote.upload_blobs(group).await?;
        }
        Ok(plan.root)
    }
}

/// Walks git objects and lists what a sync has to offer the endpoint.
struct Planner<'a> {
    repo: &'a Repository,
    hash: HashFunction,
    rehash: &'a IdMap,
    seen: HashSet<Oid>,
    objects: Vec<(Digest, Content)>,
}

impl Planner<'_> {
    fn remember(&self, id: Oid, digest: &Digest, kind: ObjectKind) -> Result<(), SyncError> {
        if self.hash.is_native() {
            return Ok(());
        }
        let key = id.to_string();
        if self.rehash.get(&key).ok().flatten().is_none() {
            self.rehash
                .set(&key, &object_info(digest, kind))
                .map_err(|source| SyncError::Rehash { id: key, source })?;
        }
        Ok(())
    }

    fn add(&mut self, id: Oid, digest: &Digest, content: Content) {
        if self.seen.insert(id) {
            self.objects.push((digest.clone(), content));
        }
    }

    fn blob(&mut self, id: Oid, kind: ObjectKind) -> Result<Digest, SyncError> {
        let digest = match self.hash {
            HashFunction::GitSha1 => {
                let (size, _) = self.repo.odb()?.read_header(id)?;
                Digest {
                    hash: id.to_string(),
                    size: size as u64,
                    is_tree: false,
                }
            }
            HashFunction::Sha256 => {
                let cached = self
                    .rehash
                    .get(&id.to_string())
                    .ok()
                    .flatten()
                    .and_then(|t| parse_object_info(&t));
                match cached {
                    Some((d, _)) => d,
                    None => {
                        let blob = self.repo.find_blob(id)?;
                        let d = HashFunction::Sha256.digest_bytes(ObjectKind::File, blob.content());
                        self.remember(id, &d, kind)?;
                        d
                    }
                }
            }
        };
        self.add(id, &digest, Content::Git(id));
        Ok(digest)
    }

    /// Every object of tree `id`, subtrees first, without recursion.
    fn tree(&mut self, id: Oid) -> Result<Digest, SyncError> {
        crate::tree_walk::post_order(self, id)
    }
}

impl crate::tree_walk::PostOrder for Planner<'_> {
    type Key = Oid;
    type Data = ();
    type Value = Digest;
    type Error = SyncError;

    fn visit(&mut self, id: &Oid) -> Result<crate::tree_walk::Visit<Oid, (), Digest>, SyncError> {
        let tree = self.repo.find_tree(*id)?;
        let subtrees = tree
            .iter()
            .filter(|e| e.kind() == Some(ObjectType::Tree))
            .map(|e| e.id())
            .collect();
        Ok(crate::tree_walk::Visit::Expand((), subtrees))
    }

    fn finish(
        &mut self,
        id: &Oid,
        _: (),
        done: &std::collections::HashMap<Oid, Digest>,
    ) -> Result<Digest, SyncError> {
        let id = *id;
        let tree = self.repo.find_tree(id)?;
        match self.hash {
            HashFunction::GitSha1 => {
                for entry in tree.iter() {
                    match entry.kind() {
                        // Finished before this tree.
                        Some(ObjectType::Tree) => {}
                        Some(ObjectType::Blob) => {
                            self.blob(entry.id(), ObjectKind::File)?;
                        }
                        _ => return Err(unsupported(&tree, &entry)),
                    }
                }
                let digest = Digest {
                    hash: id.to_string(),
                    size: self.repo.odb()?.read_header(id)?.0 as u64,
                    is_tree: true,
                };
                self.add(id, &digest, Content::Git(id));
                Ok(digest)
            }
            HashFunction::Sha256 => {
                let mut dir = reapi::Directory::default();
                for entry in tree.iter() {
                    let name = String::from_utf8(entry.name_bytes().to_vec())
                        .map_err(|_| unsupported(&tree, &entry))?;
                    match ObjectKind::from_git_mode(entry.filemode() as u32) {
                        Some(ObjectKind::Tree) => {
                            let d = done[&entry.id()].clone();
                            dir.directories.push(reapi::DirectoryNode {
                                name,
                                digest: Some(d.to_wire(self.hash)),
                            });
                        }
                        Some(ObjectKind::Symlink) => {
                            let blob = self.repo.find_blob(entry.id())?;
                            let target = String::from_utf8(blob.content().to_vec())
                                .map_err(|_| unsupported(&tree, &entry))?;
                            // Clients read symlink targets as blobs too.
                            self.blob(entry.id(), ObjectKind::Symlink)?;
                            dir.symlinks.push(reapi::SymlinkNode {
                                name,
                                target,
                                node_properties: None,
                            });
                        }
                        Some(kind) => {
                            let d = self.blob(entry.id(), kind)?;
                            dir.files.push(reapi::FileNode {
                                name,
                                digest: Some(d.to_wire(self.hash)),
                                is_executable: kind == ObjectKind::Executable,
                                node_properties: None,
                            });
                        }
                        None => return Err(unsupported(&tree, &entry)),
                    }
                }
                // Git's order differs from the protocol's plain name order.
                dir.files.sort_by(|a, b| a.name.cmp(&b.name));
                dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
                dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
                let bytes = dir.encode_to_vec();
                let digest = HashFunction::Sha256.digest_bytes(ObjectKind::Tree, &bytes);
                self.remember(id, &digest, ObjectKind::Tree)?;
                if self.seen.insert(id) {
                    self.objects
                        .push((digest.clone(), Content::Bytes(Arc::new(bytes))));
                }
                Ok(digest)
            }
        }
    }
}

fn unsupported(tree: &git2::Tree<'_>, entry: &git2::TreeEntry<'_>) -> SyncError {
    SyncError::Unsupported {
        tree: tree.id().to_string(),
        name: String::from_utf8_lossy(entry.name_bytes()).into_owned(),
        mode: entry.filemode(),
    }
}
