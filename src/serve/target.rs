//! The Target service. ServeTarget is the target-level cache (the logic is in
//! `crate::targets`); ServeTargetVariables and ServeTargetDescription answer
//! from the targets file of a known tree.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::context::ServeContext;
use crate::proto::target_server::Target;
use crate::proto::*;
use crate::targets::export_info::{self, ExportInfoError};
use crate::targets::{KeyError, TargetAnswer, TargetError, TargetRequest, TargetServer};

pub struct TargetService {
    ctx: Arc<ServeContext>,
    server: Arc<TargetServer>,
}

impl TargetService {
    pub fn new(ctx: Arc<ServeContext>) -> TargetService {
        let server = TargetServer::new(ctx.target_deps());
        TargetService { ctx, server }
    }
}

/// The gRPC code clients see for each reason ServeTarget has no answer.
fn target_code(e: &TargetError) -> Code {
    match e {
        TargetError::MissingBlob(_)
        | TargetError::Description(_)
        | TargetError::TargetName(_)
        | TargetError::DispatchList(_)
        | TargetError::DispatchAddress { .. } => Code::FailedPrecondition,
        TargetError::Key(k) => match k {
            KeyError::NotJson(_) | KeyError::RepoKeyNotAHash { .. } => Code::Internal,
            KeyError::NotAnObject | KeyError::MissingField(_) | KeyError::RepoKeyNotAString => {
                Code::NotFound
            }
            KeyError::FieldNotAString(_)
            | KeyError::FieldNotJson { .. }
            | KeyError::ConfigNotAnObject => Code::FailedPrecondition,
        },
        TargetError::NotAnExport { .. } => Code::NotFound,
        TargetError::DispatchUnreachable { .. } | TargetError::Upload { .. } => Code::Unavailable,
        TargetError::Local { .. }
        | TargetError::VanishedAfterStore(_)
        | TargetError::Lost
        | TargetError::Worker(_) => Code::Internal,
        TargetError::AfterDownloadFailures { error, .. } => target_code(error),
    }
}

fn target_status(e: TargetError) -> Status {
    tracing::warn!("ServeTarget: {e}");
    Status::new(target_code(&e), e.to_string())
}

/// The gRPC code clients see for each reason a question about an export
/// target has no answer.
fn export_info_status(rpc: &str, e: ExportInfoError) -> Status {
    tracing::warn!("{rpc}: {e}");
    let code = match &e {
        ExportInfoError::UnknownRoot(_)
        | ExportInfoError::NoTargetsFile { .. }
        | ExportInfoError::NotAFile { .. }
        | ExportInfoError::TargetsFile { .. }
        | ExportInfoError::NotAnExport { .. } => Code::FailedPrecondition,
        ExportInfoError::InvalidTreeId(_)
        | ExportInfoError::TargetsFileMissing { .. }
        | ExportInfoError::Git(_)
        | ExportInfoError::Worker(_) => Code::Internal,
        ExportInfoError::Upload(_) => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

#[tonic::async_trait]
impl Target for TargetService {
    async fn serve_target(
        &self,
        request: Request<ServeTargetRequest>,
    ) -> Result<Response<ServeTargetResponse>, Status> {
        let r = request.into_inner();
        let hash = self.ctx.hash;
        let key = r
            .target_cache_key_id
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("no target cache key given"))
            .and_then(|d| {
                hash.digest_from_wire(d)
                    .map_err(|e| Status::invalid_argument(format!("target cache key: {e}")))
            })?;
        crate::logging::subject(&key.hash);
        let dispatch = match &r.dispatch_info {
            Some(d) => Some(
                hash.digest_from_wire(d)
                    .map_err(|e| Status::invalid_argument(format!("dispatch info: {e}")))?,
            ),
            None => None,
        };
        let mut properties = std::collections::BTreeMap::new();
        for p in r.execution_properties {
            properties.insert(p.name, p.value);
        }
        let mut required = Vec::new();
        for d in &r.required_digests {
            match hash.digest_from_wire(d) {
                Ok(d) => required.push(d),
                Err(_) => tracing::warn!("Failed to convert a required digest {}", d.hash),
            }
        }
        tracing::debug!("ServeTarget({})", key.hash);
        let answer = self
            .server
            .serve(TargetRequest {
                key,
                properties,
                dispatch,
                required,
                keep_artifact_root: r.keep_artifact_root,
            })
            .await
            .map_err(target_status)?;
        Ok(Response::new(match answer {
            TargetAnswer::Value(d) => ServeTargetResponse {
                target_value: Some(d.to_wire(hash)),
                log: None,
            },
            TargetAnswer::Log(d) => ServeTargetResponse {
                target_value: None,
                log: Some(d.to_wire(hash)),
            },
        }))
    }

    async fn serve_target_variables(
        &self,
        request: Request<ServeTargetVariablesRequest>,
    ) -> Result<Response<ServeTargetVariablesResponse>, Status> {
        let r = request.into_inner();
        let flexible_config = export_info::target_variables(
            &self.ctx.sources,
            &r.root_tree,
            &r.target_file,
            &r.target,
        )
        .await
        .map_err(|e| export_info_status("ServeTargetVariables", e))?;
        tracing::info!(
            "ServeTargetVariables({}, {}, {}): {flexible_config:?}",
            r.root_tree,
            r.target_file,
            r.target
        );
        Ok(Response::new(ServeTargetVariablesResponse {
            flexible_config,
        }))
    }

    async fn serve_target_description(
        &self,
        request: Request<ServeTargetDescriptionRequest>,
    ) -> Result<Response<ServeTargetDescriptionResponse>, Status> {
        let r = request.into_inner();
        let digest = export_info::target_description(
            &self.ctx.sources,
            &r.root_tree,
            &r.target_file,
            &r.target,
        )
        .await
        .map_err(|e| export_info_status("ServeTargetDescription", e))?;
        tracing::info!(
            "ServeTargetDescription({}, {}, {}): {}",
            r.root_tree,
            r.target_file,
            r.target,
            digest.hash
        );
        Ok(Response::new(ServeTargetDescriptionResponse {
            description_id: Some(digest.to_wire(self.ctx.sources.remote_hash())),
        }))
    }
}
