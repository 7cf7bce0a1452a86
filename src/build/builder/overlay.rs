//! Tree overlays at build time: starting from the empty tree, each tree is
//! laid over the result so far. Entries of the newer tree win; equal
//! entries are fine; two trees under one name merge recursively; any other
//! clash keeps the newer entry, or fails the build when the overlay is
//! disjoint. Tree objects are read from the CAS; the results (and merged
//! subtrees) are written back to it.

use std::future::Future;
use std::pin::Pin;

use crate::digest::{Digest, ObjectKind};
use crate::remote::RemoteCas;

use super::tree::{parse, serialize, Entries, Entry};

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

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

/// `other` laid over `base`; `path` locates them for messages.
fn merge<'a>(
    cas: &'a dyn RemoteCas,
    base: Digest,
    other: Digest,
    disjoint: bool,
    path: String,
) -> Boxed<'a, Digest> {
    Box::pin(async move {
        if base.hash == other.hash {
            return Ok(base);
        }
        let base_entries = read_entries(cas, &base).await?;
        let mut merged = read_entries(cas, &other).await?;
        for (name, entry) in base_entries {
            let Some(newer) = merged.get(&name) else {
                merged.insert(name, entry);
                continue;
            };
            if newer.same_object(&entry) {
                continue;
            }
            if newer.kind.is_tree() && entry.kind.is_tree() {
                let sub = merge(
                    cas,
                    entry.digest,
                    newer.digest.clone(),
                    disjoint,
                    child_path(&path, &name),
                )
                .await?;
                merged.insert(
                    name,
                    Entry {
                        kind: ObjectKind::Tree,
                        digest: sub,
                        target: None,
                    },
                );
                continue;
            }
            if disjoint {
                return Err(format!(
                    "conflict at {:?}: {} and {}",
                    child_path(&path, &name),
                    show(&entry),
                    show(newer)
                ));
            }
        }
        write_entries(cas, &merged).await
    })
}

/// The overlay of `trees`, later ones over earlier ones.
pub async fn overlay(
    cas: &dyn RemoteCas,
    trees: &[Digest],
    disjoint: bool,
) -> Result<Digest, String> {
    let mut result = write_entries(cas, &Entries::new()).await?;
    for tree in trees {
        result = merge(cas, result, tree.clone(), disjoint, String::new()).await?;
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
