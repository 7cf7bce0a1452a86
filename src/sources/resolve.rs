//! Resolving symlinks in git trees: the `"special"` pragma of just-mr
//! (`ignore`, `resolve-partially`, `resolve-completely`) and the
//! `resolve_symlinks` field of `ServeArchiveTree`.
//!
//! The result has to be the very tree justbuild computes, so the algorithm
//! follows justbuild's resolver step by step:
//!
//! * Every object is addressed by its normalised path relative to the root
//!   (the *key*; the root is `.`). Results are memoised per key.
//! * A file or executable resolves to itself (its blob is copied into the
//!   target repository when missing there).
//! * A directory resolves to a new tree, written into the target repository,
//!   with the same names and the resolved children. In `ignore` mode all
//!   entries that are neither files nor directories are dropped; in the other
//!   modes a tree holding a submodule (gitlink) entry is an error.
//! * A symlink (partial and complete modes only) must be relative and, applied
//!   from its directory, stay inside the tree ("confined"). In partial mode a
//!   non-upwards link (relative, normal form not starting with `..`) is kept
//!   as it is. Otherwise the link is replaced by whatever the key
//!   `normalise(dirname(link)/text)` resolves to — id *and* type, so a link to
//!   a directory becomes a subtree and a link to an executable an executable.
//! * A key that does not name an entry of the unresolved tree (because the
//!   path runs through a symlink) is found by resolving its parent key first
//!   and looking the last component up in the resolved parent; the entry found
//!   is then resolved relative to the parent's resolved location.
//!
//! Consequences worth knowing (all shared with justbuild): in partial mode a
//! link kept as a symlink does not count as a directory, so an upwards link
//! whose path runs through a non-upwards link to a directory fails; an
//! upwards link to a non-upwards link becomes a copy of that link.
//!
//! Differences from justbuild, all in cases where justbuild fails:
//! * A dangling link whose target's directory is an ancestor of the link
//!   (e.g. `l -> missing` at the root) is reported as unresolvable; justbuild
//!   reports it as a cycle through that directory.
//! * justbuild reads trees only from the source repository, so with distinct
//!   source and target repositories a lookup through a linked directory whose
//!   resolved content differs from the original fails there ("failed to read
//!   entries of subtree"); here trees missing in the source are read from the
//!   target, giving the result justbuild computes when source and target are
//!   one repository.
//!
//! The walk uses an explicit stack, so neither deep trees nor long chains of
//! links exhaust the thread's stack; a key that is needed while it is being
//! resolved is a cycle.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use git2::{ErrorCode, Odb, Oid, Repository};

use crate::digest::{serialize_git_tree, GitTreeEntry, ObjectKind, TreeError};

/// How symlinks in a tree are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResolveMode {
    /// Drop every entry that is neither a file nor a directory.
    Ignore,
    /// Resolve upwards links; keep relative non-upwards links.
    Partial,
    /// Resolve every link; the result has no symlinks.
    Complete,
}

impl ResolveMode {
    /// The pragma value, also the directory name under
    /// `repositories/generation-0/special-tree-map/`.
    pub fn pragma_name(self) -> &'static str {
        match self {
            ResolveMode::Ignore => "ignore",
            ResolveMode::Partial => "resolve-partially",
            ResolveMode::Complete => "resolve-completely",
        }
    }

    /// The mode of a pragma value (`"ignore"`, `"resolve-partially"`,
    /// `"resolve-completely"`).
    pub fn from_pragma_name(name: &str) -> Option<ResolveMode> {
        match name {
            "ignore" => Some(ResolveMode::Ignore),
            "resolve-partially" => Some(ResolveMode::Partial),
            "resolve-completely" => Some(ResolveMode::Complete),
            _ => None,
        }
    }
}

impl fmt::Display for ResolveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.pragma_name())
    }
}

/// Why a tree cannot be resolved. Paths are relative to the root tree (`.`
/// is the root itself).
#[derive(thiserror::Error, Debug)]
pub enum ResolveError {
    /// An absolute link, or a relative one leaving the tree.
    #[error("symlink {path} -> {target} is not confined to the tree")]
    NotConfined { path: String, target: String },
    /// A dangling link: `path` does not exist.
    #[error("symlink {link} cannot be resolved: {path} does not exist")]
    Unresolvable { link: String, path: String },
    /// A link whose target runs through `path`, which does not resolve to a
    /// directory (a file, or in partial mode a link that is kept).
    #[error("symlink {link} cannot be resolved: {path} is not a directory")]
    NotATree { link: String, path: String },
    /// Resolving `path` needs `path` itself; `cycle` lists the keys involved,
    /// starting and ending with `path`.
    #[error("cycle in symlinks: {}", .cycle.join(" -> "))]
    Cycle { path: String, cycle: Vec<String> },
    /// A tree entry that is neither file, executable, tree nor symlink (a
    /// submodule) outside ignore mode.
    #[error("unsupported tree entry {path} (mode {mode:o})")]
    UnsupportedEntry { path: String, mode: i32 },
    /// An object named by the tree is in neither repository.
    #[error("git object {id} for {path} is in neither the source nor the target repository")]
    MissingObject { path: String, id: Oid },
    /// A resolved tree cannot be serialised (e.g. duplicate entry names).
    #[error("cannot write the resolved tree {path}: {source}")]
    BadTree { path: String, source: TreeError },
    /// Any other git failure.
    #[error("git error at {path}: {source}")]
    Git { path: String, source: git2::Error },
}

/// Resolves `tree` (found in `source`) and writes the resulting tree (and
/// every blob/tree it needs) into `target`; returns the resolved tree id.
/// `source` and `target` may be the same repository.
pub fn resolve_tree(
    source: &Repository,
    target: &Repository,
    tree: Oid,
    mode: ResolveMode,
) -> Result<Oid, ResolveError> {
    let mut resolver = Resolver::new(source, target, mode)?;
    Ok(resolver.run(tree)?.id)
}

