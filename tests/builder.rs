//! The builder: action graphs executed through jserve's own endpoint, in
//! both hash modes, in-process and over gRPC; and the action digests it
//! produces checked against the reference client's (`just build -r` after
//! our build executes nothing).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use jserve::build::action::ExecutionSettings;
use jserve::build::artifact::ArtifactDescription;
use jserve::build::builder::{
    BuildContext, BuildError, BuildOutcome, Builder, LocalError, LocalFile, LocalObjects,
    NoLocalObjects,
};
use jserve::build::graph::ActionGraph;
use jserve::digest::{Digest, HashFunction, ObjectKind};
use jserve::execute::runner::RunnerConfig;
use jserve::execute::{EndpointConfig, LocalEndpoint};
use jserve::remote::executor::{GrpcExecutor, GrpcExecutorConfig, LocalExecutor};
use jserve::remote::grpc::{GrpcCas, GrpcCasConfig};
use jserve::remote::local::LocalRemote;
use jserve::remote::RemoteCas;
use jserve::storage::trees::{read_tree, Node};
use jserve::storage::BuildRoot;
use serde_json::{json, Value};

const MODES: [HashFunction; 2] = [HashFunction::GitSha1, HashFunction::Sha256];
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// jserve's endpoint in-process, with the builder's parts around it.
struct Fixture {
    _dir: tempfile::TempDir,
    hash: HashFunction,
    endpoint: Arc<LocalEndpoint>,
}

impl Fixture {
    fn new(hash: HashFunction) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let build_root = BuildRoot::open(&dir.path().join("root")).unwrap();
        let endpoint = LocalEndpoint::new(
            &build_root,
            EndpointConfig {
                hash,
                instance_name: None,
                runner: RunnerConfig {
                    launcher: vec!["env".into(), "--".into()],
                    default_timeout: std::time::Duration::from_secs(60),
                    jobs: 4,
                },
            },
        );
        Fixture {
            _dir: dir,
            hash,
            endpoint,
        }
    }

    fn context(&self, local: Arc<dyn LocalObjects>) -> BuildContext {
        BuildContext {
            settings: ExecutionSettings::new(self.hash),
            cas: Arc::new(LocalRemote::new(self.endpoint.clone())),
            executor: Arc::new(LocalExecutor::new(self.endpoint.clone())),
            local,
            jobs: 3,
            dispatch: Vec::new(),
            progress_every: jserve::config::DEFAULT_PROGRESS_INTERVAL,
        }
    }

    async fn build(
        &self,
        graph: &Value,
        wanted: &[ArtifactDescription],
    ) -> Result<BuildOutcome, BuildError> {
        self.build_with(graph, wanted, Arc::new(NoLocalObjects))
            .await
    }

    async fn build_with(
        &self,
        graph: &Value,
        wanted: &[ArtifactDescription],
        local: Arc<dyn LocalObjects>,
    ) -> Result<BuildOutcome, BuildError> {
        let graph = ActionGraph::from_json(graph, self.hash).unwrap();
        Builder::new(Arc::new(graph), self.context(local))
            .build(wanted)
            .await
    }

    /// The content of a blob artifact.
    fn read(&self, artifact: &ArtifactDescription) -> Vec<u8> {
        let (digest, _) = digest_of(self.hash, artifact);
        self.endpoint
            .read(&digest)
            .unwrap()
            .expect("artifact in the CAS")
    }

    /// Every file below a tree artifact: path → (kind letter, content).
    fn listing(&self, artifact: &ArtifactDescription) -> BTreeMap<String, (char, String)> {
        let (digest, kind) = digest_of(self.hash, artifact);
        assert_eq!(kind, ObjectKind::Tree);
        let mut out = BTreeMap::new();
        self.walk(&digest, "", &mut out);
        out
    }

    fn walk(&self, digest: &Digest, prefix: &str, out: &mut BTreeMap<String, (char, String)>) {
        let nodes = read_tree(&self.endpoint.cas, digest)
            .unwrap()
            .expect("tree in the CAS");
        for node in nodes {
            let name = format!("{prefix}{}", String::from_utf8_lossy(node.name()));
            match node {
                Node::File {
                    digest, executable, ..
                } => {
                    let data = self
                        .endpoint
                        .read(&digest)
                        .unwrap()
                        .expect("file in the CAS");
                    let kind = if executable { 'x' } else { 'f' };
                    out.insert(name, (kind, String::from_utf8_lossy(&data).into_owned()));
                }
                Node::Symlink { target, .. } => {
                    out.insert(name, ('l', String::from_utf8_lossy(&target).into_owned()));
                }
                Node::Dir { digest, .. } => {
                    let digest = Digest {
                        is_tree: self.hash.is_native(),
                        ..digest
                    };
                    self.walk(&digest, &format!("{name}/"), out);
                }
            }
        }
    }
}

