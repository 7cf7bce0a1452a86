//! gRPC reflection lists exactly the services on the port, under both
//! grpc.reflection.v1 and v1alpha, and describes each, imports included, as a
//! reflection-based client (grpcurl, grpcio-reflection) needs to build calls.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::reapi::start_execute;
use common::*;
use jserve::digest::HashFunction;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto};
use serde_json::json;
use tonic::transport::Channel;

const SERVE: [&str; 5] = [
    // The Remote Asset API over serve's sources.
    "build.bazel.remote.asset.v1.Fetch",
    "build.bazel.remote.asset.v1.Push",
    "justbuild.just_serve.Configuration",
    "justbuild.just_serve.SourceTree",
    "justbuild.just_serve.Target",
];
const REAPI: [&str; 6] = [
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.Execution",
    "google.bytestream.ByteStream",
    "google.longrunning.Operations",
];
const ALWAYS: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    // jserve's own, for `jserve status`.
    "jserve.v1.Status",
];

/// The reflection questions this test asks.
enum Question<'a> {
    List,
    Symbol(&'a str),
    File(&'a str),
}

enum Answer {
    Services(Vec<String>),
    Files(Vec<Vec<u8>>),
    Error(String),
}

/// A reflection client of either protocol version.
trait Reflection {
    async fn ask(&mut self, question: Question<'_>) -> Answer;
}

// v1 and v1alpha are the same protocol in two packages with distinct types.
macro_rules! reflection_client {
    ($version:ident) => {
        impl Reflection
            for tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient<
                Channel,
            >
        {
            async fn ask(&mut self, question: Question<'_>) -> Answer {
                use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
                use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
                use tonic_reflection::pb::$version::ServerReflectionRequest;
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(match question {
                        Question::List => MessageRequest::ListServices(String::new()),
                        Question::Symbol(s) => MessageRequest::FileContainingSymbol(s.into()),
                        Question::File(f) => MessageRequest::FileByFilename(f.into()),
                    }),
                };
                let mut answers = self
                    .server_reflection_info(tokio_stream::iter([request]))
                    .await
                    .expect(concat!(stringify!($version), " reflection is served"))
                    .into_inner();
                let answer = answers.message().await.unwrap().expect("one answer");
                match answer.message_response.expect("an answer") {
                    MessageResponse::ListServicesResponse(list) => {
                        Answer::Services(list.service.into_iter().map(|s| s.name).collect())
                    }
                    MessageResponse::FileDescriptorResponse(files) => {
                        Answer::Files(files.file_descriptor_proto)
                    }
                    MessageResponse::ErrorResponse(e) => Answer::Error(e.error_message),
                    MessageResponse::AllExtensionNumbersResponse(_) => {
                        panic!("extension numbers were not asked for")
                    }
                }
            }
        }
    };
}

reflection_client!(v1);
reflection_client!(v1alpha);

fn v1(
    ch: &Channel,
) -> tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<Channel> {
    tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch.clone())
}

fn v1alpha(
    ch: &Channel,
) -> tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient<Channel> {
    tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone())
}

fn decode(files: Vec<Vec<u8>>) -> Vec<FileDescriptorProto> {
    files
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor"))
        .collect()
}

/// The file declaring `symbol` and, as a client fetches them, all it imports.
async fn closure(r: &mut impl Reflection, symbol: &str) -> BTreeMap<String, FileDescriptorProto> {
    let files = match r.ask(Question::Symbol(symbol)).await {
        Answer::Files(files) => decode(files),
        Answer::Error(e) => panic!("{symbol} not described: {e}"),
        Answer::Services(_) => panic!("a service list for {symbol}"),
    };
    let mut known = BTreeMap::new();
    let mut todo = files;
    while let Some(file) = todo.pop() {
        for dependency in &file.dependency {
            if known.contains_key(dependency) || todo.iter().any(|f| f.name() == dependency) {
                continue;
            }
            match r.ask(Question::File(dependency)).await {
                Answer::Files(files) => todo.extend(decode(files)),
                Answer::Error(e) => panic!("{dependency} (imported for {symbol}): {e}"),
                Answer::Services(_) => panic!("a service list for {dependency}"),
            }
        }
        known.insert(file.name().to_string(), file);
    }
    known
}

