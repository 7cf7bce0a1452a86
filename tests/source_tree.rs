//! The SourceTree service over gRPC, with jserve as its own endpoint in both
//! hash modes, against git repositories the tests make.

mod common;

use common::git::git;

use std::path::{Path, PathBuf};
use std::process::Command;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::clients::SourceTree;
use common::*;
use jserve::proto::*;
use serde_json::json;
use tonic::transport::Channel;

/// A repository with one commit: files, an executable, a symlink, a subdir.
fn make_repo(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("README"), "readme\n").unwrap();
    std::fs::write(dir.join("sub/a.txt"), "a\n").unwrap();
    std::fs::write(dir.join("sub/deeper/b.txt"), "b\n").unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/a.txt", dir.join("link")).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "c"]);
    (
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["rev-parse", "HEAD^{tree}"]),
    )
}

struct Serve {
    server: jserve::daemon::RunningServer,
    dir: tempfile::TempDir,
    repo: PathBuf,
    commit: String,
    tree: String,
    compatible: bool,
}

async fn start_serve(compatible: bool) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (commit, tree) = make_repo(&repo);
    let mut extra = json!({"repositories": [loc(&repo)]});
    if compatible {
        extra["execution endpoint"] = json!({"compatible": true});
    }
    let server = start(&config_in(dir.path(), extra)).await;
    Serve {
        server,
        dir,
        repo,
        commit,
        tree,
        compatible,
    }
}

impl Serve {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.server.addr.port()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
    async fn client(&self) -> SourceTree {
        SourceTree::new(self.channel().await)
    }
    fn git_cache(&self) -> PathBuf {
        self.dir
            .path()
            .join("build-root/repositories/generation-0/git")
    }
    /// Reads an object from the endpoint's CAS through ByteStream.
    async fn read(&self, d: &reapi::Digest) -> Option<Vec<u8>> {
        use bazel_remote_apis::google::bytestream::{
            byte_stream_client::ByteStreamClient, ReadRequest,
        };
        let mut c = ByteStreamClient::new(self.channel().await);
        let mut stream = c
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.ok()? {
            data.extend(chunk.data);
        }
        Some(data)
    }
}

/// Checks that every object below a synced tree is readable at the endpoint.
async fn assert_tree_readable(s: &Serve, digest: &reapi::Digest, expect_files: usize) {
    let mut files = 0;
    let mut stack = vec![digest.clone()];
    while let Some(d) = stack.pop() {
        let bytes = s
            .read(&d)
            .await
            .unwrap_or_else(|| panic!("{} readable", d.hash));
        if s.compatible {
            use prost::Message;
            let dir = reapi::Directory::decode(bytes.as_slice()).unwrap();
            for f in dir.files {
                assert!(s.read(f.digest.as_ref().unwrap()).await.is_some());
                files += 1;
            }
            stack.extend(dir.directories.into_iter().map(|d| d.digest.unwrap()));
        } else {
            for e in jserve::digest::parse_git_tree(&bytes).unwrap() {
                let id = hex::encode(e.id);
                if e.kind == jserve::digest::ObjectKind::Tree {
                    stack.push(reapi::Digest {
                        hash: format!("74{id}"),
                        size_bytes: 0,
                    });
                } else {
                    assert!(s
                        .read(&reapi::Digest {
                            hash: format!("62{id}"),
                            size_bytes: 0
                        })
                        .await
                        .is_some());
                    if e.kind != jserve::digest::ObjectKind::Symlink {
                        files += 1;
                    }
                }
            }
        }
    }
    assert_eq!(files, expect_files);
}