fn digest_of(hash: HashFunction, artifact: &ArtifactDescription) -> (Digest, ObjectKind) {
    match artifact {
        ArtifactDescription::Known {
            id,
            size,
            file_type,
            ..
        } => (
            Digest {
                hash: id.clone(),
                size: *size,
                is_tree: file_type.is_tree() && hash.is_native(),
            },
            *file_type,
        ),
        other => panic!("not a KNOWN artifact: {other}"),
    }
}

fn known_blob(hash: HashFunction, content: &str) -> Value {
    json!({"type": "KNOWN", "data": {
        "id": hash.hash_bytes(ObjectKind::File, content.as_bytes()),
        "size": content.len(), "file_type": "f"}})
}

fn action_artifact(id: &str, path: &str) -> Value {
    json!({"type": "ACTION", "data": {"id": id, "path": path}})
}

fn tree_artifact(id: &str) -> Value {
    json!({"type": "TREE", "data": {"id": id}})
}

fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

fn out(id: &str, path: &str) -> ArtifactDescription {
    ArtifactDescription::action(id, path)
}

/// A chain and a diamond: a → (b, c) → d, with a blob of the graph as input.
fn diamond(hash: HashFunction) -> Value {
    json!({
        "blobs": ["seed\n"],
        "actions": {
            "a": {"command": sh("cat seed.txt > a.txt; echo hello >> a.txt"),
                  "env": {"PATH": PATH},
                  "input": {"seed.txt": known_blob(hash, "seed\n")},
                  "output": ["a.txt"]},
            "b": {"command": sh("tr a-z A-Z < a.txt > b.txt"), "env": {"PATH": PATH},
                  "input": {"a.txt": action_artifact("a", "a.txt")}, "output": ["b.txt"]},
            "c": {"command": sh("sed s/hello/world/ < in/a.txt > c.txt"), "env": {"PATH": PATH},
                  "input": {"in/a.txt": action_artifact("a", "a.txt")}, "output": ["c.txt"]},
            "d": {"command": sh("cat b.txt c.txt > d.txt"), "env": {"PATH": PATH},
                  "input": {"b.txt": action_artifact("b", "b.txt"),
                            "c.txt": action_artifact("c", "c.txt")},
                  "output": ["d.txt"]},
        },
    })
}

#[tokio::test]
async fn chain_and_diamond_run_once_and_then_come_from_the_cache() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = diamond(hash);
        let wanted = [out("d", "d.txt"), out("b", "b.txt")];
        let first = fx.build(&graph, &wanted).await.unwrap();
        assert_eq!(
            String::from_utf8(fx.read(&first.artifacts[0].artifact)).unwrap(),
            "SEED\nHELLO\nseed\nworld\n",
            "{hash:?}"
        );
        assert_eq!(fx.read(&first.artifacts[1].artifact), b"SEED\nHELLO\n");
        assert_eq!(
            (
                first.stats.actions,
                first.stats.executed,
                first.stats.cached
            ),
            (4, 4, 0)
        );
        assert!(!first.artifacts[0].failed);

        let again = fx.build(&graph, &wanted).await.unwrap();
        assert_eq!(again.artifacts, first.artifacts);
        assert_eq!(
            (again.stats.executed, again.stats.cached),
            (0, 4),
            "{hash:?}"
        );
    }
}

