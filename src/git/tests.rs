//! Tests against repositories made with the git command line.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::*;
use crate::digest::{HashFunction, ObjectKind};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A work-tree repository with one commit of `files` (path, content); returns (commit, tree).
fn repo_with(dir: &Path, files: &[(&str, &str)]) -> (String, String) {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "c"]);
    (
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["rev-parse", "HEAD^{tree}"]),
    )
}

#[test]
fn look_ups_across_two_repositories_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, t1) = repo_with(
        &tmp.path().join("one"),
        &[("a.txt", "one\n"), ("sub/b.txt", "b\n")],
    );
    let (c2, t2) = repo_with(&tmp.path().join("two"), &[("x.txt", "two\n")]);
    // A bare clone of "one" also holds c1; the set's order decides who answers.
    git(tmp.path(), &["clone", "-q", "--bare", "one", "one-bare"]);
    let set = RepoSet::new(
        tmp.path().join("no-cache-yet"),
        vec![
            tmp.path().join("two"),
            tmp.path().join("one-bare"),
            tmp.path().join("one"),
        ],
    );
    let found = set.commit_tree(&c1).unwrap().unwrap();
    assert_eq!(
        found,
        Found {
            repo: 2,
            value: t1.clone()
        }
    );
    assert_eq!(set.commit_tree(&c2).unwrap().unwrap().repo, 1);
    assert_eq!(set.commit_tree(&"0".repeat(40)).unwrap(), None);
    assert!(matches!(set.commit_tree("HEAD"), Err(GitError::BadId(_))));

    let sub = set.commit_subtree(&c1, "sub").unwrap().unwrap().value;
    assert_eq!(
        sub,
        git(&tmp.path().join("one"), &["rev-parse", "HEAD:sub"])
    );
    assert_eq!(set.commit_subtree(&c1, "./").unwrap().unwrap().value, t1);
    assert_eq!(
        set.commit_subtree(&c1, "a.txt").unwrap(),
        None,
        "a blob is not a tree"
    );
    assert_eq!(set.commit_subtree(&c1, "nope").unwrap(), None);
    assert!(set.commit_subtree(&c1, "../x").is_err());

    assert_eq!(set.find_tree(&t2).unwrap(), Some(1));
    assert_eq!(set.find_tree(&t1).unwrap(), Some(2));
    let blob = git(&tmp.path().join("one"), &["rev-parse", "HEAD:a.txt"]);
    assert_eq!(set.find_blob(&blob).unwrap(), Some(2));
    assert_eq!(set.find_tree(&blob).unwrap(), None, "a blob is not a tree");
    assert_eq!(set.read_blob(&blob).unwrap().unwrap().value, b"one\n");

    let items = set.read_tree_recursive(&t1).unwrap().unwrap().value;
    let paths: Vec<_> = items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.path).into_owned())
        .collect();
    assert_eq!(paths, vec!["a.txt", "sub", "sub/b.txt"]);
    assert_eq!(items[1].kind, ObjectKind::Tree);
}

#[test]
fn unreadable_configured_repository_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("not-a-repo")).unwrap();
    let set = RepoSet::new(
        tmp.path().join("cache"),
        vec![tmp.path().join("not-a-repo")],
    );
    assert!(matches!(
        set.find_blob(&"1".repeat(40)),
        Err(GitError::Open { .. })
    ));
}

