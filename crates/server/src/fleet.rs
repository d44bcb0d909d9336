//! The fleet as its campaigns have left it: the committed functional level, each node's version,
//! and mixed mode (nodes at more than one version, or at one other than the level): since when,
//! for how long, and whether it has lasted past its limit. Past it, a `mixed-mode-overdue`
//! warning goes out (log, stream, webhook, metric) once, then once a day, however often the
//! orchestrator restarts: each warning is journaled.

use crate::{Hub, Shared, StreamItem};
use axum::extract::State;
use axum::Json;
use baton_core::model::Fleet;
use baton_core::units::{format_duration, DAY};
use baton_core::Millis;
use baton_proto::{ApiError, CampaignView, FleetNode, FleetView};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long mixed mode may last when no campaign sets `mixed_mode_limit`: four weeks, as for a
/// cluster OS rolling upgrade.
pub const DEFAULT_LIMIT: Millis = 28 * DAY;

/// After a warning, the next one for the same spell of mixed mode.
pub const WARN_EVERY: Millis = DAY;

/// The fleet as `views` (any order) leave it, at `now`. `warned` is the last warning: the start
/// of its spell of mixed mode, and when it went out.
pub fn compute(
    base: &Fleet,
    views: &[CampaignView],
    now: Millis,
    warned: Option<(Millis, Millis)>,
) -> FleetView {
    let mut views: Vec<&CampaignView> = views.iter().collect();
    views.sort_by_key(|v| v.id);
    let commit = views.iter().rposition(|v| v.committed());
    let level = match commit {
        Some(i) => Some(views[i].target_version.clone()),
        None => base.functional_level.clone(),
    };
    let mut versions: Vec<Option<String>> = base.nodes.iter().map(|n| n.version.clone()).collect();
    // Only from the nodes a campaign targeted: it knows the others only as they were when it
    // was created (the fleet file, or the last commit), perhaps before a later campaign.
    let apply = |versions: &mut Vec<Option<String>>, v: &CampaignView| {
        for n in v.nodes.iter().filter(|n| n.state != "not-targeted") {
            if let (Some(i), Some(ver)) = (base.node_id(&n.name), &n.version) {
                versions[i as usize] = Some(ver.clone());
            }
        }
    };
    let after = commit.map_or(0, |i| i + 1);
    for v in &views[..after] {
        apply(&mut versions, v);
    }
    // A spell of mixed mode begins with the start of the first campaign since the commit that
    // leaves the fleet mixed, and ends when one leaves it whole again (a rollback, say).
    let mut since: Option<Millis> = None;
    let mut limit: Option<Millis> = None;
    for v in &views[after..] {
        if since.is_none() {
            since = v.started_at_ms;
        }
        apply(&mut versions, v);
        // The limit of the newest campaign of this spell that sets one.
        limit = v.mixed_mode_limit_ms.or(limit);
        if !mixed(&versions, level.as_deref()) {
            since = None;
            limit = None;
        }
    }
    let is_mixed = mixed(&versions, level.as_deref());
    let since = since.filter(|_| is_mixed);
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let age = since.map(|s| now.saturating_sub(s));
    // Fenced: as the committed campaign, still guarding the fleet (no campaign after it), says.
    let guard = commit.filter(|&i| i + 1 == views.len()).map(|i| views[i]);
    let nodes = base
        .nodes
        .iter()
        .zip(&versions)
        .map(|(n, v)| {
            let fenced = guard.is_some_and(|g| g.nodes.iter().any(|x| x.name == n.name && x.fenced));
            FleetNode {
                name: n.name.clone(),
                version: v.clone(),
                fenced,
                reason: fenced.then(|| {
                    format!(
                        "at {}, older than the committed level {}: kept out of service until it is updated or unfenced",
                        v.as_deref().unwrap_or("?"),
                        level.as_deref().unwrap_or("?")
                    )
                }),
            }
        })
        .collect();
    FleetView {
        name: base.name.clone(),
        functional_level: level,
        versions: base.versions.clone(),
        nodes,
        mixed_mode: is_mixed,
        mixed_since_ms: since,
        mixed_age_ms: age,
        mixed_mode_limit_ms: limit,
        mixed_mode_overdue: age.is_some_and(|a| a > limit),
        overdue_warned_at_ms: warned.filter(|w| Some(w.0) == since).map(|w| w.1),
        checked_at_ms: None,
        now_ms: now,
    }
}

/// Whether the fleet runs at more than one version, or at one other than its level. Nodes whose
/// version is not known count for nothing.
fn mixed(versions: &[Option<String>], level: Option<&str>) -> bool {
    let mut known = versions.iter().flatten();
    match level {
        Some(l) => known.any(|v| v != l),
        None => known.next().is_some_and(|first| versions.iter().flatten().any(|v| v != first)),
    }
}

