//! The one way objects travel to an endpoint's CAS: only what it lacks, in
//! the order given (children before the trees that name them, which native
//! endpoints check), many small objects per BatchUpdateBlobs and large files
//! streamed, with a bounded amount held in memory at a time.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{RemoteCas, RemoteError};
use crate::digest::Digest;

/// Where an object's bytes are.
#[derive(Clone, Debug)]
pub enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Files up to this size are read and batched; larger ones go on their own.
const SMALL_FILE: u64 = 1 << 20;
/// How many bytes are read ahead into one group of batched uploads.
const GROUP_BYTES: usize = 32 << 20;

/// Uploads those of `objects` the endpoint lacks, keeping their order, so a
/// caller that lists children first never has a tree arrive before them.
/// Returns how many objects were sent.
pub async fn upload_missing(
    remote: &dyn RemoteCas,
    objects: Vec<(Digest, Content)>,
) -> Result<usize, RemoteError> {
    if objects.is_empty() {
        return Ok(0);
    }
    let missing: HashSet<String> = remote
        .find_missing(objects.iter().map(|(d, _)| d.clone()).collect())
        .await?
        .into_iter()
        .map(|d| d.hash)
        .collect();
    let mut sent = HashSet::new();
    let todo: Vec<(Digest, Content)> = objects
        .into_iter()
        .filter(|(d, _)| missing.contains(&d.hash) && sent.insert(d.hash.clone()))
        .collect();
    let count = todo.len();
    upload_all(remote, todo).await?;
    Ok(count)
}

/// Uploads `objects` in their order, without asking what is missing.
pub async fn upload_all(
    remote: &dyn RemoteCas,
    objects: Vec<(Digest, Content)>,
) -> Result<(), RemoteError> {
    let mut group: Vec<(Digest, Vec<u8>)> = Vec::new();
    let mut group_bytes = 0usize;
    for (digest, content) in objects {
        let data = match content {
            Content::Bytes(data) => data,
            Content::File(path) => {
                let len = tokio::fs::metadata(&path)
                    .await
                    .map_err(|source| RemoteError::Io {
                        path: path.clone(),
                        source,
                    })?
                    .len();
                if len > SMALL_FILE {
                    // Whatever was listed before it must arrive first.
                    remote.upload_blobs(std::mem::take(&mut group)).await?;
                    group_bytes = 0;
                    remote.upload_file(&digest, &path).await?;
                    continue;
                }
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| RemoteError::Io { path, source })?
            }
        };
        group_bytes += data.len();
        group.push((digest, data));
        if group_bytes >= GROUP_BYTES {
            remote.upload_blobs(std::mem::take(&mut group)).await?;
            group_bytes = 0;
        }
    }
    if !group.is_empty() {
        remote.upload_blobs(group).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{HashFunction, ObjectKind};
    use std::path::Path;
    use std::sync::Mutex;

    /// Records calls; has nothing at first.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Vec<String>>>,
        present: Mutex<HashSet<String>>,
    }

    #[tonic::async_trait]
    impl RemoteCas for Recorder {
        fn hash_function(&self) -> HashFunction {
            HashFunction::GitSha1
        }
        async fn find_missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, RemoteError> {
            let present = self.present.lock().unwrap();
            Ok(digests
                .into_iter()
                .filter(|d| !present.contains(&d.hash))
                .collect())
        }
        async fn upload_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError> {
            if !blobs.is_empty() {
                let names = blobs.into_iter().map(|(d, _)| d.hash).collect();
                self.calls.lock().unwrap().push(names);
            }
            Ok(())
        }
        async fn upload_file(&self, digest: &Digest, _: &Path) -> Result<(), RemoteError> {
            let name = format!("stream:{}", digest.hash);
            self.calls.lock().unwrap().push(vec![name]);
            Ok(())
        }
        async fn read_blob(&self, _: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
            Ok(None)
        }
        async fn download_to_file(&self, _: &Digest, _: &Path) -> Result<bool, RemoteError> {
            Ok(false)
        }
        async fn read_small(
            &self,
            _: Vec<Digest>,
            _: u64,
        ) -> Result<Vec<(Digest, Vec<u8>)>, RemoteError> {
            Ok(Vec::new())
        }
        async fn read_bounded(
            &self,
            _: &Digest,
            _: crate::remote::ReadBounds<'_>,
        ) -> Result<Option<crate::remote::Fetched>, RemoteError> {
            Ok(None)
        }
        async fn get_tree(
            &self,
            _: &Digest,
            _: u64,
        ) -> Result<
            Option<Vec<bazel_remote_apis::build::bazel::remote::execution::v2::Directory>>,
            RemoteError,
        > {
            Ok(None)
        }
        async fn get_action_result(
            &self,
            _: &Digest,
        ) -> Result<
            Option<bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult>,
            RemoteError,
        > {
            Ok(None)
        }
        async fn update_action_result(
            &self,
            _: &Digest,
            _: bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult,
        ) -> Result<(), RemoteError> {
            Err(RemoteError::Other("no action cache".into()))
        }
    }

    fn blob(data: &[u8]) -> (Digest, Content) {
        let d = HashFunction::GitSha1.digest_bytes(ObjectKind::File, data);
        (d, Content::Bytes(data.to_vec()))
    }

    #[tokio::test]
    async fn small_objects_share_a_call_and_large_files_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; (SMALL_FILE + 1) as usize]).unwrap();
        let big_digest =
            HashFunction::GitSha1.digest_bytes(ObjectKind::File, &std::fs::read(&big).unwrap());
        let (a, b, c, d) = (blob(b"a"), blob(b"b"), blob(b"c"), blob(b"d"));
        let present = b.0.hash.clone();
        let remote = Recorder::default();
        remote.present.lock().unwrap().insert(present);
        let objects = vec![
            a.clone(),
            b.clone(),
            a.clone(),
            (big_digest.clone(), Content::File(big)),
            c.clone(),
            d.clone(),
        ];
        assert_eq!(upload_missing(&remote, objects).await.unwrap(), 4);
        let calls = remote.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                vec![a.0.hash],
                vec![format!("stream:{}", big_digest.hash)],
                vec![c.0.hash, d.0.hash]
            ]
        );
    }
}
