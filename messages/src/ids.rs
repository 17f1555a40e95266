//! Validated identifiers. Each one is a single NATS subject token and a valid KV key, so it
//! can be put into a subject without escaping.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty, too long, or a character outside `A-Z a-z 0-9 _ -`.
    #[error("{kind} must be 1 to {max} characters of A-Z, a-z, 0-9, '_' or '-'")]
    Syntax {
        /// Which identifier.
        kind: &'static str,
        /// Its maximum length.
        max: usize,
    },
}

fn is_token_of(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` could be an entity id of any kind: 1 to 64 characters of `A-Z a-z 0-9 _ -`,
/// one subject token (no `.`, `*` or `>` that would address other subjects).
pub fn is_token(s: &str) -> bool {
    is_token_of(s, 64)
}

/// `s` is all lower-case hex digits (`0-9 a-f`), as the random and hashed parts of ids are.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The plumbing of a validated string newtype whose `parse(&str)` answers a [`crate::ReplyError`]:
/// `as_str`, `Display`, and the `String` conversions serde uses (`try_from`/`into`).
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::ReplyError;
            fn try_from(s: String) -> Result<Self, $crate::ReplyError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use string_newtype;

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, pattern = "^[A-Za-z0-9_-]+$", min_length = 1, max_length = 64)]
        #[schemars(with = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if is_token_of(&s, $max) {
                    Ok(Self(s))
                } else {
                    Err(IdError::Syntax { kind: $kind, max: $max })
                }
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

token_id!(
    /// A stock-keeping unit: the identity of one sellable variant.
    Sku, "sku", 64
);
token_id!(
    /// A client-chosen reservation id; the idempotency key of a reservation.
    ReservationId, "reservation id", 64
);
token_id!(
    /// A Souk node's identity in the cluster.
    NodeId, "node id", 64
);

token_id!(
    /// A user account's id, assigned by Souk at registration.
    UserId, "user id", 64
);

impl UserId {
    /// A fresh random user id.
    pub fn generate() -> Self {
        Self(format!("usr-{}", uuid::Uuid::new_v4().simple()))
    }
}

impl NodeId {
    /// A fresh random node id.
    pub fn generate() -> Self {
        Self(format!("node-{}", uuid::Uuid::new_v4().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_tokens() {
        assert!(Sku::parse("TSHIRT-red_XL-01").is_ok());
        assert!(Sku::parse("a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_what_would_break_a_subject() {
        for bad in ["", "a.b", "a*", "a>", "a b", "é", &"a".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<Sku>("\"not.ok\"").is_err());
    }

    #[test]
    fn generated_node_ids_are_valid() {
        let id = NodeId::generate();
        assert!(NodeId::parse(id.as_str()).is_ok());
    }
}
