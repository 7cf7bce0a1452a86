//! Artifact descriptions as justbuild writes them: `{"data": {...}, "type": T}`
//! with `T` one of `LOCAL`, `KNOWN`, `ACTION`, `TREE`, `TREE_OVERLAY`.
//!
//! The JSON form keeps the `size` of a `KNOWN` artifact an integer (the
//! reference stores it as `size_t`, so its text is `"size":3`, never
//! `3.0`); `to_json_text` gives that exact text, which is what artifact ids,
//! tree ids and the value hash of an artifact are computed from.
//!
//! The value type of the build language stores an artifact as this JSON
//! (`Value::artifact(desc.to_json())`); `from_value`/`to_value` convert.

use serde_json::{json, Value as Json};
use sha2::{Digest as _, Sha256};

use crate::build::json::write_string;
use crate::build::value::Value;
use crate::digest::{HashFunction, ObjectKind};

/// An artifact description.
#[derive(Debug, Clone)]
pub enum ArtifactDescription {
    /// A file of a file root: path relative to the workspace root.
    Local { path: String, repository: String },
    /// An object known by digest. `repository` is where a git blob was found
    /// (a fetch hint only; never serialised, ignored by equality).
    Known {
        id: String,
        size: u64,
        file_type: ObjectKind,
        repository: Option<String>,
    },
    /// Output `path` of action `action_id`.
    Action { action_id: String, path: String },
    /// A tree built by the analysis (id of the tree's description).
    Tree { id: String },
    /// A tree overlay built by the analysis.
    TreeOverlay { id: String },
}

/// Why a JSON object is not an artifact description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("can not retrieve value for \"{key}\" from {what}: {found}")]
    Field {
        key: &'static str,
        what: &'static str,
        found: String,
    },
    #[error(
        "artifact type must be one of \"LOCAL\", \"KNOWN\", \"ACTION\", \"TREE\", or \"TREE_OVERLAY\", but found {0}"
    )]
    UnknownType(String),
    #[error("invalid id {id:?} of KNOWN artifact: {message}")]
    BadId { id: String, message: String },
    #[error("value {0} is not an artifact")]
    NotAnArtifact(String),
}

/// The reference's file-type letter; unknown letters read as a plain file.
pub fn file_type_from_char(c: char) -> ObjectKind {
    match c {
        'x' => ObjectKind::Executable,
        't' => ObjectKind::Tree,
        'l' => ObjectKind::Symlink,
        _ => ObjectKind::File,
    }
}

impl ArtifactDescription {
    pub fn local(path: impl Into<String>, repository: impl Into<String>) -> Self {
        ArtifactDescription::Local {
            path: path.into(),
            repository: repository.into(),
        }
    }

    pub fn known(id: impl Into<String>, size: u64, file_type: ObjectKind) -> Self {
        ArtifactDescription::Known {
            id: id.into(),
            size,
            file_type,
            repository: None,
        }
    }

    pub fn action(action_id: impl Into<String>, path: impl Into<String>) -> Self {
        ArtifactDescription::Action {
            action_id: action_id.into(),
            path: path.into(),
        }
    }

    pub fn tree(id: impl Into<String>) -> Self {
        ArtifactDescription::Tree { id: id.into() }
    }

