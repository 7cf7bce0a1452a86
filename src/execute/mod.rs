//! jserve's own remote-execution endpoint (REAPI v2 server side), in native
//! (git SHA-1 ids, git trees) or compatible (SHA-256, Directory) mode.

pub mod endpoint;
pub mod execute_action;
pub mod operations;
pub mod resource;
pub mod runner;
pub mod services;

pub use endpoint::{EndpointConfig, EndpointError, LocalEndpoint};

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    action_cache_server::ActionCacheServer, capabilities_server::CapabilitiesServer,
    content_addressable_storage_server::ContentAddressableStorageServer,
    execution_server::ExecutionServer,
};
use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer;
use bazel_remote_apis::google::longrunning::operations_server::OperationsServer;
use tonic::server::NamedService;
use tonic::transport::server::Router;

/// A `google.rpc.Status` as REAPI messages carry it (per blob, per action).
pub(crate) fn rpc_status(
    code: tonic::Code,
    message: impl Into<String>,
) -> Option<bazel_remote_apis::google::rpc::Status> {
    Some(bazel_remote_apis::google::rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

/// The names of the services `add_services` adds, for reflection.
pub const SERVICE_NAMES: [&str; 6] = [
    <CapabilitiesServer<()> as NamedService>::NAME,
    <ContentAddressableStorageServer<()> as NamedService>::NAME,
    <ByteStreamServer<()> as NamedService>::NAME,
    <ActionCacheServer<()> as NamedService>::NAME,
    <ExecutionServer<()> as NamedService>::NAME,
    <OperationsServer<()> as NamedService>::NAME,
];

/// Adds the six REAPI services over one endpoint to a server.
pub fn add_services<L>(
    router: Router<L>,
    endpoint: Arc<LocalEndpoint>,
    max_message_size: usize,
) -> Router<L> {
    use services::*;
    let limit = max_message_size;
    router
        .add_service(
            CapabilitiesServer::new(CapabilitiesService::new(endpoint.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ContentAddressableStorageServer::new(CasService::new(endpoint.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ByteStreamServer::new(ByteStreamService::new(endpoint.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ActionCacheServer::new(ActionCacheService::new(endpoint.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ExecutionServer::new(ExecutionService::new(endpoint.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            OperationsServer::new(OperationsService::new(endpoint))
                .max_decoding_message_size(limit),
        )
}
