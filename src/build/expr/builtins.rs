//! The 51 general built-in functions.

use std::collections::HashSet;

use super::error::EXPRESSION_LOG_LIMIT;
use super::path;
use super::{expect_list, expect_map, expect_str, required, Env, EvalError, Evaluator};
use crate::build::value::{JsonMode, Kind, Map, Value};

pub(super) type Builtin = fn(&Evaluator<'_>, &Value, &Env) -> Result<Value, EvalError>;

/// Names of all built-in functions.
pub const BUILTIN_NAMES: [&str; 51] = [
    "var",
    "'",
    "`",
    ",",
    ",@",
    "if",
    "cond",
    "case",
    "case*",
    "fail",
    "assert",
    "assert_non_empty",
    "context",
    "==",
    "and",
    "or",
    "not",
    "++",
    "+",
    "*",
    "nub_right",
    "nub_left",
    "range",
    "change_ending",
    "basename",
    "join",
    "join_cmd",
    "json_encode",
    "escape_chars",
    "keys",
    "enumerate",
    "set",
    "reverse",
    "length",
    "values",
    "lookup",
    "[]",
    "empty_map",
    "singleton_map",
    "disjoint_map_union",
    "map_union",
    "to_subdir",
    "from_subdir",
    "foreach",
    "foreach_map",
    "zip_with",
    "zip_map",
    "foldl",
    "let*",
    "env",
    "concat_target_name",
];

pub(super) fn lookup(name: &str) -> Option<Builtin> {
    Some(match name {
        "var" => var,
        "'" => quote,
        "`" => quasi_quote,
        "," | ",@" => only_in_quasi_quote,
        "if" => if_expr,
        "cond" => cond,
        "case" => case,
        "case*" => seq_case,
        "fail" => fail,
        "assert" => assert,
        "assert_non_empty" => assert_non_empty,
        "context" => context,
        "==" => equal,
        "and" => and,
        "or" => or,
        "not" => |ev, e, env| unary(ev, e, env, |v| Ok(Value::bool(!v.is_true()))),
        "++" => |ev, e, env| unary(ev, e, env, flatten),
        "+" => |ev, e, env| unary(ev, e, env, |v| arith(v, 0.0, "addition", |a, b| a + b)),
        "*" => |ev, e, env| {
            unary(ev, e, env, |v| {
                arith(v, 1.0, "multiplication", |a, b| a * b)
            })
        },
        "nub_right" => |ev, e, env| unary(ev, e, env, |v| nub(v, true)),
        "nub_left" => |ev, e, env| unary(ev, e, env, |v| nub(v, false)),
        "range" => |ev, e, env| unary(ev, e, env, range),
        "change_ending" => change_ending,
        "basename" => |ev, e, env| {
            unary(ev, e, env, |v| {
                Ok(Value::string(path::filename(expect_str(v)?)))
            })
        },
        "join" => join,
        "join_cmd" => join_cmd,
        "json_encode" => json_encode,
        "escape_chars" => escape_chars,
        "keys" => |ev, e, env| {
            unary(ev, e, env, |v| {
                Ok(Value::list(
                    expect_map(v)?
                        .keys()
                        .map(|k| Value::string(k.clone()))
                        .collect(),
                ))
            })
        },
        "values" => |ev, e, env| {
            unary(ev, e, env, |v| {
                Ok(Value::list(expect_map(v)?.values().cloned().collect()))
            })
        },
        "enumerate" => |ev, e, env| unary(ev, e, env, enumerate),
        "set" => |ev, e, env| unary(ev, e, env, set),
        "reverse" => |ev, e, env| {
            unary(ev, e, env, |v| {
                Ok(Value::list(
                    list_arg(v, "reverse expects list")?
                        .iter()
                        .rev()
                        .cloned()
                        .collect(),
                ))
            })
        },
        "length" => |ev, e, env| {
            unary(ev, e, env, |v| {
                Ok(Value::number(
                    list_arg(v, "length expects list")?.len() as f64
                ))
            })
        },
        "lookup" => lookup_expr,
        "[]" => array_access,
        "empty_map" => |_, _, _| Ok(Value::empty_map()),
        "singleton_map" => singleton_map,
        "disjoint_map_union" => disjoint_map_union,
        "map_union" => |ev, e, env| unary(ev, e, env, |v| union(v, false)),
        "to_subdir" => to_subdir,
        "from_subdir" => from_subdir,
        "foreach" => foreach,
        "foreach_map" => foreach_map,
        "zip_with" => zip_with,
        "zip_map" => zip_map,
        "foldl" => foldl,
        "let*" => let_star,
        "env" => env_expr,
        "concat_target_name" => concat_target_name,
        _ => return None,
    })
}

fn abbrev(v: &Value) -> String {
    v.to_abbrev_string(EXPRESSION_LOG_LIMIT)
}

/// The expression `{"type": "empty_map"}`.
fn empty_map_expr() -> Value {
    let mut m = Map::new();
    m.insert("type".to_string(), Value::string("empty_map"));
    Value::map(m)
}

fn empty_string() -> Value {
    Value::string("")
}

/// A function of its evaluated `$1` (required).
fn unary(
    ev: &Evaluator<'_>,
    expr: &Value,
    env: &Env,
    f: impl FnOnce(&Value) -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    let arg = ev.eval_arg(expr, "$1", env)?;
    f(&arg).map_err(|e| {
        e.with_note(format!(
            "Having evaluated the argument to {}:",
            abbrev(&arg)
        ))
    })
}

fn list_arg<'v>(v: &'v Value, what: &str) -> Result<&'v [Value], EvalError> {
    v.as_list()
        .ok_or_else(|| EvalError::new(format!("{what} but instead got: {}.", v.to_json_string())))
}

