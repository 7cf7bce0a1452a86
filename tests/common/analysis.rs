//! The analysis conformance fixtures (fixtures/analysis/*.json, format in
//! fixtures/README.md): loading cases, materialising one into a directory,
//! running an `analyse` command line on it and comparing the outcome with the
//! case's expectation.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::git::git;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/analysis")
}

/// One fixture file: its path and parsed content (`{"cases": [...]}`).
pub struct Group {
    pub path: PathBuf,
    pub content: Value,
}

impl Group {
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn cases(&self) -> &[Value] {
        self.content["cases"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// All fixture files, sorted by name. A file that is not valid JSON panics
/// with its name: a broken fixture must not be skipped silently.
pub fn load_groups() -> Vec<Group> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixtures/analysis exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let content: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Group { path, content }
        })
        .collect()
}

/// Whether the reference 1.5.1 can evaluate the case.
pub fn reference_can(case: &Value) -> bool {
    case.get("reference") != Some(&Value::Bool(false))
}

pub fn wants_compatible(case: &Value) -> bool {
    case.get("compatible") == Some(&Value::Bool(true))
}

/// Writes the case's files under `ws` (see the prefixes in fixtures/README.md).
fn write_files(files: &Map<String, Value>, ws: &Path) {
    std::fs::create_dir_all(ws).unwrap();
    for (key, value) in files {
        let (kind, rel) = match key.split_once(':') {
            Some((k @ ("exec" | "link" | "dir"), rel)) => (k, rel),
            _ => ("", key.as_str()),
        };
        let path = ws.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if kind == "dir" {
            std::fs::create_dir_all(&path).unwrap();
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if kind == "link" {
            std::os::unix::fs::symlink(&text, &path).unwrap();
            continue;
        }
        std::fs::write(&path, text).unwrap();
        if kind == "exec" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Rewrites every `["file", P]` root of a repository description: relative
/// paths become absolute under `ws`, or, with git roots, git-tree roots of
/// the committed case directory (`git_tree` gives the tree id of a path).
fn resolve_roots(value: &mut Value, ws: &Path, git_tree: Option<&dyn Fn(&str) -> String>) {
    match value {
        Value::Array(a) if a.len() == 2 && a[0] == "file" && a[1].is_string() => {
            let rel = a[1].as_str().unwrap().to_string();
            *value = match git_tree {
                Some(tree_of) => json!(["git tree", tree_of(&rel), ws.to_str().unwrap()]),
                None => {
                    let rel = rel.trim_matches('/');
                    let path = if rel.is_empty() || rel == "." {
                        ws.to_path_buf()
                    } else {
                        ws.join(rel)
                    };
                    json!(["file", path.to_str().unwrap()])
                }
            };
        }
        Value::Array(a) => a.iter_mut().for_each(|v| resolve_roots(v, ws, git_tree)),
        Value::Object(o) => o.values_mut().for_each(|v| resolve_roots(v, ws, git_tree)),
        _ => {}
    }
}

/// Materialises `case` in `dir`: the workspace at `dir/ws` and the repository
/// configuration at `dir/repos.json`, whose path is returned.
pub fn materialise(case: &Value, dir: &Path) -> PathBuf {
    let ws = dir.join("ws");
    let empty = Map::new();
    write_files(case["files"].as_object().unwrap_or(&empty), &ws);
    let use_git = case.get("git_roots") == Some(&Value::Bool(true));
    if use_git {
        git(&ws, &["init", "-q"]);
        git(&ws, &["add", "-A"]);
        git(&ws, &["commit", "-q", "--allow-empty", "-m", "case"]);
    }
    let git_tree = |rel: &str| -> String {
        let rel = rel.trim_matches('/');
        if rel.is_empty() || rel == "." {
            git(&ws, &["rev-parse", "HEAD^{tree}"])
        } else {
            git(&ws, &["rev-parse", &format!("HEAD:{rel}")])
        }
    };
    let mut repos = case
        .get("repos")
        .cloned()
        .unwrap_or_else(|| json!({"repositories": {"": {"workspace_root": ["file", "."]}}}));
    if let Some(Value::Object(repositories)) = repos.get_mut("repositories") {
        for desc in repositories.values_mut() {
            resolve_roots(
                desc,
                &ws,
                use_git.then_some(&git_tree as &dyn Fn(&str) -> String),
            );
        }
    }
    let path = dir.join("repos.json");
    std::fs::write(&path, repos.to_string()).unwrap();
    path
}

/// What one `analyse` run produced.
pub struct Outcome {
    pub success: bool,
    pub result: Option<Value>,
    pub graph: Option<Value>,
    pub stderr: String,
}

/// Runs `program analyse` on a materialised case (the command line in
/// fixtures/README.md), with a fresh local build root per run.
pub fn run_analyse(
    program: &Path,
    case: &Value,
    dir: &Path,
    repos: &Path,
    compatible: bool,
    extra: &[&str],
) -> Outcome {
    let tag = if compatible { "compat" } else { "native" };
    let lbr = dir.join(format!("lbr-{tag}"));
    let result = dir.join(format!("result-{tag}.json"));
    let graph = dir.join(format!("graph-{tag}.json"));
    let _ = std::fs::remove_file(&result);
    let _ = std::fs::remove_file(&graph);
    let mut cmd = Command::new(program);
    cmd.arg("analyse").arg("-C").arg(repos).args(extra);
    if let Some(main) = case
        .get("repos")
        .and_then(|r| r.get("main"))
        .and_then(Value::as_str)
    {
        cmd.args(["--main", main]);
    }
    if let Some(config) = case.get("config") {
        cmd.arg("-D").arg(config.to_string());
    }
    if compatible {
        cmd.arg("--compatible");
    }
    cmd.arg("--local-build-root")
        .arg(&lbr)
        .arg("--dump-result")
        .arg(&result)
        .arg("--dump-plain-graph")
        .arg(&graph);
    let target = case["target"].as_array().expect("case has a target");
    for part in target {
        cmd.arg(part.as_str().expect("target parts are strings"));
    }
    // The workspace is not the working directory, so nothing there is found by accident.
    cmd.current_dir(dir);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            return Outcome {
                success: false,
                result: None,
                graph: None,
                stderr: format!("cannot run {}: {e}", program.display()),
            }
        }
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    };
    Outcome {
        success: out.status.success(),
        result: read(&result),
        graph: read(&graph),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Compares an outcome with the case's `expect`; returns the mismatches.
/// With `exact`, tree and action ids must be the recorded ones too;
/// otherwise they are compared by what they stand for.
pub fn check(
    expect: &Value,
    outcome: &Outcome,
    compatible: bool,
    message: bool,
    exact: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if expect.get("error") == Some(&Value::Bool(true)) {
        if outcome.success {
            problems.push("expected an error, but analysis succeeded".to_string());
        }
        if let Some(m) = expect.get("message").and_then(Value::as_str) {
            if message && !outcome.stderr.contains(m) {
                problems.push(format!(
                    "stderr lacks {m:?}; it ends: {}",
                    tail(&outcome.stderr, 300)
                ));
            }
        }
        return problems;
    }
    if !outcome.success {
        problems.push(format!("analysis failed: {}", tail(&outcome.stderr, 400)));
        return problems;
    }
    let suffix = if compatible { "_compatible" } else { "" };
    let (Some(want_result), Some(want_graph)) = (
        expect.get(format!("result{suffix}")),
        expect.get(format!("graph{suffix}")),
    ) else {
        problems.push(format!("expect has no result{suffix}/graph{suffix}"));
        return problems;
    };
    let (Some(got_result), Some(got_graph)) = (&outcome.result, &outcome.graph) else {
        problems.push("no result or graph written".to_string());
        return problems;
    };
    if want_result == got_result && want_graph == got_graph {
        return problems;
    }
    if exact {
        for (what, w, g) in [
            ("result", want_result, got_result),
            ("graph", want_graph, got_graph),
        ] {
            if let Some(d) = first_difference(what, w, g) {
                problems.push(d);
            }
        }
        return problems;
    }
    // Tree and action ids are internal and changed between justbuild
    // versions; equal structure under a content-based renaming is conformance.
    let want = canonical(want_result, want_graph);
    let got = canonical(got_result, got_graph);
    for (what, w, g) in [("result", &want.0, &got.0), ("graph", &want.1, &got.1)] {
        if let Some(d) = first_difference(what, w, g) {
            problems.push(format!("{d} (ids renamed by content)"));
        }
    }
    problems
}

/// The result and graph with every tree, tree-overlay and action id replaced
/// by a hash of what it stands for (itself renamed the same way).
pub fn canonical(result: &Value, graph: &Value) -> (Value, Value) {
    let mut names = Renamer {
        graph,
        done: BTreeMap::new(),
    };
    let result = names.rewrite(result);
    // Sections without ids (blobs, anything unexpected) are compared as they are.
    let mut out = graph.clone();
    for (section, tag) in [("trees", "T"), ("tree_overlays", "O"), ("actions", "A")] {
        let mut renamed = Map::new();
        for (id, content) in graph
            .get(section)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            renamed.insert(names.id(tag, section, id), names.rewrite(content));
        }
        if graph.get(section).is_some() {
            out[section] = Value::Object(renamed);
        }
    }
    (result, out)
}

struct Renamer<'a> {
    graph: &'a Value,
    done: BTreeMap<(String, String), String>,
}

impl Renamer<'_> {
    fn id(&mut self, tag: &str, section: &str, id: &str) -> String {
        let key = (tag.to_string(), id.to_string());
        if let Some(n) = self.done.get(&key) {
            return n.clone();
        }
        let name = match self.graph.get(section).and_then(|s| s.get(id)) {
            Some(content) => {
                let content = self.rewrite(content);
                let digest = Sha256::digest(format!("{tag}:{content}").as_bytes());
                format!("{tag}-{}", hex::encode(&digest[..12]))
            }
            // Not in the graph: keep it visible, it cannot be compared by content.
            None => format!("{tag}-unknown-{id}"),
        };
        self.done.insert(key, name.clone());
        name
    }

    /// Renames the ids inside every artifact description in `v`.
    fn rewrite(&mut self, v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let kind = o.get("type").and_then(Value::as_str);
                let id = o
                    .get("data")
                    .and_then(|d| d.get("id"))
                    .and_then(Value::as_str);
                let target = match kind {
                    Some("TREE") => Some(("T", "trees")),
                    Some("TREE_OVERLAY") => Some(("O", "tree_overlays")),
                    Some("ACTION") => Some(("A", "actions")),
                    _ => None,
                };
                if let (Some((tag, section)), Some(id)) = (target, id) {
                    let mut out = v.clone();
                    out["data"]["id"] = Value::String(self.id(tag, section, id));
                    return out;
                }
                Value::Object(
                    o.iter()
                        .map(|(k, v)| (k.clone(), self.rewrite(v)))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.rewrite(v)).collect()),
            other => other.clone(),
        }
    }
}

