//! Entity names, the repository configuration, repository keys and
//! target-cache keys; the keys also against vectors recorded from the
//! reference `just` 1.5.1 (fixtures/keys, see its README).

use jserve::build::json::dump_pretty;
use jserve::build::keys::{
    bisimulation, export_target_key, repository_graph, repository_key, target_cache_key,
    RepoKeyError,
};
use jserve::build::names::{
    normal_module_name, parse_entity_name, EntityName, NameError, NamedTarget, ReferenceKind,
};
use jserve::build::repo_config::{FileRoot, RepoConfigError, RepositoryConfig};
use jserve::digest::{HashFunction, ObjectKind};
use serde_json::{json, Value};
use std::path::PathBuf;

const T1: &str = "1111111111111111111111111111111111111111";
const T2: &str = "2222222222222222222222222222222222222222";
const T3: &str = "3333333333333333333333333333333333333333";

fn conf(v: Value) -> RepositoryConfig {
    RepositoryConfig::from_json(&v, None).expect("valid configuration")
}

fn bindings_conf() -> RepositoryConfig {
    conf(json!({"main": "main", "repositories": {
        "main": {"workspace_root": ["file", "/src"], "bindings": {"rules": "rules-repo"}},
        "rules-repo": {"workspace_root": ["file", "/rules"]}}}))
}

fn parse(v: Value, repo: &str, module: &str) -> Result<NamedTarget, NameError> {
    let c = bindings_conf();
    let lookup = c.binding_lookup();
    parse_entity_name(&v, &NamedTarget::new(repo, module, ""), &lookup)
}

fn ok(v: Value, module: &str) -> NamedTarget {
    parse(v, "main", module).expect("parses")
}

// ---------------------------------------------------------------- names

#[test]
fn name_bare_string_is_in_current_module() {
    assert_eq!(
        ok(json!("lib"), "a/b"),
        NamedTarget::new("main", "a/b", "lib")
    );
    // names are not normalised, only modules
    assert_eq!(ok(json!("../x"), "a").name, "../x");
}

#[test]
fn name_module_and_name_pair() {
    assert_eq!(
        ok(json!(["x/y", "t"]), "a"),
        NamedTarget::new("main", "x/y", "t")
    );
    assert_eq!(ok(json!(["./x//y/", "t"]), "a").module, "x/y");
    assert_eq!(ok(json!([".", "t"]), "a").module, "");
    assert_eq!(ok(json!(["", "t"]), "a").module, "");
    assert_eq!(ok(json!(["../../x", "t"]), "a").module, "x");
    // markers are just module names in a pair
    assert_eq!(
        ok(json!(["./", "t"]), "a"),
        NamedTarget::new("main", "", "t")
    );
    assert_eq!(ok(json!(["FILE", "t"]), "a").module, "FILE");
}

#[test]
fn name_relative_module() {
    assert_eq!(ok(json!(["./", "c", "t"]), "a/b").module, "a/b/c");
    assert_eq!(ok(json!(["./", "..", "t"]), "a/b").module, "a");
    assert_eq!(ok(json!(["./", ".", "t"]), "a/b").module, "a/b");
    assert_eq!(ok(json!(["./", "../../x", "t"]), "a/b").module, "x");
    // quirk kept: exactly ".." from the top is clamped
    assert_eq!(ok(json!(["./", "..", "t"]), "").module, "");
}

#[test]
fn name_relative_outside_workspace() {
    let e = parse(json!(["./", "../x", "t"]), "main", "").unwrap_err();
    assert!(matches!(e, NameError::OutsideWorkspace { .. }));
    assert_eq!(
        e.to_string(),
        "Relative module name ../x is outside of workspace\nSyntactically invalid entity name: [\"./\",\"../x\",\"t\"]."
    );
    assert!(parse(json!(["./", "../../y", "t"]), "main", "a").is_err());
}

