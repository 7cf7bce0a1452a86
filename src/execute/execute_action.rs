//! Executing an action: load Action and Command, answer from the action cache
//! when allowed, else run it (merging concurrent identical requests) and cache
//! a successful result.
// Clients before REAPI 2.1 use the deprecated output fields.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{self as reapi, execution_stage};
use bazel_remote_apis::google::longrunning::{operation, Operation};
use bazel_remote_apis::google::protobuf::Any;
use prost::Message;
use tokio::sync::watch;
use tonic::Code;

use super::endpoint::{EndpointError, LocalEndpoint};
use super::operations::Started;
use super::runner::{ActionSpec, Demand, Interest, Requested, RunError, StageError};
use crate::digest::{Digest, ObjectKind};
use crate::execute::rpc_status;
use crate::storage::trees::TreeStoreError;

const TYPE_PREFIX: &str = "type.googleapis.com/build.bazel.remote.execution.v2.";

fn pack<M: Message>(name: &str, m: &M) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{name}"),
        value: m.encode_to_vec(),
    }
}

/// Where an Execute request stands after it was accepted.
pub enum Execution {
    /// Answered at once (from the action cache).
    Done(Operation),
    /// Running (or queued); the receiver sees the operation finish.
    Running(watch::Receiver<Operation>),
}

struct Loaded {
    action: reapi::Action,
    spec: ActionSpec,
}

impl LocalEndpoint {
    fn operation(&self, digest: &Digest, stage: execution_stage::Value) -> Operation {
        let meta = reapi::ExecuteOperationMetadata {
            stage: stage as i32,
            action_digest: Some(digest.to_wire(self.hash)),
            digest_function: self.hash.reapi_digest_function(),
            ..Default::default()
        };
        Operation {
            metadata: Some(pack("ExecuteOperationMetadata", &meta)),
            ..Default::default()
        }
    }

    fn finished(&self, digest: &Digest, response: &reapi::ExecuteResponse) -> Operation {
        let mut op = self.operation(digest, execution_stage::Value::Completed);
        op.done = true;
        op.result = Some(operation::Result::Response(pack(
            "ExecuteResponse",
            response,
        )));
        op
    }

    /// Reads a message the request refers to; absent ones are a failed precondition.
    fn load_message<M: Message + Default>(
        &self,
        what: &str,
        d: &Option<reapi::Digest>,
    ) -> Result<M, EndpointError> {
        let digest = self.parse_digest(&d.clone().unwrap_or_default())?;
        let bytes = self.read(&digest)?.ok_or_else(|| {
            EndpointError::Precondition(format!("{what} {} is not in the CAS", digest.hash))
        })?;
        M::decode(bytes.as_slice()).map_err(|e| {
            EndpointError::Invalid(format!("{what} {} does not parse: {e}", digest.hash))
        })
    }

