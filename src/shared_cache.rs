//! The cache serve replicas share through their associated endpoint
//! (`"execution endpoint": {"shared cache": true}`).
//!
//! A fact (a target-cache entry, the tree of an archive or of a distdir) is
//! recorded in the endpoint's action cache, under the digest of an Action
//! whose Command is `["jserve-fact", "1", KIND, SHARD, KEY]`. Nobody
//! executes it: the digest only names the fact. The ActionResult names the
//! value blob as output `value` and every object the value refers to as
//! `objects/N` (blobs) or `trees/N` (trees), so the endpoint keeps them
//! together and a look-up checks them all in one FindMissingBlobs. A fact
//! with an object the endpoint no longer has is a miss.
//!
//! The Command and Action blobs are not uploaded: only their digest is used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, ActionResult, OutputFile,
};
use prost::Message;

use crate::build::cache_entry::ObjectInfo;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::remote::{RemoteCas, RemoteError};

/// The largest value a fact may have: a target-cache entry naming many
/// artifacts stays far below it.
pub const MAX_VALUE_BYTES: u64 = 16 << 20;

/// The most objects a fact may name (the ActionResult must fit into one
/// gRPC message with room to spare).
pub const MAX_OBJECTS: usize = 50_000;

/// What a fact is about; part of its action digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKind {
    /// A target-cache entry: shard and key hash → entry blob.
    Target,
    /// An archive's tree: content, format, subdirectory, symlink mode → tree.
    Archive,
    /// A distdir's tree: content id → tree.
    Distdir,
    /// A pushed Remote Asset: kind, URI and qualifiers → digest.
    Asset,
}

impl FactKind {
    pub fn name(self) -> &'static str {
        match self {
            FactKind::Target => "target-cache",
            FactKind::Archive => "archive-tree",
            FactKind::Distdir => "distdir-tree",
            FactKind::Asset => "asset",
        }
    }
}

/// A fact found at the endpoint, with every object it names still there.
#[derive(Clone, Debug)]
pub struct Fact {
    pub value: Vec<u8>,
    pub value_digest: Digest,
    pub objects: Vec<ObjectInfo>,
}

/// Why a fact could not be recorded or read.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the fact names {0} objects, more than {MAX_OBJECTS}")]
    TooManyObjects(usize),
    #[error("the endpoint's entry for this fact is not one of jserve's: {0}")]
    Malformed(String),
}

/// Labels of the shared cache's counters: the fact's kind and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FactOutcome {
    pub kind: &'static str,
    pub outcome: &'static str,
}

fn count(family: &crate::metrics::FactFamily, kind: FactKind, outcome: &'static str) {
    family
        .get_or_create(&FactOutcome {
            kind: kind.name(),
            outcome,
        })
        .inc();
}

/// The shared cache at one endpoint.
pub struct SharedCache {
    remote: Arc<dyn RemoteCas>,
    /// Set once the endpoint refused an update as UNIMPLEMENTED (the
    /// reference `just execute`): facts are then only read.
    read_only: AtomicBool,
}

impl SharedCache {
    pub fn new(remote: Arc<dyn RemoteCas>) -> SharedCache {
        SharedCache {
            remote,
            read_only: AtomicBool::new(false),
        }
    }

    fn hash(&self) -> HashFunction {
        self.remote.hash_function()
    }

    /// The action digest naming a fact.
    pub fn action_digest(&self, kind: FactKind, shard: &str, key: &str) -> Digest {
        fact_action(self.hash(), kind, shard, key)
    }

