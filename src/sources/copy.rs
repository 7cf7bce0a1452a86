//! Copying trees into the git cache: from the local native CAS, and from the
//! endpoint's CAS (native git trees, or compatible `Directory` trees turned
//! back into git trees). Objects from the local CAS are written straight
//! into the git object database, those from the endpoint into a pack;
//! what is there already is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use git2::{ObjectType, Oid, Repository};
use prost::Message;

use crate::digest::{
    parse_git_tree, serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind,
};
use crate::git::{install_packs, PackFiles, PackKind, PackWriter};
use crate::remote::RemoteCas;
use crate::storage::staging::ScratchDir;
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
    #[error("the pack writer stopped")]
    WriterStopped,
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
/// returns its git tree id. What arrives goes into one pack as it comes (on
/// a blocking thread, staged in `scratch`), so memory holds the tree
/// structure and a bounded number of objects in flight, never the content.
pub async fn remote_tree_to_git(
    remote: &Arc<dyn RemoteCas>,
    repo_path: &std::path::Path,
    scratch: &std::path::Path,
    root: &Digest,
) -> Result<Oid, CopyError> {
    let sink = PackSink::open(scratch);
    let fetched = match remote.hash_function() {
        HashFunction::GitSha1 => match Oid::from_str(&root.hash) {
            Ok(oid) => fetch_git_tree(remote, repo_path, root, &sink)
                .await
                .map(|()| oid),
            Err(e) => Err(e.into()),
        },
        HashFunction::Sha256 => directories_to_git(remote, root, &sink).await,
    };
    // The writer's own failure explains a stopped fetch better.
    let written = sink.finish().await;
    let root_oid = match (fetched, written) {
        (Err(CopyError::WriterStopped), Err(e)) => return Err(e),
        (fetched, written) => (fetched?, written?),
    };
    let (root_oid, (scratch, packs)) = root_oid;
    let path = repo_path.to_path_buf();
    blocking(move || {
        let repo = Repository::open_bare(&path)?;
        install_packs(&repo, &packs).map_err(|e| CopyError::Invalid(e.to_string()))?;
        drop(scratch);
        Ok(())
    })
    .await?;
    Ok(root_oid)
}

/// Objects in flight to the pack writer.
const SINK_QUEUE: usize = 64;

/// A pack written on a blocking thread from objects sent to it.
struct PackSink {
    tx: tokio::sync::mpsc::Sender<(PackKind, Vec<u8>)>,
    /// The scratch directory goes once the packs are installed.
    writer: tokio::task::JoinHandle<Result<(ScratchDir, Vec<PackFiles>), CopyError>>,
}

impl PackSink {
    /// Starts the writer; all its file work, the scratch directory's
    /// creation too, happens on its blocking thread.
    fn open(scratch: &std::path::Path) -> PackSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(PackKind, Vec<u8>)>(SINK_QUEUE);
        let scratch = scratch.to_path_buf();
        let writer = tokio::task::spawn_blocking(
            move || -> Result<(ScratchDir, Vec<PackFiles>), CopyError> {
                let dir = crate::storage::staging::scratch_dir(&scratch, "remote-tree")
                    .map_err(|e| CopyError::Invalid(format!("cannot stage a pack: {e}")))?;
                let failed =
                    |e: crate::git::GitError| CopyError::Invalid(format!("writing a pack: {e}"));
                let mut writer =
                    PackWriter::create(&dir.path().join("incoming.pack"), 1).map_err(failed)?;
                while let Some((kind, data)) = rx.blocking_recv() {
                    writer.add(kind, &data).map_err(failed)?;
                }
                let files = writer.finish().map_err(failed)?;
                Ok((dir, files.into_iter().collect()))
            },
        );
        PackSink { tx, writer }
    }

    async fn send(&self, kind: PackKind, data: Vec<u8>) -> Result<(), CopyError> {
        // A writer that stopped failed: stop fetching; finish() says why.
        self.tx
            .send((kind, data))
            .await
            .map_err(|_| CopyError::WriterStopped)
    }

    async fn finish(self) -> Result<(ScratchDir, Vec<PackFiles>), CopyError> {
        drop(self.tx);
        self.writer
            .await
            .map_err(|e| CopyError::Invalid(format!("pack writer failed: {e}")))?
    }
}

/// Reads of one kind from the endpoint, up to [`PARALLEL_READS`] at once,
/// each checked against its id; answers in the order they complete.
struct Fetcher {
    remote: Arc<dyn RemoteCas>,
    pending: std::vec::IntoIter<Digest>,
    running: tokio::task::JoinSet<Result<(Digest, Vec<u8>), CopyError>>,
    kind: ObjectType,
}

impl Fetcher {
    fn new(remote: &Arc<dyn RemoteCas>, digests: Vec<Digest>, kind: ObjectType) -> Fetcher {
        Fetcher {
            remote: remote.clone(),
            pending: digests.into_iter(),
            running: tokio::task::JoinSet::new(),
            kind,
        }
    }

