//! Execution and Operations: Execute streams the operation's states until it
//! is done; WaitExecution and GetOperation follow a known operation by name.

use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, execution_server::Execution as ExecutionApi,
};
use bazel_remote_apis::google::longrunning::{
    operations_server::Operations as OperationsApi, CancelOperationRequest, DeleteOperationRequest,
    GetOperationRequest, ListOperationsRequest, ListOperationsResponse, Operation,
    WaitOperationRequest,
};
use bazel_remote_apis::google::protobuf::Empty;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::super::endpoint::LocalEndpoint;
use super::super::execute_action::Execution;
use super::super::operations::wait_done;

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

pub struct ExecutionService {
    endpoint: Arc<LocalEndpoint>,
}

impl ExecutionService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        ExecutionService { endpoint }
    }
}

/// Streams the operation's current state, then its final one once done.
fn follow(rx: watch::Receiver<Operation>, skip_current: bool) -> OperationStream {
    let (tx, out) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let current = rx.borrow().clone();
        if !skip_current || current.done {
            let done = current.done;
            if tx.send(Ok(current)).await.is_err() || done {
                return;
            }
        }
        let _ = tx.send(Ok(wait_done(rx).await)).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

fn known_operation(
    endpoint: &LocalEndpoint,
    name: &str,
) -> Result<watch::Receiver<Operation>, Status> {
    endpoint
        .operations
        .get(name)
        .ok_or_else(|| Status::not_found(format!("no operation {name:?} is known")))
}

#[tonic::async_trait]
impl ExecutionApi for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<reapi::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let request = request.into_inner();
        self.endpoint.check_instance(&request.instance_name)?;
        let digest = self
            .endpoint
            .parse_digest(&request.action_digest.unwrap_or_default())?;
        match self
            .endpoint
            .execute(digest, request.skip_cache_lookup, None)
            .await?
        {
            Execution::Done(op) => Ok(Response::new(Box::pin(tokio_stream::once(Ok(op))))),
            Execution::Running(rx) => Ok(Response::new(follow(rx, false))),
        }
    }

    async fn wait_execution(
        &self,
        request: Request<reapi::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let rx = known_operation(&self.endpoint, &request.into_inner().name)?;
        Ok(Response::new(follow(rx, true)))
    }
}

pub struct OperationsService {
    endpoint: Arc<LocalEndpoint>,
}

impl OperationsService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        OperationsService { endpoint }
    }
}

#[tonic::async_trait]
impl OperationsApi for OperationsService {
    async fn list_operations(
        &self,
        _request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        Err(Status::unimplemented("ListOperations is not supported"))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let rx = known_operation(&self.endpoint, &request.into_inner().name)?;
        let op = rx.borrow().clone();
        Ok(Response::new(op))
    }

    async fn delete_operation(
        &self,
        _request: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("DeleteOperation is not supported"))
    }

    async fn cancel_operation(
        &self,
        _request: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("CancelOperation is not supported"))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let rx = known_operation(&self.endpoint, &request.into_inner().name)?;
        Ok(Response::new(wait_done(rx).await))
    }
}
