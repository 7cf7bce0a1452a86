//! ServeCommitTree: the tree at a subdirectory of a commit, found in the
//! git cache or a configured repository (reference order), synced if asked.

use git2::{ObjectType, Oid};

use super::answers::{Outcome, TreeAnswer};
use super::{blocking, Sources};
use crate::digest::ObjectKind;

impl Sources {
    /// ServeCommitTree: the tree at `subdir` of `commit`.
    pub async fn commit_tree(&self, commit: &str, subdir: &str, sync: bool) -> TreeAnswer {
        let key = (commit.to_string(), subdir.to_string());
        let found = match self.commit_trees.get(&key) {
            Some(known) => Ok(Some(known)),
            None => {
                let found = self.look_up_commit_tree(commit, subdir).await;
                if let Ok(Some(known)) = &found {
                    self.commit_trees.remember(key, known.clone());
                }
                found
            }
        };
        match found {
            Ok(Some((repo, tree))) => {
                self.answer(
                    tree,
                    ObjectKind::Tree,
                    self.repos.paths()[repo].clone(),
                    sync,
                )
                .await
            }
            Ok(None) => TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => TreeAnswer::internal(e),
        }
    }

    /// The repository having `commit` and the tree at `subdir` in it.
    async fn look_up_commit_tree(
        &self,
        commit: &str,
        subdir: &str,
    ) -> Result<Option<(usize, String)>, super::SourceTreeError> {
        let (repos, commit_id, subdir_owned) =
            (self.repos.clone(), commit.to_string(), subdir.to_string());
        blocking(move || {
            let Some(found) = repos.commit_tree(&commit_id)? else {
                return Ok(None);
            };
            let repo = repos.open(found.repo)?;
            let root = repo.find_tree(Oid::from_str(&found.value)?)?;
            let path: Vec<&str> = subdir_owned
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if path.is_empty() {
                return Ok(Some((found.repo, found.value)));
            }
            if path.contains(&"..") {
                return Err(format!("subdir {subdir_owned:?} leaves the commit's tree").into());
            }
            let entry = root
                .get_path(std::path::Path::new(&path.join("/")))
                .map_err(|_| format!("commit {commit_id} has no {subdir_owned:?}"))?;
            if entry.kind() != Some(ObjectType::Tree) {
                return Err(
                    format!("{subdir_owned:?} in commit {commit_id} is not a directory").into(),
                );
            }
            Ok(Some((found.repo, entry.id().to_string())))
        })
        .await
    }
}
