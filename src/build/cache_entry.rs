//! Target-cache entries (the value side of the target-level cache), byte for
//! byte as justbuild writes them.
//!
//! An entry is a JSON object, stored in the CAS pretty-printed (indent 2):
//! `"artifacts"` and `"runfiles"` map paths to `KNOWN` artifact descriptions;
//! `"provides"` is the provides map as a DAG table (`"entry"`, `"nodes"`,
//! `"provided_artifacts"`, `"provided_nodes"`, `"provided_results"`) in which
//! every distinct subvalue appears once under the hex of its value hash; and
//! `"implied export targets"` lists the key hashes of the export targets the
//! entry depends on (its own included), sorted, omitted when empty.
//!
//! The DAG ids are hashes of the values as analysed, i.e. *before* non-KNOWN
//! artifacts are replaced by what the build made of them, so an entry read
//! back and written again only reproduces the same bytes when the original
//! contained no non-KNOWN artifacts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde_json::{Map as JsonMap, Value as Json};

use crate::build::artifact::{ArtifactDescription, ArtifactError};
use crate::build::value::{Kind, Node, TargetResult, Value};
use crate::digest::{Digest, HashFunction, ObjectKind};

/// Key of the implied export targets in an entry.
const IMPLIED: &str = "implied export targets";

/// Why an entry cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("target-cache entry is not JSON: {0}")]
    NotJson(String),
    #[error("malformed target-cache entry: {0}")]
    Malformed(String),
    #[error("invalid artifact in target-cache entry at {at}: {source}")]
    Artifact {
        at: String,
        #[source]
        source: ArtifactError,
    },
    #[error("target-cache entry names the non-KNOWN artifact {0}")]
    NotKnown(String),
    #[error("no replacement for the non-KNOWN artifact {0}")]
    NoReplacement(String),
    #[error("replacement {replacement} of artifact {artifact} is not KNOWN")]
    ReplacementNotKnown {
        artifact: String,
        replacement: String,
    },
    #[error("value cannot be cached (it contains {0})")]
    NotCacheable(String),
}

fn malformed(msg: impl Into<String>) -> EntryError {
    EntryError::Malformed(msg.into())
}

/// What the build made of the non-KNOWN artifacts of a result: each
/// original artifact maps to the `KNOWN` artifact of the built object.
#[derive(Debug, Clone, Default)]
pub struct Replacements(HashMap<String, ArtifactDescription>);

impl Replacements {
    pub fn new() -> Replacements {
        Replacements::default()
    }

    /// Records that `original` was built as `built` (which should be `KNOWN`;
    /// serialisation refuses anything else).
    pub fn insert(&mut self, original: &ArtifactDescription, built: ArtifactDescription) {
        self.0.insert(original.to_json_text(), built);
    }

    pub fn get(&self, original: &ArtifactDescription) -> Option<&ArtifactDescription> {
        self.0.get(&original.to_json_text())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(ArtifactDescription, ArtifactDescription)> for Replacements {
    fn from_iter<I: IntoIterator<Item = (ArtifactDescription, ArtifactDescription)>>(
        iter: I,
    ) -> Self {
        let mut r = Replacements::new();
        for (original, built) in iter {
            r.insert(&original, built);
        }
        r
    }
}

/// An object a `KNOWN` artifact names, as the object-info string shows it
/// (`[hash:size:type]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectInfo {
    pub digest: Digest,
    pub kind: ObjectKind,
}

impl ObjectInfo {
    /// The object of a `KNOWN` artifact; `None` for other artifacts.
    pub fn of_known(artifact: &ArtifactDescription, hash: HashFunction) -> Option<ObjectInfo> {
        match artifact {
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } => Some(ObjectInfo {
                digest: hash.digest(*file_type, id.clone(), *size),
                kind: *file_type,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}:{}:{}]",
            self.digest.hash,
            self.digest.size,
            self.kind.type_char()
        )
    }
}

/// A target-cache entry read back: the cached result (always cacheable)
/// and the key hashes of the implied export targets.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub result: TargetResult,
    pub implied: BTreeSet<String>,
}

// ---------------------------------------------------------------------------
// Writing

