//! Tests of writing and reading target-cache entries.

use super::read::*;
use super::write::*;
use super::*;
use serde_json::json;

const HF: HashFunction = HashFunction::GitSha1;
const EMPTY_MAP_ID: &str = "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96";

fn known(c: char) -> ArtifactDescription {
    ArtifactDescription::known(c.to_string().repeat(40), 12, ObjectKind::File)
}

fn stage(entries: &[(&str, &ArtifactDescription)]) -> Value {
    Value::map(
        entries
            .iter()
            .map(|(p, a)| (p.to_string(), a.to_value()))
            .collect(),
    )
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn implied(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// A result with every kind of value in provides; all artifacts KNOWN.
fn rich_result() -> TargetResult {
    let shared = Value::from_json(&json!({"x": [1, 2.5, {"y": null}, 1e20], "s": "str\n\"q\""}));
    let inner = TargetResult {
        artifact_stage: stage(&[("out.txt", &known('a'))]),
        runfiles: Value::empty_map(),
        provides: map(vec![("nested", shared.clone())]),
    };
    let inner = Value::result(inner);
    let vnode = Value::node(Node::Value(inner.clone()));
    let anode = Value::node(Node::Abstract {
        node_type: "foo".into(),
        string_fields: Value::from_json(&json!({"a": ["b", "c"]})),
        target_fields: map(vec![("deps", Value::list(vec![vnode.clone()]))]),
    });
    TargetResult {
        artifact_stage: stage(&[("out.txt", &known('a')), ("sub/b", &known('b'))]),
        runfiles: stage(&[("r", &known('c'))]),
        provides: map(vec![
            ("anode", anode),
            ("art", known('d').to_value()),
            ("res", inner),
            (
                "shared",
                Value::list(vec![shared.clone(), shared, Value::empty_map()]),
            ),
            ("vnode", vnode),
            ("x", Value::null()),
        ]),
    }
}

#[test]
fn simple_entry_has_the_reference_bytes() {
    let a = ArtifactDescription::known(
        "3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
        12,
        ObjectKind::File,
    );
    let result = TargetResult {
        artifact_stage: stage(&[("out.txt", &a)]),
        runfiles: Value::empty_map(),
        provides: Value::empty_map(),
    };
    let text = entry_text(&result, &Replacements::new(), &implied(&["8a1b"])).unwrap();
    let expected = r#"{
  "artifacts": {
    "out.txt": {
      "data": {
        "file_type": "f",
        "id": "3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
        "size": 12
      },
      "type": "KNOWN"
    }
  },
  "implied export targets": [
    "8a1b"
  ],
  "provides": {
    "entry": "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96",
    "nodes": {
      "021fb596db81e6d02bf3d2586ee3981fe519f275c0ac9ca76bbcf2ebb4097d96": {}
    },
    "provided_artifacts": [],
    "provided_nodes": [],
    "provided_results": []
  },
  "runfiles": {}
}"#;
    assert_eq!(text, expected);
    // No implied targets: the key is left out.
    let text = entry_text(&result, &Replacements::new(), &BTreeSet::new()).unwrap();
    assert!(!text.contains("implied"));
}

#[test]
fn dag_lists_each_subvalue_once_in_depth_first_order() {
    let result = rich_result();
    let json = entry_json(&result, &Replacements::new(), &BTreeSet::new()).unwrap();
    let p = &json["provides"];
    assert_eq!(p["entry"], json!(result.provides.id()));
    let nodes = p["nodes"].as_object().unwrap();
    // Every distinct subvalue once: one shared map, one empty map.
    let shared = result.provides.get("shared").unwrap().as_list().unwrap();
    let shared_id = shared[0].id();
    assert_eq!(
        nodes[&result.provides.get("shared").unwrap().id()],
        json!([shared_id, shared_id, EMPTY_MAP_ID])
    );
    let anode = result.provides.get("anode").unwrap();
    let vnode = result.provides.get("vnode").unwrap();
    let res = result.provides.get("res").unwrap();
    // Keys in order: anode (holds vnode, which holds res), art, res, ...
    assert_eq!(p["provided_nodes"], json!([anode.id(), vnode.id()]));
    assert_eq!(p["provided_results"], json!([res.id()]));
    assert_eq!(
        p["provided_artifacts"],
        json!([known('a').to_value().id(), known('d').to_value().id()])
    );
    assert_eq!(
        nodes[&vnode.id()],
        json!({"type": "VALUE_NODE", "result": res.id()})
    );
    let Kind::Node(Node::Abstract {
        string_fields,
        target_fields,
        ..
    }) = anode.kind()
    else {
        panic!()
    };
    assert_eq!(
        nodes[&anode.id()],
        json!({"type": "ABSTRACT_NODE", "node_type": "foo",
                "string_fields": string_fields.id(), "target_fields": target_fields.id()})
    );
    let r = res.as_result().unwrap();
    assert_eq!(
        nodes[&res.id()],
        json!({"artifact_stage": r.artifact_stage.id(), "runfiles": EMPTY_MAP_ID,
                "provides": r.provides.id()})
    );
    // Numbers of the language print as doubles, artifact sizes as integers.
    let text = dump_entry(&json);
    assert!(text.contains(": 1.0") && text.contains(": 1e+20"));
    assert!(!text.contains(": 1,") && !text.contains(": 1\n"));
    assert!(text.contains("\"size\": 12\n"));
}

#[test]
fn round_trip_keeps_bytes_values_and_sharing() {
    let result = rich_result();
    let keys = implied(&["ab", "cd"]);
    let text = entry_text(&result, &Replacements::new(), &keys).unwrap();
    let back = parse_entry(text.as_bytes(), HF).unwrap();
    assert_eq!(back.implied, keys);
    assert_eq!(back.result.provides, result.provides);
    assert_eq!(back.result.artifact_stage, result.artifact_stage);
    assert_eq!(back.result.runfiles, result.runfiles);
    assert!(back.result.is_cacheable());
    assert_eq!(
        entry_text(&back.result, &Replacements::new(), &back.implied).unwrap(),
        text
    );
    // The shared subvalue is read once and shared.
    let shared = back
        .result
        .provides
        .get("shared")
        .unwrap()
        .as_list()
        .unwrap();
    assert!(shared[0].ptr_eq(&shared[1]));
    let objects = entry_objects(&serde_json::from_str(&text).unwrap(), HF).unwrap();
    let names: Vec<String> = objects.iter().map(ToString::to_string).collect();
    let info = |c: char| format!("[{}:12:f]", c.to_string().repeat(40));
    assert_eq!(
        names,
        [info('a'), info('b'), info('c'), info('a'), info('d')]
    );
}

#[test]
fn non_known_artifacts_are_found_everywhere_and_replaced() {
    let act = ArtifactDescription::action("1".repeat(64), "out");
    let tree = ArtifactDescription::tree("2".repeat(64));
    let local = ArtifactDescription::local("src/f", "main");
    let in_node = ArtifactDescription::action("3".repeat(64), "deep");
    let nested = TargetResult {
        artifact_stage: stage(&[("deep", &in_node)]),
        runfiles: Value::empty_map(),
        provides: Value::empty_map(),
    };
    let result = TargetResult {
        artifact_stage: stage(&[("out", &act), ("known", &known('a'))]),
        runfiles: stage(&[("t", &tree)]),
        provides: map(vec![
            ("l", Value::list(vec![local.to_value(), act.to_value()])),
            ("n", Value::node(Node::Value(Value::result(nested)))),
        ]),
    };
    let found = non_known_artifacts(&result, HF).unwrap();
    assert_eq!(
        found,
        [act.clone(), tree.clone(), local.clone(), in_node.clone()]
    );

    let mut repl: Replacements = [(act.clone(), known('b')), (tree.clone(), known('c'))]
        .into_iter()
        .collect();
    repl.insert(&local, known('d'));
    let err = entry_json(&result, &repl, &BTreeSet::new()).unwrap_err();
    assert_eq!(err, EntryError::NoReplacement(in_node.to_json_text()));
    repl.insert(&in_node, ArtifactDescription::tree("4".repeat(64)));
    assert!(matches!(
        entry_json(&result, &repl, &BTreeSet::new()),
        Err(EntryError::ReplacementNotKnown { .. })
    ));
    repl.insert(&in_node, known('e'));
    assert_eq!(repl.len(), 4);
    let json = entry_json(&result, &repl, &BTreeSet::new()).unwrap();
    assert_eq!(json["artifacts"]["out"], known('b').to_json());
    assert_eq!(json["runfiles"]["t"], known('c').to_json());
    // DAG ids stay those of the values as analysed.
    let p = &json["provides"];
    assert_eq!(p["entry"], json!(result.provides.id()));
    assert_eq!(p["nodes"][act.to_value().id()], known('b').to_json());
    assert_eq!(p["nodes"][in_node.to_value().id()], known('e').to_json());
    // Read back, everything is KNOWN.
    let back = parse_entry_json(&json, HF).unwrap();
    assert!(non_known_artifacts(&back.result, HF).unwrap().is_empty());
    assert_eq!(entry_objects(&json, HF).unwrap().len(), 2 + 1 + 3);
}

#[test]
fn names_are_not_cacheable() {
    let result = TargetResult {
        artifact_stage: Value::empty_map(),
        runfiles: Value::empty_map(),
        provides: map(vec![("n", Value::name(json!(["@", "r", "m", "t"])))]),
    };
    assert!(matches!(
        entry_json(&result, &Replacements::new(), &BTreeSet::new()),
        Err(EntryError::NotCacheable(_))
    ));
}

fn parse_err(json: Json) -> EntryError {
    parse_entry_json(&json, HF).unwrap_err()
}

fn with_provides(provides: Json) -> Json {
    json!({"artifacts": {}, "runfiles": {}, "provides": provides})
}

fn dag(entry: &str, nodes: Json, arts: &[&str], ns: &[&str], rs: &[&str]) -> Json {
    with_provides(
        json!({"entry": entry, "nodes": nodes, "provided_artifacts": arts,
            "provided_nodes": ns, "provided_results": rs}),
    )
}

#[test]
fn malformed_entries_are_refused() {
    assert!(matches!(
        parse_entry(b"{", HF).unwrap_err(),
        EntryError::NotJson(_)
    ));
    assert!(matches!(parse_err(json!([])), EntryError::Malformed(_)));
    assert!(matches!(
        parse_err(json!({"runfiles": {}, "provides": {}})),
        EntryError::Malformed(m) if m.contains("\"artifacts\"")
    ));
    assert!(matches!(
        parse_err(json!({"artifacts": {"a": {"type": "KNOWN", "data": {"id": "xyz",
            "size": 1, "file_type": "f"}}}, "runfiles": {}, "provides": {}})),
        EntryError::Artifact { at, .. } if at == "artifacts/a"
    ));
    assert!(matches!(
        parse_err(with_provides(json!({"entry": "x", "nodes": {}}))),
        EntryError::Malformed(m) if m.contains("provided_artifacts")
    ));
    let cases = [
        // unknown id
        dag("x", json!({}), &[], &[], &[]),
        // a list holding a non-id
        dag("x", json!({"x": [1]}), &[], &[], &[]),
        // a cycle
        dag("x", json!({"x": ["y"], "y": {"k": "x"}}), &[], &[], &[]),
        // a node of no known type
        dag("x", json!({"x": {"type": "OTHER"}}), &[], &["x"], &[]),
        // a value node without a result
        dag(
            "x",
            json!({"x": {"type": "VALUE_NODE", "result": "y"}, "y": 3.0}),
            &[],
            &["x"],
            &[],
        ),
        // an abstract node without node_type
        dag(
            "x",
            json!({"x": {"type": "ABSTRACT_NODE", "string_fields": "e",
                "target_fields": "e"}, "e": {}}),
            &[],
            &["x"],
            &[],
        ),
        // a result lacking its provides
        dag(
            "x",
            json!({"x": {"artifact_stage": "e", "runfiles": "e"}, "e": {}}),
            &[],
            &[],
            &["x"],
        ),
    ];
    for case in cases {
        assert!(
            matches!(parse_entry_json(&case, HF), Err(EntryError::Malformed(_))),
            "{case}"
        );
    }
    assert!(matches!(
        parse_err(dag(
            "x",
            json!({"x": {"type": "FOO", "data": {}}}),
            &["x"],
            &[],
            &[]
        )),
        EntryError::Artifact { .. }
    ));
    let mut ok = dag("x", json!({"x": {}}), &[], &[], &[]);
    assert!(parse_entry_json(&ok, HF).is_ok());
    ok["implied export targets"] = json!("ab");
    assert!(matches!(parse_err(ok), EntryError::Malformed(m) if m.contains("implied")));
}

#[test]
fn deep_dags_do_not_exhaust_the_stack() {
    let n = 5_000;
    let mut nodes = JsonMap::new();
    for i in 0..n {
        let child = if i + 1 == n {
            json!("leaf")
        } else {
            json!([format!("n{}", i + 1)])
        };
        nodes.insert(format!("n{i}"), child);
    }
    let back = parse_entry_json(&dag("n0", Json::Object(nodes), &[], &[], &[]), HF).unwrap();
    let mut v = back.result.provides.clone();
    let mut depth = 0;
    while let Some(l) = v.as_list() {
        let next = l[0].clone();
        v = next;
        depth += 1;
    }
    assert_eq!((depth, v.as_str()), (n - 1, Some("leaf")));
}

#[test]
fn only_known_objects_are_listed() {
    let entry = json!({"artifacts": {"a": ArtifactDescription::local("f", "r").to_json()},
            "runfiles": {}, "provides": {"nodes": {}, "provided_artifacts": []}});
    assert!(matches!(
        entry_objects(&entry, HF),
        Err(EntryError::NotKnown(_))
    ));
    let entry = json!({"artifacts": {}, "runfiles": {},
            "provides": {"nodes": {}, "provided_artifacts": ["gone"]}});
    assert!(matches!(
        entry_objects(&entry, HF),
        Err(EntryError::Malformed(_))
    ));
    let tree = ArtifactDescription::known("f".repeat(40), 3, ObjectKind::Tree);
    let entry = json!({"artifacts": {}, "runfiles": {"t": tree.to_json()},
            "provides": {"nodes": {}, "provided_artifacts": []}, "implied export targets": ["k"]});
    let objects = entry_objects(&entry, HF).unwrap();
    assert_eq!(objects.len(), 1);
    assert!(objects[0].digest.is_tree);
    assert_eq!(objects[0].to_string(), format!("[{}:3:t]", "f".repeat(40)));
    assert_eq!(entry_implied(&entry).unwrap(), implied(&["k"]));
}
