//! Trees in the local CAS, in either representation: git tree objects (native
//! mode) or REAPI `Directory` messages (compatible mode). Reading them as one
//! list of nodes, checking that everything a tree names is present, and
//! storing a directory from disk as a tree.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;

use super::cas::{Cas, CasError};
use crate::digest::{
    check_entry_name, parse_git_tree, serialize_git_tree, Digest, GitTreeEntry, HashFunction,
    ObjectKind, TreeError,
};

/// Errors reading or writing trees.
#[derive(Debug, thiserror::Error)]
pub enum TreeStoreError {
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error(transparent)]
    Format(#[from] TreeError),
    #[error("tree {0} is not in the CAS")]
    MissingTree(String),
    #[error("tree {tree} names {kind:?} {hash}, which is not in the CAS")]
    MissingEntry {
        tree: String,
        kind: ObjectKind,
        hash: String,
    },
    #[error("Directory message {0} does not parse: {1}")]
    BadDirectory(String, String),
    #[error("invalid digest in Directory message {0}: {1}")]
    BadDigest(String, String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is neither a file, a directory nor a symlink")]
    SpecialFile(PathBuf),
}

/// One entry of a tree, independent of the representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A file or executable with its content digest.
    File {
        name: Vec<u8>,
        digest: Digest,
        executable: bool,
    },
    Dir {
        name: Vec<u8>,
        digest: Digest,
    },
    Symlink {
        name: Vec<u8>,
        target: Vec<u8>,
    },
}

impl Node {
    pub fn name(&self) -> &[u8] {
        match self {
            Node::File { name, .. } | Node::Dir { name, .. } | Node::Symlink { name, .. } => name,
        }
    }
}

fn git_id_hex(id: &[u8; 20]) -> String {
    hex::encode(id)
}

/// Reads the tree `digest` from the CAS as a list of nodes; `None` if it is absent.
pub fn read_tree(cas: &Cas, digest: &Digest) -> Result<Option<Vec<Node>>, TreeStoreError> {
    let Some(bytes) = cas.read(ObjectKind::Tree, &digest.hash)? else {
        return Ok(None);
    };
    match cas.hash_function() {
        HashFunction::GitSha1 => {
            let mut nodes = Vec::new();
            for e in parse_git_tree(&bytes)? {
                let hash = git_id_hex(&e.id);
                nodes.push(match e.kind {
                    ObjectKind::Tree => Node::Dir {
                        name: e.name,
                        digest: Digest {
                            hash,
                            size: 0,
                            is_tree: true,
                        },
                    },
                    ObjectKind::Symlink => {
                        let target = cas.read(ObjectKind::File, &hash)?.ok_or_else(|| {
                            TreeStoreError::MissingEntry {
                                tree: digest.hash.clone(),
                                kind: ObjectKind::Symlink,
                                hash: hash.clone(),
                            }
                        })?;
                        Node::Symlink {
                            name: e.name,
                            target,
                        }
                    }
                    kind => Node::File {
                        name: e.name,
                        digest: Digest {
                            hash,
                            size: 0,
                            is_tree: false,
                        },
                        executable: kind == ObjectKind::Executable,
                    },
                });
            }
            Ok(Some(nodes))
        }
        HashFunction::Sha256 => {
            let dir = reapi::Directory::decode(bytes.as_slice())
                .map_err(|e| TreeStoreError::BadDirectory(digest.hash.clone(), e.to_string()))?;
            directory_nodes(cas.hash_function(), &digest.hash, &dir).map(Some)
        }
    }
}

