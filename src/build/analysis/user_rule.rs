//! The analysis of targets defined by a user rule, named or anonymous: the
//! rule's expressions evaluated over the target's fields and dependencies.
//! Reading the rules themselves is rule_files.rs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};

use super::functions::{
    name_values, string_list, DepKeys, DepsByTransition, Recorded, RuleFunctions,
};
use super::rule_files::{err, literal_strings, UserRule};
use super::{
    entity_of_name_json, overlay_config, prune, AnalysedTarget, Analyser, AnalysisError, Config,
    Trail,
};
use crate::build::expr::{Env, EvalError, Evaluator};
use crate::build::names::{parse_entity_name, AnonymousTarget, EntityName, NamedTarget};
use crate::build::value::{Node, Value};

/// The field values of one target, as expressions.
struct TargetData {
    arguments_config: Vec<String>,
    config_exprs: HashMap<String, Value>,
    string_exprs: HashMap<String, Value>,
    target_exprs: HashMap<String, Value>,
    tainted_expr: Value,
    /// Named targets give names to parse; anonymous ones give name values.
    parse_target_names: bool,
}

/// Analyses a target of the targets file defined by `rule`.
pub(super) fn analyse_named(
    an: &Analyser,
    target: &NamedTarget,
    desc: &JsonMap<String, Json>,
    rule: &UserRule,
    config: &Config,
    trail: &Trail<'_>,
) -> Result<AnalysedTarget, AnalysisError> {
    let arguments_config = literal_strings(desc, "arguments_config", &format!("target {target}"))?;
    for key in desc.keys() {
        let known = key == "type"
            || key == "arguments_config"
            || key == "tainted"
            || rule.string_fields.contains(key)
            || rule.target_fields.contains(key)
            || rule.config_fields.contains(key);
        if !known {
            tracing::warn!("target {target} has unknown field {key:?}");
        }
    }
    let read = |fields: &[String]| -> HashMap<String, Value> {
        fields
            .iter()
            .map(|f| {
                let v = desc
                    .get(f)
                    .map(Value::from_json)
                    .unwrap_or_else(Value::empty_list);
                (f.clone(), v)
            })
            .collect()
    };
    let data = TargetData {
        arguments_config,
        config_exprs: read(&rule.config_fields),
        string_exprs: read(&rule.string_fields),
        target_exprs: read(&rule.target_fields),
        tainted_expr: desc
            .get("tainted")
            .map(Value::from_json)
            .unwrap_or_else(Value::empty_list),
        parse_target_names: true,
    };
    evaluate(
        an,
        &EntityName::Named(target.clone()),
        target,
        rule,
        &data,
        config,
        trail,
    )
}

/// Analyses an anonymous target: a value node's result, or an abstract
/// node instantiated with the rule its type maps to.
pub(super) fn analyse_anonymous(
    an: &Analyser,
    anon: &AnonymousTarget,
    rule_map: &Value,
    node: &Value,
    config: &Config,
    trail: &Trail<'_>,
) -> Result<AnalysedTarget, AnalysisError> {
    let Some(n) = node.as_node() else {
        return Err(err(format!("Anonymous target {anon:?} has no node")));
    };
    match n {
        Node::Value(v) => {
            let r = v.as_result().expect("value nodes hold results");
            Ok(AnalysedTarget {
                artifacts: r.artifact_stage.clone(),
                runfiles: r.runfiles.clone(),
                provides: r.provides.clone(),
                ..AnalysedTarget::default()
            })
        }
        Node::Abstract {
            node_type,
            string_fields,
            target_fields,
        } => {
            let rule_name = rule_map
                .get(node_type)
                .and_then(Value::as_name)
                .and_then(entity_of_name_json)
                .and_then(|e| e.named().cloned())
                .ok_or_else(|| {
                    err(format!(
                        "Cannot resolve type of node {} via rule map {}",
                        node.to_json_string(),
                        rule_map.to_json_string()
                    ))
                })?;
            let rule = an.user_rule(&rule_name).map_err(|e| {
                e.context(format!(
                    "While looking up rule for {}:",
                    node.to_json_string()
                ))
            })?;
            let sf = string_fields.as_map().cloned().unwrap_or_default();
            let tf = target_fields.as_map().cloned().unwrap_or_default();
            let mut config_exprs = HashMap::new();
            let mut string_exprs = HashMap::new();
            let mut target_exprs = HashMap::new();
            for (fields, out, kind) in [
                (&rule.config_fields, &mut config_exprs, "config"),
                (&rule.string_fields, &mut string_exprs, "string"),
            ] {
                for f in fields {
                    if tf.contains_key(f) {
                        return Err(err(format!(
                            "Expected {kind} field '{f}' in string_fields of abstract node type '{node_type}', and not in target_fields"
                        )));
                    }
                    out.insert(
                        f.clone(),
                        sf.get(f).cloned().unwrap_or_else(Value::empty_list),
                    );
                }
            }
            for f in &rule.target_fields {
                if sf.contains_key(f) {
                    return Err(err(format!(
                        "Expected target field '{f}' in target_fields of abstract node type '{node_type}', and not in string_fields"
                    )));
                }
                let nodes = tf
                    .get(f)
                    .and_then(|v| v.as_list().map(<[Value]>::to_vec))
                    .unwrap_or_default();
                let names: Vec<EntityName> = nodes
                    .iter()
                    .map(|n| an.anonymous_name(rule_map, n))
                    .collect();
                target_exprs.insert(f.clone(), name_values(&names));
            }
            let data = TargetData {
                arguments_config: Vec::new(),
                config_exprs,
                string_exprs,
                target_exprs,
                tainted_expr: Value::empty_list(),
                parse_target_names: false,
            };
            let me = EntityName::Anonymous(anon.clone());
            evaluate(an, &me, &rule_name, &rule, &data, config, trail)
                .map_err(|e| e.context(format!("While analysing {rule_name} target {me}:")))
        }
    }
}

