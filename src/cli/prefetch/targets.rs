//! `jserve prefetch --targets`: ServeTarget for export targets over the
//! roots just made available, with the keys `just` computes for them (every
//! root as the absent git tree prefetching found, the effective
//! configuration empty apart from the target's flexible variables).

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::roots::{description, Root};
use super::{Prefetcher, Row};
use crate::build::keys::export_target_key;
use crate::build::names::NamedTarget;
use crate::build::repo_config::RepositoryConfig;
use crate::proto::target_client::TargetClient;
use crate::proto::{ServeTargetRequest, ServeTargetVariablesRequest};

/// `NAME`, `["MODULE","NAME"]` or `["@","REPO","MODULE","NAME"]`:
/// (repository, module, name).
fn parse_target(spec: &str, main: &str) -> anyhow::Result<(String, String, String)> {
    let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(spec) else {
        return Ok((main.into(), String::new(), spec.into()));
    };
    let s: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
    Ok(match s.as_slice() {
        [module, name] if parts.len() == 2 => (main.into(), module.to_string(), name.to_string()),
        ["@", repo, module, name] if parts.len() == 4 => {
            (repo.to_string(), module.to_string(), name.to_string())
        }
        _ => bail!("target {spec}: expected NAME, [MODULE, NAME] or [\"@\", REPO, MODULE, NAME]"),
    })
}

/// The configuration `just` would get from `just-mr setup` with every root
/// absent: each repository's roots as the git trees found.
fn setup_config(config: &Value, rows: &[Row], roots: &[Root], main: &str) -> anyhow::Result<Value> {
    let repos = config
        .get("repositories")
        .and_then(Value::as_object)
        .context("no repositories")?;
    // The tree of each repository's own root (aliases share their target's).
    let tree_of = |name: &str| -> Option<Value> {
        let desc = description(repos, name)?;
        let root = roots.iter().zip(rows).find(|(r, row)| {
            description(repos, &r.name) == Some(desc) && row.tree.is_some() && row.ok()
        });
        let (root, row) = root?;
        if let super::roots::RootKind::Archive { special, .. } = &root.kind {
            if special == "ignore" {
                return None;
            }
        }
        Some(json!(["git tree", row.tree.clone()?]))
    };
    let mut out = Map::new();
    for (name, entry) in repos {
        let Some(workspace) = tree_of(name) else {
            continue;
        };
        let mut repo = Map::new();
        repo.insert("workspace_root".into(), workspace);
        for key in ["target_root", "rule_root", "expression_root"] {
            if let Some(other) = entry.get(key).and_then(Value::as_str) {
                let tree = tree_of(other).with_context(|| {
                    format!("{name}: the {key} {other:?} was not made available")
                })?;
                repo.insert(key.into(), tree);
            }
        }
        for key in [
            "target_file_name",
            "rule_file_name",
            "expression_file_name",
            "bindings",
        ] {
            if let Some(v) = entry.get(key) {
                repo.insert(key.into(), v.clone());
            }
        }
        out.insert(name.clone(), Value::Object(repo));
    }
    Ok(json!({"main": main, "repositories": out}))
}

