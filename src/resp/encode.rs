//! Replies of RESP: one value type, written as RESP2 or, after `HELLO 3`, RESP3. Pure.

use std::io::Write;

/// Which protocol a connection speaks; `HELLO` switches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// One reply. RESP2 has no maps, booleans or a null of its own: a map goes out as a flat
/// array of keys and values, a null as the null bulk string, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(&'static str),
    /// The whole error line: a code (`ERR`, `NOAUTH`, `WRONGPASS`, ...) and its text.
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
}

impl Frame {
    /// An `ERR` error with this text.
    pub fn err(text: impl std::fmt::Display) -> Self {
        Frame::Error(format!("ERR {text}"))
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Self {
        Frame::Bulk(bytes.into())
    }
}

/// Appends `frame` to `out` as `protocol` writes it.
pub fn encode(frame: &Frame, protocol: Protocol, out: &mut Vec<u8>) {
    match frame {
        Frame::Simple(text) => line(out, b'+', text.as_bytes()),
        // An error line cannot hold a line break; Redis replaces them the same way.
        Frame::Error(text) => {
            let text: Vec<u8> = text
                .bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                .collect();
            line(out, b'-', &text)
        }
        Frame::Integer(n) => header(out, b':', *n),
        Frame::Bulk(bytes) => {
            header(out, b'$', bytes.len() as i64);
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Frame::Null => match protocol {
            Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
            Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
        },
        Frame::Array(items) => {
            header(out, b'*', items.len() as i64);
            for item in items {
                encode(item, protocol, out);
            }
        }
        Frame::Map(pairs) => {
            match protocol {
                Protocol::Resp2 => header(out, b'*', 2 * pairs.len() as i64),
                Protocol::Resp3 => header(out, b'%', pairs.len() as i64),
            }
            for (key, value) in pairs {
                encode(key, protocol, out);
                encode(value, protocol, out);
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    write!(out, "{n}\r\n").expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(frame: Frame) -> (String, String) {
        let (mut two, mut three) = (Vec::new(), Vec::new());
        encode(&frame, Protocol::Resp2, &mut two);
        encode(&frame, Protocol::Resp3, &mut three);
        (String::from_utf8(two).unwrap(), String::from_utf8(three).unwrap())
    }

    #[test]
    fn scalars_are_the_same_in_both_protocols() {
        assert_eq!(both(Frame::Simple("OK")).0, "+OK\r\n");
        assert_eq!(both(Frame::err("syntax error")).1, "-ERR syntax error\r\n");
        assert_eq!(both(Frame::Integer(-3)).0, ":-3\r\n");
        assert_eq!(both(Frame::bulk("ab")).1, "$2\r\nab\r\n");
    }

    #[test]
    fn null_and_maps_differ_between_resp2_and_resp3() {
        assert_eq!(both(Frame::Null), ("$-1\r\n".into(), "_\r\n".into()));
        let map = Frame::Map(vec![(Frame::bulk("f"), Frame::bulk("v"))]);
        assert_eq!(
            both(map),
            (
                "*2\r\n$1\r\nf\r\n$1\r\nv\r\n".into(),
                "%1\r\n$1\r\nf\r\n$1\r\nv\r\n".into()
            )
        );
    }

    #[test]
    fn an_error_never_breaks_its_line() {
        assert_eq!(both(Frame::err("a\r\nb")).0, "-ERR a  b\r\n");
    }
}
