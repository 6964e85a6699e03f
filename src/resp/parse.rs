//! Requests of RESP, Redis's protocol: arrays of bulk strings (what every client sends) and
//! inline commands (what a person types into telnet). Pure: bytes in, arguments out.
//!
//! Every limit is checked on the announced lengths, before a buffer grows for them: a bulk
//! string over [`MAX_BULK`], more than [`MAX_ARGS`] arguments, or a request whose announced
//! size passes [`MAX_REQUEST`] is an error at once, and the connection is closed after its
//! error reply (its byte stream can no longer be trusted to be in step).

use bytes::{Bytes, BytesMut};

use crate::wire;

/// The most arguments one request may carry (command name included).
pub const MAX_ARGS: usize = 1024;
/// The longest bulk string: the value limit (a bucket name or key is shorter still, which the
/// node checks as for any request).
pub const MAX_BULK: usize = wire::MAX_VALUE;
/// The most bytes one request may take on the wire, headers included.
pub const MAX_REQUEST: usize = wire::MAX_FRAME;
/// The most bytes one request may take before the connection has authenticated: enough for
/// `AUTH` and `HELLO`, so that a client without the secret cannot make the node buffer
/// megabytes per connection (Redis limits unauthenticated requests the same way).
pub const MAX_UNAUTHENTICATED: usize = 16 * 1024;
/// The longest inline command, as Redis's own limit.
pub const MAX_INLINE: usize = 64 * 1024;
/// The longest `*N` or `$N` header line: 20 digits and a sign are plenty.
const MAX_HEADER: usize = 32;

/// Why a request cannot be read; the connection is closed after the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An array header that is not a count Redis would take.
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLength,
    /// More than [`MAX_ARGS`] arguments.
    #[error("Protocol error: {0} arguments, more than the {MAX_ARGS} a request may carry")]
    TooManyArgs(u64),
    /// A bulk header that is not a length.
    #[error("Protocol error: invalid bulk length")]
    BadBulkLength,
    /// A bulk string over [`MAX_BULK`].
    #[error("Protocol error: bulk string of {0} bytes, more than the {MAX_BULK}-byte value limit")]
    BulkTooLong(u64),
    /// An array element that is not a bulk string.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by `\r\n`.
    #[error("Protocol error: bulk string not followed by CRLF")]
    MissingCrlf,
    /// The request's announced size passes [`MAX_REQUEST`].
    #[error("Protocol error: request of more than {MAX_REQUEST} bytes")]
    RequestTooLarge,
    /// A request over [`MAX_UNAUTHENTICATED`] before `AUTH`.
    #[error("Protocol error: request of more than {MAX_UNAUTHENTICATED} bytes before AUTH")]
    UnauthenticatedTooLarge,
    /// An inline command longer than [`MAX_INLINE`].
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// A `*N` or `$N` header line too long to hold a count.
    #[error("Protocol error: too big mbulk count string")]
    HeaderTooLong,
    /// An inline command with a quote left open.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Takes the first whole request off the front of `buf`: its arguments, or `None` when
/// `buf` does not hold a whole one yet (nothing is taken then). Empty requests (`*0`, an empty
/// line) are skipped, as Redis does. Bulk arguments share the buffer's memory (no copy).
/// Before the connection has `authenticated`, a request may take [`MAX_UNAUTHENTICATED`] bytes.
pub fn next_request(buf: &mut BytesMut, authenticated: bool) -> Result<Option<Vec<Bytes>>, ParseError> {
    let max = if authenticated {
        MAX_REQUEST
    } else {
        MAX_UNAUTHENTICATED
    };
    loop {
        let Some(parsed) = parse(buf, max)? else {
            return Ok(None);
        };
        let request = buf.split_to(parsed.consumed).freeze();
        if parsed.args.is_empty() {
            continue;
        }
        let args = parsed
            .args
            .into_iter()
            .map(|arg| match arg {
                Arg::At(start, end) => request.slice(start..end),
                Arg::Owned(bytes) => Bytes::from(bytes),
            })
            .collect();
        return Ok(Some(args));
    }
}

/// One argument: where it lies in the request's bytes, or (inline, after unquoting) its own.
#[derive(Debug)]
enum Arg {
    At(usize, usize),
    Owned(Vec<u8>),
}

#[derive(Debug)]
struct Parsed {
    args: Vec<Arg>,
    consumed: usize,
}

