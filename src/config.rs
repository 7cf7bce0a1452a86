//! The serve configuration file: the JSON format of just-serve-config(5),
//! read into typed values. Every error names the key path it is about.

use serde_json::{Map, Value};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::digest::HashFunction;

/// A configuration error: the offending key path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config key {key}: {message}")]
    Invalid { key: KeyPath, message: String },
}

/// A path of keys into the config, printed like `"remote service"."port"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<String>);

impl KeyPath {
    fn child(&self, key: impl Into<String>) -> KeyPath {
        let mut k = self.0.clone();
        k.push(key.into());
        KeyPath(k)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(top level)");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|p| {
                if p.starts_with('[') {
                    p.clone()
                } else {
                    format!("{p:?}")
                }
            })
            .collect();
        write!(f, "{}", parts.join(".").replace(".[", "["))
    }
}

/// What `"target-cache write strategy"` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetCacheWriteStrategy {
    /// Write no new target-cache entries.
    Disable,
    /// Upload artifacts, then write entries (the default).
    Sync,
    /// As `Sync`, uploading large blobs in parts where the endpoint supports it.
    Split,
}

/// A `HOST:PORT` address, kept in the canonical form clients compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Parses `HOST:PORT` or `[IPv6]:PORT`.
    pub fn parse(text: &str) -> Result<Address, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{text:?} is not of the form [HOST]:PORT"))?;
            (h, p)
        } else {
            text.split_once(':')
                .ok_or_else(|| format!("{text:?} is not of the form HOST:PORT"))?
        };
        if host.is_empty() {
            return Err(format!("{text:?} has an empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?} has no valid port (0 to 65535)"))?;
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoggingConfig {
    pub files: Vec<PathBuf>,
    /// Log level 0 (errors) to 6 (trace), as justbuild numbers them.
    pub limit: Option<u8>,
    pub restrict_stderr_limit: Option<u8>,
    pub plain: bool,
    pub append: bool,
}

/// TLS material for jserve's client connections (and the CA for its server).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RemoteServiceConfig {
    pub interface: String,
    /// 0 picks a free port.
    pub port: u16,
    pub pid_file: Option<PathBuf>,
    pub info_file: Option<PathBuf>,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    /// The largest request message accepted, in bytes (jserve's own key
    /// `"max message size"`); larger ones get RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// The connection limit and timeouts (jserve's own keys).
    pub connections: crate::connections::ConnectionPolicy,
}

/// gRPC's customary limit on a received message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

impl Default for RemoteServiceConfig {
    fn default() -> Self {
        RemoteServiceConfig {
            interface: "127.0.0.1".to_string(),
            port: 0,
            pid_file: None,
            info_file: None,
            server_cert: None,
            server_key: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connections: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionEndpointConfig {
    /// The remote-execution endpoint; `None` makes jserve its own endpoint.
    pub address: Option<Address>,
    pub instance_name: String,
    /// What clients use to reach the same endpoint, if it differs.
    pub client_address: Option<Address>,
    pub compatible: bool,
}

/// Retry policy for calls to the execution endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 1,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BuildConfig {
    /// Actions one build keeps under way at once.
    pub build_jobs: usize,
    /// As its own endpoint: actions running at once, over all builds and
    /// Execute calls (jserve only: `just serve` has no limit).
    pub local_jobs: usize,
    pub action_timeout: Duration,
    pub target_cache_write_strategy: TargetCacheWriteStrategy,
    pub local_launcher: Vec<String>,
}

/// How far an archive may expand when unpacked (jserve's own config key
/// `"archive limits"`; archives past it fail with UNPACK_ERROR).
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
    /// Address space of the process that unpacks one archive.
    pub max_memory: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_memory: 2 << 30,
        }
    }
}

/// How long a graceful stop waits for running calls by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which endpoint is associated with serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Associated<'a> {
    /// jserve's own, in-process (no address configured).
    Own,
    /// An external REAPI server.
    External {
        address: &'a Address,
        instance_name: &'a str,
    },
}

