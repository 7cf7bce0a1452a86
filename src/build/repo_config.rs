//! The multi-repository configuration of just-repository-config(5), read the
//! way `just` reads it: `main`, `repositories`, and per repository four roots
//! (workspace, target, rule, expression; each defaulting to the previous
//! one), three file names (defaults `TARGETS`, `RULES`, `EXPRESSIONS`) and
//! `bindings` (local name → global name). Unknown keys are ignored.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const DEFAULT_TARGET_FILE_NAME: &str = "TARGETS";
pub const DEFAULT_RULE_FILE_NAME: &str = "RULES";
pub const DEFAULT_EXPRESSION_FILE_NAME: &str = "EXPRESSIONS";

pub const GIT_TREE_MARKER: &str = "git tree";
pub const GIT_TREE_IGNORE_SPECIAL_MARKER: &str = "git tree ignore-special";
pub const FILE_MARKER: &str = "file";
pub const FILE_IGNORE_SPECIAL_MARKER: &str = "file ignore-special";
pub const COMPUTED_MARKER: &str = "computed";
pub const TREE_STRUCTURE_MARKER: &str = "tree structure";

/// A file root.
#[derive(Debug, Clone, PartialEq)]
pub enum FileRoot {
    /// `["file", path]` / `["file ignore-special", path]`: a directory on disk.
    Directory { path: PathBuf, ignore_special: bool },
    /// `["git tree", tree]` / `["git tree", tree, repo]` and their
    /// ignore-special forms; `repository: None` is an absent root.
    GitTree {
        tree: String,
        repository: Option<PathBuf>,
        ignore_special: bool,
    },
    /// `["computed", repo, module, name, config(, pragma)]`: the result of an
    /// export target; must be resolved to a git tree before analysis.
    Computed {
        repository: String,
        module: String,
        name: String,
        config: Value,
        absent: bool,
    },
    /// `["tree structure", repo(, pragma)]`: resolved before analysis.
    TreeStructure { repository: String, absent: bool },
}

impl FileRoot {
    /// A present git-tree root.
    pub fn git_tree(tree: &str, repository: impl Into<PathBuf>) -> FileRoot {
        FileRoot::GitTree {
            tree: tree.to_string(),
            repository: Some(repository.into()),
            ignore_special: false,
        }
    }

    /// Parses a root description; `repo` and `keyword` only go into errors.
    pub fn parse(repo: &str, keyword: &str, root: &Value) -> Result<FileRoot, RepoConfigError> {
        let bad = |message: String| RepoConfigError::Root {
            repository: repo.to_string(),
            keyword: keyword.to_string(),
            message,
        };
        let dump = || json_text(root);
        let list = match root.as_array() {
            Some(l) if !l.is_empty() => l,
            _ => {
                return Err(bad(format!(
                    "Expected {keyword} for {repo} to be of the form [<scheme>, ...], but found {}",
                    dump()
                )))
            }
        };
        let scheme = list[0].as_str().unwrap_or("");
        match scheme {
            FILE_MARKER | FILE_IGNORE_SPECIAL_MARKER => match (list.len(), list.get(1)) {
                (2, Some(Value::String(p))) => Ok(FileRoot::Directory {
                    path: PathBuf::from(p),
                    ignore_special: scheme == FILE_IGNORE_SPECIAL_MARKER,
                }),
                _ => Err(bad(format!(
                    "\"{scheme}\" scheme expects precisely one string argument, but found {} for {keyword} of repository {repo}",
                    dump()
                ))),
            },
            GIT_TREE_MARKER | GIT_TREE_IGNORE_SPECIAL_MARKER => {
                let strings = list[1..].iter().all(Value::is_string);
                if !(strings && (list.len() == 2 || list.len() == 3)) {
                    return Err(bad(format!(
                        "\"{scheme}\" scheme expects one or two string arguments, but found {} for {keyword} of repository {repo}",
                        dump()
                    )));
                }
                let tree = list[1].as_str().unwrap_or_default().to_string();
                Ok(FileRoot::GitTree {
                    tree,
                    repository: list.get(2).and_then(Value::as_str).map(PathBuf::from),
                    ignore_special: scheme == GIT_TREE_IGNORE_SPECIAL_MARKER,
                })
            }
            COMPUTED_MARKER => parse_computed(list).map_err(|e| {
                bad(format!("While parsing {} for {keyword} of repository{repo}:\nWhile parsing computed root {}:\n{e}", dump(), dump()))
            }),
            TREE_STRUCTURE_MARKER => parse_tree_structure(list).map_err(|e| {
                bad(format!("While parsing {} for {keyword} of repository{repo}:\nWhile parsing tree structure root {}:\n{e}", dump(), dump()))
            }),
            _ => Err(bad(format!(
                "Unknown scheme in the specification {} of {keyword} of repository {repo}",
                dump()
            ))),
        }
    }

