//! Reading user-defined rules (RULES files) and expression functions
//! (EXPRESSIONS files): their fields checked, imports resolved, each read
//! once per analysis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};

use super::{quoted, Analyser, AnalysisError};
use crate::build::names::{parse_entity_name, EntityName, NamedTarget};
use crate::build::value::{Map, Value};

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

pub(super) fn err(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::new(msg)
}

/// A literal list of strings (default `[]`).
pub(super) fn literal_strings(
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
