//! ContentAddressableStorage: presence checks, batch uploads and downloads
//! (each upload verified against its digest; native trees only once their
//! content is present), GetTree for Directory trees, and blob splitting.
//!
//! SplitBlob and SpliceBlob serve justbuild 1.5.x (pre-standard messages,
//! support probed with the empty blob) and 1.6.1+ (upstream messages,
//! Capabilities flags) alike; docs/execution.md has the protocol facts.

use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, batch_read_blobs_response, batch_update_blobs_response, compressor,
    content_addressable_storage_server::ContentAddressableStorage, digest_function,
};
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use super::super::endpoint::{EndpointError, LocalEndpoint};
use super::{blocking, MAX_BATCH_BYTES};
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::execute::rpc_status;

/// Chunk sizes for SplitBlob (FastCDC 2020): small enough to share content
/// between versions of a large blob, large enough to keep the chunk count low.
const CHUNK_MIN: usize = 32 * 1024;
const CHUNK_AVG: usize = 128 * 1024;
const CHUNK_MAX: usize = 512 * 1024;

pub struct CasService {
    endpoint: Arc<LocalEndpoint>,
}

impl CasService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        CasService { endpoint }
    }
}

fn status_of(e: &EndpointError) -> Option<RpcStatus> {
    let s = e.to_status();
    rpc_status(s.code(), s.message())
}

/// Directories per GetTree page unless the client asks for fewer.
const DEFAULT_PAGE_SIZE: usize = 1000;
/// The most directories per page, whatever the client asks: a page is one
/// message.
const MAX_PAGE_SIZE: usize = 10_000;
/// A page is cut before it passes this many bytes, well within the 4 MiB a
/// client accepts by default.
const MAX_PAGE_BYTES: usize = 2 << 20;

