//! ServeTarget, independent of gRPC: answer a target-cache key from the
//! cache, or analyse and build the export target it names through the
//! endpoint, write the cache entries, and answer then.
//!
//! Identical requests (same shard, same key) share one computation, which
//! runs in its own task: a client that goes away does not stop a build
//! another client waits for.

mod error;
pub mod export_info;
mod miss;
pub mod objects;
mod single_flight;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::build::builder::{DispatchTarget, LocalObjects};
use crate::build::cache_entry::ObjectInfo;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::execute::runner::Interest;
use crate::memo::Memo;
use crate::remote::executor::RemoteExecutor;
use crate::shared_cache::FactKind;
use crate::storage::target_cache::{
    BackendDescription, CachedEntry, TargetCache, TargetCacheError,
};
use objects::{ensure_at_endpoint, fetch_to_local};
use single_flight::SingleFlight;

/// A ServeTarget request, parsed.
#[derive(Clone, Debug)]
pub struct TargetRequest {
    pub key: Digest,
    /// The request's execution properties (later duplicates already won).
    pub properties: BTreeMap<String, String>,
    pub dispatch: Option<Digest>,
    pub required: Vec<Digest>,
    pub keep_artifact_root: bool,
}

/// A successful answer: the cache value, or the log of a failed analysis
/// or build (both as blobs at the endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAnswer {
    Value(Digest),
    Log(Digest),
}

pub use error::{KeyError, TargetError};

type Outcome = Result<TargetAnswer, TargetError>;

/// How many answered entries are kept in memory (then they are forgotten
/// all at once: a hit costs one file read more after that).
const REMEMBERED_ENTRIES: usize = 16_384;

/// Instance name of dispatch endpoints (fixed in justbuild, not configurable).
const DISPATCH_INSTANCE: &str = "alternative remote execution";

/// An endpoint-dispatch list: properties to match and the endpoint to use.
pub type DispatchList = Vec<(BTreeMap<String, String>, String)>;

