//! ActionCache: results of earlier executions, only handed out while every
//! output they name is still in the CAS.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, action_cache_server::ActionCache,
};
use tonic::{Request, Response, Status};

use super::super::endpoint::LocalEndpoint;
use super::blocking;

pub struct ActionCacheService {
    endpoint: Arc<LocalEndpoint>,
}

impl ActionCacheService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        ActionCacheService { endpoint }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let digest = self
            .endpoint
            .parse_digest(&request.action_digest.unwrap_or_default())?;
        let endpoint = self.endpoint.clone();
        let found = blocking(move || endpoint.cached_result(&digest)).await?;
        found
            .map(Response::new)
            .ok_or_else(|| Status::not_found("action result not in the action cache"))
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let digest = self
            .endpoint
            .parse_digest(&request.action_digest.unwrap_or_default())?;
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("no action result given"))?;
        let endpoint = self.endpoint.clone();
        blocking(move || {
            endpoint.record_result(&digest, &result)?;
            Ok(result)
        })
        .await
        .map(Response::new)
    }
}
