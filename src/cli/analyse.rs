//! `jserve analyse`: analyse one target as `just analyse` does and write
//! the same result and action-graph files, so any target can be compared
//! with the reference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value as Json;

use crate::build::analysis::Analyser;
use crate::build::artifact::IdScheme;
use crate::build::json::{dump_compact_as_stored, dump_pretty_as_stored};
use crate::build::names::{EntityName, NamedTarget};
use crate::build::repo_config::RepositoryConfig;
use crate::build::sources::RepoReader;
use crate::build::value::Value;
use crate::digest::HashFunction;

#[derive(Args, Debug)]
pub struct AnalyseArgs {
    /// Repository configuration (just-repository-config(5)).
    #[arg(short = 'C', long = "repository-config")]
    repository_config: Option<PathBuf>,
    /// Without -C: the workspace root of a single repository.
    #[arg(long = "workspace-root")]
    workspace_root: Option<PathBuf>,
    /// The main repository (default: the configuration's `main`).
    #[arg(long)]
    main: Option<String>,
    /// A configuration file (a JSON object) to start from.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Overlay the configuration with a JSON object; may be repeated.
    #[arg(short = 'D', long = "defines")]
    defines: Vec<String>,
    /// Compatible mode: plain SHA-256 instead of git object ids.
    #[arg(long)]
    compatible: bool,
    /// Identify analysed trees, tree overlays and actions as justbuild
    /// releases before 1.6 did (to compare with those).
    #[arg(long)]
    legacy_ids: bool,
    /// Accepted for command-line compatibility with `just analyse`; the
    /// analysis keeps nothing there.
    #[arg(long = "local-build-root")]
    local_build_root: Option<PathBuf>,
    /// Write the target's result (artifacts, provides, runfiles); `-` for stdout.
    #[arg(long = "dump-result")]
    dump_result: Option<String>,
    /// Write the action graph of every analysed target; `-` for stdout.
    #[arg(long = "dump-plain-graph")]
    dump_plain_graph: Option<String>,
    /// Write the configuration variables the result depends on; `-` for stdout.
    #[arg(long = "dump-vars")]
    dump_vars: Option<String>,
    /// `[MODULE] NAME`
    #[arg(num_args = 1..=2, required = true)]
    target: Vec<String>,
}

pub fn run(args: AnalyseArgs) -> ExitCode {
    match analyse(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_output(dest: &str, text: &str) -> anyhow::Result<()> {
    if dest == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(dest, format!("{text}\n")).with_context(|| format!("writing {dest}"))
}

fn analyse(args: &AnalyseArgs) -> anyhow::Result<()> {
    let config_json: Json = match (&args.repository_config, &args.workspace_root) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading repository config {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing repository config {}", path.display()))?
        }
        (None, Some(root)) => serde_json::json!({
            "main": "",
            "repositories": {"": {"workspace_root": ["file", root]}}
        }),
        (None, None) => bail!("give a repository configuration (-C) or a --workspace-root"),
    };
    let repo_config = RepositoryConfig::from_json(&config_json, args.main.as_deref())
        .context("reading the repository configuration")?;
    let main = repo_config.main.clone();

    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            serde_json::from_str::<Json>(&text)
                .with_context(|| format!("parsing config {}", path.display()))?
        }
        None => Json::Object(Default::default()),
    };
    for d in &args.defines {
        let overlay: Json = serde_json::from_str(d).with_context(|| format!("parsing -D {d}"))?;
        let (Json::Object(base), Json::Object(more)) = (&mut config, overlay) else {
            bail!("configurations must be JSON objects");
        };
        base.extend(more);
    }
    if !config.is_object() {
        bail!("the configuration must be a JSON object");
    }

    let (module, name) = match args.target.as_slice() {
        [name] => (String::new(), name.clone()),
        [module, name] => (module.clone(), name.clone()),
        _ => bail!("give [MODULE] NAME"),
    };
    let hash = if args.compatible {
        HashFunction::Sha256
    } else {
        HashFunction::GitSha1
    };
    let ids = if args.legacy_ids {
        IdScheme::Legacy
    } else {
        IdScheme::Current
    };
    let sources = Arc::new(RepoReader::new(Arc::new(repo_config), hash).with_id_scheme(ids));
    let analyser = Analyser::new(sources, ids);
    let target = EntityName::Named(NamedTarget::new(&main, &module, &name));
    let config = Value::from_json(&config);
    eprintln!(
        "INFO: Requested target is {}",
        crate::build::analysis::configured_target_string(&target, &config)
    );
    let result = analyser
        .analyse(&target, &config)
        .map_err(|e| anyhow::anyhow!("While processing targets:\n{e}"))?;
    let graph = analyser.graph();
    eprintln!(
        "INFO: Analysed target {} ({} configured targets; {} actions, {} trees, {} blobs)",
        crate::build::analysis::configured_target_string(
            &target,
            &crate::build::analysis::prune(&config, &result.vars)
        ),
        analyser.analysed_count(),
        graph.actions.len(),
        graph.trees.len(),
        graph.blobs.len()
    );
    if let Some(dest) = &args.dump_result {
        write_output(dest, &dump_compact_as_stored(&result.result_json()))?;
    }
    if let Some(dest) = &args.dump_plain_graph {
        write_output(dest, &dump_pretty_as_stored(&graph.to_json()))?;
    }
    if let Some(dest) = &args.dump_vars {
        let vars = Json::Array(result.vars.iter().cloned().map(Json::String).collect());
        write_output(dest, &dump_pretty_as_stored(&vars))?;
    }
    Ok(())
}
