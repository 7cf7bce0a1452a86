//! Reading the configuration's JSON into [`ServeConfig`], one function per
//! section; unknown keys become warnings.

use super::values::*;
use super::*;

impl ServeConfig {
    /// Checks an already parsed JSON value.
    pub fn from_value(value: &Value, env: &Environment) -> Result<ServeConfig, ConfigError> {
        let mut warnings = Vec::new();
        let mut top = Obj::new(value, KeyPath::default())?;

        let local_build_root = match top.get("local build root") {
            Some((k, v)) => location(v, &k, env)?,
            None => env
                .home
                .as_ref()
                .map(|h| h.join(".cache").join("jserve"))
                .ok_or_else(|| ConfigError::Invalid {
                    key: KeyPath::default().child("local build root"),
                    message: "not set, and HOME is not set to derive the default".into(),
                })?,
        };
        if !local_build_root.is_absolute() {
            return Err(invalid(
                &KeyPath::default().child("local build root"),
                "must be an absolute path",
            ));
        }

        let mut repositories = Vec::new();
        if let Some((k, v)) = top.get("repositories") {
            for (i, item) in list(v, &k)?.iter().enumerate() {
                let path = location(item, &k.child(format!("[{i}]")), env)?;
                if !path.is_dir() {
                    warnings.push(format!(
                        "repository {} does not exist or is not a directory",
                        path.display()
                    ));
                }
                repositories.push(path);
            }
        }

        let mut logging = LoggingConfig::default();
        if let Some((k, v)) = top.get("logging") {
            logging = logging_section(Obj::new(v, k)?, env, &mut warnings)?;
        }

        let mut authentication = AuthConfig::default();
        if let Some((k, v)) = top.get("authentication") {
            authentication = authentication_section(Obj::new(v, k)?, env, &mut warnings)?;
        }

        let mut remote_service = RemoteServiceConfig::default();
        if let Some((k, v)) = top.get("remote service") {
            remote_service = remote_service_section(Obj::new(v, k)?, env, &mut warnings)?;
        }

        let mut execution_endpoint = None;
        let mut retry = RetryConfig::default();
        if let Some((k, v)) = top.get("execution endpoint") {
            execution_endpoint = Some(execution_endpoint_section(Obj::new(v, k)?, &mut warnings)?);
        }
        // The retry keys sit at top level; they only mean something with an endpoint.
        for key in [
            "max-attempts",
            "initial-backoff-seconds",
            "max-backoff-seconds",
        ] {
            let Some((k, v)) = top.get(key) else { continue };
            if execution_endpoint.is_none() {
                warnings.push(format!(
                    "config key {k} is ignored without an \"execution endpoint\""
                ));
                continue;
            }
            match key {
                "max-attempts" => retry.max_attempts = integer(v, &k, 1, u32::MAX as i64)? as u32,
                "initial-backoff-seconds" => retry.initial_backoff = seconds(v, &k, true)?,
                _ => retry.max_backoff = seconds(v, &k, true)?,
            }
        }

        let jobs = match top.get("jobs") {
            Some((k, v)) => integer(v, &k, 1, 1 << 20)? as usize,
            None => env.cores.max(1),
        };
        let stop_timeout = match top.get("stop timeout") {
            Some((k, v)) => seconds(v, &k, true)?,
            None => DEFAULT_STOP_TIMEOUT,
        };

        let mut build = BuildConfig {
            build_jobs: jobs,
            local_jobs: crate::execute::runner::default_local_jobs(env.cores),
            action_timeout: Duration::from_secs(300),
            target_cache_write_strategy: TargetCacheWriteStrategy::Sync,
            local_launcher: vec!["env".to_string(), "--".to_string()],
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        };
        if let Some((k, v)) = top.get("build") {
            build = build_section(Obj::new(v, k)?, build, &mut warnings)?;
        }
        let mut archive_limits = ArchiveLimits::default();
        if let Some((k, v)) = top.get("archive limits") {
            archive_limits = archive_limits_section(Obj::new(v, k)?, &mut warnings)?;
        }
        let mut gc = None;
        if let Some((k, v)) = top.get("gc") {
            gc = Some(gc_section(Obj::new(v, k)?, &mut warnings)?);
        }
        let mut metrics = None;
        if let Some((k, v)) = top.get("metrics") {
            metrics = Some(metrics_section(Obj::new(v, k)?, &mut warnings)?);
        }
        top.finish(&mut warnings);

        Ok(ServeConfig {
            local_build_root,
            repositories,
            logging,
            authentication,
            remote_service,
            execution_endpoint,
            retry,
            jobs,
            build,
            archive_limits,
            stop_timeout,
            gc,
            metrics,
            unpack_helper: None,
            warnings,
        })
    }
}

