//! The analysis conformance fixtures (fixtures/analysis/*.json, format in
//! fixtures/README.md): every case is materialised in a temp dir and
//! analysed by `jserve analyse` and, where it can, by the reference `just
//! analyse`; both must produce the case's expected result and action graph
//! (or both fail for error cases). All mismatches are listed at the end.
//!
//! Environment switches:
//! - `JSERVE_ANALYSIS_REFERENCE_ONLY=1`: skip jserve, check only the reference
//!   (to validate new cases before jserve can analyse them).
//! - `JSERVE_RECORD_ANALYSIS=1`: run only the reference and rewrite the
//!   `expect` of every case it can evaluate; hand-written expectations of
//!   `"reference": false` cases stay.
//! - `JSERVE_ANALYSIS_FILTER=TEXT`: only cases whose `group/name` contains TEXT.
//!
//! Without the reference `just` its half is skipped (SKIPPED is printed),
//! except under CI, where its absence is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::analysis::{
    check, load_groups, materialise, pretty, recorded, reference_can, run_analyse,
    wants_compatible, Group,
};
use common::reference::reference_just;
use serde_json::Value;

const THREADS: usize = 3;

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Runs `work` over `0..n` on a few threads; results come back in index order.
fn parallel<T: Send>(n: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = work(i);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// Shape errors of a fixture file (a malformed case must fail the test, not vanish).
fn shape_problems(group: &Group) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    if !group.content["cases"].is_array() {
        problems.push(format!("{}: no \"cases\" list", group.name()));
    }
    for (i, case) in group.cases().iter().enumerate() {
        let name = case["name"].as_str().unwrap_or("");
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            problems.push(format!(
                "{} case #{i}: bad name {:?}",
                group.name(),
                case["name"]
            ));
        }
        if !seen.insert(name.to_string()) {
            problems.push(format!("{}/{name}: duplicate name", group.name()));
        }
        let target_ok = case["target"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t.iter().all(Value::is_string));
        if !target_ok {
            problems.push(format!(
                "{}/{name}: target must be [module, name]",
                group.name()
            ));
        }
        if !case["expect"].is_object() {
            problems.push(format!("{}/{name}: no expect", group.name()));
        }
    }
    problems
}

struct Job<'a> {
    group: &'a Group,
    index: usize,
}

impl Job<'_> {
    fn case(&self) -> &Value {
        &self.group.cases()[self.index]
    }

    fn label(&self) -> String {
        let name = self.case()["name"].as_str().unwrap_or("?");
        format!("{}/{name}", self.group.name())
    }
}

fn jobs(groups: &[Group]) -> Vec<Job<'_>> {
    let filter = std::env::var("JSERVE_ANALYSIS_FILTER").unwrap_or_default();
    groups
        .iter()
        .flat_map(|group| (0..group.cases().len()).map(move |index| Job { group, index }))
        .filter(|j| j.label().contains(&filter))
        .collect()
}

/// Runs one tool on a case in its modes; returns the mismatches, each
/// prefixed with the case and the tool.
fn run_tool(job: &Job, tool: &str, program: &Path, message: bool) -> Vec<String> {
    let case = job.case();
    let dir = tempfile::tempdir().unwrap();
    let repos = materialise(case, dir.path());
    let mut modes = vec![false];
    if wants_compatible(case) {
        modes.push(true);
    }
    let mut problems = Vec::new();
    // Expectations recorded with the reference (1.5.1) carry its ids: jserve
    // reproduces them exactly with --legacy-ids. Hand-written ones use the
    // ids of the current reference code.
    let recorded = case.get("reference") != Some(&Value::Bool(false));
    let is_jserve = tool == "jserve";
    let extra: &[&str] = if is_jserve && recorded {
        &["--legacy-ids"]
    } else {
        &[]
    };
    for compatible in modes {
        let outcome = run_analyse(program, case, dir.path(), &repos, compatible, extra);
        let mode = if compatible { " --compatible" } else { "" };
        for p in check(&case["expect"], &outcome, compatible, message, is_jserve) {
            problems.push(format!("{} [{tool}{mode}]: {p}", job.label()));
        }
    }
    problems
}

