//! Git objects: the repository set jserve looks objects up in, and importing
//! directories from disk as git trees. All calls block; async code runs them on
//! the blocking pool.

mod import;
mod pack;
mod repo_set;

pub use import::{commit_and_keep, import_directory, import_to_git, keep_tree};
pub use pack::{install_packs, PackFiles, PackKind, PackWriter};
pub use repo_set::{open_exact, reopen_repositories, Found, RepoSet, TreeItem};

use std::path::PathBuf;

/// Errors of git look-ups and imports.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open git repository {path}: {source}")]
    Open { path: PathBuf, source: git2::Error },
    #[error("invalid git object id {0:?}")]
    BadId(String),
    #[error("invalid path {0:?} inside a tree")]
    BadPath(String),
    #[error("tree {tree} has an entry {name:?} of unsupported mode {mode:o}")]
    UnsupportedEntry {
        tree: String,
        name: String,
        mode: i32,
    },
    #[error("cannot import {path}: {message}")]
    Import { path: PathBuf, message: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
}

/// Parses a 40-character lowercase hex git id.
pub fn parse_oid(id: &str) -> Result<git2::Oid, GitError> {
    crate::digest::HashFunction::GitSha1
        .check_hex(id)
        .map_err(|_| GitError::BadId(id.to_string()))?;
    git2::Oid::from_str(id).map_err(|_| GitError::BadId(id.to_string()))
}

#[cfg(test)]
mod tests;
