//! The local action cache: action digest -> `ActionResult`. The result message
//! is a CAS blob; the entry file `ac/<2>/<rest>` holds `["<blob hash>",<size>]`,
//! as justbuild writes it, so `just` can read entries of a shared build root.

use std::fs;
use std::io;
use std::path::PathBuf;

use bazel_remote_apis::build::bazel::remote::execution::v2::{ActionResult, Digest, Tree};
use prost::Message;

use super::atomic::{write_atomic, write_atomic_unsynced};
use super::cas::{Cas, CasError};
use crate::digest::{HashFunction, ObjectKind};

/// Errors of the action cache.
#[derive(Debug, thiserror::Error)]
pub enum ActionCacheError {
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error("I/O error on action-cache entry {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug)]
pub struct ActionCache {
    cas: Cas,
    dir: PathBuf,
    tmp: PathBuf,
    /// Entry directories of older generations, youngest first.
    older: Vec<PathBuf>,
}

impl ActionCache {
    pub fn new(cas: Cas, dir: PathBuf, tmp: PathBuf) -> ActionCache {
        ActionCache {
            cas,
            dir,
            tmp,
            older: Vec::new(),
        }
    }

    /// This cache, also reading entries of older generations at `older`.
    pub fn with_older(mut self, older: Vec<PathBuf>) -> ActionCache {
        self.older = older;
        self
    }

    fn entry_path(&self, action_hash: &str) -> PathBuf {
        entry_under(&self.dir, action_hash)
    }

    /// Stores `result` for the action with hex id `action_hash` (last writer wins).
    pub fn store(&self, action_hash: &str, result: &ActionResult) -> Result<(), ActionCacheError> {
        self.cas
            .hash_function()
            .check_hex(action_hash)
            .map_err(|e| ActionCacheError::Io {
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            })?;
        let blob = self
            .cas
            .put_bytes(ObjectKind::File, &result.encode_to_vec())?;
        let entry = serde_json::json!([blob.hash, blob.size]).to_string();
        let path = self.entry_path(action_hash);
        // The result blob is synced; an entry lost in a crash is a miss
        // (`get`), and skipping its sync saves one of each action's flushes.
        write_atomic_unsynced(&self.tmp, &path, entry.as_bytes(), 0o644)
            .map_err(|source| ActionCacheError::Io { path, source })
    }

    /// The stored result of an action, if there is a readable one.
    pub fn get(&self, action_hash: &str) -> Result<Option<ActionResult>, ActionCacheError> {
        if self.cas.hash_function().check_hex(action_hash).is_err() {
            return Ok(None);
        }
        let path = self.entry_path(action_hash);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.get_older(action_hash);
            }
            Err(source) => return Err(ActionCacheError::Io { path, source }),
        };
        // An entry that does not parse, or whose blob is gone, is a miss.
        let Ok((hash, _size)) = serde_json::from_str::<(String, u64)>(&text) else {
            tracing::warn!(entry = %path.display(), "ignoring malformed action-cache entry");
            return Ok(None);
        };
        let Some(bytes) = self.cas.read(ObjectKind::File, &hash)? else {
            return Ok(None);
        };
        Ok(ActionResult::decode(bytes.as_slice()).ok())
    }

    pub fn hash_function(&self) -> HashFunction {
        self.cas.hash_function()
    }

    /// An entry of an older generation: what its result names is copied
    /// forward first (reading through the CAS does that), then the entry.
    fn get_older(&self, action_hash: &str) -> Result<Option<ActionResult>, ActionCacheError> {
        let Some(old) = self
            .older
            .iter()
            .map(|d| entry_under(d, action_hash))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let text = fs::read_to_string(&old).map_err(|source| ActionCacheError::Io {
            path: old.clone(),
            source,
        })?;
        let Ok((hash, _size)) = serde_json::from_str::<(String, u64)>(&text) else {
            return Ok(None);
        };
        let Some(bytes) = self.cas.read(ObjectKind::File, &hash)? else {
            return Ok(None);
        };
        let Ok(result) = ActionResult::decode(bytes.as_slice()) else {
            return Ok(None);
        };
        if !self.uplink_outputs(&result)? {
            tracing::debug!(action = action_hash, "older entry names objects now gone");
            return Ok(None);
        }
        let path = self.entry_path(action_hash);
        write_atomic(&self.tmp, &path, text.as_bytes(), 0o644)
            .map_err(|source| ActionCacheError::Io { path, source })?;
        Ok(Some(result))
    }

