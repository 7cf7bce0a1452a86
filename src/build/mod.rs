//! justbuild's build language: values and expressions, names and files,
//! rules, analysis, and the keys of the target-level cache.

pub mod action;
pub mod analysis;
pub mod artifact;
pub mod builder;
pub mod cache_entry;
pub mod expr;
pub mod graph;
pub mod json;
pub mod keys;
pub mod names;
pub mod repo_config;
pub mod roots;
pub mod sources;
pub mod value;
