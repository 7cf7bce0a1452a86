//! A REAPI test client: start `jserve execute` in-process, upload blobs and
//! trees in either hash mode, build actions.

#![allow(dead_code, deprecated)]

use std::collections::BTreeMap;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, action_cache_client::ActionCacheClient, batch_update_blobs_request,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
    execution_client::ExecutionClient,
};
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use jserve::daemon::{Listen, RunningServer, Services};
use jserve::digest::{serialize_git_tree, Digest, GitTreeEntry, HashFunction, ObjectKind};
use jserve::execute::runner::RunnerConfig;
use jserve::execute::{EndpointConfig, LocalEndpoint};
use jserve::storage::BuildRoot;
use prost::Message;
use tonic::transport::Channel;

pub struct Endpoint {
    pub server: RunningServer,
    pub hash: HashFunction,
    pub channel: Channel,
    pub dir: tempfile::TempDir,
}

pub async fn start_execute(hash: HashFunction, jobs: usize) -> Endpoint {
    start_execute_with(hash, jobs, None).await
}

pub async fn start_execute_with(
    hash: HashFunction,
    jobs: usize,
    instance: Option<&str>,
) -> Endpoint {
    start_execute_at(hash, jobs, instance, 0).await
}

/// As [`start_execute_with`], on `port` (0: any free one), so that an
/// endpoint can come back where it was.
pub async fn start_execute_at(
    hash: HashFunction,
    jobs: usize,
    instance: Option<&str>,
    port: u16,
) -> Endpoint {
    let dir = tempfile::tempdir().unwrap();
    let build_root = BuildRoot::open(&dir.path().join("root")).unwrap();
    let endpoint = LocalEndpoint::new(
        &build_root,
        EndpointConfig {
            hash,
            instance_name: instance.map(str::to_string),
            runner: RunnerConfig {
                launcher: vec!["env".into(), "--".into()],
                default_timeout: std::time::Duration::from_secs(60),
                jobs,
            },
        },
    );
    let mut listen = Listen::default();
    listen.service.port = port;
    let server = jserve::daemon::start_services(&listen, Services::Execute(endpoint))
        .await
        .expect("execute endpoint starts");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Endpoint {
        server,
        hash,
        channel,
        dir,
    }
}

/// A file of a test tree: content and executable bit.
pub struct TestFile {
    pub content: Vec<u8>,
    pub executable: bool,
}

