//! The local action runner: stages the input root, runs the command with the
//! configured launcher under a time limit, and collects outputs, stdout and
//! stderr into the CAS. At most `jobs` actions run at once; the rest wait.

mod outputs;
mod slots;
mod stage;

pub use outputs::Requested;
pub use slots::{Demand, Interest, Watching};
pub use stage::StageError;

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;

use crate::digest::{Digest, ObjectKind};
use crate::storage::Cas;
use outputs::OutputError;

/// Actions run at once by default. justbuild's endpoint starts every action
/// it is sent; a bound still keeps a flood of Execute calls from forking
/// without end, set high so that builds nobody waits for cannot fill it.
pub fn default_local_jobs(cores: usize) -> usize {
    cores.saturating_mul(8).max(64)
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Prepended to every command line (default `env --`).
    pub launcher: Vec<String>,
    /// Limit for actions that do not set their own timeout.
    pub default_timeout: Duration,
    /// Actions running at once.
    pub jobs: usize,
}

/// Errors that keep an action from producing a result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("I/O error in the action's working directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runner task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Cas(#[from] crate::storage::CasError),
}

/// One action to run, already taken apart from its Action and Command messages.
#[derive(Clone, Debug)]
pub struct ActionSpec {
    pub input_root: Digest,
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub working_directory: String,
    pub outputs: Requested,
    /// The action's own limit, if it set one.
    pub timeout: Option<Duration>,
}

/// What running an action gave.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub result: reapi::ActionResult,
    pub timed_out: bool,
}

pub struct Runner {
    cas: Cas,
    exec_root: PathBuf,
    config: RunnerConfig,
    slots: Arc<slots::Slots>,
    dirs: Arc<WorkDirs>,
}

/// Working directories of finished actions, emptied for the next ones. A
/// directory, its `root` and its stdout and stderr files are made once and
/// reused: creating and deleting them for every action costs more than the
/// action itself on file systems that scan recently freed inodes on every
/// creation (ext4), and outputs and staged inputs are links to CAS files,
/// so emptying `root` frees no inode at all for most actions.
struct WorkDirs {
    free: std::sync::Mutex<Vec<PathBuf>>,
    /// At most this many are kept (as many as actions run at once).
    keep: usize,
}

impl WorkDirs {
    fn take(&self, exec_root: &Path) -> PathBuf {
        let reused = self.free.lock().expect("work dirs lock").pop();
        reused.unwrap_or_else(|| {
            exec_root.join(format!(
                "{}-{}",
                std::process::id(),
                NEXT_DIR.fetch_add(1, Ordering::Relaxed)
            ))
        })
    }