/// The last `n` bytes of a tool's stderr on one line, without colour codes.
fn tail(s: &str, n: usize) -> String {
    let mut plain = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\x1b') {
        plain.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = rest.find('m').map_or("", |j| &rest[j + 1..]);
    }
    plain.push_str(rest);
    let s = plain.trim();
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap();
    s[start..].replace('\n', " | ")
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 120 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(117).map_or(s.len(), |c| c.0)]
                )
            } else {
                s
            }
        }
    }
}

/// The first JSON path (in sorted-key order) where `want` and `got` differ,
/// with both values there, or None when equal.
pub fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    if want == got {
        return None;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let only_w: Vec<&String> = w.keys().filter(|k| !g.contains_key(*k)).collect();
            let only_g: Vec<&String> = g.keys().filter(|k| !w.contains_key(*k)).collect();
            // One entry renamed on each side (an id that changed): compare the contents.
            if let ([a], [b]) = (only_w.as_slice(), only_g.as_slice()) {
                if let Some(d) = first_difference(&format!("{path}.{{{a}|{b}}}"), &w[*a], &g[*b]) {
                    return Some(d);
                }
            }
            let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => first_difference(&p, a, b),
                    (a, b) => Some(format!("{p}: expected {}, got {}", short(a), short(b))),
                }
            })
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ => Some(format!(
            "{path}: expected {}, got {}",
            short(Some(want)),
            short(Some(got))
        )),
    }
}

