//! REAPI endpoint benchmark: jserve's own endpoint started in-process and
//! driven over loopback gRPC, in native and compatible mode.
//!
//!   cargo bench --bench reapi [-- FILTER]     FILTER: bytestream, findmissing, execute
//!
//! Prints one line per figure; benches/README.md keeps the latest ones.

#[path = "../tests/common/reapi.rs"]
mod client;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use client::{exe, start_execute, Endpoint};
use jserve::digest::HashFunction;

const BLOB_MIB: usize = 256;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn bytestream(ep: &Endpoint, mode: &str) {
    let mut write_rates = Vec::new();
    let mut read_rates = Vec::new();
    for round in 0..3u64 {
        let data = pseudo_random(BLOB_MIB << 20, 0x9E37_79B9 + 2 * round);
        let d = ep.blob_digest(&data);
        let resource = format!("uploads/bench-{round}/blobs/{}/{}", d.hash, d.size_bytes);
        let chunk = 1 << 20;
        let requests: Vec<WriteRequest> = data
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| WriteRequest {
                resource_name: if i == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: (i * chunk) as i64,
                finish_write: (i + 1) * chunk >= data.len(),
                data: c.to_vec(),
            })
            .collect();
        let start = Instant::now();
        ep.bytestream()
            .write(tokio_stream::iter(requests))
            .await
            .expect("write");
        write_rates.push(BLOB_MIB as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut stream = ep
            .bytestream()
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                ..Default::default()
            })
            .await
            .expect("read")
            .into_inner();
        let mut n = 0usize;
        while let Some(c) = stream.message().await.expect("chunk") {
            n += c.data.len();
        }
        assert_eq!(n, data.len());
        read_rates.push(BLOB_MIB as f64 / start.elapsed().as_secs_f64());
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "{mode:10} bytestream write {BLOB_MIB} MiB: best {:.0} MiB/s (runs: {:?})",
        best(&write_rates),
        write_rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "{mode:10} bytestream read  {BLOB_MIB} MiB: best {:.0} MiB/s (runs: {:?})",
        best(&read_rates),
        read_rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
}

async fn find_missing(ep: &Endpoint, mode: &str) {
    // 1,000 digests, half of them present.
    let mut digests = Vec::new();
    for i in 0..1000u32 {
        let data = format!("blob number {i}");
        let d = if i % 2 == 0 {
            ep.upload_blob(data.as_bytes()).await
        } else {
            ep.blob_digest(data.as_bytes())
        };
        digests.push(d);
    }
    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let missing = ep
            .cas()
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: digests.clone(),
                ..Default::default()
            })
            .await
            .expect("find missing")
            .into_inner()
            .missing_blob_digests;
        times.push(start.elapsed());
        assert_eq!(missing.len(), 500);
    }
    println!(
        "{mode:10} FindMissingBlobs 1,000 digests: median {}, p90 {}",
        ms(median(times.clone())),
        ms(percentile(times, 0.9))
    );
}

async fn execute(ep: &Endpoint, mode: &str) {
    let files: BTreeMap<&str, client::TestFile> = [("marker", exe("x"))].into_iter().collect();
    let root = ep.upload_tree(&files).await;
    let action = ep.action(&root, &["true"], &[], 0, false).await;
    ep.execute(&action, false).await; // fill the action cache
    let mut uncached = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let op = ep.execute(&action, true).await;
        uncached.push(start.elapsed());
        assert!(!client::response_of(&op).cached_result);
    }
    let mut cached = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let op = ep.execute(&action, false).await;
        cached.push(start.elapsed());
        assert!(client::response_of(&op).cached_result);
    }
    println!(
        "{mode:10} Execute `true` uncached: median {}, p90 {}",
        ms(median(uncached.clone())),
        ms(percentile(uncached, 0.9))
    );
    println!(
        "{mode:10} Execute `true` cached:   median {}, p90 {}",
        ms(median(cached.clone())),
        ms(percentile(cached, 0.9))
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (hash, mode) in [
            (HashFunction::GitSha1, "native"),
            (HashFunction::Sha256, "compatible"),
        ] {
            let ep = start_execute(hash, 2).await;
            if "bytestream".contains(&filter) {
                bytestream(&ep, mode).await;
            }
            if "findmissing".contains(&filter) {
                find_missing(&ep, mode).await;
            }
            if "execute".contains(&filter) {
                execute(&ep, mode).await;
            }
            ep.server.shutdown().await.expect("shutdown");
        }
    });
}