/// Record mode: the reference's outcome becomes the expectation.
fn record(groups: &mut [Group], just: &Path) {
    // (file, case index, new expect, note) for every case the reference can evaluate.
    let results: Vec<(PathBuf, usize, Value, String)> = {
        let jobs = jobs(groups);
        parallel(jobs.len(), |i| record_one(&jobs[i], just))
            .into_iter()
            .flatten()
            .collect()
    };
    for (path, index, expect, note) in &results {
        if !note.is_empty() {
            eprintln!("NOTE {note}");
        }
        let group = groups.iter_mut().find(|g| &g.path == path).unwrap();
        group.content["cases"][*index]["expect"] = expect.clone();
    }
    // Only the files with a recorded case: a filter leaves the others alone.
    for group in groups.iter() {
        if results.iter().any(|(path, ..)| path == &group.path) {
            std::fs::write(&group.path, pretty(&group.content)).unwrap();
        }
    }
    eprintln!(
        "recorded {} case expectations with the reference",
        results.len()
    );
}

fn record_one(job: &Job, just: &Path) -> Option<(PathBuf, usize, Value, String)> {
    let case = job.case();
    if !reference_can(case) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let repos = materialise(case, dir.path());
    let native = run_analyse(just, case, dir.path(), &repos, false, &[]);
    let compat =
        wants_compatible(case).then(|| run_analyse(just, case, dir.path(), &repos, true, &[]));
    let expect = recorded(case.get("expect"), &native, compat.as_ref());
    let was_error = case["expect"].get("error").is_some();
    let is_error = expect.get("error").is_some();
    let mut note = String::new();
    if was_error != is_error {
        let now = if is_error { "an error" } else { "a success" };
        note = format!("{}: now {now}", job.label());
    }
    if is_error {
        // The reference's message, to choose or confirm the case's `message`.
        let text: Vec<&str> = native
            .stderr
            .lines()
            .skip_while(|l| !l.contains("ERROR"))
            .take(6)
            .map(str::trim)
            .collect();
        eprintln!("{}: {}", job.label(), text.join(" | "));
        if let Some(m) = expect.get("message").and_then(Value::as_str) {
            if !native.stderr.contains(m) {
                note = format!(
                    "{}: message {m:?} is not in the reference's stderr",
                    job.label()
                );
            }
        }
    }
    Some((job.group.path.clone(), job.index, expect, note))
}

#[test]
fn analysis_fixtures_match() {
    let mut groups = load_groups();
    let just = reference_just();
    if env_on("JSERVE_RECORD_ANALYSIS") {
        let just = just.expect("recording needs the reference `just`");
        record(&mut groups, &just);
        return;
    }
    let reference_only = env_on("JSERVE_ANALYSIS_REFERENCE_ONLY");
    let jserve = PathBuf::from(env!("CARGO_BIN_EXE_jserve"));
    let mut problems: Vec<String> = groups.iter().flat_map(shape_problems).collect();
    let jobs = jobs(&groups);
    let outcomes = parallel(jobs.len(), |i| {
        let job = &jobs[i];
        let mine = if reference_only {
            None
        } else {
            Some(run_tool(job, "jserve", &jserve, true))
        };
        let theirs = match &just {
            Some(just) if reference_can(job.case()) => {
                Some(run_tool(job, "reference", just, false))
            }
            _ => None,
        };
        (mine, theirs)
    });
    let mut counts = [0usize; 5]; // jserve ok/failed, reference ok/failed/not run
    for (mine, theirs) in outcomes {
        if let Some(p) = mine {
            counts[usize::from(!p.is_empty())] += 1;
            problems.extend(p);
        }
        match theirs {
            Some(p) => {
                counts[2 + usize::from(!p.is_empty())] += 1;
                problems.extend(p);
            }
            None => counts[4] += 1,
        }
    }
    let files = groups.len();
    // Straight to the stream, past the test harness's capture, so a passing run shows it too.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "analysis fixtures: {} cases in {files} files; jserve: {} passed, {} failed{}; \
         reference: {} passed, {} failed, {} not run",
        jobs.len(),
        counts[0],
        counts[1],
        if reference_only { " (skipped)" } else { "" },
        counts[2],
        counts[3],
        counts[4],
    );
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
