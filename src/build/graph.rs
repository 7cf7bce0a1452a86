//! The action graph the analysis produces: actions, blobs, trees and tree
//! overlays, in the shapes of just-graph-file(5).
//!
//! Actions are identified by a SHA-256 over their normalised description;
//! artifacts produced by an action name it as `ACTION(id, path)`. Equal
//! descriptions give equal ids, which is what makes staging-conflict checks
//! and unions intensional. The ids match the reference's, so a graph dumped
//! by jserve can be compared with `just analyse --dump-plain-graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};
use sha2::{Digest as _, Sha256};

use crate::build::artifact::{ArtifactDescription, ArtifactError, IdScheme};
use crate::build::json::dump_compact;
use crate::build::sources::SourceTree;
use crate::build::value::{Map, Value};
use crate::digest::HashFunction;

/// A tree built by the analysis: normalised path → artifact.
pub type Tree = SourceTree;

/// One action of the graph: its description and the id derived from it.
/// Derefs to the description, so `node.outputs` etc. read naturally.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionNode {
    pub id: String,
    pub spec: ActionSpec,
}

impl std::ops::Deref for ActionNode {
    type Target = ActionSpec;
    fn deref(&self) -> &ActionSpec {
        &self.spec
    }
}

/// Everything an action needs except its id, which is derived.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionSpec {
    /// Output files relative to the action root; normalised, sorted, unique.
    pub outputs: Vec<String>,
    /// Output directories, likewise.
    pub output_dirs: Vec<String>,
    pub command: Vec<String>,
    /// As written by the rule: `""` and `"."` are different actions.
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub may_fail: Option<String>,
    pub no_cache: bool,
    pub timeout_scale: f64,
    pub execution_properties: BTreeMap<String, String>,
    pub inputs: BTreeMap<String, ArtifactDescription>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Hash of a list of strings: SHA-256 over the raw SHA-256 of each entry.
fn list_hash<S: AsRef<str>>(items: &[S]) -> [u8; 32] {
    let mut h = Sha256::new();
    for s in items {
        h.update(sha256(s.as_ref().as_bytes()));
    }
    h.finalize().into()
}

fn string_map_value(map: &BTreeMap<String, String>) -> Value {
    Value::map(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::string(v.clone())))
            .collect::<Map>(),
    )
}

/// An artifact map as a language value (its hash is part of action ids).
pub fn stage_value(stage: &BTreeMap<String, ArtifactDescription>) -> Value {
    Value::map(
        stage
            .iter()
            .map(|(k, v)| (k.clone(), v.to_value()))
            .collect::<Map>(),
    )
}

/// The `{:a}` hex-float text of the {fmt} library (C's `printf("%a")`
/// except for zero), as the action id needs it.
pub fn hex_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x.is_infinite() {
        return format!("{sign}inf");
    }
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i64;
    let mantissa = bits & ((1u64 << 52) - 1);
    if exp_bits == 0 && mantissa == 0 {
        // {fmt} takes zero through its subnormal path (printf says 0x0p+0).
        return format!("{sign}0x0p-1022");
    }
    let (lead, exp) = if exp_bits == 0 {
        (0, -1022)
    } else {
        (1, exp_bits - 1023)
    };
    let digits = format!("{mantissa:013x}");
    let digits = digits.trim_end_matches('0');
    let frac = if digits.is_empty() {
        String::new()
    } else {
        format!(".{digits}")
    };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}0x{lead}{frac}p{esign}{}", exp.abs())
}

impl ActionSpec {
    /// The action id: equal for equal descriptions, as the reference
    /// computes it.
    pub fn id(&self, scheme: IdScheme) -> String {
        let mut h = Sha256::new();
        if scheme == IdScheme::Current {
            h.update(b"ACTION:");
        }
        h.update(list_hash(&self.outputs));
        h.update(list_hash(&self.output_dirs));
        h.update(list_hash(&self.command));
        h.update(list_hash(&[&self.cwd]));
        h.update(string_map_value(&self.env).hash());
        match &self.may_fail {
            Some(msg) => h.update(list_hash(&[msg])),
            None => h.update(list_hash::<&str>(&[])),
        }
        h.update(if self.no_cache { b"N" } else { b"Y" });
        let scale = hex_float(self.timeout_scale);
        let scale = if self.timeout_scale.is_sign_negative() {
            scale
        } else {
            format!("+{scale}")
        };
        h.update(format!("{scale:>24}").as_bytes());
        h.update(string_map_value(&self.execution_properties).hash());
        h.update(stage_value(&self.inputs).hash());
        hex::encode(h.finalize())
    }

