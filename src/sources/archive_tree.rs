//! ServeArchiveTree: the git tree of an unpacked archive (a subdirectory of
//! it), with symlinks resolved as asked. Unpacked trees are remembered in the
//! archive tree map, resolved ones in the special tree map; concurrent
//! requests for the same archive unpack it once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use git2::Oid;

use super::answers::{Outcome, TreeAnswer};
use super::resolve::{resolve_tree, ResolveMode};
use super::SourceTreeError;
use super::{blocking, Sources};
use crate::archive::{ArchiveFormat, Unpacking};
use crate::digest::{Digest, ObjectKind};
use crate::git::{commit_and_keep, install_packs, keep_tree, parse_oid};
use crate::shared_cache::FactKind;
use crate::storage::IdMap;

/// Serialises work on the same archive (or resolved tree): the second caller
/// waits and then finds the first one's result in the maps.
#[derive(Default)]
pub struct OnceMap {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl OnceMap {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("once-map lock");
            // Forget locks nobody holds any more, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// What ServeArchiveTree can end in, beyond the shared outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveOutcome {
    Common(Outcome),
    Unpack(String),
    Resolve(String),
}

pub struct ArchiveAnswer {
    pub outcome: ArchiveOutcome,
    pub tree: Option<String>,
    pub digest: Option<Digest>,
}

impl ArchiveAnswer {
    fn fail(outcome: ArchiveOutcome) -> ArchiveAnswer {
        match &outcome {
            ArchiveOutcome::Common(Outcome::NotFound) => {}
            other => tracing::warn!("ServeArchiveTree: {other:?}"),
        }
        ArchiveAnswer {
            outcome,
            tree: None,
            digest: None,
        }
    }
    fn internal(message: impl Into<String>) -> ArchiveAnswer {
        ArchiveAnswer::fail(ArchiveOutcome::Common(Outcome::Internal(message.into())))
    }
}

impl From<TreeAnswer> for ArchiveAnswer {
    fn from(a: TreeAnswer) -> ArchiveAnswer {
        ArchiveAnswer {
            outcome: ArchiveOutcome::Common(a.outcome),
            tree: a.tree,
            digest: a.digest,
        }
    }
}

/// Where the archive's bytes are.
enum ArchiveSource {
    File(PathBuf),
    Repo(usize),
    Remote(Digest),
}

impl Sources {
    fn tree_map(&self, kind: ArchiveFormat) -> IdMap {
        self.build_root.archive_tree_map(kind)
    }

    fn special_map(&self, mode: ResolveMode) -> IdMap {
        self.build_root
            .repository_map(&format!("special-tree-map/{}", mode.pragma_name()))
    }

    /// ServeArchiveTree.
    pub async fn archive_tree(
        &self,
        content: &str,
        format: ArchiveFormat,
        subdir: &str,
        mode: Option<ResolveMode>,
        sync: bool,
        unpacking: &Unpacking,
    ) -> ArchiveAnswer {
        if parse_oid(content).is_err() {
            return ArchiveAnswer::internal(format!("invalid archive id {content:?}"));
        }
        let kind = format;
        let key = (
            content.to_string(),
            kind.justbuild_name(),
            subdir.to_string(),
        );
        if let Some(known) = self.archive_subtrees.get(&key) {
            return self.resolved_answer(known.0, known.1, mode, sync).await;
        }
        let fact = format!(
            "{content}/{}/{subdir}/{}",
            kind.justbuild_name(),
            mode.map_or("as-is", |m| m.pragma_name())
        );
        // Another replica's tree spares unpacking, unless this one has the
        // archive unpacked already.
        if self.shared.is_some() && !matches!(self.unpacked_root(content, kind).await, Ok(Some(_)))
        {
            if let Some(answer) = self.shared_tree(FactKind::Archive, &fact, sync).await {
                return answer.into();
            }
        }
        let (repo, tree) = match self
            .unpacked_subtree(content, format, subdir, unpacking)
            .await
        {
            Ok(found) => {
                self.archive_subtrees.remember(key, found.clone());
                found
            }
            Err(answer) => return answer,
        };
        let answer = self.resolved_answer(repo, tree, mode, sync).await;
        if let (ArchiveOutcome::Common(Outcome::Ok), Some(tree)) = (&answer.outcome, &answer.tree) {
            // Resolved trees live in the git cache, unpacked ones where found.
            let path = self.repos.paths()[if mode.is_some() { 0 } else { repo }].clone();
            self.share_tree(FactKind::Archive, &fact, tree, answer.digest.as_ref(), path)
                .await;
        }
        answer
    }

