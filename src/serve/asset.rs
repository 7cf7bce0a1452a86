//! The Remote Asset API's Fetch and Push services on serve's port:
//! protocol messages in, statuses out (the logic is in src/asset/).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bazel_remote_apis::build::bazel::remote::asset::v1::{
    fetch_server::Fetch, push_server::Push, FetchBlobRequest, FetchBlobResponse,
    FetchDirectoryRequest, FetchDirectoryResponse, PushBlobRequest, PushBlobResponse,
    PushDirectoryRequest, PushDirectoryResponse, Qualifier,
};
use bazel_remote_apis::build::bazel::remote::execution::v2::{self as reapi, digest_function};
use bazel_remote_apis::google::protobuf::Timestamp;
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::{Code, Request, Response, Status};

use crate::asset::{AssetError, AssetKind, Assets, FetchOutcome, Qualifiers};
use crate::context::ServeContext;
use crate::digest::HashFunction;

pub struct AssetService {
    assets: Arc<Assets>,
}

impl AssetService {
    pub fn new(ctx: &Arc<ServeContext>) -> AssetService {
        AssetService {
            assets: Arc::new(Assets::new(
                ctx.sources.clone(),
                ctx.build_root.clone(),
                ctx.config.unpacking(),
            )),
        }
    }

    /// The digest function of every answer; one the request names must be it
    /// (native mode's git SHA-1 has no REAPI name: only "unset" matches).
    fn check_function(&self, requested: i32) -> Result<i32, Status> {
        let ours = match self.assets.hash() {
            HashFunction::Sha256 => digest_function::Value::Sha256 as i32,
            HashFunction::GitSha1 => digest_function::Value::Unknown as i32,
        };
        if requested == digest_function::Value::Unknown as i32 || requested == ours {
            Ok(ours)
        } else {
            Err(Status::invalid_argument(format!(
                "digest function {requested} is not this serve's ({})",
                if self.assets.hash().is_native() {
                    "native git SHA-1: leave it unset"
                } else {
                    "SHA256"
                }
            )))
        }
    }

    fn digest(
        &self,
        d: Option<&reapi::Digest>,
        what: &str,
    ) -> Result<crate::digest::Digest, Status> {
        let d = d.ok_or_else(|| Status::invalid_argument(format!("no {what} given")))?;
        self.assets
            .hash()
            .digest_from_wire(d)
            .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
    }
}

fn time(t: Option<&Timestamp>) -> Option<SystemTime> {
    let t = t?;
    (t.seconds > 0).then(|| UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.max(0) as u32))
}

/// A field violation of google.rpc.BadRequest (google/rpc/error_details.proto).
#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

/// google.rpc.BadRequest.
#[derive(Clone, PartialEq, Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

impl From<AssetError> for Status {
    fn from(e: AssetError) -> Status {
        match e {
            AssetError::Unsupported(names) => {
                // As the API asks: a BadRequest detail naming each qualifier.
                let message = format!("qualifiers not supported: {}", names.join(", "));
                let details = BadRequest {
                    field_violations: names
                        .iter()
                        .map(|n| FieldViolation {
                            field: "qualifiers.name".into(),
                            description: format!("\"{n}\" not supported"),
                        })
                        .collect(),
                };
                let status = RpcStatus {
                    code: Code::InvalidArgument as i32,
                    message: message.clone(),
                    details: vec![bazel_remote_apis::google::protobuf::Any {
                        type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                        value: details.encode_to_vec(),
                    }],
                };
                Status::with_details(
                    Code::InvalidArgument,
                    message,
                    status.encode_to_vec().into(),
                )
            }
            AssetError::InvalidArgument(m) => Status::invalid_argument(m),
            AssetError::FailedPrecondition(m) => Status::failed_precondition(m),
            AssetError::Internal(m) => Status::internal(m),
        }
    }
}

/// The response's parts: status, uri and digest.
fn parts(
    outcome: FetchOutcome,
    uris: &[String],
) -> (RpcStatus, String, Option<crate::digest::Digest>) {
    match outcome {
        FetchOutcome::Found { uri, digest } => (RpcStatus::default(), uri, Some(digest)),
        FetchOutcome::Failed { code, message } => (
            RpcStatus {
                code: code as i32,
                message,
                details: Vec::new(),
            },
            uris.first().cloned().unwrap_or_default(),
            None,
        ),
    }
}

impl AssetService {
    fn request<'a>(
        &self,
        uris: &'a [String],
        qualifiers: &[Qualifier],
        oldest: Option<&Timestamp>,
    ) -> Result<crate::asset::Request<'a>, Status> {
        Ok(crate::asset::Request {
            uris,
            qualifiers: Qualifiers::parse(qualifiers)?,
            oldest: time(oldest),
        })
    }
}

#[tonic::async_trait]
impl Fetch for AssetService {
    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        let r = request.into_inner();
        let function = self.check_function(r.digest_function)?;
        let asked = self.request(&r.uris, &r.qualifiers, r.oldest_content_accepted.as_ref())?;
        let outcome = self.assets.fetch_blob(&asked).await?;
        tracing::info!("FetchBlob({}): {outcome:?}", asked.qualifiers.describe());
        let (status, uri, digest) = parts(outcome, &r.uris);
        let hash = self.assets.hash();
        Ok(Response::new(FetchBlobResponse {
            status: Some(status),
            uri,
            qualifiers: r.qualifiers,
            expires_at: None,
            blob_digest: digest.map(|d| d.to_wire(hash)),
            digest_function: function,
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        let r = request.into_inner();
        let function = self.check_function(r.digest_function)?;
        let asked = self.request(&r.uris, &r.qualifiers, r.oldest_content_accepted.as_ref())?;
        let outcome = self.assets.fetch_directory(&asked).await?;
        tracing::info!(
            "FetchDirectory({}): {outcome:?}",
            asked.qualifiers.describe()
        );
        let (status, uri, digest) = parts(outcome, &r.uris);
        let hash = self.assets.hash();
        Ok(Response::new(FetchDirectoryResponse {
            status: Some(status),
            uri,
            qualifiers: r.qualifiers,
            expires_at: None,
            root_directory_digest: digest.map(|d| d.to_wire(hash)),
            digest_function: function,
        }))
    }
}

#[tonic::async_trait]
impl Push for AssetService {
    async fn push_blob(
        &self,
        request: Request<PushBlobRequest>,
    ) -> Result<Response<PushBlobResponse>, Status> {
        let r = request.into_inner();
        self.check_function(r.digest_function)?;
        let digest = self.digest(r.blob_digest.as_ref(), "blob_digest")?;
        let asked = self.request(&r.uris, &r.qualifiers, None)?;
        let expire = time(r.expire_at.as_ref());
        self.assets
            .push(AssetKind::Blob, &asked, digest, expire)
            .await?;
        Ok(Response::new(PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<PushDirectoryRequest>,
    ) -> Result<Response<PushDirectoryResponse>, Status> {
        let r = request.into_inner();
        self.check_function(r.digest_function)?;
        let digest = self.digest(r.root_directory_digest.as_ref(), "root_directory_digest")?;
        let asked = self.request(&r.uris, &r.qualifiers, None)?;
        let expire = time(r.expire_at.as_ref());
        self.assets
            .push(AssetKind::Directory, &asked, digest, expire)
            .await?;
        Ok(Response::new(PushDirectoryResponse {}))
    }
}
