//! The local target-level cache, laid out as justbuild's so that `just` and
//! jserve can share a build root.
//!
//! Entries are partitioned into shards, one per execution backend: the shard
//! is named by the hash (the storage's own hash function, as for a blob) of a
//! pretty-printed backend description, which is also kept in the CAS for
//! information. Inside a shard, `<key[0:2]>/<key[2:]>` (the hash of the
//! target-cache key blob) holds the object-info string `[hash:size:f]` of the
//! entry blob, which lives in the CAS. Stores replace existing entries
//! ("last writer wins"), atomically.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map as JsonMap, Value as Json};

use super::atomic::write_atomic;
use super::{BuildRoot, Cas, CasError};
use crate::build::cache_entry::{self, CacheEntry, EntryError, ObjectInfo};
use crate::build::json::dump_pretty;
use crate::digest::{HashFunction, ObjectKind};

/// Errors of the target cache.
#[derive(Debug, thiserror::Error)]
pub enum TargetCacheError {
    #[error("invalid target-cache key {key:?}: {message}")]
    BadKey { key: String, message: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("target-cache file {path} does not hold an object info: {content:?}")]
    BadIndex { path: PathBuf, content: String },
    #[error("entry blob {0} of the target cache is not in the local CAS")]
    MissingBlob(String),
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error(transparent)]
    Entry(#[from] EntryError),
}

/// A `host:port` address and properties of a dispatch endpoint.
pub type DispatchEndpoint = (BTreeMap<String, String>, String);

/// The text that determines a target-cache shard: which execution backend
/// built the cached results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDescription {
    text: String,
}

impl BackendDescription {
    /// Describes a backend: the remote-execution address (`None` for local
    /// execution, and for a serve that is its own execution endpoint), the
    /// platform properties, and the endpoint dispatch list in its given
    /// order. Addresses are `host:port` as the reference prints them (the
    /// host verbatim, no brackets; the port in decimal).
    pub fn describe(
        remote_address: Option<&str>,
        properties: &BTreeMap<String, String>,
        dispatch: &[DispatchEndpoint],
    ) -> BackendDescription {
        let props = |p: &BTreeMap<String, String>| {
            Json::Object(
                p.iter()
                    .map(|(k, v)| (k.clone(), Json::String(v.clone())))
                    .collect(),
            )
        };
        let mut d = JsonMap::new();
        d.insert(
            "remote_address".into(),
            remote_address.map_or(Json::Null, |a| Json::String(a.to_string())),
        );
        d.insert("platform_properties".into(), props(properties));
        // Only a non-empty list is mentioned, keeping the older shards valid.
        if !dispatch.is_empty() {
            let list = dispatch
                .iter()
                .map(|(p, addr)| Json::Array(vec![props(p), Json::String(addr.clone())]))
                .collect();
            d.insert("endpoint dispatch list".into(), Json::Array(list));
        }
        BackendDescription {
            text: dump_pretty(&Json::Object(d)),
        }
    }

    /// Local execution without properties: the shard of a plain local build.
    pub fn local() -> BackendDescription {
        BackendDescription::describe(None, &BTreeMap::new(), &[])
    }

    /// The description text (pretty JSON, as stored in the CAS).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The shard name in a storage of hash function `hash`.
    pub fn shard(&self, hash: HashFunction) -> String {
        hash.hash_bytes(ObjectKind::File, self.text.as_bytes())
    }
}

/// An entry found in the cache.
#[derive(Debug, Clone)]
pub struct CachedEntry {
    /// The entry blob (what ServeTarget answers with).
    pub blob: ObjectInfo,
    /// The entry, as JSON.
    pub json: Json,
}

impl CachedEntry {
    /// The cached result and its implied export targets.
    pub fn parse(&self, hash: HashFunction) -> Result<CacheEntry, EntryError> {
        cache_entry::parse_entry_json(&self.json, hash)
    }

    /// Every object the entry names (all must be `KNOWN`).
    pub fn objects(&self, hash: HashFunction) -> Result<Vec<ObjectInfo>, EntryError> {
        cache_entry::entry_objects(&self.json, hash)
    }
}

/// One shard of the target cache of one hash mode.
#[derive(Debug, Clone)]
pub struct TargetCache {
    cas: Cas,
    dir: PathBuf,
    tmp: PathBuf,
    /// The shard's directories in older generations, youngest first.
    older: Vec<PathBuf>,
    backend: BackendDescription,
}