    /// Content-fixed roots are git trees, present or absent, ignore-special
    /// or not.
    pub fn is_content_fixed(&self) -> bool {
        matches!(self, FileRoot::GitTree { .. })
    }

    pub fn is_absent(&self) -> bool {
        match self {
            FileRoot::GitTree { repository, .. } => repository.is_none(),
            FileRoot::Computed { absent, .. } | FileRoot::TreeStructure { absent, .. } => *absent,
            FileRoot::Directory { .. } => false,
        }
    }

    pub fn ignore_special(&self) -> bool {
        match self {
            FileRoot::Directory { ignore_special, .. }
            | FileRoot::GitTree { ignore_special, .. } => *ignore_special,
            _ => false,
        }
    }

    /// The description used in repository keys: `["git tree", tree]` or
    /// `["git tree ignore-special", tree]`, never the repository path;
    /// `None` if the root is not content-fixed.
    pub fn content_description(&self) -> Option<Value> {
        match self {
            FileRoot::GitTree {
                tree,
                ignore_special,
                ..
            } => Some(Value::Array(vec![
                Value::from(if *ignore_special {
                    GIT_TREE_IGNORE_SPECIAL_MARKER
                } else {
                    GIT_TREE_MARKER
                }),
                Value::from(tree.as_str()),
            ])),
            _ => None,
        }
    }
}

fn pragma_absent(pragma: &Value, allow_null: bool) -> Result<bool, String> {
    let Some(obj) = pragma.as_object() else {
        return Err(format!(
            "The root has a wrong type of optional pragma argument. Expected a plain json object, got {}",
            json_text(pragma)
        ));
    };
    match obj.get("absent") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Null) if allow_null => Ok(false),
        Some(v) => Err(format!(
            "Expected pragma entry \"absent\" to be boolean, but found {}",
            json_text(v)
        )),
    }
}

fn parse_computed(list: &[Value]) -> Result<FileRoot, String> {
    let dump = json_text;
    if list.len() != 5 && list.len() != 6 {
        return Err(format!(
            "The root has a wrong number of arguments: {}\nThe scheme requires [<scheme>, <root>, <module>, <name>, <config>] optionally followed by a pragma object",
            dump(&Value::Array(list.to_vec()))
        ));
    }
    for (i, what) in [(1, "<root>"), (2, "<module>"), (3, "<name>")] {
        if !list[i].is_string() {
            return Err(format!(
                "The root has a wrong type of {what}. Expected a string, got {}",
                dump(&list[i])
            ));
        }
    }
    if !list[4].is_object() {
        return Err(format!(
            "The root has a wrong type of <config>. Expected a plain json object, got {}",
            dump(&list[4])
        ));
    }
    let absent = match list.get(5) {
        Some(p) => pragma_absent(p, false)?,
        None => false,
    };
    let s = |i: usize| list[i].as_str().unwrap_or_default().to_string();
    Ok(FileRoot::Computed {
        repository: s(1),
        module: s(2),
        name: s(3),
        config: list[4].clone(),
        absent,
    })
}

