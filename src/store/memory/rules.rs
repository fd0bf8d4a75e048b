//! The lease rules, decided under a user's lock: an open is admitted, renews its own
//! lease, is refused at the limit (with when a slot could free) or, when the policy says
//! so, ends one of the user's leases to take its place; a release keeps the lease for one
//! more TTL or removes it.

use std::time::Duration;

use super::entry::{Lease, Reach};
use super::MemoryStore;
use crate::identity::StreamId;
use crate::store::{unix_ms, Evict, Gone, GoneReason, OpenWith, Opened, StoreError};

/// The refusal of an open at the limit: how many leases, and when the soonest could free.
fn rejected(leases: &[Lease], now: u64, ttl: u64) -> Opened {
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
    Opened::Rejected {
        active: u32::try_from(leases.len()).unwrap_or(u32::MAX),
        retry_after: Duration::from_millis(soonest),
    }
}

/// The lease an open at the limit ends, by `evict`: the least recently renewed (a held
/// lease counts as renewed now), among idle ones only for [`Evict::Idle`].
fn victim(leases: &[Lease], evict: Evict, now: u64, ttl: u64) -> Option<usize> {
    // Held leases last (renewed now, and later than any idle one on a tie).
    let renewed = |l: &Lease| {
        (
            l.holds > 0,
            if l.holds > 0 { now + ttl } else { l.expires_at },
        )
    };
    let eligible = |l: &Lease| match evict {
        Evict::Oldest => true,
        Evict::Idle(after) => {
            let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 4);
            // Released at `expires_at - ttl`, and nothing since.
            l.holds == 0 && l.expires_at + after <= now + ttl
        }
    };
    leases
        .iter()
        .enumerate()
        .filter(|(_, l)| eligible(l))
        .min_by_key(|(_, l)| renewed(l))
        .map(|(i, _)| i)
}

impl MemoryStore {
    #[cfg(test)]
    pub(super) fn open_now(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_as_now(user, limit, uuid::Uuid::new_v4())
    }

    /// The limit the user's rules set instead of `limit`, or the block that refuses them.
    fn ruled(&self, user: &str, limit: u32) -> Result<u32, Opened> {
        let rules = self.marks.rules(self.keys.of(user), self.now_ms());
        match rules.blocked {
            Some(retry_after) => Err(Opened::Blocked { retry_after }),
            None => Ok(rules.limit.map_or(limit, |(n, _)| n)),
        }
    }

    pub(super) fn open_as_now(
        &self,
        user: &str,
        limit: u32,
        id: StreamId,
    ) -> Result<Opened, StoreError> {
        let limit = match self.ruled(user, limit) {
            Ok(l) => l,
            Err(blocked) => return Ok(blocked),
        };
        let ttl = self.tuning.ttl_ms();
        let opened = self.with_user(user, true, Reach::Open(limit), |leases, now| {
            if let Some(l) = leases.iter_mut().find(|l| l.id == id) {
                l.holds += 1;
                return Opened::Renewed(id);
            }
            if leases.len() >= limit as usize {
                return rejected(leases, now, ttl);
            }
            // Grow one lease at a time: most users hold one or two streams, and `push` would
            // otherwise reserve room for four.
            leases.reserve_exact(1);
            leases.push(Lease {
                id,
                expires_at: now + ttl,
                holds: 1,
                device: 0,
                opened_at: now,
            });
            Opened::Admitted(id)
        })?;
        if matches!(opened, Opened::Admitted(_)) {
            self.counters.active.inc();
        }
        Ok(opened)
    }

    /// An open that replaces its device's lease and, at the limit, may end one of the
    /// user's leases to take its place.
    pub(super) fn open_with_now(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError> {
        let limit = match self.ruled(user, limit) {
            Ok(l) => l,
            Err(blocked) => return Ok(blocked),
        };
        let ttl = self.tuning.ttl_ms();
        let key = self.keys.of(user);
        let new = id.unwrap_or_else(uuid::Uuid::new_v4);
        // An eviction adds a lease needing `now + TTL`: never decided on a deadline that
        // does not cover it.
        let opened = self.with_user(user, true, Reach::UpToTtl, |leases, now| {
            if let Some(l) = id.and_then(|id| leases.iter_mut().find(|l| l.id == id)) {
                l.holds += 1;
                return Opened::Renewed(new);
            }
            let device = with.device.map_or(0, |d| d.max(1));
            let fresh = Lease {
                id: new,
                expires_at: now + ttl,
                holds: 1,
                device,
                opened_at: now,
            };
            if device != 0 {
                if let Some(l) = leases.iter_mut().find(|l| l.device == device) {
                    let replaced = std::mem::replace(l, fresh).id;
                    return Opened::Replaced { id: new, replaced };
                }
            }
            if leases.len() < limit as usize {
                leases.reserve_exact(1);
                leases.push(fresh);
                return Opened::Admitted(new);
            }
            // Over the limit (a downgraded plan) is refused as without eviction: one
            // eviction would not bring the user within it.
            let Some(at) = with.at_limit.as_ref() else {
                return rejected(leases, now, ttl);
            };
            if leases.len() > limit as usize {
                return rejected(leases, now, ttl);
            }
            if let Some(left) = self.marks.cooling(key, now) {
                return Opened::CoolingDown {
                    active: limit,
                    retry_after: left,
                };
            }
            let Some(i) = victim(leases, at.evict, now, ttl) else {
                return rejected(leases, now, ttl);
            };
            let evicted = std::mem::replace(&mut leases[i], fresh).id;
            let gone = Gone {
                reason: GoneReason::Evicted,
                at_unix_ms: unix_ms(),
            };
            self.marks.bury(key, evicted, gone, now, at.tombstone_ttl);
            self.marks.cool(key, now, at.cooldown);
            Opened::Evicted { id: new, evicted }
        })?;
        if matches!(opened, Opened::Admitted(_)) {
            self.counters.active.inc();
        }
        Ok(opened)
    }

    /// End a lease and remember its id as gone, in one step under the user's lock.
    pub(super) fn end_now(
        &self,
        user: &str,
        id: StreamId,
        gone: Option<(GoneReason, Duration)>,
    ) -> Result<bool, StoreError> {
        let key = self.keys.of(user);
        let ended = self.with_user(user, false, Reach::Shrinks, |leases, now| {
            let before = leases.len();
            leases.retain(|l| l.id != id);
            let ended = leases.len() < before;
            if let (true, Some((reason, ttl))) = (ended, gone) {
                let at_unix_ms = unix_ms();
                self.marks
                    .bury(key, id, Gone { reason, at_unix_ms }, now, ttl);
            }
            ended
        })?;
        if ended {
            self.counters.active.dec();
        }
        Ok(ended)
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
