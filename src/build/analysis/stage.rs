//! Stages: maps from paths to artifacts, and the checks every place that
//! builds one applies (syntactic conflicts after normalisation, and tree
//! conflicts: something staged below a non-directory).

use std::collections::{BTreeMap, HashSet};

use crate::build::artifact::{ArtifactDescription, IdScheme};
use crate::build::expr::path::to_normal_path;
use crate::build::graph::Tree;
use crate::build::value::{Map, Value};
use crate::digest::HashFunction;

/// The parent of a path the way `std::filesystem::path::parent_path` sees
/// it: `a/b` → `a`, `a/b/` → `a/b`, `a` → `` .
pub fn fs_parent(p: &str) -> &str {
    if let Some(stripped) = p.strip_suffix('/') {
        return stripped.trim_end_matches('/');
    }
    match p.rfind('/') {
        None => "",
        Some(0) => "",
        Some(i) => p[..i].trim_end_matches('/'),
    }
}

/// The first path at which the stage has a tree conflict, if any: `.`
/// together with other entries, an absolute or upwards path, or an entry
/// below another entry. `paths` must come in byte order (as map keys do),
/// so that parents are seen before their children.
pub fn tree_conflict<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let paths: Vec<&str> = paths.into_iter().collect();
    let mut blocked: HashSet<&str> = HashSet::with_capacity(paths.len());
    for &path in &paths {
        if path == "." && paths.len() > 1 {
            return Some(".".into());
        }
        if path.starts_with('/') {
            return Some(path.into());
        }
        if path == ".." || path.starts_with("../") {
            return Some(path.into());
        }
        if !blocked.insert(path) {
            return Some(path.into());
        }
        let mut p = fs_parent(path);
        while !p.is_empty() {
            if blocked.contains(p) {
                return Some(p.into());
            }
            p = fs_parent(p);
        }
    }
    None
}

/// Tree conflict of a map value's keys.
pub fn map_tree_conflict(stage: &Map) -> Option<String> {
    tree_conflict(stage.keys().map(String::as_str))
}

/// Normalises the keys of an artifact map. `Err(path)` when two keys land
/// on the same path with different artifacts.
pub fn normalise_keys(stage: &Map) -> Result<Map, String> {
    let mut out = Map::new();
    for (key, artifact) in stage {
        let path = to_normal_path(key);
        if let Some(existing) = out.get(&path) {
            if existing != artifact {
                return Err(path);
            }
            continue;
        }
        out.insert(path, artifact.clone());
    }
    Ok(out)
}

/// Normalises keys, the first key (in key order) winning on a collision,
/// as `TREE` does.
pub fn normalise_keys_first_wins(stage: &Map) -> Map {
    let mut out = Map::new();
    for (key, artifact) in stage {
        out.entry(to_normal_path(key))
            .or_insert_with(|| artifact.clone());
    }
    out
}

/// Adds `more` to `base`; later entries win.
pub fn overlay(base: &mut Map, more: &Map) {
    for (k, v) in more {
        base.insert(k.clone(), v.clone());
    }
}

/// Adds `more` to `base`; an equal key with a different artifact is a
/// conflict, reported by its path.
pub fn union_disjoint(base: &mut Map, more: &Map) -> Result<(), String> {
    for (k, v) in more {
        match base.get(k) {
            Some(existing) if existing != v => return Err(k.clone()),
            Some(_) => {}
            None => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// Whether every value of the map is an artifact.
pub fn is_artifact_map(v: &Value) -> bool {
    v.as_map()
        .is_some_and(|m| m.values().all(|a| a.as_artifact().is_some()))
}

/// Converts a stage value to artifact descriptions (keys unchanged).
pub fn stage_descriptions(
    stage: &Map,
    hash: HashFunction,
) -> Result<BTreeMap<String, ArtifactDescription>, String> {
    stage
        .iter()
        .map(|(k, v)| {
            ArtifactDescription::from_value(v, hash)
                .map(|a| (k.clone(), a))
                .map_err(|e| format!("{e}"))
        })
        .collect()
}

/// A tree from a stage whose keys are already normalised.
pub fn tree_of(stage: &Map, hash: HashFunction, scheme: IdScheme) -> Result<Tree, String> {
    Ok(Tree::new_in(scheme, stage_descriptions(stage, hash)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_follow_std_filesystem() {
        assert_eq!(fs_parent("a/b/c"), "a/b");
        assert_eq!(fs_parent("a/b/"), "a/b");
        assert_eq!(fs_parent("a"), "");
        assert_eq!(fs_parent("a//b"), "a");
    }

    #[test]
    fn tree_conflicts() {
        assert_eq!(tree_conflict(["a", "a/b"]), Some("a".into()));
        assert_eq!(tree_conflict([".", "x"]), Some(".".into()));
        assert_eq!(tree_conflict(["."]), None);
        assert_eq!(tree_conflict(["/x"]), Some("/x".into()));
        assert_eq!(tree_conflict(["../x"]), Some("../x".into()));
        assert_eq!(tree_conflict(["a-b", "a/b", "ab"]), None);
    }

    #[test]
    fn normalising_keys_detects_clashes() {
        let a = Value::string("a");
        let b = Value::string("b");
        let m: Map = [
            ("x/../y".to_string(), a.clone()),
            ("y".to_string(), a.clone()),
        ]
        .into();
        assert_eq!(normalise_keys(&m).unwrap().len(), 1);
        let m: Map = [("./y".to_string(), a), ("y".to_string(), b)].into();
        assert_eq!(normalise_keys(&m), Err("y".to_string()));
    }
}