fn parse_tree_structure(list: &[Value]) -> Result<FileRoot, String> {
    let dump = json_text;
    if list.len() != 2 && list.len() != 3 {
        return Err(format!(
            "The root has a wrong number of arguments: {}\nThe scheme requires [<scheme>, <root>] optionally followed by a pragma object",
            dump(&Value::Array(list.to_vec()))
        ));
    }
    let Some(repository) = list[1].as_str() else {
        return Err(format!(
            "The root has a wrong type of <root>. Expected a string, got {}",
            dump(&list[1])
        ));
    };
    let absent = match list.get(2) {
        Some(p) => pragma_absent(p, true)?,
        None => false,
    };
    Ok(FileRoot::TreeStructure {
        repository: repository.to_string(),
        absent,
    })
}

/// One repository: roots, file names and bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryInfo {
    pub workspace_root: FileRoot,
    pub target_root: FileRoot,
    pub rule_root: FileRoot,
    pub expression_root: FileRoot,
    pub target_file_name: String,
    pub rule_file_name: String,
    pub expression_file_name: String,
    /// local name → global name, in lexicographic order of the local name.
    pub bindings: BTreeMap<String, String>,
}

impl RepositoryInfo {
    /// All roots `root`, default file names, no bindings.
    pub fn new(root: FileRoot) -> RepositoryInfo {
        RepositoryInfo {
            target_root: root.clone(),
            rule_root: root.clone(),
            expression_root: root.clone(),
            workspace_root: root,
            target_file_name: DEFAULT_TARGET_FILE_NAME.to_string(),
            rule_file_name: DEFAULT_RULE_FILE_NAME.to_string(),
            expression_file_name: DEFAULT_EXPRESSION_FILE_NAME.to_string(),
            bindings: BTreeMap::new(),
        }
    }

    /// All four roots are content-fixed (git trees).
    pub fn is_content_fixed(&self) -> bool {
        self.roots().iter().all(|r| r.is_content_fixed())
    }

    pub fn roots(&self) -> [&FileRoot; 4] {
        [
            &self.workspace_root,
            &self.target_root,
            &self.rule_root,
            &self.expression_root,
        ]
    }

    /// The base description of a content-fixed repository (no bindings):
    /// the four roots' content descriptions and the three file names.
    pub fn base_description(&self) -> Option<Value> {
        let mut m = Map::new();
        m.insert(
            "workspace_root".into(),
            self.workspace_root.content_description()?,
        );
        m.insert(
            "target_root".into(),
            self.target_root.content_description()?,
        );
        m.insert("rule_root".into(), self.rule_root.content_description()?);
        m.insert(
            "expression_root".into(),
            self.expression_root.content_description()?,
        );
        m.insert(
            "target_file_name".into(),
            Value::from(self.target_file_name.as_str()),
        );
        m.insert(
            "rule_file_name".into(),
            Value::from(self.rule_file_name.as_str()),
        );
        m.insert(
            "expression_file_name".into(),
            Value::from(self.expression_file_name.as_str()),
        );
        Some(Value::Object(m))
    }
}

/// Errors in a repository configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoConfigError {
    #[error("Repository configuration is not valid JSON: {0}")]
    Json(String),
    #[error("Repository configuration does not contain a map.")]
    NotAnObject,
    #[error("Repository config: main has to be a string")]
    MainNotString,
    #[error("Repository config: repositories has to be a map")]
    RepositoriesNotObject,
    #[error("Repository description of {0} has to be a map")]
    RepositoryNotObject(String),
    #[error("{message}")]
    Root {
        repository: String,
        keyword: String,
        message: String,
    },
    #[error("Unknown workspace root for repository {0}")]
    NoWorkspaceRoot(String),
    #[error("bindings has to be a string-string map, but found {0}")]
    BindingsNotMap(String),
    #[error(
        "Binding {global} for {local} in {repository} does not refer to a defined repository."
    )]
    UnknownBinding {
        repository: String,
        local: String,
        global: String,
    },
    /// A repository description (the repository-key blob) that serve cannot
    /// turn into a configuration.
    #[error("{0}")]
    Description(String),
    #[error("{keyword} of repository {repository} has to be a string, but found {found}")]
    FileNameNotString {
        repository: String,
        keyword: String,
        found: String,
    },
}

/// The repositories `just` knows, by global name, and the main repository.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepositoryConfig {
    pub main: String,
    pub repositories: BTreeMap<String, RepositoryInfo>,
}