    async fn next(&mut self) -> Option<Result<(Digest, Vec<u8>), CopyError>> {
        while self.running.len() < PARALLEL_READS {
            let Some(digest) = self.pending.next() else {
                break;
            };
            let (remote, kind) = (self.remote.clone(), self.kind);
            self.running.spawn(async move {
                let data = remote
                    .read_blob(&digest)
                    .await?
                    .ok_or_else(|| CopyError::Missing(format!("{kind} {}", digest.hash)))?;
                let actual = match remote.hash_function() {
                    HashFunction::GitSha1 => git_id(kind, &data)?.to_string(),
                    HashFunction::Sha256 => {
                        HashFunction::Sha256.hash_bytes(ObjectKind::File, &data)
                    }
                };
                if actual != digest.hash {
                    return Err(CopyError::Invalid(format!(
                        "{kind} {} has other content",
                        digest.hash
                    )));
                }
                Ok((digest, data))
            });
        }
        let done = self.running.join_next().await?;
        Some(done.unwrap_or_else(|e| Err(CopyError::Invalid(format!("read task failed: {e}")))))
    }
}

/// Those of `ids` the repository at `repo_path` lacks.
async fn absent(repo_path: &std::path::Path, ids: Vec<Digest>) -> Result<Vec<Digest>, CopyError> {
    let path = repo_path.to_path_buf();
    blocking(move || {
        let repo = Repository::open_bare(&path)?;
        let odb = repo.odb()?;
        Ok(ids
            .into_iter()
            .filter(|d| Oid::from_str(&d.hash).map_or(true, |oid| !odb.exists(oid)))
            .collect())
    })
    .await
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

/// Native mode: downloads a git tree and everything below it that the
/// repository lacks, level by level, into `sink`. A subtree the repository
/// has is complete there (trees are only ever written after what they name).
async fn fetch_git_tree(
    remote: &Arc<dyn RemoteCas>,
    repo_path: &std::path::Path,
    root: &Digest,
    sink: &PackSink,
) -> Result<(), CopyError> {
    let mut level = absent(repo_path, vec![root.clone()]).await?;
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut trees = Fetcher::new(remote, level, ObjectType::Tree);
        while let Some(fetched) = trees.next().await {
            let (_, bytes) = fetched?;
            for e in parse_git_tree(&bytes)? {
                let child = Digest {
                    hash: hex::encode(e.id),
                    size: 0,
                    is_tree: e.kind == ObjectKind::Tree,
                };
                if !seen.insert(child.hash.clone()) {
                    continue;
                }
                match child.is_tree {
                    true => next.push(child),
                    false => blobs.push(child),
                }
            }
            sink.send(PackKind::Tree, bytes).await?;
        }
        level = absent(repo_path, next).await?;
    }
    let mut fetcher = Fetcher::new(remote, absent(repo_path, blobs).await?, ObjectType::Blob);
    while let Some(fetched) = fetcher.next().await {
        sink.send(PackKind::Blob, fetched?.1).await?;
    }
    Ok(())
}

/// Objects read from the endpoint at once.
const PARALLEL_READS: usize = 16;

/// Compatible mode: rebuilds a git tree from `Directory` messages. All
/// directories first (one GetTree call where the endpoint has it), then every
/// distinct blob, several at a time, then the git trees bottom-up.
async fn directories_to_git(
    remote: &Arc<dyn RemoteCas>,
    root: &Digest,
    sink: &PackSink,
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

    // The files into the pack as they come; only their git ids stay.
    let mut oids: HashMap<String, Oid> = HashMap::new();
    let mut fetcher = Fetcher::new(remote, files.into_values().collect(), ObjectType::Blob);
    while let Some(fetched) = fetcher.next().await {
        let (digest, data) = fetched?;
        oids.insert(digest.hash, git_id(ObjectType::Blob, &data)?);
        sink.send(PackKind::Blob, data).await?;
    }
    let mut objects = Vec::new();
    let mut walk = GitTrees {
        dirs: &dirs,
        oids: &oids,
        objects: &mut objects,
    };
    let root = crate::tree_walk::post_order(&mut walk, root.hash.clone())?;
    for (kind, data) in objects {
        sink.send(kind, data).await?;
    }
    Ok(root)
}

/// The git tree of each Directory (and its symlinks' blobs), collected in
/// `objects`; the files are in the pack already, known by their git ids.
struct GitTrees<'a> {
    dirs: &'a HashMap<String, reapi::Directory>,
    oids: &'a HashMap<String, Oid>,
    objects: &'a mut Vec<(PackKind, Vec<u8>)>,
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
                    self.objects.push((PackKind::Blob, target));
                    (name, ObjectKind::Symlink, oid)
                }
                Node::File {
                    name,
                    digest,
                    executable,
                } => (name, ObjectKind::blob(executable), self.oids[&digest.hash]),
            };
            let mut id = [0u8; 20];
            id.copy_from_slice(oid.as_bytes());
            entries.push(GitTreeEntry { name, kind, id });
        }
        let tree = serialize_git_tree(entries)?;
        let oid = git_id(ObjectType::Tree, &tree)?;
        self.objects.push((PackKind::Tree, tree));
        Ok(oid)
    }
}
