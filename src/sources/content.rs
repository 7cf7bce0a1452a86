//! ServeContent: a known blob put into the endpoint's CAS, from the git
//! repositories or the native CAS, or found there already.

use super::answers::{BlobSource, Outcome, TreeAnswer};
use super::{blocking, Sources};
use crate::digest::ObjectKind;
use crate::git::parse_oid;

impl Sources {
    /// ServeContent: puts a known blob into the endpoint's CAS.
    pub async fn content(&self, blob: &str) -> TreeAnswer {
        let (repos, id, cas) = (
            self.repos.clone(),
            blob.to_string(),
            self.native_cas.clone(),
        );
        let found = blocking(move || {
            parse_oid(&id)?;
            if let Some(repo) = repos.find_blob(&id)? {
                return Ok(Some(BlobSource::Repo(repo)));
            }
            Ok(cas.find(ObjectKind::File, &id).map(BlobSource::NativeCas))
        })
        .await;
        match found {
            Ok(Some(BlobSource::Repo(repo))) => {
                self.answer(
                    blob.to_string(),
                    ObjectKind::File,
                    self.repos.paths()[repo].clone(),
                    true,
                )
                .await
            }
            Ok(Some(BlobSource::NativeCas(path))) => self.upload_cas_file(blob, path).await,
            // Already at the endpoint: nothing to upload.
            Ok(_) => match self.endpoint_blob(blob).await {
                Ok(Some(digest)) => TreeAnswer {
                    outcome: Outcome::Ok,
                    tree: None,
                    digest: Some(self.response_digest(digest)),
                },
                Ok(None) => TreeAnswer::outcome(Outcome::NotFound),
                Err(e) => TreeAnswer::internal(e.to_string()),
            },
            Err(e) => TreeAnswer::internal(e),
        }
    }
}
