//! User-defined rules (RULES files), expression functions (EXPRESSIONS
//! files) and the analysis of targets defined by a user rule, named or
//! anonymous.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};

use super::functions::{
    name_values, string_list, DepKeys, DepsByTransition, Recorded, RuleFunctions,
};
use super::{
    entity_of_name_json, overlay_config, prune, quoted, AnalysedTarget, Analyser, AnalysisError,
    Config, Trail,
};
use crate::build::expr::{Env, EvalError, Evaluator};
use crate::build::names::{parse_entity_name, AnonymousTarget, EntityName, NamedTarget};
use crate::build::value::{Map, Node, Value};

/// An expression with the variables it sees and the expressions it may
/// call by alias.
#[derive(Debug)]
pub struct ExpressionFunction {
    pub vars: Vec<String>,
    pub imports: BTreeMap<String, Arc<ExpressionFunction>>,
    pub expression: Value,
}

/// A rule's `anonymous` entry.
#[derive(Debug)]
pub struct AnonymousDefinition {
    pub target: String,
    pub provider: String,
    /// node type → rule name value.
    pub rule_map: Value,
}

/// A user-defined rule.
#[derive(Debug)]
pub struct UserRule {
    pub name: NamedTarget,
    pub string_fields: Vec<String>,
    pub target_fields: Vec<String>,
    pub config_fields: Vec<String>,
    pub implicit: BTreeMap<String, Vec<EntityName>>,
    pub anonymous: BTreeMap<String, AnonymousDefinition>,
    pub config_vars: Vec<String>,
    pub tainted: BTreeSet<String>,
    /// Every target, implicit and anonymous field has one.
    pub transitions: BTreeMap<String, Arc<ExpressionFunction>>,
    pub expression: Arc<ExpressionFunction>,
}

const RULE_KEYS: [&str; 16] = [
    "anonymous",
    "artifacts_doc",
    "config_doc",
    "config_fields",
    "config_transitions",
    "config_vars",
    "doc",
    "expression",
    "field_doc",
    "implicit",
    "imports",
    "provides_doc",
    "runfiles_doc",
    "string_fields",
    "tainted",
    "target_fields",
];

const RESERVED_FIELDS: [&str; 3] = ["arguments_config", "tainted", "type"];

fn err(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::new(msg)
}

/// A literal list of strings (default `[]`).
fn literal_strings(
    obj: &JsonMap<String, Json>,
    key: &str,
    what: &str,
) -> Result<Vec<String>, AnalysisError> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    err(format!(
                        "Field {key} in {what} has to be a list of strings, but found {}",
                        serde_json::to_string(&obj[key]).unwrap_or_default()
                    ))
                })
            })
            .collect(),
        Some(other) => Err(err(format!(
            "Field {key} in {what} has to be a list of strings, but found {}",
            serde_json::to_string(other).unwrap_or_default()
        ))),
    }
}

impl Analyser {
    /// The expression function `name` (an EXPRESSIONS entry), with its
    /// imports resolved; import cycles are errors.
    pub(crate) fn expression_function(
        &self,
        name: &NamedTarget,
        loading: &mut Vec<NamedTarget>,
    ) -> Result<Arc<ExpressionFunction>, AnalysisError> {
        if let Some(f) = self.expressions.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        if loading.contains(name) {
            let chain: Vec<String> = loading.iter().map(|n| n.to_string()).collect();
            return Err(err(format!(
                "Cyclic import of expressions: {} -> {name}",
                chain.join(" -> ")
            )));
        }
        if !name.is_definition_name() {
            return Err(err(format!("{name} cannot name an expression")));
        }
        let file = self
            .sources
            .expressions_file(&name.repository, &name.module)
            .map_err(|e| {
                AnalysisError::from(e)
                    .context(format!("While reading expression file in {}:", name.module))
            })?;
        let def = file
            .get(&name.name)
            .ok_or_else(|| err(format!("Cannot find expression {name}")))?;
        let obj = def
            .as_object()
            .ok_or_else(|| err(format!("Expression definition {name} is not an object")))?;
        let expression = obj
            .get("expression")
            .map(Value::from_json)
            .ok_or_else(|| err(format!("Missing mandatory field expression in {name}")))?;
        let vars = literal_strings(obj, "vars", &format!("expression {name}"))?;
        loading.push(name.clone());
        let imports = self.imports_of(obj, name, loading);
        loading.pop();
        let f = Arc::new(ExpressionFunction {
            vars,
            imports: imports
                .map_err(|e| e.context(format!("While handling imports of {name}:")))?,
            expression,
        });
        self.expressions
            .lock()
            .unwrap()
            .insert(name.clone(), f.clone());
        Ok(f)
    }

