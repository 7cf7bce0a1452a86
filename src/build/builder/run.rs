//! Running one action at the endpoint: its messages as a `just` client
//! would send them, the execution (a cached answer is taken only with exit
//! code 0 and every output present), and the checks on the result.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

use crate::build::action::{rebase_path, ActionDescription};
use crate::build::graph::ActionNode;
use crate::digest::{Digest, ObjectKind};
use crate::remote::executor::{ExecError, Executed};
use crate::remote::RemoteCas;

use super::dispatch::{copy_closure, copy_result, select, DispatchTarget};
use super::outputs::{missing_outputs, produced, Produced};
use super::upload::upload_missing;
use super::{BuildError, Inner, Outputs};

/// Counted as waiting for a slot while it lives (for progress reports).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type RunningMap = std::sync::Mutex<HashMap<String, (std::time::Instant, String)>>;

/// Listed as running (since now, named by its id and first output) while
/// it lives.
struct Running<'a> {
    map: &'a RunningMap,
    id: String,
}

impl<'a> Running<'a> {
    fn new(map: &'a RunningMap, node: &ActionNode) -> Running<'a> {
        let first = node.outputs.first().or(node.output_dirs.first());
        let short = &node.id[..node.id.len().min(12)];
        let what = match first {
            Some(out) => format!("{short} making {out}"),
            None => short.to_string(),
        };
        map.lock()
            .expect("running lock")
            .insert(node.id.clone(), (std::time::Instant::now(), what));
        Running {
            map,
            id: node.id.clone(),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.map.lock().expect("running lock").remove(&self.id);
    }
}

/// Longest part of a log shown in an error message.
const LOG_LIMIT: usize = 64 << 10;

/// The command and environment as the reference shows them.
fn describe(node: &ActionNode) -> String {
    format!(
        "command {} in environment {}",
        serde_json::to_string(&node.command).unwrap_or_default(),
        serde_json::to_string(&node.env).unwrap_or_default()
    )
}

async fn log_text(cas: &dyn RemoteCas, raw: &[u8], digest: &Option<reapi::Digest>) -> String {
    let mut data = raw.to_vec();
    if data.is_empty() {
        if let Some(wire) = digest.as_ref().filter(|d| d.size_bytes > 0) {
            let hash = cas.hash_function();
            match hash.digest_from_wire(wire) {
                Ok(d) => match cas.read_blob(&d).await {
                    Ok(Some(bytes)) => data = bytes,
                    Ok(None) => return format!("(log {} is not in the CAS)", wire.hash),
                    Err(e) => return format!("(cannot read log {}: {e})", wire.hash),
                },
                Err(e) => return format!("(bad log digest: {e})"),
            }
        }
    }
    let mut text = String::from_utf8_lossy(&data).into_owned();
    if text.len() > LOG_LIMIT {
        let mut cut = LOG_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[... truncated]");
    }
    text
}

fn action_error(node: &ActionNode, message: String) -> BuildError {
    BuildError::Action {
        action: node.id.clone(),
        message,
    }
}

/// Every line of `text` indented by two spaces, each ending in a newline.
fn indented(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// An action's output as justbuild reports it: `Output of command … in
/// environment …` with `Stdout:`/`Stderr:` parts (or `Stdout of`/`Stderr
/// of` when only one has text), the text indented; empty without output.
async fn output_report(
    cas: &dyn RemoteCas,
    node: &ActionNode,
    result: &reapi::ActionResult,
) -> String {
    let stdout = log_text(cas, &result.stdout_raw, &result.stdout_digest).await;
    let stderr = log_text(cas, &result.stderr_raw, &result.stderr_digest).await;
    let (out, err) = (!stdout.is_empty(), !stderr.is_empty());
    if !out && !err {
        return String::new();
    }
    let both = out && err;
    let what = match (out, err) {
        (true, true) => "Output",
        (true, false) => "Stdout",
        _ => "Stderr",
    };
    let mut text = format!("{what} of {}\n", describe(node));
    if out {
        if both {
            text.push_str("Stdout:\n");
        }
        text.push_str(&indented(&stdout));
    }
    if err {
        if both {
            text.push_str("Stderr:\n");
        }
        text.push_str(&indented(&stderr));
    }
    text
}

/// Stdout and stderr of a result, for messages; empty when there were none.
async fn logs(cas: &dyn RemoteCas, result: &reapi::ActionResult) -> String {
    let mut out = String::new();
    let stdout = log_text(cas, &result.stdout_raw, &result.stdout_digest).await;
    let stderr = log_text(cas, &result.stderr_raw, &result.stderr_digest).await;
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if !text.is_empty() {
            out.push_str(&format!("\n{name}:\n{}", text.trim_end_matches('\n')));
        }
    }
    out
}

impl Inner {
    /// The action's outputs (relative to the action root) as the endpoint
    /// produced them, paths relative to its working directory.
    fn wanted<'a>(&self, node: &'a ActionNode) -> Vec<(String, &'a str, bool)> {
        let files = node.outputs.iter().map(|p| (p, false));
        let dirs = node.output_dirs.iter().map(|p| (p, true));
        files
            .chain(dirs)
            .map(|(p, is_dir)| (rebase_path(&node.cwd, p), p.as_str(), is_dir))
            .collect()
    }

    /// Executes, and reads the outputs; a cached answer that does not do is
    /// replaced by a fresh run.
    async fn execute(
        &self,
        node: &ActionNode,
        action: &Digest,
        target: Option<&DispatchTarget>,
    ) -> Result<(Executed, Produced), BuildError> {
        let cas = self.ctx.cas.as_ref();
        let executor = match target {
            Some(t) => t.executor.as_ref(),
            None => self.ctx.executor.as_ref(),
        };
        let wanted = self.wanted(node);
        let mut skip_cache = node.no_cache;
        loop {
            let executed = {
                let waiting = Waiting::new(&self.queued);
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|e| BuildError::Task(e.to_string()))?;
                drop(waiting);
                let _running = Running::new(&self.running, node);
                executor.execute(action, skip_cache).await
            };
            let executed = match executed {
                Ok(executed) => executed,
                Err(e @ ExecError::Failed { .. }) if e.is_timeout() => {
                    let logs = match &e {
                        ExecError::Failed {
                            result: Some(result),
                            ..
                        } => logs(cas, result).await,
                        _ => String::new(),
                    };
                    return Err(action_error(
                        node,
                        format!(
                            "action {} ran out of time: {}{logs}",
                            node.id,
                            describe(node)
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(t) = target {
                copy_result(t.cas.as_ref(), cas, &executed.result)
                    .await
                    .map_err(|message| {
                        action_error(
                            node,
                            format!(
                                "action {}: copying its outputs from {}: {message}",
                                node.id, t.address
                            ),
                        )
                    })?;
            }
            let outputs = produced(cas, &executed.result)
                .await
                .map_err(|message| action_error(node, format!("action {}: {message}", node.id)))?;
            let complete = missing_outputs(
                &outputs,
                wanted
                    .iter()
                    .map(|(remote, _, is_dir)| (remote.as_str(), *is_dir)),
            )
            .is_empty();
            if executed.cached && !skip_cache && (executed.result.exit_code != 0 || !complete) {
                tracing::debug!(action = %node.id, "cached result unusable; executing again");
                skip_cache = true;
                continue;
            }
            return Ok((executed, outputs));
        }
    }

    pub(super) async fn run(
        &self,
        node: &ActionNode,
        input_root: Digest,
        failed_inputs: bool,
    ) -> Result<Outputs, BuildError> {
        let cas = self.ctx.cas.as_ref();
        let description = ActionDescription::of_spec(node, input_root);
        let remote = description.to_remote(&self.ctx.settings);
        let blobs = remote
            .blobs()
            .iter()
            .map(|(d, data)| ((*d).clone(), data.to_vec()))
            .collect();
        upload_missing(cas, blobs).await?;
        let properties = description.properties(&self.ctx.settings);
        let target = select(&self.ctx.dispatch, &properties);
        if let Some(t) = target {
            tracing::debug!(action = %node.id, endpoint = %t.address, "dispatching");
            let roots = vec![
                (description.input_root.clone(), ObjectKind::Tree),
                (remote.action_digest.clone(), ObjectKind::File),
                (remote.command_digest.clone(), ObjectKind::File),
            ];
            copy_closure(cas, t.cas.as_ref(), roots)
                .await
                .map_err(|message| {
                    action_error(
                        node,
                        format!(
                            "action {}: copying its inputs to {}: {message}",
                            node.id, t.address
                        ),
                    )
                })?;
        }
        tracing::debug!(action = %node.id, digest = %remote.action_digest.hash, "executing");

        let (executed, outputs) = self.execute(node, &remote.action_digest, target).await?;
        let counter = if executed.cached {
            &self.counters.cached
        } else {
            &self.counters.executed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let result = &executed.result;
        let exit_code = result.exit_code;
        let mut failed = failed_inputs;
        if exit_code != 0 {
            let Some(message) = &node.may_fail else {
                // The lines justbuild logs for it, in its order.
                return Err(action_error(
                    node,
                    format!(
                        "{}action returned non-zero exit code {exit_code}\nFailed to execute {}",
                        output_report(cas, node, result).await,
                        describe(node)
                    ),
                ));
            };
            failed = true;
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(action = %node.id, "{message} (exit code {exit_code})");
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            let text = logs(cas, result).await;
            if !text.is_empty() {
                tracing::debug!(action = %node.id, "output of {}{text}", describe(node));
            }
        }

        let wanted = self.wanted(node);
        let missing = missing_outputs(
            &outputs,
            wanted
                .iter()
                .map(|(remote, _, is_dir)| (remote.as_str(), *is_dir)),
        );
        if !missing.is_empty() {
            let prefix = match (&node.may_fail, exit_code) {
                (Some(message), code) if code != 0 => {
                    format!("{message} (exit code {code}); moreover ")
                }
                _ => String::new(),
            };
            return Err(action_error(
                node,
                format!(
                "{prefix}action {} did not produce the outputs {missing:?} of the right kind: {}{}",
                node.id,
                describe(node),
                logs(cas, result).await
            ),
            ));
        }
        let by_path: HashMap<String, _> = wanted
            .into_iter()
            .map(|(remote, local, _)| (local.to_string(), outputs[&remote].clone()))
            .collect();
        Ok(Outputs { by_path, failed })
    }
}
