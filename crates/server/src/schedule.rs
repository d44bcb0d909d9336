//! Schedules (CAU's self-updating mode): campaign files the orchestrator creates and starts by
//! itself when their cron rule comes due and some targeted node is behind.
//!
//! What is due, and what a missed run may do, is decided in the core
//! (`baton_core::schedule`); this module keeps the schedule journal (its own table beside the
//! campaigns'), runs one task that sleeps until the next run (or until the clock is moved or a
//! schedule added), and carries runs out through the same paths an operator's calls take:
//! creation under the fleet gate, a start with its checks and hook. Every run is journaled with
//! what became of it and why.

use crate::{Fail, Hub, Shared};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_core::schedule::{late_run_allowed, Due, Entry, Outcome, ScheduleEvent, Schedules};
use baton_core::Millis;
use baton_proto::{ApiError, CreateCampaign, ScheduleRun, ScheduleView};
use std::sync::Weak;
use std::time::Duration;

/// The longest the scheduler sleeps before it looks again (also with nothing scheduled).
const IDLE: Duration = Duration::from_secs(3600);

/// How soon a run whose campaign could not be settled is tried again.
const RETRY: Duration = Duration::from_secs(30);

fn run_of(at_ms: Millis, due_ms: Millis, missed: u32, outcome: &Outcome) -> ScheduleRun {
    let (word, campaign, reason) = match outcome {
        Outcome::Started { campaign } => ("started", Some(*campaign), None),
        Outcome::Skipped { reason } => ("skipped", None, Some(reason.clone())),
        Outcome::Refused { campaign, reason } => ("refused", Some(*campaign), Some(reason.clone())),
    };
    ScheduleRun { at_ms, due_ms, missed, outcome: word.into(), campaign, reason }
}

fn view_of(name: &str, e: &Entry, now: Millis, all: &Schedules) -> ScheduleView {
    ScheduleView {
        name: name.to_string(),
        cron: e.schedule.cron.text().to_string(),
        timezone: e.schedule.zone().to_string(),
        target_version: e.target.clone(),
        file: e.file.clone(),
        added_ms: e.added_ms,
        added_by: e.by.clone(),
        next_run_ms: e.next_at(now),
        last: e.last.as_ref().map(|l| run_of(l.at_ms, l.due_ms, l.missed, &l.outcome)),
        starting: all.pending.get(name).map(|&(_, id)| id),
    }
}

/// The task carrying out an add or remove ended before it answered (the orchestrator is
/// stopping).
fn interrupted() -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopping",
        "the orchestrator is stopping; ask again when it is back",
    )
}

fn journal_down(e: impl std::fmt::Display) -> Fail {
    Fail::new(StatusCode::SERVICE_UNAVAILABLE, "journal-unavailable", format!("nothing was changed: {e}"))
}

impl Hub {
    /// The schedules as their journal leaves them. The lock is never held across an await.
    pub(crate) fn schedules(&self) -> std::sync::MutexGuard<'_, Schedules> {
        self.schedules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every schedule with its next run.
    pub fn schedule_views(&self) -> Vec<ScheduleView> {
        let now = self.clock.now();
        let s = self.schedules();
        s.entries.iter().map(|(n, e)| view_of(n, e, now, &s)).collect()
    }

