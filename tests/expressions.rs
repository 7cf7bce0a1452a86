//! Conformance suite of the expression language: every case of
//! `fixtures/expressions/*.json` is evaluated and compared.
//!
//! A fixture file is a JSON list of cases
//! `{"name", "expr", "env"?, "result"}` or `{"name", "expr", "env"?, "error"}`
//! where `error` is a substring of the rendered error. Results compare by
//! value identity (so `1` equals `1.0`, `0.0` differs from `-0.0`). In `env`
//! (only there), `{"$name": J}` stands for a name value with JSON `J` and
//! `{"$artifact": J}` for an artifact with description `J`, so that
//! name-containing values can be tested. `"user_error": true` additionally
//! requires a user error (no trace); `"trace": true` requires a traceback.

use std::path::{Path, PathBuf};

use jserve::build::expr::{evaluate, Env};
use jserve::build::value::{Map, Value};
use serde_json::Value as Json;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/expressions")
}

/// Plain JSON to a value, turning the `$name` / `$artifact` markers into
/// opaque values.
fn env_value(j: &Json) -> Value {
    match j {
        Json::Object(o) if o.len() == 1 && o.contains_key("$name") => {
            Value::name(o["$name"].clone())
        }
        Json::Object(o) if o.len() == 1 && o.contains_key("$artifact") => {
            Value::artifact(o["$artifact"].clone())
        }
        Json::Object(o) => Value::map(o.iter().map(|(k, v)| (k.clone(), env_value(v))).collect()),
        Json::Array(a) => Value::list(a.iter().map(env_value).collect()),
        other => Value::from_json(other),
    }
}

pub struct Case {
    pub file: String,
    pub name: String,
    pub expr: Json,
    pub env: Json,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub user_error: Option<bool>,
    pub trace: Option<bool>,
}

pub fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/expressions")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let json: Json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let fname = file.file_name().unwrap().to_string_lossy().to_string();
        for c in json.as_array().expect("a list of cases") {
            let name = c["name"].as_str().expect("case name").to_string();
            assert!(
                c.get("result").is_some() != c.get("error").is_some(),
                "{fname}: {name}: exactly one of result and error"
            );
            cases.push(Case {
                file: fname.clone(),
                name,
                expr: c["expr"].clone(),
                env: c
                    .get("env")
                    .cloned()
                    .unwrap_or(Json::Object(Default::default())),
                result: c.get("result").cloned(),
                error: c
                    .get("error")
                    .map(|e| e.as_str().expect("error substring").to_string()),
                user_error: c.get("user_error").and_then(Json::as_bool),
                trace: c.get("trace").and_then(Json::as_bool),
            });
        }
    }
    cases
}

fn run(case: &Case) -> Result<(), String> {
    let env_map: Map = match env_value(&case.env).as_map() {
        Some(m) => m.clone(),
        None => return Err("env is not a map".into()),
    };
    let env = Env::from_map(env_map);
    let got = evaluate(&Value::from_json(&case.expr), &env);
    match (&case.result, &case.error, got) {
        (Some(want), _, Ok(v)) => {
            let want = Value::from_json(want);
            if v == want {
                Ok(())
            } else {
                Err(format!("got {v}, want {want}"))
            }
        }
        (Some(want), _, Err(e)) => Err(format!("want {want}, got error:\n{e}")),
        (None, Some(_), Ok(v)) => Err(format!("want an error, got {v}")),
        (None, Some(sub), Err(e)) => {
            let text = e.to_string();
            if !text.contains(sub.as_str()) {
                return Err(format!("error lacks {sub:?}:\n{text}"));
            }
            if let Some(user) = case.user_error {
                if e.is_user_error() != user {
                    return Err(format!(
                        "user error {} expected {user}:\n{text}",
                        e.is_user_error()
                    ));
                }
            }
            if let Some(trace) = case.trace {
                if text.contains("traceback") != trace {
                    return Err(format!("traceback expected {trace}:\n{text}"));
                }
            }
            Ok(())
        }
        (None, None, _) => unreachable!(),
    }
}

