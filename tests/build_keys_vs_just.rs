//! Repository and target-cache keys against the reference `just` on
//! generated repository graphs (bindings with cycles, repositories that merge
//! and ones that must not): `just build` of an export target in a repository
//! whose roots are git trees writes the key and repository-key blobs into its
//! local CAS and names the target-cache entry by the key's hash. Skipped (with
//! a `SKIPPED:` line) when the reference is not installed, except under CI.

mod common;

use common::git::git;
use common::reference;

use jserve::build::keys::{bisimulation, export_target_key};
use jserve::build::names::NamedTarget;
use jserve::build::repo_config::RepositoryConfig;
use jserve::digest::HashFunction;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A git repository with an export target `t` and one file; its tree id.
fn make_repo(dir: &Path, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("TARGETS"),
        r#"{"t": {"type": "export", "target": "f.txt", "flexible_config": ["X"]}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("f.txt"), text).unwrap();
    git(dir, &["init", "-q", "."]);
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "t",
        ],
    );
    git(dir, &["rev-parse", "HEAD^{tree}"])
}

/// Small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Target-cache entries in a local build root: key hash → (key blob, repo-key blob).
fn entries(lbr: &Path, hash_dir: &str) -> BTreeMap<String, (String, String)> {
    let root = lbr.join("protocol-dependent/generation-0").join(hash_dir);
    let blob =
        |h: &str| std::fs::read_to_string(root.join("casf").join(&h[..2]).join(&h[2..])).unwrap();
    let mut out = BTreeMap::new();
    let Ok(shards) = std::fs::read_dir(root.join("tc")) else {
        return out;
    };
    for shard in shards {
        for prefix in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let prefix = prefix.unwrap();
            for rest in std::fs::read_dir(prefix.path()).unwrap() {
                let key = format!(
                    "{}{}",
                    prefix.file_name().to_string_lossy(),
                    rest.unwrap().file_name().to_string_lossy()
                );
                let key_blob = blob(&key);
                let parsed: Value = serde_json::from_str(&key_blob).unwrap();
                let repo_key_blob = blob(parsed["repo_key"].as_str().unwrap());
                out.insert(key, (key_blob, repo_key_blob));
            }
        }
    }
    out
}

#[test]
fn keys_of_generated_repository_graphs_match_just() {
    let Some(just) = reference::reference_just() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trees: Vec<(String, String)> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("content{i}"));
            let t = make_repo(&p, &format!("content {i}\n"));
            (t, p.to_string_lossy().into_owned())
        })
        .collect();
    let (mut compared, mut merged) = (0, 0);
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let n = 6;
        let mut repos = Map::new();
        for i in 0..n {
            let (tree, path) = &trees[rng.below(2) as usize];
            let mut desc = json!({"workspace_root": ["git tree", tree, path]});
            if rng.below(5) == 0 {
                desc["rule_root"] = json!(["git tree ignore-special", tree, path]);
            }
            let mut bindings = Map::new();
            for local in ["a", "b"] {
                if rng.below(3) != 0 {
                    bindings.insert(local.into(), json!(format!("r{}", rng.below(n))));
                }
            }
            desc["bindings"] = Value::Object(bindings);
            repos.insert(format!("r{i}"), desc);
        }
        let config_json = json!({"repositories": repos});
        let config = RepositoryConfig::from_json(&config_json, None).unwrap();
        let classes: std::collections::BTreeSet<String> =
            bisimulation(&config).into_values().collect();
        merged += n as usize - classes.len();
        let conf_path = dir.path().join(format!("repos{seed}.json"));
        std::fs::write(&conf_path, config_json.to_string()).unwrap();
        let compatible = seed % 2 == 0;
        let (hf, hash_dir) = if compatible {
            (HashFunction::Sha256, "compatible-sha256")
        } else {
            (HashFunction::GitSha1, "git-sha1")
        };
        let lbr = dir.path().join(format!("lbr{seed}"));
        let mut expected = BTreeMap::new();
        for i in 0..n {
            let repo = format!("r{i}");
            let mut cmd = Command::new(&just);
            cmd.arg("build");
            if compatible {
                cmd.arg("--compatible");
            }
            let out = cmd
                .arg("-C")
                .arg(&conf_path)
                .arg("--local-build-root")
                .arg(&lbr)
                .args([
                    "--main",
                    &repo,
                    "-D",
                    r#"{"X": 3, "Y": "ignored"}"#,
                    "",
                    "t",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (repo_key, key) = export_target_key(
                &config,
                &NamedTarget::new(&repo, "", "t"),
                &json!({"X": 3}),
                hf,
            )
            .unwrap();
            expected.insert(key.hash().to_string(), (key.json, repo_key.json));
        }
        let got = entries(&lbr, hash_dir);
        assert_eq!(got, expected, "seed {seed}, configuration {config_json}");
        compared += expected.len();
    }
    assert!(compared > 12);
    assert!(merged > 0, "some generated repositories merge");
}