#[test]
fn name_through_bindings() {
    assert_eq!(
        ok(json!(["@", "rules", "cc/", "library"]), "a"),
        NamedTarget::new("rules-repo", "cc", "library")
    );
    let e = parse(json!(["@", "nope", "", "x"]), "main", "").unwrap_err();
    assert_eq!(
        e,
        NameError::UnknownBinding {
            local: "nope".into(),
            source_json: r#"["@","nope","","x"]"#.into()
        }
    );
    assert!(e
        .to_string()
        .starts_with("Cannot resolve repository name nope\n"));
    // bindings are those of the current repository
    assert!(parse(json!(["@", "rules", "", "x"]), "rules-repo", "").is_err());
    // wrong arity or types
    for bad in [
        json!(["@", "rules", "x"]),
        json!(["@", "rules", "", "x", "y"]),
        json!(["@", "rules", 1, "x"]),
    ] {
        assert!(matches!(
            parse(bad, "main", "").unwrap_err(),
            NameError::Invalid { .. }
        ));
    }
}

#[test]
fn name_file_system_references() {
    for (marker, kind) in [
        ("FILE", ReferenceKind::File),
        ("TREE", ReferenceKind::Tree),
        ("GLOB", ReferenceKind::Glob),
        ("SYMLINK", ReferenceKind::Symlink),
    ] {
        for module in [json!(null), json!("."), json!("a/b")] {
            let n = ok(json!([marker, module, "x.c"]), "a/b");
            assert_eq!(n, NamedTarget::with_kind("main", "a/b", "x.c", kind));
            assert!(!n.is_definition_name());
        }
        let e = parse(json!([marker, "other", "x"]), "main", "a/b").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Invalid module name \"other\" for file reference\nSyntactically invalid entity name: [\"{marker}\",\"other\",\"x\"].")
        );
        // "./" is not "." here
        assert!(parse(json!([marker, "./", "x"]), "main", "a").is_err());
        assert!(matches!(
            parse(json!([marker, null, "x", "y"]), "main", "").unwrap_err(),
            NameError::Invalid { .. }
        ));
        assert!(matches!(
            parse(json!([marker, null, 3]), "main", "").unwrap_err(),
            NameError::Invalid { .. }
        ));
    }
    // in the top module, "" is the current module
    assert_eq!(ok(json!(["FILE", "", "x"]), "").kind, ReferenceKind::File);
}

#[test]
fn name_syntax_errors() {
    for bad in [
        json!(3),
        json!(null),
        json!({"a": "b"}),
        json!([]),
        json!(["x"]),
        json!(["a", 1]),
        json!([1, "a", "b"]),
        json!(["x", "y", "z"]),
        json!(["./", "a", "b", "c"]),
    ] {
        let e = parse(bad.clone(), "main", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Syntactically invalid entity name: {}.",
                serde_json::to_string(&bad).unwrap()
            )
        );
    }
    let e = parse(json!(["#", "a", "b"]), "main", "").unwrap_err();
    assert!(matches!(e, NameError::Anonymous { .. }));
    assert!(e
        .to_string()
        .contains("Parsing anonymous target is not supported"));
}

