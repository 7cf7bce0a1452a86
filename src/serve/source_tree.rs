//! The SourceTree service: protocol messages in, `sources` operations, the
//! outcome mapped onto each RPC's own status enum. Every RPC answers gRPC OK;
//! clients read the status field.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::context::ServeContext;
use crate::proto::source_tree_server::SourceTree;
use crate::proto::*;
use crate::sources::{ArchiveOutcome, Distfile, Outcome, Sources, TreeAnswer};

pub struct SourceTreeService {
    ctx: Arc<ServeContext>,
}

impl SourceTreeService {
    pub fn new(ctx: Arc<ServeContext>) -> SourceTreeService {
        SourceTreeService { ctx }
    }

    fn sources(&self) -> &Sources {
        &self.ctx.sources
    }

    fn wire(
        &self,
        answer: &TreeAnswer,
    ) -> Option<bazel_remote_apis::build::bazel::remote::execution::v2::Digest> {
        let hash = self.sources().remote_hash();
        answer.digest.as_ref().map(|d| d.to_wire(hash))
    }
}

/// Counts an answer for the metrics, by RPC and the status answered.
fn answered(rpc: &'static str, status: &'static str) {
    crate::metrics::global()
        .source_tree_answers
        .get_or_create(&crate::metrics::RpcStatus { rpc, status })
        .inc();
}

fn log_outcome(rpc: &str, id: &str, outcome: &Outcome) {
    crate::logging::subject(id);
    match outcome {
        Outcome::Ok => tracing::info!("{rpc}({id}): OK"),
        Outcome::NotFound => tracing::info!("{rpc}({id}): not found"),
        other => tracing::warn!("{rpc}({id}): {other:?}"),
    }
}

