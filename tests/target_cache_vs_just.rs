//! Target-cache entries and shards against the reference `just`: it builds
//! export targets of a repository whose roots are git trees (so they are
//! cached) into a local build root; the entries it writes must parse, list
//! only objects it kept, and come out byte for byte the same when written
//! again by jserve. Where the entry replaced non-KNOWN artifacts, the result
//! as analysed (from `just analyse --dump-result --dump-nodes` in an empty
//! build root) is serialised with those replacements instead. Skipped (with a
//! `SKIPPED:` line) when the reference is not installed, except under CI.

mod common;

use common::git::git;
use common::reference;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use jserve::build::artifact::ArtifactDescription;
use jserve::build::cache_entry::{
    entry_objects, entry_text, non_known_artifacts, parse_entry, Replacements,
};
use jserve::build::value::{Kind, Node, TargetResult, Value};
use jserve::digest::{HashFunction, ObjectKind};
use jserve::storage::target_cache::{parse_object_info, BackendDescription, TargetCache};
use jserve::storage::BuildRoot;
use serde_json::{json, Value as Json};

const TARGETS: &str = r#"
{ "exported": {"type": "export", "target": "inner", "flexible_config": ["X"]}
, "inner": {"type": "provider", "srcs": ["data.txt"]}
, "outer": {"type": "export", "target": "user"}
, "user": {"type": "consumer", "deps": ["exported"]}
, "plain": {"type": "export", "target": "known only", "flexible_config": ["X"]}
, "known only": {"type": "known_only", "srcs": ["data.txt"]}
}
"#;

