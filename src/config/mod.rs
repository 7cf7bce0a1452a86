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
    pub(super) fn child(&self, key: impl Into<String>) -> KeyPath {
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
    /// Text (the default) or one JSON object a line (jserve's `"format"`).
    pub format: LogFormat,
    /// Log level 0 (errors) to 6 (trace), as justbuild numbers them.
    pub limit: Option<u8>,
    pub restrict_stderr_limit: Option<u8>,
    pub plain: bool,
    pub append: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format {other:?}: expected \"text\" or \"json\""
            )),
        }
    }
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
    /// How often an external endpoint is probed for the health service
    /// (jserve's own `"health interval"`, seconds); `None`: the default.
    pub health_interval: Option<Duration>,
    /// Whether target-cache entries and source trees are shared with other
    /// serve replicas through the endpoint's action cache (jserve's own
    /// `"shared cache"`; needs an external endpoint).
    pub shared_cache: bool,
}

/// How often an external endpoint is probed by default.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

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
    /// How often long work (a build, an archive import) logs its progress
    /// (jserve's own `"progress interval"`, seconds).
    pub progress_interval: Duration,
}

/// How often long work logs its progress by default.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How far an archive may expand when unpacked (jserve's own config key
/// `"archive limits"`; archives past it fail with UNPACK_ERROR).
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
    /// Address space of the process that unpacks one archive.
    pub max_memory: u64,
    /// zlib level (0-9) of the git objects an unpacked archive is stored as.
    pub compression: u32,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_memory: 2 << 30,
            compression: 1,
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

/// How often the collector measures the build root by default.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);

/// What was used this recently is never removed, by default.
pub const DEFAULT_GC_MIN_AGE: Duration = Duration::from_secs(60);

/// Where Prometheus metrics are served (jserve's own `"metrics"` key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub interface: String,
    /// 0 picks a free port.
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interface: "127.0.0.1".into(),
            port: 9100,
        }
    }
}

/// Keeping the build root within a size bound (storage::gc::collector).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    /// The stores (every generation) are kept below this many bytes.
    pub max_bytes: u64,
    /// How often the build root is measured.
    pub interval: Duration,
    /// Generations are rotated at most this often, so that what a client
    /// was answered about stays for at least this long (its next calls
    /// read it).
    pub min_age: Duration,
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
    /// The build root's size bound (`"gc"`); none: nothing is removed
    /// automatically.
    pub gc: Option<GcConfig>,
    /// Prometheus metrics (`"metrics"`); none: not served.
    pub metrics: Option<MetricsConfig>,
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
            compression: limits.compression,
            progress_every: self.build.progress_interval,
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

    /// Whether facts are shared through the external endpoint.
    pub fn shared_cache(&self) -> bool {
        !self.is_own_endpoint()
            && self
                .execution_endpoint
                .as_ref()
                .is_some_and(|e| e.shared_cache)
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
}

mod parse;
mod values;

#[cfg(test)]
mod tests;
