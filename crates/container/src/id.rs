//! Validation of container and exec ids received from the host.

/// Longest accepted container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// A container or exec id that does not match `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which id (e.g. "container id").
        what: &'static str,
    },
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("{what} is {len} bytes long, at most {MAX_ID_LEN} allowed")]
    TooLong {
        /// Which id.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The id holds a character outside the allowed set.
    #[error("{what} {id:?} must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}$")]
    BadChar {
        /// Which id.
        what: &'static str,
        /// The offending id (already length-bounded).
        id: String,
    },
}

/// Checks a container id.
pub fn validate_container_id(id: &str) -> Result<(), IdError> {
    validate_id("container id", id)
}

/// Checks an exec id (same rule as container ids).
pub fn validate_exec_id(id: &str) -> Result<(), IdError> {
    validate_id("exec id", id)
}

fn validate_id(what: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { what });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len: id.len(),
        });
    }
    let bytes = id.as_bytes();
    let first_ok = bytes[0].is_ascii_alphanumeric();
    let rest_ok = bytes[1..]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(IdError::BadChar {
            what,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for id in ["c1", "a", "0abc", "pod_1.web-2", &"x".repeat(128)] {
            assert_eq!(validate_container_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(matches!(
            validate_container_id(""),
            Err(IdError::Empty { .. })
        ));
        assert!(matches!(
            validate_container_id(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        for id in ["-a", ".a", "_a", "a/b", "..", "a b", "é", "a\0", "../etc"] {
            assert!(
                matches!(validate_exec_id(id), Err(IdError::BadChar { .. })),
                "{id}"
            );
        }
    }
}
