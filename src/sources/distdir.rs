//! ServeDistdirTree: a flat tree of known blobs, written to the git cache
//! and kept there, synced if asked.

use std::collections::BTreeMap;

use git2::{ObjectType, Oid};

use super::answers::{BlobSource, Outcome, TreeAnswer};
use super::{blocking, Sources};
use crate::digest::{serialize_git_tree, GitTreeEntry, HashFunction, ObjectKind};
use crate::git::{commit_and_keep, parse_oid};
use crate::shared_cache::FactKind;

/// One file of a distdir request.
#[derive(Clone, Debug)]
pub struct Distfile {
    pub name: String,
    /// Git blob id of the content.
    pub content: String,
    pub executable: bool,
}

impl Sources {
    /// ServeDistdirTree: a flat tree of known blobs.
    pub async fn distdir(&self, files: Vec<Distfile>, sync: bool) -> TreeAnswer {
        if self.shared.is_none() {
            return self.local_distdir(files, sync).await;
        }
        let Ok((_, tree_id, content_id)) = distdir_ids(&files) else {
            return self.local_distdir(files, sync).await;
        };
        // Another replica's tree, unless this one has it already.
        let (repos, id) = (self.repos.clone(), tree_id.clone());
        let known = blocking(move || Ok(repos.find_tree(&id)?)).await;
        if matches!(known, Ok(None)) {
            if let Some(answer) = self
                .shared_tree(FactKind::Distdir, &content_id, sync)
                .await
                .filter(|a| a.tree.as_deref() == Some(tree_id.as_str()))
            {
                return answer;
            }
        }
        let answer = self.local_distdir(files, sync).await;
        // Recorded by the replica that wrote the tree (once, not per request).
        if answer.outcome == Outcome::Ok && matches!(known, Ok(None)) {
            let (repos, id) = (self.repos.clone(), tree_id.clone());
            if let Ok(Some(repo)) = blocking(move || Ok(repos.find_tree(&id)?)).await {
                let path = self.repos.paths()[repo].clone();
                self.share_tree(
                    FactKind::Distdir,
                    &content_id,
                    &tree_id,
                    answer.digest.as_ref(),
                    path,
                )
                .await;
            }
        }
        answer
    }

    /// ServeDistdirTree from what this replica has.
    async fn local_distdir(&self, files: Vec<Distfile>, sync: bool) -> TreeAnswer {
        let native = self.remote_hash().is_native();
        // Find every blob: (native) local CAS, git cache, repositories, (native) endpoint.
        let mut sources = Vec::with_capacity(files.len());
        for f in &files {
            let (repos, cas, id) = (
                self.repos.clone(),
                self.native_cas.clone(),
                f.content.clone(),
            );
            let local = blocking(move || {
                parse_oid(&id)?;
                if native {
                    if let Some(p) = cas.find(ObjectKind::File, &id) {
                        return Ok(Some(BlobSource::NativeCas(p)));
                    }
                }
                Ok(repos.find_blob(&id)?.map(BlobSource::Repo))
            })
            .await;
            let source = match local {
                Ok(Some(s)) => s,
                Ok(None) => match self.endpoint_blob(&f.content).await {
                    Ok(Some(d)) => BlobSource::Remote(d),
                    Ok(None) => return TreeAnswer::outcome(Outcome::NotFound),
                    Err(e) => return TreeAnswer::internal(e.to_string()),
                },
                Err(e) => return TreeAnswer::internal(e),
            };
            sources.push(source);
        }

        let (tree_bytes, tree_id, content_id) = match distdir_ids(&files) {
            Ok(ids) => ids,
            Err(e) => return TreeAnswer::internal(e),
        };

        // Known already? Then sync from where it is.
        let (repos, id) = (self.repos.clone(), tree_id.clone());
        match blocking(move || Ok(repos.find_tree(&id)?)).await {
            Ok(Some(repo)) => {
                return self
                    .answer(
                        tree_id,
                        ObjectKind::Tree,
                        self.repos.paths()[repo].clone(),
                        sync,
                    )
                    .await
            }
            Ok(None) => {}
            Err(e) => return TreeAnswer::internal(e),
        }

        // Otherwise write blobs and tree into the git cache and keep it.
        let mut remote_blobs = Vec::new();
        for s in &sources {
            if let BlobSource::Remote(d) = s {
                match self.remote.read_blob(d).await {
                    Ok(Some(data)) => remote_blobs.push(data),
                    Ok(None) => return TreeAnswer::outcome(Outcome::NotFound),
                    Err(e) => return TreeAnswer::internal(e.to_string()),
                }
            }
        }
        let repos = self.repos.clone();
        let message = format!("Content of distdir {content_id}");
        let id = tree_id.clone();
        let written = blocking(move || {
            let cache = repos.open_git_cache()?;
            let odb = cache.odb()?;
            let mut remote_blobs = remote_blobs.into_iter();
            for (f, s) in files.iter().zip(sources) {
                let oid = Oid::from_str(&f.content)?;
                if odb.exists(oid) {
                    continue;
                }
                let data = match s {
                    BlobSource::Repo(r) => {
                        let repo = repos.open(r)?;
                        let blob = repo.find_blob(oid)?;
                        blob.content().to_vec()
                    }
                    BlobSource::NativeCas(p) => std::fs::read(&p)?,
                    BlobSource::Remote(_) => remote_blobs.next().unwrap_or_default(),
                };
                let written = odb.write(ObjectType::Blob, &data)?;
                if written != oid {
                    return Err(format!("blob {oid} has other content than its id says").into());
                }
            }
            let tree = odb.write(ObjectType::Tree, &tree_bytes)?;
            if tree.to_string() != id {
                return Err(format!("distdir tree {tree} differs from {id}").into());
            }
            commit_and_keep(&cache, tree, &message)?;
            Ok(())
        })
        .await;
        if let Err(e) = written {
            return TreeAnswer::internal(e);
        }
        self.answer(tree_id, ObjectKind::Tree, self.git_cache(), sync)
            .await
    }
}

/// The distdir's git tree (bytes and id) and its content id, as just-mr
/// computes them.
fn distdir_ids(files: &[Distfile]) -> Result<(Vec<u8>, String, String), String> {
    let mut entries = Vec::new();
    let mut content_map = BTreeMap::new();
    for f in files {
        let mut id = [0u8; 20];
        if hex::decode_to_slice(&f.content, &mut id).is_err() {
            return Err(format!("invalid blob id {:?}", f.content));
        }
        entries.push(GitTreeEntry {
            name: f.name.as_bytes().to_vec(),
            kind: ObjectKind::blob(f.executable),
            id,
        });
        content_map.insert(f.name.clone(), serde_json::json!([f.content, f.executable]));
    }
    let tree_bytes = serialize_git_tree(entries).map_err(|e| format!("invalid distdir: {e}"))?;
    let tree_id = HashFunction::GitSha1.hash_bytes(ObjectKind::Tree, &tree_bytes);
    let content_id = HashFunction::GitSha1.hash_bytes(
        ObjectKind::File,
        serde_json::to_string(&content_map)
            .expect("JSON of strings")
            .as_bytes(),
    );
    Ok((tree_bytes, tree_id, content_id))
}
