//! Running the git command line in test repositories, isolated from the
//! user's and the system's git configuration.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `git ARGS` in `dir` and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
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

/// Makes `dir` a repository with everything in it committed; the commit
/// and its root tree.
pub fn commit_all(dir: &Path) -> (String, String) {
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "test"]);
    (
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["rev-parse", "HEAD^{tree}"]),
    )
}
