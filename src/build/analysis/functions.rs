//! Functions that exist only while a target is analysed: `outs` and
//! `runfiles` (string fields, `generic`, `file_gen`, `symlink`) and the
//! rule-expression functions (`FIELD`, `DEP_*`, `ACTION`, `BLOB`, `TREE`,
//! nodes, `RESULT`, `CALL_EXPRESSION`).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::rule_files::ExpressionFunction;
use super::stage::{normalise_keys, normalise_keys_first_wins, stage_descriptions, tree_conflict};
use super::{empty_map_expr, entity_of_name_json, name_value, AnalysedTarget, AnalysisSettings};
use crate::build::artifact::ArtifactDescription;
use crate::build::expr::path::{is_non_upwards, to_normal_path};
use crate::build::expr::{expect_str, Env, EvalError, Evaluator, Functions};
use crate::build::graph::{ActionNode, ActionSpec, Tree, TreeOverlay};
use crate::build::names::{parse_entity_name, EntityName, NameSource, NamedTarget};
use crate::build::repo_config::RepositoryConfig;
use crate::build::value::{Kind, Map, Node, TargetResult, Value};
use crate::digest::ObjectKind;

impl NameSource for Value {
    fn name_str(&self) -> Option<&str> {
        self.as_str()
    }
    fn name_list(&self) -> Option<Vec<&Value>> {
        self.as_list().map(|l| l.iter().collect())
    }
    fn name_is_null(&self) -> bool {
        self.is_null()
    }
    fn name_to_string(&self) -> String {
        self.to_json_string()
    }
}

/// Dependencies by name and transition, as requested by the target.
pub(crate) type DepsByTransition = HashMap<(EntityName, Value), Arc<AnalysedTarget>>;

/// Looks a dependency up for `outs`/`runfiles`/`DEP_*`.
fn obtain<'d>(
    deps: &'d DepsByTransition,
    name: EntityName,
    shown: &Value,
    transition: Value,
) -> Result<&'d Arc<AnalysedTarget>, EvalError> {
    deps.get(&(name, transition.clone())).ok_or_else(|| {
        EvalError::new(format!(
            "Reference to undeclared dependency {} in transition {}",
            shown.to_json_string(),
            transition.to_json_string()
        ))
    })
}

fn transition_arg(ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
    ev.eval_or(expr, "transition", empty_map_expr(), env)
}

fn sorted_keys(map: &Value) -> Value {
    Value::list(
        map.as_map()
            .map(|m| m.keys().map(|k| Value::string(k.clone())).collect())
            .unwrap_or_default(),
    )
}

/// `outs` and `runfiles`: keys of a dependency's artifacts or runfiles,
/// the dependency given as a target name (parsed like in the targets file).
pub(crate) struct DepKeys<'a> {
    pub current: &'a NamedTarget,
    pub config: &'a RepositoryConfig,
    pub deps: &'a DepsByTransition,
}

impl Functions for DepKeys<'_> {
    fn call(
        &self,
        name: &str,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Option<Result<Value, EvalError>> {
        if name != "outs" && name != "runfiles" {
            return None;
        }
        Some((|| {
            let reference = ev.eval_arg(expr, "dep", env)?;
            let target = parse_entity_name(&reference, self.current, &self.config.binding_lookup())
                .map_err(|e| {
                    EvalError::new(format!(
                        "Parsing target name {} failed with:\n{e}",
                        reference.to_json_string()
                    ))
                })?;
            let transition = transition_arg(ev, expr, env)?;
            let dep = obtain(self.deps, EntityName::Named(target), &reference, transition)?;
            Ok(if name == "outs" {
                sorted_keys(&dep.artifacts)
            } else {
                sorted_keys(&dep.runfiles)
            })
        })())
    }
}

/// What the rule expression adds to the action graph.
#[derive(Default)]
pub(crate) struct Recorded {
    pub actions: Vec<Arc<ActionNode>>,
    pub blobs: Vec<String>,
    pub trees: Vec<Arc<Tree>>,
    pub tree_overlays: Vec<Arc<TreeOverlay>>,
}

