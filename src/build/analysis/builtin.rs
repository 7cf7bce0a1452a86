//! The built-in rules: generic, file_gen, symlink, tree, tree_overlay,
//! disjoint_tree_overlay, install, configure and export.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};

use super::functions::{
    add_dir_for, normalise_outputs, string_list, string_map, DepKeys, DepsByTransition,
};
use super::stage::{map_tree_conflict, overlay, stage_descriptions, tree_conflict, union_disjoint};
use super::{
    empty_map_expr, overlay_config, prune, AnalysedTarget, Analyser, AnalysisError, Config,
    ExportRecord, Trail,
};
use crate::build::artifact::ArtifactDescription;
use crate::build::expr::path::{is_non_upwards, to_normal_path};
use crate::build::expr::{Env, Evaluator, Functions};
use crate::build::graph::{ActionSpec, Tree, TreeOverlay};
use crate::build::names::{parse_entity_name, EntityName, NamedTarget};
use crate::build::value::{Map, Value};
use crate::digest::ObjectKind;

const BUILTIN_RULES: [&str; 9] = [
    "configure",
    "disjoint_tree_overlay",
    "export",
    "file_gen",
    "generic",
    "install",
    "symlink",
    "tree",
    "tree_overlay",
];

pub(super) fn is_builtin_rule(name: &str) -> bool {
    BUILTIN_RULES.contains(&name)
}

fn err(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::new(msg)
}

/// Everything a built-in works with while analysing one target.
struct Ctx<'a> {
    an: &'a Analyser,
    name: &'a NamedTarget,
    desc: &'a JsonMap<String, Json>,
    config: &'a Config,
    trail: &'a Trail<'a>,
    arguments_config: Vec<String>,
    env: Env,
}