#[test]
fn import_gives_the_tree_git_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(work.join("src/deep")).unwrap();
    fs::write(work.join("README"), "readme\n").unwrap();
    fs::write(work.join("src/main.c"), "int main() {}\n").unwrap();
    fs::write(work.join("src/deep/data.bin"), vec![0u8, 1, 2, 255]).unwrap();
    fs::write(work.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(work.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("src/main.c", work.join("link")).unwrap();
    symlink("../README", work.join("src/up")).unwrap();
    // A file large enough to be streamed.
    fs::write(work.join("big"), vec![7u8; 3 << 20]).unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    let expected = git(&work, &["write-tree"]);
    fs::remove_dir_all(work.join(".git")).unwrap();

    let cache = tmp.path().join("cache");
    let repo = git2::Repository::init_bare(&cache).unwrap();
    let tree = import_directory(&repo, &work).unwrap();
    assert_eq!(tree.to_string(), expected);
    keep_tree(&repo, tree).unwrap();
    assert_eq!(
        git(&cache, &["cat-file", "-t", &format!("keep-{expected}")]),
        "tag"
    );
    // The imported tree is now found through the set, in the git cache.
    let set = RepoSet::new(cache.clone(), vec![]);
    assert_eq!(set.find_tree(&expected).unwrap(), Some(0));
    assert_eq!(git(&cache, &["cat-file", "-t", &expected]), "tree");
}

#[test]
fn import_to_git_commits_like_just_mr() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("f"), "content\n").unwrap();
    let cache = tmp.path().join("cache");
    let repo = git2::Repository::init_bare(&cache).unwrap();
    let tree = import_to_git(&repo, &work, "Content of archive 1234").unwrap();
    // One keep tag, on a commit fixed by tree and message (author Nobody at time 0):
    // `git commit-tree` with the same identity and date gives the same id.
    let tags = git(&cache, &["tag", "-l", "keep-*"]);
    let commit = tags.strip_prefix("keep-").expect("a keep tag").to_string();
    let out = Command::new("git")
        .args([
            "commit-tree",
            &tree.to_string(),
            "-m",
            "Content of archive 1234",
        ])
        .current_dir(&cache)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", tmp.path())
        .env("GIT_AUTHOR_NAME", "Nobody")
        .env("GIT_AUTHOR_EMAIL", "nobody@example.org")
        .env("GIT_AUTHOR_DATE", "@0 +0000")
        .env("GIT_COMMITTER_NAME", "Nobody")
        .env("GIT_COMMITTER_EMAIL", "nobody@example.org")
        .env("GIT_COMMITTER_DATE", "@0 +0000")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), commit);
    assert_eq!(
        git(&cache, &["cat-file", "-t", &format!("keep-{commit}")]),
        "tag"
    );
    // Importing again is harmless and gives the same commit.
    import_to_git(&repo, &work, "Content of archive 1234").unwrap();
    assert_eq!(git(&cache, &["tag", "-l", "keep-*"]), tags);
}

#[test]
fn import_keeps_empty_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(work.join("empty")).unwrap();
    let repo = git2::Repository::init_bare(tmp.path().join("cache")).unwrap();
    let tree = import_directory(&repo, &work).unwrap();
    let t = repo.find_tree(tree).unwrap();
    let e = t.get_name("empty").unwrap();
    assert_eq!(
        e.id().to_string(),
        "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    );
}

/// Names git itself keeps out of trees (`.git`) are kept, as justbuild's
/// import keeps them: they come from users' archives.
#[test]
fn import_keeps_git_magic_names() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(work.join(".git")).unwrap();
    fs::write(work.join(".git/config"), "[core]\n").unwrap();
    fs::write(work.join("a.txt"), "a\n").unwrap();
    let repo = git2::Repository::init_bare(tmp.path().join("cache")).unwrap();
    let tree = import_directory(&repo, &work).unwrap();
    let t = repo.find_tree(tree).unwrap();
    let dot_git = repo.find_tree(t.get_name(".git").unwrap().id()).unwrap();
    let config = dot_git.get_name("config").unwrap();
    assert_eq!(
        config.id().to_string(),
        HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"[core]\n")
    );
    // The rest is as git writes it.
    fs::remove_dir_all(work.join(".git")).unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "c"]);
    let expected = git(&work, &["rev-parse", "HEAD^{tree}"]);
    fs::remove_dir_all(work.join(".git")).unwrap();
    assert_eq!(
        import_directory(&repo, &work).unwrap().to_string(),
        expected
    );
}

/// A git cache that `just-mr gc-repo` moved to generation 1: look-ups still
/// find its objects, and copy them (with a keep tag) into the new cache.
#[test]
fn older_git_caches_are_read_and_copied_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(work.join("sub")).unwrap();
    fs::write(work.join("sub/f"), "content\n").unwrap();
    let old = tmp.path().join("generation-1/git");
    let old_repo = git2::Repository::init_bare(&old).unwrap();
    let tree = import_to_git(&old_repo, &work, "Content of archive 99").unwrap();
    let commit = git(&old, &["tag", "-l", "keep-*"])
        .strip_prefix("keep-")
        .unwrap()
        .to_string();
    let cache = tmp.path().join("generation-0/git");
    let set = RepoSet::new(cache.clone(), vec![]).with_older(vec![old.clone()]);
    let plain = RepoSet::new(cache.clone(), vec![]);

    let found = set
        .commit_tree(&commit)
        .unwrap()
        .expect("found in the older cache");
    assert_eq!((found.repo, found.value), (0, tree.to_string()));
    // Now the new cache alone has the commit, its whole tree and a keep tag.
    assert_eq!(plain.commit_tree(&commit).unwrap().unwrap().repo, 0);
    let listed = plain
        .read_tree_recursive(&tree.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(listed.value.len(), 2);
    assert_eq!(
        git(&cache, &["cat-file", "-t", &format!("keep-{commit}")]),
        "tag"
    );
    // Objects no generation has stay unknown.
    assert_eq!(set.find_blob(&"1".repeat(40)).unwrap(), None);
}

