//! Actions of the action graph as Remote Execution API messages.
//!
//! A `just` client executing through an endpoint (`-r`) turns every action
//! of its action graph into a `Command` and an `Action` message, uploads
//! both as blobs and asks for the action by its digest. The endpoint's
//! action cache is keyed by that digest, so jserve must produce the very
//! same bytes for the same action to share cache entries with clients of
//! the same endpoint. This module does exactly that and nothing else: no
//! input-root construction (the caller hands in the root digest), no
//! upload, no execution.
//!
//! What goes into the digest, and therefore must match the client:
//! * the command line, the environment, the working directory;
//! * the outputs, rebased onto the working directory and sorted;
//! * the platform properties: the endpoint-wide base properties overlaid
//!   by the action's own `execution properties`;
//! * the timeout: the base action timeout scaled by the action's
//!   `timeout scaling` (so differing base timeouts break sharing);
//! * `do_not_cache` (the action's `no_cache`);
//! * the input root digest;
//! * the request mode: whether `output_paths` is filled as well
//!   ([`RequestMode`]).
//!
//! `may_fail` (and its message) only changes how a failure is reported and
//! never reaches the messages.
//!
//! Both messages are serialised by prost, which writes fields in field-number
//! order and omits proto3 defaults, exactly as the C++ protobuf library
//! does; sub-messages that are set (even empty) are written, which is why
//! `platform` and `timeout` below are always `Some`.

use std::collections::BTreeMap;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    command::EnvironmentVariable, platform::Property, Action, Command, Platform,
};
use bazel_remote_apis::google::protobuf::Duration as ProtoDuration;
use prost::Message;

use crate::digest::{Digest, HashFunction, ObjectKind};

/// The action timeout a `just` client uses without `--action-timeout`, and
/// `just serve` without `build."action timeout"`: 300 s.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(300);

/// One action as justbuild's action graph holds it (the entries of
/// `--dump-graph`'s `"actions"`), plus the digest of its input root.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionDescription {
    /// argv; `command[0]` is the program. Non-empty.
    pub command: Vec<String>,
    /// Environment of the command.
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the input root, as written by the rule
    /// (not normalised: `""` and `"."` are different actions).
    pub cwd: String,
    /// Output files, relative to the input root (not to `cwd`).
    pub output_files: Vec<String>,
    /// Output directories, relative to the input root (not to `cwd`).
    pub output_dirs: Vec<String>,
    /// The action's own execution properties; they win over the base ones.
    pub execution_properties: BTreeMap<String, String>,
    /// Factor on the base action timeout (1.0 by default).
    pub timeout_scale: f64,
    /// Message to report if the action fails; `Some` means a failure is
    /// tolerated. Not part of any message.
    pub may_fail: Option<String>,
    /// Never take the result from the action cache, nor let it be cached.
    pub no_cache: bool,
    /// Digest of the input root in the active hash mode (native mode: a git
    /// tree, `is_tree` set, so it goes on the wire with the `74` prefix).
    pub input_root: Digest,
}

/// Whether the outputs are also announced in `Command.output_paths`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMode {
    /// REAPI v2.0: only `output_files` and `output_directories`. What `just`
    /// up to 1.5 always sends, and what newer clients send in native mode.
    Legacy,
    /// Newer clients (1.6 on) in compatible mode at an endpoint whose API
    /// range reaches 2.1: the outputs in `output_paths` as well.
    BestEffort,
}

/// A REAPI semantic version as reported in `ServerCapabilities`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: i32,
    pub minor: i32,
}

impl RequestMode {
    /// The mode a `just` client from version 1.6 on picks for a remote
    /// endpoint: legacy in native mode (the git-id protocol extension was
    /// defined against 2.0), best effort in compatible mode when the
    /// endpoint's high API version is at least 2.1; an endpoint that does
    /// not speak 2.0 at all (low version at least 2.1) forces best effort.
    /// Clients up to 1.5 always use [`RequestMode::Legacy`].
    pub fn for_endpoint(hash: HashFunction, low: ApiVersion, high: ApiVersion) -> RequestMode {
        let v2_1 = ApiVersion { major: 2, minor: 1 };
        let best_effort = !hash.is_native() && high >= v2_1;
        if best_effort || low >= v2_1 {
            RequestMode::BestEffort
        } else {
            RequestMode::Legacy
        }
    }
}

