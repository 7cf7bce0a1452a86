//! The endpoint's CAS reached in-process: jserve's own endpoint, without a
//! detour through loopback gRPC. Uploads are verified like any other.

use std::path::Path;
use std::sync::Arc;

use super::{Fetched, ReadBounds, RemoteCas, RemoteError};
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::execute::{EndpointError, LocalEndpoint};

pub struct LocalRemote {
    endpoint: Arc<LocalEndpoint>,
}

impl LocalRemote {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> LocalRemote {
        LocalRemote { endpoint }
    }
}

fn refused(hash: &str, e: EndpointError) -> RemoteError {
    RemoteError::Refused {
        hash: hash.to_string(),
        message: e.to_string(),
    }
}

/// [`crate::blocking::run`] with this module's error type.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    crate::blocking::run(f).await
}

#[tonic::async_trait]
impl RemoteCas for LocalRemote {
    fn hash_function(&self) -> HashFunction {
        self.endpoint.hash
    }

    async fn find_missing(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, RemoteError> {
        let endpoint = self.endpoint.clone();
        blocking(move || {
            Ok(digests
                .into_iter()
                .filter(|d| !endpoint.contains(d))
                .collect())
        })
        .await
    }

    async fn upload_blobs(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), RemoteError> {
        let endpoint = self.endpoint.clone();
        blocking(move || {
            // Blobs first, synced together; then the trees in the order
            // given (children before parents), each checked as it goes in.
            let files: Vec<(&Digest, &[u8])> = blobs
                .iter()
                .filter(|(d, _)| !d.is_tree)
                .map(|(d, data)| (d, data.as_slice()))
                .collect();
            for ((digest, _), stored) in files.iter().zip(endpoint.store_blobs(&files)) {
                stored.map_err(|e| refused(&digest.hash, e))?;
            }
            for (digest, data) in blobs.iter().filter(|(d, _)| d.is_tree) {
                endpoint
                    .store(digest, data)
                    .map_err(|e| refused(&digest.hash, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn upload_file(&self, digest: &Digest, path: &Path) -> Result<(), RemoteError> {
        let (endpoint, digest, path) = (self.endpoint.clone(), digest.clone(), path.to_path_buf());
        blocking(move || {
            if digest.is_tree {
                // Trees are small and need the invariant check: take the common path.
                let data = std::fs::read(&path).map_err(|source| RemoteError::Io {
                    path: path.clone(),
                    source,
                })?;
                endpoint
                    .store(&digest, &data)
                    .map_err(|e| refused(&digest.hash, e))?;
                return Ok(());
            }
            let file = std::fs::File::open(&path).map_err(|source| RemoteError::Io {
                path: path.clone(),
                source,
            })?;
            let len = file
                .metadata()
                .map_err(|source| RemoteError::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
            endpoint
                .check_size(&digest, len)
                .map_err(|e| refused(&digest.hash, e))?;
            endpoint
                .cas
                .put_stream(ObjectKind::File, len, file, Some(&digest.hash))
                .map_err(|e| refused(&digest.hash, e.into()))?;
            Ok(())
        })
        .await
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        let (endpoint, digest) = (self.endpoint.clone(), digest.clone());
        blocking(move || {
            endpoint
                .read(&digest)
                .map_err(|e| RemoteError::Other(e.to_string()))
        })
        .await
    }

    async fn read_small(
        &self,
        digests: Vec<Digest>,
        max_each: u64,
    ) -> Result<Vec<(Digest, Vec<u8>)>, RemoteError> {
        // No round trips to save: the objects small enough, read here.
        let endpoint = self.endpoint.clone();
        blocking(move || {
            let mut read = Vec::with_capacity(digests.len());
            for digest in digests {
                let Some(path) = endpoint.object_path(&digest) else {
                    continue;
                };
                let io = |source| RemoteError::Io {
                    path: path.clone(),
                    source,
                };
                if std::fs::metadata(&path).map_err(io)?.len() <= max_each {
                    let data = std::fs::read(&path).map_err(io)?;
                    read.push((digest, data));
                }
            }
            Ok(read)
        })
        .await
    }

    async fn read_bounded(
        &self,
        digest: &Digest,
        bounds: ReadBounds<'_>,
    ) -> Result<Option<Fetched>, RemoteError> {
        let (endpoint, digest) = (self.endpoint.clone(), digest.clone());
        let (in_memory, max, spill) = (bounds.in_memory, bounds.max, bounds.spill.to_path_buf());
        blocking(move || {
            let Some(source) = endpoint.object_path(&digest) else {
                return Ok(None);
            };
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| RemoteError::Io { path, source }
            };
            let len = std::fs::metadata(&source).map_err(io(&source))?.len();
            if len > max {
                return Err(RemoteError::TooLarge {
                    hash: digest.hash,
                    limit: max,
                });
            }
            if len <= in_memory {
                return Ok(Some(Fetched::Memory(
                    std::fs::read(&source).map_err(io(&source))?,
                )));
            }
            std::fs::copy(&source, &spill).map_err(io(&spill))?;
            Ok(Some(Fetched::File(len)))
        })
        .await
    }

    async fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<bool, RemoteError> {
        let (endpoint, digest, dest) = (self.endpoint.clone(), digest.clone(), dest.to_path_buf());
        blocking(move || {
            let Some(source) = endpoint.object_path(&digest) else {
                return Ok(false);
            };
            let io = |source| RemoteError::Io {
                path: dest.clone(),
                source,
            };
            let tmp = dest.with_extension("jserve-download");
            std::fs::copy(&source, &tmp).map_err(io)?;
            std::fs::rename(&tmp, &dest).map_err(io)?;
            Ok(true)
        })
        .await
    }

    async fn get_action_result(
        &self,
        action: &Digest,
    ) -> Result<
        Option<bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult>,
        RemoteError,
    > {
        let (endpoint, action) = (self.endpoint.clone(), action.clone());
        blocking(move || {
            endpoint
                .cached_result(&action)
                .map_err(|e| RemoteError::Other(e.to_string()))
        })
        .await
    }

    async fn update_action_result(
        &self,
        action: &Digest,
        result: bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult,
    ) -> Result<(), RemoteError> {
        let (endpoint, action) = (self.endpoint.clone(), action.clone());
        blocking(move || {
            endpoint
                .record_result(&action, &result)
                .map_err(|e| refused(&action.hash, e))
        })
        .await
    }

    async fn get_tree(
        &self,
        root: &Digest,
        max_bytes: u64,
    ) -> Result<
        Option<Vec<bazel_remote_apis::build::bazel::remote::execution::v2::Directory>>,
        RemoteError,
    > {
        use prost::Message;
        if self.endpoint.hash.is_native() {
            return Ok(None);
        }
        let (endpoint, root) = (self.endpoint.clone(), root.clone());
        blocking(move || {
            let (mut dirs, mut bytes) = (Vec::new(), 0u64);
            let walked = endpoint.for_each_directory(&root, |dir| {
                bytes += dir.encoded_len() as u64;
                dirs.push(dir);
                bytes <= max_bytes
            });
            match walked {
                Ok(()) if bytes > max_bytes => Err(RemoteError::TooLarge {
                    hash: format!("the listing of tree {}", root.hash),
                    limit: max_bytes,
                }),
                Ok(()) => Ok(Some(dirs)),
                Err(EndpointError::NotFound(_)) => Ok(None),
                Err(e) => Err(RemoteError::Other(e.to_string())),
            }
        })
        .await
    }
}
