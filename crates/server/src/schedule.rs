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

fn run_of(at_ms: Millis, due_ms: Millis, missed: u32, outcome: &Outcome) -> ScheduleRun {
    let (word, campaign, reason) = match outcome {
        Outcome::Started { campaign } => ("started", Some(*campaign), None),
        Outcome::Skipped { reason } => ("skipped", None, Some(reason.clone())),
        Outcome::Refused { campaign, reason } => ("refused", Some(*campaign), Some(reason.clone())),
    };
    ScheduleRun { at_ms, due_ms, missed, outcome: word.into(), campaign, reason }
}

fn view_of(name: &str, e: &Entry, now: Millis) -> ScheduleView {
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
        starting: e.creating.map(|(_, id)| id),
    }
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
        self.schedules().entries.iter().map(|(n, e)| view_of(n, e, now)).collect()
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
        s.entries.get(&spec.name).map(|e| view_of(&spec.name, e, now)).ok_or_else(|| {
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
        let view = self.schedules().entries.get(name).map(|e| view_of(name, e, now)).ok_or_else(|| {
            Fail::new(StatusCode::NOT_FOUND, "unknown-schedule", format!("no schedule {name}"))
        })?;
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
                ScheduleEvent::Fired { name: n, due_ms, missed, outcome } if n == name => {
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

    /// Carries out one due run and says what became of it.
    async fn fire(&self, e: &Entry, d: &Due, now: Millis) -> Outcome {
        let skipped = |reason: String| Outcome::Skipped { reason };
        let fleet = self.current_fleet();
        let spec = match baton_core::load_campaign(&e.file, &e.toml, &fleet) {
            Ok(s) => s,
            Err(diag) => return skipped(diag.message),
        };
        if !late_run_allowed(d.late, spec.windows.as_ref(), now) {
            return skipped(format!(
                "it was due at {} while the orchestrator was down, and the campaign's window is closed now; it runs when next due",
                baton_core::schedule::utc(d.due_ms)
            ));
        }
        let req = CreateCampaign { toml: e.toml.clone(), file: Some(e.file.clone()) };
        let v = match self.create_as(req, true).await {
            Ok(v) => v,
            Err(f) => return skipped(f.message),
        };
        // Known as the schedule's before it is started: see `recover`.
        let created = ScheduleEvent::Created { name: d.name.clone(), due_ms: d.due_ms, campaign: v.id };
        if let Err(f) = self.journal_schedule(created).await {
            self.give_up(v.id, &d.name).await;
            return Outcome::Refused { campaign: v.id, reason: f.message };
        }
        match self.act(v.id, "start", format!("schedule {}", d.name)).await {
            Ok(_) => Outcome::Started { campaign: v.id },
            Err(f) => match self.give_up(v.id, &d.name).await {
                // Started after all (its start was journaled, or an operator started it).
                false => Outcome::Started { campaign: v.id },
                true => Outcome::Refused { campaign: v.id, reason: f.message },
            },
        }
    }

    /// Aborts a campaign a schedule created if it is still Planned (one that will not start
    /// must not hold the fleet); says whether it was.
    async fn give_up(&self, id: i64, name: &str) -> bool {
        if self.view(id).is_some_and(|v| v.phase != baton_proto::Phase::Planned) {
            return false;
        }
        if let Err(a) = self.act(id, "abort", format!("schedule {name}")).await {
            tracing::error!(
                campaign = id,
                error = a.message,
                "a scheduled campaign that did not start could not be aborted"
            );
        }
        true
    }

    /// After a restart: a run that created its campaign but did not say whether it started
    /// (the orchestrator stopped in between) is finished now: a campaign still Planned is
    /// aborted, one that runs is the run's.
    async fn recover(&self) {
        let pending: Vec<(String, Millis, i64)> = self
            .schedules()
            .entries
            .iter()
            .filter_map(|(n, e)| e.creating.map(|(due, id)| (n.clone(), due, id)))
            .collect();
        for (name, due_ms, id) in pending {
            let outcome = match self.give_up(id, &name).await {
                false => Outcome::Started { campaign: id },
                true => Outcome::Refused {
                    campaign: id,
                    reason: "the orchestrator stopped between creating and starting it; aborted, the schedule runs when next due".into(),
                },
            };
            tracing::warn!(
                schedule = name,
                campaign = id,
                ?outcome,
                "a schedule's run was interrupted by a restart"
            );
            let event = ScheduleEvent::Fired { name: name.clone(), due_ms, missed: 0, outcome };
            if let Err(f) = self.journal_schedule(event.clone()).await {
                tracing::error!(
                    schedule = name,
                    error = f.message,
                    "a schedule's run could not be journaled"
                );
                self.schedules().apply(self.clock.now(), &event).ok();
            }
        }
    }

    /// Runs what is due now, each once, journaling what became of it.
    async fn run_due(&self) {
        let now = self.clock.now();
        let due = self.schedules().due(now);
        for d in due {
            let Some(entry) = self.schedules().entries.get(&d.name).cloned() else { continue };
            let outcome = self.fire(&entry, &d, now).await;
            tracing::info!(schedule = d.name, due_ms = d.due_ms, missed = d.missed, ?outcome, "schedule ran");
            let event =
                ScheduleEvent::Fired { name: d.name.clone(), due_ms: d.due_ms, missed: d.missed, outcome };
            if let Err(f) = self.journal_schedule(event.clone()).await {
                // Not on disk: still taken as done here, so that it is not run again at once; a
                // restart runs it again (late), and the fleet gate keeps that safe.
                tracing::error!(
                    schedule = d.name,
                    error = f.message,
                    "a schedule's run could not be journaled"
                );
                self.schedules().apply(self.clock.now(), &event).ok();
            }
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
    if let Some(h) = hub.upgrade() {
        h.recover().await;
    }
    loop {
        let wait = {
            let Some(h) = hub.upgrade() else { return };
            h.run_due().await;
            let now = h.clock.now();
            let next = h.schedules().next_due(now);
            next.map_or(IDLE, |t| Duration::from_millis(t.saturating_sub(now)).min(IDLE))
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
              (status = 400, description = "the body is not JSON of this shape", body = ApiError),
              (status = 401, body = ApiError),
              (status = 409, description = "a schedule of that campaign name exists", body = ApiError),
              (status = 413, description = "body over 2 MiB", body = ApiError), (status = 415, description = "not application/json", body = ApiError),
              (status = 422, description = "bad campaign file, no `schedule` key, or a before_start this orchestrator does not allow", body = ApiError),
              (status = 503, description = "the journal could not record it (disk full, I/O error)", body = ApiError)))]
pub(crate) async fn add(
    State(h): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<CreateCampaign>,
) -> Result<Response, Fail> {
    let by = h.authorize(&headers)?;
    // Carried out whole once received, also if the client goes away meanwhile: what is
    // journaled is also what the scheduler keeps.
    let hub = h.clone();
    let v = tokio::spawn(async move { hub.add_schedule(req, by).await })
        .await
        .map_err(|_| crate::stopped())??;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Removes a schedule; campaigns it started go on.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", security(("token" = [])),
    params(("name" = String, Path, description = "the schedule's (campaign's) name"),
           ("x-baton-operator" = Option<String>, Header, description = "who does it (journaled)")),
    responses((status = 200, description = "the schedule as it was", body = ScheduleView),
              (status = 400, description = "the name is not valid UTF-8 once decoded", body = ApiError),
              (status = 401, body = ApiError), (status = 404, body = ApiError),
              (status = 503, description = "the journal could not record it, so it was not removed", body = ApiError)))]
pub(crate) async fn remove(
    State(h): State<Shared>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ScheduleView>, Fail> {
    let by = h.authorize(&headers)?;
    let hub = h.clone();
    tokio::spawn(async move { hub.remove_schedule(&name, by).await })
        .await
        .map_err(|_| crate::stopped())?
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
