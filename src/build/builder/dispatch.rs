//! Endpoint dispatch: an action whose platform properties include those of
//! a dispatch entry runs at that entry's endpoint. Its inputs are copied
//! there first and its outputs copied back, so the rest of the build only
//! ever sees the main endpoint's CAS.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;

use super::tree::parse;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::remote::executor::RemoteExecutor;
use crate::remote::RemoteCas;

/// One entry of an endpoint-dispatch list, connected.
#[derive(Clone)]
pub struct DispatchTarget {
    /// Properties an action must have (all of them) to run there.
    pub properties: BTreeMap<String, String>,
    /// For messages only.
    pub address: String,
    pub cas: Arc<dyn RemoteCas>,
    pub executor: Arc<dyn RemoteExecutor>,
}

/// The first entry whose properties the action's properties include.
pub fn select<'a>(
    dispatch: &'a [DispatchTarget],
    properties: &BTreeMap<String, String>,
) -> Option<&'a DispatchTarget> {
    dispatch.iter().find(|d| {
        d.properties
            .iter()
            .all(|(k, v)| properties.get(k) == Some(v))
    })
}

/// Copies objects (trees with everything below them) from one CAS to
/// another; a tree the destination already has is taken as complete.
/// Uploads go deepest level first, so a tree never arrives before what it
/// names (native endpoints insist on that).
pub async fn copy_closure(
    from: &dyn RemoteCas,
    to: &dyn RemoteCas,
    roots: Vec<(Digest, ObjectKind)>,
) -> Result<(), String> {
    let hash = from.hash_function();
    let mut seen: HashSet<(String, bool)> = HashSet::new();
    let mut level = roots;
    let mut levels: Vec<Vec<(Digest, Vec<u8>)>> = Vec::new();
    while !level.is_empty() {
        level.retain(|(d, k)| seen.insert((d.hash.clone(), k.is_tree())));
        if level.is_empty() {
            break;
        }
        let missing: HashSet<String> = to
            .find_missing(level.iter().map(|(d, _)| d.clone()).collect())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let mut next = Vec::new();
        let mut uploads = Vec::new();
        for (d, kind) in level {
            if !missing.contains(&d.hash) {
                continue;
            }
            let data = from
                .read_blob(&d)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("object {} is not at the source endpoint", d.hash))?;
            if kind.is_tree() {
                for (_, entry) in parse(hash, &d, &data)? {
                    // Compatible trees hold symlink targets inline.
                    if entry.target.is_none() {
                        next.push((entry.digest, entry.kind));
                    }
                }
            }
            let mut d = d;
            d.size = data.len() as u64;
            uploads.push((d, data));
        }
        levels.push(uploads);
        level = next;
    }
    for uploads in levels.into_iter().rev() {
        if !uploads.is_empty() {
            to.upload_blobs(uploads).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// What an action result names: output files, output directories (native:
/// git trees; compatible: `Tree` messages, whose files are named too) and
/// the logs. Copied back from a dispatch endpoint to the main one.
pub async fn copy_result(
    from: &dyn RemoteCas,
    to: &dyn RemoteCas,
    result: &reapi::ActionResult,
) -> Result<(), String> {
    let hash = from.hash_function();
    let wire = |d: &Option<reapi::Digest>| -> Result<Option<Digest>, String> {
        match d {
            Some(d) if !d.hash.is_empty() => hash
                .digest_from_wire(d)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        }
    };
    let mut roots = Vec::new();
    for f in &result.output_files {
        if let Some(d) = wire(&f.digest)? {
            roots.push((d, ObjectKind::blob(f.is_executable)));
        }
    }
    for d in [&result.stdout_digest, &result.stderr_digest] {
        if let Some(d) = wire(d)? {
            roots.push((d, ObjectKind::File));
        }
    }
    for dir in &result.output_directories {
        let Some(d) = wire(&dir.tree_digest)? else {
            continue;
        };
        if hash == HashFunction::GitSha1 {
            roots.push((d, ObjectKind::Tree));
            continue;
        }
        // A Tree message: copy it as a blob, and every file it names.
        let data = from
            .read_blob(&d)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("output tree {} is not at the dispatch endpoint", d.hash))?;
        let tree = reapi::Tree::decode(data.as_slice()).map_err(|e| e.to_string())?;
        for directory in tree.root.iter().chain(tree.children.iter()) {
            for f in &directory.files {
                if let Some(fd) = wire(&f.digest)? {
                    roots.push((fd, ObjectKind::blob(f.is_executable)));
                }
            }
        }
        roots.push((d, ObjectKind::File));
    }
    copy_closure(from, to, roots).await
}