fn eval_err(context: String) -> impl FnOnce(EvalError) -> AnalysisError {
    move |e| err(format!("{context}\n{e}"))
}

/// The common part: fields, transitions, dependencies, the defining
/// expression. `base` is where relative names are resolved.
fn evaluate(
    an: &Analyser,
    me: &EntityName,
    base: &NamedTarget,
    rule: &UserRule,
    data: &TargetData,
    config: &Config,
    trail: &Trail<'_>,
) -> Result<AnalysedTarget, AnalysisError> {
    let settings = an.settings();
    let param_env = Env::from_value(&prune(config, &data.arguments_config));
    let plain = Evaluator::new();
    let mut params: HashMap<String, Value> = HashMap::new();

    for field in &rule.config_fields {
        let v = plain
            .eval(&data.config_exprs[field], &param_env)
            .map_err(eval_err(format!("While evaluating config field {field}:")))?;
        if string_list(&v).is_none() {
            return Err(err(format!(
                "Config field {field} should evaluate to a list of strings, but got{}",
                v.to_json_string()
            )));
        }
        params.insert(field.clone(), v);
    }

    // Transitions see the config fields only.
    let expression_env = Env::from_value(&prune(config, &rule.config_vars));
    let no_deps = DepsByTransition::new();
    let scratch = RefCell::new(Recorded::default());
    let mut transitions: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (field, f) in &rule.transitions {
        let fns = RuleFunctions {
            settings,
            params: &params,
            deps: &no_deps,
            rule_tainted: &rule.tainted,
            imports: &f.imports,
            recorded: &scratch,
            transition_only: true,
        };
        let kind = if rule.implicit.contains_key(field) {
            "implicit "
        } else if rule.anonymous.contains_key(field) {
            "anonymous "
        } else {
            ""
        };
        let ctx = format!("While evaluating config transition for {kind}{field}:");
        let v = Evaluator::with_functions(&fns)
            .eval(&f.expression, &expression_env)
            .map_err(eval_err(ctx.clone()))?;
        let list = match v.as_list() {
            Some(l) if l.iter().all(|e| e.as_map().is_some()) => l.to_vec(),
            Some(_) => {
                return Err(err(format!(
                    "{ctx}\nexpected list of dicts, but found {}",
                    v.to_json_string()
                )))
            }
            None => {
                return Err(err(format!(
                    "{ctx}\nexpected list, but got {}",
                    v.to_json_string()
                )))
            }
        };
        transitions.insert(field.clone(), list);
    }

    // Target fields, then the requests.
    let lookup = an.sources().config().binding_lookup();
    let mut reqs = Requests::default();
    for field in &rule.target_fields {
        let v = plain
            .eval(&data.target_exprs[field], &param_env)
            .map_err(eval_err(format!(
                "While evaluating target parameter {field}:"
            )))?;
        let items = v.as_list().ok_or_else(|| {
            err(format!(
                "Target parameter {field} should evaluate to a list, but got {}",
                v.to_json_string()
            ))
        })?;
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let n = if data.parse_target_names {
                EntityName::Named(parse_entity_name(item, base, &lookup).map_err(|e| {
                    err(format!(
                        "Parsing entry {} in target field {field} failed with:\n{e}",
                        item.to_json_string()
                    ))
                })?)
            } else {
                item.as_name()
                    .and_then(entity_of_name_json)
                    .ok_or_else(|| err(format!("Not a target name: {}", item.to_json_string())))?
            };
            names.push(n);
        }
        reqs.add(an, field, &names, &transitions, config, trail)?;
        params.insert(field.clone(), name_values(&names));
    }
    for (field, names) in &rule.implicit {
        reqs.add(an, field, names, &transitions, config, trail)?;
        params.insert(field.clone(), name_values(names));
    }
    for (field, def) in &rule.anonymous {
        let mut names = Vec::new();
        for &pos in reqs
            .by_field
            .get(&def.target)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let provided = reqs.list[pos]
                .2
                .provides
                .get(&def.provider)
                .ok_or_else(|| {
                    err(format!(
                        "Provider {} in {} does not exist",
                        def.provider, def.target
                    ))
                })?;
            let list = provided.as_list().ok_or_else(|| {
                err(format!(
                    "Provider {} in {} must be list of target nodes but found: {}",
                    def.provider,
                    def.target,
                    provided.to_json_string()
                ))
            })?;
            for node in list {
                if node.as_node().is_none() {
                    return Err(err(format!(
                        "Entry in provider {} in {} must be target node but found: {}",
                        def.provider,
                        def.target,
                        node.to_json_string()
                    )));
                }
                names.push(an.anonymous_name(&def.rule_map, node));
            }
        }
        reqs.add(an, field, &names, &transitions, config, trail)?;
        params.insert(field.clone(), name_values(&names));
    }

    // Variables, taint, implied exports.
    let mut vars: BTreeSet<String> = data.arguments_config.iter().cloned().collect();
    vars.extend(rule.config_vars.iter().cloned());
    for (_, t, d) in &reqs.list {
        let fixed = t.as_map();
        for v in &d.vars {
            if !fixed.is_some_and(|m| m.contains_key(v)) {
                vars.insert(v.clone());
            }
        }
    }
    let tainted_v = plain
        .eval(&data.tainted_expr, &param_env)
        .map_err(eval_err("While evaluating tainted:".into()))?;
    let mut tainted: BTreeSet<String> = string_list(&tainted_v)
        .ok_or_else(|| {
            err(format!(
                "tainted should evaluate to a list of strings, but got {}",
                tainted_v.to_json_string()
            ))
        })?
        .into_iter()
        .collect();
    tainted.extend(rule.tainted.iter().cloned());
    let mut implied_export = BTreeSet::new();
    for (_, _, d) in &reqs.list {
        if !d.tainted.is_subset(&tainted) {
            return Err(err(
                "Not tainted with all strings the dependencies are tainted with",
            ));
        }
        implied_export.extend(d.implied_export.iter().cloned());
    }

    // String fields may ask for the keys of dependencies.
    let dep_keys = DepKeys {
        current: base,
        config: an.sources().config(),
        deps: &reqs.deps,
    };
    let with_keys = Evaluator::with_functions(&dep_keys);
    for field in &rule.string_fields {
        let v = with_keys
            .eval(&data.string_exprs[field], &param_env)
            .map_err(eval_err(format!("While evaluating string field {field}:")))?;
        if string_list(&v).is_none() {
            return Err(err(format!(
                "String field {field} should be a list of strings, but found {}",
                v.to_json_string()
            )));
        }
        params.insert(field.clone(), v);
    }

    let recorded = RefCell::new(Recorded::default());
    let fns = RuleFunctions {
        settings,
        params: &params,
        deps: &reqs.deps,
        rule_tainted: &rule.tainted,
        imports: &rule.expression.imports,
        recorded: &recorded,
        transition_only: false,
    };
    let result = Evaluator::with_functions(&fns)
        .eval(&rule.expression.expression, &expression_env)
        .map_err(eval_err(
            "While evaluating defining expression of rule:".into(),
        ))?;
    let Some(r) = result.as_result() else {
        return Err(err(format!(
            "Defining expression should evaluate to a RESULT, but got: {}",
            result.to_json_string()
        )));
    };
    let _ = me;
    let rec = recorded.into_inner();
    Ok(AnalysedTarget {
        artifacts: r.artifact_stage.clone(),
        runfiles: r.runfiles.clone(),
        provides: r.provides.clone(),
        actions: rec.actions,
        blobs: rec.blobs,
        trees: rec.trees,
        tree_overlays: rec.tree_overlays,
        vars,
        tainted,
        implied_export,
    })
}

