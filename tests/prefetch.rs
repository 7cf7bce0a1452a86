//! `jserve prefetch` filling a fresh serve from a just-mr configuration
//! with a git, an archive and a distdir root and an export target, after
//! which a reference `just-mr` client with every root absent (and nothing
//! it could fetch: the URLs do not resolve, it has no distdir) builds the
//! target, served from serve's warm cache:
//!
//! * native mode, serve its own endpoint, `just-mr` 1.6;
//! * compatible mode, a `jserve execute` endpoint that prefetch learns from
//!   serve, `just-mr` 1.5;
//! * serve over the reference `just execute` 1.6 (native, `just-mr` 1.6) and
//!   1.5 (compatible, `just-mr` 1.5), and over BuildGrid (`just-mr` 1.6);
//! * the reference `just serve` 1.6 itself, filled by prefetch.
//!
//! Serve knows the git repository (as serve deployments do); the archive
//! exists only in the client's distdir. A root nobody has makes prefetch
//! exit 1 with the root `missing`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::endpoints::{Execute, JserveServe};
use common::git::git;
use common::loc;
use common::procs::run_bounded;
use common::reference::{reference_just, reference_just_16, reference_just_mr};
use serde_json::{json, Value};

const MAIN_TARGETS: &str = r#"{
  "app": {"type": "export", "target": "app-gen"},
  "app-gen": {"type": "generic", "outs": ["out.txt"],
    "deps": [["@", "pkg", "", "a.txt"], ["@", "dist", "", "pkg.tar.gz"]],
    "cmds": ["cat a.txt > out.txt", "test -s pkg.tar.gz && echo archive >> out.txt"]}
}"#;

const UNREACHABLE: &str = "file:///nonexistent/jserve-prefetch.git";
const LIMIT: Duration = Duration::from_secs(180);

struct Fixture {
    dir: PathBuf,
    main_repo: PathBuf,
    distfiles: PathBuf,
    config: PathBuf,
}

fn fixture(dir: &Path) -> Fixture {
    let main_repo = dir.join("main-repo");
    std::fs::create_dir_all(&main_repo).unwrap();
    std::fs::write(main_repo.join("TARGETS"), MAIN_TARGETS).unwrap();
    // The archive and distdir roots take their (empty) target files from
    // main: their files are then plain source targets.
    std::fs::write(main_repo.join("TARGETS.files"), "{}").unwrap();
    git(&main_repo, &["init", "-q"]);
    git(&main_repo, &["add", "-A"]);
    git(&main_repo, &["commit", "-q", "-m", "main"]);
    let commit = git(&main_repo, &["rev-parse", "HEAD"]);
    // The archive: only in the client's distdir.
    let pkg = dir.join("pkg-src/pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("a.txt"), format!("a of {}\n", dir.display())).unwrap();
    let distfiles = dir.join("distfiles");
    std::fs::create_dir_all(&distfiles).unwrap();
    let archive = distfiles.join("pkg.tar.gz");
    common::tar_gz(&archive, pkg.parent().unwrap(), "pkg");
    let content = git(dir, &["hash-object", archive.to_str().unwrap()]);
    // A local directory, content-fixed by the to_git pragma.
    let local = dir.join("local-src");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("sub/b.txt"), format!("b of {}\n", dir.display())).unwrap();
    let config = json!({
        "main": "main",
        "repositories": {
            "main": {
                "repository": {"type": "git", "repository": UNREACHABLE, "branch": "main",
                               "commit": commit, "pragma": {"absent": true}},
                "bindings": {"pkg": "pkg", "dist": "dist"}
            },
            "pkg": {"repository": {"type": "archive", "content": content, "subdir": "pkg",
                                   "fetch": "https://invalid.example/pkg.tar.gz",
                                   "pragma": {"absent": true}},
                    "target_root": "main", "target_file_name": "TARGETS.files"},
            "local": {"repository": {"type": "file", "path": local.to_str().unwrap(),
                                     "pragma": {"to_git": true}}},
            "dist": {"repository": {"type": "distdir", "repositories": ["pkg"],
                                    "pragma": {"absent": true}},
                     "target_root": "main", "target_file_name": "TARGETS.files"}
        }
    });
    let path = dir.join("repos.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Fixture {
        dir: dir.to_path_buf(),
        main_repo,
        distfiles,
        config: path,
    }
}

