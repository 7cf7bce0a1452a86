//! Post-order walks over trees without recursion.
//!
//! Trees come from clients, and a hostile one may nest deeper than any
//! thread's stack: 4,000 nested git trees overflowed the stack of a
//! recursive walk and aborted the daemon. Walks that build a value per tree
//! from the values of its subtrees (structures, synced digests, converted
//! trees) run here on an explicit stack, bounded by [`MAX_TREE_DEPTH`] so
//! that such a tree is an error rather than a crash.

use std::collections::HashMap;
use std::hash::Hash;

pub use crate::digest::MAX_TREE_DEPTH;

/// What a walker found at a tree.
pub enum Visit<K, D, V> {
    /// Its value is known already (remembered, or nothing below it).
    Known(V),
    /// Its value is built by [`PostOrder::finish`] from `D` once every
    /// subtree in the list has its value.
    Expand(D, Vec<K>),
}

/// A tree deeper than [`MAX_TREE_DEPTH`].
#[derive(Debug, thiserror::Error)]
#[error("tree {root} is deeper than {limit} levels")]
pub struct TooDeep {
    pub root: String,
    pub limit: usize,
}

/// A directory on disk as a walk key (keys must print, for errors).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirPath(pub std::path::PathBuf);

impl std::fmt::Display for DirPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

/// One entry of a directory on disk.
pub enum DiskEntry {
    Symlink {
        target: Vec<u8>,
    },
    Dir(DirPath),
    File {
        path: std::path::PathBuf,
        mode: u32,
        len: u64,
    },
    /// A device, FIFO or socket.
    Special(std::path::PathBuf),
}

/// A failure to list a directory, with the path it concerns.
pub type ListError = (std::path::PathBuf, std::io::Error);

/// The entries of `dir` by name, symlinks not followed.
pub fn list_directory(dir: &std::path::Path) -> Result<Vec<(Vec<u8>, DiskEntry)>, ListError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let at = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e| (path, e)
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let path = entry.path();
        let name = entry.file_name().as_bytes().to_vec();
        let meta = std::fs::symlink_metadata(&path).map_err(at(&path))?;
        let kind = meta.file_type();
        let listed = if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(at(&path))?;
            DiskEntry::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if kind.is_dir() {
            DiskEntry::Dir(DirPath(path))
        } else if kind.is_file() {
            DiskEntry::File {
                path,
                mode: meta.permissions().mode(),
                len: meta.len(),
            }
        } else {
            DiskEntry::Special(path)
        };
        out.push((name, listed));
    }
    Ok(out)
}

/// What [`PostOrder::visit`] returns.
pub type VisitResult<W> = Result<
    Visit<<W as PostOrder>::Key, <W as PostOrder>::Data, <W as PostOrder>::Value>,
    <W as PostOrder>::Error,
>;

/// One walk: how to look at a tree, and how to finish it.
pub trait PostOrder {
    type Key: Clone + Eq + Hash + std::fmt::Display;
    type Data;
    type Value: Clone;
    type Error: From<TooDeep>;

    fn visit(&mut self, key: &Self::Key) -> VisitResult<Self>;

    /// Builds the value of `key`; `done` holds the value of every subtree
    /// named by its [`Visit::Expand`].
    fn finish(
        &mut self,
        key: &Self::Key,
        data: Self::Data,
        done: &HashMap<Self::Key, Self::Value>,
    ) -> Result<Self::Value, Self::Error>;
}

/// Walks the tree `root` with `walker`, every subtree finished before its
/// parent and each distinct subtree once; returns the root's value.
pub fn post_order<W: PostOrder>(walker: &mut W, root: W::Key) -> Result<W::Value, W::Error> {
    enum Step<K, D> {
        Enter(K, usize),
        Exit(K, D),
    }
    let mut done: HashMap<W::Key, W::Value> = HashMap::new();
    let mut stack = vec![Step::Enter(root.clone(), 1)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Enter(key, depth) => {
                if done.contains_key(&key) {
                    continue;
                }
                if depth > MAX_TREE_DEPTH {
                    return Err(TooDeep {
                        root: root.to_string(),
                        limit: MAX_TREE_DEPTH,
                    }
                    .into());
                }
                match walker.visit(&key)? {
                    Visit::Known(value) => {
                        done.insert(key, value);
                    }
                    Visit::Expand(data, children) => {
                        stack.push(Step::Exit(key, data));
                        for child in children.into_iter().rev() {
                            if !done.contains_key(&child) {
                                stack.push(Step::Enter(child, depth + 1));
                            }
                        }
                    }
                }
            }
            Step::Exit(key, data) => {
                let value = walker.finish(&key, data, &done)?;
                done.insert(key, value);
            }
        }
    }
    Ok(done.remove(&root).expect("the root is finished last"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees as numbers: n has the children n+1 and n+2 while below `leaf`.
    struct Chain {
        leaf: u64,
        finished: Vec<u64>,
    }

    impl PostOrder for Chain {
        type Key = u64;
        type Data = ();
        type Value = u64;
        type Error = String;

        fn visit(&mut self, key: &u64) -> Result<Visit<u64, (), u64>, String> {
            Ok(if *key >= self.leaf {
                Visit::Known(1)
            } else {
                Visit::Expand((), vec![key + 1, key + 2])
            })
        }

        fn finish(&mut self, key: &u64, _: (), done: &HashMap<u64, u64>) -> Result<u64, String> {
            self.finished.push(*key);
            Ok(done[&(key + 1)].wrapping_add(done[&(key + 2)]))
        }
    }

    impl From<TooDeep> for String {
        fn from(e: TooDeep) -> String {
            e.to_string()
        }
    }

    #[test]
    fn children_first_each_once_and_deep_without_recursion() {
        // A DAG whose unfolded size is Fibonacci: shared subtrees are
        // finished once, and 10,000 levels need no stack.
        let mut walk = Chain {
            leaf: 30,
            finished: Vec::new(),
        };
        assert_eq!(post_order(&mut walk, 0).unwrap(), 2_178_309);
        assert_eq!(walk.finished, (0..30).rev().collect::<Vec<_>>());
        let mut deep = Chain {
            leaf: 10_000,
            finished: Vec::new(),
        };
        assert!(post_order(&mut deep, 0).is_ok());
        let mut too_deep = Chain {
            leaf: MAX_TREE_DEPTH as u64 + 10,
            finished: Vec::new(),
        };
        let err = post_order(&mut too_deep, 0).unwrap_err();
        assert_eq!(
            err,
            format!("tree 0 is deeper than {MAX_TREE_DEPTH} levels")
        );
    }
}