type GetTreeStream = Pin<Box<dyn Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let endpoint = self.endpoint.clone();
        let missing = blocking(move || {
            let mut missing = Vec::new();
            for d in request.blob_digests {
                let digest = endpoint.parse_digest(&d)?;
                if !endpoint.contains(&digest) {
                    missing.push(d);
                }
            }
            Ok(missing)
        })
        .await?;
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let endpoint = self.endpoint.clone();
        let responses = blocking(move || Ok(update_blobs(&endpoint, request.requests))).await?;
        let stored = responses
            .iter()
            .filter(|r| r.status.as_ref().is_none_or(|s| s.code == 0));
        let (blobs, bytes) = stored.fold((0, 0), |(n, b), r| {
            (
                n + 1,
                b + r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64),
            )
        });
        crate::metrics::global().cas_transfer("in", self.endpoint.hash, blobs, bytes);
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let endpoint = self.endpoint.clone();
        let responses = blocking(move || {
            let digests = request
                .digests
                .iter()
                .map(|d| endpoint.parse_digest(d))
                .collect::<Result<Vec<_>, _>>()?;
            let mut total = 0usize;
            let mut responses = Vec::with_capacity(digests.len());
            for (wire, digest) in request.digests.into_iter().zip(digests) {
                // Sized before read: a digest without a size (native) must
                // not make the answer, or this process, hold a huge blob.
                let found = endpoint.object_path(&digest).and_then(|path| {
                    let len = std::fs::metadata(&path).ok()?.len();
                    Some((path, len))
                });
                let response = match found {
                    None => batch_read_blobs_response::Response {
                        digest: Some(wire),
                        status: rpc_status(Code::NotFound, format!("{} not in CAS", digest.hash)),
                        ..Default::default()
                    },
                    Some((path, len)) => {
                        if endpoint.check_size(&digest, len).is_err() {
                            batch_read_blobs_response::Response {
                                digest: Some(wire),
                                status: rpc_status(
                                    Code::NotFound,
                                    format!("{} has another size than announced", digest.hash),
                                ),
                                ..Default::default()
                            }
                        } else {
                            total = total.saturating_add(len as usize);
                            if total > MAX_BATCH_BYTES {
                                return Err(EndpointError::Invalid(format!(
                                    "the blobs asked for exceed {MAX_BATCH_BYTES} bytes; read large blobs through ByteStream"
                                )));
                            }
                            let data = std::fs::read(&path).map_err(|e| {
                                EndpointError::Internal(format!("reading {}: {e}", path.display()))
                            })?;
                            batch_read_blobs_response::Response {
                                digest: Some(wire),
                                data,
                                status: rpc_status(Code::Ok, ""),
                                compressor: compressor::Value::Identity as i32,
                            }
                        }
                    }
                };
                responses.push(response);
            }
            Ok(responses)
        })
        .await?;
        let read = responses
            .iter()
            .filter(|r| r.status.as_ref().is_none_or(|s| s.code == 0));
        let (blobs, bytes) = read.fold((0, 0), |(n, b), r| (n + 1, b + r.data.len() as u64));
        crate::metrics::global().cas_transfer("out", self.endpoint.hash, blobs, bytes);
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = GetTreeStream;

    async fn get_tree(
        &self,
        request: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        if self.endpoint.hash.is_native() {
            return Err(Status::unimplemented(
                "GetTree is not available in native mode: trees are git tree objects, read them by their id",
            ));
        }
        let root = self
            .endpoint
            .parse_digest(&request.root_digest.unwrap_or_default())?;
        let page_size = if request.page_size > 0 {
            (request.page_size as usize).min(MAX_PAGE_SIZE)
        } else {
            DEFAULT_PAGE_SIZE
        };
        let start: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("malformed page token"))?
        };
        // Pages are sent as the walk finds them; a full page waits for the
        // next directory to know whether a token for more goes with it.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let endpoint = self.endpoint.clone();
        tokio::task::spawn_blocking(move || {
            use prost::Message;
            let mut page = Vec::new();
            let mut page_bytes = 0;
            let mut index = 0usize;
            let mut receiver_gone = false;
            let walked = endpoint.for_each_directory(&root, |dir| {
                if index >= start {
                    let len = dir.encoded_len();
                    let full = page.len() == page_size || page_bytes + len > MAX_PAGE_BYTES;
                    if full && !page.is_empty() {
                        let response = reapi::GetTreeResponse {
                            directories: std::mem::take(&mut page),
                            next_page_token: index.to_string(),
                        };
                        page_bytes = 0;
                        receiver_gone = tx.blocking_send(Ok(response)).is_err();
                    }
                    page_bytes += len;
                    page.push(dir);
                }
                index += 1;
                !receiver_gone
            });
            let last = walked
                .map(|()| reapi::GetTreeResponse {
                    directories: page,
                    next_page_token: String::new(),
                })
                .map_err(|e| e.to_status());
            if !receiver_gone {
                let _ = tx.blocking_send(last);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn split_blob(
        &self,
        request: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let digest = self
            .endpoint
            .parse_digest(&request.blob_digest.unwrap_or_default())?;
        check_split_field3(request.digest_function, self.endpoint.hash)?;
        let endpoint = self.endpoint.clone();
        let hash = digest.hash.clone();
        let chunk_digests = blocking(move || split(&endpoint, &digest)).await?;
        tracing::debug!(
            field3 = request.digest_function,
            "split blob {hash} into {} chunks",
            chunk_digests.len()
        );
        // chunking_function stays UNKNOWN: jserve's FastCDC parameters are its
        // own, not the ones a FAST_CDC_2020 answer would make a client assume.
        Ok(Response::new(reapi::SplitBlobResponse {
            chunk_digests,
            ..Default::default()
        }))
    }

    async fn splice_blob(
        &self,
        request: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let wire = request.blob_digest.unwrap_or_default();
        let digest = self.endpoint.parse_digest(&wire)?;
        check_digest_function(request.digest_function, self.endpoint.hash)?;
        let endpoint = self.endpoint.clone();
        let chunks = request.chunk_digests;
        let count = chunks.len();
        let spliced = blocking(move || splice(&endpoint, &digest, &chunks)).await?;
        tracing::debug!("spliced blob {} from {count} chunks", spliced.hash);
        Ok(Response::new(reapi::SpliceBlobResponse {
            blob_digest: Some(spliced.to_wire(self.endpoint.hash)),
        }))
    }

    type GetChunkMappingStream =
        Pin<Box<dyn Stream<Item = Result<reapi::GetChunkMappingResponse, Status>> + Send>>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented(
            "GetChunkMapping is not supported; use SplitBlob",
        ))
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented(
            "RegisterChunkMapping is not supported; use SpliceBlob",
        ))
    }
}