impl TargetCache {
    /// The shard of `backend` in `root`'s storage of hash function `hash`.
    /// Also stores the description in the CAS, as the reference does, for
    /// those who wonder what a shard is; failing that is only logged.
    pub fn open(root: &BuildRoot, hash: HashFunction, backend: BackendDescription) -> TargetCache {
        let cas = root.cas(hash);
        if let Err(e) = cas.put_bytes(ObjectKind::File, backend.text.as_bytes()) {
            tracing::debug!("cannot store backend description in the CAS: {e}");
        }
        let shard = backend.shard(hash);
        TargetCache {
            dir: root.target_cache_dir(hash, &shard),
            older: root.older_target_cache_dirs(hash, &shard),
            cas,
            tmp: root.tmp_dir(),
            backend,
        }
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend(&self) -> &BackendDescription {
        &self.backend
    }

    pub fn hash_function(&self) -> HashFunction {
        self.cas.hash_function()
    }

    fn index_path(&self, key_hash: &str) -> Result<PathBuf, TargetCacheError> {
        self.index_path_in(&self.dir, key_hash)
    }

    fn index_path_in(&self, dir: &Path, key_hash: &str) -> Result<PathBuf, TargetCacheError> {
        self.hash_function()
            .check_hex(key_hash)
            .map_err(|e| TargetCacheError::BadKey {
                key: key_hash.to_string(),
                message: e.to_string(),
            })?;
        let (prefix, rest) = key_hash.split_at(2);
        Ok(dir.join(prefix).join(rest))
    }

    /// Copies the entry of `key_hash` forward from the youngest older
    /// generation that has it, after everything it needs: the entries it
    /// implies, the objects it names (through the CAS, which copies them
    /// forward) and its blob. False if there is none, or it is incomplete.
    fn uplink(&self, key_hash: &str, follow_implied: bool) -> Result<bool, TargetCacheError> {
        let mut found = None;
        for dir in &self.older {
            let path = self.index_path_in(dir, key_hash)?;
            match std::fs::read_to_string(&path) {
                Ok(c) => {
                    found = Some(c);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(TargetCacheError::Io { path, source }),
            }
        }
        let Some(content) = found else {
            return Ok(false);
        };
        let hash = self.hash_function();
        let Some(blob) = parse_object_info(&content, hash) else {
            return Ok(false);
        };
        let Some(bytes) = self.cas.read(ObjectKind::File, &blob.digest.hash)? else {
            return Ok(false);
        };
        let Ok(json) = serde_json::from_slice::<Json>(&bytes) else {
            return Ok(false);
        };
        let entry = CachedEntry { blob, json };
        if follow_implied {
            // The implied list is complete (transitive), so one level does.
            if let Ok(parsed) = entry.parse(hash) {
                for implied in parsed.implied.iter().filter(|k| *k != key_hash) {
                    if !self.index_path(implied)?.is_file() {
                        self.uplink(implied, false)?;
                    }
                }
            }
        }
        let objects = entry.objects(hash).unwrap_or_default();
        if !self.missing_objects(&objects).is_empty() {
            return Ok(false);
        }
        let path = self.index_path(key_hash)?;
        write_atomic(&self.tmp, &path, content.as_bytes(), 0o444)
            .map_err(|source| TargetCacheError::Io { path, source })?;
        Ok(true)
    }

    /// The entry stored for the key hash `key_hash`, if any. An error means a
    /// damaged entry; the reference treats that as a miss (and overwrites it
    /// with the next store).
    pub fn read(&self, key_hash: &str) -> Result<Option<CachedEntry>, TargetCacheError> {
        let path = self.index_path(key_hash)?;
        let content = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.uplink(key_hash, true)? {
                    return Ok(None);
                }
                std::fs::read_to_string(&path).map_err(|source| TargetCacheError::Io {
                    path: path.clone(),
                    source,
                })?
            }
            Err(source) => return Err(TargetCacheError::Io { path, source }),
        };
        let blob = parse_object_info(&content, self.hash_function()).ok_or_else(|| {
            TargetCacheError::BadIndex {
                path: path.clone(),
                content: content.clone(),
            }
        })?;
        let bytes = self
            .cas
            .read(ObjectKind::File, &blob.digest.hash)?
            .ok_or_else(|| TargetCacheError::MissingBlob(blob.to_string()))?;
        let json = serde_json::from_slice(&bytes)
            .map_err(|e| EntryError::NotJson(format!("{blob}: {e}")))?;
        Ok(Some(CachedEntry { blob, json }))
    }