impl<'a> Ctx<'a> {
    fn new(
        an: &'a Analyser,
        name: &'a NamedTarget,
        desc: &'a JsonMap<String, Json>,
        config: &'a Config,
        trail: &'a Trail<'a>,
        allowed: &[&str],
    ) -> Result<Ctx<'a>, AnalysisError> {
        for key in desc.keys() {
            if !allowed.contains(&key.as_str()) {
                tracing::warn!("target {name} has unknown field {key:?}");
            }
        }
        let arguments_config = match desc.get("arguments_config") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
                .ok_or_else(|| {
                    err(format!(
                        "arguments_config has to be a list of strings, but found {v}"
                    ))
                })?,
        };
        let env = Env::from_value(&prune(config, &arguments_config));
        Ok(Ctx {
            an,
            name,
            desc,
            config,
            trail,
            arguments_config,
            env,
        })
    }

    fn field(&self, key: &str) -> Option<Value> {
        self.desc.get(key).map(Value::from_json)
    }

    /// Evaluates a field (or its default) in the arguments environment.
    fn eval(
        &self,
        key: &str,
        default: Value,
        fns: Option<&dyn Functions>,
    ) -> Result<Value, AnalysisError> {
        let expr = self.field(key).unwrap_or(default);
        let ev = match fns {
            Some(f) => Evaluator::with_functions(f),
            None => Evaluator::new(),
        };
        ev.eval(&expr, &self.env)
            .map_err(|e| err(format!("While evaluating {key}:\n{e}")))
    }

    fn parse_name(&self, v: &Value) -> Result<NamedTarget, AnalysisError> {
        parse_entity_name(v, self.name, &self.an.sources().config().binding_lookup()).map_err(|e| {
            err(format!(
                "Parsing target name {} failed with:\n{e}",
                v.to_json_string()
            ))
        })
    }

    /// The `deps` field: names analysed in the same configuration.
    fn deps(&self) -> Result<Vec<(NamedTarget, Arc<AnalysedTarget>)>, AnalysisError> {
        let v = self.eval("deps", Value::empty_list(), None)?;
        let items = v.as_list().ok_or_else(|| {
            err(format!(
                "Expected deps to be a list, but found {}",
                v.to_json_string()
            ))
        })?;
        let names = items
            .iter()
            .map(|item| self.parse_name(item))
            .collect::<Result<Vec<_>, _>>()?;
        self.analyse_all(names)
    }

    /// Analyses targets in parallel, in the same configuration.
    fn analyse_all(
        &self,
        names: Vec<NamedTarget>,
    ) -> Result<Vec<(NamedTarget, Arc<AnalysedTarget>)>, AnalysisError> {
        use rayon::prelude::*;
        let analysed = names
            .par_iter()
            .map(|n| self.analyse(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(names.into_iter().zip(analysed).collect())
    }

    fn analyse(&self, n: &NamedTarget) -> Result<Arc<AnalysedTarget>, AnalysisError> {
        self.an
            .analyse_in(&EntityName::Named(n.clone()), self.config, self.trail)
    }

    fn tainted(&self, deps: &[&AnalysedTarget]) -> Result<BTreeSet<String>, AnalysisError> {
        let v = self.eval("tainted", Value::empty_list(), None)?;
        let tainted: BTreeSet<String> = string_list(&v)
            .ok_or_else(|| {
                err(format!(
                    "tainted should evaluate to a list of strings, but got {}",
                    v.to_json_string()
                ))
            })?
            .into_iter()
            .collect();
        if deps.iter().any(|d| !d.tainted.is_subset(&tainted)) {
            return Err(err(
                "Not tainted with all strings the dependencies are tainted with",
            ));
        }
        Ok(tainted)
    }

    /// A result built from dependencies analysed in the same configuration.
    fn finish(
        &self,
        deps: &[&AnalysedTarget],
        artifacts: Map,
        runfiles: Map,
    ) -> Result<AnalysedTarget, AnalysisError> {
        let tainted = self.tainted(deps)?;
        let mut vars: BTreeSet<String> = self.arguments_config.iter().cloned().collect();
        let mut implied = BTreeSet::new();
        for d in deps {
            vars.extend(d.vars.iter().cloned());
            implied.extend(d.implied_export.iter().cloned());
        }
        Ok(AnalysedTarget {
            artifacts: Value::map(artifacts),
            runfiles: Value::map(runfiles),
            provides: Value::empty_map(),
            vars,
            tainted,
            implied_export: implied,
            ..AnalysedTarget::default()
        })
    }
}

fn deps_by_transition(deps: &[(NamedTarget, Arc<AnalysedTarget>)]) -> DepsByTransition {
    deps.iter()
        .map(|(n, d)| {
            (
                (EntityName::Named(n.clone()), Value::empty_map()),
                d.clone(),
            )
        })
        .collect::<HashMap<_, _>>()
}

/// The fields a built-in rule reads (others only draw a warning).
fn allowed_fields(rule: &str) -> &'static [&'static str] {
    match rule {
        "generic" => &[
            "type",
            "arguments_config",
            "tainted",
            "deps",
            "cmds",
            "cwd",
            "env",
            "outs",
            "out_dirs",
            "sh -c",
            "timeout scaling",
            "execution properties",
        ],
        "file_gen" | "symlink" => &[
            "type",
            "arguments_config",
            "tainted",
            "deps",
            "name",
            "data",
        ],
        "tree" | "tree_overlay" | "disjoint_tree_overlay" => {
            &["type", "arguments_config", "tainted", "deps", "name"]
        }
        "install" => &[
            "type",
            "arguments_config",
            "tainted",
            "deps",
            "files",
            "dirs",
        ],
        "configure" => &[
            "type",
            "arguments_config",
            "tainted",
            "target",
            "config",
            "doc",
        ],
        _ => &[],
    }
}

/// Analyses a target whose type is the built-in rule `rule`.
pub(super) fn analyse(
    an: &Analyser,
    rule: &str,
    name: &NamedTarget,
    desc: &JsonMap<String, Json>,
    config: &Config,
    trail: &Trail<'_>,
) -> Result<AnalysedTarget, AnalysisError> {
    let shown = super::configured_target_string(&EntityName::Named(name.clone()), config);
    let result = if rule == "export" {
        export(an, name, desc, config, trail)
    } else {
        Ctx::new(an, name, desc, config, trail, allowed_fields(rule)).and_then(|c| match rule {
            "generic" => generic(&c),
            "file_gen" => file_gen(&c, ObjectKind::File),
            "symlink" => file_gen(&c, ObjectKind::Symlink),
            "tree" => tree(&c),
            "tree_overlay" => tree_overlay(&c, false),
            "disjoint_tree_overlay" => tree_overlay(&c, true),
            "install" => install(&c),
            "configure" => configure(&c),
            _ => unreachable!("not a built-in rule: {rule}"),
        })
    };
    result.map_err(|e| e.context(format!("While evaluating {rule} target {shown}:")))
}