fn parse(buf: &[u8], max: usize) -> Result<Option<Parsed>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, max),
        Some(_) => parse_inline(buf),
    }
}

/// The line starting at `at` (without its `\r\n`) and where the next starts, or `None` when it
/// has not all arrived; a header line longer than [`MAX_HEADER`] is an error.
fn header_line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ParseError> {
    let window = &buf[at..buf.len().min(at + MAX_HEADER + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&window[..end], at + end + 2))),
        None if window.len() >= MAX_HEADER + 2 => Err(ParseError::HeaderTooLong),
        None => Ok(None),
    }
}

/// A decimal integer as Redis reads one (an optional `-`, digits, nothing else).
fn integer(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_array(buf: &[u8], max: usize) -> Result<Option<Parsed>, ParseError> {
    let Some((line, mut at)) = header_line(buf, 0)? else {
        return Ok(None);
    };
    let count = integer(&line[1..]).ok_or(ParseError::BadArrayLength)?;
    if count <= 0 {
        // `*0` and `*-1` are empty requests; Redis skips them.
        return Ok(Some(Parsed {
            args: Vec::new(),
            consumed: at,
        }));
    }
    if count as u64 > MAX_ARGS as u64 {
        return Err(ParseError::TooManyArgs(count as u64));
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ParseError::ExpectedBulk(buf[at] as char));
        }
        let Some((line, start)) = header_line(buf, at)? else {
            return Ok(None);
        };
        let len = integer(&line[1..]).ok_or(ParseError::BadBulkLength)?;
        if len < 0 {
            return Err(ParseError::BadBulkLength);
        }
        if len as u64 > MAX_BULK as u64 {
            return Err(ParseError::BulkTooLong(len as u64));
        }
        let end = start + len as usize;
        if end + 2 > max {
            return Err(match max {
                MAX_REQUEST => ParseError::RequestTooLarge,
                _ => ParseError::UnauthenticatedTooLarge,
            });
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ParseError::MissingCrlf);
        }
        args.push(Arg::At(start, end));
        at = end + 2;
    }
    Ok(Some(Parsed { args, consumed: at }))
}

