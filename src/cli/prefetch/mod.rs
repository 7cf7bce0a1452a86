//! `jserve prefetch`: makes every content-fixed root of a just-mr
//! configuration known to a serve endpoint and backed up at its execution
//! endpoint, handing over what serve lacks from the local just-mr build
//! root or distdirs; with `--targets`, also asks ServeTarget for export
//! targets so the cache is warm before developers build.

mod roots;
mod targets;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::client::{connect, Endpoint};
use crate::digest::{Digest, HashFunction, ObjectKind};
use crate::proto::configuration_client::ConfigurationClient;
use crate::proto::source_tree_client::SourceTreeClient;
use crate::proto::*;
use crate::remote::RemoteCas;
use roots::{Archive, Root, RootKind};

#[derive(Args, Debug)]
pub struct PrefetchArgs {
    /// The just-mr repository configuration.
    #[arg(short = 'C', long = "repository-config", value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    endpoint: Endpoint,
    /// The execution endpoint serve works with (default: what serve says).
    #[arg(
        short = 'r',
        long = "remote-execution-address",
        value_name = "HOST:PORT"
    )]
    remote: Option<String>,
    /// The instance name at the execution endpoint.
    #[arg(long = "remote-instance-name", default_value = "")]
    instance: String,
    /// just-mr's local build root, where fetched archives and repositories are.
    #[arg(long = "local-build-root", value_name = "DIR")]
    local_build_root: Option<PathBuf>,
    /// Directories with archives (as just-mr's --distdir).
    #[arg(long = "distdir", value_name = "DIR")]
    distdirs: Vec<PathBuf>,
    /// The main repository (default: the configuration's "main").
    #[arg(long)]
    main: Option<String>,
    /// Export targets to build at serve: NAME (in the main repository's top
    /// module), '["MODULE","NAME"]' or '["@","REPO","MODULE","NAME"]'.
    #[arg(long, num_args = 1.., value_name = "TARGET")]
    targets: Vec<String>,
    /// An execution property the developers' clients send (as just's
    /// option): the targets are warmed for that backend.
    #[arg(long = "remote-execution-property", value_name = "KEY:VALUE")]
    properties: Vec<String>,
    /// The developers' dispatch list (as just's option): a JSON list of
    /// [PROPERTIES, "HOST:PORT"] pairs.
    #[arg(long = "endpoint-configuration", value_name = "FILE")]
    dispatch: Option<PathBuf>,
}

/// What became of one root or target.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub kind: String,
    /// The git tree (roots) or target value digest (targets).
    pub tree: Option<String>,
    /// known, uploaded, served, skipped, missing, failed, error.
    pub status: &'static str,
    pub note: String,
}

impl Row {
    fn ok(&self) -> bool {
        matches!(self.status, "known" | "uploaded" | "served" | "skipped")
    }
}

/// Connections and local places the work needs.
pub struct Prefetcher {
    serve: SourceTreeClient<Channel>,
    channel: Channel,
    remote: Arc<dyn RemoteCas>,
    hash: HashFunction,
    local_build_root: PathBuf,
    distdirs: Vec<PathBuf>,
    scratch: crate::storage::staging::ScratchDir,
    /// Execution properties and the dispatch list of ServeTarget requests.
    properties: Vec<(String, String)>,
    dispatch: Vec<u8>,
}

pub fn run(args: PrefetchArgs) -> ExitCode {
    super::run_client("jserve prefetch", run_async(args))
}

async fn run_async(args: PrefetchArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.config.display()))?;
    let roots = roots::roots(&config)?;
    let channel = connect(&args.endpoint).await?;
    let mut p = Prefetcher::new(&args, channel).await?;
    let progress = Progress::new(roots.len() + args.targets.len());
    let mut rows = Vec::new();
    for root in &roots {
        progress.show(&format!("{} {}", root.kind.name(), root.name));
        let row = match p.root(root).await {
            Ok(row) => row,
            Err(e) => Row {
                name: root.name.clone(),
                kind: root.kind.name().into(),
                tree: None,
                status: "error",
                note: format!("{e:#}"),
            },
        };
        rows.push(row);
    }
    if !args.targets.is_empty() {
        let main = match (&args.main, config.get("main").and_then(Value::as_str)) {
            (Some(m), _) => m.clone(),
            (None, Some(m)) => m.to_string(),
            (None, None) => bail!("--targets needs a main repository (--main)"),
        };
        for target in &args.targets {
            progress.show(&format!("target {target}"));
            let row = targets::serve_target(&mut p, &config, &roots, &rows, &main, target)
                .await
                .unwrap_or_else(|e| Row {
                    name: target.clone(),
                    kind: "target".into(),
                    tree: None,
                    status: "error",
                    note: format!("{e:#}"),
                });
            rows.push(row);
        }
    }
    progress.done();
    let ok = rows.iter().all(Row::ok);
    if args.endpoint.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"name": r.name, "kind": r.kind, "tree": r.tree,
                       "status": r.status, "note": r.note})
            })
            .collect();
        println!("{}", json!({"ok": ok, "roots": list}));
    } else {
        print!("{}", table(&rows));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}