fn generic(c: &Ctx<'_>) -> Result<AnalysedTarget, AnalysisError> {
    let (an, name) = (c.an, c.name);
    let deps = c.deps()?;
    let by_transition = deps_by_transition(&deps);
    let keys = DepKeys {
        current: name,
        config: an.sources().config(),
        deps: &by_transition,
    };
    let fns: Option<&dyn Functions> = Some(&keys);
    let strings = |key: &str, v: &Value| -> Result<Vec<String>, AnalysisError> {
        string_list(v).ok_or_else(|| {
            err(format!(
                "{key} has to be a list of strings, but found {}",
                v.to_json_string()
            ))
        })
    };
    let cmds = strings("cmds", &c.eval("cmds", Value::empty_list(), fns)?)?;
    let outs = strings("outs", &c.eval("outs", Value::empty_list(), fns)?)?;
    let out_dirs = strings("out_dirs", &c.eval("out_dirs", Value::empty_list(), fns)?)?;
    if outs.is_empty() && out_dirs.is_empty() {
        return Err(err("outs and out_dirs for generic must not both be empty"));
    }
    let (outs, out_dirs) = normalise_outputs(&outs, &out_dirs).map_err(err)?;
    let sh = c.eval("sh -c", Value::empty_list(), fns)?;
    let mut command = if sh.is_null() {
        Vec::new()
    } else {
        strings("sh -c", &sh)?
    };
    if command.is_empty() {
        command = vec!["sh".into(), "-c".into()];
    }
    command.push(cmds.iter().map(|c| format!("{c}\n")).collect());
    let cwd_v = c.eval("cwd", Value::string(""), fns)?;
    let cwd = cwd_v
        .as_str()
        .ok_or_else(|| {
            err(format!(
                "cwd has to be a string, but found {}",
                cwd_v.to_json_string()
            ))
        })?
        .to_string();
    if !is_non_upwards(&cwd) {
        return Err(err(format!(
            "cwd has to be a non-upwards relative path, but found {}",
            cwd_v.to_json_string()
        )));
    }
    let env_v = c.eval("env", empty_map_expr(), fns)?;
    let env = string_map(&env_v).ok_or_else(|| {
        err(format!(
            "env has to be a map of strings, but found {}",
            env_v.to_json_string()
        ))
    })?;
    let scale_v = c.eval("timeout scaling", Value::number(1.0), fns)?;
    let timeout_scale = if scale_v.is_null() {
        1.0
    } else {
        scale_v.as_number().ok_or_else(|| {
            err(format!(
                "timeout scaling has to be a number, but found {}",
                scale_v.to_json_string()
            ))
        })?
    };
    let props_v = c.eval("execution properties", empty_map_expr(), fns)?;
    let props = if props_v.is_null() {
        Default::default()
    } else {
        string_map(&props_v).ok_or_else(|| {
            err(format!(
                "execution properties has to be a map of strings, but found {}",
                props_v.to_json_string()
            ))
        })?
    };
    // Runfiles first, then artifacts; later entries win.
    let mut inputs = Map::new();
    for (_, d) in &deps {
        overlay(&mut inputs, d.runfiles_map());
    }
    for (_, d) in &deps {
        overlay(&mut inputs, d.artifacts_map());
    }
    if let Some(c) = map_tree_conflict(&inputs) {
        return Err(err(format!("Input artifacts have staging conflict on {c}")));
    }
    let settings = an.settings();
    let mut trees = Vec::new();
    let inputs = add_dir_for(&cwd, inputs, settings, &mut trees);
    let node = Arc::new(
        ActionSpec {
            outputs: outs.clone(),
            output_dirs: out_dirs.clone(),
            command,
            cwd,
            env,
            may_fail: None,
            no_cache: false,
            timeout_scale,
            execution_properties: props,
            inputs: stage_descriptions(&inputs, settings.hash).map_err(err)?,
        }
        .into_node(settings.ids),
    );
    let mut artifacts = Map::new();
    for out in outs.iter().chain(out_dirs.iter()) {
        artifacts.insert(
            out.clone(),
            ArtifactDescription::action(node.id.clone(), out.clone()).to_value(),
        );
    }
    if let Some(conflict) = map_tree_conflict(&artifacts) {
        return Err(err(format!("Outputs have staging conflict on {conflict}")));
    }
    let dep_refs: Vec<&AnalysedTarget> = deps.iter().map(|(_, d)| d.as_ref()).collect();
    let mut t = c.finish(&dep_refs, artifacts, Map::new())?;
    t.actions.push(node);
    t.trees = trees;
    Ok(t)
}