#[tokio::test]
async fn output_directories_symlinks_and_outputs_above_the_cwd() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = json!({
            "trees": {"empty": {}},
            "actions": {
                "gen": {"command": sh("echo up > ../up.txt && mkdir -p dir/sub && echo deep > dir/sub/f \
                                       && ln -s sub/f dir/link && ln -s up.txt ../link.txt && cp ../up.txt dir/x \
                                       && chmod +x dir/x"),
                        "env": {"PATH": PATH}, "cwd": "work",
                        "input": {"work": tree_artifact("empty")},
                        "output": ["up.txt", "link.txt"], "output_dirs": ["work/dir"]},
            },
        });
        let wanted = [
            out("gen", "up.txt"),
            out("gen", "link.txt"),
            out("gen", "work/dir"),
        ];
        let built = fx.build(&graph, &wanted).await.unwrap();
        assert_eq!(fx.read(&built.artifacts[0].artifact), b"up\n", "{hash:?}");
        let link = &built.artifacts[1].artifact;
        assert_eq!(digest_of(hash, link).1, ObjectKind::Symlink);
        assert_eq!(fx.read(link), b"up.txt");
        let listing = fx.listing(&built.artifacts[2].artifact);
        let expect: BTreeMap<String, (char, String)> = [
            ("link", ('l', "sub/f")),
            ("sub/f", ('f', "deep\n")),
            ("x", ('x', "up\n")),
        ]
        .into_iter()
        .map(|(p, (k, c))| (p.to_string(), (k, c.to_string())))
        .collect();
        assert_eq!(listing, expect, "{hash:?}");
    }
}

#[tokio::test]
async fn tree_artifacts_as_inputs_and_requested() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = json!({
            "blobs": ["x\n", "y"],
            "trees": {"t": {"x/y.txt": known_blob(hash, "x\n"),
                            "gen.txt": action_artifact("gen", "gen.txt"),
                            "link": {"type": "KNOWN", "data": {
                                "id": hash.hash_bytes(ObjectKind::File, b"y"), "size": 1, "file_type": "l"}}},
                      "whole": {".": tree_artifact("t")}},
            "actions": {
                "gen": {"command": sh("echo generated > gen.txt"), "env": {"PATH": PATH},
                        "output": ["gen.txt"]},
                "list": {"command": sh("cd stage && find . | sort > ../list.txt && cat x/y.txt gen.txt >> ../list.txt \
                                        && readlink link >> ../list.txt"),
                         "env": {"PATH": PATH},
                         "input": {"stage": tree_artifact("t")}, "output": ["list.txt"]},
                "root": {"command": sh("cat gen.txt > copy.txt"), "env": {"PATH": PATH},
                         "input": {".": tree_artifact("t")}, "output": ["copy.txt"]},
            },
        });
        let wanted = [
            out("list", "list.txt"),
            ArtifactDescription::tree("t"),
            out("root", "copy.txt"),
            ArtifactDescription::tree("whole"),
        ];
        let built = fx.build(&graph, &wanted).await.unwrap();
        assert_eq!(
            String::from_utf8(fx.read(&built.artifacts[0].artifact)).unwrap(),
            ".\n./gen.txt\n./link\n./x\n./x/y.txt\nx\ngenerated\ny\n",
            "{hash:?}"
        );
        let listing = fx.listing(&built.artifacts[1].artifact);
        assert_eq!(listing.len(), 3);
        assert_eq!(listing["link"], ('l', "y".to_string()));
        assert_eq!(fx.read(&built.artifacts[2].artifact), b"generated\n");
        // A tree that is a single tree at "." is that tree.
        assert_eq!(built.artifacts[3].artifact, built.artifacts[1].artifact);
    }
}

fn overlay_graph(hash: HashFunction) -> Value {
    json!({
        "blobs": ["1", "2", "3", "4"],
        "trees": {
            "t1": {"a/x": known_blob(hash, "1"), "same": known_blob(hash, "3"), "b/keep": known_blob(hash, "1")},
            "t2": {"a/y": known_blob(hash, "2"), "same": known_blob(hash, "4"), "b/keep": known_blob(hash, "1")},
            "t3": {"a/z": action_artifact("gen", "z")},
        },
        "tree_overlays": {
            "over": {"trees": [tree_artifact("t1"), tree_artifact("t2")], "disjoint": false},
            "disjoint_bad": {"trees": [tree_artifact("t1"), tree_artifact("t2")], "disjoint": true},
            "disjoint_ok": {"trees": [tree_artifact("t1"), tree_artifact("t3")], "disjoint": true},
        },
        "actions": {
            "gen": {"command": sh("echo z > z"), "env": {"PATH": PATH}, "output": ["z"]},
            "use": {"command": sh("cat o/a/x o/a/y o/same > use.txt"), "env": {"PATH": PATH},
                    "input": {"o": {"type": "TREE_OVERLAY", "data": {"id": "over"}}},
                    "output": ["use.txt"]},
        },
    })
}