/// The nodes of a `Directory` message, names and digests checked.
pub fn directory_nodes(
    hash: HashFunction,
    id: &str,
    dir: &reapi::Directory,
) -> Result<Vec<Node>, TreeStoreError> {
    let digest = |d: &Option<reapi::Digest>| -> Result<Digest, TreeStoreError> {
        let d = d.clone().unwrap_or_default();
        hash.digest_from_wire(&d)
            .map_err(|e| TreeStoreError::BadDigest(id.to_string(), e.to_string()))
    };
    let mut nodes = Vec::new();
    for f in &dir.files {
        check_entry_name(f.name.as_bytes())?;
        nodes.push(Node::File {
            name: f.name.as_bytes().to_vec(),
            digest: digest(&f.digest)?,
            executable: f.is_executable,
        });
    }
    for d in &dir.directories {
        check_entry_name(d.name.as_bytes())?;
        nodes.push(Node::Dir {
            name: d.name.as_bytes().to_vec(),
            digest: digest(&d.digest)?,
        });
    }
    for s in &dir.symlinks {
        check_entry_name(s.name.as_bytes())?;
        nodes.push(Node::Symlink {
            name: s.name.as_bytes().to_vec(),
            target: s.target.as_bytes().to_vec(),
        });
    }
    let mut names: Vec<&[u8]> = nodes.iter().map(Node::name).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(TreeError::Duplicate(String::from_utf8_lossy(w[0]).into_owned()).into());
    }
    Ok(nodes)
}

/// The objects a tree object names, each with the kind it is stored as: git
/// trees name their symlinks' targets as blobs (size unknown), `Directory`
/// messages hold them inline; sizes are those the representation has.
pub fn tree_children(
    hash: HashFunction,
    id: &str,
    bytes: &[u8],
) -> Result<Vec<(Digest, ObjectKind)>, TreeStoreError> {
    if hash.is_native() {
        return Ok(parse_git_tree(bytes)?
            .into_iter()
            .map(|e| {
                let digest = Digest {
                    hash: git_id_hex(&e.id),
                    size: 0,
                    is_tree: e.kind.is_tree(),
                };
                let stored = match e.kind {
                    ObjectKind::Symlink => ObjectKind::File,
                    k => k,
                };
                (digest, stored)
            })
            .collect());
    }
    let dir = reapi::Directory::decode(bytes)
        .map_err(|e| TreeStoreError::BadDirectory(id.to_string(), e.to_string()))?;
    Ok(directory_nodes(hash, id, &dir)?
        .into_iter()
        .filter_map(|n| match n {
            Node::File {
                digest, executable, ..
            } => Some((digest, ObjectKind::blob(executable))),
            Node::Dir { digest, .. } => Some((digest, ObjectKind::Tree)),
            Node::Symlink { .. } => None,
        })
        .collect())
}

/// Native mode: checks that every object a git tree names is already in the CAS
/// (the invariant that lets trees travel without their content).
pub fn check_git_tree_complete(
    cas: &Cas,
    tree_hash: &str,
    bytes: &[u8],
) -> Result<(), TreeStoreError> {
    for e in parse_git_tree(bytes)? {
        let hash = git_id_hex(&e.id);
        let kind = match e.kind {
            ObjectKind::Symlink => ObjectKind::File,
            k => k,
        };
        if !cas.contains(kind, &hash) {
            return Err(TreeStoreError::MissingEntry {
                tree: tree_hash.to_string(),
                kind: e.kind,
                hash,
            });
        }
    }
    Ok(())
}

/// A directory from disk, stored as a tree.
pub struct StoredTree {
    /// The root tree (git tree or Directory message).
    pub root: Digest,
    /// Compatible mode: every Directory message below the root, for a REAPI `Tree`.
    pub children: Vec<reapi::Directory>,
    /// Compatible mode: the root's Directory message.
    pub root_directory: Option<reapi::Directory>,
}

