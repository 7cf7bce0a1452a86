//! The SourceTree operations, with the reference's look-up orders, outcomes
//! and side effects (see shared/reference/serve.md §5).

use std::collections::BTreeMap;
use std::path::PathBuf;

use git2::{ObjectType, Oid, Repository};

use super::copy::{native_cas_tree_to_git, remote_tree_to_git, CopyError};
use super::{blocking, Sources};
use crate::digest::{serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind};
use crate::git::{commit_and_keep, parse_oid};

/// How an operation ended; the gRPC layer maps it onto each RPC's status enum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    SyncError(String),
    FailedPrecondition(String),
    Internal(String),
}

/// The result of an operation that names a tree (or blob) and may sync it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeAnswer {
    pub outcome: Outcome,
    pub tree: Option<String>,
    /// The endpoint digest, once synced.
    pub digest: Option<Digest>,
}

impl TreeAnswer {
    fn outcome(outcome: Outcome) -> TreeAnswer {
        TreeAnswer {
            outcome,
            tree: None,
            digest: None,
        }
    }

    fn internal(message: impl Into<String>) -> TreeAnswer {
        let message = message.into();
        tracing::error!("{message}");
        TreeAnswer::outcome(Outcome::Internal(message))
    }
}

/// One file of a distdir request.
#[derive(Clone, Debug)]
pub struct Distfile {
    pub name: String,
    /// Git blob id of the content.
    pub content: String,
    pub executable: bool,
}

/// Where a blob was found.
#[derive(Clone, Debug)]
enum BlobSource {
    Repo(usize),
    NativeCas(PathBuf),
    Remote,
}

impl Sources {
    fn git_cache(&self) -> PathBuf {
        self.repos.paths()[0].clone()
    }

    /// Syncs a git object found in repository `repo` if asked to, and answers.
    pub(super) async fn answer(
        &self,
        id: String,
        is_tree: bool,
        repo: PathBuf,
        sync: bool,
    ) -> TreeAnswer {
        let tree = is_tree.then(|| id.clone());
        if !sync {
            return TreeAnswer {
                outcome: Outcome::Ok,
                tree,
                digest: None,
            };
        }
        match self.syncer.sync(repo, id.clone(), is_tree).await {
            Ok(digest) => TreeAnswer {
                outcome: Outcome::Ok,
                tree,
                digest: Some(self.response_digest(digest)),
            },
            Err(e) => {
                tracing::warn!(id, "sync to the endpoint failed: {e}");
                TreeAnswer {
                    outcome: Outcome::SyncError(e.to_string()),
                    tree,
                    digest: None,
                }
            }
        }
    }

    /// Native answers carry the git id with size 0, as `just serve` sends them.
    fn response_digest(&self, mut d: Digest) -> Digest {
        if self.remote_hash().is_native() {
            d.size = 0;
        }
        d
    }

