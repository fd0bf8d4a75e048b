//! How many streams a user may hold, and what to do when the store cannot say: the policy
//! step between identity and the store.
//!
//! A user's limit comes, first found first: from their token's own limit claim (capped by
//! `identity.jwt.max_limit`), from their plan (`[plans.<name>]`: the token's plan claim, or
//! `streams.default_plan`), else `streams.limit`. A plan with `limit = 0` blocks its users,
//! an `unlimited` one counts their streams but never refuses, and a plan name no table has
//! is treated as no plan or refused (`streams.unknown_plan`). The store key never contains
//! the plan: a user whose plan changes keeps their streams, and a downgrade applies at the
//! next open, never by cutting what plays.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, Mode, OnLimit, OnStoreError, UnknownPlan};
use crate::store::{AtLimit, Evict};

/// What a plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allows {
    Streams(u32),
    Unlimited,
}

/// A plan: what it allows, and what an open at its limit does (`None`: refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    allows: Allows,
    at_limit: Option<AtLimit>,
    dry_run: bool,
}

/// A user's limit for one open, and the plan it came from (named in a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Concurrent streams (`u32::MAX` for an unlimited plan).
    pub limit: u32,
    pub plan: Option<Arc<str>>,
    /// What an open at the limit does instead of refusing (`None`: refuse).
    pub at_limit: Option<AtLimit>,
    /// `streams.mode = "dry_run"` (or the plan's): refuse and evict nothing, report it.
    pub dry_run: bool,
}

/// Why a user may open no stream at all, whatever they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanRefusal {
    /// The plan (or the token's limit) allows 0 streams: `403 plan_blocked`.
    Blocked(Option<Arc<str>>),
    /// A plan name no `[plans]` table has, with `unknown_plan = "reject"`: `403
    /// unknown_plan`.
    Unknown,
}

