//! CheckRootTree: whether a tree is known locally, importing it from the
//! native CAS into the git cache if that is where it is.

use super::answers::Outcome;
use super::Sources;

impl Sources {
    /// CheckRootTree: is the tree known locally (importing it from the native CAS if need be)?
    pub async fn check_root_tree(&self, tree: &str) -> Outcome {
        match self
            .locate_tree(tree, format!("Content of tree {tree}"))
            .await
        {
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) => Outcome::NotFound,
            Err(e) => {
                tracing::error!("{e}");
                Outcome::Internal(e.to_string())
            }
        }
    }
}
