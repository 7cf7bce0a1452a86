//! Trees in the local CAS, in either representation: git tree objects (native
//! mode) or REAPI `Directory` messages (compatible mode). Reading them as one
//! list of nodes, checking that everything a tree names is present, and
//! storing a directory from disk as a tree.

use crate::tree_walk::DirPath;
use std::fs;
use std::os::unix::ffi::OsStrExt;
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
    #[error(transparent)]
    TooDeep(#[from] crate::tree_walk::TooDeep),
    #[error("tree {root} nests {depth} levels deep, past the longest path the file system takes")]
    PathTooLong { root: String, depth: usize },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
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
    let mut walker = DirectoryStore {
        cas,
        children: Vec::new(),
    };
    let root = crate::tree_walk::post_order(&mut walker, DirPath(dir.to_path_buf()))?;
    let mut children = walker.children;
    // The root is finished last (native mode keeps no Directory messages).
    let root_directory = children.pop();
    Ok(StoredTree {
        root,
        children,
        root_directory,
    })
}

/// Stores a directory on disk bottom-up without recursion: what an action
/// writes may nest as deep as paths allow.
struct DirectoryStore<'a> {
    cas: &'a Cas,
    /// Compatible mode: every Directory message stored, in post-order.
    children: Vec<reapi::Directory>,
}

impl crate::tree_walk::PostOrder for DirectoryStore<'_> {
    type Key = DirPath;
    /// The entries that are not directories, and the subdirectories by name.
    type Data = (Vec<Node>, Vec<(Vec<u8>, DirPath)>);
    type Value = Digest;
    type Error = TreeStoreError;

    fn visit(&mut self, key: &DirPath) -> crate::tree_walk::VisitResult<Self> {
        use crate::tree_walk::DiskEntry;
        let listing = crate::tree_walk::list_directory(&key.0)
            .map_err(|(path, source)| TreeStoreError::Io { path, source })?;
        let mut nodes = Vec::new();
        let mut subdirs = Vec::new();
        for (name, entry) in listing {
            match entry {
                DiskEntry::Symlink { target } => nodes.push(Node::Symlink { name, target }),
                DiskEntry::Dir(sub) => subdirs.push((name, sub)),
                DiskEntry::File { path, mode, .. } => {
                    let executable = mode & 0o111 != 0;
                    let digest = self.cas.put_file(ObjectKind::blob(executable), &path)?;
                    nodes.push(Node::File {
                        name,
                        digest,
                        executable,
                    });
                }
                DiskEntry::Special(path) => return Err(TreeStoreError::SpecialFile(path)),
            }
        }
        let keys = subdirs.iter().map(|(_, key)| key.clone()).collect();
        Ok(crate::tree_walk::Visit::Expand((nodes, subdirs), keys))
    }

    fn finish(
        &mut self,
        _: &DirPath,
        (mut nodes, subdirs): Self::Data,
        done: &std::collections::HashMap<DirPath, Digest>,
    ) -> Result<Digest, TreeStoreError> {
        for (name, key) in subdirs {
            nodes.push(Node::Dir {
                name,
                digest: done[&key].clone(),
            });
        }
        let (digest, directory) = store_nodes(self.cas, nodes)?;
        self.children.extend(directory);
        Ok(digest)
    }
}

/// Writes the tree `root` from the CAS below `dest`, an existing empty
/// directory: files hard-linked from the CAS where the file system allows
/// (copied otherwise), symlinks and directories created. Directories wait
/// on an explicit stack, as trees from clients may nest deeper than a
/// thread's stack. Returns the CAS files used, with their hashes.
pub fn check_out_tree(
    cas: &Cas,
    root: &Digest,
    dest: &Path,
) -> Result<Vec<(PathBuf, String)>, TreeStoreError> {
    let mut linked = Vec::new();
    let mut pending = vec![(root.clone(), dest.to_path_buf(), 1)];
    let create_err = |path: &Path, depth: usize| {
        let path = path.to_path_buf();
        let root = root.hash.clone();
        move |source: std::io::Error| {
            if source.raw_os_error() == Some(libc::ENAMETOOLONG) {
                TreeStoreError::PathTooLong { root, depth }
            } else {
                TreeStoreError::Create { path, source }
            }
        }
    };
    while let Some((tree, dir, depth)) = pending.pop() {
        if depth > crate::tree_walk::MAX_TREE_DEPTH {
            return Err(crate::tree_walk::TooDeep {
                root: root.hash.clone(),
                limit: crate::tree_walk::MAX_TREE_DEPTH,
            }
            .into());
        }
        let nodes = read_tree(cas, &tree)?.ok_or(TreeStoreError::MissingTree(tree.hash))?;
        for node in nodes {
            let path = dir.join(std::ffi::OsStr::from_bytes(node.name()));
            match node {
                Node::Dir { digest, .. } => {
                    fs::create_dir(&path).map_err(create_err(&path, depth))?;
                    pending.push((digest, path, depth + 1));
                }
                Node::Symlink { target, .. } => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                        .map_err(create_err(&path, depth))?;
                }
                Node::File {
                    digest, executable, ..
                } => {
                    let kind = ObjectKind::blob(executable);
                    let source = cas_file_of_kind(cas, kind, &digest.hash).ok_or_else(|| {
                        TreeStoreError::MissingEntry {
                            tree: dir.display().to_string(),
                            kind,
                            hash: digest.hash.clone(),
                        }
                    })??;
                    if fs::hard_link(&source, &path).is_err() {
                        fs::copy(&source, &path).map_err(create_err(&path, depth))?;
                    }
                    linked.push((source, digest.hash));
                }
            }
        }
    }
    Ok(linked)
}