/// `provider` puts everything into provides: nested JSON, a shared subvalue,
/// ACTION, TREE, BLOB and source artifacts, a result, a value node and an
/// abstract node. `known_only` does the same with KNOWN artifacts only.
const RULES: &str = r#"
{ "provider":
  { "config_vars": ["X"]
  , "target_fields": ["srcs"]
  , "expression":
    { "type": "let*"
    , "bindings":
      [ [ "act"
        , { "type": "ACTION"
          , "outs": ["out.txt"]
          , "cmd": ["sh", "-c", "echo hello > out.txt"]
          }
        ]
      , [ "src"
        , { "type": "map_union"
          , "$1":
            { "type": "foreach"
            , "var": "x"
            , "range": {"type": "FIELD", "name": "srcs"}
            , "body": {"type": "DEP_ARTIFACTS", "dep": {"type": "var", "name": "x"}}
            }
          }
        ]
      , [ "nested"
        , { "type": "'"
          , "$1":
            { "x": [1, 2.5, {"y": null}, 1e20, -0.0]
            , "s": "str\n\"q\"\u0001 ü"
            , "b": true
            , "e": {}
            , "l": []
            }
          }
        ]
      , [ "shared"
        , [ {"type": "var", "name": "nested"}
          , {"type": "var", "name": "nested"}
          , {"type": "var", "name": "act"}
          ]
        ]
      , ["x", {"type": "var", "name": "X"}]
      , [ "res"
        , { "type": "RESULT"
          , "artifacts": {"type": "var", "name": "act"}
          , "runfiles": {"type": "var", "name": "src"}
          , "provides": {"type": "env", "vars": ["nested"]}
          }
        ]
      , ["vnode", {"type": "VALUE_NODE", "$1": {"type": "var", "name": "res"}}]
      , [ "anode"
        , { "type": "ABSTRACT_NODE"
          , "node_type": "foo"
          , "string_fields": {"type": "'", "$1": {"a": ["b", "c"]}}
          , "target_fields":
            { "type": "singleton_map"
            , "key": "deps"
            , "value": [{"type": "var", "name": "vnode"}]
            }
          }
        ]
      , ["blob", {"type": "BLOB", "data": "blob data"}]
      , [ "tree"
        , { "type": "TREE"
          , "$1":
            { "type": "map_union"
            , "$1": [{"type": "var", "name": "act"}, {"type": "var", "name": "src"}]
            }
          }
        ]
      ]
    , "body":
      { "type": "RESULT"
      , "artifacts":
        { "type": "map_union"
        , "$1":
          [ {"type": "var", "name": "act"}
          , {"type": "singleton_map", "key": "t", "value": {"type": "var", "name": "tree"}}
          ]
        }
      , "runfiles": {"type": "var", "name": "src"}
      , "provides":
        { "type": "env"
        , "vars": ["act", "src", "nested", "shared", "x", "res", "vnode", "anode", "blob", "tree"]
        }
      }
    }
  }
, "known_only":
  { "config_vars": ["X"]
  , "target_fields": ["srcs"]
  , "expression":
    { "type": "let*"
    , "bindings":
      [ [ "src"
        , { "type": "map_union"
          , "$1":
            { "type": "foreach"
            , "var": "x"
            , "range": {"type": "FIELD", "name": "srcs"}
            , "body": {"type": "DEP_ARTIFACTS", "dep": {"type": "var", "name": "x"}}
            }
          }
        ]
      , ["blob", {"type": "BLOB", "data": "blob data"}]
      , ["nested", {"type": "'", "$1": {"n": [[], {}, [[0.5]]], "s": "t"}}]
      , ["x", {"type": "var", "name": "X"}]
      , [ "res"
        , { "type": "RESULT"
          , "artifacts": {"type": "var", "name": "src"}
          , "runfiles": {"type": "singleton_map", "key": "b", "value": {"type": "var", "name": "blob"}}
          , "provides": {"type": "env", "vars": ["nested", "x"]}
          }
        ]
      , ["vnode", {"type": "VALUE_NODE", "$1": {"type": "var", "name": "res"}}]
      , [ "anode"
        , { "type": "ABSTRACT_NODE"
          , "node_type": "bar"
          , "target_fields": {"type": "singleton_map", "key": "d", "value": [{"type": "var", "name": "vnode"}]}
          }
        ]
      , ["shared", [{"type": "var", "name": "nested"}, {"type": "var", "name": "res"}, {"type": "var", "name": "nested"}]]
      ]
    , "body":
      { "type": "RESULT"
      , "artifacts": {"type": "var", "name": "src"}
      , "runfiles": {"type": "singleton_map", "key": "b", "value": {"type": "var", "name": "blob"}}
      , "provides": {"type": "env", "vars": ["src", "blob", "nested", "x", "res", "vnode", "anode", "shared"]}
      }
    }
  }
, "consumer":
  { "target_fields": ["deps"]
  , "expression":
    { "type": "RESULT"
    , "artifacts":
      { "type": "map_union"
      , "$1":
        { "type": "foreach"
        , "var": "d"
        , "range": {"type": "FIELD", "name": "deps"}
        , "body": {"type": "DEP_ARTIFACTS", "dep": {"type": "var", "name": "d"}}
        }
      }
    , "provides":
      { "type": "singleton_map"
      , "key": "p"
      , "value":
        { "type": "foreach"
        , "var": "d"
        , "range": {"type": "FIELD", "name": "deps"}
        , "body": {"type": "DEP_PROVIDES", "dep": {"type": "var", "name": "d"}, "provider": "shared"}
        }
      }
    }
  }
}
"#;

/// The project as a git repository; returns the path of its repos.json,
/// whose only repository has the committed tree as its root.
fn make_project(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("TARGETS"), TARGETS).unwrap();
    std::fs::write(src.join("RULES"), RULES).unwrap();
    std::fs::write(src.join("data.txt"), "data\n").unwrap();
    git(&src, &["init", "-q", "."]);
    git(&src, &["add", "-A"]);
    git(
        &src,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "t",
        ],
    );
    let tree = git(&src, &["rev-parse", "HEAD^{tree}"]);
    let repos = json!({"repositories": {"main": {
        "workspace_root": ["git tree", tree, src.to_str().unwrap()]}}});
    let path = dir.join("repos.json");
    std::fs::write(&path, repos.to_string()).unwrap();
    path
}

/// Equal texts, or a panic naming the first line that differs.
fn assert_same_text(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let line = got
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
    panic!(
        "{what}: texts differ from line {}: {:?} vs {:?}\n{want}",
        line + 1,
        got.lines().nth(line),
        want.lines().nth(line)
    );
}