/// Requests for the same archive or distdir at once write the same keep tag
/// at once; every one of them must succeed, whoever holds the tag's lock.
#[test]
fn concurrent_writers_of_one_keep_tag_all_succeed() {
    use std::sync::{Arc, Barrier};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cache");
    git2::Repository::init_bare(&path).unwrap();
    const WRITERS: usize = 8;
    for round in 0..40 {
        // A tree of its own per round, so that each round writes a new tag.
        let tree = {
            let repo = git2::Repository::open(&path).unwrap();
            let blob = repo.blob(format!("round {round}\n").as_bytes()).unwrap();
            let mut builder = repo.treebuilder(None).unwrap();
            builder.insert("f", blob, 0o100644).unwrap();
            builder.write().unwrap()
        };
        let barrier = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let repo = git2::Repository::open(&path).unwrap();
                    barrier.wait();
                    commit_and_keep(&repo, tree, "Content of distdir x").map_err(|e| e.to_string())
                })
            })
            .collect();
        let commits: Vec<_> = writers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"))
            })
            .collect();
        assert!(commits.windows(2).all(|w| w[0] == w[1]), "round {round}");
    }
}

#[test]
fn pack_writer_packs_git_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = PackWriter::create(&scratch.join("p.pack"), 1).unwrap();
    let small = writer.add(PackKind::Blob, b"hello\n").unwrap();
    assert_eq!(writer.add(PackKind::Blob, b"hello\n").unwrap(), small);
    let empty = writer.add(PackKind::Blob, b"").unwrap();
    // Streamed twice, compressed then stored: the second copy is taken
    // back out of the pack.
    let mut streamed = Vec::new();
    for storing in [false, true] {
        writer.set_storing(storing);
        writer.begin_blob(big.len() as u64).unwrap();
        for chunk in big.chunks(100_000) {
            writer.write_chunk(chunk).unwrap();
        }
        streamed.push(writer.finish_object().unwrap());
    }
    assert_eq!(streamed[0], streamed[1]);
    assert_eq!(writer.len(), 3);
    let first = writer.finish().unwrap().unwrap();

    let mut writer = PackWriter::create(&scratch.join("q.pack"), 9).unwrap();
    let tree_bytes = crate::digest::serialize_git_tree(vec![crate::digest::GitTreeEntry {
        name: b"hello".to_vec(),
        kind: ObjectKind::File,
        id: small.as_bytes().try_into().unwrap(),
    }])
    .unwrap();
    let tree = writer.add(PackKind::Tree, &tree_bytes).unwrap();
    let second = writer.finish().unwrap().unwrap();

    // A pack without objects leaves nothing behind.
    let none = PackWriter::create(&scratch.join("r.pack"), 1).unwrap();
    assert_eq!(none.finish().unwrap(), None);
    assert!(!scratch.join("r.pack").exists());
    // Announced sizes are held to.
    let mut strict = PackWriter::create(&scratch.join("s.pack"), 1).unwrap();
    strict.begin_blob(3).unwrap();
    assert!(strict.write_chunk(b"four").is_err());
    assert!(strict.finish().is_err(), "an object is still open");

    let git_dir = tmp.path().join("repo.git");
    let repo = git2::Repository::init_bare(&git_dir).unwrap();
    install_packs(&repo, &[first, second]).unwrap();
    assert_eq!(repo.find_tree(tree).unwrap().len(), 1);
    assert_eq!(repo.find_blob(small).unwrap().content(), b"hello\n");
    assert_eq!(repo.find_blob(empty).unwrap().content(), b"");
    assert_eq!(repo.find_blob(streamed[0]).unwrap().content(), &big[..]);
    // git itself checks every checksum, CRC and object.
    git(&git_dir, &["fsck", "--strict", "--no-dangling"]);
    for entry in fs::read_dir(git_dir.join("objects/pack")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "idx") {
            git(&git_dir, &["verify-pack", path.to_str().unwrap()]);
        }
    }
}
