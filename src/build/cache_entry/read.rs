//! Reading entries back: the result and its implied export targets, the
//! DAG table unfolded child before parent, cycles refused.

use super::*;

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

pub(super) fn implied_of(obj: &JsonMap<String, Json>) -> Result<BTreeSet<String>, EntryError> {
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

pub(super) fn parse_artifact_map(
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
pub(super) fn id_set(
    provides: &JsonMap<String, Json>,
    key: &str,
) -> Result<HashSet<String>, EntryError> {
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
pub(super) enum Shape<'a> {
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
pub(super) struct DagReader<'a> {
    nodes: &'a JsonMap<String, Json>,
    artifacts: HashSet<String>,
    node_ids: HashSet<String>,
    results: HashSet<String>,
    hash: HashFunction,
}

pub(super) fn as_id<'a>(v: &'a Json, what: &dyn Fn() -> String) -> Result<&'a str, EntryError> {
    v.as_str()
        .ok_or_else(|| malformed(format!("provides: {} is not an id string", what())))
}

impl<'a> DagReader<'a> {
    pub(super) fn lookup(&self, id: &str) -> Result<&'a Json, EntryError> {
        self.nodes
            .get(id)
            .ok_or_else(|| malformed(format!("provides: unknown node id {id}")))
    }

    pub(super) fn shape(&self, id: &str, json: &'a Json) -> Result<Shape<'a>, EntryError> {
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
    pub(super) fn children(id: &str, shape: &Shape<'a>) -> Result<Vec<&'a str>, EntryError> {
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
    pub(super) fn build(
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
    pub(super) fn read(&self, entry: &'a str) -> Result<Value, EntryError> {
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

pub(super) fn parse_provides(json: &Json, hash: HashFunction) -> Result<Value, EntryError> {
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
