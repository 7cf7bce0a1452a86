//! ServeTarget over gRPC, driven the way a `just` client drives it: compute
//! the target-cache key of an export target in an absent root, upload the
//! key and the repository description, ask. jserve is its own endpoint, so
//! actions really run; a side-effect file counts how often each one ran.

mod common;

use std::path::PathBuf;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::git::git;
use common::reapi::Endpoint;
use common::{config_in, loc};
use jserve::context::ServeContext;
use jserve::digest::HashFunction;
use jserve::proto::target_client::TargetClient;
use jserve::proto::{ServeTargetRequest, ServeTargetResponse};
use serde_json::{json, Value};
use std::sync::Arc;
use tonic::Code;

/// The targets of the served repository; COUNTS is replaced by a directory
/// the actions append to, one line per run.
const TARGETS: &str = r#"{
  "inner": {"type": "export", "target": "inner-gen"},
  "inner-gen": {"type": "generic", "outs": ["inner.txt"],
    "cmds": ["echo run >> COUNTS/inner", "echo inner-out > inner.txt"]},
  "outer": {"type": "export", "target": "outer-gen", "flexible_config": ["MSG"]},
  "outer-gen": {"type": "generic", "arguments_config": ["MSG"], "outs": ["out.txt"],
    "deps": ["inner", "in.txt"],
    "env": {"type": "singleton_map", "key": "MSG",
            "value": {"type": "var", "name": "MSG", "default": "none"}},
    "cmds": ["echo \"$MSG\" >> COUNTS/outer", "if [ \"$MSG\" = slow ]; then sleep 1; fi",
             "cat inner.txt in.txt > out.txt",
             "echo \"$MSG\" >> out.txt"]},
  "failing": {"type": "export", "target": "bad"},
  "bad": {"type": "generic", "outs": ["x"], "cmds": ["echo failing-output; exit 42"]},
  "plain": {"type": "generic", "outs": ["y"], "cmds": ["touch y"]},
  "where": {"type": "export", "target": "where-gen"},
  "where-gen": {"type": "generic", "outs": ["where.txt"],
    "execution properties": {"type": "'", "$1": {"server": "special"}},
    "cmds": ["echo ${SPECIAL:-no} > where.txt"]}
}"#;

struct Setup {
    _dir: tempfile::TempDir,
    ctx: Arc<ServeContext>,
    counts: PathBuf,
    tree: String,
    endpoint: Endpoint,
}

fn hash_of(compatible: bool) -> HashFunction {
    if compatible {
        HashFunction::Sha256
    } else {
        HashFunction::GitSha1
    }
}

async fn setup(compatible: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let counts = dir.path().join("counts");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&counts).unwrap();
    std::fs::write(
        repo.join("TARGETS"),
        TARGETS.replace("COUNTS", counts.to_str().unwrap()),
    )
    .unwrap();
    std::fs::write(repo.join("in.txt"), "input\n").unwrap();
    let (_, tree) = common::git::commit_all(&repo);
    let config = config_in(
        dir.path(),
        json!({"repositories": [loc(&repo)],
               "execution endpoint": {"compatible": compatible}}),
    );
    let (ctx, endpoint) = common::start_serve(&config, hash_of(compatible)).await;
    Setup {
        _dir: dir,
        ctx,
        counts,
        tree,
        endpoint,
    }
}

