//! The local build root: CAS of each hash mode, the git cache, and the maps
//! (archive trees, target cache) that live beside them. The layout follows
//! justbuild's so that `just` and `just-mr` can share a build root with jserve;
//! docs/local-build-root.md describes it.

pub mod action_cache;
pub mod atomic;
pub mod cas;
pub mod gc;
pub mod maps;
pub mod staging;
pub mod target_cache;
pub mod trees;

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::HashFunction;
pub use action_cache::{ActionCache, ActionCacheError};
pub use cas::{Cas, CasError};
pub use maps::IdMap;

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

/// [`remove_tree`] on `threads` threads: directories a few levels down
/// (the CAS's shards) are shared out among them. Unlinking is mostly the
/// kernel's work, which more cores do faster.
pub fn remove_tree_on(dir: &Path, threads: usize) {
    if threads > 1 {
        let mut frontier = vec![dir.to_path_buf()];
        for _ in 0..6 {
            if frontier.len() >= threads * 16 {
                break;
            }
            let next: Vec<PathBuf> = frontier
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flat_map(|entries| entries.flatten())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        let per_thread = frontier.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for share in frontier.chunks(per_thread) {
                scope.spawn(move || share.iter().for_each(|d| remove_tree(d)));
            }
        });
    }
    remove_tree(dir);
}

/// Generations justbuild's garbage collection keeps (its default): `just
/// gc` and `just-mr gc-repo` rename `generation-<i>` to `generation-<i+1>`
/// and drop the oldest. Only generation 0 is written; the others are read,
/// and what is used there is copied forward into generation 0.
pub const GENERATIONS: usize = 2;

const PROTOCOL_DEPENDENT: &str = "protocol-dependent";
const REPOSITORIES: &str = "repositories";

/// The file naming a generation 0 uniquely (see `generation_identity`).
const GENERATION_MARKER: &str = ".jserve-generation";

