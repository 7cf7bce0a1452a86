//! Fetch.FetchBlob: a pushed blob, or one serve's sources know by its git
//! blob id (`jserve.git-blob-id`) or, in compatible mode, by the SHA-256 of
//! a `checksum.sri` (the local CAS's own name for it); put into the
//! endpoint's CAS.

use super::{AssetError, AssetKind, Assets, FetchOutcome, Request};
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::sources::Outcome;

impl Assets {
    pub async fn fetch_blob(&self, request: &Request<'_>) -> Result<FetchOutcome, AssetError> {
        request.check()?;
        if let Some(found) = self.pushed(AssetKind::Blob, request).await? {
            return Ok(found);
        }
        let q = &request.qualifiers;
        let mut unsupported = q.unsupported.clone();
        // Qualifiers of directories say nothing jserve could check on a blob.
        for (name, set) in [
            ("directory", q.directory.is_some()),
            ("vcs.commit", q.commit.is_some()),
        ] {
            if set {
                unsupported.push(format!("{name} (for a blob)"));
            }
        }
        if !unsupported.is_empty() {
            return Err(AssetError::Unsupported(unsupported));
        }
        let uri = request.uris[0].clone();
        let found = match &q.git_blob {
            Some(id) => self.blob_by_git_id(id).await?,
            None => self.blob_by_sha256(request).await?,
        };
        let Some(digest) = found else {
            return Ok(FetchOutcome::not_found("blob", request.uris, q));
        };
        // A blob found by git id or by one checksum is checked against all
        // the others: one of the checksums must hold.
        let named_by_checksum = q.checksums.iter().any(|c| {
            !self.hash().is_native() && c.sha256_hex().as_deref() == Some(digest.hash.as_str())
        });
        if !q.checksums.is_empty()
            && !named_by_checksum
            && !self.endpoint_blob_matches(&digest, &q.checksums).await?
        {
            return Ok(FetchOutcome::Failed {
                code: tonic::Code::Aborted,
                message: format!(
                    "blob {} does not match the checksums asked for ({})",
                    digest.hash,
                    q.describe()
                ),
            });
        }
        Ok(FetchOutcome::Found { uri, digest })
    }

    /// The blob with git id `id`, put into the endpoint's CAS, or already
    /// there (ServeContent).
    async fn blob_by_git_id(&self, id: &str) -> Result<Option<Digest>, AssetError> {
        let answer = self.sources.content(id).await;
        match answer.outcome {
            Outcome::Ok => Ok(answer.digest),
            Outcome::NotFound => Ok(None),
            Outcome::SyncError(e) | Outcome::FailedPrecondition(e) | Outcome::Internal(e) => {
                Err(AssetError::Internal(e))
            }
        }
    }

    /// Compatible mode: a blob of the local CAS named by a SHA-256 checksum,
    /// uploaded to the endpoint if it lacks it.
    async fn blob_by_sha256(&self, request: &Request<'_>) -> Result<Option<Digest>, AssetError> {
        if self.hash().is_native() {
            return Ok(None);
        }
        for hex in request
            .qualifiers
            .checksums
            .iter()
            .filter_map(|c| c.sha256_hex())
        {
            if let Some(digest) = self.local_compatible_blob(&hex).await? {
                return Ok(Some(digest));
            }
            if let Some(digest) = self.pushed_content(&hex).await? {
                return Ok(Some(digest));
            }
        }
        Ok(None)
    }

    /// The compatible CAS's blob `hex` made available at the endpoint.
    pub(super) async fn local_compatible_blob(
        &self,
        hex: &str,
    ) -> Result<Option<Digest>, AssetError> {
        let cas = self.build_root.cas(HashFunction::Sha256);
        let id = hex.to_string();
        let path = crate::blocking::run(move || {
            let path = cas
                .find(ObjectKind::File, &id)
                .or_else(|| cas.find(ObjectKind::Executable, &id));
            let size = match &path {
                Some(p) => std::fs::metadata(p).map_err(AssetError::internal)?.len(),
                None => 0,
            };
            Ok::<_, AssetError>(path.map(|p| (p, size)))
        })
        .await?;
        let Some((path, size)) = path else {
            return Ok(None);
        };
        let digest = HashFunction::Sha256.digest(ObjectKind::File, hex, size);
        if !self.at_endpoint(&digest).await? {
            self.sources
                .remote
                .upload_file(&digest, &path)
                .await
                .map_err(AssetError::internal)?;
        }
        Ok(Some(digest))
    }
}