impl Setup {
    fn runs(&self, action: &str) -> Vec<String> {
        std::fs::read_to_string(self.counts.join(action))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Uploads key and description for `name` in `config` (rooted at
    /// `tree`) as a client does, and returns the request.
    async fn request_for(&self, tree: &str, name: &str, config: Value) -> ServeTargetRequest {
        common::targets::request(&self.endpoint, tree, name, config).await
    }

    async fn ask(&self, request: ServeTargetRequest) -> Result<ServeTargetResponse, tonic::Status> {
        TargetClient::new(self.endpoint.channel.clone())
            .serve_target(request)
            .await
            .map(|r| r.into_inner())
    }

    /// The content of the artifact at `path` of the value `value`.
    async fn artifact(&self, value: &reapi::Digest, path: &str) -> String {
        let entry: Value = serde_json::from_slice(&self.endpoint.read_blob(value).await).unwrap();
        let data = &entry["artifacts"][path]["data"];
        let d = reapi::Digest {
            hash: data["id"].as_str().unwrap().to_string(),
            size_bytes: data["size"].as_i64().unwrap(),
        };
        let wire = jserve::digest::Digest {
            hash: d.hash.clone(),
            size: d.size_bytes as u64,
            is_tree: false,
        }
        .to_wire(self.endpoint.hash);
        String::from_utf8(self.endpoint.read_blob(&wire).await).unwrap()
    }
}

fn value_of(r: &ServeTargetResponse) -> reapi::Digest {
    assert!(r.log.is_none(), "no log on success");
    r.target_value.clone().expect("a value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_on_a_miss_then_answers_from_the_cache() {
    for compatible in [false, true] {
        let s = setup(compatible).await;
        let request = s.request_for(&s.tree, "outer", json!({"MSG": "hi"})).await;
        let first = value_of(&s.ask(request.clone()).await.unwrap());
        assert_eq!(
            s.artifact(&first, "out.txt").await,
            "inner-out\ninput\nhi\n"
        );
        assert_eq!(s.runs("outer"), ["hi"]);
        assert_eq!(s.runs("inner"), ["run"]);

        // A second request is a hit: same value, nothing runs.
        let before = s.ctx.target_stats.snapshot();
        let second = value_of(&s.ask(request).await.unwrap());
        assert_eq!(first, second);
        assert_eq!(s.runs("outer"), ["hi"]);
        let after = s.ctx.target_stats.snapshot();
        assert_eq!(after[2], before[2] + 1, "one more hit");
        assert_eq!(
            (after[3], after[4]),
            (before[3], before[4]),
            "no build, no action"
        );

        // The nested export got its own entry on the way.
        let inner = s.request_for(&s.tree, "inner", json!({})).await;
        let inner_value = value_of(&s.ask(inner).await.unwrap());
        assert_eq!(s.artifact(&inner_value, "inner.txt").await, "inner-out\n");
        assert_eq!(s.runs("inner"), ["run"], "compatible={compatible}");

        // Another configuration of the outer target reuses the inner entry.
        let other = s.request_for(&s.tree, "outer", json!({"MSG": "ho"})).await;
        let other_value = value_of(&s.ask(other).await.unwrap());
        assert_eq!(
            s.artifact(&other_value, "out.txt").await,
            "inner-out\ninput\nho\n"
        );
        assert_eq!(s.runs("outer"), ["hi", "ho"]);
        assert_eq!(s.runs("inner"), ["run"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_answers_with_a_log() {
    for compatible in [false, true] {
        let s = setup(compatible).await;
        let request = s.request_for(&s.tree, "failing", json!({})).await;
        let r = s.ask(request).await.unwrap();
        assert!(r.target_value.is_none());
        let log = r.log.expect("a log");
        let text = String::from_utf8(s.endpoint.read_blob(&log).await).unwrap();
        assert!(text.contains("failing-output"), "{text}");
        assert!(text.contains("exit code 42"), "{text}");
        assert!(text.contains("failing"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_the_contract() {
    let s = setup(false).await;
    // A target that is not an export target.
    let plain = s.request_for(&s.tree, "plain", json!({})).await;
    assert_eq!(s.ask(plain).await.unwrap_err().code(), Code::NotFound);
    // A root serve does not know.
    let unknown = s
        .request_for(
            "0123456789abcdef0123456789abcdef01234567",
            "outer",
            json!({"MSG": null}),
        )
        .await;
    assert_eq!(
        s.ask(unknown).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // A key blob the endpoint does not have.
    let mut missing = s.request_for(&s.tree, "outer", json!({"MSG": "x"})).await;
    missing.target_cache_key_id = Some(s.endpoint.blob_digest(b"{\"never\": \"uploaded\"}"));
    assert_eq!(
        s.ask(missing).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // A key that is not a JSON object.
    let mut list = s.request_for(&s.tree, "outer", json!({"MSG": "y"})).await;
    list.target_cache_key_id = Some(s.endpoint.upload_blob(b"[]").await);
    assert_eq!(s.ask(list).await.unwrap_err().code(), Code::NotFound);
    // Not a digest at all.
    let mut bad = s.request_for(&s.tree, "outer", json!({"MSG": "z"})).await;
    bad.target_cache_key_id = Some(reapi::Digest {
        hash: "xyz".into(),
        size_bytes: 3,
    });
    assert_eq!(s.ask(bad).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(s.runs("outer").is_empty(), "no build for any of these");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_requests_build_once() {
    let s = setup(false).await;
    // The action sleeps, so all requests arrive while the first one builds.
    let request = s
        .request_for(&s.tree, "outer", json!({"MSG": "slow"}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = TargetClient::new(s.endpoint.channel.clone());
        let r = request.clone();
        tasks.push(tokio::spawn(async move {
            client.serve_target(r).await.map(|r| r.into_inner())
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(value_of(&t.await.unwrap().unwrap()));
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(s.runs("outer"), ["slow"]);
    assert_eq!(s.runs("inner"), ["run"]);
    let [requests, computations, hits, builds, executed, _] = s.ctx.target_stats.snapshot();
    assert_eq!((requests, computations, hits, builds), (16, 1, 0, 1));
    assert_eq!(executed, 2, "the outer and the inner action");
}

/// A key blob and its description stay where a client left them; the value
/// names only objects the endpoint has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_names_only_objects_at_the_endpoint() {
    let s = setup(true).await;
    let request = s
        .request_for(&s.tree, "outer", json!({"MSG": "objects"}))
        .await;
    let value = value_of(&s.ask(request).await.unwrap());
    let entry: Value = serde_json::from_slice(&s.endpoint.read_blob(&value).await).unwrap();
    let mut digests = Vec::new();
    for stage in ["artifacts", "runfiles"] {
        for (_, a) in entry[stage].as_object().unwrap() {
            let id = a["data"]["id"].as_str().unwrap();
            let size = a["data"]["size"].as_i64().unwrap();
            digests.push(reapi::Digest {
                hash: id.into(),
                size_bytes: size,
            });
        }
    }
    assert!(!digests.is_empty());
    let missing = s
        .endpoint
        .cas()
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: digests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty(), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_does_not_cancel_the_build() {
    let s = setup(false).await;
    let request = s
        .request_for(&s.tree, "outer", json!({"MSG": "slow"}))
        .await;
    let mut first = TargetClient::new(s.endpoint.channel.clone());
    let r = request.clone();
    let gone = tokio::spawn(async move { first.serve_target(r).await });
    // The client leaves while its build's slow action runs.
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while s.runs("outer").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the action starts");
    gone.abort();
    let _ = gone.await;
    // The second client joins the build the first one started.
    let value = value_of(&s.ask(request).await.unwrap());
    assert_eq!(
        s.artifact(&value, "out.txt").await,
        "inner-out\ninput\nslow\n"
    );
    assert_eq!(s.runs("outer"), ["slow"]);
    let [requests, computations, _, builds, ..] = s.ctx.target_stats.snapshot();
    assert_eq!((computations, builds), (1, 1), "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_artifact_root_imports_the_stage_into_the_git_cache() {
    use jserve::proto::source_tree_client::SourceTreeClient;
    use jserve::proto::CheckRootTreeRequest;
    for compatible in [false, true] {
        let s = setup(compatible).await;
        let mut request = s
            .request_for(&s.tree, "outer", json!({"MSG": "keep"}))
            .await;
        request.keep_artifact_root = true;
        let value = value_of(&s.ask(request).await.unwrap());
        let content = s.artifact(&value, "out.txt").await;
        // The tree git would make of the artifact stage.
        let scratch = tempfile::tempdir().unwrap();
        git(scratch.path(), &["init", "-q"]);
        std::fs::write(scratch.path().join("out.txt"), &content).unwrap();
        git(scratch.path(), &["add", "out.txt"]);
        let tree = git(scratch.path(), &["write-tree"]);
        let mut client = SourceTreeClient::new(s.endpoint.channel.clone());
        let status = client
            .check_root_tree(CheckRootTreeRequest { tree: tree.clone() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 0, "tree {tree} is known (compatible={compatible})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_go_to_the_endpoints_of_the_dispatch_list() {
    use jserve::daemon::{Listen, Services};
    use jserve::execute::runner::RunnerConfig;
    use jserve::execute::{EndpointConfig, LocalEndpoint};
    for compatible in [false, true] {
        let s = setup(compatible).await;
        // A second endpoint whose actions see SPECIAL=yes.
        let dir = tempfile::tempdir().unwrap();
        let root = jserve::storage::BuildRoot::open(dir.path()).unwrap();
        let special = LocalEndpoint::new(
            &root,
            EndpointConfig {
                hash: hash_of(compatible),
                instance_name: None,
                runner: RunnerConfig {
                    launcher: vec!["env".into(), "SPECIAL=yes".into()],
                    default_timeout: std::time::Duration::from_secs(60),
                    jobs: 2,
                },
            },
        );
        let server = jserve::daemon::start_services(&Listen::default(), Services::Execute(special))
            .await
            .unwrap();
        let list = format!(
            r#"[[{{"server": "special"}}, "127.0.0.1:{}"]]"#,
            server.addr.port()
        );
        let mut request = s.request_for(&s.tree, "where", json!({})).await;
        request.dispatch_info = Some(s.endpoint.upload_blob(list.as_bytes()).await);
        let value = value_of(&s.ask(request.clone()).await.unwrap());
        assert_eq!(
            s.artifact(&value, "where.txt").await,
            "yes\n",
            "compatible={compatible}"
        );
        // Without the list the same target is another cache entry (another
        // shard), built at the main endpoint.
        request.dispatch_info = Some(s.endpoint.upload_blob(b"[]").await);
        let plain = value_of(&s.ask(request).await.unwrap());
        assert_eq!(s.artifact(&plain, "where.txt").await, "no\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_only_at_the_endpoint_are_fetched_from_there() {
    use common::reapi::file;
    let s = setup(false).await;
    // A project jserve's repositories do not have, uploaded to the endpoint
    // (native mode: its git tree id is its digest there).
    let targets = r#"{"exp": {"type": "export", "target": "gen"},
        "gen": {"type": "generic", "outs": ["o"], "cmds": ["cat msg > o"], "deps": ["msg"]}}"#;
    let files = [
        ("TARGETS", file(targets)),
        ("msg", file("from the endpoint\n")),
    ]
    .into_iter()
    .collect();
    let root = s.endpoint.upload_tree(&files).await;
    let tree = root.hash[2..].to_string();
    let request = s.request_for(&tree, "exp", json!({})).await;
    let value = value_of(&s.ask(request).await.unwrap());
    assert_eq!(s.artifact(&value, "o").await, "from the endpoint\n");
}