impl RepositoryConfig {
    /// Parses the text of a repository configuration file.
    pub fn parse_str(text: &str) -> Result<RepositoryConfig, RepoConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| RepoConfigError::Json(e.to_string()))?;
        RepositoryConfig::from_json(&v, None)
    }

    /// Reads a repository configuration as `just` does. `main_override`
    /// plays `--main`. Without `main`, the lexicographically first
    /// repository is main. Every repository, main included, needs a
    /// `workspace_root` (`just` would otherwise look for workspace markers
    /// from the working directory, which has no meaning here).
    pub fn from_json(
        config: &Value,
        main_override: Option<&str>,
    ) -> Result<RepositoryConfig, RepoConfigError> {
        let obj = config.as_object().ok_or(RepoConfigError::NotAnObject)?;
        let empty = Map::new();
        let repos = match obj.get("repositories") {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(RepoConfigError::RepositoriesNotObject),
        };
        let main = match (main_override, obj.get("main")) {
            (Some(m), _) => m.to_string(),
            (None, Some(Value::String(m))) => m.clone(),
            (None, Some(_)) => return Err(RepoConfigError::MainNotString),
            (None, None) => repos
                .keys()
                .min_by(|a, b| a.as_bytes().cmp(b.as_bytes()))
                .cloned()
                .unwrap_or_default(),
        };
        let mut repositories = BTreeMap::new();
        for (name, desc) in repos {
            let desc = desc
                .as_object()
                .ok_or_else(|| RepoConfigError::RepositoryNotObject(name.clone()))?;
            repositories.insert(name.clone(), parse_repository(name, desc, repos)?);
        }
        if !repositories.contains_key(&main) {
            return Err(RepoConfigError::NoWorkspaceRoot(main));
        }
        Ok(RepositoryConfig { main, repositories })
    }

    /// The configuration serve sets up from a repository description (the
    /// repository-key blob of a target-cache key): global names `"0"`, `"1"`,
    /// …, every root given as an absent git tree and made present through
    /// `serving_repository(tree)` (the repository that has the tree, if
    /// any), and every key mandatory. Recomputing the repository key of
    /// `main` from the result gives back the description's bytes.
    pub fn from_repository_description(
        desc: &Value,
        main: &str,
        serving_repository: &dyn Fn(&str) -> Option<PathBuf>,
    ) -> Result<RepositoryConfig, RepoConfigError> {
        let fail = |m: String| RepoConfigError::Description(m);
        let repos = desc
            .as_object()
            .ok_or_else(|| fail("Repository description does not contain a map.".into()))?;
        if !repos.contains_key(main) {
            return Err(fail(format!(
                "Repository configuration does not contain expected main repository {main}"
            )));
        }
        let mut repositories = BTreeMap::new();
        for (name, d) in repos {
            let d = d
                .as_object()
                .ok_or_else(|| RepoConfigError::RepositoryNotObject(name.clone()))?;
            let root = |keyword: &str| -> Result<FileRoot, RepoConfigError> {
                let Some(r) = d.get(keyword) else {
                    return Err(fail(format!("Missing {keyword} for repository {name}")));
                };
                match FileRoot::parse(name, keyword, r)? {
                    FileRoot::GitTree {
                        tree,
                        repository: None,
                        ignore_special,
                    } => match serving_repository(&tree) {
                        Some(path) => Ok(FileRoot::GitTree {
                            tree,
                            repository: Some(path),
                            ignore_special,
                        }),
                        None => Err(fail(format!("{keyword} tree {tree} is not known"))),
                    },
                    _ => Err(fail(format!(
                        "Expected {keyword} to have absent Git tree format, but found {}",
                        json_text(r)
                    ))),
                }
            };
            let mut info = RepositoryInfo::new(root("workspace_root")?);
            info.target_root = root("target_root")?;
            info.rule_root = root("rule_root")?;
            info.expression_root = root("expression_root")?;
            let Some(b) = d.get("bindings") else {
                return Err(fail(format!("Missing bindings for repository {name}")));
            };
            read_bindings(name, b, repos, &mut info)?;
            if let Some(keyword) = read_file_names(name, d, &mut info, true)? {
                return Err(fail(format!("Missing {keyword} for repository {name}")));
            }
            repositories.insert(name.clone(), info);
        }
        Ok(RepositoryConfig {
            main: main.to_string(),
            repositories,
        })
    }

    pub fn info(&self, repo: &str) -> Option<&RepositoryInfo> {
        self.repositories.get(repo)
    }

    /// The global name `local` is bound to in `repo`.
    pub fn global_name(&self, repo: &str, local: &str) -> Option<&str> {
        self.repositories
            .get(repo)?
            .bindings
            .get(local)
            .map(String::as_str)
    }

    /// The binding lookup `names::parse_entity_name` takes.
    pub fn binding_lookup(&self) -> impl Fn(&str, &str) -> Option<String> + '_ {
        move |repo, local| self.global_name(repo, local).map(str::to_string)
    }

    /// A repository is content-fixed if all its roots are git trees.
    pub fn is_content_fixed(&self, repo: &str) -> bool {
        self.repositories
            .get(repo)
            .is_some_and(RepositoryInfo::is_content_fixed)
    }
}

