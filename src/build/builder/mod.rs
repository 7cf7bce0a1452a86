//! Building an analysed action graph through the associated remote-execution
//! endpoint: the artifacts a target-level cache entry needs, as `KNOWN`
//! objects in the endpoint's CAS.
//!
//! A build first uploads what the graph takes from outside (the analysis'
//! blobs, `LOCAL` files, `KNOWN` objects the CAS lacks), then resolves the
//! requested artifacts: every action reachable from them runs once (by
//! action id), after its inputs, at most `jobs` at a time; trees become
//! input roots, overlays are computed in memory. The Action and Command
//! messages are those a `just` client sends for the same action, so the
//! endpoint's action cache is shared with clients.

mod dispatch;
mod outputs;
mod overlay;
mod plan;
mod run;
mod tree;
mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::build::action::ExecutionSettings;
use crate::build::artifact::ArtifactDescription;
use crate::build::graph::ActionGraph;
use crate::digest::{Digest, ObjectKind};
use crate::remote::executor::{ExecError, RemoteExecutor};
use crate::remote::{RemoteCas, RemoteError};
pub use dispatch::DispatchTarget;

use self::tree::Entry;

/// Errors of a local object source.
pub type LocalError = Box<dyn std::error::Error + Send + Sync>;

/// A file of a source root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    pub content: Vec<u8>,
    /// `File`, `Executable` or `Symlink` (the content is then the target).
    pub kind: ObjectKind,
}

/// Where objects come from that the endpoint does not have: the files of
/// `LOCAL` artifacts and the objects of `KNOWN` ones (serve's repositories
/// and git cache).
#[tonic::async_trait]
pub trait LocalObjects: Send + Sync {
    /// The file `path` of repository `repository`; `None` if there is none.
    async fn read_local(
        &self,
        repository: &str,
        path: &str,
    ) -> Result<Option<LocalFile>, LocalError>;

    /// The object `digest` (of the endpoint's hash mode) in the endpoint's
    /// representation: a blob's content, or a tree object (native: git tree;
    /// compatible: `Directory` message). `repository` is where the analysis
    /// found it, if known. `None` if the object is not known here.
    async fn read_known(
        &self,
        digest: &Digest,
        kind: ObjectKind,
        repository: Option<&str>,
    ) -> Result<Option<Vec<u8>>, LocalError>;
}

/// A source without any objects, for graphs that need none.
pub struct NoLocalObjects;

#[tonic::async_trait]
impl LocalObjects for NoLocalObjects {
    async fn read_local(&self, _: &str, _: &str) -> Result<Option<LocalFile>, LocalError> {
        Ok(None)
    }
    async fn read_known(
        &self,
        _: &Digest,
        _: ObjectKind,
        _: Option<&str>,
    ) -> Result<Option<Vec<u8>>, LocalError> {
        Ok(None)
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("malformed action graph: {0}")]
    Graph(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Execution(#[from] ExecError),
    #[error("cannot read LOCAL artifact {path:?} of repository {repository:?}: {message}")]
    Local {
        repository: String,
        path: String,
        message: String,
    },
    #[error("KNOWN object {id} ({kind:?}) is neither at the endpoint nor in serve's repositories")]
    MissingKnown { id: String, kind: ObjectKind },
    #[error("reading KNOWN object {id} from serve's repositories failed: {message}")]
    LocalSource { id: String, message: String },
    #[error("cannot stage the inputs of {what}: {message}")]
    Staging { what: String, message: String },
    #[error("tree overlay {id} failed: {message}")]
    Overlay { id: String, message: String },
    /// An action failed; the message includes its command and output.
    #[error("{message}")]
    Action { action: String, message: String },
    #[error("{0}")]
    Shared(Arc<BuildError>),
    #[error("a build task failed: {0}")]
    Task(String),
}

impl BuildError {
    /// The id of the action whose failure this is, if it is one.
    pub fn failed_action(&self) -> Option<&str> {
        match self {
            BuildError::Action { action, .. } => Some(action),
            BuildError::Shared(inner) => inner.failed_action(),
            _ => None,
        }
    }
}

/// The counts of a build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Actions the requested artifacts need.
    pub actions: usize,
    /// Run by the endpoint.
    pub executed: usize,
    /// Answered from the action cache.
    pub cached: usize,
    /// Failed, but allowed to (`may_fail`); counted in `executed` or `cached` too.
    pub failed: usize,
}

/// One requested artifact, built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltArtifact {
    /// The `KNOWN` description of the object.
    pub artifact: ArtifactDescription,
    /// It depends on an action that failed (`may_fail`).
    pub failed: bool,
}