pub async fn serve_target(
    p: &mut Prefetcher,
    config: &Value,
    roots: &[Root],
    rows: &[Row],
    main: &str,
    spec: &str,
) -> anyhow::Result<Row> {
    let (repo, module, name) = parse_target(spec, main)?;
    let setup = setup_config(config, rows, roots, main)?;
    let repo_config = RepositoryConfig::from_json(&setup, Some(main))
        .map_err(|e| anyhow::anyhow!("the repositories as set up: {e}"))?;
    let info = setup["repositories"]
        .get(&repo)
        .with_context(|| format!("repository {repo:?} was not made available"))?;
    let root_tree = info
        .get("target_root")
        .unwrap_or(&info["workspace_root"])
        .get(1)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let file_name = info
        .get("target_file_name")
        .and_then(Value::as_str)
        .unwrap_or("TARGETS");
    let target_file = match module.trim_matches('/') {
        "" | "." => file_name.to_string(),
        m => format!("{m}/{file_name}"),
    };
    let mut target_client = TargetClient::new(p.channel.clone());
    let variables = target_client
        .serve_target_variables(ServeTargetVariablesRequest {
            root_tree,
            target_file,
            target: name.clone(),
        })
        .await
        .with_context(|| format!("{spec}: ServeTargetVariables"))?
        .into_inner()
        .flexible_config;
    let effective: Map<String, Value> = variables.into_iter().map(|v| (v, Value::Null)).collect();
    let target = NamedTarget::new(&repo, &module, &name);
    let (repo_key, key) =
        export_target_key(&repo_config, &target, &Value::Object(effective), p.hash)
            .map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
    // Serve reads both from the endpoint, as it does for `just`.
    let (repo_digest, key_digest) = (repo_key.digest.clone(), key.digest.clone());
    // The dispatch list as `just` sends it, even when empty (the reference
    // serve requires the field).
    let dispatch = p.dispatch.clone();
    let dispatch_digest = p
        .hash
        .digest_bytes(crate::digest::ObjectKind::File, &dispatch);
    let blobs = vec![
        (repo_digest.clone(), repo_key.json.into_bytes()),
        (key_digest.clone(), key.json.into_bytes()),
        (dispatch_digest.clone(), dispatch),
    ];
    p.remote.upload_blobs(blobs).await?;
    let answer = target_client
        .serve_target(ServeTargetRequest {
            target_cache_key_id: Some(key_digest.to_wire(p.hash)),
            dispatch_info: Some(dispatch_digest.to_wire(p.hash)),
            execution_properties: p
                .properties
                .iter()
                .map(
                    |(name, value)| crate::proto::serve_target_request::Property {
                        name: name.clone(),
                        value: value.clone(),
                    },
                )
                .collect(),
            required_digests: vec![repo_digest.to_wire(p.hash)],
            ..Default::default()
        })
        .await;
    let row = |tree: Option<String>, status, note: String| Row {
        name: spec.to_string(),
        kind: "target".into(),
        tree,
        status,
        note,
    };
    Ok(match answer {
        Ok(r) => {
            let r = r.into_inner();
            match (r.target_value, r.log) {
                (Some(v), _) => row(Some(v.hash), "served", String::new()),
                (None, Some(log)) => {
                    let note = failure_log(p, &log).await;
                    row(None, "failed", note)
                }
                (None, None) => row(None, "error", "ServeTarget answered nothing".into()),
            }
        }
        Err(status) => row(
            None,
            "failed",
            format!("ServeTarget: {:?}: {}", status.code(), status.message()),
        ),
    })
}

/// What a failed build's log says (its start), read from the endpoint.
async fn failure_log(
    p: &Prefetcher,
    log: &bazel_remote_apis::build::bazel::remote::execution::v2::Digest,
) -> String {
    const SHOWN: usize = 2000;
    let read = match p.hash.digest_from_wire(log) {
        Ok(d) => p.remote.read_small(vec![d], 1 << 20).await.ok(),
        Err(_) => None,
    };
    match read.and_then(|blobs| blobs.into_iter().next()) {
        Some((_, bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            let cut: String = text.chars().take(SHOWN).collect();
            format!("build failed: {}", cut.trim_end())
        }
        None => format!("build failed; log {}", log.hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_as_just_names_them() {
        let t = |s| parse_target(s, "main").unwrap();
        assert_eq!(t("app"), ("main".into(), "".into(), "app".into()));
        assert_eq!(
            t(r#"["src","app"]"#),
            ("main".into(), "src".into(), "app".into())
        );
        assert_eq!(
            t(r#"["@","dep","","lib"]"#),
            ("dep".into(), "".into(), "lib".into())
        );
        assert!(parse_target(r#"["a"]"#, "main").is_err());
    }
}