/// Evaluates a user-supplied `msg` expression for an error report.
fn eval_msg(ev: &Evaluator<'_>, msg: &Value, env: &Env) -> String {
    match ev.eval(msg, env) {
        Ok(v) => v.to_json_string(),
        Err(_) => format!("[non evaluating term] {}", msg.to_json_string()),
    }
}

fn var(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let name = expect_str(required(expr, "name")?)?;
    match env.get(name) {
        Some(v) if !v.is_null() => Ok(v.clone()),
        _ => ev.eval_or(expr, "default", Value::null(), env),
    }
}

fn quote(_: &Evaluator<'_>, expr: &Value, _: &Env) -> Result<Value, EvalError> {
    Ok(expr.get("$1").cloned().unwrap_or_else(Value::null))
}

fn only_in_quasi_quote(_: &Evaluator<'_>, _: &Value, _: &Env) -> Result<Value, EvalError> {
    Err(EvalError::new(
        "\",\" and \",@\" are only evaluated within quasi-quote (\"`\") environments.",
    ))
}

fn quasi_quote(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    match expr.get("$1") {
        Some(arg) => expand_quasi_quote(ev, arg, env),
        None => Ok(Value::null()),
    }
}

fn unquote_token(v: &Value) -> Option<&str> {
    v.get("type")
        .and_then(Value::as_str)
        .filter(|t| *t == "," || *t == ",@")
}

fn expand_map_entries(ev: &Evaluator<'_>, map: &Map, env: &Env) -> Result<Value, EvalError> {
    let mut out = Map::new();
    for (k, v) in map {
        out.insert(k.clone(), expand_quasi_quote(ev, v, env)?);
    }
    Ok(Value::map(out))
}

fn expand_list(ev: &Evaluator<'_>, items: &[Value], env: &Env) -> Result<Vec<Value>, EvalError> {
    let mut out = Vec::new();
    for item in items {
        expand_list_entry(ev, item, env, &mut out)?;
    }
    Ok(out)
}

/// Expands a list entry, pushing what it contributes (",@" splices).
fn expand_list_entry(
    ev: &Evaluator<'_>,
    entry: &Value,
    env: &Env,
    out: &mut Vec<Value>,
) -> Result<(), EvalError> {
    match entry.kind() {
        Kind::List(items) => out.push(Value::list(expand_list(ev, items, env)?)),
        Kind::Map(map) => match unquote_token(entry) {
            Some(",") => match map.get("$1") {
                Some(arg) => out.push(ev.eval(arg, env)?),
                // the reference splices the bare null here, which is no list
                None => return Err(EvalError::type_error("list", &Value::null())),
            },
            Some(_) => {
                if let Some(arg) = map.get("$1") {
                    let v = ev.eval(arg, env)?;
                    match v.as_list() {
                        Some(items) => out.extend(items.iter().cloned()),
                        None => {
                            return Err(EvalError::new(format!(
                                "Argument of \",@\"-expresion {} should evaluate to a list, but obtained {}",
                                entry.to_json_string(),
                                v.to_json_string()
                            )))
                        }
                    }
                }
            }
            None => {
                // The reference expands the entries but then returns the map
                // where a list of spliced values is expected: a type error.
                let expanded = expand_map_entries(ev, map, env)?;
                return Err(EvalError::type_error("list", &expanded));
            }
        },
        _ => out.push(entry.clone()),
    }
    Ok(())
}