/// The summary: one line per root or target, columns aligned.
fn table(rows: &[Row]) -> String {
    let header = Row {
        name: "ROOT".into(),
        kind: "KIND".into(),
        tree: Some("TREE".into()),
        status: "STATUS",
        note: String::new(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: &dyn Fn(&Row) -> usize| all.iter().map(|r| f(r)).max().unwrap_or(0);
    let (wn, wk, wt) = (
        width(&|r| r.name.len()),
        width(&|r| r.kind.len()),
        width(&|r| r.tree.as_deref().map_or(1, str::len)),
    );
    let mut out = String::new();
    for r in all {
        let line = format!(
            "{:wn$}  {:wk$}  {:wt$}  {}{}",
            r.name,
            r.kind,
            r.tree.as_deref().unwrap_or("-"),
            r.status,
            if r.note.is_empty() {
                String::new()
            } else {
                format!(": {}", r.note)
            }
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A one-line progress display on a terminal (nothing otherwise).
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: Default::default(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, what: &str) {
        let n = self.done.get() + 1;
        self.done.set(n);
        if self.terminal {
            let bar_len = 20 * n / self.total.max(1);
            let bar = format!("{}{}", "#".repeat(bar_len), ".".repeat(20 - bar_len));
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K[{bar}] {n}/{} {what}", self.total);
            let _ = err.flush();
        }
    }

    fn done(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// The row for an answer that settles a root: known with its tree, or an
/// error; `None` when serve did not find it (`not_found`), so that what it
/// lacks can be handed over.
fn settled(root: &Root, rpc: &str, status: i32, not_found: i32, tree: String) -> Option<Row> {
    match status {
        // OK is 0 in every SourceTree status enum.
        0 => Some(row(root, Some(tree), "known", "")),
        s if s == not_found => None,
        s => Some(row(root, None, "error", format!("{rpc}: status {s}"))),
    }
}

fn row(root: &Root, tree: Option<String>, status: &'static str, note: impl Into<String>) -> Row {
    Row {
        name: root.name.clone(),
        kind: root.kind.name().into(),
        tree,
        status,
        note: note.into(),
    }
}

impl Prefetcher {
    async fn new(args: &PrefetchArgs, channel: Channel) -> anyhow::Result<Prefetcher> {
        let mut configuration = ConfigurationClient::new(channel.clone());
        let compatible = configuration
            .compatibility(CompatibilityRequest {})
            .await
            .context("asking serve for its mode")?
            .into_inner()
            .compatible;
        let hash = if compatible {
            HashFunction::Sha256
        } else {
            HashFunction::GitSha1
        };
        let remote = match &args.remote {
            Some(r) => r.clone(),
            None => {
                let said = configuration
                    .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
                    .await
                    .context("asking serve for its execution endpoint")?
                    .into_inner()
                    .address;
                match serde_json::from_str::<Value>(&said) {
                    Ok(Value::String(a)) if !a.is_empty() => a,
                    // Serve is its own endpoint.
                    _ => args.endpoint.address().to_string(),
                }
            }
        };
        let address = crate::config::Address::parse(&remote).map_err(anyhow::Error::msg)?;
        let (cas, _) = crate::remote::connect(
            &address,
            &args.instance,
            hash,
            &args.endpoint.auth(),
            &crate::config::RetryConfig::default(),
        )?;
        let local_build_root = match &args.local_build_root {
            Some(p) => p.clone(),
            None => PathBuf::from(std::env::var_os("HOME").context("no HOME for ~/.cache/just")?)
                .join(".cache/just"),
        };
        let mut properties = Vec::new();
        for p in &args.properties {
            let (k, v) = p.split_once(':').with_context(|| {
                format!("--remote-execution-property {p:?}: expected KEY:VALUE")
            })?;
            properties.push((k.to_string(), v.to_string()));
        }
        let dispatch = match &args.dispatch {
            None => b"[]".to_vec(),
            Some(path) => {
                let text =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                match serde_json::from_slice::<Value>(&text) {
                    Ok(Value::Array(_)) => text,
                    _ => bail!(
                        "{}: expected a JSON list of dispatch entries",
                        path.display()
                    ),
                }
            }
        };
        Ok(Prefetcher {
            serve: SourceTreeClient::new(channel.clone()),
            channel,
            remote: cas,
            hash,
            local_build_root,
            distdirs: args.distdirs.clone(),
            scratch: crate::storage::staging::scratch_dir(
                &std::env::temp_dir(),
                "jserve-prefetch",
            )?,
            properties,
            dispatch,
        })
    }

    async fn root(&mut self, root: &Root) -> anyhow::Result<Row> {
        match &root.kind {
            RootKind::Git {
                commit,
                subdir,
                local,
            } => self.git(root, commit, subdir, local.as_deref()).await,
            RootKind::GitTree { id } => self.git_tree(root, id).await,
            RootKind::Archive {
                archive,
                subdir,
                special,
            } => self.archive(root, archive, subdir, special).await,
            RootKind::Distdir { archives } => self.distdir(root, archives).await,
            RootKind::File { path } => self.file(root, path).await,
            RootKind::Other { why } => Ok(row(root, None, "skipped", why.clone())),
        }
    }

    async fn git(
        &mut self,
        root: &Root,
        commit: &str,
        subdir: &str,
        local: Option<&Path>,
    ) -> anyhow::Result<Row> {
        use serve_commit_tree_response::ServeCommitTreeStatus as S;
        let r = self
            .serve
            .serve_commit_tree(ServeCommitTreeRequest {
                commit: commit.into(),
                subdir: subdir.into(),
                sync_tree: true,
            })
            .await?
            .into_inner();
        if let Some(row) = settled(
            root,
            "ServeCommitTree",
            r.status,
            S::NotFound as i32,
            r.tree,
        ) {
            return Ok(row);
        }
        // Serve cannot learn a commit, only its tree: upload that for
        // clients that have the root, and say the commit is missing.
        let spec = match subdir.trim_matches('/') {
            "" | "." => format!("{commit}^{{tree}}"),
            sub => format!("{commit}:{}", sub.trim_start_matches("./")),
        };
        for repo in self.git_repositories(local) {
            let Ok(tree) = tree_of(&repo, &spec).await else {
                continue;
            };
            self.hand_over_tree(&repo, &tree).await?;
            return Ok(row(
                root,
                Some(tree),
                "missing",
                "serve does not know the commit (configure its repository at serve); \
                 its tree was uploaded for clients that have the root",
            ));
        }
        Ok(row(
            root,
            None,
            "missing",
            "neither serve nor the local build root has the commit",
        ))
    }

    async fn git_tree(&mut self, root: &Root, id: &str) -> anyhow::Result<Row> {
        if self.serve_knows_tree(id).await? {
            return Ok(row(root, Some(id.into()), "known", ""));
        }
        for repo in self.git_repositories(None) {
            if tree_of(&repo, id).await.is_ok() {
                self.hand_over_tree(&repo, id).await?;
                return Ok(row(root, Some(id.into()), "uploaded", ""));
            }
        }
        Ok(row(
            root,
            None,
            "missing",
            "neither serve nor the local build root has the tree",
        ))
    }

    /// Whether serve knows `tree`; if it does, it is synced to the endpoint.
    async fn serve_knows_tree(&mut self, tree: &str) -> anyhow::Result<bool> {
        let known = self
            .serve
            .check_root_tree(CheckRootTreeRequest { tree: tree.into() })
            .await?
            .into_inner();
        if known.status != check_root_tree_response::CheckRootTreeStatus::Ok as i32 {
            return Ok(false);
        }
        let synced = self
            .serve
            .serve_tree(ServeTreeRequest { tree: tree.into() })
            .await?
            .into_inner();
        if synced.status != serve_tree_response::ServeTreeStatus::Ok as i32 {
            bail!(
                "serve knows tree {tree} but could not sync it (status {})",
                synced.status
            );
        }
        Ok(true)
    }

    async fn archive(
        &mut self,
        root: &Root,
        archive: &Archive,
        subdir: &str,
        special: &str,
    ) -> anyhow::Result<Row> {
        use serve_archive_tree_request::{ArchiveType, SymlinksResolve};
        use serve_archive_tree_response::ServeArchiveTreeStatus as S;
        let request = ServeArchiveTreeRequest {
            content: archive.content.clone(),
            archive_type: if archive.zip {
                ArchiveType::Zip
            } else {
                ArchiveType::Tar
            } as i32,
            subdir: subdir.into(),
            resolve_symlinks: match special {
                "ignore" => SymlinksResolve::Ignore,
                "resolve-partially" => SymlinksResolve::Partial,
                "resolve-completely" => SymlinksResolve::Complete,
                _ => SymlinksResolve::None,
            } as i32,
            sync_tree: true,
        };
        let mut status = "known";
        let mut note = String::new();
        for attempt in 0..2 {
            let r = self
                .serve
                .serve_archive_tree(request.clone())
                .await?
                .into_inner();
            if r.status == S::Ok as i32 {
                return Ok(row(root, Some(r.tree), status, note));
            }
            if r.status != S::NotFound as i32 || attempt == 1 {
                return Ok(row(
                    root,
                    None,
                    "error",
                    format!("ServeArchiveTree: status {}", r.status),
                ));
            }
            match self.hand_over_archive(archive).await? {
                Some(n) => (status, note) = ("uploaded", n),
                None => {
                    return Ok(row(
                        root,
                        None,
                        "missing",
                        "neither serve nor the local build root or distdirs have the archive",
                    ))
                }
            }
        }
        unreachable!("two attempts at most")
    }

    async fn distdir(&mut self, root: &Root, archives: &[Archive]) -> anyhow::Result<Row> {
        use serve_distdir_tree_response::ServeDistdirTreeStatus as S;
        let distfiles = archives
            .iter()
            .map(|a| serve_distdir_tree_request::Distfile {
                name: a
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| a.content.clone()),
                content: a.content.clone(),
                executable: false,
            })
            .collect::<Vec<_>>();
        let request = ServeDistdirTreeRequest {
            distfiles,
            sync_tree: true,
        };
        let r = self
            .serve
            .serve_distdir_tree(request.clone())
            .await?
            .into_inner();
        if let Some(row) = settled(
            root,
            "ServeDistdirTree",
            r.status,
            S::NotFound as i32,
            r.tree,
        ) {
            return Ok(row);
        }
        for a in archives {
            let known = self
                .serve
                .serve_content(ServeContentRequest {
                    content: a.content.clone(),
                })
                .await?
                .into_inner();
            if known.status == serve_content_response::ServeContentStatus::Ok as i32 {
                continue;
            }
            if self.hand_over_archive(a).await?.is_none() {
                return Ok(row(
                    root,
                    None,
                    "missing",
                    format!("no local copy of {}", a.names.first().unwrap_or(&a.content)),
                ));
            }
        }
        let r = self.serve.serve_distdir_tree(request).await?.into_inner();
        if r.status == S::Ok as i32 {
            Ok(row(root, Some(r.tree), "uploaded", ""))
        } else {
            Ok(row(
                root,
                None,
                "error",
                format!("ServeDistdirTree: status {}", r.status),
            ))
        }
    }

    async fn file(&mut self, root: &Root, path: &Path) -> anyhow::Result<Row> {
        let repo_path = self.scratch.path().join(format!("file-{}", root.name));
        let (dir, rp) = (path.to_path_buf(), repo_path.clone());
        let tree = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let repo = git2::Repository::init_bare(&rp)?;
            let tree = crate::git::import_to_git(&repo, &dir, "prefetch")?;
            Ok(tree.to_string())
        })
        .await??;
        if self.serve_knows_tree(&tree).await? {
            return Ok(row(root, Some(tree), "known", ""));
        }
        self.hand_over_tree(&repo_path, &tree).await?;
        Ok(row(root, Some(tree), "uploaded", ""))
    }

    /// just-mr's git cache, and a local repository the configuration names.
    fn git_repositories(&self, local: Option<&Path>) -> Vec<PathBuf> {
        let mut out = vec![self.local_build_root.join("repositories/generation-0/git")];
        out.extend(local.map(Path::to_path_buf));
        out.into_iter().filter(|p| p.exists()).collect()
    }

    /// Uploads `tree` from `repo` to the endpoint and has serve fetch it.
    async fn hand_over_tree(&mut self, repo: &Path, tree: &str) -> anyhow::Result<()> {
        let rehash = crate::storage::IdMap::new(
            self.scratch.path().join("rehash"),
            self.scratch.path().join("tmp"),
        );
        let syncer = crate::sources::sync::Syncer::new(self.remote.clone(), rehash);
        let digest = syncer
            .sync(repo.to_path_buf(), tree.to_string(), ObjectKind::Tree)
            .await
            .with_context(|| format!("uploading tree {tree}"))?;
        let r = self
            .serve
            .get_remote_tree(GetRemoteTreeRequest {
                digest: Some(digest.to_wire(self.hash)),
            })
            .await?
            .into_inner();
        if r.status != get_remote_tree_response::GetRemoteTreeStatus::Ok as i32 {
            bail!(
                "serve could not fetch tree {tree} from the endpoint (status {})",
                r.status
            );
        }
        Ok(())
    }

    /// Uploads a local copy of the archive to the endpoint, and tells a
    /// compatible serve its git id (a Remote Asset push). The note to show,
    /// or `None` without a local copy.
    async fn hand_over_archive(&mut self, archive: &Archive) -> anyhow::Result<Option<String>> {
        let Some(path) = self.local_archive(archive).await? else {
            return Ok(None);
        };
        let digest = match self.hash {
            HashFunction::GitSha1 => {
                let size = std::fs::metadata(&path)?.len();
                HashFunction::GitSha1.digest(ObjectKind::File, &archive.content, size)
            }
            HashFunction::Sha256 => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || file_digest(&p, HashFunction::Sha256)).await??
            }
        };
        if !self
            .remote
            .find_missing(vec![digest.clone()])
            .await?
            .is_empty()
        {
            self.remote.upload_file(&digest, &path).await?;
        }
        if self.hash.is_native() {
            // A native endpoint names it by its git id: serve finds it there.
            return Ok(Some(format!("uploaded from {}", path.display())));
        }
        use bazel_remote_apis::build::bazel::remote::asset::v1::{
            push_client::PushClient, PushBlobRequest, Qualifier,
        };
        let pushed = PushClient::new(self.channel.clone())
            .push_blob(PushBlobRequest {
                uris: vec![archive
                    .fetch
                    .clone()
                    .unwrap_or_else(|| format!("urn:jserve:git-blob:{}", archive.content))],
                qualifiers: vec![Qualifier {
                    name: crate::asset::qualifiers::GIT_BLOB_ID.into(),
                    value: archive.content.clone(),
                }],
                blob_digest: Some(digest.to_wire(self.hash)),
                ..Default::default()
            })
            .await;
        match pushed {
            Ok(_) => Ok(Some(format!("uploaded from {}", path.display()))),
            Err(s) if s.code() == tonic::Code::Unimplemented => bail!(
                "serve has no Remote Asset Push: a compatible `just serve` cannot read \
                 archives from its endpoint (the archive was uploaded)"
            ),
            Err(s) => bail!("pushing the archive's git id to serve: {}", s.message()),
        }
    }

    /// A local file with the archive's content: just-mr's CAS, then the distdirs.
    async fn local_archive(&self, archive: &Archive) -> anyhow::Result<Option<PathBuf>> {
        let c = &archive.content;
        if c.len() < 3 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("invalid archive content id {c:?}");
        }
        let mut candidates = vec![self
            .local_build_root
            .join("protocol-dependent/generation-0/git-sha1/casf")
            .join(&c[..2])
            .join(&c[2..])];
        for dir in &self.distdirs {
            for name in &archive.names {
                candidates.push(dir.join(name));
            }
        }
        let content = c.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<PathBuf>> {
            for path in candidates {
                if path.is_file() && file_digest(&path, HashFunction::GitSha1)?.hash == content {
                    return Ok(Some(path));
                }
            }
            Ok(None)
        })
        .await?
    }
}

