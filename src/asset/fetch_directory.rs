//! Fetch.FetchDirectory: a pushed directory; a git commit's tree
//! (`resource_type` `application/x-git`, `vcs.commit`) as ServeCommitTree
//! finds it; or an archive's unpacked tree (an archive media type, the
//! archive named by `jserve.git-blob-id` or, in compatible mode, by a
//! SHA-256 `checksum.sri`) as ServeArchiveTree computes it. The tree (or its
//! `directory`) is synced to the endpoint: a git tree in native mode, a
//! Directory tree in compatible mode.

use std::path::PathBuf;

use git2::Oid;

use super::{AssetError, AssetKind, Assets, FetchOutcome, Request};
use crate::archive::ArchiveFormat;
use crate::digest::{HashFunction, ObjectKind};
use crate::sources::{ArchiveOutcome, Outcome, TreeAnswer};

const GIT: &str = "application/x-git";

/// The archive format a media type names, if jserve unpacks it.
pub fn archive_format(media_type: &str) -> Option<ArchiveFormat> {
    Some(match media_type {
        "application/x-tar"
        | "application/gzip"
        | "application/x-gzip"
        | "application/x-gtar"
        | "application/x-compressed-tar"
        | "application/x-bzip2"
        | "application/x-bzip2-compressed-tar"
        | "application/x-xz"
        | "application/x-xz-compressed-tar"
        | "application/x-lzip"
        | "application/x-lzma" => ArchiveFormat::Tar,
        "application/zip" | "application/x-zip-compressed" | "application/x-7z-compressed" => {
            ArchiveFormat::Zip
        }
        _ => return None,
    })
}

impl Assets {
    pub async fn fetch_directory(&self, request: &Request<'_>) -> Result<FetchOutcome, AssetError> {
        request.check()?;
        if let Some(found) = self.pushed(AssetKind::Directory, request).await? {
            return Ok(found);
        }
        let q = &request.qualifiers;
        if !q.unsupported.is_empty() {
            return Err(AssetError::Unsupported(q.unsupported.clone()));
        }
        let directory = q.directory.clone().unwrap_or_default();
        let answer = match q.resource_type.as_deref() {
            Some(GIT) | None if q.commit.is_some() => {
                if !q.checksums.is_empty() || q.git_blob.is_some() {
                    return Err(AssetError::invalid(
                        "checksum.sri and jserve.git-blob-id name archives, not git commits",
                    ));
                }
                let commit = q.commit.as_deref().unwrap_or_default();
                self.sources.commit_tree(commit, &directory, true).await
            }
            Some(GIT) => {
                return Err(AssetError::invalid(
                    "a git repository needs vcs.commit (jserve does not follow branches)",
                ))
            }
            Some(media) => {
                let Some(format) = archive_format(media) else {
                    return Err(AssetError::invalid(format!(
                        "resource_type {media:?} is not supported for directories \
                         ({GIT}, or an archive type such as application/x-tar, \
                         application/gzip, application/zip)"
                    )));
                };
                if q.commit.is_some() {
                    return Err(AssetError::invalid(
                        "vcs.commit names git commits, not archives",
                    ));
                }
                match self.archive_tree(request, format, &directory).await? {
                    Ok(answer) => answer,
                    Err(failed) => return Ok(failed),
                }
            }
            None => {
                return Err(AssetError::invalid(
                    "resource_type (or vcs.commit) is needed to know what to unpack",
                ))
            }
        };
        Ok(match answer.outcome {
            Outcome::Ok => match answer.digest {
                Some(digest) => FetchOutcome::Found {
                    uri: request.uris[0].clone(),
                    digest,
                },
                None => return Err(AssetError::internal("the tree was not synced")),
            },
            Outcome::NotFound => FetchOutcome::not_found("directory", request.uris, q),
            Outcome::FailedPrecondition(message) => FetchOutcome::Failed {
                code: tonic::Code::ResourceExhausted,
                message,
            },
            Outcome::SyncError(e) | Outcome::Internal(e) => return Err(AssetError::Internal(e)),
        })
    }

