//! The associated remote-execution endpoint, as the serve side sees it: a CAS
//! to sync objects to and from, reached in-process (jserve's own endpoint) or
//! over gRPC (any REAPI server).

pub mod executor;
pub mod grpc;
pub mod local;
mod retry;
pub mod upload;

use std::path::Path;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{ActionResult, Directory};

use crate::digest::{Digest, HashFunction};

/// The largest answer accepted from an endpoint (an action result naming
/// many outputs, a page of a large tree).
pub const MAX_DECODING_BYTES: usize = 64 << 20;

/// Errors talking to the endpoint's CAS.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Blocking work on the local side was lost.
    #[error(transparent)]
    Worker(#[from] crate::blocking::WorkerFailed),
    /// The endpoint could not be reached or answered with an error status.
    #[error("remote CAS call {call} failed: {status}")]
    Status {
        call: &'static str,
        status: tonic::Status,
    },
    /// Connecting (or the TLS set-up) failed.
    #[error("cannot connect to the execution endpoint {address}: {message}")]
    Connect { address: String, message: String },
    /// The endpoint refused one object of an upload.
    #[error("the endpoint refused {hash}: {message}")]
    Refused { hash: String, message: String },
    /// Downloaded content does not match its digest.
    #[error("downloaded {hash} does not match its digest")]
    Corrupt { hash: String },
    #[error("local I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// An object over the size its reader allows.
    #[error("{hash} is larger than {limit} bytes")]
    TooLarge { hash: String, limit: u64 },
    #[error("{0}")]
    Other(String),
}

/// How [`RemoteCas::read_bounded`] may read one object: into memory up to
/// `in_memory` bytes, into the new file `spill` beyond that, and not at all
/// beyond `max` bytes.
#[derive(Clone, Copy, Debug)]
pub struct ReadBounds<'a> {
    pub in_memory: u64,
    pub max: u64,
    pub spill: &'a Path,
}

/// An object read under [`ReadBounds`]: its content, or its length in the
/// spill file (checked against its digest either way).
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Memory(Vec<u8>),
    File(u64),
}

/// A long upload's progress, logged at the progress interval
/// ([`crate::logging::progress_interval`]).
pub(crate) struct UploadProgress {
    total: usize,
    sent: usize,
    bytes: u64,
    started: std::time::Instant,
    logged: std::time::Instant,
}

impl UploadProgress {
    pub(crate) fn new(total: usize) -> UploadProgress {
        let now = std::time::Instant::now();
        UploadProgress {
            total,
            sent: 0,
            bytes: 0,
            started: now,
            logged: now,
        }
    }

    /// Counts `objects` of `bytes` as sent; logs if the interval has passed.
    pub(crate) fn sent(&mut self, objects: usize, bytes: u64) {
        self.sent += objects;
        self.bytes += bytes;
        if self.logged.elapsed() >= crate::logging::progress_interval() {
            self.logged = std::time::Instant::now();
            tracing::info!(
                "uploading to the endpoint: {} of {} objects sent ({} MiB, {} s)",
                self.sent,
                self.total,
                self.bytes >> 20,
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// The CAS of the associated endpoint. Digests are in the endpoint's hash
/// mode (`hash_function`); native trees are git tree objects and may only be
/// uploaded after everything they name.
#[tonic::async_trait]
pub trait RemoteCas: Send + Sync {
    fn hash_function(&self) -> HashFunction;

    /// Those of `digests` the endpoint does not have.
    async fn find_missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, RemoteError>;

    /// Uploads in-memory objects (batched where small). A tree goes up
    /// only after the objects before it in `blobs`; blobs may go first.
    async fn upload_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError>;

    /// Uploads one object from a file, streaming it.
    async fn upload_file(&self, digest: &Digest, path: &Path) -> Result<(), RemoteError>;

    /// Reads one object into memory; `None` if the endpoint does not have it.
    async fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RemoteError>;

    /// Whether the endpoint answers at all (any status will do), asked once
    /// with a short time limit and no retries.
    async fn probe(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    /// Reads objects expected to be small in as few round trips as the
    /// endpoint allows (BatchReadBlobs), each checked against its digest.
    /// Answers those it read; the others (absent, over `max_each` bytes,
    /// or in a batch the endpoint would not answer whole) are for the caller
    /// to read one by one.
    async fn read_small(
        &self,
        digests: Vec<Digest>,
        max_each: u64,
    ) -> Result<Vec<(Digest, Vec<u8>)>, RemoteError>;

    /// Reads one object within `bounds`, whether or not its size is known
    /// (native digests from git trees carry none); `None` if absent.
    async fn read_bounded(
        &self,
        digest: &Digest,
        bounds: ReadBounds<'_>,
    ) -> Result<Option<Fetched>, RemoteError>;

    /// Streams one object into `dest` (created or replaced); false if absent.
    async fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<bool, RemoteError>;

    /// Compatible mode: every `Directory` of the tree `root` (GetTree), so a
    /// whole tree's structure arrives in one call. `None` where the endpoint
    /// cannot list it (native mode, or no GetTree): read the objects one by one.
    /// Messages of more than `max_bytes` in all are [`RemoteError::TooLarge`].
    async fn get_tree(
        &self,
        root: &Digest,
        max_bytes: u64,
    ) -> Result<Option<Vec<Directory>>, RemoteError>;

    /// The endpoint's action-cache entry for `action`, `None` if it has none
    /// (the shared cache keeps its facts there).
    async fn get_action_result(&self, action: &Digest)
        -> Result<Option<ActionResult>, RemoteError>;

    /// Records `result` for `action` in the endpoint's action cache.
    async fn update_action_result(
        &self,
        action: &Digest,
        result: ActionResult,
    ) -> Result<(), RemoteError>;
}

/// The CAS and Execution clients of one endpoint.
pub type EndpointClients = (Arc<dyn RemoteCas>, Arc<dyn executor::RemoteExecutor>);

/// The CAS and Execution clients of one external REAPI endpoint, over one
/// channel that connects on first use (a slow endpoint does not hold up
/// whoever asks). The one way jserve connects to an endpoint: the associated
/// one and those of dispatch lists.
pub fn connect(
    address: &crate::config::Address,
    instance_name: &str,
    hash: HashFunction,
    auth: &crate::config::AuthConfig,
    retry: &crate::config::RetryConfig,
) -> Result<EndpointClients, RemoteError> {
    let cas = grpc::GrpcCas::connect_lazy(grpc::GrpcCasConfig {
        address: address.clone(),
        instance_name: instance_name.to_string(),
        hash,
        tls: grpc::GrpcTls::from_auth(auth),
        retry: retry.clone(),
        timeouts: grpc::GrpcTimeouts::default(),
    })?;
    let executor = executor::GrpcExecutor::new(
        cas.channel(),
        executor::GrpcExecutorConfig {
            address: address.to_string(),
            instance_name: instance_name.to_string(),
            hash,
            retry: retry.clone(),
        },
    );
    Ok((Arc::new(cas), Arc::new(executor)))
}