/// Gives `dir` a marker unless it has one; of processes racing to do so,
/// the first wins (the file is created whole, then linked into place).
fn mark_generation(dir: &Path) -> io::Result<()> {
    let marker = dir.join(GENERATION_MARKER);
    if marker.exists() {
        return Ok(());
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{}-{nanos}-{n}", std::process::id());
    let staged = dir.join(format!("{GENERATION_MARKER}.{id}"));
    std::fs::write(&staged, &id)?;
    let linked = std::fs::hard_link(&staged, &marker);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// One generation directory of one area.
#[derive(Clone, Debug)]
pub struct GenerationDir {
    pub path: PathBuf,
    /// 0 is the one written to.
    pub index: usize,
    /// `repositories/` (git cache and source maps), else
    /// `protocol-dependent/` (CAS, action and target caches).
    pub repositories: bool,
}

/// The directory tree of a local build root: the one place that knows it.
#[derive(Clone, Debug)]
pub struct BuildRoot {
    root: PathBuf,
    /// This process's staging directory below `ROOT/tmp`.
    staging: std::sync::Arc<staging::Lease>,
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
            staging: staging::lease(&root.join("tmp"))?,
        };
        b.create_generation_dirs();
        std::fs::create_dir_all(b.repositories_dir())?;
        Ok(b)
    }

    /// Makes sure both generation-0 directories exist (a rotation leaves
    /// none behind) with their identity marker, which they keep until the
    /// next rotation moves them away.
    pub fn create_generation_dirs(&self) {
        for area in [PROTOCOL_DEPENDENT, REPOSITORIES] {
            let dir = self.generation(area, 0);
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| mark_generation(&dir)) {
                tracing::warn!(dir = %dir.display(), "cannot create: {e}");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Staging directory for atomic writes, unpacking and partial uploads:
    /// this process's own below `ROOT/tmp` (see [`staging`]), on the build
    /// root's filesystem and outside the generations, which rotations move.
    pub fn tmp_dir(&self) -> PathBuf {
        self.staging.dir().to_path_buf()
    }

    fn generation(&self, area: &str, i: usize) -> PathBuf {
        self.root.join(area).join(format!("generation-{i}"))
    }

    fn older(&self, area: &str, below: impl Fn(PathBuf) -> PathBuf) -> Vec<PathBuf> {
        (1..GENERATIONS)
            .map(|i| below(self.generation(area, i)))
            .collect()
    }

    /// Storage of one hash mode: `protocol-dependent/generation-0/<mode>`.
    pub fn storage_dir(&self, hash: HashFunction) -> PathBuf {
        self.generation(PROTOCOL_DEPENDENT, 0)
            .join(hash.storage_dir_name())
    }

    fn older_storage_dirs(&self, hash: HashFunction) -> Vec<PathBuf> {
        self.older(PROTOCOL_DEPENDENT, |g| g.join(hash.storage_dir_name()))
    }

    /// The store a directory of a generation belongs to, for reports: in
    /// `repositories/`, by its name (`git`: the git cache; the rest: source
    /// maps); in `protocol-dependent/`, by the name of a directory inside a
    /// hash mode's (`casf`/`casx`/`cast`: the CAS, `ac`, `tc`).
    pub fn store_of(repositories: bool, name: &str) -> &'static str {
        match (repositories, name) {
            (true, "git") => "git-cache",
            (true, _) => "source-maps",
            (false, "casf" | "casx" | "cast") => "cas",
            (false, "ac") => "action-cache",
            (false, "tc") => "target-cache",
            (false, _) => "maps",
        }
    }

    /// The CAS of one hash mode (reading older generations too).
    pub fn cas(&self, hash: HashFunction) -> Cas {
        Cas::new(hash, self.storage_dir(hash), self.tmp_dir())
            .with_older(self.older_storage_dirs(hash))
    }

    /// The action cache of one hash mode.
    pub fn action_cache(&self, hash: HashFunction) -> ActionCache {
        let older = self
            .older_storage_dirs(hash)
            .into_iter()
            .map(|d| d.join("ac"))
            .collect();
        ActionCache::new(
            self.cas(hash),
            self.storage_dir(hash).join("ac"),
            self.tmp_dir(),
        )
        .with_older(older)
    }

    /// Working directories of locally run actions; on the build root's
    /// filesystem so that inputs can be hard-linked from the CAS, and outside
    /// the generations, whose `ephemeral` part `just gc` moves away.
    pub fn exec_root(&self) -> PathBuf {
        self.tmp_dir().join("exec_root")
    }

    /// Target-cache entries of one hash mode and backend shard.
    pub fn target_cache_dir(&self, hash: HashFunction, shard: &str) -> PathBuf {
        self.storage_dir(hash).join("tc").join(shard)
    }

    /// The same shard in older generations, youngest first.
    pub fn older_target_cache_dirs(&self, hash: HashFunction, shard: &str) -> Vec<PathBuf> {
        self.older_storage_dirs(hash)
            .into_iter()
            .map(|d| d.join("tc").join(shard))
            .collect()
    }

    /// `repositories/generation-0`: the git cache and the source maps.
    pub fn repositories_dir(&self) -> PathBuf {
        self.generation(REPOSITORIES, 0)
    }

    /// The bare git repository jserve imports trees into.
    pub fn git_cache_dir(&self) -> PathBuf {
        self.repositories_dir().join("git")
    }

    /// The git caches of older generations, youngest first.
    pub fn older_git_cache_dirs(&self) -> Vec<PathBuf> {
        self.older(REPOSITORIES, |g| g.join("git"))
    }

    /// A map of `repositories/generation-0/<rel>` (reading older generations too).
    pub fn repository_map(&self, rel: &str) -> IdMap {
        IdMap::new(self.repositories_dir().join(rel), self.tmp_dir())
            .with_older(self.older(REPOSITORIES, |g| g.join(rel)))
    }

    /// A map of `protocol-dependent/generation-0/<rel>` (reading older generations too).
    pub fn protocol_map(&self, rel: &str) -> IdMap {
        IdMap::new(
            self.generation(PROTOCOL_DEPENDENT, 0).join(rel),
            self.tmp_dir(),
        )
        .with_older(self.older(PROTOCOL_DEPENDENT, |g| g.join(rel)))
    }

    /// Archive content id -> root tree of the unpacked archive.
    pub fn archive_tree_map(&self, kind: crate::archive::ArchiveFormat) -> IdMap {
        self.repository_map(&format!("tree-map/{}", kind.justbuild_name()))
    }

    /// The lock `just gc` takes exclusively to rotate the CAS and caches;
    /// users of generation 0 hold it shared.
    pub fn gc_lock_path(&self) -> PathBuf {
        self.root.join(PROTOCOL_DEPENDENT).join("gc.lock")
    }

    /// The lock `just-mr gc-repo` takes exclusively to rotate `repositories/`.
    pub fn repository_gc_lock_path(&self) -> PathBuf {
        self.root.join(REPOSITORIES).join("gc.lock")
    }

    /// What tells one generation 0 from the next: the marker jserve puts
    /// into each (a rotation moves it away with the directory; a directory
    /// identity would not do, as a deleted generation's inode may be reused
    /// for the next one), `None` while there is none.
    pub fn generation_identity(&self, repositories: bool) -> Option<String> {
        let area = if repositories {
            REPOSITORIES
        } else {
            PROTOCOL_DEPENDENT
        };
        std::fs::read_to_string(self.generation(area, 0).join(GENERATION_MARKER)).ok()
    }

    /// How long ago the last rotation was: the age of generation 0's
    /// marker (the more recent of both areas); `None` if unknown.
    pub fn since_rotation(&self) -> Option<std::time::Duration> {
        [PROTOCOL_DEPENDENT, REPOSITORIES]
            .iter()
            .filter_map(|area| {
                let marker = self.generation(area, 0).join(GENERATION_MARKER);
                let modified = std::fs::metadata(marker).and_then(|m| m.modified()).ok()?;
                Some(modified.elapsed().unwrap_or_default())
            })
            .min()
    }

    /// The generation directories of both areas, youngest first within
    /// each: what the collector measures and the checker reads.
    pub fn generation_dirs(&self) -> Vec<GenerationDir> {
        let mut dirs = Vec::new();
        for (area, repositories) in [(PROTOCOL_DEPENDENT, false), (REPOSITORIES, true)] {
            for index in 0..GENERATIONS {
                dirs.push(GenerationDir {
                    path: self.generation(area, index),
                    index,
                    repositories,
                });
            }
        }
        dirs
    }

    /// One rotation of both areas, as `just gc` and `just-mr gc-repo` do:
    /// the oldest generation moves into `trash` (for the caller to delete,
    /// outside the locks), each other one becomes one older, and an empty
    /// generation 0 is created. Every step is one rename, so a crash in
    /// between leaves a layout every reader understands (a missing
    /// generation is an empty one). The caller holds both gc locks
    /// exclusively.
    pub fn rotate_generations(&self, trash: &Path) -> io::Result<()> {
        std::fs::create_dir_all(trash)?;
        for area in [REPOSITORIES, PROTOCOL_DEPENDENT] {
            let oldest = self.generation(area, GENERATIONS - 1);
            if oldest.exists() {
                std::fs::rename(&oldest, trash.join(area))?;
            }
            for i in (0..GENERATIONS - 1).rev() {
                let from = self.generation(area, i);
                if from.exists() {
                    std::fs::rename(&from, self.generation(area, i + 1))?;
                }
            }
        }
        self.create_generation_dirs();
        // Ready for whoever comes next, before any lock is released.
        self.init_git_cache().map_err(io::Error::other)?;
        Ok(())
    }

    /// Opens the git cache, creating the bare repository on first use (and
    /// after `just-mr gc-repo` moved it to an older generation).
    pub fn init_git_cache(&self) -> Result<git2::Repository, git2::Error> {
        Self::init_git_cache_at(&self.git_cache_dir())
    }

    /// Opens or creates the bare git cache at `dir`.
    pub fn init_git_cache_at(dir: &Path) -> Result<git2::Repository, git2::Error> {
        match git2::Repository::open_bare(dir) {
            Ok(repo) => Ok(repo),
            // Concurrent initialisation of the same path is harmless for libgit2.
            Err(_) => git2::Repository::init_bare(dir),
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