/// The expectation recorded from a reference outcome: the result and graph,
/// or an error (keeping a message the old expectation had).
pub fn recorded(old: Option<&Value>, native: &Outcome, compat: Option<&Outcome>) -> Value {
    let failed = !native.success || compat.is_some_and(|c| !c.success);
    if failed {
        let mut e = json!({"error": true});
        if let Some(m) = old.and_then(|o| o.get("message")) {
            e["message"] = m.clone();
        }
        return e;
    }
    let mut e = json!({
        "result": native.result.clone().unwrap_or(Value::Null),
        "graph": native.graph.clone().unwrap_or(Value::Null),
    });
    if let Some(c) = compat {
        e["result_compatible"] = c.result.clone().unwrap_or(Value::Null);
        e["graph_compatible"] = c.graph.clone().unwrap_or(Value::Null);
    }
    e
}

/// Order of a case's keys when written back: the reading order of the format.
const CASE_KEYS: [&str; 11] = [
    "name",
    "about",
    "files",
    "repos",
    "git_roots",
    "target",
    "config",
    "compatible",
    "reference",
    "expect",
    "",
];

fn key_rank(depth: usize, key: &str) -> usize {
    // Depth 2 is a case object inside {"cases": [...]}.
    if depth == 2 {
        CASE_KEYS
            .iter()
            .position(|k| *k == key)
            .unwrap_or(CASE_KEYS.len())
    } else {
        0
    }
}

/// Pretty JSON with two-space indentation like serde_json's, but with the
/// keys of each case in the format's order (other objects sorted), so that
/// re-recording a hand-written file only changes what was recorded.
pub fn pretty(value: &Value) -> String {
    let mut out = String::new();
    write_pretty(value, 0, &mut out);
    out.push('\n');
    out
}

fn write_pretty(value: &Value, depth: usize, out: &mut String) {
    let pad = |d: usize| "  ".repeat(d);
    match value {
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, v) in a.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_pretty(v, depth + 1, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by_key(|k| (key_rank(depth, k), k.as_str()));
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push_str(": ");
                write_pretty(&o[*k], depth + 1, out);
                out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether the reference `just` at `just` predates 1.6 and so identifies
/// trees and actions without the `TREE:`/`ACTION:` prefixes (jserve's
/// `--legacy-ids`).
pub fn reference_uses_legacy_ids(just: &Path) -> bool {
    let out = Command::new(just).arg("version").output();
    let version: Value = out
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null);
    let v = &version["version"];
    v[0].as_u64() == Some(1) && v[1].as_u64().is_some_and(|minor| minor < 6)
}
