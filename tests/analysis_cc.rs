//! `jserve analyse` against the reference `just analyse` on a realistic C/C++
//! project: the rule set, toolchain defaults and project in
//! fixtures/analysis/cc (three repositories joined by bindings; see its README).
//! Both tools analyse the same targets; results and action graphs must be
//! equal as parsed JSON, with action and tree ids renamed by content when
//! they differ (as in the conformance fixtures). One more test builds and
//! runs the program with the reference, so the fixture stays a real project.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::analysis::{first_difference, reference_uses_legacy_ids};
use common::git::git;
use common::reference::reference_just;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/analysis/cc")
}

/// How the repositories' workspace roots are given.
#[derive(Clone, Copy, Debug)]
enum Roots {
    /// `["file", ABS]`: the fixture directories themselves.
    File,
    /// `["git tree", TREE, REPO]`: the fixture committed to a fresh git
    /// repository; sources then enter the graph as KNOWN blobs with ids.
    Git,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// The fixture's repos.json with its `["file", REL]` roots resolved as
/// `roots` asks, written into `dir`.
fn repos_config(dir: &Path, roots: Roots) -> PathBuf {
    let text = std::fs::read_to_string(fixture().join("repos.json")).unwrap();
    let mut repos: Value = serde_json::from_str(&text).unwrap();
    let ws = dir.join("ws");
    if let Roots::Git = roots {
        copy_tree(&fixture(), &ws);
        git(&ws, &["init", "-q"]);
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "-q", "-m", "cc fixture"]);
    }
    for desc in repos["repositories"].as_object_mut().unwrap().values_mut() {
        let root = &mut desc["workspace_root"];
        assert_eq!(root[0], "file", "the fixture uses file roots only");
        let rel = root[1].as_str().unwrap().to_string();
        *root = match roots {
            Roots::File => json!(["file", fixture().join(&rel).to_str().unwrap()]),
            Roots::Git => {
                let tree = git(&ws, &["rev-parse", &format!("HEAD:{rel}")]);
                json!(["git tree", tree, ws.join(".git").to_str().unwrap()])
            }
        };
    }
    let path = dir.join("repos.json");
    std::fs::write(&path, repos.to_string()).unwrap();
    path
}

/// What one analysis produced: (--dump-result, --dump-plain-graph).
type Dumps = (Value, Value);

