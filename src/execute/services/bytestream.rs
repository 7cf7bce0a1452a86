//! ByteStream: reading and writing blobs of any size in chunks. Writes are
//! hashed as they arrive and only enter the CAS once complete and verified;
//! an interrupted write can be resumed from its committed size.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::super::endpoint::{EndpointError, LocalEndpoint};
use super::super::resource::{self, Resource};
use super::cas::check_staged_tree;
use crate::digest::{Digest, ObjectKind};
use crate::storage::cas::Upload;

/// Bytes per read response: well below the gRPC message limit.
const READ_CHUNK: usize = 1024 * 1024;
/// Unfinished uploads untouched for this long are dropped.
const UPLOAD_IDLE_LIMIT: Duration = Duration::from_secs(600);
/// Unfinished uploads kept for resumption, in all and per client address;
/// past these the least recently touched are forgotten. Each holds a staged
/// file, but no descriptor: it is closed between chunks.
const MAX_PENDING_UPLOADS: usize = 1024;
const MAX_PENDING_UPLOADS_PER_CLIENT: usize = 64;

struct PendingUpload {
    upload: Upload,
    digest: Digest,
    touched: Instant,
}

/// An unfinished upload kept for resumption, with the client's address for
/// the per-client bound.
struct Kept {
    peer: Option<std::net::IpAddr>,
    upload: Arc<Mutex<PendingUpload>>,
}

pub struct ByteStreamService {
    endpoint: Arc<LocalEndpoint>,
    /// Unfinished writes by resource name, for resumption and QueryWriteStatus.
    uploads: Arc<Mutex<HashMap<String, Kept>>>,
}

impl ByteStreamService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        ByteStreamService {
            endpoint,
            uploads: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Parses a resource name into the digest it names, checking instance and compressor.
    fn resolve(&self, name: &str, write: bool) -> Result<(Resource, Digest), Status> {
        let r =
            resource::parse(name, write).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.endpoint.check_instance(&r.instance)?;
        if let Some(c) = &r.compressor {
            return Err(Status::unimplemented(format!(
                "compressed blobs ({c}) are not supported; Capabilities lists no compressors"
            )));
        }
        let digest = self.endpoint.parse_digest(&reapi::Digest {
            hash: r.hash.clone(),
            size_bytes: r.size,
        })?;
        Ok((r, digest))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let (_, digest) = self.resolve(&request.resource_name, false)?;
        if request.read_offset < 0 || request.read_limit < 0 {
            return Err(Status::out_of_range("negative read offset or limit"));
        }
        let endpoint = self.endpoint.clone();
        let d = digest.clone();
        let (file, len) = tokio::task::spawn_blocking(move || {
            let Some(path) = endpoint.object_path(&d) else {
                return Err(Status::not_found(format!("{} not in CAS", d.hash)));
            };
            let file = std::fs::File::open(&path).map_err(internal)?;
            let len = file.metadata().map_err(internal)?.len();
            endpoint.check_size(&d, len).map_err(|_| {
                Status::not_found(format!(
                    "{} is stored with another size than asked for",
                    d.hash
                ))
            })?;
            Ok((file, len))
        })
        .await
        .map_err(internal)??;
        let offset = request.read_offset as u64;
        if offset > len {
            return Err(Status::out_of_range(format!(
                "read offset {offset} is past the end of the {len}-byte blob"
            )));
        }
        let remaining = match request.read_limit {
            0 => len - offset,
            limit => (limit as u64).min(len - offset),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(internal(e)));
                return;
            }
            let mut left = remaining;
            // An empty blob still gets one (empty) response.
            let mut first = true;
            while left > 0 || first {
                first = false;
                let mut buf = vec![0u8; (left as usize).min(READ_CHUNK)];
                if let Err(e) = file.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(internal(e)));
                    return;
                }
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(ReadResponse { data: buf })).is_err() {
                    return; // the client went away
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty write stream"))??;
        let name = first.resource_name.clone();
        let (_, digest) = self.resolve(&name, true)?;
        let size = digest.size;

        // Nothing to do for objects the CAS already has.
        let endpoint = self.endpoint.clone();
        let d = digest.clone();
        let present = tokio::task::spawn_blocking(move || endpoint.contains(&d))
            .await
            .map_err(internal)?;
        if present && digest.size > 0 {
            self.uploads.lock().expect("uploads lock").remove(&name);
            return Ok(Response::new(WriteResponse {
                committed_size: size as i64,
            }));
        }

        let pending = self.pending_upload(&name, &digest, peer).await?;
        let mut message = Some(first);
        loop {
            let Some(req) = message.take() else {
                match stream.next().await {
                    Some(next) => {
                        message = Some(next?);
                        continue;
                    }
                    // Ended without finish_write: keep what arrived for a resumed write.
                    None => {
                        let written = pending.lock().expect("upload lock").upload.written();
                        return Err(Status::invalid_argument(format!(
                            "write stream ended after {written} bytes without finish_write"
                        )));
                    }
                }
            };
            if !req.resource_name.is_empty() && req.resource_name != name {
                return Err(Status::invalid_argument(
                    "resource name changed in the middle of a write",
                ));
            }
            let p = pending.clone();
            let finish = req.finish_write;
            let endpoint = self.endpoint.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<Option<u64>, Status> {
                let mut guard = p.lock().expect("upload lock");
                let written = guard.upload.written();
                if req.write_offset < 0 || req.write_offset as u64 != written {
                    return Err(Status::invalid_argument(format!(
                        "write offset {} does not continue the {written} bytes received",
                        req.write_offset
                    )));
                }
                guard
                    .upload
                    .write(&req.data)
                    .map_err(|e| EndpointError::from(e).to_status())?;
                // No descriptor is held while waiting for the next chunk.
                guard.upload.pause();
                guard.touched = Instant::now();
                Ok(finish.then_some(guard.upload.written()))
            })
            .await
            .map_err(internal)??;
            if let Some(total) = result {
                self.uploads.lock().expect("uploads lock").remove(&name);
                let Ok(pending) = Arc::try_unwrap(pending) else {
                    return Err(Status::aborted(
                        "the same upload is being written twice at once",
                    ));
                };
                let PendingUpload { upload, digest, .. } =
                    pending.into_inner().expect("upload lock");
                tokio::task::spawn_blocking(move || commit(&endpoint, upload, &digest, total))
                    .await
                    .map_err(internal)??;
                return Ok(Response::new(WriteResponse {
                    committed_size: total as i64,
                }));
            }
        }
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let name = request.into_inner().resource_name;
        let (_, digest) = self.resolve(&name, true)?;
        let pending = self
            .uploads
            .lock()
            .expect("uploads lock")
            .get(&name)
            .map(|k| k.upload.clone());
        if let Some(p) = pending {
            let written = p.lock().expect("upload lock").upload.written();
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: written as i64,
                complete: false,
            }));
        }
        let endpoint = self.endpoint.clone();
        let d = digest.clone();
        let present = tokio::task::spawn_blocking(move || endpoint.contains(&d))
            .await
            .map_err(internal)?;
        if present {
            Ok(Response::new(QueryWriteStatusResponse {
                committed_size: digest.size as i64,
                complete: true,
            }))
        } else {
            Err(Status::not_found(format!(
                "no upload of {} is known",
                digest.hash
            )))
        }
    }
}