fn expand_quasi_quote(ev: &Evaluator<'_>, v: &Value, env: &Env) -> Result<Value, EvalError> {
    match v.kind() {
        Kind::List(items) => Ok(Value::list(expand_list(ev, items, env)?)),
        Kind::Map(map) => match unquote_token(v) {
            Some(",") => match map.get("$1") {
                Some(arg) => ev.eval(arg, env),
                None => Ok(Value::null()),
            },
            Some(_) => Err(EvalError::new(format!(
                "\",@\"-expression found in non-list context: {}",
                v.to_json_string()
            ))),
            None => expand_map_entries(ev, map, env),
        },
        _ => Ok(v.clone()),
    }
}

fn if_expr(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    if ev.eval_arg(expr, "cond", env)?.is_true() {
        ev.eval_or(expr, "then", Value::empty_list(), env)
    } else {
        ev.eval_or(expr, "else", Value::empty_list(), env)
    }
}

fn cond(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    if let Some(conds) = expr.get("cond") {
        let pairs = conds.as_list().ok_or_else(|| {
            EvalError::new(format!(
                "cond in cond has to be a list of pairs, but found {}",
                conds.to_json_string()
            ))
        })?;
        for pair in pairs {
            let p = pair.as_list().filter(|p| p.len() == 2).ok_or_else(|| {
                EvalError::new(format!(
                    "cond in cond has to be a list of pairs, but found entry {}",
                    pair.to_json_string()
                ))
            })?;
            if ev.eval(&p[0], env)?.is_true() {
                return ev.eval(&p[1], env);
            }
        }
    }
    ev.eval_or(expr, "default", Value::empty_list(), env)
}

fn case(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    if let Some(cases) = expr.get("case") {
        let cases = cases.as_map().ok_or_else(|| {
            EvalError::new(format!(
                "case in case has to be a map of expressions, but found {}",
                cases.to_json_string()
            ))
        })?;
        let e = expr
            .get("expr")
            .ok_or_else(|| EvalError::new("missing expr in case"))?;
        let key = ev.eval(e, env)?;
        let key = key.as_str().ok_or_else(|| {
            EvalError::new(format!(
                "expr in case must evaluate to string, but found {}",
                key.to_json_string()
            ))
        })?;
        if let Some(val) = cases.get(key) {
            return ev.eval(val, env);
        }
    }
    ev.eval_or(expr, "default", Value::empty_list(), env)
}

fn seq_case(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    if let Some(cases) = expr.get("case") {
        let cases = cases.as_list().ok_or_else(|| {
            EvalError::new(format!(
                "case in case* has to be a list of pairs, but found {}",
                cases.to_json_string()
            ))
        })?;
        let e = expr
            .get("expr")
            .ok_or_else(|| EvalError::new("missing expr in case"))?;
        let cmp = ev.eval(e, env)?;
        if !cmp.is_cacheable() {
            return Err(EvalError::new(format!(
                "Comparison of name-containing values: {}",
                cmp.to_json_string()
            )));
        }
        for pair in cases {
            let p = pair.as_list().filter(|p| p.len() == 2).ok_or_else(|| {
                EvalError::new(format!(
                    "case in case* has to be a list of pairs, but found entry {}",
                    pair.to_json_string()
                ))
            })?;
            if cmp == ev.eval(&p[0], env)? {
                return ev.eval(&p[1], env);
            }
        }
    }
    ev.eval_or(expr, "default", Value::empty_list(), env)
}

fn fail(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let msg = ev.eval_or(expr, "msg", Value::null(), env)?;
    Err(EvalError::user(msg.to_json_string()))
}

fn assert(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let val = ev.eval(required(expr, "$1")?, env)?;
    let var = match expr.get("var") {
        Some(v) => expect_str(v)?.to_string(),
        None => "_".to_string(),
    };
    let inner = env.update(var, val.clone());
    let pred = ev.eval(required(expr, "predicate")?, &inner)?;
    if pred.is_true() {
        return Ok(val);
    }
    let msg = eval_msg(ev, expr.get("msg").unwrap_or(&Value::null()), &inner);
    Err(EvalError::user(msg))
}

