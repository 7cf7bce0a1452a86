//! The three just-serve gRPC services: a thin layer from protocol messages to
//! jserve's domain code, choosing status codes.

mod configuration;
mod source_tree;
mod target;

pub use configuration::ConfigurationService;
pub use source_tree::SourceTreeService;
pub use target::TargetService;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ServeConfig;
use crate::digest::HashFunction;
use crate::execute::runner::RunnerConfig;
use crate::execute::{EndpointConfig, LocalEndpoint};
use crate::git::RepoSet;
use crate::remote::execution::{GrpcExecutor, GrpcExecutorConfig, LocalExecutor, RemoteExecutor};
use crate::remote::grpc::{GrpcCas, GrpcCasConfig, GrpcTimeouts, GrpcTls};
use crate::remote::{local::LocalRemote, RemoteCas};
use crate::sources::Sources;
use crate::storage::BuildRoot;

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
    pub sources: Sources,
    /// The endpoint's Execution service (ServeTarget builds through it).
    pub executor: Arc<dyn RemoteExecutor>,
    /// What ServeTarget did so far.
    pub target_stats: crate::targets::TargetStats,
    /// justbuild's gc locks on the build root, and the rotations seen.
    pub gc: Arc<crate::storage::gc::GcLocks>,
}

impl ServeContext {
    /// Opens the local build root (creating it and the git cache as needed).
    pub fn open(config: ServeConfig) -> Result<Arc<ServeContext>, SetupError> {
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
        let endpoint = config.is_own_endpoint().then(|| {
            LocalEndpoint::new(
                &build_root,
                EndpointConfig {
                    hash,
                    // Clients name an instance of their own choosing; like `just serve`, accept any.
                    instance_name: None,
                    runner: RunnerConfig {
                        launcher: config.build.local_launcher.clone(),
                        default_timeout: config.build.action_timeout,
                        jobs: config.build.local_jobs,
                    },
                },
            )
        });
        let external = config.execution_endpoint.as_ref().and_then(|e| {
            e.address
                .clone()
                .map(|address| (address, e.instance_name.clone()))
        });
        let (remote, executor): (Arc<dyn RemoteCas>, Arc<dyn RemoteExecutor>) =
            match (&endpoint, external) {
                (Some(e), _) => (
                    Arc::new(LocalRemote::new(e.clone())),
                    Arc::new(LocalExecutor::new(e.clone())),
                ),
                // Connects on first use: a slow endpoint does not hold up the start.
                (None, Some((address, instance_name))) => {
                    let cas = GrpcCas::connect_lazy(GrpcCasConfig {
                        address: address.clone(),
                        instance_name: instance_name.clone(),
                        hash,
                        tls: GrpcTls::from_auth(&config.authentication),
                        retry: config.retry.clone(),
                        timeouts: GrpcTimeouts::default(),
                    })
                    .map_err(SetupError::Endpoint)?;
                    let executor = GrpcExecutor::new(
                        cas.channel(),
                        GrpcExecutorConfig {
                            address: address.to_string(),
                            instance_name,
                            hash,
                            retry: config.retry.clone(),
                        },
                    );
                    (Arc::new(cas), Arc::new(executor))
                }
                (None, None) => (
                    Arc::new(crate::remote::Unconnected { hash }),
                    Arc::new(crate::targets::NoExecutor),
                ),
            };
        let sources = Sources::new(build_root.clone(), repos.clone(), remote);
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
            config,
        }))
    }
}
