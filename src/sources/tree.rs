//! ServeTree: a known tree, and everything below it, put into the
//! endpoint's CAS.

use super::answers::{Outcome, TreeAnswer};
use super::Sources;
use crate::digest::ObjectKind;

impl Sources {
    /// ServeTree: puts a known tree (and its content) into the endpoint's CAS.
    pub async fn tree(&self, tree: &str) -> TreeAnswer {
        match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(repo)) => {
                let mut answer = self
                    .answer(
                        tree.to_string(),
                        ObjectKind::Tree,
                        self.repos.paths()[repo].clone(),
                        true,
                    )
                    .await;
                answer.tree = None;
                answer
            }
            Ok(None) => TreeAnswer::outcome(Outcome::NotFound),
            Err(e) => TreeAnswer::internal(e),
        }
    }
}
