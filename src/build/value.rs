//! Values of justbuild's build language: the JSON kinds (null, bool, number,
//! string, list, map) plus the opaque kinds artifact, result, node and name.
//!
//! Values are immutable and shared (`Arc`), so cloning is cheap. Identity is
//! the value hash (SHA-256 over a prefixed JSON rendering for atoms, over the
//! raw child hashes for lists and maps); equality compares these hashes, so
//! `1` equals `1.0`, `0.0` differs from `-0.0`, and a map with an explicit
//! `null` differs from one without the key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::build::json::{dump_compact, dump_compact_as_stored};

/// A map of the language: keys iterate in byte-wise order.
pub type Map = BTreeMap<String, Value>;

/// What a value is.
#[derive(Debug)]
pub enum Kind {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    Map(Map),
    /// An artifact, kept as its description JSON (`{"type": T, "data": {...}}`).
    Artifact(Json),
    /// The result of analysing a target.
    Result(TargetResult),
    /// A target node (for anonymous targets).
    Node(Node),
    /// A target name, kept as its JSON form.
    Name(Json),
}

/// The result of a target: artifact stage, runfiles, provides.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub artifact_stage: Value,
    pub runfiles: Value,
    pub provides: Value,
}

impl TargetResult {
    /// Cacheable iff `provides` contains no names.
    pub fn is_cacheable(&self) -> bool {
        self.provides.is_cacheable()
    }
}

/// A target node: either a value node wrapping a result, or an abstract node.
#[derive(Debug, Clone)]
pub enum Node {
    Value(Value),
    Abstract {
        node_type: String,
        string_fields: Value,
        target_fields: Value,
    },
}

impl Node {
    pub fn is_cacheable(&self) -> bool {
        match self {
            Node::Value(v) => v.is_cacheable(),
            Node::Abstract { target_fields, .. } => target_fields.is_cacheable(),
        }
    }

    /// The node's definition JSON (`VALUE_NODE` / `ABSTRACT_NODE`).
    pub fn to_json(&self) -> Json {
        match self {
            Node::Value(v) => serde_json::json!({"type": "VALUE_NODE", "result": v.to_json()}),
            Node::Abstract {
                node_type,
                string_fields,
                target_fields,
            } => serde_json::json!({
                "type": "ABSTRACT_NODE",
                "node_type": node_type,
                "string_fields": string_fields.to_json(),
                "target_fields": target_fields.to_json_mode(JsonMode::AllButNodes),
            }),
        }
    }
}

/// How opaque values are rendered as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonMode {
    /// Everything, nodes as their definition.
    All,
    /// Everything, nodes as `{"type":"NODE","id":<hex>}`.
    AllButNodes,
    /// Artifacts, results, nodes and names become `null` (`json_encode`).
    NullForNonJson,
}

struct Inner {
    kind: Kind,
    hash: OnceLock<[u8; 32]>,
    cacheable: OnceLock<bool>,
}