/// The `"metrics"` object (jserve's own): where Prometheus scrapes.
fn metrics_section(
    mut o: Obj<'_>,
    warnings: &mut Vec<String>,
) -> Result<MetricsConfig, ConfigError> {
    let mut metrics = MetricsConfig::default();
    if let Some((k, v)) = o.get("interface") {
        metrics.interface = string(v, &k)?;
    }
    if let Some((k, v)) = o.get("port") {
        metrics.port = integer(v, &k, 0, 65535)? as u16;
    }
    o.finish(warnings);
    Ok(metrics)
}

/// The `"gc"` object (jserve's own): the size bound of the build root.
fn gc_section(mut o: Obj<'_>, warnings: &mut Vec<String>) -> Result<GcConfig, ConfigError> {
    let max_bytes = match o.get("max bytes") {
        Some((k, v)) => integer(v, &k, 1, i64::MAX)? as u64,
        None => return Err(invalid(&o.path.child("max bytes"), "must be given")),
    };
    let interval = match o.get("interval seconds") {
        Some((k, v)) => seconds(v, &k, false)?,
        None => DEFAULT_GC_INTERVAL,
    };
    let min_age = match o.get("min age seconds") {
        Some((k, v)) => seconds(v, &k, true)?,
        None => DEFAULT_GC_MIN_AGE,
    };
    o.finish(warnings);
    Ok(GcConfig {
        max_bytes,
        interval,
        min_age,
    })
}

/// The `"logging"` object.
fn logging_section(
    mut o: Obj<'_>,
    env: &Environment,
    warnings: &mut Vec<String>,
) -> Result<LoggingConfig, ConfigError> {
    let mut logging = LoggingConfig::default();
    if let Some((k, v)) = o.get("files") {
        for (i, item) in list(v, &k)?.iter().enumerate() {
            logging
                .files
                .push(location(item, &k.child(format!("[{i}]")), env)?);
        }
    }
    if let Some((k, v)) = o.get("limit") {
        logging.limit = Some(log_level(v, &k)?);
    }
    if let Some((k, v)) = o.get("restrict stderr limit") {
        logging.restrict_stderr_limit = Some(log_level(v, &k)?);
    }
    if let Some((k, v)) = o.get("plain") {
        logging.plain = flag(v, &k)?;
    }
    if let Some((k, v)) = o.get("append") {
        logging.append = flag(v, &k)?;
    }
    if let Some((k, v)) = o.get("format") {
        logging.format = string(v, &k)?
            .parse()
            .map_err(|e: String| invalid(&k, &e))?;
    }
    o.finish(warnings);
    Ok(logging)
}

/// The `"authentication"` object.
fn authentication_section(
    mut o: Obj<'_>,
    env: &Environment,
    warnings: &mut Vec<String>,
) -> Result<AuthConfig, ConfigError> {
    let authentication = AuthConfig {
        ca_cert: o.location("ca cert", env)?,
        client_cert: o.location("client cert", env)?,
        client_key: o.location("client key", env)?,
    };
    if authentication.client_cert.is_some() != authentication.client_key.is_some() {
        return Err(invalid(
            &o.path,
            "\"client cert\" and \"client key\" must be given together",
        ));
    }
    o.finish(warnings);
    Ok(authentication)
}

/// The `"remote service"` object.
fn remote_service_section(
    mut o: Obj<'_>,
    env: &Environment,
    warnings: &mut Vec<String>,
) -> Result<RemoteServiceConfig, ConfigError> {
    let mut remote_service = RemoteServiceConfig::default();
    if let Some((k, v)) = o.get("interface") {
        remote_service.interface = string(v, &k)?;
    }
    if let Some((k, v)) = o.get("port") {
        remote_service.port = integer(v, &k, 0, 65535)? as u16;
    }
    remote_service.pid_file = o.location("pid file", env)?;
    remote_service.info_file = o.location("info file", env)?;
    remote_service.server_cert = o.location("server cert", env)?;
    remote_service.server_key = o.location("server key", env)?;
    if let Some((k, v)) = o.get("max message size") {
        remote_service.max_message_size = integer(v, &k, 1 << 16, 1 << 31)? as usize;
    }
    let policy = &mut remote_service.connections;
    if let Some((k, v)) = o.get("max connections") {
        policy.max_connections = Some(integer(v, &k, 1, 1 << 20)? as usize);
    }
    for (key, slot) in [
        ("handshake timeout", &mut policy.handshake_timeout),
        ("idle timeout", &mut policy.idle_timeout),
        ("keepalive interval", &mut policy.keepalive_interval),
        ("keepalive timeout", &mut policy.keepalive_timeout),
    ] {
        if let Some((k, v)) = o.get(key) {
            *slot = seconds(v, &k, false)?;
        }
    }
    if remote_service.server_cert.is_some() != remote_service.server_key.is_some() {
        return Err(invalid(
            &o.path,
            "\"server cert\" and \"server key\" must be given together",
        ));
    }
    o.finish(warnings);
    Ok(remote_service)
}