impl ByteStreamService {
    /// The upload for `name`: a resumed one if the client continues, else a fresh one.
    async fn pending_upload(
        &self,
        name: &str,
        digest: &Digest,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Arc<Mutex<PendingUpload>>, Status> {
        {
            let mut uploads = self.uploads.lock().expect("uploads lock");
            uploads.retain(|_, k| {
                k.upload
                    .try_lock()
                    .map(|p| p.touched.elapsed() < UPLOAD_IDLE_LIMIT)
                    .unwrap_or(true)
            });
            if let Some(k) = uploads.get(name) {
                return Ok(k.upload.clone());
            }
        }
        let endpoint = self.endpoint.clone();
        let d = digest.clone();
        let upload = tokio::task::spawn_blocking(move || {
            let kind = if d.is_tree {
                ObjectKind::Tree
            } else {
                ObjectKind::File
            };
            // An unknown size (Digest::size_known) is checked when complete.
            let len = d.size_known(endpoint.hash).then_some(d.size);
            endpoint.cas.begin_upload(kind, len)
        })
        .await
        .map_err(internal)?
        .map_err(|e| EndpointError::from(e).to_status())?;
        let pending = Arc::new(Mutex::new(PendingUpload {
            upload,
            digest: digest.clone(),
            touched: Instant::now(),
        }));
        let mut uploads = self.uploads.lock().expect("uploads lock");
        uploads.insert(
            name.to_string(),
            Kept {
                peer,
                upload: pending.clone(),
            },
        );
        forget_over_bounds(&mut uploads, name, peer);
        Ok(pending)
    }
}

/// Past the bounds on unfinished uploads, forgets the least recently
/// touched ones (of `peer`, when it has too many), never `newest`. A write
/// still streaming keeps its own upload; only resumption is lost.
fn forget_over_bounds(
    uploads: &mut HashMap<String, Kept>,
    newest: &str,
    peer: Option<std::net::IpAddr>,
) {
    // An upload busy with a chunk right now counts as touched now.
    let touched = |k: &Kept| {
        k.upload
            .try_lock()
            .map(|p| p.touched)
            .unwrap_or_else(|_| Instant::now())
    };
    loop {
        let from_peer = uploads.values().filter(|k| k.peer == peer).count();
        let over_peer = from_peer > MAX_PENDING_UPLOADS_PER_CLIENT;
        if !over_peer && uploads.len() <= MAX_PENDING_UPLOADS {
            return;
        }
        let oldest = uploads
            .iter()
            .filter(|(name, k)| *name != newest && (!over_peer || k.peer == peer))
            .min_by_key(|(_, k)| touched(k))
            .map(|(name, _)| name.clone());
        let Some(name) = oldest else { return };
        tracing::debug!(name, "forgetting an unfinished upload");
        uploads.remove(&name);
    }
}

/// Verifies a complete upload and gives it its place in the CAS.
fn commit(
    endpoint: &LocalEndpoint,
    upload: Upload,
    digest: &Digest,
    total: u64,
) -> Result<(), Status> {
    endpoint.check_size(digest, total)?;
    let cas = endpoint.cas.clone();
    let hash = digest.hash.clone();
    let is_tree = digest.is_tree;
    upload
        .commit(Some(&digest.hash), move |staged| {
            if is_tree {
                check_staged_tree(&cas, &hash, staged)
            } else {
                Ok(())
            }
        })
        .map_err(|e| EndpointError::from(e).to_status())?;
    Ok(())
}
