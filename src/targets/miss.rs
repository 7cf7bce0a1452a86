//! A cache miss: read the key and the repository description, set the
//! repositories up from serve's git trees, analyse, build through the
//! endpoint, and write the cache entries of every export target met.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

use super::objects::{fetch_to_local, ObjectsError};
use super::{KeyError, TargetError, TargetRequest, TargetServer};
use crate::build::action::{ApiVersion, ExecutionSettings, RequestMode};
use crate::build::analysis::{Analyser, CachedExport, ExportCache, ExportRecord};
use crate::build::artifact::{ArtifactDescription, IdScheme};
use crate::build::builder::{BuildContext, BuildStats, Builder, DispatchTarget};
use crate::build::cache_entry::{entry_text, non_known_artifacts, ObjectInfo, Replacements};
use crate::build::keys::KeyBlob;
use crate::build::names::{parse_entity_name, EntityName, NamedTarget};
use crate::build::repo_config::{FileRoot, RepositoryConfig};
use crate::build::value::Value;
use crate::config::TargetCacheWriteStrategy;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::execute::runner::Interest;
use crate::shared_cache::{FactKind, SharedCache};
use crate::storage::target_cache::{CachedEntry, TargetCache};

/// What a miss ended in: built and stored (the caller re-reads the cache),
/// or a failure log at the endpoint.
pub(super) struct MissOutcome {
    pub log: Option<Digest>,
    pub stats: BuildStats,
}

/// The target cache as the analysis sees it: nested export targets found
/// there are not analysed again.
struct CacheView {
    cache: TargetCache,
    hash: HashFunction,
    /// The shared cache, asked from the analysis threads (which may block).
    shared: Option<(Arc<SharedCache>, tokio::runtime::Handle)>,
}

impl CacheView {
    /// A nested export target's entry recorded by another replica.
    fn shared_entry(&self, key: &str) -> Option<CachedEntry> {
        let (shared, runtime) = self.shared.as_ref()?;
        let shard = self.cache.backend().shard(self.hash);
        let found = runtime.block_on(shared.look_up(FactKind::Target, &shard, key));
        match found {
            Ok(fact) => super::entry_of_fact(&fact?, self.hash, key),
            Err(e) => {
                tracing::warn!("shared cache look-up of {key}: {e}; treated as a miss");
                None
            }
        }
    }
}

impl ExportCache for CacheView {
    fn lookup(&self, key: &KeyBlob) -> Option<CachedExport> {
        let entry = match self.cache.read(key.hash()) {
            Ok(Some(entry)) => entry,
            _ => self.shared_entry(key.hash())?,
        };
        let parsed = entry.parse(self.hash).ok()?;
        Some(CachedExport {
            artifacts: parsed.result.artifact_stage,
            runfiles: parsed.result.runfiles,
            provides: parsed.result.provides,
            implied_export: parsed.implied,
        })
    }
}

/// What the key blob says.
struct Key {
    repo_key: String,
    target_name: Json,
    effective_config: Json,
}

fn parse_key(bytes: &[u8]) -> Result<Key, KeyError> {
    let json: Json = serde_json::from_slice(bytes).map_err(|e| KeyError::NotJson(e.to_string()))?;
    let obj = json.as_object().ok_or(KeyError::NotAnObject)?;
    let field = |k: &'static str| obj.get(k).ok_or(KeyError::MissingField(k));
    let repo_key = field("repo_key")?
        .as_str()
        .ok_or(KeyError::RepoKeyNotAString)?
        .to_string();
    // target_name and effective_config are JSON texts inside the JSON key.
    let json_field = |k: &'static str| -> Result<Json, KeyError> {
        let text = field(k)?.as_str().ok_or(KeyError::FieldNotAString(k))?;
        serde_json::from_str(text).map_err(|e| KeyError::FieldNotJson {
            field: k,
            reason: e.to_string(),
        })
    };
    let target_name = json_field("target_name")?;
    let effective_config = json_field("effective_config")?;
    if !effective_config.is_object() {
        return Err(KeyError::ConfigNotAnObject);
    }
    Ok(Key {
        repo_key,
        target_name,
        effective_config,
    })
}

