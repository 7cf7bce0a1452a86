//! Analysis benchmark: `jserve analyse` and the reference `just analyse` on a
//! generated repository of 5,000 targets in 500 modules.
//!
//!   cargo build --release && cargo bench --bench analysis
//!
//! The repository (all in one workspace root, module "" holds RULES):
//! * 10 layers of 50 modules `lNN/mNN`, each with 10 targets: six `lib`
//!   targets of the user rule ["", "lib"] (GLOB over their two sources,
//!   deps on the module's previous lib or on libs of modules one and two
//!   layers down), a built-in `install` of the module's headers (GLOB), two
//!   built-in `generic` actions, and a `bundle` (user rule) of them all;
//! * the top target ["", "all"] (user rule "app") over the 500 bundles,
//!   linking every library in one action.
//!
//! The `lib` rule reads the config variable OPT and provides its libraries
//! transitively (a map) and its headers to direct dependents only, like a
//! C/C++ rule set does. The top target is analysed with -D {"OPT": "-O2"}.
//!
//! jserve: `$JSERVE_BIN`, else `<workspace>/target/release/jserve`; reported
//! "not available" when it lacks `analyse`. Reference: `$JSERVE_REFERENCE_JUST`,
//! else `~/.cache/justbuild-ref/bin/just`. Each tool runs 3 times (fresh local
//! build root each); the table gives the median and best wall time, the
//! median CPU time (user + system) and the peak RSS of the child (`wait4`).
//! Both tools must dump the same result (parsed JSON; when it differs, again
//! with action and tree ids renamed by content as in tests/common/analysis.rs),
//! else the bench fails.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const LAYERS: usize = 10;
const MODULES_PER_LAYER: usize = 50;
const LIBS_PER_MODULE: usize = 6;
const RUNS: usize = 3;
const CONFIG: &str = r#"{"OPT": "-O2"}"#;

/// Deterministic pseudo-random numbers (xorshift64), so every run generates
/// the same repository.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn module(layer: usize, index: usize) -> String {
    format!("l{layer:02}/m{index:02}")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The user rules: `lib` (compile + archive), `bundle`, `app`.
fn rules() -> Value {
    let var = |name: &str| json!({"type": "var", "name": name});
    let field = |name: &str| json!({"type": "FIELD", "name": name});
    let over_field = |name: &str, body: Value| json!({"type": "foreach", "var": "x", "range": field(name), "body": body});
    let provides_of = |name: &str, provider: &str| {
        over_field(
            name,
            json!({"type": "DEP_PROVIDES", "dep": var("x"), "provider": provider,
                   "default": {"type": "empty_map"}}),
        )
    };
    let artifacts_of =
        |name: &str| over_field(name, json!({"type": "DEP_ARTIFACTS", "dep": var("x")}));
    let stage = json!({"type": "join", "separator": "/", "$1": field("stage")});
    let compile = json!({
        "type": "foreach_map", "var_key": "src", "var_val": "file", "range": var("srcs"),
        "body": {"type": "let*",
            "bindings": [["obj", {"type": "change_ending", "$1": var("src"), "ending": ".o"}]],
            "body": {"type": "ACTION",
                "inputs": {"type": "map_union", "$1": [var("include"),
                    {"type": "singleton_map", "key": var("src"), "value": var("file")}]},
                "cmd": ["cc", {"type": "var", "name": "OPT", "default": "-O0"},
                        "-I", ".", "-c", var("src"), "-o", var("obj")],
                "outs": [var("obj")]}}});
    json!({
        "lib": {
            "target_fields": ["srcs", "hdrs", "deps"],
            "string_fields": ["name", "stage"],
            "config_vars": ["OPT"],
            "expression": {"type": "let*", "bindings": [
                ["stage", stage],
                ["srcs", {"type": "to_subdir", "subdir": var("stage"),
                          "$1": {"type": "map_union", "$1": artifacts_of("srcs")}}],
                ["hdrs", {"type": "to_subdir", "subdir": var("stage"),
                          "$1": {"type": "map_union", "$1": artifacts_of("hdrs")}}],
                ["include", {"type": "map_union", "$1": {"type": "++", "$1": [
                    [var("hdrs")], provides_of("deps", "hdrs")]}}],
                ["objs", {"type": "map_union", "$1": compile}],
                ["lib", {"type": "join", "$1": [var("stage"), "/lib",
                    {"type": "join", "$1": field("name")}, ".a"]}],
                ["archive", {"type": "ACTION", "inputs": var("objs"),
                    "cmd": {"type": "++", "$1": [["ar", "cqs", var("lib")],
                        {"type": "keys", "$1": var("objs")}]},
                    "outs": [var("lib")]}],
                ["libs", {"type": "map_union", "$1": {"type": "++", "$1": [
                    provides_of("deps", "libs"), [var("archive")]]}}]],
                "body": {"type": "RESULT", "artifacts": var("archive"),
                    "provides": {"type": "env", "vars": ["hdrs", "libs"]}}}
        },
        "bundle": {
            "target_fields": ["libs", "data"],
            "string_fields": ["stage"],
            "expression": {"type": "RESULT",
                "artifacts": {"type": "to_subdir", "subdir": stage,
                    "$1": {"type": "map_union", "$1": artifacts_of("data")}},
                "provides": {"type": "singleton_map", "key": "libs",
                    "value": {"type": "map_union", "$1": provides_of("libs", "libs")}}}
        },
        "app": {
            "target_fields": ["deps"],
            "expression": {"type": "let*", "bindings": [
                ["libs", {"type": "map_union", "$1": provides_of("deps", "libs")}]],
                "body": {"type": "RESULT",
                    "artifacts": {"type": "ACTION", "inputs": var("libs"),
                        "cmd": {"type": "++", "$1": [["cc", "-o", "app"],
                            {"type": "keys", "$1": var("libs")}]},
                        "outs": ["app"]},
                    "runfiles": {"type": "map_union", "$1": artifacts_of("deps")}}}
        }
    })
}

