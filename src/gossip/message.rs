//! Gossip messages and their encoding: postcard behind a two-byte magic and a version byte.
//!
//! Pure data; the driver encodes what `poll_transmit` hands it and decodes what arrives, and
//! drops whatever `Message::decode` refuses.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::NodeName;
use crate::table::Table;

/// The largest datagram the core ever hands out (`Transmit::reliable == false`).
pub const MAX_DATAGRAM: usize = 1200;
/// The largest message on a stream (push-pull state, joins, big tables).
pub const MAX_RELIABLE: usize = 16 * 1024 * 1024;
/// Bumped on any incompatible change to [`Message`].
pub const GOSSIP_VERSION: u8 = 1;
/// Every encoded message starts with these bytes, so junk is refused before postcard sees it.
const MAGIC: [u8; 2] = *b"kg";
const PREFIX_LEN: usize = MAGIC.len() + 1;

/// Who a process is: its name, where it listens, and which start of the process this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: NodeName,
    pub addr: SocketAddr,
    /// Fresh for each start of the process; a higher generation supersedes the old process.
    pub generation: u64,
}

/// A shared [`Identity`]. Every member record and every update about a member points at one
/// of these, so cloning an update into a message costs a reference count, not an allocation
/// (10,000 simulated nodes each knowing 10,000 members depend on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident(Arc<Identity>);

impl Ident {
    pub fn new(name: NodeName, addr: SocketAddr, generation: u64) -> Self {
        Self(Arc::new(Identity { name, addr, generation }))
    }

    /// Whether both point at the same shared identity (equal without comparing fields).
    pub(crate) fn ptr_eq(&self, other: &Ident) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Ident {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl Serialize for Ident {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Identity::deserialize(d).map(|i| Self(Arc::new(i)))
    }
}

/// A table shared between the core, its broadcast queue and the messages carrying it.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedTable<T>(pub Arc<T>);

// By hand: a derive would ask `T: Clone`, and cloning shares the table.
impl<T> Clone for SharedTable<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Table> Serialize for SharedTable<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Table> Deserialize<'de> for SharedTable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(|t| Self(Arc::new(t)))
    }
}

/// A member's state; the order is the precedence rank at equal (generation, incarnation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Left => "left",
        }
    }

    /// Alive, or suspected but not yet declared dead: worth sending to.
    pub fn is_live(self) -> bool {
        matches!(self, State::Alive | State::Suspect)
    }

    /// The state in a sentence about a member: "membership says it {}".
    pub fn said(self) -> &'static str {
        said(self.as_str())
    }
}

impl AsRef<str> for State {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A state (or its name, `as_str`, or "unknown" for no member) in a sentence.
pub fn said<S: AsRef<str> + ?Sized>(state: &S) -> &'static str {
    match state.as_ref() {
        "alive" => "is alive",
        "suspect" => "is suspected to have failed",
        "dead" => "is dead",
        "left" => "has left the cluster",
        _ => "is in an unknown state",
    }
}

/// The sender of every message, and its own claim to be alive at `incarnation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: Ident,
    pub incarnation: u64,
}

/// One piece of gossip, piggybacked on probes or sent in dedicated gossip messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "T: Table")]
pub enum Update<T> {
    Alive {
        id: Ident,
        incarnation: u64,
    },
    /// `by` suspects `id`; distinct `by`s confirm a suspicion and shorten it (Lifeguard).
    Suspect {
        id: Ident,
        incarnation: u64,
        by: Ident,
    },
    Dead {
        id: Ident,
        incarnation: u64,
        by: Ident,
    },
    /// Only the member itself says it left; others relay it.
    Left {
        id: Ident,
        incarnation: u64,
    },
    Table(SharedTable<T>),
}

impl<T> Update<T> {
    /// The member the update is about, `None` for a table.
    pub fn subject(&self) -> Option<&Ident> {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => Some(id),
            Update::Table(_) => None,
        }
    }
}

/// A member as it appears in a push-pull full state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub id: Ident,
    pub incarnation: u64,
    pub state: State,
}

/// A full-state exchange: every member this node knows, and its routing table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "T: Table")]
pub struct PushPull<T> {
    pub from: Sender,
    /// Set on a join and echoed in the seed's answer, so the joiner can match it.
    pub join: Option<u32>,
    /// An answer is not answered again.
    pub is_reply: bool,
    pub members: Vec<MemberState>,
    pub table: SharedTable<T>,
}

