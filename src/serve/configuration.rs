//! The Configuration service: which execution endpoint jserve works with, and
//! in which hash mode. Clients refuse to cooperate when either differs from
//! their own set-up, so the answers follow justbuild's format exactly.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::context::ServeContext;
use crate::proto::configuration_server::Configuration;
use crate::proto::{
    CompatibilityRequest, CompatibilityResponse, RemoteExecutionEndpointRequest,
    RemoteExecutionEndpointResponse,
};

pub struct ConfigurationService {
    ctx: Arc<ServeContext>,
}

impl ConfigurationService {
    pub fn new(ctx: Arc<ServeContext>) -> ConfigurationService {
        ConfigurationService { ctx }
    }
}

/// The endpoint address clients are told: the client address if configured,
/// else the address, else empty (jserve is its own endpoint). Clients parse
/// the value as JSON, so a set address is sent as a quoted JSON string.
pub fn advertised_endpoint(ctx: &ServeContext) -> RemoteExecutionEndpointResponse {
    let endpoint = ctx.config.execution_endpoint.as_ref();
    let address = endpoint
        .and_then(|e| e.client_address.as_ref().or(e.address.as_ref()))
        .map(|a| serde_json::Value::String(a.to_string()).to_string())
        .unwrap_or_default();
    RemoteExecutionEndpointResponse {
        address,
        remote_instance_name: endpoint
            .map(|e| e.instance_name.clone())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Configuration for ConfigurationService {
    async fn remote_execution_endpoint(
        &self,
        _request: Request<RemoteExecutionEndpointRequest>,
    ) -> Result<Response<RemoteExecutionEndpointResponse>, Status> {
        let answer = advertised_endpoint(&self.ctx);
        tracing::debug!(address = %answer.address, instance = %answer.remote_instance_name, "RemoteExecutionEndpoint");
        Ok(Response::new(answer))
    }

    async fn compatibility(
        &self,
        _request: Request<CompatibilityRequest>,
    ) -> Result<Response<CompatibilityResponse>, Status> {
        let compatible = !self.ctx.hash.is_native();
        tracing::debug!(compatible, "Compatibility");
        Ok(Response::new(CompatibilityResponse { compatible }))
    }
}