    pub fn tree_overlay(id: impl Into<String>) -> Self {
        ArtifactDescription::TreeOverlay { id: id.into() }
    }

    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            ArtifactDescription::Local { .. } => "LOCAL",
            ArtifactDescription::Known { .. } => "KNOWN",
            ArtifactDescription::Action { .. } => "ACTION",
            ArtifactDescription::Tree { .. } => "TREE",
            ArtifactDescription::TreeOverlay { .. } => "TREE_OVERLAY",
        }
    }

    /// The description JSON (`size` an unsigned integer).
    pub fn to_json(&self) -> Json {
        let data = match self {
            ArtifactDescription::Local { path, repository } => {
                json!({"path": path, "repository": repository})
            }
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } => json!({"file_type": file_type.type_char().to_string(), "id": id, "size": size}),
            ArtifactDescription::Action { action_id, path } => {
                json!({"id": action_id, "path": path})
            }
            ArtifactDescription::Tree { id } | ArtifactDescription::TreeOverlay { id } => {
                json!({"id": id})
            }
        };
        json!({"data": data, "type": self.type_name()})
    }

    /// The compact text the reference produces (`ToJson().dump()`): sorted
    /// keys, the size as an integer.
    pub fn to_json_text(&self) -> String {
        let mut out = String::new();
        self.write_json_text(&mut out);
        out
    }

    /// Appends the compact text to `out`.
    pub fn write_json_text(&self, out: &mut String) {
        out.push_str("{\"data\":{");
        let field = |out: &mut String, key: &str, value: &str, first: bool| {
            if !first {
                out.push(',');
            }
            write_string(out, key);
            out.push(':');
            write_string(out, value);
        };
        match self {
            ArtifactDescription::Local { path, repository } => {
                field(out, "path", path, true);
                field(out, "repository", repository, false);
            }
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } => {
                field(out, "file_type", &file_type.type_char().to_string(), true);
                field(out, "id", id, false);
                out.push_str(&format!(",\"size\":{size}"));
            }
            ArtifactDescription::Action { action_id, path } => {
                field(out, "id", action_id, true);
                field(out, "path", path, false);
            }
            ArtifactDescription::Tree { id } | ArtifactDescription::TreeOverlay { id } => {
                field(out, "id", id, true);
            }
        }
        out.push_str("},\"type\":");
        write_string(out, self.type_name());
        out.push('}');
    }

    /// The artifact identifier: hex SHA-256 of the compact text.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_json_text().as_bytes()))
    }

    /// Parses a description. `hash` is the process's hash function; the id
    /// of a `KNOWN` artifact must be a hex id of it. Extra keys are ignored;
    /// unknown file-type letters read as `f`.
    pub fn from_json(json: &Json, hash: HashFunction) -> Result<Self, ArtifactError> {
        let what = "artifact description";
        let ty = get_str(json, "type", what)?;
        let data = json
            .get("data")
            .ok_or_else(|| missing("data", what, json))?;
        match ty {
            "LOCAL" => {
                let what = "LOCAL artifact's data";
                Ok(ArtifactDescription::Local {
                    path: get_str(data, "path", what)?.to_string(),
                    repository: get_str(data, "repository", what)?.to_string(),
                })
            }
            "KNOWN" => {
                let what = "KNOWN artifact's data";
                let id = get_str(data, "id", what)?;
                let size = data
                    .get("size")
                    .and_then(json_size)
                    .ok_or_else(|| missing("size", what, data))?;
                let file_type = get_str(data, "file_type", what)?;
                let mut chars = file_type.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return Err(missing("file_type", what, data));
                };
                hash.check_hex(id).map_err(|e| ArtifactError::BadId {
                    id: id.to_string(),
                    message: e.to_string(),
                })?;
                Ok(ArtifactDescription::known(id, size, file_type_from_char(c)))
            }
            "ACTION" => {
                let what = "ACTION artifact's data";
                Ok(ArtifactDescription::Action {
                    action_id: get_str(data, "id", what)?.to_string(),
                    path: get_str(data, "path", what)?.to_string(),
                })
            }
            "TREE" => Ok(ArtifactDescription::Tree {
                id: get_str(data, "id", "TREE artifact's data")?.to_string(),
            }),
            "TREE_OVERLAY" => Ok(ArtifactDescription::TreeOverlay {
                id: get_str(data, "id", "TREE_OVERLAY artifact's data")?.to_string(),
            }),
            other => Err(ArtifactError::UnknownType(other.to_string())),
        }
    }

    /// The build-language value of this artifact.
    pub fn to_value(&self) -> Value {
        Value::artifact(self.to_json())
    }

    /// The description stored in an artifact value.
    pub fn from_value(value: &Value, hash: HashFunction) -> Result<Self, ArtifactError> {
        match value.as_artifact() {
            Some(json) => ArtifactDescription::from_json(json, hash),
            None => Err(ArtifactError::NotAnArtifact(value.to_abbrev_string(200))),
        }
    }

    /// The repository hint of a `KNOWN` artifact.
    pub fn with_repository(mut self, repo: impl Into<String>) -> Self {
        if let ArtifactDescription::Known { repository, .. } = &mut self {
            *repository = Some(repo.into());
        }
        self
    }

    /// Whether this is a `KNOWN` artifact (only those may be cached).
    pub fn is_known(&self) -> bool {
        matches!(self, ArtifactDescription::Known { .. })
    }

    /// The object-info string of a known artifact: `[<hash>:<size>:<type>]`.
    pub fn object_info(&self) -> Option<String> {
        match self {
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } => Some(format!("[{id}:{size}:{}]", file_type.type_char())),
            _ => None,
        }
    }
}

impl PartialEq for ArtifactDescription {
    fn eq(&self, other: &Self) -> bool {
        self.to_json_text() == other.to_json_text()
    }
}

impl Eq for ArtifactDescription {}

impl std::fmt::Display for ArtifactDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json_text())
    }
}

/// A size as nlohmann reads `size_t`: a non-negative integer (a double with
/// an integral value is accepted too, as values of the language are doubles).
fn json_size(v: &Json) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let x = v.as_f64()?;
    (x >= 0.0 && x.fract() == 0.0 && x < 1.8e19).then_some(x as u64)
}

fn missing(key: &'static str, what: &'static str, json: &Json) -> ArtifactError {
    ArtifactError::Field {
        key,
        what,
        found: serde_json::to_string(json).unwrap_or_default(),
    }
}

fn get_str<'a>(
    json: &'a Json,
    key: &'static str,
    what: &'static str,
) -> Result<&'a str, ArtifactError> {
    json.get(key)
        .and_then(Json::as_str)
        .ok_or_else(|| missing(key, what, json))
}