#[tokio::test]
async fn tree_overlays_latest_wins_and_disjoint_conflicts() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = overlay_graph(hash);
        let wanted = [
            ArtifactDescription::tree_overlay("over"),
            out("use", "use.txt"),
            ArtifactDescription::tree_overlay("disjoint_ok"),
        ];
        let built = fx.build(&graph, &wanted).await.unwrap();
        let listing = fx.listing(&built.artifacts[0].artifact);
        let names: Vec<(&str, &str)> = listing
            .iter()
            .map(|(p, (_, c))| (p.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            names,
            [("a/x", "1"), ("a/y", "2"), ("b/keep", "1"), ("same", "4")],
            "{hash:?}"
        );
        assert_eq!(fx.read(&built.artifacts[1].artifact), b"124");
        let names: Vec<String> = fx
            .listing(&built.artifacts[2].artifact)
            .into_keys()
            .collect();
        assert_eq!(names, ["a/x", "a/z", "b/keep", "same"]);

        let err = fx
            .build(&graph, &[ArtifactDescription::tree_overlay("disjoint_bad")])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("conflict at \"same\"") && text.contains("disjoint_bad"),
            "{hash:?}: {text}"
        );
    }
}

#[tokio::test]
async fn may_fail_is_reported_and_failures_are_errors() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = json!({
            "actions": {
                "soft": {"command": sh("echo partial > r.txt; exit 3"), "env": {"PATH": PATH},
                         "output": ["r.txt"], "may_fail": "tests failed"},
                "after": {"command": sh("cat r.txt > s.txt"), "env": {"PATH": PATH},
                          "input": {"r.txt": action_artifact("soft", "r.txt")}, "output": ["s.txt"]},
                "hard": {"command": sh("echo to-stdout; echo to-stderr >&2; exit 7"), "env": {"PATH": PATH},
                         "output": ["never.txt"]},
                "lazy": {"command": sh("true"), "env": {"PATH": PATH}, "output": ["missing.txt"]},
                "softmissing": {"command": sh("exit 1"), "env": {"PATH": PATH},
                                "output": ["missing.txt"], "may_fail": "it broke"},
                "upwards": {"command": sh("ln -s ../../etc/passwd l"), "env": {"PATH": PATH},
                            "output": ["l"]},
            },
        });
        let built = fx
            .build(&graph, &[out("after", "s.txt"), out("soft", "r.txt")])
            .await
            .unwrap();
        assert!(built.artifacts.iter().all(|a| a.failed), "{hash:?}");
        assert_eq!(fx.read(&built.artifacts[0].artifact), b"partial\n");
        assert_eq!((built.stats.executed, built.stats.failed), (2, 1));

        let err = fx
            .build(&graph, &[out("hard", "never.txt")])
            .await
            .unwrap_err();
        let text = err.to_string();
        for part in ["exit code 7", "to-stdout", "to-stderr", "echo to-stdout"] {
            assert!(text.contains(part), "{hash:?}: {part:?} missing in {text}");
        }
        let err = fx
            .build(&graph, &[out("lazy", "missing.txt")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing.txt"), "{err}");
        let err = fx
            .build(&graph, &[out("softmissing", "missing.txt")])
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("it broke (exit code 1)"),
            "{err}"
        );
        let err = fx.build(&graph, &[out("upwards", "l")]).await.unwrap_err();
        assert!(err.to_string().contains("upwards"), "{err}");
    }
}

#[tokio::test]
async fn no_cache_actions_run_every_time() {
    for hash in MODES {
        let fx = Fixture::new(hash);
        let graph = json!({
            "actions": {
                "fresh": {"command": sh("cat /proc/sys/kernel/random/uuid > id"), "env": {"PATH": PATH},
                          "output": ["id"], "no_cache": true},
                "kept": {"command": sh("cat /proc/sys/kernel/random/uuid > id"), "env": {"PATH": PATH},
                         "output": ["id"]},
            },
        });
        let wanted = [out("fresh", "id"), out("kept", "id")];
        let first = fx.build(&graph, &wanted).await.unwrap();
        let second = fx.build(&graph, &wanted).await.unwrap();
        assert_eq!(
            (second.stats.executed, second.stats.cached),
            (1, 1),
            "{hash:?}"
        );
        assert_ne!(first.artifacts[0], second.artifacts[0]);
        assert_eq!(first.artifacts[1], second.artifacts[1]);
    }
}

/// LOCAL files and KNOWN objects only serve has.
struct Source {
    files: BTreeMap<(String, String), LocalFile>,
    objects: BTreeMap<String, Vec<u8>>,
}

