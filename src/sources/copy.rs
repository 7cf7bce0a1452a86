//! Copying trees into the git cache: from the local native CAS, and from the
//! endpoint's CAS (native git trees, or compatible `Directory` trees turned
//! back into git trees). Objects are written straight into the git object
//! database; what is there already is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use git2::{ObjectType, Oid, Repository};
use prost::Message;

use crate::digest::{
    parse_git_tree, serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind,
};
use crate::remote::RemoteCas;
use crate::storage::trees::{directory_nodes, Node};
use crate::storage::Cas;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Worker(#[from] crate::blocking::WorkerFailed),
    #[error("{0} is not available")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Cas(#[from] crate::storage::CasError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Tree(#[from] crate::digest::TreeError),
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
}

fn has(repo: &Repository, id: Oid) -> bool {
    repo.odb().map(|o| o.exists(id)).unwrap_or(false)
}

/// Writes native CAS tree `tree` (and everything below it) into `repo`.
pub fn native_cas_tree_to_git(cas: &Cas, repo: &Repository, tree: &str) -> Result<(), CopyError> {
    let odb = repo.odb()?;
    let mut stack = vec![tree.to_string()];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let bytes = cas
            .read(ObjectKind::Tree, &id)?
            .ok_or_else(|| CopyError::Missing(format!("tree {id}")))?;
        for e in parse_git_tree(&bytes)? {
            let child = hex::encode(e.id);
            let oid = Oid::from_bytes(&e.id)?;
            if e.kind == ObjectKind::Tree {
                stack.push(child);
            } else if !odb.exists(oid) {
                let data = cas
                    .read(ObjectKind::File, &child)?
                    .ok_or_else(|| CopyError::Missing(format!("blob {child}")))?;
                odb.write(ObjectType::Blob, &data)?;
            }
        }
        let oid = Oid::from_str(&id)?;
        if !odb.exists(oid) {
            odb.write(ObjectType::Tree, &bytes)?;
        }
    }
    Ok(())
}

/// Fetches tree `root` from the endpoint into the repository at `repo_path`;
/// returns its git tree id. Objects are gathered first, then written in one go
/// off the async workers.
pub async fn remote_tree_to_git(
    remote: &Arc<dyn RemoteCas>,
    repo_path: &std::path::Path,
    root: &Digest,
) -> Result<Oid, CopyError> {
    let mut objects = Vec::new();
    let root_oid = match remote.hash_function() {
        HashFunction::GitSha1 => {
            let oid = Oid::from_str(&root.hash)?;
            let path = repo_path.to_path_buf();
            let present = blocking(move || Ok(has(&Repository::open_bare(&path)?, oid))).await?;
            if !present {
                fetch_git_tree(remote.as_ref(), root, &mut objects).await?;
            }
            oid
        }
        HashFunction::Sha256 => directories_to_git(remote, root, &mut objects).await?,
    };
    let path = repo_path.to_path_buf();
    blocking(move || {
        let repo = Repository::open_bare(&path)?;
        let odb = repo.odb()?;
        for (kind, data) in objects {
            odb.write(kind, &data)?;
        }
        Ok(())
    })
    .await?;
    Ok(root_oid)
}

/// [`crate::blocking::run`] with this module's error type.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CopyError> + Send + 'static,
) -> Result<T, CopyError> {
    crate::blocking::run(f).await
}

/// The git object id of `data` as an object of `kind`.
fn git_id(kind: ObjectType, data: &[u8]) -> Result<Oid, CopyError> {
    let framing = if kind == ObjectType::Tree {
        ObjectKind::Tree
    } else {
        ObjectKind::File
    };
    let hex = HashFunction::GitSha1.hash_bytes(framing, data);
    Ok(Oid::from_str(&hex)?)
}

/// Native mode: downloads a git tree and everything below it, checking ids.
async fn fetch_git_tree(
    remote: &dyn RemoteCas,
    root: &Digest,
    objects: &mut Vec<(ObjectType, Vec<u8>)>,
) -> Result<(), CopyError> {
    let mut stack = vec![root.clone()];
    let mut seen = HashSet::new();
    while let Some(tree) = stack.pop() {
        if !seen.insert(tree.hash.clone()) {
            continue;
        }
        let bytes = fetch(remote, &tree, ObjectType::Tree).await?;
        for e in parse_git_tree(&bytes)? {
            let child = Digest {
                hash: hex::encode(e.id),
                size: 0,
                is_tree: e.kind == ObjectKind::Tree,
            };
            if child.is_tree {
                stack.push(child);
            } else if seen.insert(child.hash.clone()) {
                let data = fetch(remote, &child, ObjectType::Blob).await?;
                objects.push((ObjectType::Blob, data));
            }
        }
        objects.push((ObjectType::Tree, bytes));
    }
    Ok(())
}

/// Downloads one native object and checks that it is what its id says.
async fn fetch(remote: &dyn RemoteCas, d: &Digest, kind: ObjectType) -> Result<Vec<u8>, CopyError> {
    let data = remote
        .read_blob(d)
        .await?
        .ok_or_else(|| CopyError::Missing(format!("{} {}", kind, d.hash)))?;
    if git_id(kind, &data)?.to_string() != d.hash {
        return Err(CopyError::Invalid(format!(
            "{} {} has other content",
            kind, d.hash
        )));
    }
    Ok(data)
}

