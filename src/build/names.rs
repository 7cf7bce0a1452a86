//! Entity names: how targets, rules and expressions are named in justbuild's
//! build language, parsed relative to the (repository, module) that mentions
//! them, and printed the way `just` prints them.
//!
//! Forms understood (anything else is "Syntactically invalid"):
//!
//! * `"name"` — in the current module;
//! * `[module, name]` — absolute module in the current repository;
//! * `["./", relative module, name]` — module relative to the current one;
//! * `["@", local repo, module, name]` — through the current repository's
//!   bindings;
//! * `["FILE" | "TREE" | "GLOB" | "SYMLINK", null | "." | current module, name]`
//!   — a file-system reference in the current module.
//!
//! Modules are normalised as `just` does: a path under a virtual root, `.`
//! and empty components dropped, `..` resolved and clamped at the root, no
//! leading or trailing slash; the top module is `""`.

use serde_json::Value;
use std::fmt;

/// What a named entity refers to. The order (target < file < tree < glob <
/// symlink) is the reference's, used when names are sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReferenceKind {
    Target,
    File,
    Tree,
    Glob,
    Symlink,
}

impl ReferenceKind {
    /// The marker of a file-system reference (`None` for targets).
    pub fn marker(self) -> Option<&'static str> {
        match self {
            ReferenceKind::Target => None,
            ReferenceKind::File => Some(FILE_MARKER),
            ReferenceKind::Tree => Some(TREE_MARKER),
            ReferenceKind::Glob => Some(GLOB_MARKER),
            ReferenceKind::Symlink => Some(SYMLINK_MARKER),
        }
    }

    pub fn from_marker(s: &str) -> Option<ReferenceKind> {
        match s {
            FILE_MARKER => Some(ReferenceKind::File),
            TREE_MARKER => Some(ReferenceKind::Tree),
            GLOB_MARKER => Some(ReferenceKind::Glob),
            SYMLINK_MARKER => Some(ReferenceKind::Symlink),
            _ => None,
        }
    }
}

pub const LOCATION_MARKER: &str = "@";
pub const RELATIVE_MARKER: &str = "./";
pub const ANONYMOUS_MARKER: &str = "#";
pub const FILE_MARKER: &str = "FILE";
pub const TREE_MARKER: &str = "TREE";
pub const GLOB_MARKER: &str = "GLOB";
pub const SYMLINK_MARKER: &str = "SYMLINK";

/// A named entity: global repository, normalised module, name and kind.
/// Field order gives the reference's ordering (repository, module, name,
/// kind).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedTarget {
    pub repository: String,
    pub module: String,
    pub name: String,
    pub kind: ReferenceKind,
}

impl NamedTarget {
    /// A name of kind target; `module` is normalised.
    pub fn new(repository: &str, module: &str, name: &str) -> NamedTarget {
        NamedTarget::with_kind(repository, module, name, ReferenceKind::Target)
    }

    /// A name of the given kind; `module` is normalised.
    pub fn with_kind(
        repository: &str,
        module: &str,
        name: &str,
        kind: ReferenceKind,
    ) -> NamedTarget {
        NamedTarget {
            repository: repository.to_string(),
            module: normal_module_name(module),
            name: name.to_string(),
            kind,
        }
    }

    /// `["@", repo, (marker,) module, name]`.
    pub fn to_json(&self) -> Value {
        let mut v = vec![
            Value::from(LOCATION_MARKER),
            Value::from(self.repository.as_str()),
        ];
        if let Some(m) = self.kind.marker() {
            v.push(Value::from(m));
        }
        v.push(Value::from(self.module.as_str()));
        v.push(Value::from(self.name.as_str()));
        Value::Array(v)
    }

    /// Only targets can name rules and expressions.
    pub fn is_definition_name(&self) -> bool {
        self.kind == ReferenceKind::Target
    }
}

/// An anonymous target, identified by the identifiers (hex hashes) of its
/// rule map and target node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AnonymousTarget {
    pub rule_map_id: String,
    pub target_node_id: String,
}

