//! The Remote Asset API (`build.bazel.remote.asset.v1`) over serve's
//! sources: FetchBlob and FetchDirectory answer from what SourceTree knows
//! (git cache, configured repositories, local CAS, the endpoint's CAS), Push
//! records URI and qualifiers → digest. Answers are in the associated
//! endpoint's CAS, in its hash mode. jserve never fetches a URI from the
//! network: URIs only name pushed assets.
//!
//! One file per RPC: fetch_blob.rs, fetch_directory.rs, push.rs; the
//! qualifiers in qualifiers.rs.

mod fetch_blob;
mod fetch_directory;
mod push;
pub mod qualifiers;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::digest::{Digest, HashFunction};
use crate::sources::Sources;
use crate::storage::{BuildRoot, IdMap};
pub use qualifiers::Qualifiers;

/// Why a request gets no answer at all (an RPC error, as the API lists them).
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{0}")]
    InvalidArgument(String),
    /// Qualifiers jserve does not support (and nobody pushed an asset with).
    #[error("qualifiers not supported: {}", .0.join(", "))]
    Unsupported(Vec<String>),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::blocking::WorkerFailed> for AssetError {
    fn from(e: crate::blocking::WorkerFailed) -> AssetError {
        AssetError::Internal(e.to_string())
    }
}

impl AssetError {
    pub fn invalid(message: impl Into<String>) -> AssetError {
        AssetError::InvalidArgument(message.into())
    }
    fn internal(message: impl std::fmt::Display) -> AssetError {
        AssetError::Internal(message.to_string())
    }
}

/// How a fetch ended when the request itself was fine: the digest, or a
/// status for the response's `status` field (NOT_FOUND, ABORTED, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    Found { uri: String, digest: Digest },
    Failed { code: tonic::Code, message: String },
}

impl FetchOutcome {
    fn not_found(what: &str, uris: &[String], q: &Qualifiers) -> FetchOutcome {
        FetchOutcome::Failed {
            code: tonic::Code::NotFound,
            message: format!(
                "no {what} for {} with {}: not pushed, and not known to serve's \
                 sources (jserve does not fetch from the network)",
                uris.join(" "),
                q.describe()
            ),
        }
    }
}

/// Whether a pushed asset is a blob or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetKind {
    Blob,
    Directory,
}

impl AssetKind {
    fn name(self) -> &'static str {
        match self {
            AssetKind::Blob => "blob",
            AssetKind::Directory => "directory",
        }
    }
}

/// What a fetch or push asks about, beyond its qualifiers.
pub struct Request<'a> {
    pub uris: &'a [String],
    pub qualifiers: Qualifiers,
    /// The oldest pushed content accepted (`oldest_content_accepted`).
    pub oldest: Option<SystemTime>,
}

impl Request<'_> {
    fn check(&self) -> Result<(), AssetError> {
        if self.uris.is_empty() {
            return Err(AssetError::invalid("at least one URI is needed"));
        }
        if self.uris.len() > qualifiers::MAX_URIS {
            return Err(AssetError::invalid(format!(
                "{} URIs, more than {}",
                self.uris.len(),
                qualifiers::MAX_URIS
            )));
        }
        Ok(())
    }
}

/// The Remote Asset logic of one serve.
pub struct Assets {
    sources: Arc<Sources>,
    build_root: BuildRoot,
    unpacking: crate::archive::Unpacking,
    /// Pushed assets: key (see [`push_key`]) → digest and times.
    pushes: IdMap,
}

impl Assets {
    pub fn new(
        sources: Arc<Sources>,
        build_root: BuildRoot,
        unpacking: crate::archive::Unpacking,
    ) -> Assets {
        let hash = sources.remote_hash();
        let pushes = build_root.protocol_map(&format!("asset-pushes/{}", hash.storage_dir_name()));
        Assets {
            sources,
            build_root,
            unpacking,
            pushes,
        }
    }

    /// The endpoint's hash mode, in which every answer is.
    pub fn hash(&self) -> HashFunction {
        self.sources.remote_hash()
    }

    /// Whether the endpoint has `digest`.
    async fn at_endpoint(&self, digest: &Digest) -> Result<bool, AssetError> {
        let missing = self
            .sources
            .remote
            .find_missing(vec![digest.clone()])
            .await
            .map_err(AssetError::internal)?;
        Ok(missing.is_empty())
    }

    /// `f` of a file holding the endpoint's blob `digest`, in the build
    /// root's staging area; `None` if the endpoint does not have it.
    async fn with_endpoint_file<T: Send + 'static>(
        &self,
        digest: &Digest,
        f: impl FnOnce(&Path) -> Result<T, AssetError> + Send + 'static,
    ) -> Result<Option<T>, AssetError> {
        let scratch = {
            let tmp = self.build_root.tmp_dir();
            crate::blocking::run(move || {
                crate::storage::staging::scratch_dir(&tmp, "asset-check")
                    .map_err(AssetError::internal)
            })
            .await?
        };
        let file = scratch.path().join("blob");
        let found = self
            .sources
            .remote
            .download_to_file(digest, &file)
            .await
            .map_err(AssetError::internal)?;
        if !found {
            return Ok(None);
        }
        crate::blocking::run(move || {
            let answer = f(&file);
            drop(scratch);
            answer.map(Some)
        })
        .await
    }

    /// The git blob id of the endpoint's blob `digest`.
    async fn endpoint_git_id(&self, digest: &Digest) -> Result<Option<String>, AssetError> {
        self.with_endpoint_file(digest, |file| {
            let len = std::fs::metadata(file).map_err(AssetError::internal)?.len();
            let mut hasher = HashFunction::GitSha1.hasher(crate::digest::ObjectKind::File, len);
            let mut reader = std::fs::File::open(file).map_err(AssetError::internal)?;
            std::io::copy(&mut reader, &mut hasher).map_err(AssetError::internal)?;
            Ok(hasher.finish_hex())
        })
        .await
    }

    /// Whether the endpoint's blob `digest` matches one of `checksums`.
    async fn endpoint_blob_matches(
        &self,
        digest: &Digest,
        checksums: &[qualifiers::Sri],
    ) -> Result<bool, AssetError> {
        let checksums = checksums.to_vec();
        let matches = self
            .with_endpoint_file(digest, move |file| {
                file_matches(file, &checksums).map_err(AssetError::internal)
            })
            .await?;
        Ok(matches == Some(true))
    }
}

/// Whether the file's content matches one of `checksums` (streamed).
fn file_matches(path: &Path, checksums: &[qualifiers::Sri]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut hasher = qualifiers::SriHasher::new(checksums);
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.matches(checksums));
        }
        hasher.update(&buf[..n]);
    }
}

/// The key a pushed asset is kept under: the hash of its kind, URI and
/// qualifiers (sorted), so a fetch with the same ones finds it.
/// The key of a pushed blob by its SHA-256 alone (compatible mode): a
/// checksum does not give the size the endpoint's CAS needs to name it.
fn content_key(sha256_hex: &str) -> String {
    use sha2::Digest as _;
    let text = serde_json::json!(["blob-by-sha256", sha256_hex]).to_string();
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn push_key(kind: AssetKind, uri: &str, q: &Qualifiers) -> String {
    use sha2::Digest as _;
    let text = serde_json::json!([kind.name(), uri, q.all]).to_string();
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