    /// The repository holding the unpacked archive and the tree at
    /// `subdir` in it, unpacking the archive first if it is not known.
    async fn unpacked_subtree(
        &self,
        content: &str,
        format: ArchiveFormat,
        subdir: &str,
        unpacking: &Unpacking,
    ) -> Result<(usize, String), ArchiveAnswer> {
        let kind = format;
        let root = {
            let _once = self
                .once
                .lock(&format!("{}/{content}", kind.justbuild_name()))
                .await;
            match self.unpacked_root(content, kind).await {
                Ok(Some(root)) => root,
                Ok(None) => {
                    self.unpack_archive(content, format, kind, unpacking)
                        .await?
                }
                Err(e) => return Err(ArchiveAnswer::internal(e)),
            }
        };

        // The requested subdirectory, in whichever repository has the root.
        let (repos, sub) = (self.repos.clone(), subdir.to_string());
        let found = blocking(move || {
            let Some(repo) = repos.find_tree(&root)? else {
                return Err(format!("unpacked tree {root} vanished from the git cache").into());
            };
            let r = repos.open(repo)?;
            let tree = r.find_tree(Oid::from_str(&root)?)?;
            let path: Vec<&str> = sub
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if path.is_empty() {
                return Ok((repo, root));
            }
            let entry = tree
                .get_path(std::path::Path::new(&path.join("/")))
                .map_err(|_| format!("the archive has no directory {sub:?}"))?;
            if entry.kind() != Some(git2::ObjectType::Tree) {
                return Err(format!("{sub:?} in the archive is not a directory").into());
            }
            Ok((repo, entry.id().to_string()))
        })
        .await;
        found.map_err(ArchiveAnswer::internal)
    }

