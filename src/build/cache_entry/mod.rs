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

mod read;
#[cfg(test)]
mod tests;
mod write;

pub use read::{entry_implied, entry_objects, parse_entry, parse_entry_json};
pub use write::{dump_entry, entry_json, entry_text, non_known_artifacts};
