//! Importing a directory from disk into a git repository as a tree, the way
//! `git add -A && git write-tree` would see it, plus empty directories (which
//! justbuild trees keep).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use git2::{Oid, Repository};

use crate::digest::{serialize_git_tree, GitTreeEntry, ObjectKind};
use crate::tree_walk::{
    list_directory, post_order, DirPath, DiskEntry, PostOrder, Visit, VisitResult,
};

use super::GitError;

/// Writes every file, symlink and directory below `dir` into `repo`; returns the root tree id.
pub fn import_directory(repo: &Repository, dir: &Path) -> Result<Oid, GitError> {
    let odb = repo.odb()?;
    post_order(&mut Importer { odb: &odb }, DirPath(dir.to_path_buf()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a directory's trees bottom-up without recursion: unpacked
/// archives nest as deep as paths allow. Trees are serialised here and
/// written to the object database directly, as justbuild does: libgit2's
/// tree builder refuses names such as `.git`, which users' archives may hold.
struct Importer<'a> {
    odb: &'a git2::Odb<'a>,
}

impl PostOrder for Importer<'_> {
    type Key = DirPath;
    /// The entries that are not directories, and the subdirectories by name.
    type Data = (Vec<GitTreeEntry>, Vec<(Vec<u8>, DirPath)>);
    type Value = Oid;
    type Error = GitError;

    fn visit(&mut self, key: &DirPath) -> VisitResult<Self> {
        let listing =
            list_directory(&key.0).map_err(|(path, source)| GitError::Io { path, source })?;
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        for (name, entry) in listing {
            let (oid, kind) = match entry {
                DiskEntry::Symlink { target } => (
                    self.odb.write(git2::ObjectType::Blob, &target)?,
                    ObjectKind::Symlink,
                ),
                DiskEntry::Dir(sub) => {
                    subdirs.push((name, sub));
                    continue;
                }
                // git records any owner-executable file as executable.
                DiskEntry::File { path, mode, len } => (
                    write_file_blob(self.odb, &path, len)?,
                    ObjectKind::blob(mode & 0o100 != 0),
                ),
                DiskEntry::Special(path) => {
                    return Err(GitError::Import {
                        path,
                        message: "not a file, directory or symlink".to_string(),
                    })
                }
            };
            entries.push(entry_of(name, kind, oid));
        }
        let keys = subdirs.iter().map(|(_, key)| key.clone()).collect();
        Ok(Visit::Expand((entries, subdirs), keys))
    }

    fn finish(
        &mut self,
        key: &DirPath,
        (mut entries, subdirs): Self::Data,
        done: &HashMap<DirPath, Oid>,
    ) -> Result<Oid, GitError> {
        for (name, sub) in subdirs {
            entries.push(entry_of(name, ObjectKind::Tree, done[&sub]));
        }
        let bytes = serialize_git_tree(entries).map_err(|e| GitError::Import {
            path: key.0.clone(),
            message: e.to_string(),
        })?;
        Ok(self.odb.write(git2::ObjectType::Tree, &bytes)?)
    }
}

fn entry_of(name: Vec<u8>, kind: ObjectKind, oid: Oid) -> GitTreeEntry {
    let mut id = [0u8; 20];
    id.copy_from_slice(oid.as_bytes());
    GitTreeEntry { name, kind, id }
}

/// Small files are written in one call; large ones are streamed into the object database.
fn write_file_blob(odb: &git2::Odb<'_>, path: &Path, len: u64) -> Result<Oid, GitError> {
    const STREAM_ABOVE: u64 = 1 << 20;
    if len <= STREAM_ABOVE {
        let content = fs::read(path).map_err(io_err(path))?;
        return Ok(odb.write(git2::ObjectType::Blob, &content)?);
    }
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut writer = odb.writer(len as usize, git2::ObjectType::Blob)?;
    std::io::copy(&mut file, &mut writer).map_err(io_err(path))?;
    Ok(writer.finalize()?)
}

/// The signature justbuild uses for its bookkeeping commits and tags: fixed,
/// so that the same content gives the same commit id in every git cache.
fn nobody() -> Result<git2::Signature<'static>, GitError> {
    Ok(git2::Signature::new(
        "Nobody",
        "nobody@example.org",
        &git2::Time::new(0, 0),
    )?)
}

/// The message of jserve's (and justbuild's) keep tags.
const KEEP_MESSAGE: &str = "Keep referenced tree alive";

/// Creates the annotated tag `keep-<id>` on object `id` unless it exists.
pub(crate) fn keep_tag(repo: &Repository, id: Oid, kind: git2::ObjectType) -> Result<(), GitError> {
    let name = format!("keep-{id}");
    let reference = format!("refs/tags/{name}");
    let object = repo.find_object(id, Some(kind))?;
    let deadline = Instant::now() + TAG_LOCK_WAIT;
    loop {
        if repo.find_reference(&reference).is_ok() {
            return Ok(());
        }
        match repo.tag(&name, &object, &nobody()?, KEEP_MESSAGE, true) {
            Ok(_) => return Ok(()),
            // Another writer (a request for the same archive or distdir) holds
            // the reference's lock while writing this very tag: wait for it.
            Err(e) if e.code() == git2::ErrorCode::Locked && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) if repo.find_reference(&reference).is_ok() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long a keep tag waits for another writer's lock on it; a lock older
/// than that is left behind by a crash and reported.
const TAG_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Makes `tree` (already in `repo`) permanent the way just-mr does: a
/// parent-less commit of it with `message`, kept alive by the tag
/// `keep-<commit>`. Returns the commit id.
pub fn commit_and_keep(repo: &Repository, tree: Oid, message: &str) -> Result<Oid, GitError> {
    let tree = repo.find_tree(tree)?;
    let message = git2::message_prettify(message, None)?;
    let sig = nobody()?;
    let commit = repo.commit(None, &sig, &sig, &message, &tree, &[])?;
    keep_tag(repo, commit, git2::ObjectType::Commit)?;
    Ok(commit)
}

/// Imports a directory into `repo` and keeps it (see `commit_and_keep`); returns the tree.
pub fn import_to_git(repo: &Repository, dir: &Path, message: &str) -> Result<Oid, GitError> {
    let tree = import_directory(repo, dir)?;
    commit_and_keep(repo, tree, message)?;
    Ok(tree)
}

/// Keeps a tree alive with the tag `keep-<tree>` directly on it (used for
/// trees that come from no directory, like resolved symlink trees).
pub fn keep_tree(repo: &Repository, tree: Oid) -> Result<(), GitError> {
    keep_tag(repo, tree, git2::ObjectType::Tree)
}