fn message_names(prefix: &str, messages: &[DescriptorProto], into: &mut BTreeSet<String>) {
    for m in messages {
        let name = format!("{prefix}.{}", m.name());
        message_names(&name, &m.nested_type, into);
        into.insert(name);
    }
}

/// Reflection lists exactly `expected`, and describes each with every
/// request and response type of its methods.
async fn describes(r: &mut impl Reflection, version: &str, expected: &[&str]) {
    let Answer::Services(mut listed) = r.ask(Question::List).await else {
        panic!("{version}: no service list")
    };
    listed.sort();
    let mut expected: Vec<_> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "{version} lists the services served");

    for service in &expected {
        let files = closure(r, service).await;
        let mut messages = BTreeSet::new();
        for file in files.values() {
            message_names(
                &format!(".{}", file.package()),
                &file.message_type,
                &mut messages,
            );
        }
        let (package, name) = service.rsplit_once('.').unwrap();
        let descriptor = files
            .values()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.service)
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("{version}: {service} is not in its file"));
        assert!(
            !descriptor.method.is_empty(),
            "{version}: {service} has methods"
        );
        for method in &descriptor.method {
            for ty in [method.input_type(), method.output_type()] {
                assert!(
                    messages.contains(ty),
                    "{version}: {service}.{} uses {ty}, not described",
                    method.name()
                );
            }
        }
    }
}

async fn both_versions(ch: &Channel, expected: &[&str]) {
    describes(&mut v1(ch), "v1", expected).await;
    describes(&mut v1alpha(ch), "v1alpha", expected).await;
}

#[tokio::test]
async fn serve_as_its_own_endpoint_describes_serve_and_reapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config_in(dir.path(), json!({}))).await;
    let ch = channel(server.addr.port()).await;
    let expected: Vec<_> = ALWAYS.into_iter().chain(SERVE).chain(REAPI).collect();
    both_versions(&ch, &expected).await;

    // The REAPI services live in the REAPI's own file, as upstream defines it.
    for (symbol, file) in [
        (
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "build/bazel/remote/execution/v2/remote_execution.proto",
        ),
        (
            "build.bazel.remote.execution.v2.ContentAddressableStorage.FindMissingBlobs",
            "build/bazel/remote/execution/v2/remote_execution.proto",
        ),
        (
            "google.bytestream.ByteStream",
            "google/bytestream/bytestream.proto",
        ),
        (
            "google.longrunning.Operation",
            "google/longrunning/operations.proto",
        ),
    ] {
        for answer in [
            v1(&ch).ask(Question::Symbol(symbol)).await,
            v1alpha(&ch).ask(Question::Symbol(symbol)).await,
        ] {
            let Answer::Files(files) = answer else {
                panic!("{symbol} not described")
            };
            assert_eq!(decode(files)[0].name(), file, "{symbol}");
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn serve_with_an_external_endpoint_describes_no_reapi() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        json!({"execution endpoint": {"address": "re.example:8980"}}),
    );
    let server = start(&config).await;
    let ch = channel(server.addr.port()).await;
    let expected: Vec<_> = ALWAYS.into_iter().chain(SERVE).collect();
    both_versions(&ch, &expected).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn execute_describes_only_the_reapi() {
    let endpoint = start_execute(HashFunction::GitSha1, 1).await;
    let expected: Vec<_> = ALWAYS.into_iter().chain(REAPI).collect();
    both_versions(&endpoint.channel, &expected).await;
    endpoint.server.shutdown().await.unwrap();
}