/// Stores every file, symlink and directory below `dir` in the CAS and returns the root tree.
pub fn store_directory(cas: &Cas, dir: &Path) -> Result<StoredTree, TreeStoreError> {
    let mut children = Vec::new();
    let (root, root_directory) = store_dir_rec(cas, dir, &mut children)?;
    Ok(StoredTree {
        root,
        children,
        root_directory,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TreeStoreError + '_ {
    move |source| TreeStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn store_dir_rec(
    cas: &Cas,
    dir: &Path,
    children: &mut Vec<reapi::Directory>,
) -> Result<(Digest, Option<reapi::Directory>), TreeStoreError> {
    let mut nodes = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().as_bytes().to_vec();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            nodes.push(Node::Symlink {
                name,
                target: target.as_os_str().as_bytes().to_vec(),
            });
        } else if ft.is_dir() {
            let (digest, directory) = store_dir_rec(cas, &path, children)?;
            if let Some(d) = directory {
                children.push(d);
            }
            nodes.push(Node::Dir { name, digest });
        } else if ft.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            let kind = ObjectKind::blob(executable);
            let digest = cas.put_file(kind, &path)?;
            nodes.push(Node::File {
                name,
                digest,
                executable,
            });
        } else {
            return Err(TreeStoreError::SpecialFile(path));
        }
    }
    store_nodes(cas, nodes)
}

/// Stores a tree made of `nodes` (whose contents are already in the CAS).
pub fn store_nodes(
    cas: &Cas,
    nodes: Vec<Node>,
) -> Result<(Digest, Option<reapi::Directory>), TreeStoreError> {
    let hash = cas.hash_function();
    match hash {
        HashFunction::GitSha1 => {
            let mut entries = Vec::with_capacity(nodes.len());
            for n in nodes {
                let (name, kind, id_hex) = match n {
                    Node::File {
                        name,
                        digest,
                        executable,
                    } => {
                        let kind = ObjectKind::blob(executable);
                        (name, kind, digest.hash)
                    }
                    Node::Dir { name, digest } => (name, ObjectKind::Tree, digest.hash),
                    Node::Symlink { name, target } => {
                        let d = cas.put_bytes(ObjectKind::File, &target)?;
                        (name, ObjectKind::Symlink, d.hash)
                    }
                };
                let mut id = [0u8; 20];
                hex::decode_to_slice(&id_hex, &mut id).map_err(|_| {
                    TreeStoreError::BadDigest(id_hex.clone(), "not a git id".into())
                })?;
                entries.push(GitTreeEntry { name, kind, id });
            }
            let bytes = serialize_git_tree(entries)?;
            Ok((cas.put_bytes(ObjectKind::Tree, &bytes)?, None))
        }
        HashFunction::Sha256 => {
            let mut dir = reapi::Directory::default();
            for n in nodes {
                match n {
                    Node::File {
                        name,
                        digest,
                        executable,
                    } => dir.files.push(reapi::FileNode {
                        name: utf8_name(name)?,
                        digest: Some(digest.to_wire(hash)),
                        is_executable: executable,
                        node_properties: None,
                    }),
                    Node::Dir { name, digest } => dir.directories.push(reapi::DirectoryNode {
                        name: utf8_name(name)?,
                        digest: Some(digest.to_wire(hash)),
                    }),
                    Node::Symlink { name, target } => {
                        // justbuild clients fetch symlink targets as blobs, in this mode too.
                        cas.put_bytes(ObjectKind::File, &target)?;
                        dir.symlinks.push(reapi::SymlinkNode {
                            name: utf8_name(name)?,
                            target: String::from_utf8(target).map_err(|_| {
                                TreeError::BadName("symlink target is not UTF-8".into())
                            })?,
                            node_properties: None,
                        })
                    }
                }
            }
            dir.files.sort_by(|a, b| a.name.cmp(&b.name));
            dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
            dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
            let digest = cas.put_bytes(ObjectKind::Tree, &dir.encode_to_vec())?;
            Ok((digest, Some(dir)))
        }
    }
}