/// The view without what moves with the clock, to tell whether anything changed.
fn settled(v: &FleetView) -> FleetView {
    FleetView { mixed_age_ms: None, now_ms: 0, checked_at_ms: None, ..v.clone() }
}

/// After a warning that could not be journaled (so not sent), the next try.
const WARN_RETRY: Duration = Duration::from_secs(60);

impl Hub {
    /// The fleet as the campaigns have left it, now (from memory only).
    pub fn fleet_view(&self) -> FleetView {
        let warned = *self.overdue_warned.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = compute(&self.fleet, &self.views(), self.clock.now(), warned);
        let checked = self.fleet_checked.load(std::sync::atomic::Ordering::SeqCst);
        f.checked_at_ms = (checked > 0).then_some(checked);
        f
    }

    /// Sends the `mixed-mode-overdue` warning if it is due. Journaled first, so that it goes
    /// out at most once a day however often the orchestrator restarts; one that cannot be
    /// journaled is not sent (`Err`: try again later).
    async fn warn_if_overdue(&self, f: &FleetView) -> Result<bool, ()> {
        let (Some(since), Some(age)) = (f.mixed_since_ms, f.mixed_age_ms) else { return Ok(false) };
        if !f.mixed_mode_overdue || f.overdue_warned_at_ms.is_some_and(|w| f.now_ms < w + WARN_EVERY) {
            return Ok(false);
        }
        let (store, now) = (self.store.clone(), f.now_ms);
        match tokio::task::spawn_blocking(move || store.record_overdue_warning(now, since)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(
                    "cannot journal the mixed-mode-overdue warning ({e}); trying again in a minute"
                );
                return Err(());
            }
            Err(_) => return Err(()),
        }
        *self.overdue_warned.lock().unwrap_or_else(|p| p.into_inner()) = Some((since, now));
        let reason = format!(
            "fleet {} has run in mixed mode for {} (since {} ms), over its limit {}: commit or roll back",
            f.name,
            format_duration(age),
            since,
            format_duration(f.mixed_mode_limit_ms)
        );
        tracing::warn!(fleet = %f.name, "mixed-mode-overdue: {reason}");
        self.telemetry.overdue_warnings.inc();
        // To the webhooks of the newest campaign of the spell (the one to commit or roll back).
        let newest = self.views().into_iter().filter(|v| v.started_at_ms.is_some()).max_by_key(|v| v.id);
        if let Some(v) = newest {
            let (store, id) = (self.store.clone(), v.id);
            let urls = tokio::task::spawn_blocking(move || {
                store.get(id).ok().flatten().and_then(|s| Hub::files(&s).ok()).map(|(_, spec)| spec.webhooks)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            if !urls.is_empty() {
                let tx = crate::webhook::start(urls, self.webhooks.clone());
                let _ = tx.send(crate::webhook::Hook {
                    delivery: format!("fleet-{since}-{now}"),
                    campaign_id: v.id,
                    campaign: v.name.clone(),
                    fleet: f.name.clone(),
                    event: "mixed-mode-overdue",
                    node: None,
                    reason: Some(reason.clone()),
                    by: None,
                    at_ms: now,
                });
            }
        }
        let _ = self.stream.send(StreamItem::Notice {
            notice: "mixed-mode-overdue".into(),
            fleet: f.name.clone(),
            message: reason,
            at_ms: now,
        });
        Ok(true)
    }
}

/// Keeps the fleet's view in the stream and warns when mixed mode is overdue: wakes when a
/// campaign changes (at most every half second), when the clock is moved, and when the next
/// warning is due.
pub(crate) async fn watch(hub: Weak<Hub>) {
    let (mut items, mut moves) = match hub.upgrade() {
        Some(h) => (h.stream.subscribe(), h.clock.moves()),
        None => return,
    };
    let mut last: Option<FleetView> = None;
    let mut retry_at: Option<std::time::Instant> = None;
    loop {
        let wait = {
            let Some(h) = hub.upgrade() else { return };
            let mut f = h.fleet_view();
            // After a warning that could not be journaled, not again before WARN_RETRY, however
            // often campaigns change meanwhile.
            let warned = if retry_at.is_some_and(|t| std::time::Instant::now() < t) {
                Err(())
            } else {
                h.warn_if_overdue(&f).await
            };
            if warned.is_err() && retry_at.is_none_or(|t| std::time::Instant::now() >= t) {
                retry_at = Some(std::time::Instant::now() + WARN_RETRY);
            } else if warned.is_ok() {
                retry_at = None;
            }
            if warned == Ok(true) {
                f = h.fleet_view();
            }
            h.fleet_checked.store(f.now_ms, std::sync::atomic::Ordering::SeqCst);
            f.checked_at_ms = Some(f.now_ms);
            if last.as_ref() != Some(&settled(&f)) {
                last = Some(settled(&f));
                let _ = h.stream.send(StreamItem::Fleet(Box::new(f.clone())));
            }
            let next = match (f.mixed_since_ms, f.overdue_warned_at_ms) {
                (Some(_), Some(w)) => Some((w + WARN_EVERY).saturating_sub(f.now_ms)),
                (Some(s), None) => Some((s + f.mixed_mode_limit_ms + 1).saturating_sub(f.now_ms)),
                _ => None,
            }
            .map_or(Duration::from_secs(3600), |ms| {
                Duration::from_millis(ms.max(1)).min(Duration::from_secs(3600))
            });
            if warned.is_err() {
                next.max(WARN_RETRY)
            } else {
                next
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                r = moves.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                r = items.recv() => match r {
                    Ok(StreamItem::View(_) | StreamItem::Delta(_)) | Err(RecvError::Lagged(_)) => {
                        // Many changes a second on a large fleet: looked at twice a second at
                        // most, and what came meanwhile is in the next look.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        items = items.resubscribe();
                        break;
                    }
                    // Its own items and the journal's change nothing here.
                    Ok(_) => {}
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

impl Hub {
    /// Lets a fenced node back into service at its version: through the committed campaign
    /// that guards the fleet (the newest), journaled with who did it.
    async fn unfence(&self, node: &str, by: String) -> Result<FleetView, crate::Fail> {
        use axum::http::StatusCode;
        // Not while a campaign is being created (the guard is set aside meanwhile).
        let _gate = self.fleet_gate.lock().await;
        if self.fleet.node_id(node).is_none() {
            return Err(crate::Fail::new(
                StatusCode::NOT_FOUND,
                "unknown-node",
                format!("no node {node} in fleet {}", self.fleet.name),
            ));
        }
        let newest = self.views().into_iter().max_by_key(|v| v.id);
        let Some(v) = newest.filter(|v| v.committed()) else {
            return Err(crate::Fail::new(
                StatusCode::CONFLICT,
                "not-fenced",
                format!("node {node} is not fenced: no committed campaign guards fleet {}", self.fleet.name),
            ));
        };
        let inbox = self.campaigns().get(&v.id).map(|h| h.inbox.clone()).ok_or_else(crate::stopped)?;
        match Hub::submit(&inbox, baton_core::campaign::Event::Unfence { node: node.to_string(), by }).await?
        {
            Ok(()) => Ok(self.fleet_view()),
            Err(crate::driver::Refused::Campaign(baton_core::CampaignError::NotFenced(n))) => {
                Err(crate::Fail::new(StatusCode::CONFLICT, "not-fenced", format!("node {n} is not fenced")))
            }
            Err(r) => Err(Hub::refusal(r)),
        }
    }
}

/// Lets a fenced node back into service at its older version: its agent's services are started
/// again and it goes back into its load balancers. The committed campaign does not fence it again.
#[utoipa::path(post, path = "/v1/fleet/nodes/{node}/unfence", tag = "fleet", security(("token" = [])),
    params(("node" = String, Path, description = "the node's name"),
           ("x-baton-operator" = Option<String>, Header, description = "who does it (journaled)")),
    responses((status = 200, description = "the fleet, the node no longer fenced", body = FleetView),
              (status = 400, description = "the node's name is not valid UTF-8 once decoded", body = ApiError),
              (status = 401, body = ApiError), (status = 404, description = "no such node", body = ApiError),
              (status = 409, description = "the node is not fenced", body = ApiError),
              (status = 503, description = "the journal could not record it, so it was not done; or the orchestrator is stopping", body = ApiError)))]
pub(crate) async fn unfence(
    State(h): State<Shared>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(node): axum::extract::Path<String>,
) -> Result<Json<FleetView>, crate::Fail> {
    let by = h.authorize(&headers)?;
    // Carried out whole once received, also if the client goes away meanwhile.
    let hub = h.clone();
    tokio::spawn(async move { hub.unfence(&node, by).await }).await.map_err(|_| crate::stopped())?.map(Json)
}

/// The fleet: its committed functional level, each node's version (and whether it is fenced),
/// and how long it has run in mixed mode.
#[utoipa::path(get, path = "/v1/fleet", tag = "fleet", security(("token" = [])),
    responses((status = 200, body = FleetView),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
pub(crate) async fn get(State(h): State<Shared>) -> Json<FleetView> {
    Json(h.fleet_view())
}