#[test]
fn name_json_rendering() {
    assert_eq!(
        NamedTarget::new("main", "a/b/", "t").to_string(),
        r#"["@","main","a/b","t"]"#
    );
    assert_eq!(
        NamedTarget::with_kind("r", "", "x", ReferenceKind::Glob).to_json(),
        json!(["@", "r", "GLOB", "", "x"])
    );
    let anon = EntityName::Anonymous(jserve::build::names::AnonymousTarget {
        rule_map_id: "ab".into(),
        target_node_id: "cd".into(),
    });
    assert_eq!(anon.to_string(), r##"["#","ab","cd"]"##);
    // ordering: repository, module, name, kind
    let mut v = [
        NamedTarget::with_kind("r", "m", "n", ReferenceKind::Symlink),
        NamedTarget::with_kind("r", "m", "n", ReferenceKind::File),
        NamedTarget::new("r", "m", "n"),
        NamedTarget::new("a", "z", "z"),
    ];
    v.sort();
    let kinds: Vec<_> = v.iter().map(|n| (n.repository.as_str(), n.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("a", ReferenceKind::Target),
            ("r", ReferenceKind::Target),
            ("r", ReferenceKind::File),
            ("r", ReferenceKind::Symlink)
        ]
    );
    assert_eq!(normal_module_name("./a/../b/"), "b");
}

// ---------------------------------------------------------------- configs

#[test]
fn config_defaults() {
    let c = conf(json!({"repositories": {
        "b": {"workspace_root": ["git tree", T1, "/repo"]},
        "a": {"workspace_root": ["file", "/ws"], "target_root": ["file", "/t"]}}}));
    assert_eq!(c.main, "a", "lexicographically first repository is main");
    let a = c.info("a").unwrap();
    assert_eq!(
        a.workspace_root,
        FileRoot::Directory {
            path: "/ws".into(),
            ignore_special: false
        }
    );
    assert_eq!(
        a.target_root,
        FileRoot::Directory {
            path: "/t".into(),
            ignore_special: false
        }
    );
    assert_eq!(
        a.rule_root, a.target_root,
        "rule root defaults to the target root"
    );
    assert_eq!(
        a.expression_root, a.rule_root,
        "expression root defaults to the rule root"
    );
    assert_eq!(
        (
            a.target_file_name.as_str(),
            a.rule_file_name.as_str(),
            a.expression_file_name.as_str()
        ),
        ("TARGETS", "RULES", "EXPRESSIONS")
    );
    assert!(a.bindings.is_empty());
    assert!(!c.is_content_fixed("a"));
    assert!(c.is_content_fixed("b"));
    assert!(!c.is_content_fixed("nonexistent"));
    let c = RepositoryConfig::from_json(
        &json!({"main": "a", "repositories": {"a": {"workspace_root": ["file", "/"]}, "b": {"workspace_root": ["file", "/"]}}}),
        Some("b"),
    )
    .unwrap();
    assert_eq!(c.main, "b", "--main wins");
}

#[test]
fn config_root_kinds() {
    let c = conf(json!({"main": "m", "repositories": {"m": {
        "workspace_root": ["git tree", T1, "/repo"],
        "target_root": ["git tree ignore-special", T2],
        "rule_root": ["file ignore-special", "/rules"],
        "expression_root": ["tree structure", "m", {"absent": true}],
        "target_file_name": "TARGETS.json", "rule_file_name": "R", "expression_file_name": "E",
        "bindings": {"self": "m"}, "unknown key": 1}}}));
    let m = c.info("m").unwrap();
    assert_eq!(m.workspace_root, FileRoot::git_tree(T1, "/repo"));
    assert!(!m.workspace_root.is_absent());
    assert_eq!(
        m.target_root,
        FileRoot::GitTree {
            tree: T2.into(),
            repository: None,
            ignore_special: true
        }
    );
    assert!(m.target_root.is_absent() && m.target_root.is_content_fixed());
    assert_eq!(
        m.target_root.content_description(),
        Some(json!(["git tree ignore-special", T2]))
    );
    assert_eq!(
        m.rule_root,
        FileRoot::Directory {
            path: PathBuf::from("/rules"),
            ignore_special: true
        }
    );
    assert_eq!(m.rule_root.content_description(), None);
    assert_eq!(
        m.expression_root,
        FileRoot::TreeStructure {
            repository: "m".into(),
            absent: true
        }
    );
    assert_eq!(
        (m.target_file_name.as_str(), m.rule_file_name.as_str()),
        ("TARGETS.json", "R")
    );
    assert_eq!(m.expression_file_name, "E");
    assert_eq!(c.global_name("m", "self"), Some("m"));
    assert!(!m.is_content_fixed());
    let computed = FileRoot::parse(
        "m",
        "workspace_root",
        &json!(["computed", "m", "", "t", {"X": 1}, {"absent": true}]),
    )
    .unwrap();
    assert!(computed.is_absent() && !computed.is_content_fixed());
}

#[test]
fn config_errors() {
    let err = |v: Value| RepositoryConfig::from_json(&v, None).unwrap_err();
    assert_eq!(err(json!([])), RepoConfigError::NotAnObject);
    assert_eq!(err(json!({"main": 1})), RepoConfigError::MainNotString);
    assert_eq!(
        err(json!({"repositories": []})),
        RepoConfigError::RepositoriesNotObject
    );
    assert_eq!(
        err(json!({"main": "x", "repositories": {}})),
        RepoConfigError::NoWorkspaceRoot("x".into())
    );
    assert_eq!(
        err(json!({"repositories": {"a": {"target_root": ["file", "/"]}}})).to_string(),
        "Unknown workspace root for repository a"
    );
    assert_eq!(
        err(json!({"repositories": {"a": {"workspace_root": ["file", "/"], "bindings": {"x": "b"}}}})).to_string(),
        "Binding b for x in a does not refer to a defined repository."
    );
    assert_eq!(
        err(json!({"repositories": {"a": {"workspace_root": ["file", "/"], "bindings": ["b"]}}}))
            .to_string(),
        "bindings has to be a string-string map, but found [\"b\"]"
    );
    assert!(matches!(
        err(
            json!({"repositories": {"a": {"workspace_root": ["file", "/"], "bindings": {"x": 1}}}})
        ),
        RepoConfigError::BindingsNotMap(_)
    ));
    assert!(matches!(
        err(
            json!({"repositories": {"a": {"workspace_root": ["file", "/"], "target_file_name": 3}}})
        ),
        RepoConfigError::FileNameNotString { .. }
    ));
    for (root, msg) in [
        (json!("file"), "Expected workspace_root for a to be of the form [<scheme>, ...], but found \"file\""),
        (json!([]), "Expected workspace_root for a to be of the form [<scheme>, ...], but found []"),
        (json!(["file"]), "\"file\" scheme expects precisely one string argument, but found [\"file\"] for workspace_root of repository a"),
        (json!(["file", "/x", "y"]), "\"file\" scheme expects precisely one string argument, but found [\"file\",\"/x\",\"y\"] for workspace_root of repository a"),
        (json!(["git tree"]), "\"git tree\" scheme expects one or two string arguments, but found [\"git tree\"] for workspace_root of repository a"),
        (json!(["git tree ignore-special", T1, 3]), "\"git tree ignore-special\" scheme expects one or two string arguments, but found [\"git tree ignore-special\",\"1111111111111111111111111111111111111111\",3] for workspace_root of repository a"),
        (json!(["svn", "x"]), "Unknown scheme in the specification [\"svn\",\"x\"] of workspace_root of repository a"),
    ] {
        let e = err(json!({"repositories": {"a": {"workspace_root": root}}}));
        assert_eq!(e.to_string(), msg);
    }
    for root in [
        json!(["computed", "m", "", "t"]),
        json!(["computed", "m", "", "t", []]),
        json!(["computed", "m", "", "t", {}, {"absent": null}]),
        json!(["tree structure"]),
        json!(["tree structure", 1]),
        json!(["tree structure", "m", {"absent": 1}]),
    ] {
        assert!(
            FileRoot::parse("a", "target_root", &root).is_err(),
            "{root}"
        );
    }
    assert!(FileRoot::parse(
        "a",
        "target_root",
        &json!(["tree structure", "m", {"absent": null}])
    )
    .is_ok());
    assert!(matches!(
        RepositoryConfig::parse_str("{"),
        Err(RepoConfigError::Json(_))
    ));
}

// ---------------------------------------------------------------- keys

fn git_repo(tree: &str) -> Value {
    json!({"workspace_root": ["git tree", tree, "/repo"]})
}

#[test]
fn repository_key_single_repo() {
    let c = conf(json!({"repositories": {"m": git_repo(T1)}}));
    let k = repository_key(&c, "m", HashFunction::GitSha1).unwrap();
    let root = format!("[\n      \"git tree\",\n      \"{T1}\"\n    ]");
    let want = format!(
        "{{\n  \"0\": {{\n    \"bindings\": {{}},\n    \"expression_file_name\": \"EXPRESSIONS\",\n    \"expression_root\": {root},\n    \"rule_file_name\": \"RULES\",\n    \"rule_root\": {root},\n    \"target_file_name\": \"TARGETS\",\n    \"target_root\": {root},\n    \"workspace_root\": {root}\n  }}\n}}"
    );
    assert_eq!(k.json, want);
    assert_eq!(
        k.digest.hash,
        HashFunction::GitSha1.hash_bytes(ObjectKind::File, want.as_bytes())
    );
    assert_eq!(k.digest.size, want.len() as u64);
    let k256 = repository_key(&c, "m", HashFunction::Sha256).unwrap();
    assert_eq!(k256.json, want);
    assert_eq!(k256.hash().len(), 64);
}

#[test]
fn repository_key_identical_repos_merge() {
    let c = conf(json!({"repositories": {
        "main": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"b": "y", "a": "x"}},
        "x": git_repo(T2), "y": git_repo(T2)}}));
    let g = repository_graph(&c, "main").unwrap();
    assert_eq!(g["0"]["bindings"], json!({"a": "1", "b": "1"}));
    assert_eq!(g.as_object().unwrap().len(), 2);
    assert_eq!(
        repository_key(&c, "x", HashFunction::GitSha1),
        repository_key(&c, "y", HashFunction::GitSha1)
    );
    let canon = bisimulation(&c);
    assert_eq!(canon["x"], canon["y"]);
    assert_ne!(canon["x"], canon["main"]);
}