/// Blobs fetched at once when rebuilding a compatible tree.
const PARALLEL_READS: usize = 16;

/// Compatible mode: rebuilds a git tree from `Directory` messages. All
/// directories first (one GetTree call where the endpoint has it), then every
/// distinct blob, several at a time, then the git trees bottom-up.
async fn directories_to_git(
    remote: &Arc<dyn RemoteCas>,
    root: &Digest,
    objects: &mut Vec<(ObjectType, Vec<u8>)>,
) -> Result<Oid, CopyError> {
    // Re-encoded messages that do not hash to their id (another server's
    // encoding) are simply read again below.
    let mut dirs = HashMap::new();
    if let Some(listed) = remote.get_tree(root).await? {
        for dir in listed {
            dirs.insert(
                HashFunction::Sha256.hash_bytes(ObjectKind::File, &dir.encode_to_vec()),
                dir,
            );
        }
    }
    let mut queue = vec![root.clone()];
    let mut files: HashMap<String, Digest> = HashMap::new();
    let mut seen = HashSet::new();
    while let Some(d) = queue.pop() {
        if !seen.insert(d.hash.clone()) {
            continue;
        }
        if !dirs.contains_key(&d.hash) {
            let bytes = remote
                .read_blob(&d)
                .await?
                .ok_or_else(|| CopyError::Missing(format!("directory {}", d.hash)))?;
            let dir = reapi::Directory::decode(bytes.as_slice())
                .map_err(|e| CopyError::Invalid(format!("{} is not a Directory: {e}", d.hash)))?;
            dirs.insert(d.hash.clone(), dir);
        }
        for node in directory_nodes(HashFunction::Sha256, &d.hash, &dirs[&d.hash])
            .map_err(|e| CopyError::Invalid(e.to_string()))?
        {
            match node {
                Node::Dir { digest, .. } => queue.push(digest),
                Node::File { digest, .. } => {
                    files.insert(digest.hash.clone(), digest);
                }
                Node::Symlink { .. } => {}
            }
        }
    }

    let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
    let mut pending = files.into_values();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < PARALLEL_READS {
            let Some(digest) = pending.next() else { break };
            let remote = remote.clone();
            running.spawn(async move {
                let data = remote
                    .read_blob(&digest)
                    .await?
                    .ok_or_else(|| CopyError::Missing(format!("blob {}", digest.hash)))?;
                if HashFunction::Sha256.hash_bytes(ObjectKind::File, &data) != digest.hash {
                    return Err(CopyError::Invalid(format!(
                        "blob {} has other content",
                        digest.hash
                    )));
                }
                Ok((digest.hash, data))
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (hash, data) =
            done.map_err(|e| CopyError::Invalid(format!("read task failed: {e}")))??;
        contents.insert(hash, data);
    }

    let mut walk = GitTrees {
        dirs: &dirs,
        contents: &contents,
        objects,
    };
    crate::tree_walk::post_order(&mut walk, root.hash.clone())
}

/// The git tree of each Directory, written into `objects` after its parts.
struct GitTrees<'a> {
    dirs: &'a HashMap<String, reapi::Directory>,
    contents: &'a HashMap<String, Vec<u8>>,
    objects: &'a mut Vec<(ObjectType, Vec<u8>)>,
}

impl crate::tree_walk::PostOrder for GitTrees<'_> {
    type Key = String;
    type Data = Vec<Node>;
    type Value = Oid;
    type Error = CopyError;

    fn visit(
        &mut self,
        hash: &String,
    ) -> Result<crate::tree_walk::Visit<String, Vec<Node>, Oid>, CopyError> {
        let nodes = directory_nodes(HashFunction::Sha256, hash, &self.dirs[hash])
            .map_err(|e| CopyError::Invalid(e.to_string()))?;
        let subdirs = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Dir { digest, .. } => Some(digest.hash.clone()),
                _ => None,
            })
            .collect();
        Ok(crate::tree_walk::Visit::Expand(nodes, subdirs))
    }

    fn finish(
        &mut self,
        _: &String,
        nodes: Vec<Node>,
        done: &HashMap<String, Oid>,
    ) -> Result<Oid, CopyError> {
        let mut entries = Vec::with_capacity(nodes.len());
        for node in nodes {
            let (name, kind, oid) = match node {
                Node::Dir { name, digest } => (name, ObjectKind::Tree, done[&digest.hash]),
                Node::Symlink { name, target } => {
                    let oid = git_id(ObjectType::Blob, &target)?;
                    self.objects.push((ObjectType::Blob, target));
                    (name, ObjectKind::Symlink, oid)
                }
                Node::File {
                    name,
                    digest,
                    executable,
                } => {
                    let data = &self.contents[&digest.hash];
                    let oid = git_id(ObjectType::Blob, data)?;
                    self.objects.push((ObjectType::Blob, data.clone()));
                    (name, ObjectKind::blob(executable), oid)
                }
            };
            let mut id = [0u8; 20];
            id.copy_from_slice(oid.as_bytes());
            entries.push(GitTreeEntry { name, kind, id });
        }
        let tree = serialize_git_tree(entries)?;
        let oid = git_id(ObjectType::Tree, &tree)?;
        self.objects.push((ObjectType::Tree, tree));
        Ok(oid)
    }
}
