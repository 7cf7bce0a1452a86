//! Analysis of configured targets: from a target name and a configuration
//! to the target's result (artifacts, runfiles, provides) and its part of
//! the action graph, as `just analyse` computes it.
//!
//! Every configured target is analysed once per requested configuration
//! (memoised in the [`Analyser`]); a dependency that is requested again
//! while it is being analysed on the same path is a cycle, reported with
//! the chain of targets. Source-like targets come from [`RepoReader`];
//! built-in rules live in `builtin`, user-defined rules and anonymous
//! targets in `user_rule`, the functions only rules may call in
//! `functions`.

// Values cache their hash in a OnceLock; equality and hashing never change,
// so they are sound map keys.
#![allow(clippy::mutable_key_type)]

mod builtin;
mod functions;
mod rule_files;
pub mod stage;
mod user_rule;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use crate::build::artifact::IdScheme;
use crate::build::expr::EvalError;
use crate::build::graph::{ActionGraph, ActionNode, Tree, TreeOverlay};
use crate::build::json::dump_compact;
use crate::build::keys::KeyBlob;
use crate::build::names::{AnonymousTarget, EntityName, NameError, NamedTarget, ReferenceKind};
use crate::build::sources::{RepoReader, SourceError, SourceTarget};
use crate::build::value::{Map, TargetResult, Value};
use crate::digest::HashFunction;

pub use rule_files::{ExpressionFunction, UserRule};

/// An analysis failure: a message with the chain of contexts it happened
/// in, outermost first, as `just` prints it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct AnalysisError {
    lines: Vec<String>,
}

impl AnalysisError {
    pub fn new(msg: impl Into<String>) -> AnalysisError {
        AnalysisError {
            lines: vec![msg.into()],
        }
    }

    /// Adds an outer context line ("While analysing ...:").
    pub fn context(mut self, ctx: impl Into<String>) -> AnalysisError {
        self.lines.insert(0, ctx.into());
        self
    }

    pub fn message(&self) -> String {
        self.lines.join("\n")
    }
}

impl fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl From<EvalError> for AnalysisError {
    fn from(e: EvalError) -> AnalysisError {
        AnalysisError::new(e.to_string())
    }
}

impl From<SourceError> for AnalysisError {
    fn from(e: SourceError) -> AnalysisError {
        AnalysisError::new(e.to_string())
    }
}

impl From<NameError> for AnalysisError {
    fn from(e: NameError) -> AnalysisError {
        AnalysisError::new(e.to_string())
    }
}

/// The result of analysing one configured target, with what it adds to
/// the action graph itself (not its dependencies' parts).
#[derive(Debug, Clone)]
pub struct AnalysedTarget {
    pub artifacts: Value,
    pub runfiles: Value,
    pub provides: Value,
    pub actions: Vec<Arc<ActionNode>>,
    pub blobs: Vec<String>,
    pub trees: Vec<Arc<Tree>>,
    pub tree_overlays: Vec<Arc<TreeOverlay>>,
    /// The configuration variables the result depends on.
    pub vars: BTreeSet<String>,
    pub tainted: BTreeSet<String>,
    /// Target-cache key hashes of the export targets the result contains.
    pub implied_export: BTreeSet<String>,
}

impl Default for AnalysedTarget {
    fn default() -> AnalysedTarget {
        AnalysedTarget {
            artifacts: Value::empty_map(),
            runfiles: Value::empty_map(),
            provides: Value::empty_map(),
            actions: Vec::new(),
            blobs: Vec::new(),
            trees: Vec::new(),
            tree_overlays: Vec::new(),
            vars: BTreeSet::new(),
            tainted: BTreeSet::new(),
            implied_export: BTreeSet::new(),
        }
    }
}

impl AnalysedTarget {
    fn from_source(src: SourceTarget) -> AnalysedTarget {
        let stage = src.stage_value();
        AnalysedTarget {
            artifacts: stage.clone(),
            runfiles: stage,
            provides: Value::empty_map(),
            trees: src.trees.into_iter().map(Arc::new).collect(),
            ..AnalysedTarget::default()
        }
    }

