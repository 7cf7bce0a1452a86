//! What a build needs before anything runs: the actions reachable from the
//! requested artifacts (for progress and to catch unknown ids and cycles up
//! front), and the `LOCAL` and `KNOWN` artifacts to make available.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::build::artifact::ArtifactDescription;
use crate::build::graph::ActionGraph;
use crate::digest::{Digest, HashFunction, ObjectKind};

use super::BuildError;

/// A `KNOWN` artifact to make sure of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownObject {
    pub digest: Digest,
    pub kind: ObjectKind,
    /// Where the analysis found it, a hint for the local source.
    pub repository: Option<String>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub actions: BTreeSet<String>,
    /// (repository, path)
    pub locals: BTreeSet<(String, String)>,
    /// By hash.
    pub knowns: BTreeMap<String, KnownObject>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    Action(String),
    Tree(String),
    Overlay(String),
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Action(id) => format!("action {id}"),
            Node::Tree(id) => format!("tree {id}"),
            Node::Overlay(id) => format!("tree overlay {id}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Open,
    Closed,
}

impl Plan {
    /// Notes a leaf artifact, or returns the graph node it depends on.
    fn artifact(&mut self, hash: HashFunction, artifact: &ArtifactDescription) -> Option<Node> {
        match artifact {
            ArtifactDescription::Local { path, repository } => {
                self.locals.insert((repository.clone(), path.clone()));
                None
            }
            ArtifactDescription::Known {
                id,
                size,
                file_type,
                repository,
            } => {
                self.knowns
                    .entry(id.clone())
                    .or_insert_with(|| KnownObject {
                        digest: hash.digest(*file_type, id.as_str(), *size),
                        kind: *file_type,
                        repository: repository.clone(),
                    });
                None
            }
            ArtifactDescription::Action { action_id, .. } => Some(Node::Action(action_id.clone())),
            ArtifactDescription::Tree { id } => Some(Node::Tree(id.clone())),
            ArtifactDescription::TreeOverlay { id } => Some(Node::Overlay(id.clone())),
        }
    }

    fn children(
        &mut self,
        graph: &ActionGraph,
        hash: HashFunction,
        node: &Node,
    ) -> Result<Vec<Node>, BuildError> {
        let unknown = || BuildError::Graph(format!("{} is not in the graph", node.describe()));
        let artifacts: Vec<&ArtifactDescription> = match node {
            Node::Action(id) => graph
                .actions
                .get(id)
                .ok_or_else(unknown)?
                .inputs
                .values()
                .collect(),
            Node::Tree(id) => graph
                .trees
                .get(id)
                .ok_or_else(unknown)?
                .inputs
                .values()
                .collect(),
            Node::Overlay(id) => graph
                .tree_overlays
                .get(id)
                .ok_or_else(unknown)?
                .trees
                .iter()
                .collect(),
        };
        Ok(artifacts
            .into_iter()
            .filter_map(|a| self.artifact(hash, a))
            .collect())
    }
}

/// Walks the graph from `wanted` (depth first, without recursion, so deep
/// graphs do not exhaust the stack).
pub fn plan(
    graph: &ActionGraph,
    hash: HashFunction,
    wanted: &[ArtifactDescription],
) -> Result<Plan, BuildError> {
    let mut plan = Plan::default();
    let mut marks: HashMap<Node, Mark> = HashMap::new();
    let roots: Vec<Node> = wanted
        .iter()
        .filter_map(|a| plan.artifact(hash, a))
        .collect();
    for root in roots {
        if marks.contains_key(&root) {
            continue;
        }
        let children = plan.children(graph, hash, &root)?;
        marks.insert(root.clone(), Mark::Open);
        let mut stack = vec![(root, children, 0usize)];
        while let Some((node, children, next)) = stack.last_mut() {
            let Some(child) = children.get(*next).cloned() else {
                marks.insert(node.clone(), Mark::Closed);
                if let Node::Action(id) = node {
                    plan.actions.insert(id.clone());
                }
                stack.pop();
                continue;
            };
            *next += 1;
            match marks.get(&child) {
                Some(Mark::Closed) => {}
                Some(Mark::Open) => {
                    return Err(BuildError::Graph(format!(
                        "{} depends on itself",
                        child.describe()
                    )))
                }
                None => {
                    let grandchildren = plan.children(graph, hash, &child)?;
                    marks.insert(child.clone(), Mark::Open);
                    stack.push((child, grandchildren, 0));
                }
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::graph::{ActionNode, ActionSpec};
    use std::sync::Arc;

    fn action(id: &str, inputs: &[(&str, ArtifactDescription)]) -> Arc<ActionNode> {
        Arc::new(ActionNode {
            id: id.into(),
            spec: ActionSpec {
                outputs: vec!["out".into()],
                output_dirs: vec![],
                command: vec!["true".into()],
                cwd: String::new(),
                env: Default::default(),
                may_fail: None,
                no_cache: false,
                timeout_scale: 1.0,
                execution_properties: Default::default(),
                inputs: inputs
                    .iter()
                    .map(|(p, a)| (p.to_string(), a.clone()))
                    .collect(),
            },
        })
    }

    #[test]
    fn collects_reachable_actions_and_leaves() {
        let hash = HashFunction::GitSha1;
        let blob = hash.empty_blob();
        let mut g = ActionGraph::default();
        g.actions.insert(
            "a".into(),
            action("a", &[("x", ArtifactDescription::local("x.c", "main"))]),
        );
        g.actions.insert(
            "b".into(),
            action(
                "b",
                &[
                    ("in", ArtifactDescription::action("a", "out")),
                    (
                        "k",
                        ArtifactDescription::known(&blob.hash, 0, ObjectKind::File),
                    ),
                ],
            ),
        );
        g.actions.insert("unused".into(), action("unused", &[]));
        let p = plan(&g, hash, &[ArtifactDescription::action("b", "out")]).unwrap();
        assert_eq!(p.actions.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(p.locals.contains(&("main".to_string(), "x.c".to_string())));
        assert_eq!(p.knowns[&blob.hash].digest, blob);

        let err = plan(&g, hash, &[ArtifactDescription::tree("nope")]).unwrap_err();
        assert!(err.to_string().contains("tree nope"), "{err}");
    }

    #[test]
    fn cycles_are_errors() {
        let mut g = ActionGraph::default();
        g.actions.insert(
            "a".into(),
            action("a", &[("x", ArtifactDescription::action("b", "out"))]),
        );
        g.actions.insert(
            "b".into(),
            action("b", &[("x", ArtifactDescription::action("a", "out"))]),
        );
        let err = plan(
            &g,
            HashFunction::GitSha1,
            &[ArtifactDescription::action("a", "out")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("depends on itself"), "{err}");
    }
}