#[test]
fn expression_fixtures() {
    let cases = load_cases();
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in &cases {
        if !seen.insert((case.file.clone(), case.name.clone())) {
            failures.push(format!("{}: {}: duplicate case name", case.file, case.name));
        }
        if let Err(why) = run(case) {
            failures.push(format!("{}: {}: {why}", case.file, case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    eprintln!("{} expression cases passed", cases.len());
}

#[test]
fn every_builtin_has_a_fixture() {
    let cases = load_cases();
    let text: String = cases.iter().map(|c| c.expr.to_string()).collect();
    let missing: Vec<&str> = jserve::build::expr::BUILTIN_NAMES
        .iter()
        .copied()
        .filter(|name| !text.contains(&format!("\"type\":{}", Json::String(name.to_string()))))
        .collect();
    assert!(missing.is_empty(), "built-ins without a case: {missing:?}");
}

mod extension {
    use super::*;
    use jserve::build::expr::{EvalError, Evaluator, FunctionMap, Functions};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A context in the style of rule expressions: `FIELD` reads from the
    /// context, and `basename` is shadowed.
    struct Rule {
        fields: Map,
    }

    impl Functions for Rule {
        fn call(
            &self,
            name: &str,
            ev: &Evaluator<'_>,
            expr: &Value,
            env: &Env,
        ) -> Option<Result<Value, EvalError>> {
            match name {
                "FIELD" => Some(ev.eval_arg(expr, "name", env).and_then(|n| {
                    let n = jserve::build::expr::expect_str(&n)?.to_string();
                    self.fields
                        .get(&n)
                        .cloned()
                        .ok_or_else(|| EvalError::new(format!("unknown field {n}")))
                })),
                "basename" => Some(Ok(Value::string("shadowed"))),
                _ => None,
            }
        }
    }

    fn v(j: Json) -> Value {
        Value::from_json(&j)
    }

    #[test]
    fn extra_functions_reach_nested_evaluation_and_shadow_builtins() {
        let mut fields = Map::new();
        fields.insert("srcs".into(), v(json!(["a.c", "b.c"])));
        let rule = Rule { fields };
        let ev = Evaluator::with_functions(&rule);
        let expr = v(json!({"type": "foreach", "var": "f",
            "range": {"type": "FIELD", "name": "srcs"},
            "body": [{"type": "change_ending", "$1": {"type": "var", "name": "f"}, "ending": ".o"},
                     {"type": "basename", "$1": "x/y"}]}));
        let got = ev.eval(&expr, &Env::new()).unwrap();
        assert_eq!(got, v(json!([["a.o", "shadowed"], ["b.o", "shadowed"]])));

        let err = ev
            .eval(&v(json!({"type": "FIELD", "name": "deps"})), &Env::new())
            .unwrap_err();
        assert!(err.to_string().contains("unknown field deps"), "{err}");
        // without the context, FIELD is unknown
        let err = evaluate(&v(json!({"type": "FIELD", "name": "srcs"})), &Env::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("Unknown syntactical construct FIELD"),
            "{err}"
        );
    }

    #[test]
    fn function_map_closures_keep_state() {
        let count = Arc::new(AtomicUsize::new(0));
        let mut fns = FunctionMap::new();
        let c = count.clone();
        fns.insert(
            "BLOB",
            move |ev: &Evaluator<'_>, expr: &Value, env: &Env| {
                c.fetch_add(1, Ordering::SeqCst);
                ev.eval_or(expr, "data", Value::string(""), env)
            },
        );
        let ev = Evaluator::with_functions(&fns);
        let expr = v(json!([{"type": "BLOB", "data": "x"}, {"type": "BLOB"}]));
        assert_eq!(ev.eval(&expr, &Env::new()).unwrap(), v(json!(["x", ""])));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn errors_render_a_traceback_innermost_last() {
        let expr = v(json!({"type": "let*", "bindings": [["x", 1]],
            "body": {"type": "++", "$1": [{"type": "var", "name": "x"}]}}));
        let err = evaluate(&expr, &Env::new()).unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Expression evaluation traceback (most recent call last):"
        );
        let let_pos = text.find("* \"let*\"-expression").unwrap();
        let body_pos = text.find("Evaluating the body:").unwrap();
        let flat_pos = text.find("* \"++\"-expression").unwrap();
        assert!(let_pos < body_pos && body_pos < flat_pos, "{text}");
        assert!(text.contains("  - \"x\" : 1.0"), "{text}");
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("EvaluationError: Non-list entry"),
            "{text}"
        );
        assert!(!err.is_user_error());

        let err = evaluate(&v(json!({"type": "fail", "msg": ["m"]})), &Env::new()).unwrap_err();
        assert_eq!(err.to_string(), "UserError: [\"m\"]");
        assert!(err.is_user_error());
    }

    #[test]
    fn layered_functions_shadow_in_order() {
        let mut outer = FunctionMap::new();
        outer.insert("WHO", |_: &Evaluator<'_>, _: &Value, _: &Env| {
            Ok(Value::string("outer"))
        });
        outer.insert("OUTER_ONLY", |_: &Evaluator<'_>, _: &Value, _: &Env| {
            Ok(Value::bool(true))
        });
        let mut inner = FunctionMap::new();
        inner.insert("WHO", |_: &Evaluator<'_>, _: &Value, _: &Env| {
            Ok(Value::string("inner"))
        });
        let layered = jserve::build::expr::Layered {
            first: &inner,
            second: Some(&outer),
        };
        let ev = Evaluator::with_functions(&layered);
        let expr =
            v(json!([{"type": "WHO"}, {"type": "OUTER_ONLY"}, {"type": "length", "$1": [1]}]));
        assert_eq!(
            ev.eval(&expr, &Env::new()).unwrap(),
            v(json!(["inner", true, 1]))
        );
    }

    #[test]
    fn values_environments_and_errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Value>();
        send_sync::<Env>();
        send_sync::<EvalError>();
        send_sync::<FunctionMap>();
    }
}
