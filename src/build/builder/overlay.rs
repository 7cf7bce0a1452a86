//! Tree overlays at build time: starting from the empty tree, each tree is
//! laid over the result so far. Entries of the newer tree win; equal
//! entries are fine; two trees under one name merge, level by level; any other
//! clash keeps the newer entry, or fails the build when the overlay is
//! disjoint. Tree objects are read from the CAS; the results (and merged
//! subtrees) are written back to it.

use crate::digest::{Digest, ObjectKind};
use crate::remote::RemoteCas;

use super::tree::{parse, serialize, Entries, Entry};

/// `[hash:size:kind]`, as objects are shown in messages.
fn show(entry: &Entry) -> String {
    format!(
        "[{}:{}:{}]",
        entry.digest.hash,
        entry.digest.size,
        entry.kind.type_char()
    )
}

async fn read_entries(cas: &dyn RemoteCas, digest: &Digest) -> Result<Entries, String> {
    let hash = cas.hash_function();
    let data = cas
        .read_blob(digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("tree {} is not in the CAS", digest.hash))?;
    parse(hash, digest, &data)
}

/// Writes a tree object to the CAS unless it is there already.
pub async fn write_entries(cas: &dyn RemoteCas, entries: &Entries) -> Result<Digest, String> {
    let blob = serialize(cas.hash_function(), entries)?;
    let missing = cas
        .find_missing(vec![blob.digest.clone()])
        .await
        .map_err(|e| e.to_string())?;
    if !missing.is_empty() {
        cas.upload_blobs(vec![(blob.digest.clone(), blob.data)])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(blob.digest)
}

fn child_path(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// One tree pair being merged: the older entries still to lay under the
/// newer ones, and the subtree merge it waits for, if any.
struct Frame {
    older: std::collections::btree_map::IntoIter<Vec<u8>, Entry>,
    merged: Entries,
    path: String,
    waiting: Option<Vec<u8>>,
}

impl Frame {
    async fn open(
        cas: &dyn RemoteCas,
        base: &Digest,
        other: &Digest,
        path: String,
    ) -> Result<Frame, String> {
        Ok(Frame {
            older: read_entries(cas, base).await?.into_iter(),
            merged: read_entries(cas, other).await?,
            path,
            waiting: None,
        })
    }
}

/// `other` laid over `base`. Subtrees under one name merge depth first on an
/// explicit stack: the trees are the client's and may nest deeper than a
/// task's stack would allow recursion to go.
async fn merge(
    cas: &dyn RemoteCas,
    base: Digest,
    other: Digest,
    disjoint: bool,
) -> Result<Digest, String> {
    if base.hash == other.hash {
        return Ok(base);
    }
    let mut stack = vec![Frame::open(cas, &base, &other, String::new()).await?];
    let mut finished: Option<Digest> = None;
    loop {
        let top = stack.last_mut().expect("a frame is open");
        if let (Some(name), Some(digest)) = (top.waiting.take(), finished.take()) {
            let entry = Entry {
                kind: ObjectKind::Tree,
                digest,
                target: None,
            };
            top.merged.insert(name, entry);
        }
        let mut descend = None;
        for (name, entry) in top.older.by_ref() {
            let Some(newer) = top.merged.get(&name) else {
                top.merged.insert(name, entry);
                continue;
            };
            if newer.same_object(&entry) {
                continue;
            }
            if newer.kind.is_tree() && entry.kind.is_tree() {
                descend = Some((name, entry.digest, newer.digest.clone()));
                break;
            }
            if disjoint {
                return Err(format!(
                    "conflict at {:?}: {} and {}",
                    child_path(&top.path, &name),
                    show(&entry),
                    show(newer)
                ));
            }
        }
        match descend {
            Some((name, older, newer)) => {
                let path = child_path(&top.path, &name);
                top.waiting = Some(name);
                if stack.len() >= crate::tree_walk::MAX_TREE_DEPTH {
                    return Err(format!(
                        "trees deeper than {} levels at {path:?}",
                        crate::tree_walk::MAX_TREE_DEPTH
                    ));
                }
                stack.push(Frame::open(cas, &older, &newer, path).await?);
            }
            None => {
                let frame = stack.pop().expect("a frame is open");
                let digest = write_entries(cas, &frame.merged).await?;
                if stack.is_empty() {
                    return Ok(digest);
                }
                finished = Some(digest);
            }
        }
    }
}

/// The overlay of `trees`, later ones over earlier ones.
pub async fn overlay(
    cas: &dyn RemoteCas,
    trees: &[Digest],
    disjoint: bool,
) -> Result<Digest, String> {
    let mut result = write_entries(cas, &Entries::new()).await?;
    for tree in trees {
        result = merge(cas, result, tree.clone(), disjoint).await?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path() {
        assert_eq!(child_path("", b"a"), "a");
        assert_eq!(child_path("a/b", b"c"), "a/b/c");
    }
}
