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
/// Unfinished uploads kept for resumption, in all and per client address,
/// counted and in staged bytes; past these the least recently touched are
/// forgotten (their staged files removed). Each holds a staged file, but no
/// descriptor: it is closed between chunks.
const KEPT_BOUNDS: Bounds = Bounds {
    uploads: 1024,
    uploads_per_client: 64,
    bytes: 8 << 30,
    bytes_per_client: 1 << 30,
};

#[derive(Clone, Copy, Debug)]
struct Bounds {
    uploads: usize,
    uploads_per_client: usize,
    bytes: u64,
    bytes_per_client: u64,
}

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
        crate::metrics::global().cas_transfer("out", self.endpoint.hash, 1, remaining);
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
        let peer = crate::connections::peer_ip(request.extensions())
            .or_else(|| request.remote_addr().map(|a| a.ip()));
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
            let stale = self.uploads.lock().expect("uploads lock").remove(&name);
            discard(stale.into_iter().collect());
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
                        let mut uploads = self.uploads.lock().expect("uploads lock");
                        discard(forget_over_bounds(&mut uploads, &name, peer, KEPT_BOUNDS));
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
            let expired: Vec<String> = uploads
                .iter()
                .filter(|(_, k)| {
                    k.upload
                        .try_lock()
                        .is_ok_and(|p| p.touched.elapsed() >= UPLOAD_IDLE_LIMIT)
                })
                .map(|(name, _)| name.clone())
                .collect();
            discard(
                expired
                    .iter()
                    .filter_map(|name| uploads.remove(name))
                    .collect(),
            );
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
        discard(forget_over_bounds(&mut uploads, name, peer, KEPT_BOUNDS));
        Ok(pending)
    }
}

/// Drops forgotten uploads on the blocking pool: dropping the last
/// reference to one removes its staged file.
fn discard(forgotten: Vec<Kept>) {
    if !forgotten.is_empty() {
        tokio::task::spawn_blocking(move || drop(forgotten));
    }
}

/// Past the bounds on unfinished uploads, forgets the least recently
/// touched ones (of `peer`, when it is over its share), never `newest`, and
/// returns them. A write still streaming keeps its own upload; only
/// resumption is lost.
fn forget_over_bounds(
    uploads: &mut HashMap<String, Kept>,
    newest: &str,
    peer: Option<std::net::IpAddr>,
    bounds: Bounds,
) -> Vec<Kept> {
    let mut forgotten = Vec::new();
    // An upload busy with a chunk right now counts as touched now, and with
    // the bytes it had when it was last seen idle (none, if never).
    let state = |k: &Kept| {
        k.upload
            .try_lock()
            .map(|p| (p.touched, p.upload.written()))
            .unwrap_or_else(|_| (Instant::now(), 0))
    };
    loop {
        let (mut count, mut bytes, mut peer_count, mut peer_bytes) = (0, 0, 0, 0);
        for k in uploads.values() {
            let written = state(k).1;
            count += 1;
            bytes += written;
            if k.peer == peer {
                peer_count += 1;
                peer_bytes += written;
            }
        }
        let over_peer =
            peer_count > bounds.uploads_per_client || peer_bytes > bounds.bytes_per_client;
        if !over_peer && count <= bounds.uploads && bytes <= bounds.bytes {
            return forgotten;
        }
        let oldest = uploads
            .iter()
            .filter(|(name, k)| *name != newest && (!over_peer || k.peer == peer))
            .min_by_key(|(_, k)| state(k).0)
            .map(|(name, _)| name.clone());
        let Some(name) = oldest else {
            return forgotten;
        };
        tracing::debug!(name, "forgetting an unfinished upload");
        forgotten.extend(uploads.remove(&name));
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
    crate::metrics::global().cas_transfer("in", endpoint.hash, 1, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashFunction;
    use crate::storage::cas::Cas;

    fn kept(cas: &Cas, peer: u8, bytes: usize, age_secs: u64) -> Kept {
        let mut upload = cas.begin_upload(ObjectKind::File, None).unwrap();
        upload.write(&vec![b'x'; bytes]).unwrap();
        upload.pause();
        Kept {
            peer: Some(std::net::IpAddr::from([10, 0, 0, peer])),
            upload: Arc::new(Mutex::new(PendingUpload {
                upload,
                digest: HashFunction::GitSha1.digest_bytes(ObjectKind::File, b""),
                touched: Instant::now() - Duration::from_secs(age_secs),
            })),
        }
    }

    #[test]
    fn kept_uploads_are_bounded_in_bytes_per_client_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::new(
            HashFunction::GitSha1,
            dir.path().join("cas"),
            dir.path().join("tmp"),
        );
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let bounds = Bounds {
            uploads: 100,
            uploads_per_client: 100,
            bytes: 2500,
            bytes_per_client: 1500,
        };
        let mut uploads = HashMap::new();
        // Client 1: three uploads of 600 bytes, the oldest first.
        for (i, age) in [30, 20, 10].into_iter().enumerate() {
            uploads.insert(format!("one-{i}"), kept(&cas, 1, 600, age));
        }
        let peer1 = Some(std::net::IpAddr::from([10, 0, 0, 1]));
        forget_over_bounds(&mut uploads, "one-2", peer1, bounds);
        // 1800 bytes are over client 1's 1500: its oldest goes.
        let mut names: Vec<_> = uploads.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["one-1", "one-2"]);
        // Client 2 adds 1400 bytes: 2600 in all, over the total; the least
        // recently touched of anyone's goes, never the newest.
        uploads.insert("two-0".to_string(), kept(&cas, 2, 1400, 0));
        let peer2 = Some(std::net::IpAddr::from([10, 0, 0, 2]));
        forget_over_bounds(&mut uploads, "two-0", peer2, bounds);
        let mut names: Vec<_> = uploads.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["one-2", "two-0"]);
    }
}
