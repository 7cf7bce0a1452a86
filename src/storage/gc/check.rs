//! `jserve gc --check`: verifies, generation by generation, the promises a
//! collection relies on, so that dropping any older generation never leaves
//! a broken answer behind:
//!
//! - a native tree has every object it names in its generation;
//! - an action-cache entry has its result, outputs (output trees in full)
//!   and its stdout/stderr blobs in its generation;
//! - a target-cache entry has its blob and every object it names in its
//!   generation;
//! - an archive or resolved-tree map entry names a tree that the
//!   generation's git cache (or a configured repository) holds.
//!
//! It reads only; run it under the shared locks, as a request would.

use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::{ActionResult, Digest, Tree};
use prost::Message;

use crate::digest::{HashFunction, ObjectKind};
use crate::storage::target_cache::{parse_object_info, CachedEntry};
use crate::storage::{BuildRoot, Cas, GenerationDir};

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub trees: u64,
    pub action_entries: u64,
    pub target_entries: u64,
    pub map_entries: u64,
    /// Each broken promise, in words.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checked {} trees, {} action-cache entries, {} target-cache entries, \
             {} tree-map entries: {} problem(s)",
            self.trees,
            self.action_entries,
            self.target_entries,
            self.map_entries,
            self.problems.len()
        )
    }
}

/// Checks every generation of `root`; `repositories` are the configured
/// ones (a tree map may name a tree only they hold).
pub fn check(root: &BuildRoot, repositories: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for generation in root.generation_dirs() {
        if !generation.path.is_dir() {
            continue;
        }
        if generation.repositories {
            check_tree_maps(&generation, repositories, &mut report);
        } else {
            for hash in [HashFunction::GitSha1, HashFunction::Sha256] {
                let dir = generation.path.join(hash.storage_dir_name());
                if dir.is_dir() {
                    // This generation alone: no reading through to others.
                    let cas = Cas::new(hash, dir.clone(), root.tmp_dir());
                    check_storage(&cas, &dir, &mut report);
                }
            }
        }
    }
    report
}

/// Files two levels below `dir` (`<2 hex>/<rest>`), with their ids.
fn sharded(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    let shards = std::fs::read_dir(dir).into_iter().flatten().flatten();
    shards.flat_map(|shard| {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(move |e| {
                let id = format!("{prefix}{}", e.file_name().to_string_lossy());
                (id, e.path())
            })
    })
}

fn check_storage(cas: &Cas, dir: &Path, report: &mut Report) {
    let hash = cas.hash_function();
    let at = |what: String| format!("{}: {what}", dir.display());
    if hash.is_native() {
        for (id, path) in sharded(&dir.join("cast")) {
            report.trees += 1;
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match crate::storage::trees::tree_children(hash, &id, &bytes) {
                Ok(children) => {
                    for (d, kind) in children {
                        if !cas.contains(kind, &d.hash) {
                            report
                                .problems
                                .push(at(format!("tree {id} lacks its entry {}", d.hash)));
                        }
                    }
                }
                Err(e) => report.problems.push(at(format!("tree {id}: {e}"))),
            }
        }
    }
    for (id, path) in sharded(&dir.join("ac")) {
        report.action_entries += 1;
        if let Err(e) = check_action_entry(cas, &path) {
            report
                .problems
                .push(at(format!("action-cache entry {id}: {e}")));
        }
    }
    let shards = std::fs::read_dir(dir.join("tc")).into_iter().flatten();
    for shard in shards.flatten() {
        for (id, path) in sharded(&shard.path()) {
            report.target_entries += 1;
            if let Err(e) = check_target_entry(cas, &shard.path(), &path) {
                report
                    .problems
                    .push(at(format!("target-cache entry {id}: {e}")));
            }
        }
    }
}