    pub fn result(&self) -> TargetResult {
        TargetResult {
            artifact_stage: self.artifacts.clone(),
            runfiles: self.runfiles.clone(),
            provides: self.provides.clone(),
        }
    }

    pub fn result_value(&self) -> Value {
        Value::result(self.result())
    }

    /// The artifacts map (always a map value).
    pub fn artifacts_map(&self) -> &Map {
        self.artifacts.as_map().expect("artifacts are a map")
    }

    pub fn runfiles_map(&self) -> &Map {
        self.runfiles.as_map().expect("runfiles are a map")
    }

    /// `{"artifacts", "provides", "runfiles"}` as `just analyse
    /// --dump-result` writes it (nodes as ids).
    pub fn result_json(&self) -> Json {
        use crate::build::value::JsonMode;
        let mut m = serde_json::Map::new();
        m.insert(
            "artifacts".into(),
            self.artifacts.to_json_mode(JsonMode::AllButNodes),
        );
        m.insert(
            "provides".into(),
            self.provides.to_json_mode(JsonMode::AllButNodes),
        );
        m.insert(
            "runfiles".into(),
            self.runfiles.to_json_mode(JsonMode::AllButNodes),
        );
        Json::Object(m)
    }
}

/// A configuration: a map value.
pub type Config = Value;

/// The configuration restricted to `vars`: every variable present, `null`
/// where unset.
pub fn prune<S: AsRef<str>>(config: &Config, vars: impl IntoIterator<Item = S>) -> Config {
    let map = config.as_map();
    Value::map(
        vars.into_iter()
            .map(|v| {
                let v = v.as_ref();
                let val = map
                    .and_then(|m| m.get(v))
                    .cloned()
                    .unwrap_or_else(Value::null);
                (v.to_string(), val)
            })
            .collect::<Map>(),
    )
}

/// `config` with the entries of `transition` set (a `null` entry is set
/// to `null`, not removed).
pub fn overlay_config(config: &Config, transition: &Value) -> Config {
    match transition.as_map() {
        Some(t) if !t.is_empty() => {
            let mut m = config.as_map().cloned().unwrap_or_default();
            for (k, v) in t {
                m.insert(k.clone(), v.clone());
            }
            Value::map(m)
        }
        _ => config.clone(),
    }
}

/// What the analysis needs to know about an export target's cache entry
/// when it is found in a target cache.
#[derive(Debug, Clone)]
pub struct CachedExport {
    pub artifacts: Value,
    pub runfiles: Value,
    pub provides: Value,
    pub implied_export: BTreeSet<String>,
}

/// A target-level cache the analysis consults for export targets of
/// content-fixed repositories.
pub trait ExportCache: Send + Sync {
    fn lookup(&self, key: &KeyBlob) -> Option<CachedExport>;
}

/// An export target met during the analysis, with its cache key (if its
/// repository is content-fixed) and whether the cache answered.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    pub target: NamedTarget,
    pub config: Config,
    pub key: Option<(KeyBlob, KeyBlob)>,
    pub cached: bool,
    pub analysed: Arc<AnalysedTarget>,
}

/// Options of an analysis.
#[derive(Clone, Copy, Debug)]
pub struct AnalysisSettings {
    pub hash: HashFunction,
    pub ids: IdScheme,
}

type Key = (EntityName, Config);

/// The path of configured targets being analysed, innermost last, for
/// cycle detection.
#[derive(Clone, Copy)]
pub(crate) struct Trail<'a> {
    key: Option<&'a Key>,
    parent: Option<&'a Trail<'a>>,
}