fn assert_non_empty(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let val = ev.eval(required(expr, "$1")?, env)?;
    let ok = match val.kind() {
        Kind::String(s) => !s.is_empty(),
        Kind::List(l) => !l.is_empty(),
        Kind::Map(m) => !m.is_empty(),
        _ => false,
    };
    if ok {
        return Ok(val);
    }
    let msg = eval_msg(ev, expr.get("msg").unwrap_or(&Value::null()), env);
    Err(EvalError::user(format!(
        "{msg}\nExpected non-empty value but found: {}",
        val.to_json_string()
    )))
}

fn context(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    match ev.eval_or(expr, "$1", Value::null(), env) {
        Ok(v) => Ok(v),
        Err(err) => {
            let msg = eval_msg(ev, expr.get("msg").unwrap_or(&Value::empty_map()), env);
            let involved = err.involved_objects().to_vec();
            Err(
                EvalError::user_raw(format!("In Context {msg}\n{}", err.render_body()))
                    .with_involved(involved),
            )
        }
    }
}

fn equal(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let a = ev.eval_arg(expr, "$1", env)?;
    if !a.is_cacheable() {
        return Err(EvalError::new(format!(
            "Comparison of name-containing values; first argument is {}",
            a.to_json_string()
        )));
    }
    let b = ev.eval_arg(expr, "$2", env)?;
    if !b.is_cacheable() {
        return Err(EvalError::new(format!(
            "Comparison of name-containing values; second argument is {}",
            b.to_json_string()
        )));
    }
    Ok(Value::bool(a == b))
}

fn logical(ev: &Evaluator<'_>, expr: &Value, env: &Env, is_and: bool) -> Result<Value, EvalError> {
    let Some(arg) = expr.get("$1") else {
        return Ok(Value::bool(is_and));
    };
    if let Some(items) = arg.as_list() {
        for item in items {
            if ev.eval(item, env)?.is_true() != is_and {
                return Ok(Value::bool(!is_and));
            }
        }
        return Ok(Value::bool(is_and));
    }
    unary(ev, expr, env, |v| {
        let items = expect_list(v)?;
        Ok(Value::bool(if is_and {
            items.iter().all(Value::is_true)
        } else {
            items.iter().any(Value::is_true)
        }))
    })
}

fn and(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    logical(ev, expr, env, true)
}

fn or(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    logical(ev, expr, env, false)
}

fn flatten(v: &Value) -> Result<Value, EvalError> {
    let items = list_arg(v, "Flatten expects list")?;
    let mut out = Vec::new();
    for item in items {
        match item.as_list() {
            Some(l) => out.extend(l.iter().cloned()),
            None => {
                return Err(EvalError::new(format!(
                    "Non-list entry found for argument in flatten: {}.",
                    item.to_json_string()
                )))
            }
        }
    }
    Ok(Value::list(out))
}

fn arith(v: &Value, unit: f64, what: &str, op: fn(f64, f64) -> f64) -> Result<Value, EvalError> {
    let items = v.as_list().ok_or_else(|| {
        EvalError::new(format!(
            "{what} expects a list, but found: {}",
            v.to_json_string()
        ))
    })?;
    let mut acc = unit;
    for item in items {
        let x = item.as_number().ok_or_else(|| {
            EvalError::new(format!(
                "Non-number entry found for argument to {what}: {}",
                item.to_json_string()
            ))
        })?;
        acc = op(acc, x);
    }
    Ok(Value::number(acc))
}

