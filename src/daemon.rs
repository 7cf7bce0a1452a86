//! Running the serve daemon: bind, TLS, pid and info files, the start-up line,
//! and graceful shutdown. Used by the CLI and, in-process, by the tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::RemoteServiceConfig;
use crate::context::ServeContext;
use crate::execute::LocalEndpoint;
use crate::proto::configuration_server::ConfigurationServer;
use crate::proto::source_tree_server::SourceTreeServer;
use crate::proto::status::status_server::StatusServer;
use crate::proto::target_server::TargetServer;
use crate::serve::{AssetService, ConfigurationService, SourceTreeService, TargetService};
use bazel_remote_apis::build::bazel::remote::asset::v1::{
    fetch_server::FetchServer, push_server::PushServer,
};

/// The Remote Asset API's services, served beside the serve services.
const ASSET_SERVICES: [&str; 2] = [
    <FetchServer<AssetService> as NamedService>::NAME,
    <PushServer<AssetService> as NamedService>::NAME,
];
use crate::storage::atomic::write_atomic;

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {interface}:{port}: {source}")]
    Bind {
        interface: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TLS set-up: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot write {what} {path}: {source}")]
    StateFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::ListenError),
}

/// What the info file records about a running daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub interface: String,
    pub pid: u32,
    pub port: u16,
}

impl ServerInfo {
    /// Compact JSON with sorted keys and no trailing newline, as `just serve` writes it.
    pub fn to_json(&self) -> String {
        serde_json::json!({"interface": self.interface, "pid": self.pid, "port": self.port})
            .to_string()
    }
}

/// A daemon serving in the background of the current tokio runtime.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub info: ServerInfo,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    state_files: Vec<PathBuf>,
    /// Work beside serving (the collector, the metrics listener), stopped
    /// with the server.
    background: Vec<JoinHandle<()>>,
    /// Where the metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// What the Status service and the metrics read; one measurement of the
    /// build root serves both.
    scrape: crate::metrics::Scrape,
}

/// How a bounded stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every running call finished.
    Graceful,
    /// Calls were still running at the deadline and were cut off.
    Deadline,
    /// Asked to stop at once (a second signal) while calls were running.
    Forced,
}

impl RunningServer {
    /// Stops accepting connections and lets running calls finish, for at most
    /// `deadline` or until `force` resolves; then cuts off what still runs.
    /// Pid and info files are removed in every case.
    pub async fn shutdown_within(
        self,
        deadline: std::time::Duration,
        force: impl std::future::Future<Output = ()>,
    ) -> Result<Stop, DaemonError> {
        self.stop_background();
        let _ = self.shutdown.send(());
        let mut task = self.task;
        let outcome = tokio::select! {
            served = &mut task => served.map_err(DaemonError::from).map(|r| r.map(|()| Stop::Graceful)),
            _ = tokio::time::sleep(deadline) => Ok(Ok(Stop::Deadline)),
            _ = force => Ok(Ok(Stop::Forced)),
        };
        task.abort();
        for path in &self.state_files {
            let _ = std::fs::remove_file(path);
        }
        outcome?.map_err(DaemonError::Serve)
    }

    /// Keeps the build root of `services` within `config`'s bound while
    /// serving (storage::gc::collector).
    pub fn collect_garbage(
        &mut self,
        locks: Arc<crate::storage::gc::GcLocks>,
        root: crate::storage::BuildRoot,
        config: crate::config::GcConfig,
        stats: Arc<crate::storage::gc::collector::GcStats>,
    ) {
        self.background.push(crate::storage::gc::collector::spawn(
            locks, root, config, stats,
        ));
    }

    /// Serves Prometheus metrics at `config`'s address (`GET /metrics`),
    /// with the counters of the collector keeping the bound, if one does.
    pub async fn serve_metrics(
        &mut self,
        config: &crate::config::MetricsConfig,
        gc: Option<Arc<crate::storage::gc::collector::GcStats>>,
    ) -> Result<(), DaemonError> {
        let mut scrape = self.scrape.clone();
        if gc.is_some() {
            scrape.gc = gc;
        }
        let (addr, task) =
            crate::metrics::http::serve(&config.interface, config.port, scrape).await?;
        tracing::info!("metrics at http://{addr}/metrics");
        self.metrics_addr = Some(addr);
        self.background.push(task);
        Ok(())
    }

    fn stop_background(&self) {
        for task in &self.background {
            task.abort();
        }
    }

    /// Stops accepting connections, lets running calls finish, removes pid and info files.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        self.stop_background();
        let _ = self.shutdown.send(());
        let served = self.task.await?;
        for path in &self.state_files {
            let _ = std::fs::remove_file(path);
        }
        served.map_err(DaemonError::Serve)
    }
}

/// Numbers the RPCs, so that every log line of one call can be found together.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

fn read_tls_file(path: &Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|source| DaemonError::TlsFile {
        path: path.to_path_buf(),
        source,
    })
}