/// A tree entry as read: its id and type (from libgit2's normalised mode).
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: Oid,
    kind: ObjectKind,
}

/// A resolved object: id, type, and the path it was resolved at (for links,
/// the location of the object the link leads to).
#[derive(Clone, Debug)]
struct Resolved {
    id: Oid,
    kind: ObjectKind,
    path: Vec<u8>,
}

/// The entries of one tree object, in git order, with a name index.
struct TreeData {
    entries: Vec<(Vec<u8>, Oid, i32)>,
    index: HashMap<Vec<u8>, usize>,
}

impl TreeData {
    fn new(entries: Vec<(Vec<u8>, Oid, i32)>) -> TreeData {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| (name.clone(), i))
            .collect();
        TreeData { entries, index }
    }

    fn get(&self, name: &[u8]) -> Option<(Oid, i32)> {
        self.index.get(name).map(|&i| {
            let (_, id, mode) = &self.entries[i];
            (*id, *mode)
        })
    }
}

/// A suspended computation waiting for a result.
enum Frame {
    /// A key being resolved, waiting for its entry's resolution (`Known`) or
    /// for its parent key (`Parent`).
    Key { key: Vec<u8>, stage: KeyStage },
    /// A directory whose children are resolved one after the other.
    Tree {
        rel: Vec<u8>,
        children: Vec<(Vec<u8>, Entry)>,
        next: usize,
        out: Vec<GitTreeEntry>,
    },
    /// A symlink waiting for its target.
    Link { rel: Vec<u8> },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyStage {
    Known,
    Parent,
}

/// What to do next.
enum Call {
    /// Resolve a key; `known` is its entry when the caller has it.
    Key { key: Vec<u8>, known: Option<Entry> },
    /// Resolve an entry at a (resolved) location.
    Known { rel: Vec<u8>, entry: Entry },
}

/// How a frame continues.
enum Resume {
    Call(Call),
    Return(Resolved),
}

/// How resolving an entry starts.
enum Start {
    Value(Resolved),
    Frame(Frame, Option<Call>),
}

/// Where a key of the unresolved tree leads.
enum Lookup {
    Found(Entry),
    /// The path runs through a symlink: resolve the parent first.
    Indirect,
}

struct Resolver<'a> {
    source: &'a Repository,
    target: &'a Repository,
    source_odb: Odb<'a>,
    target_odb: Odb<'a>,
    mode: ResolveMode,
    root: Oid,
    memo: HashMap<Vec<u8>, Resolved>,
    active: HashSet<Vec<u8>>,
    trees: HashMap<Oid, Rc<TreeData>>,
    blobs_in_target: HashSet<Oid>,
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    out.extend_from_slice(dir);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// The directory part of a key (`""` for top-level entries and the root).
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Lexically normalises `dir/text` (`dir` being a key); `None` if the result
/// would lie above the root. The root is `""`.
fn normal_join(dir: &[u8], text: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let components = dir.split(|&b| b == b'/').chain(text.split(|&b| b == b'/'));
    for c in components {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(parts.join(&b'/'))
}

fn is_absolute(text: &[u8]) -> bool {
    text.first() == Some(&b'/')
}

/// Relative and never going above its starting point.
fn is_non_upwards(text: &[u8]) -> bool {
    !is_absolute(text) && normal_join(b"", text).is_some()
}

fn mode_of(kind: ObjectKind) -> i32 {
    match kind {
        ObjectKind::File => 0o100644,
        ObjectKind::Executable => 0o100755,
        ObjectKind::Tree => 0o040000,
        ObjectKind::Symlink => 0o120000,
    }
}

fn kind_of(mode: i32) -> Option<ObjectKind> {
    match mode {
        0o100644 => Some(ObjectKind::File),
        0o100755 => Some(ObjectKind::Executable),
        0o040000 => Some(ObjectKind::Tree),
        0o120000 => Some(ObjectKind::Symlink),
        _ => None,
    }
}

fn git_err(path: &[u8]) -> impl FnOnce(git2::Error) -> ResolveError + '_ {
    move |source| ResolveError::Git {
        path: show(path),
        source,
    }
}

impl<'a> Resolver<'a> {
    fn new(
        source: &'a Repository,
        target: &'a Repository,
        mode: ResolveMode,
    ) -> Result<Resolver<'a>, ResolveError> {
        Ok(Resolver {
            source,
            target,
            source_odb: source.odb().map_err(git_err(b""))?,
            target_odb: target.odb().map_err(git_err(b""))?,
            mode,
            root: Oid::zero(),
            memo: HashMap::new(),
            active: HashSet::new(),
            trees: HashMap::new(),
            blobs_in_target: HashSet::new(),
        })
    }

    /// Resolves the tree `root`.
    fn run(&mut self, root: Oid) -> Result<Resolved, ResolveError> {
        self.root = root;
        let mut stack: Vec<Frame> = Vec::new();
        let mut value: Option<Resolved> = None;
        let mut pending = Some(Call::Key {
            key: Vec::new(),
            known: Some(Entry {
                id: root,
                kind: ObjectKind::Tree,
            }),
        });
        loop {
            if let Some(call) = pending.take() {
                let step = match call {
                    Call::Key { key, known } => self.start_key(&stack, key, known),
                    Call::Known { rel, entry } => self.start_known(rel, entry),
                };
                match step.map_err(|e| with_link(e, &stack))? {
                    Start::Value(v) => value = Some(v),
                    Start::Frame(frame, call) => {
                        stack.push(frame);
                        pending = call;
                    }
                }
                continue;
            }
            let Some(top) = stack.last_mut() else {
                return Ok(value.expect("the root resolves to a value"));
            };
            let resumed = self.resume(top, value.take());
            match resumed.map_err(|e| with_link(e, &stack))? {
                Resume::Call(call) => pending = Some(call),
                Resume::Return(v) => {
                    if let Some(Frame::Key { key, .. }) = stack.pop() {
                        self.active.remove(&key);
                        self.memo.insert(key, v.clone());
                    }
                    value = Some(v);
                }
            }
        }
    }