    /// ServeCommitTree: the tree at `subdir` of `commit`.
    pub async fn commit_tree(&self, commit: &str, subdir: &str, sync: bool) -> TreeAnswer {
        let (repos, commit_id, subdir_owned) =
            (self.repos.clone(), commit.to_string(), subdir.to_string());
        let found = blocking(move || {
            let Some(found) = repos.commit_tree(&commit_id).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let repo = repos.open(found.repo).map_err(|e| e.to_string())?;
            let root = repo
                .find_tree(Oid::from_str(&found.value).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let path: Vec<&str> = subdir_owned
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if path.is_empty() {
                return Ok(Some((found.repo, found.value)));
            }
            if path.contains(&"..") {
                return Err(format!("subdir {subdir_owned:?} leaves the commit's tree"));
            }
            let entry = root
                .get_path(std::path::Path::new(&path.join("/")))
                .map_err(|_| format!("commit {commit_id} has no {subdir_owned:?}"))?;
            if entry.kind() != Some(ObjectType::Tree) {
                return Err(format!(
                    "{subdir_owned:?} in commit {commit_id} is not a directory"
                ));
            }
            Ok(Some((found.repo, entry.id().to_string())))
        })
        .await;
        match found {
            Ok(Some((repo, tree))) => {
                self.answer(tree, true, self.repos.paths()[repo].clone(), sync)
                    .await
            }
            Ok(None) => TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => TreeAnswer::internal(e),
        }
    }

    /// ServeContent: puts a known blob into the endpoint's CAS.
    pub async fn content(&self, blob: &str) -> TreeAnswer {
        let (repos, id, cas) = (
            self.repos.clone(),
            blob.to_string(),
            self.native_cas.clone(),
        );
        let found = blocking(move || {
            parse_oid(&id).map_err(|e| e.to_string())?;
            if let Some(repo) = repos.find_blob(&id).map_err(|e| e.to_string())? {
                return Ok(Some(BlobSource::Repo(repo)));
            }
            Ok(cas.find(ObjectKind::File, &id).map(BlobSource::NativeCas))
        })
        .await;
        match found {
            Ok(Some(BlobSource::Repo(repo))) => {
                self.answer(
                    blob.to_string(),
                    false,
                    self.repos.paths()[repo].clone(),
                    true,
                )
                .await
            }
            Ok(Some(BlobSource::NativeCas(path))) => self.upload_cas_file(blob, path).await,
            Ok(_) => TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => TreeAnswer::internal(e),
        }
    }

    /// Uploads a blob from the native CAS, in the endpoint's hash mode.
    async fn upload_cas_file(&self, id: &str, path: PathBuf) -> TreeAnswer {
        let hash = self.remote_hash();
        let p = path.clone();
        let digest = blocking(move || {
            let file = std::fs::File::open(&p).map_err(|e| e.to_string())?;
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            let hex = hash
                .hash_reader(false, len, file)
                .map_err(|e| e.to_string())?;
            Ok(Digest {
                hash: hex,
                size: len,
                is_tree: false,
            })
        })
        .await;
        let digest = match digest {
            Ok(d) => d,
            Err(e) => return TreeAnswer::internal(e),
        };
        let present = self.remote.find_missing(vec![digest.clone()]).await;
        let result = match present {
            Ok(missing) if missing.is_empty() => Ok(()),
            Ok(_) => self.remote.upload_file(&digest, &path).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => TreeAnswer {
                outcome: Outcome::Ok,
                tree: None,
                digest: Some(self.response_digest(digest)),
            },
            Err(e) => {
                tracing::warn!(id, "upload of a CAS blob failed: {e}");
                TreeAnswer::outcome(Outcome::SyncError(e.to_string()))
            }
        }
    }

    /// Finds a tree in the git cache or a configured repository; failing that,
    /// imports it from the native CAS into the git cache. `None`: unknown.
    async fn locate_tree(&self, tree: &str, message: String) -> Result<Option<usize>, String> {
        let (repos, id, cas) = (
            self.repos.clone(),
            tree.to_string(),
            self.native_cas.clone(),
        );
        blocking(move || {
            let oid = parse_oid(&id).map_err(|e| e.to_string())?;
            if let Some(repo) = repos.find_tree(&id).map_err(|e| e.to_string())? {
                return Ok(Some(repo));
            }
            if !cas.contains(ObjectKind::Tree, &id) {
                return Ok(None);
            }
            let cache = repos.open_git_cache().map_err(|e| e.to_string())?;
            native_cas_tree_to_git(&cas, &cache, &id).map_err(|e| e.to_string())?;
            commit_and_keep(&cache, oid, &message).map_err(|e| e.to_string())?;
            Ok(Some(0))
        })
        .await
    }

    /// ServeTree: puts a known tree (and its content) into the endpoint's CAS.
    pub async fn tree(&self, tree: &str) -> TreeAnswer {
        match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(repo)) => {
                let mut answer = self
                    .answer(
                        tree.to_string(),
                        true,
                        self.repos.paths()[repo].clone(),
                        true,
                    )
                    .await;
                answer.tree = None;
                answer
            }
            Ok(None) => TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => TreeAnswer::internal(e),
        }
    }

    /// CheckRootTree: is the tree known locally (importing it from the native CAS if need be)?
    pub async fn check_root_tree(&self, tree: &str) -> Outcome {
        match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) => Outcome::NotFound,
            Err(e) => {
                tracing::error!("{e}");
                Outcome::Internal(e)
            }
        }
    }

    /// GetRemoteTree: fetches a tree from the endpoint's CAS into the git cache.
    pub async fn get_remote_tree(&self, digest: &Digest) -> Outcome {
        let mut digest = digest.clone();
        if self.remote_hash().is_native() {
            digest.is_tree = true;
        }
        match self.remote.find_missing(vec![digest.clone()]).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(_) => {
                return Outcome::FailedPrecondition(format!(
                    "tree {} is not in the endpoint's CAS",
                    digest.hash
                ))
            }
            Err(e) => return Outcome::FailedPrecondition(e.to_string()),
        }
        let cache = self.git_cache();
        let tree = match remote_tree_to_git(&self.remote, &cache, &digest).await {
            Ok(t) => t,
            Err(e @ (CopyError::Missing(_) | CopyError::Remote(_) | CopyError::Invalid(_))) => {
                return Outcome::FailedPrecondition(e.to_string())
            }
            Err(e) => return Outcome::Internal(e.to_string()),
        };
        let message = format!("Content of tree {}", digest.hash);
        let done = blocking(move || {
            let repo = Repository::open_bare(&cache).map_err(|e| e.to_string())?;
            commit_and_keep(&repo, tree, &message).map_err(|e| e.to_string())
        })
        .await;
        match done {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Internal(e),
        }
    }

    /// ComputeTreeStructure: the tree's structure, kept in the git cache.
    pub async fn compute_tree_structure(&self, tree: &str) -> TreeAnswer {
        let repo = match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(repo)) => repo,
            Ok(None) => return TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => return TreeAnswer::internal(e),
        };
        let repos = self.repos.clone();
        let memo = self.build_root.repository_map("tree_structure");
        let id = tree.to_string();
        let result = blocking(move || {
            let source = repos.open(repo).map_err(|e| e.to_string())?;
            let cache = repos.open_git_cache().map_err(|e| e.to_string())?;
            let oid = parse_oid(&id).map_err(|e| e.to_string())?;
            let structure = super::tree_structure::compute(&source, &cache, oid, &memo)
                .map_err(|e| e.to_string())?;
            commit_and_keep(&cache, structure, &format!("Import {structure}"))
                .map_err(|e| e.to_string())?;
            Ok(structure.to_string())
        })
        .await;
        match result {
            Ok(s) => TreeAnswer {
                outcome: Outcome::Ok,
                tree: Some(s),
                digest: None,
            },
            Err(e) => TreeAnswer::internal(e),
        }
    }

    /// ServeDistdirTree: a flat tree of known blobs.
    pub async fn distdir(&self, files: Vec<Distfile>, sync: bool) -> TreeAnswer {
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
                parse_oid(&id).map_err(|e| e.to_string())?;
                if native {
                    if let Some(p) = cas.find(ObjectKind::File, &id) {
                        return Ok(Some(BlobSource::NativeCas(p)));
                    }
                }
                Ok(repos
                    .find_blob(&id)
                    .map_err(|e| e.to_string())?
                    .map(BlobSource::Repo))
            })
            .await;
            let source = match local {
                Ok(Some(s)) => s,
                Ok(None) if native => {
                    let d = Digest {
                        hash: f.content.clone(),
                        size: 0,
                        is_tree: false,
                    };
                    match self.remote.find_missing(vec![d]).await {
                        Ok(m) if m.is_empty() => BlobSource::Remote,
                        Ok(_) => return TreeAnswer::outcome(Outcome::NotFound),
                        Err(e) => return TreeAnswer::internal(e.to_string()),
                    }
                }
                Ok(None) => return TreeAnswer::outcome(Outcome::NotFound),
                Err(e) => return TreeAnswer::internal(e),
            };
            sources.push(source);
        }

        // The distdir tree and its content id, as just-mr computes them.
        let mut entries = Vec::new();
        let mut content_map = BTreeMap::new();
        for f in &files {
            let mut id = [0u8; 20];
            if hex::decode_to_slice(&f.content, &mut id).is_err() {
                return TreeAnswer::internal(format!("invalid blob id {:?}", f.content));
            }
            entries.push(GitTreeEntry {
                name: f.name.as_bytes().to_vec(),
                kind: ObjectKind::blob(f.executable),
                id,
            });
            content_map.insert(f.name.clone(), serde_json::json!([f.content, f.executable]));
        }
        let tree_bytes = match serialize_git_tree(entries) {
            Ok(b) => b,
            Err(e) => return TreeAnswer::internal(format!("invalid distdir: {e}")),
        };
        let tree_id = HashFunction::GitSha1.hash_bytes(true, &tree_bytes);
        let content_id = HashFunction::GitSha1.hash_bytes(
            false,
            serde_json::to_string(&content_map)
                .expect("JSON of strings")
                .as_bytes(),
        );

        // Known already? Then sync from where it is.
        let (repos, id) = (self.repos.clone(), tree_id.clone());
        match blocking(move || repos.find_tree(&id).map_err(|e| e.to_string())).await {
            Ok(Some(repo)) => {
                return self
                    .answer(tree_id, true, self.repos.paths()[repo].clone(), sync)
                    .await
            }
            Ok(None) => {}
            Err(e) => return TreeAnswer::internal(e),
        }

        // Otherwise write blobs and tree into the git cache and keep it.
        let mut remote_blobs = Vec::new();
        for (f, s) in files.iter().zip(&sources) {
            if let BlobSource::Remote = s {
                let d = Digest {
                    hash: f.content.clone(),
                    size: 0,
                    is_tree: false,
                };
                match self.remote.read_blob(&d).await {
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
            let cache = repos.open_git_cache().map_err(|e| e.to_string())?;
            let odb = cache.odb().map_err(|e| e.to_string())?;
            let mut remote_blobs = remote_blobs.into_iter();
            for (f, s) in files.iter().zip(sources) {
                let oid = Oid::from_str(&f.content).map_err(|e| e.to_string())?;
                if odb.exists(oid) {
                    continue;
                }
                let data = match s {
                    BlobSource::Repo(r) => {
                        let repo = repos.open(r).map_err(|e| e.to_string())?;
                        let blob = repo.find_blob(oid).map_err(|e| e.to_string())?;
                        blob.content().to_vec()
                    }
                    BlobSource::NativeCas(p) => std::fs::read(&p).map_err(|e| e.to_string())?,
                    BlobSource::Remote => remote_blobs.next().unwrap_or_default(),
                };
                let written = odb
                    .write(ObjectType::Blob, &data)
                    .map_err(|e| e.to_string())?;
                if written != oid {
                    return Err(format!("blob {oid} has other content than its id says"));
                }
            }
            let tree = odb
                .write(ObjectType::Tree, &tree_bytes)
                .map_err(|e| e.to_string())?;
            if tree.to_string() != id {
                return Err(format!("distdir tree {tree} differs from {id}"));
            }
            commit_and_keep(&cache, tree, &message).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await;
        if let Err(e) = written {
            return TreeAnswer::internal(e);
        }
        self.answer(tree_id, true, self.git_cache(), sync).await
    }
}