/// What one daemon process serves.
pub enum Services {
    /// The just-serve services, plus the REAPI when the context has its own endpoint.
    Serve(Arc<ServeContext>),
    /// Only the REAPI (`jserve execute`).
    Execute(Arc<LocalEndpoint>),
}

impl Services {
    /// The gc locks of the build root the services work on.
    fn gc_locks(&self) -> Arc<crate::storage::gc::GcLocks> {
        match self {
            Services::Serve(ctx) => ctx.gc.clone(),
            Services::Execute(endpoint) => endpoint.gc.clone(),
        }
    }

    fn endpoint(&self) -> Option<&Arc<LocalEndpoint>> {
        match self {
            Services::Serve(ctx) => ctx.endpoint.as_ref(),
            Services::Execute(endpoint) => Some(endpoint),
        }
    }

    /// The names of all services served on the port, reflection and health
    /// included: exactly what reflection lists.
    fn names(&self) -> Vec<&'static str> {
        let mut names = vec![
            <StatusServer<crate::status::StatusService> as NamedService>::NAME,
            tonic_health::pb::health_server::SERVICE_NAME,
            tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
            tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
        ];
        if let Services::Serve(_) = self {
            names.extend([
                <SourceTreeServer<SourceTreeService> as NamedService>::NAME,
                <TargetServer<TargetService> as NamedService>::NAME,
                <ConfigurationServer<ConfigurationService> as NamedService>::NAME,
            ]);
            names.extend(ASSET_SERVICES);
        }
        if self.endpoint().is_some() {
            names.extend(crate::execute::SERVICE_NAMES);
        }
        names
    }

    /// The start-up message, in the words `just serve` and `just execute` use.
    fn started_message(&self) -> String {
        let (compatible, what) = match self {
            Services::Serve(ctx) => (
                !ctx.hash.is_native(),
                if ctx.endpoint.is_some() {
                    "serve and execute services"
                } else {
                    "serve service"
                },
            ),
            Services::Execute(e) => (!e.hash.is_native(), "execution service"),
        };
        let prefix = if compatible { "compatible " } else { "" };
        format!("{prefix}{what} started")
    }
}

/// Where and how to listen.
#[derive(Clone, Debug, Default)]
pub struct Listen {
    pub service: RemoteServiceConfig,
    /// With a server certificate: clients must present one signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Server TLS from "server cert"/"server key"; with a "ca cert", clients must
/// present a certificate signed by it.
fn tls_config(listen: &Listen) -> Result<Option<ServerTlsConfig>, DaemonError> {
    let service = &listen.service;
    let (Some(cert), Some(key)) = (&service.server_cert, &service.server_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read_tls_file(cert)?, read_tls_file(key)?);
    let mut tls = ServerTlsConfig::new()
        .identity(identity)
        .timeout(listen.service.connections.handshake_timeout);
    if let Some(ca) = &listen.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_tls_file(ca)?));
    }
    Ok(Some(tls))
}

/// A reflection service listing the given services. All descriptors are
/// registered whichever are listed: just_serve.proto imports the REAPI's.
fn reflection(served: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Each version lists both reflection services, so each describes both.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in served {
        builder = builder.with_service_name(*name);
    }
    builder
}

fn write_state_file(what: &'static str, path: &Path, content: &str) -> Result<(), DaemonError> {
    let err = |source| DaemonError::StateFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    write_atomic(dir, path, content.as_bytes(), 0o644).map_err(err)
}

/// The associated endpoint of a serve daemon (its own one for `execute`).
fn ctx_endpoint(services: &Services) -> crate::config::Associated<'_> {
    match services {
        Services::Serve(ctx) => ctx.config.associated_endpoint(),
        Services::Execute(_) => crate::config::Associated::Own,
    }
}

/// Starts the serve daemon as configured in the context.
pub async fn start(ctx: Arc<ServeContext>) -> Result<RunningServer, DaemonError> {
    let listen = Listen {
        service: ctx.config.remote_service.clone(),
        client_ca: ctx.config.authentication.ca_cert.clone(),
    };
    let mut server = start_services(&listen, Services::Serve(ctx.clone())).await?;
    if let Some(gc) = &ctx.config.gc {
        server.collect_garbage(
            ctx.gc.clone(),
            ctx.build_root.clone(),
            gc.clone(),
            ctx.gc_stats.clone(),
        );
    }
    if let Some(metrics) = &ctx.config.metrics {
        if let Err(e) = server.serve_metrics(metrics, None).await {
            let _ = server.shutdown().await;
            return Err(e);
        }
    }
    Ok(server)
}