/// The functions of a rule's defining expression.
pub(crate) struct RuleFunctions<'a> {
    pub settings: AnalysisSettings,
    pub params: &'a HashMap<String, Value>,
    pub deps: &'a DepsByTransition,
    pub rule_tainted: &'a BTreeSet<String>,
    /// Imports of the expression function being evaluated.
    pub imports: &'a std::collections::BTreeMap<String, Arc<ExpressionFunction>>,
    pub recorded: &'a RefCell<Recorded>,
    /// Only `FIELD` and `CALL_EXPRESSION` (config transitions).
    pub transition_only: bool,
}

impl RuleFunctions<'_> {
    fn with_imports<'b>(
        &'b self,
        imports: &'b std::collections::BTreeMap<String, Arc<ExpressionFunction>>,
    ) -> RuleFunctions<'b> {
        RuleFunctions {
            settings: self.settings,
            params: self.params,
            deps: self.deps,
            rule_tainted: self.rule_tainted,
            imports,
            recorded: self.recorded,
            transition_only: self.transition_only,
        }
    }

    fn dep(
        &self,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Result<Arc<AnalysedTarget>, EvalError> {
        let reference = ev.eval_arg(expr, "dep", env)?;
        let name = reference
            .as_name()
            .and_then(entity_of_name_json)
            .ok_or_else(|| {
                EvalError::new(format!("Not a target name: {}", reference.to_json_string()))
            })?;
        let transition = transition_arg(ev, expr, env)?;
        obtain(self.deps, name, &reference, transition).cloned()
    }

    fn known_blob(&self, data: &str, kind: ObjectKind) -> Value {
        let digest = self.settings.hash.digest_bytes(kind, data.as_bytes());
        self.recorded.borrow_mut().blobs.push(data.to_string());
        ArtifactDescription::known(digest.hash, digest.size, kind).to_value()
    }

    fn tree_of(&self, context: &str, val: &Value) -> Result<Arc<Tree>, EvalError> {
        let map = artifact_map(context, val)?;
        if let Some(c) = tree_conflict(map.keys().map(String::as_str)) {
            return Err(EvalError::new(format!(
                "Tree conflicts on subtree {c} of {context}"
            )));
        }
        let normal = normalise_keys_first_wins(map);
        let entries = stage_descriptions(&normal, self.settings.hash).map_err(EvalError::new)?;
        let tree = Arc::new(Tree::new_in(self.settings.ids, entries));
        self.recorded.borrow_mut().trees.push(tree.clone());
        Ok(tree)
    }

    fn overlay(
        &self,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
        disjoint: bool,
    ) -> Result<Value, EvalError> {
        let fname = if disjoint {
            "DISJOINT_TREE_OVERLAY"
        } else {
            "TREE_OVERLAY"
        };
        let val = ev.eval_or(expr, "$1", Value::empty_list(), env)?;
        let list = val.as_list().ok_or_else(|| {
            EvalError::new(format!(
                "{fname} argument has to be a list of stages, but found {}",
                val.to_json_string()
            ))
        })?;
        let mut parts = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let tree = self.tree_of(&format!("Entry {i} of {fname} argument"), entry)?;
            parts.push(ArtifactDescription::tree(tree.id.clone()));
        }
        let overlay = Arc::new(TreeOverlay::new(self.settings.ids, parts, disjoint));
        let id = overlay.id.clone();
        self.recorded.borrow_mut().tree_overlays.push(overlay);
        Ok(ArtifactDescription::tree_overlay(id).to_value())
    }

    fn action(&self, ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
        let inputs = ev.eval_or(expr, "inputs", empty_map_expr(), env)?;
        let inputs_map = artifact_map("inputs", &inputs)?;
        let inputs_map = normalise_keys(inputs_map)
            .map_err(|p| EvalError::new(format!("inputs conflict on path {p}")))?;
        if let Some(c) = tree_conflict(inputs_map.keys().map(String::as_str)) {
            return Err(EvalError::new(format!("inputs conflicts on subtree {c}")));
        }
        let outs = output_list(ev.eval_or(expr, "outs", Value::empty_list(), env)?, "outs")?;
        let out_dirs = output_list(
            ev.eval_or(expr, "out_dirs", Value::empty_list(), env)?,
            "out_dirs",
        )?;
        if outs.is_empty() && out_dirs.is_empty() {
            return Err(EvalError::new(
                "either outs or out_dirs must be specified for ACTION",
            ));
        }
        let (outs_norm, dirs_norm) = normalise_outputs(&outs, &out_dirs).map_err(EvalError::new)?;
        let cmd_val = ev.eval_or(expr, "cmd", Value::empty_list(), env)?;
        let cmd = string_list(&cmd_val).ok_or_else(|| {
            EvalError::new(format!(
                "cmd has to be a list of strings, but found {}",
                cmd_val.to_json_string()
            ))
        })?;
        if cmd.is_empty() {
            return Err(EvalError::new("cmd must not be an empty list"));
        }
        let cwd_val = ev.eval_or(expr, "cwd", Value::string(""), env)?;
        let cwd = cwd_val.as_str().ok_or_else(|| {
            EvalError::new(format!(
                "cwd has to be a string, but found {}",
                cwd_val.to_json_string()
            ))
        })?;
        if !is_non_upwards(cwd) {
            return Err(EvalError::new(format!(
                "cwd has to be a non-upwards relative path, but found {}",
                cwd_val.to_json_string()
            )));
        }
        let mut recorded_trees = Vec::new();
        let final_inputs = add_dir_for(cwd, inputs_map, self.settings, &mut recorded_trees);
        let env_val = ev.eval_or(expr, "env", empty_map_expr(), env)?;
        let env_map = string_map(&env_val).ok_or_else(|| {
            EvalError::new(format!(
                "env has to be a map of string, but found {}",
                env_val.to_json_string()
            ))
        })?;
        let may_fail_list = self.tainted_list(expr, "may_fail")?;
        let may_fail = if may_fail_list {
            let msg = ev.eval_or(expr, "fail_message", Value::string("action failed"), env)?;
            Some(
                msg.as_str()
                    .ok_or_else(|| {
                        EvalError::new(format!(
                            "fail_message has to evaluate to a string, but got {}",
                            msg.to_json_string()
                        ))
                    })?
                    .to_string(),
            )
        } else {
            None
        };
        let no_cache = self.tainted_list(expr, "no_cache")?;
        let scale_val = ev.eval_or(expr, "timeout scaling", Value::number(1.0), env)?;
        let timeout_scale = match scale_val.kind() {
            Kind::Number(x) => *x,
            Kind::Null => 1.0,
            _ => {
                return Err(EvalError::new(format!(
                    "timeout scaling has to be number (or null for default), but found {}",
                    scale_val.to_json_string()
                )))
            }
        };
        let props_val = ev.eval_or(expr, "execution properties", empty_map_expr(), env)?;
        let props = if props_val.is_null() {
            Default::default()
        } else {
            string_map(&props_val).ok_or_else(|| {
                EvalError::new(format!(
                    "execution properties has to be a map of strings (or null for empty), but found {}",
                    props_val.to_json_string()
                ))
            })?
        };
        let inputs =
            stage_descriptions(&final_inputs, self.settings.hash).map_err(EvalError::new)?;
        let node = Arc::new(
            ActionSpec {
                outputs: outs_norm,
                output_dirs: dirs_norm,
                command: cmd,
                cwd: cwd.to_string(),
                env: env_map,
                may_fail,
                no_cache,
                timeout_scale,
                execution_properties: props,
                inputs,
            }
            .into_node(self.settings.ids),
        );
        let mut result = Map::new();
        for out in outs.iter().chain(out_dirs.iter()) {
            result.insert(
                out.clone(),
                ArtifactDescription::action(node.id.clone(), to_normal_path(out)).to_value(),
            );
        }
        let mut rec = self.recorded.borrow_mut();
        rec.trees.extend(recorded_trees);
        rec.actions.push(node);
        Ok(Value::map(result))
    }

    /// `may_fail`/`no_cache`: literal lists of strings the rule is tainted
    /// with; true if non-empty.
    fn tainted_list(&self, expr: &Value, key: &str) -> Result<bool, EvalError> {
        let Some(v) = expr.get(key) else {
            return Ok(false);
        };
        let list = string_list(v).ok_or_else(|| {
            EvalError::new(format!(
                "{key} has to be a list of strings, but found {}",
                v.to_json_string()
            ))
        })?;
        for entry in &list {
            if !self.rule_tainted.contains(entry) {
                return Err(EvalError::new(format!(
                    "{key} contains entry {} the rule is not tainted with",
                    Value::string(entry.clone()).to_json_string()
                )));
            }
        }
        Ok(!list.is_empty())
    }

    fn abstract_node(
        &self,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Result<Value, EvalError> {
        let ty = ev.eval_or(expr, "node_type", Value::null(), env)?;
        let Some(ty) = ty.as_str() else {
            return Err(EvalError::new(
                "argument 'node_type' for ABSTRACT_NODE not a string.",
            ));
        };
        let sf = ev.eval_or(expr, "string_fields", empty_map_expr(), env)?;
        let sf_map = sf.as_map().ok_or_else(|| {
            EvalError::new("argument 'string_fields' for ABSTRACT_NODE not a map.")
        })?;
        let tf = ev.eval_or(expr, "target_fields", empty_map_expr(), env)?;
        let tf_map = tf.as_map().ok_or_else(|| {
            EvalError::new("argument 'target_fields' for ABSTRACT_NODE not a map.")
        })?;
        let check = |map: &Map,
                     fields: &str,
                     what: &str,
                     ok: &dyn Fn(&Value) -> bool,
                     other: Option<&Map>|
         -> Result<(), EvalError> {
            for (key, list) in map {
                let items = list.as_list().ok_or_else(|| {
                    EvalError::new(format!(
                        "value for key {key} in argument '{fields}' for ABSTRACT_NODE is not a list."
                    ))
                })?;
                for e in items {
                    if !ok(e) {
                        return Err(EvalError::new(format!(
                            "list entry for {key} in argument '{fields}' for ABSTRACT_NODE is not a {what}:\n{}",
                            e.to_json_string()
                        )));
                    }
                }
                if other.is_some_and(|o| o.contains_key(key)) {
                    return Err(EvalError::new(format!(
                        "string_fields and target_fields are not disjoint maps, found duplicate key: {key}."
                    )));
                }
            }
            Ok(())
        };
        check(
            sf_map,
            "string_fields",
            "string",
            &|e| e.as_str().is_some(),
            Some(tf_map),
        )?;
        check(
            tf_map,
            "target_fields",
            "target node",
            &|e| e.as_node().is_some(),
            None,
        )?;
        Ok(Value::node(Node::Abstract {
            node_type: ty.to_string(),
            string_fields: sf.clone(),
            target_fields: tf.clone(),
        }))
    }

    fn result(&self, ev: &Evaluator<'_>, expr: &Value, env: &Env) -> Result<Value, EvalError> {
        let artifacts = ev.eval_or(expr, "artifacts", empty_map_expr(), env)?;
        let runfiles = ev.eval_or(expr, "runfiles", empty_map_expr(), env)?;
        let provides = ev.eval_or(expr, "provides", empty_map_expr(), env)?;
        let artifacts = checked_stage("artifacts", &artifacts)?;
        let runfiles = checked_stage("runfiles", &runfiles)?;
        if provides.as_map().is_none() {
            return Err(EvalError::new(format!(
                "provides has to be a map, but found {}",
                provides.to_json_string()
            )));
        }
        Ok(Value::result(TargetResult {
            artifact_stage: artifacts,
            runfiles,
            provides,
        }))
    }

    fn call_expression(
        &self,
        _ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Result<Value, EvalError> {
        let name_v = crate::build::expr::required(expr, "name")?;
        let name = expect_str(name_v)?;
        let callee = self.imports.get(name).ok_or_else(|| {
            EvalError::new(format!("Unknown expression {}", name_v.to_json_string()))
        })?;
        let inner = self.with_imports(&callee.imports);
        let inner_ev = Evaluator::with_functions(&inner);
        let callee_env = env.prune(&callee.vars);
        inner_ev.eval(&callee.expression, &callee_env).map_err(|e| {
            if e.is_user_error() {
                e
            } else {
                e.with_note(format!(
                    "This call to {} failed in the following way:",
                    name_v.to_json_string()
                ))
            }
        })
    }
}

impl Functions for RuleFunctions<'_> {
    fn call(
        &self,
        name: &str,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Option<Result<Value, EvalError>> {
        let result = match name {
            "FIELD" => (|| {
                let n = ev.eval_arg(expr, "name", env)?;
                let Some(s) = n.as_str() else {
                    return Err(EvalError::new(format!(
                        "FIELD argument 'name' should evaluate to a string, but got {}",
                        n.to_json_string()
                    )));
                };
                self.params
                    .get(s)
                    .cloned()
                    .ok_or_else(|| EvalError::new(format!("FIELD '{s}' unknown")))
            })(),
            "CALL_EXPRESSION" => self.call_expression(ev, expr, env),
            _ if self.transition_only => return None,
            "DEP_ARTIFACTS" => self.dep(ev, expr, env).map(|d| d.artifacts.clone()),
            "DEP_RUNFILES" => self.dep(ev, expr, env).map(|d| d.runfiles.clone()),
            "DEP_PROVIDES" => (|| {
                let dep = self.dep(ev, expr, env)?;
                let provider = ev.eval_arg(expr, "provider", env)?;
                let key = expect_str(&provider)?;
                if let Some(v) = dep.provides.get(key) {
                    return Ok(v.clone());
                }
                ev.eval_or(expr, "default", Value::empty_list(), env)
            })(),
            "ACTION" => self.action(ev, expr, env),
            "BLOB" => (|| {
                let data = ev.eval_or(expr, "data", Value::string(""), env)?;
                let s = data.as_str().ok_or_else(|| {
                    EvalError::new(format!(
                        "BLOB data has to be a string, but got {}",
                        data.to_json_string()
                    ))
                })?;
                Ok(self.known_blob(s, ObjectKind::File))
            })(),
            "SYMLINK" => (|| {
                let data = ev.eval_or(expr, "data", Value::string(""), env)?;
                let s = data.as_str().ok_or_else(|| {
                    EvalError::new(format!(
                        "SYMLINK data has to be a string, but got {}",
                        data.to_json_string()
                    ))
                })?;
                if !is_non_upwards(s) {
                    return Err(EvalError::new(format!(
                        "SYMLINK data has to be non-upwards relative, but got {}",
                        data.to_json_string()
                    )));
                }
                Ok(self.known_blob(s, ObjectKind::Symlink))
            })(),
            "TREE" => (|| {
                let val = ev.eval_or(expr, "$1", empty_map_expr(), env)?;
                let tree = self.tree_of("TREE argument", &val)?;
                Ok(ArtifactDescription::tree(tree.id.clone()).to_value())
            })(),
            "TREE_OVERLAY" => self.overlay(ev, expr, env, false),
            "DISJOINT_TREE_OVERLAY" => self.overlay(ev, expr, env, true),
            "VALUE_NODE" => (|| {
                let val = ev.eval_or(expr, "$1", Value::null(), env)?;
                if val.as_result().is_none() {
                    return Err(EvalError::new(
                        "argument '$1' for VALUE_NODE not a RESULT type.",
                    ));
                }
                Ok(Value::node(Node::Value(val)))
            })(),
            "ABSTRACT_NODE" => self.abstract_node(ev, expr, env),
            "RESULT" => self.result(ev, expr, env),
            _ => return None,
        };
        Some(result)
    }
}

/// A RESULT's artifacts or runfiles: a map of artifacts, keys normalised
/// without syntactic conflicts, no tree conflicts.
fn checked_stage(what: &str, v: &Value) -> Result<Value, EvalError> {
    let map = artifact_map(what, v)?;
    let normal =
        normalise_keys(map).map_err(|p| EvalError::new(format!("{what} conflict on path {p}")))?;
    if let Some(c) = tree_conflict(normal.keys().map(String::as_str)) {
        return Err(EvalError::new(format!("{what} conflicts on subtree {c}")));
    }
    Ok(Value::map(normal))
}

/// `v` as a map whose values are all artifacts; `what` names it in errors.
fn artifact_map<'v>(what: &str, v: &'v Value) -> Result<&'v Map, EvalError> {
    let map = v.as_map().ok_or_else(|| {
        EvalError::new(format!(
            "{what} has to be a map of artifacts, but found {}",
            v.to_json_string()
        ))
    })?;
    for (path, a) in map {
        if a.as_artifact().is_none() {
            return Err(EvalError::new(format!(
                "{what} has to be a map of artifacts, but found {} for {path}",
                a.to_json_string()
            )));
        }
    }
    Ok(map)
}

