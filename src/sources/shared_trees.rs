//! Trees of archives and distdirs in the shared cache: a replica that
//! computed one records it (after syncing the tree to the endpoint, so the
//! fact is usable), and one that does not know the archive answers from it
//! without the archive's bytes.

use serde_json::json;

use super::answers::{Outcome, TreeAnswer};
use super::Sources;
use crate::build::cache_entry::ObjectInfo;
use crate::digest::{Digest, ObjectKind};
use crate::shared_cache::FactKind;

/// Source facts are the same for every backend: one shard.
const SHARD: &str = "";

impl Sources {
    /// The tree another replica recorded for `key`, as the answer to give:
    /// with the endpoint's digest when `sync` asks for it (the fact's check
    /// found the tree there). `None` without a shared cache or fact.
    pub(super) async fn shared_tree(
        &self,
        kind: FactKind,
        key: &str,
        sync: bool,
    ) -> Option<TreeAnswer> {
        let shared = self.shared.as_ref()?;
        let fact = match shared.look_up(kind, SHARD, key).await {
            Ok(fact) => fact?,
            Err(e) => {
                tracing::warn!(kind = kind.name(), key, "shared cache look-up: {e}; a miss");
                return None;
            }
        };
        let value: serde_json::Value = serde_json::from_slice(&fact.value).ok()?;
        let tree = value["tree"]
            .as_str()
            .filter(|t| crate::git::parse_oid(t).is_ok())?
            .to_string();
        let [root] = fact.objects.as_slice() else {
            tracing::warn!(
                kind = kind.name(),
                key,
                "shared tree fact of another form; ignored"
            );
            return None;
        };
        if !root.kind.is_tree() || (self.remote_hash().is_native() && root.digest.hash != tree) {
            tracing::warn!(
                kind = kind.name(),
                key,
                "shared tree fact of another form; ignored"
            );
            return None;
        }
        let (syncer, id, digest) = (self.syncer.clone(), tree.clone(), root.digest.clone());
        if let Err(e) =
            super::blocking(move || Ok(syncer.remember(&id, &digest, ObjectKind::Tree)?)).await
        {
            tracing::warn!(tree, "noting the endpoint digest of a shared tree: {e}");
        }
        tracing::info!(
            kind = kind.name(),
            key,
            tree,
            "answered from the shared cache"
        );
        Some(TreeAnswer {
            outcome: Outcome::Ok,
            tree: Some(tree),
            digest: sync.then(|| self.response_digest(root.digest.clone())),
        })
    }

    /// Records the tree of a successful answer for `key`, syncing it to the
    /// endpoint first unless the answer was synced; failures are only logged.
    pub(super) async fn share_tree(
        &self,
        kind: FactKind,
        key: &str,
        tree: &str,
        synced: Option<&Digest>,
        repo: std::path::PathBuf,
    ) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        let digest = match synced {
            Some(d) => d.clone(),
            None => match self
                .syncer
                .sync(repo, tree.to_string(), ObjectKind::Tree)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(tree, "not shared: syncing the tree to the endpoint: {e}");
                    return;
                }
            },
        };
        let value = json!({"tree": tree, "digest": digest.hash, "size": digest.size});
        let root = ObjectInfo {
            digest: Digest {
                is_tree: self.remote_hash().is_native(),
                ..digest
            },
            kind: ObjectKind::Tree,
        };
        if let Err(e) = shared
            .record(kind, SHARD, key, value.to_string().as_bytes(), &[root])
            .await
        {
            tracing::warn!(
                kind = kind.name(),
                key,
                "recording in the shared cache: {e}"
            );
        }
    }
}