/// Every non-KNOWN artifact in `result` (artifact stage, runfiles, and
/// anywhere in provides, inside nodes and nested results too): what must be
/// built before the result can be cached. Each appears once, in first-seen
/// order.
pub fn non_known_artifacts(
    result: &TargetResult,
    hash: HashFunction,
) -> Result<Vec<ArtifactDescription>, EntryError> {
    let mut found = Vec::new();
    let mut seen_artifacts = HashSet::new();
    let mut seen_values = HashSet::new();
    for (part, stage) in [
        ("artifacts", &result.artifact_stage),
        ("runfiles", &result.runfiles),
    ] {
        for (path, v) in artifact_map(stage, part)? {
            let a = to_description(v, hash, &format!("{part}/{path}"))?;
            if !a.is_known() && seen_artifacts.insert(a.to_json_text()) {
                found.push(a);
            }
        }
    }
    let mut stack = vec![result.provides.clone()];
    while let Some(v) = stack.pop() {
        if !seen_values.insert(v.hash()) {
            continue;
        }
        match v.kind() {
            Kind::Artifact(_) => {
                let a = to_description(&v, hash, "provides")?;
                if !a.is_known() && seen_artifacts.insert(a.to_json_text()) {
                    found.push(a);
                }
            }
            // Children are pushed in reverse so that they pop in order.
            Kind::List(l) => stack.extend(l.iter().rev().cloned()),
            Kind::Map(m) => stack.extend(m.values().rev().cloned()),
            Kind::Result(r) => stack.extend([
                r.provides.clone(),
                r.runfiles.clone(),
                r.artifact_stage.clone(),
            ]),
            Kind::Node(Node::Value(r)) => stack.push(r.clone()),
            Kind::Node(Node::Abstract {
                string_fields,
                target_fields,
                ..
            }) => stack.extend([target_fields.clone(), string_fields.clone()]),
            _ => {}
        }
    }
    Ok(found)
}

/// The entry JSON for `result`, non-KNOWN artifacts replaced through
/// `replacements`, with the given implied export targets (key hashes; the
/// entry's own key belongs there).
pub fn entry_json(
    result: &TargetResult,
    replacements: &Replacements,
    implied: &BTreeSet<String>,
) -> Result<Json, EntryError> {
    let mut top = JsonMap::new();
    top.insert(
        "artifacts".into(),
        serialize_artifact_map(&result.artifact_stage, "artifacts", replacements)?,
    );
    top.insert(
        "runfiles".into(),
        serialize_artifact_map(&result.runfiles, "runfiles", replacements)?,
    );
    top.insert(
        "provides".into(),
        serialize_provides(&result.provides, replacements)?,
    );
    if !implied.is_empty() {
        top.insert(
            IMPLIED.into(),
            Json::Array(implied.iter().cloned().map(Json::String).collect()),
        );
    }
    Ok(Json::Object(top))
}

/// The bytes of the entry blob for `result`, exactly as justbuild stores
/// them (see [`entry_json`]).
pub fn entry_text(
    result: &TargetResult,
    replacements: &Replacements,
    implied: &BTreeSet<String>,
) -> Result<String, EntryError> {
    Ok(dump_entry(&entry_json(result, replacements, implied)?))
}

/// Pretty text (indent 2) of an entry JSON. Unlike `json::dump_pretty`, the
/// integer sizes of artifacts stay integers while numbers of the language
/// (floats) print as doubles, which is how the reference's JSON holds them.
pub fn dump_entry(entry: &Json) -> String {
    crate::build::json::dump_pretty_as_stored(entry)
}

fn artifact_map<'a>(v: &'a Value, part: &str) -> Result<&'a BTreeMap<String, Value>, EntryError> {
    v.as_map()
        .ok_or_else(|| malformed(format!("{part} of the result is not a map")))
}

fn to_description(
    v: &Value,
    hash: HashFunction,
    at: &str,
) -> Result<ArtifactDescription, EntryError> {
    ArtifactDescription::from_value(v, hash).map_err(|source| EntryError::Artifact {
        at: at.to_string(),
        source,
    })
}

/// The JSON of an artifact value in an entry: KNOWN ones as they are, others
/// replaced by what they were built as. The hash function only matters for
/// KNOWN artifacts, which are not parsed here.
fn replaced_artifact(v: &Value, replacements: &Replacements) -> Result<Json, EntryError> {
    let json = v
        .as_artifact()
        .ok_or_else(|| malformed("artifact expected"))?;
    if json.get("type").and_then(Json::as_str) == Some("KNOWN") {
        return Ok(json.clone());
    }
    let original = to_description(v, HashFunction::GitSha1, "provides")?;
    let built = replacements
        .get(&original)
        .ok_or_else(|| EntryError::NoReplacement(original.to_json_text()))?;
    if !built.is_known() {
        return Err(EntryError::ReplacementNotKnown {
            artifact: original.to_json_text(),
            replacement: built.to_json_text(),
        });
    }
    Ok(built.to_json())
}

fn serialize_artifact_map(
    stage: &Value,
    part: &str,
    replacements: &Replacements,
) -> Result<Json, EntryError> {
    let mut out = JsonMap::new();
    for (path, v) in artifact_map(stage, part)? {
        if v.as_artifact().is_none() {
            return Err(malformed(format!("{part}/{path} is not an artifact")));
        }
        out.insert(path.clone(), replaced_artifact(v, replacements)?);
    }
    Ok(Json::Object(out))
}

/// The DAG table under construction.
struct Dag<'r> {
    nodes: JsonMap<String, Json>,
    artifacts: Vec<String>,
    node_ids: Vec<String>,
    results: Vec<String>,
    replacements: &'r Replacements,
}