/// A list of strings, if it is one.
pub(crate) fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_list()?
        .iter()
        .map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// A map of strings, if it is one.
pub(crate) fn string_map(v: &Value) -> Option<std::collections::BTreeMap<String, String>> {
    v.as_map()?
        .iter()
        .map(|(k, e)| e.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

fn output_list(v: Value, what: &str) -> Result<Vec<String>, EvalError> {
    string_list(&v).ok_or_else(|| {
        EvalError::new(format!(
            "{what} has to be a list of strings, but found {}",
            v.to_json_string()
        ))
    })
}

/// Normalised, sorted, de-duplicated outputs; the two lists must be
/// disjoint.
pub(crate) fn normalise_outputs(
    outs: &[String],
    out_dirs: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let norm = |l: &[String]| -> Vec<String> {
        let set: BTreeSet<String> = l.iter().map(|p| to_normal_path(p)).collect();
        set.into_iter().collect()
    };
    let (o, d) = (norm(outs), norm(out_dirs));
    let dups: Vec<&String> = o.iter().filter(|p| d.binary_search(p).is_ok()).collect();
    if !dups.is_empty() {
        return Err(format!(
            "outs and out_dirs for ACTION must be disjoint. Found repeated entries:\n{}",
            serde_json::to_string(&dups).unwrap_or_default()
        ));
    }
    Ok((o, d))
}

/// Makes sure staging the inputs creates the directory `cwd`: adds an
/// empty tree there unless that would conflict with an input.
pub(crate) fn add_dir_for(
    cwd: &str,
    stage: Map,
    settings: AnalysisSettings,
    trees: &mut Vec<Arc<Tree>>,
) -> Map {
    use super::stage::fs_parent;
    if cwd.is_empty() || cwd == "." {
        return stage;
    }
    for path in stage.keys() {
        if path.is_empty() || path == "." {
            return stage;
        }
        let mut c = cwd;
        while !c.is_empty() {
            if c == path {
                return stage;
            }
            c = fs_parent(c);
        }
        let mut p = path.as_str();
        while !p.is_empty() {
            if p == cwd {
                return stage;
            }
            p = fs_parent(p);
        }
    }
    let empty = Arc::new(Tree::new_in(settings.ids, Default::default()));
    let artifact = ArtifactDescription::tree(empty.id.clone()).to_value();
    trees.push(empty);
    let mut stage = stage;
    stage.insert(cwd.to_string(), artifact);
    stage
}

/// Name values of entities (what `FIELD` returns for target fields).
pub(crate) fn name_values(names: &[EntityName]) -> Value {
    Value::list(names.iter().map(name_value).collect())
}
