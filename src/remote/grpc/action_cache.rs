//! The endpoint's ActionCache service, as the shared cache uses it: reading
//! and recording entries, with the CAS client's retries and time limits.

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, action_cache_client::ActionCacheClient,
};
use tonic::Code;

use super::{Failed, GrpcCas};
use crate::digest::Digest;
use crate::remote::{RemoteError, MAX_DECODING_BYTES};

impl GrpcCas {
    fn action_cache_client(&self) -> ActionCacheClient<tonic::transport::Channel> {
        ActionCacheClient::new(self.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// GetActionResult; NOT_FOUND is `None`.
    pub(super) async fn action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<reapi::ActionResult>, RemoteError> {
        const CALL: &str = "GetActionResult";
        let request = reapi::GetActionResultRequest {
            instance_name: self.instance_name.clone(),
            action_digest: Some(action.to_wire(self.hash)),
            ..Default::default()
        };
        let answer = self
            .retrying(CALL, || {
                let mut client = self.action_cache_client();
                let request = self.request(request.clone());
                async move {
                    match self.unary(CALL, client.get_action_result(request)).await {
                        Ok(result) => Ok(Some(result)),
                        Err(Failed {
                            error: RemoteError::Status { status, .. },
                            ..
                        }) if status.code() == Code::NotFound => Ok(None),
                        Err(f) => Err(f),
                    }
                }
            })
            .await;
        answer.map_err(|f| f.error)
    }

    /// UpdateActionResult.
    pub(super) async fn record_action_result(
        &self,
        action: &Digest,
        result: reapi::ActionResult,
    ) -> Result<(), RemoteError> {
        const CALL: &str = "UpdateActionResult";
        let request = reapi::UpdateActionResultRequest {
            instance_name: self.instance_name.clone(),
            action_digest: Some(action.to_wire(self.hash)),
            action_result: Some(result),
            ..Default::default()
        };
        self.retrying(CALL, || {
            let mut client = self.action_cache_client();
            let request = self.request(request.clone());
            async move { self.unary(CALL, client.update_action_result(request)).await }
        })
        .await
        .map(|_| ())
        .map_err(|f| f.error)
    }
}
