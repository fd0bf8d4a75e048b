//! How many streams a user may hold, and what to do when the store cannot say: the policy
//! step between identity and the store.
//!
//! Today every user gets the configured limit; this is the seam where per-plan limits
//! (a header, a lookup) plug in without touching the proxy phases.

use crate::config::OnStoreError;

/// Decides a user's stream limit and the failure mode.
#[derive(Debug, Clone)]
pub struct Policy {
    default_limit: u32,
    on_store_error: OnStoreError,
}

impl Policy {
    pub fn new(default_limit: u32, on_store_error: OnStoreError) -> Self {
        Self {
            default_limit,
            on_store_error,
        }
    }

    /// The most concurrent streams `user` may hold.
    pub fn limit_for(&self, _user: &str) -> u32 {
        self.default_limit
    }

    /// Whether a watch request is admitted (without a lease) when the store fails.
    pub fn fail_open(&self) -> bool {
        self.on_store_error == OnStoreError::Allow
    }
}
