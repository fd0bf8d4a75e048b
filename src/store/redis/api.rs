//! The [`StreamStore`] operations on Redis: each one script (or command) built from the
//! keys and scripts in `mod.rs` and `scripts.rs`, and the follower of stream ends.

use super::*;

#[async_trait]
impl StreamStore for RedisStore {
    async fn open(&self, user: &str, limit: u32) -> Result<Opened, StoreError> {
        self.open_id(user, limit, Uuid::new_v4(), true).await
    }

    /// A resume under the player's own id: a timed-out one is not abandoned (the id may be
    /// live through another request), its lease expires by TTL at worst.
    async fn open_as(&self, user: &str, limit: u32, id: StreamId) -> Result<Opened, StoreError> {
        self.open_id(user, limit, id, false).await
    }

    async fn renew(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.renew_lease(user, id).await
    }

    async fn release(&self, user: &str, id: StreamId, keep: bool) -> Result<(), StoreError> {
        if keep {
            self.refresh_held(user, id).await.map(|_| ())
        } else {
            self.remove(user, id, None, false).await.map(|_| ())
        }
    }

    async fn end(&self, user: &str, id: StreamId) -> Result<bool, StoreError> {
        self.remove(user, id, None, true).await
    }

    async fn open_with(
        &self,
        user: &str,
        limit: u32,
        id: Option<StreamId>,
        with: &OpenWith,
    ) -> Result<Opened, StoreError> {
        let new = id.unwrap_or_else(Uuid::new_v4);
        let (mode, idle, cooldown, tombstone) = match &with.at_limit {
            None => (0, 0, 0, 0),
            Some(at) => {
                let (mode, idle) = match at.evict {
                    Evict::Oldest => (1, 0),
                    Evict::Idle(after) => (2, millis(after)),
                };
                (mode, idle, millis(at.cooldown), millis(at.tombstone_ttl))
            }
        };
        let device = with.device.map(|d| format!("{d:016x}")).unwrap_or_default();
        let mut inv = self.scripts.open_with.prepare_invoke();
        inv.key(self.key(user))
            .key(self.ended_key(user))
            .key(self.gone_key(user))
            .key(self.cooldown_key(user))
            .key(self.rules_key(user))
            .key(self.devices_key(user))
            .key(self.meta_key(user))
            .arg(limit)
            .arg(self.tuning.ttl_ms())
            .arg(new.to_string())
            .arg(u8::from(id.is_some()))
            .arg(mode)
            .arg(idle)
            .arg(cooldown)
            .arg(tombstone)
            .arg(self.evictions_channel())
            .arg(user)
            .arg(device)
            .arg(self.replacements_channel())
            .arg(&self.instance);
        let reply: Result<(i64, i64, i64, i64, String), _> = self.invoke(inv).await;
        if id.is_none() && matches!(reply, Err(StoreError::Timeout)) {
            self.abandon(user, new);
        }
        let (outcome, active, retry_ms, expired, other) = reply?;
        self.count_expired(expired);
        let active = u32::try_from(active).unwrap_or(u32::MAX);
        let retry_after = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
        match outcome {
            0 => Ok(Opened::Rejected {
                active,
                retry_after,
            }),
            1 => Ok(Opened::Admitted(new)),
            2 => Ok(Opened::Renewed(new)),
            3 => Ok(Opened::CoolingDown {
                active,
                retry_after,
            }),
            4 | 6 => {
                let other = Uuid::parse_str(&other)
                    .map_err(|_| StoreError::Protocol("evicted id is not a UUID".into()))?;
                Ok(if outcome == 4 {
                    Opened::Evicted {
                        id: new,
                        evicted: other,
                    }
                } else {
                    Opened::Replaced {
                        id: new,
                        replaced: other,
                    }
                })
            }
            5 => Ok(Opened::Blocked { retry_after }),
            n => Err(StoreError::Protocol(format!("open outcome {n}"))),
        }
    }

    async fn end_for_good(
        &self,
        user: &str,
        id: StreamId,
        reason: GoneReason,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.remove(user, id, Some((reason, ttl)), true).await
    }

    async fn set_rule(&self, user: &str, rule: UserRule, ttl: Duration) -> Result<(), StoreError> {
        let (kind, n) = match rule {
            UserRule::Limit(n) => ("limit", n),
            UserRule::Block => ("block", 0),
        };
        let mut inv = self.scripts.set_rule.prepare_invoke();
        inv.key(self.rules_key(user))
            .arg(kind)
            .arg(n)
            .arg(millis(ttl).max(1));
        let _: i64 = self.invoke(inv).await?;
        Ok(())
    }

    async fn clear_rule(&self, user: &str, kind: RuleKind) -> Result<bool, StoreError> {
        let had = match kind {
            RuleKind::Limit => self.rules(user).await?.limit.is_some(),
            RuleKind::Block => self.rules(user).await?.blocked.is_some(),
        };
        let field = match kind {
            RuleKind::Limit => "limit",
            RuleKind::Block => "block",
        };
        let mut del = redis::cmd("HDEL");
        del.arg(self.rules_key(user)).arg(field);
        let _: i64 = self
            .bounded(async { self.connect().await?.query(&del).await })
            .await?;
        Ok(had)
    }