/// The whole serve configuration, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    pub local_build_root: PathBuf,
    pub repositories: Vec<PathBuf>,
    pub logging: LoggingConfig,
    pub authentication: AuthConfig,
    pub remote_service: RemoteServiceConfig,
    /// Present when the config has an `"execution endpoint"` object.
    pub execution_endpoint: Option<ExecutionEndpointConfig>,
    pub retry: RetryConfig,
    pub jobs: usize,
    pub build: BuildConfig,
    pub archive_limits: ArchiveLimits,
    /// How long a graceful stop waits for running calls (jserve's own key
    /// `"stop timeout"`, seconds).
    pub stop_timeout: Duration,
    /// The jserve binary that unpacks archives in a child process (not a
    /// file key: the command line sets it to itself). None: in this process.
    pub unpack_helper: Option<PathBuf>,
    /// Things worth a warning at start (unknown keys, missing repositories).
    pub warnings: Vec<String>,
}

impl ServeConfig {
    /// How ServeArchiveTree unpacks: the archive limits, in a child process
    /// when a helper binary is set.
    pub fn unpacking(&self) -> crate::archive::Unpacking {
        let limits = &self.archive_limits;
        crate::archive::Unpacking {
            limits: crate::archive::Limits {
                max_total_bytes: limits.max_bytes,
                max_entries: limits.max_entries,
            },
            isolation: self
                .unpack_helper
                .clone()
                .map(|program| crate::archive::Isolation {
                    program,
                    max_memory: limits.max_memory,
                }),
        }
    }
}

/// Where the environment-dependent defaults come from (testable without touching the process).
#[derive(Clone, Debug)]
pub struct Environment {
    pub home: Option<PathBuf>,
    pub cores: usize,
}

impl Environment {
    pub fn current() -> Environment {
        Environment {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl ServeConfig {
    /// Hash mode the configuration asks for.
    pub fn hash_function(&self) -> HashFunction {
        match &self.execution_endpoint {
            Some(e) if e.compatible => HashFunction::Sha256,
            _ => HashFunction::GitSha1,
        }
    }

    /// True when jserve serves the REAPI itself (no endpoint address configured).
    pub fn is_own_endpoint(&self) -> bool {
        matches!(self.associated_endpoint(), Associated::Own)
    }

    /// The endpoint ServeTarget builds on and SourceTree syncs to.
    pub fn associated_endpoint(&self) -> Associated<'_> {
        match &self.execution_endpoint {
            Some(ExecutionEndpointConfig {
                address: Some(address),
                instance_name,
                ..
            }) => Associated::External {
                address,
                instance_name,
            },
            _ => Associated::Own,
        }
    }

    /// The configuration with every default, as with no config file at all.
    pub fn defaults(env: &Environment) -> Result<ServeConfig, ConfigError> {
        ServeConfig::from_value(&Value::Object(Map::new()), env)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path, env: &Environment) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        ServeConfig::from_value(&value, env)
    }

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
        };
        if let Some((k, v)) = top.get("build") {
            build = build_section(Obj::new(v, k)?, build, &mut warnings)?;
        }
        let mut archive_limits = ArchiveLimits::default();
        if let Some((k, v)) = top.get("archive limits") {
            archive_limits = archive_limits_section(Obj::new(v, k)?, &mut warnings)?;
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
            unpack_helper: None,
            warnings,
        })
    }
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
    o.finish(warnings);
    Ok(archive_limits)
}

fn invalid(key: &KeyPath, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.clone(),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a flag",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(v: &Value, key: &KeyPath, expected: &str) -> ConfigError {
    invalid(key, format!("expected {expected}, found {}", type_name(v)))
}

