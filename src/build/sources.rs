//! The files of a module (TARGETS, RULES, EXPRESSIONS, names from the
//! repository configuration) and source-like targets: files and symlinks
//! (explicit `FILE`/`SYMLINK` references or implicit ones, names not defined
//! in the targets file), `TREE` references and `GLOB`s, analysed as the
//! reference analyses them.
//!
//! A source file's result has artifacts = runfiles = `{name as written:
//! artifact}` and provides `{}`; the artifact is `KNOWN` (git blob id, size,
//! file type) for git roots and `LOCAL` (module/name, repository) for
//! directory roots. A tree reference gives the directory as one `KNOWN` tree
//! when it is an unmodified git tree (native mode only), otherwise a `TREE`
//! artifact of a tree built from the directory's entries (recursively). A
//! glob is the union of the matching files' and symlinks' stages.
//!
//! All three JSON files are mandatory where they are read (as in the
//! reference): a missing file is `SourceError::FileMissing`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Map as JsonMap, Value as Json};

use crate::build::artifact::{tree_description_text, tree_id_in, ArtifactDescription, IdScheme};
use crate::build::names::{NamedTarget, ReferenceKind};
use crate::build::repo_config::{FileRoot, RepositoryConfig};
use crate::build::roots::{normal_components, RootCache, RootError, SourceRoot};
use crate::build::value::{Map, TargetResult, Value};
use crate::digest::{HashFunction, ObjectKind};

/// Which of a module's JSON files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Targets,
    Rules,
    Expressions,
}

/// Errors reading module files and analysing source targets. Messages
/// follow the reference's wording.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Cannot determine root or JSON file name for repository {0}.")]
    UnknownRepository(String),
    #[error("Modules have to live inside their repository, but found {0}.")]
    ModuleOutside(String),
    #[error("Would have to read JSON file {path} of absent root {tree}.")]
    AbsentJsonRoot { path: String, tree: String },
    #[error("JSON file {0} does not exist.")]
    FileMissing(String),
    #[error("cannot read JSON file {0}.")]
    Unreadable(String),
    #[error("JSON file {path} does not contain valid JSON:\n{message}")]
    InvalidJson { path: String, message: String },
    #[error("JSON in {0} is not an object.")]
    NotAnObject(String),
    #[error("Source file reference outside current module: {0}")]
    OutsideModule(String),
    #[error("Cannot determine source file {name} in directory {dir} of repository {repository}")]
    NoSourceFile {
        name: String,
        dir: String,
        repository: String,
    },
    #[error("Cannot determine workspace root for repository {0}")]
    NoWorkspaceRoot(String),
    #[error("Would have to read directory entries of absent root {0}")]
    AbsentWorkspaceRoot(String),
    #[error("Failed to read directory {dir} from repository {repository}")]
    Directory {
        dir: String,
        repository: String,
        #[source]
        source: RootError,
    },
    #[error("{0}")]
    Root(#[from] RootError),
    #[error("{context}:\n{source}")]
    Context {
        context: String,
        #[source]
        source: Box<SourceError>,
    },
}

impl SourceError {
    fn context(self, context: String) -> SourceError {
        SourceError::Context {
            context,
            source: Box::new(self),
        }
    }
}

/// A tree built by the analysis from source entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTree {
    pub id: String,
    /// normalised path → artifact
    pub inputs: BTreeMap<String, ArtifactDescription>,
}

impl SourceTree {
    pub fn new(inputs: BTreeMap<String, ArtifactDescription>) -> SourceTree {
        SourceTree::new_in(IdScheme::Current, inputs)
    }

    /// A tree whose id follows `scheme`.
    pub fn new_in(scheme: IdScheme, inputs: BTreeMap<String, ArtifactDescription>) -> SourceTree {
        let id = tree_id_in(scheme, inputs.iter().map(|(k, v)| (k.as_str(), v)));
        SourceTree { id, inputs }
    }

