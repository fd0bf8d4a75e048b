//! How many streams a user may hold: the policy step between identity and the store.
//!
//! Today every user gets the configured limit; this is the seam where per-plan limits
//! (a header, a lookup) plug in without touching the proxy phases.

/// Decides a user's stream limit.
#[derive(Debug, Clone)]
pub struct Policy {
    default_limit: u32,
}

impl Policy {
    pub fn new(default_limit: u32) -> Self {
        Self { default_limit }
    }

    /// The most concurrent streams `user` may hold.
    pub fn limit_for(&self, _user: &str) -> u32 {
        self.default_limit
    }
}
