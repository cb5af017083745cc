//! One log record: `len: u32 | crc32: u32 | seq: u64 | payload`, little endian, where
//! the CRC covers the sequence number and the payload (a postcard-encoded `RawEvent`).

use crate::events::RawEvent;

pub(crate) const HEADER_BYTES: usize = 16;
/// Larger lengths can only be corruption: an event is far smaller than this.
const MAX_PAYLOAD_BYTES: usize = 16 << 20;

pub(crate) fn encode(
    buffer: &mut Vec<u8>,
    seq: u64,
    event: &RawEvent,
) -> Result<(), postcard::Error> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER_BYTES]);
    *buffer = postcard::to_extend(event, std::mem::take(buffer))?;
    let payload_len = buffer.len() - start - HEADER_BYTES;
    buffer[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buffer[start + 8..]);
    buffer[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buffer[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(())
}

#[derive(Debug)]
pub(crate) enum Decoded {
    Record {
        seq: u64,
        event: RawEvent,
        bytes: usize,
    },
    End,
    Corrupt(String),
}

pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    if bytes.is_empty() {
        return Decoded::End;
    }
    if bytes.len() < HEADER_BYTES {
        return Decoded::Corrupt(format!(
            "torn header ({} of {HEADER_BYTES} bytes)",
            bytes.len()
        ));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_PAYLOAD_BYTES {
        return Decoded::Corrupt(format!("impossible record length {len}"));
    }
    let total = HEADER_BYTES + len;
    if bytes.len() < total {
        return Decoded::Corrupt(format!("torn record ({} of {total} bytes)", bytes.len()));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..total]);
    if hasher.finalize() != crc {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&bytes[8..16]);
    match postcard::from_bytes(&bytes[HEADER_BYTES..total]) {
        Ok(event) => Decoded::Record {
            seq: u64::from_le_bytes(seq_bytes),
            event,
            bytes: total,
        },
        Err(error) => Decoded::Corrupt(format!("undecodable payload: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> RawEvent {
        let mut event = RawEvent {
            event_id: id.into(),
            event_type: "payment".into(),
            event_time_ms: 42,
            ..Default::default()
        };
        event.entities.insert("card".into(), "c1".into());
        event.numbers.insert("amount".into(), 12.5);
        event
    }

    #[test]
    fn records_round_trip_and_detect_damage() {
        let mut buffer = Vec::new();
        encode(&mut buffer, 7, &event("a")).unwrap();
        encode(&mut buffer, 8, &event("b")).unwrap();
        let Decoded::Record {
            seq,
            event: first,
            bytes,
        } = decode(&buffer)
        else {
            panic!("first record")
        };
        assert_eq!((seq, first.event_id.as_str()), (7, "a"));
        let Decoded::Record {
            seq, event: second, ..
        } = decode(&buffer[bytes..])
        else {
            panic!("second record")
        };
        assert_eq!((seq, second), (8, event("b")));

        assert!(matches!(decode(&buffer[..bytes - 1]), Decoded::Corrupt(_)));
        assert!(matches!(decode(&buffer[..5]), Decoded::Corrupt(_)));
        let mut flipped = buffer.clone();
        flipped[bytes - 2] ^= 0x40;
        assert!(
            matches!(decode(&flipped), Decoded::Corrupt(reason) if reason.contains("checksum"))
        );
        assert!(matches!(decode(&[]), Decoded::End));
    }
}
