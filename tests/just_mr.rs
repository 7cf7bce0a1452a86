//! `just-mr setup` (the reference client) against `jserve serve` gives the same
//! repository configuration as against the reference `just serve`, for absent
//! and present roots, in native and compatible mode.

mod common;

use common::git::git;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::reference::{reference_just, reference_just_mr, start_server};
use serde_json::{json, Value};

/// Runs `just-mr setup` against a serve endpoint; returns the generated
/// configuration, or `None` when just-mr failed.
fn setup(
    just_mr: &Path,
    repos: &Value,
    work: &Path,
    port: u16,
    with_remote: bool,
    compatible: bool,
) -> Option<Value> {
    std::fs::create_dir_all(work).unwrap();
    let config = work.join("repos.json");
    std::fs::write(&config, repos.to_string()).unwrap();
    let mut cmd = Command::new(just_mr);
    cmd.args(["--norc", "--local-build-root"])
        .arg(work.join("client-root"))
        .arg("-C")
        .arg(&config)
        .args(["-R", &format!("127.0.0.1:{port}")]);
    if with_remote {
        cmd.args(["-r", &format!("127.0.0.1:{port}")]);
    }
    if compatible {
        cmd.arg("--compatible");
    }
    let out = cmd.arg("setup").output().unwrap();
    if !out.status.success() {
        return None;
    }
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Present roots name the client's own git cache: compare only where it differs.
    for repo in value["repositories"].as_object_mut().unwrap().values_mut() {
        if let Some(root) = repo["workspace_root"].as_array_mut() {
            if root.len() == 3 {
                root[2] = json!("<client git cache>");
            }
        }
    }
    Some(value)
}

/// Archives of a small package, committed into the repository serve knows.
fn add_archives(repo: &Path) -> (String, String) {
    let src = repo.parent().unwrap().join("archive-src");
    std::fs::create_dir_all(src.join("pkg/sub")).unwrap();
    std::fs::write(src.join("pkg/a.txt"), "a\n").unwrap();
    std::fs::write(src.join("pkg/sub/b.txt"), "b\n").unwrap();
    std::os::unix::fs::symlink("../a.txt", src.join("pkg/sub/up")).unwrap();
    let tar = Command::new("tar")
        .args(["-czf", repo.join("pkg.tar.gz").to_str().unwrap(), "pkg"])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(tar.success());
    let zip = Command::new("zip")
        .args(["-qry", repo.join("pkg.zip").to_str().unwrap(), "pkg"])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(zip.success());
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "archives"]);
    (
        git(repo, &["rev-parse", "HEAD:pkg.tar.gz"]),
        git(repo, &["rev-parse", "HEAD:pkg.zip"]),
    )
}

fn make_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("src/lib")).unwrap();
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    std::fs::write(dir.join("src/main.c"), "int main() { return 0; }\n").unwrap();
    std::fs::write(dir.join("src/lib/util.h"), "#pragma once\n").unwrap();
    std::os::unix::fs::symlink("main.c", dir.join("src/entry.c")).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "c"]);
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn just_mr_setup_agrees_with_reference_serve() {
    let Some(just) = reference_just() else { return };
    let just_mr = reference_just_mr(&just);
    let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    make_repo(&repo);
    let (tar_id, zip_id) = add_archives(&repo);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let tree = git(&repo, &["rev-parse", "HEAD^{tree}"]);
    let git_root = |subdir: &str, absent: bool| {
        json!({"main": "main", "repositories": {"main": {"repository": {
            "type": "git", "repository": "https://invalid.example/repo.git", "commit": commit,
            "branch": "main", "subdir": subdir, "pragma": {"absent": absent}}}}})
    };
    let git_tree_root = json!({"main": "main", "repositories": {"main": {"repository": {
        "type": "git tree", "id": tree, "cmd": ["false"], "pragma": {"absent": true}}}}});
    let archive = |kind: &str, content: &str, subdir: &str, special: Option<&str>| {
        let mut pragma = json!({"absent": true});
        if let Some(s) = special {
            pragma["special"] = json!(s);
        }
        json!({"type": kind, "content": content, "fetch": format!("https://invalid.example/pkg.{kind}"),
               "subdir": subdir, "pragma": pragma})
    };
    let one = |repository: Value| json!({"main": "main", "repositories": {"main": {"repository": repository}}});
    let distdir = json!({"main": "main", "repositories": {
        "main": {"repository": {"type": "distdir", "repositories": ["tgz", "zip"], "pragma": {"absent": true}}},
        "tgz": {"repository": archive("archive", &tar_id, ".", None)},
        "zip": {"repository": archive("zip", &zip_id, ".", None)}}});
    let cases = [
        (
            "absent archive root",
            one(archive("archive", &tar_id, "pkg", None)),
            false,
        ),
        (
            "absent archive, links resolved",
            one(archive(
                "archive",
                &tar_id,
                "pkg",
                Some("resolve-completely"),
            )),
            false,
        ),
        // The link leaves the subdir: both servers must refuse.
        (
            "absent archive subdir with an escaping link",
            one(archive(
                "archive",
                &tar_id,
                "pkg/sub",
                Some("resolve-completely"),
            )),
            false,
        ),
        (
            "absent archive, links resolved partially",
            one(archive(
                "archive",
                &tar_id,
                "pkg",
                Some("resolve-partially"),
            )),
            false,
        ),
        (
            "absent archive, links ignored",
            one(archive("archive", &tar_id, "pkg", Some("ignore"))),
            false,
        ),
        (
            "absent zip root",
            one(archive("zip", &zip_id, "pkg", None)),
            false,
        ),
        ("absent distdir root", distdir, false),
        ("absent git root", git_root(".", true), false),
        ("absent git subdir", git_root("src", true), false),
        (
            "present git root through serve",
            git_root("src/lib", false),
            true,
        ),
        ("absent git tree root", git_tree_root, false),
    ];
    for compatible in [false, true] {
        let ours = start_server(
            &jserve,
            &["serve"],
            &tmp.path().join(format!("jserve-{compatible}")),
            &repo,
            compatible,
        );
        let reference = start_server(
            &just,
            &["serve"],
            &tmp.path().join(format!("ref-{compatible}")),
            &repo,
            compatible,
        );
        for (i, (name, repos, with_remote)) in cases.iter().enumerate() {
            let work = tmp.path().join(format!("case-{compatible}-{i}"));
            let got = setup(
                &just_mr,
                repos,
                &work.join("jserve"),
                ours.port,
                *with_remote,
                compatible,
            );
            let want = setup(
                &just_mr,
                repos,
                &work.join("ref"),
                reference.port,
                *with_remote,
                compatible,
            );
            assert_eq!(got, want, "{name} (compatible: {compatible})");
            assert!(
                got.is_some() || name.contains("escaping"),
                "{name}: just-mr setup failed"
            );
        }
    }
}