#[test]
fn repository_key_distinct_content_does_not_merge() {
    for other in [
        git_repo(T3),
        json!({"workspace_root": ["git tree ignore-special", T2, "/r"]}),
        json!({"workspace_root": ["git tree", T2, "/r"], "target_file_name": "T"}),
        json!({"workspace_root": ["git tree", T2, "/r"], "rule_root": ["git tree", T3]}),
        json!({"workspace_root": ["git tree", T2, "/r"], "bindings": {"z": "x"}}),
    ] {
        let c = conf(json!({"repositories": {
            "main": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"a": "x", "b": "y"}},
            "x": git_repo(T2), "y": other}}));
        let g = repository_graph(&c, "main").unwrap();
        assert_eq!(
            g["0"]["bindings"],
            json!({"a": "1", "b": "2"}),
            "{}",
            dump_pretty(&g)
        );
        assert_eq!(g.as_object().unwrap().len(), 3);
    }
}

#[test]
fn repository_key_merge_depends_on_bound_repos() {
    // x and y look alike but bind to different content: no merge; p and q bind
    // to merged repositories: merge.
    let c = conf(json!({"repositories": {
        "main": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"1": "x", "2": "y", "3": "p", "4": "q"}},
        "x": {"workspace_root": ["git tree", T2, "/r"], "bindings": {"d": "d1"}},
        "y": {"workspace_root": ["git tree", T2, "/r"], "bindings": {"d": "d2"}},
        "p": {"workspace_root": ["git tree", T2, "/r"], "bindings": {"d": "e1"}},
        "q": {"workspace_root": ["git tree", T2, "/r"], "bindings": {"d": "e2"}},
        "d1": git_repo(T1), "d2": git_repo(T3), "e1": git_repo(T3), "e2": git_repo(T3)}}));
    let canon = bisimulation(&c);
    assert_ne!(canon["x"], canon["y"]);
    assert_eq!(canon["p"], canon["q"]);
    assert_eq!(canon["p"], canon["y"], "y binds d2 which has e1's content");
    let g = repository_graph(&c, "main").unwrap();
    // Pre-order, bindings in lexicographic order: main=0, x=1, d1=2 (same
    // tree as main but no bindings, so distinct), y/p/q=3, d2/e1/e2=4.
    assert_eq!(
        g["0"]["bindings"],
        json!({"1": "1", "2": "3", "3": "3", "4": "3"})
    );
    assert_eq!(g["1"]["bindings"], json!({"d": "2"}));
    assert_eq!(g["3"]["bindings"], json!({"d": "4"}));
    assert_eq!(g.as_object().unwrap().len(), 5);
}

