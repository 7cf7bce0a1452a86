//! The SourceTree service. Not implemented yet: every RPC answers
//! UNIMPLEMENTED, which `just-mr` treats as "serve cannot help" and falls
//! back to fetching sources itself.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ServeContext;
use crate::proto::source_tree_server::SourceTree;
use crate::proto::*;

pub struct SourceTreeService {
    _ctx: Arc<ServeContext>,
}

impl SourceTreeService {
    pub fn new(ctx: Arc<ServeContext>) -> SourceTreeService {
        SourceTreeService { _ctx: ctx }
    }
}

fn not_yet(rpc: &str) -> Status {
    tracing::debug!("{rpc}: not implemented yet");
    Status::unimplemented(format!("jserve does not implement SourceTree.{rpc} yet"))
}

#[tonic::async_trait]
impl SourceTree for SourceTreeService {
    async fn serve_commit_tree(
        &self,
        _r: Request<ServeCommitTreeRequest>,
    ) -> Result<Response<ServeCommitTreeResponse>, Status> {
        Err(not_yet("ServeCommitTree"))
    }

    async fn serve_archive_tree(
        &self,
        _r: Request<ServeArchiveTreeRequest>,
    ) -> Result<Response<ServeArchiveTreeResponse>, Status> {
        Err(not_yet("ServeArchiveTree"))
    }

    async fn serve_distdir_tree(
        &self,
        _r: Request<ServeDistdirTreeRequest>,
    ) -> Result<Response<ServeDistdirTreeResponse>, Status> {
        Err(not_yet("ServeDistdirTree"))
    }

    async fn serve_content(
        &self,
        _r: Request<ServeContentRequest>,
    ) -> Result<Response<ServeContentResponse>, Status> {
        Err(not_yet("ServeContent"))
    }

    async fn serve_tree(
        &self,
        _r: Request<ServeTreeRequest>,
    ) -> Result<Response<ServeTreeResponse>, Status> {
        Err(not_yet("ServeTree"))
    }

    async fn check_root_tree(
        &self,
        _r: Request<CheckRootTreeRequest>,
    ) -> Result<Response<CheckRootTreeResponse>, Status> {
        Err(not_yet("CheckRootTree"))
    }

    async fn get_remote_tree(
        &self,
        _r: Request<GetRemoteTreeRequest>,
    ) -> Result<Response<GetRemoteTreeResponse>, Status> {
        Err(not_yet("GetRemoteTree"))
    }

    async fn compute_tree_structure(
        &self,
        _r: Request<ComputeTreeStructureRequest>,
    ) -> Result<Response<ComputeTreeStructureResponse>, Status> {
        Err(not_yet("ComputeTreeStructure"))
    }
}