/// A JSON object being read: remembers which keys were used, to warn about the rest.
struct Obj<'a> {
    path: KeyPath,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: KeyPath) -> Result<Obj<'a>, ConfigError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path,
                map,
                used: Vec::new(),
            }),
            _ => Err(wrong_type(v, &path, "an object")),
        }
    }

    /// The value under `key`; `null` counts as absent, as in justbuild.
    fn get(&mut self, key: &'static str) -> Option<(KeyPath, &'a Value)> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some((self.path.child(key), v)),
        }
    }

    fn location(
        &mut self,
        key: &'static str,
        env: &Environment,
    ) -> Result<Option<PathBuf>, ConfigError> {
        self.get(key).map(|(k, v)| location(v, &k, env)).transpose()
    }

    fn finish(self, warnings: &mut Vec<String>) {
        for key in self.map.keys() {
            if !self.used.contains(&key.as_str()) {
                warnings.push(format!(
                    "unknown config key {} is ignored",
                    self.path.child(key.clone())
                ));
            }
        }
    }
}

fn list<'a>(v: &'a Value, key: &KeyPath) -> Result<&'a Vec<Value>, ConfigError> {
    v.as_array().ok_or_else(|| wrong_type(v, key, "a list"))
}

fn string(v: &Value, key: &KeyPath) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| wrong_type(v, key, "a string"))
}

fn flag(v: &Value, key: &KeyPath) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| wrong_type(v, key, "a flag"))
}

fn integer(v: &Value, key: &KeyPath, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    if n.fract() != 0.0 {
        return Err(invalid(key, format!("expected a whole number, found {v}")));
    }
    if n < min as f64 || n > max as f64 {
        return Err(invalid(
            key,
            format!("{v} is out of range ({min} to {max})"),
        ));
    }
    Ok(n as i64)
}

fn seconds(v: &Value, key: &KeyPath, zero_ok: bool) -> Result<Duration, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    if !n.is_finite() || n < 0.0 || (!zero_ok && n == 0.0) || n > 1e9 {
        let what = if zero_ok {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(invalid(key, format!("expected {what} seconds, found {v}")));
    }
    Ok(Duration::from_secs_f64(n))
}

fn log_level(v: &Value, key: &KeyPath) -> Result<u8, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    Ok(n.round().clamp(0.0, 6.0) as u8)
}

fn address(v: &Value, key: &KeyPath) -> Result<Address, ConfigError> {
    Address::parse(&string(v, key)?).map_err(|m| invalid(key, m))
}

/// Resolves a location object `{"root": "home"|"system", "path": P, "base"?: B}`.
fn location(v: &Value, key: &KeyPath, env: &Environment) -> Result<PathBuf, ConfigError> {
    let mut o = Obj::new(v, key.clone())?;
    let root =
        match o.get("root") {
            Some((k, v)) => match string(v, &k)?.as_str() {
                "home" => env
                    .home
                    .clone()
                    .ok_or_else(|| invalid(&k, "root \"home\" needs HOME to be set"))?,
                "system" => PathBuf::from("/"),
                "workspace" => return Err(invalid(
                    &k,
                    "root \"workspace\" has no meaning for a server (use \"home\" or \"system\")",
                )),
                other => {
                    return Err(invalid(
                        &k,
                        format!("unknown root {other:?} (expected \"home\" or \"system\")"),
                    ))
                }
            },
            None => return Err(invalid(&key.child("root"), "missing")),
        };
    let path = match o.get("path") {
        Some((k, v)) => string(v, &k)?,
        None => return Err(invalid(&key.child("path"), "missing")),
    };
    // "base" only matters for config files with relative paths inside; accepted for compatibility.
    if let Some((k, v)) = o.get("base") {
        string(v, &k)?;
    }
    let mut ignored = Vec::new();
    o.finish(&mut ignored);
    Ok(normalize(&root.join(path)))
}