/// What the executing side adds to every action: the hash mode, the base
/// properties and timeout, and the request mode.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionSettings {
    pub hash: HashFunction,
    /// Client: `--remote-execution-property`; serve: the request's
    /// `execution_properties`.
    pub base_properties: BTreeMap<String, String>,
    /// Client: `--action-timeout`; serve: `build."action timeout"`.
    pub base_timeout: Duration,
    pub mode: RequestMode,
}

impl ExecutionSettings {
    /// Settings with no base properties, the default timeout, legacy mode.
    pub fn new(hash: HashFunction) -> ExecutionSettings {
        ExecutionSettings {
            hash,
            base_properties: BTreeMap::new(),
            base_timeout: DEFAULT_ACTION_TIMEOUT,
            mode: RequestMode::Legacy,
        }
    }
}

/// Both messages of one action, serialised, with their digests.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteAction {
    pub command: Command,
    pub command_blob: Vec<u8>,
    pub command_digest: Digest,
    pub action: Action,
    pub action_blob: Vec<u8>,
    pub action_digest: Digest,
}

impl RemoteAction {
    /// The two blobs to upload before asking for the execution: the command
    /// first, then the action naming it.
    pub fn blobs(&self) -> [(&Digest, &[u8]); 2] {
        [
            (&self.command_digest, self.command_blob.as_slice()),
            (&self.action_digest, self.action_blob.as_slice()),
        ]
    }
}

impl ActionDescription {
    /// The action of a graph node (parsed by `ActionNode::from_json`, the
    /// one reader of graph actions), staged on `input_root`.
    pub fn of_spec(
        spec: &crate::build::graph::ActionSpec,
        input_root: Digest,
    ) -> ActionDescription {
        ActionDescription {
            command: spec.command.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            output_files: spec.outputs.clone(),
            output_dirs: spec.output_dirs.clone(),
            execution_properties: spec.execution_properties.clone(),
            timeout_scale: spec.timeout_scale,
            may_fail: spec.may_fail.clone(),
            no_cache: spec.no_cache,
            input_root,
        }
    }

    /// The platform properties the action runs with.
    pub fn properties(&self, settings: &ExecutionSettings) -> BTreeMap<String, String> {
        merge_properties(&settings.base_properties, &self.execution_properties)
    }

    /// The timeout in milliseconds the action carries.
    pub fn timeout_ms(&self, settings: &ExecutionSettings) -> i64 {
        scale_timeout_ms(settings.base_timeout, self.timeout_scale)
    }

    /// Output files as the endpoint sees them: relative to `cwd`, sorted.
    pub fn remote_output_files(&self) -> Vec<String> {
        rebase_sorted(&self.cwd, &self.output_files)
    }

    /// Output directories as the endpoint sees them: relative to `cwd`, sorted.
    pub fn remote_output_dirs(&self) -> Vec<String> {
        rebase_sorted(&self.cwd, &self.output_dirs)
    }