/// One analysis to run with both tools.
#[derive(Debug)]
struct Case {
    target: [&'static str; 2],
    config: Option<&'static str>,
    compatible: bool,
    roots: Roots,
}

impl Case {
    fn new(target: [&'static str; 2]) -> Case {
        Case {
            target,
            config: None,
            compatible: false,
            roots: Roots::File,
        }
    }
}

/// Runs `program analyse` with the shared command line of the analysis
/// fixtures; a fresh build root and dump files per `tag`.
fn analyse(
    program: &Path,
    tag: &str,
    dir: &Path,
    repos: &Path,
    case: &Case,
    extra: &[&str],
) -> Result<Dumps, String> {
    let result = dir.join(format!("{tag}-result.json"));
    let graph = dir.join(format!("{tag}-graph.json"));
    let mut cmd = Command::new(program);
    cmd.arg("analyse").arg("-C").arg(repos).args(extra);
    cmd.args(["--main", "project"]);
    if let Some(config) = case.config {
        cmd.args(["-D", config]);
    }
    if case.compatible {
        cmd.arg("--compatible");
    }
    cmd.arg("--local-build-root")
        .arg(dir.join(format!("{tag}-lbr")))
        .arg("--dump-result")
        .arg(&result)
        .arg("--dump-plain-graph")
        .arg(&graph)
        .args(case.target)
        // Nothing may be found relative to the working directory by accident.
        .current_dir(dir);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} analyse failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let read = |p: &Path| -> Result<Value, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    Ok((read(&result)?, read(&graph)?))
}

/// Analyses the case with the reference and with jserve, asserts they agree
/// and returns the reference's dumps for case-specific checks; None when the
/// reference is not installed (reported by `reference_just`).
fn compare(case: &Case) -> Option<Dumps> {
    let just = reference_just()?;
    let tmp = tempfile::tempdir().unwrap();
    let repos = repos_config(tmp.path(), case.roots);
    let want = analyse(&just, "just", tmp.path(), &repos, case, &[])
        .unwrap_or_else(|e| panic!("the fixture must analyse with the reference: {e}"));
    let jserve = Path::new(env!("CARGO_BIN_EXE_jserve"));
    // Identify trees and actions as the installed reference does, so that
    // the dumps must agree byte for byte, ids included.
    let extra: &[&str] = if reference_uses_legacy_ids(&just) {
        &["--legacy-ids"]
    } else {
        &[]
    };
    let got = analyse(jserve, "jserve", tmp.path(), &repos, case, extra)
        .unwrap_or_else(|e| panic!("{e}"));
    for (what, w, g) in [("result", &want.0, &got.0), ("graph", &want.1, &got.1)] {
        if let Some(diff) = first_difference(what, w, g) {
            panic!("{case:?}: {diff}");
        }
    }
    Some(want)
}

/// The commands of all actions in a plain graph.
fn commands(graph: &Value) -> Vec<Vec<String>> {
    let actions = graph["actions"].as_object().expect("graph has actions");
    actions
        .values()
        .map(|a| {
            a["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// The compile command of `source` in `graph`.
fn compile_of(graph: &Value, source: &str) -> Vec<String> {
    commands(graph)
        .into_iter()
        .find(|c| c.iter().any(|a| a == "-c") && c.iter().any(|a| a == source))
        .unwrap_or_else(|| panic!("no compile action for {source}"))
}

#[test]
fn library_with_transitive_provides() {
    let Some((result, graph)) = compare(&Case::new(["greet", "greet"])) else {
        return;
    };
    let provides = &result["provides"];
    assert_eq!(
        provides["link-args"],
        serde_json::json!(["greet/libgreet.a", "base/libbase.a"])
    );
    assert_eq!(provides["link-flags"], serde_json::json!(["-lm"]));
    // The header-only dependency's header reaches the compile-deps.
    assert!(provides["compile-deps"]["config/config.hpp"].is_object());
    // 3 compiles and 2 archives: greet.cpp, base's strings.c and numbers.c.
    assert_eq!(graph["actions"].as_object().unwrap().len(), 5);
}

#[test]
fn binary_with_generated_source() {
    let Some((result, graph)) = compare(&Case::new(["", "hello"])) else {
        return;
    };
    let artifacts = result["artifacts"].as_object().unwrap();
    assert_eq!(artifacts.keys().collect::<Vec<_>>(), ["hello"]);
    // 6 compiles (one the host tool's), 3 archives, 2 links, 1 generator run.
    assert_eq!(graph["actions"].as_object().unwrap().len(), 12);
    let link = commands(&graph)
        .into_iter()
        .find(|c| c.get(1..3) == Some(&["-o".to_string(), "hello".to_string()]))
        .expect("a link action for hello");
    assert!(link.ends_with(&[
        "greet/libgreet.a".to_string(),
        "base/libbase.a".to_string(),
        "version/libversion.a".to_string(),
        "-lm".to_string(),
    ]));
}

#[test]
fn binary_in_debug_for_another_arch() {
    let case = Case {
        config: Some(r#"{"DEBUG": true, "ARCH": "arm64", "HOST_ARCH": "x86_64"}"#),
        ..Case::new(["", "hello"])
    };
    let Some((_, graph)) = compare(&case) else {
        return;
    };
    let main = compile_of(&graph, "main.cpp");
    assert!(main.iter().any(|a| a == "-DAPP_DEBUG=1"), "{main:?}");
    assert!(main.iter().any(|a| a == "-DAPP_ARCH=\"arm64\""), "{main:?}");
    // The generator is built by the host transition: host arch, no debug.
    let tool = compile_of(&graph, "mkversion.c");
    assert!(!tool.iter().any(|a| a == "-DAPP_DEBUG=1"), "{tool:?}");
    assert!(
        tool.iter().any(|a| a == "-DAPP_ARCH=\"x86_64\""),
        "{tool:?}"
    );
}

#[test]
fn generated_source_alone() {
    let case = Case {
        config: Some(r#"{"ARCH": "x86_64"}"#),
        ..Case::new(["", "version.c"])
    };
    let Some((result, _)) = compare(&case) else {
        return;
    };
    assert!(result["artifacts"]["version.c"].is_object());
}

#[test]
fn binary_from_git_roots_in_both_modes() {
    let native = Case {
        roots: Roots::Git,
        ..Case::new(["", "hello"])
    };
    let Some((native_result, native_graph)) = compare(&native) else {
        return;
    };
    let compatible = Case {
        compatible: true,
        ..native
    };
    let Some((compatible_result, _)) = compare(&compatible) else {
        return;
    };
    // Sources from git trees are KNOWN blobs, named by git SHA-1 natively and
    // by SHA-256 in compatible mode, so every action id differs.
    let known = |graph: &Value, path: &str| -> usize {
        let action = graph["actions"]
            .as_object()
            .unwrap()
            .values()
            .find(|a| a["input"].get(path).is_some())
            .unwrap_or_else(|| panic!("an action reads {path}"));
        action["input"][path]["data"]["id"].as_str().unwrap().len()
    };
    assert_eq!(known(&native_graph, "main.cpp"), 40);
    assert_ne!(native_result, compatible_result);
}

/// The fixture is a real project: the reference builds it with the system
/// compilers and the program runs.
#[test]
fn reference_builds_and_runs_hello() {
    let Some(just) = reference_just() else {
        return;
    };
    let compilers = ["cc", "c++", "ar"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !compilers {
        eprintln!("SKIPPED: cc, c++ and ar are needed to build the C/C++ fixture");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repos = repos_config(tmp.path(), Roots::File);
    let out = Command::new(&just)
        .arg("install")
        .arg("-C")
        .arg(&repos)
        .arg("--local-build-root")
        .arg(tmp.path().join("lbr"))
        .arg("-o")
        .arg(tmp.path().join("out"))
        .args(["-D", r#"{"ARCH": "x86_64"}"#, "hello"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "just install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(tmp.path().join("out/hello"))
        .arg("fixture")
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        "Hello, FIXTURE!\n\
         version 1.4.2 (generated by mkversion)\n\
         arch x86_64, release build, |(3, 4)| = 5\n"
    );
}