/// The git id of `spec` (a tree id, or COMMIT:PATH) in `repo`, a tree.
/// (On the blocking pool: git look-ups read files.)
async fn tree_of(repo: &Path, spec: &str) -> anyhow::Result<String> {
    let (repo, spec) = (repo.to_path_buf(), spec.to_string());
    tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::open(repo)?;
        let object = repo.revparse_single(&spec)?;
        let tree = object.peel_to_tree()?;
        Ok(tree.id().to_string())
    })
    .await?
}

/// The digest of a file's content as a blob in `hash`'s mode (streamed).
fn file_digest(path: &Path, hash: HashFunction) -> anyhow::Result<Digest> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let hex = hash.hash_reader(ObjectKind::File, len, file)?;
    Ok(hash.digest(ObjectKind::File, hex, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let rows = [
            Row {
                name: "main".into(),
                kind: "git".into(),
                tree: Some("abc".into()),
                status: "known",
                note: String::new(),
            },
            Row {
                name: "a-long-name".into(),
                kind: "archive".into(),
                tree: None,
                status: "missing",
                note: "why".into(),
            },
        ];
        assert_eq!(
            table(&rows),
            "ROOT         KIND     TREE  STATUS\n\
             main         git      abc   known\n\
             a-long-name  archive  -     missing: why\n"
        );
    }
}
