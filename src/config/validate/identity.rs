//! What serde cannot check in `[identity]`, `[identity.jwt]` and `[plans]`: key sources,
//! algorithm names, claim paths, the plan header's trust, plan names.

use std::time::Duration;

use super::*;

/// Every plan allows something definite, and the default plan exists.
pub(super) fn validate_plans(
    plans: &std::collections::BTreeMap<String, PlanSection>,
    streams: &StreamsSection,
) -> Result<(), KeyError> {
    for (name, p) in plans {
        let key = format!("plans.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(KeyError::new(
                key,
                "a plan name is letters, digits, '-', '_' or '.'",
            ));
        }
        match (p.limit, p.unlimited) {
            (Some(_), true) => {
                return Err(KeyError::new(
                    key,
                    "set limit or unlimited = true, not both",
                ))
            }
            (None, false) => {
                return Err(KeyError::new(
                    key,
                    "needs limit (0 blocks) or unlimited = true",
                ))
            }
            _ => {}
        }
    }
    if ![401, 403, 409, 429].contains(&streams.limit_status) {
        return Err(KeyError::new(
            "streams.limit_status",
            "must be 401, 403, 409 or 429",
        ));
    }
    if let Some(d) = &streams.default_plan {
        if !plans.contains_key(d) {
            return Err(KeyError::new(
                "streams.default_plan",
                "names no [plans.<name>] table",
            ));
        }
    }
    Ok(())
}

impl JwtSection {
    fn validate(&self) -> Result<(), KeyError> {
        if self.keys.is_empty()
            && self.jwks_file.is_none()
            && self.jwks_url.is_none()
            && self.hmac_secret_file.is_none()
            && self.hmac_secret_env.is_none()
        {
            return Err(KeyError::new("identity.jwt", crate::jwt::NO_KEYS));
        }
        if let Some(url) = &self.jwks_url {
            crate::jwt::remote::parse_url(url)?;
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            return Err(KeyError::new(
                "identity.jwt.jwks_refresh",
                "must be at least 1s",
            ));
        }
        if self.jwks_max_stale < self.jwks_refresh {
            return Err(KeyError::new(
                "identity.jwt.jwks_max_stale",
                "must be at least jwks_refresh (a set would expire between two fetches)",
            ));
        }
        if self.jwks_timeout.is_zero() {
            return Err(KeyError::new(
                "identity.jwt.jwks_timeout",
                "must be more than 0s",
            ));
        }
        if self.hmac_secret_file.is_some() && self.hmac_secret_env.is_some() {
            return Err(KeyError::new(
                "identity.jwt.hmac_secret_env",
                "set hmac_secret_file or hmac_secret_env, not both",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(KeyError::new(
                "identity.jwt.algorithms",
                "needs at least one algorithm",
            ));
        }
        for a in &self.algorithms {
            if a.parse::<jsonwebtoken::Algorithm>().is_err() {
                return Err(KeyError::new(
                    "identity.jwt.algorithms",
                    format!("{a:?} is not an accepted algorithm (none never is)"),
                ));
            }
        }
        let claim_ok = |c: &str| !c.is_empty() && c.split('.').all(|p| !p.is_empty());
        if !claim_ok(&self.user_claim) {
            return Err(KeyError::new(
                "identity.jwt.user_claim",
                "must name a claim",
            ));
        }
        for (key, c) in [
            ("identity.jwt.plan_claim", &self.plan_claim),
            ("identity.jwt.limit_claim", &self.limit_claim),
            ("identity.jwt.token_param", &self.token_param),
            ("identity.jwt.token_cookie", &self.token_cookie),
        ] {
            if c.as_deref()
                .is_some_and(|c| !claim_ok(c) || c.contains(['=', '&', ';', ' ']))
            {
                return Err(KeyError::new(key, "must be a plain name"));
            }
        }
        if self.max_limit == 0 {
            return Err(KeyError::new(
                "identity.jwt.max_limit",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl IdentitySection {
    pub(super) fn validate(&self) -> Result<(), KeyError> {
        if self.mode == IdentityMode::Jwt {
            self.jwt.validate()?;
        }
        if self.plan_header.is_some() && self.trusted_proxies.is_empty() {
            return Err(KeyError::new(
                "identity.trusted_proxies",
                "plan_header is believed only from trusted_proxies: name them",
            ));
        }
        if self.max_len == 0 || self.max_len > 4096 {
            return Err(KeyError::new(
                "identity.max_len",
                "must be between 1 and 4096",
            ));
        }
        Ok(())
    }
}