    /// Empties `dir/root` and keeps `dir` for the next action; a directory
    /// that cannot be emptied (an action made parts read-only, say) is
    /// removed instead. Blocking.
    fn give_back(&self, dir: PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("root");
        let emptied = (|| -> std::io::Result<()> {
            // An action may have changed the root's own mode.
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
            for entry in std::fs::read_dir(&root)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    crate::storage::remove_tree(&entry.path());
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        })();
        let mut free = self.free.lock().expect("work dirs lock");
        let empty =
            emptied.is_ok() && std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_none());
        if empty && free.len() < self.keep {
            free.push(dir);
            return;
        }
        drop(free);
        crate::storage::remove_tree(&dir);
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Checks a path from a Command: relative, and inside the input root once
/// taken relative to `base` (a directory inside the root). `..` is fine as
/// long as it stays inside: justbuild clients send outputs relative to the
/// working directory, which may lie above it.
pub fn check_relative_path(
    what: &str,
    base: &str,
    path: &str,
    allow_empty: bool,
) -> Result<(), RunError> {
    if path.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(RunError::Invalid(format!("{what} is empty")))
        };
    }
    if Path::new(path).is_absolute() {
        return Err(RunError::Invalid(format!("{what} {path:?} is absolute")));
    }
    if path.contains('\0') {
        return Err(RunError::Invalid(format!("{what} {path:?} contains NUL")));
    }
    let mut depth: usize = 0;
    for c in Path::new(base).join(path).components() {
        match c {
            Component::ParentDir if depth == 0 => {
                return Err(RunError::Invalid(format!(
                    "{what} {path:?} leaves the input root"
                )))
            }
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    Ok(())
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl Runner {
    pub fn new(cas: Cas, exec_root: PathBuf, config: RunnerConfig) -> Runner {
        let jobs = config.jobs.max(1);
        Runner {
            cas,
            exec_root,
            config,
            slots: slots::Slots::new(jobs),
            dirs: Arc::new(WorkDirs {
                free: Default::default(),
                keep: jobs,
            }),
        }
    }

    /// Validates the paths of an action before it is queued.
    pub fn check(&self, spec: &ActionSpec) -> Result<(), RunError> {
        if spec.arguments.is_empty() {
            return Err(RunError::Invalid("the command has no arguments".into()));
        }
        check_relative_path("working directory", "", &spec.working_directory, true)?;
        for out in spec.outputs.all() {
            check_relative_path("output path", &spec.working_directory, out, false)?;
        }
        Ok(())
    }

    /// Runs the action once a slot is free (earlier if it is `demand`ed urgently).
    pub async fn run(&self, spec: ActionSpec, demand: Arc<Demand>) -> Result<RunOutcome, RunError> {
        self.check(&spec)?;
        let _slot = self.slots.acquire(demand).await;
        let dir = self.dirs.take(&self.exec_root);
        let outcome = self.run_in(&dir, &spec).await;
        let dirs = self.dirs.clone();
        tokio::task::spawn_blocking(move || dirs.give_back(dir));
        outcome
    }

    async fn run_in(&self, dir: &Path, spec: &ActionSpec) -> Result<RunOutcome, RunError> {
        let root = dir.join("root");
        let work = root.join(&spec.working_directory);
        let (cas, input, root2, work2, outputs) = (
            self.cas.clone(),
            spec.input_root.clone(),
            root.clone(),
            work.clone(),
            spec.outputs.clone(),
        );
        let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
        let (out2, err2) = (stdout_path.clone(), stderr_path.clone());
        let (linked, stdout, stderr) =
            tokio::task::spawn_blocking(move || -> Result<_, RunError> {
                let io = |p: &Path| {
                    let path = p.to_path_buf();
                    move |source| RunError::Io { path, source }
                };
                std::fs::create_dir_all(&root2).map_err(io(&root2))?;
                // Truncated when reused: the same inodes for every action.
                let stdout = std::fs::File::create(&out2).map_err(io(&out2))?;
                let stderr = std::fs::File::create(&err2).map_err(io(&err2))?;
                let linked = stage::stage_tree(&cas, &input, &root2)?;
                std::fs::create_dir_all(&work2).map_err(io(&work2))?;
                // The server creates the parents of every output.
                for out in outputs.all() {
                    if let Some(parent) = work2.join(out).parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                }
                Ok((linked, stdout, stderr))
            })
            .await??;
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |source| RunError::Io { path, source }
        };

        let start = SystemTime::now();
        let mut child = self.spawn(spec, &work, stdout, stderr)?;
        let pid = child.id();
        let limit = spec
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(self.config.default_timeout);
        let (status, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                // The action is over: what it left running in its process
                // group goes too, so that no action holds on to the
                // machine (or writes into the reused directory).
                if let Some(pid) = pid {
                    // SAFETY: kill has no memory effects.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                (Some(status.map_err(io(&work))?), false)
            }
            Err(_) => {
                // Kill the whole process group: the launcher's children too.
                if let Some(pid) = child.id() {
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                let _ = child.wait().await;
                (None, true)
            }
        };
        let end = SystemTime::now();
        let exit_code = match status {
            Some(s) => s.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
            }),
            None => -1,
        };

        let cas = self.cas.clone();
        let requested = spec.outputs.clone();
        let work_dir = work.clone();
        tokio::task::spawn_blocking(move || -> Result<RunOutcome, RunError> {
            linked.verify(&cas)?;
            let mut result = reapi::ActionResult {
                exit_code,
                ..Default::default()
            };
            if !timed_out {
                outputs::collect(&cas, &work_dir, &requested, &mut result)?;
            }
            let hash = cas.hash_function();
            for (path, slot) in [
                (&stdout_path, &mut result.stdout_digest),
                (&stderr_path, &mut result.stderr_digest),
            ] {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                if len > 0 {
                    *slot = Some(cas.put_file(ObjectKind::File, path)?.to_wire(hash));
                }
            }
            result.execution_metadata = Some(reapi::ExecutedActionMetadata {
                worker: "jserve".to_string(),
                worker_start_timestamp: Some(timestamp(start)),
                worker_completed_timestamp: Some(timestamp(end)),
                execution_start_timestamp: Some(timestamp(start)),
                execution_completed_timestamp: Some(timestamp(end)),
                ..Default::default()
            });
            Ok(RunOutcome { result, timed_out })
        })
        .await?
    }
}