    pub fn into_node(self, scheme: IdScheme) -> ActionNode {
        ActionNode {
            id: self.id(scheme),
            spec: self,
        }
    }
}

fn strings_json(items: &[String]) -> Json {
    Json::Array(items.iter().cloned().map(Json::String).collect())
}

fn string_map_json(map: &BTreeMap<String, String>) -> Json {
    Json::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

/// Why a graph file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("graph: {0}")]
    Malformed(String),
    #[error("graph: {0}")]
    Artifact(#[from] ArtifactError),
}

fn malformed(msg: impl Into<String>) -> GraphError {
    GraphError::Malformed(msg.into())
}

impl ActionNode {
    /// The description as just-graph-file(5) has it (defaults omitted).
    pub fn to_json(&self) -> Json {
        let mut obj = JsonMap::new();
        obj.insert("command".into(), strings_json(&self.command));
        if !self.outputs.is_empty() {
            obj.insert("output".into(), strings_json(&self.outputs));
        }
        if !self.output_dirs.is_empty() {
            obj.insert("output_dirs".into(), strings_json(&self.output_dirs));
        }
        if !self.inputs.is_empty() {
            obj.insert(
                "input".into(),
                Json::Object(
                    self.inputs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect(),
                ),
            );
        }
        if !self.env.is_empty() {
            obj.insert("env".into(), string_map_json(&self.env));
        }
        if let Some(msg) = &self.may_fail {
            obj.insert("may_fail".into(), Json::String(msg.clone()));
        }
        if self.no_cache {
            obj.insert("no_cache".into(), Json::Bool(true));
        }
        if self.timeout_scale != 1.0 {
            obj.insert(
                "timeout scaling".into(),
                serde_json::Number::from_f64(self.timeout_scale)
                    .map(Json::Number)
                    .unwrap_or(Json::Null),
            );
        }
        if !self.cwd.is_empty() {
            obj.insert("cwd".into(), Json::String(self.cwd.clone()));
        }
        if !self.execution_properties.is_empty() {
            obj.insert(
                "execution properties".into(),
                string_map_json(&self.execution_properties),
            );
        }
        Json::Object(obj)
    }

    /// Reads one entry of a graph file's `"actions"`.
    pub fn from_json(id: &str, json: &Json, hash: HashFunction) -> Result<ActionNode, GraphError> {
        let obj = json
            .as_object()
            .ok_or_else(|| malformed(format!("action {id} is not an object")))?;
        let strings = |key: &str| -> Result<Vec<String>, GraphError> {
            match obj.get(key) {
                None => Ok(Vec::new()),
                Some(Json::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            malformed(format!("action {id}: {key} must be a list of strings"))
                        })
                    })
                    .collect(),
                Some(_) => Err(malformed(format!(
                    "action {id}: {key} must be a list of strings"
                ))),
            }
        };
        let string_map = |key: &str| -> Result<BTreeMap<String, String>, GraphError> {
            match obj.get(key) {
                None | Some(Json::Null) => Ok(BTreeMap::new()),
                Some(Json::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_str()
                            .map(|s| (k.clone(), s.to_string()))
                            .ok_or_else(|| {
                                malformed(format!("action {id}: {key} values must be strings"))
                            })
                    })
                    .collect(),
                Some(_) => Err(malformed(format!("action {id}: {key} must be a map"))),
            }
        };
        let command = strings("command")?;
        if command.is_empty() {
            return Err(malformed(format!("action {id}: empty command")));
        }
        let outputs = strings("output")?;
        let output_dirs = strings("output_dirs")?;
        if outputs.is_empty() && output_dirs.is_empty() {
            return Err(malformed(format!("action {id}: no outputs")));
        }
        let mut inputs = BTreeMap::new();
        match obj.get("input") {
            None => {}
            Some(Json::Object(m)) => {
                for (path, art) in m {
                    inputs.insert(path.clone(), ArtifactDescription::from_json(art, hash)?);
                }
            }
            Some(_) => return Err(malformed(format!("action {id}: input must be a map"))),
        }
        let cwd = match obj.get("cwd") {
            None => String::new(),
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(malformed(format!("action {id}: cwd must be a string"))),
        };
        let may_fail = match obj.get("may_fail") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed(format!("action {id}: may_fail must be a string"))),
        };
        let no_cache = match obj.get("no_cache") {
            None => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(malformed(format!("action {id}: no_cache must be a bool"))),
        };
        let timeout_scale = match obj.get("timeout scaling") {
            None | Some(Json::Null) => 1.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| malformed(format!("action {id}: timeout scaling not a number")))?,
        };
        Ok(ActionNode {
            id: id.to_string(),
            spec: ActionSpec {
                outputs,
                output_dirs,
                command,
                cwd,
                env: string_map("env")?,
                may_fail,
                no_cache,
                timeout_scale,
                execution_properties: string_map("execution properties")?,
                inputs,
            },
        })
    }
}