/// The CAS file holding `hash` with the wanted executable bit, made from
/// the other variant if only that one is present; `None` if neither is.
fn cas_file_of_kind(
    cas: &Cas,
    kind: ObjectKind,
    hash: &str,
) -> Option<Result<PathBuf, TreeStoreError>> {
    let wanted = cas.path(kind, hash);
    if wanted.is_file() {
        return Some(Ok(wanted));
    }
    let other = cas.find(kind, hash)?;
    Some(
        cas.put_file(kind, &other)
            .map(|_| wanted)
            .map_err(Into::into),
    )
}

/// One entry of a tree to encode. A symlink's `digest` names its target
/// blob (what git trees hold); `target` is its text (what `Directory`
/// messages hold, so required in compatible mode).
pub struct TreeEntry<'a> {
    pub name: &'a [u8],
    pub kind: ObjectKind,
    pub digest: &'a Digest,
    pub target: Option<&'a [u8]>,
}

/// Encodes one tree level in the hash mode's representation: a git tree
/// (native) or a `Directory` message with its entries sorted (compatible),
/// the message returned too. The one encoder of both representations.
pub fn encode_tree(
    hash: HashFunction,
    entries: &[TreeEntry<'_>],
) -> Result<(Vec<u8>, Option<reapi::Directory>), TreeError> {
    match hash {
        HashFunction::GitSha1 => {
            let mut git = Vec::with_capacity(entries.len());
            for e in entries {
                let mut id = [0u8; 20];
                hex::decode_to_slice(&e.digest.hash, &mut id).map_err(|_| {
                    TreeError::BadName(format!("{} is not a git object id", e.digest.hash))
                })?;
                git.push(GitTreeEntry {
                    name: e.name.to_vec(),
                    kind: e.kind,
                    id,
                });
            }
            Ok((serialize_git_tree(git)?, None))
        }
        HashFunction::Sha256 => {
            let mut dir = reapi::Directory::default();
            for e in entries {
                check_entry_name(e.name)?;
                let name = utf8_name(e.name.to_vec())?;
                match e.kind {
                    ObjectKind::File | ObjectKind::Executable => dir.files.push(reapi::FileNode {
                        name,
                        digest: Some(e.digest.to_wire(hash)),
                        is_executable: e.kind == ObjectKind::Executable,
                        node_properties: None,
                    }),
                    ObjectKind::Tree => dir.directories.push(reapi::DirectoryNode {
                        name,
                        digest: Some(e.digest.to_wire(hash)),
                    }),
                    ObjectKind::Symlink => {
                        let target = e.target.ok_or_else(|| {
                            TreeError::BadName(format!(
                                "the target of symlink {name:?} is not known"
                            ))
                        })?;
                        let target = String::from_utf8(target.to_vec()).map_err(|_| {
                            TreeError::BadName("symlink target is not UTF-8".into())
                        })?;
                        dir.symlinks.push(reapi::SymlinkNode {
                            name,
                            target,
                            node_properties: None,
                        })
                    }
                }
            }
            dir.files.sort_by(|a, b| a.name.cmp(&b.name));
            dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
            dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
            let mut names: Vec<&str> = (dir.files.iter().map(|f| f.name.as_str()))
                .chain(dir.directories.iter().map(|d| d.name.as_str()))
                .chain(dir.symlinks.iter().map(|s| s.name.as_str()))
                .collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(TreeError::Duplicate(w[0].to_string()));
            }
            Ok((dir.encode_to_vec(), Some(dir)))
        }
    }
}

/// Stores a tree made of `nodes` (whose contents are already in the CAS);
/// symlink targets are stored as blobs, as justbuild clients fetch them so
/// in either mode.
pub fn store_nodes(
    cas: &Cas,
    nodes: Vec<Node>,
) -> Result<(Digest, Option<reapi::Directory>), TreeStoreError> {
    let hash = cas.hash_function();
    let mut digests = Vec::with_capacity(nodes.len());
    for n in &nodes {
        digests.push(match n {
            Node::File { digest, .. } | Node::Dir { digest, .. } => digest.clone(),
            Node::Symlink { target, .. } => cas.put_bytes(ObjectKind::File, target)?,
        });
    }
    let entries: Vec<TreeEntry<'_>> = nodes
        .iter()
        .zip(&digests)
        .map(|(n, digest)| match n {
            Node::File {
                name, executable, ..
            } => TreeEntry {
                name,
                kind: ObjectKind::blob(*executable),
                digest,
                target: None,
            },
            Node::Dir { name, .. } => TreeEntry {
                name,
                kind: ObjectKind::Tree,
                digest,
                target: None,
            },
            Node::Symlink { name, target } => TreeEntry {
                name,
                kind: ObjectKind::Symlink,
                digest,
                target: Some(target),
            },
        })
        .collect();
    let (bytes, directory) = encode_tree(hash, &entries)?;
    Ok((cas.put_bytes(ObjectKind::Tree, &bytes)?, directory))
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
    use std::os::unix::fs::{symlink, PermissionsExt};

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
        let blob = HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"absent");
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