/// How analysed trees are identified. The ids are internal to the
/// analysis, but they show in graph dumps and in the action ids of actions
/// that take such trees as inputs, so comparing with an older reference
/// needs its scheme.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdScheme {
    /// SHA-256 of `TREE:` and the compact description (justbuild 1.6 on).
    #[default]
    Current,
    /// SHA-256 of the bare description (justbuild up to 1.5).
    Legacy,
}

/// The id of a tree built by the analysis from its entries (path →
/// artifact): hex SHA-256 of `TREE:` followed by the compact description.
pub fn tree_id<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a ArtifactDescription)>,
) -> String {
    tree_id_in(IdScheme::Current, entries)
}

/// [`tree_id`] in a given scheme.
pub fn tree_id_in<'a>(
    scheme: IdScheme,
    entries: impl IntoIterator<Item = (&'a str, &'a ArtifactDescription)>,
) -> String {
    let text = tree_description_text(entries);
    let prefix = match scheme {
        IdScheme::Current => "TREE:",
        IdScheme::Legacy => "",
    };
    hex::encode(Sha256::digest(format!("{prefix}{text}").as_bytes()))
}

/// The compact JSON text of a tree's description (paths sorted bytewise).
pub fn tree_description_text<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a ArtifactDescription)>,
) -> String {
    let mut entries: Vec<_> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::from("{");
    for (i, (path, artifact)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(&mut out, path);
        out.push(':');
        artifact.write_json_text(&mut out);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: HashFunction = HashFunction::GitSha1;

    #[test]
    fn texts_match_the_reference_shapes() {
        let id = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        let cases = [
            (
                ArtifactDescription::local("a/b.c", "main"),
                r#"{"data":{"path":"a/b.c","repository":"main"},"type":"LOCAL"}"#.to_string(),
            ),
            (
                ArtifactDescription::known(id, 0, ObjectKind::Executable),
                format!(r#"{{"data":{{"file_type":"x","id":"{id}","size":0}},"type":"KNOWN"}}"#),
            ),
            (
                ArtifactDescription::action("abc", "out/x"),
                r#"{"data":{"id":"abc","path":"out/x"},"type":"ACTION"}"#.to_string(),
            ),
            (
                ArtifactDescription::tree("t1"),
                r#"{"data":{"id":"t1"},"type":"TREE"}"#.to_string(),
            ),
            (
                ArtifactDescription::tree_overlay("o1"),
                r#"{"data":{"id":"o1"},"type":"TREE_OVERLAY"}"#.to_string(),
            ),
        ];
        for (desc, text) in cases {
            assert_eq!(desc.to_json_text(), text);
            assert_eq!(serde_json::to_string(&desc.to_json()).unwrap(), text);
            let back = ArtifactDescription::from_json(&desc.to_json(), H).unwrap();
            assert_eq!(back, desc);
            let v = desc.to_value();
            assert_eq!(ArtifactDescription::from_value(&v, H).unwrap(), desc);
        }
    }

    #[test]
    fn parse_errors_and_leniency() {
        let bad = [
            json!({"type": "LOCAL"}),
            json!({"data": {}}),
            json!({"type": "LOCAL", "data": {"path": "x"}}),
            json!({"type": "KNOWN", "data": {"id": "00", "size": 1, "file_type": "f"}}),
            json!({"type": "KNOWN", "data": {"id": "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "size": -1, "file_type": "f"}}),
            json!({"type": "KNOWN", "data": {"id": "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "size": 1, "file_type": "fx"}}),
            json!({"type": "FOO", "data": {}}),
            json!({"type": "TREE", "data": {"id": 1}}),
        ];
        for b in bad {
            assert!(ArtifactDescription::from_json(&b, H).is_err(), "{b}");
        }
        let odd = json!({"type": "KNOWN", "data": {"id": "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "size": 4.0, "file_type": "q", "extra": 1}});
        let d = ArtifactDescription::from_json(&odd, H).unwrap();
        assert_eq!(
            d,
            ArtifactDescription::known(
                "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
                4,
                ObjectKind::File
            )
        );
        assert_eq!(
            d.object_info().unwrap(),
            "[e69de29bb2d1d6434b8b29ae775ad8c2e48c5391:4:f]"
        );
        assert!(ArtifactDescription::from_value(&Value::string("x"), H).is_err());
    }

    #[test]
    fn id_scheme_hash_the_sorted_description() {
        let a = ArtifactDescription::local("m/a", "r");
        let text = tree_description_text([("b", &a), ("a", &a)]);
        assert_eq!(
            text,
            r#"{"a":{"data":{"path":"m/a","repository":"r"},"type":"LOCAL"},"b":{"data":{"path":"m/a","repository":"r"},"type":"LOCAL"}}"#
        );
        assert_eq!(tree_id([]), hex::encode(Sha256::digest(b"TREE:{}")));
    }
}
