//! The canonical binary encoding shared by every Pulih format: little-endian
//! integers, length-prefixed byte strings, count-prefixed lists.
//!
//! The [`Reader`] never trusts a length or count: each is checked against a
//! caller-given limit and against the bytes actually left before anything is
//! allocated, so a hostile 4-byte length cannot make us reserve gigabytes.

use std::fmt;

/// Why bytes could not be decoded; `at` is the byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}: {problem}")]
pub struct DecodeError {
    /// What was being read ("tree entry name", "frame length", ...).
    pub what: &'static str,
    /// Byte offset within the decoded buffer.
    pub at: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// The kinds of decoding problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The input ended early.
    Truncated { needed: usize, left: usize },
    /// A length or count above its limit.
    TooLarge { value: u64, limit: u64 },
    /// A value outside its allowed set.
    Invalid(String),
    /// Bytes after the end of the structure.
    TrailingBytes(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Truncated { needed, left } => {
                write!(f, "truncated: needs {needed} more bytes, {left} left")
            }
            Problem::TooLarge { value, limit } => write!(f, "{value} exceeds the limit of {limit}"),
            Problem::Invalid(why) => f.write_str(why),
            Problem::TrailingBytes(n) => write!(f, "{n} unexpected trailing bytes"),
        }
    }
}

/// Appends canonical encodings to a byte vector.
#[derive(Default, Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// A writer with reserved capacity.
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }
    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A byte string with a u32 length prefix.
    ///
    /// # Panics
    /// If `b` is 4 GiB or longer: callers encode only bounded values.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("encoded byte string over 4 GiB"));
        self.raw(b);
    }
    /// A UTF-8 string with a u32 length prefix.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    /// A list count.
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("encoded list over 4G entries"));
    }
}

/// Reads canonical encodings from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, starting at offset 0.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// Current byte offset.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// An error at the current offset.
    pub fn err(&self, what: &'static str, problem: Problem) -> DecodeError {
        DecodeError { what, at: self.pos, problem }
    }
    /// An `Invalid` error at the current offset.
    pub fn invalid(&self, what: &'static str, why: impl Into<String>) -> DecodeError {
        self.err(what, Problem::Invalid(why.into()))
    }
    /// Takes exactly `n` bytes.
    pub fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(what, Problem::Truncated { needed: n, left: self.remaining() }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(what, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    /// A length-prefixed byte string of at most `limit` bytes.
    pub fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.u32(what)? as usize;
        if len > limit {
            self.pos = start;
            return Err(self.err(what, Problem::TooLarge { value: len as u64, limit: limit as u64 }));
        }
        self.take(what, len)
    }
    /// A length-prefixed UTF-8 string of at most `limit` bytes.
    pub fn str(&mut self, what: &'static str, limit: usize) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let b = self.bytes(what, limit)?;
        std::str::from_utf8(b).map_err(|_| DecodeError {
            what,
            at: start,
            problem: Problem::Invalid("not valid UTF-8".into()),
        })
    }
    /// A list count of at most `limit`, each element taking at least
    /// `min_elem` bytes: a count that cannot fit in what is left is refused
    /// before the caller allocates for it.
    pub fn count(&mut self, what: &'static str, limit: u32, min_elem: usize) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.u32(what)?;
        if n > limit {
            self.pos = start;
            return Err(self.err(what, Problem::TooLarge { value: n.into(), limit: limit.into() }));
        }
        let n = n as usize;
        if n.saturating_mul(min_elem) > self.remaining() {
            return Err(
                self.err(what, Problem::Truncated { needed: n.saturating_mul(min_elem), left: self.remaining() })
            );
        }
        Ok(n)
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.err(what, Problem::TrailingBytes(self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_scalars_and_strings() {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0xBEEF);
        w.u32(123_456);
        w.u64(u64::MAX);
        w.i64(-5);
        w.str("héllo");
        w.bytes(&[0, 255]);
        let buf = w.into_bytes();
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 0xBEEF);
        assert_eq!(r.u32("c").unwrap(), 123_456);
        assert_eq!(r.u64("d").unwrap(), u64::MAX);
        assert_eq!(r.i64("e").unwrap(), -5);
        assert_eq!(r.str("f", 100).unwrap(), "héllo");
        assert_eq!(r.bytes("g", 2).unwrap(), &[0, 255]);
        r.finish("end").unwrap();
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut w = Writer::new();
        w.u32(u32::MAX); // a lying length
        let buf = w.into_bytes();
        let err = Reader::new(&buf).bytes("name", 255).unwrap_err();
        assert!(matches!(err.problem, Problem::TooLarge { .. }), "{err}");
        let err = Reader::new(&buf).count("entries", u32::MAX, 1).unwrap_err();
        assert!(matches!(err.problem, Problem::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let r = Reader::new(&[1, 2]);
        assert!(matches!(r.finish("x").unwrap_err().problem, Problem::TrailingBytes(2)));
    }
}