fn parse_repository(
    name: &str,
    desc: &Map<String, Value>,
    repos: &Map<String, Value>,
) -> Result<RepositoryInfo, RepoConfigError> {
    let root = |keyword: &str| -> Result<Option<FileRoot>, RepoConfigError> {
        desc.get(keyword)
            .map(|r| FileRoot::parse(name, keyword, r))
            .transpose()
    };
    let workspace_root = root("workspace_root")?
        .ok_or_else(|| RepoConfigError::NoWorkspaceRoot(name.to_string()))?;
    let mut info = RepositoryInfo::new(workspace_root);
    if let Some(r) = root("target_root")? {
        info.target_root = r;
    }
    info.rule_root = info.target_root.clone();
    if let Some(r) = root("rule_root")? {
        info.rule_root = r;
    }
    info.expression_root = info.rule_root.clone();
    if let Some(r) = root("expression_root")? {
        info.expression_root = r;
    }
    if let Some(b) = desc.get("bindings") {
        read_bindings(name, b, repos, &mut info)?;
    }
    read_file_names(name, desc, &mut info, false)?;
    Ok(info)
}

/// Reads `"bindings"`: local name -> a global repository that must exist.
fn read_bindings(
    name: &str,
    bindings: &Value,
    repos: &Map<String, Value>,
    info: &mut RepositoryInfo,
) -> Result<(), RepoConfigError> {
    let bad = || RepoConfigError::BindingsNotMap(json_text(bindings));
    for (local, global) in bindings.as_object().ok_or_else(bad)? {
        let global = global.as_str().ok_or_else(bad)?;
        if !repos.contains_key(global) {
            return Err(RepoConfigError::UnknownBinding {
                repository: name.to_string(),
                local: local.clone(),
                global: global.to_string(),
            });
        }
        info.bindings.insert(local.clone(), global.to_string());
    }
    Ok(())
}

/// Reads the three file names. A missing one keeps its default, unless
/// `required`: then reading stops there and returns its keyword.
fn read_file_names(
    name: &str,
    desc: &Map<String, Value>,
    info: &mut RepositoryInfo,
    required: bool,
) -> Result<Option<&'static str>, RepoConfigError> {
    for (keyword, slot) in [
        ("target_file_name", &mut info.target_file_name),
        ("rule_file_name", &mut info.rule_file_name),
        ("expression_file_name", &mut info.expression_file_name),
    ] {
        match desc.get(keyword) {
            None if required => return Ok(Some(keyword)),
            None => {}
            Some(Value::String(s)) => *slot = s.clone(),
            Some(v) => {
                return Err(RepoConfigError::FileNameNotString {
                    repository: name.to_string(),
                    keyword: keyword.to_string(),
                    found: json_text(v),
                })
            }
        }
    }
    Ok(None)
}

/// JSON text in error messages: as the configuration file was read, so
/// integers stay integers (nlohmann's `dump()` of parsed JSON).
fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
