//! Source-like targets and module files: git-tree roots (built with the git
//! CLI) and directory roots, FILE / SYMLINK / TREE / GLOB references,
//! implicit source targets, ignore-special roots, missing and malformed
//! TARGETS files; plus, where the reference `just` is installed, the results
//! compared with `just analyse --dump-result`.

mod common;

use common::git::git;
use common::reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use jserve::build::artifact::{tree_id, ArtifactDescription};
use jserve::build::names::{NamedTarget, ReferenceKind};
use jserve::build::repo_config::{FileRoot, RepositoryConfig, RepositoryInfo};
use jserve::build::roots::{Lookup, SourceRoot};
use jserve::build::sources::{FileKind, RepoReader, SourceError, SourceTarget};
use jserve::digest::{HashFunction, ObjectKind};
use serde_json::{json, Value as Json};

/// Writes the fixture: files, an executable, symlinks (one upwards), a
/// nested directory, a TARGETS file.
fn write_tree(dir: &Path, with_upwards: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
    std::fs::create_dir_all(dir.join("mod")).unwrap();
    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    std::fs::write(dir.join(".hidden.txt"), "h\n").unwrap();
    std::fs::write(dir.join("b.c"), "int b;\n").unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    std::fs::write(dir.join("sub/x.c"), "x\n").unwrap();
    std::fs::write(dir.join("sub/deep/y.c"), "y\n").unwrap();
    std::os::unix::fs::symlink("y.c", dir.join("sub/deep/ok-link")).unwrap();
    std::fs::create_dir_all(dir.join("sub/empty-in-fs")).unwrap();
    if with_upwards {
        std::fs::create_dir_all(dir.join("bad")).unwrap();
        std::fs::write(dir.join("bad/f"), "f\n").unwrap();
        std::os::unix::fs::symlink("../../outside", dir.join("bad/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("bad/abs-link")).unwrap();
    }
    std::fs::write(
        dir.join("TARGETS"),
        r#"{"defined": {"type": "install"}, "a.txt": {"type": "install"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("mod/TARGETS"), r#"{"t": {"type": "install"}}"#).unwrap();
    std::fs::write(dir.join("mod/m.txt"), "m\n").unwrap();
    std::fs::write(dir.join("mod/RULES"), r#"{"r": {"expression": {}}}"#).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    tree: String,
}

fn fixture(with_upwards: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    write_tree(&ws, with_upwards);
    git(&ws, &["init", "-q", "."]);
    git(&ws, &["add", "-A"]);
    git(
        &ws,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "x",
        ],
    );
    let tree = git(&ws, &["rev-parse", "HEAD^{tree}"]);
    Fixture {
        _tmp: tmp,
        ws,
        tree,
    }
}

impl Fixture {
    fn git_root(&self, ignore_special: bool) -> FileRoot {
        FileRoot::GitTree {
            tree: self.tree.clone(),
            repository: Some(self.ws.join(".git")),
            ignore_special,
        }
    }
    fn dir_root(&self, ignore_special: bool) -> FileRoot {
        FileRoot::Directory {
            path: self.ws.clone(),
            ignore_special,
        }
    }
    fn rev(&self, path: &str) -> String {
        git(&self.ws, &["rev-parse", &format!("HEAD:{path}")])
    }
}

fn sources_for(root: FileRoot) -> RepoReader {
    sources_with(root, HashFunction::GitSha1)
}

fn sources_with(root: FileRoot, hash: HashFunction) -> RepoReader {
    let mut config = RepositoryConfig {
        main: "main".into(),
        repositories: BTreeMap::new(),
    };
    config
        .repositories
        .insert("main".into(), RepositoryInfo::new(root));
    RepoReader::new(Arc::new(config), hash)
}

fn name(module: &str, n: &str, kind: ReferenceKind) -> NamedTarget {
    NamedTarget::with_kind("main", module, n, kind)
}

fn file(module: &str, n: &str) -> NamedTarget {
    name(module, n, ReferenceKind::File)
}

fn stage_json(t: &SourceTarget) -> Json {
    Json::Object(
        t.stage
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    )
}

fn known(id: &str, size: u64, ty: &str) -> Json {
    json!({"type": "KNOWN", "data": {"id": id, "size": size, "file_type": ty}})
}

fn local(path: &str) -> Json {
    json!({"type": "LOCAL", "data": {"path": path, "repository": "main"}})
}

// ---------------------------------------------------------------- files

#[test]
fn git_root_files_are_known_blobs() {
    let f = fixture(false);
    let s = sources_for(f.git_root(false));
    let cases = [
        ("a.txt", "a.txt", 6, "f"),
        ("run.sh", "run.sh", 10, "x"),
        ("link", "link", 5, "l"),
        ("sub/x.c", "sub/x.c", 2, "f"),
        ("./sub/../b.c", "b.c", 7, "f"),
    ];
    for (n, path, size, ty) in cases {
        let r = s.source_file(&file("", n)).unwrap();
        assert_eq!(
            stage_json(&r),
            json!({ n: known(&f.rev(path), size, ty) }),
            "{n}"
        );
        assert!(r.trees.is_empty());
        // The repository is a hint only: not serialised.
        let a = &r.stage[n];
        assert!(matches!(a, ArtifactDescription::Known { repository: Some(r), .. } if r == "main"));
    }
    // In a sub-module.
    let r = s.source_file(&file("sub", "deep/y.c")).unwrap();
    assert_eq!(
        stage_json(&r),
        json!({"deep/y.c": known(&f.rev("sub/deep/y.c"), 2, "f")})
    );
    // A symlink inside, pointing sideways.
    let r = s
        .source_file(&name("sub/deep", "ok-link", ReferenceKind::Symlink))
        .unwrap();
    assert_eq!(
        stage_json(&r),
        json!({"ok-link": known(&f.rev("sub/deep/ok-link"), 3, "l")})
    );
}

#[test]
fn directory_root_files_are_local() {
    let f = fixture(false);
    let s = sources_for(f.dir_root(false));
    for (module, n, path) in [
        ("", "a.txt", "a.txt"),
        ("", "run.sh", "run.sh"),
        ("", "link", "link"),
        ("", "sub/x.c", "sub/x.c"),
        ("sub", "deep/y.c", "sub/deep/y.c"),
        ("sub", "./x.c", "sub/x.c"),
        ("mod", "m.txt", "mod/m.txt"),
    ] {
        let r = s.source_file(&file(module, n)).unwrap();
        assert_eq!(stage_json(&r), json!({ n: local(path) }), "{module} {n}");
    }
}

#[test]
fn source_file_errors() {
    let f = fixture(true);
    for root in [f.git_root(false), f.dir_root(false)] {
        let s = sources_for(root);
        for outside in ["../x", "/abs", "a/../../x"] {
            let e = s.source_file(&file("sub", outside)).unwrap_err();
            assert!(matches!(e, SourceError::OutsideModule(_)), "{e}");
            assert_eq!(
                e.to_string(),
                format!("Source file reference outside current module: {outside}")
            );
        }
        // A directory is not a source file; neither is a missing path.
        for missing in ["sub", "nope.txt", "sub/nope"] {
            let e = s.source_file(&file("", missing)).unwrap_err();
            assert!(
                matches!(e, SourceError::NoSourceFile { .. }),
                "{missing}: {e}"
            );
        }
    }
    let s = sources_for(f.git_root(false));
    let e = s.source_file(&file("sub", "nope.c")).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"Cannot determine source file "nope.c" in directory "sub" of repository "main""#
    );
    // An absolute symlink in a git root is not a valid source.
    let e = s.source_file(&file("bad", "abs-link")).unwrap_err();
    assert!(matches!(e, SourceError::NoSourceFile { .. }), "{e}");
    let e = s.source_file(&file("bad", "up")).unwrap_err();
    assert!(matches!(e, SourceError::NoSourceFile { .. }), "{e}");
    // Other files next to it are fine in a git root.
    assert!(s.source_file(&file("bad", "f")).is_ok());
    // A directory root reads the whole directory: the upwards link spoils it.
    let s = sources_for(f.dir_root(false));
    let e = s.source_file(&file("bad", "f")).unwrap_err();
    assert!(
        e.to_string().contains("Failed to read directory bad"),
        "{e}"
    );
    // ... unless special entries are ignored.
    let s = sources_for(f.dir_root(true));
    assert!(s.source_file(&file("bad", "f")).is_ok());
}

#[test]
fn ignore_special_roots_drop_symlinks() {
    let f = fixture(false);
    for root in [f.git_root(true), f.dir_root(true)] {
        let s = sources_for(root.clone());
        let e = s.source_file(&file("", "link")).unwrap_err();
        assert!(
            matches!(e, SourceError::NoSourceFile { .. }),
            "{root:?}: {e}"
        );
        assert!(s.source_file(&file("", "a.txt")).is_ok());
        let g = s.glob(&name("", "*", ReferenceKind::Glob)).unwrap();
        assert!(!g.stage.contains_key("link"));
        assert!(g.stage.contains_key("a.txt"));
        let r = SourceRoot::open(&root).unwrap();
        assert_eq!(r.lookup("link").unwrap(), Lookup::Missing);
        assert!(!r.exists("link").unwrap());
        assert!(!r.is_symlink("link").unwrap());
    }
}

#[test]
fn compatible_mode_rehashes_blobs_and_expands_trees() {
    let f = fixture(false);
    let s = sources_with(f.git_root(false), HashFunction::Sha256);
    let r = s.source_file(&file("", "a.txt")).unwrap();
    let want = HashFunction::Sha256.hash_bytes(ObjectKind::File, b"hello\n");
    assert_eq!(stage_json(&r), json!({"a.txt": known(&want, 6, "f")}));
    let t = s.tree(&name("", "sub", ReferenceKind::Tree)).unwrap();
    assert!(matches!(t.stage["sub"], ArtifactDescription::Tree { .. }));
}

// ---------------------------------------------------------------- roots

#[test]
fn root_queries() {
    let f = fixture(true);
    for root in [f.git_root(false), f.dir_root(false)] {
        let r = SourceRoot::open(&root).unwrap();
        assert!(r.is_file("a.txt").unwrap());
        assert!(r.is_file("run.sh").unwrap());
        assert!(!r.is_file("link").unwrap());
        assert!(r.is_symlink("link").unwrap());
        assert!(!r.is_symlink("bad/abs-link").unwrap());
        assert!(!r.is_symlink("bad/up").unwrap());
        assert!(r.is_blob("link").unwrap());
        assert!(r.is_directory("sub").unwrap());
        assert!(r.is_directory("").unwrap());
        assert!(r.is_directory(".").unwrap());
        assert!(!r.is_directory("a.txt").unwrap());
        assert!(!r.is_file("nope").unwrap());
        assert!(!r.is_file("a.txt/x").unwrap());
        assert_eq!(r.read_content("a.txt").unwrap().unwrap(), b"hello\n");
        assert_eq!(r.read_content("link").unwrap().unwrap(), b"a.txt");
        assert_eq!(r.read_content("bad/abs-link").unwrap(), None);
        assert_eq!(r.read_content("sub").unwrap(), None);
        let d = r.read_directory("sub").unwrap();
        let files: Vec<_> = d.files().collect();
        assert_eq!(files, vec!["x.c"]);
        assert!(d.directories().any(|x| x == "deep"));
        // Git roots check symlinks at any depth, directory roots only
        // the entries read.
        assert_eq!(r.read_directory(".").is_err(), r.is_git());
        assert!(r.read_directory("bad").is_err());
        assert!(r.directory_entries("nope").unwrap().is_empty());
        assert!(r.directory_entries("a.txt").unwrap().is_empty());
    }
    // Only git roots know their trees, and only unmodified ones.
    let g = SourceRoot::open(&f.git_root(false)).unwrap();
    let d = g.read_directory("sub").unwrap();
    assert_eq!(d.known_tree.as_ref().unwrap().0, f.rev("sub"));
    let g = SourceRoot::open(&f.git_root(true)).unwrap();
    assert!(g.read_directory("sub").unwrap().known_tree.is_none());
    assert!(
        g.read_directory(".").is_ok(),
        "ignore-special skips bad links"
    );
    // Absent and unresolved roots.
    let absent = FileRoot::GitTree {
        tree: f.tree.clone(),
        repository: None,
        ignore_special: false,
    };
    let r = SourceRoot::open(&absent).unwrap();
    assert!(r.is_absent());
    assert!(r.is_file("a.txt").is_err());
    let missing = FileRoot::git_tree(&"0".repeat(40), f.ws.join(".git"));
    assert!(SourceRoot::open(&missing).is_err());
}

// ---------------------------------------------------------------- trees

#[test]
fn git_tree_reference_is_a_known_tree() {
    let f = fixture(false);
    let s = sources_for(f.git_root(false));
    let t = s.tree(&name("", "sub", ReferenceKind::Tree)).unwrap();
    let id = f.rev("sub");
    let size: u64 = git(&f.ws, &["cat-file", "-s", &id]).parse().unwrap();
    assert_eq!(stage_json(&t), json!({"sub": known(&id, size, "t")}));
    assert!(t.trees.is_empty());
    let t = s.tree(&name("sub", "deep", ReferenceKind::Tree)).unwrap();
    assert_eq!(
        t.stage["deep"].to_json()["data"]["id"],
        json!(f.rev("sub/deep"))
    );
}

#[test]
fn expanded_tree_references() {
    let f = fixture(false);
    for (root, ignore) in [(f.dir_root(false), false), (f.git_root(true), true)] {
        let s = sources_for(root);
        let t = s.tree(&name("", "sub", ReferenceKind::Tree)).unwrap();
        // Own tree first, then the nested ones.
        let own = &t.trees[0];
        assert_eq!(t.stage["sub"], ArtifactDescription::tree(own.id.clone()));
        let keys: Vec<_> = own.inputs.keys().cloned().collect();
        assert_eq!(
            keys,
            vec!["deep", "empty-in-fs", "x.c"]
                .into_iter()
                .filter(|k| !(ignore && *k == "empty-in-fs"))
                .map(String::from)
                .collect::<Vec<_>>()
        );
        let deep = &t.trees[1];
        assert_eq!(
            own.inputs["deep"],
            ArtifactDescription::tree(deep.id.clone())
        );
        assert_eq!(
            own.id,
            tree_id(own.inputs.iter().map(|(k, v)| (k.as_str(), v)))
        );
        if ignore {
            assert!(!deep.inputs.contains_key("ok-link"));
            assert_eq!(
                deep.inputs["y.c"],
                ArtifactDescription::known(f.rev("sub/deep/y.c"), 2, ObjectKind::File)
            );
        } else {
            assert_eq!(
                deep.to_json(),
                json!({"ok-link": local("sub/deep/ok-link"), "y.c": local("sub/deep/y.c")})
            );
        }
    }
    // A missing directory is an empty tree, not an error.
    let s = sources_for(f.dir_root(false));
    let t = s.tree(&name("", "nope", ReferenceKind::Tree)).unwrap();
    let empty = tree_id([]);
    assert_eq!(t.stage["nope"], ArtifactDescription::tree(empty));
    assert_eq!(t.trees[0].description_text(), "{}");
    // Also for git roots (no known tree for a missing directory).
    let s = sources_for(f.git_root(false));
    let t = s.tree(&name("", "nope", ReferenceKind::Tree)).unwrap();
    assert!(matches!(t.stage["nope"], ArtifactDescription::Tree { .. }));
}

#[test]
fn tree_with_upwards_symlink_fails() {
    let f = fixture(true);
    for root in [f.git_root(false), f.dir_root(false)] {
        let s = sources_for(root);
        let e = s.tree(&name("", "bad", ReferenceKind::Tree)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("While analysing [\"@\",\"main\",\"TREE\",\"\",\"bad\"] as explicit tree reference:"), "{msg}");
    }
}

// ---------------------------------------------------------------- globs

#[test]
fn globs_match_files_and_symlinks_of_one_directory() {
    let f = fixture(false);
    let s = sources_for(f.git_root(false));
    let g = |p: &str| -> Vec<String> {
        s.glob(&name("", p, ReferenceKind::Glob))
            .unwrap()
            .stage
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(g("*.txt"), vec![".hidden.txt", "a.txt"]);
    assert_eq!(
        g("*"),
        vec![".hidden.txt", "TARGETS", "a.txt", "b.c", "link", "run.sh"]
    );
    assert_eq!(g("l*"), vec!["link"]);
    assert_eq!(g("[ab].*"), vec!["a.txt", "b.c"]);
    assert_eq!(g("?.c"), vec!["b.c"]);
    assert!(g("sub").is_empty(), "directories are not matched");
    assert!(g("sub/*").is_empty(), "only one directory");
    assert!(g("nothing*").is_empty());
    // Defined targets of the same name do not matter.
    assert!(g("defined").is_empty());
    let r = s.glob(&name("sub", "*.c", ReferenceKind::Glob)).unwrap();
    assert_eq!(
        stage_json(&r),
        json!({"x.c": known(&f.rev("sub/x.c"), 2, "f")})
    );
    // A glob in a missing directory is empty.
    assert!(s
        .glob(&name("nope", "*", ReferenceKind::Glob))
        .unwrap()
        .stage
        .is_empty());
    let d = sources_for(f.dir_root(false));
    let r = d.glob(&name("", "*.c", ReferenceKind::Glob)).unwrap();
    assert_eq!(stage_json(&r), json!({"b.c": local("b.c")}));
}

// ---------------------------------------------------------------- files of modules

#[test]
fn targets_files_and_implicit_sources() {
    let f = fixture(false);
    for root in [f.git_root(false), f.dir_root(false)] {
        let s = sources_for(root);
        let t = s.targets_file("main", "").unwrap();
        assert!(t.contains_key("defined"));
        assert_eq!(
            s.targets_file("main", "mod").unwrap()["t"],
            json!({"type": "install"})
        );
        assert_eq!(s.targets_file("main", "./mod/").unwrap().len(), 1);
        // Defined names are not source targets (even if a file exists).
        assert!(s
            .source_target(&name("", "a.txt", ReferenceKind::Target))
            .unwrap()
            .is_none());
        assert!(s
            .source_target(&name("", "defined", ReferenceKind::Target))
            .unwrap()
            .is_none());
        // Undefined ones are implicit source targets.
        let r = s
            .source_target(&name("", "b.c", ReferenceKind::Target))
            .unwrap()
            .unwrap();
        assert!(r.stage.contains_key("b.c"));
        let r = s
            .source_target(&name("mod", "m.txt", ReferenceKind::Target))
            .unwrap()
            .unwrap();
        assert!(r.stage.contains_key("m.txt"));
        // Explicit FILE references work whether defined or not.
        assert!(s.source_target(&file("", "a.txt")).unwrap().is_some());
        // Missing: module without a targets file; undefined name without file.
        let e = s
            .source_target(&name("sub", "x.c", ReferenceKind::Target))
            .unwrap_err();
        assert!(
            matches!(e, SourceError::FileMissing(ref p) if p == "sub/TARGETS"),
            "{e}"
        );
        assert_eq!(e.to_string(), "JSON file sub/TARGETS does not exist.");
        let e = s
            .source_target(&name("", "zzz", ReferenceKind::Target))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("as implicit source target:\nCannot determine source file \"zzz\""),
            "{e}"
        );
        // Rules and expressions files, mandatory too.
        assert!(s.rules_file("main", "mod").unwrap().contains_key("r"));
        assert!(matches!(
            s.expressions_file("main", "mod"),
            Err(SourceError::FileMissing(_))
        ));
        assert!(
            matches!(s.rules_file("main", ""), Err(SourceError::FileMissing(ref p)) if p == "RULES")
        );
        assert!(matches!(
            s.targets_file("other", ""),
            Err(SourceError::UnknownRepository(_))
        ));
        assert!(matches!(
            s.targets_file("main", "../x"),
            Err(SourceError::ModuleOutside(_))
        ));
    }
}

#[test]
fn malformed_and_renamed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    for (dir, text) in [
        ("bad", "{\"a\": "),
        ("list", "[1, 2]"),
        ("comment", "// no comments\n{}"),
        ("dups", r#"{"a": {"type": "x"}, "a": {"type": "y"}}"#),
        ("empty", ""),
        ("bom", "\u{feff}{\"b\": {\"type\": \"install\"}}"),
    ] {
        std::fs::create_dir_all(ws.join(dir)).unwrap();
        std::fs::write(ws.join(dir).join("TARGETS"), text).unwrap();
    }
    std::fs::create_dir_all(ws.join("renamed")).unwrap();
    std::fs::write(
        ws.join("renamed/targets.json"),
        r#"{"x": {"type": "install"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(ws.join("linked")).unwrap();
    std::os::unix::fs::symlink("../renamed/targets.json", ws.join("linked/TARGETS")).unwrap();
    let s = sources_for(FileRoot::Directory {
        path: ws.to_path_buf(),
        ignore_special: false,
    });
    let e = s.targets_file("main", "bad").unwrap_err();
    assert!(matches!(e, SourceError::InvalidJson { .. }));
    assert!(
        e.to_string()
            .starts_with("JSON file bad/TARGETS does not contain valid JSON:\n"),
        "{e}"
    );
    assert!(matches!(
        s.targets_file("main", "comment"),
        Err(SourceError::InvalidJson { .. })
    ));
    assert!(matches!(
        s.targets_file("main", "empty"),
        Err(SourceError::InvalidJson { .. })
    ));
    let e = s.targets_file("main", "list").unwrap_err();
    assert_eq!(e.to_string(), "JSON in list/TARGETS is not an object.");
    assert_eq!(
        s.targets_file("main", "dups").unwrap()["a"],
        json!({"type": "y"})
    );
    assert!(s.targets_file("main", "bom").unwrap().contains_key("b"));
    // A symlinked targets file is not a file.
    assert!(matches!(
        s.targets_file("main", "linked"),
        Err(SourceError::FileMissing(_))
    ));

    let mut info = RepositoryInfo::new(FileRoot::Directory {
        path: ws.to_path_buf(),
        ignore_special: false,
    });
    info.target_file_name = "targets.json".into();
    let config = RepositoryConfig {
        main: "main".into(),
        repositories: BTreeMap::from([("main".to_string(), info)]),
    };
    let s = RepoReader::new(Arc::new(config), HashFunction::GitSha1);
    assert!(s
        .read_json_file(FileKind::Targets, "main", "renamed")
        .unwrap()
        .contains_key("x"));
    let e = s.targets_file("main", "bad").unwrap_err();
    assert_eq!(e.to_string(), "JSON file bad/targets.json does not exist.");
}

#[test]
fn absent_roots_cannot_be_read() {
    let f = fixture(false);
    let s = sources_for(FileRoot::GitTree {
        tree: f.tree.clone(),
        repository: None,
        ignore_special: false,
    });
    let e = s.targets_file("main", "mod").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Would have to read JSON file mod/TARGETS of absent root {}.",
            f.tree
        )
    );
    assert!(s.glob(&name("", "*", ReferenceKind::Glob)).is_err());
}

#[test]
fn results_are_values() {
    let f = fixture(false);
    let s = sources_for(f.git_root(false));
    let r = s.source_file(&file("", "a.txt")).unwrap();
    let v = r.result_value();
    let res = v.as_result().unwrap();
    assert_eq!(res.artifact_stage, res.runfiles);
    assert_eq!(res.provides, jserve::build::value::Value::empty_map());
    let a = res.artifact_stage.get("a.txt").unwrap();
    assert_eq!(
        ArtifactDescription::from_value(a, HashFunction::GitSha1).unwrap(),
        r.stage["a.txt"]
    );
}

// ---------------------------------------------------------------- against the reference

/// The stage with the ids of built trees recomputed as releases before 1.6
/// did: SHA-256 of the description alone (nested trees first).
fn with_legacy_tree_ids(t: &SourceTarget) -> Json {
    use sha2::{Digest, Sha256};
    let mut legacy: BTreeMap<String, String> = BTreeMap::new();
    // Nested trees come after their parents: compute from the end.
    for tree in t.trees.iter().rev() {
        let inputs: BTreeMap<String, ArtifactDescription> = tree
            .inputs
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ArtifactDescription::Tree { id } => {
                        ArtifactDescription::tree(legacy[id].clone())
                    }
                    other => other.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        let text = jserve::build::artifact::tree_description_text(
            inputs.iter().map(|(k, v)| (k.as_str(), v)),
        );
        legacy.insert(
            tree.id.clone(),
            hex::encode(Sha256::digest(text.as_bytes())),
        );
    }
    Json::Object(
        t.stage
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ArtifactDescription::Tree { id } => {
                        ArtifactDescription::tree(legacy[id].clone())
                    }
                    other => other.clone(),
                };
                (k.clone(), v.to_json())
            })
            .collect(),
    )
}