    /// Journals a schedule event, then applies it: what is in memory is never ahead of the disk.
    async fn journal_schedule(&self, event: ScheduleEvent) -> Result<(), Fail> {
        let at = self.clock.now();
        let store = self.store.clone();
        let e = event.clone();
        tokio::task::spawn_blocking(move || store.append_schedule(at, &e))
            .await
            .map_err(journal_down)?
            .map_err(journal_down)?;
        self.schedules()
            .apply(at, &event)
            .map_err(|e| Fail::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-schedule", e.to_string()))?;
        self.schedule_changed.notify_one();
        let _ = self.stream.send(crate::StreamItem::Schedules { schedules: self.schedule_views() });
        Ok(())
    }

    /// `baton schedule add`: checks the campaign file as a creation would, and that it has a
    /// `schedule`; one schedule per campaign name.
    pub async fn add_schedule(&self, req: CreateCampaign, by: String) -> Result<ScheduleView, Fail> {
        let file = req.file.unwrap_or_else(|| "campaign.toml".into());
        let fleet = self.current_fleet();
        let spec = baton_core::load_campaign(&file, &req.toml, &fleet)
            .map_err(|d| Fail::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-campaign", d.to_string()))?;
        let Some(schedule) = &spec.schedule else {
            return Err(Fail::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-schedule",
                format!(
                    "{file} has no `schedule`: add a cron rule such as schedule = \"0 3 * * TUE#2\" (03:00 on the second Tuesday), or run it once with `baton run`"
                ),
            ));
        };
        if let Some(program) = spec.before_start.first() {
            self.hook_allowed(program, StatusCode::UNPROCESSABLE_ENTITY)?;
        }
        let _gate = self.schedule_gate.lock().await;
        if self.schedules().entries.contains_key(&spec.name) {
            return Err(Fail::new(
                StatusCode::CONFLICT,
                "schedule-exists",
                format!(
                    "a schedule named {} exists; remove it first (baton schedule remove {})",
                    spec.name, spec.name
                ),
            ));
        }
        self.journal_schedule(ScheduleEvent::Added {
            name: spec.name.clone(),
            cron: schedule.cron.text().to_string(),
            timezone: schedule.zone().to_string(),
            target: spec.target_version.clone(),
            file,
            toml: req.toml,
            by,
        })
        .await?;
        let now = self.clock.now();
        let s = self.schedules();
        s.entries.get(&spec.name).map(|e| view_of(&spec.name, e, now, &s)).ok_or_else(|| {
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "schedule-lost",
                "the schedule was journaled but is not kept",
            )
        })
    }

    /// `baton schedule remove`: no more runs; campaigns it started go on.
    pub async fn remove_schedule(&self, name: &str, by: String) -> Result<ScheduleView, Fail> {
        let _gate = self.schedule_gate.lock().await;
        let now = self.clock.now();
        let view = {
            let s = self.schedules();
            s.entries.get(name).map(|e| view_of(name, e, now, &s))
        }
        .ok_or_else(|| Fail::new(StatusCode::NOT_FOUND, "unknown-schedule", format!("no schedule {name}")))?;
        self.journal_schedule(ScheduleEvent::Removed { name: name.to_string(), by }).await?;
        Ok(view)
    }

    /// A schedule's runs, oldest first, also after it was removed.
    pub fn schedule_runs(&self, name: &str) -> Result<Vec<ScheduleRun>, Fail> {
        let events = self
            .store
            .schedule_events()
            .map_err(|e| Fail::new(StatusCode::SERVICE_UNAVAILABLE, "journal-unavailable", e.to_string()))?;
        let mut known = false;
        let mut runs = Vec::new();
        // Entries that do not read are passed over here as at start.
        for (at, e) in events.into_iter().filter_map(|(_, e)| e.ok()) {
            match e {
                ScheduleEvent::Added { name: n, .. } if n == name => known = true,
                ScheduleEvent::Fired { name: n, due_ms, missed, outcome, .. } if n == name => {
                    runs.push(run_of(at, due_ms, missed, &outcome))
                }
                _ => {}
            }
        }
        if !known {
            return Err(Fail::new(StatusCode::NOT_FOUND, "unknown-schedule", format!("no schedule {name}")));
        }
        Ok(runs)
    }

    /// Carries out one due run and says what became of it; `None` when its campaign could not
    /// be aborted after a refused start (it stays pending, and is seen to again).
    async fn fire(&self, e: &Entry, d: &Due, now: Millis) -> Option<Outcome> {
        let skipped = |reason: String| Some(Outcome::Skipped { reason });
        let fleet = self.current_fleet();
        let spec = match baton_core::load_campaign(&e.file, &e.toml, &fleet) {
            Ok(s) => s,
            Err(diag) => return skipped(diag.message),
        };
        if !late_run_allowed(d.late, spec.windows.as_ref(), now) {
            return skipped(format!(
                "it was due at {} while the orchestrator could not run it, and the campaign's window is closed now; it runs when next due",
                baton_core::schedule::utc(d.due_ms)
            ));
        }
        let req = CreateCampaign { toml: e.toml.clone(), file: Some(e.file.clone()) };
        // Journaled as the schedule's with the campaign itself (see `settle`).
        let v = match self.create_as(req, Some((&d.name, d.due_ms))).await {
            Ok(v) => v,
            Err(f) => return skipped(f.message),
        };
        let start = self.act(v.id, "start", format!("schedule {}", d.name)).await.err().map(|f| f.message);
        self.settle(&d.name, v.id, start).await
    }

