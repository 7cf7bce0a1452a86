//! Directories in memory, in the endpoint's representation: git tree objects
//! (native mode) or `Directory` messages (compatible mode). Building an
//! action's input root from its path → object map, and reading and writing
//! single tree objects for overlays.

use std::collections::BTreeMap;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;

use crate::digest::{parse_git_tree, Digest, HashFunction, ObjectKind};
use crate::storage::trees::{directory_nodes, encode_tree, Node as StoredNode, TreeEntry};

/// One entry of a directory: what it is and its digest; symlinks also carry
/// their target in compatible mode, where a `Directory` holds it inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: ObjectKind,
    pub digest: Digest,
    pub target: Option<String>,
}

impl Entry {
    /// The same object: kind and hash agree (sizes from git trees are unknown).
    pub fn same_object(&self, other: &Entry) -> bool {
        self.kind == other.kind && self.digest.hash == other.digest.hash
    }
}

/// A directory's entries by name (names compare bytewise, as both formats sort).
pub type Entries = BTreeMap<Vec<u8>, Entry>;

/// A serialised tree object with its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeBlob {
    pub digest: Digest,
    pub data: Vec<u8>,
}

/// Serialises one directory level (through the one encoder of both
/// representations, `storage::trees::encode_tree`).
pub fn serialize(hash: HashFunction, entries: &Entries) -> Result<TreeBlob, String> {
    let encoded: Vec<TreeEntry<'_>> = entries
        .iter()
        .map(|(name, e)| TreeEntry {
            name,
            kind: e.kind,
            digest: &e.digest,
            target: e.target.as_deref().map(str::as_bytes),
        })
        .collect();
    let (data, _) = encode_tree(hash, &encoded).map_err(|e| e.to_string())?;
    Ok(TreeBlob {
        digest: hash.digest_bytes(ObjectKind::Tree, &data),
        data,
    })
}

/// Parses one tree object read from the CAS.
pub fn parse(hash: HashFunction, digest: &Digest, data: &[u8]) -> Result<Entries, String> {
    let bad = |e: String| format!("tree {} is malformed: {e}", digest.hash);
    let mut entries = Entries::new();
    match hash {
        HashFunction::GitSha1 => {
            for e in parse_git_tree(data).map_err(|e| bad(e.to_string()))? {
                let entry = Entry {
                    kind: e.kind,
                    digest: Digest {
                        hash: hex::encode(e.id),
                        size: 0,
                        is_tree: e.kind.is_tree(),
                    },
                    target: None,
                };
                entries.insert(e.name, entry);
            }
        }
        HashFunction::Sha256 => {
            let dir = reapi::Directory::decode(data).map_err(|e| bad(e.to_string()))?;
            let nodes =
                directory_nodes(hash, &digest.hash, &dir).map_err(|e| bad(e.to_string()))?;
            for node in nodes {
                let (name, entry) = match node {
                    StoredNode::File {
                        name,
                        digest,
                        executable,
                    } => (
                        name,
                        Entry {
                            kind: ObjectKind::blob(executable),
                            digest,
                            target: None,
                        },
                    ),
                    StoredNode::Dir { name, digest } => (
                        name,
                        Entry {
                            kind: ObjectKind::Tree,
                            digest,
                            target: None,
                        },
                    ),
                    StoredNode::Symlink { name, target } => {
                        let digest = hash.digest_bytes(ObjectKind::File, &target);
                        let target = String::from_utf8(target)
                            .map_err(|_| bad("symlink target is not UTF-8".into()))?;
                        (
                            name,
                            Entry {
                                kind: ObjectKind::Symlink,
                                digest,
                                target: Some(target),
                            },
                        )
                    }
                };
                entries.insert(name, entry);
            }
        }
    }
    Ok(entries)
}

/// A directory under construction: objects placed at paths, directories in between.
enum Node {
    Object(Entry),
    Dir(BTreeMap<Vec<u8>, Node>),
}

/// Input paths come from target descriptions and may nest thousands of
/// levels deep: a directory is taken apart level by level rather than by
/// the recursive drop of nested maps.
impl Drop for Node {
    fn drop(&mut self) {
        let Node::Dir(children) = self else { return };
        let mut maps = vec![std::mem::take(children)];
        while let Some(map) = maps.pop() {
            for (_, mut node) in map {
                if let Node::Dir(grandchildren) = &mut node {
                    maps.push(std::mem::take(grandchildren));
                }
            }
        }
    }
}

