//! Push.PushBlob and Push.PushDirectory: URI and qualifiers → a digest the
//! endpoint has, kept in the build root (and in the shared cache, when
//! there is one), and found again by fetches with the same URI and qualifiers.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{content_key, push_key, AssetError, AssetKind, Assets, FetchOutcome, Request};
use crate::build::cache_entry::ObjectInfo;
use crate::digest::{Digest, ObjectKind};
use crate::shared_cache::FactKind;

/// The shared cache's shard of pushed assets.
const SHARD: &str = "";

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Assets {
    /// The object a pushed asset of `kind` names.
    fn pushed_object(&self, kind: AssetKind, mut digest: Digest) -> ObjectInfo {
        let tree = kind == AssetKind::Directory;
        digest.is_tree = tree && self.hash().is_native();
        ObjectInfo {
            digest,
            kind: if tree {
                ObjectKind::Tree
            } else {
                ObjectKind::File
            },
        }
    }

    /// Records `digest` for every URI of `request`; it must be at the
    /// endpoint. `expire_at`: when the record stops answering fetches.
    pub async fn push(
        &self,
        kind: AssetKind,
        request: &Request<'_>,
        digest: Digest,
        expire_at: Option<SystemTime>,
    ) -> Result<(), AssetError> {
        request.check()?;
        let object = self.pushed_object(kind, digest);
        if !self.at_endpoint(&object.digest).await? {
            return Err(AssetError::FailedPrecondition(format!(
                "the pushed {} {} is not in the endpoint's CAS",
                kind.name(),
                object.digest.hash
            )));
        }
        if let (AssetKind::Blob, Some(id)) = (kind, &request.qualifiers.git_blob) {
            self.learn_git_id(id, &object.digest).await?;
        }
        let value = json!({
            "hash": object.digest.hash,
            "size": object.digest.size,
            "pushed": seconds(SystemTime::now()),
            "expires": expire_at.map(seconds),
        })
        .to_string();
        let mut keys: Vec<(String, &str, String)> = request
            .uris
            .iter()
            .map(|uri| {
                let key = push_key(kind, uri, &request.qualifiers);
                (key, uri.as_str(), value.clone())
            })
            .collect();
        if kind == AssetKind::Blob && !self.hash().is_native() {
            // Whatever the URI and qualifiers, a later fetch by checksum
            // finds it too (Bazel asks with the URL and checksum.sri only);
            // content named by its checksum does not expire.
            let content = json!({"hash": object.digest.hash, "size": object.digest.size,
                                 "pushed": seconds(SystemTime::now())});
            keys.push((content_key(&object.digest.hash), "", content.to_string()));
        }
        for (key, uri, value) in keys {
            let (map, k, v) = (self.pushes.clone(), key.clone(), value.clone());
            crate::blocking::run(move || map.set(&k, &v).map_err(AssetError::internal)).await?;
            if let Some(shared) = &self.sources.shared {
                if let Err(e) = shared
                    .record(
                        FactKind::Asset,
                        SHARD,
                        &key,
                        value.as_bytes(),
                        std::slice::from_ref(&object),
                    )
                    .await
                {
                    tracing::warn!(uri, "recording the pushed asset in the shared cache: {e}");
                }
            }
        }
        tracing::info!(
            uris = request.uris.len(),
            digest = %object.digest.hash,
            "pushed {}",
            kind.name()
        );
        Ok(())
    }

    /// A blob pushed with its git id: checked, and then known to SourceTree
    /// by that id (ServeArchiveTree, ServeDistdirTree and ServeContent read
    /// it from the endpoint). Native digests are git ids already.
    async fn learn_git_id(&self, id: &str, digest: &Digest) -> Result<(), AssetError> {
        if self.hash().is_native() {
            return if digest.hash == id {
                Ok(())
            } else {
                Err(AssetError::invalid(format!(
                    "the pushed blob {} is not git blob {id}",
                    digest.hash
                )))
            };
        }
        let git_id = self.endpoint_git_id(digest).await?;
        if git_id.as_deref() != Some(id) {
            return Err(AssetError::invalid(format!(
                "the pushed blob {} is not git blob {id}",
                digest.hash
            )));
        }
        let (syncer, id, digest) = (self.sources.syncer.clone(), id.to_string(), digest.clone());
        crate::blocking::run(move || {
            syncer
                .remember(&id, &digest, ObjectKind::File)
                .map_err(AssetError::internal)
        })
        .await
    }

    /// A pushed asset for one of the request's URIs, with exactly its
    /// qualifiers, not older than asked, not expired, and still at the endpoint.
    pub(super) async fn pushed(
        &self,
        kind: AssetKind,
        request: &Request<'_>,
    ) -> Result<Option<FetchOutcome>, AssetError> {
        for uri in request.uris {
            let key = push_key(kind, uri, &request.qualifiers);
            let (map, k) = (self.pushes.clone(), key.clone());
            let local =
                crate::blocking::run(move || map.get(&k).map_err(AssetError::internal)).await?;
            let value = match local {
                Some(v) => Some(v),
                None => self.shared_push(&key).await,
            };
            let Some(value) = value else { continue };
            let Some(digest) = self.usable_push(kind, &value, request.oldest) else {
                continue;
            };
            if self.at_endpoint(&digest).await? {
                return Ok(Some(FetchOutcome::Found {
                    uri: uri.clone(),
                    digest,
                }));
            }
        }
        Ok(None)
    }

    /// A blob pushed earlier (with any URI and qualifiers) whose SHA-256 is
    /// `hex`, if still at the endpoint; compatible mode only.
    pub(super) async fn pushed_content(&self, hex: &str) -> Result<Option<Digest>, AssetError> {
        let key = content_key(hex);
        let (map, k) = (self.pushes.clone(), key.clone());
        let local = crate::blocking::run(move || map.get(&k).map_err(AssetError::internal)).await?;
        let value = match local {
            Some(v) => Some(v),
            None => self.shared_push(&key).await,
        };
        // Named by its checksum: no age limit applies.
        let Some(digest) = value.and_then(|v| self.usable_push(AssetKind::Blob, &v, None)) else {
            return Ok(None);
        };
        if digest.hash != hex || !self.at_endpoint(&digest).await? {
            return Ok(None);
        }
        Ok(Some(digest))
    }

    async fn shared_push(&self, key: &str) -> Option<String> {
        let shared = self.sources.shared.as_ref()?;
        match shared.look_up(FactKind::Asset, SHARD, key).await {
            Ok(fact) => String::from_utf8(fact?.value).ok(),
            Err(e) => {
                tracing::warn!("shared cache look-up of a pushed asset: {e}");
                None
            }
        }
    }

    /// The digest of a push record, if the record may answer now.
    fn usable_push(
        &self,
        kind: AssetKind,
        value: &str,
        oldest: Option<SystemTime>,
    ) -> Option<Digest> {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        let now = seconds(SystemTime::now());
        if v["expires"].as_u64().is_some_and(|e| e <= now) {
            return None;
        }
        if let Some(oldest) = oldest {
            if v["pushed"].as_u64().unwrap_or(0) < seconds(oldest) {
                return None;
            }
        }
        let digest = Digest {
            hash: v["hash"].as_str()?.to_string(),
            size: v["size"].as_u64()?,
            is_tree: false,
        };
        Some(self.pushed_object(kind, digest).digest)
    }
}
