//! `jserve execute`: only the remote-execution endpoint, the drop-in for `just execute`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{run_daemon, EXIT_CONFIG};
use crate::config::{Environment, GcConfig, LoggingConfig, RemoteServiceConfig};
use crate::daemon::{Listen, Services};
use crate::digest::{HashFunction, ObjectKind};
use crate::execute::runner::RunnerConfig;
use crate::execute::{EndpointConfig, LocalEndpoint};
use crate::storage::BuildRoot;

#[derive(Args, Debug)]
pub struct ExecuteArgs {
    /// Root of the CAS, action cache and working directories [default: ~/.cache/jserve].
    #[arg(long = "local-build-root", value_name = "PATH")]
    local_build_root: Option<PathBuf>,
    /// Interface to listen on.
    #[arg(short = 'i', long, default_value = "127.0.0.1")]
    interface: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(short = 'p', long, default_value_t = 0)]
    port: u16,
    /// Write {"interface":…,"pid":…,"port":…} here once serving.
    #[arg(long = "info-file", value_name = "PATH")]
    info_file: Option<PathBuf>,
    /// Write the pid here.
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Serve TLS with this certificate (needs --tls-server-key).
    #[arg(
        long = "tls-server-cert",
        value_name = "PATH",
        requires = "tls_server_key"
    )]
    tls_server_cert: Option<PathBuf>,
    /// Key of the TLS server certificate.
    #[arg(
        long = "tls-server-key",
        value_name = "PATH",
        requires = "tls_server_cert"
    )]
    tls_server_key: Option<PathBuf>,
    /// With TLS: only serve clients presenting a certificate signed by this CA.
    #[arg(long = "tls-ca-cert", value_name = "PATH")]
    tls_ca_cert: Option<PathBuf>,
    /// Compatible mode: plain SHA-256 and Directory messages instead of git ids and trees.
    #[arg(long)]
    compatible: bool,
    /// Serve only this instance name and refuse requests for others [default: accept any].
    #[arg(long = "instance-name")]
    instance_name: Option<String>,
    /// Actions running at once [default: 8 per core, at least 64].
    #[arg(short = 'J', long = "jobs")]
    jobs: Option<usize>,
    /// JSON list prepended to every action's command line.
    #[arg(
        short = 'L',
        long = "local-launcher",
        value_name = "JSON",
        default_value = r#"["env","--"]"#
    )]
    local_launcher: String,
    /// Time limit in seconds for actions that set none.
    #[arg(long = "action-timeout", default_value_t = 300.0)]
    action_timeout: f64,
    /// The largest request message accepted, in bytes.
    #[arg(long = "max-message-size", default_value_t = crate::config::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Seconds a graceful stop waits for running calls (a second signal stops at once).
    #[arg(long = "stop-timeout", default_value_t = 30.0)]
    stop_timeout: f64,
    /// Also log to this file (repeatable).
    #[arg(short = 'f', long = "log-file", value_name = "PATH")]
    log_files: Vec<PathBuf>,
    /// Log level: 0 errors, 1 warnings, 2 info, 3 progress (default), up to 6 trace.
    #[arg(long = "log-limit")]
    log_limit: Option<u8>,
    /// Lower limit for the log on stderr.
    #[arg(long = "restrict-stderr-log-limit")]
    restrict_stderr_log_limit: Option<u8>,
    /// No colours in the log.
    #[arg(long = "plain-log")]
    plain_log: bool,
    /// Append to log files instead of replacing them.
    #[arg(long = "log-append")]
    log_append: bool,
    /// Log lines as text (the default) or as one JSON object each (`json`).
    #[arg(long = "log-format", value_name = "FORMAT", default_value = "text")]
    log_format: crate::config::LogFormat,
    /// Keep the build root's stores below this many bytes, collecting the
    /// least recently used in the background [default: no bound].
    #[arg(long = "gc-max-bytes", value_name = "BYTES")]
    gc_max_bytes: Option<u64>,
    /// With --gc-max-bytes: seconds between measurements of the build root.
    #[arg(long = "gc-interval", value_name = "SECONDS", default_value_t = 60.0)]
    gc_interval: f64,
    /// With --gc-max-bytes: what was used this many seconds ago or later is
    /// never removed.
    #[arg(long = "gc-min-age", value_name = "SECONDS", default_value_t = 60.0)]
    gc_min_age: f64,
    /// Serve Prometheus metrics over HTTP at this port (`GET /metrics`; 0: any free port).
    #[arg(long = "metrics-port", value_name = "PORT")]
    metrics_port: Option<u16>,
    /// The interface of the metrics port.
    #[arg(long = "metrics-interface", default_value = "127.0.0.1")]
    metrics_interface: String,
    /// Accepted for compatibility with `just execute`; jserve keeps a fixed number of finished operations.
    #[arg(long = "log-operations-threshold", hide = true)]
    log_operations_threshold: Option<u32>,
}