#[tonic::async_trait]
impl SourceTree for SourceTreeService {
    async fn serve_commit_tree(
        &self,
        request: Request<ServeCommitTreeRequest>,
    ) -> Result<Response<ServeCommitTreeResponse>, Status> {
        use serve_commit_tree_response::ServeCommitTreeStatus as S;
        let r = request.into_inner();
        let answer = self
            .sources()
            .commit_tree(&r.commit, &r.subdir, r.sync_tree)
            .await;
        log_outcome("ServeCommitTree", &r.commit, &answer.outcome);
        let status = match answer.outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            Outcome::SyncError(_) => S::SyncError,
            _ => S::InternalError,
        };
        answered("ServeCommitTree", status.as_str_name());
        Ok(Response::new(ServeCommitTreeResponse {
            digest: self.wire(&answer),
            tree: answer.tree.unwrap_or_default(),
            status: status as i32,
        }))
    }

    async fn serve_archive_tree(
        &self,
        request: Request<ServeArchiveTreeRequest>,
    ) -> Result<Response<ServeArchiveTreeResponse>, Status> {
        use crate::archive::ArchiveFormat;
        use crate::sources::resolve::ResolveMode;
        use serve_archive_tree_request::{ArchiveType, SymlinksResolve};
        use serve_archive_tree_response::ServeArchiveTreeStatus as S;
        let r = request.into_inner();
        // Unknown enum values count as the first one, as in the reference.
        let format = match ArchiveType::try_from(r.archive_type).unwrap_or(ArchiveType::Tar) {
            ArchiveType::Tar => ArchiveFormat::Tar,
            ArchiveType::Zip => ArchiveFormat::Zip,
        };
        let mode =
            match SymlinksResolve::try_from(r.resolve_symlinks).unwrap_or(SymlinksResolve::None) {
                SymlinksResolve::None => None,
                SymlinksResolve::Ignore => Some(ResolveMode::Ignore),
                SymlinksResolve::Partial => Some(ResolveMode::Partial),
                SymlinksResolve::Complete => Some(ResolveMode::Complete),
            };
        let answer = self
            .sources()
            .archive_tree(
                &r.content,
                format,
                &r.subdir,
                mode,
                r.sync_tree,
                &self.ctx.config.unpacking(),
            )
            .await;
        let status = match &answer.outcome {
            ArchiveOutcome::Common(Outcome::Ok) => S::Ok,
            ArchiveOutcome::Common(Outcome::NotFound) => S::NotFound,
            ArchiveOutcome::Common(Outcome::SyncError(_)) => S::SyncError,
            ArchiveOutcome::Common(_) => S::InternalError,
            ArchiveOutcome::Unpack(_) => S::UnpackError,
            ArchiveOutcome::Resolve(_) => S::ResolveError,
        };
        answered("ServeArchiveTree", status.as_str_name());
        crate::logging::subject(&r.content);
        tracing::info!("ServeArchiveTree({}): {status:?}", r.content);
        let digest = answer
            .digest
            .as_ref()
            .map(|d| d.to_wire(self.sources().remote_hash()));
        Ok(Response::new(ServeArchiveTreeResponse {
            tree: answer.tree.unwrap_or_default(),
            status: status as i32,
            digest,
        }))
    }

    async fn serve_distdir_tree(
        &self,
        request: Request<ServeDistdirTreeRequest>,
    ) -> Result<Response<ServeDistdirTreeResponse>, Status> {
        use serve_distdir_tree_response::ServeDistdirTreeStatus as S;
        let r = request.into_inner();
        let files: Vec<Distfile> = r
            .distfiles
            .into_iter()
            .map(|f| Distfile {
                name: f.name,
                content: f.content,
                executable: f.executable,
            })
            .collect();
        let n = files.len();
        let answer = self.sources().distdir(files, r.sync_tree).await;
        log_outcome("ServeDistdirTree", &format!("{n} files"), &answer.outcome);
        let status = match answer.outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            Outcome::SyncError(_) => S::SyncError,
            _ => S::InternalError,
        };
        answered("ServeDistdirTree", status.as_str_name());
        Ok(Response::new(ServeDistdirTreeResponse {
            digest: self.wire(&answer),
            tree: answer.tree.unwrap_or_default(),
            status: status as i32,
        }))
    }

    async fn serve_content(
        &self,
        request: Request<ServeContentRequest>,
    ) -> Result<Response<ServeContentResponse>, Status> {
        use serve_content_response::ServeContentStatus as S;
        let r = request.into_inner();
        let answer = self.sources().content(&r.content).await;
        log_outcome("ServeContent", &r.content, &answer.outcome);
        let status = match answer.outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            Outcome::SyncError(_) => S::SyncError,
            _ => S::InternalError,
        };
        answered("ServeContent", status.as_str_name());
        Ok(Response::new(ServeContentResponse {
            digest: self.wire(&answer),
            status: status as i32,
        }))
    }

    async fn serve_tree(
        &self,
        request: Request<ServeTreeRequest>,
    ) -> Result<Response<ServeTreeResponse>, Status> {
        use serve_tree_response::ServeTreeStatus as S;
        let r = request.into_inner();
        let answer = self.sources().tree(&r.tree).await;
        log_outcome("ServeTree", &r.tree, &answer.outcome);
        let status = match answer.outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            Outcome::SyncError(_) => S::SyncError,
            _ => S::InternalError,
        };
        answered("ServeTree", status.as_str_name());
        Ok(Response::new(ServeTreeResponse {
            digest: self.wire(&answer),
            status: status as i32,
        }))
    }

    async fn check_root_tree(
        &self,
        request: Request<CheckRootTreeRequest>,
    ) -> Result<Response<CheckRootTreeResponse>, Status> {
        use check_root_tree_response::CheckRootTreeStatus as S;
        let r = request.into_inner();
        let outcome = self.sources().check_root_tree(&r.tree).await;
        log_outcome("CheckRootTree", &r.tree, &outcome);
        let status = match outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            _ => S::InternalError,
        };
        answered("CheckRootTree", status.as_str_name());
        Ok(Response::new(CheckRootTreeResponse {
            status: status as i32,
        }))
    }

    async fn get_remote_tree(
        &self,
        request: Request<GetRemoteTreeRequest>,
    ) -> Result<Response<GetRemoteTreeResponse>, Status> {
        use get_remote_tree_response::GetRemoteTreeStatus as S;
        let wire = request.into_inner().digest.unwrap_or_default();
        let outcome = match self.sources().remote_hash().digest_from_wire(&wire) {
            Ok(digest) => self.sources().get_remote_tree(&digest).await,
            Err(e) => Outcome::FailedPrecondition(format!("invalid digest: {e}")),
        };
        log_outcome("GetRemoteTree", &wire.hash, &outcome);
        let status = match outcome {
            Outcome::Ok => S::Ok,
            Outcome::FailedPrecondition(_) | Outcome::NotFound => S::FailedPrecondition,
            _ => S::InternalError,
        };
        answered("GetRemoteTree", status.as_str_name());
        Ok(Response::new(GetRemoteTreeResponse {
            status: status as i32,
        }))
    }

    async fn compute_tree_structure(
        &self,
        request: Request<ComputeTreeStructureRequest>,
    ) -> Result<Response<ComputeTreeStructureResponse>, Status> {
        use compute_tree_structure_response::ComputeTreeStructureStatus as S;
        let r = request.into_inner();
        let answer = self.sources().compute_tree_structure(&r.tree).await;
        log_outcome("ComputeTreeStructure", &r.tree, &answer.outcome);
        let status = match answer.outcome {
            Outcome::Ok => S::Ok,
            Outcome::NotFound => S::NotFound,
            _ => S::InternalError,
        };
        answered("ComputeTreeStructure", status.as_str_name());
        Ok(Response::new(ComputeTreeStructureResponse {
            status: status as i32,
            tree_structure_hash: answer.tree.unwrap_or_default(),
        }))
    }
}
