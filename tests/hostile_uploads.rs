//! Unfinished uploads against the real daemon, run with a 256-descriptor
//! limit: hundreds of ByteStream writes that send one chunk and never
//! finish must neither hold a descriptor each nor grow without bound, and
//! uploads of other clients keep working.

mod common;

use std::time::{Duration, Instant};

use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
use common::endpoints::JserveServe;
use jserve::digest::{HashFunction, ObjectKind};
use serde_json::json;
use tonic::transport::Channel;

const HELD: usize = 300;
const DESCRIPTORS: u64 = 256;

fn blob(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

fn resource(data: &[u8], n: usize) -> String {
    let hf = HashFunction::GitSha1;
    let d = hf.digest_bytes(ObjectKind::File, data).to_wire(hf);
    format!(
        "uploads/00000000-0000-4000-8000-{n:012}/blobs/{}/{}",
        d.hash, d.size_bytes
    )
}

/// The resource of held write `n`: a 1 MiB blob that is never completed,
/// so its id need not match any content.
fn held(n: usize) -> String {
    format!("uploads/00000000-0000-4000-8000-{n:012}/blobs/62{n:040x}/1048576")
}

/// A complete ByteStream write of `data`.
async fn write_all(channel: Channel, data: &[u8], n: usize) -> Result<i64, tonic::Status> {
    let name = resource(data, n);
    let chunks: Vec<WriteRequest> = data
        .chunks(256 << 10)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * (256 << 10)) as i64,
            finish_write: (i + 1) * (256 << 10) >= data.len(),
            data: c.to_vec(),
        })
        .collect();
    let r = ByteStreamClient::new(channel)
        .write(tokio_stream::iter(chunks))
        .await?;
    Ok(r.into_inner().committed_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_uploads_hold_no_descriptors_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = JserveServe::start_in(dir.path(), json!({}), Some(DESCRIPTORS));
    let port = serve.port;

    // Writes that send one chunk each and keep their streams open, over a
    // few connections.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(common::channel(port).await);
    }
    // One after the other, each staged before the next starts (so the
    // newest is known to be the one just sent).
    let mut bs = ByteStreamClient::new(channels[0].clone());
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for n in 0..HELD {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WriteRequest {
            resource_name: held(n),
            write_offset: 0,
            finish_write: false,
            data: vec![n as u8; 1024],
        })
        .await
        .unwrap();
        senders.push(tx);
        let mut client = ByteStreamClient::new(channels[n % channels.len()].clone());
        calls.push(tokio::spawn(async move {
            client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = bs
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: held(n),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().committed_size == 1024) {
                break;
            }
            assert!(Instant::now() < deadline, "write {n}:\n{}", serve.log());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // All still streaming; only the most recent few are kept for resumption.
    assert!(calls.iter().all(|c| !c.is_finished()), "{}", serve.log());
    let mut kept = 0;
    for n in 0..HELD {
        let status = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: held(n),
            })
            .await;
        if let Ok(s) = status {
            assert_eq!(s.into_inner().committed_size, 1024);
            kept += 1;
        }
    }
    assert!(
        (1..=64).contains(&kept),
        "{kept} unfinished uploads kept for one client"
    );

    // Other uploads still work: a ByteStream write and a batch, from a new
    // connection (the daemon has descriptors left).
    let fresh = common::channel(port).await;
    let big = blob(HELD + 1, 3 << 20);
    assert_eq!(
        write_all(fresh.clone(), &big, HELD + 1).await.unwrap(),
        big.len() as i64
    );
    let hf = HashFunction::GitSha1;
    let small = blob(HELD + 2, 1000);
    let digest = hf.digest_bytes(ObjectKind::File, &small).to_wire(hf);
    common::reapi::batch_upload(fresh, &[(&digest, &small)]).await;
    drop(senders);
    assert!(serve.group.try_wait().is_none(), "{}", serve.log());
}
