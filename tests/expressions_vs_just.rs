//! The expression fixtures checked against the reference `just`: each case
//! becomes a user rule whose expression evaluates the case's expression
//! (its `env` bound by `let*`) and provides the value under key `v`; `just
//! analyse --dump-result` must give the expected value, and cases expecting
//! an error must fail analysis. Cases using opaque values in `env` (names,
//! artifacts) have no JSON form there and are left out.
//!
//! Without the reference `just` the test says so and passes, except under
//! CI (CI set), where its absence is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::reference::reference_just;
use jserve::build::expr::{evaluate, Env};
use jserve::build::value::Value;
use serde_json::{json, Value as Json};

struct Case {
    file: String,
    name: String,
    expr: Json,
    env: Json,
    result: Option<Json>,
    error: Option<String>,
    user_error: Option<bool>,
}

fn has_marker(j: &Json) -> bool {
    match j {
        Json::Object(o) => {
            o.contains_key("$name") || o.contains_key("$artifact") || o.values().any(has_marker)
        }
        Json::Array(a) => a.iter().any(has_marker),
        _ => false,
    }
}

fn load_cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/expressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let json: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for c in json.as_array().unwrap() {
            let env = c.get("env").cloned().unwrap_or(json!({}));
            if has_marker(&env) {
                continue;
            }
            cases.push(Case {
                file: file.file_name().unwrap().to_string_lossy().into(),
                name: c["name"].as_str().unwrap().into(),
                expr: c["expr"].clone(),
                env,
                result: c.get("result").cloned(),
                error: c.get("error").and_then(Json::as_str).map(String::from),
                user_error: c.get("user_error").and_then(Json::as_bool),
            });
        }
    }
    cases
}

/// The rule expression: `RESULT` providing `{"v": <case expression>}`.
fn rule_expression(case: &Case) -> Json {
    let bindings: Vec<Json> = case
        .env
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| json!([k, {"type": "'", "$1": v}]))
        .collect();
    json!({
        "type": "RESULT",
        "provides": {
            "type": "singleton_map",
            "key": "v",
            "value": {"type": "let*", "bindings": bindings, "body": case.expr},
        },
    })
}

/// Built-ins of the reference snapshot that older `just` releases (such as
/// 1.5.1) do not know yet; cases using them are skipped when `just` says so.
const NEWER_BUILTINS: [&str; 2] = ["zip_with", "zip_map"];

fn newer_than_reference(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    NEWER_BUILTINS
        .iter()
        .any(|b| text.contains(&format!("Unknown syntactical construct {b}")))
}

/// Expected error texts that are jserve's own wording (the reference fails
/// there too, with a different message).
const OWN_MESSAGES: [&str; 1] = ["range"];

#[test]
fn expression_fixtures_agree_with_reference_just() {
    let Some(just) = reference_just() else { return };
    let cases = load_cases();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("ROOT"), "").unwrap();
    let mut rules = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    for (i, case) in cases.iter().enumerate() {
        rules.insert(
            format!("c{i}"),
            json!({"expression": rule_expression(case)}),
        );
        targets.insert(
            format!("c{i}"),
            json!({"type": ["./", ".", format!("c{i}")]}),
        );
    }
    std::fs::write(project.join("RULES"), Json::Object(rules).to_string()).unwrap();
    std::fs::write(project.join("TARGETS"), Json::Object(targets).to_string()).unwrap();

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let confirmed = AtomicUsize::new(0);
    let skipped = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for worker in 0..8 {
            let (next, failures, confirmed, skipped, cases) =
                (&next, &failures, &confirmed, &skipped, &cases);
            let (project, base, just) = (&project, dir.path(), &just);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let out = base.join(format!("result-{i}.json"));
                let run = Command::new(just)
                    .arg("analyse")
                    .args(["--workspace-root", project.to_str().unwrap()])
                    .args([
                        "--local-build-root",
                        base.join(format!("lbr-{worker}")).to_str().unwrap(),
                    ])
                    .arg("--plain-log")
                    .args(["--dump-result", out.to_str().unwrap()])
                    .arg(format!("c{i}"))
                    .output()
                    .expect("just runs");
                let env = Env::from_value(&Value::from_json(&case.env));
                let ours = evaluate(&Value::from_json(&case.expr), &env);
                let what = format!("{}: {}", case.file, case.name);
                let verdict = match (&case.result, run.status.success()) {
                    (Some(want), true) => {
                        let dumped: Json =
                            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
                        let theirs = Value::from_json(&dumped["provides"]["v"]);
                        if theirs != Value::from_json(want) {
                            Err(format!("just gives {theirs}, fixture says {want}"))
                        } else if ours.as_ref().ok() != Some(&theirs) {
                            Err(format!("just gives {theirs}, jserve {ours:?}"))
                        } else {
                            Ok(())
                        }
                    }
                    (_, false) if newer_than_reference(&run.stderr) => {
                        skipped.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    (Some(want), false) => Err(format!(
                        "fixture says {want}, just fails:\n{}",
                        String::from_utf8_lossy(&run.stderr)
                    )),
                    (None, true) => Err("fixture expects an error, just succeeds".to_string()),
                    (None, false) => {
                        // just indents continuation lines of its log by 7 spaces
                        let log = String::from_utf8_lossy(&run.stderr).replace("\n       ", "\n");
                        let sub = case.error.as_deref().unwrap_or_default();
                        let traceback = log.contains("Expression evaluation traceback");
                        if ours.is_ok() {
                            Err(format!("just fails, jserve gives {ours:?}"))
                        } else if !log.contains(sub) && !OWN_MESSAGES.contains(&sub) {
                            Err(format!("just's error lacks {sub:?}:\n{log}"))
                        } else if case.user_error == Some(true) && traceback {
                            Err(format!("just gives a traceback for a user error:\n{log}"))
                        } else if case.user_error == Some(false) && !traceback {
                            Err(format!("just gives no traceback:\n{log}"))
                        } else {
                            Ok(())
                        }
                    }
                };
                match verdict {
                    Ok(()) => {
                        confirmed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(why) => failures.lock().unwrap().push(format!("{what}: {why}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with just:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "reference just confirmed {} expression cases ({} use built-ins it lacks)",
        confirmed.load(Ordering::SeqCst),
        skipped.load(Ordering::SeqCst)
    );
}