/// A name as the analysis sees it. Named entities sort before anonymous ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityName {
    Named(NamedTarget),
    Anonymous(AnonymousTarget),
}

impl EntityName {
    /// The JSON form `just` prints: `["@", repo, (marker,) module, name]` or
    /// `["#", rule map id, node id]`.
    pub fn to_json(&self) -> Value {
        match self {
            EntityName::Named(n) => n.to_json(),
            EntityName::Anonymous(a) => Value::Array(vec![
                Value::from(ANONYMOUS_MARKER),
                Value::from(a.rule_map_id.as_str()),
                Value::from(a.target_node_id.as_str()),
            ]),
        }
    }

    pub fn named(&self) -> Option<&NamedTarget> {
        match self {
            EntityName::Named(n) => Some(n),
            EntityName::Anonymous(_) => None,
        }
    }
}

impl fmt::Display for NamedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::build::json::dump_compact(&self.to_json()))
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::build::json::dump_compact(&self.to_json()))
    }
}

impl From<NamedTarget> for EntityName {
    fn from(n: NamedTarget) -> EntityName {
        EntityName::Named(n)
    }
}

/// Why a name reference could not be parsed. `Display` gives the messages
/// `just` logs; every variant ends with the "Syntactically invalid entity
/// name" line the reference adds after the specific reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("Syntactically invalid entity name: {source_json}.")]
    Invalid { source_json: String },
    #[error(
        "Relative module name {relmodule} is outside of workspace\nSyntactically invalid entity name: {source_json}."
    )]
    OutsideWorkspace {
        relmodule: String,
        source_json: String,
    },
    #[error(
        "Cannot resolve repository name {local}\nSyntactically invalid entity name: {source_json}."
    )]
    UnknownBinding { local: String, source_json: String },
    #[error(
        "Invalid module name {module_json} for file reference\nSyntactically invalid entity name: {source_json}."
    )]
    InvalidFileReferenceModule {
        module_json: String,
        source_json: String,
    },
    #[error(
        "Parsing anonymous target is not supported. Identifiers of anonymous targets should be obtained as FIELD value of anonymous fields\nSyntactically invalid entity name: {source_json}."
    )]
    Anonymous { source_json: String },
}

/// Something a name can be parsed from: JSON here; the expression values can
/// implement it too.
pub trait NameSource {
    fn name_str(&self) -> Option<&str>;
    fn name_list(&self) -> Option<Vec<&Self>>;
    fn name_is_null(&self) -> bool;
    /// The JSON text used in error messages.
    fn name_to_string(&self) -> String;
}