impl Dag<'_> {
    /// Adds `v` (once) and returns its id. Nodes and results are listed
    /// before their children, as the reference's depth-first walk does.
    fn add(&mut self, v: &Value) -> Result<String, EntryError> {
        let id = v.id();
        if self.nodes.contains_key(&id) {
            return Ok(id);
        }
        let json = match v.kind() {
            Kind::Map(m) => {
                let mut obj = JsonMap::new();
                for (k, child) in m {
                    obj.insert(k.clone(), Json::String(self.add(child)?));
                }
                Json::Object(obj)
            }
            Kind::List(l) => Json::Array(
                l.iter()
                    .map(|c| self.add(c).map(Json::String))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Node(node) => {
                self.node_ids.push(id.clone());
                match node {
                    Node::Value(r) => {
                        let r = self.add(r)?;
                        serde_json::json!({"type": "VALUE_NODE", "result": r})
                    }
                    Node::Abstract {
                        node_type,
                        string_fields,
                        target_fields,
                    } => {
                        let s = self.add(string_fields)?;
                        let t = self.add(target_fields)?;
                        serde_json::json!({"type": "ABSTRACT_NODE", "node_type": node_type,
                            "string_fields": s, "target_fields": t})
                    }
                }
            }
            Kind::Result(r) => {
                self.results.push(id.clone());
                let a = self.add(&r.artifact_stage)?;
                let rf = self.add(&r.runfiles)?;
                let p = self.add(&r.provides)?;
                serde_json::json!({"artifact_stage": a, "runfiles": rf, "provides": p})
            }
            Kind::Artifact(_) => {
                self.artifacts.push(id.clone());
                replaced_artifact(v, self.replacements)?
            }
            Kind::Name(_) => return Err(EntryError::NotCacheable(v.to_abbrev_string(200))),
            _ => v.to_json(),
        };
        self.nodes.insert(id.clone(), json);
        Ok(id)
    }
}

fn serialize_provides(provides: &Value, replacements: &Replacements) -> Result<Json, EntryError> {
    let mut dag = Dag {
        nodes: JsonMap::new(),
        artifacts: Vec::new(),
        node_ids: Vec::new(),
        results: Vec::new(),
        replacements,
    };
    let entry = dag.add(provides)?;
    let ids = |v: Vec<String>| Json::Array(v.into_iter().map(Json::String).collect());
    let mut out = JsonMap::new();
    out.insert("entry".into(), Json::String(entry));
    out.insert("nodes".into(), Json::Object(dag.nodes));
    out.insert("provided_artifacts".into(), ids(dag.artifacts));
    out.insert("provided_nodes".into(), ids(dag.node_ids));
    out.insert("provided_results".into(), ids(dag.results));
    Ok(Json::Object(out))
}

// ---------------------------------------------------------------------------
// Reading

/// Parses the bytes of an entry blob.
pub fn parse_entry(bytes: &[u8], hash: HashFunction) -> Result<CacheEntry, EntryError> {
    let json: Json =
        serde_json::from_slice(bytes).map_err(|e| EntryError::NotJson(e.to_string()))?;
    parse_entry_json(&json, hash)
}

/// Reads an entry JSON back into a result and its implied export targets.
pub fn parse_entry_json(json: &Json, hash: HashFunction) -> Result<CacheEntry, EntryError> {
    let obj = json
        .as_object()
        .ok_or_else(|| malformed("entry is not a JSON object"))?;
    let artifact_stage = parse_artifact_map(obj, "artifacts", hash)?;
    let runfiles = parse_artifact_map(obj, "runfiles", hash)?;
    let provides = parse_provides(
        obj.get("provides")
            .ok_or_else(|| malformed("\"provides\" is missing"))?,
        hash,
    )?;
    Ok(CacheEntry {
        result: TargetResult {
            artifact_stage,
            runfiles,
            provides,
        },
        implied: implied_of(obj)?,
    })
}

fn implied_of(obj: &JsonMap<String, Json>) -> Result<BTreeSet<String>, EntryError> {
    let Some(implied) = obj.get(IMPLIED) else {
        return Ok(BTreeSet::new());
    };
    let list = implied
        .as_array()
        .ok_or_else(|| malformed(format!("{IMPLIED:?} is not a list")))?;
    list.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("{IMPLIED:?} holds the non-string {x}")))
        })
        .collect()
}

fn parse_artifact_map(
    obj: &JsonMap<String, Json>,
    part: &str,
    hash: HashFunction,
) -> Result<Value, EntryError> {
    let map = obj
        .get(part)
        .ok_or_else(|| malformed(format!("{part:?} is missing")))?
        .as_object()
        .ok_or_else(|| malformed(format!("{part:?} is not an object")))?;
    let mut out = BTreeMap::new();
    for (path, a) in map {
        let desc =
            ArtifactDescription::from_json(a, hash).map_err(|source| EntryError::Artifact {
                at: format!("{part}/{path}"),
                source,
            })?;
        out.insert(path.clone(), desc.to_value());
    }
    Ok(Value::map(out))
}

