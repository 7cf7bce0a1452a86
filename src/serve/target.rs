//! The Target service. Not implemented yet: every RPC answers UNIMPLEMENTED,
//! on which `just` reports that the serve endpoint cannot provide the target.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ServeContext;
use crate::proto::target_server::Target;
use crate::proto::*;

pub struct TargetService {
    _ctx: Arc<ServeContext>,
}

impl TargetService {
    pub fn new(ctx: Arc<ServeContext>) -> TargetService {
        TargetService { _ctx: ctx }
    }
}

fn not_yet(rpc: &str) -> Status {
    tracing::debug!("{rpc}: not implemented yet");
    Status::unimplemented(format!("jserve does not implement Target.{rpc} yet"))
}

#[tonic::async_trait]
impl Target for TargetService {
    async fn serve_target(
        &self,
        _r: Request<ServeTargetRequest>,
    ) -> Result<Response<ServeTargetResponse>, Status> {
        Err(not_yet("ServeTarget"))
    }

    async fn serve_target_variables(
        &self,
        _r: Request<ServeTargetVariablesRequest>,
    ) -> Result<Response<ServeTargetVariablesResponse>, Status> {
        Err(not_yet("ServeTargetVariables"))
    }

    async fn serve_target_description(
        &self,
        _r: Request<ServeTargetDescriptionRequest>,
    ) -> Result<Response<ServeTargetDescriptionResponse>, Status> {
        Err(not_yet("ServeTargetDescription"))
    }
}