/// Places `entry` at `path` (normalised, relative, not the root).
fn place(root: &mut BTreeMap<Vec<u8>, Node>, path: &str, entry: Entry) -> Result<(), String> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "input path {path:?} is not a normalised relative path"
        ));
    }
    if parts.len() > crate::tree_walk::MAX_TREE_DEPTH {
        return Err(format!(
            "input path of {} levels is deeper than {}",
            parts.len(),
            crate::tree_walk::MAX_TREE_DEPTH
        ));
    }
    let (last, dirs) = parts.split_last().expect("split gives one part at least");
    let mut level = root;
    for (i, part) in dirs.iter().enumerate() {
        let node = level
            .entry(part.as_bytes().to_vec())
            .or_insert_with(|| Node::Dir(BTreeMap::new()));
        level = match node {
            Node::Dir(children) => children,
            Node::Object(_) => {
                return Err(format!(
                    "input {path:?} lies below {:?}, which is not a directory",
                    parts[..=i].join("/")
                ))
            }
        };
    }
    match level.entry(last.as_bytes().to_vec()) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(Node::Object(entry));
            Ok(())
        }
        std::collections::btree_map::Entry::Occupied(_) => Err(format!(
            "input {path:?} clashes with a directory of other inputs"
        )),
    }
}

/// Serialises a directory bottom-up, children before their parents in
/// `out`, on an explicit stack (see [`Node`]'s drop).
fn finish(
    hash: HashFunction,
    dir: BTreeMap<Vec<u8>, Node>,
    out: &mut Vec<TreeBlob>,
) -> Result<Digest, String> {
    struct Level {
        name: Vec<u8>,
        children: std::collections::btree_map::IntoIter<Vec<u8>, Node>,
        entries: Entries,
    }
    let mut stack = vec![Level {
        name: Vec::new(),
        children: dir.into_iter(),
        entries: Entries::new(),
    }];
    loop {
        let top = stack.last_mut().expect("a level is open");
        match top.children.next() {
            Some((name, mut node)) => match &mut node {
                Node::Object(entry) => {
                    let entry = entry.clone();
                    top.entries.insert(name, entry);
                }
                Node::Dir(children) => {
                    let children = std::mem::take(children).into_iter();
                    stack.push(Level {
                        name,
                        children,
                        entries: Entries::new(),
                    });
                }
            },
            None => {
                let level = stack.pop().expect("a level is open");
                let blob = serialize(hash, &level.entries)?;
                let digest = blob.digest.clone();
                out.push(blob);
                match stack.last_mut() {
                    Some(parent) => {
                        let entry = Entry {
                            kind: ObjectKind::Tree,
                            digest,
                            target: None,
                        };
                        parent.entries.insert(level.name, entry);
                    }
                    None => return Ok(digest),
                }
            }
        }
    }
}