#[tokio::test]
async fn commit_tree_in_both_modes() {
    for compatible in [false, true] {
        let s = start_serve(compatible).await;
        let mut c = s.client().await;
        let r = c.commit_tree(s.commit.clone(), ".", false).await;
        assert_eq!(r.status, 0);
        assert_eq!(r.tree, s.tree);
        assert!(r.digest.is_none(), "no digest without sync");

        let sub = git(&s.repo, &["rev-parse", "HEAD:sub"]);
        let r = c.commit_tree(s.commit.clone(), "sub", true).await;
        assert_eq!(
            (r.status, r.tree.as_str()),
            (0, sub.as_str()),
            "compatible={compatible}"
        );
        let digest = r.digest.expect("digest after sync");
        if compatible {
            assert_eq!(digest.hash.len(), 64);
            assert!(digest.size_bytes > 0);
        } else {
            assert_eq!(digest.hash, format!("74{sub}"));
            assert_eq!(digest.size_bytes, 0);
        }
        assert_tree_readable(&s, &digest, 2).await;

        // The whole commit tree syncs too (symlinks, executables).
        let r = c.commit_tree(s.commit.clone(), ".", true).await;
        assert_tree_readable(&s, &r.digest.unwrap(), 4).await;

        let unknown = c.commit_tree("1".repeat(40), ".", false).await;
        assert_eq!(
            unknown.status,
            serve_commit_tree_response::ServeCommitTreeStatus::NotFound as i32
        );
        let missing_dir = c.commit_tree(s.commit.clone(), "nope", false).await;
        assert_eq!(
            missing_dir.status,
            serve_commit_tree_response::ServeCommitTreeStatus::InternalError as i32
        );
        let bad = c.commit_tree("not-a-commit", ".", false).await;
        assert_eq!(
            bad.status,
            serve_commit_tree_response::ServeCommitTreeStatus::InternalError as i32
        );
        s.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn content_and_tree() {
    for compatible in [false, true] {
        let s = start_serve(compatible).await;
        let mut c = s.client().await;
        let blob = git(&s.repo, &["rev-parse", "HEAD:README"]);
        let r = c.content(blob.clone()).await;
        assert_eq!(r.status, 0);
        let d = r.digest.unwrap();
        assert_eq!(s.read(&d).await.unwrap(), b"readme\n");
        if !compatible {
            assert_eq!(d.hash, format!("62{blob}"));
        }
        let r = c.content("2".repeat(40)).await;
        assert_eq!(
            r.status,
            serve_content_response::ServeContentStatus::NotFound as i32
        );
        let r = c.content("xyz").await;
        assert_eq!(
            r.status,
            serve_content_response::ServeContentStatus::InternalError as i32
        );

        let r = c.tree(s.tree.clone()).await;
        assert_eq!(r.status, 0);
        assert_tree_readable(&s, &r.digest.unwrap(), 4).await;
        let r = c.tree("3".repeat(40)).await;
        assert_eq!(
            r.status,
            serve_tree_response::ServeTreeStatus::NotFound as i32
        );
        s.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn distdir_tree() {
    for compatible in [false, true] {
        let s = start_serve(compatible).await;
        let mut c = s.client().await;
        let readme = git(&s.repo, &["rev-parse", "HEAD:README"]);
        let a = git(&s.repo, &["rev-parse", "HEAD:sub/a.txt"]);
        let files = vec![
            serve_distdir_tree_request::Distfile {
                name: "readme.txt".into(),
                content: readme.clone(),
                executable: false,
            },
            serve_distdir_tree_request::Distfile {
                name: "a.sh".into(),
                content: a.clone(),
                executable: true,
            },
        ];
        let r = c.distdir(files.clone(), true).await;
        assert_eq!(r.status, 0, "compatible={compatible}");
        let expected = {
            let input = format!("100755 blob {a}\ta.sh\n100644 blob {readme}\treadme.txt\n");
            let mut mktree = Command::new("git");
            mktree.args(["mktree"]).current_dir(&s.repo);
            let out = common::procs::output_with_stdin(&mut mktree, input.as_bytes());
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(r.tree, expected);
        assert_tree_readable(&s, &r.digest.unwrap(), 2).await;
        // The distdir is now in the git cache, kept by a just-mr style commit.
        assert_eq!(git(&s.git_cache(), &["cat-file", "-t", &expected]), "tree");
        assert!(git(&s.git_cache(), &["tag", "-l", "keep-*"]).contains("keep-"));

        let mut unknown = files.clone();
        unknown.push(serve_distdir_tree_request::Distfile {
            name: "x".into(),
            content: "4".repeat(40),
            executable: false,
        });
        let r = c.distdir(unknown, false).await;
        assert_eq!(
            r.status,
            serve_distdir_tree_response::ServeDistdirTreeStatus::NotFound as i32
        );
        assert!(r.tree.is_empty());
        s.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn check_root_tree_and_get_remote_tree() {
    for compatible in [false, true] {
        let s = start_serve(compatible).await;
        let mut c = s.client().await;
        let r = c.check_root_tree(s.tree.clone()).await;
        assert_eq!(r.status, 0);
        let r = c.check_root_tree("5".repeat(40)).await;
        assert_eq!(
            r.status,
            check_root_tree_response::CheckRootTreeStatus::NotFound as i32
        );

        // A tree the client has but serve does not: it uploads to the endpoint, then asks for it.
        let other = s.dir.path().join("other");
        std::fs::create_dir_all(other.join("d/empty")).unwrap();
        std::fs::write(other.join("d/f.txt"), "client only\n").unwrap();
        std::fs::write(other.join("d/same.txt"), "client only\n").unwrap();
        std::fs::write(other.join("run.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(other.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("d/f.txt", other.join("l")).unwrap();
        let scratch = git2::Repository::init_bare(s.dir.path().join("scratch")).unwrap();
        let tree = jserve::git::import_directory(&scratch, &other)
            .unwrap()
            .to_string();
        let r = c.check_root_tree(tree.clone()).await;
        assert_eq!(
            r.status,
            check_root_tree_response::CheckRootTreeStatus::NotFound as i32
        );

        let digest = upload_dir(&s, &other).await;
        let r = c.get_remote_tree(digest).await;
        assert_eq!(r.status, 0, "compatible={compatible}");
        // Round trip: the git cache now has exactly the client's git tree,
        // in a pack git itself accepts.
        assert_eq!(git(&s.git_cache(), &["cat-file", "-t", &tree]), "tree");
        git(&s.git_cache(), &["fsck", "--strict", "--no-dangling"]);
        let r = c.check_root_tree(tree.clone()).await;
        assert_eq!(r.status, 0);

        let absent = reapi::Digest {
            hash: if compatible {
                "6".repeat(64)
            } else {
                format!("74{}", "6".repeat(40))
            },
            size_bytes: 1,
        };
        let r = c.get_remote_tree(absent).await;
        assert_eq!(
            r.status,
            get_remote_tree_response::GetRemoteTreeStatus::FailedPrecondition as i32
        );
        s.server.shutdown().await.unwrap();
    }
}

/// Uploads a directory to the endpoint's CAS, as a client would; returns the root digest.
async fn upload_dir(s: &Serve, dir: &Path) -> reapi::Digest {
    use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
    use jserve::digest::HashFunction;
    // Store into a scratch CAS with jserve's own tree writer, then batch-upload every object.
    let hash = if s.compatible {
        HashFunction::Sha256
    } else {
        HashFunction::GitSha1
    };
    let scratch = tempfile::tempdir().unwrap();
    let cas =
        jserve::storage::Cas::new(hash, scratch.path().join("cas"), scratch.path().join("tmp"));
    let stored = jserve::storage::trees::store_directory(&cas, dir).unwrap();
    let mut objects = Vec::new();
    for store in ["casf", "casx", "cast"] {
        let base = scratch.path().join("cas").join(store);
        let Ok(shards) = std::fs::read_dir(&base) else {
            continue;
        };
        for shard in shards.flatten() {
            for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
                let hash_hex = format!(
                    "{}{}",
                    shard.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                let data = std::fs::read(f.path()).unwrap();
                let wire = match (hash, store) {
                    (HashFunction::GitSha1, "cast") => format!("74{hash_hex}"),
                    (HashFunction::GitSha1, _) => format!("62{hash_hex}"),
                    _ => hash_hex,
                };
                objects.push((
                    store == "cast",
                    reapi::Digest {
                        hash: wire,
                        size_bytes: data.len() as i64,
                    },
                    data,
                ));
            }
        }
    }
    // Blobs first, then trees (the endpoint may take trees only after their content).
    objects.sort_by_key(|(is_tree, _, _)| *is_tree);
    let requests = objects
        .into_iter()
        .map(
            |(_, digest, data)| reapi::batch_update_blobs_request::Request {
                digest: Some(digest),
                data,
                compressor: 0,
            },
        )
        .collect();
    let r = ContentAddressableStorageClient::new(s.channel().await)
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for resp in r.responses {
        assert_eq!(resp.status.unwrap().code, 0);
    }
    stored.root.to_wire(hash)
}

#[tokio::test]
async fn tree_structure() {
    let s = start_serve(false).await;
    let mut c = s.client().await;
    let r = c.tree_structure(s.tree.clone()).await;
    assert_eq!(r.status, 0);
    // Expected: the same shape with every file, executable and symlink on the empty blob.
    let empty = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
    let mktree = |input: String| {
        let mut child = Command::new("git")
            .args(["mktree", "--missing"])
            .current_dir(&s.repo)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let deeper = mktree(format!("100644 blob {empty}\tb.txt\n"));
    let sub = mktree(format!(
        "100644 blob {empty}\ta.txt\n040000 tree {deeper}\tdeeper\n"
    ));
    let root = mktree(format!(
        "100644 blob {empty}\tREADME\n120000 blob {empty}\tlink\n100755 blob {empty}\trun.sh\n040000 tree {sub}\tsub\n"
    ));
    assert_eq!(r.tree_structure_hash, root);
    assert_eq!(git(&s.git_cache(), &["cat-file", "-t", &root]), "tree");
    // Asked again, the memo answers with the same.
    let again = c.tree_structure(s.tree.clone()).await;
    assert_eq!(again.tree_structure_hash, root);
    let r = c.tree_structure("7".repeat(40)).await;
    assert_eq!(
        r.status,
        compute_tree_structure_response::ComputeTreeStructureStatus::NotFound as i32
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_goes_to_an_external_endpoint() {
    use jserve::digest::HashFunction;
    for compatible in [false, true] {
        let hash = if compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        };
        let external = common::reapi::start_execute(hash, 2).await;
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let (commit, tree) = make_repo(&repo);
        let address = format!("127.0.0.1:{}", external.server.addr.port());
        let config = config_in(
            dir.path(),
            json!({"repositories": [loc(&repo)],
                   "execution endpoint": {"address": address, "compatible": compatible}}),
        );
        let server = start(&config).await;
        let mut c = SourceTree::new(common::channel(server.addr.port()).await);
        let r = c.commit_tree(commit, ".", true).await;
        assert_eq!(
            (r.status, r.tree.as_str()),
            (0, tree.as_str()),
            "compatible={compatible}"
        );
        let digest = r.digest.unwrap();
        // The external endpoint has the root and a file below it.
        let root = external.read_blob(&digest).await;
        assert!(!root.is_empty());
        let readme = external.blob_digest(b"readme\n");
        assert_eq!(external.read_blob(&readme).await, b"readme\n");
        server.shutdown().await.unwrap();
        external.server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn unreachable_endpoint_gives_sync_error_and_bad_ids_internal_error() {
    for compatible in [false, true] {
        unreachable_endpoint_in(compatible).await;
    }
}

async fn unreachable_endpoint_in(compatible: bool) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    make_repo(&repo);
    // An archive in the repository too.
    let tar = Command::new("tar")
        .args(["-czf", "sub.tar.gz", "sub"])
        .current_dir(&repo)
        .status()
        .unwrap();
    assert!(tar.success());
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "archive"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let tree = git(&repo, &["rev-parse", "HEAD^{tree}"]);
    let archive = git(&repo, &["rev-parse", "HEAD:sub.tar.gz"]);
    // Nothing listens on port 1: every upload to the endpoint fails.
    let config = config_in(
        dir.path(),
        json!({"repositories": [loc(&repo)],
               "execution endpoint": {"address": "127.0.0.1:1", "compatible": compatible},
               "max-attempts": 1}),
    );
    let server = start(&config).await;
    let mut c = SourceTree::new(common::channel(server.addr.port()).await);
    let r = c.commit_tree(commit.clone(), ".", true).await;
    assert_eq!(
        r.status,
        serve_commit_tree_response::ServeCommitTreeStatus::SyncError as i32
    );
    assert_eq!(r.tree, tree, "the tree is named even when the sync fails");
    assert!(r.digest.is_none());
    // Without sync the endpoint is not needed.
    let r = c.commit_tree(commit, ".", false).await;
    assert_eq!(r.status, 0);
    let blob = git(&repo, &["rev-parse", "HEAD:README"]);
    let r = c.content(blob).await;
    assert_eq!(
        r.status,
        serve_content_response::ServeContentStatus::SyncError as i32
    );
    let r = c.tree(tree.clone()).await;
    assert_eq!(
        r.status,
        serve_tree_response::ServeTreeStatus::SyncError as i32
    );
    let r = c
        .serve_archive_tree(ServeArchiveTreeRequest {
            content: archive,
            sync_tree: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        serve_archive_tree_response::ServeArchiveTreeStatus::SyncError as i32
    );
    assert_eq!(
        r.tree.len(),
        40,
        "the unpacked tree is named even when the sync fails"
    );
    let readme = git(&repo, &["rev-parse", "HEAD:README"]);
    let r = c
        .distdir(
            vec![serve_distdir_tree_request::Distfile {
                name: "r".into(),
                content: readme,
                executable: false,
            }],
            true,
        )
        .await;
    assert_eq!(
        r.status,
        serve_distdir_tree_response::ServeDistdirTreeStatus::SyncError as i32
    );

    // Malformed ids are internal errors, as in the reference.
    let bad = "not-a-git-id".to_string();
    let r = c.tree(bad.clone()).await;
    assert_eq!(
        r.status,
        serve_tree_response::ServeTreeStatus::InternalError as i32
    );
    let r = c.check_root_tree(bad.clone()).await;
    assert_eq!(
        r.status,
        check_root_tree_response::CheckRootTreeStatus::InternalError as i32
    );
    let r = c.tree_structure(bad.clone()).await;
    assert_eq!(
        r.status,
        compute_tree_structure_response::ComputeTreeStructureStatus::InternalError as i32
    );
    let r = c
        .distdir(
            vec![serve_distdir_tree_request::Distfile {
                name: "x".into(),
                content: bad,
                executable: false,
            }],
            false,
        )
        .await;
    assert_eq!(
        r.status,
        serve_distdir_tree_response::ServeDistdirTreeStatus::InternalError as i32
    );
    // GetRemoteTree with the endpoint down: a failed precondition.
    let r = c
        .get_remote_tree(if compatible {
            reapi::Digest {
                hash: "9".repeat(64),
                size_bytes: 10,
            }
        } else {
            reapi::Digest {
                hash: format!("74{tree}"),
                size_bytes: 0,
            }
        })
        .await;
    assert_eq!(
        r.status,
        get_remote_tree_response::GetRemoteTreeStatus::FailedPrecondition as i32
    );
    server.shutdown().await.unwrap();
}

/// GetRemoteTree takes in what an archive may unpack to ("archive limits"),
/// large files included, whichever endpoint holds the tree, and refuses more.
#[tokio::test]
async fn get_remote_tree_within_the_archive_limits() {
    use common::reapi::{start_execute, Endpoint, TestFile};
    use jserve::digest::HashFunction;
    use std::collections::BTreeMap;

    const MIB: usize = 1 << 20;
    // Over the 1 MiB read into memory, so it comes through a file.
    let big = |seed: u8| -> Vec<u8> {
        (0..3 * MIB)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    };
    let small = |n: usize| TestFile {
        content: format!("file {n}\n").into_bytes(),
        executable: false,
    };
    for compatible in [false, true] {
        let hash = if compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        };
        for external in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let limits = json!({"max bytes": 5 * MIB, "max entries": 20});
            let mut extra = json!({"archive limits": limits});
            let outside = if external {
                let ep = start_execute(hash, 1).await;
                let address = format!("127.0.0.1:{}", ep.server.addr.port());
                extra["execution endpoint"] = json!({"address": address, "compatible": compatible});
                Some(ep)
            } else {
                extra["execution endpoint"] = json!({"compatible": compatible});
                None
            };
            let (_ctx, own) = common::start_serve(&config_in(dir.path(), extra), hash).await;
            let holder: &Endpoint = outside.as_ref().unwrap_or(&own);
            let mut c = SourceTree::new(own.channel.clone());
            let cache = dir.path().join("build-root/repositories/generation-0/git");
            let case = format!("compatible={compatible} external={external}");

            // Within the limits: a large file, an executable, a subdirectory.
            let files: BTreeMap<&str, TestFile> = [
                (
                    "big.bin",
                    TestFile {
                        content: big(1),
                        executable: false,
                    },
                ),
                ("sub/a.txt", small(1)),
                (
                    "run",
                    TestFile {
                        content: b"#!/bin/sh\n".to_vec(),
                        executable: true,
                    },
                ),
            ]
            .into_iter()
            .collect();
            let expected = git_tree_of(dir.path(), &files);
            let root = holder.upload_tree(&files).await;
            let r = c.get_remote_tree(root).await;
            assert_eq!(r.status, 0, "{case}");
            assert_eq!(
                git(&cache, &["cat-file", "-t", &expected]),
                "tree",
                "{case}"
            );
            let listed = git(&cache, &["ls-tree", "-r", &expected]);
            let blob = listed
                .lines()
                .find(|l| l.ends_with("\tbig.bin"))
                .and_then(|l| l.split_whitespace().nth(2))
                .unwrap()
                .to_string();
            let out = Command::new("git")
                .args(["-C", cache.to_str().unwrap(), "cat-file", "blob", &blob])
                .output()
                .unwrap();
            assert!(out.stdout == big(1), "{case}: the large file arrives whole");
            git(&cache, &["fsck", "--strict", "--no-dangling"]);

            // More bytes than "max bytes", or more entries than "max entries":
            // refused, and nothing of it lands in the git cache.
            let heavy: BTreeMap<&str, TestFile> = [("a.bin", big(2)), ("b.bin", big(3))]
                .into_iter()
                .map(|(name, content)| {
                    let file = TestFile {
                        content,
                        executable: false,
                    };
                    (name, file)
                })
                .collect();
            let names: Vec<String> = (0..25).map(|i| format!("f{i}")).collect();
            let many: BTreeMap<&str, TestFile> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), small(i)))
                .collect();
            for (what, files) in [("bytes", heavy), ("entries", many)] {
                let expected = git_tree_of(dir.path(), &files);
                let root = holder.upload_tree(&files).await;
                let r = c.get_remote_tree(root).await;
                assert_eq!(
                    r.status,
                    get_remote_tree_response::GetRemoteTreeStatus::FailedPrecondition as i32,
                    "{case}: too many {what}"
                );
                let present = Command::new("git")
                    .args(["-C", cache.to_str().unwrap(), "cat-file", "-e", &expected])
                    .status()
                    .unwrap();
                assert!(!present.success(), "{case}: too many {what}");
            }
            // Nothing is left in the staging area.
            let left: Vec<_> = walkdir(&dir.path().join("build-root/tmp"))
                .into_iter()
                .filter(|p| p.is_file() && !p.ends_with(".lock"))
                .collect();
            assert!(left.is_empty(), "{case}: left behind {left:?}");
            own.server.shutdown().await.unwrap();
            if let Some(ep) = outside {
                ep.server.shutdown().await.unwrap();
            }
        }
    }
}

/// The git tree id of `files` (written out under `base` and imported).
fn git_tree_of(
    base: &Path,
    files: &std::collections::BTreeMap<&str, common::reapi::TestFile>,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir_in(base).unwrap();
    for (path, f) in files {
        let p = out.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.content).unwrap();
        if f.executable {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let scratch = tempfile::tempdir_in(base).unwrap();
    let repo = git2::Repository::init_bare(scratch.path()).unwrap();
    jserve::git::import_directory(&repo, out.path())
        .unwrap()
        .to_string()
}

/// Every path below `dir` (none if it does not exist).
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
