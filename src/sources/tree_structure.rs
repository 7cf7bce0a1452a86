//! Tree structures: the same tree with every file, executable and symlink
//! pointing at the empty blob (names and entry types kept), subtrees
//! replaced by their structures. Results are remembered per tree.

use std::collections::HashMap;

use git2::{ObjectType, Oid, Repository};

use crate::digest::{parse_git_tree, serialize_git_tree, GitTreeEntry, HashFunction, ObjectKind};
use crate::storage::IdMap;

/// Computes the structure of `tree` (read from `source`), writing every new
/// object into `target`; returns the structure's tree id.
pub fn compute(
    source: &Repository,
    target: &Repository,
    tree: Oid,
    memo: &IdMap,
) -> Result<Oid, crate::git::GitError> {
    let empty_blob = target.odb()?.write(ObjectType::Blob, b"")?;
    let mut done = HashMap::new();
    compute_rec(source, target, tree, memo, empty_blob, &mut done)
}

fn compute_rec(
    source: &Repository,
    target: &Repository,
    tree: Oid,
    memo: &IdMap,
    empty_blob: Oid,
    done: &mut HashMap<Oid, Oid>,
) -> Result<Oid, crate::git::GitError> {
    if let Some(s) = done.get(&tree) {
        return Ok(*s);
    }
    // A remembered structure counts only while the git cache still has it.
    if let Some(known) = memo.get(&tree.to_string()).ok().flatten() {
        if let Ok(oid) = Oid::from_str(known.trim()) {
            if target.odb()?.exists(oid) {
                done.insert(tree, oid);
                return Ok(oid);
            }
        }
    }
    let data = source.odb()?.read(tree)?.data().to_vec();
    let mut entries = Vec::new();
    for e in parse_git_tree(&data).map_err(|e| crate::git::GitError::Import {
        path: Default::default(),
        message: e.to_string(),
    })? {
        let id = if e.kind == ObjectKind::Tree {
            compute_rec(
                source,
                target,
                Oid::from_bytes(&e.id)?,
                memo,
                empty_blob,
                done,
            )?
        } else {
            empty_blob
        };
        let mut raw = [0u8; 20];
        raw.copy_from_slice(id.as_bytes());
        entries.push(GitTreeEntry {
            name: e.name,
            kind: e.kind,
            id: raw,
        });
    }
    let bytes = serialize_git_tree(entries).map_err(|e| crate::git::GitError::Import {
        path: Default::default(),
        message: e.to_string(),
    })?;
    let structure = target.odb()?.write(ObjectType::Tree, &bytes)?;
    debug_assert_eq!(
        structure.to_string(),
        HashFunction::GitSha1.hash_bytes(true, &bytes)
    );
    let _ = memo.set(&tree.to_string(), &structure.to_string());
    done.insert(tree, structure);
    Ok(structure)
}