/// The dependencies a target requested, in request order.
#[derive(Default)]
struct Requests {
    list: Vec<(EntityName, Value, Arc<AnalysedTarget>)>,
    /// Positions in `list` per field.
    by_field: HashMap<String, Vec<usize>>,
    deps: DepsByTransition,
}

impl Requests {
    /// Requests `names` under every transition of `field`.
    fn add(
        &mut self,
        an: &Analyser,
        field: &str,
        names: &[EntityName],
        transitions: &BTreeMap<String, Vec<Value>>,
        config: &Config,
        trail: &Trail<'_>,
    ) -> Result<(), AnalysisError> {
        use rayon::prelude::*;
        let mut wanted = Vec::new();
        for t in transitions.get(field).map(Vec::as_slice).unwrap_or(&[]) {
            let cfg = overlay_config(config, t);
            for n in names {
                wanted.push((n, t, cfg.clone()));
            }
        }
        // Independent dependencies are analysed in parallel.
        let analysed = wanted
            .par_iter()
            .map(|(n, _, cfg)| an.analyse_in(n, cfg, trail))
            .collect::<Result<Vec<_>, _>>()?;
        for ((n, t, _), d) in wanted.into_iter().zip(analysed) {
            self.by_field
                .entry(field.to_string())
                .or_default()
                .push(self.list.len());
            self.deps.insert((n.clone(), t.clone()), d.clone());
            self.list.push((n.clone(), t.clone(), d));
        }
        Ok(())
    }
}