    /// Records a fact whose objects are already at the endpoint; the value
    /// blob is uploaded here.
    pub async fn record(
        &self,
        kind: FactKind,
        shard: &str,
        key: &str,
        value: &[u8],
        objects: &[ObjectInfo],
    ) -> Result<(), SharedError> {
        if self.read_only.load(Ordering::Relaxed) {
            return Ok(());
        }
        let hash = self.hash();
        let value_digest = hash.digest_bytes(ObjectKind::File, value);
        let result = fact_result(hash, &value_digest, objects)?;
        let recorded = async {
            self.remote
                .upload_blobs(vec![(value_digest.clone(), value.to_vec())])
                .await?;
            let action = self.action_digest(kind, shard, key);
            self.remote.update_action_result(&action, result).await
        }
        .await;
        let metrics = &crate::metrics::global().shared_cache_records;
        match recorded {
            Ok(()) => {
                count(metrics, kind, "recorded");
                tracing::debug!(kind = kind.name(), key, "fact recorded in the shared cache");
                Ok(())
            }
            Err(RemoteError::Status { status, .. })
                if status.code() == tonic::Code::Unimplemented =>
            {
                count(metrics, kind, "refused");
                if !self.read_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the execution endpoint does not accept action-cache updates \
                         ({}); the shared cache is only read from now on",
                        status.message()
                    );
                }
                Ok(())
            }
            Err(e) => {
                count(metrics, kind, "error");
                Err(e.into())
            }
        }
    }

    /// The fact recorded for `key`, if the endpoint has it and every object
    /// it names.
    pub async fn look_up(
        &self,
        kind: FactKind,
        shard: &str,
        key: &str,
    ) -> Result<Option<Fact>, SharedError> {
        let metrics = &crate::metrics::global().shared_cache_lookups;
        let found = self.look_up_counted(kind, shard, key).await;
        let outcome = match &found {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            Err(SharedError::Malformed(_)) => "malformed",
            Err(_) => "error",
        };
        count(metrics, kind, outcome);
        found
    }

    async fn look_up_counted(
        &self,
        kind: FactKind,
        shard: &str,
        key: &str,
    ) -> Result<Option<Fact>, SharedError> {
        let hash = self.hash();
        let action = self.action_digest(kind, shard, key);
        let Some(result) = self.remote.get_action_result(&action).await? else {
            return Ok(None);
        };
        let (value_digest, objects) = parse_fact_result(hash, &result)?;
        let mut all: Vec<Digest> = objects.iter().map(|o| o.digest.clone()).collect();
        all.push(value_digest.clone());
        let (missing, value) = tokio::join!(
            self.remote.find_missing(all),
            self.remote
                .read_small(vec![value_digest.clone()], MAX_VALUE_BYTES)
        );
        let missing = missing?;
        if !missing.is_empty() {
            tracing::info!(
                kind = kind.name(),
                key,
                missing = missing.len(),
                first = %missing[0].hash,
                "shared fact whose objects the endpoint no longer has: a miss"
            );
            return Ok(None);
        }
        let Some((_, value)) = value?.into_iter().next() else {
            return Err(SharedError::Malformed(format!(
                "its value {} could not be read (over {MAX_VALUE_BYTES} bytes?)",
                value_digest.hash
            )));
        };
        Ok(Some(Fact {
            value,
            value_digest,
            objects,
        }))
    }
}

/// The digest naming a fact: that of an Action over an empty input root
/// whose Command lists the fact's kind, shard and key.
pub fn fact_action(hash: HashFunction, kind: FactKind, shard: &str, key: &str) -> Digest {
    let command = reapi::Command {
        arguments: vec![
            "jserve-fact".into(),
            "1".into(),
            kind.name().into(),
            shard.into(),
            key.into(),
        ],
        ..Default::default()
    };
    let command_digest = hash.digest_bytes(ObjectKind::File, &command.encode_to_vec());
    let empty_root = if hash.is_native() {
        hash.digest_bytes(ObjectKind::Tree, b"")
    } else {
        hash.digest_bytes(
            ObjectKind::File,
            &reapi::Directory::default().encode_to_vec(),
        )
    };
    let action = reapi::Action {
        command_digest: Some(command_digest.to_wire(hash)),
        input_root_digest: Some(empty_root.to_wire(hash)),
        ..Default::default()
    };
    hash.digest_bytes(ObjectKind::File, &action.encode_to_vec())
}

const VALUE_PATH: &str = "value";
const OBJECT_PREFIX: &str = "objects/";
const TREE_PREFIX: &str = "trees/";

/// The ActionResult recording a fact.
fn fact_result(
    hash: HashFunction,
    value: &Digest,
    objects: &[ObjectInfo],
) -> Result<ActionResult, SharedError> {
    if objects.len() > MAX_OBJECTS {
        return Err(SharedError::TooManyObjects(objects.len()));
    }
    let mut files = Vec::with_capacity(objects.len() + 1);
    files.push(OutputFile {
        path: VALUE_PATH.into(),
        digest: Some(value.to_wire(hash)),
        ..Default::default()
    });
    for (i, o) in objects.iter().enumerate() {
        let tree = o.kind.is_tree();
        let mut digest = o.digest.clone();
        digest.is_tree = hash.hashes_as_tree(o.kind);
        files.push(OutputFile {
            path: format!("{}{i}", if tree { TREE_PREFIX } else { OBJECT_PREFIX }),
            digest: Some(digest.to_wire(hash)),
            is_executable: o.kind == ObjectKind::Executable,
            ..Default::default()
        });
    }
    Ok(ActionResult {
        output_files: files,
        ..Default::default()
    })
}