fn run_just(just: &Path, args: &[&str]) -> String {
    let out = Command::new(just).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "just {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The target-cache shards of a build root: shard name → key hash → index text.
fn shards(lbr: &Path, hf: HashFunction) -> BTreeMap<String, BTreeMap<String, String>> {
    let tc = lbr
        .join("protocol-dependent/generation-0")
        .join(hf.storage_dir_name())
        .join("tc");
    let mut out = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(&tc) else {
        return out;
    };
    for shard in dirs {
        let shard = shard.unwrap();
        let mut entries = BTreeMap::new();
        for prefix in std::fs::read_dir(shard.path()).unwrap() {
            let prefix = prefix.unwrap();
            for rest in std::fs::read_dir(prefix.path()).unwrap() {
                let rest = rest.unwrap();
                let key = format!(
                    "{}{}",
                    prefix.file_name().to_string_lossy(),
                    rest.file_name().to_string_lossy()
                );
                entries.insert(key, std::fs::read_to_string(rest.path()).unwrap());
            }
        }
        out.insert(shard.file_name().to_string_lossy().into_owned(), entries);
    }
    out
}

/// A value from the reference's JSON dump of a result, nodes looked up in
/// its `--dump-nodes` output. The project's values are such that artifacts,
/// results and node references cannot be mistaken for plain maps.
fn decode(json: &Json, nodes: &Json, hf: HashFunction) -> Value {
    match json {
        Json::Object(o) => {
            let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
            let ty = o.get("type").and_then(Json::as_str);
            if keys == BTreeSet::from(["data", "type"]) {
                return ArtifactDescription::from_json(json, hf).unwrap().to_value();
            }
            if keys == BTreeSet::from(["id", "type"]) && ty == Some("NODE") {
                let def = &nodes[o["id"].as_str().unwrap()];
                let node = match def["type"].as_str().unwrap() {
                    "VALUE_NODE" => Node::Value(decode_result(&def["result"], nodes, hf)),
                    _ => Node::Abstract {
                        node_type: def["node_type"].as_str().unwrap().to_string(),
                        string_fields: decode(&def["string_fields"], nodes, hf),
                        target_fields: decode(&def["target_fields"], nodes, hf),
                    },
                };
                return Value::node(node);
            }
            if keys == BTreeSet::from(["artifact_stage", "provides", "runfiles"]) {
                return decode_result(json, nodes, hf);
            }
            Value::map(
                o.iter()
                    .map(|(k, v)| (k.clone(), decode(v, nodes, hf)))
                    .collect(),
            )
        }
        Json::Array(a) => Value::list(a.iter().map(|v| decode(v, nodes, hf)).collect()),
        atom => Value::from_json(atom),
    }
}

fn decode_result(json: &Json, nodes: &Json, hf: HashFunction) -> Value {
    let part = |k: &str| decode(&json[k], nodes, hf);
    Value::result(TargetResult {
        artifact_stage: part("artifact_stage"),
        runfiles: part("runfiles"),
        provides: part("provides"),
    })
}

/// Pairs the artifacts of `original` with those at the same places in
/// `cached` (the same value after the build replaced artifacts).
fn pair_artifacts(original: &Value, cached: &Value, out: &mut Replacements, hf: HashFunction) {
    match (original.kind(), cached.kind()) {
        (Kind::Artifact(_), Kind::Artifact(_)) => {
            let o = ArtifactDescription::from_value(original, hf).unwrap();
            let c = ArtifactDescription::from_value(cached, hf).unwrap();
            if !o.is_known() {
                out.insert(&o, c);
            }
        }
        (Kind::Map(a), Kind::Map(b)) => {
            assert_eq!(a.len(), b.len());
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                assert_eq!(ka, kb);
                pair_artifacts(va, vb, out, hf);
            }
        }
        (Kind::List(a), Kind::List(b)) => {
            assert_eq!(a.len(), b.len());
            for (va, vb) in a.iter().zip(b) {
                pair_artifacts(va, vb, out, hf);
            }
        }
        (Kind::Result(a), Kind::Result(b)) => {
            pair_artifacts(&a.artifact_stage, &b.artifact_stage, out, hf);
            pair_artifacts(&a.runfiles, &b.runfiles, out, hf);
            pair_artifacts(&a.provides, &b.provides, out, hf);
        }
        (Kind::Node(Node::Value(a)), Kind::Node(Node::Value(b))) => pair_artifacts(a, b, out, hf),
        (
            Kind::Node(Node::Abstract {
                string_fields: sa,
                target_fields: ta,
                ..
            }),
            Kind::Node(Node::Abstract {
                string_fields: sb,
                target_fields: tb,
                ..
            }),
        ) => {
            pair_artifacts(sa, sb, out, hf);
            pair_artifacts(ta, tb, out, hf);
        }
        (a, b) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{original} vs {cached}"
        ),
    }
}

