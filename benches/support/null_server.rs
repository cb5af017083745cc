//! Do-nothing servers on streamscore's own protos: the framework's speed, against which
//! the real server's `Score`, V2 `ModelInfer` and REST `infer` are measured side by side.
//! Each answers every call at once with a fixed answer captured from the real server
//! (so both put the same bytes on the wire); plain tonic and axum, no layers.

use axum::Router;
use axum::routing::post;
use streamscore::api::pb::{self, scoring_server::Scoring, scoring_server::ScoringServer};
use streamscore::api::v2pb::{
    self, grpc_inference_service_server::GrpcInferenceService,
    grpc_inference_service_server::GrpcInferenceServiceServer,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// What the null servers answer.
#[derive(Clone)]
pub struct Answers {
    pub score: pb::ScoreResponse,
    pub infer: v2pb::ModelInferResponse,
    pub rest_infer: String,
}

struct NullScoring(pb::ScoreResponse);

#[tonic::async_trait]
impl Scoring for NullScoring {
    async fn score(
        &self,
        _: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn score_candidates(
        &self,
        _: Request<pb::ScoreCandidatesRequest>,
    ) -> Result<Response<pb::ScoreCandidatesResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn recommend(
        &self,
        _: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
}

struct NullInference(v2pb::ModelInferResponse);

#[tonic::async_trait]
impl GrpcInferenceService for NullInference {
    async fn server_live(
        &self,
        _: Request<v2pb::ServerLiveRequest>,
    ) -> Result<Response<v2pb::ServerLiveResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn server_ready(
        &self,
        _: Request<v2pb::ServerReadyRequest>,
    ) -> Result<Response<v2pb::ServerReadyResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn model_ready(
        &self,
        _: Request<v2pb::ModelReadyRequest>,
    ) -> Result<Response<v2pb::ModelReadyResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn server_metadata(
        &self,
        _: Request<v2pb::ServerMetadataRequest>,
    ) -> Result<Response<v2pb::ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn model_metadata(
        &self,
        _: Request<v2pb::ModelMetadataRequest>,
    ) -> Result<Response<v2pb::ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn model_infer(
        &self,
        _: Request<v2pb::ModelInferRequest>,
    ) -> Result<Response<v2pb::ModelInferResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// Serves the null gRPC services on `grpc` and the null REST `infer` on `http` until
/// the runtime ends.
pub fn spawn(answers: Answers, grpc: TcpListener, http: TcpListener) {
    let Answers {
        score,
        infer,
        rest_infer,
    } = answers;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ScoringServer::new(NullScoring(score)))
            .add_service(GrpcInferenceServiceServer::new(NullInference(infer)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await
            .expect("null gRPC server runs");
    });
    let rest = Router::new().route(
        "/v2/models/{name}/infer",
        post(move || {
            let body = rest_infer.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(async move {
        axum::serve(http, rest)
            .await
            .expect("null REST server runs");
    });
}
