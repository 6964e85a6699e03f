//! The guide's text protocol (`kv_server`): lines in, lines out, as a person types them into
//! telnet or `nc`. Sans-IO: it splits bytes into lines, parses a line into a command and
//! encodes an answer; it knows no socket and no node (the listener is `node::listen_text`).
//!
//! ```text
//! CREATE shopping        ->  OK
//! PUT shopping milk 1    ->  OK
//! GET shopping milk      ->  1
//!                            OK
//! DELETE shopping milk   ->  OK
//! ```
//!
//! As in the guide: words are split on whitespace, so keys and values hold none; commands are
//! upper case; a line that does not parse answers `UNKNOWN COMMAND`; a bucket never created
//! answers `NOT FOUND`; GET of a missing key answers an empty line and `OK`; DELETE of a
//! missing key answers `OK`. What the guide's server could not meet (a routing failure, an
//! owner that cannot be reached, a key over the limit) answers one line, `ERROR <reason>`.
//! Lines end in `\r\n`; a bare `\n` is taken too.

use bytes::BytesMut;

use crate::wire::{BucketOp, MAX_VALUE, RemoteError, Reply};

/// The longest line taken, without its line end: a PUT of the largest value, with room for
/// the command, a bucket name and a key of their largest sizes. A longer line is answered
/// with an error, and the connection is closed (it cannot be told where the next line starts
/// without reading all of this one).
pub const MAX_LINE: usize = MAX_VALUE + 4096;

/// One command of the guide's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Create {
        bucket: Vec<u8>,
    },
    Put {
        bucket: Vec<u8>,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        bucket: Vec<u8>,
        key: Vec<u8>,
    },
    Delete {
        bucket: Vec<u8>,
        key: Vec<u8>,
    },
}

/// A line that is none of the guide's commands; answered [`UNKNOWN_COMMAND`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unknown;

pub const UNKNOWN_COMMAND: &[u8] = b"UNKNOWN COMMAND\r\n";

/// What a command's answer is encoded as: the guide answers GET and DELETE of a missing key
/// unlike the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Create,
    Put,
    Get,
    Delete,
}

impl Command {
    /// The bucket request this command makes, and how its answer is encoded.
    pub fn into_request(self) -> (Vec<u8>, BucketOp, Kind) {
        match self {
            Command::Create { bucket } => (bucket, BucketOp::Create, Kind::Create),
            // Only CREATE makes a bucket, as in the guide.
            Command::Put { bucket, key, value } => (bucket, BucketOp::PutExisting { key, value }, Kind::Put),
            Command::Get { bucket, key } => (bucket, BucketOp::Get { key }, Kind::Get),
            Command::Delete { bucket, key } => (bucket, BucketOp::Delete { key }, Kind::Delete),
        }
    }

    /// The line that says this command (without its line end).
    pub fn to_line(&self) -> Vec<u8> {
        let words: Vec<&[u8]> = match self {
            Command::Create { bucket } => vec![b"CREATE", bucket],
            Command::Put { bucket, key, value } => vec![b"PUT", bucket, key, value],
            Command::Get { bucket, key } => vec![b"GET", bucket, key],
            Command::Delete { bucket, key } => vec![b"DELETE", bucket, key],
        };
        words.join(&b' ')
    }
}

/// Parses one line (without its line end), as the guide's `KVServer.Command.parse/1` does:
/// split on whitespace, then match the words.
pub fn parse(line: &[u8]) -> Result<Command, Unknown> {
    let words: Vec<&[u8]> = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .take(5) // more than any command has: enough to tell it is none
        .collect();
    let word = |w: &[u8]| w.to_vec();
    match words.as_slice() {
        [b"CREATE", bucket] => Ok(Command::Create { bucket: word(bucket) }),
        [b"PUT", bucket, key, value] => Ok(Command::Put {
            bucket: word(bucket),
            key: word(key),
            value: word(value),
        }),
        [b"GET", bucket, key] => Ok(Command::Get {
            bucket: word(bucket),
            key: word(key),
        }),
        [b"DELETE", bucket, key] => Ok(Command::Delete {
            bucket: word(bucket),
            key: word(key),
        }),
        _ => Err(Unknown),
    }
}

/// A line longer than [`MAX_LINE`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "ERROR line too long: lines are at most {max} bytes (a value is at most {MAX_VALUE} bytes); closing the connection"
)]
pub struct LineTooLong {
    pub max: usize,
}

impl LineTooLong {
    /// The answer line that says so.
    pub fn answer(&self) -> Vec<u8> {
        format!("{self}\r\n").into_bytes()
    }
}