/// Stores a batch: blobs first, then native trees as soon as their content is
/// there (a batch may carry a tree together with its subtrees and blobs).
fn update_blobs(
    endpoint: &LocalEndpoint,
    requests: Vec<reapi::batch_update_blobs_request::Request>,
) -> Vec<batch_update_blobs_response::Response> {
    let mut responses: Vec<Option<batch_update_blobs_response::Response>> =
        (0..requests.len()).map(|_| None).collect();
    let mut trees = Vec::new();
    let mut blobs = Vec::new();
    let answer = |wire: &Option<reapi::Digest>, status| batch_update_blobs_response::Response {
        digest: wire.clone(),
        status,
    };
    for (i, r) in requests.iter().enumerate() {
        if r.compressor != compressor::Value::Identity as i32 {
            responses[i] = Some(answer(
                &r.digest,
                rpc_status(
                    Code::InvalidArgument,
                    "compressed uploads are not supported",
                ),
            ));
            continue;
        }
        let digest = match endpoint.parse_digest(&r.digest.clone().unwrap_or_default()) {
            Ok(d) => d,
            Err(e) => {
                responses[i] = Some(answer(&r.digest, status_of(&e)));
                continue;
            }
        };
        if digest.is_tree {
            trees.push((i, digest));
            continue;
        }
        blobs.push((i, digest));
    }
    // The blobs, synced together.
    let items: Vec<(&Digest, &[u8])> = blobs
        .iter()
        .map(|(i, d)| (d, requests[*i].data.as_slice()))
        .collect();
    for ((i, _), stored) in blobs.iter().zip(endpoint.store_blobs(&items)) {
        let status = match stored {
            Ok(_) => rpc_status(Code::Ok, ""),
            Err(e) => status_of(&e),
        };
        responses[*i] = Some(answer(&requests[*i].digest, status));
    }
    // Trees whose entries are all present go in; repeat while that makes progress.
    let mut pending: VecDeque<(usize, Digest)> = trees.into();
    let mut stalled = 0;
    while let Some((i, digest)) = pending.pop_front() {
        match endpoint.store(&digest, &requests[i].data) {
            Err(EndpointError::TreeInvariant(_)) if stalled < pending.len() + 1 => {
                stalled += 1;
                pending.push_back((i, digest));
            }
            result => {
                stalled = 0;
                let status = match result {
                    Ok(_) => rpc_status(Code::Ok, ""),
                    Err(e) => status_of(&e),
                };
                responses[i] = Some(answer(&requests[i].digest, status));
            }
        }
    }
    responses.into_iter().flatten().collect()
}

/// The tree invariant for a native tree staged in a file before it enters the CAS.
pub(crate) fn check_staged_tree(
    cas: &crate::storage::Cas,
    tree_hash: &str,
    staged: &std::path::Path,
) -> Result<(), crate::storage::CasError> {
    let bytes = std::fs::read(staged).map_err(|source| crate::storage::CasError::Io {
        path: staged.to_path_buf(),
        source,
    })?;
    crate::storage::trees::check_git_tree_complete(cas, tree_hash, &bytes)
        .map_err(|e| crate::storage::CasError::Rejected(format!("tree invariant violated: {e}")))
}

/// justbuild 1.5.x ChunkingAlgorithm values, which share field 3 of
/// SplitBlobRequest with the upstream digest function (docs/execution.md).
const LEGACY_IDENTITY: i32 = 0;
const LEGACY_RABINCDC_8KB: i32 = 1;
const LEGACY_FASTCDC: i32 = 2;

