//! Capabilities: what the endpoint supports, in the digest function of its mode.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, capabilities_server::Capabilities, symlink_absolute_path_strategy,
};
use bazel_remote_apis::build::bazel::semver::SemVer;
use tonic::{Request, Response, Status};

use super::super::endpoint::LocalEndpoint;
use super::MAX_BATCH_BYTES;

pub struct CapabilitiesService {
    endpoint: Arc<LocalEndpoint>,
}

impl CapabilitiesService {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> Self {
        CapabilitiesService { endpoint }
    }
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        self.endpoint
            .check_instance(&request.get_ref().instance_name)?;
        let digest_function = self.endpoint.hash.reapi_digest_function();
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: vec![digest_function],
                action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: MAX_BATCH_BYTES as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed
                    as i32,
                // Fields 9/10, read by 1.6.1+ (1.5.x probes instead). Fields 7/8
                // stay unset: upstream they are compressors and a blob size limit.
                split_blob_support: true,
                splice_blob_support: true,
                ..Default::default()
            }),
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                digest_function,
                exec_enabled: true,
                digest_functions: vec![digest_function],
                ..Default::default()
            }),
            low_api_version: version(2, 0),
            high_api_version: version(2, 1),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashFunction;
    use prost::Message;

    /// CacheCapabilities as justbuild 1.5.x's patched proto declares fields 7-9.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LegacyCacheCapabilities {
        #[prost(int32, repeated, tag = "7")]
        supported_chunking_algorithms: Vec<i32>,
        #[prost(bool, tag = "8")]
        blob_split_support: bool,
        #[prost(bool, tag = "9")]
        blob_splice_support: bool,
    }

    #[tokio::test]
    async fn both_generations_read_the_announcement_consistently() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::storage::BuildRoot::open(dir.path()).unwrap();
        for hash in [HashFunction::GitSha1, HashFunction::Sha256] {
            let endpoint = LocalEndpoint::new(
                &root,
                crate::execute::EndpointConfig {
                    hash,
                    instance_name: None,
                    runner: crate::execute::runner::RunnerConfig {
                        launcher: vec!["env".into(), "--".into()],
                        default_timeout: std::time::Duration::from_secs(1),
                        jobs: 1,
                    },
                },
            );
            let caps = CapabilitiesService::new(endpoint)
                .get_capabilities(Request::new(reapi::GetCapabilitiesRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .cache_capabilities
                .unwrap();
            assert!(caps.split_blob_support && caps.splice_blob_support);
            // Nothing an upstream reader would take as a compressor or a blob size limit.
            assert!(caps.supported_batch_update_compressors.is_empty());
            assert_eq!(caps.max_cas_blob_size_bytes, 0);
            let legacy = LegacyCacheCapabilities::decode(caps.encode_to_vec().as_slice()).unwrap();
            assert_eq!(
                legacy,
                LegacyCacheCapabilities {
                    supported_chunking_algorithms: vec![],
                    blob_split_support: false,
                    blob_splice_support: true,
                }
            );
        }
    }
}