/// Splits a byte buffer into lines, remembering how far it has looked, so that a long line
/// arriving in many pieces is scanned once.
#[derive(Debug)]
pub struct Lines {
    max: usize,
    /// Bytes at the front of the buffer known to hold no line end.
    scanned: usize,
}

impl Lines {
    /// Lines of at most `max` bytes, without their line end.
    pub fn new(max: usize) -> Self {
        Self { max, scanned: 0 }
    }

    /// The next whole line at the front of `buf`, taken off it without its line end (`\n`,
    /// and a `\r` before it); `None` until one is whole. An error once the line is over the
    /// limit, whether or not its end has come.
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineTooLong> {
        let end = buf[self.scanned.min(buf.len())..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|at| self.scanned + at);
        let Some(end) = end else {
            self.scanned = buf.len();
            if buf.len() > self.max + 1 {
                // (+1: a `\r` that may still be followed by its `\n`.)
                return Err(LineTooLong { max: self.max });
            }
            return Ok(None);
        };
        self.scanned = 0;
        let mut line = buf.split_to(end + 1);
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        if line.len() > self.max {
            return Err(LineTooLong { max: self.max });
        }
        Ok(Some(line))
    }
}

/// Appends the guide's answer to a `kind` command to `out`.
pub fn encode_answer(kind: Kind, answer: Result<Reply, RemoteError>, out: &mut Vec<u8>) {
    match (kind, answer) {
        (Kind::Get, Ok(Reply::Value(value))) => {
            out.extend_from_slice(&value);
            out.extend_from_slice(b"\r\nOK\r\n");
        }
        (Kind::Get, Err(RemoteError::KeyNotFound { .. })) => out.extend_from_slice(b"\r\nOK\r\n"),
        (Kind::Delete, Err(RemoteError::KeyNotFound { .. })) => out.extend_from_slice(b"OK\r\n"),
        (Kind::Create | Kind::Put | Kind::Delete, Ok(Reply::Done)) => out.extend_from_slice(b"OK\r\n"),
        (_, Err(RemoteError::BucketNotFound { .. })) => out.extend_from_slice(b"NOT FOUND\r\n"),
        (_, Err(e)) => error_line(&e.to_string(), out),
        (_, Ok(reply)) => error_line(&format!("unexpected answer from the node: {reply:?}"), out),
    }
}

