//! The wire: the types generated from `proto/` that every door shares (the gRPC
//! services and client, V2, Kafka's protobuf records), and an event's conversion to and
//! from them. The domain below never sees these; each door converts at its edge.

mod event;

/// Generated from `proto/streamscore.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("streamscore.v1");
}

/// Generated from `proto/grpc_predict_v2.proto` (the Open Inference Protocol).
pub mod v2pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

/// The descriptor set served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("streamscore_descriptor");
