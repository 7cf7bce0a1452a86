//! What the SourceTree operations share: how one ends (outcome, tree,
//! digest), syncing an answer to the endpoint, and finding trees and blobs.
//! Each RPC's logic has a file of its own next to this one, with the
//! reference's look-up orders, outcomes and side effects (see
//! shared/reference/serve.md §5).

use std::path::PathBuf;

use super::copy::native_cas_tree_to_git;
use super::SourceTreeError;
use super::{blocking, Sources};
use crate::digest::{Digest, ObjectKind};
use crate::git::{commit_and_keep, parse_oid};

/// How an operation ended; the gRPC layer maps it onto each RPC's status enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    SyncError(String),
    FailedPrecondition(String),
    Internal(String),
}

/// The result of an operation that names a tree (or blob) and may sync it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeAnswer {
    pub outcome: Outcome,
    pub tree: Option<String>,
    /// The endpoint digest, once synced.
    pub digest: Option<Digest>,
}

impl TreeAnswer {
    pub(super) fn outcome(outcome: Outcome) -> TreeAnswer {
        TreeAnswer {
            outcome,
            tree: None,
            digest: None,
        }
    }

    pub(super) fn internal(message: impl Into<String>) -> TreeAnswer {
        let message = message.into();
        tracing::error!("{message}");
        TreeAnswer::outcome(Outcome::Internal(message))
    }
}

/// Where a blob was found.
#[derive(Clone, Debug)]
pub(super) enum BlobSource {
    Repo(usize),
    NativeCas(PathBuf),
    /// At the endpoint, under this digest.
    Remote(Digest),
}

impl Sources {
    /// The endpoint's digest of git blob `id`, if the endpoint has it:
    /// native endpoints know blobs by their git id; compatible ones by the
    /// SHA-256 the rehash map knows (from a sync, or a verified push of a
    /// Remote Asset naming the git id).
    pub(super) async fn endpoint_blob(
        &self,
        id: &str,
    ) -> Result<Option<Digest>, crate::remote::RemoteError> {
        let Some(digest) = self.syncer.known_digest(id, ObjectKind::File) else {
            return Ok(None);
        };
        let missing = self.remote.find_missing(vec![digest.clone()]).await?;
        Ok(missing.is_empty().then_some(digest))
    }

    pub(super) fn git_cache(&self) -> PathBuf {
        self.repos.paths()[0].clone()
    }

    /// Syncs a git object found in repository `repo` if asked to, and answers.
    pub(super) async fn answer(
        &self,
        id: String,
        kind: ObjectKind,
        repo: PathBuf,
        sync: bool,
    ) -> TreeAnswer {
        let tree = kind.is_tree().then(|| id.clone());
        if !sync {
            return TreeAnswer {
                outcome: Outcome::Ok,
                tree,
                digest: None,
            };
        }
        match self.syncer.sync(repo, id.clone(), kind).await {
            Ok(digest) => TreeAnswer {
                outcome: Outcome::Ok,
                tree,
                digest: Some(self.response_digest(digest)),
            },
            Err(e) => {
                tracing::warn!(id, "sync to the endpoint failed: {e}");
                TreeAnswer {
                    outcome: Outcome::SyncError(e.to_string()),
                    tree,
                    digest: None,
                }
            }
        }
    }

    /// Native answers carry the git id with size 0, as `just serve` sends them.
    pub(super) fn response_digest(&self, mut d: Digest) -> Digest {
        if self.remote_hash().is_native() {
            d.size = 0;
        }
        d
    }

    /// Uploads a blob from the native CAS, in the endpoint's hash mode.
    pub(super) async fn upload_cas_file(&self, id: &str, path: PathBuf) -> TreeAnswer {
        let hash = self.remote_hash();
        let p = path.clone();
        let digest = blocking(move || {
            let file = std::fs::File::open(&p)?;
            let len = file.metadata()?.len();
            let hex = hash.hash_reader(ObjectKind::File, len, file)?;
            Ok(Digest {
                hash: hex,
                size: len,
                is_tree: false,
            })
        })
        .await;
        let digest = match digest {
            Ok(d) => d,
            Err(e) => return TreeAnswer::internal(e),
        };
        let present = self.remote.find_missing(vec![digest.clone()]).await;
        let result = match present {
            Ok(missing) if missing.is_empty() => Ok(()),
            Ok(_) => self.remote.upload_file(&digest, &path).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => TreeAnswer {
                outcome: Outcome::Ok,
                tree: None,
                digest: Some(self.response_digest(digest)),
            },
            Err(e) => {
                tracing::warn!(id, "upload of a CAS blob failed: {e}");
                TreeAnswer::outcome(Outcome::SyncError(e.to_string()))
            }
        }
    }

    /// Finds a tree in the git cache or a configured repository; failing that,
    /// imports it from the native CAS into the git cache. `None`: unknown.
    pub(super) async fn locate_tree(
        &self,
        tree: &str,
        message: String,
    ) -> Result<Option<usize>, SourceTreeError> {
        let (repos, id, cas) = (
            self.repos.clone(),
            tree.to_string(),
            self.native_cas.clone(),
        );
        blocking(move || {
            let oid = parse_oid(&id)?;
            if let Some(repo) = repos.find_tree(&id)? {
                return Ok(Some(repo));
            }
            if !cas.contains(ObjectKind::Tree, &id) {
                return Ok(None);
            }
            let cache = repos.open_git_cache()?;
            native_cas_tree_to_git(&cas, &cache, &id)?;
            commit_and_keep(&cache, oid, &message)?;
            Ok(Some(0))
        })
        .await
    }
}
