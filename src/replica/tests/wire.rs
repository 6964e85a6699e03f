//! The postcard mirror of raft messages: any message round-trips, garbage never panics.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::RangeId;
use raft::prelude::MessageType;

use super::GEN;
use crate::ids::Generation;
use crate::wire::{
    DecodeError, Frame, LogState, MAX_SNAPSHOT, Probe, RaftEntry, RaftMsg, RaftSnapshot, Removed, SnapshotHead,
};

/// The range of the snapshot and frame tests.
const AZ: RangeId = RangeId {
    first: b'a',
    last: b'z',
};

fn entry() -> impl Strategy<Value = RaftEntry> {
    (
        0u8..3,
        any::<u64>(),
        any::<u64>(),
        vec(any::<u8>(), 0..16),
        vec(any::<u8>(), 0..16),
    )
        .prop_map(|(entry_type, term, index, data, context)| RaftEntry {
            entry_type,
            term,
            index,
            data,
            context,
        })
}

fn snapshot() -> impl Strategy<Value = RaftSnapshot> {
    (
        vec(any::<u8>(), 0..32),
        any::<u64>(),
        any::<u64>(),
        vec(any::<u64>(), 0..4),
        vec(any::<u64>(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(data, index, term, voters, learners, auto_leave)| RaftSnapshot {
            data,
            index,
            term,
            voters: voters.clone(),
            learners,
            voters_outgoing: voters,
            learners_next: vec![],
            auto_leave,
        })
}

/// Any message that may cross the network (the local-only types are refused, tested below).
fn message() -> impl Strategy<Value = RaftMsg> {
    let kinds = prop::sample::select(vec![2u8, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18]);
    let numbers = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    );
    let rest = (
        vec(entry(), 0..3),
        prop::option::of(snapshot()),
        any::<bool>(),
        any::<u64>(),
        vec(any::<u8>(), 0..8),
        any::<i64>(),
    );
    (kinds, numbers, rest).prop_map(
        |(
            msg_type,
            (to, from, term, log_term, index, commit, commit_term),
            (entries, snapshot, reject, hint, context, priority),
        )| {
            RaftMsg {
                msg_type,
                to,
                from,
                term,
                log_term,
                index,
                entries,
                commit,
                commit_term,
                snapshot,
                request_snapshot: hint / 2,
                reject,
                reject_hint: hint,
                context,
                priority,
            }
        },
    )
}

proptest! {
    #[test]
    fn any_frame_round_trips_through_bytes_and_raft(
        msgs in vec((any::<u8>(), any::<u8>(), any::<u64>(), message()), 0..6),
        probes in vec((any::<u8>(), any::<u8>(), any::<u64>(), any::<Option<Option<(u64, u64, u64)>>>().prop_map(|a| a.map(|s| s.map(|(term, last_term, last_index)| LogState { term, last_term, last_index })))), 0..4),
        removed in vec((any::<u8>(), any::<u8>(), any::<u64>(), any::<u64>()), 0..3),
    ) {
        let frame = Frame {
            msgs: msgs.into_iter().map(|(first, last, g, m)| (RangeId { first, last }, Generation(g), m)).collect(),
            probes: probes.into_iter().map(|(first, last, g, answer)| Probe { range: RangeId { first, last }, generation: Generation(g), answer }).collect(),
            removed: removed.into_iter().map(|(first, last, g, applied)| Removed { range: RangeId { first, last }, generation: Generation(g), applied }).collect(),
        };
        let decoded = Frame::decode(&frame.encode()).expect("its own encoding decodes");
        prop_assert_eq!(&decoded, &frame);
        for (_, _, m) in &decoded.msgs {
            let raft = m.to_raft().expect("valid types");
            prop_assert_eq!(&RaftMsg::from_raft(&raft), m);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(frame) = Frame::decode(&bytes) {
            for (_, _, m) in &frame.msgs {
                prop_assert!(m.to_raft().is_ok());
            }
        }
    }
}

#[test]
fn unknown_and_local_types_are_refused() {
    let frame = |msg_type, entry_type| Frame {
        msgs: vec![(
            RangeId {
                first: b'a',
                last: b'm',
            },
            GEN,
            RaftMsg {
                msg_type,
                entries: vec![RaftEntry {
                    entry_type,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )],
        probes: vec![],
        removed: vec![],
    };
    assert_eq!(Frame::decode(&frame(19, 0).encode()), Err(DecodeError::MessageType(19)));
    assert_eq!(Frame::decode(&frame(3, 3).encode()), Err(DecodeError::EntryType(3)));
    assert_eq!(Frame::decode(&frame(0, 0).encode()), Err(DecodeError::LocalOnly(0)));
    let mut trailing = frame(3, 0).encode();
    trailing.push(0);
    assert_eq!(Frame::decode(&trailing), Err(DecodeError::Malformed));
}

#[test]
fn a_snapshot_leaves_its_frame_and_comes_back_whole_from_its_head() {
    let range = AZ;
    let snapshot = |len: usize| RaftMsg {
        msg_type: MessageType::MsgSnapshot as u8,
        to: 2,
        from: 1,
        snapshot: Some(RaftSnapshot {
            data: vec![7; len],
            index: 40,
            term: 3,
            voters: vec![1, 2, 3],
            ..Default::default()
        }),
        ..Default::default()
    };
    let heartbeat = RaftMsg {
        msg_type: MessageType::MsgHeartbeat as u8,
        ..Default::default()
    };
    let mut frame = Frame {
        msgs: vec![
            (range, GEN, heartbeat.clone()),
            (range, GEN, snapshot(10)),
            (range, GEN, snapshot(5000)),
        ],
        probes: vec![],
        removed: vec![],
    };
    let taken = frame.take_snapshots();
    assert_eq!(taken, vec![(range, GEN, snapshot(10)), (range, GEN, snapshot(5000))]);
    assert_eq!(frame.msgs, vec![(range, GEN, heartbeat)]);

    let (head, data) = SnapshotHead::split(range, GEN, taken[1].2.clone());
    assert_eq!((head.len, data.len()), (5000, 5000));
    let decoded = SnapshotHead::decode(&head.encode()).expect("its own head decodes");
    assert_eq!(decoded.into_frame(data).msgs, taken[1..]);
}

#[test]
fn a_snapshot_head_that_is_no_snapshot_or_too_large_is_refused() {
    let range = AZ;
    let head = |msg: RaftMsg, len| {
        SnapshotHead {
            range,
            generation: GEN,
            msg,
            len,
        }
        .encode()
    };
    let empty_snapshot = RaftMsg {
        msg_type: MessageType::MsgSnapshot as u8,
        snapshot: Some(RaftSnapshot::default()),
        ..Default::default()
    };
    let no_snapshot = RaftMsg {
        snapshot: None,
        ..empty_snapshot.clone()
    };
    let data_inside = RaftMsg {
        snapshot: Some(RaftSnapshot {
            data: vec![1],
            ..Default::default()
        }),
        ..empty_snapshot.clone()
    };
    let append = RaftMsg {
        msg_type: MessageType::MsgAppend as u8,
        ..empty_snapshot.clone()
    };
    for msg in [no_snapshot, data_inside, append] {
        assert_eq!(SnapshotHead::decode(&head(msg, 10)), Err(DecodeError::NotASnapshot));
    }
    assert_eq!(
        SnapshotHead::decode(&head(empty_snapshot.clone(), MAX_SNAPSHOT + 1)),
        Err(DecodeError::SnapshotTooLarge(MAX_SNAPSHOT + 1))
    );
    assert!(SnapshotHead::decode(&head(empty_snapshot, MAX_SNAPSHOT)).is_ok());
    assert_eq!(SnapshotHead::decode(&[0xff; 3]), Err(DecodeError::Malformed));
}

#[test]
fn a_frame_over_the_limit_is_sent_as_several_each_message_whole() {
    let range = AZ;
    let append = |n: u8| RaftMsg {
        msg_type: MessageType::MsgAppend as u8,
        entries: vec![RaftEntry {
            data: vec![n; 400],
            ..Default::default()
        }],
        ..Default::default()
    };
    let frame = Frame {
        msgs: (0..5).map(|n| (range, GEN, append(n))).collect(),
        probes: vec![Probe {
            range,
            generation: GEN,
            answer: None,
        }],
        removed: vec![],
    };
    assert_eq!(frame.clone().encode_within(1 << 20), vec![frame.encode()]);
    let parts = frame.clone().encode_within(1000);
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let mut msgs = Vec::new();
    let mut probes = Vec::new();
    for part in &parts {
        assert!(part.len() <= 1000, "a part of {} bytes", part.len());
        let f = Frame::decode(part).expect("each part is a frame");
        msgs.extend(f.msgs);
        probes.extend(f.probes);
    }
    assert_eq!((msgs, probes), (frame.msgs, frame.probes));
}

#[test]
fn byte_fields_encode_as_a_vec_of_bytes_would_so_stored_logs_and_snapshots_read_alike() {
    // serde_bytes only makes the copy faster: stored entries and snapshots written before it
    // read the same.
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(
        postcard::to_allocvec(&bytes).unwrap(),
        postcard::to_allocvec(serde_bytes::Bytes::new(&bytes)).unwrap()
    );
    let mut data = crate::RangeData::new();
    data.entry(b"apple".to_vec())
        .or_default()
        .insert(b"k".to_vec(), bytes.clone());
    data.entry(b"kiwi".to_vec()).or_default();
    let encoded = crate::encode_range(&data);
    assert_eq!(encoded, postcard::to_allocvec(&data).unwrap());
    assert_eq!(crate::decode_range(&encoded), Some(data));
    assert_eq!(crate::decode_range(&[0xff, 0xff]), None);
    let put = crate::Command::Put {
        bucket: b"b".to_vec(),
        key: b"k".to_vec(),
        value: bytes.clone(),
    };
    #[derive(serde::Serialize)]
    enum Plain {
        Put {
            bucket: Vec<u8>,
            key: Vec<u8>,
            value: Vec<u8>,
        },
    }
    let plain = Plain::Put {
        bucket: b"b".to_vec(),
        key: b"k".to_vec(),
        value: bytes,
    };
    assert_eq!(put.encode(), postcard::to_allocvec(&plain).unwrap());
}
