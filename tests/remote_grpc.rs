//! The gRPC client for an external endpoint's CAS (`jserve::remote::grpc`),
//! against jserve's own endpoint in-process and against a small fake CAS in
//! this file that can fail on purpose, serve wrong bytes and break off reads.

mod common;

use common::pki::pki;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, batch_read_blobs_response, batch_update_blobs_response,
    capabilities_server::{Capabilities, CapabilitiesServer},
    content_addressable_storage_server::{
        ContentAddressableStorage, ContentAddressableStorageServer,
    },
};
use bazel_remote_apis::google::bytestream::{
    byte_stream_server::{ByteStream, ByteStreamServer},
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use common::reapi::{start_execute, start_execute_with};
use jserve::config::{Address, RemoteServiceConfig, RetryConfig};
use jserve::daemon::{Listen, Services};
use jserve::digest::{serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind};
use jserve::execute::runner::RunnerConfig;
use jserve::execute::{EndpointConfig, LocalEndpoint};
use jserve::remote::grpc::{GrpcCas, GrpcCasConfig, GrpcTimeouts, GrpcTls};
use jserve::remote::{RemoteCas, RemoteError};
use jserve::storage::BuildRoot;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

const MODES: [HashFunction; 2] = [HashFunction::GitSha1, HashFunction::Sha256];
const MIB: usize = 1 << 20;

fn local(port: u16) -> Address {
    Address {
        host: "127.0.0.1".into(),
        port,
    }
}

fn config(addr: SocketAddr, instance: &str, hash: HashFunction) -> GrpcCasConfig {
    GrpcCasConfig::new(local(addr.port()), instance, hash)
}

fn retrying(mut config: GrpcCasConfig, attempts: u32) -> GrpcCasConfig {
    config.retry = RetryConfig {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(40),
    };
    config
}

/// Content that differs everywhere (so that a wrong offset shows).
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn blob(hf: HashFunction, data: &[u8]) -> Digest {
    hf.digest_bytes(ObjectKind::File, data)
}

fn unknown_size(d: &Digest) -> Digest {
    Digest {
        size: 0,
        ..d.clone()
    }
}

/// A native git tree naming `entries` (name, digest) as plain files.
fn git_tree(entries: &[(&str, &Digest)]) -> (Digest, Vec<u8>) {
    let entries = entries
        .iter()
        .map(|(name, d)| GitTreeEntry {
            name: name.as_bytes().to_vec(),
            kind: ObjectKind::File,
            id: hex::decode(&d.hash).unwrap().try_into().unwrap(),
        })
        .collect();
    let bytes = serialize_git_tree(entries).unwrap();
    (
        HashFunction::GitSha1.digest_bytes(ObjectKind::Tree, &bytes),
        bytes,
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn status_code(e: &RemoteError) -> Option<Code> {
    match e {
        RemoteError::Status { status, .. } => Some(status.code()),
        _ => None,
    }
}

#[tokio::test]
async fn blobs_round_trip_in_both_modes() {
    for hf in MODES {
        let ep = start_execute(hf, 1).await;
        let cas = GrpcCas::connect(config(ep.server.addr, "", hf))
            .await
            .unwrap();
        assert_eq!(cas.hash_function(), hf);
        // jserve announces 3 MiB batches.
        assert_eq!(cas.max_batch_bytes().await.unwrap(), 3 * MIB);

        let small_a = content(1000, 1);
        let small_b = content(200_000, 2);
        // Above 4 MiB: ByteStream both ways (a batch would be refused).
        let big = content(5 * MIB + 3, 3);
        let blobs: Vec<(Digest, Vec<u8>)> = [&small_a, &small_b, &big]
            .into_iter()
            .map(|d| (blob(hf, d), d.clone()))
            .collect();
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();

        let missing = cas.find_missing(digests.clone()).await.unwrap();
        assert_eq!(missing, digests, "{hf:?}: nothing is there yet");
        cas.upload_blobs(blobs.clone()).await.unwrap();
        assert!(cas.find_missing(digests.clone()).await.unwrap().is_empty());

        for (d, data) in &blobs {
            let read = cas.read_blob(d).await.unwrap();
            assert_eq!(read.as_deref(), Some(&data[..]), "{hf:?} {d}");
        }
        // Uploading again is harmless.
        cas.upload_blobs(blobs.clone()).await.unwrap();

        // The empty blob.
        let empty = hf.empty_blob();
        cas.upload_blobs(vec![(empty.clone(), Vec::new())])
            .await
            .unwrap();
        assert_eq!(cas.read_blob(&empty).await.unwrap(), Some(Vec::new()));

        // Absent objects.
        let absent = blob(hf, b"never uploaded");
        assert_eq!(cas.read_blob(&absent).await.unwrap(), None);
        assert_eq!(
            cas.find_missing(vec![absent.clone(), digests[0].clone()])
                .await
                .unwrap(),
            vec![absent.clone()]
        );
        assert!(cas.find_missing(Vec::new()).await.unwrap().is_empty());

        if hf.is_native() {
            // Native ids of unknown size (0) are read through ByteStream.
            for (d, data) in &blobs {
                let read = cas.read_blob(&unknown_size(d)).await.unwrap();
                assert_eq!(read.as_deref(), Some(&data[..]), "unknown size of {d}");
            }
            assert_eq!(cas.read_blob(&unknown_size(&absent)).await.unwrap(), None);
            // And may be uploaded so.
            let c = content(3000, 4);
            let dc = blob(hf, &c);
            cas.upload_blobs(vec![(unknown_size(&dc), c.clone())])
                .await
                .unwrap();
            assert_eq!(cas.read_blob(&dc).await.unwrap(), Some(c));
        } else {
            // A size that does not match the content is caught before sending.
            let wrong = Digest {
                size: 5,
                ..blob(hf, b"four")
            };
            let e = cas
                .upload_blobs(vec![(wrong, b"four".to_vec())])
                .await
                .unwrap_err();
            assert!(matches!(e, RemoteError::Other(_)), "{e}");
        }
    }
}

#[tokio::test]
async fn find_missing_splits_long_lists() {
    let hf = HashFunction::Sha256;
    let ep = start_execute(hf, 1).await;
    let cas = GrpcCas::connect(config(ep.server.addr, "", hf))
        .await
        .unwrap();
    let present = content(100, 9);
    let dp = blob(hf, &present);
    cas.upload_blobs(vec![(dp.clone(), present)]).await.unwrap();
    let mut digests: Vec<Digest> = (0..25_000u32).map(|i| blob(hf, &i.to_le_bytes())).collect();
    digests.insert(12_345, dp);
    let missing = cas.find_missing(digests.clone()).await.unwrap();
    digests.remove(12_345);
    assert_eq!(missing, digests);
}

#[tokio::test]
async fn files_round_trip_in_both_modes() {
    for hf in MODES {
        let ep = start_execute(hf, 1).await;
        let cas = GrpcCas::connect(config(ep.server.addr, "", hf))
            .await
            .unwrap();
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let small = content(10_000, 5);
        let big = content(6 * MIB + 17, 6);
        std::fs::write(src.path().join("small"), &small).unwrap();
        std::fs::write(src.path().join("big"), &big).unwrap();
        let (ds, db) = (blob(hf, &small), blob(hf, &big));

        cas.upload_file(&ds, &src.path().join("small"))
            .await
            .unwrap();
        cas.upload_file(&db, &src.path().join("big")).await.unwrap();
        assert!(cas
            .find_missing(vec![ds.clone(), db.clone()])
            .await
            .unwrap()
            .is_empty());

        // New files, and a replaced one.
        std::fs::write(out.path().join("b"), b"old content").unwrap();
        assert!(cas
            .download_to_file(&ds, &out.path().join("s"))
            .await
            .unwrap());
        assert!(cas
            .download_to_file(&db, &out.path().join("b"))
            .await
            .unwrap());
        assert_eq!(std::fs::read(out.path().join("s")).unwrap(), small);
        assert_eq!(std::fs::read(out.path().join("b")).unwrap(), big);
        if hf.is_native() {
            assert!(cas
                .download_to_file(&unknown_size(&db), &out.path().join("b0"))
                .await
                .unwrap());
            assert_eq!(std::fs::read(out.path().join("b0")).unwrap(), big);
            assert!(cas
                .download_to_file(&unknown_size(&ds), &out.path().join("s0"))
                .await
                .unwrap());
            assert_eq!(std::fs::read(out.path().join("s0")).unwrap(), small);
        }

        // Absent: false, and nothing is created.
        let absent_small = blob(hf, b"absent");
        let absent_big = Digest {
            size: 8 * MIB as u64,
            ..blob(hf, b"absent too")
        };
        for d in [&absent_small, &absent_big] {
            assert!(!cas
                .download_to_file(d, &out.path().join("absent"))
                .await
                .unwrap());
        }
        let expected: Vec<String> = if hf.is_native() {
            ["b", "b0", "s", "s0"].map(String::from).to_vec()
        } else {
            ["b", "s"].map(String::from).to_vec()
        };
        assert_eq!(files_in(out.path()), expected, "no temporary files left");

        // A missing source file is a local error.
        let e = cas
            .upload_file(&ds, &src.path().join("nope"))
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Io { .. }), "{e}");
    }
}

#[tokio::test]
async fn native_trees_arrive_after_their_content() {
    let hf = HashFunction::GitSha1;
    let ep = start_execute(hf, 1).await;
    let cas = GrpcCas::connect(config(ep.server.addr, "", hf))
        .await
        .unwrap();

    // Big content (ByteStream), small content and the tree in one call.
    let big = content(5 * MIB, 7);
    let small = content(100, 8);
    let (db, ds) = (blob(hf, &big), blob(hf, &small));
    let (tree, tree_bytes) = git_tree(&[("big", &db), ("small", &ds)]);
    cas.upload_blobs(vec![
        (db.clone(), big),
        (ds.clone(), small),
        (tree.clone(), tree_bytes.clone()),
    ])
    .await
    .unwrap();
    assert!(cas
        .find_missing(vec![tree.clone()])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        cas.read_blob(&tree).await.unwrap(),
        Some(tree_bytes.clone())
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(cas
        .download_to_file(&unknown_size(&tree), &dir.path().join("tree"))
        .await
        .unwrap());
    assert_eq!(std::fs::read(dir.path().join("tree")).unwrap(), tree_bytes);

    // Content split over two batches, the tree in the second.
    let (one, two) = (
        content(2 * MIB + MIB / 2, 10),
        content(2 * MIB + MIB / 2, 11),
    );
    let (d1, d2) = (blob(hf, &one), blob(hf, &two));
    let (tree2, tree2_bytes) = git_tree(&[("one", &d1), ("two", &d2)]);
    cas.upload_blobs(vec![(d1, one), (d2, two), (tree2.clone(), tree2_bytes)])
        .await
        .unwrap();
    assert!(cas.find_missing(vec![tree2]).await.unwrap().is_empty());

    // A tree before its (large) content is refused by the endpoint, per object.
    let late = content(5 * MIB, 12);
    let dl = blob(hf, &late);
    let (tree3, tree3_bytes) = git_tree(&[("late", &dl)]);
    let e = cas
        .upload_blobs(vec![(tree3.clone(), tree3_bytes), (dl, late)])
        .await
        .unwrap_err();
    match e {
        RemoteError::Refused { hash, message } => {
            assert_eq!(hash, tree3.hash);
            assert!(message.contains("FailedPrecondition"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn instance_names_are_sent_everywhere() {
    for hf in MODES {
        let ep = start_execute_with(hf, 1, Some("main")).await;
        let data = content(100, 13);
        let big = content(5 * MIB, 14);
        let (d, dbig) = (blob(hf, &data), blob(hf, &big));

        // Capabilities fail too, but only an unreachable endpoint fails connect.
        let other = GrpcCas::connect(config(ep.server.addr, "other", hf))
            .await
            .unwrap();
        let e = other.find_missing(vec![d.clone()]).await.unwrap_err();
        assert_eq!(status_code(&e), Some(Code::InvalidArgument), "{e}");
        let e = other
            .upload_blobs(vec![(d.clone(), data.clone())])
            .await
            .unwrap_err();
        assert_eq!(status_code(&e), Some(Code::InvalidArgument), "{e}");
        let e = other
            .upload_blobs(vec![(dbig.clone(), big.clone())])
            .await
            .unwrap_err();
        assert_eq!(status_code(&e), Some(Code::InvalidArgument), "{e}");

        let main = GrpcCas::connect(config(ep.server.addr, "main", hf))
            .await
            .unwrap();
        main.upload_blobs(vec![(d.clone(), data.clone()), (dbig.clone(), big.clone())])
            .await
            .unwrap();
        assert!(main
            .find_missing(vec![d.clone(), dbig.clone()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(main.read_blob(&d).await.unwrap(), Some(data));
        assert_eq!(main.read_blob(&dbig).await.unwrap(), Some(big));
        let e = other.read_blob(&dbig).await.unwrap_err();
        assert_eq!(status_code(&e), Some(Code::InvalidArgument), "{e}");
    }
}

// ---------------------------------------------------------------------------
// A fake CAS with injected failures.

#[derive(Default)]
struct Fake {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// The next so many calls fail with this code.
    fail: Mutex<(u32, Option<Code>)>,
    calls: AtomicU32,
    /// Serve every object with its last byte changed.
    corrupt: AtomicBool,
    /// Refuse every object of a batch upload.
    refuse: AtomicBool,
    /// The next so many ByteStream reads break off after their first chunk.
    break_reads: AtomicU32,
    read_offsets: Mutex<Vec<i64>>,
    max_batch: i64,
}

impl Fake {
    fn fail_next(&self, n: u32, code: Code) {
        *self.fail.lock().unwrap() = (n, Some(code));
    }

    fn gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut fail = self.fail.lock().unwrap();
        if fail.0 > 0 {
            fail.0 -= 1;
            return Err(Status::new(fail.1.unwrap(), "injected failure"));
        }
        Ok(())
    }

    fn served(&self, data: &[u8]) -> Vec<u8> {
        let mut data = data.to_vec();
        if self.corrupt.load(Ordering::SeqCst) {
            match data.last_mut() {
                Some(b) => *b ^= 1,
                None => data.push(0),
            }
        }
        data
    }
}

#[derive(Clone)]
struct FakeServer(Arc<Fake>);

fn ok_status() -> Option<RpcStatus> {
    Some(RpcStatus::default())
}

/// The hash segment after `blobs/` in a resource name.
fn resource_hash(name: &str) -> Result<String, Status> {
    let parts: Vec<&str> = name.split('/').collect();
    parts
        .iter()
        .position(|p| *p == "blobs")
        .and_then(|i| parts.get(i + 1))
        .map(|h| h.to_string())
        .ok_or_else(|| Status::invalid_argument(format!("bad resource name {name}")))
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Capabilities for FakeServer {
    async fn get_capabilities(
        &self,
        _: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        self.0.gate()?;
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                max_batch_total_size_bytes: self.0.max_batch,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for FakeServer {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        self.0.gate()?;
        let blobs = self.0.blobs.lock().unwrap();
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: request
                .into_inner()
                .blob_digests
                .into_iter()
                .filter(|d| !blobs.contains_key(&d.hash))
                .collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        self.0.gate()?;
        // Batches stay within the limit (the default when none is announced).
        let limit = match self.0.max_batch {
            n if n > 0 => n as usize,
            _ => 3 * MIB,
        };
        if request.get_ref().encoded_len() > limit {
            return Err(Status::invalid_argument("batch too large"));
        }
        let refuse = self.0.refuse.load(Ordering::SeqCst);
        let mut blobs = self.0.blobs.lock().unwrap();
        let responses = request
            .into_inner()
            .requests
            .into_iter()
            .map(|r| {
                let digest = r.digest.unwrap_or_default();
                let status = if refuse {
                    Some(RpcStatus {
                        code: Code::PermissionDenied as i32,
                        message: "read-only".into(),
                        details: Vec::new(),
                    })
                } else {
                    blobs.insert(digest.hash.clone(), r.data);
                    ok_status()
                };
                batch_update_blobs_response::Response {
                    digest: Some(digest),
                    status,
                }
            })
            .collect();
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        self.0.gate()?;
        let blobs = self.0.blobs.lock().unwrap();
        let responses = request
            .into_inner()
            .digests
            .into_iter()
            .map(|d| match blobs.get(&d.hash) {
                Some(data) => batch_read_blobs_response::Response {
                    data: self.0.served(data),
                    digest: Some(d),
                    status: ok_status(),
                    compressor: 0,
                },
                None => batch_read_blobs_response::Response {
                    digest: Some(d),
                    status: Some(RpcStatus {
                        code: Code::NotFound as i32,
                        message: "absent".into(),
                        details: Vec::new(),
                    }),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = Boxed<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        _: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn split_blob(
        &self,
        _: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type GetChunkMappingStream = Boxed<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn splice_blob(
        &self,
        _: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl ByteStream for FakeServer {
    type ReadStream = Boxed<ReadResponse>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.0.gate()?;
        let request = request.into_inner();
        let hash = resource_hash(&request.resource_name)?;
        self.0
            .read_offsets
            .lock()
            .unwrap()
            .push(request.read_offset);
        let data = match self.0.blobs.lock().unwrap().get(&hash) {
            Some(data) => self.0.served(data),
            None => return Err(Status::not_found("absent")),
        };
        let start = (request.read_offset as usize).min(data.len());
        let mut chunks: Vec<Result<ReadResponse, Status>> = data[start..]
            .chunks(MIB)
            .map(|c| Ok(ReadResponse { data: c.to_vec() }))
            .collect();
        let breaks = self
            .0
            .break_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if breaks {
            chunks.truncate(1);
            chunks.push(Err(Status::unavailable("connection lost")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.0.gate()?;
        let mut stream = request.into_inner();
        let mut hash = None;
        let mut data = Vec::new();
        while let Some(message) = stream.message().await? {
            if hash.is_none() {
                hash = Some(resource_hash(&message.resource_name)?);
            }
            if message.write_offset as usize != data.len() {
                return Err(Status::invalid_argument("wrong write offset"));
            }
            data.extend_from_slice(&message.data);
            if message.finish_write {
                break;
            }
        }
        let hash = hash.ok_or_else(|| Status::invalid_argument("empty write"))?;
        let committed_size = data.len() as i64;
        self.0.blobs.lock().unwrap().insert(hash, data);
        Ok(Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        _: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn start_fake(max_batch: i64) -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake {
        max_batch,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = FakeServer(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CapabilitiesServer::new(server.clone()))
            .add_service(
                ContentAddressableStorageServer::new(server.clone())
                    .max_decoding_message_size(64 * MIB),
            )
            .add_service(ByteStreamServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (fake, addr)
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let (fake, addr) = start_fake(0).await;
    let hf = HashFunction::Sha256;
    fake.fail_next(2, Code::Unavailable);
    let cas = GrpcCas::connect(retrying(config(addr, "", hf), 3))
        .await
        .unwrap();
    // Unset in the capabilities: the default.
    assert_eq!(cas.max_batch_bytes().await.unwrap(), 3 * MIB);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);

    let small = content(500, 15);
    let big = content(4 * MIB + 1, 16);
    let (ds, db) = (blob(hf, &small), blob(hf, &big));
    let dir = tempfile::tempdir().unwrap();

    fake.fail_next(2, Code::Unavailable);
    let start = Instant::now();
    assert_eq!(
        cas.find_missing(vec![ds.clone()]).await.unwrap(),
        vec![ds.clone()]
    );
    // Waited at least 20 ms, then 40 ms (plus jitter).
    assert!(start.elapsed() >= Duration::from_millis(60));

    fake.fail_next(2, Code::DeadlineExceeded);
    cas.upload_blobs(vec![(ds.clone(), small.clone())])
        .await
        .unwrap();
    fake.fail_next(2, Code::ResourceExhausted);
    cas.upload_blobs(vec![(db.clone(), big.clone())])
        .await
        .unwrap();
    fake.fail_next(2, Code::Unavailable);
    assert_eq!(cas.read_blob(&ds).await.unwrap(), Some(small));
    fake.fail_next(2, Code::Unavailable);
    assert_eq!(cas.read_blob(&db).await.unwrap(), Some(big.clone()));
    fake.fail_next(2, Code::Unavailable);
    assert!(cas
        .download_to_file(&db, &dir.path().join("big"))
        .await
        .unwrap());
    assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), big);

    // A broken-off read resumes where it stopped.
    fake.read_offsets.lock().unwrap().clear();
    fake.break_reads.store(2, Ordering::SeqCst);
    assert_eq!(cas.read_blob(&db).await.unwrap(), Some(big.clone()));
    assert_eq!(
        *fake.read_offsets.lock().unwrap(),
        vec![0, MIB as i64, 2 * MIB as i64]
    );
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_final_errors() {
    let (fake, addr) = start_fake(1 << 30).await;
    let hf = HashFunction::GitSha1;
    let data = content(500, 17);
    let d = blob(hf, &data);

    // One attempt only: the second failure is not waited out.
    fake.fail_next(1, Code::Unavailable);
    let e = GrpcCas::connect(retrying(config(addr, "", hf), 1))
        .await
        .err()
        .expect("connect fails");
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
    let once = GrpcCas::connect(retrying(config(addr, "", hf), 1))
        .await
        .unwrap();
    // Announced limits above 4 MiB are capped.
    assert!(once.max_batch_bytes().await.unwrap() < 4 * MIB);
    let calls = fake.calls.load(Ordering::SeqCst);
    fake.fail_next(2, Code::Unavailable);
    let e = once.find_missing(vec![d.clone()]).await.unwrap_err();
    assert_eq!(status_code(&e), Some(Code::Unavailable), "{e}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls + 1);

    // Answers that are not transient are not retried.
    let three = GrpcCas::connect(retrying(config(addr, "", hf), 3))
        .await
        .unwrap();
    let calls = fake.calls.load(Ordering::SeqCst);
    fake.fail_next(1, Code::PermissionDenied);
    let e = three
        .upload_blobs(vec![(d.clone(), data.clone())])
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(Code::PermissionDenied), "{e}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls + 1);

    // Objects refused one by one.
    fake.refuse.store(true, Ordering::SeqCst);
    let e = three
        .upload_blobs(vec![(d.clone(), data.clone())])
        .await
        .unwrap_err();
    match e {
        RemoteError::Refused { hash, message } => {
            assert_eq!(hash, d.hash);
            assert!(message.contains("read-only"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn corrupt_downloads_are_detected() {
    for hf in MODES {
        let (fake, addr) = start_fake(0).await;
        let cas = GrpcCas::connect(config(addr, "", hf)).await.unwrap();
        let small = content(700, 18);
        let big = content(5 * MIB, 19);
        let (ds, db) = (blob(hf, &small), blob(hf, &big));
        cas.upload_blobs(vec![(ds.clone(), small), (db.clone(), big)])
            .await
            .unwrap();
        fake.corrupt.store(true, Ordering::SeqCst);

        let mut digests = vec![ds.clone(), db.clone()];
        if hf.is_native() {
            digests.push(unknown_size(&ds));
            digests.push(unknown_size(&db));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"old").unwrap();
        for d in &digests {
            let e = cas.read_blob(d).await.unwrap_err();
            assert!(
                matches!(&e, RemoteError::Corrupt { hash } if *hash == d.hash),
                "{e}"
            );
            for name in ["new", "kept"] {
                let e = cas
                    .download_to_file(d, &dir.path().join(name))
                    .await
                    .unwrap_err();
                assert!(matches!(e, RemoteError::Corrupt { .. }), "{e}");
            }
        }
        // Nothing written, nothing replaced, no temporary files left.
        assert_eq!(files_in(dir.path()), ["kept"]);
        assert_eq!(std::fs::read(dir.path().join("kept")).unwrap(), b"old");
    }
}

#[tokio::test]
async fn unreachable_endpoints_fail_fast() {
    // Nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = Instant::now();
    let e = GrpcCas::connect(GrpcCasConfig::new(local(port), "", HashFunction::Sha256))
        .await
        .err()
        .expect("nothing to connect to");
    assert!(start.elapsed() < Duration::from_secs(5));
    match &e {
        RemoteError::Connect { address, message } => {
            assert_eq!(*address, format!("127.0.0.1:{port}"));
            assert!(!message.is_empty());
        }
        other => panic!("expected a connect error, got {other}"),
    }
    eprintln!("closed port: {e}");

    // Set up lazily, the first call fails instead.
    let lazy =
        GrpcCas::connect_lazy(GrpcCasConfig::new(local(port), "", HashFunction::Sha256)).unwrap();
    let e = lazy
        .find_missing(vec![blob(HashFunction::Sha256, b"x")])
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(Code::Unavailable), "{e}");

    // A peer that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut config = GrpcCasConfig::new(local(silent_port), "", HashFunction::GitSha1);
    config.timeouts = GrpcTimeouts {
        connect: Duration::from_millis(300),
        call: Duration::from_millis(300),
    };
    config.retry = RetryConfig {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    let start = Instant::now();
    let e = GrpcCas::connect(config)
        .await
        .err()
        .expect("no answer is a failure");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
    eprintln!("silent peer: {e}");
    keep.abort();
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let hf = HashFunction::GitSha1;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    for (name, text) in [
        ("ca.crt", &pki.ca),
        ("server.crt", &pki.server_cert),
        ("server.key", &pki.server_key),
        ("client.crt", &pki.client_cert),
        ("client.key", &pki.client_key),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let build_root = BuildRoot::open(&dir.path().join("root")).unwrap();
    let endpoint = LocalEndpoint::new(
        &build_root,
        EndpointConfig {
            hash: hf,
            instance_name: None,
            runner: RunnerConfig {
                launcher: vec!["env".into(), "--".into()],
                default_timeout: Duration::from_secs(60),
                jobs: 1,
            },
        },
    );
    let listen = Listen {
        service: RemoteServiceConfig {
            server_cert: Some(dir.path().join("server.crt")),
            server_key: Some(dir.path().join("server.key")),
            ..Default::default()
        },
        client_ca: Some(dir.path().join("ca.crt")),
    };
    let server = jserve::daemon::start_services(&listen, Services::Execute(endpoint))
        .await
        .expect("TLS endpoint starts");
    let address = Address {
        host: "localhost".into(),
        port: server.addr.port(),
    };
    let tls = GrpcTls {
        ca_cert: Some(dir.path().join("ca.crt")),
        client_cert: Some(dir.path().join("client.crt")),
        client_key: Some(dir.path().join("client.key")),
    };
    let mut with_cert = GrpcCasConfig::new(address.clone(), "", hf);
    with_cert.tls = Some(tls.clone());
    let cas = GrpcCas::connect(with_cert).await.unwrap();
    let small = content(100, 20);
    let big = content(5 * MIB, 21);
    let (ds, db) = (blob(hf, &small), blob(hf, &big));
    cas.upload_blobs(vec![(ds.clone(), small.clone()), (db.clone(), big.clone())])
        .await
        .unwrap();
    assert_eq!(cas.read_blob(&ds).await.unwrap(), Some(small));
    assert_eq!(cas.read_blob(&db).await.unwrap(), Some(big));

    // Without a client certificate the endpoint does not talk to us.
    let mut without_cert = GrpcCasConfig::new(address.clone(), "", hf);
    without_cert.tls = Some(GrpcTls {
        client_cert: None,
        client_key: None,
        ..tls.clone()
    });
    let refused = match GrpcCas::connect(without_cert).await {
        Err(e) => e,
        Ok(cas) => cas.find_missing(vec![ds.clone()]).await.unwrap_err(),
    };
    eprintln!("without a client certificate: {refused}");

    // Plain HTTP/2 against TLS fails too.
    let plain = match GrpcCas::connect(GrpcCasConfig::new(address.clone(), "", hf)).await {
        Err(e) => e,
        Ok(cas) => cas.find_missing(vec![ds.clone()]).await.unwrap_err(),
    };
    eprintln!("plain: {plain}");

    // Bad TLS material is reported before any connection.
    let mut half = GrpcCasConfig::new(address.clone(), "", hf);
    half.tls = Some(GrpcTls {
        client_key: None,
        ..tls.clone()
    });
    let e = GrpcCas::connect(half)
        .await
        .err()
        .expect("cert without key");
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
    let mut missing_ca = GrpcCasConfig::new(address, "", hf);
    missing_ca.tls = Some(GrpcTls {
        ca_cert: Some(dir.path().join("nope.crt")),
        ..tls
    });
    let e = GrpcCas::connect(missing_ca)
        .await
        .err()
        .expect("unreadable CA");
    assert!(e.to_string().contains("nope.crt"), "{e}");
}

#[tokio::test]
async fn get_tree_lists_directories_in_compatible_mode() {
    use common::reapi::file;
    let ep = start_execute(HashFunction::Sha256, 1).await;
    let files = [
        ("a/b/c.txt", file("c")),
        ("a/d.txt", file("d")),
        ("e", file("e")),
    ]
    .into_iter()
    .collect();
    let root = ep.upload_tree(&files).await;
    let root = HashFunction::Sha256.digest_from_wire(&root).unwrap();
    let cas = GrpcCas::connect(config(ep.server.addr, "", HashFunction::Sha256))
        .await
        .unwrap();
    let dirs = cas
        .get_tree(&root, u64::MAX)
        .await
        .unwrap()
        .expect("GetTree answers");
    assert_eq!(dirs.len(), 3, "root, a, a/b");
    // A listing over the bound is refused, not held.
    let e = cas.get_tree(&root, 10).await.unwrap_err();
    assert!(matches!(e, RemoteError::TooLarge { .. }), "{e}");
    // A root the endpoint does not have is not listed.
    let absent = HashFunction::Sha256.digest_bytes(ObjectKind::Tree, b"no such directory");
    assert!(cas.get_tree(&absent, u64::MAX).await.unwrap().is_none());
    ep.server.shutdown().await.unwrap();

    // Native endpoints have no Directory trees to list.
    let ep = start_execute(HashFunction::GitSha1, 1).await;
    let cas = GrpcCas::connect(config(ep.server.addr, "", HashFunction::GitSha1))
        .await
        .unwrap();
    let tree = HashFunction::GitSha1.digest_bytes(ObjectKind::Tree, b"");
    assert!(cas.get_tree(&tree, u64::MAX).await.unwrap().is_none());
    ep.server.shutdown().await.unwrap();
}

/// Reads under bounds: small objects in memory, larger ones in the spill
/// file (also when a native digest carries no size), too large ones refused.
#[tokio::test]
async fn bounded_reads_spill_large_objects_and_refuse_oversized_ones() {
    use jserve::remote::{Fetched, ReadBounds};
    for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
        let ep = start_execute(hf, 1).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        ep.upload_blob(&data).await;
        let cas = GrpcCas::connect(config(ep.server.addr, "", hf))
            .await
            .unwrap();
        let mut digest = hf.digest_bytes(ObjectKind::File, &data);
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let sizes = if hf.is_native() {
            vec![true, false]
        } else {
            vec![true]
        };
        for size_known in sizes {
            // Native digests taken from git trees have no size.
            digest.size = if size_known { data.len() as u64 } else { 0 };
            let case = format!("{hf:?} size known: {size_known}");
            let bounds = |in_memory, max| ReadBounds {
                in_memory,
                max,
                spill: &spill,
            };
            let got = cas.read_bounded(&digest, bounds(1 << 20, 1 << 20)).await;
            assert_eq!(got.unwrap(), Some(Fetched::Memory(data.clone())), "{case}");
            assert!(!spill.exists(), "{case}");
            let got = cas.read_bounded(&digest, bounds(1000, 1 << 20)).await;
            assert_eq!(
                got.unwrap(),
                Some(Fetched::File(data.len() as u64)),
                "{case}"
            );
            assert_eq!(std::fs::read(&spill).unwrap(), data, "{case}");
            std::fs::remove_file(&spill).unwrap();
            let e = cas
                .read_bounded(&digest, bounds(1000, 50_000))
                .await
                .unwrap_err();
            assert!(matches!(e, RemoteError::TooLarge { .. }), "{case}: {e}");
            assert!(!spill.exists(), "{case}: a refused read leaves no file");
        }
        let absent = hf.digest_bytes(ObjectKind::File, b"not uploaded");
        let got = cas.read_bounded(
            &absent,
            ReadBounds {
                in_memory: 10,
                max: 100,
                spill: &spill,
            },
        );
        assert_eq!(got.await.unwrap(), None);
        ep.server.shutdown().await.unwrap();
    }
}

/// Batched reads of native digests without sizes (those taken from git
/// trees): what the endpoint has comes in one BatchReadBlobs call, trees
/// included; what is absent, or would make the answer too large, is left
/// out for reading one by one.
async fn check_sizeless_batches(cas: &GrpcCas, who: &str) {
    let small: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("small {i}\n").into_bytes())
        .collect();
    // Over the 16 MiB that an answer for sizeless digests may have.
    let big: Vec<u8> = (0..17u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest = |data: &[u8]| HashFunction::GitSha1.digest_bytes(ObjectKind::File, data);
    let mut blobs: Vec<(Digest, Vec<u8>)> = small.iter().map(|d| (digest(d), d.clone())).collect();
    blobs.push((digest(&big), big.clone()));
    let (tree, tree_bytes) = git_tree(&[("a", &blobs[0].0)]);
    blobs.push((tree.clone(), tree_bytes.clone()));
    cas.upload_blobs(blobs.clone()).await.unwrap();

    let absent = digest(b"never uploaded");
    let sizeless: Vec<Digest> = blobs.iter().map(|(d, _)| unknown_size(d)).collect();
    let mut asked = sizeless.clone();
    asked.push(unknown_size(&absent));
    // The small ones and the tree in one answer.
    let mut read = cas.read_small(asked, 1 << 20).await.unwrap();
    read.sort_by(|a, b| a.0.hash.cmp(&b.0.hash));
    let mut want: Vec<(String, Vec<u8>)> = blobs
        .iter()
        .filter(|(_, data)| data.len() < 1 << 20)
        .map(|(d, data)| (d.hash.clone(), data.clone()))
        .collect();
    want.sort();
    let got: Vec<(String, Vec<u8>)> = read.into_iter().map(|(d, data)| (d.hash, data)).collect();
    assert_eq!(got, want, "{who}");
    // The large one alone: its answer would be too large, so nothing.
    let big_alone = cas
        .read_small(vec![sizeless[3].clone()], 1 << 20)
        .await
        .unwrap();
    assert!(big_alone.is_empty(), "{who}");
}

#[tokio::test]
async fn sizeless_digests_are_read_in_batches() {
    let ep = start_execute(HashFunction::GitSha1, 1).await;
    let cas = GrpcCas::connect(config(ep.server.addr, "", HashFunction::GitSha1))
        .await
        .unwrap();
    check_sizeless_batches(&cas, "jserve").await;
    ep.server.shutdown().await.unwrap();
    // The reference's endpoint, of both generations.
    for (label, just) in [
        ("just execute 1.5", common::reference::reference_just()),
        ("just execute 1.6", common::reference::reference_just_16()),
    ] {
        let Some(just) = just else {
            println!("SKIPPED: {label} not installed");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let execute = common::endpoints::Execute::start(&just, dir.path(), false, None);
        let cas = GrpcCas::connect(GrpcCasConfig::new(
            local(execute.port),
            "",
            HashFunction::GitSha1,
        ))
        .await
        .unwrap();
        check_sizeless_batches(&cas, label).await;
    }
}