    /// What became of a campaign a schedule's run created, after its start (`refused`: why the
    /// start was refused, if it was): a campaign still Planned is aborted, since one that will
    /// not start must not hold the fleet. Checked and aborted under the start lock, so that an
    /// operator's start cannot land in between. `None` when the abort itself failed.
    async fn settle(&self, name: &str, id: i64, refused: Option<String>) -> Option<Outcome> {
        let _starting = self.starting.lock().await;
        let refused_for = |why: String| Some(Outcome::Refused { campaign: id, reason: why });
        match self.view(id).map(|v| v.phase) {
            Some(baton_proto::Phase::Planned) => {
                let why = refused.unwrap_or_else(|| {
                    "the orchestrator stopped between creating and starting it; aborted, the schedule runs when next due"
                        .into()
                });
                match self.act(id, "abort", format!("schedule {name}")).await {
                    Ok(_) => refused_for(why),
                    Err(a) => {
                        tracing::error!(
                            schedule = name,
                            campaign = id,
                            error = a.message,
                            "a scheduled campaign that did not start could not be aborted; trying again"
                        );
                        None
                    }
                }
            }
            None => refused_for(refused.unwrap_or_else(|| "the campaign no longer exists".into())),
            Some(baton_proto::Phase::Aborted) => {
                refused_for(refused.unwrap_or_else(|| "the campaign was aborted before it started".into()))
            }
            // It runs (its start was journaled, or an operator started it).
            Some(_) => Some(Outcome::Started { campaign: id }),
        }
    }

    /// Runs whose campaign was created but not said what became of (the orchestrator stopped
    /// in between, or an abort failed) are settled, each journaled as handled up to its own
    /// time: what came due after it is one run next.
    async fn recover(&self) {
        let pending: Vec<(String, Millis, i64)> =
            self.schedules().pending.iter().map(|(n, &(due, id))| (n.clone(), due, id)).collect();
        for (name, due_ms, id) in pending {
            let Some(outcome) = self.settle(&name, id, None).await else { continue };
            tracing::warn!(
                schedule = name,
                campaign = id,
                ?outcome,
                "a schedule's interrupted run is settled"
            );
            let event = ScheduleEvent::Fired {
                name: name.clone(),
                due_ms,
                missed: 0,
                outcome,
                through_ms: Some(due_ms),
            };
            self.journal_fired(event).await;
        }
    }

    /// Journals a run; if the journal cannot, it is still taken as done here, so that it is not
    /// run again at once (a restart runs it again, late, and the fleet gate keeps that safe).
    async fn journal_fired(&self, event: ScheduleEvent) {
        if let Err(f) = self.journal_schedule(event.clone()).await {
            tracing::error!(error = f.message, ?event, "a schedule's run could not be journaled");
            self.schedules().apply(self.clock.now(), &event).ok();
        }
    }

    /// Runs what is due now, each once, journaling what became of it and that everything due up
    /// to the instant it was judged due is handled.
    async fn run_due(&self) {
        self.schedules().clamp(self.clock.now());
        let names: Vec<String> = self.schedules().due(self.clock.now()).into_iter().map(|d| d.name).collect();
        for name in names {
            // Judged afresh: an earlier run may have taken minutes.
            let now = self.clock.now();
            let (entry, due) = {
                let s = self.schedules();
                let Some(d) = s.due(now).into_iter().find(|d| d.name == name) else { continue };
                let Some(e) = s.entries.get(&name).cloned() else { continue };
                (e, d)
            };
            let Some(outcome) = self.fire(&entry, &due, now).await else { continue };
            tracing::info!(
                schedule = name,
                due_ms = due.due_ms,
                missed = due.missed,
                ?outcome,
                "schedule ran"
            );
            let event = ScheduleEvent::Fired {
                name: name.clone(),
                due_ms: due.due_ms,
                missed: due.missed,
                outcome,
                through_ms: Some(now),
            };
            self.journal_fired(event).await;
        }
    }
}

/// The scheduler: sleeps until the next run, or until the clock is moved or a schedule added
/// or removed, then runs what is due. Ends with the hub.
pub(crate) async fn scheduler(hub: Weak<Hub>) {
    let (changed, mut moves) = match hub.upgrade() {
        Some(h) => (h.schedule_changed.clone(), h.clock.moves()),
        None => return,
    };
    loop {
        let wait = {
            let Some(h) = hub.upgrade() else { return };
            h.recover().await;
            h.run_due().await;
            let now = h.clock.now();
            let s = h.schedules();
            let next =
                s.next_due(now).map_or(IDLE, |t| Duration::from_millis(t.saturating_sub(now)).min(IDLE));
            // A run whose campaign could not be aborted is tried again soon.
            if s.pending.is_empty() {
                next
            } else {
                next.min(RETRY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {}
            r = moves.changed() => if r.is_err() { return },
        }
    }
}

/// Every schedule, with when each runs next and its last run.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", security(("token" = [])),
    responses((status = 200, body = Vec<ScheduleView>),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError)))]
