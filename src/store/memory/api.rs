//! The [`StreamStore`] operations on the memory store, each a decision of `rules.rs` or
//! `marks.rs` under the user's lock.

use super::*;

#[async_trait]
impl StreamStore for MemoryStore {
    /// The memory store has no timeout to take; a shorter TTL applies to the next open or
    /// renewal (housekeeping runs every 10 ms, well within any TTL's quarter).
    fn retune(&self, lease_ttl: Duration, _timeout: Duration) {
        self.tuning.set(lease_ttl, Duration::ZERO);
    }

    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        self.open_as_now(user, limit, id)
    }

    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        if self
            .marks
            .rules(self.keys.of(user), self.now_ms())
            .blocked
            .is_some()
        {
            return Ok(false);
        }
        self.with_user(user, false, Reach::UpToTtl, |leases, _now| {
            match leases.iter_mut().find(|l| l.id == id) {
                Some(l) => {
                    l.holds += 1;
                    true
                }
                None => false,
            }
        })
    }

    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        self.release_now(user, id, keep)
    }

    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.end_now(user, id, None)
    }

    async fn open_with(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError> {
        self.open_with_now(user, limit, id, with)
    }

    async fn end_for_good(
        &self,
        user: &str,
        id: StreamId,
        reason: GoneReason,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.end_now(user, id, Some((reason, ttl)))
    }

    async fn gone(&self, user: &str, id: StreamId) -> Result<Option<Gone>, StoreError> {
        Ok(self.marks.gone(self.keys.of(user), id, self.now_ms()))
    }

    async fn set_rule(&self, user: &str, rule: UserRule, ttl: Duration) -> Result<(), StoreError> {
        self.marks
            .set_rule(self.keys.of(user), rule, self.now_ms(), ttl);
        Ok(())
    }

    async fn clear_rule(&self, user: &str, kind: RuleKind) -> Result<bool, StoreError> {
        Ok(self
            .marks
            .clear_rule(self.keys.of(user), kind, self.now_ms()))
    }

    async fn rules(&self, user: &str) -> Result<UserRules, StoreError> {
        Ok(self.marks.rules(self.keys.of(user), self.now_ms()))
    }

    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError> {
        let ttl = self.tuning.ttl_ms();
        let unix_now = crate::store::unix_ms();
        self.with_user(user, false, Reach::Within, |leases, now| {
            // Store milliseconds to Unix milliseconds.
            let unix = |at: u64| unix_now.saturating_sub(now.saturating_sub(at));
            leases
                .iter()
                .map(|l| LeaseInfo {
                    id: l.id,
                    expires_in: (l.holds == 0)
                        .then(|| Duration::from_millis(l.expires_at.saturating_sub(now))),
                    opened_unix_ms: Some(unix(l.opened_at)),
                    // Released at `expires_at - ttl`; held: renewed now.
                    renewed_unix_ms: (l.holds == 0).then(|| unix(l.expires_at.saturating_sub(ttl))),
                    device: (l.device != 0).then(|| format!("{:08x}", l.device >> 32)),
                    served_by: None,
                })
                .collect()
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn maintain(&self) {
        self.refresh_held();
        self.cache.run_pending_tasks();
        self.marks.maintain();
    }
}