    /// Stores `entry_text` (see `cache_entry::entry_text`) as the entry of
    /// `key_hash`, replacing any older one; returns the entry blob. The
    /// objects the entry names should be in the local CAS already.
    pub fn store(&self, key_hash: &str, entry_text: &str) -> Result<ObjectInfo, TargetCacheError> {
        let path = self.index_path(key_hash)?;
        let digest = self
            .cas
            .put_bytes(ObjectKind::File, entry_text.as_bytes())?;
        let blob = ObjectInfo {
            digest,
            kind: ObjectKind::File,
        };
        write_atomic(&self.tmp, &path, blob.to_string().as_bytes(), 0o444)
            .map_err(|source| TargetCacheError::Io { path, source })?;
        Ok(blob)
    }

    /// Those of `objects` that are not in the local CAS.
    pub fn missing_objects<'a>(&self, objects: &'a [ObjectInfo]) -> Vec<&'a ObjectInfo> {
        objects
            .iter()
            .filter(|o| !self.cas.contains(o.kind, &o.digest.hash))
            .collect()
    }
}

/// Parses `[hash:size:type]` the way the reference does: unknown type
/// letters are files, the hash must be valid for `hash`.
pub fn parse_object_info(s: &str, hash: HashFunction) -> Option<ObjectInfo> {
    let inner = s.strip_prefix('[')?;
    let (id, rest) = inner.split_once(':')?;
    let (size, rest) = rest.split_once(':')?;
    let (kind, _) = rest.split_once(']')?;
    let size: u64 = size.parse().ok()?;
    hash.check_hex(id).ok()?;
    let kind = crate::build::artifact::file_type_from_char(kind.chars().next().unwrap_or('f'));
    Some(ObjectInfo {
        digest: hash.digest(kind, id, size),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::artifact::ArtifactDescription;
    use crate::build::cache_entry::{entry_text, Replacements};
    use crate::build::value::{TargetResult, Value};
    use std::collections::BTreeSet;

    const KEY: &str = "930bda5cfa811814d375e7e33b6353d3d38bf11b";

    #[test]
    fn local_backend_shards_as_the_reference() {
        let b = BackendDescription::local();
        assert_eq!(
            b.text(),
            "{\n  \"platform_properties\": {},\n  \"remote_address\": null\n}"
        );
        assert_eq!(
            b.shard(HashFunction::GitSha1),
            "c8bb729ea6f15c30f396d8d002b1956b0c12229c"
        );
        assert_eq!(
            b.shard(HashFunction::Sha256),
            "7b7ac4af92417c43d0c99ddf9636b5b7d5e3e12b7d343bb1b5bbd19ea3014bba"
        );
    }

    #[test]
    fn remote_backend_with_dispatch_text() {
        let props = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let b = BackendDescription::describe(
            Some("127.0.0.1:8980"),
            &props("foo", "bar"),
            &[(props("runner", "node-name"), "127.0.0.1:1234".into())],
        );
        let expected = r#"{
  "endpoint dispatch list": [
    [
      {
        "runner": "node-name"
      },
      "127.0.0.1:1234"
    ]
  ],
  "platform_properties": {
    "foo": "bar"
  },
  "remote_address": "127.0.0.1:8980"
}"#;
        assert_eq!(b.text(), expected);
        // An empty dispatch list is not mentioned at all.
        let plain = BackendDescription::describe(Some("h:1"), &BTreeMap::new(), &[]);
        assert!(!plain.text().contains("dispatch"));
        assert_ne!(
            plain.shard(HashFunction::GitSha1),
            b.shard(HashFunction::GitSha1)
        );
    }

    fn entry(size: u64) -> String {
        let a = ArtifactDescription::known("e".repeat(40), size, ObjectKind::File);
        let result = TargetResult {
            artifact_stage: Value::map([("out".to_string(), a.to_value())].into()),
            runfiles: Value::empty_map(),
            provides: Value::empty_map(),
        };
        entry_text(
            &result,
            &Replacements::new(),
            &BTreeSet::from([KEY.to_string()]),
        )
        .unwrap()
    }

    #[test]
    fn store_and_read_in_the_reference_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let hf = HashFunction::GitSha1;
        let tc = TargetCache::open(&root, hf, BackendDescription::local());
        assert_eq!(
            tc.dir(),
            dir.path().join(
                "protocol-dependent/generation-0/git-sha1/tc/c8bb729ea6f15c30f396d8d002b1956b0c12229c"
            )
        );
        // The description is in the CAS under the shard's name.
        assert!(root
            .cas(hf)
            .contains(ObjectKind::File, "c8bb729ea6f15c30f396d8d002b1956b0c12229c"));
        assert!(tc.read(KEY).unwrap().is_none());

        let text = entry(1);
        let blob = tc.store(KEY, &text).unwrap();
        let index = tc.dir().join(&KEY[..2]).join(&KEY[2..]);
        assert_eq!(std::fs::read_to_string(&index).unwrap(), blob.to_string());
        assert_eq!(
            blob.digest,
            hf.digest_bytes(ObjectKind::File, text.as_bytes())
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&index).unwrap().permissions().mode() & 0o777,
            0o444
        );

        let hit = tc.read(KEY).unwrap().unwrap();
        assert_eq!(hit.blob, blob);
        let parsed = hit.parse(hf).unwrap();
        assert_eq!(parsed.implied, BTreeSet::from([KEY.to_string()]));
        let objects = hit.objects(hf).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(tc.missing_objects(&objects), [&objects[0]]);

        // Last writer wins, even over the read-only index file.
        let blob2 = tc.store(KEY, &entry(2)).unwrap();
        assert_ne!(blob2, blob);
        assert_eq!(tc.read(KEY).unwrap().unwrap().blob, blob2);

        // Another backend is another shard.
        let other = TargetCache::open(
            &root,
            hf,
            BackendDescription::describe(Some("h:1"), &BTreeMap::new(), &[]),
        );
        assert!(other.read(KEY).unwrap().is_none());
    }

    #[test]
    fn bad_keys_and_damaged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let tc = TargetCache::open(&root, HashFunction::Sha256, BackendDescription::local());
        assert!(matches!(tc.read(KEY), Err(TargetCacheError::BadKey { .. })));
        assert!(matches!(
            tc.store("../../x", "{}"),
            Err(TargetCacheError::BadKey { .. })
        ));
        let key = "a".repeat(64);
        let index = tc.dir().join("aa").join("a".repeat(62));
        std::fs::create_dir_all(index.parent().unwrap()).unwrap();
        std::fs::write(&index, "garbage").unwrap();
        assert!(matches!(
            tc.read(&key),
            Err(TargetCacheError::BadIndex { .. })
        ));
        std::fs::write(&index, format!("[{}:5:f]", "b".repeat(64))).unwrap();
        assert!(matches!(
            tc.read(&key),
            Err(TargetCacheError::MissingBlob(_))
        ));
        let not_json = root
            .cas(HashFunction::Sha256)
            .put_bytes(ObjectKind::File, b"{")
            .unwrap();
        std::fs::write(&index, format!("[{}:1:f]", not_json.hash)).unwrap();
        assert!(matches!(
            tc.read(&key),
            Err(TargetCacheError::Entry(EntryError::NotJson(_)))
        ));
    }

    #[test]
    fn object_info_strings() {
        let h = "c".repeat(40);
        let info = parse_object_info(&format!("[{h}:71:t]"), HashFunction::GitSha1).unwrap();
        assert_eq!(
            (info.digest.size, info.kind, info.digest.is_tree),
            (71, ObjectKind::Tree, true)
        );
        // Unknown letters are files; an empty one too.
        let info = parse_object_info(&format!("[{h}:0:q]"), HashFunction::GitSha1).unwrap();
        assert_eq!(info.kind, ObjectKind::File);
        assert_eq!(
            parse_object_info(&format!("[{h}:0:]"), HashFunction::GitSha1)
                .unwrap()
                .kind,
            ObjectKind::File
        );
        for bad in [
            format!("{h}:1:f]"),
            format!("[{h}:x:f]"),
            format!("[{h}:1:f"),
            format!("[{h}:-1:f]"),
            "[abc:1:f]".to_string(),
        ] {
            assert!(
                parse_object_info(&bad, HashFunction::GitSha1).is_none(),
                "{bad}"
            );
        }
        assert!(parse_object_info(&format!("[{h}:1:f]"), HashFunction::Sha256).is_none());
    }
}