fn prefetch(f: &Fixture, serve: &str, config: &Path, extra: &[&str]) -> (bool, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.arg("prefetch")
        .arg("-C")
        .arg(config)
        .args(["-R", serve, "--json", "--distdir"])
        .arg(&f.distfiles)
        .arg("--local-build-root")
        .arg(f.dir.join("empty-just-root"))
        .args(extra);
    let out = run_bounded(cmd, "jserve prefetch", LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "prefetch printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// `just-mr install app` into `f.dir/NAME` by a client with an empty build
/// root, asking `serve` and `endpoint`; its log.
fn install_app(
    just: &Path,
    f: &Fixture,
    name: &str,
    (serve, endpoint): (&str, &str),
    compatible: bool,
    extra: &[&str],
) -> String {
    let mut cmd = Command::new(reference_just_mr(just));
    cmd.current_dir(&f.dir)
        .args(["--norc", "--plain-log", "--just"])
        .arg(just)
        .arg("--local-build-root")
        .arg(f.dir.join(format!("{name}-client-root")))
        .args(["-R", serve, "-r", endpoint]);
    if compatible {
        cmd.arg("--compatible");
    }
    cmd.arg("-C")
        .arg(&f.config)
        .args(["install", "-o", f.dir.join(name).to_str().unwrap(), "app"])
        .args(extra);
    let out = run_bounded(cmd, "just-mr install app", LIMIT);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the client failed:\n{log}");
    log
}

fn status_of<'a>(report: &'a Value, name: &str) -> &'a str {
    report["roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["status"].as_str())
        .unwrap_or_else(|| panic!("no row {name}: {report}"))
}

fn warm_cache(compatible: bool) {
    let just = if compatible {
        reference_just()
    } else {
        reference_just_16()
    };
    let Some(just) = just else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let endpoint = compatible.then(|| Execute::start(&jserve, &f.dir.join("endpoint"), true, None));
    let mut execution = json!({"compatible": compatible});
    if let Some(e) = &endpoint {
        execution["address"] = json!(e.address());
    }
    let serve = JserveServe::start(
        &f.dir.join("serve"),
        json!({
            "local build root": loc(&f.dir.join("serve/root")),
            "repositories": [loc(&f.main_repo)],
            "remote service": {"port": 0},
            "execution endpoint": execution,
        }),
    );
    let mode = if compatible { "compatible" } else { "native" };

    let (ok, report) = prefetch(&f, &serve.address(), &f.config, &["--targets", "app"]);
    assert!(ok, "{mode}: {report}");
    assert_eq!(status_of(&report, "main"), "known", "{mode}: {report}");
    // The distdir comes first (names in order): its archive is handed over
    // then, and the archive root is known afterwards.
    assert_eq!(status_of(&report, "dist"), "uploaded", "{mode}: {report}");
    assert_eq!(status_of(&report, "pkg"), "known", "{mode}: {report}");
    assert_eq!(status_of(&report, "local"), "uploaded", "{mode}: {report}");
    assert_eq!(status_of(&report, "app"), "served", "{mode}: {report}");

    // A client with every root absent, no distdir, and URLs that resolve
    // nowhere: it can fetch nothing, and serve answers everything.
    let mark = serve.log().len();
    let endpoint_address = endpoint
        .as_ref()
        .map_or_else(|| serve.address(), |e| e.address());
    let serve_address = serve.address();
    let addresses = (serve_address.as_str(), endpoint_address.as_str());
    let log = install_app(&just, &f, "out", addresses, compatible, &[]);
    let out_dir = f.dir.join("out");
    assert!(
        log.contains("0 cached, 1 served, 0 uncached"),
        "{mode}: not served:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("out.txt")).unwrap(),
        format!("a of {}\narchive\n", f.dir.display()),
        "{mode}"
    );
    let served = serve.log_since(mark);
    assert!(
        served.contains("cache hit"),
        "{mode}: not from the warm cache:\n{served}"
    );
    assert!(
        !served.contains("analysing and building"),
        "{mode}:\n{served}"
    );

    // Warmed for developers with an execution property and a dispatch
    // list: another shard, built by the prefetch, a hit for such a client.
    let dispatch = f.dir.join("dispatch.json");
    std::fs::write(
        &dispatch,
        json!([[{"pool": "fast"}, endpoint_address]]).to_string(),
    )
    .unwrap();
    let backend = [
        "--remote-execution-property",
        "os:linux",
        "--endpoint-configuration",
        dispatch.to_str().unwrap(),
    ];
    let mut args = vec!["--targets", "app"];
    args.extend(backend);
    let (ok, report) = prefetch(&f, &serve.address(), &f.config, &args);
    assert!(ok, "{mode}: {report}");
    assert_eq!(status_of(&report, "app"), "served", "{mode}: {report}");
    let mark = serve.log().len();
    install_app(&just, &f, "out-2", addresses, compatible, &backend);
    let served = serve.log_since(mark);
    assert!(
        served.contains("cache hit") && !served.contains("analysing and building"),
        "{mode}: the backend's shard was not warm:\n{served}"
    );

    // A root nobody has: exit 1, and the table says which.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&f.config).unwrap()).unwrap();
    config["repositories"]["ghost"] = json!({"repository": {
        "type": "zip", "content": "0".repeat(40), "fetch": "https://invalid.example/ghost.zip"}});
    // A commit serve cannot know, in a local repository: reported missing,
    // but its tree is handed over for clients that have the root.
    let private = f.dir.join("private-repo");
    std::fs::create_dir_all(private.join("src")).unwrap();
    std::fs::write(
        private.join("src/p.txt"),
        format!("p of {}\n", f.dir.display()),
    )
    .unwrap();
    git(&private, &["init", "-q"]);
    git(&private, &["add", "-A"]);
    git(&private, &["commit", "-q", "-m", "private"]);
    let private_commit = git(&private, &["rev-parse", "HEAD"]);
    let private_tree = git(&private, &["rev-parse", "HEAD:src"]);
    config["repositories"]["private"] = json!({"repository": {
        "type": "git", "repository": private.to_str().unwrap(), "branch": "main",
        "commit": private_commit, "subdir": "src"}});
    let ghost = f.dir.join("ghost.json");
    std::fs::write(&ghost, config.to_string()).unwrap();
    let (ok, report) = prefetch(&f, &serve.address(), &ghost, &[]);
    assert!(!ok, "{mode}: {report}");
    assert_eq!(status_of(&report, "ghost"), "missing", "{mode}: {report}");
    assert_eq!(status_of(&report, "private"), "missing", "{mode}: {report}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.args(["tree", &private_tree, "-R", &serve.address()]);
    let out = run_bounded(cmd, "jserve tree", LIMIT);
    assert!(
        out.status.success(),
        "{mode}: the private tree was not handed over: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(status_of(&report, "pkg"), "known", "{mode}: {report}");
    assert_eq!(status_of(&report, "local"), "known", "{mode}: {report}");

    // The table for people: a header, then one aligned line per root.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.arg("prefetch")
        .arg("-C")
        .arg(&ghost)
        .args(["-R", &serve.address()]);
    let out = run_bounded(cmd, "jserve prefetch (table)", LIMIT);
    assert_eq!(out.status.code(), Some(1), "{mode}");
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ROOT ") && lines[0].contains("STATUS"),
        "{table}"
    );
    let ghost_line = lines
        .iter()
        .find(|l| l.starts_with("ghost "))
        .expect("a ghost row");
    assert!(
        ghost_line.contains("  zip  ") && ghost_line.contains("missing"),
        "{table}"
    );

    // On a terminal (script(1) gives it one) a progress line counts the
    // roots on stderr and is cleared before the table.
    let line = format!(
        "{} prefetch -C {} -R {}",
        env!("CARGO_BIN_EXE_jserve"),
        ghost.display(),
        serve.address()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let out = run_bounded(cmd, "jserve prefetch on a terminal", LIMIT);
    let screen = String::from_utf8_lossy(&out.stdout);
    let roots = report["roots"].as_array().unwrap().len();
    assert!(
        screen.contains(&format!("] 1/{roots} "))
            && screen.contains(&format!("] {roots}/{roots} ")),
        "{mode}: no progress line:\n{screen:?}"
    );
    assert!(
        screen.contains("\r\x1b[KROOT "),
        "{mode}: not cleared:\n{screen:?}"
    );
}

#[test]
fn native_own_endpoint() {
    warm_cache(false);
}

#[test]
fn compatible_external_endpoint() {
    warm_cache(true);
}

/// The reference `just serve` 1.6 (native, its own endpoint) filled by
/// `jserve prefetch` the same way, then serving a `just-mr` 1.6 client
/// with every root absent.
#[test]
fn reference_serve() {
    let Some(just) = reference_just_16() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let serve = common::reference::start_server(
        &just,
        &["serve"],
        &f.dir.join("serve"),
        &f.main_repo,
        false,
    );
    let address = format!("127.0.0.1:{}", serve.port);
    let (ok, report) = prefetch(&f, &address, &f.config, &["--targets", "app"]);
    assert!(ok, "{report}");
    for (name, status) in [
        ("main", "known"),
        ("dist", "uploaded"),
        ("pkg", "known"),
        ("local", "uploaded"),
        ("app", "served"),
    ] {
        assert_eq!(status_of(&report, name), status, "{name}: {report}");
    }
    let log = install_app(&just, &f, "out", (&address, &address), false, &[]);
    let out_dir = f.dir.join("out");
    assert!(
        log.contains("0 cached, 1 served, 0 uncached"),
        "not served:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("out.txt")).unwrap(),
        format!("a of {}\narchive\n", f.dir.display())
    );
}

/// The execution endpoints serve may work with besides jserve.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// The reference `just execute` 1.6, native; a `just-mr` 1.6 client.
    JustExecute16,
    /// The reference `just execute` 1.5, compatible; a `just-mr` 1.5 client.
    JustExecute15,
    /// BuildGrid (compatible, instance `remote-execution`); `just-mr` 1.6.
    BuildGrid,
}

/// `jserve prefetch` handing roots to a jserve serve whose endpoint is
/// another engine: everything lands at that engine, and a client with every
/// root absent is served.
fn through_engine(engine: Engine) {
    const INSTANCE: &str = "remote-execution";
    let (Some(just15), Some(just16)) = (reference_just(), reference_just_16()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let mut guard_grid = None;
    let mut guard_execute = None;
    let (just, endpoint, compatible, instance) = match engine {
        Engine::JustExecute16 | Engine::JustExecute15 => {
            let compatible = matches!(engine, Engine::JustExecute15);
            let just = if compatible { just15 } else { just16 };
            let e = Execute::start(&just, &f.dir.join("endpoint"), compatible, None);
            let address = e.address();
            guard_execute = Some(e);
            (just, address, compatible, None)
        }
        Engine::BuildGrid => {
            let Some((bgd, pg_bin)) = common::endpoints::BuildGrid::find() else {
                return;
            };
            let dir = f.dir.join("buildgrid");
            std::fs::create_dir_all(&dir).unwrap();
            let grid = common::endpoints::BuildGrid::start(&bgd, pg_bin, &dir, INSTANCE);
            let address = format!("127.0.0.1:{}", grid.port);
            guard_grid = Some(grid);
            (just16, address, true, Some(INSTANCE))
        }
    };
    let mut execution = json!({"address": endpoint, "compatible": compatible});
    if let Some(i) = instance {
        execution["instance name"] = json!(i);
    }
    let serve = JserveServe::start(
        &f.dir.join("serve"),
        json!({
            "local build root": loc(&f.dir.join("serve/root")),
            "repositories": [loc(&f.main_repo)],
            "remote service": {"port": 0},
            "execution endpoint": execution,
        }),
    );
    let mut args = vec!["--targets", "app"];
    let mut client_args = Vec::new();
    if let Some(i) = instance {
        args.extend(["--remote-instance-name", i]);
        client_args.extend(["--remote-instance-name", i]);
    }
    let (ok, report) = prefetch(&f, &serve.address(), &f.config, &args);
    assert!(ok, "{engine:?}: {report}");
    for (name, status) in [
        ("main", "known"),
        ("dist", "uploaded"),
        ("pkg", "known"),
        ("local", "uploaded"),
        ("app", "served"),
    ] {
        assert_eq!(
            status_of(&report, name),
            status,
            "{engine:?}, {name}: {report}"
        );
    }
    let mark = serve.log().len();
    let log = install_app(
        &just,
        &f,
        "out",
        (&serve.address(), &endpoint),
        compatible,
        &client_args,
    );
    assert!(
        log.contains("0 cached, 1 served, 0 uncached"),
        "{engine:?}: not served:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(f.dir.join("out/out.txt")).unwrap(),
        format!("a of {}\narchive\n", f.dir.display()),
        "{engine:?}"
    );
    let served = serve.log_since(mark);
    assert!(
        served.contains("cache hit") && !served.contains("analysing and building"),
        "{engine:?}: not from the warm cache:\n{served}"
    );
    // The engines stop only after the client is done.
    drop((guard_grid, guard_execute));
}

#[test]
fn just_execute_16_native() {
    through_engine(Engine::JustExecute16);
}

#[test]
fn just_execute_15_compatible() {
    through_engine(Engine::JustExecute15);
}

#[test]
fn buildgrid_compatible() {
    through_engine(Engine::BuildGrid);
}