    fn imports_of(
        &self,
        obj: &JsonMap<String, Json>,
        at: &NamedTarget,
        loading: &mut Vec<NamedTarget>,
    ) -> Result<BTreeMap<String, Arc<ExpressionFunction>>, AnalysisError> {
        let mut imports = BTreeMap::new();
        let Some(spec) = obj.get("imports") else {
            return Ok(imports);
        };
        let spec = spec
            .as_object()
            .ok_or_else(|| err(format!("Field imports in {at} is not an object")))?;
        let lookup = self.sources.config().binding_lookup();
        for (alias, target) in spec {
            let n = parse_entity_name(target, at, &lookup)
                .map_err(|e| err(format!("Parsing import {alias} failed with:\n{e}")))?;
            imports.insert(alias.clone(), self.expression_function(&n, loading)?);
        }
        Ok(imports)
    }

    /// The user rule `name` (a RULES entry).
    pub(crate) fn user_rule(&self, name: &NamedTarget) -> Result<Arc<UserRule>, AnalysisError> {
        if let Some(r) = self.rules.lock().unwrap().get(name) {
            return Ok(r.clone());
        }
        if !name.is_definition_name() {
            return Err(err(format!("{name} cannot name a rule")));
        }
        let file = self
            .sources
            .rules_file(&name.repository, &name.module)
            .map_err(|e| {
                AnalysisError::from(e).context(format!("While reading rule file for {name}:"))
            })?;
        let def = file
            .get(&name.name)
            .ok_or_else(|| err(format!("Cannot find rule {name} in {}", name.module)))?;
        let rule = Arc::new(self.read_rule(name, def)?);
        self.rules
            .lock()
            .unwrap()
            .insert(name.clone(), rule.clone());
        Ok(rule)
    }

    fn read_rule(&self, name: &NamedTarget, def: &Json) -> Result<UserRule, AnalysisError> {
        let obj = def
            .as_object()
            .ok_or_else(|| err(format!("Rule definition {name} is not an object")))?;
        for key in obj.keys() {
            if !RULE_KEYS.contains(&key.as_str()) {
                tracing::warn!("rule {name} has unknown key {key:?}");
            }
        }
        let what = format!("rule {name}");
        let expression = obj
            .get("expression")
            .map(Value::from_json)
            .ok_or_else(|| err(format!("Missing mandatory field expression in {what}")))?;
        let mut target_fields = literal_strings(obj, "target_fields", &what)?;
        let mut string_fields = literal_strings(obj, "string_fields", &what)?;
        let mut config_fields = literal_strings(obj, "config_fields", &what)?;
        target_fields.sort();
        string_fields.sort();
        config_fields.sort();
        let config_vars = literal_strings(obj, "config_vars", &what)?;
        let tainted: BTreeSet<String> = literal_strings(obj, "tainted", &what)?
            .into_iter()
            .collect();
        let lookup = self.sources.config().binding_lookup();

        let mut implicit = BTreeMap::new();
        match obj.get("implicit") {
            None => {}
            Some(Json::Object(m)) => {
                for (field, list) in m {
                    let items = list.as_array().ok_or_else(|| {
                        err(format!(
                            "Entry in implicit field of rule {name} is not a list."
                        ))
                    })?;
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        let n = parse_entity_name(item, name, &lookup).map_err(|e| {
                            err(format!(
                                "Parsing entry {} in implicit field of rule {name} failed with:\n{e}",
                                serde_json::to_string(item).unwrap_or_default()
                            ))
                        })?;
                        names.push(EntityName::Named(n));
                    }
                    implicit.insert(field.clone(), names);
                }
            }
            Some(_) => {
                return Err(err(format!(
                    "Field implicit in rule {name} is not an object"
                )))
            }
        }