impl NameSource for Value {
    fn name_str(&self) -> Option<&str> {
        self.as_str()
    }
    fn name_list(&self) -> Option<Vec<&Value>> {
        self.as_array().map(|a| a.iter().collect())
    }
    fn name_is_null(&self) -> bool {
        self.is_null()
    }
    fn name_to_string(&self) -> String {
        // As read from a file: integers stay integers, like nlohmann's
        // `dump()` of parsed JSON (these texts are never hashed).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses a name reference relative to `current` (its repository and module;
/// its name and kind are ignored). `global_name(repo, local)` resolves the
/// bindings of a repository (see `RepositoryConfig::global_name`).
pub fn parse_entity_name<S: NameSource + ?Sized>(
    source: &S,
    current: &NamedTarget,
    global_name: &dyn Fn(&str, &str) -> Option<String>,
) -> Result<NamedTarget, NameError> {
    let invalid = || NameError::Invalid {
        source_json: source.name_to_string(),
    };
    if let Some(s) = source.name_str() {
        return Ok(NamedTarget::new(&current.repository, &current.module, s));
    }
    let Some(list) = source.name_list() else {
        return Err(invalid());
    };
    if list.len() == 2 {
        return match (list[0].name_str(), list[1].name_str()) {
            (Some(m), Some(n)) => Ok(NamedTarget::new(&current.repository, m, n)),
            _ => Err(invalid()),
        };
    }
    if list.len() < 3 {
        return Err(invalid());
    }
    let Some(s0) = list[0].name_str() else {
        return Err(invalid());
    };
    match s0 {
        RELATIVE_MARKER => {
            let (Some(rel), Some(name), 3) = (list[1].name_str(), list[2].name_str(), list.len())
            else {
                return Err(invalid());
            };
            match relative_module(&current.module, rel) {
                Some(m) => Ok(NamedTarget::new(&current.repository, &m, name)),
                None => Err(NameError::OutsideWorkspace {
                    relmodule: rel.to_string(),
                    source_json: source.name_to_string(),
                }),
            }
        }
        LOCATION_MARKER => {
            if list.len() != 4 {
                return Err(invalid());
            }
            let (Some(local), Some(module), Some(name)) =
                (list[1].name_str(), list[2].name_str(), list[3].name_str())
            else {
                return Err(invalid());
            };
            match global_name(&current.repository, local) {
                Some(repo) => Ok(NamedTarget::new(&repo, module, name)),
                None => Err(NameError::UnknownBinding {
                    local: local.to_string(),
                    source_json: source.name_to_string(),
                }),
            }
        }
        ANONYMOUS_MARKER => Err(NameError::Anonymous {
            source_json: source.name_to_string(),
        }),
        _ => {
            let Some(kind) = ReferenceKind::from_marker(s0) else {
                return Err(invalid());
            };
            if list.len() != 3 {
                return Err(invalid());
            }
            let Some(name) = list[2].name_str() else {
                return Err(invalid());
            };
            let same_module = list[1].name_is_null()
                || list[1]
                    .name_str()
                    .is_some_and(|m| m == "." || m == current.module);
            if same_module {
                Ok(NamedTarget {
                    repository: current.repository.clone(),
                    module: current.module.clone(),
                    name: name.to_string(),
                    kind,
                })
            } else {
                Err(NameError::InvalidFileReferenceModule {
                    module_json: list[1].name_to_string(),
                    source_json: source.name_to_string(),
                })
            }
        }
    }
}

/// Lexical normalisation of a module name: a path below a virtual root,
/// `..` clamped at the root, no leading or trailing slash, `""` for the top.
pub fn normal_module_name(module: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in module.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// `current / rel`, lexically normalised as std::filesystem does; `None`
/// when the result leaves the workspace (starts with `../`). A result of
/// exactly `..` is let through and clamped to the top module, as the
/// reference does. An absolute `rel` replaces the current module.
fn relative_module(current: &str, rel: &str) -> Option<String> {
    let absolute = rel.starts_with('/');
    let joined = if absolute || current.is_empty() {
        rel.to_string()
    } else {
        format!("{current}/{rel}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&p) if p != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            c => parts.push(c),
        }
    }
    if parts.first() == Some(&"..") && parts.len() > 1 {
        return None;
    }
    Some(normal_module_name(&joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_normalisation() {
        for (m, want) in [
            ("", ""),
            (".", ""),
            ("./", ""),
            ("/", ""),
            ("a", "a"),
            ("a/", "a"),
            ("/a", "a"),
            ("a//b/./c/", "a/b/c"),
            ("a/b/..", "a"),
            ("a/../..", ""),
            ("../x", "x"),
            ("...", "..."),
        ] {
            assert_eq!(normal_module_name(m), want, "{m}");
        }
    }

    #[test]
    fn relative_modules() {
        assert_eq!(relative_module("", ".").as_deref(), Some(""));
        assert_eq!(relative_module("a/b", "..").as_deref(), Some("a"));
        assert_eq!(relative_module("a/b", "../c").as_deref(), Some("a/c"));
        assert_eq!(relative_module("a", "").as_deref(), Some("a"));
        assert_eq!(relative_module("", "..").as_deref(), Some(""));
        assert_eq!(relative_module("", "../").as_deref(), Some(""));
        assert_eq!(relative_module("a", "../..").as_deref(), Some(""));
        assert_eq!(relative_module("", "../x"), None);
        assert_eq!(relative_module("a", "../../x"), None);
        assert_eq!(relative_module("a", "/x/y").as_deref(), Some("x/y"));
        assert_eq!(relative_module("a", "/../x").as_deref(), Some("x"));
    }
}
