//! What client commands print on stdout: answers only, as text or JSON Lines.
//!
//! A closed stdout (`kvnode members | head -1`) is not an error: writes stop quietly. Nor
//! is a closed stderr: nothing in kvnode writes to it with `eprintln!`, which would panic.

use std::io::{self, Write};

use serde_json::{Map, Value, json};

/// stdout for answers; logs and errors go to stderr elsewhere.
///
/// The lock is taken per write, never held: a node prints chat lines on stdout from its
/// worker threads while the main thread keeps an `Output` for its own errors.
pub struct Output {
    json: bool,
    closed: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json, closed: false }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes raw bytes (for `get --raw`).
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.write(|out| out.write_all(bytes));
    }

    /// Writes one line of text.
    pub fn line(&mut self, text: &str) {
        self.write(|out| writeln!(out, "{text}"));
    }

    /// Writes one JSON object as a line.
    pub fn object(&mut self, value: Value) {
        self.write(|out| writeln!(out, "{value}"));
    }

    /// A failure, said once: with `--json` as one object `{"error": ..., "code": N}` (plus
    /// `extra`'s fields) on stdout and nothing on stderr, so a script reading JSON Lines gets
    /// every outcome on one stream; else `error: ...` on stderr and nothing on stdout.
    pub fn error(&mut self, message: &str, code: u8, extra: Map<String, Value>) {
        if self.json {
            let mut o = extra;
            o.insert("error".into(), json!(message));
            o.insert("code".into(), json!(code));
            self.object(Value::Object(o));
        } else {
            to_stderr(format_args!("error: {message}\n"));
        }
    }

    fn write(&mut self, f: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) {
        if self.closed {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = f(&mut out).and_then(|()| out.flush()) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                to_stderr(format_args!("error: cannot write to stdout: {e}\n"));
            }
            self.closed = true;
        }
    }
}

/// Writes to stderr, ignoring failure: a closed stderr (`2>&1 | head -1`) is no reason to
/// panic, as `eprintln!` does, nor to change the exit code; there is nowhere left to say it.
pub fn to_stderr(args: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Bytes as one line of text for humans (a key in a listing): as is when they are printable
/// UTF-8, else escaped (`\xNN`, `\n`, `\\`).
pub fn printable(bytes: &[u8]) -> String {
    shown(bytes, &['\t'])
}

/// A value as `get` shows it: text as is, lines and all (`\n` or `\r\n`); escaped only when
/// it is not UTF-8 or holds control bytes that would act on a terminal, a carriage return
/// alone among them (it would hide what came before it). `--raw` prints the exact bytes.
pub fn printable_value(bytes: &[u8]) -> String {
    let lone_cr = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
    if lone_cr {
        return bytes.escape_ascii().to_string();
    }
    shown(bytes, &['\t', '\n', '\r'])
}

fn shown(bytes: &[u8], allowed: &[char]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && !allowed.contains(&c)) => s.to_string(),
        _ => bytes.escape_ascii().to_string(),
    }
}

/// Bytes as a JSON field: `"name": "text"` when UTF-8, else `"name_hex": "6869"`.
pub fn bytes_field(obj: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            obj.insert(name.to_string(), Value::String(s.to_string()));
        }
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            obj.insert(format!("{name}_hex"), Value::String(hex));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_only_what_would_harm_a_terminal() {
        assert_eq!(printable(b"3"), "3");
        assert_eq!(printable("héllo\tthere".as_bytes()), "héllo\tthere");
        assert_eq!(printable(b"a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(printable(&[0xff, 0x00]), "\\xff\\x00");
        // One key per line: a newline in a key is escaped.
        assert_eq!(printable(b"a\nb"), "a\\nb");
    }

    #[test]
    fn a_text_value_is_shown_as_it_is_lines_and_all() {
        assert_eq!(printable_value(b"a\nb\r\n\tc"), "a\nb\r\n\tc");
        assert_eq!(printable_value("héllo".as_bytes()), "héllo");
        // Bytes that would act on a terminal, or that are not text, still are escaped.
        assert_eq!(printable_value(b"a\nb\x1b[2J"), "a\\nb\\x1b[2J");
        assert_eq!(printable_value(&[0xff, b'\\']), "\\xff\\\\");
        // A carriage return not ending a line would hide what came before it.
        assert_eq!(printable_value(b"a\rXY"), "a\\rXY");
    }

    #[test]
    fn binary_json_fields_are_hex() {
        let mut m = serde_json::Map::new();
        bytes_field(&mut m, "value", b"3");
        bytes_field(&mut m, "key", &[0xff]);
        assert_eq!(Value::Object(m), json!({"value": "3", "key_hex": "ff"}));
    }
}
