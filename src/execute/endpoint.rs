//! jserve's own remote-execution endpoint as a domain object: the CAS with
//! upload verification, the action cache, the action runner and the
//! operations. The gRPC services are thin wrappers around it, and the serve
//! side uses it in-process when no external endpoint is configured.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

use super::operations::Operations;
use super::runner::{Demand, Runner, RunnerConfig};
use crate::digest::{Digest, DigestError, HashFunction, ObjectKind};
use crate::storage::gc::GcLocks;
use crate::storage::trees::{check_git_tree_complete, TreeStoreError};
use crate::storage::{ActionCache, ActionCacheError, BuildRoot, Cas, CasError};

/// Errors of endpoint operations, each with the gRPC code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
    #[error("unknown instance name {0:?}")]
    UnknownInstance(String),
    #[error("blob {hash} announced with {announced} bytes but has {actual}")]
    SizeMismatch {
        hash: String,
        announced: u64,
        actual: u64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("tree invariant violated: {0}")]
    TreeInvariant(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0} not found in CAS")]
    NotFound(String),
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error(transparent)]
    ActionCache(#[from] ActionCacheError),
    #[error(transparent)]
    Tree(#[from] TreeStoreError),
    #[error("{0}")]
    Internal(String),
}

impl EndpointError {
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        let msg = self.to_string();
        match self {
            EndpointError::Digest(_)
            | EndpointError::SizeMismatch { .. }
            | EndpointError::UnknownInstance(_)
            | EndpointError::Invalid(_)
            | EndpointError::Cas(CasError::HashMismatch { .. })
            | EndpointError::Cas(CasError::SizeMismatch { .. }) => Status::invalid_argument(msg),
            EndpointError::TreeInvariant(_)
            | EndpointError::Precondition(_)
            | EndpointError::Cas(CasError::Rejected(_)) => Status::failed_precondition(msg),
            EndpointError::NotFound(_) => Status::not_found(msg),
            EndpointError::Tree(TreeStoreError::Format(_))
            | EndpointError::Tree(TreeStoreError::BadDirectory(..))
            | EndpointError::Tree(TreeStoreError::BadDigest(..)) => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}

impl From<crate::blocking::WorkerFailed> for EndpointError {
    fn from(e: crate::blocking::WorkerFailed) -> EndpointError {
        EndpointError::Internal(e.to_string())
    }
}

impl From<EndpointError> for tonic::Status {
    fn from(e: EndpointError) -> tonic::Status {
        e.to_status()
    }
}

/// Settings of the endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub hash: HashFunction,
    /// The one instance name served, if set; requests naming another are refused.
    /// Unset, any name is accepted (justbuild clients send "remote-execution"
    /// unless told otherwise).
    pub instance_name: Option<String>,
    pub runner: RunnerConfig,
}

pub struct LocalEndpoint {
    pub hash: HashFunction,
    pub instance_name: Option<String>,
    pub cas: Cas,
    pub action_cache: ActionCache,
    pub runner: Runner,
    pub operations: Operations,
    /// Who wants each running action (by action hash), to order the queue.
    pub demands: Mutex<HashMap<String, Arc<Demand>>>,
    /// Held by runs, which may outlive the request that started them.
    pub gc: Arc<GcLocks>,
    /// The build root the stores are in.
    pub root: BuildRoot,
}

impl LocalEndpoint {
    pub fn new(build_root: &BuildRoot, config: EndpointConfig) -> Arc<LocalEndpoint> {
        let cas = build_root.cas(config.hash);
        Arc::new(LocalEndpoint {
            hash: config.hash,
            instance_name: config.instance_name,
            action_cache: build_root.action_cache(config.hash),
            runner: Runner::new(cas.clone(), build_root.exec_root(), config.runner),
            operations: Operations::new(),
            demands: Mutex::default(),
            gc: GcLocks::for_root(build_root),
            root: build_root.clone(),
            cas,
        })
    }

    /// Refuses requests for an instance this endpoint does not serve.
    pub fn check_instance(&self, name: &str) -> Result<(), EndpointError> {
        if self
            .instance_name
            .as_deref()
            .is_none_or(|served| served == name)
        {
            Ok(())
        } else {
            Err(EndpointError::UnknownInstance(name.to_string()))
        }
    }

    pub fn parse_digest(&self, d: &reapi::Digest) -> Result<Digest, EndpointError> {
        Ok(self.hash.digest_from_wire(d)?)
    }

    fn kind_of(digest: &Digest) -> ObjectKind {
        if digest.is_tree {
            ObjectKind::Tree
        } else {
            ObjectKind::File
        }
    }

    /// Whether the object is in the CAS.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.cas.contains(Self::kind_of(digest), &digest.hash)
    }

    /// Where a stored object's file is.
    pub fn object_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.cas.find(Self::kind_of(digest), &digest.hash)
    }

    /// Reads a stored object fully.
    pub fn read(&self, digest: &Digest) -> Result<Option<Vec<u8>>, EndpointError> {
        Ok(self.cas.read(Self::kind_of(digest), &digest.hash)?)
    }

    /// Checks an announced size: exact unless unknown ([`Digest::size_known`]).
    pub fn check_size(&self, digest: &Digest, actual: u64) -> Result<(), EndpointError> {
        if !digest.size_known(self.hash) || digest.size == actual {
            Ok(())
        } else {
            Err(EndpointError::SizeMismatch {
                hash: digest.hash.clone(),
                announced: digest.size,
                actual,
            })
        }
    }

    /// The action cache's result for `action`, while every output it names
    /// is still in the CAS.
    pub fn cached_result(
        &self,
        action: &Digest,
    ) -> Result<Option<reapi::ActionResult>, EndpointError> {
        let Some(result) = self.action_cache.get(&action.hash)? else {
            return Ok(None);
        };
        Ok(match self.first_missing(&result)? {
            None => Some(result),
            Some(missing) => {
                tracing::debug!(action = %action.hash, missing, "cached result has lost an output");
                None
            }
        })
    }

    /// Records `result` for `action`, if every output it names is in the CAS.
    pub fn record_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), EndpointError> {
        if let Some(missing) = self.first_missing(result)? {
            return Err(EndpointError::Precondition(format!(
                "the result names {missing}, which is not in the CAS"
            )));
        }
        Ok(self.action_cache.store(&action.hash, result)?)
    }

    /// The first object a cached action result refers to that is no longer in the CAS.
    pub fn first_missing(
        &self,
        result: &reapi::ActionResult,
    ) -> Result<Option<String>, EndpointError> {
        let files = result.output_files.iter().filter_map(|f| f.digest.as_ref());
        let dirs = result
            .output_directories
            .iter()
            .filter_map(|d| d.tree_digest.as_ref());
        let logs = result
            .stdout_digest
            .iter()
            .chain(result.stderr_digest.iter());
        for d in files.chain(dirs).chain(logs) {
            let mut digest = self.parse_digest(d)?;
            if self.hash.is_native()
                && result
                    .output_directories
                    .iter()
                    .any(|o| o.tree_digest.as_ref() == Some(d))
            {
                digest.is_tree = true;
            }
            if !self.contains(&digest) {
                return Ok(Some(d.hash.clone()));
            }
        }
        Ok(None)
    }

    /// Compatible mode: every Directory below (and including) `root`, each
    /// once, breadth first (what GetTree returns).
    pub fn directories(&self, root: &Digest) -> Result<Vec<reapi::Directory>, EndpointError> {
        let mut out = Vec::new();
        self.for_each_directory(root, |dir| {
            out.push(dir);
            true
        })?;
        Ok(out)
    }

    /// Visits the distinct directories of the tree at `root`, breadth first,
    /// until `visit` returns false. Only digests wait in memory, so a large
    /// tree can be streamed.
    pub fn for_each_directory(
        &self,
        root: &Digest,
        mut visit: impl FnMut(reapi::Directory) -> bool,
    ) -> Result<(), EndpointError> {
        use prost::Message;
        let mut seen = std::collections::HashSet::new();
        let mut queue = std::collections::VecDeque::from([root.clone()]);
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d.hash.clone()) {
                continue;
            }
            let bytes = self
                .read(&d)?
                .ok_or_else(|| EndpointError::NotFound(format!("directory {}", d.hash)))?;
            let dir = reapi::Directory::decode(bytes.as_slice()).map_err(|e| {
                EndpointError::Invalid(format!("{} is not a Directory: {e}", d.hash))
            })?;
            for node in crate::storage::trees::directory_nodes(self.hash, &d.hash, &dir)? {
                if let crate::storage::trees::Node::Dir { digest, .. } = node {
                    queue.push_back(digest);
                }
            }
            if !visit(dir) {
                break;
            }
        }
        Ok(())
    }

    /// Stores an uploaded object after checking its digest; native trees must
    /// only name objects already present.
    /// Stores many blobs (no trees) as [`LocalEndpoint::store`] does each,
    /// synced together.
    pub fn store_blobs(&self, blobs: &[(&Digest, &[u8])]) -> Vec<Result<Digest, EndpointError>> {
        let checked: Vec<Result<(), EndpointError>> = blobs
            .iter()
            .map(|(digest, data)| match digest.is_tree {
                true => Err(EndpointError::TreeInvariant(format!(
                    "{} is a tree, stored on its own",
                    digest.hash
                ))),
                false => self.check_size(digest, data.len() as u64),
            })
            .collect();
        let items: Vec<(ObjectKind, &[u8], Option<&str>)> = blobs
            .iter()
            .zip(&checked)
            .filter(|(_, ok)| ok.is_ok())
            .map(|((digest, data), _)| (ObjectKind::File, *data, Some(digest.hash.as_str())))
            .collect();
        let mut stored = self.cas.put_many_checked(&items).into_iter();
        checked
            .into_iter()
            .map(|ok| match ok {
                Ok(()) => stored
                    .next()
                    .expect("one result per stored blob")
                    .map_err(EndpointError::from),
                Err(e) => Err(e),
            })
            .collect()
    }

    pub fn store(&self, digest: &Digest, data: &[u8]) -> Result<Digest, EndpointError> {
        self.check_size(digest, data.len() as u64)?;
        if digest.is_tree {
            let actual = self.hash.hash_bytes(ObjectKind::Tree, data);
            if actual != digest.hash {
                return Err(CasError::HashMismatch {
                    expected: digest.hash.clone(),
                    actual,
                }
                .into());
            }
            check_git_tree_complete(&self.cas, &digest.hash, data).map_err(|e| match e {
                TreeStoreError::MissingEntry { .. } => EndpointError::TreeInvariant(e.to_string()),
                other => other.into(),
            })?;
            return Ok(self.cas.put_bytes(ObjectKind::Tree, data)?);
        }
        Ok(self
            .cas
            .put_bytes_checked(ObjectKind::File, data, Some(&digest.hash))?)
    }
}