/// The result of a successful build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    /// In the order requested.
    pub artifacts: Vec<BuiltArtifact>,
    pub stats: BuildStats,
}

/// What the builder talks to.
#[derive(Clone)]
pub struct BuildContext {
    pub settings: ExecutionSettings,
    pub cas: Arc<dyn RemoteCas>,
    pub executor: Arc<dyn RemoteExecutor>,
    pub local: Arc<dyn LocalObjects>,
    /// Actions running at once (at least one).
    pub jobs: usize,
    /// Other endpoints for actions with matching properties.
    pub dispatch: Vec<DispatchTarget>,
    /// How often a running build logs its progress.
    pub progress_every: Duration,
}

/// An object with the failed-ness of what it was made from.
#[derive(Clone, Debug)]
struct Resolved {
    entry: Entry,
    failed: bool,
}

/// The outputs of one action by their path relative to the action root.
#[derive(Debug)]
struct Outputs {
    by_path: HashMap<String, Entry>,
    failed: bool,
}

type Shared<T> = Result<T, Arc<BuildError>>;
type Memo<T> = Mutex<HashMap<String, Arc<OnceCell<Shared<T>>>>>;
type Boxed<T> = Pin<Box<dyn Future<Output = Shared<T>> + Send>>;

#[derive(Default)]
struct Counters {
    executed: AtomicUsize,
    cached: AtomicUsize,
    failed: AtomicUsize,
}

struct Inner {
    graph: Arc<ActionGraph>,
    ctx: BuildContext,
    slots: Semaphore,
    locals: Mutex<HashMap<(String, String), Entry>>,
    actions: Memo<Arc<Outputs>>,
    trees: Memo<Resolved>,
    overlays: Memo<Resolved>,
    /// Symlink targets by blob hash (compatible mode stores them inline).
    targets: Mutex<HashMap<String, String>>,
    counters: Counters,
    /// Actions holding a slot: since when, and what they make.
    running: Mutex<HashMap<String, (std::time::Instant, String)>>,
    /// Actions waiting for a slot.
    queued: AtomicUsize,
}

/// Builds artifacts of one action graph. Results are kept: building more
/// artifacts of the same graph later reuses what was built.
pub struct Builder {
    inner: Arc<Inner>,
}

fn shared(e: BuildError) -> Arc<BuildError> {
    Arc::new(e)
}

/// The error itself when this was its only holder.
fn unshare(e: Arc<BuildError>) -> BuildError {
    Arc::try_unwrap(e).unwrap_or_else(BuildError::Shared)
}

/// The memoised value of `key`, computing it once.
async fn memo<T: Clone>(
    map: &Memo<T>,
    key: &str,
    compute: impl Future<Output = Shared<T>>,
) -> Shared<T> {
    let cell = map
        .lock()
        .expect("memo lock")
        .entry(key.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| compute).await.clone()
}

impl Builder {
    pub fn new(graph: Arc<ActionGraph>, ctx: BuildContext) -> Builder {
        let jobs = ctx.jobs.max(1);
        Builder {
            inner: Arc::new(Inner {
                graph,
                ctx,
                slots: Semaphore::new(jobs),
                locals: Mutex::new(HashMap::new()),
                actions: Memo::default(),
                trees: Memo::default(),
                overlays: Memo::default(),
                targets: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                running: Mutex::new(HashMap::new()),
                queued: AtomicUsize::new(0),
            }),
        }
    }