    /// The `Command` message.
    // output_files, output_directories and Command.platform are deprecated
    // in the proto, but the client sets them.
    #[allow(deprecated)]
    pub fn command_message(&self, settings: &ExecutionSettings) -> Command {
        let output_files = self.remote_output_files();
        let output_directories = self.remote_output_dirs();
        // output_paths: the union of both lists, sorted again as a whole, in
        // best-effort mode only; a legacy request leaves it empty.
        let output_paths = match settings.mode {
            RequestMode::Legacy => Vec::new(),
            RequestMode::BestEffort => {
                let mut all: Vec<String> = output_files
                    .iter()
                    .chain(output_directories.iter())
                    .cloned()
                    .collect();
                all.sort();
                all
            }
        };
        Command {
            // The argv exactly as in the graph: no launcher, no shell.
            arguments: self.command.clone(),
            // Sorted by name (a BTreeMap orders by bytes, as std::map does).
            environment_variables: self
                .env
                .iter()
                .map(|(name, value)| EnvironmentVariable {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            output_files,
            output_directories,
            // Deprecated in the Command since v2.2 but still set by the
            // client, always (an empty Platform when there are no
            // properties), and identical to the Action's.
            platform: Some(platform(&self.properties(settings))),
            // The cwd string as written; "" is the proto3 default and so
            // vanishes from the bytes, "." does not.
            working_directory: self.cwd.clone(),
            output_paths,
            ..Default::default()
        }
    }

    /// The `Action` message for a command of the given digest.
    pub fn action_message(&self, command_digest: &Digest, settings: &ExecutionSettings) -> Action {
        let ms = self.timeout_ms(settings);
        Action {
            command_digest: Some(command_digest.to_wire(settings.hash)),
            input_root_digest: Some(self.input_root.to_wire(settings.hash)),
            // Always present, even for a zero timeout: split like a C++
            // chrono cast, seconds truncated toward zero and the remainder
            // (same sign) in nanoseconds.
            timeout: Some(ProtoDuration {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            // no_cache actions are neither looked up nor cached; the flag is
            // part of the digest, so a no_cache action never shares a key
            // with its cacheable twin.
            do_not_cache: self.no_cache,
            // No salt.
            // New in v2.2: the properties in the Action as well, always set.
            platform: Some(platform(&self.properties(settings))),
            ..Default::default()
        }
    }

    /// Both messages, serialised, with their blob digests in the active hash
    /// mode (native: git blob ids, `62` on the wire; compatible: SHA-256).
    pub fn to_remote(&self, settings: &ExecutionSettings) -> RemoteAction {
        let command = self.command_message(settings);
        let command_blob = command.encode_to_vec();
        let command_digest = settings.hash.digest_bytes(ObjectKind::File, &command_blob);
        let action = self.action_message(&command_digest, settings);
        let action_blob = action.encode_to_vec();
        let action_digest = settings.hash.digest_bytes(ObjectKind::File, &action_blob);
        RemoteAction {
            command,
            command_blob,
            command_digest,
            action,
            action_blob,
            action_digest,
        }
    }
}

/// A `Platform` with the properties in name order.
fn platform(props: &BTreeMap<String, String>) -> Platform {
    Platform {
        properties: props
            .iter()
            .map(|(name, value)| Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

/// `base` overlaid by `overlay`: on equal names the overlay's value wins.
pub fn merge_properties(
    base: &BTreeMap<String, String>,
    overlay: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = base.clone();
    merged.extend(overlay.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// The base timeout scaled, in whole milliseconds, rounded half away from
/// zero (the product is taken in double precision, like the client does).
pub fn scale_timeout_ms(base: Duration, scale: f64) -> i64 {
    let base_ms = i64::try_from(base.as_millis()).unwrap_or(i64::MAX);
    // `round` is half away from zero; `as` saturates (NaN gives 0).
    (base_ms as f64 * scale).round() as i64
}

/// The base timeout `just serve` reads from `build."action timeout"`: the
/// number truncated to whole seconds.
pub fn serve_action_timeout(seconds: f64) -> Duration {
    Duration::from_secs(if seconds > 0.0 { seconds as u64 } else { 0 })
}

fn rebase_sorted(base: &str, paths: &[String]) -> Vec<String> {
    let mut out: Vec<String> = paths.iter().map(|p| rebase_path(base, p)).collect();
    out.sort();
    out
}

/// Purely lexical `path` relative to `base`, with the semantics of C++
/// `std::filesystem::path::lexically_relative` on POSIX: `"."` for equal
/// paths, `..` for every remaining component of `base` (`.` and empty
/// components do not count, `..` counts negative), `""` when no such path
/// exists (absolute against relative, or `base` climbing above its start).
pub fn rebase_path(base: &str, path: &str) -> String {
    crate::build::expr::path::lexically_relative(path, base)
}
