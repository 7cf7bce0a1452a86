//! jserve's own REAPI endpoint, storage side, in both hash modes: batches,
//! ByteStream (large and resumed writes), the native tree invariant, and
//! malformed requests.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, batch_update_blobs_request,
};
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use common::reapi::*;
use jserve::digest::{serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind};
use tonic::Code;

const MODES: [HashFunction; 2] = [HashFunction::GitSha1, HashFunction::Sha256];

async fn missing(ep: &Endpoint, digests: &[reapi::Digest]) -> Vec<reapi::Digest> {
    ep.cas()
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: digests.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

#[tokio::test]
async fn capabilities_name_the_mode() {
    for (hash, function) in [(HashFunction::GitSha1, 2), (HashFunction::Sha256, 1)] {
        let ep = start_execute(hash, 2).await;
        let caps = ep
            .capabilities()
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let cache = caps.cache_capabilities.unwrap();
        assert_eq!(cache.digest_functions, vec![function]);
        assert!(cache.max_batch_total_size_bytes > 0);
        let exec = caps.execution_capabilities.unwrap();
        assert!(exec.exec_enabled);
        assert_eq!(exec.digest_function, function);
        assert_eq!(caps.high_api_version.unwrap().major, 2);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn batch_upload_find_and_read() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let a = ep.blob_digest(b"alpha");
        let b = ep.blob_digest(b"beta");
        let c = ep.blob_digest(b"never uploaded");
        ep.upload(&[(&a, b"alpha"), (&b, b"beta")]).await;
        assert_eq!(
            missing(&ep, &[a.clone(), b.clone(), c.clone()]).await,
            vec![c.clone()]
        );

        let read = ep
            .cas()
            .batch_read_blobs(reapi::BatchReadBlobsRequest {
                digests: vec![a.clone(), c.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.responses[0].data, b"alpha");
        assert_eq!(read.responses[0].status.clone().unwrap().code, 0);
        assert_eq!(
            read.responses[1].status.clone().unwrap().code,
            Code::NotFound as i32
        );

        // A blob whose content does not match its digest is refused and not stored.
        let lie = ep.blob_digest(b"the truth");
        let r = ep
            .cas()
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(lie.clone()),
                    data: b"a lie".to_vec(),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.responses[0].status.clone().unwrap().code,
            Code::InvalidArgument as i32,
            "{hash:?}"
        );
        assert_eq!(missing(&ep, std::slice::from_ref(&lie)).await, vec![lie]);

        // A size that lies is refused too.
        let mut wrong_size = ep.blob_digest(b"sized");
        wrong_size.size_bytes = 99;
        let r = ep
            .cas()
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(wrong_size),
                    data: b"sized".to_vec(),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.responses[0].status.clone().unwrap().code,
            Code::InvalidArgument as i32
        );
        ep.server.shutdown().await.unwrap();
    }
}

fn chunky(len: usize) -> Vec<u8> {
    let mut state = 0x2545F4914F6CDD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn write_stream(
    ep: &Endpoint,
    resource: &str,
    data: &[u8],
    from: usize,
    finish: bool,
) -> Result<i64, tonic::Status> {
    let chunk = 1 << 20;
    let mut requests = Vec::new();
    let mut offset = from;
    loop {
        let end = (offset + chunk).min(data.len());
        let last = end == data.len();
        requests.push(WriteRequest {
            resource_name: if offset == from {
                resource.to_string()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write: last && finish,
            data: data[offset..end].to_vec(),
        });
        offset = end;
        if last {
            break;
        }
    }
    ep.bytestream()
        .write(tokio_stream::iter(requests))
        .await
        .map(|r| r.into_inner().committed_size)
}

#[tokio::test]
async fn bytestream_64_mib_blob_and_ranges() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let data = chunky(64 << 20);
        let d = ep.blob_digest(&data);
        let resource = format!("uploads/4d1f-upload/blobs/{}/{}", d.hash, d.size_bytes);
        assert_eq!(
            write_stream(&ep, &resource, &data, 0, true).await.unwrap(),
            data.len() as i64
        );
        assert!(missing(&ep, std::slice::from_ref(&d)).await.is_empty());
        assert_eq!(ep.read_blob(&d).await, data, "{hash:?}");

        // Offset and limit.
        let mut stream = ep
            .bytestream()
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: 1000,
                read_limit: 5000,
            })
            .await
            .unwrap()
            .into_inner();
        let mut part = Vec::new();
        while let Some(c) = stream.message().await.unwrap() {
            part.extend(c.data);
        }
        assert_eq!(part, &data[1000..6000]);
        let past = ep
            .bytestream()
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: data.len() as i64 + 1,
                read_limit: 0,
            })
            .await;
        let err = match past {
            Err(e) => e,
            Ok(r) => r.into_inner().message().await.unwrap_err(),
        };
        assert_eq!(err.code(), Code::OutOfRange);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn interrupted_write_resumes() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let data = chunky(3 << 20);
        let d = ep.blob_digest(&data);
        let resource = format!("uploads/resume-1/blobs/{}/{}", d.hash, d.size_bytes);
        let half = &data[..(1 << 20) + 123];
        let err = write_stream(&ep, &resource, half, 0, false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "no finish_write");
        let status = ep
            .bytestream()
            .query_write_status(QueryWriteStatusRequest {
                resource_name: resource.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.committed_size, half.len() as i64);
        assert!(!status.complete);
        assert!(
            !missing(&ep, std::slice::from_ref(&d)).await.is_empty(),
            "nothing stored yet"
        );
        let committed = write_stream(&ep, &resource, &data, half.len(), true)
            .await
            .unwrap();
        assert_eq!(committed, data.len() as i64);
        assert_eq!(ep.read_blob(&d).await, data);
        let status = ep
            .bytestream()
            .query_write_status(QueryWriteStatusRequest {
                resource_name: resource,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(status.complete);
        ep.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn bytestream_refuses_wrong_content() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let d = ep.blob_digest(b"expected content");
        let resource = format!("uploads/u/blobs/{}/{}", d.hash, d.size_bytes);
        let err = write_stream(&ep, &resource, b"other  content!!", 0, true)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(missing(&ep, std::slice::from_ref(&d)).await.len(), 1);
        ep.server.shutdown().await.unwrap();
    }
}

fn git_tree(entries: &[(&str, ObjectKind, &str)]) -> (reapi::Digest, Vec<u8>) {
    let entries = entries
        .iter()
        .map(|(name, kind, hash)| GitTreeEntry {
            name: name.as_bytes().to_vec(),
            kind: *kind,
            id: hex::decode(hash).unwrap().try_into().unwrap(),
        })
        .collect();
    let bytes = serialize_git_tree(entries).unwrap();
    let d = Digest {
        hash: HashFunction::GitSha1.hash_bytes(ObjectKind::Tree, &bytes),
        size: bytes.len() as u64,
        is_tree: true,
    };
    (d.to_wire(HashFunction::GitSha1), bytes)
}

#[tokio::test]
async fn native_trees_need_their_content_first() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    let blob_hash = HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"leaf");
    let (tree, bytes) = git_tree(&[("leaf.txt", ObjectKind::File, &blob_hash)]);
    assert!(tree.hash.starts_with("74"));
    let r = ep
        .cas()
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(tree.clone()),
                data: bytes.clone(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = r.responses[0].status.clone().unwrap();
    assert_eq!(
        status.code,
        Code::FailedPrecondition as i32,
        "{}",
        status.message
    );
    assert_eq!(missing(&ep, std::slice::from_ref(&tree)).await.len(), 1);

    // Through ByteStream the same holds.
    let resource = format!("uploads/t/blobs/{}/{}", tree.hash, tree.size_bytes);
    let err = write_stream(&ep, &resource, &bytes, 0, true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Leaf and tree in one batch: accepted, the leaf is stored first.
    let leaf = ep.blob_digest(b"leaf");
    ep.upload(&[(&tree, bytes.as_slice()), (&leaf, b"leaf".as_slice())])
        .await;
    assert!(missing(&ep, &[tree.clone(), leaf]).await.is_empty());
    // Trees and blobs are readable without a size in native mode.
    let unsized_tree = reapi::Digest {
        hash: tree.hash.clone(),
        size_bytes: 0,
    };
    assert_eq!(ep.read_blob(&unsized_tree).await, bytes);
    let unsized_blob = reapi::Digest {
        hash: format!("62{blob_hash}"),
        size_bytes: 0,
    };
    assert_eq!(ep.read_blob(&unsized_blob).await, b"leaf");
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn compatible_get_tree_lists_directories() {
    let ep = start_execute(HashFunction::Sha256, 2).await;
    let files = [
        ("a/b/c.txt", file("c")),
        ("a/d.txt", file("d")),
        ("e", exe("e")),
    ]
    .into_iter()
    .collect();
    let root = ep.upload_tree(&files).await;
    let mut stream = ep
        .cas()
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(root.clone()),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut dirs = Vec::new();
    let mut tokens = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        dirs.extend(page.directories);
        tokens.push(page.next_page_token);
    }
    assert_eq!(dirs.len(), 3, "root, a, a/b");
    assert_eq!(
        tokens,
        ["1", "2", ""],
        "one page per directory, then the end"
    );
    // A token resumes where its page ended.
    let mut stream = ep
        .cas()
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(root),
            page_token: "2".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let page = stream.message().await.unwrap().unwrap();
    assert_eq!(page.directories, dirs[2..], "the last directory");
    assert!(page.next_page_token.is_empty());
    assert!(stream.message().await.unwrap().is_none());
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_get_clear_statuses() {
    let ep = start_execute_with(HashFunction::GitSha1, 2, Some("main")).await;
    let d = ep.blob_digest(b"x");
    // Unknown instance names.
    let err = ep
        .cas()
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "other".into(),
            blob_digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("instance"));
    // Malformed digests.
    for hash in ["xyz", "", &"a".repeat(41)] {
        let err = ep
            .cas()
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                instance_name: "main".into(),
                blob_digests: vec![reapi::Digest {
                    hash: hash.into(),
                    size_bytes: 1,
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hash:?}");
    }
    let err = ep
        .cas()
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "main".into(),
            blob_digests: vec![reapi::Digest {
                hash: d.hash.clone(),
                size_bytes: -5,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Malformed resource names, negative sizes, wrong instance, compression.
    for name in [
        "garbage".to_string(),
        format!("main/blobs/{}", d.hash),
        format!("main/blobs/{}/-3", d.hash),
        format!("main/blobs/{}/ten", d.hash),
        format!("other/blobs/{}/1", d.hash),
        format!("main/compressed-blobs/zstd/{}/1", d.hash),
    ] {
        let result = ep
            .bytestream()
            .read(ReadRequest {
                resource_name: name.clone(),
                ..Default::default()
            })
            .await;
        let err = match result {
            Err(e) => e,
            Ok(r) => r.into_inner().message().await.unwrap_err(),
        };
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::Unimplemented),
            "{name}: {err:?}"
        );
    }
    let err = write_stream(&ep, &format!("main/blobs/{}/1", d.hash), b"x", 0, true)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "writes need an uploads/ name"
    );
    ep.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn split_and_splice_blobs() {
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let data = chunky(2 << 20);
        let d = ep.blob_digest(&data);
        let resource = format!("uploads/s/blobs/{}/{}", d.hash, d.size_bytes);
        write_stream(&ep, &resource, &data, 0, true).await.unwrap();
        let chunks = ep
            .cas()
            .split_blob(reapi::SplitBlobRequest {
                blob_digest: Some(d.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .chunk_digests;
        assert!(chunks.len() > 1, "a 2 MiB blob is cut into several chunks");
        let mut joined = Vec::new();
        for c in &chunks {
            joined.extend(ep.read_blob(c).await);
        }
        assert_eq!(joined, data);

        // Splicing: a new blob made of the second half of the chunks, then the first.
        let (a, b) = chunks.split_at(chunks.len() / 2);
        let reordered: Vec<reapi::Digest> = b.iter().chain(a.iter()).cloned().collect();
        let mut expected = Vec::new();
        for c in &reordered {
            expected.extend(ep.read_blob(c).await);
        }
        let target = ep.blob_digest(&expected);
        let spliced = ep
            .cas()
            .splice_blob(reapi::SpliceBlobRequest {
                blob_digest: Some(target.clone()),
                chunk_digests: reordered.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(spliced.blob_digest.unwrap().hash, target.hash);
        assert_eq!(ep.read_blob(&target).await, expected);
        // A digest the chunks do not add up to is refused.
        let wrong = ep.blob_digest(b"something else");
        let err = ep
            .cas()
            .splice_blob(reapi::SpliceBlobRequest {
                blob_digest: Some(wrong),
                chunk_digests: reordered,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        ep.server.shutdown().await.unwrap();
    }
}

/// Field 3 of SplitBlobRequest is justbuild 1.5.x's chunking algorithm or the
/// upstream digest function; the values both can mean are taken, any other
/// digest function is refused, and so is a SpliceBlob digest function that is
/// not the endpoint's.
#[tokio::test]
async fn split_field3_of_either_generation() {
    const SHA256: i32 = 1;
    const SHA1: i32 = 2;
    const BLAKE3: i32 = 9;
    for hash in MODES {
        let ep = start_execute(hash, 2).await;
        let data = chunky(1 << 20);
        let d = ep.blob_digest(&data);
        let resource = format!("uploads/f/blobs/{}/{}", d.hash, d.size_bytes);
        write_stream(&ep, &resource, &data, 0, true).await.unwrap();
        let split = |field3: i32| {
            let mut cas = ep.cas();
            let d = d.clone();
            async move {
                cas.split_blob(reapi::SplitBlobRequest {
                    blob_digest: Some(d),
                    digest_function: field3,
                    ..Default::default()
                })
                .await
            }
        };
        // 0: 1.5.x IDENTITY (its probe) or upstream unset (1.6.x); 2: 1.5.x FASTCDC
        // even in compatible mode, where upstream it would mean SHA1; 1 likewise.
        let plain = split(0).await.unwrap().into_inner().chunk_digests;
        assert!(plain.len() > 1);
        for field3 in [SHA256, SHA1] {
            let chunks = split(field3).await.unwrap().into_inner().chunk_digests;
            assert_eq!(chunks, plain, "{hash:?}, field 3 = {field3}");
        }
        let err = split(BLAKE3).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hash:?}");

        let (own, other) = match hash {
            HashFunction::GitSha1 => (SHA1, SHA256),
            HashFunction::Sha256 => (SHA256, SHA1),
        };
        let splice = |function: i32| {
            let mut cas = ep.cas();
            let (d, chunks) = (d.clone(), plain.clone());
            async move {
                cas.splice_blob(reapi::SpliceBlobRequest {
                    blob_digest: Some(d),
                    chunk_digests: chunks,
                    digest_function: function,
                    ..Default::default()
                })
                .await
            }
        };
        for function in [0, own] {
            let spliced = splice(function).await.unwrap().into_inner();
            assert_eq!(spliced.blob_digest.unwrap().hash, d.hash);
        }
        let err = splice(other).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hash:?}");
        ep.server.shutdown().await.unwrap();
    }
}

/// Clients split native trees when they sync them between endpoints; the
/// chunks are blobs and splicing them back yields the tree, invariant checked.
#[tokio::test]
async fn native_trees_split_and_splice() {
    let ep = start_execute(HashFunction::GitSha1, 2).await;
    // Long varied names make a large tree object; every entry is the same blob.
    let leaf = ep.upload_blob(b"leaf").await;
    let noise = hex::encode(chunky(1500 * 100));
    let names: Vec<&str> = (0..1500).map(|i| &noise[i * 200..(i + 1) * 200]).collect();
    let entries: Vec<(&str, ObjectKind, &str)> = names
        .iter()
        .map(|n| (*n, ObjectKind::File, &leaf.hash[2..]))
        .collect();
    let (tree, bytes) = git_tree(&entries);
    ep.upload(&[(&tree, &bytes)]).await;

    let chunks = ep
        .cas()
        .split_blob(reapi::SplitBlobRequest {
            blob_digest: Some(tree.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .chunk_digests;
    assert!(chunks.len() > 1, "a {} byte tree", bytes.len());
    let mut joined = Vec::new();
    for c in &chunks {
        assert!(
            HashFunction::GitSha1
                .digest_from_wire(c)
                .is_ok_and(|c| !c.is_tree),
            "chunks are blobs"
        );
        joined.extend(ep.read_blob(c).await);
    }
    assert_eq!(joined, bytes);

    // Into another endpoint: the chunks alone are not enough, the entries must be there.
    let other = start_execute(HashFunction::GitSha1, 2).await;
    for c in &chunks {
        other.upload_blob(&ep.read_blob(c).await).await;
    }
    let splice = || {
        let mut cas = other.cas();
        let (tree, chunks) = (tree.clone(), chunks.clone());
        async move {
            cas.splice_blob(reapi::SpliceBlobRequest {
                blob_digest: Some(tree),
                chunk_digests: chunks,
                ..Default::default()
            })
            .await
        }
    };
    assert_eq!(splice().await.unwrap_err().code(), Code::FailedPrecondition);
    other.upload_blob(b"leaf").await;
    let spliced = splice().await.unwrap().into_inner();
    assert_eq!(spliced.blob_digest.unwrap(), tree);
    assert_eq!(missing(&other, std::slice::from_ref(&tree)).await.len(), 0);
    other.server.shutdown().await.unwrap();
    ep.server.shutdown().await.unwrap();
}
