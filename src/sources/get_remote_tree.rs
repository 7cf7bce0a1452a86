//! GetRemoteTree: a tree fetched from the endpoint's CAS into the git
//! cache.

use git2::Repository;

use super::answers::Outcome;
use super::copy::{remote_tree_to_git, CopyError};
use super::{blocking, Sources};
use crate::digest::Digest;
use crate::git::commit_and_keep;

impl Sources {
    /// GetRemoteTree: fetches a tree from the endpoint's CAS into the git
    /// cache, if it is within the bounds of an unpacked archive.
    pub async fn get_remote_tree(&self, digest: &Digest) -> Outcome {
        let mut digest = digest.clone();
        if self.remote_hash().is_native() {
            digest.is_tree = true;
        }
        match self.remote.find_missing(vec![digest.clone()]).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(_) => {
                return Outcome::FailedPrecondition(format!(
                    "tree {} is not in the endpoint's CAS",
                    digest.hash
                ))
            }
            Err(e) => return Outcome::FailedPrecondition(e.to_string()),
        }
        let cache = self.git_cache();
        let scratch = self.build_root.tmp_dir();
        let limits = &self.fetch_limits;
        let copied = remote_tree_to_git(&self.remote, &cache, &scratch, &digest, limits).await;
        let tree = match copied {
            Ok(t) => t,
            Err(
                e @ (CopyError::Missing(_)
                | CopyError::Remote(_)
                | CopyError::Invalid(_)
                | CopyError::TooLarge(_)),
            ) => return Outcome::FailedPrecondition(e.to_string()),
            Err(e) => return Outcome::Internal(e.to_string()),
        };
        let message = format!("Content of tree {}", digest.hash);
        let done = blocking(move || {
            let repo = Repository::open_bare(&cache)?;
            Ok(commit_and_keep(&repo, tree, &message)?)
        })
        .await;
        match done {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Internal(e.to_string()),
        }
    }
}
