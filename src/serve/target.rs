//! The Target service. ServeTargetVariables and ServeTargetDescription answer
//! from the targets file of a known tree; ServeTarget (the target-level cache
//! itself) is not implemented yet and answers UNIMPLEMENTED, on which `just`
//! reports that the serve endpoint cannot provide the target.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ServeContext;
use crate::proto::target_server::Target;
use crate::proto::*;
use crate::sources::ExportInfoError;

pub struct TargetService {
    ctx: Arc<ServeContext>,
}

impl TargetService {
    pub fn new(ctx: Arc<ServeContext>) -> TargetService {
        TargetService { ctx }
    }
}

fn status(rpc: &str, e: ExportInfoError) -> Status {
    tracing::warn!("{rpc}: {e}");
    match e {
        ExportInfoError::FailedPrecondition(m) => Status::failed_precondition(m),
        ExportInfoError::Internal(m) => Status::internal(m),
        ExportInfoError::Unavailable(m) => Status::unavailable(m),
    }
}

#[tonic::async_trait]
impl Target for TargetService {
    async fn serve_target(
        &self,
        _r: Request<ServeTargetRequest>,
    ) -> Result<Response<ServeTargetResponse>, Status> {
        tracing::debug!("ServeTarget: not implemented yet");
        Err(Status::unimplemented(
            "jserve does not implement Target.ServeTarget yet",
        ))
    }

    async fn serve_target_variables(
        &self,
        request: Request<ServeTargetVariablesRequest>,
    ) -> Result<Response<ServeTargetVariablesResponse>, Status> {
        let r = request.into_inner();
        let flexible_config = self
            .ctx
            .sources
            .target_variables(&r.root_tree, &r.target_file, &r.target)
            .await
            .map_err(|e| status("ServeTargetVariables", e))?;
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
        let sources = &self.ctx.sources;
        let digest = sources
            .target_description(&r.root_tree, &r.target_file, &r.target)
            .await
            .map_err(|e| status("ServeTargetDescription", e))?;
        tracing::info!(
            "ServeTargetDescription({}, {}, {}): {}",
            r.root_tree,
            r.target_file,
            r.target,
            digest.hash
        );
        Ok(Response::new(ServeTargetDescriptionResponse {
            description_id: Some(digest.to_wire(sources.remote_hash())),
        }))
    }
}
