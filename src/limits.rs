//! Size limits shared by the parsers, set in one place.

/// The longest subscription token, in bytes (hasses cut at 30; we refuse longer ones with 400).
pub const MAX_TOKEN_LEN: usize = 128;
/// The longest client `id`, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// The most header bytes a request may have before the blank line (else 431).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The most bytes of `User-Agent` kept for the client list (as hasses).
pub const MAX_AGENT_LEN: usize = 190;

/// Limits that the operator sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The longest message, in bytes (`--max-message`).
    pub max_message: usize,
}

impl Limits {
    /// The longest control line: a message plus its target and separators.
    pub fn max_control_line(&self) -> usize {
        self.max_message + 2 * MAX_TOKEN_LEN + 64
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_message: 64 * 1024 }
    }
}
