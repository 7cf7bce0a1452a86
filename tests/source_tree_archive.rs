//! ServeArchiveTree over gRPC: archives made with the system tools, found in a
//! configured repository; tree ids compared with git; the tree map; symlink
//! modes; broken archives; and the same answers as the reference `just serve`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::serve_archive_tree_response::ServeArchiveTreeStatus as S;
use jserve::proto::source_tree_client::SourceTreeClient;
use jserve::proto::*;
use serde_json::json;
use tonic::transport::Channel;

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Source content for archives: files, an executable, symlinks of every kind.
fn make_content(dir: &Path, hostile_links: bool) {
    std::fs::create_dir_all(dir.join("pkg/src/inner")).unwrap();
    std::fs::write(dir.join("pkg/README"), "readme\n").unwrap();
    std::fs::write(dir.join("pkg/src/main.c"), "int main() {}\n").unwrap();
    std::fs::write(dir.join("pkg/src/inner/x.h"), "x\n").unwrap();
    std::fs::write(dir.join("pkg/run.sh"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("pkg/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("main.c", dir.join("pkg/src/same-dir")).unwrap();
    std::os::unix::fs::symlink("../README", dir.join("pkg/src/upwards")).unwrap();
    std::os::unix::fs::symlink("src/inner", dir.join("pkg/dirlink")).unwrap();
    if hostile_links {
        std::os::unix::fs::symlink("../../outside", dir.join("pkg/escaping")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("pkg/absolute")).unwrap();
    }
}

/// Git tree id of a directory's content as git sees it (no empty dirs here).
fn git_tree_of(dir: &Path) -> String {
    run(dir, "git", &["init", "-q"]);
    run(dir, "git", &["add", "-A"]);
    let tree = run(dir, "git", &["write-tree"]);
    std::fs::remove_dir_all(dir.join(".git")).unwrap();
    tree
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: std::path::PathBuf,
    archives: std::collections::HashMap<&'static str, String>,
    clean_tree: String,
}

/// A repository holding archives of the same content in several formats.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_content(&src, false);
    let clean_tree = git_tree_of(&src);
    let hostile = dir.path().join("hostile");
    make_content(&hostile, true);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    run(
        &src,
        "tar",
        &["-czf", repo.join("a.tar.gz").to_str().unwrap(), "pkg"],
    );
    run(
        &src,
        "tar",
        &["-cjf", repo.join("a.tar.bz2").to_str().unwrap(), "pkg"],
    );
    run(
        &src,
        "tar",
        &["-cJf", repo.join("a.tar.xz").to_str().unwrap(), "pkg"],
    );
    run(
        &src,
        "tar",
        &["-cf", repo.join("a.tar").to_str().unwrap(), "pkg"],
    );
    run(
        &src,
        "zip",
        &["-qry", repo.join("a.zip").to_str().unwrap(), "pkg"],
    );
    run(
        &hostile,
        "tar",
        &["-czf", repo.join("hostile.tar.gz").to_str().unwrap(), "pkg"],
    );
    std::fs::write(repo.join("not-an-archive.tar"), "just text\n").unwrap();
    run(&repo, "git", &["init", "-q"]);
    run(&repo, "git", &["add", "-A"]);
    run(&repo, "git", &["commit", "-q", "-m", "archives"]);
    let mut archives = std::collections::HashMap::new();
    for name in [
        "a.tar.gz",
        "a.tar.bz2",
        "a.tar.xz",
        "a.tar",
        "a.zip",
        "hostile.tar.gz",
        "not-an-archive.tar",
    ] {
        archives.insert(
            name,
            run(&repo, "git", &["rev-parse", &format!("HEAD:{name}")]),
        );
    }
    Fixture {
        dir,
        repo,
        archives,
        clean_tree,
    }
}

/// Serve over the fixture's repository, native or compatible.
fn serve_config(f: &Fixture, compatible: bool) -> serde_json::Value {
    let mut extra = json!({"repositories": [loc(&f.repo)]});
    if compatible {
        extra["execution endpoint"] = json!({"compatible": true});
    }
    config_in(&f.dir.path().join(format!("serve-{compatible}")), extra)
}

async fn client(port: u16) -> SourceTreeClient<Channel> {
    SourceTreeClient::new(
        Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

async fn ask(
    c: &mut SourceTreeClient<Channel>,
    content: &str,
    kind: ArchiveType,
    subdir: &str,
    resolve: SymlinksResolve,
    sync: bool,
) -> ServeArchiveTreeResponse {
    c.serve_archive_tree(ServeArchiveTreeRequest {
        content: content.to_string(),
        archive_type: kind as i32,
        subdir: subdir.to_string(),
        resolve_symlinks: resolve as i32,
        sync_tree: sync,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn archives_of_every_format_give_gits_tree() {
    let f = fixture();
    for compatible in [false, true] {
        let server = start(&serve_config(&f, compatible)).await;
        let mut c = client(server.addr.port()).await;
        for (name, kind) in [
            ("a.tar.gz", ArchiveType::Tar),
            ("a.tar.bz2", ArchiveType::Tar),
            ("a.tar.xz", ArchiveType::Tar),
            ("a.tar", ArchiveType::Tar),
            ("a.zip", ArchiveType::Zip),
        ] {
            let r = ask(
                &mut c,
                &f.archives[name],
                kind,
                ".",
                SymlinksResolve::None,
                false,
            )
            .await;
            assert_eq!(r.status, S::Ok as i32, "{name}");
            assert_eq!(
                r.tree, f.clean_tree,
                "{name}: same tree as git computes for the content"
            );
            let sub = ask(
                &mut c,
                &f.archives[name],
                kind,
                "pkg/src",
                SymlinksResolve::None,
                true,
            )
            .await;
            assert_eq!(sub.status, S::Ok as i32, "{name}");
            let digest = sub.digest.expect("synced");
            assert_eq!(digest.hash.len(), if compatible { 64 } else { 42 });
        }
        // Unknown archive, and a subdir the archive lacks.
        let r = ask(
            &mut c,
            &"8".repeat(40),
            ArchiveType::Tar,
            ".",
            SymlinksResolve::None,
            false,
        )
        .await;
        assert_eq!(r.status, S::NotFound as i32);
        let r = ask(
            &mut c,
            &f.archives["a.tar"],
            ArchiveType::Tar,
            "nope",
            SymlinksResolve::None,
            false,
        )
        .await;
        assert_eq!(r.status, S::InternalError as i32);
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn broken_archives_leave_nothing_behind() {
    let f = fixture();
    let server = start(&config_in(
        f.dir.path(),
        json!({"repositories": [loc(&f.repo)]}),
    ))
    .await;
    let mut c = client(server.addr.port()).await;
    let text = &f.archives["not-an-archive.tar"];
    let r = ask(
        &mut c,
        text,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert_eq!(r.status, S::UnpackError as i32);
    let r = ask(
        &mut c,
        &f.archives["a.tar.gz"],
        ArchiveType::Zip,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert_eq!(r.status, S::UnpackError as i32, "a tar is not a zip");
    let map = f
        .dir
        .path()
        .join("build-root/repositories/generation-0/tree-map");
    assert!(!map.join("archive").join(text).exists());
    assert!(!map.join("zip").join(&f.archives["a.tar.gz"]).exists());
    // Staging is one directory per process (holding its lock file).
    let tmp = f.dir.path().join("build-root/tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .flat_map(|process| std::fs::read_dir(process.path()).unwrap().flatten())
        .filter(|e| e.file_name() != ".lock")
        .collect();
    assert!(leftovers.is_empty(), "nothing left in tmp: {leftovers:?}");
    server.shutdown().await.unwrap();

    // An archive that expands past the configured limit is refused.
    let limited = config_in(
        f.dir.path(),
        json!({"repositories": [loc(&f.repo)], "archive limits": {"max bytes": 10}}),
    );
    let server = start(&limited).await;
    let mut c = client(server.addr.port()).await;
    let r = ask(
        &mut c,
        &f.archives["a.tar.xz"],
        ArchiveType::Tar,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert_eq!(r.status, S::UnpackError as i32);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_request_comes_from_the_tree_map() {
    let f = fixture();
    let server = start(&config_in(
        f.dir.path(),
        json!({"repositories": [loc(&f.repo)]}),
    ))
    .await;
    let mut c = client(server.addr.port()).await;
    let id = &f.archives["a.tar.gz"];
    let first = ask(
        &mut c,
        id,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert_eq!(first.status, S::Ok as i32);
    let map = f
        .dir
        .path()
        .join("build-root/repositories/generation-0/tree-map/archive")
        .join(id);
    assert_eq!(std::fs::read_to_string(&map).unwrap(), f.clean_tree);
    // Take the archive away everywhere: the answer can only come from the map.
    let cas_copy = f
        .dir
        .path()
        .join("build-root/protocol-dependent/generation-0/git-sha1/casf")
        .join(&id[..2])
        .join(&id[2..]);
    std::fs::remove_file(&cas_copy).unwrap();
    std::fs::remove_dir_all(&f.repo).unwrap();
    let second = ask(
        &mut c,
        id,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert_eq!(second.status, S::Ok as i32);
    assert_eq!(second.tree, first.tree);
    server.shutdown().await.unwrap();
}

fn has_symlinks(repo: &Path, tree: &str) -> bool {
    let listing = run(repo, "git", &["ls-tree", "-r", tree]);
    listing.lines().any(|l| l.starts_with("120000"))
}

#[tokio::test]
async fn symlink_modes() {
    let f = fixture();
    let server = start(&config_in(
        f.dir.path(),
        json!({"repositories": [loc(&f.repo)]}),
    ))
    .await;
    let mut c = client(server.addr.port()).await;
    let cache = f
        .dir
        .path()
        .join("build-root/repositories/generation-0/git");
    let clean = &f.archives["a.tar.gz"];
    let hostile = &f.archives["hostile.tar.gz"];

    let none = ask(
        &mut c,
        clean,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::None,
        false,
    )
    .await;
    assert!(has_symlinks(&cache, &none.tree));
    let ignore = ask(
        &mut c,
        clean,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::Ignore,
        false,
    )
    .await;
    assert_eq!(ignore.status, S::Ok as i32);
    assert!(
        !has_symlinks(&cache, &ignore.tree),
        "ignore drops every link"
    );
    let partial = ask(
        &mut c,
        clean,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::Partial,
        false,
    )
    .await;
    assert_eq!(partial.status, S::Ok as i32);
    let links = run(&cache, "git", &["ls-tree", "-r", &partial.tree]);
    assert!(
        links.contains("same-dir"),
        "partial keeps non-upwards links: {links}"
    );
    assert!(
        !links
            .lines()
            .any(|l| l.starts_with("120000") && l.ends_with("upwards")),
        "{links}"
    );
    let complete = ask(
        &mut c,
        clean,
        ArchiveType::Tar,
        ".",
        SymlinksResolve::Complete,
        true,
    )
    .await;
    assert_eq!(complete.status, S::Ok as i32);
    assert!(
        !has_symlinks(&cache, &complete.tree),
        "complete leaves no links"
    );
    assert!(complete.digest.is_some());
    // Resolved trees are kept in the git cache and remembered.
    assert_eq!(
        run(
            &cache,
            "git",
            &["cat-file", "-t", &format!("keep-{}", complete.tree)]
        ),
        "tag"
    );

    // Escaping and absolute links: fine unresolved or ignored, an error otherwise.
    assert_eq!(
        ask(
            &mut c,
            hostile,
            ArchiveType::Tar,
            ".",
            SymlinksResolve::None,
            false
        )
        .await
        .status,
        S::Ok as i32
    );
    assert_eq!(
        ask(
            &mut c,
            hostile,
            ArchiveType::Tar,
            ".",
            SymlinksResolve::Ignore,
            false
        )
        .await
        .status,
        S::Ok as i32
    );
    for mode in [SymlinksResolve::Partial, SymlinksResolve::Complete] {
        let r = ask(&mut c, hostile, ArchiveType::Tar, ".", mode, false).await;
        assert_eq!(r.status, S::ResolveError as i32, "{mode:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_unpack_once() {
    let f = fixture();
    let server = start(&config_in(
        f.dir.path(),
        json!({"repositories": [loc(&f.repo)]}),
    ))
    .await;
    let port = server.addr.port();
    let id = f.archives["a.tar.xz"].clone();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client(port).await;
            ask(
                &mut c,
                &id,
                ArchiveType::Tar,
                ".",
                SymlinksResolve::None,
                false,
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, S::Ok as i32);
        assert_eq!(r.tree, f.clean_tree);
    }
    // One import, hence one keep tag for one commit.
    let cache = f
        .dir
        .path()
        .join("build-root/repositories/generation-0/git");
    let tags = run(&cache, "git", &["tag", "-l", "keep-*"]);
    assert_eq!(tags.lines().count(), 1, "{tags}");
    server.shutdown().await.unwrap();
}

/// An archive that holds a `.git` directory (a tarred checkout): served as
/// the reference `just serve` serves it, `.git` included in the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_holding_a_git_directory_agree_with_the_reference() {
    use common::reference::{reference_just, start_server};
    let Some(just) = reference_just() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("pkg/.git")).unwrap();
    std::fs::write(src.join("pkg/.git/config"), "[core]\n").unwrap();
    std::fs::write(src.join("pkg/a.txt"), "a\n").unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    run(
        &src,
        "tar",
        &["-czf", repo.join("pkg.tar.gz").to_str().unwrap(), "pkg"],
    );
    run(&repo, "git", &["init", "-q"]);
    run(&repo, "git", &["add", "-A"]);
    run(&repo, "git", &["commit", "-q", "-m", "archive"]);
    let content = run(&repo, "git", &["rev-parse", "HEAD:pkg.tar.gz"]);
    let jserve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let mut trees = Vec::new();
    for (name, program, args) in [
        ("jserve", &jserve, &["serve"][..]),
        ("ref", &just, &["serve"][..]),
    ] {
        let server = start_server(program, args, &dir.path().join(name), &repo, false);
        let mut c = client(server.port).await;
        let r = ask(
            &mut c,
            &content,
            ArchiveType::Tar,
            "pkg",
            SymlinksResolve::None,
            false,
        )
        .await;
        assert_eq!(r.status, S::Ok as i32, "{name}");
        trees.push(r.tree);
    }
    assert_eq!(trees[0], trees[1], "jserve and the reference");
}

/// A zip written byte by byte: each entry is (central name, local name,
/// content, local header index); entries naming the same local header share
/// it, as in overlapping-entry zips.
fn odd_zip(locals: &[(&[u8], &[u8])], entries: &[(&[u8], usize)]) -> Vec<u8> {
    let crc = |data: &[u8]| {
        let mut h = flate2::Crc::new();
        h.update(data);
        h.sum()
    };
    let u16le = |v: usize| (v as u16).to_le_bytes();
    let u32le = |v: usize| (v as u32).to_le_bytes();
    let mut body = Vec::new();
    let mut offsets = Vec::new();
    for (name, data) in locals {
        offsets.push(body.len());
        body.extend_from_slice(b"PK\x03\x04");
        body.extend_from_slice(&u16le(20)); // version needed
        body.extend_from_slice(&[0; 6]); // flags, method (stored), time
        body.extend_from_slice(&u16le(0)); // date
        body.extend_from_slice(&crc(data).to_le_bytes());
        body.extend_from_slice(&u32le(data.len()));
        body.extend_from_slice(&u32le(data.len()));
        body.extend_from_slice(&u16le(name.len()));
        body.extend_from_slice(&u16le(0));
        body.extend_from_slice(name);
        body.extend_from_slice(data);
    }
    let mut central = Vec::new();
    for (name, local) in entries {
        let data = locals[*local].1;
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&u16le(3 << 8 | 20)); // made by unix
        central.extend_from_slice(&u16le(20));
        central.extend_from_slice(&[0; 8]); // flags, method, time, date
        central.extend_from_slice(&crc(data).to_le_bytes());
        central.extend_from_slice(&u32le(data.len()));
        central.extend_from_slice(&u32le(data.len()));
        central.extend_from_slice(&u16le(name.len()));
        central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal
        central.extend_from_slice(&u32le(0o100644 << 16));
        central.extend_from_slice(&u32le(offsets[*local]));
        central.extend_from_slice(name);
    }
    let mut zip = body.clone();
    zip.extend_from_slice(&central);
    zip.extend_from_slice(b"PK\x05\x06");
    zip.extend_from_slice(&[0; 4]);
    zip.extend_from_slice(&u16le(entries.len()));
    zip.extend_from_slice(&u16le(entries.len()));
    zip.extend_from_slice(&u32le(central.len()));
    zip.extend_from_slice(&u32le(body.len()));
    zip.extend_from_slice(&u16le(0));
    zip
}

/// Zips whose entries libarchive reads differently from the zip format's
/// letter: backslashes in names are directory separators, a name comes from
/// the local header, and central directory entries sharing one local header
/// are one entry. jserve answers what the reference `just serve` answers
/// (docs/sources.md); the trees are also pinned here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_oddities_agree_with_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "backslashes",
            odd_zip(
                &[(b"dir\\file.txt", b"one\n"), (b"top.txt", b"two\n")],
                &[(b"dir\\file.txt", 0), (b"top.txt", 1)],
            ),
            &["dir/file.txt", "top.txt"],
        ),
        (
            "overlapping",
            odd_zip(
                &[(b"a.txt", b"shared\n"), (b"z.txt", b"two\n")],
                &[(b"z.txt", 1), (b"c1.txt", 0), (b"c2.txt", 0)],
            ),
            &["a.txt", "z.txt"],
        ),
        (
            "names differ",
            odd_zip(
                &[(b"local1.txt", b"one\n"), (b"local2.txt", b"two\n")],
                &[(b"central1.txt", 0), (b"central2.txt", 1)],
            ),
            &["local1.txt", "local2.txt"],
        ),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(repo.join(format!("{name}.zip")), bytes).unwrap();
    }
    run(&repo, "git", &["init", "-q"]);
    run(&repo, "git", &["add", "-A"]);
    run(&repo, "git", &["commit", "-q", "-m", "zips"]);
    let jserve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    // Both generations of the reference (reference_just* report a missing one).
    let mut servers = vec![("jserve", jserve)];
    servers.extend(common::reference::reference_just().map(|just| ("reference-1.5", just)));
    servers.extend(common::reference::reference_just_16().map(|just| ("reference-1.6", just)));
    let mut trees: Vec<Vec<String>> = Vec::new();
    for (who, program) in &servers {
        let server = common::reference::start_server(
            program,
            &["serve"],
            &dir.path().join(who),
            &repo,
            false,
        );
        let mut c = client(server.port).await;
        let mut answers = Vec::new();
        for (name, _, files) in &cases {
            let content = run(&repo, "git", &["rev-parse", &format!("HEAD:{name}.zip")]);
            let r = ask(
                &mut c,
                &content,
                ArchiveType::Zip,
                ".",
                SymlinksResolve::None,
                false,
            )
            .await;
            assert_eq!(r.status, S::Ok as i32, "{who}: {name}");
            if *who == "jserve" {
                // Our own git cache holds the tree: list it.
                let git = dir.path().join("jserve/root/repositories/generation-0/git");
                let listing = run(
                    &repo,
                    "git",
                    &[
                        "--git-dir",
                        git.to_str().unwrap(),
                        "ls-tree",
                        "-r",
                        "--name-only",
                        &r.tree,
                    ],
                );
                assert_eq!(listing.lines().collect::<Vec<_>>(), *files, "{name}");
            }
            answers.push(r.tree);
        }
        trees.push(answers);
    }
    for (i, answers) in trees.iter().enumerate().skip(1) {
        assert_eq!(trees[0], *answers, "jserve and {}", servers[i].0);
    }
}