    fn load(&self, action_digest: &Digest) -> Result<Loaded, EndpointError> {
        let action_bytes = self.read(action_digest)?.ok_or_else(|| {
            EndpointError::Precondition(format!("action {} is not in the CAS", action_digest.hash))
        })?;
        let action = reapi::Action::decode(action_bytes.as_slice())
            .map_err(|e| EndpointError::Invalid(format!("action does not parse: {e}")))?;
        let command: reapi::Command = self.load_message("command", &action.command_digest)?;
        let mut input_root =
            self.parse_digest(&action.input_root_digest.clone().unwrap_or_default())?;
        if self.hash.is_native() {
            // Input roots are trees, whatever the client's prefix says.
            input_root.is_tree = true;
        }
        let root_present = if self.hash.is_native() {
            self.cas.contains(ObjectKind::Tree, &input_root.hash)
        } else {
            self.contains(&input_root)
        };
        if !root_present {
            return Err(EndpointError::Precondition(format!(
                "input root {} is not in the CAS",
                input_root.hash
            )));
        }
        let outputs = if !command.output_paths.is_empty() {
            Requested::Paths(command.output_paths.clone())
        } else if command.output_files.is_empty() && command.output_directories.is_empty() {
            Requested::Paths(Vec::new())
        } else {
            Requested::Legacy {
                files: command.output_files.clone(),
                dirs: command.output_directories.clone(),
            }
        };
        let timeout = action
            .timeout
            .as_ref()
            .filter(|t| t.seconds > 0 || t.nanos > 0)
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32));
        let spec = ActionSpec {
            input_root,
            arguments: command.arguments.clone(),
            environment: command
                .environment_variables
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            working_directory: command.working_directory.clone(),
            outputs,
            timeout,
        };
        self.runner
            .check(&spec)
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
        Ok(Loaded { action, spec })
    }

    /// Accepts an Execute request: answers from the action cache or starts (or joins) a run.
    /// `interest`: the computation the run is for, if it comes from inside
    /// serve (`None`: a client of the Execute service, taken as waiting).
    pub async fn execute(
        self: &Arc<Self>,
        action_digest: Digest,
        skip_cache_lookup: bool,
        interest: Option<Interest>,
    ) -> Result<Execution, EndpointError> {
        let me = self.clone();
        let d = action_digest.clone();
        let (loaded, cached) = tokio::task::spawn_blocking(move || -> Result<_, EndpointError> {
            let loaded = me.load(&d)?;
            let cached = if skip_cache_lookup || loaded.action.do_not_cache {
                None
            } else {
                me.cached_result(&d)?
            };
            Ok((loaded, cached))
        })
        .await
        .map_err(|e| EndpointError::Internal(e.to_string()))??;

        if let Some(result) = cached {
            action_outcome("cached");
            tracing::info!(action = %action_digest.hash, "served from action cache");
            let response = reapi::ExecuteResponse {
                result: Some(result),
                cached_result: true,
                status: rpc_status(Code::Ok, ""),
                ..Default::default()
            };
            let op = self.finished(&action_digest, &response);
            return Ok(Execution::Done(
                self.operations.record_done(&action_digest.hash, op),
            ));
        }

        let mergeable = !loaded.action.do_not_cache;
        let initial = self.operation(&action_digest, execution_stage::Value::Queued);
        match self
            .operations
            .start(&action_digest.hash, mergeable, initial)
        {
            Started::Joined(rx) => {
                tracing::info!(action = %action_digest.hash, "joining a running execution of the same action");
                let demands = self.demands.lock().expect("demands lock");
                if let Some(demand) = demands.get(&action_digest.hash) {
                    demand.add(interest.as_ref());
                }
                Ok(Execution::Running(rx))
            }
            Started::New(completer, rx) => {
                let demand = Arc::new(Demand::default());
                demand.add(interest.as_ref());
                self.demands
                    .lock()
                    .expect("demands lock")
                    .insert(action_digest.hash.clone(), demand.clone());
                let me = self.clone();
                // The run continues even if the client goes away, so its result is cached.
                tokio::spawn(async move {
                    // No rotation under a run, whoever waits for it.
                    let _hold = me.gc.extend().await;
                    tracing::info!(action = %action_digest.hash, "executing");
                    let response = me.run(&action_digest, loaded, demand).await;
                    me.demands
                        .lock()
                        .expect("demands lock")
                        .remove(&action_digest.hash);
                    let op = me.finished(&action_digest, &response);
                    me.operations.finish(completer, op);
                });
                Ok(Execution::Running(rx))
            }
        }
    }

    async fn run(
        &self,
        action_digest: &Digest,
        loaded: Loaded,
        demand: Arc<Demand>,
    ) -> reapi::ExecuteResponse {
        let do_not_cache = loaded.action.do_not_cache;
        let ran = self.runner.run(loaded.spec, demand).await;
        action_outcome(match &ran {
            Ok(outcome) if outcome.result.exit_code == 0 && !outcome.timed_out => "executed",
            _ => "failed",
        });
        match ran {
            Ok(outcome) if outcome.timed_out => reapi::ExecuteResponse {
                result: Some(outcome.result),
                status: rpc_status(
                    Code::DeadlineExceeded,
                    "the action exceeded its time limit and was killed",
                ),
                ..Default::default()
            },
            Ok(outcome) => {
                if outcome.result.exit_code == 0 && !do_not_cache {
                    let (ac, hash, result) = (
                        self.action_cache.clone(),
                        action_digest.hash.clone(),
                        outcome.result.clone(),
                    );
                    let stored =
                        tokio::task::spawn_blocking(move || ac.store(&hash, &result)).await;
                    if let Err(e) = stored
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        tracing::error!(action = %action_digest.hash, "cannot store action result: {e}");
                    }
                }
                reapi::ExecuteResponse {
                    result: Some(outcome.result),
                    status: rpc_status(Code::Ok, ""),
                    ..Default::default()
                }
            }
            Err(e) => {
                tracing::error!(action = %action_digest.hash, "action failed to run: {e}");
                let code = match &e {
                    RunError::Invalid(_) => Code::InvalidArgument,
                    RunError::Stage(StageError::Missing(_)) => Code::FailedPrecondition,
                    RunError::Stage(StageError::Tree(TreeStoreError::PathTooLong { .. })) => {
                        Code::InvalidArgument
                    }
                    _ => Code::Internal,
                };
                reapi::ExecuteResponse {
                    status: rpc_status(code, e.to_string()),
                    ..Default::default()
                }
            }
        }
    }
}

/// Counts an action for the metrics: executed, failed or cached.
fn action_outcome(outcome: &'static str) {
    crate::metrics::global()
        .actions
        .get_or_create(&crate::metrics::ActionOutcome { outcome })
        .inc();
}