/// Everything gossip nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "T: Table")]
pub enum Message<T> {
    /// "Are you alive?" Only the node named `target` answers; `reply_reliably` marks the
    /// stream fallback probe, whose ack goes back on a stream too.
    Ping {
        from: Sender,
        seq: u32,
        target: Ident,
        reply_reliably: bool,
        piggyback: Vec<Update<T>>,
    },
    /// The answer to a ping, or a helper's relay of the target's answer to a ping-req.
    Ack {
        from: Sender,
        seq: u32,
        piggyback: Vec<Update<T>>,
    },
    /// A helper's "I asked and the target did not answer" (Lifeguard's nack).
    Nack {
        from: Sender,
        seq: u32,
        piggyback: Vec<Update<T>>,
    },
    /// "Please ping `target` for me and relay its ack with `seq`."
    PingReq {
        from: Sender,
        seq: u32,
        target: Ident,
        piggyback: Vec<Update<T>>,
    },
    /// Dissemination only.
    Gossip { from: Sender, piggyback: Vec<Update<T>> },
    /// Anti-entropy, joins and reconnects (always on a stream).
    PushPull(Box<PushPull<T>>),
    /// The seed refuses a join (on a stream); `token` is the joiner's.
    JoinRefused { from: Sender, token: u32, reason: String },
    /// "I am leaving at my current incarnation; ack with `seq`" (on a stream).
    Leave { from: Sender, seq: u32 },
}

/// Why bytes are not a gossip message. The driver drops such input (and may log it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not start with the gossip magic: not a kvnode gossip message at all.
    #[error("not a kvnode gossip message (bad magic)")]
    BadMagic,
    /// A gossip message from an incompatible version of kvnode.
    #[error("gossip protocol version {got} is not supported (this node speaks {GOSSIP_VERSION})")]
    UnsupportedVersion { got: u8 },
    /// Larger than any message the protocol sends.
    #[error("gossip message of {len} bytes exceeds the {MAX_RELIABLE}-byte limit")]
    TooLarge { len: usize },
    /// The payload does not decode as a message.
    #[error("malformed gossip message: {0}")]
    Malformed(#[from] postcard::Error),
    /// Bytes follow a complete message.
    #[error("{0} stray bytes after a gossip message")]
    TrailingBytes(usize),
    /// A table in the message is not a valid table.
    #[error("gossip message carries an invalid table: {0}")]
    InvalidTable(String),
}

impl<T: Table> Message<T> {
    /// The sender's identity and incarnation.
    pub fn sender(&self) -> &Sender {
        match self {
            Message::Ping { from, .. }
            | Message::Ack { from, .. }
            | Message::Nack { from, .. }
            | Message::PingReq { from, .. }
            | Message::Gossip { from, .. }
            | Message::JoinRefused { from, .. }
            | Message::Leave { from, .. } => from,
            Message::PushPull(pp) => &pp.from,
        }
    }

    /// The piggybacked updates, if this kind of message carries any.
    pub fn piggyback(&self) -> &[Update<T>] {
        match self {
            Message::Ping { piggyback, .. }
            | Message::Ack { piggyback, .. }
            | Message::Nack { piggyback, .. }
            | Message::PingReq { piggyback, .. }
            | Message::Gossip { piggyback, .. } => piggyback,
            _ => &[],
        }
    }

    /// The wire form: magic, version, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.push(GOSSIP_VERSION);
        // Writing into a Vec cannot fail, and every type in a message is one postcard supports.
        postcard::to_extend(self, out).expect("gossip messages always encode")
    }

    /// The length of [`Message::encode`]'s output, computed without allocating.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + encoded_len(self)
    }

    /// Parses the wire form; anything but one well-formed message is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message<T>, DecodeError> {
        if bytes.len() > MAX_RELIABLE + PREFIX_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len() });
        }
        let Some(([m0, m1, version], payload)) = bytes.split_first_chunk::<PREFIX_LEN>() else {
            return Err(DecodeError::BadMagic);
        };
        if [*m0, *m1] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if *version != GOSSIP_VERSION {
            return Err(DecodeError::UnsupportedVersion { got: *version });
        }
        let (msg, rest) = postcard::take_from_bytes::<Message<T>>(payload)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        msg.check_tables().map_err(DecodeError::InvalidTable)?;
        Ok(msg)
    }

    /// Tables decode without the checks their constructor makes (see [`Table::check`]).
    fn check_tables(&self) -> Result<(), String> {
        if let Message::PushPull(pp) = self {
            pp.table.0.check()?;
        }
        for update in self.piggyback() {
            if let Update::Table(t) = update {
                t.0.check()?;
            }
        }
        Ok(())
    }
}