/// The deps of lib `i` of module (`layer`, `index`): the previous lib of the
/// module, or for the first lib two libs one layer down and one further down.
fn lib_deps(rng: &mut Rng, layer: usize, i: usize) -> Vec<Value> {
    if i > 0 {
        return vec![json!(format!("lib{}", i - 1))];
    }
    let mut deps = Vec::new();
    for down in [1, 1, 2] {
        if layer >= down {
            let m = module(layer - down, rng.below(MODULES_PER_LAYER));
            deps.push(json!([m, format!("lib{}", rng.below(LIBS_PER_MODULE))]));
        }
    }
    deps
}

/// Writes the repository into `root`; returns the number of targets written.
fn generate(root: &Path) -> usize {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    write(&root.join("RULES"), &rules().to_string());
    let mut bundles = Vec::new();
    let mut targets = 1;
    for layer in 0..LAYERS {
        for index in 0..MODULES_PER_LAYER {
            let m = module(layer, index);
            let dir = root.join(&m);
            let mut t = serde_json::Map::new();
            for i in 0..LIBS_PER_MODULE {
                for part in ["a", "b"] {
                    let src = format!(
                        "#include \"{m}/p{i}.h\"\nint p{i}{part}(void) {{ return {i}; }}\n"
                    );
                    write(&dir.join(format!("p{i}_{part}.c")), &src);
                }
                write(&dir.join(format!("p{i}.h")), &format!("int p{i}a(void);\n"));
                t.insert(
                    format!("lib{i}"),
                    json!({"type": ["", "lib"], "name": [format!("p{i}")], "stage": [m],
                           "srcs": [["GLOB", null, format!("p{i}_*.c")]], "hdrs": ["headers"],
                           "deps": lib_deps(&mut rng, layer, i)}),
                );
            }
            write(&dir.join("data.txt"), &format!("module {m}\n"));
            t.insert(
                "headers".into(),
                json!({"type": "install", "deps": [["GLOB", null, "*.h"]]}),
            );
            t.insert(
                "gen0".into(),
                json!({"type": "generic", "deps": ["data.txt"], "outs": ["gen0.txt"],
                       "cmds": ["tr a-z A-Z < data.txt > gen0.txt"]}),
            );
            t.insert(
                "gen1".into(),
                json!({"type": "generic", "deps": ["gen0", "headers"], "outs": ["gen1.txt"],
                       "cmds": ["cat gen0.txt *.h | wc -l > gen1.txt"]}),
            );
            let libs: Vec<String> = (0..LIBS_PER_MODULE).map(|i| format!("lib{i}")).collect();
            t.insert(
                "bundle".into(),
                json!({"type": ["", "bundle"], "stage": [m], "libs": libs, "data": ["gen1"]}),
            );
            targets += t.len();
            write(&dir.join("TARGETS"), &Value::Object(t).to_string());
            bundles.push(json!([m, "bundle"]));
        }
    }
    write(
        &root.join("TARGETS"),
        &json!({"all": {"type": "app", "deps": bundles}}).to_string(),
    );
    let repos = json!({"repositories": {"": {"workspace_root": ["file", root.to_str().unwrap()]}}});
    write(&root.join("repos.json"), &repos.to_string());
    targets
}

/// One timed analysis: wall and CPU (user + system) time, peak RSS in KiB,
/// the dumps.
struct Run {
    wall: Duration,
    cpu: Duration,
    rss_kib: i64,
    result: Value,
    graph: Value,
}