fn file_gen(c: &Ctx<'_>, kind: ObjectKind) -> Result<AnalysedTarget, AnalysisError> {
    let (an, name) = (c.an, c.name);
    let deps = c.deps()?;
    let by_transition = deps_by_transition(&deps);
    let keys = DepKeys {
        current: name,
        config: an.sources().config(),
        deps: &by_transition,
    };
    let file_name = c.eval("name", Value::string("out.txt"), Some(&keys))?;
    let file_name = file_name
        .as_str()
        .ok_or_else(|| {
            err(format!(
                "name has to be a string, but found {}",
                file_name.to_json_string()
            ))
        })?
        .to_string();
    let data = c.eval("data", Value::string(""), Some(&keys))?;
    let data = data
        .as_str()
        .ok_or_else(|| {
            err(format!(
                "data has to be a string, but found {}",
                data.to_json_string()
            ))
        })?
        .to_string();
    if kind == ObjectKind::Symlink && !is_non_upwards(&data) {
        return Err(err(format!(
            "data has to be a non-upwards relative path, but found {}",
            Value::string(data).to_json_string()
        )));
    }
    let digest = an.settings().hash.digest_bytes(kind, data.as_bytes());
    let artifact = ArtifactDescription::known(digest.hash, digest.size, kind).to_value();
    let stage: Map = [(file_name, artifact)].into();
    let dep_refs: Vec<&AnalysedTarget> = deps.iter().map(|(_, d)| d.as_ref()).collect();
    let mut t = c.finish(&dep_refs, stage.clone(), stage)?;
    t.blobs.push(data);
    Ok(t)
}

fn tree_name(c: &Ctx<'_>) -> Result<String, AnalysisError> {
    let v = c.eval("name", Value::string(""), None)?;
    v.as_str().map(str::to_string).ok_or_else(|| {
        err(format!(
            "name has to be a string, but found {}",
            v.to_json_string()
        ))
    })
}

fn tree(c: &Ctx<'_>) -> Result<AnalysedTarget, AnalysisError> {
    let an = c.an;
    let deps = c.deps()?;
    let dir = tree_name(c)?;
    let mut stage = Map::new();
    for (_, d) in &deps {
        let mut own = d.runfiles_map().clone();
        overlay(&mut own, d.artifacts_map());
        union_disjoint(&mut stage, &own).map_err(|p| {
            err(format!(
                "Staging conflict on path {}",
                Value::string(p).to_json_string()
            ))
        })?;
    }
    if let Some(conflict) = map_tree_conflict(&stage) {
        return Err(err(format!("Staging conflict on subtree {conflict}")));
    }
    let settings = an.settings();
    let tree = Arc::new(Tree::new_in(
        settings.ids,
        stage_descriptions(
            &super::stage::normalise_keys_first_wins(&stage),
            settings.hash,
        )
        .map_err(err)?,
    ));
    let artifact = ArtifactDescription::tree(tree.id.clone()).to_value();
    let out: Map = [(dir, artifact)].into();
    let dep_refs: Vec<&AnalysedTarget> = deps.iter().map(|(_, d)| d.as_ref()).collect();
    let mut t = c.finish(&dep_refs, out.clone(), out)?;
    t.trees.push(tree);
    Ok(t)
}

fn tree_overlay(c: &Ctx<'_>, disjoint: bool) -> Result<AnalysedTarget, AnalysisError> {
    let an = c.an;
    let deps = c.deps()?;
    let dir = tree_name(c)?;
    let settings = an.settings();
    let mut trees = Vec::new();
    let mut parts = Vec::new();
    for (_, d) in &deps {
        let tree = Arc::new(Tree::new_in(
            settings.ids,
            stage_descriptions(
                &super::stage::normalise_keys_first_wins(d.artifacts_map()),
                settings.hash,
            )
            .map_err(err)?,
        ));
        parts.push(ArtifactDescription::tree(tree.id.clone()));
        trees.push(tree);
    }
    let overlay = Arc::new(TreeOverlay::new(settings.ids, parts, disjoint));
    let artifact = ArtifactDescription::tree_overlay(overlay.id.clone()).to_value();
    let out: Map = [(dir, artifact)].into();
    let dep_refs: Vec<&AnalysedTarget> = deps.iter().map(|(_, d)| d.as_ref()).collect();
    let mut t = c.finish(&dep_refs, out.clone(), out)?;
    t.trees = trees;
    t.tree_overlays.push(overlay);
    Ok(t)
}