#[tonic::async_trait]
impl LocalObjects for Source {
    async fn read_local(
        &self,
        repository: &str,
        path: &str,
    ) -> Result<Option<LocalFile>, LocalError> {
        Ok(self
            .files
            .get(&(repository.to_string(), path.to_string()))
            .cloned())
    }
    async fn read_known(
        &self,
        digest: &Digest,
        _kind: ObjectKind,
        _repository: Option<&str>,
    ) -> Result<Option<Vec<u8>>, LocalError> {
        Ok(self.objects.get(&digest.hash).cloned())
    }
}

#[tokio::test]
async fn local_files_and_known_objects_from_serve() {
    use jserve::digest::{serialize_git_tree, GitTreeEntry};
    for hash in MODES {
        let fx = Fixture::new(hash);
        // A tree only serve has: {inner/deep: "deep\n"}.
        let deep = b"deep\n".to_vec();
        let deep_id = hash.hash_bytes(ObjectKind::File, &deep);
        let (inner, root) = match hash {
            HashFunction::GitSha1 => {
                let entry = |name: &str, kind, id: &str| GitTreeEntry {
                    name: name.as_bytes().to_vec(),
                    kind,
                    id: hex::decode(id).unwrap().try_into().unwrap(),
                };
                let inner =
                    serialize_git_tree(vec![entry("deep", ObjectKind::File, &deep_id)]).unwrap();
                let inner_id = hash.hash_bytes(ObjectKind::Tree, &inner);
                let root =
                    serialize_git_tree(vec![entry("inner", ObjectKind::Tree, &inner_id)]).unwrap();
                (inner, root)
            }
            HashFunction::Sha256 => {
                use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
                use prost::Message;
                let inner = reapi::Directory {
                    files: vec![reapi::FileNode {
                        name: "deep".into(),
                        digest: Some(hash.digest_bytes(ObjectKind::File, &deep).to_wire(hash)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
                .encode_to_vec();
                let root = reapi::Directory {
                    directories: vec![reapi::DirectoryNode {
                        name: "inner".into(),
                        digest: Some(hash.digest_bytes(ObjectKind::Tree, &inner).to_wire(hash)),
                    }],
                    ..Default::default()
                }
                .encode_to_vec();
                (inner, root)
            }
        };
        let root_id = hash.hash_bytes(ObjectKind::Tree, &root);
        let source = Source {
            files: [
                (
                    ("main".to_string(), "src/run.sh".to_string()),
                    LocalFile {
                        content: b"cat known/inner/deep\necho local\n".to_vec(),
                        kind: ObjectKind::Executable,
                    },
                ),
                (
                    ("main".to_string(), "src/link".to_string()),
                    LocalFile {
                        content: b"run.sh".to_vec(),
                        kind: ObjectKind::Symlink,
                    },
                ),
            ]
            .into_iter()
            .collect(),
            objects: [
                (deep_id, deep),
                (hash.hash_bytes(ObjectKind::Tree, &inner), inner),
                (root_id.clone(), root.clone()),
            ]
            .into_iter()
            .collect(),
        };
        let graph = json!({
            "actions": {
                "run": {"command": ["sh", "-c", "test -x run.sh && readlink link && ./link > out.txt"],
                        "env": {"PATH": PATH},
                        "input": {
                            "run.sh": {"type": "LOCAL", "data": {"repository": "main", "path": "src/run.sh"}},
                            "link": {"type": "LOCAL", "data": {"repository": "main", "path": "src/link"}},
                            "known": {"type": "KNOWN", "data": {"id": root_id, "size": root.len(), "file_type": "t"}},
                        },
                        "output": ["out.txt"]},
            },
        });
        let built = fx
            .build_with(&graph, &[out("run", "out.txt")], Arc::new(source))
            .await
            .unwrap();
        assert_eq!(
            fx.read(&built.artifacts[0].artifact),
            b"deep\nlocal\n",
            "{hash:?}"
        );

        // Without the source the KNOWN tree is missing.
        let fx = Fixture::new(hash);
        let err = fx
            .build(&graph, &[out("run", "out.txt")])
            .await
            .unwrap_err();
        assert!(matches!(err, BuildError::Local { .. }), "{err}");
    }
}

#[tokio::test]
async fn over_grpc_against_a_running_endpoint() {
    for hash in MODES {
        let ep = common::reapi::start_execute(hash, 2).await;
        let address =
            jserve::config::Address::parse(&format!("127.0.0.1:{}", ep.server.addr.port()))
                .unwrap();
        let cas = GrpcCas::connect(GrpcCasConfig::new(address.clone(), "", hash))
            .await
            .unwrap();
        // The executor shares the CAS client's connection.
        let executor = GrpcExecutor::new(
            cas.channel(),
            GrpcExecutorConfig {
                address: address.to_string(),
                instance_name: String::new(),
                hash,
                retry: Default::default(),
            },
        );
        let cas: Arc<dyn RemoteCas> = Arc::new(cas);
        let ctx = BuildContext {
            settings: ExecutionSettings::new(hash),
            cas: cas.clone(),
            executor: Arc::new(executor),
            local: Arc::new(NoLocalObjects),
            jobs: 2,
            dispatch: Vec::new(),
            progress_every: jserve::config::DEFAULT_PROGRESS_INTERVAL,
        };
        let graph = Arc::new(ActionGraph::from_json(&diamond(hash), hash).unwrap());
        let built = Builder::new(graph.clone(), ctx.clone())
            .build(&[out("d", "d.txt")])
            .await
            .unwrap();
        let (digest, _) = digest_of(hash, &built.artifacts[0].artifact);
        assert_eq!(
            cas.read_blob(&digest).await.unwrap().unwrap(),
            b"SEED\nHELLO\nseed\nworld\n"
        );
        assert_eq!(built.stats.executed, 4, "{hash:?}");
        let again = Builder::new(graph, ctx)
            .build(&[out("d", "d.txt")])
            .await
            .unwrap();
        assert_eq!(again.stats.cached, 4, "{hash:?}");
    }
}

/// LOCAL files of a workspace directory (repository "").
struct Workspace(std::path::PathBuf);

#[tonic::async_trait]
impl LocalObjects for Workspace {
    async fn read_local(
        &self,
        repository: &str,
        path: &str,
    ) -> Result<Option<LocalFile>, LocalError> {
        assert_eq!(repository, "");
        Ok(std::fs::read(self.0.join(path))
            .ok()
            .map(|content| LocalFile {
                content,
                kind: ObjectKind::File,
            }))
    }
    async fn read_known(
        &self,
        _: &Digest,
        _: ObjectKind,
        _: Option<&str>,
    ) -> Result<Option<Vec<u8>>, LocalError> {
        Ok(None)
    }
}

const REFERENCE_TARGETS: &str = r#"{
 "name": {"type": "file_gen", "name": "name.txt", "data": "world\n"},
 "hello": {"type": "generic", "cmds": ["cat greeting.txt name.txt > hello.txt"],
           "outs": ["hello.txt"], "deps": ["greeting.txt", "name"]},
 "upper": {"type": "generic",
           "cmds": ["tr a-z A-Z < hello.txt > upper.txt",
                    "mkdir -p d/e && cp upper.txt d/e/u && ln -s e/u d/l"],
           "outs": ["upper.txt"], "out_dirs": ["d"], "deps": ["hello"]},
 "staged": {"type": "tree", "name": "t", "deps": ["hello", "greeting.txt"]},
 "listing": {"type": "generic", "cmds": ["find t | sort > listing.txt"],
             "outs": ["listing.txt"], "deps": ["staged"]},
 "all": {"type": "install", "dirs": [["upper", "."], ["listing", "."], ["staged", "."]]}
}"#;

fn run_just(just: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(just)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("just runs");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "just {args:?} failed:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_digests_equal_the_reference_clients() {
    let Some(just) = common::reference::reference_just() else {
        return;
    };
    for hash in MODES {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("ROOT"), "").unwrap();
        std::fs::write(ws.join("greeting.txt"), "hello\n").unwrap();
        std::fs::write(ws.join("TARGETS"), REFERENCE_TARGETS).unwrap();
        let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
        let mut common_args = vec!["--local-build-root".to_string(), path("lbr")];
        if !hash.is_native() {
            common_args.push("--compatible".into());
        }
        let (graph_file, wanted_file) = (path("graph.json"), path("wanted.json"));
        let mut analyse = vec!["analyse".to_string()];
        analyse.extend(common_args.iter().cloned());
        analyse.extend(
            [
                "--dump-plain-graph",
                &graph_file,
                "--dump-artifacts-to-build",
                &wanted_file,
                "all",
            ]
            .map(String::from),
        );
        let (j, w) = (just.clone(), ws.clone());
        tokio::task::spawn_blocking(move || {
            run_just(
                &j,
                &w,
                &analyse.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
        let read_json = |p: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let graph = ActionGraph::from_json(&read_json(&graph_file), hash).unwrap();
        let wanted_json = read_json(&wanted_file);
        let (paths, wanted): (Vec<String>, Vec<ArtifactDescription>) = wanted_json
            .as_object()
            .unwrap()
            .iter()
            .map(|(p, a)| (p.clone(), ArtifactDescription::from_json(a, hash).unwrap()))
            .unzip();

        let ep = common::reapi::start_execute(hash, 2).await;
        let address = format!("127.0.0.1:{}", ep.server.addr.port());
        let cas = GrpcCas::connect(GrpcCasConfig::new(
            jserve::config::Address::parse(&address).unwrap(),
            "",
            hash,
        ))
        .await
        .unwrap();
        let ctx = BuildContext {
            settings: ExecutionSettings::new(hash),
            cas: Arc::new(cas),
            executor: Arc::new(GrpcExecutor::new(
                ep.channel.clone(),
                GrpcExecutorConfig {
                    address: address.clone(),
                    instance_name: String::new(),
                    hash,
                    retry: Default::default(),
                },
            )),
            local: Arc::new(Workspace(ws.clone())),
            jobs: 2,
            dispatch: Vec::new(),
            progress_every: jserve::config::DEFAULT_PROGRESS_INTERVAL,
        };
        let built = Builder::new(Arc::new(graph), ctx)
            .build(&wanted)
            .await
            .unwrap();
        assert_eq!(built.stats.executed, 3, "{hash:?}");

        let dumped = path("artifacts.json");
        let mut build = vec!["build".to_string()];
        build.extend(common_args.iter().cloned());
        build.extend(["-r", &address, "--dump-artifacts", &dumped, "all"].map(String::from));
        let (j, w) = (just.clone(), ws.clone());
        let log = tokio::task::spawn_blocking(move || {
            run_just(
                &j,
                &w,
                &build.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
        assert!(
            log.contains("Processed 3 actions, 3 cache hits."),
            "{hash:?}: the reference client executed actions:\n{log}"
        );
        let theirs = read_json(&dumped);
        for (path, ours) in paths.iter().zip(&built.artifacts) {
            let ArtifactDescription::Known {
                id,
                size,
                file_type,
                ..
            } = &ours.artifact
            else {
                panic!("not known")
            };
            assert_eq!(
                theirs[path],
                json!({"file_type": file_type.type_char().to_string(), "id": id, "size": size}),
                "{hash:?}: {path}"
            );
        }
    }
}

/// An Execution service whose Execute streams break after the first state;
/// the run can be followed again with WaitExecution.
#[derive(Default)]
struct FlakyExecution {
    executes: std::sync::atomic::AtomicUsize,
    waits: std::sync::atomic::AtomicUsize,
}

type OpStream = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<
                Item = Result<bazel_remote_apis::google::longrunning::Operation, tonic::Status>,
            > + Send,
    >,
>;

fn finished_operation(exit_code: i32) -> bazel_remote_apis::google::longrunning::Operation {
    use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
    use bazel_remote_apis::google::longrunning::{operation, Operation};
    use prost::Message;
    let response = reapi::ExecuteResponse {
        result: Some(reapi::ActionResult {
            exit_code,
            ..Default::default()
        }),
        ..Default::default()
    };
    Operation {
        name: "op-1".into(),
        done: true,
        result: Some(operation::Result::Response(
            bazel_remote_apis::google::protobuf::Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                    .into(),
                value: response.encode_to_vec(),
            },
        )),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl bazel_remote_apis::build::bazel::remote::execution::v2::execution_server::Execution
    for FlakyExecution
{
    type ExecuteStream = OpStream;
    type WaitExecutionStream = OpStream;

    async fn execute(
        &self,
        _: tonic::Request<bazel_remote_apis::build::bazel::remote::execution::v2::ExecuteRequest>,
    ) -> Result<tonic::Response<OpStream>, tonic::Status> {
        use std::sync::atomic::Ordering;
        if self.executes.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first attempt finds the endpoint busy.
            return Err(tonic::Status::unavailable("no free worker"));
        }
        let running = bazel_remote_apis::google::longrunning::Operation {
            name: "op-1".into(),
            ..Default::default()
        };
        let items = vec![
            Ok(running),
            Err(tonic::Status::unavailable("connection lost")),
        ];
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn wait_execution(
        &self,
        request: tonic::Request<
            bazel_remote_apis::build::bazel::remote::execution::v2::WaitExecutionRequest,
        >,
    ) -> Result<tonic::Response<OpStream>, tonic::Status> {
        self.waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(request.into_inner().name, "op-1");
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(vec![
            Ok(finished_operation(5)),
        ]))))
    }
}

#[tokio::test]
async fn grpc_executor_retries_and_follows_a_lost_stream() {
    use jserve::remote::executor::RemoteExecutor;
    use std::sync::atomic::Ordering;
    let service = Arc::new(FlakyExecution::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .add_service(
            bazel_remote_apis::build::bazel::remote::execution::v2::execution_server::ExecutionServer::from_arc(
                service.clone(),
            ),
        )
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let hash = HashFunction::Sha256;
    let config = |max_attempts| GrpcExecutorConfig {
        address: format!("127.0.0.1:{port}"),
        instance_name: String::new(),
        hash,
        retry: jserve::config::RetryConfig {
            max_attempts,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(5),
        },
    };
    let action = hash.digest_bytes(ObjectKind::File, b"action");

    // One attempt only: the busy endpoint is an error.
    let once = GrpcExecutor::new(channel.clone(), config(1));
    let err = once.execute(&action, false).await.unwrap_err();
    assert!(err.to_string().contains("no free worker"), "{err}");

    // With attempts to spare: Execute again, then WaitExecution after the loss.
    service.executes.store(0, Ordering::SeqCst);
    let retrying = GrpcExecutor::new(channel, config(3));
    let executed = retrying.execute(&action, false).await.unwrap();
    assert_eq!(executed.result.exit_code, 5);
    assert_eq!(service.executes.load(Ordering::SeqCst), 2);
    assert_eq!(service.waits.load(Ordering::SeqCst), 1);
    server.abort();
}

/// An endpoint whose actions see `SPECIAL=yes` (set by its launcher).
fn special_endpoint(hash: HashFunction, dir: &std::path::Path) -> Arc<LocalEndpoint> {
    let build_root = BuildRoot::open(&dir.join("special")).unwrap();
    LocalEndpoint::new(
        &build_root,
        EndpointConfig {
            hash,
            instance_name: None,
            runner: RunnerConfig {
                launcher: vec!["env".into(), "SPECIAL=yes".into()],
                default_timeout: std::time::Duration::from_secs(60),
                jobs: 2,
            },
        },
    )
}

#[tokio::test]
async fn actions_matching_a_dispatch_entry_run_at_its_endpoint() {
    use jserve::build::builder::DispatchTarget;
    for hash in MODES {
        let fx = Fixture::new(hash);
        let special = special_endpoint(hash, fx._dir.path());
        // "where" runs at the special endpoint, with an input made at the main
        // one; "back" consumes its outputs (a file and a directory) at the main one.
        let graph = json!({
            "blobs": ["seed\n"],
            "actions": {
                "first": {"command": sh("echo ${SPECIAL:-no} > first.txt"), "env": {"PATH": PATH},
                          "output": ["first.txt"]},
                "where": {"command": sh("mkdir -p d; (cat first.txt in/seed.txt; echo ${SPECIAL:-no}) > out.txt; echo inside > d/f"),
                          "env": {"PATH": PATH},
                          "input": {"first.txt": action_artifact("first", "first.txt"),
                                    "in/seed.txt": known_blob(hash, "seed\n")},
                          "execution properties": {"server": "special"},
                          "output": ["out.txt"], "output_dirs": ["d"]},
                "back": {"command": sh("cat out.txt d/f > back.txt; echo ${SPECIAL:-no} >> back.txt"),
                         "env": {"PATH": PATH},
                         "input": {"out.txt": action_artifact("where", "out.txt"),
                                   "d": action_artifact("where", "d")},
                         "output": ["back.txt"]},
            },
        });
        let mut ctx = fx.context(Arc::new(NoLocalObjects));
        ctx.dispatch = vec![DispatchTarget {
            properties: [("server".to_string(), "special".to_string())].into(),
            address: "in-process".into(),
            cas: Arc::new(LocalRemote::new(special.clone())),
            executor: Arc::new(LocalExecutor::new(special.clone())),
        }];
        let graph = ActionGraph::from_json(&graph, hash).unwrap();
        let built = Builder::new(Arc::new(graph), ctx)
            .build(&[out("back", "back.txt")])
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(fx.read(&built.artifacts[0].artifact)).unwrap(),
            "no\nseed\nyes\ninside\nno\n",
            "{hash:?}"
        );
        assert_eq!(built.stats.executed, 3);
    }
}