/// The input root of `inputs` (path → object): the root's digest and every
/// tree object it needs, children first. A single tree at `""` or `"."` is
/// the root itself.
pub fn input_root(
    hash: HashFunction,
    inputs: &[(String, Entry)],
) -> Result<(Digest, Vec<TreeBlob>), String> {
    if let [(path, entry)] = inputs {
        if (path.is_empty() || path == ".") && entry.kind.is_tree() {
            return Ok((entry.digest.clone(), Vec::new()));
        }
    }
    let mut root = BTreeMap::new();
    for (path, entry) in inputs {
        if path.is_empty() || path == "." {
            return Err(format!(
                "input {path:?} stages a {:?} at the root, which only a single tree may",
                entry.kind
            ));
        }
        place(&mut root, path, entry.clone())?;
    }
    let mut blobs = Vec::new();
    let digest = finish(hash, root, &mut blobs)?;
    Ok((digest, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(hash: HashFunction, content: &str, kind: ObjectKind) -> Entry {
        Entry {
            kind,
            digest: hash.digest_bytes(ObjectKind::File, content.as_bytes()),
            target: (kind == ObjectKind::Symlink).then(|| content.to_string()),
        }
    }

    #[test]
    fn native_root_matches_git() {
        // `printf 'hello\n' > a/b; git add a; git write-tree` style check:
        // tree with one file "hello" (content "hello\n") and an executable.
        let hash = HashFunction::GitSha1;
        let inputs = vec![
            ("hello".to_string(), blob(hash, "hello\n", ObjectKind::File)),
            (
                "run".to_string(),
                blob(hash, "hello\n", ObjectKind::Executable),
            ),
            ("link".to_string(), blob(hash, "hello", ObjectKind::Symlink)),
        ];
        let (root, blobs) = input_root(hash, &inputs).unwrap();
        // The same tree as digest.rs's vector (checked with git mktree).
        assert_eq!(root.hash, "48f00e45b213a0d753774d3579d58d4c31cacda9");
        assert!(root.is_tree);
        assert_eq!(blobs.len(), 1);
        assert_eq!(root.size, blobs[0].data.len() as u64);
    }

    #[test]
    fn nested_paths_make_directories_children_first() {
        for hash in [HashFunction::GitSha1, HashFunction::Sha256] {
            let inputs = vec![
                ("a/b/c.txt".to_string(), blob(hash, "c", ObjectKind::File)),
                ("a/d.txt".to_string(), blob(hash, "d", ObjectKind::File)),
                ("e".to_string(), blob(hash, "e", ObjectKind::Symlink)),
            ];
            let (root, blobs) = input_root(hash, &inputs).unwrap();
            assert_eq!(blobs.len(), 3);
            assert_eq!(blobs.last().unwrap().digest, root);
            let top = parse(hash, &root, &blobs[2].data).unwrap();
            assert_eq!(top.len(), 2);
            let a = &top[b"a".as_slice()];
            assert_eq!(a.kind, ObjectKind::Tree);
            assert_eq!(a.digest.hash, blobs[1].digest.hash);
            let link = &top[b"e".as_slice()];
            assert_eq!(link.kind, ObjectKind::Symlink);
            assert_eq!(link.digest.hash, hash.hash_bytes(ObjectKind::File, b"e"));
            // Round trip: serialising the parsed level gives the same object
            // (git trees parse without sizes, which they do not store).
            assert_eq!(serialize(hash, &top).unwrap().digest.hash, root.hash);
        }
    }

    #[test]
    fn single_tree_at_the_root_is_used_directly() {
        let hash = HashFunction::Sha256;
        let tree = Entry {
            kind: ObjectKind::Tree,
            digest: hash.digest_bytes(ObjectKind::Tree, b"whatever"),
            target: None,
        };
        for path in ["", "."] {
            let (root, blobs) = input_root(hash, &[(path.to_string(), tree.clone())]).unwrap();
            assert_eq!(root, tree.digest);
            assert!(blobs.is_empty());
        }
        let file = blob(hash, "x", ObjectKind::File);
        assert!(input_root(hash, &[(".".to_string(), file.clone())]).is_err());
        // An empty input map is the empty directory.
        let (empty, blobs) = input_root(hash, &[]).unwrap();
        assert_eq!(empty.hash, hash.hash_bytes(ObjectKind::File, b""));
        assert_eq!(blobs.len(), 1);
        assert_eq!(
            input_root(HashFunction::GitSha1, &[]).unwrap().0.hash,
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }

    #[test]
    fn ten_thousand_levels_build_and_drop_without_recursion() {
        for hash in [HashFunction::GitSha1, HashFunction::Sha256] {
            let deep = format!("{}f", "d/".repeat(10_000));
            let inputs = vec![(deep.clone(), blob(hash, "x", ObjectKind::File))];
            let (_, blobs) = input_root(hash, &inputs).unwrap();
            assert_eq!(blobs.len(), 10_001);
            // A clash after the deep path: the half-built directory is dropped.
            let clash = vec![
                (deep, blob(hash, "x", ObjectKind::File)),
                ("d".to_string(), blob(hash, "y", ObjectKind::File)),
            ];
            assert!(input_root(hash, &clash).is_err());
        }
        let too_deep = format!("{}f", "d/".repeat(crate::tree_walk::MAX_TREE_DEPTH));
        let inputs = vec![(too_deep, blob(HashFunction::GitSha1, "x", ObjectKind::File))];
        let err = input_root(HashFunction::GitSha1, &inputs).unwrap_err();
        assert!(err.contains("deeper than"), "{err}");
    }

    #[test]
    fn clashes_are_errors() {
        let hash = HashFunction::GitSha1;
        let f = blob(hash, "x", ObjectKind::File);
        let below_file = vec![("a".to_string(), f.clone()), ("a/b".to_string(), f.clone())];
        assert!(input_root(hash, &below_file)
            .unwrap_err()
            .contains("not a directory"));
        let dir_then_file = vec![("a/b".to_string(), f.clone()), ("a".to_string(), f.clone())];
        assert!(input_root(hash, &dir_then_file).is_err());
        assert!(input_root(hash, &[("a/../b".to_string(), f.clone())]).is_err());
        assert!(input_root(hash, &[("a//b".to_string(), f)]).is_err());
    }
}