fn install(c: &Ctx<'_>) -> Result<AnalysedTarget, AnalysisError> {
    let desc = c.desc;
    let deps = c.deps()?;
    let mut all: Vec<Arc<AnalysedTarget>> = deps.iter().map(|(_, d)| d.clone()).collect();
    let mut stage = Map::new();
    for (_, d) in &deps {
        union_disjoint(&mut stage, d.runfiles_map()).map_err(|p| {
            err(format!(
                "Staging conflict for path {}",
                Value::string(p).to_json_string()
            ))
        })?;
    }
    let files = match desc.get("files") {
        None => JsonMap::new(),
        Some(Json::Object(m)) => m.clone(),
        Some(other) => {
            return Err(err(format!("files has to be a map, but found {other}")));
        }
    };
    let from_deps = stage.clone();
    for (path, target_expr) in &files {
        let v = Evaluator::new()
            .eval(&Value::from_json(target_expr), &c.env)
            .map_err(|e| err(format!("While evaluating files entry for {path}:\n{e}")))?;
        let n = c.parse_name(&v)?;
        let d = c.analyse(&n)?;
        if from_deps.contains_key(path) {
            return Err(err(format!(
                "Staging conflict for path {}",
                Value::string(path.clone()).to_json_string()
            )));
        }
        let single = match (d.artifacts_map().len(), d.runfiles_map().len()) {
            (1, _) => d.artifacts_map().values().next().cloned(),
            (0, 1) => d.runfiles_map().values().next().cloned(),
            _ => None,
        };
        let artifact = single.ok_or_else(|| {
            err(format!(
                "File field {} of install target must refer to a target with exactly one artifact or runfile, but {} has {} artifacts and {} runfiles",
                Value::string(path.clone()).to_json_string(),
                n,
                d.artifacts_map().len(),
                d.runfiles_map().len()
            ))
        })?;
        stage.insert(path.clone(), artifact);
        all.push(d);
    }
    let dirs = c.eval("dirs", Value::empty_list(), None)?;
    let dirs_list = dirs.as_list().ok_or_else(|| {
        err(format!(
            "dirs has to be a list, but found {}",
            dirs.to_json_string()
        ))
    })?;
    for entry in dirs_list {
        let pair = entry.as_list().filter(|p| p.len() == 2).ok_or_else(|| {
            err(format!(
                "Expected dirs entries to be pairs of target and directory, but found {}",
                entry.to_json_string()
            ))
        })?;
        let n = c.parse_name(&pair[0])?;
        let dir = pair[1].as_str().ok_or_else(|| {
            err(format!(
                "Directory of dirs entry has to be a string, but found {}",
                pair[1].to_json_string()
            ))
        })?;
        let d = c.analyse(&n)?;
        let mut own = d.runfiles_map().clone();
        overlay(&mut own, d.artifacts_map());
        let moved: Map = own
            .into_iter()
            .map(|(k, v)| (to_normal_path(&format!("{dir}/{k}")), v))
            .collect();
        union_disjoint(&mut stage, &moved).map_err(|p| {
            err(format!(
                "Staging conflict for path {}",
                Value::string(p).to_json_string()
            ))
        })?;
        all.push(d);
    }
    if let Some(conflict) = tree_conflict(stage.keys().map(String::as_str)) {
        return Err(err(format!("Staging conflict on subtree {conflict}")));
    }
    let refs: Vec<&AnalysedTarget> = all.iter().map(Arc::as_ref).collect();
    c.finish(&refs, stage.clone(), stage)
}

fn configure(c: &Ctx<'_>) -> Result<AnalysedTarget, AnalysisError> {
    let (an, desc, config, trail) = (c.an, c.desc, c.config, c.trail);
    let target_expr = c
        .field("target")
        .ok_or_else(|| err("Missing mandatory field target"))?;
    let target_v = Evaluator::new()
        .eval(&target_expr, &c.env)
        .map_err(|e| err(format!("While evaluating target:\n{e}")))?;
    let target = c.parse_name(&target_v)?;
    let transition = match desc.get("config") {
        None => Value::empty_map(),
        Some(Json::Object(_)) => c.eval("config", empty_map_expr(), None)?,
        Some(other) => {
            return Err(err(format!(
                "config has to be an expression evaluating to a map, but found {other}"
            )))
        }
    };
    let Some(fixed) = transition.as_map() else {
        return Err(err(format!(
            "config has to evaluate to a map, but found {}",
            transition.to_json_string()
        )));
    };
    let d = an.analyse_in(
        &EntityName::Named(target),
        &overlay_config(config, &transition),
        trail,
    )?;
    let tainted = c.tainted(&[d.as_ref()])?;
    let mut vars: BTreeSet<String> = c.arguments_config.iter().cloned().collect();
    vars.extend(d.vars.iter().filter(|v| !fixed.contains_key(*v)).cloned());
    Ok(AnalysedTarget {
        artifacts: d.artifacts.clone(),
        runfiles: d.runfiles.clone(),
        provides: d.provides.clone(),
        vars,
        tainted,
        implied_export: d.implied_export.clone(),
        ..AnalysedTarget::default()
    })
}

