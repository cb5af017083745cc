//! A small gRPC client for the CLI, the tests and the benches: connect (plaintext or
//! TLS, with a bearer token and a client certificate when asked), stream events in
//! batches and read features back.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::pb::{self, features_client::FeaturesClient, ingest_client::IngestClient};
use crate::events::RawEvent;

/// Totals over every ack of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    pub batches: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: Vec<pb::Refusal>,
}

/// A connection that sends the caller's credentials with every call.
pub type Connection = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How to reach a server beyond its URL: for `https://` URLs the CA that signed its
/// certificate (default: the public web roots), a client certificate for mTLS, and a
/// bearer token.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// PEM CA certificate the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key (servers with `tls.client_ca`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Bearer token (servers with `[[auth.tokens]]`).
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("'{0}' is not a valid server URL (expected e.g. http://127.0.0.1:50051)")]
    InvalidUrl(String),
    #[error("{0}")]
    Options(String),
    #[error("cannot connect to {url}: {}", with_causes(source))]
    Transport {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Connects without credentials (plaintext, or TLS against the public web roots).
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_with(url, &ClientOptions::default()).await
}

/// `url` with a scheme: an address given without one (`127.0.0.1:50051`) is plaintext,
/// or TLS when certificates are given for it.
fn with_scheme(url: &str, tls: bool) -> String {
    if url.contains("://") {
        url.to_string()
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// `error` and every error below it, as one line: tonic's own message is only
/// "transport error", and the reason (refused, reset, a certificate) is underneath.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(below) = cause {
        let said = below.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = below.source();
    }
    text
}

pub async fn connect_with(url: &str, options: &ClientOptions) -> Result<Connection, ConnectError> {
    let url = &with_scheme(url, options.ca.is_some() || options.cert.is_some());
    let mut endpoint = Channel::from_shared(url.to_string())
        .map_err(|_| ConnectError::InvalidUrl(url.to_string()))?;
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| ConnectError::Options(format!("{what} {}: {e}", path.display())))
    };
    let tls_asked = options.ca.is_some() || options.cert.is_some();
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &options.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca", ca)?)),
            None => tls.with_webpki_roots(),
        };
        match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("--cert", cert)?,
                    read("--key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(ConnectError::Options("--cert and --key go together".into())),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| ConnectError::Transport {
                url: url.to_string(),
                source,
            })?;
    } else if tls_asked {
        return Err(ConnectError::Options(format!(
            "--ca/--cert need an https:// address, not {url}"
        )));
    }
    let authorization = match &options.token {
        Some(token) => Some(
            format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| ConnectError::Options("the token must be printable ASCII".into()))?,
        ),
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Transport {
            url: url.to_string(),
            source,
        })?;
    Ok(InterceptedService::new(
        channel,
        Credentials { authorization },
    ))
}

/// Streams `events` in batches of `batch_size` through `IngestStream`, with up to
/// `in_flight` unacknowledged batches, calling `on_ack` for each ack.
pub async fn stream_events(
    channel: Connection,
    events: impl Iterator<Item = RawEvent> + Send + 'static,
    batch_size: usize,
    in_flight: usize,
    mut on_ack: impl FnMut(&pb::IngestAck),
) -> Result<StreamSummary, tonic::Status> {
    let mut client = IngestClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (sender, receiver) = mpsc::channel(in_flight.max(1));
    let producer = tokio::spawn(async move {
        let mut events = events.peekable();
        let mut batch_id = 0;
        while events.peek().is_some() {
            batch_id += 1;
            let batch: Vec<pb::Event> = events
                .by_ref()
                .take(batch_size.max(1))
                .map(pb::Event::from)
                .collect();
            if sender
                .send(pb::IngestRequest {
                    batch_id,
                    events: batch,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut acks = client
        .ingest_stream(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let mut summary = StreamSummary::default();
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        on_ack(&ack);
        summary.batches += 1;
        summary.accepted += u64::from(ack.accepted);
        summary.duplicates += u64::from(ack.duplicates);
        summary.refused.extend(ack.refused);
    }
    producer.abort();
    Ok(summary)
}

pub async fn get_features(
    channel: Connection,
    entity_type: &str,
    entity_id: &str,
    as_of_ms: Option<i64>,
) -> Result<pb::GetFeaturesResponse, tonic::Status> {
    let request = pb::GetFeaturesRequest {
        entity_type: entity_type.into(),
        entity_id: entity_id.into(),
        feature_names: Vec::new(),
        as_of_ms,
    };
    Ok(FeaturesClient::new(channel)
        .get_features(request)
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_plaintext_or_tls_with_certificates() {
        assert_eq!(
            with_scheme("127.0.0.1:50051", false),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            with_scheme("scoring.internal:443", true),
            "https://scoring.internal:443"
        );
        assert_eq!(with_scheme("https://a:1", false), "https://a:1");
        assert_eq!(with_scheme("http://a:1", true), "http://a:1");
    }

    #[tokio::test]
    async fn a_refused_connection_says_why_not_just_transport_error() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let Err(error) = connect(&format!("127.0.0.1:{port}")).await else {
            panic!("nothing listens there");
        };
        let message = error.to_string();
        // Before: "cannot connect to ...: transport error".
        assert!(
            message.contains(&format!("http://127.0.0.1:{port}")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}
