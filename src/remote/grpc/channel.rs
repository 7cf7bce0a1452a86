//! The channel to an endpoint: address, TLS material (configured or the
//! system's trust roots), time limits, and the HTTP/2 settings.

use super::*;

/// TLS material for the connection; its presence switches to https.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcTls {
    /// Trust root for the endpoint's certificate; without it the system's CA
    /// bundle is used (`SSL_CERT_FILE`, or the usual locations).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM), for endpoints that ask for one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl GrpcTls {
    /// The TLS material of the `"authentication"` config; `None` (plain
    /// HTTP/2) when it names none.
    pub fn from_auth(auth: &AuthConfig) -> Option<GrpcTls> {
        let tls = GrpcTls {
            ca_cert: auth.ca_cert.clone(),
            client_cert: auth.client_cert.clone(),
            client_key: auth.client_key.clone(),
        };
        (tls != GrpcTls::default()).then_some(tls)
    }
}

/// Time limits for talking to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcTimeouts {
    /// Establishing a connection (TCP and TLS).
    pub connect: Duration,
    /// Answering a unary call; for streams, the longest time without progress.
    pub call: Duration,
}

impl Default for GrpcTimeouts {
    fn default() -> Self {
        GrpcTimeouts {
            connect: Duration::from_secs(10),
            call: Duration::from_secs(60),
        }
    }
}

/// Where the endpoint is and how to talk to it.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcCasConfig {
    pub address: Address,
    /// Instance name sent with every request ("" for none).
    pub instance_name: String,
    /// The endpoint's hash mode.
    pub hash: HashFunction,
    /// `None`: plain HTTP/2.
    pub tls: Option<GrpcTls>,
    pub retry: RetryConfig,
    pub timeouts: GrpcTimeouts,
}

impl GrpcCasConfig {
    /// A configuration without TLS, with the default retry policy (one
    /// attempt) and default time limits.
    pub fn new(address: Address, instance_name: impl Into<String>, hash: HashFunction) -> Self {
        GrpcCasConfig {
            address,
            instance_name: instance_name.into(),
            hash,
            tls: None,
            retry: RetryConfig::default(),
            timeouts: GrpcTimeouts::default(),
        }
    }
}

/// Trust roots when no CA certificate is configured: the system bundle.
pub(super) fn system_ca_bundle() -> Result<Vec<u8>, String> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| {
            "TLS without a \"ca cert\" needs the system's CA bundle, and none was found \
             (set SSL_CERT_FILE or configure \"ca cert\")"
                .to_string()
        })
}

pub(super) fn client_tls(tls: &GrpcTls, timeout: Duration) -> Result<ClientTlsConfig, String> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let ca = match &tls.ca_cert {
        Some(path) => read("CA certificate", path)?,
        None => system_ca_bundle()?,
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(timeout);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err("a client certificate and its key must be given together".into()),
    }
    Ok(config)
}

pub(super) fn build_channel(config: &GrpcCasConfig) -> Result<Channel, String> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.address))
        .map_err(|e| format!("invalid address: {}", error_chain(&e)))?
        .connect_timeout(config.timeouts.connect)
        .tcp_nodelay(true)
        // No HTTP/2 keep-alive pings: grpc-go servers (Buildbarn, ...) answer
        // frequent pings with GOAWAY; stalled calls are caught by the call limit.
        // Large windows: blobs otherwise crawl over links with some latency.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if let Some(tls) = &config.tls {
        endpoint = endpoint
            .tls_config(client_tls(tls, config.timeouts.connect)?)
            .map_err(|e| format!("TLS set-up failed: {}", error_chain(&e)))?;
    }
    Ok(endpoint.connect_lazy())
}
