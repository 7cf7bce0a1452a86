//! The roots of a just-mr repository configuration that prefetching can
//! make available: those fixed by their content.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

/// An archive: its content id and where a copy may be found locally.
#[derive(Clone, Debug)]
pub struct Archive {
    /// Git blob id of the archive.
    pub content: String,
    pub zip: bool,
    /// The file names it may have in a distdir (`distfile`, the fetch URL's last part).
    pub names: Vec<String>,
    pub fetch: Option<String>,
}

#[derive(Clone, Debug)]
pub enum RootKind {
    Git {
        commit: String,
        subdir: String,
        /// A local repository path (a path or `file://` URL), if given.
        local: Option<PathBuf>,
    },
    GitTree {
        id: String,
    },
    Archive {
        archive: Archive,
        subdir: String,
        /// The `"special"` pragma: "", "ignore", "resolve-partially", "resolve-completely".
        special: String,
    },
    Distdir {
        archives: Vec<Archive>,
    },
    File {
        path: PathBuf,
    },
    /// Not fixed by its content (a plain `file` root, computed roots, …).
    Other {
        why: String,
    },
}

impl RootKind {
    pub fn name(&self) -> &'static str {
        match self {
            RootKind::Git { .. } => "git",
            RootKind::GitTree { .. } => "git tree",
            RootKind::Archive { archive, .. } if archive.zip => "zip",
            RootKind::Archive { .. } => "archive",
            RootKind::Distdir { .. } => "distdir",
            RootKind::File { .. } => "file",
            RootKind::Other { .. } => "other",
        }
    }
}

/// A repository of the configuration and its workspace root.
#[derive(Clone, Debug)]
pub struct Root {
    pub name: String,
    pub kind: RootKind,
}

/// The repository description of `name` (following names that stand for
/// another repository's, as just-mr does), bounded against cycles.
pub fn description<'a>(repos: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut current = repos.get(name)?.get("repository")?;
    for _ in 0..repos.len() {
        match current {
            Value::String(other) => current = repos.get(other)?.get("repository")?,
            _ => return Some(current),
        }
    }
    None
}

fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn archive(desc: &Value) -> anyhow::Result<Archive> {
    let content = string(desc, "content").context("an archive without \"content\"")?;
    let fetch = string(desc, "fetch");
    let mut names = Vec::new();
    if let Some(d) = string(desc, "distfile") {
        names.push(d);
    }
    if let Some(last) = fetch.as_deref().and_then(|f| f.rsplit('/').next()) {
        if !last.is_empty() && !names.iter().any(|n| n == last) {
            names.push(last.to_string());
        }
    }
    Ok(Archive {
        content,
        zip: string(desc, "type").as_deref() == Some("zip"),
        names,
        fetch,
    })
}

fn local_repository(desc: &Value) -> Option<PathBuf> {
    let r = string(desc, "repository")?;
    let path = r.strip_prefix("file://").unwrap_or(&r);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// The kind of root a repository description gives.
fn kind(repos: &serde_json::Map<String, Value>, desc: &Value) -> anyhow::Result<RootKind> {
    let t = string(desc, "type").unwrap_or_default();
    let subdir = string(desc, "subdir").unwrap_or_else(|| ".".into());
    let pragma = desc.get("pragma");
    Ok(match t.as_str() {
        "git" => RootKind::Git {
            commit: string(desc, "commit").context("a git repository without \"commit\"")?,
            subdir,
            local: local_repository(desc),
        },
        "git tree" => RootKind::GitTree {
            id: string(desc, "id").context("a git tree without \"id\"")?,
        },
        "archive" | "zip" => RootKind::Archive {
            archive: archive(desc)?,
            subdir,
            special: pragma
                .and_then(|p| p.get("special"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        "distdir" => {
            let names = desc
                .get("repositories")
                .and_then(Value::as_array)
                .context("a distdir without \"repositories\"")?;
            let mut archives = Vec::new();
            for n in names {
                let n = n.as_str().context("distdir repositories are names")?;
                let d = description(repos, n)
                    .with_context(|| format!("the distdir names {n:?}, which is not defined"))?;
                match string(d, "type").as_deref() {
                    Some("archive" | "zip") => archives.push(archive(d)?),
                    _ => bail!("the distdir names {n:?}, which is not an archive"),
                }
            }
            RootKind::Distdir { archives }
        }
        "file" if pragma.and_then(|p| p.get("to_git")) == Some(&Value::Bool(true)) => {
            RootKind::File {
                path: PathBuf::from(string(desc, "path").context("a file root without \"path\"")?),
            }
        }
        "file" => RootKind::Other {
            why: "a file root without the to_git pragma is not content-fixed".into(),
        },
        other => RootKind::Other {
            why: format!("a {other:?} root is not content-fixed"),
        },
    })
}

/// Every repository of a just-mr configuration, by name.
pub fn roots(config: &Value) -> anyhow::Result<Vec<Root>> {
    let repos = config
        .get("repositories")
        .and_then(Value::as_object)
        .context("the configuration has no \"repositories\" object")?;
    let mut out = Vec::new();
    for (name, entry) in repos {
        // A repository standing for another's root is that root: once is enough.
        if matches!(entry.get("repository"), Some(Value::String(_))) {
            continue;
        }
        let desc = description(repos, name)
            .with_context(|| format!("repository {name:?} has no \"repository\""))?;
        let kind = kind(repos, desc).with_context(|| format!("repository {name:?}"))?;
        out.push(Root {
            name: name.clone(),
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_is_read() {
        let config = json!({"repositories": {
            "g": {"repository": {"type": "git", "commit": "c", "repository": "file:///srv/r", "branch": "m"}},
            "t": {"repository": {"type": "git tree", "id": "t", "cmd": ["true"]}},
            "a": {"repository": {"type": "archive", "content": "a", "fetch": "https://x/y/a-1.tar.gz",
                                 "subdir": "a-1", "pragma": {"special": "resolve-completely"}}},
            "z": {"repository": {"type": "zip", "content": "z", "distfile": "z.zip", "fetch": "https://x/z"}},
            "d": {"repository": {"type": "distdir", "repositories": ["a", "z"]}},
            "f": {"repository": {"type": "file", "path": "/p", "pragma": {"to_git": true}}},
            "plain": {"repository": {"type": "file", "path": "/p"}},
            "alias": {"repository": "g"}
        }});
        let roots = roots(&config).unwrap();
        let kinds: Vec<_> = roots
            .iter()
            .map(|r| (r.name.as_str(), r.kind.name()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", "archive"),
                ("d", "distdir"),
                ("f", "file"),
                ("g", "git"),
                ("plain", "other"),
                ("t", "git tree"),
                ("z", "zip")
            ]
        );
        let RootKind::Distdir { archives } = &roots[1].kind else {
            panic!()
        };
        assert_eq!(archives[0].names, ["a-1.tar.gz"]);
        assert_eq!(archives[1].names, ["z.zip", "z"]);
        let RootKind::Git { local, .. } = &roots[3].kind else {
            panic!()
        };
        assert_eq!(local.as_deref(), Some(std::path::Path::new("/srv/r")));
    }

    #[test]
    fn broken_configurations_are_errors() {
        for bad in [
            json!({}),
            json!({"repositories": {"d": {"repository": {"type": "distdir", "repositories": ["x"]}}}}),
            json!({"repositories": {"g": {"repository": {"type": "git"}}}}),
        ] {
            assert!(roots(&bad).is_err(), "{bad}");
        }
    }
}
