//! Ingest requests that stay encoded until they are off the request runtime.
//!
//! Decoding a 10,000-event batch (a `String` per map key and value) takes milliseconds of
//! one CPU. Done inside tonic's decoder it runs on a runtime worker, and every `Score`
//! that lands on that worker meanwhile waits: on a 2-core machine two producers sending
//! such batches back to back took `Score` p99 from about 1 ms to 10-14 ms. The `Ingest`
//! server is therefore generated a second time (see `build.rs`) with [`EncodedCodec`],
//! whose requests are the message's bytes ([`EncodedIngest`]); small batches are decoded
//! where they are (cheaper than a thread hop) and large ones on a thread of their own.

use std::marker::PhantomData;

use bytes::{Buf, Bytes};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::pb;
use crate::background::Background;
use crate::events::RawEvent;

/// The `Ingest` server taking [`EncodedIngest`] requests.
pub mod server {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(
        env!("OUT_DIR"),
        "/encoded_ingest/streamscore.v1.rs"
    ));
}

/// Encoded batches up to this size are decoded on the runtime: at about 30 bytes an
/// event that is a few hundred events, tens of microseconds of work.
const DECODE_IN_PLACE_BYTES: usize = 32 << 10;

/// Batches up to this many events are freed where they are (as cheap as the hop).
const DISPOSE_IN_PLACE_EVENTS: usize = 1_000;

/// An `IngestRequest` as it came off the wire.
#[derive(Debug, Clone)]
pub struct EncodedIngest {
    bytes: Bytes,
}

impl EncodedIngest {
    pub fn new(bytes: Bytes) -> EncodedIngest {
        EncodedIngest { bytes }
    }

    /// Its encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The request, or INVALID_ARGUMENT if it is not a valid `IngestRequest`.
    pub fn decode(self) -> Result<pb::IngestRequest, Status> {
        prost::Message::decode(self.bytes).map_err(|error| {
            Status::invalid_argument(format!("failed to decode Protobuf message: {error}"))
        })
    }
}

/// Where large batches are decoded: one thread beside the engine's writer, so decoding
/// the next batch overlaps applying this one.
pub struct IngestDecoder {
    thread: Background,
}

impl IngestDecoder {
    /// Normal priority, like the writer it feeds: nice 10 for both moved `Score` p99
    /// beside heavy ingest only within run-to-run noise (2.6-3.9x of alone either way)
    /// and took 10-30% from large-batch ingest (`cargo bench --bench score_load`).
    pub fn start(cpus: &[usize]) -> std::io::Result<IngestDecoder> {
        Ok(IngestDecoder {
            thread: Background::start_on("streamscore-decode", 0, cpus)?,
        })
    }

    /// Frees a submitted batch: a large one on the decoding thread, which built it (a
    /// 10,000-event batch holds a map per event; freeing it takes milliseconds, which
    /// on a runtime thread would delay the `Score` calls queued behind it, and on the
    /// writer cost 20% of large-batch ingest), a small one here.
    pub fn dispose(&self, events: Vec<RawEvent>) {
        if events.len() > DISPOSE_IN_PLACE_EVENTS {
            self.thread.detach(move || drop(events));
        }
    }

    /// Decodes `request` and turns it into `convert`'s result, off the runtime when it
    /// is large.
    pub async fn decode<T: Send + 'static>(
        &self,
        request: EncodedIngest,
        convert: impl FnOnce(pb::IngestRequest) -> T + Send + 'static,
    ) -> Result<T, Status> {
        if request.len() <= DECODE_IN_PLACE_BYTES {
            return request.decode().map(convert);
        }
        self.thread
            .run(move || request.decode().map(convert))
            .await
            .map_err(|stopped| Status::internal(format!("ingest decoding: {stopped}")))?
    }
}

/// tonic's codec for the encoded `Ingest` server: answers are encoded with prost as
/// usual; requests are handed over as their bytes.
#[derive(Debug)]
pub struct EncodedCodec<T> {
    answer: PhantomData<T>,
}

impl<T> Default for EncodedCodec<T> {
    fn default() -> Self {
        EncodedCodec {
            answer: PhantomData,
        }
    }
}

impl<T: prost::Message + Send + 'static> Codec for EncodedCodec<T> {
    type Encode = T;
    type Decode = EncodedIngest;
    type Encoder = ProstEncoder<T>;
    type Decoder = KeepEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeepEncoded
    }
}

/// Takes a request's bytes as they are (the buffer is split off, not copied).
#[derive(Debug, Default)]
pub struct KeepEncoded;

impl Decoder for KeepEncoded {
    type Item = EncodedIngest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<EncodedIngest>, Status> {
        Ok(Some(EncodedIngest::new(buf.copy_to_bytes(buf.remaining()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(events: usize) -> pb::IngestRequest {
        pb::IngestRequest {
            batch_id: 7,
            events: (0..events)
                .map(|i| pb::Event {
                    event_id: format!("e{i}"),
                    event_type: "payment".into(),
                    event_time_ms: 1_700_000_000_000 + i as i64,
                    entities: [("user".to_string(), format!("u{i}"))].into(),
                    numbers: [("amount".to_string(), 12.5)].into(),
                    strings: Default::default(),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn small_and_large_batches_decode_to_what_was_sent() {
        let decoder = IngestDecoder::start(&[]).expect("decode thread");
        for events in [0, 3, 20_000] {
            let sent = batch(events);
            let bytes = Bytes::from(prost::Message::encode_to_vec(&sent));
            let large = bytes.len() > DECODE_IN_PLACE_BYTES;
            assert_eq!(large, events == 20_000, "both paths are exercised");
            let got = decoder
                .decode(EncodedIngest::new(bytes), |request| request)
                .await
                .expect("decodes");
            assert_eq!(got, sent);
        }
    }

    #[tokio::test]
    async fn garbage_is_an_invalid_argument_on_either_path() {
        let decoder = IngestDecoder::start(&[]).expect("decode thread");
        // Field 2 (events) declared 100 bytes long with none following; then the same
        // lie after enough padding (field 1 varints) to take the large path.
        let short = vec![0x12, 100];
        let mut long = [0x08, 0x01].repeat(DECODE_IN_PLACE_BYTES);
        long.extend_from_slice(&short);
        for bytes in [short, long] {
            let status = decoder
                .decode(EncodedIngest::new(Bytes::from(bytes)), |request| request)
                .await
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("failed to decode"), "{status:?}");
        }
    }
}