impl Endpoint {
    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
    }
    pub fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
    }
    pub fn exec(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.channel.clone())
    }
    pub fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
    }
    pub fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel.clone())
    }

    pub fn blob_digest(&self, data: &[u8]) -> reapi::Digest {
        self.hash
            .digest_bytes(ObjectKind::File, data)
            .to_wire(self.hash)
    }

    /// Uploads blobs in one batch; panics unless every one is accepted.
    pub async fn upload(&self, blobs: &[(&reapi::Digest, &[u8])]) {
        batch_upload(self.channel.clone(), blobs).await;
    }

    pub async fn upload_blob(&self, data: &[u8]) -> reapi::Digest {
        let d = self.blob_digest(data);
        self.upload(&[(&d, data)]).await;
        d
    }

    /// Uploads a tree of files (path -> file), leaves first; returns the root digest.
    pub async fn upload_tree(&self, files: &BTreeMap<&str, TestFile>) -> reapi::Digest {
        #[derive(Default)]
        struct Dir {
            files: BTreeMap<String, (reapi::Digest, bool)>,
            dirs: BTreeMap<String, Dir>,
        }
        let mut root = Dir::default();
        for (path, f) in files {
            let digest = self.upload_blob(&f.content).await;
            let mut parts: Vec<&str> = path.split('/').collect();
            let name = parts.pop().unwrap();
            let mut dir = &mut root;
            for p in parts {
                dir = dir.dirs.entry(p.to_string()).or_default();
            }
            dir.files.insert(name.to_string(), (digest, f.executable));
        }
        fn store<'a>(
            ep: &'a Endpoint,
            dir: &'a Dir,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = reapi::Digest> + 'a>> {
            Box::pin(async move {
                let mut subdirs = Vec::new();
                for (name, sub) in &dir.dirs {
                    subdirs.push((name.clone(), store(ep, sub).await));
                }
                ep.upload_directory(&dir.files, &subdirs).await
            })
        }
        store(self, &root).await
    }

    /// Uploads one directory level, in the mode's representation.
    pub async fn upload_directory(
        &self,
        files: &BTreeMap<String, (reapi::Digest, bool)>,
        dirs: &[(String, reapi::Digest)],
    ) -> reapi::Digest {
        match self.hash {
            HashFunction::GitSha1 => {
                let raw = |d: &reapi::Digest| -> [u8; 20] {
                    hex::decode(&d.hash[2..]).unwrap().try_into().unwrap()
                };
                let mut entries = Vec::new();
                for (name, (d, exec)) in files {
                    let kind = if *exec {
                        ObjectKind::Executable
                    } else {
                        ObjectKind::File
                    };
                    entries.push(GitTreeEntry {
                        name: name.as_bytes().to_vec(),
                        kind,
                        id: raw(d),
                    });
                }
                for (name, d) in dirs {
                    entries.push(GitTreeEntry {
                        name: name.as_bytes().to_vec(),
                        kind: ObjectKind::Tree,
                        id: raw(d),
                    });
                }
                let bytes = serialize_git_tree(entries).unwrap();
                let d = Digest {
                    hash: self.hash.hash_bytes(ObjectKind::Tree, &bytes),
                    size: bytes.len() as u64,
                    is_tree: true,
                }
                .to_wire(self.hash);
                self.upload(&[(&d, &bytes)]).await;
                d
            }
            HashFunction::Sha256 => {
                let dir = reapi::Directory {
                    files: files
                        .iter()
                        .map(|(n, (d, exec))| reapi::FileNode {
                            name: n.clone(),
                            digest: Some(d.clone()),
                            is_executable: *exec,
                            ..Default::default()
                        })
                        .collect(),
                    directories: dirs
                        .iter()
                        .map(|(n, d)| reapi::DirectoryNode {
                            name: n.clone(),
                            digest: Some(d.clone()),
                        })
                        .collect(),
                    ..Default::default()
                };
                self.upload_blob(&dir.encode_to_vec()).await
            }
        }
    }

    /// Uploads a Command and an Action; returns the action digest.
    pub async fn action(
        &self,
        input_root: &reapi::Digest,
        args: &[&str],
        output_paths: &[&str],
        timeout_secs: i64,
        do_not_cache: bool,
    ) -> reapi::Digest {
        self.action_in(
            "",
            input_root,
            args,
            output_paths,
            timeout_secs,
            do_not_cache,
        )
        .await
    }

    /// As `action`, running in working directory `cwd`.
    pub async fn action_in(
        &self,
        cwd: &str,
        input_root: &reapi::Digest,
        args: &[&str],
        output_paths: &[&str],
        timeout_secs: i64,
        do_not_cache: bool,
    ) -> reapi::Digest {
        let command = reapi::Command {
            working_directory: cwd.to_string(),
            arguments: args.iter().map(|s| s.to_string()).collect(),
            environment_variables: vec![reapi::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/local/bin:/usr/bin:/bin".into(),
            }],
            output_paths: output_paths.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let command_digest = self.upload_blob(&command.encode_to_vec()).await;
        let action = reapi::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(input_root.clone()),
            timeout: (timeout_secs > 0).then_some(bazel_remote_apis::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            do_not_cache,
            ..Default::default()
        };
        self.upload_blob(&action.encode_to_vec()).await
    }

    /// Executes and returns the final operation.
    pub async fn execute(&self, action: &reapi::Digest, skip_cache_lookup: bool) -> Operation {
        execute(self.channel.clone(), action, skip_cache_lookup).await
    }

    pub async fn read_blob(&self, d: &reapi::Digest) -> Vec<u8> {
        let mut stream = self
            .bytestream()
            .read(bazel_remote_apis::google::bytestream::ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            data.extend_from_slice(&chunk.data);
        }
        data
    }
}

/// The ExecuteResponse inside a finished operation.
fn batch_request(blobs: &[(&reapi::Digest, &[u8])]) -> reapi::BatchUpdateBlobsRequest {
    reapi::BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|(d, data)| batch_update_blobs_request::Request {
                digest: Some((*d).clone()),
                data: data.to_vec(),
                compressor: 0,
            })
            .collect(),
        ..Default::default()
    }
}

/// The status of one BatchUpdateBlobs call with `blobs` (not of its parts).
pub async fn batch_upload_status(
    channel: Channel,
    blobs: &[(&reapi::Digest, &[u8])],
) -> Result<(), tonic::Status> {
    ContentAddressableStorageClient::new(channel)
        .batch_update_blobs(batch_request(blobs))
        .await
        .map(|_| ())
}

/// Uploads blobs in one BatchUpdateBlobs call to the daemon behind
/// `channel`; panics unless every one is accepted.
pub async fn batch_upload(channel: Channel, blobs: &[(&reapi::Digest, &[u8])]) {
    let r = ContentAddressableStorageClient::new(channel)
        .batch_update_blobs(batch_request(blobs))
        .await
        .unwrap()
        .into_inner();
    for resp in r.responses {
        let status = resp.status.unwrap_or_default();
        assert_eq!(
            status.code, 0,
            "upload of {:?} refused: {}",
            resp.digest, status.message
        );
    }
}

/// Executes `action` at the endpoint behind `channel`; returns the final
/// operation.
pub async fn execute(
    channel: Channel,
    action: &reapi::Digest,
    skip_cache_lookup: bool,
) -> Operation {
    let mut stream = ExecutionClient::new(channel)
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.clone()),
            skip_cache_lookup,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let op = last.expect("at least one operation");
    assert!(op.done, "the stream ends with a finished operation");
    op
}

pub fn response_of(op: &Operation) -> reapi::ExecuteResponse {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            assert!(any
                .type_url
                .ends_with("build.bazel.remote.execution.v2.ExecuteResponse"));
            reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("operation has no response: {other:?}"),
    }
}

pub fn file(content: &str) -> TestFile {
    TestFile {
        content: content.as_bytes().to_vec(),
        executable: false,
    }
}

pub fn exe(content: &str) -> TestFile {
    TestFile {
        content: content.as_bytes().to_vec(),
        executable: true,
    }
}