/// An ordered overlay of trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOverlay {
    pub id: String,
    /// `TREE` artifacts, later ones winning (or conflicting, if disjoint).
    pub trees: Vec<ArtifactDescription>,
    pub disjoint: bool,
}

impl TreeOverlay {
    pub fn new(scheme: IdScheme, trees: Vec<ArtifactDescription>, disjoint: bool) -> TreeOverlay {
        let mut overlay = TreeOverlay {
            id: String::new(),
            trees,
            disjoint,
        };
        let text = dump_compact(&overlay.to_json());
        let prefix = match scheme {
            IdScheme::Current => "TREE_OVERLAY:",
            IdScheme::Legacy => "",
        };
        overlay.id = hex::encode(sha256(format!("{prefix}{text}").as_bytes()));
        overlay
    }

    pub fn to_json(&self) -> Json {
        let mut obj = JsonMap::new();
        obj.insert(
            "trees".into(),
            Json::Array(
                self.trees
                    .iter()
                    .map(ArtifactDescription::to_json)
                    .collect(),
            ),
        );
        obj.insert("disjoint".into(), Json::Bool(self.disjoint));
        Json::Object(obj)
    }

    pub fn from_json(id: &str, json: &Json, hash: HashFunction) -> Result<TreeOverlay, GraphError> {
        let disjoint = json
            .get("disjoint")
            .and_then(Json::as_bool)
            .ok_or_else(|| malformed(format!("tree overlay {id}: disjoint missing")))?;
        let trees = json
            .get("trees")
            .and_then(Json::as_array)
            .ok_or_else(|| malformed(format!("tree overlay {id}: trees missing")))?
            .iter()
            .map(|t| ArtifactDescription::from_json(t, hash))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TreeOverlay {
            id: id.to_string(),
            trees,
            disjoint,
        })
    }
}

/// A whole action graph, deduplicated by id; iteration in id order.
#[derive(Clone, Debug, Default)]
pub struct ActionGraph {
    pub actions: BTreeMap<String, Arc<ActionNode>>,
    pub blobs: BTreeSet<String>,
    pub trees: BTreeMap<String, Arc<Tree>>,
    pub tree_overlays: BTreeMap<String, Arc<TreeOverlay>>,
}

impl ActionGraph {
    /// The graph as `just analyse --dump-plain-graph` writes it.
    pub fn to_json(&self) -> Json {
        let mut obj = JsonMap::new();
        obj.insert(
            "actions".into(),
            Json::Object(
                self.actions
                    .iter()
                    .map(|(id, a)| (id.clone(), a.to_json()))
                    .collect(),
            ),
        );
        obj.insert(
            "blobs".into(),
            Json::Array(self.blobs.iter().cloned().map(Json::String).collect()),
        );
        obj.insert(
            "trees".into(),
            Json::Object(
                self.trees
                    .iter()
                    .map(|(id, t)| (id.clone(), t.to_json()))
                    .collect(),
            ),
        );
        if !self.tree_overlays.is_empty() {
            obj.insert(
                "tree_overlays".into(),
                Json::Object(
                    self.tree_overlays
                        .iter()
                        .map(|(id, t)| (id.clone(), t.to_json()))
                        .collect(),
                ),
            );
        }
        Json::Object(obj)
    }