#[test]
fn repository_key_cycles() {
    // A -> B -> A with identical content: one node with a self-loop.
    let c = conf(json!({"repositories": {
        "A": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"peer": "B"}},
        "B": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"peer": "A"}},
        "C": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"peer": "C"}}}}));
    let g = repository_graph(&c, "A").unwrap();
    assert_eq!(g.as_object().unwrap().len(), 1);
    assert_eq!(g["0"]["bindings"], json!({"peer": "0"}));
    let ka = repository_key(&c, "A", HashFunction::GitSha1).unwrap();
    assert_eq!(ka, repository_key(&c, "B", HashFunction::GitSha1).unwrap());
    assert_eq!(
        ka,
        repository_key(&c, "C", HashFunction::GitSha1).unwrap(),
        "a self-loop is the same graph"
    );
    // A -> B -> A with different content: two nodes, ids by DFS order.
    let c = conf(json!({"repositories": {
        "A": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"peer": "B"}},
        "B": {"workspace_root": ["git tree", T2, "/r"], "bindings": {"peer": "A"}}}}));
    let ga = repository_graph(&c, "A").unwrap();
    let gb = repository_graph(&c, "B").unwrap();
    assert_eq!(ga["0"]["workspace_root"], json!(["git tree", T1]));
    assert_eq!(gb["0"]["workspace_root"], json!(["git tree", T2]));
    assert_eq!(ga["0"]["bindings"], json!({"peer": "1"}));
    assert_eq!(ga["1"]["bindings"], json!({"peer": "0"}));
    assert_ne!(ga, gb);
}