/// `just analyse --dump-result` of an `install` target whose deps are the
/// references compared: its artifacts are the union of theirs.
/// `None` when `just` fails.
fn reference_artifacts(just: &Path, config: &Path, lbr: &Path, target: &str) -> Option<Json> {
    let out_file = config.with_extension("out.json");
    let out = Command::new(just)
        .args(["analyse", "-C"])
        .arg(config)
        .arg("--local-build-root")
        .arg(lbr)
        .arg("--dump-result")
        .arg(&out_file)
        .args(["", target])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let j: Json = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    Some(j["artifacts"].clone())
}

#[test]
fn source_targets_match_just_analyse() {
    let Some(just) = reference::reference_just() else {
        return;
    };
    let all = json!([
        "b.c",
        ["FILE", null, "run.sh"],
        ["SYMLINK", null, "link"],
        ["FILE", null, "link"],
        ["TREE", null, "sub"],
        ["GLOB", null, "*.txt"],
        ["GLOB", null, "*"],
        ["TREE", null, "nope"],
        "sub/x.c",
        "sub/deep/ok-link"
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    write_tree(&ws, false);
    // One comparison target per reference, in the top-level TARGETS.
    let mut targets = serde_json::Map::new();
    targets.insert("a.txt".into(), json!({"type": "install"}));
    for (i, dep) in all.as_array().unwrap().iter().enumerate() {
        targets.insert(
            format!("cmp-{i}"),
            json!({"type": "install", "deps": [dep]}),
        );
    }
    std::fs::write(ws.join("TARGETS"), serde_json::to_string(&targets).unwrap()).unwrap();
    let top = tmp.path().join("top");
    std::fs::create_dir_all(&top).unwrap();
    let forward: serde_json::Map<String, Json> = (0..all.as_array().unwrap().len())
        .map(|i| {
            let t = format!("cmp-{i}");
            let v = json!({"type": "install", "deps": [["@", "m", "", t]]});
            (t, v)
        })
        .collect();
    std::fs::write(
        top.join("TARGETS"),
        serde_json::to_string(&forward).unwrap(),
    )
    .unwrap();
    git(&ws, &["init", "-q", "."]);
    git(&ws, &["add", "-A"]);
    git(
        &ws,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "x",
        ],
    );
    let tree = git(&ws, &["rev-parse", "HEAD^{tree}"]);
    let lbr = tmp.path().join("lbr");
    let cases = [
        ("git", json!(["git tree", tree, ws.join(".git")])),
        (
            "git-is",
            json!(["git tree ignore-special", tree, ws.join(".git")]),
        ),
        ("file", json!(["file", ws])),
        ("file-is", json!(["file ignore-special", ws])),
    ];
    let mut compared = 0;
    // Releases before 1.6 hashed tree descriptions without the "TREE:"
    // prefix the reference code has since (commit 29a29614).
    let version: Json =
        serde_json::from_slice(&Command::new(&just).arg("version").output().unwrap().stdout)
            .unwrap();
    let legacy_tree_ids =
        version["version"][0] == json!(1) && version["version"][1].as_u64() < Some(6);
    for (label, root) in cases {
        let config_path = tmp.path().join(format!("{label}.json"));
        // The compared repository is not the main one: `just` replaces a
        // main repository's file root by a plain one (dropping
        // ignore-special), which is a property of its command line, not of
        // the analysis.
        let config = json!({"main": "top", "repositories": {
            "main": {"workspace_root": root},
            "top": {"workspace_root": ["file", top], "bindings": {"m": "main"}}
        }});
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let parsed = RepositoryConfig::from_json(&config, None).unwrap();
        let s = RepoReader::new(Arc::new(parsed), HashFunction::GitSha1);
        let current = NamedTarget::new("main", "", "cmp");
        for (i, dep) in all.as_array().unwrap().iter().enumerate() {
            let n = jserve::build::names::parse_entity_name(dep, &current, &|_, _| None).unwrap();
            let ours = s.source_target(&n).map(|r| r.expect("a source target"));
            // Releases before 1.6 saw symlinks three levels down in
            // ignore-special git roots (the lookup lost the flag below the
            // first level, and `IsSymlink` did not check it); the code since
            // reports them missing, as we do.
            if legacy_tree_ids && label == "git-is" && *dep == json!("sub/deep/ok-link") {
                assert!(ours.is_err());
                compared += 1;
                continue;
            }
            match reference_artifacts(&just, &config_path, &lbr, &format!("cmp-{i}")) {
                Some(want) => {
                    let ours = ours.unwrap_or_else(|e| panic!("{label} {dep}: {e}"));
                    let ours = if legacy_tree_ids {
                        with_legacy_tree_ids(&ours)
                    } else {
                        stage_json(&ours)
                    };
                    assert_eq!(ours, want, "{label} {dep}");
                }
                None => assert!(ours.is_err(), "{label} {dep}: just fails, we do not"),
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 4 * all.as_array().unwrap().len());
}
