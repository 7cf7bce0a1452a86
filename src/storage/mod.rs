//! The local build root: CAS of each hash mode, the git cache, and the maps
//! (archive trees, target cache) that live beside them. The layout follows
//! justbuild's so that `just` and `just-mr` can share a build root with jserve;
//! docs/local-build-root.md describes it.

pub mod action_cache;
pub mod atomic;
pub mod cas;
pub mod maps;
pub mod target_cache;
pub mod trees;

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::HashFunction;
pub use action_cache::{ActionCache, ActionCacheError};
pub use cas::{Cas, CasError};
pub use maps::{ArchiveKind, IdMap};

/// Removes a directory tree, making read-only directories writable first
/// (actions and archives may leave such behind). Failures are only logged.
pub fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn make_writable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::symlink_metadata(p) {
            if meta.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                if let Ok(entries) = std::fs::read_dir(p) {
                    for e in entries.flatten() {
                        make_writable(&e.path());
                    }
                }
            }
        }
    }
    make_writable(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), "cannot remove directory: {e}");
    }
}

/// Only generation 0 is written; older generations belong to garbage collection.
const GENERATION: &str = "generation-0";

/// The directory tree of a local build root.
#[derive(Clone, Debug)]
pub struct BuildRoot {
    root: PathBuf,
}

impl BuildRoot {
    /// Opens (creating as needed) the build root at an absolute `root`.
    pub fn open(root: &Path) -> io::Result<BuildRoot> {
        if !root.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("local build root {} is not absolute", root.display()),
            ));
        }
        let b = BuildRoot {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(b.tmp_dir())?;
        std::fs::create_dir_all(b.repositories_dir())?;
        Ok(b)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Staging directory for atomic writes; on the build root's filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Storage of one hash mode: `protocol-dependent/generation-0/<mode>`.
    pub fn storage_dir(&self, hash: HashFunction) -> PathBuf {
        self.root
            .join("protocol-dependent")
            .join(GENERATION)
            .join(hash.storage_dir_name())
    }

    /// The CAS of one hash mode.
    pub fn cas(&self, hash: HashFunction) -> Cas {
        Cas::new(hash, self.storage_dir(hash), self.tmp_dir())
    }

    /// The action cache of one hash mode.
    pub fn action_cache(&self, hash: HashFunction) -> ActionCache {
        ActionCache::new(
            self.cas(hash),
            self.storage_dir(hash).join("ac"),
            self.tmp_dir(),
        )
    }

    /// Working directories of locally run actions; on the build root's filesystem
    /// so that inputs can be hard-linked from the CAS.
    pub fn exec_root(&self) -> PathBuf {
        self.root
            .join("protocol-dependent")
            .join(GENERATION)
            .join("ephemeral")
            .join("exec_root")
    }

    /// Target-cache entries of one hash mode and backend shard.
    pub fn target_cache_dir(&self, hash: HashFunction, shard: &str) -> PathBuf {
        self.storage_dir(hash).join("tc").join(shard)
    }

    /// `repositories/generation-0`: the git cache and the source maps.
    pub fn repositories_dir(&self) -> PathBuf {
        self.root.join("repositories").join(GENERATION)
    }

    /// The bare git repository jserve imports trees into.
    pub fn git_cache_dir(&self) -> PathBuf {
        self.repositories_dir().join("git")
    }

    /// Archive content id -> root tree of the unpacked archive.
    pub fn archive_tree_map(&self, kind: ArchiveKind) -> IdMap {
        IdMap::new(
            self.repositories_dir()
                .join("tree-map")
                .join(kind.dir_name()),
            self.tmp_dir(),
        )
    }

    /// Opens the git cache, creating the bare repository on first use.
    pub fn init_git_cache(&self) -> Result<git2::Repository, git2::Error> {
        let dir = self.git_cache_dir();
        match git2::Repository::open_bare(&dir) {
            Ok(repo) => Ok(repo),
            // Concurrent initialisation of the same path is harmless for libgit2.
            Err(_) => git2::Repository::init_bare(&dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_justbuild() {
        let dir = tempfile::tempdir().unwrap();
        let b = BuildRoot::open(dir.path()).unwrap();
        assert_eq!(
            b.storage_dir(HashFunction::GitSha1),
            dir.path().join("protocol-dependent/generation-0/git-sha1")
        );
        assert_eq!(
            b.storage_dir(HashFunction::Sha256),
            dir.path()
                .join("protocol-dependent/generation-0/compatible-sha256")
        );
        assert_eq!(
            b.git_cache_dir(),
            dir.path().join("repositories/generation-0/git")
        );
        assert_eq!(
            b.target_cache_dir(HashFunction::GitSha1, "ab"),
            dir.path()
                .join("protocol-dependent/generation-0/git-sha1/tc/ab")
        );
        let repo = b.init_git_cache().unwrap();
        assert!(repo.is_bare());
        // A second open finds the same repository.
        assert_eq!(b.init_git_cache().unwrap().path(), repo.path());
    }

    #[test]
    fn relative_root_rejected() {
        assert!(BuildRoot::open(Path::new("relative/root")).is_err());
    }
}
