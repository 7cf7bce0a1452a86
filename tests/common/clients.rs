//! Small clients for the serve services in tests: one call per method,
//! the request built from its fields, the answer unwrapped (a transport
//! error fails the test). The raw tonic client stays reachable by deref for
//! calls whose status is under test.

#![allow(dead_code)]

use jserve::proto::source_tree_client::SourceTreeClient;
use jserve::proto::*;
use tonic::transport::Channel;

pub struct SourceTree(pub SourceTreeClient<Channel>);

impl std::ops::Deref for SourceTree {
    type Target = SourceTreeClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for SourceTree {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl SourceTree {
    pub fn new(channel: Channel) -> SourceTree {
        SourceTree(SourceTreeClient::new(channel))
    }

    pub async fn commit_tree(
        &mut self,
        commit: impl Into<String>,
        subdir: impl Into<String>,
        sync_tree: bool,
    ) -> ServeCommitTreeResponse {
        let request = ServeCommitTreeRequest {
            commit: commit.into(),
            subdir: subdir.into(),
            sync_tree,
        };
        self.0
            .serve_commit_tree(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn archive_tree(
        &mut self,
        content: impl Into<String>,
        kind: serve_archive_tree_request::ArchiveType,
        subdir: impl Into<String>,
        resolve: serve_archive_tree_request::SymlinksResolve,
        sync_tree: bool,
    ) -> ServeArchiveTreeResponse {
        let request = ServeArchiveTreeRequest {
            content: content.into(),
            archive_type: kind as i32,
            subdir: subdir.into(),
            resolve_symlinks: resolve as i32,
            sync_tree,
        };
        self.0
            .serve_archive_tree(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn distdir(
        &mut self,
        distfiles: Vec<serve_distdir_tree_request::Distfile>,
        sync_tree: bool,
    ) -> ServeDistdirTreeResponse {
        let request = ServeDistdirTreeRequest {
            distfiles,
            sync_tree,
        };
        self.0
            .serve_distdir_tree(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn content(&mut self, content: impl Into<String>) -> ServeContentResponse {
        let request = ServeContentRequest {
            content: content.into(),
        };
        self.0.serve_content(request).await.unwrap().into_inner()
    }

    pub async fn tree(&mut self, tree: impl Into<String>) -> ServeTreeResponse {
        let request = ServeTreeRequest { tree: tree.into() };
        self.0.serve_tree(request).await.unwrap().into_inner()
    }

    pub async fn check_root_tree(&mut self, tree: impl Into<String>) -> CheckRootTreeResponse {
        let request = CheckRootTreeRequest { tree: tree.into() };
        self.0.check_root_tree(request).await.unwrap().into_inner()
    }

    pub async fn get_remote_tree(
        &mut self,
        digest: bazel_remote_apis::build::bazel::remote::execution::v2::Digest,
    ) -> GetRemoteTreeResponse {
        let request = GetRemoteTreeRequest {
            digest: Some(digest),
        };
        self.0.get_remote_tree(request).await.unwrap().into_inner()
    }

    pub async fn tree_structure(
        &mut self,
        tree: impl Into<String>,
    ) -> ComputeTreeStructureResponse {
        let request = ComputeTreeStructureRequest { tree: tree.into() };
        self.0
            .compute_tree_structure(request)
            .await
            .unwrap()
            .into_inner()
    }
}