fn utf8_name(name: Vec<u8>) -> Result<String, TreeError> {
    String::from_utf8(name).map_err(|e| {
        TreeError::BadName(format!(
            "{} (names must be UTF-8 in compatible mode)",
            String::from_utf8_lossy(e.as_bytes())
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn sample_dir(root: &Path) {
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("a.txt"), "a\n").unwrap();
        fs::write(root.join("sub/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("sub/run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../a.txt", root.join("sub/link")).unwrap();
    }

    #[test]
    fn native_store_matches_git_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        sample_dir(&work);
        let cas = Cas::new(
            HashFunction::GitSha1,
            dir.path().join("cas"),
            dir.path().join("tmp"),
        );
        let stored = store_directory(&cas, &work).unwrap();
        // Same id as the git import (which equals `git write-tree` plus empty dirs).
        let repo = git2::Repository::init_bare(dir.path().join("git")).unwrap();
        let expected = crate::git::import_directory(&repo, &work).unwrap();
        assert_eq!(stored.root.hash, expected.to_string());
        assert!(stored.root.is_tree);
        let nodes = read_tree(&cas, &stored.root).unwrap().unwrap();
        assert_eq!(nodes.len(), 2);
        let Node::Dir { digest: sub, .. } = &nodes[1] else {
            panic!("sub is a dir")
        };
        let sub_nodes = read_tree(&cas, sub).unwrap().unwrap();
        assert!(sub_nodes.contains(&Node::Symlink {
            name: b"link".to_vec(),
            target: b"../a.txt".to_vec()
        }));
        assert!(sub_nodes
            .iter()
            .any(|n| matches!(n, Node::File { name, executable: true, .. } if name == b"run")));
        let bytes = cas
            .read(ObjectKind::Tree, &stored.root.hash)
            .unwrap()
            .unwrap();
        check_git_tree_complete(&cas, &stored.root.hash, &bytes).unwrap();
    }

    #[test]
    fn invariant_check_finds_missing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::new(
            HashFunction::GitSha1,
            dir.path().join("cas"),
            dir.path().join("tmp"),
        );
        let blob = HashFunction::GitSha1.hash_bytes(false, b"absent");
        let mut id = [0u8; 20];
        hex::decode_to_slice(&blob, &mut id).unwrap();
        let bytes = serialize_git_tree(vec![GitTreeEntry {
            name: b"f".to_vec(),
            kind: ObjectKind::File,
            id,
        }])
        .unwrap();
        let err = check_git_tree_complete(&cas, "t", &bytes).unwrap_err();
        assert!(matches!(err, TreeStoreError::MissingEntry { .. }));
        cas.put_bytes(ObjectKind::File, b"absent").unwrap();
        check_git_tree_complete(&cas, "t", &bytes).unwrap();
    }

    #[test]
    fn compatible_store_builds_canonical_directories() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        sample_dir(&work);
        let cas = Cas::new(
            HashFunction::Sha256,
            dir.path().join("cas"),
            dir.path().join("tmp"),
        );
        let stored = store_directory(&cas, &work).unwrap();
        let root = stored.root_directory.clone().unwrap();
        assert_eq!(root.files.len(), 1);
        assert_eq!(root.directories[0].name, "sub");
        assert_eq!(stored.children.len(), 2, "sub and sub/empty");
        let nodes = read_tree(&cas, &stored.root).unwrap().unwrap();
        assert_eq!(nodes.len(), 2);
        // Storing the same content again gives the same digest.
        assert_eq!(store_directory(&cas, &work).unwrap().root, stored.root);
    }

    #[test]
    fn bad_directory_messages_are_rejected() {
        let hf = HashFunction::Sha256;
        let good = Some(hf.empty_blob().to_wire(hf));
        let file = |name: &str| reapi::FileNode {
            name: name.into(),
            digest: good.clone(),
            ..Default::default()
        };
        for names in [vec!["a", "a"], vec!["../x"], vec![""]] {
            let dir = reapi::Directory {
                files: names.iter().map(|n| file(n)).collect(),
                ..Default::default()
            };
            assert!(directory_nodes(hf, "d", &dir).is_err(), "{names:?}");
        }
        let bad_digest = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "f".into(),
                digest: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(directory_nodes(hf, "d", &bad_digest).is_err());
    }
}