impl<'a> Trail<'a> {
    pub(crate) fn root() -> Trail<'static> {
        Trail {
            key: None,
            parent: None,
        }
    }

    fn contains(&self, key: &Key) -> bool {
        let mut t = Some(self);
        while let Some(cur) = t {
            if cur.key == Some(key) {
                return true;
            }
            t = cur.parent;
        }
        false
    }

    fn chain_from(&self, key: &Key) -> Vec<String> {
        let mut chain = Vec::new();
        let mut t = Some(self);
        while let Some(cur) = t {
            if let Some(k) = cur.key {
                chain.push(configured_target_string(&k.0, &k.1));
                if k == key {
                    break;
                }
            }
            t = cur.parent;
        }
        chain.reverse();
        chain
    }
}

/// `[name, config]` as `just` prints a configured target.
pub fn configured_target_string(name: &EntityName, config: &Config) -> String {
    format!(
        "[{},{}]",
        dump_compact(&name.to_json()),
        config.to_json_string()
    )
}

/// Analyses configured targets of one repository configuration. Results
/// are shared by all callers; the analyser can be used from several
/// threads.
pub struct Analyser {
    sources: Arc<RepoReader>,
    settings: AnalysisSettings,
    memo: Mutex<HashMap<Key, Arc<AnalysedTarget>>>,
    /// The result map: every analysed target by its effective config.
    results: Mutex<BTreeMap<(EntityName, String), Arc<AnalysedTarget>>>,
    rules: Mutex<HashMap<NamedTarget, Arc<UserRule>>>,
    expressions: Mutex<HashMap<NamedTarget, Arc<ExpressionFunction>>>,
    /// Rule map and node of every anonymous target met.
    anonymous: Mutex<HashMap<AnonymousTarget, (Value, Value)>>,
    /// Export targets met, one record per target and configuration.
    exports: Mutex<BTreeMap<(NamedTarget, String), ExportRecord>>,
    export_cache: Option<Arc<dyn ExportCache>>,
    /// Workers with stacks deep enough for long dependency chains.
    pool: Arc<rayon::ThreadPool>,
}

/// Stack size of analysis workers: analysis recurses along dependency
/// chains, and a chain of a few thousand targets is plausible.
const ANALYSIS_STACK: usize = 256 << 20;

impl Analyser {
    pub fn new(sources: Arc<RepoReader>, ids: IdScheme) -> Analyser {
        let settings = AnalysisSettings {
            hash: sources.hash_function(),
            ids,
        };
        Analyser {
            sources,
            settings,
            memo: Mutex::new(HashMap::new()),
            results: Mutex::new(BTreeMap::new()),
            rules: Mutex::new(HashMap::new()),
            expressions: Mutex::new(HashMap::new()),
            anonymous: Mutex::new(HashMap::new()),
            exports: Mutex::new(BTreeMap::new()),
            export_cache: None,
            pool: Arc::new(analysis_pool(0)),
        }
    }

    /// Analyses with at most `jobs` threads (0: one per core).
    pub fn with_jobs(mut self, jobs: usize) -> Analyser {
        self.pool = Arc::new(analysis_pool(jobs));
        self
    }

    /// Consults `cache` for export targets.
    pub fn with_export_cache(mut self, cache: Arc<dyn ExportCache>) -> Analyser {
        self.export_cache = Some(cache);
        self
    }

    pub fn sources(&self) -> &RepoReader {
        &self.sources
    }

    pub fn settings(&self) -> AnalysisSettings {
        self.settings
    }

    /// Analyses `name` in `config` (a map value).
    pub fn analyse(
        &self,
        name: &EntityName,
        config: &Config,
    ) -> Result<Arc<AnalysedTarget>, AnalysisError> {
        self.pool
            .install(|| self.analyse_in(name, config, &Trail::root()))
    }

