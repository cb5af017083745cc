//! One cut across the entity records: what lets a scorer read a card and its user as
//! of the same moment of the event stream, though two aggregators write them at two
//! different times.
//!
//! Every input partition the routers read is a *lane*. A routed record carries its
//! event's place in its lane (a *tag*: the lane and the input offset + 1), and the
//! aggregators keep the tag with the event's contributions to the entity. After each
//! transaction a router also writes to every entity partition how far it has routed
//! each lane (a progress marker), so an aggregator knows, per entity partition, the
//! offset through which every event of a lane is in its records, even for a partition
//! the lane's events seldom name. It publishes that; a script in Redis folds every
//! partition's into the tier's *cut*: per lane, the lowest offset all partitions are
//! through.
//!
//! A scorer reads the cut first, then the entities, and leaves out of each entity the
//! events past the cut. An event in the cut is in every record it names (each record
//! read was written after the cut was published); an event past it is left out of
//! every record that holds it. So a card and its user both reflect an event or neither.
//! An event past the cut that an entity already sealed into its tiles cannot be left
//! out: each record says, per lane, the newest event it sealed, and a read that would
//! need to leave out a sealed event fails rather than mix cuts.

use std::collections::BTreeMap;

/// Tags keep the lane in their top bits and the input offset + 1 in the rest. Lane 0
/// is no lane: the tag of a record routed before tags existed (its events are always
/// seen, as they were).
const OFFSET_BITS: u32 = 44;
const LANE_LIMIT: u64 = 1 << (64 - OFFSET_BITS);
/// Partitions per input topic a lane number leaves room for.
const PARTITIONS_PER_TOPIC: u64 = 1 << 14;

/// The lane of input partition `partition` of the `topic_index`-th input topic, or
/// `None` when the numbers do not fit (more than 63 topics or 16,384 partitions).
pub fn lane(topic_index: usize, partition: i32) -> Option<u32> {
    let partition = u64::try_from(partition).ok()?;
    if partition >= PARTITIONS_PER_TOPIC {
        return None;
    }
    let lane = (topic_index as u64)
        .checked_mul(PARTITIONS_PER_TOPIC)?
        .checked_add(partition + 1)?;
    (lane < LANE_LIMIT).then_some(lane as u32)
}

/// The tag of the record at `offset` of lane `lane`, or `None` past 2^44 records.
pub fn tag(lane: u32, offset: i64) -> Option<u64> {
    let through = u64::try_from(offset).ok()?.checked_add(1)?;
    (through < 1 << OFFSET_BITS).then(|| (u64::from(lane) << OFFSET_BITS) | through)
}

/// A tag's lane (0: untagged) and offset + 1.
pub fn split(tag: u64) -> (u32, u64) {
    ((tag >> OFFSET_BITS) as u32, tag & ((1 << OFFSET_BITS) - 1))
}

/// Per lane, an offset + 1: how far something got in each lane. Written as
/// `lane:through` pairs joined by commas (what the Lua scripts read and write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lanes(BTreeMap<u32, u64>);

impl Lanes {
    /// How far lane `lane` got (0: nowhere).
    pub fn through(&self, lane: u32) -> u64 {
        self.0.get(&lane).copied().unwrap_or(0)
    }

    /// Takes `tag` into account: its lane got at least as far as it.
    pub fn raise(&mut self, tag: u64) {
        let (lane, through) = split(tag);
        self.raise_lane(lane, through);
    }

    /// Lane `lane` got at least through `through` (lane 0, no lane, is not kept).
    pub fn raise_lane(&mut self, lane: u32, through: u64) {
        if lane == 0 {
            return;
        }
        let slot = self.0.entry(lane).or_insert(0);
        *slot = (*slot).max(through);
    }

    /// Takes in how far `other` got in each lane.
    pub fn raise_all(&mut self, other: &Lanes) {
        for (lane, through) in other.iter() {
            self.raise_lane(lane, through);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(lane, through)| (*lane, *through))
    }

    pub fn encode(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(lane, through)| format!("{lane}:{through}"))
            .collect();
        pairs.join(",")
    }

    /// `None` when `text` is not a list of `lane:through` pairs.
    pub fn decode(text: &str) -> Option<Lanes> {
        let mut lanes = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (lane, through) = pair.split_once(':')?;
            lanes.insert(lane.parse().ok()?, through.parse().ok()?);
        }
        Some(Lanes(lanes))
    }
}

impl FromIterator<(u32, u64)> for Lanes {
    fn from_iter<I: IntoIterator<Item = (u32, u64)>>(pairs: I) -> Lanes {
        Lanes(pairs.into_iter().collect())
    }
}

/// What a record sealed into its tiles: per lane the newest event, and the newest
/// event time (what the entity was last seen at, without the events still pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub through: Lanes,
    pub newest_ms: i64,
}

impl Default for Sealed {
    fn default() -> Sealed {
        Sealed {
            through: Lanes::default(),
            newest_ms: i64::MIN,
        }
    }
}

impl Sealed {
    /// Takes in an event sealed (or dropped from pending by an expiry).
    pub fn add(&mut self, tag: u64, time_ms: i64) {
        self.through.raise(tag);
        self.newest_ms = self.newest_ms.max(time_ms);
    }