impl Runner {
    /// Starts the action's command under the launcher. The default launcher
    /// `env --` only runs the command with the environment it is given,
    /// which the runner sets itself: the command then starts directly,
    /// saving an exec per action, when it is found along the action's PATH
    /// as `env` would find it; whatever does not start that way goes
    /// through `env` as configured, which fails the way justbuild's does.
    fn spawn(
        &self,
        spec: &ActionSpec,
        work: &Path,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<tokio::process::Child, RunError> {
        let action_path = spec
            .environment
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let command = |program: &Path, args: &[&String], stdout, stderr| {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .env_clear()
                .envs(spec.environment.iter().map(|(k, v)| (k, v)))
                .current_dir(work)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .process_group(0)
                .kill_on_drop(true);
            command
        };
        if self.config.launcher == ["env", "--"] {
            let name = &spec.arguments[0];
            // execvp's search path when PATH is unset.
            let found = match name.contains('/') {
                false => find_in_path(name, action_path.unwrap_or("/bin:/usr/bin")),
                true => None,
            };
            if let Some(program) = found {
                let copies = stdout
                    .try_clone()
                    .and_then(|o| Ok((o, stderr.try_clone()?)));
                if let Ok((out, err)) = copies {
                    let args: Vec<&String> = spec.arguments[1..].iter().collect();
                    let mut direct = command(&program, &args, out, err);
                    // The name as given, as `env` would pass it on.
                    direct.arg0(name);
                    if let Ok(child) = direct.spawn() {
                        return Ok(child);
                    }
                }
            }
        }
        let argv: Vec<&String> = self
            .config
            .launcher
            .iter()
            .chain(spec.arguments.iter())
            .collect();
        // A program named by path lets the standard library use posix_spawn
        // instead of forking the whole server (6.9 ms against 1.3 ms per
        // action, growing with the server's memory).
        let program = resolve_program(argv[0], action_path);
        command(&program, &argv[1..], stdout, stderr)
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: argv[0].clone(),
                source,
            })
    }
}

/// The first executable file called `name` in the directories of `dirs`
/// (a PATH value), as execvp would find it.
fn find_in_path(name: &str, dirs: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        executable.then_some(candidate)
    })
}

/// `name` as a path: unchanged if it has a slash, else the first executable
/// file of that name in `path` (the action's PATH), the server's PATH or
/// `/bin:/usr/bin`, as execvp would find it; unchanged if there is none.
fn resolve_program(name: &str, path: Option<&str>) -> std::path::PathBuf {
    if name.contains('/') || name.is_empty() {
        return name.into();
    }
    let inherited = std::env::var("PATH").ok();
    let dirs = path
        .map(str::to_string)
        .or(inherited)
        .unwrap_or_else(|| "/bin:/usr/bin".to_string());
    find_in_path(name, &dirs).unwrap_or_else(|| name.into())
}

#[cfg(test)]
mod resolve_tests {
    use super::resolve_program;

    #[test]
    fn programs_resolve_like_execvp() {
        assert_eq!(
            resolve_program("/x/y", None),
            std::path::PathBuf::from("/x/y")
        );
        assert_eq!(
            resolve_program("./y", Some("/bin")),
            std::path::PathBuf::from("./y")
        );
        let sh = resolve_program("sh", Some("/nonexistent:/bin:/usr/bin"));
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            resolve_program("no-such-program-here", Some("/bin")),
            std::path::PathBuf::from("no-such-program-here")
        );
    }
}