/// The per-request log, returned to the client on failure.
#[derive(Default)]
struct Log(String);

impl Log {
    fn line(&mut self, msg: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{msg}");
    }
}

pub(super) async fn build_and_store(
    server: &Arc<TargetServer>,
    cache: &TargetCache,
    request: &TargetRequest,
    dispatch: Vec<DispatchTarget>,
    interest: &Interest,
) -> Result<MissOutcome, TargetError> {
    let hash = server.hash();
    let key_bytes = server
        .blob(&request.key)
        .await?
        .ok_or_else(|| TargetError::MissingBlob(request.key.hash.clone()))?;
    let key = parse_key(&key_bytes)?;
    if hash.check_hex(&key.repo_key).is_err() {
        return Err(KeyError::RepoKeyNotAHash {
            key: key.repo_key,
            mode: format!("{hash:?}"),
        }
        .into());
    }
    let desc_digest = hash.digest(ObjectKind::File, key.repo_key.clone(), 0);
    let desc_bytes = server
        .blob(&desc_digest)
        .await?
        .ok_or_else(|| TargetError::MissingBlob(key.repo_key.clone()))?;
    let desc: Json = serde_json::from_slice(&desc_bytes).map_err(|e| {
        TargetError::Description(format!("repository description is not JSON: {e}"))
    })?;
    let repos = server.deps.repos.clone();
    fetch_unknown_roots(server, &desc).await;
    let config = {
        let repos = repos.clone();
        super::blocking(move || {
            RepositoryConfig::from_repository_description(&desc, "0", &|tree| {
                repos
                    .find_tree(tree)
                    .ok()
                    .flatten()
                    .map(|i| repos.paths()[i].clone())
            })
        })
        .await?
        .map_err(|e| TargetError::Description(e.to_string()))?
    };
    let base = NamedTarget::new("0", "", "");
    let target = parse_entity_name(&key.target_name, &base, &config.binding_lookup())
        .map_err(|e| TargetError::TargetName(e.to_string()))?;
    let config = Arc::new(config);
    let mut log = Log::default();
    // justbuild's first line names the export target and its configuration.
    log.line(format!(
        "Requested target is [{target},{}]",
        crate::build::json::dump_compact(&key.effective_config)
    ));

    // Analysis, on the analysis threads.
    let sources = Arc::new(crate::build::sources::RepoReader::new(config.clone(), hash));
    let view = Arc::new(CacheView {
        cache: cache.clone(),
        hash,
        shared: server
            .deps
            .sources
            .shared
            .clone()
            .map(|s| (s, tokio::runtime::Handle::current())),
    });
    let jobs = server.deps.jobs;
    let name = EntityName::Named(target.clone());
    let conf = Value::from_json(&key.effective_config);
    let analysed = super::blocking(move || {
        let analyser = Analyser::new(sources, IdScheme::Current)
            .with_jobs(jobs)
            .with_export_cache(view);
        let result = analyser.analyse(&name, &conf);
        (result, analyser)
    })
    .await?;
    let (result, analyser) = analysed;
    let top = match result {
        Ok(t) => t,
        Err(e) => {
            log.line(format!("Failed to analyse target {target}:\n{e}"));
            return Ok(MissOutcome {
                log: Some(store_log(server, &log, "analysis").await?),
                stats: BuildStats::default(),
            });
        }
    };
    log.line(format!("Analysed target {target}"));
    let all_exports = analyser.exports();
    // The key must name an export target whose key we compute the same way;
    // otherwise no entry could answer it, so do not build at all.
    let named = all_exports.iter().any(|r| {
        r.key
            .as_ref()
            .is_some_and(|(_, k)| k.hash() == request.key.hash)
    });
    if !named {
        return Err(TargetError::NotAnExport {
            target: target.to_string(),
            config: key.effective_config.to_string(),
            key: request.key.hash.clone(),
        });
    }
    let exports: Vec<ExportRecord> = all_exports
        .into_iter()
        .filter(|r| r.key.is_some() && !r.cached)
        .collect();

    // What to build: the target's artifacts and runfiles, and every
    // artifact of every export target that will get a cache entry.
    let mut wanted: Vec<ArtifactDescription> = Vec::new();
    let mut seen = HashSet::new();
    let mut want = |a: ArtifactDescription| {
        if !a.is_known() && seen.insert(a.to_json_text()) {
            wanted.push(a);
        }
    };
    for stage in [&top.artifacts, &top.runfiles] {
        for v in stage.as_map().into_iter().flat_map(|m| m.values()) {
            if let Ok(a) = ArtifactDescription::from_value(v, hash) {
                want(a);
            }
        }
    }
    for r in &exports {
        let found = non_known_artifacts(&r.analysed.result(), hash)
            .map_err(|e| TargetError::local(format!("listing the artifacts of {}", r.target), e))?;
        for a in found {
            want(a);
        }
    }

    if !hash.is_native() {
        // Compatible ids of source files are not git ids: put the roots at
        // the endpoint so every KNOWN source object is there.
        sync_roots(server, &config).await?;
    }
    let settings = ExecutionSettings {
        hash,
        base_properties: request.properties.clone(),
        base_timeout: server.deps.build.action_timeout,
        mode: RequestMode::for_endpoint(
            hash,
            ApiVersion { major: 2, minor: 0 },
            ApiVersion { major: 2, minor: 1 },
        ),
    };
    let graph = Arc::new(analyser.graph());
    let builder = Builder::new(
        graph,
        BuildContext {
            settings,
            cas: server.remote().clone(),
            executor: server.deps.executor.clone().for_interest(interest),
            local: server.local_objects(),
            jobs: server.deps.build.build_jobs.max(1),
            dispatch,
            progress_every: server.deps.build.progress_interval,
        },
    );
    let outcome = match builder.build(&wanted).await {
        Ok(o) => o,
        Err(e) => {
            match e.failed_action() {
                // As justbuild reports it: which configured targets asked
                // for the action, then that the build failed.
                Some(action) => {
                    let mut text = e.to_string();
                    let origins = analyser.origins(action);
                    if !origins.is_empty() {
                        text.push_str("\nrequested by");
                        for o in origins {
                            text.push_str("\n - ");
                            text.push_str(&o);
                        }
                    }
                    log.line(text);
                    log.line("Build failed.");
                }
                None => log.line(format!("Failed to build target {target}:\n{e}")),
            }
            return Ok(MissOutcome {
                log: Some(store_log(server, &log, "build").await?),
                stats: BuildStats::default(),
            });
        }
    };
    let stats = outcome.stats;
    let failed: Vec<&ArtifactDescription> = wanted
        .iter()
        .zip(&outcome.artifacts)
        .filter(|(_, b)| b.failed)
        .map(|(a, _)| a)
        .collect();
    let replacements: Replacements = wanted
        .iter()
        .cloned()
        .zip(outcome.artifacts.iter().map(|b| b.artifact.clone()))
        .collect();

    write_entries(server, cache, &exports, &replacements).await;

    if !failed.is_empty() {
        for a in failed {
            log.line(format!("Artifact {a} of target {target} failed to build"));
        }
        return Ok(MissOutcome {
            log: Some(store_log(server, &log, "artifacts").await?),
            stats,
        });
    }
    Ok(MissOutcome { log: None, stats })
}