/// The result of `target` as analysed by the reference in an empty build root.
fn analysed_result(
    just: &Path,
    dir: &Path,
    mode: &[&str],
    repos: &Path,
    config: &str,
    target: &str,
    hf: HashFunction,
) -> TargetResult {
    // Unique per mode, target and configuration.
    let tag = hf.hash_bytes(
        ObjectKind::File,
        format!("{mode:?}{config}{target}").as_bytes(),
    );
    let result_file = dir.join(format!("result-{tag}.json"));
    let lbr = dir.join(format!("analyse-{tag}"));
    let mut args = vec!["analyse", "-C", repos.to_str().unwrap()];
    args.extend_from_slice(mode);
    args.extend_from_slice(&[
        "--local-build-root",
        lbr.to_str().unwrap(),
        "-D",
        config,
        "--dump-result",
        result_file.to_str().unwrap(),
        "--dump-nodes",
        "-",
        target,
    ]);
    let nodes: Json = serde_json::from_str(&run_just(just, &args)).unwrap();
    let result: Json =
        serde_json::from_str(&std::fs::read_to_string(&result_file).unwrap()).unwrap();
    let part = |k: &str| decode(&result[k], &nodes, hf);
    TargetResult {
        artifact_stage: part("artifacts"),
        runfiles: part("runfiles"),
        provides: part("provides"),
    }
}

#[test]
fn entries_written_by_just_read_and_write_back_identically() {
    let Some(just) = reference::reference_just() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repos = make_project(dir.path());
    let config = r#"{"X": [3, "a", {"z": null}]}"#;
    let targets = ["exported", "outer", "plain"];
    let (mut byte_equal, mut replaced) = (0, 0);
    for (hf, mode) in [
        (HashFunction::GitSha1, &[][..]),
        (HashFunction::Sha256, &["--compatible"][..]),
    ] {
        let lbr = dir.path().join(format!("lbr-{}", hf.storage_dir_name()));
        for target in targets {
            let mut args = vec!["build", "-C", repos.to_str().unwrap()];
            args.extend_from_slice(mode);
            args.extend_from_slice(&["--local-build-root", lbr.to_str().unwrap()]);
            args.extend_from_slice(&["-D", config, target]);
            run_just(&just, &args);
        }
        // A plain local build uses the local backend's shard.
        let shards = shards(&lbr, hf);
        let local = BackendDescription::local();
        assert_eq!(
            shards.keys().collect::<Vec<_>>(),
            [&local.shard(hf)],
            "{}",
            hf.storage_dir_name()
        );
        let root = BuildRoot::open(&lbr).unwrap();
        let cas = root.cas(hf);
        assert_eq!(
            cas.read(ObjectKind::File, &local.shard(hf))
                .unwrap()
                .unwrap(),
            local.text().as_bytes()
        );
        let tc = TargetCache::open(&root, hf, local);
        let entries = &shards[&tc.dir().file_name().unwrap().to_string_lossy().to_string()];
        // `outer` implies `exported` without a value for X.
        assert_eq!(entries.len(), targets.len() + 1);

        let mut by_target = BTreeMap::new();
        for (key, index) in entries {
            let blob = parse_object_info(index, hf).unwrap();
            let hit = tc.read(key).unwrap().unwrap();
            assert_eq!(hit.blob, blob);
            let bytes = cas
                .read(ObjectKind::File, &blob.digest.hash)
                .unwrap()
                .unwrap();
            let text = String::from_utf8(bytes).unwrap();
            let entry = parse_entry(text.as_bytes(), hf).unwrap();
            assert!(entry.implied.contains(key), "own key is implied");
            assert!(non_known_artifacts(&entry.result, hf).unwrap().is_empty());
            // Everything the entry names was kept in the local CAS.
            let objects = entry_objects(&hit.json, hf).unwrap();
            assert!(!objects.is_empty());
            assert!(tc.missing_objects(&objects).is_empty(), "{objects:?}");
            // The key blob names the target.
            let key_blob: Json =
                serde_json::from_slice(&cas.read(ObjectKind::File, key).unwrap().unwrap()).unwrap();
            let name: Json =
                serde_json::from_str(key_blob["target_name"].as_str().unwrap()).unwrap();
            let target = name[1].as_str().unwrap().to_string();
            let config = key_blob["effective_config"].as_str().unwrap().to_string();
            by_target.insert((target, config), (key.clone(), text, entry));
        }
        assert_eq!(
            by_target
                .keys()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>(),
            ["exported", "exported", "outer", "plain"]
        );

        for ((target, cfg), (key, text, entry)) in &by_target {
            if target == "plain" {
                // Only KNOWN artifacts: the entry as read writes back identically.
                let again =
                    entry_text(&entry.result, &Replacements::new(), &entry.implied).unwrap();
                assert_same_text(
                    &again,
                    text,
                    &format!("{target} ({})", hf.storage_dir_name()),
                );
                // Storing it gives the same blob and index.
                let scratch = tempfile::tempdir().unwrap();
                let other = TargetCache::open(
                    &BuildRoot::open(scratch.path()).unwrap(),
                    hf,
                    BackendDescription::local(),
                );
                let blob = other.store(key, &again).unwrap();
                assert_eq!(&blob.to_string(), &entries[key]);
                byte_equal += 1;
                continue;
            }
            // The result as analysed, with the built artifacts as replacements.
            let original = analysed_result(&just, dir.path(), mode, &repos, cfg, target, hf);
            assert!(!non_known_artifacts(&original, hf).unwrap().is_empty());
            let mut repl = Replacements::new();
            pair_artifacts(
                &Value::result(original.clone()),
                &Value::result(entry.result.clone()),
                &mut repl,
                hf,
            );
            assert!(!repl.is_empty());
            let again = entry_text(&original, &repl, &entry.implied).unwrap();
            assert_same_text(
                &again,
                text,
                &format!("{target} ({})", hf.storage_dir_name()),
            );
            if target == "outer" {
                assert_eq!(entry.implied.len(), 2, "outer implies exported");
            }
            replaced += 1;
        }
    }
    assert_eq!((byte_equal, replaced), (2, 6));
}