/// The postcard length of any value, counted without allocating.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    // The Size flavor only counts bytes; it fails only where encoding itself would.
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::sim::SimTable;

    type Message = super::Message<SimTable>;
    type Update = super::Update<SimTable>;

    fn two_ranges() -> SimTable {
        SimTable::new(4, "foo", vec![(b'a', b'm', "foo".into()), (b'n', b'z', "bar".into())]).unwrap()
    }

    fn ident(name: &str) -> Ident {
        Ident::new(NodeName::new(name).unwrap(), "127.0.0.1:4000".parse().unwrap(), 7)
    }

    fn sender(name: &str) -> Sender {
        Sender {
            id: ident(name),
            incarnation: 3,
        }
    }

    #[test]
    fn messages_round_trip_and_encoded_len_is_exact() {
        let table = SharedTable(Arc::new(two_ranges()));
        let msgs = [
            Message::Ping {
                from: sender("foo"),
                seq: 9,
                target: ident("bar"),
                reply_reliably: false,
                piggyback: vec![
                    Update::Suspect {
                        id: ident("baz"),
                        incarnation: 1,
                        by: ident("foo"),
                    },
                    Update::Table(table.clone()),
                ],
            },
            Message::PushPull(Box::new(PushPull {
                from: sender("foo"),
                join: Some(5),
                is_reply: false,
                members: vec![MemberState {
                    id: ident("foo"),
                    incarnation: 3,
                    state: State::Left,
                }],
                table,
            })),
            Message::JoinRefused {
                from: sender("bar"),
                token: 5,
                reason: "taken".into(),
            },
        ];
        for msg in msgs {
            let bytes = msg.encode();
            assert_eq!(bytes.len(), msg.encoded_len());
            assert_eq!(Message::decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn undecodable_messages_are_errors_not_panics() {
        let mut rng = SmallRng::seed_from_u64(4);
        let valid = Message::Gossip {
            from: sender("foo"),
            piggyback: vec![Update::Alive {
                id: ident("bar"),
                incarnation: 2,
            }],
        }
        .encode();
        let mut decoded = 0;
        for round in 0..20_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                // Pure noise behind a valid prefix, so postcard itself is exercised.
                let len = rng.random_range(0..300);
                let mut b = vec![b'k', b'g', GOSSIP_VERSION];
                b.extend((0..len).map(|_| rng.random::<u8>()));
                b
            } else {
                // A valid message with a few bytes flipped, truncated or extended.
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                b
            };
            if round % 7 == 0 {
                bytes.truncate(rng.random_range(0..=bytes.len()));
            }
            if Message::decode(&bytes).is_ok() {
                decoded += 1;
            }
        }
        // Some flips land in harmless places (an incarnation's value); most do not.
        assert!(decoded < 10_000, "{decoded} random inputs decoded");
        assert!(matches!(Message::decode(b""), Err(DecodeError::BadMagic)));
        assert!(matches!(Message::decode(b"GET / HTTP/1.1"), Err(DecodeError::BadMagic)));
        assert!(matches!(
            Message::decode(&[b'k', b'g', 99, 0]),
            Err(DecodeError::UnsupportedVersion { got: 99 })
        ));
        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(matches!(Message::decode(&trailing), Err(DecodeError::TrailingBytes(1))));
    }

    #[test]
    fn overlapping_tables_are_refused_at_decode() {
        // A table that could never be built through its constructor, smuggled through serde.
        let good = two_ranges();
        let mut bytes = Message::Gossip {
            from: sender("foo"),
            piggyback: vec![
                Update::Table(SharedTable(Arc::new(good))),
                Update::Alive {
                    id: ident("x"),
                    incarnation: 0,
                },
            ],
        }
        .encode();
        // Entries are (first, last, name); make n-z start at 'a' so it overlaps a-m.
        let pos = bytes.windows(2).position(|w| w == [b'n', b'z']).unwrap();
        bytes[pos] = b'a';
        assert!(matches!(Message::decode(&bytes), Err(DecodeError::InvalidTable(_))));
    }
}