/// The `"execution endpoint"` object.
fn execution_endpoint_section(
    mut o: Obj<'_>,
    warnings: &mut Vec<String>,
) -> Result<ExecutionEndpointConfig, ConfigError> {
    let mut e = ExecutionEndpointConfig::default();
    if let Some((k, v)) = o.get("address") {
        e.address = Some(address(v, &k)?);
    }
    if let Some((k, v)) = o.get("instance name") {
        e.instance_name = string(v, &k)?;
    }
    if let Some((k, v)) = o.get("client address") {
        e.client_address = Some(address(v, &k)?);
    }
    if let Some((k, v)) = o.get("compatible") {
        e.compatible = flag(v, &k)?;
    }
    if let Some((k, v)) = o.get("health interval") {
        e.health_interval = Some(seconds(v, &k, false)?);
    }
    if let Some((k, v)) = o.get("shared cache") {
        e.shared_cache = flag(v, &k)?;
        if e.shared_cache && e.address.is_none() {
            return Err(invalid(
                &k,
                "a shared cache needs an external endpoint: set \"address\" too",
            ));
        }
    }
    o.finish(warnings);
    Ok(e)
}

/// The `"build"` object, over the defaults in `build`.
fn build_section(
    mut o: Obj<'_>,
    mut build: BuildConfig,
    warnings: &mut Vec<String>,
) -> Result<BuildConfig, ConfigError> {
    if let Some((k, v)) = o.get("build jobs") {
        build.build_jobs = integer(v, &k, 1, 1 << 20)? as usize;
    }
    if let Some((k, v)) = o.get("local jobs") {
        build.local_jobs = integer(v, &k, 1, 1 << 20)? as usize;
    }
    if let Some((k, v)) = o.get("progress interval") {
        build.progress_interval = seconds(v, &k, false)?;
    }
    if let Some((k, v)) = o.get("action timeout") {
        build.action_timeout = seconds(v, &k, false)?;
    }
    if let Some((k, v)) = o.get("target-cache write strategy") {
        build.target_cache_write_strategy = match string(v, &k)?.as_str() {
            "disable" => TargetCacheWriteStrategy::Disable,
            "sync" => TargetCacheWriteStrategy::Sync,
            "split" => TargetCacheWriteStrategy::Split,
            other => {
                return Err(invalid(
                    &k,
                    format!(
                        "unknown value {other:?} (expected \"disable\", \"sync\" or \"split\")"
                    ),
                ))
            }
        };
    }
    if let Some((k, v)) = o.get("local launcher") {
        let items = list(v, &k)?;
        if items.is_empty() {
            return Err(invalid(&k, "must name at least the launcher program"));
        }
        build.local_launcher = items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &k.child(format!("[{i}]"))))
            .collect::<Result<_, _>>()?;
    }
    o.finish(warnings);
    Ok(build)
}

/// The `"archive limits"` object.
fn archive_limits_section(
    mut o: Obj<'_>,
    warnings: &mut Vec<String>,
) -> Result<ArchiveLimits, ConfigError> {
    let mut archive_limits = ArchiveLimits::default();
    if let Some((k, v)) = o.get("max bytes") {
        archive_limits.max_bytes = integer(v, &k, 1, i64::MAX)? as u64;
    }
    if let Some((k, v)) = o.get("max entries") {
        archive_limits.max_entries = integer(v, &k, 1, i64::MAX)? as u64;
    }
    if let Some((k, v)) = o.get("max memory") {
        archive_limits.max_memory = integer(v, &k, 64 << 20, i64::MAX)? as u64;
    }
    if let Some((k, v)) = o.get("compression") {
        archive_limits.compression = integer(v, &k, 0, 9)? as u32;
    }
    o.finish(warnings);
    Ok(archive_limits)
}
