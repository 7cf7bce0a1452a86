//! Start-up wiring of the serve daemon: the build root, the git sources,
//! the associated endpoint (jserve's own or an external one) and what the
//! services share. The services (serve/), the SourceTree logic (sources/)
//! and ServeTarget (targets/) receive what they need from here.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Associated, ServeConfig};
use crate::digest::HashFunction;
use crate::execute::runner::RunnerConfig;
use crate::execute::{EndpointConfig, LocalEndpoint};
use crate::git::RepoSet;
use crate::remote::executor::{LocalExecutor, RemoteExecutor};
use crate::remote::{local::LocalRemote, EndpointClients};
use crate::sources::Sources;
use crate::storage::BuildRoot;
use crate::targets::TargetDeps;

/// Errors while preparing the serve state at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot prepare local build root {path}: {source}")]
    BuildRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create git cache in {path}: {source}")]
    GitCache { path: PathBuf, source: git2::Error },
    #[error("cannot set up the connection to the execution endpoint: {0}")]
    Endpoint(crate::remote::RemoteError),
}

/// What every service shares: configuration, storage, and git sources.
pub struct ServeContext {
    pub config: ServeConfig,
    pub hash: HashFunction,
    pub build_root: BuildRoot,
    pub repos: RepoSet,
    /// jserve's own REAPI endpoint, when the config names no external one.
    pub endpoint: Option<Arc<LocalEndpoint>>,
    /// The SourceTree logic, working with the endpoint's CAS.
    pub sources: Arc<Sources>,
    /// The endpoint's Execution service (ServeTarget builds through it).
    pub executor: Arc<dyn RemoteExecutor>,
    /// What ServeTarget did so far.
    pub target_stats: Arc<crate::targets::TargetStats>,
    /// justbuild's gc locks on the build root, and the rotations seen.
    pub gc: Arc<crate::storage::gc::GcLocks>,
    /// What the collector did (with a `"gc"` bound).
    pub gc_stats: Arc<crate::storage::gc::collector::GcStats>,
}

impl ServeContext {
    /// Opens the local build root (creating it and the git cache as needed).
    pub fn open(config: ServeConfig) -> Result<Arc<ServeContext>, SetupError> {
        crate::logging::set_progress_interval(config.build.progress_interval);
        let root = &config.local_build_root;
        let build_root = BuildRoot::open(root).map_err(|source| SetupError::BuildRoot {
            path: root.clone(),
            source,
        })?;
        build_root
            .init_git_cache()
            .map_err(|source| SetupError::GitCache {
                path: build_root.git_cache_dir(),
                source,
            })?;
        let repos = RepoSet::new(build_root.git_cache_dir(), config.repositories.clone())
            .with_older(build_root.older_git_cache_dirs());
        let hash = config.hash_function();
        let (endpoint, (remote, executor)): (_, EndpointClients) =
            match config.associated_endpoint() {
                Associated::Own => {
                    let own = LocalEndpoint::new(
                        &build_root,
                        EndpointConfig {
                            hash,
                            // Clients name an instance of their own choosing; like
                            // `just serve`, accept any.
                            instance_name: None,
                            runner: RunnerConfig {
                                launcher: config.build.local_launcher.clone(),
                                default_timeout: config.build.action_timeout,
                                jobs: config.build.local_jobs,
                            },
                        },
                    );
                    let clients: EndpointClients = (
                        Arc::new(LocalRemote::new(own.clone())),
                        Arc::new(LocalExecutor::new(own.clone())),
                    );
                    (Some(own), clients)
                }
                Associated::External {
                    address,
                    instance_name,
                } => {
                    let clients = crate::remote::connect(
                        address,
                        instance_name,
                        hash,
                        &config.authentication,
                        &config.retry,
                    )
                    .map_err(SetupError::Endpoint)?;
                    (None, clients)
                }
            };
        let sources = Arc::new(
            Sources::new(build_root.clone(), repos.clone(), remote)
                .with_fetch_limits(config.unpacking().limits)
                .with_shared_cache(config.shared_cache()),
        );
        let gc = crate::storage::gc::GcLocks::for_root(&build_root);
        Ok(Arc::new(ServeContext {
            hash,
            build_root,
            repos,
            endpoint,
            sources,
            executor,
            target_stats: Default::default(),
            gc,
            gc_stats: Arc::default(),
            config,
        }))
    }
}

impl ServeContext {
    /// What ServeTarget gets of the daemon.
    pub fn target_deps(&self) -> TargetDeps {
        let ctx = self;
        let config = &ctx.config;
        let endpoint_address = match config.associated_endpoint() {
            Associated::External { address, .. } => Some(address.to_string()),
            Associated::Own => None,
        };
        TargetDeps {
            hash: ctx.hash,
            build_root: ctx.build_root.clone(),
            repos: ctx.repos.clone(),
            sources: ctx.sources.clone(),
            executor: ctx.executor.clone(),
            own_endpoint: ctx.endpoint.is_some(),
            endpoint_address,
            jobs: config.jobs,
            build: config.build.clone(),
            authentication: config.authentication.clone(),
            retry: config.retry.clone(),
            gc: ctx.gc.clone(),
            stats: ctx.target_stats.clone(),
        }
    }
}