    /// The answer for the tree found: resolved in `mode` if asked, synced
    /// if asked.
    async fn resolved_answer(
        &self,
        repo: usize,
        tree: String,
        mode: Option<ResolveMode>,
        sync: bool,
    ) -> ArchiveAnswer {
        let Some(mode) = mode else {
            return self
                .answer(
                    tree,
                    ObjectKind::Tree,
                    self.repos.paths()[repo].clone(),
                    sync,
                )
                .await
                .into();
        };
        let resolved = {
            let _once = self
                .once
                .lock(&format!("{}/{tree}", mode.pragma_name()))
                .await;
            let map = self.special_map(mode);
            let (repos, id) = (self.repos.clone(), tree.clone());
            blocking(move || {
                // The tree first (copied forward with it), then the entry;
                // a resolved tree that is gone is resolved again.
                let kept = |t: &str| repos.find_tree(t).ok().flatten().is_some();
                if let Some(known) = map.get_kept(&id, kept)? {
                    let known = known.trim().to_string();
                    if repos.find_tree(&known)?.is_some() {
                        return Ok(Ok(known));
                    }
                }
                let source = repos.open(repo)?;
                let cache = repos.open_git_cache()?;
                let oid = Oid::from_str(&id)?;
                let resolved = match resolve_tree(&source, &cache, oid, mode) {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e.to_string())),
                };
                keep_tree(&cache, resolved)?;
                map.set(&id, &resolved.to_string())?;
                Ok(Ok(resolved.to_string()))
            })
            .await
        };
        match resolved {
            Ok(Ok(tree)) => self
                .answer(tree, ObjectKind::Tree, self.repos.paths()[0].clone(), sync)
                .await
                .into(),
            Ok(Err(e)) => ArchiveAnswer::fail(ArchiveOutcome::Resolve(e)),
            Err(e) => ArchiveAnswer::internal(e),
        }
    }

    /// The remembered root tree of an unpacked archive, if it is still around.
    async fn unpacked_root(
        &self,
        content: &str,
        kind: ArchiveFormat,
    ) -> Result<Option<String>, SourceTreeError> {
        let (map, repos, id) = (self.tree_map(kind), self.repos.clone(), content.to_string());
        blocking(move || {
            // The tree first (copied forward with it), then the entry.
            let kept = |root: &str| repos.find_tree(root).ok().flatten().is_some();
            let Some(root) = map.get_kept(&id, kept)? else {
                return Ok(None);
            };
            let root = root.trim().to_string();
            // A root that is gone (e.g. after a git-cache GC) is unpacked again.
            Ok(repos.find_tree(&root)?.map(|_| root))
        })
        .await
    }

    /// Finds the archive, unpacks it, imports it into the git cache and
    /// remembers the root tree. Nothing is left behind on failure.
    async fn unpack_archive(
        &self,
        content: &str,
        format: ArchiveFormat,
        kind: ArchiveFormat,
        unpacking: &Unpacking,
    ) -> Result<String, ArchiveAnswer> {
        let (repos, cas, id) = (
            self.repos.clone(),
            self.native_cas.clone(),
            content.to_string(),
        );
        let local = blocking(move || {
            if let Some(p) = cas.find(ObjectKind::File, &id) {
                return Ok(Some(ArchiveSource::File(p)));
            }
            Ok(repos.find_blob(&id)?.map(ArchiveSource::Repo))
        })
        .await
        .map_err(ArchiveAnswer::internal)?;
        let source = match local {
            Some(s) => s,
            None => match self.endpoint_blob(content).await {
                Ok(Some(d)) => ArchiveSource::Remote(d),
                Ok(None) => {
                    return Err(ArchiveAnswer::fail(ArchiveOutcome::Common(
                        Outcome::NotFound,
                    )))
                }
                Err(e) => return Err(ArchiveAnswer::internal(e.to_string())),
            },
        };

        // Put the archive into the native CAS as a file to unpack from.
        let archive_path = match source {
            ArchiveSource::File(p) => p,
            ArchiveSource::Repo(r) => {
                let (repos, cas, id) = (
                    self.repos.clone(),
                    self.native_cas.clone(),
                    content.to_string(),
                );
                blocking(move || {
                    let repo = repos.open(r)?;
                    let oid = Oid::from_str(&id)?;
                    let odb = repo.odb()?;
                    // Stream loose objects; packed ones libgit2 can only hand out whole.
                    match odb.reader(oid) {
                        Ok((reader, len, _)) => {
                            cas.put_stream(ObjectKind::File, len as u64, reader, Some(&id))?;
                        }
                        Err(_) => {
                            let blob = repo.find_blob(oid)?;
                            cas.put_bytes_checked(ObjectKind::File, blob.content(), Some(&id))?;
                        }
                    }
                    Ok(cas.path(ObjectKind::File, &id))
                })
                .await
                .map_err(ArchiveAnswer::internal)?
            }
            ArchiveSource::Remote(d) => {
                let tmp = self
                    .build_root
                    .tmp_dir()
                    .join(format!("archive-{content}-{}", std::process::id()));
                match self.remote.download_to_file(&d, &tmp).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ArchiveAnswer::fail(ArchiveOutcome::Common(
                            Outcome::NotFound,
                        )))
                    }
                    Err(e) => return Err(ArchiveAnswer::internal(e.to_string())),
                }
                let (cas, id) = (self.native_cas.clone(), content.to_string());
                blocking(move || {
                    let stored = cas.put_file(ObjectKind::File, &tmp);
                    let _ = std::fs::remove_file(&tmp);
                    let d = stored?;
                    if d.hash != id {
                        return Err(format!("the endpoint's {id} has other content").into());
                    }
                    Ok(cas.path(ObjectKind::File, &id))
                })
                .await
                .map_err(ArchiveAnswer::internal)?
            }
        };

        let unpacking = unpacking.clone();
        let (tmp_root, repos, map) = (
            self.build_root.tmp_dir(),
            self.repos.clone(),
            self.tree_map(kind),
        );
        let (id, kind_name) = (content.to_string(), kind.justbuild_name());
        let result = tokio::task::spawn_blocking(
            move || -> Result<Result<String, crate::archive::UnpackError>, SourceTreeError> {
                let dir = crate::storage::staging::scratch_dir(&tmp_root, "unpack")?;
                tracing::info!(archive = %id, "unpacking");
                let started = std::time::Instant::now();
                let unpacked = match unpacking.unpack(&archive_path, format, dir.path()) {
                    Ok(unpacked) => unpacked,
                    Err(e) => return Ok(Err(e)),
                };
                let cache = repos.open_git_cache()?;
                install_packs(&cache, &unpacked.packs)?;
                commit_and_keep(
                    &cache,
                    unpacked.root,
                    &format!("Content of {kind_name} {id}"),
                )?;
                map.set(&id, &unpacked.root.to_string())?;
                let metrics = crate::metrics::global();
                metrics.archives_unpacked.inc();
                metrics.archive_entries.inc_by(unpacked.stats.entries);
                metrics.archive_bytes.inc_by(unpacked.stats.bytes);
                tracing::info!(
                    archive = %id,
                    tree = %unpacked.root,
                    entries = unpacked.stats.entries,
                    bytes = unpacked.stats.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "unpacked"
                );
                Ok(Ok(unpacked.root.to_string()))
            },
        )
        .await
        .map_err(|e| ArchiveAnswer::internal(e.to_string()))?;
        match result {
            Ok(Ok(root)) => Ok(root),
            Ok(Err(unpack_error)) => Err(ArchiveAnswer::fail(ArchiveOutcome::Unpack(
                unpack_error.to_string(),
            ))),
            Err(e) => Err(ArchiveAnswer::internal(e)),
        }
    }
}