    pub(crate) fn analyse_in(
        &self,
        name: &EntityName,
        config: &Config,
        trail: &Trail<'_>,
    ) -> Result<Arc<AnalysedTarget>, AnalysisError> {
        let key: Key = (name.clone(), config.clone());
        if let Some(found) = self.memo.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        if trail.contains(&key) {
            let mut chain = trail.chain_from(&key);
            chain.push(configured_target_string(name, config));
            return Err(AnalysisError::new(format!(
                "Cyclic dependency: {}",
                chain.join(" -> ")
            )));
        }
        let inner = Trail {
            key: Some(&key),
            parent: Some(trail),
        };
        let analysed = Arc::new(self.dispatch(name, config, &inner)?);
        let effective = prune(config, &analysed.vars).to_json_string();
        self.results
            .lock()
            .unwrap()
            .entry((name.clone(), effective))
            .or_insert_with(|| analysed.clone());
        let mut memo = self.memo.lock().unwrap();
        Ok(memo.entry(key).or_insert(analysed).clone())
    }

    fn dispatch(
        &self,
        name: &EntityName,
        config: &Config,
        trail: &Trail<'_>,
    ) -> Result<AnalysedTarget, AnalysisError> {
        let named = match name {
            EntityName::Anonymous(a) => {
                let (rule_map, node) =
                    self.anonymous
                        .lock()
                        .unwrap()
                        .get(a)
                        .cloned()
                        .ok_or_else(|| {
                            AnalysisError::new(format!("Unknown anonymous target {name}"))
                        })?;
                return user_rule::analyse_anonymous(self, a, &rule_map, &node, config, trail);
            }
            EntityName::Named(n) => n,
        };
        if named.kind != ReferenceKind::Target {
            let src = self
                .sources
                .source_target(named)?
                .expect("non-target references are always source targets");
            return Ok(AnalysedTarget::from_source(src));
        }
        let repo = self
            .sources
            .config()
            .info(&named.repository)
            .ok_or_else(|| {
                AnalysisError::new(format!("Unknown repository {:?}", named.repository))
            })?;
        if repo.target_root.is_absent() {
            return Err(AnalysisError::new(format!(
                "Cannot analyse {name}: the target root of repository {:?} is absent",
                named.repository
            )));
        }
        let targets = self
            .sources
            .targets_file(&named.repository, &named.module)?;
        let Some(desc) = targets.get(&named.name) else {
            let src = self
                .sources
                .source_target(named)?
                .expect("undefined names are source targets");
            return Ok(AnalysedTarget::from_source(src));
        };
        let desc = desc.as_object().ok_or_else(|| {
            AnalysisError::new(format!(
                "Target definition of {name} is not an object: {}",
                serde_json::to_string(desc).unwrap_or_default()
            ))
        })?;
        let ty = desc
            .get("type")
            .ok_or_else(|| AnalysisError::new(format!("No type specified for target {name}")))?;
        if let Some(builtin) = ty.as_str().filter(|t| builtin::is_builtin_rule(t)) {
            return builtin::analyse(self, builtin, named, desc, config, trail);
        }
        let rule_name = crate::build::names::parse_entity_name(
            ty,
            named,
            &self.sources.config().binding_lookup(),
        )
        .map_err(|e| {
            AnalysisError::new(e.to_string()).context(format!("While parsing rule name for {name}"))
        })?;
        let rule = self
            .user_rule(&rule_name)
            .map_err(|e| e.context(format!("While looking up rule {rule_name} for {name}")))?;
        user_rule::analyse_named(self, named, desc, &rule, config, trail).map_err(|e| {
            e.context(format!(
                "While analysing target {name} with rule {rule_name}"
            ))
        })
    }

    /// Registers an anonymous target and returns its name.
    pub(crate) fn anonymous_name(&self, rule_map: &Value, node: &Value) -> EntityName {
        let a = AnonymousTarget {
            rule_map_id: rule_map.id(),
            target_node_id: node.id(),
        };
        self.anonymous
            .lock()
            .unwrap()
            .entry(a.clone())
            .or_insert_with(|| (rule_map.clone(), node.clone()));
        EntityName::Anonymous(a)
    }

    pub(crate) fn record_export(&self, record: ExportRecord) {
        let key = (record.target.clone(), record.config.to_json_string());
        self.exports.lock().unwrap().entry(key).or_insert(record);
    }