pub(crate) async fn list(State(h): State<Shared>) -> Json<Vec<ScheduleView>> {
    Json(h.schedule_views())
}

/// Adds a schedule: a campaign file with a `schedule` key. When it comes due and some targeted
/// node is behind and no campaign holds the fleet, the orchestrator creates and starts it.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateCampaign, security(("token" = [])),
    params(("x-baton-operator" = Option<String>, Header, description = "who adds it (journaled)")),
    responses((status = 201, body = ScheduleView),
              (status = 400, description = "the body is not JSON", body = ApiError),
              (status = 401, body = ApiError),
              (status = 409, description = "a schedule of that campaign name exists", body = ApiError),
              (status = 413, description = "body over 2 MiB", body = ApiError), (status = 415, description = "not application/json", body = ApiError),
              (status = 422, description = "bad campaign file, no `schedule` key, a before_start this orchestrator does not allow, or a body that is JSON but not of this shape", body = ApiError),
              (status = 500, description = "journaled but not kept (a bug)", body = ApiError),
              (status = 503, description = "the journal could not record it (disk full, I/O error), or the orchestrator is stopping", body = ApiError)))]
pub(crate) async fn add(
    State(h): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateCampaign>,
) -> Result<Response, Fail> {
    let by = h.authorize(&headers)?;
    // Carried out whole once received, also if the client goes away meanwhile: what is
    // journaled is also what the scheduler keeps.
    let hub = h.clone();
    let v =
        tokio::spawn(async move { hub.add_schedule(req, by).await }).await.map_err(|_| interrupted())??;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Removes a schedule; campaigns it started go on.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", security(("token" = [])),
    params(("name" = String, Path, description = "the schedule's (campaign's) name"),
           ("x-baton-operator" = Option<String>, Header, description = "who does it (journaled)")),
    responses((status = 200, description = "the schedule as it was", body = ScheduleView),
              (status = 400, description = "the name is not valid UTF-8 once decoded", body = ApiError),
              (status = 401, body = ApiError), (status = 404, body = ApiError),
              (status = 503, description = "the journal could not record it, so it was not removed; or the orchestrator is stopping", body = ApiError)))]
pub(crate) async fn remove(
    State(h): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ScheduleView>, Fail> {
    let by = h.authorize(&headers)?;
    let hub = h.clone();
    tokio::spawn(async move { hub.remove_schedule(&name, by).await })
        .await
        .map_err(|_| interrupted())?
        .map(Json)
}

/// A schedule's runs from its journal, oldest first: when each came due, and what it did or why not.
#[utoipa::path(get, path = "/v1/schedules/{name}/runs", tag = "schedules", security(("token" = [])),
    params(("name" = String, Path, description = "the schedule's (campaign's) name")),
    responses((status = 200, body = Vec<ScheduleRun>),
              (status = 400, description = "the name is not valid UTF-8 once decoded", body = ApiError),
              (status = 500, description = "reading the journal failed unexpectedly", body = ApiError),
              (status = 401, description = "no token (reads need it unless --open-reads)", body = ApiError),
              (status = 404, description = "no schedule of that name was ever added", body = ApiError),
              (status = 503, description = "the journal could not be read", body = ApiError)))]
pub(crate) async fn runs(
    State(h): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Vec<ScheduleRun>>, Fail> {
    tokio::task::spawn_blocking(move || h.schedule_runs(&name))
        .await
        .map_err(|e| Fail::new(StatusCode::INTERNAL_SERVER_ERROR, "runs", e.to_string()))?
        .map(Json)
}

/// Folds the stored schedule journal. An entry that no longer reads or applies (written by a
/// newer baton, or a time zone a newer database dropped) is logged and passed over: the
/// campaigns must come up whatever became of a schedule.
pub(crate) fn replay(store: &crate::store::Store) -> Result<Schedules, crate::ServerError> {
    let mut s = Schedules::default();
    for (seq, item) in store.schedule_events()? {
        match item.map_err(|e| e.to_string()).and_then(|(at, e)| s.apply(at, &e).map_err(|e| e.to_string())) {
            Ok(()) => {}
            Err(error) => tracing::error!(seq, error, "a schedule journal entry is passed over"),
        }
    }
    Ok(s)
}