/// `ERROR <reason>` on one line, whatever the reason holds.
fn error_line(reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ERROR ");
    out.extend(reason.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_bytes::ByteBuf;

    use super::*;

    fn lines_of(input: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<LineTooLong>, usize) {
        let mut buf = BytesMut::from(input);
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        loop {
            match lines.next_line(&mut buf) {
                Ok(Some(line)) => out.push(line.to_vec()),
                Ok(None) => return (out, None, buf.len()),
                Err(e) => return (out, Some(e), buf.len()),
            }
        }
    }

    #[test]
    fn the_guides_commands_parse() {
        let b = |s: &str| s.as_bytes().to_vec();
        assert_eq!(parse(b"CREATE shopping"), Ok(Command::Create { bucket: b("shopping") }));
        assert_eq!(
            parse(b"PUT shopping milk 1"),
            Ok(Command::Put {
                bucket: b("shopping"),
                key: b("milk"),
                value: b("1")
            })
        );
        assert_eq!(
            parse(b"GET shopping milk"),
            Ok(Command::Get {
                bucket: b("shopping"),
                key: b("milk")
            })
        );
        assert_eq!(
            parse(b"DELETE shopping eggs"),
            Ok(Command::Delete {
                bucket: b("shopping"),
                key: b("eggs")
            })
        );
        // Split on whitespace, as String.split/1 does.
        assert_eq!(parse(b"  GET\tshopping   milk "), parse(b"GET shopping milk"));
    }

    #[test]
    fn anything_else_is_an_unknown_command() {
        for line in [
            &b""[..],
            b"   ",
            b"get shopping milk",
            b"GET shopping",
            b"GET shopping milk extra",
            b"PUT shopping milk",
            b"CREATE",
            b"CREATE a b",
            b"HELLO",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(line), Err(Unknown), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn lines_end_in_crlf_or_a_bare_lf_and_a_partial_line_waits() {
        let (lines, err, left) = lines_of(b"CREATE a\r\nGET a k\nPUT a k", 100);
        assert_eq!(lines, vec![b"CREATE a".to_vec(), b"GET a k".to_vec()]);
        assert_eq!((err, left), (None, 7), "the half-written line stays buffered");
        let (lines, _, _) = lines_of(b"\r\n\n", 100);
        assert_eq!(lines, vec![Vec::<u8>::new(), Vec::new()]);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_before_or_after_its_end_comes() {
        let (lines, err, _) = lines_of(b"ok\r\n0123456789ab", 10);
        assert_eq!(lines, vec![b"ok".to_vec()]);
        assert_eq!(err, Some(LineTooLong { max: 10 }));
        let (_, err, _) = lines_of(b"0123456789abc\r\n", 10);
        assert_eq!(err, Some(LineTooLong { max: 10 }));
        // Exactly at the limit, with its `\r` arriving before its `\n`.
        let (lines, err, _) = lines_of(b"0123456789\r", 10);
        assert_eq!((lines.len(), err), (0, None));
        let (lines, err, _) = lines_of(b"0123456789\r\n", 10);
        assert_eq!((lines, err), (vec![b"0123456789".to_vec()], None));
        let said = String::from_utf8(LineTooLong { max: MAX_LINE }.answer()).unwrap();
        assert!(
            said.starts_with("ERROR line too long: lines are at most 8392704 bytes"),
            "{said}"
        );
        assert!(said.ends_with("closing the connection\r\n"), "{said}");
    }

    #[test]
    fn a_line_arriving_in_pieces_is_scanned_once_and_found_whole() {
        let mut buf = BytesMut::new();
        let mut lines = Lines::new(100);
        for piece in [&b"PUT a "[..], b"k ", b"v", b"\r", b"\nGET a k\r\n"] {
            buf.extend_from_slice(piece);
            if let Some(line) = lines.next_line(&mut buf).unwrap() {
                assert_eq!(&line[..], b"PUT a k v");
                break;
            }
        }
        assert_eq!(&lines.next_line(&mut buf).unwrap().unwrap()[..], b"GET a k");
    }

    #[test]
    fn answers_are_the_guides() {
        let answer = |kind, a| {
            let mut out = Vec::new();
            encode_answer(kind, a, &mut out);
            String::from_utf8(out).unwrap()
        };
        let b = || ByteBuf::from(b"shopping".to_vec());
        let k = || ByteBuf::from(b"milk".to_vec());
        assert_eq!(answer(Kind::Create, Ok(Reply::Done)), "OK\r\n");
        assert_eq!(answer(Kind::Put, Ok(Reply::Done)), "OK\r\n");
        assert_eq!(
            answer(Kind::Get, Ok(Reply::Value(ByteBuf::from(b"1".to_vec())))),
            "1\r\nOK\r\n"
        );
        let no_key = || Err(RemoteError::KeyNotFound { bucket: b(), key: k() });
        assert_eq!(answer(Kind::Get, no_key()), "\r\nOK\r\n");
        assert_eq!(answer(Kind::Delete, no_key()), "OK\r\n");
        for kind in [Kind::Put, Kind::Get, Kind::Delete] {
            assert_eq!(
                answer(kind, Err(RemoteError::BucketNotFound { bucket: b() })),
                "NOT FOUND\r\n"
            );
        }
        let unreachable = RemoteError::Unreachable {
            node: "bar".into(),
            addr: "127.0.0.1:1".into(),
            reason: "gone\r\nreally".into(),
        };
        assert_eq!(
            answer(Kind::Get, Err(unreachable)),
            "ERROR node bar (127.0.0.1:1) is unreachable: gone  really\r\n"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the splitter or the parser, and no line is over the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 1usize..64) {
            let (lines, _, _) = lines_of(&bytes, max);
            for line in lines {
                prop_assert!(line.len() <= max);
                let _ = parse(&line);
            }
        }

        /// The guide's commands, with any words, say themselves and parse back.
        #[test]
        fn the_guides_commands_round_trip(
            which in 0..4u8,
            words in proptest::collection::vec("[!-~\u{80}-\u{ff}]{1,12}", 3),
        ) {
            let [bucket, key, value] = [0, 1, 2].map(|i| words[i].as_bytes().to_vec());
            let command = match which {
                0 => Command::Create { bucket },
                1 => Command::Put { bucket, key, value },
                2 => Command::Get { bucket, key },
                _ => Command::Delete { bucket, key },
            };
            let mut input = command.to_line();
            input.extend_from_slice(b"\r\n");
            let (lines, err, left) = lines_of(&input, MAX_LINE);
            prop_assert_eq!((lines.len(), err, left), (1, None, 0));
            prop_assert_eq!(parse(&lines[0]), Ok(command));
        }
    }
}