        let mut anonymous = BTreeMap::new();
        match obj.get("anonymous") {
            None => {}
            Some(Json::Object(m)) => {
                for (field, d) in m {
                    let d = d.as_object().ok_or_else(|| {
                        err(format!(
                            "Entry {field} in field anonymous in rule {name} is not an object"
                        ))
                    })?;
                    let get_str = |k: &str| -> Result<String, AnalysisError> {
                        match d.get(k) {
                            None => Err(err(format!(
                                "Entry {k} for {field} in field anonymous in rule {name} is missing"
                            ))),
                            Some(Json::String(s)) => Ok(s.clone()),
                            Some(_) => Err(err(format!(
                                "Entry {k} for {field} in field anonymous in rule {name} is not a string"
                            ))),
                        }
                    };
                    let target = get_str("target")?;
                    let provider = get_str("provider")?;
                    let rm = match d.get("rule_map") {
                        None => {
                            return Err(err(format!(
                                "Entry rule_map for {field} in field anonymous in rule {name} is missing"
                            )))
                        }
                        Some(Json::Object(rm)) => rm,
                        Some(_) => {
                            return Err(err(format!(
                                "Entry rule_map for {field} in field anonymous in rule {name} is not an object"
                            )))
                        }
                    };
                    let mut rule_map = Map::new();
                    for (node_type, rule_name) in rm {
                        let n = parse_entity_name(rule_name, name, &lookup).map_err(|e| {
                            err(format!(
                                "Parsing rule name for entry {node_type} in field anonymous in rule {name} failed with:\n{e}"
                            ))
                        })?;
                        rule_map.insert(node_type.clone(), Value::name(n.to_json()));
                    }
                    anonymous.insert(
                        field.clone(),
                        AnonymousDefinition {
                            target,
                            provider,
                            rule_map: Value::map(rule_map),
                        },
                    );
                }
            }
            Some(_) => {
                return Err(err(format!(
                    "Field anonymous in rule {name} is not an object"
                )))
            }
        }

        // Field names: not reserved, and each of one kind only.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let kinds: [Vec<&str>; 5] = [
            target_fields.iter().map(String::as_str).collect(),
            string_fields.iter().map(String::as_str).collect(),
            config_fields.iter().map(String::as_str).collect(),
            implicit.keys().map(String::as_str).collect(),
            anonymous.keys().map(String::as_str).collect(),
        ];
        for fields in &kinds {
            for f in fields {
                if RESERVED_FIELDS.contains(f) {
                    return Err(err(format!(
                        "User-defined fields cannot be any of the reserved fields [{}]",
                        RESERVED_FIELDS.join(",")
                    )));
                }
            }
        }
        let mut dups = BTreeSet::new();
        for fields in &kinds {
            let unique: BTreeSet<&str> = fields.iter().copied().collect();
            for f in unique {
                let count = seen.entry(f).or_insert(0);
                *count += 1;
                if *count > 1 {
                    dups.insert(f);
                }
            }
        }
        if !dups.is_empty() {
            return Err(err(format!(
                "A field can have only one type, but the following have more: [{}]",
                dups.into_iter().collect::<Vec<_>>().join(",")
            )));
        }

        let mut loading = Vec::new();
        let imports =
            Arc::new(self.imports_of(obj, name, &mut loading).map_err(|e| {
                e.context(format!("While reading expression map for rule {name}:"))
            })?);
        let function = |expression: Value| {
            Arc::new(ExpressionFunction {
                vars: config_vars.clone(),
                imports: (*imports).clone(),
                expression,
            })
        };
        let mut transitions = BTreeMap::new();
        match obj.get("config_transitions") {
            None => {}
            Some(Json::Object(m)) => {
                let valid: BTreeSet<&str> = target_fields
                    .iter()
                    .map(String::as_str)
                    .chain(implicit.keys().map(String::as_str))
                    .chain(anonymous.keys().map(String::as_str))
                    .collect();
                if m.keys().any(|k| !valid.contains(k.as_str())) {
                    return Err(err(format!(
                        "Config transitions has to be a map from target fields to transition expressions, but found [{}]",
                        m.keys().cloned().collect::<Vec<_>>().join(",")
                    )));
                }
                for (field, e) in m {
                    transitions.insert(field.clone(), function(Value::from_json(e)));
                }
            }
            Some(_) => {
                return Err(err(format!(
                    "Field config_transitions in rule {name} is not an object"
                )))
            }
        }
        let identity = quoted(Value::list(vec![Value::empty_map()]));
        for field in target_fields
            .iter()
            .chain(implicit.keys())
            .chain(anonymous.keys())
        {
            transitions
                .entry(field.clone())
                .or_insert_with(|| function(identity.clone()));
        }
        Ok(UserRule {
            name: name.clone(),
            string_fields,
            target_fields,
            config_fields,
            implicit,
            anonymous,
            config_vars: config_vars.clone(),
            tainted,
            transitions,
            expression: function(expression),
        })
    }
}

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