/// Binds the interface and port and starts serving in the background.
pub async fn start_services(
    listen: &Listen,
    services: Services,
) -> Result<RunningServer, DaemonError> {
    // The metrics' start time is the daemon's.
    crate::metrics::global();
    let service = listen.service.clone();
    let listener = tokio::net::TcpListener::bind((service.interface.as_str(), service.port))
        .await
        .map_err(|source| DaemonError::Bind {
            interface: service.interface.clone(),
            port: service.port,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        interface: service.interface.clone(),
        port: service.port,
        source,
    })?;

    // Large flow-control windows: blob uploads otherwise stall on loopback-fast links.
    let policy = &service.connections;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(policy.keepalive_interval))
        .http2_keepalive_timeout(Some(policy.keepalive_timeout))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .trace_fn(|request| {
            let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
            tracing::info_span!(
                "rpc",
                id,
                method = %request.uri().path(),
                subject = tracing::field::Empty
            )
        })
        .layer(crate::metrics::layer::MetricsLayer)
        .layer(crate::connections::activity_layer())
        .layer(crate::gc_layer::layer(services.gc_locks()))
        .layer(crate::status_layer::layer());
    let tls = tls_config(listen)?;
    let uses_tls = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(DaemonError::Tls)?;
    }

    let limit = service.max_message_size;
    let served = services.names();
    let reflection_error =
        |e: tonic_reflection::server::Error| DaemonError::Reflection(e.to_string());
    let reflection_v1 = reflection(&served).build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection(&served)
        .build_v1alpha()
        .map_err(reflection_error)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    if let Services::Serve(ctx) = &services {
        health
            .set_serving::<SourceTreeServer<SourceTreeService>>()
            .await;
        health.set_serving::<TargetServer<TargetService>>().await;
        health
            .set_serving::<ConfigurationServer<ConfigurationService>>()
            .await;
        router = router
            .add_service(
                SourceTreeServer::new(SourceTreeService::new(ctx.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                TargetServer::new(TargetService::new(ctx.clone())).max_decoding_message_size(limit),
            )
            .add_service(
                ConfigurationServer::new(ConfigurationService::new(ctx.clone()))
                    .max_decoding_message_size(limit),
            );
        let assets = Arc::new(AssetService::new(ctx));
        router = router
            .add_service(FetchServer::from_arc(assets.clone()).max_decoding_message_size(limit))
            .add_service(PushServer::from_arc(assets).max_decoding_message_size(limit));
        for name in ASSET_SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
    }
    let mut background = Vec::new();
    let reachable = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (role, scrape) = match &services {
        Services::Serve(ctx) => (
            if ctx.endpoint.is_some() {
                "serve, its own endpoint"
            } else {
                "serve"
            },
            crate::metrics::Scrape::new(
                Some(ctx.target_stats.clone()),
                Some(ctx.gc_stats.clone()),
                Some(ctx.build_root.clone()),
            ),
        ),
        Services::Execute(endpoint) => (
            "execute",
            crate::metrics::Scrape::new(None, None, Some(endpoint.root.clone())),
        ),
    };
    router = router.add_service(StatusServer::new(crate::status::StatusService {
        role,
        scrape: scrape.clone(),
        reachable: reachable.clone(),
    }));
    if let (Services::Serve(ctx), crate::config::Associated::External { address, .. }) =
        (&services, ctx_endpoint(&services))
    {
        let interval = ctx
            .config
            .execution_endpoint
            .as_ref()
            .and_then(|e| e.health_interval)
            .unwrap_or(crate::config::DEFAULT_HEALTH_INTERVAL);
        background.push(crate::health::watch_endpoint(
            health.clone(),
            ctx.sources.remote.clone(),
            [
                <SourceTreeServer<SourceTreeService> as NamedService>::NAME,
                <TargetServer<TargetService> as NamedService>::NAME,
                <ConfigurationServer<ConfigurationService> as NamedService>::NAME,
            ]
            .into_iter()
            .chain(ASSET_SERVICES)
            .collect(),
            address.to_string(),
            interval,
            reachable,
        ));
    }
    if let Some(endpoint) = services.endpoint() {
        for name in crate::execute::SERVICE_NAMES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        router = crate::execute::add_services(router, endpoint.clone(), limit);
    }

    let info = ServerInfo {
        interface: service.interface.clone(),
        pid: std::process::id(),
        port: addr.port(),
    };
    let mut state_files = Vec::new();
    if let Some(path) = &service.pid_file {
        write_state_file("pid file", path, &info.pid.to_string())?;
        state_files.push(path.clone());
    }

    let (shutdown, stop) = oneshot::channel::<()>();
    let incoming = crate::connections::incoming(listener, &service.connections);
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop.await;
    }));

    tracing::info!(
        tls = uses_tls,
        "{}: {}",
        services.started_message(),
        info.to_json()
    );
    if let Some(path) = &service.info_file {
        if let Err(e) = write_state_file("info file", path, &info.to_json()) {
            let _ = shutdown.send(());
            let _ = task.await;
            return Err(e);
        }
        state_files.push(path.clone());
    }
    Ok(RunningServer {
        addr,
        info,
        shutdown,
        task,
        state_files,
        background,
        metrics_addr: None,
        scrape,
    })
}