/// Counters of what ServeTarget did since start (for logs, tests and the
/// metrics).
#[derive(Debug)]
pub struct TargetStats {
    /// Requests answered or failed.
    pub requests: AtomicU64,
    /// Computations started (identical concurrent requests share one).
    pub computations: AtomicU64,
    /// Answers from the cache without a build.
    pub hits: AtomicU64,
    /// Those of the hits found in the shared cache at the endpoint.
    pub shared_hits: AtomicU64,
    /// Misses that analysed and built.
    pub builds: AtomicU64,
    pub actions_executed: AtomicU64,
    pub actions_cached: AtomicU64,
    /// Computations that did not find their key in the cache.
    pub misses: AtomicU64,
    /// Requests answered with an error or a failed build's log.
    pub failures: AtomicU64,
    /// Requests that joined an identical request's computation.
    pub shared: AtomicU64,
    /// Misses being analysed and built now.
    pub builds_running: AtomicU64,
    /// Seconds from a miss to its value (or failure).
    pub build_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for TargetStats {
    fn default() -> Self {
        TargetStats {
            requests: AtomicU64::default(),
            computations: AtomicU64::default(),
            hits: AtomicU64::default(),
            shared_hits: AtomicU64::default(),
            builds: AtomicU64::default(),
            actions_executed: AtomicU64::default(),
            actions_cached: AtomicU64::default(),
            misses: AtomicU64::default(),
            failures: AtomicU64::default(),
            shared: AtomicU64::default(),
            builds_running: AtomicU64::default(),
            build_seconds: crate::metrics::build_buckets(),
        }
    }
}

impl TargetStats {
    /// `(requests, computations, hits, builds, executed, cached)`.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            &self.requests,
            &self.computations,
            &self.hits,
            &self.builds,
            &self.actions_executed,
            &self.actions_cached,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// What ServeTarget needs from the daemon, and nothing more.
pub struct TargetDeps {
    pub hash: HashFunction,
    pub build_root: crate::storage::BuildRoot,
    pub repos: crate::git::RepoSet,
    /// The SourceTree logic: syncing roots to the endpoint, fetching trees.
    pub sources: Arc<crate::sources::Sources>,
    /// The associated endpoint's Execution service.
    pub executor: Arc<dyn RemoteExecutor>,
    /// Whether that endpoint is jserve's own (sharing the local CAS).
    pub own_endpoint: bool,
    /// The associated endpoint's address, for the backend description.
    pub endpoint_address: Option<String>,
    /// Analysis threads.
    pub jobs: usize,
    pub build: crate::config::BuildConfig,
    /// For connections to dispatch endpoints.
    pub authentication: crate::config::AuthConfig,
    pub retry: crate::config::RetryConfig,
    pub gc: Arc<crate::storage::gc::GcLocks>,
    pub stats: Arc<TargetStats>,
}

/// The Target service's state.
pub struct TargetServer {
    deps: TargetDeps,
    /// Computations under way, by shard and key.
    inflight: Arc<SingleFlight<(String, String), Outcome>>,
    /// The target cache of each shard met, opened once per generation
    /// (opening stores its backend description).
    caches: Memo<String, TargetCache>,
    /// Entries answered before, by shard and key; forgotten with a
    /// rotation, since their objects may be in an older generation (or gone).
    entries: Memo<(String, String), CachedEntry>,
    /// Dispatch lists read so far, by blob hash (clients send the same few).
    dispatch_lists: Memo<String, DispatchList>,
    /// Backend descriptions and their shards, by execution properties and
    /// dispatch list (clients send the same few).
    backends: Memo<BackendKey, (BackendDescription, String)>,
    /// Connections to the endpoints of dispatch lists, by address.
    dispatch_clients: Memo<String, DispatchClient>,
}

/// What a backend description depends on: the request's properties and
/// the hash of its dispatch list.
type BackendKey = (BTreeMap<String, String>, Option<String>);

/// How many shards, backend descriptions, dispatch lists and dispatch
/// endpoints are remembered (clients send the same few; these are bounds
/// against those that do not).
const REMEMBERED_BACKENDS: usize = 1024;

/// The CAS and Execution clients of one dispatch endpoint.
type DispatchClient = crate::remote::EndpointClients;

impl TargetServer {
    pub fn new(deps: TargetDeps) -> Arc<TargetServer> {
        let gc = deps.gc.clone();
        Arc::new(TargetServer {
            deps,
            inflight: Arc::default(),
            dispatch_clients: Memo::new(REMEMBERED_BACKENDS),
            dispatch_lists: Memo::new(REMEMBERED_BACKENDS),
            backends: Memo::new(REMEMBERED_BACKENDS),
            caches: Memo::until_rotation(REMEMBERED_BACKENDS, gc.clone()),
            entries: Memo::until_rotation(REMEMBERED_ENTRIES, gc),
        })
    }

    fn hash(&self) -> HashFunction {
        self.deps.hash
    }

    fn local_cas(&self) -> crate::storage::Cas {
        self.deps.build_root.cas(self.hash())
    }

    fn remote(&self) -> &Arc<dyn crate::remote::RemoteCas> {
        &self.deps.sources.remote
    }