fn parse_inline(buf: &[u8]) -> Result<Option<Parsed>, ParseError> {
    let window = &buf[..buf.len().min(MAX_INLINE + 1)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if window.len() > MAX_INLINE {
            Err(ParseError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    // A bare `\n` ends a line too, as in Redis (telnet sends `\r\n`, nc may send `\n`).
    let line = window[..newline].strip_suffix(b"\r").unwrap_or(&window[..newline]);
    let args = split_args(line)?.into_iter().map(Arg::Owned).collect();
    Ok(Some(Parsed {
        args,
        consumed: newline + 1,
    }))
}

/// Splits an inline command into arguments as Redis's `sdssplitargs` does: blanks separate,
/// `"..."` takes the escapes `\n \r \t \b \a \\ \" \xHH`, `'...'` takes `\'`; a closing quote
/// must be followed by a blank or the end.
fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        if args.len() == MAX_ARGS {
            return Err(ParseError::TooManyArgs(MAX_ARGS as u64 + 1));
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ParseError::UnbalancedQuotes),
                        Some(b'"') => break,
                        Some(b'\\') if i + 1 < line.len() => {
                            let escaped = line[i + 1];
                            let hex = line.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                            match (escaped, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                                (b'x', Some(byte)) => {
                                    arg.push(byte);
                                    i += 4;
                                    continue;
                                }
                                (b'n', _) => arg.push(b'\n'),
                                (b'r', _) => arg.push(b'\r'),
                                (b't', _) => arg.push(b'\t'),
                                (b'b', _) => arg.push(8),
                                (b'a', _) => arg.push(7),
                                (other, _) => arg.push(other),
                            }
                            i += 2;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ParseError::UnbalancedQuotes);
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ParseError::UnbalancedQuotes),
                        Some(b'\'') => break,
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ParseError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Encodes a request as clients do (an array of bulk strings); for tests and the benchmark.
pub fn encode_request(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ParseError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(args) = next_request(&mut buf, true)? {
            out.push(args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    fn strings(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn arrays_of_bulk_strings_and_inline_commands_parse_alike() {
        let got = all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nset a \"b c\"\nPING\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                strings(&["GET", "a"]),
                strings(&["set", "a", "b c"]),
                strings(&["PING"])
            ]
        );
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(
            all(b"*0\r\n*-1\r\n\r\n  \r\nPING\r\n").unwrap(),
            vec![strings(&["PING"])]
        );
    }

    #[test]
    fn a_partial_request_takes_nothing() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\n"[..]);
        assert_eq!(next_request(&mut buf, true).unwrap(), None);
        assert_eq!(buf.len(), 17);
    }

    #[test]
    fn limits_are_errors_before_the_bytes_arrive() {
        assert_eq!(all(b"*1025\r\n"), Err(ParseError::TooManyArgs(1025)));
        let over = format!("*1\r\n${}\r\n", MAX_BULK + 1);
        assert_eq!(all(over.as_bytes()), Err(ParseError::BulkTooLong(MAX_BULK as u64 + 1)));
        let mut big = b"*3\r\n".to_vec();
        for _ in 0..2 {
            big.extend_from_slice(format!("${MAX_BULK}\r\n").as_bytes());
            big.extend(std::iter::repeat_n(b'x', MAX_BULK));
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(b"$1\r\n");
        assert_eq!(all(&big), Err(ParseError::RequestTooLarge));
        assert_eq!(all(&vec![b'x'; MAX_INLINE + 1]), Err(ParseError::InlineTooLong));
        assert_eq!(
            all(&[b'1'; 100]),
            Ok(vec![]),
            "an inline line may be long while under the limit"
        );
        assert_eq!(
            all(b"*1111111111111111111111111111111111111111"),
            Err(ParseError::HeaderTooLong)
        );
    }

    #[test]
    fn before_auth_a_request_is_small() {
        let set = |n: usize| {
            let mut out = Vec::new();
            encode_request(&[b"SET", b"k", &vec![b'v'; n]], &mut out);
            BytesMut::from(&out[..])
        };
        assert!(next_request(&mut set(1000), false).unwrap().is_some());
        let over = next_request(&mut set(MAX_UNAUTHENTICATED), false);
        assert_eq!(over, Err(ParseError::UnauthenticatedTooLarge));
        assert!(next_request(&mut set(MAX_UNAUTHENTICATED), true).unwrap().is_some());
    }

    #[test]
    fn malformed_requests_say_what_redis_says() {
        assert_eq!(all(b"*2\r\nx\r\n"), Err(ParseError::ExpectedBulk('x')));
        assert_eq!(all(b"*2\r\n$x\r\n"), Err(ParseError::BadBulkLength));
        assert_eq!(all(b"*1\r\n$-1\r\n"), Err(ParseError::BadBulkLength));
        assert_eq!(all(b"*1x\r\n"), Err(ParseError::BadArrayLength));
        assert_eq!(all(b"*1\r\n$4\r\nPINGxx"), Err(ParseError::MissingCrlf));
        assert_eq!(all(b"get \"a\r\n"), Err(ParseError::UnbalancedQuotes));
        assert_eq!(all(b"get \"a\"b\r\n"), Err(ParseError::UnbalancedQuotes));
        assert_eq!(
            ParseError::ExpectedBulk('x').to_string(),
            "Protocol error: expected '$', got 'x'"
        );
    }

    #[test]
    fn inline_quotes_take_redis_escapes() {
        let got = all(b"set \"a\\x41\\n\" 'it\\'s' \"\"\r\n").unwrap();
        assert_eq!(
            got,
            vec![vec![b"set".to_vec(), b"aA\n".to_vec(), b"it's".to_vec(), Vec::new()]]
        );
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = all(&bytes);
            let mut star = b"*".to_vec();
            star.extend_from_slice(&bytes);
            let _ = all(&star);
        }

        #[test]
        fn any_request_split_anywhere_parses_back(
            requests in proptest::collection::vec(proptest::collection::vec(arg(), 1..6), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut encoded = Vec::new();
            for request in &requests {
                let args: Vec<&[u8]> = request.iter().map(Vec::as_slice).collect();
                encode_request(&args, &mut encoded);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (encoded.len() + 1)).collect();
            cuts.push(encoded.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                buf.extend_from_slice(&encoded[from..cut]);
                from = cut;
                while let Some(args) = next_request(&mut buf, true).unwrap() {
                    got.push(args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(got, requests);
            prop_assert!(buf.is_empty());
        }
    }
}
