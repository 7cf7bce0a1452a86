//! Symlink resolution (`jserve::sources::resolve`) against the reference
//! `just-mr`: for each case a directory with files and symlinks is set up as a
//! `"file"` repository with `"pragma": {"special": MODE}`, and the tree
//! `just-mr setup` resolves it to must be the tree `resolve_tree` computes.
//! Each case runs twice: from a plain directory (just-mr imports it into its
//! git cache and resolves there: source and target are one repository) and
//! from a committed git repository (source is that repository, target the
//! git cache).
//!
//! With JSERVE_RESOLVE_VERBOSE set, the errors of both sides are listed for
//! the cases where both fail.
//!
//! Without the reference client the test says so and passes, except under CI
//! (CI set), where its absence is a failure.

mod common;

use common::git::git;
use common::reference;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository};
use jserve::sources::resolve::{resolve_tree, ResolveError, ResolveMode};

/// One entry on disk: path (relative to the root) and what it is.
enum E {
    File(&'static str),
    Exec(&'static str),
    Link(&'static str),
}
use E::{Exec, File, Link};

struct Case {
    name: &'static str,
    entries: &'static [(&'static str, E)],
    /// justbuild cannot resolve this case when source and target differ (it
    /// reads resolved trees from the source repository); jserve can.
    reference_needs_one_repository: bool,
}

const fn case(name: &'static str, entries: &'static [(&'static str, E)]) -> Case {
    Case {
        name,
        entries,
        reference_needs_one_repository: false,
    }
}

const CASES: &[Case] = &[
    case(
        "plain",
        &[("f", File("1")), ("x", Exec("2")), ("d/e/g", File("3"))],
    ),
    case(
        "same-directory",
        &[
            ("f", File("hi")),
            ("l", Link("f")),
            ("d/g", Exec("run")),
            ("d/m", Link("./g")),
        ],
    ),
    case("upwards", &[("a/b", Link("../c")), ("c", File("c"))]),
    case(
        "directory-link",
        &[
            ("sub/file", File("x")),
            ("sub/tool", Exec("y")),
            ("sub/in", Link("file")),
            ("d", Link("sub")),
            ("a/up", Link("../sub")),
            ("a/slash", Link("../sub/")),
        ],
    ),
    case(
        "executable-link",
        &[
            ("bin/tool", Exec("#!")),
            ("run", Link("bin/tool")),
            ("x/r", Link("../bin/tool")),
        ],
    ),
    case(
        "through-linked-directory",
        &[
            ("sub/file", File("x")),
            ("sub/deep/g", File("g")),
            ("a/e", Link("../sub")),
            ("b/y", Link("../a/e/file")),
            ("b/z", Link("../a/e/deep/g")),
            ("b/w", Link("../a/e/deep/../file")),
            ("d", Link("sub")),
            ("t", Link("d/deep")),
        ],
    ),
    case(
        "upwards-through-kept-link",
        &[
            ("c/x", File("x")),
            ("b", Link("c")),
            ("a/up", Link("../b/x")),
        ],
    ),
    case(
        "upwards-to-kept-link",
        &[("f", File("f")), ("l2", Link("f")), ("a/l1", Link("../l2"))],
    ),
    case(
        "chain",
        &[
            ("f", File("end")),
            ("l1", Link("l2")),
            ("l2", Link("d/l3")),
            ("d/l3", Link("../f")),
            ("d/l4", Link("../l1")),
        ],
    ),
    case(
        "only-links-in-a-directory",
        &[
            ("f", File("f")),
            ("a/only/l", Link("../../f")),
            ("a/g", File("g")),
        ],
    ),
    case("escaping", &[("f", File("f")), ("a/esc", Link("../../x"))]),
    case(
        "escaping-from-root",
        &[("f", File("f")), ("esc", Link("../x"))],
    ),
    case(
        "absolute",
        &[("f", File("f")), ("d/abs", Link("/etc/passwd"))],
    ),
    case(
        "dangling-in-other-directory",
        &[("a/l", Link("../b/missing")), ("b/f", File("f"))],
    ),
    case(
        "dangling-at-root",
        &[("f", File("f")), ("l", Link("missing"))],
    ),
    case("through-a-file", &[("f", File("f")), ("l", Link("f/x"))]),
    case(
        "cycle",
        &[("f", File("f")), ("a", Link("b")), ("b", Link("a"))],
    ),
    case("to-ancestor", &[("f", File("f")), ("d/up", Link(".."))]),
    case("to-itself", &[("f", File("f")), ("here", Link("."))]),
    Case {
        name: "resolved-directory-lookup",
        entries: &[
            ("f", File("hi")),
            ("p", Link("q")),
            ("q/s/k", Link("../../f")),
            ("m", Link("p/s")),
        ],
        reference_needs_one_repository: true,
    },
    case(
        "order-changes-with-type",
        &[
            ("d/x", File("x")),
            ("a", Link("d")),
            ("a.txt", File("t")),
            ("a-b", File("b")),
            ("a0", File("0")),
            ("z/a", Link("../d")),
            ("z/a.c", Link("../a.txt")),
        ],
    ),
    case(
        "relative-to-real-location",
        &[
            ("f", File("f")),
            ("sub/up", Link("../f")),
            ("deep/x", Link("../sub")),
            ("deep/y", Link("../deep/x/up")),
            ("deep/z", Link("x/up")),
        ],
    ),
    case(
        "mixed",
        &[
            ("lib/libfoo.so.1.2", File("elf")),
            ("lib/libfoo.so.1", Link("libfoo.so.1.2")),
            ("lib/libfoo.so", Link("libfoo.so.1")),
            ("lib/include", Link("../include")),
            ("include/foo.h", File("int foo();")),
            ("include/bar/bar.h", File("int bar();")),
            ("bin/foo", Exec("#!/bin/sh")),
            ("bin/foo-1", Link("foo")),
            ("share/doc/link", Link("../../lib/libfoo.so")),
            ("share/inc", Link("../lib/include/bar")),
        ],
    ),
];

const MODES: [ResolveMode; 3] = [
    ResolveMode::Ignore,
    ResolveMode::Partial,
    ResolveMode::Complete,
];

fn write_entries(root: &Path, entries: &[(&str, E)]) {
    std::fs::create_dir_all(root).unwrap();
    for (path, e) in entries {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match e {
            File(s) => std::fs::write(&p, s).unwrap(),
            Exec(s) => {
                std::fs::write(&p, s).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Link(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
        }
    }
}

/// What `just-mr setup` made of a `"file"` root: the unresolved and the
/// resolved tree, or its error output.
enum Reference {
    Resolved {
        unresolved: String,
        resolved: String,
    },
    Failed(String),
}

fn just_mr_resolve(just_mr: &Path, dir: &Path, src: &Path, mode: ResolveMode) -> Reference {
    let build_root = dir.join(format!("lbr-{mode}"));
    let mut repo = serde_json::json!({
        "type": "file",
        "path": src.to_str().unwrap(),
        "pragma": {"special": mode.pragma_name()},
    });
    if mode == ResolveMode::Ignore {
        repo["pragma"]["to_git"] = serde_json::json!(true);
    }
    let config = serde_json::json!({"repositories": {"r": {"repository": repo}}});
    let config_file = dir.join(format!("repos-{mode}.json"));
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = Command::new(just_mr)
        .arg("--norc")
        .args(["--local-build-root", build_root.to_str().unwrap()])
        .args(["-C", config_file.to_str().unwrap()])
        .arg("setup")
        .output()
        .expect("just-mr runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Reference::Failed(stderr);
    }
    let setup = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let setup: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&setup).expect("setup config")).unwrap();
    let root = &setup["repositories"]["r"]["workspace_root"];
    assert_eq!(root[0], "git tree", "{setup}");
    let resolved = root[1].as_str().unwrap().to_string();
    let map = build_root
        .join("repositories/generation-0/special-tree-map")
        .join(mode.pragma_name());
    let mut keys: Vec<String> = std::fs::read_dir(&map)
        .unwrap_or_else(|e| panic!("{}: {e}", map.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "one resolved tree in {}", map.display());
    let unresolved = keys.pop().unwrap();
    let mapped = std::fs::read_to_string(map.join(&unresolved)).unwrap();
    assert_eq!(mapped.trim(), resolved);
    Reference::Resolved {
        unresolved,
        resolved,
    }
}

/// Runs one case in both set-ups and all modes; returns the number of
/// comparisons and notes on tolerated differences.
fn run_case(just_mr: &Path, case: &Case) -> (usize, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    let mut notes = Vec::new();

    // A plain directory: just-mr imports it and resolves within its git cache.
    let plain = tmp.path().join("plain");
    let plain_src = plain.join("src");
    write_entries(&plain_src, case.entries);
    let mine_git = tmp.path().join("mine.git");
    let mine = Repository::init_bare(&mine_git).unwrap();
    let work_tree = format!("--work-tree={}", plain_src.display());
    let git_dir = format!("--git-dir={}", mine_git.display());
    git(tmp.path(), &[&git_dir, &work_tree, "add", "-A"]);
    let plain_tree = git(tmp.path(), &[&git_dir, &work_tree, "write-tree"]);

    // A committed git repository: source is that repository.
    let committed = tmp.path().join("committed");
    write_entries(&committed.join("src"), case.entries);
    git(&committed, &["init", "-q"]);
    git(&committed, &["add", "-A"]);
    git(&committed, &["commit", "-q", "-m", "case"]);
    let committed_tree = git(&committed, &["rev-parse", "HEAD:src"]);
    assert_eq!(committed_tree, plain_tree);
    let source = Repository::open(&committed).unwrap();
    let target = Repository::init_bare(tmp.path().join("target.git")).unwrap();

    for mode in MODES {
        let mut plain_resolved = None;
        for (setup, src, from, into) in [
            ("plain", &plain_src, &mine, &mine),
            ("committed", &committed.join("src"), &source, &target),
        ] {
            let what = format!("{} / {setup} / {mode}", case.name);
            let config_dir = tmp.path().join("configs").join(setup);
            std::fs::create_dir_all(&config_dir).unwrap();
            let reference = just_mr_resolve(just_mr, &config_dir, src, mode);
            if let Reference::Resolved { resolved, .. } = &reference {
                if setup == "plain" {
                    plain_resolved = Some(resolved.clone());
                }
            }
            let tree = Oid::from_str(&plain_tree).unwrap();
            let ours: Result<Oid, ResolveError> = resolve_tree(from, into, tree, mode);
            match (&reference, &ours) {
                (
                    Reference::Resolved {
                        unresolved,
                        resolved,
                    },
                    Ok(id),
                ) => {
                    assert_eq!(unresolved, &plain_tree, "{what}: unresolved tree");
                    assert_eq!(&id.to_string(), resolved, "{what}: resolved tree");
                }
                (Reference::Failed(stderr), Err(e)) => {
                    if std::env::var_os("JSERVE_RESOLVE_VERBOSE").is_some() {
                        let theirs = stderr.lines().last().unwrap_or("").trim();
                        notes.push(format!("{what}: both fail: jserve: {e}; just-mr: {theirs}"));
                    }
                }
                (Reference::Failed(stderr), Ok(id))
                    if setup == "committed"
                        && case.reference_needs_one_repository
                        && stderr.contains("failed to read entries of subtree") =>
                {
                    // Ours must be what just-mr computes from one repository.
                    let resolved = plain_resolved.as_ref().expect("the plain set-up resolves");
                    assert_eq!(&id.to_string(), resolved, "{what}");
                    notes.push(format!(
                        "{what}: just-mr fails with separate repositories, jserve resolves"
                    ));
                }
                (Reference::Failed(stderr), Ok(id)) => {
                    panic!("{what}: just-mr fails but jserve resolves to {id}:\n{stderr}")
                }
                (Reference::Resolved { resolved, .. }, Err(e)) => {
                    panic!("{what}: just-mr resolves to {resolved} but jserve fails: {e}")
                }
            }
            compared += 1;
        }
    }
    (compared, notes)
}

#[test]
fn resolved_trees_match_just_mr() {
    let Some(just) = reference::reference_just() else {
        return;
    };
    let just_mr = reference::reference_just_mr(&just);
    if !just_mr.exists() {
        common::procs::skip(&format!(
            "reference just-mr not found beside {}",
            just.display()
        ));
        return;
    }
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = CASES
            .iter()
            .map(|case| s.spawn(|| run_case(&just_mr, case)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let compared: usize = results.iter().map(|(n, _)| n).sum();
    assert_eq!(compared, CASES.len() * MODES.len() * 2);
    for note in results.iter().flat_map(|(_, notes)| notes) {
        let _ = writeln!(std::io::stderr(), "note: {note}");
    }
}
