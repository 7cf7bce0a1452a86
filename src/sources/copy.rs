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

use crate::archive::Limits;
use crate::digest::{
    parse_git_tree, serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind,
};
use crate::git::{install_packs, PackFiles, PackKind, PackWriter};
use crate::remote::{Fetched, ReadBounds, RemoteCas, RemoteError, MAX_DECODING_BYTES};
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
    /// The tree is over the configured bounds of one import.
    #[error("{0}")]
    TooLarge(String),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Cas(#[from] crate::storage::CasError),
    #[error(transparent)]
    Remote(RemoteError),
    #[error(transparent)]
    Tree(#[from] crate::digest::TreeError),
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
}

impl From<RemoteError> for CopyError {
    fn from(e: RemoteError) -> CopyError {
        match e {
            RemoteError::TooLarge { .. } => CopyError::TooLarge(e.to_string()),
            e => CopyError::Remote(e),
        }
    }
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
/// structure and a bounded number of objects in flight, never the content:
/// objects over [`IN_MEMORY`] come through files. Small objects are read
/// in batches, with no round trip each. The tree may have at most
/// `limits.max_entries` distinct objects and `limits.max_total_bytes` bytes
/// of distinct files, as an unpacked archive (in native mode, subtrees and
/// files the repository has already are not counted).
pub async fn remote_tree_to_git(
    remote: &Arc<dyn RemoteCas>,
    repo_path: &std::path::Path,
    scratch: &std::path::Path,
    root: &Digest,
    limits: &Limits,
) -> Result<Oid, CopyError> {
    let sink = PackSink::open(scratch);
    let spill_dir = {
        let scratch = scratch.to_path_buf();
        blocking(move || {
            crate::storage::staging::scratch_dir(&scratch, "remote-blobs")
                .map_err(|e| CopyError::Invalid(format!("cannot stage large objects: {e}")))
        })
        .await?
    };
    let mut budget = Budget::new(limits);
    let spill = Arc::new(Spill {
        dir: spill_dir.path().to_path_buf(),
        next: Default::default(),
    });
    let fetched = match remote.hash_function() {
        HashFunction::GitSha1 => match Oid::from_str(&root.hash) {
            Ok(oid) => fetch_git_tree(remote, repo_path, root, &sink, &spill, &mut budget)
                .await
                .map(|()| oid),
            Err(e) => Err(e.into()),
        },
        HashFunction::Sha256 => directories_to_git(remote, root, &sink, &spill, &mut budget).await,
    };
    let written = sink.finish().await;
    let path = repo_path.to_path_buf();
    // On the blocking pool, so that the scratch directories are removed
    // there too, whichever way the fetch ended.
    blocking(move || {
        let _spill = spill_dir;
        // The writer's own failure explains a stopped fetch better.
        let (root_oid, (_scratch, packs)) = match (fetched, written) {
            (Err(CopyError::WriterStopped), Err(e)) => return Err(e),
            (fetched, written) => (fetched?, written?),
        };
        let repo = Repository::open_bare(&path)?;
        install_packs(&repo, &packs).map_err(|e| CopyError::Invalid(e.to_string()))?;
        Ok(root_oid)
    })
    .await
}

/// Objects up to this size are read into memory; larger ones into a file
/// each. Memory thus holds at most ([`PARALLEL_READS`] + [`SINK_QUEUE`])
/// times this much content, plus [`PARALLEL_BATCHES`] batch answers (their
/// size bounded by the endpoint's batch limit, or 16 MiB where objects
/// have no known size).
const IN_MEMORY: u64 = 1 << 20;

/// What one fetched tree may still add: distinct objects and file bytes.
struct Budget {
    entries: u64,
    bytes: u64,
    limits: Limits,
}

impl Budget {
    fn new(limits: &Limits) -> Budget {
        Budget {
            entries: 0,
            bytes: 0,
            limits: limits.clone(),
        }
    }

    fn add_entries(&mut self, n: u64) -> Result<(), CopyError> {
        self.entries += n;
        if self.entries > self.limits.max_entries {
            return Err(CopyError::TooLarge(format!(
                "the tree has more than {} entries",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), CopyError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_total_bytes {
            return Err(CopyError::TooLarge(format!(
                "the tree's files have more than {} bytes",
                self.limits.max_total_bytes
            )));
        }
        Ok(())
    }

    /// The most one more file may have.
    fn remaining_bytes(&self) -> u64 {
        self.limits.max_total_bytes.saturating_sub(self.bytes)
    }
}

/// Files for objects over [`IN_MEMORY`], in a scratch directory of the fetch.
struct Spill {
    dir: std::path::PathBuf,
    next: std::sync::atomic::AtomicU64,
}

impl Spill {
    fn path(&self) -> std::path::PathBuf {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(n.to_string())
    }
}

/// A fetched object's content: in memory, or in a spill file of that length.
enum Content {
    Memory(Vec<u8>),
    File(std::path::PathBuf, u64),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Memory(data) => data.len() as u64,
            Content::File(_, len) => *len,
        }
    }
}

/// Objects in flight to the pack writer.
const SINK_QUEUE: usize = 64;

/// What the pack writer is sent: an object, or a blob in a spill file (which
/// it streams, then removes), whose id it answers.
enum Item {
    Object(PackKind, Vec<u8>),
    File(std::path::PathBuf, u64, tokio::sync::oneshot::Sender<Oid>),
}

/// A pack written on a blocking thread from objects sent to it.
struct PackSink {
    tx: tokio::sync::mpsc::Sender<Item>,
    /// The scratch directory goes once the packs are installed.
    writer: tokio::task::JoinHandle<Result<(ScratchDir, Vec<PackFiles>), CopyError>>,
}

impl PackSink {
    /// Starts the writer; all its file work, the scratch directory's
    /// creation too, happens on its blocking thread.
    fn open(scratch: &std::path::Path) -> PackSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(SINK_QUEUE);
        let scratch = scratch.to_path_buf();
        let writer = tokio::task::spawn_blocking(
            move || -> Result<(ScratchDir, Vec<PackFiles>), CopyError> {
                let dir = crate::storage::staging::scratch_dir(&scratch, "remote-tree")
                    .map_err(|e| CopyError::Invalid(format!("cannot stage a pack: {e}")))?;
                let failed =
                    |e: crate::git::GitError| CopyError::Invalid(format!("writing a pack: {e}"));
                let mut writer =
                    PackWriter::create(&dir.path().join("incoming.pack"), 1).map_err(failed)?;
                while let Some(item) = rx.blocking_recv() {
                    match item {
                        Item::Object(kind, data) => {
                            writer.add(kind, &data).map_err(failed)?;
                        }
                        Item::File(path, len, id) => {
                            let oid = stream_file(&mut writer, &path, len)?;
                            let _ = std::fs::remove_file(&path);
                            let _ = id.send(oid);
                        }
                    }
                }
                let files = writer.finish().map_err(failed)?;
                Ok((dir, files.into_iter().collect()))
            },
        );
        PackSink { tx, writer }
    }

    async fn send(&self, kind: PackKind, data: Vec<u8>) -> Result<(), CopyError> {
        self.send_item(Item::Object(kind, data)).await
    }

    /// Sends a blob, whatever holds it; its git id once written.
    async fn send_blob(
        &self,
        content: Content,
    ) -> Result<tokio::sync::oneshot::Receiver<Oid>, CopyError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match content {
            Content::Memory(data) => {
                let _ = tx.send(git_id(ObjectType::Blob, &data)?);
                self.send(PackKind::Blob, data).await?;
            }
            Content::File(path, len) => self.send_item(Item::File(path, len, tx)).await?,
        }
        Ok(rx)
    }

    async fn send_item(&self, item: Item) -> Result<(), CopyError> {
        // A writer that stopped failed: stop fetching; finish() says why.
        self.tx
            .send(item)
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

/// Streams the blob in the file at `path` (`len` bytes) into `writer`.
fn stream_file(
    writer: &mut PackWriter,
    path: &std::path::Path,
    len: u64,
) -> Result<Oid, CopyError> {
    use std::io::Read;
    let failed = |e: crate::git::GitError| CopyError::Invalid(format!("writing a pack: {e}"));
    let io = |e: std::io::Error| CopyError::Invalid(format!("reading {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    writer.begin_blob(len).map_err(failed)?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        writer.write_chunk(&buf[..n]).map_err(failed)?;
    }
    writer.finish_object().map_err(failed)
}

/// Reads of one kind from the endpoint, answered in the order they
/// complete, each checked against its digest by the reader. Objects go in
/// batches of [`FETCH_BATCH`] ([`RemoteCas::read_small`], up to
/// [`PARALLEL_BATCHES`] at once); those a batch leaves out (large or absent)
/// are read one by one, up to [`PARALLEL_READS`] at once. Trees and
/// directories are read into memory (at most [`MAX_DECODING_BYTES`] each),
/// blobs as [`Content`] of at most `max` bytes each.
struct Fetcher {
    remote: Arc<dyn RemoteCas>,
    pending: std::vec::IntoIter<Digest>,
    /// Left out by their batch.
    singles: Vec<Digest>,
    running: tokio::task::JoinSet<Result<Done, CopyError>>,
    batches_running: usize,
    /// Read by a batch, not answered yet.
    ready: std::collections::VecDeque<(Digest, Vec<u8>)>,
    kind: ObjectType,
    spill: Arc<Spill>,
    max: u64,
}

/// A finished read task: one object, or a batch (what it read, what it left).
enum Done {
    One(Digest, Content),
    Batch(Vec<(Digest, Vec<u8>)>, Vec<Digest>),
}

impl Fetcher {
    fn new(
        remote: &Arc<dyn RemoteCas>,
        digests: Vec<Digest>,
        kind: ObjectType,
        spill: &Arc<Spill>,
        max: u64,
    ) -> Fetcher {
        Fetcher {
            remote: remote.clone(),
            pending: digests.into_iter(),
            singles: Vec::new(),
            running: tokio::task::JoinSet::new(),
            batches_running: 0,
            ready: Default::default(),
            kind,
            spill: spill.clone(),
            max,
        }
    }

    /// Sets the most bytes of the blobs read from now on.
    fn set_max(&mut self, max: u64) {
        self.max = max;
    }

    /// (read into memory up to, refused over) for the next reads.
    fn bounds(&self) -> (u64, u64) {
        match self.kind {
            ObjectType::Blob => (IN_MEMORY.min(self.max), self.max),
            _ => (MAX_DECODING_BYTES as u64, MAX_DECODING_BYTES as u64),
        }
    }

    /// Starts what may run now: single reads first, then batches.
    fn start(&mut self) {
        let (in_memory, max) = self.bounds();
        while self.running.len() < PARALLEL_READS {
            let Some(digest) = self.singles.pop() else {
                break;
            };
            let (remote, kind, spill) = (self.remote.clone(), self.kind, self.spill.path());
            self.running.spawn(async move {
                let bounds = ReadBounds {
                    in_memory,
                    max,
                    spill: &spill,
                };
                let fetched = remote
                    .read_bounded(&digest, bounds)
                    .await?
                    .ok_or_else(|| CopyError::Missing(format!("{kind} {}", digest.hash)))?;
                Ok(match fetched {
                    Fetched::Memory(data) => Done::One(digest, Content::Memory(data)),
                    Fetched::File(len) => Done::One(digest, Content::File(spill, len)),
                })
            });
        }
        while self.batches_running < PARALLEL_BATCHES && self.running.len() < PARALLEL_READS {
            let batch: Vec<Digest> = self.pending.by_ref().take(FETCH_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            let remote = self.remote.clone();
            self.batches_running += 1;
            self.running.spawn(async move {
                let read = remote.read_small(batch.clone(), in_memory).await?;
                let got: HashSet<&str> = read.iter().map(|(d, _)| d.hash.as_str()).collect();
                let left = batch
                    .iter()
                    .filter(|d| !got.contains(d.hash.as_str()))
                    .cloned()
                    .collect();
                Ok(Done::Batch(read, left))
            });
        }
    }

    async fn next(&mut self) -> Option<Result<(Digest, Content), CopyError>> {
        loop {
            if let Some((digest, data)) = self.ready.pop_front() {
                return Some(Ok((digest, Content::Memory(data))));
            }
            self.start();
            let done = match self.running.join_next().await? {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => return Some(Err(e)),
                Err(e) => return Some(Err(CopyError::Invalid(format!("read task failed: {e}")))),
            };
            match done {
                Done::One(digest, content) => return Some(Ok((digest, content))),
                Done::Batch(read, left) => {
                    self.batches_running -= 1;
                    self.ready.extend(read);
                    self.singles.extend(left);
                }
            }
        }
    }
}

/// A tree or directory read by a [`Fetcher`], which reads them into memory.
fn in_memory(digest: &Digest, content: Content) -> Result<Vec<u8>, CopyError> {
    match content {
        Content::Memory(data) => Ok(data),
        Content::File(..) => Err(CopyError::Invalid(format!(
            "{} was not read into memory",
            digest.hash
        ))),
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
    spill: &Arc<Spill>,
    budget: &mut Budget,
) -> Result<(), CopyError> {
    let mut level = absent(repo_path, vec![root.clone()]).await?;
    budget.add_entries(level.len() as u64)?;
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    // Levels are walked one after the other, not recursively: the entry
    // bound is the only one depth needs.
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut trees = Fetcher::new(remote, level, ObjectType::Tree, spill, 0);
        while let Some(fetched) = trees.next().await {
            let (digest, content) = fetched?;
            let bytes = in_memory(&digest, content)?;
            for e in parse_git_tree(&bytes)? {
                let child = Digest {
                    hash: hex::encode(e.id),
                    size: 0,
                    is_tree: e.kind == ObjectKind::Tree,
                };
                if !seen.insert(child.hash.clone()) {
                    continue;
                }
                budget.add_entries(1)?;
                match child.is_tree {
                    true => next.push(child),
                    false => blobs.push(child),
                }
            }
            sink.send(PackKind::Tree, bytes).await?;
        }
        level = absent(repo_path, next).await?;
    }
    let blobs = absent(repo_path, blobs).await?;
    let mut fetcher = Fetcher::new(
        remote,
        blobs,
        ObjectType::Blob,
        spill,
        budget.remaining_bytes(),
    );
    while let Some(fetched) = fetcher.next().await {
        let (_, content) = fetched?;
        budget.add_bytes(content.len())?;
        fetcher.set_max(budget.remaining_bytes());
        // Native ids are the git ids: no need to learn them from the writer.
        match content {
            Content::Memory(data) => sink.send(PackKind::Blob, data).await?,
            Content::File(path, len) => {
                let (id, _) = tokio::sync::oneshot::channel();
                sink.send_item(Item::File(path, len, id)).await?;
            }
        }
    }
    Ok(())
}

/// Objects read from the endpoint one by one at once.
const PARALLEL_READS: usize = 16;
/// Objects asked for in one batch, and batches under way at once.
const FETCH_BATCH: usize = 64;
const PARALLEL_BATCHES: usize = 4;

/// The most bytes of `Directory` messages one GetTree listing may bring.
const MAX_LISTING_BYTES: u64 = 256 << 20;

/// Compatible mode: rebuilds a git tree from `Directory` messages. All
/// directories first (one GetTree call where the endpoint has it), then every
/// distinct blob, several at a time, then the git trees bottom-up.
async fn directories_to_git(
    remote: &Arc<dyn RemoteCas>,
    root: &Digest,
    sink: &PackSink,
    spill: &Arc<Spill>,
    budget: &mut Budget,
) -> Result<Oid, CopyError> {
    // Re-encoded messages that do not hash to their id (another server's
    // encoding) are simply read again below.
    let mut dirs = HashMap::new();
    if let Some(listed) = remote.get_tree(root, MAX_LISTING_BYTES).await? {
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
            let spill = spill.path();
            let bounds = ReadBounds {
                in_memory: MAX_DECODING_BYTES as u64,
                max: MAX_DECODING_BYTES as u64,
                spill: &spill,
            };
            let fetched = remote
                .read_bounded(&d, bounds)
                .await?
                .ok_or_else(|| CopyError::Missing(format!("directory {}", d.hash)))?;
            let bytes = match fetched {
                Fetched::Memory(data) => data,
                Fetched::File(len) => in_memory(&d, Content::File(spill, len))?,
            };
            let dir = reapi::Directory::decode(bytes.as_slice())
                .map_err(|e| CopyError::Invalid(format!("{} is not a Directory: {e}", d.hash)))?;
            dirs.insert(d.hash.clone(), dir);
        }
        let nodes = directory_nodes(HashFunction::Sha256, &d.hash, &dirs[&d.hash])
            .map_err(|e| CopyError::Invalid(e.to_string()))?;
        budget.add_entries(nodes.len() as u64 + 1)?;
        for node in nodes {
            match node {
                Node::Dir { digest, .. } => queue.push(digest),
                Node::File { digest, .. } => {
                    if !files.contains_key(&digest.hash) {
                        budget.add_bytes(digest.size)?;
                        files.insert(digest.hash.clone(), digest);
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
    }

    // The files into the pack as they come; only their git ids stay (those
    // of files streamed from a spill file come from the writer).
    let mut oids: HashMap<String, Oid> = HashMap::new();
    let mut streamed = Vec::new();
    let mut fetcher = Fetcher::new(
        remote,
        files.into_values().collect(),
        ObjectType::Blob,
        spill,
        budget.limits.max_total_bytes,
    );
    while let Some(fetched) = fetcher.next().await {
        let (digest, content) = fetched?;
        let mut id = sink.send_blob(content).await?;
        match id.try_recv() {
            Ok(oid) => {
                oids.insert(digest.hash, oid);
            }
            Err(_) => streamed.push((digest.hash, id)),
        }
    }
    for (hash, id) in streamed {
        let oid = id.await.map_err(|_| CopyError::WriterStopped)?;
        oids.insert(hash, oid);
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