/// Writes the entries of the export targets analysed (not found in the
/// cache), dependencies first; failures are only logged.
async fn write_entries(
    server: &TargetServer,
    cache: &TargetCache,
    exports: &[ExportRecord],
    replacements: &Replacements,
) {
    let strategy = server.deps.build.target_cache_write_strategy;
    if strategy == TargetCacheWriteStrategy::Disable {
        return;
    }
    let hash = server.hash();
    // An entry implies the entries of the exports it contains, so it has
    // strictly more implied keys than each of them.
    let mut ordered: Vec<&ExportRecord> = exports.iter().collect();
    ordered.sort_by_key(|r| r.analysed.implied_export.len());
    let mut to_share = Vec::new();
    for r in ordered {
        let Some((_, key)) = &r.key else { continue };
        let text = match entry_text(
            &r.analysed.result(),
            replacements,
            &r.analysed.implied_export,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("no cache entry for {}: {e}", r.target);
                continue;
            }
        };
        let objects = match crate::build::cache_entry::entry_objects(
            &serde_json::from_str(&text).unwrap_or(Json::Null),
            hash,
        ) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("no cache entry for {}: {e}", r.target);
                continue;
            }
        };
        if let Err(e) =
            fetch_to_local(&server.local_cas(), server.remote().as_ref(), &objects).await
        {
            tracing::warn!(
                "no cache entry for {}: fetching its artifacts: {e}",
                r.target
            );
            continue;
        }
        let (c, k) = (cache.clone(), key.hash().to_string());
        let stored = {
            let text = text.clone();
            super::blocking(move || c.store(&k, &text)).await
        };
        match stored
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(info) => {
                tracing::info!(
                    "stored target-cache entry {} for {} as {info}",
                    key.hash(),
                    r.target
                );
                to_share.push((key.hash().to_string(), text));
            }
            Err(e) => tracing::warn!("storing the cache entry of {}: {e}", r.target),
        }
    }
    // Each shared entry stands on its own (it names all its objects), so
    // the round trips of many nested entries overlap.
    use futures::StreamExt as _;
    futures::stream::iter(to_share)
        .for_each_concurrent(SHARED_RECORDS_AT_ONCE, |(key, text): (String, String)| async move {
            server.share_entry(cache, &key, &text).await
        })
        .await;
}