#[test]
fn repository_key_requires_content_fixed_closure() {
    let c = conf(json!({"repositories": {
        "m": {"workspace_root": ["git tree", T1, "/r"], "bindings": {"f": "f"}},
        "f": {"workspace_root": ["file", "/x"]},
        "half": {"workspace_root": ["git tree", T1, "/r"], "target_root": ["file", "/t"]},
        "absent": {"workspace_root": ["git tree", T1]}}}));
    assert_eq!(
        repository_key(&c, "m", HashFunction::GitSha1).unwrap_err(),
        RepoKeyError::NotContentFixed("f".into())
    );
    assert!(repository_key(&c, "half", HashFunction::GitSha1).is_err());
    assert!(
        repository_key(&c, "absent", HashFunction::GitSha1).is_ok(),
        "absent roots are content-fixed"
    );
    assert_eq!(
        repository_key(&c, "zzz", HashFunction::GitSha1).unwrap_err(),
        RepoKeyError::UnknownRepository("zzz".into())
    );
    // an absent root describes like a present one
    let present = conf(json!({"repositories": {"a": git_repo(T1)}}));
    assert_eq!(
        repository_key(&present, "a", HashFunction::GitSha1).unwrap(),
        repository_key(&c, "absent", HashFunction::GitSha1).unwrap()
    );
}

#[test]
fn target_cache_key_text() {
    let k = target_cache_key(
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c",
        "",
        "main",
        &json!({"ENV": null, "N": 3, "S": "a\"b"}),
        HashFunction::GitSha1,
    );
    let want = "{\n  \"effective_config\": \"{\\\"ENV\\\":null,\\\"N\\\":3.0,\\\"S\\\":\\\"a\\\\\\\"b\\\"}\",\n  \"repo_key\": \"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c\",\n  \"target_name\": \"[\\\"\\\",\\\"main\\\"]\"\n}";
    assert_eq!(k.json, want);
    assert_eq!(
        k.digest.hash,
        HashFunction::GitSha1.hash_bytes(ObjectKind::File, want.as_bytes())
    );
    assert!(!k.digest.is_tree);
}