/// Field 3 is a 1.5.x chunking algorithm or an upstream digest function, and
/// the request cannot say which. Both readings of 0-2 are safe: jserve picks
/// its own chunking, and the parsed blob digest already fixes the hash.
fn check_split_field3(value: i32, hash: HashFunction) -> Result<(), EndpointError> {
    match value {
        LEGACY_IDENTITY | LEGACY_RABINCDC_8KB | LEGACY_FASTCDC => Ok(()),
        other => check_digest_function(other, hash),
    }
}

/// An upstream digest_function field: unset, or the endpoint's own.
fn check_digest_function(value: i32, hash: HashFunction) -> Result<(), EndpointError> {
    let own = hash.reapi_digest_function();
    if value == digest_function::Value::Unknown as i32 || value == own {
        return Ok(());
    }
    let name = |v: i32| {
        digest_function::Value::try_from(v)
            .map(|f| f.as_str_name().to_string())
            .unwrap_or_else(|_| v.to_string())
    };
    Err(EndpointError::Invalid(format!(
        "digest function {} is not served here; this endpoint uses {}",
        name(value),
        name(own)
    )))
}

/// Cuts a stored object into content-defined chunks, stores them as blobs,
/// returns their digests. Native trees too: clients split them when syncing
/// a tree to another endpoint, and fall back noisily if refused.
fn split(endpoint: &LocalEndpoint, digest: &Digest) -> Result<Vec<reapi::Digest>, EndpointError> {
    let kind = if digest.is_tree {
        ObjectKind::Tree
    } else {
        ObjectKind::File
    };
    let file = endpoint
        .cas
        .open(kind, &digest.hash)?
        .ok_or_else(|| EndpointError::NotFound(digest.hash.clone()))?;
    let len = file
        .metadata()
        .map_err(|e| EndpointError::Internal(e.to_string()))?
        .len();
    endpoint.check_size(digest, len)?;
    let mut chunks = Vec::new();
    for chunk in fastcdc::v2020::StreamCDC::new(file, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let chunk = chunk.map_err(|e| EndpointError::Internal(format!("chunking failed: {e}")))?;
        let d = endpoint.cas.put_bytes(ObjectKind::File, &chunk.data)?;
        chunks.push(d.to_wire(endpoint.hash));
    }
    Ok(chunks)
}

/// Joins stored chunks into the blob `digest`, verifying the result.
fn splice(
    endpoint: &LocalEndpoint,
    digest: &Digest,
    chunks: &[reapi::Digest],
) -> Result<Digest, EndpointError> {
    let mut parts = Vec::with_capacity(chunks.len());
    let mut len = 0u64;
    for c in chunks {
        let d = endpoint.parse_digest(c)?;
        let path = endpoint.object_path(&d).ok_or_else(|| {
            EndpointError::Precondition(format!("chunk {} is not in the CAS", d.hash))
        })?;
        len += std::fs::metadata(&path)
            .map_err(|e| EndpointError::Internal(e.to_string()))?
            .len();
        parts.push(path);
    }
    endpoint.check_size(digest, len)?;
    let kind = if digest.is_tree {
        ObjectKind::Tree
    } else {
        ObjectKind::File
    };
    let mut upload = endpoint.cas.begin_upload(kind, Some(len))?;
    let mut buf = vec![0u8; 256 * 1024];
    for path in &parts {
        let mut f =
            std::fs::File::open(path).map_err(|e| EndpointError::Internal(e.to_string()))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| EndpointError::Internal(e.to_string()))?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n])?;
        }
    }
    let cas = endpoint.cas.clone();
    let tree_hash = digest.hash.clone();
    let is_native_tree = digest.is_tree && endpoint.hash == HashFunction::GitSha1;
    Ok(upload.commit(Some(&digest.hash), move |staged| {
        if is_native_tree {
            check_staged_tree(&cas, &tree_hash, staged)
        } else {
            Ok(())
        }
    })?)
}