/// Entries recorded in the shared cache at once after a build.
const SHARED_RECORDS_AT_ONCE: usize = 16;

/// Stores the log as a blob, locally and at the endpoint.
async fn store_log(server: &TargetServer, log: &Log, scope: &str) -> Result<Digest, TargetError> {
    tracing::info!("ServeTarget failed ({scope}):\n{}", log.0);
    let (cas, text) = (server.local_cas(), log.0.clone());
    let digest = super::blocking(move || cas.put_bytes(ObjectKind::File, text.as_bytes()))
        .await?
        .map_err(|e| {
            TargetError::local(
                format!("Failed to store log of failed {scope} to local CAS"),
                e,
            )
        })?;
    server
        .remote()
        .upload_blobs(vec![(digest.clone(), log.0.clone().into_bytes())])
        .await
        .map_err(|e| TargetError::upload(format!("Failed to upload log of failed {scope}"), e))?;
    Ok(digest)
}

/// Roots serve has in neither its git cache nor its repositories are
/// fetched from the endpoint's CAS into the git cache, as GetRemoteTree
/// does (a client may have uploaded them). In compatible mode that needs
/// the tree's digest at the endpoint, known only for trees synced before.
async fn fetch_unknown_roots(server: &TargetServer, desc: &Json) {
    let mut trees = BTreeSet::new();
    for repo in desc.as_object().into_iter().flat_map(|m| m.values()) {
        for key in [
            "workspace_root",
            "target_root",
            "rule_root",
            "expression_root",
        ] {
            if let Some(tree) = repo.get(key).and_then(|r| r.get(1)).and_then(Json::as_str) {
                trees.insert(tree.to_string());
            }
        }
    }
    let sources = &server.deps.sources;
    for tree in trees {
        let repos = server.deps.repos.clone();
        let id = tree.clone();
        let known =
            tokio::task::spawn_blocking(move || repos.find_tree(&id).ok().flatten().is_some())
                .await
                .unwrap_or(false);
        if known {
            continue;
        }
        let Some(digest) = sources.syncer.known_digest(&tree, ObjectKind::Tree) else {
            continue;
        };
        let outcome = sources.get_remote_tree(&digest).await;
        tracing::info!("root {tree} not known locally; from the endpoint: {outcome:?}");
    }
}

