//! The daemon in-process on port 0: info and pid files, the Configuration
//! service over plain gRPC and TLS (with client certificates), health,
//! reflection, and the answers to requests that cannot be served.

mod common;

use common::pki::pki;

use common::*;
use jserve::proto::configuration_client::ConfigurationClient;
use jserve::proto::target_client::TargetClient;
use jserve::proto::*;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[tokio::test]
async fn own_endpoint_info_file_and_configuration_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config_in(dir.path(), json!({}))).await;

    let info = read_info(&dir.path().join("info.json"));
    assert_eq!(info["interface"], "127.0.0.1");
    assert_eq!(info["pid"], std::process::id());
    let port = info["port"].as_u64().unwrap() as u16;
    assert_ne!(port, 0);
    assert_eq!(port, server.addr.port());
    // Exactly the compact, key-sorted form `just serve` writes.
    let raw = std::fs::read_to_string(dir.path().join("info.json")).unwrap();
    assert_eq!(
        raw,
        format!(
            "{{\"interface\":\"127.0.0.1\",\"pid\":{},\"port\":{port}}}",
            std::process::id()
        )
    );
    let pid = std::fs::read_to_string(dir.path().join("jserve.pid")).unwrap();
    assert_eq!(pid, std::process::id().to_string());

    let mut client = ConfigurationClient::new(channel(port).await);
    let endpoint = client
        .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(endpoint.address, "", "jserve is its own endpoint");
    assert_eq!(endpoint.remote_instance_name, "");
    let compat = client
        .compatibility(CompatibilityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!compat.compatible);

    // Without an execution endpoint, the REAPI is served on the same port.
    use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
    let caps = reapi::capabilities_client::CapabilitiesClient::new(channel(port).await)
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .expect("serve is its own REAPI endpoint")
        .into_inner();
    assert!(caps.execution_capabilities.unwrap().exec_enabled);

    // The build root and its git cache exist after start.
    assert!(dir
        .path()
        .join("build-root/repositories/generation-0/git/HEAD")
        .is_file());

    server.shutdown().await.unwrap();
    assert!(
        !dir.path().join("info.json").exists(),
        "info file removed on shutdown"
    );
    assert!(
        !dir.path().join("jserve.pid").exists(),
        "pid file removed on shutdown"
    );
}

#[tokio::test]
async fn configured_endpoint_is_advertised_as_json_string() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        json!({"execution endpoint": {"address": "re.example:8980", "client address": "re.public:443",
                                      "instance name": "main", "compatible": true}}),
    );
    let server = start(&config).await;
    let mut client = ConfigurationClient::new(channel(server.addr.port()).await);
    let endpoint = client
        .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(endpoint.address, "\"re.public:443\"");
    assert_eq!(endpoint.remote_instance_name, "main");
    assert!(
        client
            .compatibility(CompatibilityRequest {})
            .await
            .unwrap()
            .into_inner()
            .compatible
    );
    server.shutdown().await.unwrap();

    // Without a client address the endpoint's own address is advertised.
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        json!({"execution endpoint": {"address": "re.example:8980"}}),
    );
    let server = start(&config).await;
    let mut client = ConfigurationClient::new(channel(server.addr.port()).await);
    let endpoint = client
        .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(endpoint.address, "\"re.example:8980\"");
    assert!(
        !client
            .compatibility(CompatibilityRequest {})
            .await
            .unwrap()
            .into_inner()
            .compatible
    );
    // With an external endpoint jserve serves no REAPI of its own.
    use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
    let err =
        reapi::capabilities_client::CapabilitiesClient::new(channel(server.addr.port()).await)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn serve_target_without_a_key_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config_in(dir.path(), json!({}))).await;
    let ch = channel(server.addr.port()).await;
    let status = TargetClient::new(ch)
        .serve_target(ServeTargetRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("key"), "{}", status.message());
    server.shutdown().await.unwrap();
}

