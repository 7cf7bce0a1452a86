//! The repository key and the target-cache key of an export target, byte for
//! byte as justbuild computes them.
//!
//! Repository key: every content-fixed repository gets a base description
//! (its four roots as `["git tree"(" ignore-special"), tree]` and its three
//! file names). Repositories are merged by bisimulation over the bindings
//! graph (same base description, same binding names, bindings to merged
//! repositories; cycles included). From the requested repository a
//! depth-first walk numbers the merged repositories `"0"`, `"1"`, … in
//! pre-order, visiting bindings in lexicographic order of the local name;
//! each node is its base description plus `"bindings": {local: id}`. The
//! graph, dumped with indent 2, is a CAS blob; its digest is the key. It
//! exists only if every repository reached is content-fixed.
//!
//! Target-cache key: `{"effective_config": <compact config>, "repo_key":
//! <hex>, "target_name": <compact [module, name]>}` dumped with indent 2; its
//! CAS digest (non-executable blob) is the key.

use crate::build::json::{dump_compact, dump_pretty};
use crate::build::names::NamedTarget;
use crate::build::repo_config::RepositoryConfig;
use crate::digest::{Digest, HashFunction, ObjectKind};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// A JSON text stored in the CAS and its digest there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBlob {
    pub json: String,
    pub digest: Digest,
}

impl KeyBlob {
    fn new(json: String, hf: HashFunction) -> KeyBlob {
        let digest = hf.digest_bytes(ObjectKind::File, json.as_bytes());
        KeyBlob { json, digest }
    }

    /// The hex hash of the digest.
    pub fn hash(&self) -> &str {
        &self.digest.hash
    }
}

/// Why there is no repository key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoKeyError {
    #[error("unknown repository {0}")]
    UnknownRepository(String),
    #[error("repository {0} is not content-fixed")]
    NotContentFixed(String),
}

/// A state's class and, per binding, the class of the bound state (or the
/// name of a bound repository that is not a state).
type Signature<'a> = (usize, Vec<Result<usize, &'a str>>);

/// For every content-fixed repository, the canonical representative of its
/// bisimulation class (the lexicographically least member). Repositories
/// that are not content-fixed are left out: a binding to one counts as a
/// binding to a distinct state named like it, so two bindings to the same
/// such repository agree and bindings to different ones do not (as in the
/// reference's minimiser).
pub fn bisimulation(config: &RepositoryConfig) -> BTreeMap<String, String> {
    // Initial partition: base description text and binding names.
    let states: Vec<(&String, String, Vec<&String>)> = config
        .repositories
        .iter()
        .filter_map(|(name, info)| {
            let desc = info.base_description()?;
            Some((name, dump_compact(&desc), info.bindings.keys().collect()))
        })
        .collect();
    let index: HashMap<&str, usize> = states
        .iter()
        .enumerate()
        .map(|(i, (n, _, _))| (n.as_str(), i))
        .collect();
    let mut class: Vec<usize> = {
        let mut ids: HashMap<(&str, &Vec<&String>), usize> = HashMap::new();
        states
            .iter()
            .map(|(_, desc, syms)| {
                let next = ids.len();
                *ids.entry((desc.as_str(), syms)).or_insert(next)
            })
            .collect()
    };
    // Refine until stable: a state's signature is its class and, per binding
    // in order, the target's class (or the target's name if it is no state).
    loop {
        let mut ids: HashMap<Signature, usize> = HashMap::new();
        let next_class: Vec<usize> = states
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                let targets = config.repositories[name.as_str()]
                    .bindings
                    .values()
                    .map(|g| match index.get(g.as_str()) {
                        Some(&j) => Ok(class[j]),
                        None => Err(g.as_str()),
                    })
                    .collect();
                let next = ids.len();
                *ids.entry((class[i], targets)).or_insert(next)
            })
            .collect();
        let stable = ids.len() == class.iter().collect::<std::collections::HashSet<_>>().len();
        class = next_class;
        if stable {
            break;
        }
    }
    let mut representative: HashMap<usize, &String> = HashMap::new();
    for (i, (name, _, _)) in states.iter().enumerate() {
        // `states` is in lexicographic order, so the first member wins.
        representative.entry(class[i]).or_insert(name);
    }
    states
        .iter()
        .enumerate()
        .map(|(i, (name, _, _))| ((*name).clone(), representative[&class[i]].clone()))
        .collect()
}

/// The repository-description graph of `repo` (the JSON that is hashed).
pub fn repository_graph(config: &RepositoryConfig, repo: &str) -> Result<Value, RepoKeyError> {
    let canon = bisimulation(config);
    let mut graph = Map::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    add_to_graph(config, &canon, &mut graph, &mut ids, repo)?;
    Ok(Value::Object(graph))
}

