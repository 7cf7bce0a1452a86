//! `jserve gc`: one collection of a build root on demand, its two-generation
//! rotation (`--rotate`, as `just gc`), or a check of what collections rely
//! on (`--check`). Safe while a daemon serves the same root: it takes the
//! gc locks, as `just gc` does, and waits for the requests under way.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::{Environment, ServeConfig, DEFAULT_GC_MIN_AGE};
use crate::storage::gc::collector::{rotate_and_delete, rotations_needed, Plan, Reason};
use crate::storage::gc::{check, exclusive_blocking, usage};
use crate::storage::BuildRoot;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Serve config file: its "local build root", "repositories" and
    /// "gc"."max bytes" apply.
    config: Option<PathBuf>,
    /// The build root [default: the config's, else ~/.cache/jserve].
    #[arg(long = "local-build-root", value_name = "PATH")]
    local_build_root: Option<PathBuf>,
    /// Collect down to this bound [default: the config's "gc"."max bytes"].
    #[arg(long = "max-bytes", value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Rotate once, whatever the size: what was not used since the last
    /// rotation is dropped (`just gc`).
    #[arg(long, conflicts_with_all = ["max_bytes", "check"])]
    rotate: bool,
    /// Rotate only if the last rotation is at least this many seconds ago,
    /// so that what clients were just answered about stays [default: the
    /// config's "gc"."min age seconds", else 60; 0 rotates as `just gc`].
    #[arg(long = "min-age", value_name = "SECONDS")]
    min_age: Option<f64>,
    /// Only check that every stored entry has what it names in its
    /// generation; exit 1 on a problem.
    #[arg(long, conflicts_with_all = ["max_bytes", "min_age"])]
    check: bool,
}

pub fn run(args: GcArgs) -> ExitCode {
    match collect(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jserve gc: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn collect(args: GcArgs) -> anyhow::Result<ExitCode> {
    let env = Environment::current();
    let loaded = match &args.config {
        Some(path) => ServeConfig::load(path, &env),
        None => ServeConfig::defaults(&env),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jserve gc: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if args.max_bytes == Some(0) {
        eprintln!("jserve gc: --max-bytes must be more than zero");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let min_age = match args.min_age {
        Some(s) if (0.0..=1e9).contains(&s) => Duration::from_secs_f64(s),
        Some(_) => {
            eprintln!("jserve gc: --min-age must be between 0 and 1e9 seconds");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        None => config.gc.as_ref().map_or(DEFAULT_GC_MIN_AGE, |g| g.min_age),
    };
    let path = match args.local_build_root {
        Some(p) => std::path::absolute(p)?,
        None => config.local_build_root.clone(),
    };
    let root = BuildRoot::open(&path)
        .with_context(|| format!("cannot open the build root {}", path.display()))?;

    if args.check {
        let _shared = crate::storage::gc::shared_blocking(&root)?;
        let report = check::check(&root, &config.repositories);
        for problem in &report.problems {
            println!("{problem}");
        }
        println!("{report}");
        return Ok(if report.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        });
    }

    let started = Instant::now();
    // A rotation asked for needs no sizes: no walk over the whole root.
    let before = if args.rotate {
        usage::Usage::default()
    } else {
        usage::measure(&root)
    };
    let (rotations, reason) = if args.rotate {
        (1, Reason::Asked)
    } else {
        let Some(max_bytes) = args
            .max_bytes
            .or_else(|| config.gc.as_ref().map(|g| g.max_bytes))
        else {
            eprintln!(
                "jserve gc: no bound: give --max-bytes, \"gc\": {{\"max bytes\": …}} in the \
                 config, or --rotate"
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        };
        match rotations_needed(&before, max_bytes) {
            (n, Some(reason)) => (n, reason),
            (_, None) => {
                println!(
                    "within the bound: stores {} of {}; nothing to do",
                    usage::human(before.stores().bytes),
                    usage::human(max_bytes)
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    let exclusive = exclusive_blocking(&root).context("cannot take the gc locks")?;
    let plan = Plan {
        rotations,
        min_age,
        delete_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let collection = rotate_and_delete(&root, exclusive, plan, reason, before, started)?;
    if collection.rotations == 0 {
        println!(
            "{reason}, but the last rotation is less than {} s ago: nothing removed",
            min_age.as_secs_f64()
        );
    } else if args.rotate {
        println!(
            "1 rotation(s) (asked for) in {} ms",
            collection.elapsed.as_millis()
        );
    } else {
        println!("{collection}");
    }
    Ok(ExitCode::SUCCESS)
}
