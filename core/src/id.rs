//! Content identifiers: blake3 digests, one newtype per kind of object so a
//! tree id can never be used where a chunk id is meant.

use std::fmt;
use std::str::FromStr;

/// Error parsing an identifier from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id {text:?}: expected 64 lowercase hex characters")]
pub struct ParseIdError {
    kind: &'static str,
    text: String,
}

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Kind of object, for messages.
            pub const KIND: &'static str = $kind;

            /// The id of `data` (blake3 of the plaintext).
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }
            /// Wraps raw digest bytes (read from a trusted encoding).
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The raw digest.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, as used in paths and text.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// First 12 hex characters, for human output.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError { kind: $kind, text: s.chars().take(80).collect() };
                if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(err());
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok(Self(out))
            }
        }
    };
}

digest_id!(
    /// blake3 of a chunk's plaintext.
    ChunkId, "chunk"
);
digest_id!(
    /// blake3 of a tree blob's canonical plaintext encoding.
    TreeId, "tree"
);
digest_id!(
    /// blake3 of a snapshot record's canonical encoding.
    SnapshotId, "snapshot"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let id = ChunkId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
        assert!(text.to_uppercase().parse::<ChunkId>().is_err());
        assert!(text[..63].parse::<ChunkId>().is_err());
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
        assert_eq!(id.short(), &text[..12]);
    }

    #[test]
    fn known_blake3_vector() {
        // blake3("") from the reference test vectors.
        assert_eq!(ChunkId::of(b"").to_string(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    }
}