    /// Answers one request; identical concurrent requests are computed once.
    pub async fn serve(self: &Arc<TargetServer>, request: TargetRequest) -> Outcome {
        self.deps.stats.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = self.serve_fetched(request).await;
        if matches!(outcome, Err(_) | Ok(TargetAnswer::Log(_))) {
            self.deps.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// The backend description of a request's properties and dispatch
    /// list, with its shard.
    fn backend(
        &self,
        request: &TargetRequest,
        dispatch_hash: Option<&str>,
        dispatch: &DispatchList,
    ) -> (BackendDescription, String) {
        let key = (
            request.properties.clone(),
            dispatch_hash.map(str::to_string),
        );
        if let Some(known) = self.backends.get(&key) {
            return known;
        }
        let backend = BackendDescription::describe(
            self.deps.endpoint_address.as_deref(),
            &request.properties,
            dispatch,
        );
        let shard = backend.shard(self.hash());
        self.backends
            .remember(key, (backend.clone(), shard.clone()));
        (backend, shard)
    }

    async fn serve_fetched(self: &Arc<TargetServer>, request: TargetRequest) -> Outcome {
        let (dispatch, dispatch_hash) = match &request.dispatch {
            Some(d) if d.size > 0 || !d.hash.is_empty() => {
                (self.dispatch_list(d).await?, Some(d.hash.as_str()))
            }
            _ => (Vec::new(), None),
        };
        let (backend, shard) = self.backend(&request, dispatch_hash, &dispatch);
        // A hit remembered in memory, where nothing needs uploading: no
        // computation to share.
        if self.deps.own_endpoint && !request.keep_artifact_root {
            if let Some(entry) = self.entries.get(&(shard.clone(), request.key.hash.clone())) {
                self.deps.stats.hits.fetch_add(1, Ordering::Relaxed);
                tracing::info!("ServeTarget {}: cache hit", request.key.hash);
                return Ok(TargetAnswer::Value(entry.blob.digest.clone()));
            }
        }
        let key = (shard, request.key.hash.clone());
        // Counted as waiting until this call ends (or its client goes away);
        // the computation goes on without waiters, but behind those with.
        let this = self.clone();
        let target = request.key.hash.clone();
        let start = move |interest| async move {
            // Goes on after its clients left: no rotation meanwhile.
            let _hold = this.deps.gc.extend().await;
            this.clone()
                .compute(request, backend, dispatch, interest)
                .await
        };
        let stats = self.deps.stats.clone();
        let joined = || {
            stats.shared.fetch_add(1, Ordering::Relaxed);
            tracing::info!("ServeTarget {target}: joining a computation under way")
        };
        self.inflight
            .run(key, start, joined)
            .await
            .map_err(|_| TargetError::Lost)?
    }

    /// Fetches the required digests into the local CAS; returns the text of
    /// the failures (processing goes on regardless).
    async fn fetch_required(&self, required: &[Digest]) -> String {
        let mut errors = String::new();
        let objects: Vec<_> = required
            .iter()
            .map(|d| crate::build::cache_entry::ObjectInfo {
                digest: d.clone(),
                kind: if d.is_tree {
                    ObjectKind::Tree
                } else {
                    ObjectKind::File
                },
            })
            .collect();
        if let Err(e) = fetch_to_local(&self.local_cas(), self.remote().as_ref(), &objects).await {
            tracing::warn!("fetching required digests: {e}");
            errors.push_str("Failed to download all required artifacts\n");
        }
        errors
    }

    /// A blob from the local CAS, or fetched from the endpoint.
    async fn blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, TargetError> {
        let cas = self.local_cas();
        let (c, hash) = (cas.clone(), d.hash.clone());
        if let Some(bytes) = blocking(move || c.read(ObjectKind::File, &hash))
            .await?
            .map_err(|e| TargetError::local(format!("reading blob {}", d.hash), e))?
        {
            return Ok(Some(bytes));
        }
        match self.remote().read_blob(d).await {
            Ok(found) => {
                if let Some(bytes) = found.clone() {
                    let _ = blocking(move || cas.put_bytes(ObjectKind::File, &bytes)).await;
                }
                Ok(found)
            }
            Err(e) => {
                tracing::warn!("reading blob {} from the endpoint: {e}", d.hash);
                Ok(None)
            }
        }
    }

    async fn dispatch_list(&self, d: &Digest) -> Result<DispatchList, TargetError> {
        if let Some(list) = self.dispatch_lists.get(&d.hash) {
            return Ok(list);
        }
        let bytes = self
            .blob(d)
            .await?
            .ok_or_else(|| TargetError::MissingBlob(d.hash.clone()))?;
        let list = parse_dispatch(&bytes)?;
        self.dispatch_lists.remember(d.hash.clone(), list.clone());
        Ok(list)
    }

    /// Everything after the in-flight check.
    async fn compute(
        self: Arc<TargetServer>,
        request: TargetRequest,
        backend: BackendDescription,
        dispatch: DispatchList,
        interest: Interest,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let stats = &self.deps.stats;
        stats.computations.fetch_add(1, Ordering::Relaxed);
        let (cache, found, shared) = self.look_up(backend, &request.key.hash).await?;
        if let Some(answer) = self.answer_hit(&cache, &request, found).await? {
            stats.hits.fetch_add(1, Ordering::Relaxed);
            if shared {
                stats.shared_hits.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                "ServeTarget {}: {}cache hit ({} ms)",
                request.key.hash,
                if shared { "shared " } else { "" },
                started.elapsed().as_millis()
            );
            return Ok(answer);
        }
        stats.misses.fetch_add(1, Ordering::Relaxed);
        stats.builds_running.fetch_add(1, Ordering::Relaxed);
        // Down again however the build ends (its task may be dropped).
        struct Running<'a>(&'a AtomicU64);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _running = Running(&stats.builds_running);
        tracing::info!(
            "ServeTarget {}: not in the cache; analysing and building",
            request.key.hash
        );
        let outcome = self
            .build_miss(&cache, &request, &dispatch, interest, started)
            .await;
        stats.build_seconds.observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// A miss: analysis, build, and the value as stored.
    async fn build_miss(
        self: &Arc<TargetServer>,
        cache: &TargetCache,
        request: &TargetRequest,
        dispatch: &DispatchList,
        interest: Interest,
        started: std::time::Instant,
    ) -> Outcome {
        let stats = &self.deps.stats;
        // Only a miss needs the required digests (the repository description).
        let download_errors = self.fetch_required(&request.required).await;
        let targets = self.dispatch_targets(dispatch)?;
        let outcome = match miss::build_and_store(self, cache, request, targets, &interest).await {
            Ok(o) => o,
            Err(e) if !download_errors.is_empty() => {
                let e = TargetError::AfterDownloadFailures {
                    downloads: download_errors,
                    error: Box::new(e),
                };
                tracing::warn!("{e}");
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        stats.builds.fetch_add(1, Ordering::Relaxed);
        stats
            .actions_executed
            .fetch_add(outcome.stats.executed as u64, Ordering::Relaxed);
        stats
            .actions_cached
            .fetch_add(outcome.stats.cached as u64, Ordering::Relaxed);
        if let Some(log) = outcome.log {
            tracing::info!(
                "ServeTarget {}: failed, log {} ({} ms)",
                request.key.hash,
                log.hash,
                started.elapsed().as_millis()
            );
            return Ok(TargetAnswer::Log(log));
        }
        let (c, key) = (cache.clone(), request.key.hash.clone());
        let found = blocking(move || c.read(&key)).await?;
        if let Ok(Some(entry)) = &found {
            self.remember(cache, &request.key.hash, entry);
        }
        match self.answer_hit(cache, request, found).await? {
            Some(answer) => {
                tracing::info!(
                    "ServeTarget {}: built ({} actions: {} executed, {} cached; {} ms)",
                    request.key.hash,
                    outcome.stats.actions,
                    outcome.stats.executed,
                    outcome.stats.cached,
                    started.elapsed().as_millis()
                );
                Ok(answer)
            }
            None => Err(TargetError::VanishedAfterStore(request.key.hash.clone())),
        }
    }

    /// The shard's cache (opened once: that stores its backend description)
    /// and the entry for `key`: from memory for keys answered before, else
    /// read from the build root in one trip to the blocking pool, else from
    /// the shared cache (then the last value is true).
    async fn look_up(
        &self,
        backend: BackendDescription,
        key: &str,
    ) -> Result<
        (
            TargetCache,
            Result<Option<CachedEntry>, TargetCacheError>,
            bool,
        ),
        TargetError,
    > {
        let shard = backend.shard(self.hash());
        let opened = self.caches.get(&shard);
        if let Some(cache) = &opened {
            if let Some(entry) = self.entries.get(&(shard.clone(), key.to_string())) {
                return Ok((cache.clone(), Ok(Some(entry)), false));
            }
        }
        let (root, hash, k) = (self.deps.build_root.clone(), self.hash(), key.to_string());
        let (cache, found) = blocking(move || {
            let cache = opened.unwrap_or_else(|| TargetCache::open(&root, hash, backend));
            let found = cache.read(&k);
            (cache, found)
        })
        .await?;
        self.caches.remember(shard.clone(), cache.clone());
        if let Ok(Some(entry)) = &found {
            self.remember(&cache, key, entry);
            return Ok((cache, found, false));
        }
        if let Some(entry) = self.shared_entry(&shard, key).await {
            // Kept in memory only: the local target cache holds entries whose
            // objects are in the local CAS, and these are at the endpoint.
            self.remember(&cache, key, &entry);
            return Ok((cache, Ok(Some(entry)), true));
        }
        Ok((cache, found, false))
    }

    /// The entry another replica recorded in the shared cache, its blob
    /// copied into the local CAS (the one object serve reads).
    async fn shared_entry(&self, shard: &str, key: &str) -> Option<CachedEntry> {
        let shared = self.deps.sources.shared.as_ref()?;
        let fact = match shared.look_up(FactKind::Target, shard, key).await {
            Ok(fact) => fact?,
            Err(e) => {
                tracing::warn!("shared cache look-up of {key}: {e}; treated as a miss");
                return None;
            }
        };
        let entry = entry_of_fact(&fact, self.hash(), key)?;
        let (cas, value) = (self.local_cas(), fact.value);
        match blocking(move || cas.put_bytes(ObjectKind::File, &value)).await {
            Ok(Ok(_)) => Some(entry),
            Ok(Err(e)) => {
                tracing::warn!("storing the shared cache entry {key}: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Records a target-cache entry (`text`, as stored) in the shared
    /// cache, after making sure the endpoint has every object it names;
    /// failures are only logged.
    pub(super) async fn share_entry(&self, cache: &TargetCache, key: &str, text: &str) {
        let Some(shared) = self.deps.sources.shared.as_ref() else {
            return;
        };
        let shared_one = async {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            let objects = crate::build::cache_entry::entry_objects(&json, self.hash())
                .map_err(|e| format!("reading its objects: {e}"))?;
            ensure_at_endpoint(&self.local_cas(), self.remote().as_ref(), &objects)
                .await
                .map_err(|e| format!("uploading its objects: {e}"))?;
            let shard = cache.backend().shard(self.hash());
            shared
                .record(FactKind::Target, &shard, key, text.as_bytes(), &objects)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = shared_one.await {
            tracing::warn!("sharing target-cache entry {key}: {e}");
        }
    }

    /// Keeps an entry in memory (entries do not change once written).
    fn remember(&self, cache: &TargetCache, key: &str, entry: &CachedEntry) {
        let shard = cache.backend().shard(self.hash());
        self.entries
            .remember((shard, key.to_string()), entry.clone());
    }

    /// The answer from the cache, after making sure the endpoint has the
    /// value and every object it names.
    async fn answer_hit(
        &self,
        cache: &TargetCache,
        request: &TargetRequest,
        found: Result<Option<CachedEntry>, TargetCacheError>,
    ) -> Result<Option<TargetAnswer>, TargetError> {
        let entry = match found {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(
                    "target cache entry {}: {e}; treated as a miss",
                    request.key.hash
                );
                return Ok(None);
            }
        };
        let mut objects = entry
            .objects(self.hash())
            .map_err(|e| TargetError::local("reading the objects of the cache entry", e))?;
        objects.push(entry.blob.clone());
        // The backend description goes to the endpoint too (the proto asks
        // for it); TargetCache::open put it into the local CAS.
        let description = cache.backend().text().as_bytes();
        objects.push(crate::build::cache_entry::ObjectInfo {
            digest: self.hash().digest_bytes(ObjectKind::File, description),
            kind: ObjectKind::File,
        });
        // jserve's own endpoint shares the local CAS: entries are written
        // only with their objects there, so there is nothing to upload.
        if !self.deps.own_endpoint && !self.at_endpoint(&objects, request).await? {
            return Ok(None);
        }
        if request.keep_artifact_root {
            miss::keep_artifact_root(self, &entry)
                .await
                .map_err(|e| TargetError::local("keeping the artifact root", e))?;
        }
        Ok(Some(TargetAnswer::Value(entry.blob.digest.clone())))
    }

    /// Makes sure the endpoint has `objects` (the last one the backend
    /// description, which is local), uploading what it lacks. Objects the
    /// local CAS does not have either (an entry from the shared cache) must
    /// be at the endpoint already; false if they are not there (a miss).
    async fn at_endpoint(
        &self,
        objects: &[ObjectInfo],
        request: &TargetRequest,
    ) -> Result<bool, TargetError> {
        let (cas, remote) = (self.local_cas(), self.remote().as_ref());
        match ensure_at_endpoint(&cas, remote, objects).await {
            Ok(()) => return Ok(true),
            Err(objects::ObjectsError::Missing(_)) => {}
            Err(e) => return Err(TargetError::upload("uploading the cached artifacts", e)),
        }
        let (named, description) = objects.split_at(objects.len().saturating_sub(1));
        let wanted = named.iter().map(|o| o.digest.clone()).collect();
        let missing = self
            .remote()
            .find_missing(wanted)
            .await
            .map_err(|e| TargetError::upload("checking the cached artifacts", e))?;
        if !missing.is_empty() {
            tracing::info!(
                "ServeTarget {}: {} objects of the entry are neither local nor at the \
                 endpoint (first {}); a miss",
                request.key.hash,
                missing.len(),
                missing[0].hash
            );
            return Ok(false);
        }
        ensure_at_endpoint(&cas, remote, description)
            .await
            .map_err(|e| TargetError::upload("uploading the backend description", e))?;
        Ok(true)
    }

    /// Clients for the endpoints of a dispatch list (kept per address).
    fn dispatch_targets(&self, list: &DispatchList) -> Result<Vec<DispatchTarget>, TargetError> {
        let deps = &self.deps;
        // The name justbuild (1.5 and 1.6) gives every dispatch endpoint, so
        // endpoints set up for the reference serve accept jserve's calls.
        let instance_name = DISPATCH_INSTANCE.to_string();
        let mut out = Vec::with_capacity(list.len());
        for (properties, address) in list {
            let parsed = crate::config::Address::parse(address).map_err(|e| {
                TargetError::DispatchAddress {
                    address: address.clone(),
                    reason: e.to_string(),
                }
            })?;
            let (cas, executor) = match self.dispatch_clients.get(address) {
                Some(c) => c,
                None => {
                    let clients = crate::remote::connect(
                        &parsed,
                        &instance_name,
                        self.hash(),
                        &deps.authentication,
                        &deps.retry,
                    )
                    .map_err(|e| TargetError::DispatchUnreachable {
                        address: address.clone(),
                        reason: e.to_string(),
                    })?;
                    self.dispatch_clients
                        .remember(address.clone(), clients.clone());
                    clients
                }
            };
            out.push(DispatchTarget {
                properties: properties.clone(),
                address: address.clone(),
                cas,
                executor,
            });
        }
        Ok(out)
    }

    fn local_objects(&self) -> Arc<dyn LocalObjects> {
        objects::serve_objects(self.local_cas(), self.deps.repos.clone())
    }
}

/// The target-cache entry a shared fact holds: only a well-formed entry
/// all of whose objects the fact names (and so the endpoint has).
pub(super) fn entry_of_fact(
    fact: &crate::shared_cache::Fact,
    hash: HashFunction,
    key: &str,
) -> Option<CachedEntry> {
    let entry = CachedEntry {
        blob: ObjectInfo {
            digest: fact.value_digest.clone(),
            kind: ObjectKind::File,
        },
        json: serde_json::from_slice(&fact.value).ok()?,
    };
    let named = entry.objects(hash).ok()?;
    if entry.parse(hash).is_err() || named.iter().any(|o| !fact.objects.contains(o)) {
        tracing::warn!("shared cache entry {key} is not one jserve records; ignored");
        return None;
    }
    Some(entry)
}

/// [`crate::blocking::value`] with the Target service's error type.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TargetError> {
    crate::blocking::value(f).await
}

/// An endpoint-dispatch list: `[[{property: value}, "host:port"], ...]`.
pub fn parse_dispatch(bytes: &[u8]) -> Result<DispatchList, TargetError> {
    parse_dispatch_list(bytes).map_err(TargetError::DispatchList)
}

fn parse_dispatch_list(bytes: &[u8]) -> Result<DispatchList, String> {
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("endpoint-dispatch list is not JSON: {e}"))?;
    let list = json
        .as_array()
        .ok_or("endpoint-dispatch list must be a list")?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let pair = entry
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| format!("endpoint-dispatch entry {entry} is not a pair"))?;
        let props = pair[0]
            .as_object()
            .ok_or_else(|| format!("endpoint-dispatch entry {entry}: properties must be a map"))?
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| {
                        format!("endpoint-dispatch entry {entry}: property values must be strings")
                    })
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let address = pair[1]
            .as_str()
            .ok_or_else(|| format!("endpoint-dispatch entry {entry}: address must be a string"))?;
        out.push((props, address.to_string()));
    }
    Ok(out)
}
