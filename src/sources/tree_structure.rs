//! Tree structures: the same tree with every file, executable and symlink
//! pointing at the empty blob (names and entry types kept), subtrees
//! replaced by their structures. Results are remembered per tree. The
//! ComputeTreeStructure RPC's logic is here too.

use std::collections::HashMap;

use git2::{ObjectType, Oid, Repository};

use crate::digest::{parse_git_tree, serialize_git_tree, GitTreeEntry, HashFunction, ObjectKind};
use crate::git::{commit_and_keep, parse_oid, GitError};
use crate::storage::IdMap;
use crate::tree_walk::{PostOrder, Visit};

use super::answers::{Outcome, TreeAnswer};
use super::{blocking, Sources};

/// Computes the structure of `tree` (read from `source`), writing every new
/// object into `target`; returns the structure's tree id.
pub fn compute(
    source: &Repository,
    target: &Repository,
    tree: Oid,
    memo: &IdMap,
) -> Result<Oid, GitError> {
    let empty_blob = target.odb()?.write(ObjectType::Blob, b"")?;
    let mut walk = Structures {
        source,
        target,
        memo,
        empty_blob,
    };
    crate::tree_walk::post_order(&mut walk, tree)
}

fn format_error(e: impl std::fmt::Display) -> GitError {
    GitError::Import {
        path: Default::default(),
        message: e.to_string(),
    }
}

impl Sources {
    /// ComputeTreeStructure: the tree's structure, kept in the git cache.
    pub async fn compute_tree_structure(&self, tree: &str) -> TreeAnswer {
        let repo = match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(repo)) => repo,
            Ok(None) => return TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => return TreeAnswer::internal(e),
        };
        let repos = self.repos.clone();
        let memo = self.build_root.repository_map("tree_structure");
        let id = tree.to_string();
        let result = blocking(move || {
            let source = repos.open(repo)?;
            let cache = repos.open_git_cache()?;
            let oid = parse_oid(&id)?;
            let structure = super::tree_structure::compute(&source, &cache, oid, &memo)?;
            commit_and_keep(&cache, structure, &format!("Import {structure}"))?;
            Ok(structure.to_string())
        })
        .await;
        match result {
            Ok(s) => TreeAnswer {
                outcome: Outcome::Ok,
                tree: Some(s),
                digest: None,
            },
            Err(e) => TreeAnswer::internal(e),
        }
    }
}

/// The structure of each tree, from those of its subtrees.
struct Structures<'a> {
    source: &'a Repository,
    target: &'a Repository,
    memo: &'a IdMap,
    empty_blob: Oid,
}

impl PostOrder for Structures<'_> {
    type Key = Oid;
    /// The tree's entries.
    type Data = Vec<GitTreeEntry>;
    type Value = Oid;
    type Error = GitError;

    fn visit(&mut self, tree: &Oid) -> Result<Visit<Oid, Vec<GitTreeEntry>, Oid>, GitError> {
        // A remembered structure counts only while the git cache still has it.
        if let Some(known) = self.memo.get(&tree.to_string()).ok().flatten() {
            if let Ok(oid) = Oid::from_str(known.trim()) {
                if self.target.odb()?.exists(oid) {
                    return Ok(Visit::Known(oid));
                }
            }
        }
        let data = self.source.odb()?.read(*tree)?.data().to_vec();
        let entries = parse_git_tree(&data).map_err(format_error)?;
        let mut subtrees = Vec::new();
        for e in &entries {
            if e.kind == ObjectKind::Tree {
                subtrees.push(Oid::from_bytes(&e.id)?);
            }
        }
        Ok(Visit::Expand(entries, subtrees))
    }

    fn finish(
        &mut self,
        tree: &Oid,
        entries: Vec<GitTreeEntry>,
        done: &HashMap<Oid, Oid>,
    ) -> Result<Oid, GitError> {
        let mut shaped = Vec::with_capacity(entries.len());
        for e in entries {
            let id = if e.kind == ObjectKind::Tree {
                done[&Oid::from_bytes(&e.id)?]
            } else {
                self.empty_blob
            };
            let mut raw = [0u8; 20];
            raw.copy_from_slice(id.as_bytes());
            shaped.push(GitTreeEntry {
                name: e.name,
                kind: e.kind,
                id: raw,
            });
        }
        let bytes = serialize_git_tree(shaped).map_err(format_error)?;
        let structure = self.target.odb()?.write(ObjectType::Tree, &bytes)?;
        debug_assert_eq!(
            structure.to_string(),
            HashFunction::GitSha1.hash_bytes(ObjectKind::Tree, &bytes)
        );
        let _ = self.memo.set(&tree.to_string(), &structure.to_string());
        Ok(structure)
    }
}