    /// Begins resolving a key: memoised value, cycle, or a new frame.
    fn start_key(
        &mut self,
        stack: &[Frame],
        key: Vec<u8>,
        known: Option<Entry>,
    ) -> Result<Start, ResolveError> {
        if let Some(v) = self.memo.get(&key) {
            return Ok(Start::Value(v.clone()));
        }
        if self.active.contains(&key) {
            return Err(cycle_error(stack, &key));
        }
        let entry = match known {
            Some(e) => Some(e),
            None => match self.lookup_source(&key)? {
                Lookup::Found(e) => Some(e),
                Lookup::Indirect => None,
            },
        };
        self.active.insert(key.clone());
        Ok(match entry {
            Some(entry) => Start::Frame(
                Frame::Key {
                    key: key.clone(),
                    stage: KeyStage::Known,
                },
                Some(Call::Known { rel: key, entry }),
            ),
            None => {
                let up = parent(&key).to_vec();
                Start::Frame(
                    Frame::Key {
                        key,
                        stage: KeyStage::Parent,
                    },
                    Some(Call::Key {
                        key: up,
                        known: None,
                    }),
                )
            }
        })
    }

    /// Begins resolving an entry located at `rel`.
    fn start_known(&mut self, rel: Vec<u8>, entry: Entry) -> Result<Start, ResolveError> {
        match entry.kind {
            ObjectKind::File | ObjectKind::Executable => {
                self.ensure_blob(entry.id, &rel)?;
                Ok(Start::Value(Resolved {
                    id: entry.id,
                    kind: entry.kind,
                    path: rel,
                }))
            }
            ObjectKind::Tree => {
                let data = self.tree(entry.id, &rel)?;
                let mut children = Vec::with_capacity(data.entries.len());
                for (name, id, mode) in &data.entries {
                    match kind_of(*mode) {
                        Some(ObjectKind::Symlink) if self.mode == ResolveMode::Ignore => {}
                        Some(kind) => children.push((name.clone(), Entry { id: *id, kind })),
                        None if self.mode == ResolveMode::Ignore => {}
                        None => {
                            return Err(ResolveError::UnsupportedEntry {
                                path: show(&join(&rel, name)),
                                mode: *mode,
                            })
                        }
                    }
                }
                Ok(Start::Frame(
                    Frame::Tree {
                        rel,
                        out: Vec::with_capacity(children.len()),
                        children,
                        next: 0,
                    },
                    None,
                ))
            }
            ObjectKind::Symlink => {
                let text = self.read_blob(entry.id, &rel)?;
                let dir = parent(&rel);
                if is_absolute(&text) || normal_join(dir, &text).is_none() {
                    return Err(ResolveError::NotConfined {
                        path: show(&rel),
                        target: String::from_utf8_lossy(&text).into_owned(),
                    });
                }
                if self.mode == ResolveMode::Partial && is_non_upwards(&text) {
                    self.ensure_blob(entry.id, &rel)?;
                    return Ok(Start::Value(Resolved {
                        id: entry.id,
                        kind: ObjectKind::Symlink,
                        path: rel,
                    }));
                }
                let key = normal_join(dir, &text).expect("confined");
                Ok(Start::Frame(
                    Frame::Link { rel },
                    Some(Call::Key { key, known: None }),
                ))
            }
        }
    }

    /// Continues a frame with the value it waited for (`None` when a tree
    /// frame starts).
    fn resume(
        &mut self,
        frame: &mut Frame,
        value: Option<Resolved>,
    ) -> Result<Resume, ResolveError> {
        match frame {
            Frame::Key { key, stage } => {
                let v = value.expect("a key frame waits for a value");
                if *stage == KeyStage::Known {
                    return Ok(Resume::Return(v));
                }
                if v.kind != ObjectKind::Tree {
                    return Err(ResolveError::NotATree {
                        link: String::new(),
                        path: show(parent(key)),
                    });
                }
                let name = file_name(key);
                let rel = join(&v.path, name);
                let data = self.tree(v.id, &v.path)?;
                let Some((id, mode)) = data.get(name) else {
                    return Err(ResolveError::Unresolvable {
                        link: String::new(),
                        path: show(&rel),
                    });
                };
                let Some(kind) = kind_of(mode) else {
                    return Err(ResolveError::UnsupportedEntry {
                        path: show(&rel),
                        mode,
                    });
                };
                *stage = KeyStage::Known;
                Ok(Resume::Call(Call::Known {
                    rel,
                    entry: Entry { id, kind },
                }))
            }
            Frame::Link { .. } => Ok(Resume::Return(
                value.expect("a link frame waits for a value"),
            )),
            Frame::Tree {
                rel,
                children,
                next,
                out,
            } => {
                if let Some(v) = value {
                    let name = children[*next - 1].0.clone();
                    out.push(GitTreeEntry {
                        name,
                        kind: v.kind,
                        id: raw_id(v.id),
                    });
                }
                if let Some((name, entry)) = children.get(*next) {
                    *next += 1;
                    return Ok(Resume::Call(Call::Key {
                        key: join(rel, name),
                        known: Some(*entry),
                    }));
                }
                let id = self.write_tree(std::mem::take(out), rel)?;
                Ok(Resume::Return(Resolved {
                    id,
                    kind: ObjectKind::Tree,
                    path: std::mem::take(rel),
                }))
            }
        }
    }

