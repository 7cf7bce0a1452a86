//! The Remote Asset API (build.bazel.remote.asset.v1 Fetch and Push) on
//! serve's port, driven by a Python client generated from the official
//! remote_asset.proto (tests/fixtures/remote_asset_client.py, grpcio-tools),
//! in native and compatible mode:
//!
//! * FetchDirectory of a git commit's subdirectory and of an archive's
//!   (named by its git blob id, checked against its SHA-256), with the tree
//!   in the endpoint's CAS;
//! * FetchBlob by git blob id, and in compatible mode by SHA-256 alone;
//! * what cannot be answered: NOT_FOUND naming the qualifiers, a checksum
//!   that does not match (ABORTED), unsupported qualifiers (INVALID_ARGUMENT
//!   with a BadRequest detail), a push of an absent blob (FAILED_PRECONDITION);
//! * Push of a directory and a blob, fetched back with the same URI and
//!   qualifiers only, and again after a restart on the same build root.
//!
//! Without a Python that has grpcio-tools the test prints `SKIPPED:` and
//! passes, except under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, content_addressable_storage_client::ContentAddressableStorageClient,
};
use common::endpoints::JserveServe;
use common::git::git;
use common::loc;
use jserve::digest::{HashFunction, ObjectKind};
use jserve::proto::serve_archive_tree_request::{ArchiveType::Tar, SymlinksResolve as Resolve};
use jserve::proto::serve_archive_tree_response::ServeArchiveTreeStatus as ArchiveStatus;
use prost::Message;
use serde_json::{json, Value};
use sha2::Digest as _;

/// A Python able to generate and run the client: BuildGrid's (CI installs
/// grpcio-tools there), `JSERVE_PYTHON`, or the system's.
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("JSERVE_PYTHON").map(PathBuf::from),
        common::procs::find_bgd().map(|b| b.with_file_name("python3")),
        Some(PathBuf::from("python3")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        common::procs::skip("no Python with grpcio and grpcio-tools (pip install grpcio-tools)");
    }
    found
}

/// Runs the client once over `calls`; one answer per call.
fn ask(python: &Path, serve: &JserveServe, calls: &[Value]) -> Vec<Value> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(python);
    cmd.arg(manifest.join("tests/fixtures/remote_asset_client.py"))
        .arg(manifest.join("proto"))
        .arg(serve.address());
    let input: String = calls.iter().map(|c| format!("{c}\n")).collect();
    let out = common::procs::output_with_stdin(&mut cmd, input.as_bytes());
    assert!(
        out.status.success(),
        "the client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), calls.len(), "one answer per call");
    answers
}

fn call(rpc: &str, request: Value) -> Value {
    json!({"rpc": rpc, "request": request})
}

fn qualifiers(pairs: &[(&str, &str)]) -> Value {
    pairs
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

fn sri(data: &[u8]) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
    )
}

/// The git id in a native REAPI digest: after the tree ("74") or blob
/// ("62") prefix justbuild's native protocol puts before it.
fn git_id<'a>(hash: &'a str, prefix: &str) -> &'a str {
    hash.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("native digest {hash} without the prefix {prefix}"))
}

/// The status code of a response (0 when unset, as JSON leaves it out).
fn status(answer: &Value) -> i64 {
    answer["response"]["status"]["code"].as_i64().unwrap_or(0)
}

/// The repository serve knows: sources and a tar.gz of a package.
struct Repo {
    dir: PathBuf,
    commit: String,
    archive: Vec<u8>,
    archive_id: String,
    readme_id: String,
}

fn make_repo(dir: &Path) -> Repo {
    let repo = dir.join("repo");
    let pkg = dir.join("pkg-src/pkg");
    std::fs::create_dir_all(repo.join("src/lib")).unwrap();
    std::fs::create_dir_all(pkg.join("sub")).unwrap();
    std::fs::write(repo.join("README"), "read me\n").unwrap();
    std::fs::write(repo.join("src/main.c"), "int main() { return 0; }\n").unwrap();
    std::fs::write(repo.join("src/lib/util.h"), "#pragma once\n").unwrap();
    std::fs::write(pkg.join("a.txt"), "a\n").unwrap();
    std::fs::write(pkg.join("sub/b.txt"), "b\n").unwrap();
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(repo.join("pkg.tar.gz"))
        .arg("pkg")
        .current_dir(pkg.parent().unwrap())
        .status()
        .unwrap();
    assert!(tar.success());
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "sources"]);
    Repo {
        commit: git(&repo, &["rev-parse", "HEAD"]),
        archive: std::fs::read(repo.join("pkg.tar.gz")).unwrap(),
        archive_id: git(&repo, &["rev-parse", "HEAD:pkg.tar.gz"]),
        readme_id: git(&repo, &["rev-parse", "HEAD:README"]),
        dir: repo,
    }
}

