//! The lease rules, decided under a user's lock: an open is admitted, renews its own
//! lease, or is refused at the limit (with when a slot could free); a release keeps the
//! lease for one more TTL or removes it.

use std::time::Duration;

use super::entry::{Lease, Reach};
use super::MemoryStore;
use crate::identity::StreamId;
use crate::store::{Opened, StoreError};

impl MemoryStore {
    #[cfg(test)]
    pub(super) fn open_now(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_as_now(user, limit, uuid::Uuid::new_v4())
    }

    pub(super) fn open_as_now(
        &self,
        user: &str,
        limit: u32,
        id: StreamId,
    ) -> Result<Opened, StoreError> {
        let ttl = self.tuning.ttl_ms();
        let opened = self.with_user(user, true, Reach::Open(limit), |leases, now| {
            if let Some(l) = leases.iter_mut().find(|l| l.id == id) {
                l.holds += 1;
                return Opened::Renewed(id);
            }
            if leases.len() >= limit as usize {
                let soonest = leases
                    .iter()
                    .map(|l| {
                        if l.holds > 0 {
                            ttl
                        } else {
                            l.expires_at.saturating_sub(now)
                        }
                    })
                    .min()
                    .unwrap_or(0);
                return Opened::Rejected {
                    active: u32::try_from(leases.len()).unwrap_or(u32::MAX),
                    retry_after: Duration::from_millis(soonest),
                };
            }
            // Grow one lease at a time: most users hold one or two streams, and `push` would
            // otherwise reserve room for four.
            leases.reserve_exact(1);
            leases.push(Lease {
                id,
                expires_at: now + ttl,
                holds: 1,
            });
            Opened::Admitted(id)
        })?;
        if matches!(opened, Opened::Admitted(_)) {
            self.counters.active.inc();
        }
        Ok(opened)
    }

    pub(super) fn release_now(
        &self,
        user: &str,
        id: StreamId,
        keep: bool,
    ) -> Result<(), StoreError> {
        let ttl = self.tuning.ttl_ms();
        let reach = if keep { Reach::UpToTtl } else { Reach::Shrinks };
        let removed = self.with_user(user, false, reach, |leases, now| {
            let Some(pos) = leases.iter().position(|l| l.id == id) else {
                return false;
            };
            let lease = &mut leases[pos];
            lease.holds = lease.holds.saturating_sub(1);
            if lease.holds > 0 {
                return false;
            }
            if keep {
                lease.expires_at = now + ttl;
                false
            } else {
                leases.swap_remove(pos);
                true
            }
        })?;
        if removed {
            self.counters.active.dec();
        }
        Ok(())
    }
}