    /// Builds `artifacts` and returns their objects, in the same order.
    pub async fn build(
        &self,
        artifacts: &[ArtifactDescription],
    ) -> Result<BuildOutcome, BuildError> {
        let inner = &self.inner;
        let cas = inner.ctx.cas.as_ref();
        let local = inner.ctx.local.as_ref();
        let plan = plan::plan(&inner.graph, cas.hash_function(), artifacts)?;
        let total = plan.actions.len();
        tracing::info!(
            "building {} artifacts: {total} actions, {} local files, {} known objects",
            artifacts.len(),
            plan.locals.len(),
            plan.knowns.len()
        );
        upload::upload_graph_blobs(cas, &inner.graph).await?;
        let locals = upload::upload_locals(cas, local, &plan.locals).await?;
        {
            let mut targets = inner.targets.lock().expect("targets lock");
            for entry in locals.values() {
                if let Some(target) = &entry.target {
                    targets.insert(entry.digest.hash.clone(), target.clone());
                }
            }
        }
        inner.locals.lock().expect("locals lock").extend(locals);
        upload::ensure_present(cas, local, plan.knowns.into_values().collect()).await?;

        let before = inner.stats(0);
        let progress = tokio::spawn(report_progress(inner.clone(), before, total));
        let resolved = inner
            .resolve_all(
                artifacts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (i.to_string(), a.clone()))
                    .collect(),
            )
            .await;
        progress.abort();
        let resolved = resolved.map_err(unshare)?;
        let after = inner.stats(total);
        let stats = BuildStats {
            actions: total,
            executed: after.executed - before.executed,
            cached: after.cached - before.cached,
            failed: after.failed - before.failed,
        };
        tracing::info!(
            "build done: {} actions, {} executed, {} cached, {} failed",
            stats.actions,
            stats.executed,
            stats.cached,
            stats.failed
        );
        Ok(BuildOutcome {
            artifacts: resolved
                .into_iter()
                .map(|(_, r)| BuiltArtifact {
                    artifact: ArtifactDescription::known(
                        r.entry.digest.hash,
                        r.entry.digest.size,
                        r.entry.kind,
                    ),
                    failed: r.failed,
                })
                .collect(),
            stats,
        })
    }
}

async fn report_progress(inner: Arc<Inner>, before: BuildStats, total: usize) {
    /// Longest-running actions named in a progress line.
    const NAMED: usize = 3;
    loop {
        tokio::time::sleep(inner.ctx.progress_every).await;
        let now = inner.stats(total);
        let done = (now.executed + now.cached) - (before.executed + before.cached);
        let mut running: Vec<(std::time::Duration, String)> = inner
            .running
            .lock()
            .expect("running lock")
            .values()
            .map(|(since, what)| (since.elapsed(), what.clone()))
            .collect();
        running.sort_by_key(|r| std::cmp::Reverse(r.0));
        let longest: Vec<String> = running
            .iter()
            .take(NAMED)
            .map(|(took, what)| format!("{what} ({} s)", took.as_secs()))
            .collect();
        tracing::info!(
            "{done} of {total} actions done ({} cached), {} running, {} queued{}{}",
            now.cached - before.cached,
            running.len(),
            inner.queued.load(Ordering::Relaxed),
            if longest.is_empty() {
                ""
            } else {
                "; longest: "
            },
            longest.join(", ")
        );
    }
}

