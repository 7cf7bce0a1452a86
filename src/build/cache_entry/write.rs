//! Writing entries: the entry JSON of a result, non-KNOWN artifacts
//! replaced by what the build made of them, provides as a DAG table.

use super::*;

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

pub(super) fn artifact_map<'a>(
    v: &'a Value,
    part: &str,
) -> Result<&'a BTreeMap<String, Value>, EntryError> {
    v.as_map()
        .ok_or_else(|| malformed(format!("{part} of the result is not a map")))
}

pub(super) fn to_description(
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
pub(super) fn replaced_artifact(
    v: &Value,
    replacements: &Replacements,
) -> Result<Json, EntryError> {
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

pub(super) fn serialize_artifact_map(
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
pub(super) struct Dag<'r> {
    nodes: JsonMap<String, Json>,
    artifacts: Vec<String>,
    node_ids: Vec<String>,
    results: Vec<String>,
    replacements: &'r Replacements,
}

impl Dag<'_> {
    /// Adds `v` (once) and returns its id. Nodes and results are listed
    /// before their children, as the reference's depth-first walk does.
    pub(super) fn add(&mut self, v: &Value) -> Result<String, EntryError> {
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

pub(super) fn serialize_provides(
    provides: &Value,
    replacements: &Replacements,
) -> Result<Json, EntryError> {
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