fn nub(v: &Value, keep_right: bool) -> Result<Value, EvalError> {
    let name = if keep_right { "nub_right" } else { "nub_left" };
    let items = list_arg(v, &format!("{name} expects list"))?;
    if !v.is_cacheable() {
        return Err(EvalError::new(format!(
            "Implicit comparison by passing name-containing value to {name}: {}",
            v.to_json_string()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    if keep_right {
        for item in items.iter().rev() {
            if seen.insert(item.hash()) {
                out.push(item.clone());
            }
        }
        out.reverse();
    } else {
        for item in items {
            if seen.insert(item.hash()) {
                out.push(item.clone());
            }
        }
    }
    Ok(Value::list(out))
}

/// C `atol`: optional white space and sign, then decimal digits; junk
/// stops the parse (nothing parsed gives 0); saturates on overflow.
pub(super) fn atol(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        let d = (b - b'0') as i64;
        n = match n.checked_mul(10).and_then(|n| {
            if neg {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        }) {
            Some(n) => n,
            None => return if neg { i64::MIN } else { i64::MAX },
        };
    }
    n
}

/// C `lround` into an `i64` (half away from zero).
fn lround(x: f64) -> i64 {
    x.round() as i64
}

/// Lists longer than this are refused instead of exhausting memory.
const MAX_RANGE: i64 = 1 << 24;

fn range(v: &Value) -> Result<Value, EvalError> {
    let len = match v.kind() {
        Kind::Number(x) if *x > 0.0 => lround(*x),
        Kind::String(s) => atol(s),
        _ => 0,
    };
    if !(0..=MAX_RANGE).contains(&len) {
        return Err(EvalError::new(format!(
            "range: cannot create a list of length {len}"
        )));
    }
    Ok(Value::list(
        (0..len).map(|i| Value::string(i.to_string())).collect(),
    ))
}

fn change_ending(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let name = ev.eval_or(expr, "$1", empty_string(), env)?;
    let ending = ev.eval_or(expr, "ending", empty_string(), env)?;
    let name = expect_str(&name)?;
    let ending = expect_str(&ending)?;
    let base = path::join(path::parent_path(name), path::stem(name));
    Ok(Value::string(base + ending))
}

fn join_strings(
    v: &Value,
    sep: &str,
    quote: bool,
    allow_string: bool,
) -> Result<String, EvalError> {
    if allow_string {
        if let Some(s) = v.as_str() {
            return Ok(if quote { shell_quote(s) } else { s.to_string() });
        }
    }
    let Some(items) = v.as_list() else {
        return Err(EvalError::new(format!(
            "Join expects a list of strings{}, but got: {}.",
            if allow_string {
                " or a single string"
            } else {
                ""
            },
            v.to_json_string()
        )));
    };
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let s = expect_str(item)?;
        if quote {
            out.push_str(&shell_quote(s));
        } else {
            out.push_str(s);
        }
    }
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn join(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let list = ev.eval_or(expr, "$1", Value::empty_list(), env)?;
    let sep = ev.eval_or(expr, "separator", empty_string(), env)?;
    let sep = expect_str(&sep)?;
    Ok(Value::string(join_strings(&list, sep, false, false)?))
}

fn join_cmd(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let list = ev.eval_or(expr, "$1", Value::empty_list(), env)?;
    Ok(Value::string(join_strings(&list, " ", true, false)?))
}

fn json_encode(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let v = ev.eval_or(expr, "$1", Value::empty_list(), env)?;
    Ok(Value::string(crate::build::json::dump_compact(
        &v.to_json_mode(JsonMode::NullForNonJson),
    )))
}

fn escape_chars(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let s = ev.eval_or(expr, "$1", empty_string(), env)?;
    let chars = ev.eval_or(expr, "chars", empty_string(), env)?;
    let prefix = ev.eval_or(expr, "escape_prefix", Value::string("\\"), env)?;
    let s = expect_str(&s)?;
    if s.is_empty() {
        return Ok(Value::string(""));
    }
    let (chars, prefix) = (expect_str(&chars)?, expect_str(&prefix)?);
    // byte-wise, as the reference works on std::string
    let mut out = Vec::with_capacity(s.len());
    for b in s.bytes() {
        if chars.as_bytes().contains(&b) {
            out.extend_from_slice(prefix.as_bytes());
        }
        out.push(b);
    }
    String::from_utf8(out)
        .map(Value::string)
        .map_err(|_| EvalError::new("escape_chars produced a string that is not valid UTF-8"))
}

fn enumerate(v: &Value) -> Result<Value, EvalError> {
    let items = list_arg(v, "enumerate expects list")?;
    Ok(Value::map(
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{i:010}"), item.clone()))
            .collect(),
    ))
}

fn set(v: &Value) -> Result<Value, EvalError> {
    let items = list_arg(v, "set expects list of strings")?;
    let mut out = Map::new();
    for item in items {
        let s = item.as_str().ok_or_else(|| {
            EvalError::new(format!(
                "set expects list of strings found entry: {}.",
                item.to_json_string()
            ))
        })?;
        out.insert(s.to_string(), Value::bool(true));
    }
    Ok(Value::map(out))
}

fn lookup_expr(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let k = ev.eval(required(expr, "key")?, env)?;
    let d = ev.eval(required(expr, "map")?, env)?;
    let k = k.as_str().ok_or_else(|| {
        EvalError::new(format!(
            "Key expected to be string but found {}.",
            k.to_json_string()
        ))
    })?;
    let d = d.as_map().ok_or_else(|| {
        EvalError::new(format!(
            "Map expected to be mapping but found {}.",
            d.to_json_string()
        ))
    })?;
    match d.get(k) {
        Some(v) if !v.is_null() => Ok(v.clone()),
        _ => ev.eval_or(expr, "default", Value::null(), env),
    }
}

fn array_access(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let k = ev.eval(required(expr, "index")?, env)?;
    let d = ev.eval(required(expr, "list")?, env)?;
    let list = d.as_list().ok_or_else(|| {
        EvalError::new(format!(
            "List expected to be list, but found {}.",
            d.to_json_string()
        ))
    })?;
    let len = list.len() as i64;
    let index = match k.kind() {
        Kind::Number(x) => lround(*x),
        Kind::String(s) => atol(s),
        _ => 0,
    };
    if (0..len).contains(&index) {
        return Ok(list[index as usize].clone());
    }
    if index < 0 && len.checked_add(index).is_some_and(|i| i >= 0) {
        return Ok(list[(len + index) as usize].clone());
    }
    ev.eval_or(expr, "default", Value::null(), env)
}

fn singleton_map(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let key = ev.eval_arg(expr, "key", env)?;
    let value = ev.eval_arg(expr, "value", env)?;
    let mut m = Map::new();
    m.insert(expect_str(&key)?.to_string(), value);
    Ok(Value::map(m))
}

/// Union of a list of maps, later entries winning; with `disjoint`, equal
/// keys must carry equal values.
fn union(v: &Value, disjoint: bool) -> Result<Value, EvalError> {
    let items = v.as_list().ok_or_else(|| {
        EvalError::new(format!(
            "Union expects list of maps but got: {}.",
            v.to_json_string()
        ))
    })?;
    let mut maps = Vec::with_capacity(items.len());
    for item in items {
        maps.push(item.as_map().ok_or_else(|| {
            EvalError::new(format!(
                "Map union list element is not a map: {}",
                item.to_json_string()
            ))
        })?);
    }
    let non_empty: Vec<usize> = (0..maps.len()).filter(|i| !maps[*i].is_empty()).collect();
    match non_empty.len() {
        0 => return Ok(Value::empty_map()),
        1 => return Ok(items[non_empty[0]].clone()),
        _ => {}
    }
    let mut out = Map::new();
    for i in non_empty {
        for (k, val) in maps[i] {
            if disjoint {
                if let Some(old) = out.get(k) {
                    if old != val {
                        return Err(EvalError::new(format!(
                            "Map union not essentially disjoint as claimed, duplicate key {}; conflicting values:\n- {}\n- {}",
                            Value::string(k.clone()).to_json_string(),
                            abbrev(old),
                            abbrev(val)
                        ))
                        .with_involved(vec![old.clone(), val.clone()]));
                    }
                }
            }
            out.insert(k.clone(), val.clone());
        }
    }
    Ok(Value::map(out))
}

fn disjoint_map_union(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let arg = ev.eval_arg(expr, "$1", env)?;
    if !arg.is_cacheable() {
        return Err(EvalError::new(format!(
            "Argument to disjoint_map_union is name-containing: {}",
            arg.to_json_string()
        )));
    }
    union(&arg, true).map_err(|err| match expr.get("msg") {
        None => err.with_note(format!(
            "Having evaluated the argument to {}:",
            abbrev(&arg)
        )),
        Some(msg) => {
            let msg = eval_msg(ev, msg, env);
            let involved = err.involved_objects().to_vec();
            EvalError::user(format!(
                "{msg}\nUnderlying {}\nThe argument of the union was {}",
                err.render_body(),
                abbrev(&arg)
            ))
            .with_involved(involved)
        }
    })
}

fn to_subdir(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let d = ev.eval(required(expr, "$1")?, env)?;
    let s = ev.eval_or(expr, "subdir", Value::string("."), env)?;
    let flat = ev.eval_or(expr, "flat", Value::bool(false), env)?.is_true();
    let subdir = expect_str(&s)?;
    let map = expect_map(&d)?;
    let mut out = Map::new();
    for (k, v) in map {
        let new_key = if flat {
            path::to_normal_path(&path::join(subdir, path::filename(k)))
        } else {
            path::to_normal_path(&path::join(subdir, k))
        };
        if let Some(old) = out.get(&new_key) {
            if !(old == v && v.is_cacheable()) {
                let what = if flat { "Flat staging" } else { "Staging" };
                return Err(match expr.get("msg") {
                    None => EvalError::new(format!(
                        "{what} of {} to subdir {subdir} conflicts on path {new_key}",
                        d.to_json_string()
                    )),
                    Some(msg) => {
                        let msg = eval_msg(ev, msg, env);
                        if flat {
                            EvalError::user(format!(
                                "{msg}\nReason: flat staging to subdir {subdir} conflicts on path {new_key}\nMap to flatly stage was {}\n",
                                d.to_json_string()
                            ))
                        } else {
                            EvalError::user(format!(
                                "{msg}\nReason: staging to subdir {subdir} conflicts on new path {new_key}\nMap to stage was {}\n",
                                d.to_json_string()
                            ))
                        }
                    }
                });
            }
        }
        out.insert(new_key, v.clone());
    }
    Ok(Value::map(out))
}

fn from_subdir(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let d = ev.eval(required(expr, "$1")?, env)?;
    let s = ev.eval_or(expr, "subdir", Value::string("."), env)?;
    let subdir = expect_str(&s)?;
    let map = expect_map(&d)?;
    let mut out = Map::new();
    for (k, v) in map {
        let new_path = path::to_normal_path(&path::lexically_relative(k, subdir));
        if !path::is_non_upwards(&new_path) {
            continue;
        }
        if let Some(old) = out.get(&new_path) {
            if !(old == v && v.is_cacheable()) {
                return Err(EvalError::new(format!(
                    "Staging conflict for path {}",
                    Value::string(new_path).to_json_string()
                )));
            }
            continue;
        }
        out.insert(new_path, v.clone());
    }
    Ok(Value::map(out))
}

fn literal_str(expr: &Value, key: &str, default: &str) -> Result<String, EvalError> {
    match expr.get(key) {
        Some(v) => Ok(expect_str(v)?.to_string()),
        None => Ok(default.to_string()),
    }
}

fn body(expr: &Value) -> Value {
    expr.get("body").cloned().unwrap_or_else(Value::empty_list)
}

fn foreach(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let range = ev.eval_or(expr, "range", Value::empty_list(), env)?;
    let items = expect_list(&range)?;
    if items.is_empty() {
        return Ok(Value::empty_list());
    }
    let var = literal_str(expr, "var", "_")?;
    let body = body(expr);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(ev.eval(&body, &env.update(var.clone(), item.clone()))?);
    }
    Ok(Value::list(out))
}

fn foreach_map(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let range = ev.eval_or(expr, "range", empty_map_expr(), env)?;
    let map = expect_map(&range)?;
    if map.is_empty() {
        return Ok(Value::empty_list());
    }
    let var_key = literal_str(expr, "var_key", "_")?;
    let var_val = literal_str(expr, "var_val", "$_")?;
    let body = body(expr);
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let inner = env
            .update(var_key.clone(), Value::string(k.clone()))
            .update(var_val.clone(), v.clone());
        out.push(ev.eval(&body, &inner)?);
    }
    Ok(Value::list(out))
}

fn zip_with(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let r1 = ev.eval_or(expr, "range_1", Value::empty_list(), env)?;
    let l1 = expect_list(&r1)?;
    if l1.is_empty() {
        return Ok(Value::empty_list());
    }
    let r2 = ev.eval_or(expr, "range_2", Value::empty_list(), env)?;
    let l2 = expect_list(&r2)?;
    if l2.is_empty() {
        return Ok(Value::empty_list());
    }
    let var_1 = literal_str(expr, "var_1", "$1")?;
    let var_2 = literal_str(expr, "var_2", "$2")?;
    let body = body(expr);
    let mut out = Vec::new();
    for (a, b) in l1.iter().zip(l2) {
        let inner = env
            .update(var_1.clone(), a.clone())
            .update(var_2.clone(), b.clone());
        out.push(ev.eval(&body, &inner)?);
    }
    Ok(Value::list(out))
}

fn zip_map(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let rk = ev.eval_or(expr, "range_key", Value::empty_list(), env)?;
    let keys = expect_list(&rk)?;
    if keys.is_empty() {
        return Ok(Value::empty_map());
    }
    let rv = ev.eval_or(expr, "range_val", Value::empty_list(), env)?;
    let vals = expect_list(&rv)?;
    if vals.is_empty() {
        return Ok(Value::empty_map());
    }
    let mut out = Map::new();
    for (k, v) in keys.iter().zip(vals) {
        out.insert(expect_str(k)?.to_string(), v.clone());
    }
    Ok(Value::map(out))
}

fn foldl(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let range = ev.eval(required(expr, "range")?, env)?;
    let mut acc = ev.eval_or(expr, "start", Value::empty_list(), env)?;
    let items = expect_list(&range)?;
    if items.is_empty() {
        return Ok(acc);
    }
    let var = literal_str(expr, "var", "_")?;
    let accum_var = literal_str(expr, "accum_var", "$1")?;
    let body = body(expr);
    for item in items {
        let mut m = Map::new();
        m.insert(accum_var.clone(), acc);
        // on equal names the element wins
        m.insert(var.clone(), item.clone());
        acc = ev.eval(&body, &env.update_map(m))?;
    }
    Ok(acc)
}

fn let_star(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let mut inner = env.clone();
    if let Some(bindings) = expr.get("bindings") {
        let list = bindings.as_list().ok_or_else(|| {
            EvalError::new(format!(
                "bindings in let* has to be a list of pairs, but found {}",
                bindings.to_json_string()
            ))
        })?;
        for (pos, binding) in list.iter().enumerate() {
            let pair = binding.as_list().filter(|p| p.len() == 2).ok_or_else(|| {
                EvalError::new(format!(
                    "bindings in let* has to be a list of pairs, but found entry {}",
                    binding.to_json_string()
                ))
            })?;
            let name = pair[0].as_str().ok_or_else(|| {
                EvalError::new(format!(
                    "variable names in let* have to be strings, but found binding entry {}",
                    binding.to_json_string()
                ))
            })?;
            let val = ev.eval(&pair[1], &inner).map_err(|e| {
                e.with_note(format!(
                    "Evaluating entry {pos} in bindings, binding {}:",
                    pair[0].to_json_string()
                ))
            })?;
            inner = inner.update(name, val);
        }
    }
    let body = expr.get("body").cloned().unwrap_or_else(Value::empty_map);
    ev.eval(&body, &inner)
        .map_err(|e| e.with_note("Evaluating the body:"))
}

fn env_expr(_: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let Some(vars) = expr.get("vars") else {
        return Ok(Value::empty_map());
    };
    let list = vars.as_list().ok_or_else(|| {
        EvalError::new(format!(
            "vars in env has to be a list of strings, but found {}",
            vars.to_json_string()
        ))
    })?;
    let mut out = Map::new();
    for var in list {
        let name = var.as_str().ok_or_else(|| {
            EvalError::new(format!(
                "vars in env has to be a list of strings, but found entry {}",
                var.to_json_string()
            ))
        })?;
        out.insert(
            name.to_string(),
            env.get(name).cloned().unwrap_or_else(Value::null),
        );
    }
    Ok(Value::map(out))
}

fn concat_target_name(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    let p1 = ev.eval_or(expr, "$1", empty_string(), env)?;
    let p2 = ev.eval_or(expr, "$2", empty_string(), env)?;
    let append = join_strings(&p2, "", false, true)?;
    if let Some(s) = p1.as_str() {
        return Ok(Value::string(format!("{s}{append}")));
    }
    if let Some(items) = p1.as_list() {
        if items.iter().all(|i| i.as_str().is_some()) {
            let n = items.len();
            return Ok(Value::list(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let s = item.as_str().unwrap_or_default();
                        if i + 1 == n {
                            Value::string(format!("{s}{append}"))
                        } else {
                            item.clone()
                        }
                    })
                    .collect(),
            ));
        }
    }
    Err(EvalError::new(format!(
        "Unsupported expression for concat: {}.",
        p1.to_json_string()
    )))
}