/// Uploads the workspace roots of every repository to the endpoint.
async fn sync_roots(server: &TargetServer, config: &RepositoryConfig) -> Result<(), TargetError> {
    let mut done = BTreeSet::new();
    for info in config.repositories.values() {
        for root in info.roots() {
            if let FileRoot::GitTree {
                tree,
                repository: Some(path),
                ..
            } = root
            {
                if !done.insert(tree.clone()) {
                    continue;
                }
                server
                    .deps
                    .sources
                    .syncer
                    .sync(path.clone(), tree.clone(), ObjectKind::Tree)
                    .await
                    .map_err(|e| TargetError::upload(format!("uploading root {tree}"), e))?;
            }
        }
    }
    Ok(())
}

/// Why the artifact stage of an entry could not be kept in the git cache.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("reading the entry: {0}")]
    Entry(#[from] crate::build::cache_entry::EntryError),
    #[error("an artifact of the entry: {0}")]
    Artifact(#[from] crate::build::artifact::ArtifactError),
    #[error("artifact {0} is not KNOWN")]
    NotKnown(String),
    #[error("fetching the artifacts: {0}")]
    Fetch(#[from] ObjectsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("blob {0} is not in the CAS")]
    Missing(String),
    #[error(transparent)]
    Cas(#[from] crate::storage::CasError),
    #[error(transparent)]
    Tree(#[from] crate::storage::trees::TreeStoreError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error("git: {0}")]
    Git2(#[from] git2::Error),
    #[error(transparent)]
    Worker(#[from] crate::blocking::WorkerFailed),
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeepError + '_ {
    move |source| KeepError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Imports the artifact stage of a cache entry into the git cache (and
/// keeps it), so that roots computed from it are known to serve.
pub(super) async fn keep_artifact_root(
    server: &TargetServer,
    entry: &CachedEntry,
) -> Result<(), KeepError> {
    let hash = server.hash();
    let parsed = entry.parse(hash)?;
    let mut objects = Vec::new();
    let mut stage = Vec::new();
    for (path, v) in parsed.result.artifact_stage.as_map().into_iter().flatten() {
        let a = ArtifactDescription::from_value(v, hash)?;
        let info =
            ObjectInfo::of_known(&a, hash).ok_or_else(|| KeepError::NotKnown(path.clone()))?;
        objects.push(info.clone());
        stage.push((path.clone(), info));
    }
    let cas = server.local_cas();
    fetch_to_local(&cas, server.remote().as_ref(), &objects).await?;
    let build_root = server.deps.build_root.clone();
    crate::blocking::run(move || {
        let staging = build_root.tmp_dir();
        let scratch = crate::storage::staging::scratch_dir(&staging, "keep-artifacts-stage")
            .map_err(write_err(&staging))?;
        for (path, info) in &stage {
            materialise(&cas, info, &scratch.path().join(path))?;
        }
        let repo = build_root.init_git_cache()?;
        crate::git::import_to_git(&repo, scratch.path(), "Keep artifact stage")?;
        Ok(())
    })
    .await
}

/// Writes object `info` from the CAS to `dest`.
fn materialise(cas: &crate::storage::Cas, info: &ObjectInfo, dest: &Path) -> Result<(), KeepError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    }
    let d = &info.digest;
    match info.kind {
        ObjectKind::Tree => {
            std::fs::create_dir_all(dest).map_err(write_err(dest))?;
            crate::storage::trees::check_out_tree(cas, d, dest)?;
        }
        ObjectKind::Symlink => {
            let target = cas
                .read(ObjectKind::File, &d.hash)?
                .ok_or_else(|| KeepError::Missing(d.hash.clone()))?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), dest)
                .map_err(write_err(dest))?;
        }
        kind => {
            let source = cas
                .find(kind, &d.hash)
                .ok_or_else(|| KeepError::Missing(d.hash.clone()))?;
            std::fs::copy(&source, dest).map_err(write_err(dest))?;
            let mode = if kind == ObjectKind::Executable {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
                .map_err(write_err(dest))?;
        }
    }
    Ok(())
}