/// Lexically removes `.` and `..` components.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Environment {
        Environment {
            home: Some(PathBuf::from("/home/u")),
            cores: 3,
        }
    }

    fn parse(v: Value) -> Result<ServeConfig, ConfigError> {
        ServeConfig::from_value(&v, &env())
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.local_build_root, PathBuf::from("/home/u/.cache/jserve"));
        assert_eq!(c.remote_service, RemoteServiceConfig::default());
        assert_eq!(c.remote_service.interface, "127.0.0.1");
        assert_eq!(c.jobs, 3);
        assert_eq!(c.build.build_jobs, 3);
        assert_eq!(c.build.action_timeout, Duration::from_secs(300));
        assert_eq!(c.build.local_launcher, vec!["env", "--"]);
        assert_eq!(
            c.build.target_cache_write_strategy,
            TargetCacheWriteStrategy::Sync
        );
        assert_eq!(c.retry, RetryConfig::default());
        assert!(c.execution_endpoint.is_none());
        assert!(c.is_own_endpoint());
        assert_eq!(c.hash_function(), HashFunction::GitSha1);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn every_key() {
        let c = parse(json!({
            "local build root": {"root": "system", "path": "var/jserve/../jserve-root"},
            "repositories": [{"root": "home", "path": "repos/a"}, {"root": "system", "path": "/srv/b", "base": "."}],
            "logging": {"files": [{"root": "home", "path": "log/serve"}], "limit": 4.6,
                        "restrict stderr limit": 9, "plain": true, "append": true},
            "authentication": {"ca cert": {"root": "system", "path": "etc/ca.crt"},
                               "client cert": {"root": "system", "path": "etc/c.crt"},
                               "client key": {"root": "system", "path": "etc/c.key"}},
            "remote service": {"interface": "0.0.0.0", "port": 9999,
                               "pid file": {"root": "system", "path": "run/j.pid"},
                               "info file": {"root": "home", "path": "info.json"},
                               "server cert": {"root": "system", "path": "etc/s.crt"},
                               "server key": {"root": "system", "path": "etc/s.key"}},
            "execution endpoint": {"address": "re.example:8980", "instance name": "main",
                                   "client address": "[::1]:8981", "compatible": true},
            "max-attempts": 10, "initial-backoff-seconds": 2, "max-backoff-seconds": 30.5,
            "jobs": 8,
            "build": {"build jobs": 64, "local jobs": 100, "action timeout": 12.5,
                      "target-cache write strategy": "split", "local launcher": ["nice", "env", "--"]},
            "archive limits": {"max bytes": 1000000, "max entries": 50, "max memory": 268435456}
        }))
        .unwrap();
        assert_eq!(c.local_build_root, PathBuf::from("/var/jserve-root"));
        assert_eq!(
            c.repositories,
            vec![PathBuf::from("/home/u/repos/a"), PathBuf::from("/srv/b")]
        );
        assert_eq!(c.logging.files, vec![PathBuf::from("/home/u/log/serve")]);
        assert_eq!(c.logging.limit, Some(5));
        assert_eq!(c.logging.restrict_stderr_limit, Some(6));
        assert!(c.logging.plain && c.logging.append);
        assert_eq!(c.authentication.ca_cert, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(
            c.authentication.client_key,
            Some(PathBuf::from("/etc/c.key"))
        );
        assert_eq!(c.remote_service.interface, "0.0.0.0");
        assert_eq!(c.remote_service.port, 9999);
        assert_eq!(c.remote_service.pid_file, Some(PathBuf::from("/run/j.pid")));
        assert_eq!(
            c.remote_service.info_file,
            Some(PathBuf::from("/home/u/info.json"))
        );
        assert_eq!(
            c.remote_service.server_cert,
            Some(PathBuf::from("/etc/s.crt"))
        );
        let e = c.execution_endpoint.clone().unwrap();
        assert_eq!(e.address.unwrap().to_string(), "re.example:8980");
        assert_eq!(e.client_address.unwrap().to_string(), "[::1]:8981");
        assert_eq!(e.instance_name, "main");
        assert!(!c.is_own_endpoint());
        assert_eq!(c.hash_function(), HashFunction::Sha256);
        assert_eq!(c.retry.max_attempts, 10);
        assert_eq!(c.retry.initial_backoff, Duration::from_secs(2));
        assert_eq!(c.retry.max_backoff, Duration::from_secs_f64(30.5));
        assert_eq!(c.jobs, 8);
        assert_eq!(c.build.build_jobs, 64);
        assert_eq!(c.build.local_jobs, 100);
        assert_eq!(c.build.action_timeout, Duration::from_secs_f64(12.5));
        assert_eq!(
            c.build.target_cache_write_strategy,
            TargetCacheWriteStrategy::Split
        );
        assert_eq!(c.build.local_launcher, vec!["nice", "env", "--"]);
        assert_eq!(
            c.archive_limits,
            ArchiveLimits {
                max_bytes: 1_000_000,
                max_entries: 50,
                max_memory: 256 << 20,
            }
        );
        // The missing repository directories are warned about.
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn compatible_without_address_is_own_compatible_endpoint() {
        let c = parse(json!({"execution endpoint": {"compatible": true}})).unwrap();
        assert!(c.is_own_endpoint());
        assert_eq!(c.hash_function(), HashFunction::Sha256);
    }

    #[test]
    fn build_jobs_default_to_jobs_and_null_means_default() {
        let c =
            parse(json!({"jobs": 5, "build": {"local launcher": null}, "logging": null})).unwrap();
        assert_eq!(c.build.build_jobs, 5);
        assert_eq!(c.build.local_launcher, vec!["env", "--"]);
    }

    #[test]
    fn unknown_keys_warn() {
        let c = parse(json!({"colour": 1, "build": {"speed": "fast"}})).unwrap();
        assert_eq!(c.warnings.len(), 2);
        assert!(c.warnings.iter().any(|w| w.contains("\"colour\"")));
        assert!(c.warnings.iter().any(|w| w.contains("\"build\".\"speed\"")));
    }

    #[test]
    fn retry_keys_without_endpoint_warn() {
        let c = parse(json!({"max-attempts": 3})).unwrap();
        assert_eq!(c.retry, RetryConfig::default());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn wrong_types_name_the_key() {
        let cases = [
            (json!([]), "(top level): expected an object"),
            (
                json!({"local build root": "x"}),
                "\"local build root\": expected an object",
            ),
            (
                json!({"local build root": {"root": "home"}}),
                "\"local build root\".\"path\": missing",
            ),
            (
                json!({"local build root": {"path": "x"}}),
                "\"local build root\".\"root\": missing",
            ),
            (
                json!({"local build root": {"root": "moon", "path": "x"}}),
                "unknown root \"moon\"",
            ),
            (
                json!({"local build root": {"root": "workspace", "path": "x"}}),
                "\"workspace\"",
            ),
            (
                json!({"repositories": {}}),
                "\"repositories\": expected a list",
            ),
            (
                json!({"repositories": [{"root": "home", "path": 3}]}),
                "\"repositories\"[0].\"path\": expected a string",
            ),
            (json!({"logging": []}), "\"logging\": expected an object"),
            (
                json!({"logging": {"files": "f"}}),
                "\"logging\".\"files\": expected a list",
            ),
            (
                json!({"logging": {"limit": "high"}}),
                "\"logging\".\"limit\": expected a number",
            ),
            (
                json!({"logging": {"restrict stderr limit": true}}),
                "\"restrict stderr limit\": expected a number",
            ),
            (
                json!({"logging": {"plain": 1}}),
                "\"logging\".\"plain\": expected a flag",
            ),
            (
                json!({"logging": {"append": "yes"}}),
                "\"logging\".\"append\": expected a flag",
            ),
            (
                json!({"authentication": {"ca cert": "x"}}),
                "\"authentication\".\"ca cert\": expected an object",
            ),
            (
                json!({"authentication": {"client cert": {"root": "system", "path": "c"}}}),
                "must be given together",
            ),
            (
                json!({"remote service": {"interface": 1}}),
                "\"remote service\".\"interface\": expected a string",
            ),
            (
                json!({"remote service": {"port": "80"}}),
                "\"remote service\".\"port\": expected a number",
            ),
            (
                json!({"remote service": {"port": 70000}}),
                "\"remote service\".\"port\": 70000 is out of range",
            ),
            (
                json!({"remote service": {"port": 1.5}}),
                "expected a whole number",
            ),
            (
                json!({"remote service": {"pid file": []}}),
                "\"pid file\": expected an object",
            ),
            (
                json!({"remote service": {"info file": 1}}),
                "\"info file\": expected an object",
            ),
            (
                json!({"remote service": {"server key": {"root": "system", "path": "k"}}}),
                "must be given together",
            ),
            (
                json!({"execution endpoint": {"address": "nocolon"}}),
                "\"execution endpoint\".\"address\": \"nocolon\" is not of the form",
            ),
            (
                json!({"execution endpoint": {"address": "h:99999"}}),
                "no valid port",
            ),
            (
                json!({"execution endpoint": {"client address": 5}}),
                "\"client address\": expected a string",
            ),
            (
                json!({"execution endpoint": {"instance name": []}}),
                "\"instance name\": expected a string",
            ),
            (
                json!({"execution endpoint": {"compatible": "true"}}),
                "\"compatible\": expected a flag",
            ),
            (
                json!({"execution endpoint": {}, "max-attempts": "3"}),
                "\"max-attempts\": expected a number",
            ),
            (
                json!({"execution endpoint": {}, "max-attempts": 0}),
                "\"max-attempts\": 0 is out of range",
            ),
            (
                json!({"execution endpoint": {}, "initial-backoff-seconds": -1}),
                "\"initial-backoff-seconds\": expected zero or more",
            ),
            (
                json!({"execution endpoint": {}, "max-backoff-seconds": {}}),
                "\"max-backoff-seconds\": expected a number",
            ),
            (json!({"jobs": 0}), "\"jobs\": 0 is out of range"),
            (json!({"jobs": "4"}), "\"jobs\": expected a number"),
            (json!({"build": 1}), "\"build\": expected an object"),
            (
                json!({"build": {"build jobs": -2}}),
                "\"build\".\"build jobs\": -2 is out of range",
            ),
            (
                json!({"build": {"action timeout": 0}}),
                "\"action timeout\": expected more than zero",
            ),
            (
                json!({"build": {"target-cache write strategy": "fast"}}),
                "unknown value \"fast\"",
            ),
            (
                json!({"build": {"local launcher": "env"}}),
                "\"local launcher\": expected a list",
            ),
            (
                json!({"build": {"local launcher": []}}),
                "must name at least",
            ),
            (
                json!({"build": {"local launcher": ["env", 1]}}),
                "\"local launcher\"[1]: expected a string",
            ),
            (
                json!({"archive limits": {"max bytes": 0}}),
                "\"archive limits\".\"max bytes\": 0 is out of range",
            ),
            (
                json!({"archive limits": {"max entries": "many"}}),
                "\"max entries\": expected a number",
            ),
        ];
        for (value, expected) in cases {
            let message = err(value.clone());
            assert!(
                message.contains(expected),
                "{value}: {message:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn relative_build_root_rejected_and_missing_home_reported() {
        let no_home = Environment {
            home: None,
            cores: 1,
        };
        let e = ServeConfig::from_value(&json!({}), &no_home)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOME"), "{e}");
        let e = ServeConfig::from_value(
            &json!({"local build root": {"root": "home", "path": "x"}}),
            &no_home,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("HOME"), "{e}");
    }

    #[test]
    fn load_reports_unreadable_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            ServeConfig::load(&missing, &env()),
            Err(ConfigError::Read { .. })
        ));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"jobs\": ").unwrap();
        assert!(matches!(
            ServeConfig::load(&bad, &env()),
            Err(ConfigError::Parse { .. })
        ));
        let good = dir.path().join("good.json");
        std::fs::write(&good, "{\"jobs\": 2}").unwrap();
        assert_eq!(ServeConfig::load(&good, &env()).unwrap().jobs, 2);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("localhost:80").unwrap().to_string(),
            "localhost:80"
        );
        assert_eq!(Address::parse("[::1]:80").unwrap().host, "::1");
        assert!(Address::parse(":80").is_err());
        assert!(Address::parse("host:").is_err());
        assert!(Address::parse("[::1]80").is_err());
    }
}
