//! Executing actions at the associated endpoint: the REAPI Execution client
//! side. The caller has uploaded the Action, its Command and the input root;
//! the executor asks for the run and hands back the endpoint's answer.
//!
//! Two implementations: [`LocalExecutor`] calls jserve's own endpoint
//! in-process, [`GrpcExecutor`] speaks to any REAPI server. The gRPC client
//! follows the operation's stream to its end; a stream lost half-way is
//! picked up again with WaitExecution on the operation's name, and transient
//! failures (`UNAVAILABLE` and friends) are retried with backoff, as the CAS
//! client does.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, execution_client::ExecutionClient,
};
use bazel_remote_apis::google::longrunning::{operation, Operation};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::config::RetryConfig;
use crate::digest::{Digest, HashFunction};
use crate::execute::execute_action::Execution;
use crate::execute::operations::wait_done;
use crate::execute::runner::Interest;
use crate::execute::LocalEndpoint;
use crate::remote::retry::{self, is_retryable, Random};

use crate::remote::MAX_DECODING_BYTES;
/// Re-attachments to a running operation that made progress before its
/// stream broke; beyond that something is wrong with the connection.
const MAX_REATTACH: u32 = 100;

/// A finished execution the endpoint reports as successful at the protocol
/// level (the command itself may still have failed: see `exit_code`).
#[derive(Clone, Debug, PartialEq)]
pub struct Executed {
    pub result: reapi::ActionResult,
    /// Answered from the action cache rather than run.
    pub cached: bool,
    /// The endpoint's free-form message, if any.
    pub message: String,
}

/// Why an execution produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The endpoint answered, with an error status (a missing input, a time
    /// limit, ...). `result` is what it reported nevertheless, e.g. the
    /// logs of a command that was killed.
    #[error("the endpoint failed to execute action {action} ({code:?}): {message}")]
    Failed {
        action: String,
        code: Code,
        message: String,
        result: Option<Box<reapi::ActionResult>>,
    },
    /// The endpoint could not be asked (connection, transport).
    #[error("cannot reach the execution endpoint for action {action}: {status}")]
    Transport { action: String, status: Status },
    /// The answer does not follow the protocol.
    #[error("malformed answer to the execution of action {action}: {message}")]
    Malformed { action: String, message: String },
}

impl ExecError {
    /// Whether the endpoint gave up because the action ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ExecError::Failed {
                code: Code::DeadlineExceeded,
                ..
            }
        )
    }
}

/// Runs actions at the endpoint.
#[tonic::async_trait]
pub trait RemoteExecutor: Send + Sync {
    /// Executes the action `action` (already in the CAS, with its command and
    /// input root). With `skip_cache_lookup` unset the endpoint may answer
    /// from its action cache.
    async fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<Executed, ExecError>;

    /// This executor for the actions of one computation, so an endpoint that
    /// queues actions can put those nobody waits for last. Endpoints that
    /// cannot tell (external ones) return themselves.
    fn for_interest(self: Arc<Self>, _interest: &Interest) -> Arc<dyn RemoteExecutor>;
}

const RESPONSE_TYPE: &str = "build.bazel.remote.execution.v2.ExecuteResponse";

/// Reads the final state of an operation.
pub fn outcome_of(action: &Digest, op: Operation) -> Result<Executed, ExecError> {
    let malformed = |message: String| ExecError::Malformed {
        action: action.hash.clone(),
        message,
    };
    if !op.done {
        return Err(malformed(format!(
            "operation {:?} ended without being done",
            op.name
        )));
    }
    let any = match op.result {
        Some(operation::Result::Error(status)) => {
            return Err(ExecError::Failed {
                action: action.hash.clone(),
                code: Code::from(status.code),
                message: status.message,
                result: None,
            })
        }
        Some(operation::Result::Response(any)) => any,
        None => return Err(malformed("done operation without a result".into())),
    };
    if !any.type_url.ends_with(RESPONSE_TYPE) {
        return Err(malformed(format!(
            "expected an ExecuteResponse, got {:?}",
            any.type_url
        )));
    }
    let response = reapi::ExecuteResponse::decode(any.value.as_slice())
        .map_err(|e| malformed(format!("ExecuteResponse does not parse: {e}")))?;
    let status = response.status.unwrap_or_default();
    if status.code != Code::Ok as i32 {
        return Err(ExecError::Failed {
            action: action.hash.clone(),
            code: Code::from(status.code),
            message: status.message,
            result: response.result.map(Box::new),
        });
    }
    let result = response
        .result
        .ok_or_else(|| malformed("successful ExecuteResponse without a result".into()))?;
    Ok(Executed {
        result,
        cached: response.cached_result,
        message: response.message,
    })
}

