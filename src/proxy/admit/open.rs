//! How an admitted request's stream is opened: the device it comes from, the shadow limit
//! tried first, the dry run that admits what the limit would refuse.

use super::*;

impl StreamGate {
    /// The opening device (`streams.device_header`, or its parameter), as the store keys
    /// it: the first 8 bytes of SHA-256 over the user and the device id, so the raw id is
    /// never stored, and one device id under two users is two devices.
    pub(super) fn device_of(&self, req: &RequestHeader, user: &str) -> Option<DeviceKey> {
        let (header, param) = self.device.as_ref()?;
        let from_header = req.headers.get(header).map(|v| v.as_bytes());
        let from_param = || {
            req.uri
                .query()
                .and_then(|q| crate::identity::param_value(q, param))
                .map(str::as_bytes)
        };
        let id = from_header.or_else(from_param).filter(|d| !d.is_empty())?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(id);
        let digest = ctx.finish();
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        Some(u64::from_be_bytes(key))
    }

    /// Open a stream under the user's allowance. With `streams.shadow_limit` below the
    /// limit, the shadow limit is tried first and a refusal by it only counted. In a dry
    /// run an open the limit refuses is opened all the same (without evicting), and what
    /// the limit would have done is recorded for the answer, both ways, and the count.
    pub(super) async fn open_under(
        &self,
        ctx: &mut RequestCtx,
        user: &str,
        allowance: &Allowance,
        shadow: Option<u32>,
        stream: Option<StreamId>,
    ) -> Result<Opened, StoreError> {
        let device = ctx.device;
        let open = |limit: u32, at_limit: Option<AtLimit>| async move {
            let with = OpenWith { at_limit, device };
            let opening = match (with == OpenWith::default(), stream) {
                (false, _) => self.store.open_with(user, limit, stream, &with),
                (true, Some(id)) => self.store.open_as(user, limit, id),
                (true, None) => self.store.open(user, limit),
            };
            self.timed(StoreOp::Open, opening).await
        };
        let limit = allowance.limit;
        if let Some(shadow) = shadow.filter(|&s| s < limit) {
            match open(shadow, None).await? {
                Opened::Rejected { .. } => ctx.shadow_refused = true,
                // Within the lower limit, so within the limit: this is the open.
                within => return Ok(within),
            }
        }
        if !allowance.dry_run {
            return open(limit, allowance.at_limit).await;
        }
        match open(limit, None).await? {
            Opened::Rejected { active, .. } => {
                let (would, label) = match allowance.at_limit {
                    Some(_) => (Decision::WouldEvict, "would_evict"),
                    None => (Decision::WouldRefuse, "would_refuse"),
                };
                let status = format!("{label}; limit={limit}; active={}", active + 1);
                ctx.limit_status = HeaderValue::from_str(&status).ok();
                ctx.would = Some(would);
                open(u32::MAX, None).await
            }
            within => Ok(within),
        }
    }
}