    /// The tree's description as in just-graph-file(5): path → artifact.
    pub fn to_json(&self) -> Json {
        Json::Object(
            self.inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    /// The compact text the id is computed from (after `TREE:`).
    pub fn description_text(&self) -> String {
        tree_description_text(self.inputs.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// The analysed result of a source-like target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTarget {
    /// Artifacts (and runfiles): path → artifact.
    pub stage: BTreeMap<String, ArtifactDescription>,
    /// Trees the result needs: this target's own tree first (tree
    /// references that are not known trees), then those of nested tree
    /// references.
    pub trees: Vec<SourceTree>,
}

impl SourceTarget {
    fn single(name: &str, artifact: ArtifactDescription) -> SourceTarget {
        SourceTarget {
            stage: BTreeMap::from([(name.to_string(), artifact)]),
            trees: Vec::new(),
        }
    }

    /// The stage as a map value of artifact values.
    pub fn stage_value(&self) -> Value {
        Value::map(
            self.stage
                .iter()
                .map(|(k, v)| (k.clone(), v.to_value()))
                .collect::<Map>(),
        )
    }

    /// The target result: artifacts = runfiles = the stage, provides `{}`.
    pub fn result(&self) -> TargetResult {
        let stage = self.stage_value();
        TargetResult {
            artifact_stage: stage.clone(),
            runfiles: stage,
            provides: Value::empty_map(),
        }
    }

    /// The result as a value.
    pub fn result_value(&self) -> Value {
        Value::result(self.result())
    }
}

/// The parsed object of a TARGETS, RULES or EXPRESSIONS file.
pub type ModuleFile = Arc<JsonMap<String, Json>>;

/// Reads module files and analyses source targets of one repository
/// configuration. Shareable between threads; files and roots are read once.
pub struct RepoReader {
    config: Arc<RepositoryConfig>,
    hash: HashFunction,
    roots: RootCache,
    files: Mutex<HashMap<(FileKind, String, String), ModuleFile>>,
    id_scheme: IdScheme,
}

impl RepoReader {
    pub fn new(config: Arc<RepositoryConfig>, hash: HashFunction) -> RepoReader {
        RepoReader {
            config,
            hash,
            roots: RootCache::new(),
            files: Mutex::new(HashMap::new()),
            id_scheme: IdScheme::Current,
        }
    }

    /// Identifies the trees it builds by `scheme`.
    pub fn with_id_scheme(mut self, scheme: IdScheme) -> RepoReader {
        self.id_scheme = scheme;
        self
    }

    pub fn id_scheme(&self) -> IdScheme {
        self.id_scheme
    }

    pub fn config(&self) -> &RepositoryConfig {
        &self.config
    }

    pub fn hash_function(&self) -> HashFunction {
        self.hash
    }

    /// The opened root of a root description.
    pub fn root(&self, root: &FileRoot) -> Result<Arc<SourceRoot>, SourceError> {
        Ok(self.roots.get(root)?)
    }

    fn root_and_name(&self, kind: FileKind, repository: &str) -> Option<(&FileRoot, &str)> {
        let info = self.config.repositories.get(repository)?;
        Some(match kind {
            FileKind::Targets => (&info.target_root, info.target_file_name.as_str()),
            FileKind::Rules => (&info.rule_root, info.rule_file_name.as_str()),
            FileKind::Expressions => (&info.expression_root, info.expression_file_name.as_str()),
        })
    }

    /// The JSON object of a module's file (cached).
    pub fn read_json_file(
        &self,
        kind: FileKind,
        repository: &str,
        module: &str,
    ) -> Result<ModuleFile, SourceError> {
        let key = (kind, repository.to_string(), module.to_string());
        if let Some(m) = self.files.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let (root, file_name) = self
            .root_and_name(kind, repository)
            .ok_or_else(|| SourceError::UnknownRepository(repository.to_string()))?;
        if module.starts_with('/') || normal_components(module).first() == Some(&"..") {
            return Err(SourceError::ModuleOutside(module.to_string()));
        }
        let mut parts = normal_components(module);
        parts.push(file_name);
        let path = parts.join("/");
        let root = self.root(root)?;
        if let Some(tree) = root.absent_tree() {
            return Err(SourceError::AbsentJsonRoot {
                path,
                tree: tree.to_string(),
            });
        }
        if !root.is_file(&path)? {
            return Err(SourceError::FileMissing(path));
        }
        let content = root
            .read_content(&path)?
            .ok_or_else(|| SourceError::Unreadable(path.clone()))?;
        // nlohmann skips a leading UTF-8 byte-order mark.
        let text = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&content);
        let json: Json = serde_json::from_slice(text).map_err(|e| SourceError::InvalidJson {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let Json::Object(map) = json else {
            return Err(SourceError::NotAnObject(path));
        };
        let map = Arc::new(map);
        self.files.lock().unwrap().insert(key, map.clone());
        Ok(map)
    }

    pub fn targets_file(&self, repository: &str, module: &str) -> Result<ModuleFile, SourceError> {
        self.read_json_file(FileKind::Targets, repository, module)
    }

    pub fn rules_file(&self, repository: &str, module: &str) -> Result<ModuleFile, SourceError> {
        self.read_json_file(FileKind::Rules, repository, module)
    }

    pub fn expressions_file(
        &self,
        repository: &str,
        module: &str,
    ) -> Result<ModuleFile, SourceError> {
        self.read_json_file(FileKind::Expressions, repository, module)
    }

    fn workspace_root(&self, repository: &str) -> Result<Arc<SourceRoot>, SourceError> {
        let info = self
            .config
            .repositories
            .get(repository)
            .ok_or_else(|| SourceError::NoWorkspaceRoot(repository.to_string()))?;
        self.root(&info.workspace_root)
    }

    /// The entries of directory `dir` of a repository's workspace root, as
    /// the reference's directory map gives them (not a directory → empty).
    pub fn directory_entries(
        &self,
        repository: &str,
        dir: &str,
    ) -> Result<crate::build::roots::DirectoryEntries, SourceError> {
        let root = self.workspace_root(repository)?;
        if let Some(tree) = root.absent_tree() {
            return Err(SourceError::AbsentWorkspaceRoot(tree.to_string()));
        }
        let dir_path = if dir.is_empty() { "." } else { dir };
        root.directory_entries(dir_path)
            .map_err(|source| SourceError::Directory {
                dir: dir_path.to_string(),
                repository: repository.to_string(),
                source,
            })
    }

    /// A source file or symlink (`FILE`, `SYMLINK` or an implicit source
    /// target): `name.name` relative to its module.
    pub fn source_file(&self, name: &NamedTarget) -> Result<SourceTarget, SourceError> {
        let parts = normal_components(&name.name);
        if name.name.starts_with('/') || parts.first() == Some(&"..") {
            return Err(SourceError::OutsideModule(name.name.clone()));
        }
        let mut full: Vec<&str> = normal_components(&name.module);
        full.extend(parts.iter().copied());
        let path = full.join("/");
        let file_name = parts.last().copied().unwrap_or("");
        let dir = full[..full.len().saturating_sub(1)].join("/");
        let root = self.workspace_root(&name.repository)?;
        let exists = if root.is_git() {
            root.is_blob(&path)?
        } else {
            self.directory_entries(&name.repository, &dir)
                .map_err(|e| {
                    e.context(format!(
                        "While reading contents of directory {}",
                        json_text(&dir)
                    ))
                })?
                .contains_blob(file_name)
        };
        if exists {
            if let Some(artifact) = root.to_artifact(&path, &name.repository, self.hash)? {
                return Ok(SourceTarget::single(&name.name, artifact));
            }
        }
        Err(SourceError::NoSourceFile {
            name: json_text(file_name),
            dir: json_text(&dir),
            repository: json_text(&name.repository),
        })
    }

    /// A tree reference: directory `module/name` of the workspace root.
    pub fn tree(&self, name: &NamedTarget) -> Result<SourceTarget, SourceError> {
        self.tree_inner(name)
            .map_err(|e| e.context(format!("While analysing {name} as explicit tree reference")))
    }

    fn tree_inner(&self, name: &NamedTarget) -> Result<SourceTarget, SourceError> {
        let dir = if name.module.is_empty() {
            name.name.clone()
        } else {
            format!("{}/{}", name.module, name.name)
        };
        let dir_module = crate::build::names::normal_module_name(&dir);
        let entries = self
            .directory_entries(&name.repository, &dir_module)
            .map_err(|e| e.context(format!("While analysing entries of {name}")))?;
        if let (Some((id, size)), true) = (&entries.known_tree, self.hash.is_native()) {
            let artifact = ArtifactDescription::known(id.clone(), *size, ObjectKind::Tree)
                .with_repository(name.repository.clone());
            return Ok(SourceTarget::single(&name.name, artifact));
        }
        let mut inputs = BTreeMap::new();
        let mut nested = Vec::new();
        let mut add = |result: SourceTarget| {
            for (path, artifact) in result.stage {
                inputs.insert(crate::build::roots::normal_path(&path), artifact);
            }
            nested.extend(result.trees);
        };
        for file in entries.files() {
            let n =
                NamedTarget::with_kind(&name.repository, &dir_module, file, ReferenceKind::File);
            add(self.source_file(&n)?);
        }
        for link in entries.symlinks() {
            let n =
                NamedTarget::with_kind(&name.repository, &dir_module, link, ReferenceKind::Symlink);
            add(self.source_file(&n)?);
        }
        for sub in entries.directories() {
            let n = NamedTarget::with_kind(&name.repository, &dir_module, sub, ReferenceKind::Tree);
            add(self.tree(&n)?);
        }
        let tree = SourceTree::new_in(self.id_scheme, inputs);
        let artifact = ArtifactDescription::tree(tree.id.clone());
        let mut trees = vec![tree];
        trees.extend(nested);
        Ok(SourceTarget {
            stage: BTreeMap::from([(name.name.clone(), artifact)]),
            trees,
        })
    }

    /// A glob: the module directory's files and symlinks matching the
    /// pattern `name.name`.
    pub fn glob(&self, name: &NamedTarget) -> Result<SourceTarget, SourceError> {
        let entries = self
            .directory_entries(&name.repository, &name.module)
            .map_err(|e| e.context(format!("While reading directory for {name}")))?;
        let mut stage = BTreeMap::new();
        for (entry, kind) in entries.glob(&name.name) {
            let kind = if kind == ObjectKind::Symlink {
                ReferenceKind::Symlink
            } else {
                ReferenceKind::File
            };
            let n = NamedTarget::with_kind(&name.repository, &name.module, entry, kind);
            let result = self.source_file(&n).map_err(|e| {
                e.context(format!(
                    "While analysing {name} as glob:\nWhile handling matching file targets"
                ))
            })?;
            stage.extend(result.stage);
        }
        Ok(SourceTarget {
            stage,
            trees: Vec::new(),
        })
    }

    /// Dispatches a source-like name by kind. For kind target, the module's
    /// targets file is read: `Ok(None)` if the name is defined there,
    /// otherwise the name is an implicit source target.
    pub fn source_target(&self, name: &NamedTarget) -> Result<Option<SourceTarget>, SourceError> {
        match name.kind {
            ReferenceKind::Tree => self.tree(name).map(Some),
            ReferenceKind::File => self.source_file(name).map(Some).map_err(|e| {
                e.context(format!(
                    "While analysing target {name} as explicit source target"
                ))
            }),
            ReferenceKind::Symlink => self
                .source_file(name)
                .map(Some)
                .map_err(|e| e.context(format!("While analysing target {name} as symlink"))),
            ReferenceKind::Glob => self.glob(name).map(Some),
            ReferenceKind::Target => {
                let targets = self.targets_file(&name.repository, &name.module)?;
                if targets.contains_key(&name.name) {
                    return Ok(None);
                }
                self.source_file(name).map(Some).map_err(|e| {
                    e.context(format!(
                        "While analysing target {name} as implicit source target"
                    ))
                })
            }
        }
    }
}

fn json_text(s: &str) -> String {
    let mut out = String::new();
    crate::build::json::write_string(&mut out, s);
    out
}