fn start(dir: &Path, repo: &Repo, compatible: bool) -> JserveServe {
    JserveServe::start(
        dir,
        json!({
            "local build root": loc(&dir.join("root")),
            "repositories": [loc(&repo.dir)],
            "remote service": {"port": 0},
            "execution endpoint": {"compatible": compatible},
        }),
    )
}

/// The entry names of a tree the endpoint (serve's own) has: the git tree's
/// in native mode, the Directory message's in compatible mode.
async fn tree_names(
    serve: &JserveServe,
    repo: &Repo,
    digest: &Value,
    compatible: bool,
) -> Vec<String> {
    let hash = digest["hash"].as_str().unwrap().to_string();
    if !compatible {
        let listing = git(&repo.dir, &["ls-tree", "--name-only", git_id(&hash, "74")]);
        return listing.lines().map(str::to_string).collect();
    }
    let size: i64 = digest["sizeBytes"].as_str().unwrap().parse().unwrap();
    let mut cas = ContentAddressableStorageClient::new(common::channel(serve.port).await);
    let read = cas
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![reapi::Digest {
                hash,
                size_bytes: size,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dir = reapi::Directory::decode(read.responses[0].data.as_ref()).unwrap();
    let mut names: Vec<String> = dir
        .files
        .iter()
        .map(|f| f.name.clone())
        .chain(dir.directories.iter().map(|d| d.name.clone()))
        .collect();
    names.sort();
    names
}

async fn fetch_and_push(compatible: bool) {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let serve_dir = tmp.path().join("serve");
    let serve = start(&serve_dir, &repo, compatible);
    let mode = if compatible { "compatible" } else { "native" };
    let function = if compatible { "SHA256" } else { "UNKNOWN" };
    let bad_archive_sri = sri(b"other bytes");
    let absent = if compatible {
        "0".repeat(64)
    } else {
        format!("62{}", "0".repeat(40))
    };
    let absent_git = "1".repeat(40);
    let answers = ask(
        &python,
        &serve,
        &[
            // 0: a commit's subdirectory.
            call(
                "FetchDirectory",
                json!({"uris": ["https://example.org/repo.git"],
                       "qualifiers": qualifiers(&[("resource_type", "application/x-git"),
                                                  ("vcs.commit", &repo.commit),
                                                  ("directory", "src")])}),
            ),
            // 1: an archive's subdirectory, checked against its SHA-256.
            call(
                "FetchDirectory",
                json!({"uris": ["https://example.org/pkg.tar.gz"],
                       "qualifiers": qualifiers(&[("resource_type", "application/gzip"),
                                                  ("jserve.git-blob-id", &repo.archive_id),
                                                  ("checksum.sri", &sri(&repo.archive)),
                                                  ("directory", "pkg")])}),
            ),
            // 2: the same with a checksum it does not have.
            call(
                "FetchDirectory",
                json!({"uris": ["https://example.org/pkg.tar.gz"],
                       "qualifiers": qualifiers(&[("resource_type", "application/gzip"),
                                                  ("jserve.git-blob-id", &repo.archive_id),
                                                  ("checksum.sri", &bad_archive_sri)])}),
            ),
            // 3: a blob by its git id.
            call(
                "FetchBlob",
                json!({"uris": ["https://example.org/README"],
                       "qualifiers": qualifiers(&[("jserve.git-blob-id", &repo.readme_id)])}),
            ),
            // 4: an unknown blob.
            call(
                "FetchBlob",
                json!({"uris": ["https://example.org/absent"],
                       "qualifiers": qualifiers(&[("jserve.git-blob-id", &absent_git)])}),
            ),
            // 5: a qualifier jserve does not know.
            call(
                "FetchBlob",
                json!({"uris": ["https://example.org/x"],
                       "qualifiers": qualifiers(&[("example.unknown", "x")])}),
            ),
            // 6: by SHA-256 alone (the README, in the CAS since 3).
            call(
                "FetchBlob",
                json!({"uris": ["https://example.org/README"],
                       "qualifiers": qualifiers(&[("checksum.sri", &sri(b"read me\n"))])}),
            ),
            // 7: a directory of nothing in particular.
            call("FetchDirectory", json!({"uris": ["https://example.org/x"]})),
            // 8: a push of what the endpoint does not have.
            call(
                "PushBlob",
                json!({"uris": ["urn:jserve:absent"],
                       "blobDigest": {"hash": absent, "sizeBytes": "5"}}),
            ),
            // 9: another digest function.
            call(
                "FetchBlob",
                json!({"uris": ["https://example.org/README"], "digestFunction": "MD5",
                       "qualifiers": qualifiers(&[("jserve.git-blob-id", &repo.readme_id)])}),
            ),
        ],
    )
    .clone();

    let src = &answers[0]["response"];
    assert_eq!(status(&answers[0]), 0, "{mode}: {:?}", answers[0]);
    assert_eq!(src["uri"], "https://example.org/repo.git");
    assert_eq!(
        src["digestFunction"].as_str().unwrap_or("UNKNOWN"),
        function
    );
    let names = tree_names(&serve, &repo, &src["rootDirectoryDigest"], compatible).await;
    assert_eq!(names, ["lib", "main.c"], "{mode}");
    if !compatible {
        let expected = git(&repo.dir, &["rev-parse", &format!("{}:src", repo.commit)]);
        let hash = src["rootDirectoryDigest"]["hash"].as_str().unwrap();
        assert_eq!(git_id(hash, "74"), expected);
    }

    assert_eq!(status(&answers[1]), 0, "{mode}: {:?}", answers[1]);
    let pkg = answers[1]["response"]["rootDirectoryDigest"].clone();
    let names = if compatible {
        tree_names(&serve, &repo, &pkg, true).await
    } else {
        // The archive's tree is in serve's git cache, not the repository.
        let cache = serve_dir.join("root/repositories/generation-0/git");
        let hash = git_id(pkg["hash"].as_str().unwrap(), "74");
        let listing = git(&cache, &["ls-tree", "--name-only", hash]);
        listing.lines().map(str::to_string).collect()
    };
    assert_eq!(names, ["a.txt", "sub"], "{mode}");

    assert_eq!(status(&answers[2]), 10, "{mode}: ABORTED: {:?}", answers[2]);

    assert_eq!(status(&answers[3]), 0, "{mode}: {:?}", answers[3]);
    let readme = answers[3]["response"]["blobDigest"].clone();
    if compatible {
        assert_eq!(
            readme["hash"],
            hex::encode(sha2::Sha256::digest(b"read me\n"))
        );
    } else {
        assert_eq!(
            git_id(readme["hash"].as_str().unwrap(), "62"),
            repo.readme_id
        );
    }

    assert_eq!(
        status(&answers[4]),
        5,
        "{mode}: NOT_FOUND: {:?}",
        answers[4]
    );
    let message = answers[4]["response"]["status"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains(&format!("jserve.git-blob-id={absent_git}")),
        "{mode}: the qualifiers tried: {message}"
    );

    assert_eq!(answers[5]["error"]["code"], "INVALID_ARGUMENT", "{mode}");
    assert_eq!(
        answers[5]["error"]["violations"],
        json!([{"field": "qualifiers.name", "description": "\"example.unknown\" not supported"}]),
        "{mode}"
    );

    if compatible {
        assert_eq!(status(&answers[6]), 0, "{mode}: {:?}", answers[6]);
        assert_eq!(answers[6]["response"]["blobDigest"], readme);
    } else {
        // Native digests are git ids: a SHA-256 names nothing.
        assert_eq!(status(&answers[6]), 5, "{mode}: {:?}", answers[6]);
    }
    assert_eq!(answers[7]["error"]["code"], "INVALID_ARGUMENT", "{mode}");
    assert_eq!(answers[8]["error"]["code"], "FAILED_PRECONDITION", "{mode}");
    assert_eq!(answers[9]["error"]["code"], "INVALID_ARGUMENT", "{mode}");

    // Pushed assets, fetched back by URI and qualifiers.
    let canonical = qualifiers(&[("bazel.canonical_id", "pkg-1.0")]);
    let pushed = [
        call(
            "FetchDirectory",
            json!({"uris": ["urn:example:pkg"], "qualifiers": canonical}),
        ),
        call(
            "FetchBlob",
            json!({"uris": ["mirror://readme", "urn:example:readme"]}),
        ),
        // Other qualifiers: not the pushed directory.
        call(
            "FetchDirectory",
            json!({"uris": ["urn:example:pkg"],
                   "qualifiers": qualifiers(&[("bazel.canonical_id", "pkg-2.0")])}),
        ),
        // Content older than accepted.
        call(
            "FetchBlob",
            json!({"uris": ["urn:example:readme"], "oldestContentAccepted": "2100-01-01T00:00:00Z"}),
        ),
    ];
    let mut calls = vec![
        call(
            "PushDirectory",
            json!({"uris": ["urn:example:pkg"], "qualifiers": canonical,
                   "rootDirectoryDigest": pkg}),
        ),
        call(
            "PushBlob",
            json!({"uris": ["urn:example:readme"], "blobDigest": readme}),
        ),
    ];
    calls.extend(pushed.iter().cloned());
    let answers = ask(&python, &serve, &calls);
    assert_eq!(
        answers[0]["response"],
        json!({}),
        "{mode}: {:?}",
        answers[0]
    );
    assert_eq!(
        answers[1]["response"],
        json!({}),
        "{mode}: {:?}",
        answers[1]
    );
    let check = |answers: &[Value], when: &str| {
        assert_eq!(status(&answers[0]), 0, "{mode}, {when}: {:?}", answers[0]);
        assert_eq!(
            answers[0]["response"]["rootDirectoryDigest"], pkg,
            "{mode}, {when}"
        );
        assert_eq!(status(&answers[1]), 0, "{mode}, {when}: {:?}", answers[1]);
        assert_eq!(
            answers[1]["response"]["uri"], "urn:example:readme",
            "{mode}, {when}"
        );
        assert_eq!(
            answers[1]["response"]["blobDigest"], readme,
            "{mode}, {when}"
        );
        assert_eq!(
            answers[2]["error"]["code"], "INVALID_ARGUMENT",
            "{mode}, {when}"
        );
        assert_eq!(status(&answers[3]), 5, "{mode}, {when}: {:?}", answers[3]);
    };
    check(&answers[2..], "after the push");

    // The pushes are in the build root: a restarted serve answers them.
    drop(serve);
    let serve = start(&serve_dir, &repo, compatible);
    check(&ask(&python, &serve, &pushed), "after a restart");

    // An archive only the endpoint has, pushed with its git blob id: then
    // ServeArchiveTree knows it (in compatible mode only through the push).
    let other = tmp.path().join("other.tar.gz");
    let made = Command::new("tar")
        .arg("-czf")
        .arg(&other)
        .arg("README")
        .current_dir(&repo.dir)
        .status()
        .unwrap();
    assert!(made.success());
    let other_id = git(&repo.dir, &["hash-object", other.to_str().unwrap()]);
    let bytes = std::fs::read(&other).unwrap();
    let digest = upload(&serve, &bytes, compatible).await;
    let mut source_tree = common::clients::SourceTree::new(common::channel(serve.port).await);
    if compatible {
        assert_eq!(
            unpacked(&mut source_tree, &other_id).await,
            ArchiveStatus::NotFound as i32,
            "{mode}"
        );
    }
    let push = |id: &str| {
        call(
            "PushBlob",
            json!({"uris": ["https://example.org/other.tar.gz"],
                   "qualifiers": qualifiers(&[("jserve.git-blob-id", id)]),
                   "blobDigest": digest}),
        )
    };
    let answers = ask(&python, &serve, &[push(&"2".repeat(40)), push(&other_id)]);
    assert_eq!(
        answers[0]["error"]["code"], "INVALID_ARGUMENT",
        "{mode}: a wrong git id"
    );
    assert_eq!(
        answers[1]["response"],
        json!({}),
        "{mode}: {:?}",
        answers[1]
    );
    assert_eq!(
        unpacked(&mut source_tree, &other_id).await,
        ArchiveStatus::Ok as i32,
        "{mode}"
    );
}

/// The status ServeArchiveTree answers for the tar archive `id`.
async fn unpacked(st: &mut common::clients::SourceTree, id: &str) -> i32 {
    st.archive_tree(id, Tar, "", Resolve::None, false)
        .await
        .status
}

/// Uploads `data` to serve's own endpoint; its digest as JSON.
async fn upload(serve: &JserveServe, data: &[u8], compatible: bool) -> Value {
    let hash = if compatible {
        HashFunction::Sha256
    } else {
        HashFunction::GitSha1
    };
    let digest = hash.digest_bytes(ObjectKind::File, data).to_wire(hash);
    let mut cas = ContentAddressableStorageClient::new(common::channel(serve.port).await);
    let stored = cas
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(digest.clone()),
                data: data.to_vec(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.responses[0].status.as_ref().map_or(0, |s| s.code), 0);
    json!({"hash": digest.hash, "sizeBytes": digest.size_bytes.to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native() {
    fetch_and_push(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible() {
    fetch_and_push(true).await;
}
