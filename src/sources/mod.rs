//! The SourceTree logic, independent of gRPC: mapping commits, archives,
//! distdirs, blobs and trees to git trees, and making them available in the
//! endpoint's CAS. Look-ups go through the git cache first, then the
//! configured repositories in order, then the local native CAS (and, where
//! the reference does, the endpoint's CAS).

mod answers;
mod archive_tree;
mod check_root_tree;
mod commit_tree;
mod content;
mod copy;
mod distdir;
mod get_remote_tree;
pub mod resolve;
mod shared_trees;
pub mod sync;
mod tree;
mod tree_structure;

pub use answers::{Outcome, TreeAnswer};
pub use archive_tree::{ArchiveAnswer, ArchiveOutcome};
pub use distdir::Distfile;

use std::sync::Arc;

use crate::digest::HashFunction;
use crate::git::RepoSet;
use crate::memo::Memo;
use crate::remote::RemoteCas;
use crate::storage::{BuildRoot, Cas};
use sync::Syncer;

/// How many answers about commits and archives are kept in memory.
const REMEMBERED_FACTS: usize = 65_536;

/// What the SourceTree operations work with.
pub struct Sources {
    pub repos: RepoSet,
    pub build_root: BuildRoot,
    /// The local CAS in native mode: SourceTree always speaks git ids.
    pub native_cas: Cas,
    pub remote: Arc<dyn RemoteCas>,
    pub syncer: Syncer,
    /// Keeps concurrent requests for the same archive from unpacking it twice.
    once: archive_tree::OnceMap,
    /// (commit, subdirectory) -> (repository index, tree).
    commit_trees: crate::memo::Memo<(String, String), (usize, String)>,
    /// (archive content, archive kind, subdirectory) -> (repository index,
    /// tree), once unpacked.
    archive_subtrees: crate::memo::Memo<(String, &'static str, String), (usize, String)>,
    /// Bounds on a tree fetched from the endpoint: those of an unpacked archive.
    fetch_limits: crate::archive::Limits,
    /// Facts shared with other replicas through the endpoint, if configured.
    pub shared: Option<Arc<crate::shared_cache::SharedCache>>,
}

/// What went wrong inside a SourceTree operation: the text of its
/// INTERNAL_ERROR (or sync error) answer. Which status the RPC answers is
/// decided by the operation's outcome, not by this type.
#[derive(Debug, thiserror::Error)]
pub enum SourceTreeError {
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error("git: {0}")]
    Git2(#[from] git2::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cas(#[from] crate::storage::CasError),
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error(transparent)]
    Worker(#[from] crate::blocking::WorkerFailed),
    #[error("{0}")]
    Message(String),
}

impl From<SourceTreeError> for String {
    fn from(e: SourceTreeError) -> String {
        e.to_string()
    }
}

impl From<String> for SourceTreeError {
    fn from(message: String) -> SourceTreeError {
        SourceTreeError::Message(message)
    }
}

/// [`crate::blocking::run`] with this module's error type.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceTreeError> + Send + 'static,
) -> Result<T, SourceTreeError> {
    crate::blocking::run(f).await
}

impl Sources {
    pub fn new(build_root: BuildRoot, repos: RepoSet, remote: Arc<dyn RemoteCas>) -> Sources {
        let rehash = build_root.protocol_map("to-plain-SHA256/from-git");
        let gc = crate::storage::gc::GcLocks::for_root(&build_root);
        Sources {
            commit_trees: Memo::until_rotation(REMEMBERED_FACTS, gc.clone()),
            archive_subtrees: Memo::until_rotation(REMEMBERED_FACTS, gc),
            native_cas: build_root.cas(HashFunction::GitSha1),
            syncer: Syncer::new(remote.clone(), rehash),
            remote,
            repos,
            build_root,
            once: Default::default(),
            fetch_limits: Default::default(),
            shared: None,
        }
    }

    /// These sources, fetching trees from the endpoint within `limits`.
    pub fn with_fetch_limits(mut self, limits: crate::archive::Limits) -> Sources {
        self.fetch_limits = limits;
        self
    }

    /// Shares facts with other replicas through the endpoint's action cache.
    pub fn with_shared_cache(mut self, shared: bool) -> Sources {
        self.shared =
            shared.then(|| Arc::new(crate::shared_cache::SharedCache::new(self.remote.clone())));
        self
    }

    /// The endpoint's hash mode.
    pub fn remote_hash(&self) -> HashFunction {
        self.remote.hash_function()
    }
}