/// A value of the build language; cheap to clone.
#[derive(Clone)]
pub struct Value(Arc<Inner>);

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl Value {
    pub fn new(kind: Kind) -> Value {
        Value(Arc::new(Inner {
            kind,
            hash: OnceLock::new(),
            cacheable: OnceLock::new(),
        }))
    }
    pub fn null() -> Value {
        static NULL: OnceLock<Value> = OnceLock::new();
        NULL.get_or_init(|| Value::new(Kind::Null)).clone()
    }
    pub fn bool(b: bool) -> Value {
        Value::new(Kind::Bool(b))
    }
    pub fn number(x: f64) -> Value {
        Value::new(Kind::Number(x))
    }
    pub fn string(s: impl Into<String>) -> Value {
        Value::new(Kind::String(s.into()))
    }
    pub fn list(items: Vec<Value>) -> Value {
        Value::new(Kind::List(items))
    }
    pub fn map(map: Map) -> Value {
        Value::new(Kind::Map(map))
    }
    pub fn empty_list() -> Value {
        Value::list(Vec::new())
    }
    pub fn empty_map() -> Value {
        Value::map(Map::new())
    }
    pub fn artifact(description: Json) -> Value {
        Value::new(Kind::Artifact(description))
    }
    pub fn name(name: Json) -> Value {
        Value::new(Kind::Name(name))
    }
    pub fn result(result: TargetResult) -> Value {
        Value::new(Kind::Result(result))
    }
    pub fn node(node: Node) -> Value {
        Value::new(Kind::Node(node))
    }

    pub fn kind(&self) -> &Kind {
        &self.0.kind
    }

    /// The kind's name as the reference spells it in type errors.
    pub fn type_name(&self) -> &'static str {
        match self.kind() {
            Kind::Null => "none",
            Kind::Bool(_) => "bool",
            Kind::Number(_) => "number",
            Kind::String(_) => "string",
            Kind::List(_) => "list",
            Kind::Map(_) => "map",
            Kind::Artifact(_) => "artifact",
            Kind::Result(_) => "result",
            Kind::Node(_) => "node",
            Kind::Name(_) => "name",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind(), Kind::Null)
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self.kind() {
            Kind::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_number(&self) -> Option<f64> {
        match self.kind() {
            Kind::Number(x) => Some(*x),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self.kind() {
            Kind::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self.kind() {
            Kind::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&Map> {
        match self.kind() {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_artifact(&self) -> Option<&Json> {
        match self.kind() {
            Kind::Artifact(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_name(&self) -> Option<&Json> {
        match self.kind() {
            Kind::Name(n) => Some(n),
            _ => None,
        }
    }
    pub fn as_result(&self) -> Option<&TargetResult> {
        match self.kind() {
            Kind::Result(r) => Some(r),
            _ => None,
        }
    }
    pub fn as_node(&self) -> Option<&Node> {
        match self.kind() {
            Kind::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Entry of a map value (`None` for missing keys and non-maps).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map().and_then(|m| m.get(key))
    }

    /// Truthiness: `null`, `false`, `0`, `-0`, `""`, `[]` and `{}` are false.
    pub fn is_true(&self) -> bool {
        match self.kind() {
            Kind::Null => false,
            Kind::Bool(b) => *b,
            Kind::Number(x) => *x != 0.0,
            Kind::String(s) => !s.is_empty(),
            Kind::List(l) => !l.is_empty(),
            Kind::Map(m) => !m.is_empty(),
            _ => true,
        }
    }

    /// Free of names (recursively, through results and nodes); only such
    /// values may be compared or cached.
    pub fn is_cacheable(&self) -> bool {
        *self.0.cacheable.get_or_init(|| match self.kind() {
            Kind::Name(_) => false,
            Kind::Result(r) => r.is_cacheable(),
            Kind::Node(n) => n.is_cacheable(),
            Kind::List(l) => l.iter().all(Value::is_cacheable),
            Kind::Map(m) => m.values().all(Value::is_cacheable),
            _ => true,
        })
    }

    /// The value hash (raw SHA-256).
    pub fn hash(&self) -> [u8; 32] {
        *self.0.hash.get_or_init(|| self.compute_hash())
    }

    /// Lowercase hex of the value hash (node ids, rule-map ids).
    pub fn id(&self) -> String {
        hex::encode(self.hash())
    }

    fn compute_hash(&self) -> [u8; 32] {
        match self.kind() {
            Kind::List(items) => {
                let mut h = Sha256::new();
                h.update(b"[");
                for item in items {
                    h.update(item.hash());
                }
                h.finalize().into()
            }
            Kind::Map(map) => {
                let mut h = Sha256::new();
                h.update(b"{");
                for (k, v) in map {
                    h.update(sha256(k.as_bytes()));
                    h.update(v.hash());
                }
                h.finalize().into()
            }
            kind => {
                let prefix = match kind {
                    Kind::Artifact(_) => "@",
                    Kind::Result(_) => "=",
                    Kind::Node(_) => "#",
                    Kind::Name(_) => "$",
                    _ => "",
                };
                sha256(format!("{prefix}{}", self.to_json_string()).as_bytes())
            }
        }
    }

    /// JSON rendering with nodes as their definition.
    pub fn to_json(&self) -> Json {
        self.to_json_mode(JsonMode::All)
    }

    pub fn to_json_mode(&self, mode: JsonMode) -> Json {
        let non_json = mode == JsonMode::NullForNonJson;
        match self.kind() {
            Kind::Null => Json::Null,
            Kind::Bool(b) => Json::Bool(*b),
            Kind::Number(x) => serde_json::Number::from_f64(*x)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Kind::String(s) => Json::String(s.clone()),
            Kind::List(l) => Json::Array(l.iter().map(|v| v.to_json_mode(mode)).collect()),
            Kind::Map(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_json_mode(mode)))
                    .collect(),
            ),
            _ if non_json => Json::Null,
            Kind::Artifact(a) => a.clone(),
            Kind::Name(n) => n.clone(),
            Kind::Result(r) => {
                let mut m = serde_json::Map::new();
                let sub = JsonMode::AllButNodes;
                m.insert("artifact_stage".into(), r.artifact_stage.to_json_mode(sub));
                m.insert("provides".into(), r.provides.to_json_mode(sub));
                m.insert("runfiles".into(), r.runfiles.to_json_mode(sub));
                Json::Object(m)
            }
            Kind::Node(n) => match mode {
                JsonMode::AllButNodes => serde_json::json!({"type": "NODE", "id": self.id()}),
                _ => n.to_json(),
            },
        }
    }

    /// Compact JSON text (the reference's `ToString`).
    /// Numbers of the language are doubles here (`3.0`); artifact descriptions
    /// keep their integer sizes (`"size":3`), as justbuild prints them.
    pub fn to_json_string(&self) -> String {
        dump_compact_as_stored(&self.to_json())
    }

    /// Compact JSON text, abbreviated to about `len` characters.
    pub fn to_abbrev_string(&self, len: usize) -> String {
        abbreviate(&self.to_json(), len)
    }

    /// From plain JSON: every number becomes a double.
    pub fn from_json(json: &Json) -> Value {
        match json {
            Json::Null => Value::null(),
            Json::Bool(b) => Value::bool(*b),
            Json::Number(n) => Value::number(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => Value::string(s.clone()),
            Json::Array(a) => Value::list(a.iter().map(Value::from_json).collect()),
            Json::Object(o) => Value::map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    pub fn ptr_eq(&self, other: &Value) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Abbreviates JSON text: whole if short enough, else the longest prefix
/// rendering (by nesting depth truncation) that fits.
fn abbreviate(json: &Json, len: usize) -> String {
    let full = dump_compact(json);
    if full.len() <= len {
        return full;
    }
    let mut depth = 1;
    let mut old = truncate(json, depth);
    loop {
        depth += 1;
        let new = truncate(json, depth);
        if new.len() > len || new == old {
            return old;
        }
        old = new;
    }
}

fn truncate(json: &Json, depth: usize) -> String {
    fn go(json: &Json, depth: usize) -> Json {
        match json {
            Json::Array(a) if depth == 0 && !a.is_empty() => Json::String("...".into()),
            Json::Object(o) if depth == 0 && !o.is_empty() => Json::String("...".into()),
            Json::Array(a) => Json::Array(a.iter().map(|v| go(v, depth - 1)).collect()),
            Json::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), go(v, depth - 1)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    dump_compact(&go(json, depth))
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.ptr_eq(other) || self.hash() == other.hash()
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&Value::hash(self)[..8]);
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl From<&Json> for Value {
    fn from(json: &Json) -> Value {
        Value::from_json(json)
    }
}

impl From<Json> for Value {
    fn from(json: Json) -> Value {
        Value::from_json(&json)
    }
}

impl From<&Value> for Json {
    fn from(v: &Value) -> Json {
        v.to_json()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::bool(b)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::number(x)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::string(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::string(s)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Value {
        Value::list(l)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::map(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(j: Json) -> Value {
        Value::from_json(&j)
    }

    #[test]
    fn equality_is_content_identity() {
        assert_eq!(v(json!(1)), v(json!(1.0)));
        assert_ne!(v(json!(0.0)), v(json!(-0.0)));
        assert_ne!(v(json!({"a": null})), v(json!({})));
        assert_eq!(
            v(json!({"b": [1, "x"], "a": {}})),
            v(json!({"a": {}, "b": [1.0, "x"]}))
        );
        assert_ne!(v(json!("1")), v(json!(1)));
        assert_ne!(v(json!([])), v(json!({})));
        let a = Value::artifact(json!({"type": "KNOWN", "data": {}}));
        let m = v(json!({"type": "KNOWN", "data": {}}));
        assert_ne!(a, m);
    }

    #[test]
    fn atom_hash_is_prefixed_json() {
        assert_eq!(v(json!(1)).hash(), sha256(b"1.0"));
        assert_eq!(v(json!("x")).hash(), sha256(b"\"x\""));
        assert_eq!(Value::null().hash(), sha256(b"null"));
        let n = Value::name(json!(["@", "r", "m", "n"]));
        assert_eq!(n.hash(), sha256(b"$[\"@\",\"r\",\"m\",\"n\"]"));
        let mut h = Sha256::new();
        h.update(b"[");
        h.update(sha256(b"true"));
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(v(json!([true])).hash(), want);
        let mut h = Sha256::new();
        h.update(b"{");
        h.update(sha256(b"k"));
        h.update(sha256(b"null"));
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(v(json!({"k": null})).hash(), want);
    }

    #[test]
    fn truthiness_and_cacheability() {
        for falsy in [
            json!(null),
            json!(false),
            json!(0),
            json!(-0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!v(falsy.clone()).is_true(), "{falsy}");
        }
        assert!(Value::name(json!("x")).is_true());
        let named = Value::list(vec![Value::name(json!("x"))]);
        assert!(!named.is_cacheable());
        assert!(v(json!({"a": [1]})).is_cacheable());
    }

    #[test]
    fn results_and_nodes_render_and_hash_with_prefixes() {
        let art = Value::artifact(
            json!({"type": "KNOWN", "data": {"id": "ab", "size": 3, "file_type": "f"}}),
        );
        let mut stage = Map::new();
        stage.insert("out".into(), art.clone());
        let abstract_node = Value::node(Node::Abstract {
            node_type: "t".into(),
            string_fields: v(json!({"s": ["x"]})),
            target_fields: v(json!({})),
        });
        let result = Value::result(TargetResult {
            artifact_stage: Value::map(stage),
            runfiles: Value::empty_map(),
            provides: Value::list(vec![abstract_node.clone()]),
        });
        let text = result.to_json_string();
        assert_eq!(
            text,
            format!(
                r#"{{"artifact_stage":{{"out":{{"data":{{"file_type":"f","id":"ab","size":3}},"type":"KNOWN"}}}},"provides":[{{"id":"{}","type":"NODE"}}],"runfiles":{{}}}}"#,
                abstract_node.id()
            )
        );
        assert_eq!(result.hash(), sha256(format!("={text}").as_bytes()));
        assert_eq!(
            abstract_node.to_json_string(),
            r#"{"node_type":"t","string_fields":{"s":["x"]},"target_fields":{},"type":"ABSTRACT_NODE"}"#
        );
        assert_eq!(
            abstract_node.hash(),
            sha256(format!("#{}", abstract_node.to_json_string()).as_bytes())
        );
        assert_eq!(
            art.hash(),
            sha256(format!("@{}", art.to_json_string()).as_bytes())
        );
        let value_node = Value::node(Node::Value(result.clone()));
        assert_eq!(
            value_node.to_json_string(),
            format!(r#"{{"result":{text},"type":"VALUE_NODE"}}"#)
        );
        assert!(result.is_cacheable());
        let named = Value::result(TargetResult {
            artifact_stage: Value::empty_map(),
            runfiles: Value::empty_map(),
            provides: Value::list(vec![Value::name(json!("n"))]),
        });
        assert!(!named.is_cacheable());
        assert!(!Value::node(Node::Value(named)).is_cacheable());
        assert_eq!(
            Value::null().to_json_mode(JsonMode::NullForNonJson),
            Json::Null
        );
        assert_eq!(art.to_json_mode(JsonMode::NullForNonJson), Json::Null);
    }
}
