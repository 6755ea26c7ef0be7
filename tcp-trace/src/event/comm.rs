//! Task names as the kernel gives them, and their escaping for output.

use std::{borrow::Cow, fmt};

/// A task name exactly as the kernel gave it (up to 16 bytes, NUL-trimmed). Any bytes are
/// possible, including control characters and invalid UTF-8; [`Comm::escaped`] makes it safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// From the kernel's `char comm[16]`.
    pub fn from_raw(raw: &[u8; 16]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(16);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// From a name read elsewhere (e.g. `/proc/PID/comm`), truncated to 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut raw = [0u8; 16];
        let n = b.len().min(16);
        raw[..n].copy_from_slice(&b[..n]);
        Self::from_raw(&raw)
    }

    /// The kernel's `char comm[16]` again.
    pub fn raw(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..usize::from(self.len)].copy_from_slice(self.as_bytes());
        raw
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// For JSON, which escapes what it must itself: the name as it is when it is valid UTF-8;
    /// otherwise with U+FFFD for each invalid sequence, and then (only then) its bytes in hex,
    /// so nothing is lost.
    pub fn json_text(&self) -> (Cow<'_, str>, Option<String>) {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) => (Cow::Borrowed(s), None),
            Err(_) => {
                let hex = self.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
                (String::from_utf8_lossy(self.as_bytes()), Some(hex))
            }
        }
    }

    /// [`Comm::escaped`], borrowing when nothing needs escaping (the usual case).
    pub fn escaped_cow(&self) -> Cow<'_, str> {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) if !s.chars().any(|c| c == '\\' || c.is_control()) => Cow::Borrowed(s),
            _ => Cow::Owned(self.escaped()),
        }
    }

    /// Printable on one line: valid UTF-8 stays as it is except control characters and `\`,
    /// which become `\n`, `\t`, `\\` or `\xNN`; every byte of invalid UTF-8 becomes `\xNN`.
    /// The original bytes can be recovered from this form.
    pub fn escaped(&self) -> String {
        let mut out = String::new();
        for chunk in self.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.push_str(&format!("\\x{b:02x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        Ok(Self::from_bytes(&v))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.escaped())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_comm_is_escaped_and_recoverable() {
        let c = Comm::from_bytes(b"a\nb\x1b[31m\\\xff\"q");
        let e = c.escaped();
        assert_eq!(e, "a\\nb\\x1b[31m\\\\\\xff\"q");
        assert!(!e.chars().any(|ch| ch.is_control()));
        assert_eq!(c.escaped_cow(), e);
        assert!(matches!(
            Comm::from_bytes(b"nginx").escaped_cow(),
            Cow::Borrowed("nginx")
        ));
        let c = Comm::from_raw(b"0123456789abcdef");
        assert_eq!(c.as_bytes().len(), 16);
    }
}