/// The id lists of the DAG table, as sets.
fn id_set(provides: &JsonMap<String, Json>, key: &str) -> Result<HashSet<String>, EntryError> {
    let list = provides
        .get(key)
        .ok_or_else(|| malformed(format!("provides: {key:?} is missing")))?
        .as_array()
        .ok_or_else(|| malformed(format!("provides: {key:?} is not a list")))?;
    list.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("provides: {key:?} holds the non-string {x}")))
        })
        .collect()
}

/// What a DAG table entry stands for; the id lists only matter for objects,
/// as in the reference's reader.
enum Shape<'a> {
    Artifact,
    ValueNode(&'a Json),
    AbstractNode {
        node_type: &'a Json,
        string_fields: &'a Json,
        target_fields: &'a Json,
    },
    Result([&'a Json; 3]),
    Map(&'a JsonMap<String, Json>),
    List(&'a [Json]),
    Atom,
}

/// Rebuilds values from the DAG table; shared ids give shared values. The
/// walk uses an explicit stack, so deep values cannot exhaust the thread's.
struct DagReader<'a> {
    nodes: &'a JsonMap<String, Json>,
    artifacts: HashSet<String>,
    node_ids: HashSet<String>,
    results: HashSet<String>,
    hash: HashFunction,
}

fn as_id<'a>(v: &'a Json, what: &dyn Fn() -> String) -> Result<&'a str, EntryError> {
    v.as_str()
        .ok_or_else(|| malformed(format!("provides: {} is not an id string", what())))
}

impl<'a> DagReader<'a> {
    fn lookup(&self, id: &str) -> Result<&'a Json, EntryError> {
        self.nodes
            .get(id)
            .ok_or_else(|| malformed(format!("provides: unknown node id {id}")))
    }

    fn shape(&self, id: &str, json: &'a Json) -> Result<Shape<'a>, EntryError> {
        static NULL: Json = Json::Null;
        let field = |obj: &'a JsonMap<String, Json>, k: &str| obj.get(k).unwrap_or(&NULL);
        Ok(match json {
            Json::Object(_) if self.artifacts.contains(id) => Shape::Artifact,
            Json::Object(obj) if self.node_ids.contains(id) => {
                match obj.get("type").and_then(Json::as_str) {
                    Some("VALUE_NODE") => Shape::ValueNode(field(obj, "result")),
                    Some("ABSTRACT_NODE") => Shape::AbstractNode {
                        node_type: field(obj, "node_type"),
                        string_fields: field(obj, "string_fields"),
                        target_fields: field(obj, "target_fields"),
                    },
                    _ => {
                        return Err(malformed(format!(
                            "provides: node {id} is neither VALUE_NODE nor ABSTRACT_NODE"
                        )))
                    }
                }
            }
            Json::Object(obj) if self.results.contains(id) => Shape::Result([
                field(obj, "artifact_stage"),
                field(obj, "runfiles"),
                field(obj, "provides"),
            ]),
            Json::Object(obj) => Shape::Map(obj),
            Json::Array(items) => Shape::List(items),
            _ => Shape::Atom,
        })
    }

    /// The ids `shape` refers to.
    fn children(id: &str, shape: &Shape<'a>) -> Result<Vec<&'a str>, EntryError> {
        let of = |v: &'a Json, what: &str| as_id(v, &|| format!("{what} of {id}"));
        Ok(match shape {
            Shape::Artifact | Shape::Atom => Vec::new(),
            Shape::ValueNode(r) => vec![of(r, "result")?],
            Shape::AbstractNode {
                string_fields,
                target_fields,
                ..
            } => vec![
                of(string_fields, "string_fields")?,
                of(target_fields, "target_fields")?,
            ],
            Shape::Result(parts) => vec![
                of(parts[0], "artifact_stage")?,
                of(parts[1], "runfiles")?,
                of(parts[2], "provides")?,
            ],
            Shape::Map(obj) => obj
                .iter()
                .map(|(k, v)| of(v, &format!("entry {k:?}")))
                .collect::<Result<_, _>>()?,
            Shape::List(items) => items
                .iter()
                .map(|v| of(v, "an element"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The value of `id`, all of whose children are in `done` already.
    fn build(
        &self,
        id: &str,
        json: &Json,
        shape: Shape<'a>,
        done: &HashMap<&'a str, Value>,
    ) -> Result<Value, EntryError> {
        // Children were checked to be id strings with built values.
        let get = |v: &Json| done[v.as_str().unwrap_or_default()].clone();
        Ok(match shape {
            Shape::Artifact => ArtifactDescription::from_json(json, self.hash)
                .map_err(|source| EntryError::Artifact {
                    at: format!("provides node {id}"),
                    source,
                })?
                .to_value(),
            Shape::ValueNode(r) => {
                let r = get(r);
                if r.as_result().is_none() {
                    return Err(malformed(format!(
                        "provides: value node {id} does not hold a result"
                    )));
                }
                Value::node(Node::Value(r))
            }
            Shape::AbstractNode {
                node_type,
                string_fields,
                target_fields,
            } => Value::node(Node::Abstract {
                node_type: node_type
                    .as_str()
                    .ok_or_else(|| {
                        malformed(format!("provides: abstract node {id} has no node_type"))
                    })?
                    .to_string(),
                string_fields: get(string_fields),
                target_fields: get(target_fields),
            }),
            Shape::Result([a, r, p]) => Value::result(TargetResult {
                artifact_stage: get(a),
                runfiles: get(r),
                provides: get(p),
            }),
            Shape::Map(obj) => Value::map(obj.iter().map(|(k, v)| (k.clone(), get(v))).collect()),
            Shape::List(items) => Value::list(items.iter().map(get).collect()),
            Shape::Atom => Value::from_json(json),
        })
    }

    /// Builds the value of `entry`: a depth-first walk that finishes every
    /// child before its parent and refuses cycles.
    fn read(&self, entry: &'a str) -> Result<Value, EntryError> {
        let mut done: HashMap<&'a str, Value> = HashMap::new();
        let mut open: HashSet<&'a str> = HashSet::new();
        // (id, its children once expanded)
        let mut stack: Vec<(&'a str, bool)> = vec![(entry, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains_key(id) {
                continue;
            }
            let json = self.lookup(id)?;
            let shape = self.shape(id, json)?;
            if expanded {
                let value = self.build(id, json, shape, &done)?;
                open.remove(id);
                done.insert(id, value);
                continue;
            }
            if !open.insert(id) {
                return Err(malformed(format!("provides: node {id} contains itself")));
            }
            stack.push((id, true));
            for child in Self::children(id, &shape)?.into_iter().rev() {
                if open.contains(child) {
                    return Err(malformed(format!("provides: node {child} contains itself")));
                }
                if !done.contains_key(child) {
                    stack.push((child, false));
                }
            }
        }
        Ok(done[entry].clone())
    }
}

fn parse_provides(json: &Json, hash: HashFunction) -> Result<Value, EntryError> {
    let obj = json
        .as_object()
        .ok_or_else(|| malformed("\"provides\" is not an object"))?;
    let nodes = obj
        .get("nodes")
        .ok_or_else(|| malformed("provides: \"nodes\" is missing"))?
        .as_object()
        .ok_or_else(|| malformed("provides: \"nodes\" is not an object"))?;
    let reader = DagReader {
        nodes,
        artifacts: id_set(obj, "provided_artifacts")?,
        node_ids: id_set(obj, "provided_nodes")?,
        results: id_set(obj, "provided_results")?,
        hash,
    };
    let entry = as_id(obj.get("entry").unwrap_or(&Json::Null), &|| {
        "\"entry\"".to_string()
    })?;
    reader.read(entry)
}

/// Every object an entry names: the artifacts, the runfiles and the provided
/// artifacts, in that order (duplicates kept). All must be `KNOWN`; serve
/// makes sure these objects are at the endpoint before answering with the
/// entry.
pub fn entry_objects(json: &Json, hash: HashFunction) -> Result<Vec<ObjectInfo>, EntryError> {
    let obj = json
        .as_object()
        .ok_or_else(|| malformed("entry is not a JSON object"))?;
    let mut out = Vec::new();
    let mut add = |a: &Json, at: String| -> Result<(), EntryError> {
        let desc = ArtifactDescription::from_json(a, hash)
            .map_err(|source| EntryError::Artifact { at, source })?;
        let info = ObjectInfo::of_known(&desc, hash)
            .ok_or_else(|| EntryError::NotKnown(desc.to_json_text()))?;
        out.push(info);
        Ok(())
    };
    for part in ["artifacts", "runfiles"] {
        let map = obj
            .get(part)
            .and_then(Json::as_object)
            .ok_or_else(|| malformed(format!("{part:?} is missing or not an object")))?;
        for (path, a) in map {
            add(a, format!("{part}/{path}"))?;
        }
    }
    let provides = obj
        .get("provides")
        .and_then(Json::as_object)
        .ok_or_else(|| malformed("\"provides\" is missing or not an object"))?;
    let nodes = provides
        .get("nodes")
        .and_then(Json::as_object)
        .ok_or_else(|| malformed("provides: \"nodes\" is missing or not an object"))?;
    let ids = provides
        .get("provided_artifacts")
        .and_then(Json::as_array)
        .ok_or_else(|| malformed("provides: \"provided_artifacts\" is missing or not a list"))?;
    for id in ids {
        let id = id
            .as_str()
            .ok_or_else(|| malformed(format!("provides: artifact id {id} is not a string")))?;
        let a = nodes
            .get(id)
            .ok_or_else(|| malformed(format!("provides: unknown node id {id}")))?;
        add(a, format!("provides node {id}"))?;
    }
    Ok(out)
}

/// The implied export targets of an entry JSON (key hashes), without
/// parsing the rest.
pub fn entry_implied(json: &Json) -> Result<BTreeSet<String>, EntryError> {
    implied_of(
        json.as_object()
            .ok_or_else(|| malformed("entry is not a JSON object"))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HF: HashFunction = HashFunction::GitSha1;
    const EMPTY_MAP_ID: &str = "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96";

    fn known(c: char) -> ArtifactDescription {
        ArtifactDescription::known(c.to_string().repeat(40), 12, ObjectKind::File)
    }

    fn stage(entries: &[(&str, &ArtifactDescription)]) -> Value {
        Value::map(
            entries
                .iter()
                .map(|(p, a)| (p.to_string(), a.to_value()))
                .collect(),
        )
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn implied(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    /// A result with every kind of value in provides; all artifacts KNOWN.
    fn rich_result() -> TargetResult {
        let shared =
            Value::from_json(&json!({"x": [1, 2.5, {"y": null}, 1e20], "s": "str\n\"q\""}));
        let inner = TargetResult {
            artifact_stage: stage(&[("out.txt", &known('a'))]),
            runfiles: Value::empty_map(),
            provides: map(vec![("nested", shared.clone())]),
        };
        let inner = Value::result(inner);
        let vnode = Value::node(Node::Value(inner.clone()));
        let anode = Value::node(Node::Abstract {
            node_type: "foo".into(),
            string_fields: Value::from_json(&json!({"a": ["b", "c"]})),
            target_fields: map(vec![("deps", Value::list(vec![vnode.clone()]))]),
        });
        TargetResult {
            artifact_stage: stage(&[("out.txt", &known('a')), ("sub/b", &known('b'))]),
            runfiles: stage(&[("r", &known('c'))]),
            provides: map(vec![
                ("anode", anode),
                ("art", known('d').to_value()),
                ("res", inner),
                (
                    "shared",
                    Value::list(vec![shared.clone(), shared, Value::empty_map()]),
                ),
                ("vnode", vnode),
                ("x", Value::null()),
            ]),
        }
    }

    #[test]
    fn simple_entry_has_the_reference_bytes() {
        let a = ArtifactDescription::known(
            "3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
            12,
            ObjectKind::File,
        );
        let result = TargetResult {
            artifact_stage: stage(&[("out.txt", &a)]),
            runfiles: Value::empty_map(),
            provides: Value::empty_map(),
        };
        let text = entry_text(&result, &Replacements::new(), &implied(&["8a1b"])).unwrap();
        let expected = r#"{
  "artifacts": {
    "out.txt": {
      "data": {
        "file_type": "f",
        "id": "3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
        "size": 12
      },
      "type": "KNOWN"
    }
  },
  "implied export targets": [
    "8a1b"
  ],
  "provides": {
    "entry": "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96",
    "nodes": {
      "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96": {}
    },
    "provided_artifacts": [],
    "provided_nodes": [],
    "provided_results": []
  },
  "runfiles": {}
}"#;
        assert_eq!(text, expected);
        // No implied targets: the key is left out.
        let text = entry_text(&result, &Replacements::new(), &BTreeSet::new()).unwrap();
        assert!(!text.contains("implied"));
    }

    #[test]
    fn dag_lists_each_subvalue_once_in_depth_first_order() {
        let result = rich_result();
        let json = entry_json(&result, &Replacements::new(), &BTreeSet::new()).unwrap();
        let p = &json["provides"];
        assert_eq!(p["entry"], json!(result.provides.id()));
        let nodes = p["nodes"].as_object().unwrap();
        // Every distinct subvalue once: one shared map, one empty map.
        let shared = result.provides.get("shared").unwrap().as_list().unwrap();
        let shared_id = shared[0].id();
        assert_eq!(
            nodes[&result.provides.get("shared").unwrap().id()],
            json!([shared_id, shared_id, EMPTY_MAP_ID])
        );
        let anode = result.provides.get("anode").unwrap();
        let vnode = result.provides.get("vnode").unwrap();
        let res = result.provides.get("res").unwrap();
        // Keys in order: anode (holds vnode, which holds res), art, res, ...
        assert_eq!(p["provided_nodes"], json!([anode.id(), vnode.id()]));
        assert_eq!(p["provided_results"], json!([res.id()]));
        assert_eq!(
            p["provided_artifacts"],
            json!([known('a').to_value().id(), known('d').to_value().id()])
        );
        assert_eq!(
            nodes[&vnode.id()],
            json!({"type": "VALUE_NODE", "result": res.id()})
        );
        let Kind::Node(Node::Abstract {
            string_fields,
            target_fields,
            ..
        }) = anode.kind()
        else {
            panic!()
        };
        assert_eq!(
            nodes[&anode.id()],
            json!({"type": "ABSTRACT_NODE", "node_type": "foo",
                "string_fields": string_fields.id(), "target_fields": target_fields.id()})
        );
        let r = res.as_result().unwrap();
        assert_eq!(
            nodes[&res.id()],
            json!({"artifact_stage": r.artifact_stage.id(), "runfiles": EMPTY_MAP_ID,
                "provides": r.provides.id()})
        );
        // Numbers of the language print as doubles, artifact sizes as integers.
        let text = dump_entry(&json);
        assert!(text.contains(": 1.0") && text.contains(": 1e+20"));
        assert!(!text.contains(": 1,") && !text.contains(": 1\n"));
        assert!(text.contains("\"size\": 12\n"));
    }

    #[test]
    fn round_trip_keeps_bytes_values_and_sharing() {
        let result = rich_result();
        let keys = implied(&["ab", "cd"]);
        let text = entry_text(&result, &Replacements::new(), &keys).unwrap();
        let back = parse_entry(text.as_bytes(), HF).unwrap();
        assert_eq!(back.implied, keys);
        assert_eq!(back.result.provides, result.provides);
        assert_eq!(back.result.artifact_stage, result.artifact_stage);
        assert_eq!(back.result.runfiles, result.runfiles);
        assert!(back.result.is_cacheable());
        assert_eq!(
            entry_text(&back.result, &Replacements::new(), &back.implied).unwrap(),
            text
        );
        // The shared subvalue is read once and shared.
        let shared = back
            .result
            .provides
            .get("shared")
            .unwrap()
            .as_list()
            .unwrap();
        assert!(shared[0].ptr_eq(&shared[1]));
        let objects = entry_objects(&serde_json::from_str(&text).unwrap(), HF).unwrap();
        let names: Vec<String> = objects.iter().map(ToString::to_string).collect();
        let info = |c: char| format!("[{}:12:f]", c.to_string().repeat(40));
        assert_eq!(
            names,
            [info('a'), info('b'), info('c'), info('a'), info('d')]
        );
    }

    #[test]
    fn non_known_artifacts_are_found_everywhere_and_replaced() {
        let act = ArtifactDescription::action("1".repeat(64), "out");
        let tree = ArtifactDescription::tree("2".repeat(64));
        let local = ArtifactDescription::local("src/f", "main");
        let in_node = ArtifactDescription::action("3".repeat(64), "deep");
        let nested = TargetResult {
            artifact_stage: stage(&[("deep", &in_node)]),
            runfiles: Value::empty_map(),
            provides: Value::empty_map(),
        };
        let result = TargetResult {
            artifact_stage: stage(&[("out", &act), ("known", &known('a'))]),
            runfiles: stage(&[("t", &tree)]),
            provides: map(vec![
                ("l", Value::list(vec![local.to_value(), act.to_value()])),
                ("n", Value::node(Node::Value(Value::result(nested)))),
            ]),
        };
        let found = non_known_artifacts(&result, HF).unwrap();
        assert_eq!(
            found,
            [act.clone(), tree.clone(), local.clone(), in_node.clone()]
        );

        let mut repl: Replacements = [(act.clone(), known('b')), (tree.clone(), known('c'))]
            .into_iter()
            .collect();
        repl.insert(&local, known('d'));
        let err = entry_json(&result, &repl, &BTreeSet::new()).unwrap_err();
        assert_eq!(err, EntryError::NoReplacement(in_node.to_json_text()));
        repl.insert(&in_node, ArtifactDescription::tree("4".repeat(64)));
        assert!(matches!(
            entry_json(&result, &repl, &BTreeSet::new()),
            Err(EntryError::ReplacementNotKnown { .. })
        ));
        repl.insert(&in_node, known('e'));
        assert_eq!(repl.len(), 4);
        let json = entry_json(&result, &repl, &BTreeSet::new()).unwrap();
        assert_eq!(json["artifacts"]["out"], known('b').to_json());
        assert_eq!(json["runfiles"]["t"], known('c').to_json());
        // DAG ids stay those of the values as analysed.
        let p = &json["provides"];
        assert_eq!(p["entry"], json!(result.provides.id()));
        assert_eq!(p["nodes"][act.to_value().id()], known('b').to_json());
        assert_eq!(p["nodes"][in_node.to_value().id()], known('e').to_json());
        // Read back, everything is KNOWN.
        let back = parse_entry_json(&json, HF).unwrap();
        assert!(non_known_artifacts(&back.result, HF).unwrap().is_empty());
        assert_eq!(entry_objects(&json, HF).unwrap().len(), 2 + 1 + 3);
    }

    #[test]
    fn names_are_not_cacheable() {
        let result = TargetResult {
            artifact_stage: Value::empty_map(),
            runfiles: Value::empty_map(),
            provides: map(vec![("n", Value::name(json!(["@", "r", "m", "t"])))]),
        };
        assert!(matches!(
            entry_json(&result, &Replacements::new(), &BTreeSet::new()),
            Err(EntryError::NotCacheable(_))
        ));
    }

    fn parse_err(json: Json) -> EntryError {
        parse_entry_json(&json, HF).unwrap_err()
    }

    fn with_provides(provides: Json) -> Json {
        json!({"artifacts": {}, "runfiles": {}, "provides": provides})
    }

    fn dag(entry: &str, nodes: Json, arts: &[&str], ns: &[&str], rs: &[&str]) -> Json {
        with_provides(
            json!({"entry": entry, "nodes": nodes, "provided_artifacts": arts,
            "provided_nodes": ns, "provided_results": rs}),
        )
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(matches!(
            parse_entry(b"{", HF).unwrap_err(),
            EntryError::NotJson(_)
        ));
        assert!(matches!(parse_err(json!([])), EntryError::Malformed(_)));
        assert!(matches!(
            parse_err(json!({"runfiles": {}, "provides": {}})),
            EntryError::Malformed(m) if m.contains("\"artifacts\"")
        ));
        assert!(matches!(
            parse_err(json!({"artifacts": {"a": {"type": "KNOWN", "data": {"id": "xyz",
                "size": 1, "file_type": "f"}}}, "runfiles": {}, "provides": {}})),
            EntryError::Artifact { at, .. } if at == "artifacts/a"
        ));
        assert!(matches!(
            parse_err(with_provides(json!({"entry": "x", "nodes": {}}))),
            EntryError::Malformed(m) if m.contains("provided_artifacts")
        ));
        let cases = [
            // unknown id
            dag("x", json!({}), &[], &[], &[]),
            // a list holding a non-id
            dag("x", json!({"x": [1]}), &[], &[], &[]),
            // a cycle
            dag("x", json!({"x": ["y"], "y": {"k": "x"}}), &[], &[], &[]),
            // a node of no known type
            dag("x", json!({"x": {"type": "OTHER"}}), &[], &["x"], &[]),
            // a value node without a result
            dag(
                "x",
                json!({"x": {"type": "VALUE_NODE", "result": "y"}, "y": 3.0}),
                &[],
                &["x"],
                &[],
            ),
            // an abstract node without node_type
            dag(
                "x",
                json!({"x": {"type": "ABSTRACT_NODE", "string_fields": "e",
                "target_fields": "e"}, "e": {}}),
                &[],
                &["x"],
                &[],
            ),
            // a result lacking its provides
            dag(
                "x",
                json!({"x": {"artifact_stage": "e", "runfiles": "e"}, "e": {}}),
                &[],
                &[],
                &["x"],
            ),
        ];
        for case in cases {
            assert!(
                matches!(parse_entry_json(&case, HF), Err(EntryError::Malformed(_))),
                "{case}"
            );
        }
        assert!(matches!(
            parse_err(dag(
                "x",
                json!({"x": {"type": "FOO", "data": {}}}),
                &["x"],
                &[],
                &[]
            )),
            EntryError::Artifact { .. }
        ));
        let mut ok = dag("x", json!({"x": {}}), &[], &[], &[]);
        assert!(parse_entry_json(&ok, HF).is_ok());
        ok["implied export targets"] = json!("ab");
        assert!(matches!(parse_err(ok), EntryError::Malformed(m) if m.contains("implied")));
    }

    #[test]
    fn deep_dags_do_not_exhaust_the_stack() {
        let n = 5_000;
        let mut nodes = JsonMap::new();
        for i in 0..n {
            let child = if i + 1 == n {
                json!("leaf")
            } else {
                json!([format!("n{}", i + 1)])
            };
            nodes.insert(format!("n{i}"), child);
        }
        let back = parse_entry_json(&dag("n0", Json::Object(nodes), &[], &[], &[]), HF).unwrap();
        let mut v = back.result.provides.clone();
        let mut depth = 0;
        while let Some(l) = v.as_list() {
            let next = l[0].clone();
            v = next;
            depth += 1;
        }
        assert_eq!((depth, v.as_str()), (n - 1, Some("leaf")));
    }

    #[test]
    fn only_known_objects_are_listed() {
        let entry = json!({"artifacts": {"a": ArtifactDescription::local("f", "r").to_json()},
            "runfiles": {}, "provides": {"nodes": {}, "provided_artifacts": []}});
        assert!(matches!(
            entry_objects(&entry, HF),
            Err(EntryError::NotKnown(_))
        ));
        let entry = json!({"artifacts": {}, "runfiles": {},
            "provides": {"nodes": {}, "provided_artifacts": ["gone"]}});
        assert!(matches!(
            entry_objects(&entry, HF),
            Err(EntryError::Malformed(_))
        ));
        let tree = ArtifactDescription::known("f".repeat(40), 3, ObjectKind::Tree);
        let entry = json!({"artifacts": {}, "runfiles": {"t": tree.to_json()},
            "provides": {"nodes": {}, "provided_artifacts": []}, "implied export targets": ["k"]});
        let objects = entry_objects(&entry, HF).unwrap();
        assert_eq!(objects.len(), 1);
        assert!(objects[0].digest.is_tree);
        assert_eq!(objects[0].to_string(), format!("[{}:3:t]", "f".repeat(40)));
        assert_eq!(entry_implied(&entry).unwrap(), implied(&["k"]));
    }
}