/// Decides a user's stream limit and the failure mode.
#[derive(Debug, Clone)]
pub struct Policy {
    default_limit: u32,
    default_at_limit: Option<AtLimit>,
    default_dry_run: bool,
    shadow_limit: Option<u32>,
    on_store_error: OnStoreError,
    plans: BTreeMap<String, Plan>,
    default_plan: Option<Arc<str>>,
    unknown_plan: UnknownPlan,
    limit_status: u16,
    /// The label of plan names no table has.
    unknown_label: Arc<str>,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        let st = &config.streams;
        let at_limit = |on: OnLimit| {
            let evict = match on {
                OnLimit::Reject => return None,
                OnLimit::EvictOldest => Evict::Oldest,
                OnLimit::EvictIdle => Evict::Idle(st.evict_idle_after),
            };
            Some(AtLimit {
                evict,
                cooldown: st.evict_cooldown,
                tombstone_ttl: st.tombstone_ttl,
            })
        };
        let plans = config
            .plans
            .iter()
            .map(|(name, p)| {
                let allows = if p.unlimited {
                    Allows::Unlimited
                } else {
                    Allows::Streams(p.limit.unwrap_or(config.streams.limit))
                };
                let at_limit = at_limit(p.on_limit.unwrap_or(st.on_limit));
                let dry_run = p.mode.unwrap_or(st.mode) == Mode::DryRun;
                let plan = Plan {
                    allows,
                    at_limit,
                    dry_run,
                };
                (name.clone(), plan)
            })
            .collect();
        Self {
            default_limit: config.streams.limit,
            default_at_limit: at_limit(st.on_limit),
            default_dry_run: st.mode == Mode::DryRun,
            shadow_limit: st.shadow_limit,
            on_store_error: config.store.on_store_error,
            plans,
            default_plan: config.streams.default_plan.as_deref().map(Arc::from),
            unknown_plan: config.streams.unknown_plan,
            limit_status: config.streams.limit_status,
            unknown_label: Arc::from("unknown"),
        }
    }

    /// The `plan` label of a user's decisions, bounded by the config: a configured plan's
    /// name, `unknown` for any other name, and for users without a plan
    /// `streams.default_plan` if set, else `None` (counted as `default`).
    pub fn plan_label(&self, plan: Option<&Arc<str>>) -> Option<Arc<str>> {
        match plan {
            Some(p) if self.plans.contains_key(&**p) => Some(p.clone()),
            Some(_) => Some(self.unknown_label.clone()),
            None => self
                .default_plan
                .clone()
                .filter(|d| self.plans.contains_key(&**d)),
        }
    }

    /// The status of a refusal at the limit (`streams.limit_status`).
    pub fn limit_status(&self) -> u16 {
        self.limit_status
    }

    /// The limit of a user whose identity names `plan` and, from a token, `own_limit`.
    pub fn allowance(
        &self,
        plan: Option<&Arc<str>>,
        own_limit: Option<u32>,
    ) -> Result<Allowance, PlanRefusal> {
        let known = |p: &Arc<str>| self.plans.get(&**p).map(|a| (p.clone(), *a));
        let named = match plan {
            Some(p) => match known(p) {
                Some(found) => Some(found),
                None if self.unknown_plan == UnknownPlan::Reject => {
                    return Err(PlanRefusal::Unknown)
                }
                None => None,
            },
            None => None,
        };
        let (
            plan,
            Plan {
                allows,
                at_limit,
                dry_run,
            },
        ) = match named.or_else(|| self.default_plan.as_ref().and_then(known)) {
            Some((p, a)) => (Some(p), a),
            None => (
                None,
                Plan {
                    allows: Allows::Streams(self.default_limit),
                    at_limit: self.default_at_limit,
                    dry_run: self.default_dry_run,
                },
            ),
        };
        let limit = match (own_limit, allows) {
            (Some(l), _) => l,
            (None, Allows::Streams(l)) => l,
            (None, Allows::Unlimited) => u32::MAX,
        };
        if limit == 0 {
            return Err(PlanRefusal::Blocked(plan));
        }
        Ok(Allowance {
            limit,
            plan,
            at_limit,
            dry_run,
        })
    }

    /// `streams.shadow_limit`: a lower limit only counted.
    pub fn shadow_limit(&self) -> Option<u32> {
        self.shadow_limit
    }

    /// Whether a watch request is admitted (without a lease) when the store fails.
    pub fn fail_open(&self) -> bool {
        self.on_store_error == OnStoreError::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        let c = Config::from_toml(&format!(
            "[upstream]\naddrs = [\"127.0.0.1:8080\"]\n[streams]\nlimit = 3\n{extra}\n\
             [plans.basic]\nlimit = 1\n[plans.premium]\nlimit = 4\n\
             [plans.free]\nlimit = 0\n[plans.staff]\nunlimited = true\n"
        ))
        .unwrap();
        Policy::new(&c)
    }

    fn limit(p: &Policy, plan: Option<&str>, own: Option<u32>) -> Result<u32, PlanRefusal> {
        p.allowance(plan.map(Arc::from).as_ref(), own)
            .map(|a| a.limit)
    }

    #[test]
    fn the_claim_then_the_plan_then_the_default() {
        let p = policy("");
        assert_eq!(limit(&p, None, None), Ok(3));
        assert_eq!(limit(&p, Some("basic"), None), Ok(1));
        assert_eq!(limit(&p, Some("premium"), None), Ok(4));
        assert_eq!(
            limit(&p, Some("premium"), Some(2)),
            Ok(2),
            "the token's own limit wins"
        );
        assert_eq!(limit(&p, Some("staff"), None), Ok(u32::MAX));
        assert_eq!(
            limit(&p, Some("free"), None),
            Err(PlanRefusal::Blocked(Some(Arc::from("free"))))
        );
        assert_eq!(
            p.allowance(Some(&Arc::from("basic")), None)
                .unwrap()
                .plan
                .as_deref(),
            Some("basic")
        );
    }

    #[test]
    fn unknown_plans_fall_back_or_are_refused() {
        let p = policy("default_plan = \"basic\"");
        assert_eq!(
            limit(&p, Some("gold"), None),
            Ok(1),
            "as no plan: the default plan"
        );
        assert_eq!(limit(&p, None, None), Ok(1));
        let strict = policy("unknown_plan = \"reject\"");
        assert_eq!(
            limit(&strict, Some("gold"), None),
            Err(PlanRefusal::Unknown)
        );
        assert_eq!(limit(&strict, None, None), Ok(3));
    }

    #[test]
    fn plan_labels_are_configured_names_unknown_or_default() {
        let label = |p: &Policy, plan: Option<&str>| {
            p.plan_label(plan.map(Arc::from).as_ref())
                .map(|l| l.to_string())
        };
        let p = policy("");
        assert_eq!(label(&p, Some("basic")).as_deref(), Some("basic"));
        assert_eq!(label(&p, Some("gold")).as_deref(), Some("unknown"));
        assert_eq!(label(&p, None), None);
        let d = policy("default_plan = \"premium\"");
        assert_eq!(label(&d, None).as_deref(), Some("premium"));
    }
}
