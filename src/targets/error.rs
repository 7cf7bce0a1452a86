//! Why ServeTarget has no answer, said as what went wrong; the service
//! layer (`serve/target.rs`) is the one place that turns each case into the
//! gRPC code clients see.

use crate::blocking::WorkerFailed;

/// A ServeTarget request that ends without a value or a log.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TargetError {
    /// A blob the request names (key, repository description, dispatch
    /// list) is in neither the local CAS nor the endpoint's.
    #[error("Could not retrieve blob {0} from the endpoint")]
    MissingBlob(String),
    /// The target-cache key blob is not a key a client writes.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The repository description the key names does not describe
    /// repositories serve can set up.
    #[error("{0}")]
    Description(String),
    /// The key's target_name does not name a target.
    #[error("target_name of the key: {0}")]
    TargetName(String),
    /// The key is no export target's key (so no entry could answer it).
    #[error(
        "{target} in configuration {config} is not an export target with key {key} \
         (non-export target, or a repository that is not content-fixed)"
    )]
    NotAnExport {
        target: String,
        config: String,
        key: String,
    },
    /// The endpoint-dispatch list is malformed.
    #[error("{0}")]
    DispatchList(String),
    /// An address in the dispatch list cannot be parsed.
    #[error("dispatch endpoint {address:?}: {reason}")]
    DispatchAddress { address: String, reason: String },
    /// No connection to a dispatch endpoint could be set up.
    #[error("dispatch endpoint {address}: {reason}")]
    DispatchUnreachable { address: String, reason: String },
    /// The associated endpoint did not take what the answer needs.
    #[error("{what}: {reason}")]
    Upload { what: String, reason: String },
    /// The local build root failed while reading or writing `what`.
    #[error("{what}: {reason}")]
    Local { what: String, reason: String },
    /// The entry just written cannot be read back.
    #[error("Failed to read TargetCacheKey {0} after store")]
    VanishedAfterStore(String),
    /// The shared computation ended without an answer (it panicked).
    #[error("the computation of this target was lost")]
    Lost,
    #[error(transparent)]
    Worker(#[from] WorkerFailed),
    /// A failure after some required digests could not be downloaded:
    /// those come first, as they likely caused it.
    #[error("{downloads}{error}")]
    AfterDownloadFailures {
        downloads: String,
        error: Box<TargetError>,
    },
}

impl TargetError {
    pub(super) fn upload(what: impl Into<String>, reason: impl ToString) -> TargetError {
        TargetError::Upload {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(super) fn local(what: impl Into<String>, reason: impl ToString) -> TargetError {
        TargetError::Local {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// What is wrong with a target-cache key blob.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KeyError {
    #[error("target-cache key is not JSON: {0}")]
    NotJson(String),
    #[error("target-cache key is not a JSON object")]
    NotAnObject,
    #[error("target-cache key has no {0:?}")]
    MissingField(&'static str),
    #[error("repo_key of the target-cache key is not a string")]
    RepoKeyNotAString,
    #[error("repo_key {key:?} is not a {mode} hash")]
    RepoKeyNotAHash { key: String, mode: String },
    #[error("{0} of the key is not a string")]
    FieldNotAString(&'static str),
    #[error("{field} of the key is not JSON: {reason}")]
    FieldNotJson { field: &'static str, reason: String },
    #[error("effective_config of the key is not a JSON object")]
    ConfigNotAnObject,
}