    /// Looks a key up in the unresolved root tree. A path that is plainly
    /// missing (every directory on the way is a real one) or that runs through
    /// a file is an error right away: resolving parents could not help.
    fn lookup_source(&mut self, key: &[u8]) -> Result<Lookup, ResolveError> {
        let mut current = self.root;
        let mut walked = 0usize;
        let mut components = key.split(|&b| b == b'/').peekable();
        while let Some(name) = components.next() {
            let here = &key[..walked + name.len()];
            walked += name.len() + 1;
            let data = self.tree(current, parent(here))?;
            let Some((id, mode)) = data.get(name) else {
                return Err(ResolveError::Unresolvable {
                    link: String::new(),
                    path: show(here),
                });
            };
            let Some(kind) = kind_of(mode) else {
                return Err(ResolveError::UnsupportedEntry {
                    path: show(here),
                    mode,
                });
            };
            if components.peek().is_none() {
                return Ok(Lookup::Found(Entry { id, kind }));
            }
            match kind {
                ObjectKind::Tree => current = id,
                ObjectKind::Symlink => return Ok(Lookup::Indirect),
                ObjectKind::File | ObjectKind::Executable => {
                    return Err(ResolveError::NotATree {
                        link: String::new(),
                        path: show(here),
                    })
                }
            }
        }
        // Only the root has no components, and the root is never looked up:
        // it is either being resolved (a cycle) or known.
        Ok(Lookup::Found(Entry {
            id: self.root,
            kind: ObjectKind::Tree,
        }))
    }

    /// Reads a tree, from the source repository or else the target.
    fn tree(&mut self, id: Oid, path: &[u8]) -> Result<Rc<TreeData>, ResolveError> {
        if let Some(t) = self.trees.get(&id) {
            return Ok(t.clone());
        }
        let tree = match self.source.find_tree(id) {
            Ok(t) => t,
            Err(_) => match self.target.find_tree(id) {
                Ok(t) => t,
                Err(e) if e.code() == ErrorCode::NotFound => {
                    return Err(ResolveError::MissingObject {
                        path: show(path),
                        id,
                    })
                }
                Err(e) => return Err(git_err(path)(e)),
            },
        };
        let entries = tree
            .iter()
            .map(|e| (e.name_bytes().to_vec(), e.id(), e.filemode()))
            .collect();
        let data = Rc::new(TreeData::new(entries));
        self.trees.insert(id, data.clone());
        Ok(data)
    }

    /// Reads a blob (a link's text), from the source repository or else the
    /// target.
    fn read_blob(&self, id: Oid, path: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let object = match self.source_odb.read(id) {
            Ok(o) => o,
            Err(_) => self
                .target_odb
                .read(id)
                .map_err(|_| ResolveError::MissingObject {
                    path: show(path),
                    id,
                })?,
        };
        Ok(object.data().to_vec())
    }

    /// Makes sure the target repository has the blob `id`.
    fn ensure_blob(&mut self, id: Oid, path: &[u8]) -> Result<(), ResolveError> {
        if self.blobs_in_target.contains(&id) {
            return Ok(());
        }
        if !self.target_odb.exists(id) {
            let object = self
                .source_odb
                .read(id)
                .map_err(|_| ResolveError::MissingObject {
                    path: show(path),
                    id,
                })?;
            self.target_odb
                .write(git2::ObjectType::Blob, object.data())
                .map_err(git_err(path))?;
        }
        self.blobs_in_target.insert(id);
        Ok(())
    }

    /// Writes a tree into the target repository and remembers its entries.
    fn write_tree(&mut self, entries: Vec<GitTreeEntry>, path: &[u8]) -> Result<Oid, ResolveError> {
        let listed: Vec<(Vec<u8>, Oid, i32)> = entries
            .iter()
            .map(|e| {
                let id = Oid::from_bytes(&e.id).expect("20-byte id");
                (e.name.clone(), id, mode_of(e.kind))
            })
            .collect();
        let bytes = serialize_git_tree(entries).map_err(|source| ResolveError::BadTree {
            path: show(path),
            source,
        })?;
        let id = self
            .target_odb
            .write(git2::ObjectType::Tree, &bytes)
            .map_err(git_err(path))?;
        self.trees
            .entry(id)
            .or_insert_with(|| Rc::new(TreeData::new(listed)));
        Ok(id)
    }
}

fn raw_id(id: Oid) -> [u8; 20] {
    id.as_bytes().try_into().expect("SHA-1 ids have 20 bytes")
}

/// The cycle through `key`, from the frames on the stack.
fn cycle_error(stack: &[Frame], key: &[u8]) -> ResolveError {
    let keys: Vec<&[u8]> = stack
        .iter()
        .filter_map(|f| match f {
            Frame::Key { key, .. } => Some(key.as_slice()),
            _ => None,
        })
        .collect();
    let start = keys.iter().position(|k| *k == key).unwrap_or(0);
    let mut cycle: Vec<String> = keys[start..].iter().map(|k| show(k)).collect();
    cycle.push(show(key));
    ResolveError::Cycle {
        path: show(key),
        cycle,
    }
}