/// The value's digest and the objects of a fact's ActionResult.
fn parse_fact_result(
    hash: HashFunction,
    result: &ActionResult,
) -> Result<(Digest, Vec<ObjectInfo>), SharedError> {
    let bad = |m: String| SharedError::Malformed(m);
    if result.output_files.len() > MAX_OBJECTS + 1 {
        return Err(SharedError::TooManyObjects(result.output_files.len()));
    }
    let mut value = None;
    let mut objects = Vec::with_capacity(result.output_files.len());
    for f in &result.output_files {
        let wire = f
            .digest
            .as_ref()
            .ok_or_else(|| bad(format!("output {} has no digest", f.path)))?;
        let mut digest = hash
            .digest_from_wire(wire)
            .map_err(|e| bad(format!("output {}: {e}", f.path)))?;
        if f.path == VALUE_PATH {
            value = Some(digest);
        } else if f.path.starts_with(TREE_PREFIX) {
            digest.is_tree = hash.is_native();
            objects.push(ObjectInfo {
                digest,
                kind: ObjectKind::Tree,
            });
        } else if f.path.starts_with(OBJECT_PREFIX) {
            objects.push(ObjectInfo {
                digest,
                kind: ObjectKind::blob(f.is_executable),
            });
        } else {
            return Err(bad(format!("unexpected output {:?}", f.path)));
        }
    }
    let value = value.ok_or_else(|| bad("no value".into()))?;
    Ok((value, objects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    use crate::remote::{Fetched, ReadBounds};

    /// An endpoint in memory whose action cache hands out whatever it was
    /// given (as BuildGrid's does), so only the shared cache's own check
    /// stands between an evicted object and a client.
    #[derive(Default)]
    struct Memory {
        blobs: Mutex<HashMap<String, Vec<u8>>>,
        results: Mutex<HashMap<String, ActionResult>>,
        refuse_updates: bool,
    }

    #[tonic::async_trait]
    impl RemoteCas for Memory {
        fn hash_function(&self) -> HashFunction {
            HashFunction::Sha256
        }
        async fn find_missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, RemoteError> {
            let blobs = self.blobs.lock().unwrap();
            Ok(digests
                .into_iter()
                .filter(|d| !blobs.contains_key(&d.hash))
                .collect())
        }
        async fn upload_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError> {
            let mut stored = self.blobs.lock().unwrap();
            for (d, data) in blobs {
                stored.insert(d.hash, data);
            }
            Ok(())
        }
        async fn upload_file(&self, _: &Digest, _: &Path) -> Result<(), RemoteError> {
            unreachable!("facts are small")
        }
        async fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
            Ok(self.blobs.lock().unwrap().get(&d.hash).cloned())
        }
        async fn download_to_file(&self, _: &Digest, _: &Path) -> Result<bool, RemoteError> {
            unreachable!("facts are small")
        }
        async fn read_small(
            &self,
            digests: Vec<Digest>,
            max_each: u64,
        ) -> Result<Vec<(Digest, Vec<u8>)>, RemoteError> {
            let blobs = self.blobs.lock().unwrap();
            Ok(digests
                .into_iter()
                .filter_map(|d| {
                    let data = blobs.get(&d.hash)?.clone();
                    (data.len() as u64 <= max_each).then_some((d, data))
                })
                .collect())
        }
        async fn read_bounded(
            &self,
            _: &Digest,
            _: ReadBounds<'_>,
        ) -> Result<Option<Fetched>, RemoteError> {
            unreachable!("facts are small")
        }
        async fn get_tree(
            &self,
            _: &Digest,
            _: u64,
        ) -> Result<Option<Vec<reapi::Directory>>, RemoteError> {
            Ok(None)
        }
        async fn get_action_result(
            &self,
            action: &Digest,
        ) -> Result<Option<ActionResult>, RemoteError> {
            Ok(self.results.lock().unwrap().get(&action.hash).cloned())
        }
        async fn update_action_result(
            &self,
            action: &Digest,
            result: ActionResult,
        ) -> Result<(), RemoteError> {
            if self.refuse_updates {
                return Err(RemoteError::Status {
                    call: "UpdateActionResult",
                    status: tonic::Status::unimplemented("no updates here"),
                });
            }
            self.results
                .lock()
                .unwrap()
                .insert(action.hash.clone(), result);
            Ok(())
        }
    }

    fn stored(remote: &Memory, data: &[u8]) -> ObjectInfo {
        let digest = HashFunction::Sha256.digest_bytes(ObjectKind::File, data);
        remote
            .blobs
            .lock()
            .unwrap()
            .insert(digest.hash.clone(), data.to_vec());
        ObjectInfo {
            digest,
            kind: ObjectKind::File,
        }
    }

    #[tokio::test]
    async fn a_fact_is_found_only_while_the_endpoint_has_its_objects() {
        let remote = Arc::new(Memory::default());
        let cache = SharedCache::new(remote.clone());
        let (a, b) = (stored(&remote, b"a"), stored(&remote, b"b"));
        let objects = vec![a.clone(), b.clone()];
        cache
            .record(FactKind::Target, "shard", "key", b"{\"v\": 1}", &objects)
            .await
            .unwrap();
        let fact = cache
            .look_up(FactKind::Target, "shard", "key")
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(fact.value, b"{\"v\": 1}");
        assert_eq!(fact.objects, objects);
        // Another shard, another kind: nothing.
        for (kind, shard) in [(FactKind::Target, "other"), (FactKind::Archive, "shard")] {
            let found = cache.look_up(kind, shard, "key").await.unwrap();
            assert!(found.is_none(), "{kind:?} {shard}");
        }
        // The endpoint evicts one object: a miss, though the entry is there.
        remote.blobs.lock().unwrap().remove(&b.digest.hash);
        let found = cache
            .look_up(FactKind::Target, "shard", "key")
            .await
            .unwrap();
        assert!(found.is_none());
        // So is a lost value.
        stored(&remote, b"b");
        let value = HashFunction::Sha256.digest_bytes(ObjectKind::File, b"{\"v\": 1}");
        remote.blobs.lock().unwrap().remove(&value.hash);
        let found = cache
            .look_up(FactKind::Target, "shard", "key")
            .await
            .unwrap();
        assert!(found.is_none());
        // Recorded again (as a replica racing this one would): the last wins.
        cache
            .record(FactKind::Target, "shard", "key", b"{\"v\": 2}", &[a])
            .await
            .unwrap();
        let fact = cache
            .look_up(FactKind::Target, "shard", "key")
            .await
            .unwrap();
        assert_eq!(fact.unwrap().value, b"{\"v\": 2}");
    }

    #[tokio::test]
    async fn an_endpoint_without_updates_makes_the_cache_read_only() {
        let remote = Arc::new(Memory {
            refuse_updates: true,
            ..Default::default()
        });
        let cache = SharedCache::new(remote.clone());
        for _ in 0..2 {
            cache
                .record(FactKind::Distdir, "", "k", b"{}", &[])
                .await
                .expect("a refusal is not an error");
        }
        assert!(cache.read_only.load(Ordering::Relaxed));
        let found = cache.look_up(FactKind::Distdir, "", "k").await.unwrap();
        assert!(found.is_none());
    }

    #[tokio::test]
    async fn too_many_objects_are_refused_before_anything_is_sent() {
        let remote = Arc::new(Memory::default());
        let cache = SharedCache::new(remote.clone());
        let many = vec![stored(&remote, b"x"); MAX_OBJECTS + 1];
        let recorded = cache.record(FactKind::Target, "s", "k", b"{}", &many).await;
        assert!(matches!(recorded, Err(SharedError::TooManyObjects(_))));
        assert!(remote.results.lock().unwrap().is_empty());
    }

    fn objects(hash: HashFunction) -> Vec<ObjectInfo> {
        vec![
            ObjectInfo {
                digest: hash.digest_bytes(ObjectKind::File, b"a"),
                kind: ObjectKind::File,
            },
            ObjectInfo {
                digest: hash.digest_bytes(ObjectKind::Executable, b"run"),
                kind: ObjectKind::Executable,
            },
            ObjectInfo {
                digest: hash.digest_bytes(ObjectKind::Tree, b""),
                kind: ObjectKind::Tree,
            },
        ]
    }

    #[test]
    fn a_fact_result_reads_back_as_written() {
        for hash in [HashFunction::GitSha1, HashFunction::Sha256] {
            let value = hash.digest_bytes(ObjectKind::File, b"{}");
            let written = objects(hash);
            let result = fact_result(hash, &value, &written).unwrap();
            let (read_value, read) = parse_fact_result(hash, &result).unwrap();
            assert_eq!(read_value, value, "{hash:?}");
            assert_eq!(read, written, "{hash:?}");
        }
    }

    #[test]
    fn facts_differ_by_kind_shard_and_key() {
        let h = HashFunction::Sha256;
        let base = fact_action(h, FactKind::Target, "s1", "k");
        assert_ne!(base, fact_action(h, FactKind::Archive, "s1", "k"));
        assert_ne!(base, fact_action(h, FactKind::Target, "s2", "k"));
        assert_ne!(base, fact_action(h, FactKind::Target, "s1", "k2"));
        assert_eq!(base, fact_action(h, FactKind::Target, "s1", "k"));
    }

    #[test]
    fn foreign_results_are_refused() {
        let h = HashFunction::Sha256;
        let mut result = fact_result(h, &h.digest_bytes(ObjectKind::File, b""), &[]).unwrap();
        result.output_files[0].path = "a.out".into();
        assert!(matches!(
            parse_fact_result(h, &result),
            Err(SharedError::Malformed(_))
        ));
        assert!(matches!(
            parse_fact_result(h, &ActionResult::default()),
            Err(SharedError::Malformed(_))
        ));
    }
}