impl Inner {
    fn stats(&self, actions: usize) -> BuildStats {
        BuildStats {
            actions,
            executed: self.counters.executed.load(Ordering::Relaxed),
            cached: self.counters.cached.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Resolves artifacts concurrently; the first failure ends the wait
    /// (and cancels the rest).
    async fn resolve_all(
        self: &Arc<Self>,
        artifacts: Vec<(String, ArtifactDescription)>,
    ) -> Shared<Vec<(String, Resolved)>> {
        let mut out: Vec<Option<(String, Resolved)>> = vec![None; artifacts.len()];
        let mut pending = JoinSet::new();
        for (i, (path, artifact)) in artifacts.into_iter().enumerate() {
            match self.resolve_leaf(&artifact) {
                Some(leaf) => out[i] = Some((path, leaf.map_err(shared)?)),
                None => {
                    let me = self.clone();
                    pending.spawn(async move { (i, path, me.resolve(artifact).await) });
                }
            }
        }
        while let Some(joined) = pending.join_next().await {
            let (i, path, resolved) =
                joined.map_err(|e| shared(BuildError::Task(e.to_string())))?;
            out[i] = Some((path, resolved?));
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every artifact resolved"))
            .collect())
    }

    /// `KNOWN` and `LOCAL` artifacts, which need no waiting.
    fn resolve_leaf(&self, artifact: &ArtifactDescription) -> Option<Result<Resolved, BuildError>> {
        let hash = self.ctx.cas.hash_function();
        match artifact {
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } => Some(Ok(Resolved {
                entry: Entry {
                    kind: *file_type,
                    digest: hash.digest(*file_type, id.as_str(), *size),
                    target: None,
                },
                failed: false,
            })),
            ArtifactDescription::Local { path, repository } => {
                let key = (repository.clone(), path.clone());
                let entry = self.locals.lock().expect("locals lock").get(&key).cloned();
                Some(
                    entry
                        .map(|entry| Resolved {
                            entry,
                            failed: false,
                        })
                        .ok_or_else(|| BuildError::Local {
                            repository: repository.clone(),
                            path: path.clone(),
                            message: "not uploaded before the build".into(),
                        }),
                )
            }
            _ => None,
        }
    }

    fn resolve(self: Arc<Self>, artifact: ArtifactDescription) -> Boxed<Resolved> {
        Box::pin(async move {
            if let Some(leaf) = self.resolve_leaf(&artifact) {
                return leaf.map_err(shared);
            }
            match artifact {
                ArtifactDescription::Action { action_id, path } => {
                    let me = self.clone();
                    let outputs =
                        memo(&self.actions, &action_id, me.action(action_id.clone())).await?;
                    match outputs.by_path.get(&path) {
                        Some(entry) => Ok(Resolved {
                            entry: entry.clone(),
                            failed: outputs.failed,
                        }),
                        None => Err(shared(BuildError::Graph(format!(
                            "action {action_id} has no output {path:?}"
                        )))),
                    }
                }
                ArtifactDescription::Tree { id } => {
                    let me = self.clone();
                    memo(&self.trees, &id, me.tree(id.clone())).await
                }
                ArtifactDescription::TreeOverlay { id } => {
                    let me = self.clone();
                    memo(&self.overlays, &id, me.overlay(id.clone())).await
                }
                ArtifactDescription::Known { .. } | ArtifactDescription::Local { .. } => {
                    unreachable!("leaves are resolved above")
                }
            }
        })
    }

    /// Fills in symlink targets, which compatible-mode directories hold inline.
    async fn with_targets(
        &self,
        resolved: Vec<(String, Resolved)>,
    ) -> Shared<Vec<(String, Entry)>> {
        let cas = self.ctx.cas.as_ref();
        let mut out = Vec::with_capacity(resolved.len());
        for (path, r) in resolved {
            let mut entry = r.entry;
            if entry.kind == ObjectKind::Symlink
                && entry.target.is_none()
                && !cas.hash_function().is_native()
            {
                let known = self
                    .targets
                    .lock()
                    .expect("targets lock")
                    .get(&entry.digest.hash)
                    .cloned();
                let target = match known {
                    Some(t) => t,
                    None => {
                        let data = cas
                            .read_blob(&entry.digest)
                            .await
                            .map_err(|e| shared(e.into()))?
                            .ok_or_else(|| {
                                shared(BuildError::MissingKnown {
                                    id: entry.digest.hash.clone(),
                                    kind: ObjectKind::Symlink,
                                })
                            })?;
                        let t = String::from_utf8(data).map_err(|_| {
                            shared(BuildError::Staging {
                                what: format!("symlink {path:?}"),
                                message: "its target is not UTF-8".into(),
                            })
                        })?;
                        self.targets
                            .lock()
                            .expect("targets lock")
                            .insert(entry.digest.hash.clone(), t.clone());
                        t
                    }
                };
                entry.target = Some(target);
            }
            out.push((path, entry));
        }
        Ok(out)
    }

    /// Builds the root of `inputs` and uploads its tree objects.
    async fn stage(&self, what: &str, inputs: Vec<(String, Resolved)>) -> Shared<(Digest, bool)> {
        let failed = inputs.iter().any(|(_, r)| r.failed);
        let entries = self.with_targets(inputs).await?;
        let hash = self.ctx.cas.hash_function();
        let (root, blobs) = tree::input_root(hash, &entries).map_err(|message| {
            shared(BuildError::Staging {
                what: what.to_string(),
                message,
            })
        })?;
        let blobs = blobs.into_iter().map(|b| (b.digest, b.data)).collect();
        upload::upload_missing(self.ctx.cas.as_ref(), blobs)
            .await
            .map_err(shared)?;
        Ok((root, failed))
    }

    fn tree(self: Arc<Self>, id: String) -> Boxed<Resolved> {
        Box::pin(async move {
            let tree = self.graph.trees.get(&id).cloned().ok_or_else(|| {
                shared(BuildError::Graph(format!("tree {id} is not in the graph")))
            })?;
            let inputs = self
                .resolve_all(
                    tree.inputs
                        .iter()
                        .map(|(p, a)| (p.clone(), a.clone()))
                        .collect(),
                )
                .await?;
            let (digest, failed) = self.stage(&format!("tree {id}"), inputs).await?;
            Ok(Resolved {
                entry: Entry {
                    kind: ObjectKind::Tree,
                    digest,
                    target: None,
                },
                failed,
            })
        })
    }

    fn overlay(self: Arc<Self>, id: String) -> Boxed<Resolved> {
        Box::pin(async move {
            let spec = self.graph.tree_overlays.get(&id).cloned().ok_or_else(|| {
                shared(BuildError::Graph(format!(
                    "tree overlay {id} is not in the graph"
                )))
            })?;
            let trees = self
                .resolve_all(
                    spec.trees
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (format!("{i:010}"), a.clone()))
                        .collect(),
                )
                .await?;
            let failed = trees.iter().any(|(_, r)| r.failed);
            let mut digests = Vec::with_capacity(trees.len());
            for (i, (_, r)) in trees.iter().enumerate() {
                if !r.entry.kind.is_tree() {
                    return Err(shared(BuildError::Overlay {
                        id,
                        message: format!("input {i} is not a tree but a {:?}", r.entry.kind),
                    }));
                }
                digests.push(r.entry.digest.clone());
            }
            let digest = overlay::overlay(self.ctx.cas.as_ref(), &digests, spec.disjoint)
                .await
                .map_err(|message| shared(BuildError::Overlay { id, message }))?;
            Ok(Resolved {
                entry: Entry {
                    kind: ObjectKind::Tree,
                    digest,
                    target: None,
                },
                failed,
            })
        })
    }

    fn action(self: Arc<Self>, id: String) -> Boxed<Arc<Outputs>> {
        Box::pin(async move {
            let node = self.graph.actions.get(&id).cloned().ok_or_else(|| {
                shared(BuildError::Graph(format!(
                    "action {id} is not in the graph"
                )))
            })?;
            let inputs = self
                .resolve_all(
                    node.inputs
                        .iter()
                        .map(|(p, a)| (p.clone(), a.clone()))
                        .collect(),
                )
                .await?;
            let (root, failed_inputs) = self.stage(&format!("action {id}"), inputs).await?;
            let outputs = self.run(&node, root, failed_inputs).await.map_err(shared)?;
            Ok(Arc::new(outputs))
        })
    }
}