fn export(
    an: &Analyser,
    name: &NamedTarget,
    desc: &JsonMap<String, Json>,
    config: &Config,
    trail: &Trail<'_>,
) -> Result<AnalysedTarget, AnalysisError> {
    for key in desc.keys() {
        if ![
            "type",
            "target",
            "flexible_config",
            "fixed_config",
            "doc",
            "config_doc",
        ]
        .contains(&key.as_str())
        {
            tracing::warn!("export target {name} has unknown field {key:?}");
        }
    }
    let flexible: Vec<String> = match desc.get("flexible_config") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or_else(|| {
                err(format!(
                    "flexible_config has to be a list of strings, but found {v}"
                ))
            })?,
    };
    let effective = prune(config, &flexible);
    let me = EntityName::Named(name.clone());
    if &effective != config {
        // Analyse once per effective configuration.
        let d = an.analyse_in(&me, &effective, trail)?;
        return Ok((*d).clone());
    }
    let vars: BTreeSet<String> = flexible.iter().cloned().collect();
    let repo_config = an.sources().config();
    let hash = an.settings().hash;
    let key = if repo_config.is_content_fixed(&name.repository) {
        crate::build::keys::export_target_key(repo_config, name, &effective.to_json(), hash).ok()
    } else {
        None
    };
    if let (Some((repo_key, target_key)), Some(cache)) = (&key, an.export_cache()) {
        if let Some(hit) = cache.lookup(target_key) {
            let t = Arc::new(AnalysedTarget {
                artifacts: hit.artifacts,
                runfiles: hit.runfiles,
                provides: hit.provides,
                vars,
                implied_export: hit.implied_export,
                ..AnalysedTarget::default()
            });
            an.record_export(ExportRecord {
                target: name.clone(),
                config: effective,
                key: Some((repo_key.clone(), target_key.clone())),
                cached: true,
                analysed: t.clone(),
            });
            return Ok((*t).clone());
        }
    }
    let target_json = desc
        .get("target")
        .ok_or_else(|| err("Missing mandatory field target"))?;
    let target =
        parse_entity_name(target_json, name, &repo_config.binding_lookup()).map_err(|e| {
            err(format!(
                "Parsing target name {target_json} failed with:\n{e}"
            ))
        })?;
    let fixed = match desc.get("fixed_config") {
        None => Value::empty_map(),
        Some(v @ Json::Object(_)) => Value::from_json(v),
        Some(other) => {
            return Err(err(format!(
                "fixed_config has to be a map, but found {other}"
            )));
        }
    };
    let fixed_map = fixed.as_map().expect("checked above");
    if let Some(both) = flexible.iter().find(|v| fixed_map.contains_key(*v)) {
        return Err(err(format!(
            "Variable {} is both fixed and flexible",
            Value::string(both.clone()).to_json_string()
        )));
    }
    let inner_config = overlay_config(&effective, &fixed);
    let d = an
        .analyse_in(&EntityName::Named(target), &inner_config, trail)
        .map_err(|e| e.context("While analysing the exported target:"))?;
    if !d.tainted.is_empty() {
        return Err(err("Only untainted targets can be exported."));
    }
    if !d.provides.is_cacheable() {
        return Err(err(format!(
            "Only cacheable values can be exported; but target provides {}",
            d.provides.to_json_string()
        )));
    }
    let mut implied = d.implied_export.clone();
    if let Some((_, target_key)) = &key {
        implied.insert(target_key.hash().to_string());
    }
    let t = Arc::new(AnalysedTarget {
        artifacts: d.artifacts.clone(),
        runfiles: d.runfiles.clone(),
        provides: d.provides.clone(),
        vars,
        implied_export: implied,
        ..AnalysedTarget::default()
    });
    an.record_export(ExportRecord {
        target: name.clone(),
        config: effective,
        key,
        cached: false,
        analysed: t.clone(),
    });
    Ok((*t).clone())
}
