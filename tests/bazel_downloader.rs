//! Bazel (Debian's bazel-bootstrap, 4.2) fetching an `http_archive` through
//! serve's Remote Asset API with `--experimental_remote_downloader`, its URL
//! unreachable, so the archive can come from serve only:
//!
//! * before anyone handed the archive over, the fetch fails, and serve says
//!   NotFound for the checksum Bazel asked for;
//! * after `jserve prefetch` handed it over from a distdir (a just-mr
//!   configuration naming the same archive), Bazel builds, reading the blob
//!   from the CAS serve named: serve's own (compatible mode) or a separate
//!   `jserve execute` endpoint's.
//!
//! Without `bazel` on PATH the test prints `SKIPPED:` and passes, except
//! under CI (.ci/run installs bazel-bootstrap).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::endpoints::{Execute, JserveServe};
use common::git::git;
use common::loc;
use common::procs::{run_bounded, skip};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(300);
const URL: &str = "https://invalid.example/pkg-1.0.tar.gz";

fn bazel() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("bazel"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip("bazel not found (Debian's bazel-bootstrap)");
    }
    found
}

/// A workspace whose one target copies a file of an `http_archive`.
fn workspace(dir: &Path, sha256: &str) -> PathBuf {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(
        ws.join("WORKSPACE"),
        format!(
            r#"load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_archive")
http_archive(
    name = "pkg",
    urls = ["{URL}"],
    sha256 = "{sha256}",
    strip_prefix = "pkg",
    build_file_content = "exports_files(['a.txt'])",
)
"#
        ),
    )
    .unwrap();
    std::fs::write(
        ws.join("BUILD"),
        r#"genrule(name = "out", srcs = ["@pkg//:a.txt"], outs = ["out.txt"], cmd = "cp $< $@")"#,
    )
    .unwrap();
    ws
}

fn build(bazel: &Path, dir: &Path, ws: &Path, downloader: &str, cas: &str) -> Output {
    let mut cmd = Command::new(bazel);
    // One process per build (no server left behind), only the system rc
    // (Debian's install base), and no
    // namespace sandbox (CI machines may not allow one).
    cmd.current_dir(ws)
        .env("HOME", dir)
        .arg(format!(
            "--output_user_root={}",
            dir.join("bazel-root").display()
        ))
        .args(["--batch", "--nohome_rc", "--noworkspace_rc"])
        .arg("build")
        .arg(format!(
            "--experimental_remote_downloader=grpc://{downloader}"
        ))
        .arg(format!("--remote_cache=grpc://{cas}"))
        .args(["--spawn_strategy=local", "--noshow_progress", "//:out"]);
    run_bounded(cmd, "bazel build", LIMIT)
}

/// `jserve prefetch` of a just-mr configuration naming the archive, with
/// the archive in a distdir.
fn prefetch(dir: &Path, serve: &JserveServe, distfiles: &Path, content: &str) {
    let config = dir.join("repos.json");
    let repos = json!({"repositories": {"pkg": {"repository": {
        "type": "archive", "content": content, "fetch": URL, "subdir": "pkg"}}}});
    std::fs::write(&config, repos.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jserve"));
    cmd.arg("prefetch")
        .arg("-C")
        .arg(&config)
        .args(["-R", &serve.address(), "--json", "--distdir"])
        .arg(distfiles)
        .arg("--local-build-root")
        .arg(dir.join("empty-just-root"));
    let out = run_bounded(cmd, "jserve prefetch", LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(r#""status":"uploaded""#),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fetch_through_serve(external_endpoint: bool) {
    let Some(bazel) = bazel() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pkg = dir.join("src/pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let text = format!("a of {}\n", dir.display());
    std::fs::write(pkg.join("a.txt"), &text).unwrap();
    let distfiles = dir.join("distfiles");
    std::fs::create_dir_all(&distfiles).unwrap();
    let archive = distfiles.join("pkg-1.0.tar.gz");
    common::tar_gz(&archive, &dir.join("src"), "pkg");
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()))
    };
    let content = git(dir, &["hash-object", archive.to_str().unwrap()]);

    let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let endpoint =
        external_endpoint.then(|| Execute::start(&jserve, &dir.join("endpoint"), true, None));
    let mut execution = json!({"compatible": true});
    if let Some(e) = &endpoint {
        execution["address"] = json!(e.address());
    }
    let serve = JserveServe::start(
        &dir.join("serve"),
        json!({"local build root": loc(&dir.join("serve/root")),
               "remote service": {"port": 0},
               "execution endpoint": execution}),
    );
    // Bazel reads the blob from the CAS serve's answers are about.
    let cas = endpoint
        .as_ref()
        .map_or_else(|| serve.address(), |e| e.address());
    let ws = workspace(dir, &sha256);
    let mode = if external_endpoint {
        "external endpoint"
    } else {
        "own endpoint"
    };

    let out = build(&bazel, dir, &ws, &serve.address(), &cas);
    assert!(
        !out.status.success(),
        "{mode}: nobody has the archive yet, yet Bazel built:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = serve.log();
    assert!(
        log.contains("FetchBlob(checksum.sri=sha256-") && log.contains("NotFound"),
        "{mode}: serve was not asked, or did not say NotFound:\n{log}\nBazel:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    prefetch(dir, &serve, &distfiles, &content);
    let mark = serve.log().len();
    let out = build(&bazel, dir, &ws, &serve.address(), &cas);
    assert!(
        out.status.success(),
        "{mode}: Bazel failed after the prefetch:\n{}\nserve:\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve.log_since(mark)
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("bazel-bin/out.txt")).unwrap(),
        text,
        "{mode}"
    );
    let served = serve.log_since(mark);
    assert!(
        served.contains(&format!("uri: \"{URL}\"")),
        "{mode}: the archive did not come through serve:\n{served}"
    );
}

#[test]
fn own_endpoint() {
    fetch_through_serve(false);
}

#[test]
fn external_endpoint() {
    fetch_through_serve(true);
}
