//! Channel names: what rules may emit to, what the configuration may
//! name and what clients may subscribe to. One check, used by all three,
//! so a name rules can produce is always one a client can subscribe to.

/// Longest channel name accepted, in bytes.
pub const MAX_LEN: usize = 200;

/// A channel name is 1–200 bytes with no whitespace or control characters
/// (`user:42`, `team:7`, `ticker:AAPL`, `broadcast`). The error says what
/// is wrong, for an error frame, a rule failure or a configuration error.
pub fn check(channel: &str) -> Result<(), &'static str> {
    if channel.is_empty() {
        return Err("channel name is empty");
    }
    if channel.len() > MAX_LEN {
        return Err("channel name is longer than 200 bytes");
    }
    if channel.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("channel name contains whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(check("user:42").is_ok());
        assert!(check("").is_err());
        assert!(check("a b").is_err());
        assert!(check("a\nb").is_err());
        assert!(check(&"x".repeat(200)).is_ok());
        assert!(check(&"x".repeat(201)).is_err());
    }
}