    pub(crate) fn export_cache(&self) -> Option<&Arc<dyn ExportCache>> {
        self.export_cache.as_ref()
    }

    /// The export targets met so far.
    pub fn exports(&self) -> Vec<ExportRecord> {
        self.exports.lock().unwrap().values().cloned().collect()
    }

    /// The action graph of every target analysed so far.
    pub fn graph(&self) -> ActionGraph {
        let mut graph = ActionGraph::default();
        for t in self.results.lock().unwrap().values() {
            for a in &t.actions {
                graph
                    .actions
                    .entry(a.id.clone())
                    .or_insert_with(|| a.clone());
            }
            graph.blobs.extend(t.blobs.iter().cloned());
            for tr in &t.trees {
                graph
                    .trees
                    .entry(tr.id.clone())
                    .or_insert_with(|| tr.clone());
            }
            for o in &t.tree_overlays {
                graph
                    .tree_overlays
                    .entry(o.id.clone())
                    .or_insert_with(|| o.clone());
            }
        }
        graph
    }

    /// The configured targets that define action `id`, each with the
    /// action's position in its list: `[<target>,<config>]#<index>`, the
    /// config without null values and abbreviated, as justbuild reports the
    /// origins of a failed action.
    pub fn origins(&self, id: &str) -> Vec<String> {
        /// justbuild's default limit for expressions in messages.
        const CONFIG_LIMIT: usize = 320;
        let results = self.results.lock().unwrap();
        let mut out = Vec::new();
        for ((name, config), t) in results.iter() {
            for (index, _) in t.actions.iter().enumerate().filter(|(_, a)| a.id == id) {
                let config = match serde_json::from_str::<serde_json::Value>(config) {
                    Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(
                        map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
                    ),
                    Ok(other) => other,
                    Err(_) => serde_json::Value::String(config.clone()),
                };
                let config = Value::from_json(&config).to_abbrev_string(CONFIG_LIMIT);
                out.push(format!("[{name},{config}]#{index}"));
            }
        }
        out
    }

    /// Number of configured targets in the result map.
    pub fn analysed_count(&self) -> usize {
        self.results.lock().unwrap().len()
    }
}

fn analysis_pool(jobs: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .stack_size(ANALYSIS_STACK)
        .thread_name(|i| format!("analysis-{i}"))
        .build()
        .expect("starting analysis threads")
}

/// The entity a name value denotes (`["@", repo, (marker,) module, name]`
/// or `["#", rule map id, node id]`).
pub(crate) fn entity_of_name_json(json: &Json) -> Option<EntityName> {
    let items = json.as_array()?;
    let s = |i: usize| items.get(i).and_then(Json::as_str);
    match s(0)? {
        "#" if items.len() == 3 => Some(EntityName::Anonymous(AnonymousTarget {
            rule_map_id: s(1)?.to_string(),
            target_node_id: s(2)?.to_string(),
        })),
        "@" if items.len() == 4 => Some(EntityName::Named(NamedTarget::new(s(1)?, s(2)?, s(3)?))),
        "@" if items.len() == 5 => {
            let kind = ReferenceKind::from_marker(s(2)?)?;
            Some(EntityName::Named(NamedTarget::with_kind(
                s(1)?,
                s(3)?,
                s(4)?,
                kind,
            )))
        }
        _ => None,
    }
}

/// `{"type": "empty_map"}`: the default of map-valued arguments, which
/// are expressions too.
pub(crate) fn empty_map_expr() -> Value {
    Value::map([("type".to_string(), Value::string("empty_map"))].into())
}

/// `{"type": "'", "$1": v}`: `v` as a literal expression.
pub(crate) fn quoted(v: Value) -> Value {
    Value::map(
        [
            ("type".to_string(), Value::string("'")),
            ("$1".to_string(), v),
        ]
        .into(),
    )
}

/// A name as a value of the language.
pub(crate) fn name_value(name: &EntityName) -> Value {
    Value::name(name.to_json())
}
