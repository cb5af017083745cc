//! Server reflection in both versions: v1, and v1alpha, the only one grpcurl 1.8 and
//! several GUI clients speak. Each lists the services and describes a symbol.

mod common;

use common::TestServer;
use tonic_reflection::pb::{v1, v1alpha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reflection_versions_list_the_services_and_describe_a_symbol() {
    let server = TestServer::start(|_| {}).await;

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let requests = [
        v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "streamscore.v1.Scoring".into(),
        ),
    ]
    .map(|request| v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let listed = match answers.message().await.unwrap().unwrap().message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("expected a service list, got {other:?}"),
    };
    for service in [
        "streamscore.v1.Scoring",
        "streamscore.v1.Ingest",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|s| s == service),
            "v1alpha lacks {service}: {listed:?}"
        );
    }
    match answers.message().await.unwrap().unwrap().message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) => assert!(!files.file_descriptor_proto.is_empty()),
        other => panic!("expected the file of streamscore.v1.Scoring, got {other:?}"),
    }

    let mut current =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = current
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection answers")
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "streamscore.v1.Scoring")
            );
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    server.stop().await;
}