/// jserve's own endpoint, called in-process.
pub struct LocalExecutor {
    endpoint: Arc<LocalEndpoint>,
    /// The computation whose actions these are (see [`RemoteExecutor::for_interest`]).
    interest: Option<Interest>,
}

impl LocalExecutor {
    pub fn new(endpoint: Arc<LocalEndpoint>) -> LocalExecutor {
        LocalExecutor {
            endpoint,
            interest: None,
        }
    }
}

#[tonic::async_trait]
impl RemoteExecutor for LocalExecutor {
    async fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<Executed, ExecError> {
        let started = self
            .endpoint
            .execute(action.clone(), skip_cache_lookup, self.interest.clone())
            .await
            .map_err(|e| ExecError::Failed {
                action: action.hash.clone(),
                code: e.to_status().code(),
                message: e.to_string(),
                result: None,
            })?;
        let op = match started {
            Execution::Done(op) => op,
            Execution::Running(rx) => wait_done(rx).await,
        };
        outcome_of(action, op)
    }

    fn for_interest(self: Arc<Self>, interest: &Interest) -> Arc<dyn RemoteExecutor> {
        Arc::new(LocalExecutor {
            endpoint: self.endpoint.clone(),
            interest: Some(interest.clone()),
        })
    }
}

/// Where and how to reach an external endpoint's Execution service.
#[derive(Clone, Debug)]
pub struct GrpcExecutorConfig {
    /// For messages only.
    pub address: String,
    pub instance_name: String,
    pub hash: HashFunction,
    pub retry: RetryConfig,
}

/// Any REAPI endpoint's Execution service over gRPC.
pub struct GrpcExecutor {
    channel: Channel,
    config: GrpcExecutorConfig,
    /// Jitter for retry waits.
    random: Random,
}

/// How following one stream ended without a final operation.
struct Lost {
    /// The operation's name, if the endpoint told it.
    name: Option<String>,
    /// Whether any message arrived before the loss.
    progressed: bool,
    status: Status,
}

impl GrpcExecutor {
    /// An executor on an established (possibly lazy) channel, typically the
    /// one the CAS client of the same endpoint uses.
    pub fn new(channel: Channel, config: GrpcExecutorConfig) -> GrpcExecutor {
        GrpcExecutor {
            channel,
            config,
            random: Random::new(),
        }
    }

    fn client(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// Reads a stream of operation states up to the final one.
    async fn follow(
        mut stream: tonic::Streaming<Operation>,
        mut name: Option<String>,
    ) -> Result<Operation, Lost> {
        let mut progressed = false;
        loop {
            match stream.message().await {
                Ok(Some(op)) => {
                    progressed = true;
                    if !op.name.is_empty() {
                        name = Some(op.name.clone());
                    }
                    if op.done {
                        return Ok(op);
                    }
                }
                Ok(None) => {
                    return Err(Lost {
                        name,
                        progressed,
                        status: Status::unavailable(
                            "the stream ended before the operation was done",
                        ),
                    })
                }
                Err(status) => {
                    return Err(Lost {
                        name,
                        progressed,
                        status,
                    })
                }
            }
        }
    }

    async fn execute_once(&self, action: &Digest, skip: bool) -> Result<Operation, Lost> {
        let request = reapi::ExecuteRequest {
            instance_name: self.config.instance_name.clone(),
            skip_cache_lookup: skip,
            action_digest: Some(action.to_wire(self.config.hash)),
            ..Default::default()
        };
        match self.client().execute(request).await {
            Ok(response) => Self::follow(response.into_inner(), None).await,
            Err(status) => Err(Lost {
                name: None,
                progressed: false,
                status,
            }),
        }
    }

    async fn wait_once(&self, name: &str) -> Result<Operation, Lost> {
        let request = reapi::WaitExecutionRequest {
            name: name.to_string(),
        };
        match self.client().wait_execution(request).await {
            Ok(response) => Self::follow(response.into_inner(), Some(name.to_string())).await,
            Err(status) => Err(Lost {
                name: Some(name.to_string()),
                progressed: false,
                status,
            }),
        }
    }

    /// Waits before the next attempt if one is left.
    async fn another_attempt(&self, attempt: &mut u32, what: &'static str, why: &str) -> bool {
        let max = self.config.retry.max_attempts.max(1);
        if *attempt >= max {
            return false;
        }
        crate::metrics::global()
            .endpoint_retries
            .get_or_create(&crate::metrics::Method { method: what })
            .inc();
        let wait = retry::wait(&self.config.retry, *attempt, &self.random);
        tracing::info!(
            "{what} at {}: attempt {}/{max} failed: {why}; retrying in {wait:.1?}",
            self.config.address,
            *attempt
        );
        tokio::time::sleep(wait).await;
        *attempt += 1;
        true
    }
}

#[tonic::async_trait]
impl RemoteExecutor for GrpcExecutor {
    fn for_interest(self: Arc<Self>, _: &Interest) -> Arc<dyn RemoteExecutor> {
        self
    }