    /// The unpacked archive's tree at `directory`, synced; or why not (as
    /// the response's status).
    async fn archive_tree(
        &self,
        request: &Request<'_>,
        format: ArchiveFormat,
        directory: &str,
    ) -> Result<Result<TreeAnswer, FetchOutcome>, AssetError> {
        let q = &request.qualifiers;
        let content = match &q.git_blob {
            Some(id) => Some(id.clone()),
            None => self.archive_by_sha256(request).await?,
        };
        let Some(content) = content else {
            return Ok(Err(FetchOutcome::not_found("archive", request.uris, q)));
        };
        if !q.checksums.is_empty() {
            match self.archive_file(&content).await? {
                Some(path) => {
                    let checksums = q.checksums.clone();
                    let matches = crate::blocking::run(move || {
                        super::file_matches(&path, &checksums).map_err(AssetError::internal)
                    })
                    .await?;
                    if !matches {
                        return Ok(Err(FetchOutcome::Failed {
                            code: tonic::Code::Aborted,
                            message: format!(
                                "archive {content} does not match the checksums asked for ({})",
                                q.describe()
                            ),
                        }));
                    }
                }
                None => return Ok(Err(FetchOutcome::not_found("archive", request.uris, q))),
            }
        }
        let answer = self
            .sources
            .archive_tree(&content, format, directory, None, true, &self.unpacking)
            .await;
        Ok(match answer.outcome {
            ArchiveOutcome::Common(outcome) => Ok(TreeAnswer {
                outcome,
                tree: answer.tree,
                digest: answer.digest,
            }),
            ArchiveOutcome::Unpack(e) | ArchiveOutcome::Resolve(e) => Err(FetchOutcome::Failed {
                code: tonic::Code::Aborted,
                message: format!("archive {content} could not be unpacked: {e}"),
            }),
        })
    }

    /// The git blob id of an archive named by a SHA-256 checksum, found in
    /// the compatible CAS and put into the native CAS to unpack from.
    async fn archive_by_sha256(&self, request: &Request<'_>) -> Result<Option<String>, AssetError> {
        let cas = self.build_root.cas(HashFunction::Sha256);
        let native = self.build_root.cas(HashFunction::GitSha1);
        for hex in request
            .qualifiers
            .checksums
            .iter()
            .filter_map(|c| c.sha256_hex())
        {
            let (cas, native) = (cas.clone(), native.clone());
            let id = crate::blocking::run(move || {
                let Some(path) = cas.find(ObjectKind::File, &hex) else {
                    return Ok(None);
                };
                let stored = native
                    .put_file(ObjectKind::File, &path)
                    .map_err(AssetError::internal)?;
                Ok::<_, AssetError>(Some(stored.hash))
            })
            .await?;
            if id.is_some() {
                return Ok(id);
            }
        }
        Ok(None)
    }

    /// A file with the archive's bytes: in the native CAS, copied there
    /// from a repository, or downloaded from a native endpoint.
    async fn archive_file(&self, id: &str) -> Result<Option<PathBuf>, AssetError> {
        let (repos, native, blob) = (
            self.sources.repos.clone(),
            self.build_root.cas(HashFunction::GitSha1),
            id.to_string(),
        );
        let local = crate::blocking::run(move || {
            if let Some(p) = native.find(ObjectKind::File, &blob) {
                return Ok(Some(p));
            }
            let Some(repo) = repos.find_blob(&blob).map_err(AssetError::internal)? else {
                return Ok(None);
            };
            let repo = repos.open(repo).map_err(AssetError::internal)?;
            let oid = Oid::from_str(&blob).map_err(AssetError::internal)?;
            let odb = repo.odb().map_err(AssetError::internal)?;
            let (reader, len, _) = odb.reader(oid).map_err(AssetError::internal)?;
            native
                .put_stream(ObjectKind::File, len as u64, reader, Some(&blob))
                .map_err(AssetError::internal)?;
            Ok::<_, AssetError>(Some(native.path(ObjectKind::File, &blob)))
        })
        .await?;
        if local.is_some() || !self.hash().is_native() {
            return Ok(local);
        }
        let digest = HashFunction::GitSha1.digest(ObjectKind::File, id, 0);
        let native = self.build_root.cas(HashFunction::GitSha1);
        let tmp = self
            .build_root
            .tmp_dir()
            .join(format!("asset-{id}-{}", std::process::id()));
        let found = self
            .sources
            .remote
            .download_to_file(&digest, &tmp)
            .await
            .map_err(AssetError::internal)?;
        if !found {
            return Ok(None);
        }
        let blob = id.to_string();
        crate::blocking::run(move || {
            let stored = native.put_file(ObjectKind::File, &tmp);
            let _ = std::fs::remove_file(&tmp);
            let stored = stored.map_err(AssetError::internal)?;
            if stored.hash != blob {
                return Err(AssetError::internal(format!(
                    "the endpoint's {blob} has other content"
                )));
            }
            Ok(Some(native.path(ObjectKind::File, &blob)))
        })
        .await
    }
}