fn launcher(json: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = serde_json::from_str(json)
        .map_err(|e| format!("--local-launcher must be a JSON list of strings: {e}"))?;
    if list.is_empty() {
        return Err("--local-launcher must name at least the launcher program".into());
    }
    Ok(list)
}

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    }
}

pub fn run(args: ExecuteArgs) -> ExitCode {
    let env = Environment::current();
    let launcher = match launcher(&args.local_launcher) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("jserve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !(args.stop_timeout >= 0.0 && args.stop_timeout <= 1e9) {
        eprintln!("jserve: --stop-timeout must be zero or more seconds");
        return ExitCode::from(EXIT_CONFIG);
    }
    if !(args.action_timeout > 0.0 && args.action_timeout.is_finite()) {
        eprintln!("jserve: --action-timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_CONFIG);
    }
    if !(args.gc_interval > 0.0 && args.gc_interval <= 1e9) {
        eprintln!("jserve: --gc-interval must be a positive number of seconds");
        return ExitCode::from(EXIT_CONFIG);
    }
    if !(args.gc_min_age >= 0.0 && args.gc_min_age <= 1e9) {
        eprintln!("jserve: --gc-min-age must be zero or more seconds");
        return ExitCode::from(EXIT_CONFIG);
    }
    if args.gc_max_bytes == Some(0) {
        eprintln!("jserve: --gc-max-bytes must be more than zero");
        return ExitCode::from(EXIT_CONFIG);
    }
    let gc = args.gc_max_bytes.map(|max_bytes| GcConfig {
        max_bytes,
        interval: Duration::from_secs_f64(args.gc_interval),
        min_age: Duration::from_secs_f64(args.gc_min_age),
    });
    let Some(root) = args
        .local_build_root
        .map(absolute)
        .or_else(|| env.home.as_ref().map(|h| h.join(".cache").join("jserve")))
    else {
        eprintln!("jserve: no --local-build-root given and HOME is not set");
        return ExitCode::from(EXIT_CONFIG);
    };
    let logging = LoggingConfig {
        files: args.log_files.into_iter().map(absolute).collect(),
        limit: args.log_limit,
        restrict_stderr_limit: args.restrict_stderr_log_limit,
        plain: args.plain_log,
        append: args.log_append,
        format: args.log_format,
    };
    let jobs = args
        .jobs
        .unwrap_or(crate::execute::runner::default_local_jobs(env.cores))
        .max(1);
    let listen = Listen {
        service: RemoteServiceConfig {
            interface: args.interface,
            port: args.port,
            pid_file: args.pid_file.map(absolute),
            info_file: args.info_file.map(absolute),
            server_cert: args.tls_server_cert,
            server_key: args.tls_server_key,
            max_message_size: args.max_message_size,
            connections: Default::default(),
        },
        client_ca: args.tls_ca_cert,
    };
    let hash = if args.compatible {
        HashFunction::Sha256
    } else {
        HashFunction::GitSha1
    };
    let config = EndpointConfig {
        hash,
        instance_name: args.instance_name,
        runner: RunnerConfig {
            launcher,
            default_timeout: Duration::from_secs_f64(args.action_timeout),
            jobs,
        },
    };
    let stop_timeout = Duration::from_secs_f64(args.stop_timeout);
    let metrics = args.metrics_port.map(|port| crate::config::MetricsConfig {
        interface: args.metrics_interface,
        port,
    });
    run_daemon(
        &logging,
        &[],
        env.cores.max(1),
        stop_timeout,
        move || async move {
            let build_root = BuildRoot::open(&root).map_err(|e| {
                anyhow::anyhow!("cannot prepare local build root {}: {e}", root.display())
            })?;
            let endpoint = LocalEndpoint::new(&build_root, config);
            // As `just execute` does: the empty blob is always there.
            if let Err(e) = endpoint.cas.put_bytes(ObjectKind::File, b"") {
                tracing::warn!("cannot store the empty blob: {e}");
            }
            let locks = endpoint.gc.clone();
            let mut server =
                crate::daemon::start_services(&listen, Services::Execute(endpoint)).await?;
            let gc_stats = std::sync::Arc::new(crate::storage::gc::collector::GcStats::default());
            if let Some(metrics) = metrics {
                if let Err(e) = server.serve_metrics(&metrics, Some(gc_stats.clone())).await {
                    let _ = server.shutdown().await;
                    return Err(e.into());
                }
            }
            if let Some(gc) = gc {
                server.collect_garbage(locks, build_root, gc, gc_stats);
            }
            Ok(server)
        },
    )
}
