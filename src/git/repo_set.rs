//! The ordered set of git repositories objects are looked up in: jserve's own
//! git cache first, then the configured repositories in config order.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

use super::{parse_oid, GitError};
use crate::digest::ObjectKind;

/// Where a look-up found an object: index into `RepoSet::paths()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<T> {
    pub repo: usize,
    pub value: T,
}

/// One entry of a recursively read tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeItem {
    /// Path relative to the tree's root, `/`-separated (raw bytes).
    pub path: Vec<u8>,
    pub kind: ObjectKind,
    /// Hex git id.
    pub id: String,
}

/// The git cache plus the configured repositories.
#[derive(Clone, Debug)]
pub struct RepoSet {
    paths: Vec<PathBuf>,
    /// Git caches of older generations (`just-mr gc-repo` rotates them):
    /// searched last, and what is found there is copied into the git cache.
    older: Vec<PathBuf>,
}

impl RepoSet {
    /// `git_cache` is searched first, then `repositories` in the given order.
    pub fn new(git_cache: PathBuf, repositories: Vec<PathBuf>) -> RepoSet {
        let mut paths = vec![git_cache];
        paths.extend(repositories);
        RepoSet {
            paths,
            older: Vec::new(),
        }
    }

    /// This set, also searching the older git caches `older` (youngest first).
    pub fn with_older(mut self, older: Vec<PathBuf>) -> RepoSet {
        self.older = older;
        self
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Opens one repository: a bare one or a work tree's `.git`, without searching upwards.
    pub fn open(&self, index: usize) -> Result<Repository, GitError> {
        open_exact(&self.paths[index])
    }

    /// Opens the git cache, the set's first repository, where imports go.
    pub fn open_git_cache(&self) -> Result<Repository, GitError> {
        self.open(0)
    }

    /// Runs `probe` on each repository in order until it yields a value.
    /// Repositories stay open per thread: opening one costs more than most look-ups.
    fn first<T>(
        &self,
        mut probe: impl FnMut(&Repository) -> Result<Option<T>, GitError>,
    ) -> Result<Option<Found<T>>, GitError> {
        for index in 0..self.paths.len() {
            // A missing git cache just means nothing was imported yet.
            if index == 0 && !self.paths[0].exists() {
                continue;
            }
            if let Some(value) = with_open_repo(&self.paths[index], &mut probe)? {
                return Ok(Some(Found { repo: index, value }));
            }
        }
        Ok(None)
    }

    /// Like `first`, then in the older git caches: an object found there is
    /// copied into the git cache (`object` names it), which then answers.
    fn first_or_uplink<T>(
        &self,
        object: Oid,
        mut probe: impl FnMut(&Repository) -> Result<Option<T>, GitError>,
    ) -> Result<Option<Found<T>>, GitError> {
        if let Some(found) = self.first(&mut probe)? {
            return Ok(Some(found));
        }
        for old in self.older.iter().filter(|p| p.exists()) {
            if with_open_repo(old, &mut probe)?.is_none() {
                continue;
            }
            let from = open_exact(old)?;
            let to = crate::storage::BuildRoot::init_git_cache_at(&self.paths[0])?;
            uplink_object(&from, &to, object)?;
            drop_open_repo(&self.paths[0]);
            return self.first(&mut probe);
        }
        Ok(None)
    }

    /// The root tree of `commit`, if some repository has the commit.
    pub fn commit_tree(&self, commit: &str) -> Result<Option<Found<String>>, GitError> {
        let oid = parse_oid(commit)?;
        self.first_or_uplink(oid, |repo| match repo.find_commit(oid) {
            Ok(c) => Ok(Some(c.tree_id().to_string())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// The tree at `subdir` of `commit` (`""` or `"."` is the root tree).
    pub fn commit_subtree(
        &self,
        commit: &str,
        subdir: &str,
    ) -> Result<Option<Found<String>>, GitError> {
        let oid = parse_oid(commit)?;
        let rel = normalize_subdir(subdir)?;
        self.first_or_uplink(oid, |repo| {
            let c = match repo.find_commit(oid) {
                Ok(c) => c,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let root = c.tree()?;
            match &rel {
                None => Ok(Some(root.id().to_string())),
                Some(p) => match root.get_path(Path::new(p)) {
                    Ok(entry) if entry.kind() == Some(ObjectType::Tree) => {
                        Ok(Some(entry.id().to_string()))
                    }
                    Ok(_) => Ok(None),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e.into()),
                },
            }
        })
    }

    /// Whether some repository has object `id` of type `kind`.
    fn has(&self, id: &str, kind: ObjectType) -> Result<Option<Found<()>>, GitError> {
        let oid = parse_oid(id)?;
        self.first_or_uplink(oid, |repo| {
            let odb = repo.odb()?;
            match odb.read_header(oid) {
                Ok((_, t)) if t == kind => Ok(Some(())),
                Ok(_) => Ok(None),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Which repository (first in order) has tree `id`.
    pub fn find_tree(&self, id: &str) -> Result<Option<usize>, GitError> {
        Ok(self.has(id, ObjectType::Tree)?.map(|f| f.repo))
    }

    /// Which repository (first in order) has blob `id`.
    pub fn find_blob(&self, id: &str) -> Result<Option<usize>, GitError> {
        Ok(self.has(id, ObjectType::Blob)?.map(|f| f.repo))
    }

    /// The content of blob `id`.
    pub fn read_blob(&self, id: &str) -> Result<Option<Found<Vec<u8>>>, GitError> {
        let oid = parse_oid(id)?;
        self.first_or_uplink(oid, |repo| match repo.find_blob(oid) {
            Ok(b) => Ok(Some(b.content().to_vec())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// Every entry below tree `id`, depth first, directories before their content.
    pub fn read_tree_recursive(&self, id: &str) -> Result<Option<Found<Vec<TreeItem>>>, GitError> {
        let oid = parse_oid(id)?;
        self.first_or_uplink(oid, |repo| {
            let tree = match repo.find_tree(oid) {
                Ok(t) => t,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut items = Vec::new();
            collect_tree(repo, tree, &mut items)?;
            Ok(Some(items))
        })
    }
}

/// Copies object `root` from `from` into `to` with everything it reaches
/// (a commit's tree and parents, a tree's entries), then keeps it with a
/// `keep-` tag as just-mr does. Objects `to` has are taken as complete.
fn uplink_object(from: &Repository, to: &Repository, root: Oid) -> Result<(), GitError> {
    let (src, dst) = (from.odb()?, to.odb()?);
    let mut todo = vec![root];
    let mut kind_of_root = None;
    while let Some(id) = todo.pop() {
        if dst.exists(id) {
            continue;
        }
        let object = src.read(id)?;
        let kind = object.kind();
        kind_of_root.get_or_insert(kind);
        match kind {
            ObjectType::Tree => {
                let tree = from.find_tree(id)?;
                // Submodule entries (commits) are not in the repository.
                todo.extend(
                    tree.iter()
                        .filter(|e| e.kind() != Some(ObjectType::Commit))
                        .map(|e| e.id()),
                );
            }
            ObjectType::Commit => {
                let commit = from.find_commit(id)?;
                todo.push(commit.tree_id());
                todo.extend(commit.parent_ids());
            }
            _ => {}
        }
        dst.write(kind, object.data())?;
    }
    match kind_of_root {
        Some(ObjectType::Commit) => super::import::keep_tag(to, root, ObjectType::Commit),
        Some(ObjectType::Tree) => super::import::keep_tree(to, root),
        _ => Ok(()),
    }
}

fn collect_tree<'r>(
    repo: &'r Repository,
    root: git2::Tree<'r>,
    out: &mut Vec<TreeItem>,
) -> Result<(), GitError> {
    // Depth first on an explicit stack (trees may nest deeper than a
    // thread's stack): (tree, next entry, the tree's path).
    let mut stack: Vec<(git2::Tree<'r>, usize, Vec<u8>)> = vec![(root, 0, Vec::new())];
    while let Some((tree, next, prefix)) = stack.last_mut() {
        // The entry (which borrows its tree) is done with inside this block.
        let (kind, path, id) = {
            let Some(entry) = tree.get(*next) else {
                stack.pop();
                continue;
            };
            *next += 1;
            let mode = entry.filemode();
            let kind = ObjectKind::from_git_mode(mode as u32).ok_or_else(|| {
                GitError::UnsupportedEntry {
                    tree: tree.id().to_string(),
                    name: String::from_utf8_lossy(entry.name_bytes()).into_owned(),
                    mode,
                }
            })?;
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(entry.name_bytes());
            (kind, path, entry.id())
        };
        out.push(TreeItem {
            path: path.clone(),
            kind,
            id: id.to_string(),
        });
        if kind == ObjectKind::Tree {
            if stack.len() >= crate::tree_walk::MAX_TREE_DEPTH {
                return Err(crate::tree_walk::TooDeep {
                    root: stack[0].0.id().to_string(),
                    limit: crate::tree_walk::MAX_TREE_DEPTH,
                }
                .into());
            }
            stack.push((repo.find_tree(id)?, 0, path));
        }
    }
    Ok(())
}

thread_local! {
    /// Repositories opened by this thread (blocking-pool threads are reused),
    /// with the value of `REOPEN` they were opened under.
    static OPEN_REPOS: std::cell::RefCell<(u64, std::collections::HashMap<PathBuf, Repository>)> =
        Default::default();
}

/// Bumped when repositories may have been moved (a `just-mr gc-repo`
/// rotation): every thread then opens its repositories anew.
static REOPEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes every thread open its repositories anew on their next use.
pub fn reopen_repositories() {
    REOPEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Runs `f` on the repository at `path`, opened once per thread. libgit2
/// re-reads its object database on a miss, so objects written meanwhile by
/// others are still found.
fn with_open_repo<T>(
    path: &Path,
    f: &mut impl FnMut(&Repository) -> Result<Option<T>, GitError>,
) -> Result<Option<T>, GitError> {
    OPEN_REPOS.with(|cell| {
        let epoch = REOPEN.load(std::sync::atomic::Ordering::SeqCst);
        {
            let mut open = cell.borrow_mut();
            if open.0 != epoch {
                *open = (epoch, Default::default());
            }
        }
        if !cell.borrow().1.contains_key(path) {
            let repo = open_exact(path)?;
            let mut open = cell.borrow_mut();
            // A bound, in case a long-running process sees many repositories.
            if open.1.len() >= 64 {
                open.1.clear();
            }
            open.1.insert(path.to_path_buf(), repo);
        }
        let open = cell.borrow();
        f(&open.1[path])
    })
}

/// Forgets this thread's open handle of `path` (after the repository there
/// was replaced); other threads notice by the generation counter.
fn drop_open_repo(path: &Path) {
    OPEN_REPOS.with(|cell| {
        cell.borrow_mut().1.remove(path);
    });
}

/// Opens exactly the repository at `path` (bare, or a work tree with `.git`).
pub fn open_exact(path: &Path) -> Result<Repository, GitError> {
    Repository::open_ext(
        path,
        git2::RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    )
    .map_err(|source| GitError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn is_not_found(e: &git2::Error) -> bool {
    e.code() == git2::ErrorCode::NotFound
}

/// `""`/`"."` is the root; otherwise a relative path without `..`.
fn normalize_subdir(subdir: &str) -> Result<Option<String>, GitError> {
    let parts: Vec<&str> = subdir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if subdir.starts_with('/') || parts.contains(&"..") {
        return Err(GitError::BadPath(subdir.to_string()));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}