    /// Reads a graph file (just-graph-file(5); `origins` are ignored).
    pub fn from_json(json: &Json, hash: HashFunction) -> Result<ActionGraph, GraphError> {
        let mut graph = ActionGraph::default();
        let section = |key: &str| -> Result<Option<&JsonMap<String, Json>>, GraphError> {
            match json.get(key) {
                None => Ok(None),
                Some(Json::Object(m)) => Ok(Some(m)),
                Some(_) => Err(malformed(format!("{key} must be an object"))),
            }
        };
        for (id, desc) in section("actions")?.into_iter().flatten() {
            graph
                .actions
                .insert(id.clone(), Arc::new(ActionNode::from_json(id, desc, hash)?));
        }
        match json.get("blobs") {
            None => {}
            Some(Json::Array(items)) => {
                for b in items {
                    let s = b
                        .as_str()
                        .ok_or_else(|| malformed("blobs must be strings"))?;
                    graph.blobs.insert(s.to_string());
                }
            }
            Some(_) => return Err(malformed("blobs must be a list")),
        }
        for (id, desc) in section("trees")?.into_iter().flatten() {
            let entries = desc
                .as_object()
                .ok_or_else(|| malformed(format!("tree {id} is not an object")))?
                .iter()
                .map(|(p, a)| Ok((p.clone(), ArtifactDescription::from_json(a, hash)?)))
                .collect::<Result<BTreeMap<_, _>, GraphError>>()?;
            let mut tree = Tree::new(entries);
            // Keep the id the file uses (a 1.5 client's ids equal ours).
            tree.id = id.clone();
            graph.trees.insert(id.clone(), Arc::new(tree));
        }
        for (id, desc) in section("tree_overlays")?.into_iter().flatten() {
            graph.tree_overlays.insert(
                id.clone(),
                Arc::new(TreeOverlay::from_json(id, desc, hash)?),
            );
        }
        Ok(graph)
    }

    /// Adds another graph's nodes.
    pub fn merge(&mut self, other: &ActionGraph) {
        for (k, v) in &other.actions {
            self.actions.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.blobs.extend(other.blobs.iter().cloned());
        for (k, v) in &other.trees {
            self.trees.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &other.tree_overlays {
            self.tree_overlays
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_floats_print_like_printf() {
        assert_eq!(hex_float(1.0), "0x1p+0");
        assert_eq!(hex_float(2.5), "0x1.4p+1");
        assert_eq!(hex_float(0.5), "0x1p-1");
        assert_eq!(hex_float(0.0), "0x0p-1022");
        assert_eq!(hex_float(-3.0), "-0x1.8p+1");
        assert_eq!(hex_float(0.1), "0x1.999999999999ap-4");
        assert_eq!(hex_float(f64::from_bits(1)), "0x0.0000000000001p-1022");
    }

    fn spec() -> ActionSpec {
        ActionSpec {
            outputs: vec!["b.txt".into()],
            output_dirs: vec!["d".into()],
            command: vec![
                "sh".into(),
                "-c".into(),
                "cat a.txt > b.txt\nmkdir -p d\n".into(),
            ],
            cwd: "sub".into(),
            env: BTreeMap::new(),
            may_fail: None,
            no_cache: false,
            timeout_scale: 1.0,
            execution_properties: BTreeMap::new(),
            inputs: [
                (
                    "a.txt".to_string(),
                    ArtifactDescription::known(
                        "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0",
                        5,
                        crate::digest::ObjectKind::File,
                    ),
                ),
                (
                    "sub".to_string(),
                    ArtifactDescription::tree(
                        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                    ),
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn action_id_matches_the_reference() {
        // Recorded with `just analyse --dump-plain-graph` (1.5.1) on a generic
        // target with these fields.
        assert_eq!(
            spec().id(IdScheme::Legacy),
            "e0842bcb2ebe7d2bfc0e10c17c7d26bc4a65b249c07a2e8ac94fcf95b1c64cbf"
        );
        let mut other = spec();
        other.cwd = "sub/.".into();
        assert_ne!(other.id(IdScheme::Legacy), spec().id(IdScheme::Legacy));
        assert_ne!(spec().id(IdScheme::Current), spec().id(IdScheme::Legacy));
    }

    #[test]
    fn empty_tree_id_matches_the_reference() {
        // 1.5.1 hashes the bare description: sha256("{}").
        assert_eq!(
            Tree::new_in(IdScheme::Legacy, BTreeMap::new()).id,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn graphs_round_trip_through_json() {
        let mut g = ActionGraph::default();
        let a = Arc::new(spec().into_node(IdScheme::Current));
        g.actions.insert(a.id.clone(), a);
        g.blobs.insert("hello".into());
        let t = Tree::new(BTreeMap::new());
        g.trees.insert(t.id.clone(), Arc::new(t));
        let o = TreeOverlay::new(
            IdScheme::Current,
            vec![ArtifactDescription::tree("x")],
            true,
        );
        g.tree_overlays.insert(o.id.clone(), Arc::new(o));
        let json = g.to_json();
        let back = ActionGraph::from_json(&json, HashFunction::GitSha1).unwrap();
        assert_eq!(back.to_json(), json);
        assert!(
            ActionGraph::from_json(&serde_json::json!({"actions": 1}), HashFunction::GitSha1)
                .is_err()
        );
    }
}
