//! Collecting an action's outputs into the CAS and describing them in an
//! `ActionResult`: files, directories (git trees in native mode, `Tree`
//! messages in compatible mode) and symlinks.
// Clients before REAPI 2.1 use the deprecated output fields.
#![allow(deprecated)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;

use crate::digest::{HashFunction, ObjectKind};
use crate::storage::trees::{store_directory, TreeStoreError};
use crate::storage::{Cas, CasError};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Tree(#[from] TreeStoreError),
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error("cannot read output {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output {0} is neither a file, a directory nor a symlink")]
    Special(String),
    #[error("output {0} is not valid UTF-8")]
    NotUtf8(String),
}

/// Which outputs the client asked for, in which protocol version.
#[derive(Clone, Debug)]
pub enum Requested {
    /// REAPI 2.1 and later: `output_paths`.
    Paths(Vec<String>),
    /// Before 2.1: separate file and directory lists.
    Legacy {
        files: Vec<String>,
        dirs: Vec<String>,
    },
}

impl Requested {
    pub fn all(&self) -> Vec<&str> {
        match self {
            Requested::Paths(p) => p.iter().map(String::as_str).collect(),
            Requested::Legacy { files, dirs } => files
                .iter()
                .chain(dirs.iter())
                .map(String::as_str)
                .collect(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stores the outputs found below `work_dir` and fills them into `result`.
/// Outputs the action did not create are left out.
pub fn collect(
    cas: &Cas,
    work_dir: &Path,
    requested: &Requested,
    result: &mut reapi::ActionResult,
) -> Result<(), OutputError> {
    let hash = cas.hash_function();
    let legacy = matches!(requested, Requested::Legacy { .. });
    let dir_outputs: Vec<&str> = match requested {
        Requested::Legacy { dirs, .. } => dirs.iter().map(String::as_str).collect(),
        Requested::Paths(_) => Vec::new(),
    };
    for rel in requested.all() {
        let path = work_dir.join(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let target = target
                .to_str()
                .ok_or_else(|| OutputError::NotUtf8(rel.to_string()))?
                .to_string();
            // justbuild clients read symlink targets as blobs: keep one in the CAS.
            cas.put_bytes(ObjectKind::File, target.as_bytes())?;
            let link = reapi::OutputSymlink {
                path: rel.to_string(),
                target,
                node_properties: None,
            };
            if !legacy {
                result.output_symlinks.push(link.clone());
            }
            // The pre-2.1 fields tell file from directory symlinks.
            let points_to_dir = if legacy {
                dir_outputs.contains(&rel)
            } else {
                path.is_dir()
            };
            if points_to_dir {
                result.output_directory_symlinks.push(link);
            } else {
                result.output_file_symlinks.push(link);
            }
        } else if ft.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            let kind = ObjectKind::blob(executable);
            let digest = cas.adopt_file(kind, &path)?;
            result.output_files.push(reapi::OutputFile {
                path: rel.to_string(),
                digest: Some(digest.to_wire(hash)),
                is_executable: executable,
                contents: Vec::new(),
                node_properties: None,
            });
        } else if ft.is_dir() {
            let stored = store_directory(cas, &path)?;
            let tree_digest = match hash {
                // Native clients get the git tree itself.
                HashFunction::GitSha1 => stored.root.to_wire(hash),
                HashFunction::Sha256 => {
                    let tree = reapi::Tree {
                        root: stored.root_directory,
                        children: stored.children,
                    };
                    cas.put_bytes(ObjectKind::File, &tree.encode_to_vec())?
                        .to_wire(hash)
                }
            };
            let mut dir = reapi::OutputDirectory {
                path: rel.to_string(),
                tree_digest: Some(tree_digest),
                ..Default::default()
            };
            if !hash.is_native() {
                dir.root_directory_digest = Some(stored.root.to_wire(hash));
            }
            result.output_directories.push(dir);
        } else {
            return Err(OutputError::Special(rel.to_string()));
        }
    }
    Ok(())
}