fn add_to_graph(
    config: &RepositoryConfig,
    canon: &BTreeMap<String, String>,
    graph: &mut Map<String, Value>,
    ids: &mut HashMap<String, String>,
    repo: &str,
) -> Result<String, RepoKeyError> {
    let unique = canon.get(repo).map(String::as_str).unwrap_or(repo);
    if let Some(id) = ids.get(unique) {
        return Ok(id.clone());
    }
    let info = config
        .info(unique)
        .ok_or_else(|| RepoKeyError::UnknownRepository(unique.to_string()))?;
    let Some(Value::Object(mut desc)) = info.base_description() else {
        return Err(RepoKeyError::NotContentFixed(unique.to_string()));
    };
    let id = ids.len().to_string();
    ids.insert(unique.to_string(), id.clone());
    let mut bindings = Map::new();
    for (local, global) in &info.bindings {
        let target = add_to_graph(config, canon, graph, ids, global)?;
        bindings.insert(local.clone(), Value::from(target));
    }
    desc.insert("bindings".into(), Value::Object(bindings));
    graph.insert(id.clone(), Value::Object(desc));
    Ok(id)
}

/// The repository key of `repo`: the pretty-printed graph and its CAS digest.
pub fn repository_key(
    config: &RepositoryConfig,
    repo: &str,
    hf: HashFunction,
) -> Result<KeyBlob, RepoKeyError> {
    let graph = repository_graph(config, repo)?;
    Ok(KeyBlob::new(dump_pretty(&graph), hf))
}

/// The target-cache key of an export target, given the hex hash of its
/// repository's key, its module and name, and its effective configuration
/// (a JSON object holding every flexible variable, `null` for unset ones).
pub fn target_cache_key(
    repo_key_hash: &str,
    module: &str,
    name: &str,
    effective_config: &Value,
    hf: HashFunction,
) -> KeyBlob {
    let target_name = Value::Array(vec![Value::from(module), Value::from(name)]);
    let mut m = Map::new();
    m.insert("repo_key".into(), Value::from(repo_key_hash));
    m.insert(
        "target_name".into(),
        Value::from(dump_compact(&target_name)),
    );
    m.insert(
        "effective_config".into(),
        Value::from(dump_compact(effective_config)),
    );
    KeyBlob::new(dump_pretty(&Value::Object(m)), hf)
}

/// Both keys of the export target `target` (whose repository must be
/// content-fixed, with everything it binds): `(repository key, target-cache
/// key)`.
pub fn export_target_key(
    config: &RepositoryConfig,
    target: &NamedTarget,
    effective_config: &Value,
    hf: HashFunction,
) -> Result<(KeyBlob, KeyBlob), RepoKeyError> {
    let repo_key = repository_key(config, &target.repository, hf)?;
    let key = target_cache_key(
        repo_key.hash(),
        &target.module,
        &target.name,
        effective_config,
        hf,
    );
    Ok((repo_key, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

    fn config(v: Value) -> RepositoryConfig {
        RepositoryConfig::from_json(&v, None).unwrap()
    }

    #[test]
    fn bindings_to_repositories_that_are_not_content_fixed() {
        // Such repositories are no states: bindings to the same one agree,
        // bindings to different ones (even with equal content) do not.
        let c = config(json!({"repositories": {
            "x": {"workspace_root": ["git tree", T, "/r"], "bindings": {"f": "f1"}},
            "y": {"workspace_root": ["git tree", T, "/r"], "bindings": {"f": "f1"}},
            "z": {"workspace_root": ["git tree", T, "/r"], "bindings": {"f": "f2"}},
            "f1": {"workspace_root": ["file", "/f"]},
            "f2": {"workspace_root": ["file", "/f"]}}}));
        let canon = bisimulation(&c);
        assert_eq!(canon.len(), 3, "only content-fixed repositories are states");
        assert_eq!(canon["x"], "x");
        assert_eq!(canon["y"], "x", "the least name represents its class");
        assert_eq!(canon["z"], "z");
        assert_eq!(
            repository_key(&c, "y", HashFunction::GitSha1).unwrap_err(),
            RepoKeyError::NotContentFixed("f1".into())
        );
    }

    #[test]
    fn ids_are_assigned_in_pre_order() {
        // 0 -a-> 1 -a-> 2, 0 -b-> 3; 2 binds back to 0.
        let c = config(json!({"repositories": {
            "m": {"workspace_root": ["git tree", T, "/r"], "bindings": {"b": "q", "a": "p"}},
            "p": {"workspace_root": ["git tree", "1111111111111111111111111111111111111111"], "bindings": {"a": "pp"}},
            "pp": {"workspace_root": ["git tree", "2222222222222222222222222222222222222222"], "bindings": {"up": "m"}},
            "q": {"workspace_root": ["git tree", "3333333333333333333333333333333333333333"]}}}));
        let g = repository_graph(&c, "m").unwrap();
        assert_eq!(g["0"]["bindings"], json!({"a": "1", "b": "3"}));
        assert_eq!(g["1"]["bindings"], json!({"a": "2"}));
        assert_eq!(g["2"]["bindings"], json!({"up": "0"}));
        assert_eq!(g["3"]["bindings"], json!({}));
        // keys are sorted as strings in the dump: "10" would follow "1"
        assert!(repository_key(&c, "m", HashFunction::Sha256)
            .unwrap()
            .json
            .starts_with("{\n  \"0\": {\n    \"bindings\": {\n      \"a\": \"1\","));
    }
}