    /// `newest_ms;lanes`, as stored beside the state.
    pub fn encode(&self) -> String {
        format!("{};{}", self.newest_ms, self.through.encode())
    }

    /// `None` when damaged.
    pub fn decode(text: &str) -> Option<Sealed> {
        let (newest_ms, lanes) = text.split_once(';')?;
        Some(Sealed {
            through: Lanes::decode(lanes)?,
            newest_ms: newest_ms.parse().ok()?,
        })
    }
}

/// The tier's cut as published: a version (each publication's is higher) and, per
/// lane, the offset + 1 through which every entity partition's records hold its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    pub version: u64,
    pub through: Lanes,
}

/// A record that sealed into its tiles an event past the cut: it cannot be read as of
/// the cut (the aggregators of other partitions are behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPastCut {
    pub lane: u32,
    pub sealed: u64,
    pub cut: u64,
}

impl Cut {
    /// Whether a read at this cut sees the event tagged `tag`.
    pub fn sees(&self, tag: u64) -> bool {
        let (lane, through) = split(tag);
        lane == 0 || through <= self.through.through(lane)
    }

    /// Whether a record that sealed `sealed` can be read at this cut: every event it
    /// sealed is in the cut (so none it must leave out is in its tiles).
    pub fn check_sealed(&self, sealed: &Sealed) -> Result<(), SealedPastCut> {
        match sealed
            .through
            .iter()
            .find(|(lane, through)| *through > self.through.through(*lane))
        {
            None => Ok(()),
            Some((lane, through)) => Err(SealedPastCut {
                lane,
                sealed: through,
                cut: self.through.through(lane),
            }),
        }
    }

    /// `version;lanes`, as the publishing script writes it. `None` when damaged.
    pub fn decode(text: &str) -> Option<Cut> {
        let (version, lanes) = text.split_once(';')?;
        Some(Cut {
            version: version.parse().ok()?,
            through: Lanes::decode(lanes)?,
        })
    }

    pub fn encode(&self) -> String {
        format!("{};{}", self.version, self.through.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_their_lane_and_offset_apart() {
        let first = lane(0, 0).expect("fits");
        assert_eq!(first, 1, "lane 0 is no lane");
        let other = lane(2, 7).expect("fits");
        assert_ne!(first, other);
        assert_eq!(lane(0, 16_384), None);
        assert_eq!(lane(64, 0), None);
        assert_eq!(lane(0, -1), None);
        assert!(lane(63, 16_383).is_none() || lane(63, 16_383) < Some(1 << 20));
        let t = tag(other, 41).expect("fits");
        assert_eq!(split(t), (other, 42));
        assert_eq!(tag(other, (1 << 44) - 1), None);
        // A tag of before tags existed (an entity partition's offset) has no lane.
        assert_eq!(split(123_456).0, 0);
    }

    #[test]
    fn damaged_texts_decode_to_nothing() {
        for damaged in ["", "7", "x;1:9", "7;1", "7;1:x", "7;-1:9", "7;1:9:9"] {
            assert_eq!(Cut::decode(damaged), None, "{damaged:?}");
            assert_eq!(Sealed::decode(damaged), None, "{damaged:?}");
        }
        let cut = Cut::decode("7;1:9,2:4").expect("decodes");
        assert_eq!(Cut::decode(&cut.encode()), Some(cut));
    }

    #[test]
    fn a_cut_sees_what_every_partition_holds_and_no_further() {
        let (a, b) = (lane(0, 0).unwrap(), lane(0, 1).unwrap());
        let cut = Cut {
            version: 3,
            through: [(a, 10)].into_iter().collect(),
        };
        assert!(cut.sees(tag(a, 9).unwrap()), "offset 9 is the 10th record");
        assert!(!cut.sees(tag(a, 10).unwrap()));
        assert!(
            !cut.sees(tag(b, 0).unwrap()),
            "a lane the cut lacks: nothing"
        );
        assert!(cut.sees(77), "untagged: always");
        assert_eq!(Cut::decode(&cut.encode()), Some(cut.clone()));
        assert_eq!(
            Cut::decode("3;"),
            Some(Cut {
                version: 3,
                ..Cut::default()
            })
        );
        assert_eq!(Cut::decode("x;1:2"), None);
        assert_eq!(Cut::decode("1;1:2,3"), None);

        let mut sealed = Sealed::default();
        sealed.add(tag(a, 9).unwrap(), 500);
        assert_eq!(cut.check_sealed(&sealed), Ok(()));
        sealed.add(tag(a, 4).unwrap(), 400);
        assert_eq!(sealed.through.through(a), 10, "the newest stays");
        assert_eq!(sealed.newest_ms, 500);
        assert_eq!(Sealed::decode(&sealed.encode()), Some(sealed.clone()));
        assert_eq!(
            Sealed::decode(&Sealed::default().encode()),
            Some(Sealed::default())
        );
        assert_eq!(Sealed::decode("1:2"), None);
        sealed.add(tag(b, 0).unwrap(), 450);
        assert_eq!(
            cut.check_sealed(&sealed),
            Err(SealedPastCut {
                lane: b,
                sealed: 1,
                cut: 0
            })
        );
    }
}