    async fn rules(&self, user: &str) -> Result<UserRules, StoreError> {
        let mut inv = self.scripts.rules.prepare_invoke();
        inv.key(self.rules_key(user));
        let (n, left, block): (i64, i64, i64) = self.invoke(inv).await?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(UserRules {
            limit: (n >= 0).then(|| (u32::try_from(n).unwrap_or(u32::MAX), ms(left))),
            blocked: (block >= 0).then(|| ms(block)),
        })
    }

    async fn gone(&self, user: &str, id: StreamId) -> Result<Option<Gone>, StoreError> {
        let mut inv = self.scripts.gone.prepare_invoke();
        inv.key(self.gone_key(user)).arg(id.to_string());
        let raw: Option<String> = self.invoke(inv).await?;
        Ok(raw.and_then(|v| {
            let (reason, at) = v.split_once(' ')?;
            Some(Gone {
                reason: GoneReason::from_label(reason)?,
                at_unix_ms: at.parse().ok()?,
            })
        }))
    }

    async fn list(&self, user: &str) -> Result<Vec<LeaseInfo>, StoreError> {
        let mut inv = self.scripts.list.prepare_invoke();
        inv.key(self.key(user))
            .key(self.meta_key(user))
            .key(self.devices_key(user));
        let raw: Vec<String> = self.invoke(inv).await?;
        let num = |s: &String| {
            s.parse::<f64>()
                .map_err(|_| StoreError::Protocol(format!("not a number: {s}")))
        };
        let (head, rest) = raw.split_at(raw.len().min(2));
        let [expired, now] = head else {
            return Err(StoreError::Protocol("short LIST reply".into()));
        };
        self.count_expired(num(expired)? as i64);
        let now = num(now)?;
        let ttl = self.tuning.ttl_ms() as f64;
        rest.chunks(4)
            .map(|lease| match lease {
                [id, score, meta, device] => {
                    let score = num(score)?;
                    let (opened, served_by) = match meta.split_once(' ') {
                        Some((o, i)) => (o.parse::<u64>().ok(), Some(i.to_owned())),
                        None => (None, None),
                    };
                    Ok(LeaseInfo {
                        id: Uuid::parse_str(id)
                            .map_err(|_| StoreError::Protocol(format!("bad stream id {id}")))?,
                        expires_in: Some(Duration::from_millis((score - now).max(0.0) as u64)),
                        opened_unix_ms: opened,
                        // The score is the last renewal (or hold refresh) plus the TTL.
                        renewed_unix_ms: Some((score - ttl).max(0.0) as u64),
                        device: (!device.is_empty()).then(|| device.chars().take(8).collect()),
                        served_by,
                    })
                }
                _ => Err(StoreError::Protocol("odd LIST reply".into())),
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = redis::cmd("PING");
        self.bounded(async { self.connect().await?.query::<String>(&ping).await })
            .await
            .map(|_| ())
    }

    fn retune(&self, lease_ttl: Duration, timeout: Duration) {
        self.tuning.set(lease_ttl, timeout);
    }

    /// A third of the TTL, or of `streams.evict_idle_after` when that is shorter.
    fn hold_refresh_interval(&self) -> Option<Duration> {
        let every = (self.tuning.ttl_ms() / 3).min(millis(self.idle_window) / 3);
        Some(Duration::from_millis(every.max(10)))
    }

    /// Subscribe to the ends channel, on the server (or a cluster node in turn: plain
    /// `PUBLISH` reaches every node of a cluster), and again after losing it. Ends
    /// published while the subscription is down are missed: their requests in flight on
    /// this instance run to their own end.
    async fn follow_ends(&self, on_end: &OnEnd<'_>) {
        use futures_util::StreamExt;
        let urls = match &self.target {
            Target::Single(url) => vec![url.clone()],
            Target::Cluster(nodes) => nodes.clone(),
        };
        let (ends, evictions, replacements) = (
            self.ends_channel(),
            self.evictions_channel(),
            self.replacements_channel(),
        );
        let mut was_up = true;
        for url in urls.iter().cycle() {
            let subscribed = async {
                let mut pubsub = self.client(url)?.get_async_pubsub().await?;
                pubsub
                    .subscribe(&[&ends, &evictions, &replacements])
                    .await?;
                Ok::<_, RedisError>(pubsub)
            };
            match tokio::time::timeout(
                self.tuning.timeout().max(Duration::from_secs(1)),
                subscribed,
            )
            .await
            {
                Ok(Ok(pubsub)) => {
                    if !was_up {
                        log::info!("following stream ends again");
                    }
                    was_up = true;
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        let channel = msg.get_channel_name();
                        let reason = if channel == evictions {
                            CutReason::Evicted
                        } else if channel == replacements {
                            CutReason::Replaced
                        } else {
                            CutReason::Ended
                        };
                        let parsed = payload
                            .split_once(' ')
                            .and_then(|(id, user)| Some((Uuid::parse_str(id).ok()?, user)));
                        if let Some((id, user)) = parsed {
                            on_end(user, id, reason);
                        }
                    }
                }
                Ok(Err(e)) if was_up => {
                    log::warn!("cannot follow stream ends: {}", unavailable(e));
                    was_up = false;
                }
                Err(_) if was_up => {
                    log::warn!("cannot follow stream ends: {}", StoreError::Timeout);
                    was_up = false;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn refresh(&self, user: &str, id: StreamId) -> Result<Option<CutReason>, StoreError> {
        self.refresh_held(user, id).await
    }
}