/// A reference `just execute` on a free port, stopped on drop.
struct Execute {
    child: Child,
    port: u16,
}

impl Drop for Execute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_execute(just: &Path, dir: &Path) -> Execute {
    let info = dir.join("execute-info.json");
    let child = Command::new(just)
        .args(["execute", "-p", "0", "--local-build-root"])
        .arg(dir.join("execute-root"))
        .arg("--info-file")
        .arg(&info)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exec = Execute { child, port: 0 };
    exec.port = common::procs::wait_for_info_port(&info, || {
        let status = exec.child.try_wait().ok().flatten()?;
        Some(format!("just execute exited ({status})"))
    });
    exec
}

#[test]
fn shard_of_a_remote_backend_matches_just() {
    let Some(just) = reference::reference_just() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repos = make_project(dir.path());
    let exec = start_execute(&just, dir.path());
    let address = format!("127.0.0.1:{}", exec.port);
    let dispatch = json!([[{"runner": "x", "arch": "y"}, address]]);
    let dispatch_file = dir.path().join("dispatch.json");
    std::fs::write(&dispatch_file, dispatch.to_string()).unwrap();
    let lbr = dir.path().join("lbr");
    run_just(
        &just,
        &[
            "build",
            "-C",
            repos.to_str().unwrap(),
            "--local-build-root",
            lbr.to_str().unwrap(),
            "-r",
            &address,
            "--remote-execution-property",
            "foo:bar",
            "--remote-execution-property",
            "a:b",
            "--endpoint-configuration",
            dispatch_file.to_str().unwrap(),
            "plain",
        ],
    );
    let hf = HashFunction::GitSha1;
    let props = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let backend = BackendDescription::describe(
        Some(&address),
        &props(&[("foo", "bar"), ("a", "b")]),
        &[(props(&[("runner", "x"), ("arch", "y")]), address.clone())],
    );
    let found = shards(&lbr, hf);
    assert_eq!(found.keys().collect::<Vec<_>>(), [&backend.shard(hf)]);
    let root = BuildRoot::open(&lbr).unwrap();
    assert_eq!(
        root.cas(hf)
            .read(ObjectKind::File, &backend.shard(hf))
            .unwrap()
            .unwrap(),
        backend.text().as_bytes()
    );
    // The entry is readable through that shard only.
    let key = found.values().next().unwrap().keys().next().unwrap();
    let tc = TargetCache::open(&root, hf, backend);
    assert!(tc.read(key).unwrap().is_some());
    let local = TargetCache::open(&root, hf, BackendDescription::local());
    assert!(local.read(key).unwrap().is_none());
}