    async fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<Executed, ExecError> {
        let mut attempt = 1u32;
        let mut reattached = 0u32;
        let mut running: Option<String> = None;
        loop {
            let (call, followed) = match &running {
                None => (
                    "Execute",
                    self.execute_once(action, skip_cache_lookup).await,
                ),
                Some(name) => ("WaitExecution", self.wait_once(name).await),
            };
            crate::metrics::global().endpoint_call(call, followed.is_err());
            match followed {
                Ok(op) => match outcome_of(action, op) {
                    Err(ExecError::Failed { code, message, .. })
                        if code == Code::Unavailable
                            && self
                                .another_attempt(&mut attempt, "Execute", &message)
                                .await =>
                    {
                        // Could not be started (e.g. no free worker): ask again.
                        running = None;
                    }
                    outcome => return outcome,
                },
                Err(lost) => {
                    let code = lost.status.code();
                    if running.is_some() && code == Code::NotFound {
                        // The endpoint forgot the operation: start over.
                        running = None;
                        if !self
                            .another_attempt(&mut attempt, "WaitExecution", lost.status.message())
                            .await
                        {
                            return Err(ExecError::Transport {
                                action: action.hash.clone(),
                                status: lost.status,
                            });
                        }
                        continue;
                    }
                    // A broken connection in mid-stream may surface as UNKNOWN.
                    let recoverable =
                        is_retryable(code) || (lost.progressed && code == Code::Unknown);
                    if !recoverable {
                        return Err(ExecError::Transport {
                            action: action.hash.clone(),
                            status: lost.status,
                        });
                    }
                    if lost.name.is_some() && lost.progressed && reattached < MAX_REATTACH {
                        // The run goes on at the endpoint: follow it again at once.
                        reattached += 1;
                        tracing::debug!(
                            "Execute stream for {} lost ({}); waiting for the operation",
                            action.hash,
                            lost.status
                        );
                        running = lost.name;
                        continue;
                    }
                    let what = if running.is_some() {
                        "WaitExecution"
                    } else {
                        "Execute"
                    };
                    if !self
                        .another_attempt(&mut attempt, what, &lost.status.to_string())
                        .await
                    {
                        return Err(ExecError::Transport {
                            action: action.hash.clone(),
                            status: lost.status,
                        });
                    }
                    running = lost.name.or(running);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_remote_apis::google::protobuf::Any;
    use bazel_remote_apis::google::rpc::Status as RpcStatus;

    fn digest() -> Digest {
        HashFunction::Sha256.digest_bytes(crate::digest::ObjectKind::File, b"action")
    }

    fn done_with(response: &reapi::ExecuteResponse) -> Operation {
        Operation {
            name: "op".into(),
            done: true,
            result: Some(operation::Result::Response(Any {
                type_url: format!("type.googleapis.com/{RESPONSE_TYPE}"),
                value: response.encode_to_vec(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_of_operations() {
        let ok = reapi::ExecuteResponse {
            result: Some(reapi::ActionResult {
                exit_code: 3,
                ..Default::default()
            }),
            cached_result: true,
            ..Default::default()
        };
        let executed = outcome_of(&digest(), done_with(&ok)).unwrap();
        assert_eq!(executed.result.exit_code, 3);
        assert!(executed.cached);

        let timed_out = reapi::ExecuteResponse {
            result: Some(reapi::ActionResult::default()),
            status: Some(RpcStatus {
                code: Code::DeadlineExceeded as i32,
                message: "killed".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        let err = outcome_of(&digest(), done_with(&timed_out)).unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(matches!(
            err,
            ExecError::Failed {
                result: Some(_),
                ..
            }
        ));

        let error_op = Operation {
            done: true,
            result: Some(operation::Result::Error(RpcStatus {
                code: Code::FailedPrecondition as i32,
                message: "missing input".into(),
                details: vec![],
            })),
            ..Default::default()
        };
        let err = outcome_of(&digest(), error_op).unwrap_err();
        assert!(err.to_string().contains("missing input"), "{err}");
        assert!(!err.is_timeout());

        let unfinished = Operation::default();
        assert!(matches!(
            outcome_of(&digest(), unfinished),
            Err(ExecError::Malformed { .. })
        ));
        let mut wrong_type = done_with(&ok);
        if let Some(operation::Result::Response(any)) = &mut wrong_type.result {
            any.type_url = "type.googleapis.com/google.protobuf.Empty".into();
        }
        assert!(matches!(
            outcome_of(&digest(), wrong_type),
            Err(ExecError::Malformed { .. })
        ));
    }
}