/// Names the innermost link being resolved in errors about its target.
fn with_link(error: ResolveError, stack: &[Frame]) -> ResolveError {
    let innermost = || {
        stack
            .iter()
            .rev()
            .find_map(|f| match f {
                Frame::Link { rel } => Some(show(rel)),
                _ => None,
            })
            .unwrap_or_else(|| ".".to_string())
    };
    match error {
        ResolveError::Unresolvable { link, path } if link.is_empty() => {
            ResolveError::Unresolvable {
                link: innermost(),
                path,
            }
        }
        ResolveError::NotATree { link, path } if link.is_empty() => ResolveError::NotATree {
            link: innermost(),
            path,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    use git2::TreeWalkMode;
    use ResolveMode::{Complete, Ignore, Partial};

    /// A node of a tree built for a test.
    enum N {
        F(&'static str),
        X(&'static str),
        L(&'static str),
        D(Vec<(&'static str, N)>),
        Gitlink,
    }
    use N::{Gitlink, D, F, L, X};

    fn build(repo: &Repository, entries: &[(&str, N)]) -> Oid {
        let mut builder = repo.treebuilder(None).unwrap();
        for (name, node) in entries {
            let (id, mode) = match node {
                F(s) => (repo.blob(s.as_bytes()).unwrap(), 0o100644),
                X(s) => (repo.blob(s.as_bytes()).unwrap(), 0o100755),
                L(s) => (repo.blob(s.as_bytes()).unwrap(), 0o120000),
                D(children) => (build(repo, children), 0o040000),
                Gitlink => (
                    Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap(),
                    0o160000,
                ),
            };
            builder.insert(name, id, mode).unwrap();
        }
        builder.write().unwrap()
    }

    fn bare(dir: &Path, name: &str) -> Repository {
        Repository::init_bare(dir.join(name)).unwrap()
    }

    /// Resolves in one repository, checks the result is complete there.
    fn resolve(
        entries: &[(&str, N)],
        mode: ResolveMode,
    ) -> Result<(Oid, Repository, tempfile::TempDir), ResolveError> {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bare(tmp.path(), "repo.git");
        let tree = build(&repo, entries);
        let id = resolve_tree(&repo, &repo, tree, mode)?;
        assert_complete(&repo, id);
        // The same, resolving into another repository.
        let other = bare(tmp.path(), "other.git");
        assert_eq!(resolve_tree(&repo, &other, tree, mode).unwrap(), id);
        assert_complete(&other, id);
        Ok((id, repo, tmp))
    }

    fn assert_complete(repo: &Repository, tree: Oid) {
        let tree = repo.find_tree(tree).expect("resolved tree in target");
        tree.walk(TreeWalkMode::PreOrder, |_, e| {
            assert!(repo.odb().unwrap().exists(e.id()), "{:?} missing", e.name());
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    }

    /// Resolves and compares with a tree built by hand.
    fn check(entries: &[(&str, N)], mode: ResolveMode, expected: &[(&str, N)]) {
        let (id, repo, _tmp) = resolve(entries, mode).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let want = build(&repo, expected);
        assert_eq!(id, want, "{mode}: got {}", listing(&repo, id));
    }

    fn listing(repo: &Repository, tree: Oid) -> String {
        let mut out = String::new();
        repo.find_tree(tree)
            .unwrap()
            .walk(TreeWalkMode::PreOrder, |dir, e| {
                out.push_str(&format!(
                    "{:o} {}{}\n",
                    e.filemode(),
                    dir,
                    e.name().unwrap()
                ));
                git2::TreeWalkResult::Ok
            })
            .unwrap();
        out
    }

    fn fails(entries: &[(&str, N)], mode: ResolveMode) -> ResolveError {
        match resolve(entries, mode) {
            Ok((id, repo, _)) => panic!("{mode}: expected an error, got {}", listing(&repo, id)),
            Err(e) => e,
        }
    }

    #[test]
    fn pragma_names() {
        for mode in [Ignore, Partial, Complete] {
            assert_eq!(
                ResolveMode::from_pragma_name(mode.pragma_name()),
                Some(mode)
            );
        }
        assert_eq!(Partial.pragma_name(), "resolve-partially");
        assert_eq!(Complete.to_string(), "resolve-completely");
        assert_eq!(ResolveMode::from_pragma_name("none"), None);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(normal_join(b"a/b", b"../c").unwrap(), b"a/c");
        assert_eq!(normal_join(b"a", b"./x//y/").unwrap(), b"a/x/y");
        assert_eq!(normal_join(b"a", b"..").unwrap(), b"");
        assert_eq!(normal_join(b"", b"a/../..."), Some(b"...".to_vec()));
        assert_eq!(normal_join(b"a", b"../.."), None);
        assert_eq!(normal_join(b"a", b"x/../../../b"), None);
        assert!(is_non_upwards(b"a/../b"));
        assert!(is_non_upwards(b""));
        assert!(!is_non_upwards(b"a/../../b"));
        assert!(!is_non_upwards(b"/a"));
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"c"), b"");
        assert_eq!(file_name(b"a/b/c"), b"c");
    }

    #[test]
    fn no_links_gives_the_same_tree() {
        let tree = || {
            vec![
                ("f", F("1")),
                ("x", X("2")),
                ("d", D(vec![("e", D(vec![])), ("g", F("3"))])),
            ]
        };
        for mode in [Ignore, Partial, Complete] {
            check(&tree(), mode, &tree());
        }
    }

    #[test]
    fn link_in_the_same_directory() {
        let tree = || {
            vec![
                ("f", F("hi")),
                ("l", L("f")),
                ("d", D(vec![("g", X("run")), ("m", L("./g"))])),
            ]
        };
        check(&tree(), Partial, &tree());
        check(
            &tree(),
            Complete,
            &[
                ("f", F("hi")),
                ("l", F("hi")),
                ("d", D(vec![("g", X("run")), ("m", X("run"))])),
            ],
        );
        check(
            &tree(),
            Ignore,
            &[("f", F("hi")), ("d", D(vec![("g", X("run"))]))],
        );
    }

    #[test]
    fn upwards_link_inside_the_tree() {
        let tree = || vec![("a", D(vec![("b", L("../c"))])), ("c", F("c"))];
        let resolved = || vec![("a", D(vec![("b", F("c"))])), ("c", F("c"))];
        check(&tree(), Partial, &resolved());
        check(&tree(), Complete, &resolved());
        check(&tree(), Ignore, &[("a", D(vec![])), ("c", F("c"))]);
    }

    #[test]
    fn link_to_a_directory_becomes_a_subtree() {
        let sub = || D(vec![("file", F("x")), ("tool", X("y")), ("in", L("file"))]);
        let sub_complete = || D(vec![("file", F("x")), ("tool", X("y")), ("in", F("x"))]);
        let tree = || {
            vec![
                ("sub", sub()),
                ("d", L("sub")),
                ("a", D(vec![("up", L("../sub"))])),
            ]
        };
        check(
            &tree(),
            Complete,
            &[
                ("sub", sub_complete()),
                ("d", sub_complete()),
                ("a", D(vec![("up", sub_complete())])),
            ],
        );
        // Partial: `d` is non-upwards and stays; `a/up` becomes the partially
        // resolved directory, keeping its inner non-upwards link.
        check(
            &tree(),
            Partial,
            &[
                ("sub", sub()),
                ("d", L("sub")),
                ("a", D(vec![("up", sub())])),
            ],
        );
    }

    #[test]
    fn link_to_an_executable_is_executable() {
        let tree = || {
            vec![
                ("bin", D(vec![("tool", X("#!"))])),
                ("run", L("bin/tool")),
                ("x", D(vec![("r", L("../bin/tool"))])),
            ]
        };
        check(
            &tree(),
            Complete,
            &[
                ("bin", D(vec![("tool", X("#!"))])),
                ("run", X("#!")),
                ("x", D(vec![("r", X("#!"))])),
            ],
        );
        check(
            &tree(),
            Partial,
            &[
                ("bin", D(vec![("tool", X("#!"))])),
                ("run", L("bin/tool")),
                ("x", D(vec![("r", X("#!"))])),
            ],
        );
    }

    #[test]
    fn link_through_a_linked_directory() {
        let tree = || {
            vec![
                (
                    "sub",
                    D(vec![("file", F("x")), ("deep", D(vec![("g", F("g"))]))]),
                ),
                ("a", D(vec![("e", L("../sub"))])),
                (
                    "b",
                    D(vec![("y", L("../a/e/file")), ("z", L("../a/e/deep/g"))]),
                ),
                ("d", L("sub")),
                ("t", L("d/deep")),
            ]
        };
        let sub = || D(vec![("file", F("x")), ("deep", D(vec![("g", F("g"))]))]);
        check(
            &tree(),
            Complete,
            &[
                ("sub", sub()),
                ("a", D(vec![("e", sub())])),
                ("b", D(vec![("y", F("x")), ("z", F("g"))])),
                ("d", sub()),
                ("t", D(vec![("g", F("g"))])),
            ],
        );
        check(
            &tree(),
            Partial,
            &[
                ("sub", sub()),
                ("a", D(vec![("e", sub())])),
                ("b", D(vec![("y", F("x")), ("z", F("g"))])),
                ("d", L("sub")),
                ("t", L("d/deep")),
            ],
        );
    }

    #[test]
    fn partial_mode_does_not_follow_kept_links() {
        // As in justbuild: a kept (non-upwards) link is not a directory, so an
        // upwards link through it fails ...
        let tree = vec![
            ("c", D(vec![("x", F("x"))])),
            ("b", L("c")),
            ("a", D(vec![("up", L("../b/x"))])),
        ];
        let err = fails(&tree, Partial);
        assert!(
            matches!(&err, ResolveError::NotATree { link, path } if link == "a/up" && path == "b"),
            "{err}"
        );
        check(
            &tree,
            Complete,
            &[
                ("c", D(vec![("x", F("x"))])),
                ("b", D(vec![("x", F("x"))])),
                ("a", D(vec![("up", F("x"))])),
            ],
        );
        // ... and an upwards link to a kept link becomes a copy of that link.
        let tree = || {
            vec![
                ("f", F("f")),
                ("l2", L("f")),
                ("a", D(vec![("l1", L("../l2"))])),
            ]
        };
        check(
            &tree(),
            Partial,
            &[
                ("f", F("f")),
                ("l2", L("f")),
                ("a", D(vec![("l1", L("f"))])),
            ],
        );
        check(
            &tree(),
            Complete,
            &[
                ("f", F("f")),
                ("l2", F("f")),
                ("a", D(vec![("l1", F("f"))])),
            ],
        );
    }

    #[test]
    fn chains_of_links() {
        let tree = || {
            vec![
                ("f", F("end")),
                ("l1", L("l2")),
                ("l2", L("d/l3")),
                ("d", D(vec![("l3", L("../f")), ("l4", L("../l1"))])),
            ]
        };
        check(
            &tree(),
            Complete,
            &[
                ("f", F("end")),
                ("l1", F("end")),
                ("l2", F("end")),
                ("d", D(vec![("l3", F("end")), ("l4", F("end"))])),
            ],
        );
        // Partial: `d/l4` leads to the kept link `l1`, copied as it is.
        check(
            &tree(),
            Partial,
            &[
                ("f", F("end")),
                ("l1", L("l2")),
                ("l2", L("d/l3")),
                ("d", D(vec![("l3", F("end")), ("l4", L("l2"))])),
            ],
        );
        check(&tree(), Ignore, &[("f", F("end")), ("d", D(vec![]))]);
    }

    #[test]
    fn escaping_links_are_errors() {
        for text in ["../x", "../../x", "a/../../x"] {
            let tree = vec![("f", F("f")), ("esc", L(text))];
            for mode in [Partial, Complete] {
                let err = fails(&tree, mode);
                assert!(
                    matches!(&err, ResolveError::NotConfined { path, target } if path == "esc" && target == text),
                    "{err}"
                );
            }
            check(&tree, Ignore, &[("f", F("f"))]);
        }
        let tree = vec![("a", D(vec![("esc", L("../../x"))]))];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::NotConfined { path, .. } if path == "a/esc"),
                "{err}"
            );
        }
        check(&tree, Ignore, &[("a", D(vec![]))]);
    }

    #[test]
    fn absolute_links_are_errors() {
        let tree = vec![("d", D(vec![("abs", L("/etc/passwd"))])), ("f", F("f"))];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::NotConfined { path, target } if path == "d/abs" && target == "/etc/passwd"),
                "{err}"
            );
        }
        check(&tree, Ignore, &[("d", D(vec![])), ("f", F("f"))]);
    }

    #[test]
    fn dangling_links_are_errors() {
        // Upwards (so resolved in both modes) and into another directory.
        let tree = vec![
            ("a", D(vec![("l", L("../b/missing"))])),
            ("b", D(vec![("f", F("f"))])),
        ];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::Unresolvable { link, path } if link == "a/l" && path == "b/missing"),
                "{err}"
            );
        }
        // Into the link's own directory (justbuild calls this a cycle).
        let tree = vec![("a", D(vec![("l", L("../missing/x"))]))];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::Unresolvable { path, .. } if path == "missing"),
                "{err}"
            );
        }
        let tree = vec![("l", L("missing"))];
        let err = fails(&tree, Complete);
        assert!(
            matches!(&err, ResolveError::Unresolvable { link, path } if link == "l" && path == "missing"),
            "{err}"
        );
        check(&tree, Partial, &[("l", L("missing"))]);
        check(&tree, Ignore, &[]);
        // Through a linked directory: missing in the resolved directory.
        let tree = vec![
            ("d", D(vec![("f", F("f"))])),
            ("e", L("d")),
            ("l", L("e/missing")),
        ];
        let err = fails(&tree, Complete);
        assert!(
            matches!(&err, ResolveError::Unresolvable { link, path } if link == "l" && path == "d/missing"),
            "{err}"
        );
        // Through a file.
        let tree = vec![("f", F("f")), ("l", L("f/x"))];
        let err = fails(&tree, Complete);
        assert!(
            matches!(&err, ResolveError::NotATree { link, path } if link == "l" && path == "f"),
            "{err}"
        );
    }

    #[test]
    fn cycles_are_errors() {
        let tree = vec![("a", L("b")), ("b", L("a"))];
        let err = fails(&tree, Complete);
        assert!(
            matches!(&err, ResolveError::Cycle { path, cycle } if path == "a" && cycle == &["a", "b", "a"]),
            "{err}"
        );
        check(&tree, Partial, &tree);
        check(&tree, Ignore, &[]);

        let tree = vec![("s", L("s"))];
        assert!(matches!(fails(&tree, Complete), ResolveError::Cycle { .. }));

        // A directory link into its own ancestor.
        let tree = vec![("d", D(vec![("up", L(".."))]))];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::Cycle { path, cycle } if path == "." && cycle == &[".", "d", "d/up", "."]),
                "{err}"
            );
        }
        let tree = vec![("d", D(vec![("e", D(vec![("up", L("../../d"))]))]))];
        assert!(matches!(fails(&tree, Partial), ResolveError::Cycle { path, .. } if path == "d"));

        // Cycles through a path lookup.
        let tree = vec![("a", D(vec![("l", L("../b/x"))])), ("b", L("a/l"))];
        assert!(matches!(fails(&tree, Complete), ResolveError::Cycle { .. }));
        let tree = vec![("here", L("."))];
        assert!(matches!(fails(&tree, Complete), ResolveError::Cycle { path, .. } if path == "."));
        check(&tree, Partial, &tree);
    }

    #[test]
    fn submodules_fail_unless_ignored() {
        let tree = vec![("d", D(vec![("sm", Gitlink), ("f", F("f"))]))];
        for mode in [Partial, Complete] {
            let err = fails(&tree, mode);
            assert!(
                matches!(&err, ResolveError::UnsupportedEntry { path, mode } if path == "d/sm" && *mode == 0o160000),
                "{err}"
            );
        }
        check(&tree, Ignore, &[("d", D(vec![("f", F("f"))]))]);
    }

    #[test]
    fn missing_root_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bare(tmp.path(), "r.git");
        let id = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let err = resolve_tree(&repo, &repo, id, Complete).unwrap_err();
        assert!(
            matches!(&err, ResolveError::MissingObject { path, .. } if path == "."),
            "{err}"
        );
    }

    #[test]
    fn objects_are_copied_into_a_separate_target() {
        let tmp = tempfile::tempdir().unwrap();
        let source = bare(tmp.path(), "source.git");
        let target = bare(tmp.path(), "target.git");
        let tree = build(
            &source,
            &[
                ("f", F("content")),
                ("l", L("f")),
                ("d", D(vec![("k", L("../f"))])),
            ],
        );
        let id = resolve_tree(&source, &target, tree, Partial).unwrap();
        assert_complete(&target, id);
        assert!(
            !target.odb().unwrap().exists(tree),
            "the unresolved tree is not needed"
        );
        // The kept link's blob is there too.
        let l = target.find_tree(id).unwrap().get_name("l").unwrap().id();
        assert_eq!(target.find_blob(l).unwrap().content(), b"f");
    }

    #[test]
    fn resolved_directory_read_from_the_target() {
        // `m -> p/s` looks `s` up in the resolved `q`, whose resolved `s`
        // exists only in the target (justbuild fails here when the
        // repositories differ).
        let tree = || {
            vec![
                ("f", F("hi")),
                ("p", L("q")),
                ("q", D(vec![("s", D(vec![("k", L("../../f"))]))])),
                ("m", L("p/s")),
            ]
        };
        let s = || D(vec![("k", F("hi"))]);
        check(
            &tree(),
            Complete,
            &[
                ("f", F("hi")),
                ("p", D(vec![("s", s())])),
                ("q", D(vec![("s", s())])),
                ("m", s()),
            ],
        );
    }

    #[test]
    fn many_links_to_a_big_directory_are_fast() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bare(tmp.path(), "r.git");
        let mut big = repo.treebuilder(None).unwrap();
        for i in 0..1000 {
            big.insert(
                format!("f{i}"),
                repo.blob(format!("{i}").as_bytes()).unwrap(),
                0o100644,
            )
            .unwrap();
        }
        let big = big.write().unwrap();
        let mut links = repo.treebuilder(None).unwrap();
        for i in 0..1000 {
            links
                .insert(
                    format!("l{i}"),
                    repo.blob(format!("../big/f{i}").as_bytes()).unwrap(),
                    0o120000,
                )
                .unwrap();
            links
                .insert(format!("d{i}"), repo.blob(b"../big").unwrap(), 0o120000)
                .unwrap();
        }
        let links = links.write().unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("big", big, 0o040000).unwrap();
        root.insert("links", links, 0o040000).unwrap();
        let root = root.write().unwrap();
        let start = std::time::Instant::now();
        let id = resolve_tree(&repo, &repo, root, Complete).unwrap();
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
        let resolved = repo.find_tree(id).unwrap();
        let links = repo
            .find_tree(resolved.get_name("links").unwrap().id())
            .unwrap();
        assert_eq!(links.len(), 2000);
        assert_eq!(links.get_name("d7").unwrap().id(), big);
        assert_eq!(links.get_name("l7").unwrap().filemode(), 0o100644);
    }

    #[test]
    fn deep_trees_and_long_chains_do_not_exhaust_the_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bare(tmp.path(), "r.git");
        // A chain of 10000 links, each to the next; the last to a file.
        let n = 10000;
        let mut builder = repo.treebuilder(None).unwrap();
        builder
            .insert("end", repo.blob(b"end").unwrap(), 0o100644)
            .unwrap();
        for i in 0..n {
            let next = if i + 1 == n {
                "end".to_string()
            } else {
                format!("l{}", i + 1)
            };
            builder
                .insert(
                    format!("l{i}"),
                    repo.blob(next.as_bytes()).unwrap(),
                    0o120000,
                )
                .unwrap();
        }
        let chain = builder.write().unwrap();
        let id = resolve_tree(&repo, &repo, chain, Complete).unwrap();
        let tree = repo.find_tree(id).unwrap();
        assert!(tree.iter().all(|e| e.filemode() == 0o100644));
        // 3000 nested directories with a link at the bottom to the top file.
        let depth = 3000;
        let mut inner = build(&repo, &[]);
        let mut up = String::new();
        for _ in 0..depth {
            up.push_str("../");
        }
        up.push_str("top");
        let mut first = true;
        for _ in 0..depth {
            let mut b = repo.treebuilder(None).unwrap();
            if first {
                b.insert("link", repo.blob(up.as_bytes()).unwrap(), 0o120000)
                    .unwrap();
                first = false;
            } else {
                b.insert("d", inner, 0o040000).unwrap();
            }
            inner = b.write().unwrap();
        }
        let root = build(&repo, &[("top", F("top"))]);
        let mut b = repo
            .treebuilder(Some(&repo.find_tree(root).unwrap()))
            .unwrap();
        b.insert("d", inner, 0o040000).unwrap();
        let root = b.write().unwrap();
        let id = resolve_tree(&repo, &repo, root, Partial).unwrap();
        let mut tree = repo.find_tree(id).unwrap();
        for _ in 0..depth {
            let next = tree.get_name("d").unwrap().id();
            tree = repo.find_tree(next).unwrap();
        }
        let link = tree.get_name("link").unwrap();
        assert_eq!(link.filemode(), 0o100644);
        assert_eq!(repo.find_blob(link.id()).unwrap().content(), b"top");
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn tree_written_by_the_git_cli() {
        if Command::new("git").arg("--version").output().is_err() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: no git command");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("src/lib")).unwrap();
        std::fs::create_dir_all(work.join("include")).unwrap();
        std::fs::write(work.join("src/lib/libfoo.so.1.2"), "elf").unwrap();
        std::fs::write(work.join("include/foo.h"), "int foo();").unwrap();
        let tool = work.join("src/tool");
        std::fs::write(&tool, "#!/bin/sh").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("libfoo.so.1.2", work.join("src/lib/libfoo.so")).unwrap();
        std::os::unix::fs::symlink("../../include", work.join("src/lib/include")).unwrap();
        std::os::unix::fs::symlink("src/tool", work.join("run")).unwrap();
        git(&work, &["init", "-q"]);
        git(&work, &["add", "-A"]);
        let tree = Oid::from_str(&git(&work, &["write-tree"])).unwrap();
        let repo = Repository::open(&work).unwrap();
        let complete = resolve_tree(&repo, &repo, tree, Complete).unwrap();
        let partial = resolve_tree(&repo, &repo, tree, Partial).unwrap();
        let ignore = resolve_tree(&repo, &repo, tree, Ignore).unwrap();
        let include = || D(vec![("foo.h", F("int foo();"))]);
        let expected_complete = build(
            &repo,
            &[
                ("include", include()),
                ("run", X("#!/bin/sh")),
                (
                    "src",
                    D(vec![
                        (
                            "lib",
                            D(vec![
                                ("libfoo.so.1.2", F("elf")),
                                ("libfoo.so", F("elf")),
                                ("include", include()),
                            ]),
                        ),
                        ("tool", X("#!/bin/sh")),
                    ]),
                ),
            ],
        );
        assert_eq!(complete, expected_complete, "{}", listing(&repo, complete));
        let expected_partial = build(
            &repo,
            &[
                ("include", include()),
                ("run", L("src/tool")),
                (
                    "src",
                    D(vec![
                        (
                            "lib",
                            D(vec![
                                ("libfoo.so.1.2", F("elf")),
                                ("libfoo.so", L("libfoo.so.1.2")),
                                ("include", include()),
                            ]),
                        ),
                        ("tool", X("#!/bin/sh")),
                    ]),
                ),
            ],
        );
        assert_eq!(partial, expected_partial, "{}", listing(&repo, partial));
        let expected_ignore = build(
            &repo,
            &[
                ("include", include()),
                (
                    "src",
                    D(vec![
                        ("lib", D(vec![("libfoo.so.1.2", F("elf"))])),
                        ("tool", X("#!/bin/sh")),
                    ]),
                ),
            ],
        );
        assert_eq!(ignore, expected_ignore, "{}", listing(&repo, ignore));
    }
}
