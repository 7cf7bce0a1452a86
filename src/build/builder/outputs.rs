//! What an action produced, read from its `ActionResult`: files, symlinks
//! and directories by their path relative to the working directory.
//!
//! In compatible mode an output directory arrives as a `Tree` message; the
//! directory's id is the digest of its root `Directory`, and the endpoint
//! need not keep the `Directory` messages, so they are uploaded (with the
//! targets of contained symlinks as blobs) to keep the tree usable as an
//! input. Symlink targets are blobs in the CAS in both modes, so symlink
//! outputs stay readable as `KNOWN` artifacts. Upwards symlinks are errors.
// Clients before REAPI 2.1 use the deprecated output fields.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;

use crate::build::expr::path::is_non_upwards;
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::remote::upload::{upload_missing, Content};
use crate::remote::RemoteCas;

use super::tree::Entry;

/// Outputs by their path as the endpoint reports it (relative to the cwd).
pub type Produced = HashMap<String, Entry>;

fn upwards_error(path: &str, target: &str) -> String {
    format!("output {path:?} is an upwards symlink (to {target:?})")
}

/// Blobs to make sure of, deduplicated by hash.
#[derive(Default)]
struct Uploads(BTreeMap<String, (Digest, Vec<u8>)>);

impl Uploads {
    fn add(&mut self, digest: Digest, data: Vec<u8>) {
        self.0.entry(digest.hash.clone()).or_insert((digest, data));
    }

    async fn send(self, cas: &dyn RemoteCas) -> Result<(), String> {
        let blobs = self
            .0
            .into_values()
            .map(|(d, data)| (d, Content::Bytes(data)))
            .collect();
        upload_missing(cas, blobs)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A directory's `Directory` messages: the root's digest, after queueing
/// every message and symlink target for upload. Fails on upwards symlinks.
fn tree_message(
    hash: HashFunction,
    path: &str,
    tree: &reapi::Tree,
    uploads: &mut Uploads,
) -> Result<Digest, String> {
    let root = tree.root.clone().unwrap_or_default();
    let mut root_digest = None;
    for dir in std::iter::once(&root).chain(tree.children.iter()) {
        for link in &dir.symlinks {
            if !is_non_upwards(&link.target) {
                return Err(format!(
                    "output {path:?} contains an upwards symlink {:?} (to {:?})",
                    link.name, link.target
                ));
            }
            let data = link.target.as_bytes().to_vec();
            uploads.add(hash.digest_bytes(ObjectKind::File, &data), data);
        }
        let data = dir.encode_to_vec();
        let digest = hash.digest_bytes(ObjectKind::Tree, &data);
        root_digest.get_or_insert_with(|| digest.clone());
        uploads.add(digest, data);
    }
    Ok(root_digest.expect("the root is always there"))
}

/// Reads the outputs of `result`.
pub async fn produced(
    cas: &dyn RemoteCas,
    result: &reapi::ActionResult,
) -> Result<Produced, String> {
    let hash = cas.hash_function();
    let mut out = Produced::new();
    let mut uploads = Uploads::default();
    for file in &result.output_files {
        let wire = file.digest.clone().unwrap_or_default();
        let digest = hash
            .digest_from_wire(&wire)
            .map_err(|e| format!("output {:?}: {e}", file.path))?;
        let entry = Entry {
            kind: ObjectKind::blob(file.is_executable),
            digest: Digest {
                is_tree: false,
                ..digest
            },
            target: None,
        };
        out.insert(file.path.clone(), entry);
    }
    let links = result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks);
    for link in links {
        if !is_non_upwards(&link.target) {
            return Err(upwards_error(&link.path, &link.target));
        }
        let data = link.target.as_bytes().to_vec();
        let digest = hash.digest_bytes(ObjectKind::File, &data);
        uploads.add(digest.clone(), data);
        out.insert(
            link.path.clone(),
            Entry {
                kind: ObjectKind::Symlink,
                digest,
                target: Some(link.target.clone()),
            },
        );
    }
    for dir in &result.output_directories {
        let wire = dir.tree_digest.clone().unwrap_or_default();
        let tree_digest = hash
            .digest_from_wire(&wire)
            .map_err(|e| format!("output {:?}: {e}", dir.path))?;
        let digest = if hash.is_native() {
            // Native endpoints name the git tree itself.
            Digest {
                is_tree: true,
                ..tree_digest
            }
        } else {
            let data = cas
                .read_blob(&tree_digest)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "the Tree message {} of output {:?} is not in the CAS",
                        tree_digest.hash, dir.path
                    )
                })?;
            let tree = reapi::Tree::decode(data.as_slice()).map_err(|e| {
                format!(
                    "the Tree message of output {:?} does not parse: {e}",
                    dir.path
                )
            })?;
            tree_message(hash, &dir.path, &tree, &mut uploads)?
        };
        out.insert(
            dir.path.clone(),
            Entry {
                kind: ObjectKind::Tree,
                digest,
                target: None,
            },
        );
    }
    uploads.send(cas).await?;
    Ok(out)
}

/// The paths among `wanted` that are missing from `produced` or of the wrong
/// kind: files may be files, executables or symlinks; directories trees or symlinks.
pub fn missing_outputs<'a>(
    produced: &Produced,
    wanted: impl IntoIterator<Item = (&'a str, bool)>,
) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|(path, is_dir)| {
            !produced.get(*path).is_some_and(|e| match e.kind {
                ObjectKind::Symlink => true,
                ObjectKind::Tree => *is_dir,
                ObjectKind::File | ObjectKind::Executable => !*is_dir,
            })
        })
        .map(|(path, _)| path.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_messages_give_the_root_directory_digest() {
        let hash = HashFunction::Sha256;
        let child = reapi::Directory {
            symlinks: vec![reapi::SymlinkNode {
                name: "l".into(),
                target: "x/y".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        let child_digest = hash.digest_bytes(ObjectKind::Tree, &child.encode_to_vec());
        let root = reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: "sub".into(),
                digest: Some(child_digest.to_wire(hash)),
            }],
            ..Default::default()
        };
        let tree = reapi::Tree {
            root: Some(root.clone()),
            children: vec![child.clone()],
        };
        let mut uploads = Uploads::default();
        let digest = tree_message(hash, "out", &tree, &mut uploads).unwrap();
        assert_eq!(
            digest,
            hash.digest_bytes(ObjectKind::Tree, &root.encode_to_vec())
        );
        // root, child and the link target
        assert_eq!(uploads.0.len(), 3);

        let mut bad = child;
        bad.symlinks[0].target = "../x".into();
        let tree = reapi::Tree {
            root: Some(reapi::Directory::default()),
            children: vec![bad],
        };
        let err = tree_message(hash, "out", &tree, &mut Uploads::default()).unwrap_err();
        assert!(err.contains("upwards"), "{err}");
    }

    #[test]
    fn output_kinds_are_checked() {
        let hash = HashFunction::GitSha1;
        let entry = |kind| Entry {
            kind,
            digest: hash.empty_blob(),
            target: None,
        };
        let produced: Produced = [
            ("f".to_string(), entry(ObjectKind::File)),
            ("d".to_string(), entry(ObjectKind::Tree)),
            ("l".to_string(), entry(ObjectKind::Symlink)),
        ]
        .into_iter()
        .collect();
        assert!(missing_outputs(
            &produced,
            [("f", false), ("d", true), ("l", true), ("l", false)]
        )
        .is_empty());
        assert_eq!(
            missing_outputs(&produced, [("f", true), ("d", false), ("x", false)]),
            vec!["f", "d", "x"]
        );
    }
}
