//! `PUT`/`DELETE /admin/v1/users/{user}/limit` and `/block`: per-user rules kept in the
//! store with their expiry, so every instance obeys them at the user's next open (and, for
//! a block, their next renewal). An override replaces the plan's or the config's limit,
//! up or down; a block answers `403 user_blocked`.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{store_failed, AdminApp, Reply};
use crate::store::{RuleKind, UserRule, UserRules};

/// The longest a rule may be set for: renew it to keep it longer.
const MAX_RULE_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The most a rule's body may hold.
pub(super) const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    limit: u32,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

/// A user's rules as the listing shows them.
#[derive(Serialize)]
pub(super) struct Rules {
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_expires_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_expires_in_ms: Option<u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<UserRules> for Rules {
    fn from(r: UserRules) -> Self {
        Rules {
            limit: r.limit.map(|(n, _)| n),
            limit_expires_in_ms: r.limit.map(|(_, left)| ms(left)),
            blocked_expires_in_ms: r.blocked.map(ms),
        }
    }
}

fn bad_body(message: &str) -> Reply {
    Reply::error(StatusCode::BAD_REQUEST, "invalid_body", message)
}

fn check_ttl(ttl: Duration) -> Result<(), Reply> {
    if ttl.is_zero() || ttl > MAX_RULE_TTL {
        return Err(bad_body("ttl must be longer than 0s and at most 366 days"));
    }
    Ok(())
}

impl AdminApp {
    /// `PUT .../limit` (`{"limit": 5, "ttl": "24h"}`) or `.../block` (`{"ttl": "1h"}`).
    pub(super) async fn set_rule(&self, user: &str, kind: RuleKind, body: &[u8]) -> Reply {
        let (rule, ttl) = match kind {
            RuleKind::Limit => match serde_json::from_slice::<LimitBody>(body) {
                Ok(b) if b.limit > 0 => (UserRule::Limit(b.limit), b.ttl),
                Ok(_) => {
                    return bad_body(
                        "limit must be at least 1 (to refuse every stream, block the user)",
                    )
                }
                Err(_) => return bad_body("expected {\"limit\": N, \"ttl\": \"24h\"}"),
            },
            RuleKind::Block => match serde_json::from_slice::<BlockBody>(body) {
                Ok(b) => (UserRule::Block, b.ttl),
                Err(_) => return bad_body("expected {\"ttl\": \"1h\"}"),
            },
        };
        if let Err(reply) = check_ttl(ttl) {
            return reply;
        }
        if let Err(e) = self.store.set_rule(user, rule, ttl).await {
            return store_failed(&e);
        }
        match self.store.rules(user).await {
            Ok(r) => Reply::json(StatusCode::OK, Rules::from(r)),
            Err(e) => store_failed(&e),
        }
    }

    /// `DELETE .../limit` or `.../block`: `204`, or `404` when none was in force.
    pub(super) async fn clear_rule(&self, user: &str, kind: RuleKind) -> Reply {
        match self.store.clear_rule(user, kind).await {
            Ok(true) => Reply::no_content(),
            Ok(false) => Reply::error(
                StatusCode::NOT_FOUND,
                "rule_not_found",
                "this user has no such rule in force",
            ),
            Err(e) => store_failed(&e),
        }
    }
}