#[test]
fn repository_description_round_trip_and_errors() {
    let c = conf(json!({"repositories": {
        "main": {"workspace_root": ["git tree", T1, "/r"], "rule_root": ["git tree ignore-special", T2, "/r"],
                 "target_file_name": "T", "bindings": {"a": "x", "b": "y"}},
        "x": {"workspace_root": ["git tree", T3, "/r"], "bindings": {"up": "main"}},
        "y": {"workspace_root": ["git tree", T3, "/r"], "bindings": {"up": "main"}}}}));
    let key = repository_key(&c, "main", HashFunction::GitSha1).unwrap();
    let desc: Value = serde_json::from_str(&key.json).unwrap();
    let known = |_: &str| Some(PathBuf::from("/cache"));
    let served = RepositoryConfig::from_repository_description(&desc, "0", &known).unwrap();
    assert_eq!(served.repositories.len(), 2);
    assert_eq!(
        served.info("0").unwrap().rule_root,
        FileRoot::GitTree {
            tree: T2.into(),
            repository: Some("/cache".into()),
            ignore_special: true
        }
    );
    assert_eq!(
        repository_key(&served, "0", HashFunction::GitSha1).unwrap(),
        key
    );

    let err = |d: Value, known: &dyn Fn(&str) -> Option<PathBuf>| {
        RepositoryConfig::from_repository_description(&d, "0", known)
            .unwrap_err()
            .to_string()
    };
    let all = |_: &str| Some(PathBuf::from("/cache"));
    let mut d = desc.clone();
    assert_eq!(
        err(json!({"1": desc["1"]}), &all),
        "Repository configuration does not contain expected main repository 0"
    );
    d["0"].as_object_mut().unwrap().remove("bindings");
    assert_eq!(err(d, &all), "Missing bindings for repository 0");
    let mut d = desc.clone();
    d["0"].as_object_mut().unwrap().remove("rule_file_name");
    assert_eq!(err(d, &all), "Missing rule_file_name for repository 0");
    let mut d = desc.clone();
    d["1"]["target_root"] = json!(["git tree", T3, "/some/repo"]);
    assert_eq!(
        err(d, &all),
        format!("Expected target_root to have absent Git tree format, but found [\"git tree\",\"{T3}\",\"/some/repo\"]")
    );
    let only = |t: &str| (t != T3).then(|| PathBuf::from("/cache"));
    assert_eq!(
        err(desc.clone(), &only),
        format!("workspace_root tree {T3} is not known")
    );
    let mut d = desc.clone();
    d["1"]["bindings"] = json!({"up": "7"});
    assert_eq!(
        err(d, &all),
        "Binding 7 for up in 1 does not refer to a defined repository."
    );
}

// ------------------------------------------------- vectors from `just` 1.5.1

fn fixture_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn keys_match_reference_vectors() {
    let files = fixture_files();
    assert!(files.len() >= 10, "fixtures/keys has the recorded vectors");
    let mut checked = 0;
    for file in files {
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let hf = match fx["hash"].as_str().unwrap() {
            "git-sha1" => HashFunction::GitSha1,
            "sha256" => HashFunction::Sha256,
            h => panic!("unknown hash {h}"),
        };
        let config = RepositoryConfig::from_json(&fx["repository_config"], None).unwrap();
        let entries = fx["entries"].as_array().unwrap();
        let mut found = std::collections::BTreeSet::new();
        for export in fx["exports"].as_array().unwrap() {
            let target = NamedTarget::new(
                export["repository"].as_str().unwrap(),
                export["target"][0].as_str().unwrap(),
                export["target"][1].as_str().unwrap(),
            );
            let (repo_key, key) =
                export_target_key(&config, &target, &export["effective_config"], hf).unwrap();
            let entry = entries
                .iter()
                .find(|e| e["key_id"] == key.hash())
                .unwrap_or_else(|| {
                    panic!("{}: no entry for {target}: {}", file.display(), key.json)
                });
            assert_eq!(
                entry["key_blob"].as_str().unwrap(),
                key.json,
                "{}",
                file.display()
            );
            assert_eq!(entry["repo_key_id"].as_str().unwrap(), repo_key.hash());
            assert_eq!(
                entry["repo_key_blob"].as_str().unwrap(),
                repo_key.json,
                "{}",
                file.display()
            );
            // serve's side: the description rebuilds a configuration whose
            // repository "0" has the same key
            let desc: Value = serde_json::from_str(&repo_key.json).unwrap();
            let served = RepositoryConfig::from_repository_description(&desc, "0", &|t| {
                Some(PathBuf::from(format!("/git/{t}")))
            })
            .unwrap();
            assert_eq!(repository_key(&served, "0", hf).unwrap(), repo_key);
            found.insert(key.hash().to_string());
            checked += 1;
        }
        assert_eq!(
            found.len(),
            entries.len(),
            "{}: every entry explained",
            file.display()
        );
    }
    assert!(checked >= 20);
}