    /// Brings every object `result` names into the current generation;
    /// false if one of them is gone.
    fn uplink_outputs(&self, result: &ActionResult) -> Result<bool, ActionCacheError> {
        // Wire digests (native ones carry a type prefix) to local ids.
        let hash = self.cas.hash_function();
        let present = |kind: ObjectKind, d: &Option<Digest>| match d {
            Some(d) if !d.hash.is_empty() => hash
                .digest_from_wire(d)
                .is_ok_and(|d| self.cas.contains(kind, &d.hash)),
            _ => true,
        };
        for f in &result.output_files {
            if !present(ObjectKind::blob(f.is_executable), &f.digest) {
                return Ok(false);
            }
        }
        for d in &result.output_directories {
            if self.cas.hash_function().is_native() {
                if !present(ObjectKind::Tree, &d.tree_digest) {
                    return Ok(false);
                }
                continue;
            }
            // Compatible: a Tree message, whose files are named inside.
            let Some(digest) = &d.tree_digest else {
                continue;
            };
            let Ok(digest) = hash.digest_from_wire(digest) else {
                return Ok(false);
            };
            let Some(bytes) = self.cas.read(ObjectKind::File, &digest.hash)? else {
                return Ok(false);
            };
            let Ok(tree) = Tree::decode(bytes.as_slice()) else {
                return Ok(false);
            };
            for dir in tree.root.iter().chain(tree.children.iter()) {
                for f in &dir.files {
                    if !present(ObjectKind::blob(f.is_executable), &f.digest) {
                        return Ok(false);
                    }
                }
            }
        }
        // The logs too (an empty one need not be stored): an entry without
        // them would be dropped with the older generation while it stays.
        let log_present = |d: &Option<Digest>| match d {
            Some(d) if d.size_bytes == 0 => true,
            d => present(ObjectKind::File, d),
        };
        Ok(log_present(&result.stdout_digest) && log_present(&result.stderr_digest))
    }
}

fn entry_under(dir: &std::path::Path, action_hash: &str) -> PathBuf {
    let (shard, rest) = action_hash.split_at(2.min(action_hash.len()));
    dir.join(shard).join(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_get() {
        let dir = tempfile::tempdir().unwrap();
        let hf = HashFunction::Sha256;
        let cas = Cas::new(hf, dir.path().join("s"), dir.path().join("tmp"));
        let ac = ActionCache::new(cas.clone(), dir.path().join("s/ac"), dir.path().join("tmp"));
        let action = hf.hash_bytes(ObjectKind::File, b"action");
        assert!(ac.get(&action).unwrap().is_none());
        let result = ActionResult {
            exit_code: 0,
            stdout_raw: b"hi".to_vec(),
            ..Default::default()
        };
        ac.store(&action, &result).unwrap();
        assert_eq!(ac.get(&action).unwrap(), Some(result.clone()));
        // The entry points at the result blob, justbuild's way.
        let entry = fs::read_to_string(ac.entry_path(&action)).unwrap();
        let blob = hf.digest_bytes(ObjectKind::File, &result.encode_to_vec());
        assert_eq!(entry, format!("[\"{}\",{}]", blob.hash, blob.size));
        assert!(ac.get("not-hex").unwrap().is_none());
        assert!(ac.store("not-hex", &result).is_err());
    }

    #[test]
    fn an_entry_emptied_by_a_crash_is_a_miss_until_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let hf = HashFunction::GitSha1;
        let cas = Cas::new(hf, dir.path().join("s"), dir.path().join("tmp"));
        let ac = ActionCache::new(cas, dir.path().join("s/ac"), dir.path().join("tmp"));
        let action = hf.hash_bytes(ObjectKind::File, b"action");
        let result = ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        ac.store(&action, &result).unwrap();
        // Unsynced entries come back whole, empty or not at all.
        fs::write(ac.entry_path(&action), b"").unwrap();
        assert_eq!(ac.get(&action).unwrap(), None);
        ac.store(&action, &result).unwrap();
        assert_eq!(ac.get(&action).unwrap(), Some(result));
    }
}
