//! Processes the end-to-end tests start: daemons in process groups of their
//! own (ended with everything they started), info files waited for, client
//! runs bounded in time, and the external programs found or reported missing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A process group started for the test, its output in a log file; ended
/// (TERM, then KILL, the whole group) on drop.
///
/// The group is signalled only while its leader is not reaped: until then
/// the leader's pid, which is the group's id, cannot belong to anyone else
/// (pids are reused quickly when tests start thousands of processes).
pub struct Group {
    child: Child,
    /// The leader's status once it has been reaped.
    status: Option<ExitStatus>,
    pub log: PathBuf,
}

impl Group {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Group {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Group {
            child,
            status: None,
            log,
        }
    }

    /// The leader's exit status, once it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Whether the leader has exited; a zombie is left unreaped.
    fn leader_exited(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it or leaves it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits (without blocking or reaping) only for our own child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is set by a successful waitid; 0 means still running.
        r == 0 && unsafe { info.si_pid() } != 0
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `port` of the info file the process writes.
    pub fn wait_for_port(&mut self, info: &Path) -> u16 {
        wait_for_info_port(info, || {
            self.try_wait()
                .map(|status| format!("{:?} exited ({status}):\n{}", self.log, self.log()))
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.status.is_some() {
            // Reaped: its id may be someone else's now.
            return;
        }
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals only the process group this test started, whose
        // leader is not reaped.
        unsafe {
            libc::kill(-group, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.leader_exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end, capturing its output; one stuck (say, on an
/// endpoint that never executes) is killed after `limit` and fails the test.
pub fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // The pipes are drained by threads, so a chatty process never blocks.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            // SAFETY: signals only the process group started here.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
            let stderr = err.join().unwrap().unwrap_or_default();
            panic!(
                "{what} did not finish in {limit:?}:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits (a minute at most) for a server's info file and returns its port;
/// `exited` says why the server is gone, if it is.
pub fn wait_for_info_port(info: &Path, mut exited: impl FnMut() -> Option<String>) -> u16 {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(info).unwrap_or_default();
        if let Some(port) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["port"].as_u64())
        {
            return port as u16;
        }
        if let Some(why) = exited() {
            panic!("{why}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no info file {info:?} after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reports a missing tool: visible locally, a failure under CI (which
/// installs everything, see .ci/run).
pub fn skip(msg: &str) {
    use std::io::Write;
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must have it");
    }
    // Straight to the stream, past the test harness's output capture.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
}

/// BuildGrid's `bgd`: `JSERVE_BGD`, else where .ci/run installs it, else on PATH.
pub fn find_bgd() -> Option<PathBuf> {
    let ci_venv = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/jserve-ci/bgd-venv/bin/bgd"));
    let found = std::env::var_os("JSERVE_BGD")
        .map(PathBuf::from)
        .or(ci_venv.filter(|p| p.is_file()))
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("bgd"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        skip(
            "BuildGrid's `bgd` not found: `pip install buildgrid==0.4.4` \
             (or set JSERVE_BGD to its `bgd`)",
        );
    }
    found
}

/// The directory with PostgreSQL's `initdb` and `pg_ctl`: on PATH, or
/// where Debian's packages put them.
pub fn find_postgres() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("pg_ctl").is_file()));
    let debian = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    let found = on_path
        .or_else(debian)
        .filter(|d| d.join("initdb").is_file());
    if found.is_none() {
        skip("PostgreSQL (initdb, pg_ctl) not found: BuildGrid's scheduler needs it");
    }
    found
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
