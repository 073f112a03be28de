//! Validated names of agents and datasets.
//!
//! Names appear in certificate subjects, catalog rows, metric labels and file
//! paths, so they are restricted to a small alphabet: nothing like `a/../b`,
//! `%2F` or an empty string can reach another tenant's namespace (F38).

use std::fmt;
use std::str::FromStr;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} name {name:?}: use 1-63 characters a-z, 0-9, '-', '_' or '.', starting with a letter or digit")]
pub struct NameError {
    kind: &'static str,
    name: String,
}

fn valid(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
        && !s.contains("..")
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn new(s: &str) -> Result<Self, NameError> {
                if valid(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(NameError { kind: $kind, name: s.chars().take(80).collect() })
                }
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The name an agent is enrolled under; its certificate's subject.
    AgentName, "agent"
);
name_type!(
    /// A dataset's name, unique per agent.
    DatasetName, "dataset"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// F38: identifier injection never yields a usable name.
    #[test]
    fn f38_injection_names_are_refused() {
        for bad in ["", "a/../b", "..", "a..b", "%2F", "A", "-x", ".x", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(AgentName::new(bad).is_err(), "{bad:?} accepted");
            assert!(DatasetName::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["simpeg", "web-pemkot", "opd_1.db", "0", &"x".repeat(63)] {
            assert!(AgentName::new(good).is_ok(), "{good:?} refused");
        }
    }
}