fn check_action_entry(cas: &Cas, path: &Path) -> Result<(), String> {
    let hash = cas.hash_function();
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (blob, _size): (String, u64) =
        serde_json::from_str(&text).map_err(|e| format!("unreadable: {e}"))?;
    let bytes = cas
        .read(ObjectKind::File, &blob)
        .map_err(|e| e.to_string())?
        .ok_or(format!("its result {blob} is missing"))?;
    let result = ActionResult::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let present = |kind: ObjectKind, d: &Option<Digest>, what: &str| match d {
        Some(d) if !d.hash.is_empty() && d.size_bytes != 0 => {
            let d = hash
                .digest_from_wire(d)
                .map_err(|e| format!("its {what}: {e}"))?;
            if cas.contains(kind, &d.hash) {
                Ok(())
            } else {
                Err(format!("its {what} {} is missing", d.hash))
            }
        }
        _ => Ok(()),
    };
    for f in &result.output_files {
        present(ObjectKind::blob(f.is_executable), &f.digest, "output")?;
    }
    for d in &result.output_directories {
        if hash.is_native() {
            present(ObjectKind::Tree, &d.tree_digest, "output tree")?;
            continue;
        }
        present(ObjectKind::File, &d.tree_digest, "output tree")?;
        let Some(digest) = &d.tree_digest else {
            continue;
        };
        let digest = hash.digest_from_wire(digest).map_err(|e| e.to_string())?;
        let Some(bytes) = cas
            .read(ObjectKind::File, &digest.hash)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let tree = Tree::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
        for dir in tree.root.iter().chain(tree.children.iter()) {
            for f in &dir.files {
                present(ObjectKind::blob(f.is_executable), &f.digest, "output")?;
            }
        }
    }
    present(ObjectKind::File, &result.stdout_digest, "stdout")?;
    present(ObjectKind::File, &result.stderr_digest, "stderr")
}

fn check_target_entry(cas: &Cas, shard: &Path, path: &Path) -> Result<(), String> {
    let hash = cas.hash_function();
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let blob = parse_object_info(&text, hash).ok_or(format!("unreadable: {text:?}"))?;
    let bytes = cas
        .read(ObjectKind::File, &blob.digest.hash)
        .map_err(|e| e.to_string())?
        .ok_or(format!("its value {blob} is missing"))?;
    let json = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let entry = CachedEntry { blob, json };
    for object in entry.objects(hash).map_err(|e| e.to_string())? {
        if !cas.contains(object.kind, &object.digest.hash) {
            return Err(format!("its artifact {object} is missing"));
        }
    }
    if let Ok(parsed) = entry.parse(hash) {
        for implied in &parsed.implied {
            let (prefix, rest) = implied.split_at(2.min(implied.len()));
            if !shard.join(prefix).join(rest).is_file() {
                return Err(format!("the entry {implied} it implies is missing"));
            }
        }
    }
    Ok(())
}

/// Map directories whose values are git trees the git cache keeps.
const TREE_MAPS: [&str; 2] = ["tree-map", "special-tree-map"];

fn check_tree_maps(generation: &GenerationDir, repositories: &[PathBuf], report: &mut Report) {
    let git_cache = git2::Repository::open_bare(generation.path.join("git")).ok();
    let others: Vec<git2::Repository> = repositories
        .iter()
        .filter_map(|p| git2::Repository::open(p).ok())
        .collect();
    let holds = |repo: &git2::Repository, oid: git2::Oid| {
        repo.odb()
            .and_then(|odb| odb.read_header(oid))
            .is_ok_and(|(_, kind)| kind == git2::ObjectType::Tree)
    };
    for map in TREE_MAPS {
        let kinds = std::fs::read_dir(generation.path.join(map))
            .into_iter()
            .flatten();
        for kind in kinds.flatten() {
            for entry in std::fs::read_dir(kind.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                report.map_entries += 1;
                let Ok(value) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let held = git2::Oid::from_str(value.trim())
                    .is_ok_and(|oid| git_cache.iter().chain(others.iter()).any(|r| holds(r, oid)));
                if !held {
                    report.problems.push(format!(
                        "{}: {map} entry {} names tree {} that no git cache holds",
                        generation.path.display(),
                        entry.path().display(),
                        value.trim()
                    ));
                }
            }
        }
    }
}
