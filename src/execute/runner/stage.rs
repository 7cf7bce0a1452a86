//! Staging an action's input root from the CAS into its working directory.
//!
//! Files are hard-linked from the CAS where possible (copied across
//! filesystems). CAS files are read-only, which stops accidental writes; to
//! also catch an action that forces a write (root, or chmod first), every
//! linked CAS file's size, mtime and mode are recorded and checked after the
//! action: a changed file is re-hashed and evicted from the CAS if its content
//! no longer matches its name.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::digest::ObjectKind;
use crate::storage::trees::{check_out_tree, TreeStoreError};
use crate::storage::{Cas, CasError};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("input {0} is not in the CAS")]
    Missing(String),
    #[error(transparent)]
    Tree(#[from] TreeStoreError),
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error("cannot stage {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the action changed its input {0}, a read-only CAS file; the corrupted object was removed"
    )]
    InputModified(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a CAS file looked like when it was linked into a working directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    mtime_ns: i128,
    mode: u32,
}

impl FileState {
    fn of(meta: &fs::Metadata) -> FileState {
        FileState {
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            mode: meta.permissions().mode() & 0o7777,
        }
    }
}

/// CAS files linked into one working directory, to check after the action.
#[derive(Default)]
pub struct LinkedInputs {
    files: HashMap<PathBuf, (FileState, String)>,
}

/// Materialises tree `root` from `cas` at `dest` (which must exist and be
/// empty), recording the state of every CAS file linked.
pub fn stage_tree(cas: &Cas, root: &Digest, dest: &Path) -> Result<LinkedInputs, StageError> {
    let mut linked = LinkedInputs::default();
    // A missing input is the client's to fix (FAILED_PRECONDITION).
    let linked_files = check_out_tree(cas, root, dest).map_err(|e| match e {
        TreeStoreError::MissingTree(hash) | TreeStoreError::MissingEntry { hash, .. } => {
            StageError::Missing(hash)
        }
        other => other.into(),
    })?;
    for (source, hash) in linked_files {
        let meta = fs::metadata(&source).map_err(io_err(&source))?;
        linked.files.insert(source, (FileState::of(&meta), hash));
    }
    Ok(linked)
}

impl LinkedInputs {
    /// Checks that no linked CAS file was changed; repairs modes and evicts
    /// objects whose content no longer matches their id.
    pub fn verify(&self, cas: &Cas) -> Result<(), StageError> {
        for (path, (state, hash)) in &self.files {
            let Ok(meta) = fs::metadata(path) else {
                continue; // removed by someone else: nothing left to corrupt
            };
            let now = FileState::of(&meta);
            if now == *state {
                continue;
            }
            let file = fs::File::open(path).map_err(io_err(path))?;
            let actual = cas
                .hash_function()
                .hash_reader(ObjectKind::File, meta.len(), file)
                .map_err(io_err(path))?;
            if actual == *hash {
                // Only metadata changed: restore the read-only mode.
                let _ = fs::set_permissions(path, fs::Permissions::from_mode(state.mode));
                continue;
            }
            tracing::error!(file = %path.display(), hash, "action corrupted a CAS file; evicting it");
            let _ = fs::remove_file(path);
            return Err(StageError::InputModified(path.clone()));
        }
        Ok(())
    }
}