/// The serve services are NOT_SERVING while the external endpoint does not
/// answer, and SERVING again when it is back; the REAPI of that endpoint is
/// not jserve's to report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_external_endpoint() {
    use jserve::digest::HashFunction;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = common::reapi::start_execute(HashFunction::GitSha1, 1).await;
    let port = endpoint.server.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config_in(
        dir.path(),
        json!({"execution endpoint": {"address": format!("127.0.0.1:{port}"),
                                      "health interval": 0.05}}),
    ))
    .await;
    let mut health = HealthClient::new(channel(server.addr.port()).await);
    let names = [
        "",
        "justbuild.just_serve.Configuration",
        "justbuild.just_serve.SourceTree",
        "justbuild.just_serve.Target",
    ];
    // Each name's status once all agree on `want`, within 20 s.
    let mut settle = async |want: i32| {
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        loop {
            let mut statuses = Vec::new();
            for name in names {
                let request = HealthCheckRequest {
                    service: name.into(),
                };
                statuses.push(health.check(request).await.unwrap().into_inner().status);
            }
            if statuses.iter().all(|s| *s == want) || std::time::Instant::now() > deadline {
                return statuses;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    assert_eq!(settle(SERVING).await, [SERVING; 4]);
    endpoint.server.shutdown().await.unwrap();
    assert_eq!(settle(NOT_SERVING).await, [NOT_SERVING; 4]);
    let back = common::reapi::start_execute_at(HashFunction::GitSha1, 1, None, port).await;
    assert_eq!(settle(SERVING).await, [SERVING; 4]);
    back.server.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config_in(dir.path(), json!({}))).await;
    let ch = channel(server.addr.port()).await;
    let mut health = HealthClient::new(ch.clone());
    // Serve as its own endpoint: the REAPI services are served too.
    for service in [
        "justbuild.just_serve.Configuration",
        "justbuild.just_serve.SourceTree",
        "justbuild.just_serve.Target",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.Execution",
        "google.bytestream.ByteStream",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service} is SERVING");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "justbuild.just_serve.SourceTree",
        "justbuild.just_serve.Target",
        "justbuild.just_serve.Configuration",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    server.shutdown().await.unwrap();
}

async fn tls_channel(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(TIMEOUT)
        .connect()
        .await
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let files = [
        ("ca.crt", &pki.ca),
        ("server.crt", &pki.server_cert),
        ("server.key", &pki.server_key),
    ];
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let config = config_in(
        dir.path(),
        json!({"authentication": {"ca cert": loc(&dir.path().join("ca.crt"))},
               "remote service": {"server cert": loc(&dir.path().join("server.crt")),
                                  "server key": loc(&dir.path().join("server.key"))}}),
    );
    let server = start(&config).await;
    let port = server.addr.port();

    // With a client certificate signed by the CA: served.
    let ch = tls_channel(port, &pki.ca, Some((&pki.client_cert, &pki.client_key)))
        .await
        .expect("TLS connection with client certificate");
    let compat = ConfigurationClient::new(ch)
        .compatibility(CompatibilityRequest {})
        .await
        .expect("served over TLS");
    assert!(!compat.into_inner().compatible);

    // Without a client certificate: refused (the handshake or the first call fails).
    let refused = match tls_channel(port, &pki.ca, None).await {
        Err(_) => true,
        Ok(ch) => ConfigurationClient::new(ch)
            .compatibility(CompatibilityRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without certificate must be refused");

    // Plain-text clients get no answer either.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(ConfigurationClient::new(ch)
            .compatibility(CompatibilityRequest {})
            .await
            .is_err());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_without_ca_serves_any_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    std::fs::write(dir.path().join("server.crt"), &pki.server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.server_key).unwrap();
    let config = config_in(
        dir.path(),
        json!({"remote service": {"server cert": loc(&dir.path().join("server.crt")),
                                  "server key": loc(&dir.path().join("server.key"))}}),
    );
    let server = start(&config).await;
    let ch = tls_channel(server.addr.port(), &pki.ca, None)
        .await
        .expect("TLS connection");
    let r = ConfigurationClient::new(ch)
        .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
        .await
        .expect("served over TLS without client certificate");
    assert_eq!(r.into_inner().address, "");
    server.shutdown().await.unwrap();
}

/// A request over the message limit is RESOURCE_EXHAUSTED, as gRPC servers
/// answer it (tonic alone says OUT_OF_RANGE); "max message size" raises it.
#[tokio::test]
async fn oversized_messages_are_resource_exhausted_and_the_limit_is_configurable() {
    use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
    use bazel_remote_apis::google::bytestream::WriteRequest;
    use jserve::digest::{HashFunction, ObjectKind};
    use jserve::proto::source_tree_client::SourceTreeClient;
    let hf = HashFunction::GitSha1;
    let data = vec![42u8; 5 << 20];
    let digest = hf.digest_bytes(ObjectKind::File, &data).to_wire(hf);
    for (limit, accepted) in [(None, false), (Some(8 << 20), true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = json!({});
        if let Some(limit) = limit {
            extra = json!({"remote service": {"max message size": limit}});
        }
        let server = start(&config_in(dir.path(), extra)).await;
        let ch = channel(server.addr.port()).await;
        let batch = common::reapi::batch_upload_status(ch.clone(), &[(&digest, &data)]).await;
        let write = ByteStreamClient::new(ch.clone())
            .write(tokio_stream::iter([WriteRequest {
                resource_name: format!(
                    "uploads/00000000-0000-4000-8000-000000000001/blobs/{}/{}",
                    digest.hash, digest.size_bytes
                ),
                write_offset: 0,
                finish_write: true,
                data: data.clone(),
            }]))
            .await
            .map(|_| ());
        let serve = SourceTreeClient::new(ch)
            .check_root_tree(CheckRootTreeRequest {
                tree: "x".repeat(5 << 20),
            })
            .await
            .map(|_| ());
        for (what, result) in [("batch", batch), ("ByteStream", write), ("serve", serve)] {
            match (accepted, result) {
                (true, Ok(())) => {}
                (false, Err(status)) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::ResourceExhausted,
                        "{what}: {status:?}"
                    )
                }
                (_, other) => panic!("{what} with limit {limit:?}: {other:?}"),
            }
        }
        server.shutdown().await.unwrap();
    }
}
