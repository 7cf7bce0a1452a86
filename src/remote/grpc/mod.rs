//! A Remote Execution API (v2) client for the CAS of an external execution
//! endpoint: presence checks, batched transfers of small objects, ByteStream
//! for large ones, retries after transient failures, and verification of
//! everything downloaded.
//!
//! * The connection is plain HTTP/2 unless TLS material is configured.
//! * The batch size comes from the endpoint's Capabilities (asked once),
//!   falling back to 3 MiB and never above 4 MiB minus framing.
//! * Transient failures (`UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//!   `RESOURCE_EXHAUSTED`) are retried with exponential backoff and jitter;
//!   interrupted ByteStream reads resume where they stopped.
//! * Every call has a time limit: unary calls must be answered within
//!   [`GrpcTimeouts::call`], streams must make progress within it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, batch_update_blobs_request, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient, digest_function,
};
use bazel_remote_apis::google::bytestream::{
    byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::{Fetched, ReadBounds, RemoteCas, RemoteError};
use crate::config::{Address, AuthConfig, RetryConfig};
use crate::digest::{Digest, HashFunction, ObjectHasher};
use crate::remote::retry::{backoff, is_retryable, with_jitter, Random};

/// Batch size when the endpoint announces none (or Capabilities fail).
pub const DEFAULT_BATCH_BYTES: usize = 3 << 20;
/// The most a batch may carry, whatever the endpoint announces: gRPC
/// servers commonly refuse messages above 4 MiB.
pub const MAX_BATCH_BYTES: usize = (4 << 20) - (64 << 10);
/// What one entry of a batch costs beyond its content (digest and framing),
/// rounded up generously.
const ENTRY_OVERHEAD: usize = 256;
/// Bytes per ByteStream message.
const CHUNK_BYTES: usize = 1 << 20;
/// Digests per FindMissingBlobs call (about 1 MB of request).
const FIND_MISSING_BATCH: usize = 10_000;
use crate::remote::MAX_DECODING_BYTES;

mod action_cache;
mod channel;
mod transfer;

use channel::*;
pub use channel::{GrpcCasConfig, GrpcTimeouts, GrpcTls};
use transfer::*;

/// The CAS of an external REAPI endpoint, reached over gRPC.
pub struct GrpcCas {
    channel: Channel,
    address: String,
    instance_name: String,
    hash: HashFunction,
    retry: RetryConfig,
    timeouts: GrpcTimeouts,
    random: Random,
    batch_limit: OnceCell<usize>,
}

impl GrpcCas {
    /// Connects and asks the endpoint's Capabilities; an endpoint that
    /// cannot be reached (after the configured retries) is an error.
    pub async fn connect(config: GrpcCasConfig) -> Result<GrpcCas, RemoteError> {
        let cas = GrpcCas::connect_lazy(config)?;
        let limit = cas.fetch_batch_limit().await.map_err(|f| {
            let message = match f.error {
                RemoteError::Status { status, .. } => status.message().to_string(),
                other => other.to_string(),
            };
            RemoteError::Connect {
                address: cas.address.clone(),
                message,
            }
        })?;
        let _ = cas.batch_limit.set(limit);
        Ok(cas)
    }

    /// Sets the client up without talking to the endpoint (must run inside a
    /// Tokio runtime); the connection and Capabilities follow on first use.
    pub fn connect_lazy(config: GrpcCasConfig) -> Result<GrpcCas, RemoteError> {
        let address = config.address.to_string();
        let channel = build_channel(&config).map_err(|message| RemoteError::Connect {
            address: address.clone(),
            message,
        })?;
        Ok(GrpcCas {
            channel,
            address,
            instance_name: config.instance_name,
            hash: config.hash,
            retry: config.retry,
            timeouts: config.timeouts,
            random: Random::new(),
            batch_limit: OnceCell::new(),
        })
    }

    /// The channel to the endpoint, for its other services (Execution).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The largest batch the endpoint takes, in bytes.
    pub async fn max_batch_bytes(&self) -> Result<usize, RemoteError> {
        self.batch_limit
            .get_or_try_init(|| async { self.fetch_batch_limit().await.map_err(|f| f.error) })
            .await
            .copied()
    }

    /// Asks Capabilities for the batch limit. Only an unreachable endpoint is
    /// an error; any other failure means the default.
    async fn fetch_batch_limit(&self) -> Result<usize, Failed> {
        const CALL: &str = "GetCapabilities";
        let answer = self
            .retrying(CALL, || {
                let mut client = CapabilitiesClient::new(self.channel.clone())
                    .max_decoding_message_size(MAX_DECODING_BYTES);
                let request = self.request(reapi::GetCapabilitiesRequest {
                    instance_name: self.instance_name.clone(),
                });
                async move { self.unary(CALL, client.get_capabilities(request)).await }
            })
            .await;
        let capabilities = match answer {
            Ok(c) => c,
            Err(f) if f.unreachable => return Err(f),
            Err(f) => {
                tracing::warn!(
                    "execution endpoint {}: no capabilities ({}); using batches of at most {} bytes",
                    self.address,
                    f.error,
                    DEFAULT_BATCH_BYTES
                );
                return Ok(DEFAULT_BATCH_BYTES);
            }
        };
        let cache = capabilities.cache_capabilities.unwrap_or_default();
        if self.hash == HashFunction::Sha256
            && !cache.digest_functions.is_empty()
            && !cache
                .digest_functions
                .contains(&(digest_function::Value::Sha256 as i32))
        {
            tracing::warn!(
                "execution endpoint {} does not list SHA256 among its digest functions",
                self.address
            );
        }
        Ok(match cache.max_batch_total_size_bytes {
            n if n > 0 => (n as u64).min(MAX_BATCH_BYTES as u64) as usize,
            _ => DEFAULT_BATCH_BYTES,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeouts.call);
        request
    }

    fn cas_client(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_BYTES)
    }

    fn bytestream_client(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// Awaits a unary call within the call time limit.
    async fn unary<T>(
        &self,
        call: &'static str,
        answer: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Failed> {
        match tokio::time::timeout(self.timeouts.call, answer).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Failed::status(call, status)),
            Err(_) => Err(self.no_answer(call)),
        }
    }

    fn no_answer(&self, call: &'static str) -> Failed {
        Failed::status(
            call,
            Status::deadline_exceeded(format!(
                "no answer from {} within {:?}",
                self.address, self.timeouts.call
            )),
        )
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts are used up.
    async fn retrying<T, F, Fut>(&self, call: &'static str, mut attempt: F) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let mut retrier = self.retrier(call);
        loop {
            let attempted = attempt().await;
            crate::metrics::global().endpoint_call(call, attempted.is_err());
            match attempted {
                Ok(v) => return Ok(v),
                Err(f) => {
                    if !retrier.again(&f).await {
                        return Err(f);
                    }
                }
            }
        }
    }

    fn retrier(&self, call: &'static str) -> Retrier<'_> {
        Retrier {
            cas: self,
            call,
            attempt: 1,
        }
    }

    /// `{instance}/`, to start resource names with: also for the empty
    /// instance (a leading `/`), because justbuild 1.5's ByteStream server
    /// insists on exactly four (six) segments; 1.6 clients do the same and
    /// standard servers (BuildGrid) take the empty first segment as "".
    fn resource_prefix(&self) -> String {
        format!("{}/", self.instance_name)
    }

    /// The size to upload `digest` with, given the content's length: native
    /// ids may leave it unknown (0); otherwise they must agree.
    fn upload_size(&self, digest: &Digest, len: u64) -> Result<u64, RemoteError> {
        if !digest.size_known(self.hash) || digest.size == len {
            Ok(len)
        } else {
            Err(RemoteError::Other(format!(
                "cannot upload {}: its digest says {} bytes, the content has {len}",
                digest.hash, digest.size
            )))
        }
    }

    fn upload_wire(&self, digest: &Digest, size: u64) -> reapi::Digest {
        let mut wire = digest.to_wire(self.hash);
        wire.size_bytes = size as i64;
        wire
    }

    /// Whether an object of `size` bytes (known) fits into a batch.
    async fn fits_batch(&self, size: u64) -> Result<bool, RemoteError> {
        Ok(size.saturating_add(ENTRY_OVERHEAD as u64) <= self.max_batch_bytes().await? as u64)
    }

    /// Uploads a batch in one BatchUpdateBlobs call; every object must be accepted.
    async fn upload_batch(&self, batch: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError> {
        const CALL: &str = "BatchUpdateBlobs";
        if batch.is_empty() {
            return Ok(());
        }
        let mut hashes = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for (digest, data) in batch {
            let wire = self.upload_wire(&digest, data.len() as u64);
            hashes.push((wire.hash.clone(), digest.hash));
            requests.push(batch_update_blobs_request::Request {
                digest: Some(wire),
                data,
                compressor: 0,
            });
        }
        let request = reapi::BatchUpdateBlobsRequest {
            instance_name: self.instance_name.clone(),
            requests,
            ..Default::default()
        };
        let hashes = &hashes;
        self.retrying(CALL, || {
            let mut client = self.cas_client();
            let request = self.request(request.clone());
            async move {
                let answer = self.unary(CALL, client.batch_update_blobs(request)).await?;
                let statuses: HashMap<String, (i32, String)> = answer
                    .responses
                    .into_iter()
                    .filter_map(|r| {
                        let status = r.status.unwrap_or_default();
                        Some((r.digest?.hash, (status.code, status.message)))
                    })
                    .collect();
                // Report a final refusal before a transient one.
                let mut transient = None;
                for (wire_hash, hash) in hashes {
                    let (code, message) = match statuses.get(wire_hash) {
                        None => (
                            Code::Internal,
                            "the answer has no status for it".to_string(),
                        ),
                        Some((0, _)) => continue,
                        Some((code, message)) => (Code::from(*code), message.clone()),
                    };
                    let failed = Failed {
                        error: RemoteError::Refused {
                            hash: hash.clone(),
                            message: format!("{code:?}: {message}"),
                        },
                        retry: is_retryable(code),
                        unreachable: false,
                    };
                    if !failed.retry {
                        return Err(failed);
                    }
                    transient.get_or_insert(failed);
                }
                transient.map_or(Ok(()), Err)
            }
        })
        .await
        .map_err(|f| f.error)
    }

    /// Uploads one object through ByteStream.
    async fn write_stream(
        &self,
        digest: &Digest,
        size: u64,
        source: Source,
    ) -> Result<(), RemoteError> {
        let wire = self.upload_wire(digest, size);
        self.retrying("ByteStream.Write", || {
            self.write_attempt(&digest.hash, &wire, size, source.clone())
        })
        .await
        .map_err(|f| f.error)
    }

    async fn write_attempt(
        &self,
        hash: &str,
        wire: &reapi::Digest,
        size: u64,
        source: Source,
    ) -> Result<(), Failed> {
        const CALL: &str = "ByteStream.Write";
        let resource_name = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.resource_prefix(),
            self.random.uuid(),
            wire.hash,
            size
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let producer = tokio::spawn(produce(source, resource_name, size, tx));
        let progress = Progress::new();
        let seen = progress.clone();
        let requests = ReceiverStream::new(rx).map(move |r| {
            seen.touch();
            r
        });
        let mut client = self.bytestream_client();
        let outcome = tokio::select! {
            answer = client.write(requests) => Some(answer),
            _ = progress.stalled(self.timeouts.call) => None,
        };
        // A local read error explains a broken-off upload best.
        producer
            .await
            .map_err(|e| RemoteError::Other(format!("upload task failed: {e}")))??;
        let committed = match outcome {
            None => {
                return Err(Failed::status(
                    CALL,
                    Status::deadline_exceeded(format!(
                        "the upload to {} made no progress for {:?}",
                        self.address, self.timeouts.call
                    )),
                ))
            }
            Some(Err(status)) => return Err(Failed::status(CALL, status)),
            Some(Ok(answer)) => answer.into_inner().committed_size,
        };
        if committed == size as i64 {
            Ok(())
        } else {
            Err(Failed::fatal(RemoteError::Refused {
                hash: hash.to_string(),
                message: format!("the endpoint committed {committed} of {size} bytes"),
            }))
        }
    }

    /// Reads one object with BatchReadBlobs; `None` if absent. Unverified.
    async fn read_batched(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        const CALL: &str = "BatchReadBlobs";
        let wire = digest.to_wire(self.hash);
        let request = reapi::BatchReadBlobsRequest {
            instance_name: self.instance_name.clone(),
            digests: vec![wire.clone()],
            ..Default::default()
        };
        let wire = &wire;
        self.retrying(CALL, || {
            let mut client = self.cas_client();
            let request = self.request(request.clone());
            async move {
                let answer = self.unary(CALL, client.batch_read_blobs(request)).await?;
                let Some(response) = answer
                    .responses
                    .into_iter()
                    .find(|r| r.digest.as_ref().is_some_and(|d| d.hash == wire.hash))
                else {
                    return Err(Failed::fatal(RemoteError::Other(format!(
                        "{CALL}: the answer has nothing for {}",
                        wire.hash
                    ))));
                };
                let status = response.status.unwrap_or_default();
                match Code::from(status.code) {
                    Code::Ok => {}
                    Code::NotFound => return Ok(None),
                    code => return Err(Failed::status(CALL, Status::new(code, status.message))),
                }
                if response.compressor != 0 {
                    return Err(Failed::fatal(RemoteError::Other(format!(
                        "{CALL}: {} came compressed although no compression was asked for",
                        wire.hash
                    ))));
                }
                Ok(Some(response.data))
            }
        })
        .await
        .map_err(|f| f.error)
    }

    /// Reads the objects of `digests` in one BatchReadBlobs call, the
    /// answer at most `max_answer` bytes; those found, unverified. `None`
    /// when the endpoint will not answer this batch whole (the answer is too
    /// large, or the batch is refused as too large).
    async fn read_batch(
        &self,
        digests: &[Digest],
        max_answer: usize,
    ) -> Result<Option<Vec<(Digest, Vec<u8>)>>, RemoteError> {
        const CALL: &str = "BatchReadBlobs";
        let wire: HashMap<String, &Digest> = digests
            .iter()
            .map(|d| (d.to_wire(self.hash).hash, d))
            .collect();
        let request = reapi::BatchReadBlobsRequest {
            instance_name: self.instance_name.clone(),
            digests: digests.iter().map(|d| d.to_wire(self.hash)).collect(),
            ..Default::default()
        };
        let answered = self
            .retrying(CALL, || {
                let mut client = ContentAddressableStorageClient::new(self.channel.clone())
                    .max_decoding_message_size(max_answer);
                let request = self.request(request.clone());
                async move { self.unary(CALL, client.batch_read_blobs(request)).await }
            })
            .await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(Failed {
                error: RemoteError::Status { status, .. },
                ..
            }) if matches!(
                status.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ) =>
            {
                return Ok(None)
            }
            Err(f) => return Err(f.error),
        };
        let mut read = Vec::with_capacity(digests.len());
        for response in answer.responses {
            let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
            let digest = response.digest.and_then(|d| wire.get(&d.hash).copied());
            if let (true, Some(digest), 0) = (ok, digest, response.compressor) {
                read.push((digest.clone(), response.data));
            }
        }
        Ok(Some(read))
    }

    /// Reads one object through ByteStream into `download`, resuming after
    /// transient failures; false if absent. Unverified.
    async fn read_stream(
        &self,
        digest: &Digest,
        download: &mut Download,
    ) -> Result<bool, RemoteError> {
        let wire = digest.to_wire(self.hash);
        let resource_name = format!(
            "{}blobs/{}/{}",
            self.resource_prefix(),
            wire.hash,
            wire.size_bytes
        );
        let mut retrier = self.retrier("ByteStream.Read");
        loop {
            let attempted = self.read_attempt(&resource_name, download).await;
            crate::metrics::global().endpoint_call("ByteStream.Read", attempted.is_err());
            match attempted {
                Ok(found) => return Ok(found),
                Err(f) => {
                    if !retrier.again(&f).await {
                        return Err(f.error);
                    }
                }
            }
        }
    }

    async fn read_attempt(
        &self,
        resource_name: &str,
        download: &mut Download,
    ) -> Result<bool, Failed> {
        const CALL: &str = "ByteStream.Read";
        let request = self.request(ReadRequest {
            resource_name: resource_name.to_string(),
            read_offset: download.len as i64,
            read_limit: 0,
        });
        let mut client = self.bytestream_client();
        let mut stream = match tokio::time::timeout(self.timeouts.call, client.read(request)).await
        {
            Err(_) => return Err(self.no_answer(CALL)),
            Ok(Err(status)) if status.code() == Code::NotFound => return Ok(false),
            Ok(Err(status)) => return Err(Failed::status(CALL, status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        loop {
            match tokio::time::timeout(self.timeouts.call, stream.message()).await {
                Err(_) => return Err(self.no_answer(CALL)),
                Ok(Err(status)) if status.code() == Code::NotFound => return Ok(false),
                Ok(Err(status)) => return Err(Failed::status(CALL, status)),
                Ok(Ok(None)) => return Ok(true),
                Ok(Ok(Some(chunk))) => download.put(&chunk.data).await?,
            }
        }
    }

    /// Streams an object into the temporary file `tmp` and verifies it.
    async fn stream_to_file(&self, digest: &Digest, tmp: &Path) -> Result<bool, RemoteError> {
        let file = tokio::fs::File::create(tmp).await.map_err(io_error(tmp))?;
        let mut download = Download::new(self.hash, digest, Target::File(file, tmp.to_path_buf()));
        if !self.read_stream(digest, &mut download).await? {
            return Ok(false);
        }
        self.finish_file(digest, tmp, download).await?;
        Ok(true)
    }

    /// Flushes a download that ended in file `tmp` and checks it against `digest`.
    async fn finish_file(
        &self,
        digest: &Digest,
        tmp: &Path,
        download: Download,
    ) -> Result<(), RemoteError> {
        let Download {
            target,
            len,
            hasher,
            ..
        } = download;
        if let Target::File(mut file, _) = target {
            file.flush().await.map_err(io_error(tmp))?;
        }
        let actual = match hasher {
            Some(_) if len != digest.size => None,
            Some(h) => Some(h.finish_hex()),
            None => {
                // Unknown size: the git header needs the length, so hash afterwards.
                let (hf, kind, path) = (self.hash, digest.framing(), tmp.to_path_buf());
                let hashed = tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)?;
                    hf.hash_reader(kind, len, std::io::BufReader::new(file))
                })
                .await
                .map_err(|e| RemoteError::Other(format!("hashing task failed: {e}")))?;
                Some(hashed.map_err(io_error(tmp))?)
            }
        };
        if actual.as_deref() != Some(digest.hash.as_str()) {
            return Err(RemoteError::Corrupt {
                hash: digest.hash.clone(),
            });
        }
        Ok(())
    }
}

/// Counts the attempts of one call and waits between them.
struct Retrier<'a> {
    cas: &'a GrpcCas,
    call: &'static str,
    attempt: u32,
}

impl Retrier<'_> {
    /// After a failed attempt: waits and returns true if another attempt is due.
    async fn again(&mut self, failed: &Failed) -> bool {
        let max = self.cas.retry.max_attempts.max(1);
        if !failed.retry || self.attempt >= max {
            if failed.retry && max > 1 {
                tracing::debug!(
                    "{} to {}: giving up after {} attempts",
                    self.call,
                    self.cas.address,
                    self.attempt
                );
            }
            return false;
        }
        crate::metrics::global()
            .endpoint_retries
            .get_or_create(&crate::metrics::Method { method: self.call })
            .inc();
        let wait = with_jitter(
            backoff(&self.cas.retry, self.attempt),
            self.cas.random.unit(),
        );
        tracing::info!(
            "{} to {}: attempt {}/{} failed: {}; retrying in {:.1?}",
            self.call,
            self.cas.address,
            self.attempt,
            max,
            failed.error,
            wait
        );
        tokio::time::sleep(wait).await;
        self.attempt += 1;
        true
    }
}

/// How long a health probe waits for an answer.
const PROBE_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Objects of unknown size asked for in one BatchReadBlobs call.
const UNKNOWN_BATCH: usize = 64;
/// The largest answer taken to such a call; a larger one is not read, and
/// its objects are read one by one.
const UNKNOWN_ANSWER_BYTES: usize = 16 << 20;

#[tonic::async_trait]
impl RemoteCas for GrpcCas {
    fn hash_function(&self) -> HashFunction {
        self.hash
    }

    async fn find_missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, RemoteError> {
        const CALL: &str = "FindMissingBlobs";
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_BATCH) {
            let wire: Vec<reapi::Digest> = chunk.iter().map(|d| d.to_wire(self.hash)).collect();
            let request = reapi::FindMissingBlobsRequest {
                instance_name: self.instance_name.clone(),
                blob_digests: wire.clone(),
                ..Default::default()
            };
            let answer = self
                .retrying(CALL, || {
                    let mut client = self.cas_client();
                    let request = self.request(request.clone());
                    async move { self.unary(CALL, client.find_missing_blobs(request)).await }
                })
                .await
                .map_err(|f| f.error)?;
            // Answer with the caller's digests (tree flags, sizes as given).
            let asked: HashMap<(&str, i64), &Digest> = wire
                .iter()
                .zip(chunk)
                .map(|(w, d)| ((w.hash.as_str(), w.size_bytes), d))
                .collect();
            for w in answer.missing_blob_digests {
                match asked.get(&(w.hash.as_str(), w.size_bytes)) {
                    Some(d) => missing.push((*d).clone()),
                    None => missing.push(self.hash.digest_from_wire(&w).map_err(|e| {
                        RemoteError::Other(format!("{CALL} answered with a bad digest: {e}"))
                    })?),
                }
            }
        }
        Ok(missing)
    }

    async fn upload_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError> {
        let limit = self.max_batch_bytes().await?;
        let mut progress = super::UploadProgress::new(blobs.len());
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        for (digest, data) in blobs {
            let size = self.upload_size(&digest, data.len() as u64)?;
            let cost = data.len().saturating_add(ENTRY_OVERHEAD);
            if cost > limit {
                // Keep the order: what came before goes first.
                let n = batch.len();
                self.upload_batch(std::mem::take(&mut batch)).await?;
                progress.sent(n, batch_bytes as u64);
                batch_bytes = 0;
                self.write_stream(&digest, size, Source::Memory(Arc::new(data)))
                    .await?;
                progress.sent(1, size);
                continue;
            }
            if batch_bytes + cost > limit {
                let n = batch.len();
                self.upload_batch(std::mem::take(&mut batch)).await?;
                progress.sent(n, batch_bytes as u64);
                batch_bytes = 0;
            }
            batch.push((digest, data));
            batch_bytes += cost;
        }
        self.upload_batch(batch).await
    }

    async fn upload_file(&self, digest: &Digest, path: &Path) -> Result<(), RemoteError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(io_error(path))?
            .len();
        let size = self.upload_size(digest, len)?;
        if self.fits_batch(size).await? {
            let data = tokio::fs::read(path).await.map_err(io_error(path))?;
            if data.len() as u64 != size {
                return Err(RemoteError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("the file changed size while being read"),
                });
            }
            self.upload_batch(vec![(digest.clone(), data)]).await
        } else {
            self.write_stream(digest, size, Source::File(path.to_path_buf()))
                .await
        }
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        let data = if digest.size_known(self.hash) && self.fits_batch(digest.size).await? {
            self.read_batched(digest).await?
        } else {
            let mut download = Download::new(self.hash, digest, Target::Memory(Vec::new()));
            if self.read_stream(digest, &mut download).await? {
                match download.target {
                    Target::Memory(data) => Some(data),
                    Target::File(..) => unreachable!("read into memory"),
                }
            } else {
                None
            }
        };
        match data {
            Some(data) => {
                verify(self.hash, digest, &data)?;
                Ok(Some(data))
            }
            None => Ok(None),
        }
    }

    async fn probe(&self) -> Result<(), RemoteError> {
        const CALL: &str = "GetCapabilities";
        let mut client = CapabilitiesClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let request = self.request(reapi::GetCapabilitiesRequest {
            instance_name: self.instance_name.clone(),
        });
        let answered = tokio::time::timeout(PROBE_TIME, client.get_capabilities(request)).await;
        let failed = match answered {
            Err(_) => Failed::status(
                CALL,
                Status::deadline_exceeded(format!(
                    "no answer from {} within {PROBE_TIME:?}",
                    self.address
                )),
            ),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => Failed::status(CALL, status),
        };
        // Any answer, an error status too, comes from a reachable endpoint.
        if failed.unreachable {
            Err(failed.error)
        } else {
            Ok(())
        }
    }

    async fn read_small(
        &self,
        digests: Vec<Digest>,
        max_each: u64,
    ) -> Result<Vec<(Digest, Vec<u8>)>, RemoteError> {
        // Known sizes fill batches up to the endpoint's limit; unknown ones
        // (native digests from git trees) go UNKNOWN_BATCH at a time, the
        // answer capped at UNKNOWN_ANSWER_BYTES, a batch with a large object
        // halved until the others come.
        let limit = self.max_batch_bytes().await?;
        let mut batches: Vec<(Vec<Digest>, usize)> = Vec::new();
        let (mut known, mut known_bytes) = (Vec::new(), 0usize);
        let mut unknown = Vec::new();
        for d in digests {
            if !d.size_known(self.hash) {
                unknown.push(d);
                if unknown.len() == UNKNOWN_BATCH {
                    batches.push((std::mem::take(&mut unknown), UNKNOWN_ANSWER_BYTES));
                }
                continue;
            }
            if d.size > max_each || !self.fits_batch(d.size).await? {
                continue;
            }
            let cost = d.size as usize + ENTRY_OVERHEAD;
            if known_bytes + cost > limit && !known.is_empty() {
                batches.push((std::mem::take(&mut known), MAX_DECODING_BYTES));
                known_bytes = 0;
            }
            known_bytes += cost;
            known.push(d);
        }
        if !unknown.is_empty() {
            batches.push((unknown, UNKNOWN_ANSWER_BYTES));
        }
        if !known.is_empty() {
            batches.push((known, MAX_DECODING_BYTES));
        }
        let mut read = Vec::new();
        while let Some((batch, max_answer)) = batches.pop() {
            let Some(found) = self.read_batch(&batch, max_answer).await? else {
                // Too large as a whole: each half on its own, down to
                // single objects, which are left out.
                if batch.len() > 1 {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    batches.push((first, max_answer));
                    batches.push((second, max_answer));
                }
                continue;
            };
            for (digest, data) in found {
                verify(self.hash, &digest, &data)?;
                if data.len() as u64 <= max_each {
                    read.push((digest, data));
                }
            }
        }
        Ok(read)
    }

    async fn read_bounded(
        &self,
        digest: &Digest,
        bounds: ReadBounds<'_>,
    ) -> Result<Option<Fetched>, RemoteError> {
        let too_large = || RemoteError::TooLarge {
            hash: digest.hash.clone(),
            limit: bounds.max,
        };
        if digest.size_known(self.hash) {
            if digest.size > bounds.max {
                return Err(too_large());
            }
            if digest.size <= bounds.in_memory {
                return Ok(self.read_blob(digest).await?.map(Fetched::Memory));
            }
            let found = self.download_to_file(digest, bounds.spill).await?;
            return Ok(found.then_some(Fetched::File(digest.size)));
        }
        // Size unknown: in memory while it is small, then on in the file.
        let spill = bounds.spill.to_path_buf();
        let mut guard = TempFile(Some(spill.clone()));
        let mut download = Download::new(self.hash, digest, Target::Memory(Vec::new()));
        download.spill = Some((bounds.in_memory, spill.clone()));
        download.max = Some(bounds.max);
        if !self.read_stream(digest, &mut download).await? {
            return Ok(None);
        }
        let len = download.len;
        if let Target::Memory(data) = &mut download.target {
            let data = std::mem::take(data);
            verify(self.hash, digest, &data)?;
            return Ok(Some(Fetched::Memory(data)));
        }
        self.finish_file(digest, &spill, download).await?;
        guard.0 = None;
        Ok(Some(Fetched::File(len)))
    }

    async fn get_action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<reapi::ActionResult>, RemoteError> {
        self.action_result(action).await
    }

    async fn update_action_result(
        &self,
        action: &Digest,
        result: reapi::ActionResult,
    ) -> Result<(), RemoteError> {
        self.record_action_result(action, result).await
    }

    async fn get_tree(
        &self,
        root: &Digest,
        max_bytes: u64,
    ) -> Result<Option<Vec<reapi::Directory>>, RemoteError> {
        if self.hash.is_native() {
            return Ok(None);
        }
        let result = self
            .retrying("GetTree", || async {
                let mut client = self.cas_client();
                let mut directories = Vec::new();
                let mut bytes = 0u64;
                let mut token = String::new();
                // Pages arrive as a stream; a stream ending with a token asks for another call.
                loop {
                    let request = reapi::GetTreeRequest {
                        instance_name: self.instance_name.clone(),
                        root_digest: Some(root.to_wire(self.hash)),
                        page_size: 0,
                        page_token: token.clone(),
                        ..Default::default()
                    };
                    let mut stream = self.unary("GetTree", client.get_tree(request)).await?;
                    token.clear();
                    loop {
                        let page = tokio::time::timeout(self.timeouts.call, stream.message())
                            .await
                            .map_err(|_| self.no_answer("GetTree"))?
                            .map_err(|s| Failed::status("GetTree", s))?;
                        let Some(page) = page else { break };
                        bytes += page
                            .directories
                            .iter()
                            .map(|d| prost::Message::encoded_len(d) as u64)
                            .sum::<u64>();
                        if bytes > max_bytes {
                            return Err(Failed::fatal(RemoteError::TooLarge {
                                hash: format!("the listing of tree {}", root.hash),
                                limit: max_bytes,
                            }));
                        }
                        directories.extend(page.directories);
                        token = page.next_page_token;
                    }
                    if token.is_empty() {
                        return Ok(directories);
                    }
                }
            })
            .await;
        match result {
            Ok(directories) => Ok(Some(directories)),
            Err(Failed {
                error: RemoteError::Status { status, .. },
                ..
            }) if matches!(status.code(), Code::Unimplemented | Code::NotFound) => Ok(None),
            Err(f) => Err(f.error),
        }
    }

    async fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<bool, RemoteError> {
        let name = dest.file_name().ok_or_else(|| {
            RemoteError::Other(format!(
                "download target {} has no file name",
                dest.display()
            ))
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.{}.download",
            name.to_string_lossy(),
            self.random.uuid()
        ));
        let mut guard = TempFile(Some(tmp.clone()));
        if digest.size_known(self.hash) && self.fits_batch(digest.size).await? {
            let Some(data) = self.read_blob(digest).await? else {
                return Ok(false);
            };
            tokio::fs::write(&tmp, &data)
                .await
                .map_err(io_error(&tmp))?;
        } else if !self.stream_to_file(digest, &tmp).await? {
            return Ok(false);
        }
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(io_error(dest))?;
        guard.0 = None;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::ObjectKind;

    #[test]
    fn tls_only_with_authentication_material() {
        assert_eq!(GrpcTls::from_auth(&AuthConfig::default()), None);
        let auth = AuthConfig {
            ca_cert: Some("/etc/ca.crt".into()),
            ..Default::default()
        };
        assert_eq!(
            GrpcTls::from_auth(&auth),
            Some(GrpcTls {
                ca_cert: Some("/etc/ca.crt".into()),
                client_cert: None,
                client_key: None,
            })
        );
    }

    #[test]
    fn verification_checks_hash_size_and_tree_framing() {
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let d = hf.digest_bytes(ObjectKind::File, b"content");
            assert!(verify(hf, &d, b"content").is_ok());
            assert!(verify(hf, &d, b"contenT").is_err());
            let wrong_size = Digest {
                size: 8,
                ..d.clone()
            };
            assert!(verify(hf, &wrong_size, b"content").is_err());
            // Size 0 for non-empty content means "unknown": the hash decides.
            let unknown = Digest { size: 0, ..d };
            assert!(verify(hf, &unknown, b"content").is_ok());
            assert!(verify(hf, &unknown, b"contenT").is_err());
        }
        // A native tree id is the hash of a git tree object, not of a blob.
        let hf = HashFunction::GitSha1;
        let tree = hf.digest_bytes(ObjectKind::Tree, b"");
        assert!(verify(hf, &tree, b"").is_ok());
        let as_blob = Digest {
            is_tree: false,
            ..tree
        };
        assert!(verify(hf, &as_blob, b"").is_err());
    }
}
