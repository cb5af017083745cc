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

/// One checksummed record, its payload not decoded yet.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    Record {
        seq: u64,
        payload: &'a [u8],
        bytes: usize,
    },
    End,
    Corrupt(String),
}

/// Checks the record at the start of `bytes` (length, checksum) without decoding it.
pub(crate) fn decode_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.is_empty() {
        return Frame::End;
    }
    if bytes.len() < HEADER_BYTES {
        return Frame::Corrupt(format!(
            "torn header ({} of {HEADER_BYTES} bytes)",
            bytes.len()
        ));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_PAYLOAD_BYTES {
        return Frame::Corrupt(format!("impossible record length {len}"));
    }
    let total = HEADER_BYTES + len;
    if bytes.len() < total {
        return Frame::Corrupt(format!("torn record ({} of {total} bytes)", bytes.len()));
    }
    if crc32fast::hash(&bytes[8..total]) != crc {
        return Frame::Corrupt("checksum mismatch".into());
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&bytes[8..16]);
    Frame::Record {
        seq: u64::from_le_bytes(seq_bytes),
        payload: &bytes[HEADER_BYTES..total],
        bytes: total,
    }
}

/// Decodes the record at the start of `bytes`, payload included.
/// Decodes the record at the start of `bytes`, payload included.
#[cfg(test)]
fn decode(bytes: &[u8]) -> Result<Option<(u64, RawEvent, usize)>, String> {
    match decode_frame(bytes) {
        Frame::End => Ok(None),
        Frame::Corrupt(reason) => Err(reason),
        Frame::Record {
            seq,
            payload,
            bytes,
        } => postcard::from_bytes(payload)
            .map(|event| Some((seq, event, bytes)))
            .map_err(|e| format!("undecodable payload: {e}")),
    }
}

/// After damage at the start of `bytes`, finds the first valid record behind it whose
/// sequence number is plausible (`next` or later, but no further than the bytes could
/// hold): its offset, its sequence number, and how many valid records run from there.
pub(crate) fn resync(bytes: &[u8], next: u64) -> Option<(usize, u64, u64)> {
    let highest = next.saturating_add(bytes.len() as u64 / HEADER_BYTES as u64 + 1);
    (1..bytes.len().saturating_sub(HEADER_BYTES - 1)).find_map(|at| {
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&bytes[at + 8..at + 16]);
        let seq = u64::from_le_bytes(seq_bytes);
        // The sequence check first: it rules out almost every offset without a checksum.
        if seq < next || seq > highest {
            return None;
        }
        let Frame::Record { .. } = decode_frame(&bytes[at..]) else {
            return None;
        };
        let mut count = 0;
        let mut offset = at;
        while let Frame::Record { bytes: used, .. } = decode_frame(&bytes[offset..]) {
            count += 1;
            offset += used;
        }
        Some((at, seq, count))
    })
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
        let (seq, first, bytes) = decode(&buffer).unwrap().expect("first record");
        assert_eq!((seq, first.event_id.as_str()), (7, "a"));
        let (seq, second, _) = decode(&buffer[bytes..]).unwrap().expect("second record");
        assert_eq!((seq, second), (8, event("b")));

        assert!(decode(&buffer[..bytes - 1]).is_err());
        assert!(decode(&buffer[..5]).is_err());
        let mut flipped = buffer.clone();
        flipped[bytes - 2] ^= 0x40;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        assert_eq!(decode(&[]), Ok(None));
    }

    #[test]
    fn resync_finds_the_first_valid_record_after_damage_at_every_offset() {
        let mut buffer = Vec::new();
        let mut starts = Vec::new();
        for seq in 1..=5 {
            starts.push(buffer.len());
            encode(&mut buffer, seq, &event(&format!("e{seq}"))).unwrap();
        }
        // Damage anywhere in record 2: resync from its start finds record 3 and the two
        // after it.
        for at in starts[1]..starts[2] {
            let mut damaged = buffer.clone();
            damaged[at] ^= 0x01;
            let (offset, seq, count) = resync(&damaged[starts[1]..], 2).expect("resync");
            assert_eq!(
                (starts[1] + offset, seq, count),
                (starts[2], 3, 3),
                "flip at {at}"
            );
        }
        assert_eq!(
            resync(&buffer[starts[4]..], 5),
            None,
            "nothing after the last"
        );
    }
}