fn analyse(
    program: &Path,
    work: &Path,
    repos: &Path,
    n: usize,
    extra: &[&str],
) -> Result<Run, String> {
    let dir = work.join(format!("run-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (result, graph) = (dir.join("result.json"), dir.join("graph.json"));
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let start = Instant::now();
    let child = Command::new(program)
        .arg("analyse")
        .arg("-C")
        .arg(repos)
        .args(extra)
        .args(["-D", CONFIG, "--local-build-root"])
        .arg(dir.join("lbr"))
        .arg("--dump-result")
        .arg(&result)
        .arg("--dump-plain-graph")
        .arg(&graph)
        .args(["", "all"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let (status, cpu, rss_kib) = wait_with_rusage(child.id());
    let wall = start.elapsed();
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("{} failed ({status}): {tail}", program.display()));
    }
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    Ok(Run {
        wall,
        cpu,
        rss_kib,
        result: read(&result),
        graph: read(&graph),
    })
}

/// Reaps `pid` with wait4, which also gives the child's CPU time and peak
/// RSS (`ru_maxrss`, KiB on Linux); std's `wait` discards the rusage.
fn wait_with_rusage(pid: u32) -> (std::process::ExitStatus, Duration, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in; pid is our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as libc::pid_t, "wait4 failed");
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    (
        std::process::ExitStatus::from_raw(status),
        cpu,
        usage.ru_maxrss,
    )
}

/// Whether `program` runs and knows `analyse` (jserve gains it later).
fn has_analyse(program: &Path) -> bool {
    Command::new(program)
        .args(["analyse", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn jserve_bin() -> PathBuf {
    std::env::var_os("JSERVE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/jserve"))
}

fn reference_just() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("JSERVE_REFERENCE_JUST").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/justbuild-ref/bin/just")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs one tool RUNS times; prints its table row; returns the last run.
fn measure(name: &str, program: &Path, work: &Path, repos: &Path, extra: &[&str]) -> Option<Run> {
    let mut runs = Vec::new();
    for n in 0..RUNS {
        match analyse(program, &work.join(name), repos, n, extra) {
            Ok(run) => runs.push(run),
            Err(e) => {
                println!("{name:<10} FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
    walls.sort();
    let rss = runs.iter().map(|r| r.rss_kib).max().unwrap();
    let mut cpus: Vec<Duration> = runs.iter().map(|r| r.cpu).collect();
    cpus.sort();
    let last = runs.pop().unwrap();
    println!(
        "{name:<10} {RUNS:>4} {:>12.0} {:>10.0} {:>13.0} {:>13.1} {:>8}",
        walls[RUNS / 2].as_secs_f64() * 1e3,
        walls[0].as_secs_f64() * 1e3,
        cpus[RUNS / 2].as_secs_f64() * 1e3,
        rss as f64 / 1024.0,
        last.graph["actions"].as_object().map_or(0, |a| a.len())
    );
    Some(last)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    // JSERVE_BENCH_REPO=DIR generates the repository there and keeps it (for profiling).
    let root = std::env::var_os("JSERVE_BENCH_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("repo"));
    let start = Instant::now();
    let targets = generate(&root);
    println!(
        "generated {targets} targets in {} modules ({} source files) in {:.0} ms",
        LAYERS * MODULES_PER_LAYER,
        LAYERS * MODULES_PER_LAYER * (3 * LIBS_PER_MODULE + 1),
        start.elapsed().as_secs_f64() * 1e3
    );
    let repos = root.join("repos.json");
    println!("analyse -D '{CONFIG}' [\"\", \"all\"]");
    println!(
        "{:<10} {:>4} {:>12} {:>10} {:>13} {:>13} {:>8}",
        "tool", "runs", "median ms", "best ms", "median CPU ms", "peak RSS MiB", "actions"
    );
    let jserve = jserve_bin();
    let just = reference_just();
    // Identify trees and actions as the installed reference does, so the
    // dumps can be compared byte for byte.
    let extra: &[&str] = match &just {
        Some(j) if common::analysis::reference_uses_legacy_ids(j) => &["--legacy-ids"],
        _ => &[],
    };
    let ours = if has_analyse(&jserve) {
        measure("jserve", &jserve, tmp.path(), &repos, extra)
    } else {
        println!(
            "jserve     not available ({} has no `analyse`)",
            jserve.display()
        );
        None
    };
    let reference = match just {
        Some(just) => measure("just", &just, tmp.path(), &repos, &[]),
        None => {
            println!("just       not available (scripts/install-reference-just)");
            None
        }
    };
    if let (Some(ours), Some(reference)) = (ours, reference) {
        for (what, want, got) in [
            ("result", &reference.result, &ours.result),
            ("graph", &reference.graph, &ours.graph),
        ] {
            if let Some(diff) = common::analysis::first_difference(what, want, got) {
                println!("MISMATCH of --dump-{what}: {diff}");
                std::process::exit(1);
            }
        }
        println!("result and graph agree byte for byte (ids included)");
    }
}
