//! Schedules (DESIGN.md §Formats `schedule`, CAU's self-updating mode): a cron rule in the
//! campaign's time zone that makes the orchestrator create and start the campaign by itself
//! when some targeted node is behind.
//!
//! Pure, like the windows: cron rules are read here and their next times computed with jiff's
//! bundled time zone database; the orchestrator's journal of schedules is folded here, and what
//! is due at a given instant is decided here. The orchestrator only reads the clock, journals
//! and acts.
//!
//! Cron: five fields, `minute hour day-of-month month day-of-week`, each `*`, a value, a range
//! `a-b`, a step `*/n` or `a-b/n`, or a comma list of those; months and days may be named
//! (`JAN`, `TUE`), Sunday is 0 or 7, and a day of the week may be the n-th of its month
//! (`TUE#2`: the second Tuesday, Patch Tuesday). As in Vixie cron, when both day fields are
//! restricted a day matching either one fires. `@hourly`, `@daily`, `@weekly`, `@monthly` and
//! `@yearly` are shorthands. A local time that does not exist on a daylight-saving day fires
//! shifted forward by the gap (02:30 at 03:30 when clocks jump from 02:00 to 03:00), as windows
//! open; one that happens twice fires once, the first time.

use crate::units::Millis;
use crate::window::UnknownZone;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A run that comes due later than this after its time was missed: the orchestrator was down
/// (or the clock jumped). It still runs once, but only while the campaign's window is open.
pub const LATE_AFTER: Millis = 2 * 60 * 1000;

/// How far ahead a rule's next time is looked for: the Gregorian calendar repeats every 400
/// years, so a rule that does not fire within them never does. (A rule for the 29th of February
/// on a Sunday fires decades apart; a day loop that finds no day is cheap, about a millisecond
/// per century.)
const LOOK_AHEAD_DAYS: i64 = 400 * 366;

/// A parsed cron rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    /// `(weekday, n)`: the n-th such weekday of the month.
    nth: Vec<(u8, u8)>,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One cron field: its name, range and value names.
struct Field {
    what: &'static str,
    lo: u8,
    hi: u8,
    names: &'static [&'static str],
    /// The first name's value.
    names_from: u8,
}

const FIELDS: [Field; 5] = [
    Field { what: "minute", lo: 0, hi: 59, names: &[], names_from: 0 },
    Field { what: "hour", lo: 0, hi: 23, names: &[], names_from: 0 },
    Field { what: "day of month", lo: 1, hi: 31, names: &[], names_from: 1 },
    Field { what: "month", lo: 1, hi: 12, names: &MONTHS, names_from: 1 },
    Field { what: "day of week", lo: 0, hi: 7, names: &WEEKDAYS, names_from: 0 },
];

impl Field {
    fn value(&self, s: &str) -> Result<u8, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u8 + self.names_from);
        }
        let v: u8 = s.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or a name like {}", self.names[1])
            };
            format!("`{s}` is not a {} (a number {}-{}{names})", self.what, self.lo, self.hi)
        })?;
        if v < self.lo || v > self.hi {
            return Err(format!("{} {v} is out of range {}-{}", self.what, self.lo, self.hi));
        }
        Ok(v)
    }

    /// The values a field allows, as bits, and the `#` items of the day of week.
    fn parse(&self, text: &str) -> Result<(u64, Vec<(u8, u8)>), String> {
        let mut bits = 0u64;
        let mut nth = Vec::new();
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("empty item in {} `{text}`", self.what));
            }
            if let Some((day, n)) = item.split_once('#') {
                if self.names != WEEKDAYS {
                    return Err(format!("`#` is only for the day of week, not the {}", self.what));
                }
                let d = self.value(day)? % 7;
                let n: u8 = n.parse().ok().filter(|n| (1..=5).contains(n)).ok_or_else(|| {
                    format!("`{item}`: the number after `#` must be 1-5 (the n-th such day of the month)")
                })?;
                nth.push((d, n));
                continue;
            }
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u8 = s
                        .parse()
                        .ok()
                        .filter(|s| *s >= 1)
                        .ok_or_else(|| format!("`{item}`: the step after `/` must be a number from 1"))?;
                    (r, step)
                }
                None => (item, 1),
            };
            let (a, b) = if range == "*" {
                (self.lo, self.hi)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let a = self.value(range)?;
                (a, if item.contains('/') { self.hi } else { a })
            };
            if a > b {
                return Err(format!("`{item}`: the range runs backwards"));
            }
            let mut v = a;
            while v <= b {
                bits |= 1 << v;
                v = match v.checked_add(step) {
                    Some(n) => n,
                    None => break,
                };
            }
        }
        Ok((bits, nth))
    }
}

impl Cron {
    /// Reads a cron rule; the error says which field is wrong and how.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            t if t.starts_with('@') => return Err(format!("unknown shorthand `{t}`")),
            t => t,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "a cron rule has 5 fields (minute hour day-of-month month day-of-week), this one has {}",
                parts.len()
            ));
        }
        let mut got = [(0u64, Vec::new()), (0, vec![]), (0, vec![]), (0, vec![]), (0, vec![])];
        for (i, (f, p)) in FIELDS.iter().zip(&parts).enumerate() {
            got[i] = f.parse(p)?;
        }
        let mut weekdays = got[4].0 as u8;
        if got[4].0 & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            text: text.trim().to_string(),
            minutes: got[0].0,
            hours: got[1].0 as u32,
            days: got[2].0 as u32,
            months: got[3].0 as u16,
            weekdays: weekdays & 0x7f,
            nth: std::mem::take(&mut got[4].1),
            days_any: parts[2].starts_with('*'),
            weekdays_any: parts[4].starts_with('*'),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let wd = d.weekday().to_sunday_zero_offset() as u8;
        let dow = self.weekdays & (1 << wd) != 0
            || self.nth.iter().any(|&(w, n)| w == wd && (d.day() as u8 - 1) / 7 + 1 == n);
        if self.days_any || self.weekdays_any {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `t` at which the rule fires in time zone `tz`; `None` when it does
    /// not fire within 400 years (it never will).
    pub fn next_after(&self, t: Millis, tz: &TimeZone) -> Option<Millis> {
        // From three hours of real time before `t`: a local time the clocks skipped belongs to
        // its day but fires after the gap, perhaps on the next day (a gap that ends at
        // midnight); earlier hours cannot fire after `t` (no zone's clocks jump further, save
        // Apia's lost day in 2011).
        let ts = Timestamp::from_millisecond(i64::try_from(t).ok()?.saturating_sub(3 * 3600 * 1000)).ok()?;
        let local = ts.to_zoned(tz.clone());
        let mut day = local.date();
        let mut from_hour = local.hour();
        for _ in 0..LOOK_AHEAD_DAYS {
            if self.day_matches(day) {
                // Local times in order are not always instants in order: one the clocks skipped
                // (02:01 when they jump from 02:00 to 02:30) fires after the gap, later than an
                // existing 02:30. So the earliest instant of the day, looking until three hours
                // of local time past the first one found.
                let mut best: Option<(i32, Millis)> = None;
                'day: for h in (from_hour..24).filter(|h| self.hours & (1 << h) != 0) {
                    for m in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                        let minute = h as i32 * 60 + m as i32;
                        if best.is_some_and(|(first, _)| minute > first + 180) {
                            break 'day;
                        }
                        let Ok(z) = tz.to_ambiguous_zoned(day.at(h, m, 0, 0)).compatible() else { continue };
                        let Ok(at) = Millis::try_from(z.timestamp().as_millisecond()) else { continue };
                        if at > t {
                            best = Some(best.map_or((minute, at), |(first, b)| (first, b.min(at))));
                        }
                    }
                }
                if let Some((_, at)) = best {
                    return Some(at);
                }
            }
            day = day.tomorrow().ok()?;
            from_hour = 0;
        }
        None
    }
}

/// A campaign's schedule: its cron rule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: Cron,
    zone: String,
    tz: TimeZone,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron && self.zone == other.zone
    }
}

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Cron(String),
    #[error(transparent)]
    Zone(#[from] UnknownZone),
    #[error("the cron rule `{0}` never fires")]
    Never(String),
}

/// A fixed instant to check that a rule fires at all (2024-01-01T00:00Z).
const CHECK_FROM: Millis = 1_704_067_200_000;

impl Schedule {
    pub fn new(cron: &str, zone: &str) -> Result<Schedule, ScheduleError> {
        let cron = Cron::parse(cron).map_err(ScheduleError::Cron)?;
        let tz = crate::window::zone(zone)?;
        if cron.next_after(CHECK_FROM, &tz).is_none() {
            return Err(ScheduleError::Never(cron.text.clone()));
        }
        Ok(Schedule { cron, zone: zone.to_string(), tz })
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        self.cron.next_after(t, &self.tz)
    }
}

/// What the orchestrator journals about schedules (its own journal, beside the campaigns').
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ScheduleEvent {
    /// `baton schedule add`: the campaign file it creates campaigns from.
    Added {
        name: String,
        cron: String,
        timezone: String,
        /// The campaign's `target_version`, to show.
        target: String,
        file: String,
        toml: String,
        by: String,
    },
    /// `baton schedule remove`.
    Removed { name: String, by: String },
    /// A run due at `due_ms` created this campaign, which is to be started now. Journaled
    /// before the start, so that an orchestrator stopped in between knows, when it comes back,
    /// that the campaign is the schedule's and not started (it is aborted: it must not hold
    /// the fleet).
    Created { name: String, due_ms: Millis, campaign: i64 },
    /// A run came due (`due_ms`; `missed` more came due while it could not run) and this is
    /// what became of it. Everything due up to `through_ms` is handled (the instant the run was
    /// judged due at, so that what comes due while it runs is run next; absent: the entry's
    /// time).
    Fired {
        name: String,
        due_ms: Millis,
        missed: u32,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through_ms: Option<Millis>,
    },
}

/// What a schedule's run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// It created and started this campaign.
    Started { campaign: i64 },
    /// It created none, for this reason (nothing behind, the fleet held, a closed window...).
    Skipped { reason: String },
    /// It created this campaign but its start was refused; the campaign was aborted.
    Refused { campaign: i64, reason: String },
}

/// The stored text of a schedule event (`"v"`: its schema version, 1).
pub fn encode(e: &ScheduleEvent) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("v".into(), 1.into());
    }
    v.to_string()
}

/// Reads a stored schedule event.
pub fn decode(text: &str) -> Result<ScheduleEvent, String> {
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.as_object_mut().and_then(|o| o.remove("v")).and_then(|v| v.as_u64()) {
        Some(1) => serde_json::from_value(v).map_err(|e| e.to_string()),
        Some(n) => Err(format!("schema version {n} is newer than this baton's 1: upgrade baton to read it")),
        None => Err("no schema version".into()),
    }
}

/// One schedule as the journal leaves it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub schedule: Schedule,
    pub target: String,
    pub file: String,
    pub toml: String,
    pub added_ms: Millis,
    pub by: String,
    /// Everything due up to here is handled.
    pub handled_to: Millis,
    /// The last run.
    pub last: Option<Run>,
}

/// A run as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// When it was journaled.
    pub at_ms: Millis,
    pub due_ms: Millis,
    pub missed: u32,
    pub outcome: Outcome,
}

impl Entry {
    /// The next time the rule fires after what is handled, seen at `now`. If the clock went
    /// back since (a wrong clock set right), from `now`: an orchestrator that once ran with its
    /// clock years ahead does not wait those years.
    pub fn next_at(&self, now: Millis) -> Option<Millis> {
        self.schedule.next_after(self.handled_to.min(now))
    }
}

/// A run that is due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    /// The first unhandled time.
    pub due_ms: Millis,
    /// How many more came due by now (counted up to 1000).
    pub missed: u32,
    /// The last time it came due was more than [`LATE_AFTER`] before `now`: missed while the
    /// orchestrator was down (or busy, or its host asleep).
    pub late: bool,
}

/// The schedules: the fold of the orchestrator's schedule journal.
#[derive(Debug, Clone, Default)]
pub struct Schedules {
    pub entries: BTreeMap<String, Entry>,
    /// Campaigns runs created and have not yet said what became of: by schedule name,
    /// `(due_ms, campaign)`. Kept apart from `entries`: a schedule removed meanwhile still
    /// leaves its campaign to be seen to.
    pub pending: BTreeMap<String, (Millis, i64)>,
}

impl Schedules {
    /// Applies one journaled event at its time. A rule that no longer reads (a newer baton's) is
    /// an error; an event about a schedule that is gone is ignored.
    pub fn apply(&mut self, at: Millis, e: &ScheduleEvent) -> Result<(), ScheduleError> {
        match e {
            ScheduleEvent::Added { name, cron, timezone, target, file, toml, by } => {
                let schedule = Schedule::new(cron, timezone)?;
                self.entries.insert(
                    name.clone(),
                    Entry {
                        schedule,
                        target: target.clone(),
                        file: file.clone(),
                        toml: toml.clone(),
                        added_ms: at,
                        by: by.clone(),
                        handled_to: at,
                        last: None,
                    },
                );
            }
            ScheduleEvent::Removed { name, .. } => {
                self.entries.remove(name);
            }
            ScheduleEvent::Created { name, due_ms, campaign } => {
                self.pending.insert(name.clone(), (*due_ms, *campaign));
            }
            ScheduleEvent::Fired { name, due_ms, missed, outcome, through_ms } => {
                self.pending.remove(name);
                if let Some(s) = self.entries.get_mut(name) {
                    s.handled_to = s.handled_to.max(through_ms.unwrap_or(at));
                    s.last =
                        Some(Run { at_ms: at, due_ms: *due_ms, missed: *missed, outcome: outcome.clone() });
                }
            }
        }
        Ok(())
    }

    /// After the clock went back (a clock that was set ahead, set right): what was handled
    /// "up to" a time still to come is handled up to now, so that the schedules go on from now
    /// rather than wait for that time.
    pub fn clamp(&mut self, now: Millis) {
        for e in self.entries.values_mut() {
            e.handled_to = e.handled_to.min(now);
        }
    }

    /// The runs due at `now`: for each schedule whose next time has come, one run, however
    /// many times it came due (they are one run, counted in `missed`).
    pub fn due(&self, now: Millis) -> Vec<Due> {
        let mut out = Vec::new();
        for (name, s) in &self.entries {
            let Some(first) = s.next_at(now) else { continue };
            if first > now {
                continue;
            }
            let mut missed = 0;
            let mut t = first;
            while missed < 1000 {
                match s.schedule.next_after(t) {
                    Some(n) if n <= now => {
                        missed += 1;
                        t = n;
                    }
                    _ => break,
                }
            }
            // Late when even the last time it came due is older than LATE_AFTER (also when over
            // a thousand came due and counting stopped).
            let late = s.schedule.next_after(now.saturating_sub(LATE_AFTER + 1)).is_none_or(|n| n > now);
            out.push(Due { name: name.clone(), due_ms: first, missed, late });
        }
        out
    }

    /// The earliest next run of any schedule, seen at `now`: when to look again.
    pub fn next_due(&self, now: Millis) -> Option<Millis> {
        self.entries.values().filter_map(|e| e.next_at(now)).min()
    }
}

/// An instant as RFC 3339 in UTC, for messages.
pub fn utc(t: Millis) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| Timestamp::from_millisecond(t).ok())
        .map_or_else(|| format!("{t} ms"), |t| t.to_string())
}

/// An instant in an IANA time zone, for people: `2026-12-08 03:00 CET`.
pub fn local(t: Millis, zone: &str) -> String {
    let (Ok(tz), Some(ts)) =
        (crate::window::zone(zone), i64::try_from(t).ok().and_then(|t| Timestamp::from_millisecond(t).ok()))
    else {
        return utc(t);
    };
    ts.to_zoned(tz).strftime("%Y-%m-%d %H:%M %Z").to_string()
}

/// Whether a run that is due at `now` may go ahead as far as windows go: a late run (missed
/// while the orchestrator was down) only while a window is open; one on time always (its
/// campaign waits for the window like any other).
pub fn late_run_allowed(late: bool, windows: Option<&crate::window::Windows>, now: Millis) -> bool {
    !late || windows.is_none_or(|w| w.contains(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: &str) -> Millis {
        let z: jiff::Zoned = format!("{s}[{tz}]").parse().unwrap();
        z.timestamp().as_millisecond() as Millis
    }

    fn show(t: Millis, tz: &str) -> String {
        Timestamp::from_millisecond(t as i64)
            .unwrap()
            .to_zoned(TimeZone::get(tz).unwrap())
            .strftime("%F %a %H:%M")
            .to_string()
    }

    fn nexts(rule: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(rule, tz).unwrap();
        let mut t = at(from, tz);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                show(t, tz)
            })
            .collect()
    }

    #[test]
    fn patch_tuesday_is_the_second_tuesday() {
        assert_eq!(
            nexts("0 3 * * TUE#2", "Europe/Berlin", "2026-11-30T12:00", 4),
            ["2026-12-08 Tue 03:00", "2027-01-12 Tue 03:00", "2027-02-09 Tue 03:00", "2027-03-09 Tue 03:00"]
        );
    }

    #[test]
    fn every_minute_and_steps_and_lists() {
        assert_eq!(
            nexts("* * * * *", "UTC", "2026-11-30T12:00:30", 3),
            ["2026-11-30 Mon 12:01", "2026-11-30 Mon 12:02", "2026-11-30 Mon 12:03"]
        );
        assert_eq!(
            nexts("*/20 9-10 * * MON-FRI", "UTC", "2026-11-27T10:30", 3),
            ["2026-11-27 Fri 10:40", "2026-11-30 Mon 09:00", "2026-11-30 Mon 09:20"]
        );
        assert_eq!(
            nexts("0 0 1,15 * *", "UTC", "2026-11-30T00:00", 2),
            ["2026-12-01 Tue 00:00", "2026-12-15 Tue 00:00"]
        );
        assert_eq!(nexts("0 12 * * 7", "UTC", "2026-11-30T00:00", 1), ["2026-12-06 Sun 12:00"]);
        assert_eq!(nexts("@monthly", "UTC", "2026-11-30T00:00", 1), ["2026-12-01 Tue 00:00"]);
    }

    #[test]
    fn both_day_fields_restricted_fire_on_either() {
        // The 13th, or any Friday.
        assert_eq!(
            nexts("0 0 13 * FRI", "UTC", "2026-12-01T00:00", 3),
            ["2026-12-04 Fri 00:00", "2026-12-11 Fri 00:00", "2026-12-13 Sun 00:00"]
        );
    }

    #[test]
    fn daylight_saving_days_fire_once() {
        // Berlin springs forward at 02:00 on 2027-03-28: 02:30 does not exist, it fires after
        // the gap (03:30 CEST), once.
        let s = Schedule::new("30 2 * * *", "Europe/Berlin").unwrap();
        let t = s.next_after(at("2027-03-27T12:00", "Europe/Berlin")).unwrap();
        assert_eq!(show(t, "Europe/Berlin"), "2027-03-28 Sun 03:30");
        assert_eq!(show(s.next_after(t).unwrap(), "Europe/Berlin"), "2027-03-29 Mon 02:30");
        // New York falls back at 02:00 on 2026-11-01: 01:30 happens twice, it fires once.
        let s = Schedule::new("30 1 * * *", "America/New_York").unwrap();
        let t = s.next_after(at("2026-10-31T12:00", "America/New_York")).unwrap();
        let u = s.next_after(t).unwrap();
        assert_eq!(u - t, 25 * 3600 * 1000, "the next is the next day's, not the repeated hour");
    }

    #[test]
    fn a_skipped_minute_fires_after_an_existing_one() {
        // Lord Howe Island springs forward by 30 minutes at 02:00 on 2023-10-01: 02:01 to 02:29
        // do not exist, 02:30 does and is the first time "1-30 2 * 10 *" fires.
        let s = Schedule::new("1-30 2 * 10 *", "Australia/Lord_Howe").unwrap();
        let t = s.next_after(at("2023-09-30T12:00", "Australia/Lord_Howe")).unwrap();
        assert_eq!(show(t, "Australia/Lord_Howe"), "2023-10-01 Sun 02:30");
        // Then the skipped ones, once each at the instant after the gap, up to 02:59 (02:29).
        assert_eq!(show(s.next_after(t).unwrap(), "Australia/Lord_Howe"), "2023-10-01 Sun 02:31");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let e = |r: &str| Schedule::new(r, "UTC").unwrap_err().to_string();
        assert!(e("0 3 * *").contains("5 fields"), "{}", e("0 3 * *"));
        assert!(e("61 3 * * *").contains("minute 61 is out of range 0-59"));
        assert!(e("0 3 * * TUE#6").contains("1-5"));
        assert!(e("0 3 * FOO *").contains("`FOO` is not a month"));
        assert!(e("0 3 30 2 *").contains("never fires"));
        assert!(e("0 3 31 4,6,9,11 *").contains("never fires"));
        assert!(e("@often").contains("unknown shorthand"));
        assert!(e("5-1 * * * *").contains("backwards"));
        assert!(e("0 3 #2 * *").contains("only for the day of week"));
        assert!(Schedule::new("0 3 * * *", "Mars/Olympus").is_err());
        // Leap days do fire.
        assert!(Schedule::new("0 0 29 2 *", "UTC").is_ok());
        // The 29th of February on a Sunday (`*/7` starts with `*`: both day fields must match)
        // comes decades apart, and still comes.
        let rare = Schedule::new("0 0 29 2 */7", "UTC").unwrap();
        let t = rare.next_after(at("2089-01-01T00:00", "UTC")).unwrap();
        assert_eq!(show(t, "UTC"), "2128-02-29 Sun 00:00");
    }

    fn added(name: &str, cron: &str) -> ScheduleEvent {
        ScheduleEvent::Added {
            name: name.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            target: "1.1".into(),
            file: "c.toml".into(),
            toml: String::new(),
            by: "op".into(),
        }
    }

    #[test]
    fn runs_missed_while_down_are_one_late_run() {
        let t0 = at("2026-11-30T12:00:10", "UTC");
        let mut s = Schedules::default();
        s.apply(t0, &added("a", "* * * * *")).unwrap();
        assert!(s.due(t0 + 40_000).is_empty());
        assert_eq!(s.next_due(t0), Some(at("2026-11-30T12:01", "UTC")));
        // On time.
        let d = s.due(at("2026-11-30T12:01:01", "UTC"));
        assert_eq!(
            d,
            [Due { name: "a".into(), due_ms: at("2026-11-30T12:01", "UTC"), missed: 0, late: false }]
        );
        let fired = ScheduleEvent::Fired {
            name: "a".into(),
            due_ms: d[0].due_ms,
            missed: 0,
            outcome: Outcome::Skipped { reason: "x".into() },
            through_ms: None,
        };
        s.apply(at("2026-11-30T12:01:02", "UTC"), &fired).unwrap();
        assert!(s.due(at("2026-11-30T12:01:59", "UTC")).is_empty());
        // Down for an hour: one run, with 59 more counted as missed; the last came due just
        // now, so it is on time.
        let d = s.due(at("2026-11-30T13:01:30", "UTC"));
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].missed, d[0].late), (59, false));
        // An hourly one, down from 12:59 to 13:30: its 13:00 is late.
        s.apply(at("2026-11-30T12:59", "UTC"), &added("h", "0 * * * *")).unwrap();
        let d = s.due(at("2026-11-30T13:30", "UTC"));
        assert_eq!(d.len(), 2);
        assert_eq!((d[1].name.as_str(), d[1].missed, d[1].late), ("h", 0, true));
        // A clock that was a year ahead when the run was journaled, set right: the schedule
        // goes on from now, not from a year ahead.
        let ahead = at("2027-11-30T12:00:00", "UTC");
        s.apply(ahead, &fired).unwrap();
        let now = at("2026-11-30T14:00:10", "UTC");
        assert_eq!(s.entries["a"].next_at(now), Some(at("2026-11-30T14:01", "UTC")));
        s.clamp(now);
        assert!(s.due(now).iter().all(|d| d.name != "a"));
        let d = s.due(at("2026-11-30T14:01:01", "UTC"));
        assert!(
            d.iter().any(|d| d.name == "a" && d.due_ms == at("2026-11-30T14:01", "UTC") && !d.late),
            "{d:?}"
        );
        // Removed: nothing more.
        for name in ["a", "h"] {
            s.apply(t0, &ScheduleEvent::Removed { name: name.into(), by: "op".into() }).unwrap();
        }
        assert!(s.due(u64::MAX / 4).is_empty());
    }

    #[test]
    fn late_runs_wait_for_an_open_window() {
        let w = crate::window::Windows::new(
            "UTC",
            vec![crate::window::Window { days: 0x7f, start: 2 * 60, length: 3600 * 1000 }],
        )
        .unwrap();
        let open = at("2026-11-30T02:30", "UTC");
        let shut = at("2026-11-30T04:00", "UTC");
        assert!(late_run_allowed(true, Some(&w), open));
        assert!(!late_run_allowed(true, Some(&w), shut));
        assert!(late_run_allowed(false, Some(&w), shut), "on time: the campaign waits for its window");
        assert!(late_run_allowed(true, None, shut));
    }

    #[test]
    fn events_round_trip_with_their_version() {
        let e = ScheduleEvent::Fired {
            name: "a".into(),
            due_ms: 5,
            missed: 2,
            outcome: Outcome::Refused { campaign: 3, reason: "r".into() },
            through_ms: Some(4),
        };
        let text = encode(&e);
        assert!(text.contains("\"v\":1") && text.contains("\"event\":\"fired\""), "{text}");
        assert_eq!(decode(&text).unwrap(), e);
        assert!(decode("{\"v\":2,\"event\":\"removed\"}").unwrap_err().contains("newer"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn field(lo: u8, hi: u8) -> impl Strategy<Value = String> {
            prop_oneof![
                Just("*".to_string()),
                (1..=(hi - lo).max(1)).prop_map(|k| format!("*/{k}")),
                (lo..=hi).prop_map(|a| a.to_string()),
                (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
                (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{a},{b}")),
            ]
        }

        fn rule() -> impl Strategy<Value = String> {
            let dow = prop_oneof![
                field(0, 7),
                (0u8..7, 1u8..=4).prop_map(|(d, n)| format!("{}#{n}", WEEKDAYS[d as usize])),
                Just("MON-FRI".to_string()),
            ];
            (field(0, 59), field(0, 23), field(1, 28), field(1, 12), dow)
                .prop_map(|(m, h, d, mo, w)| format!("{m} {h} {d} {mo} {w}"))
        }

        const ZONES: [&str; 5] =
            ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"];

        /// Whether the rule fires at instant `x`: its local time matches and `x` is the instant
        /// that local time stands for (the first, when clocks fall back).
        fn fires_at(c: &Cron, tz: &TimeZone, x: Millis) -> bool {
            let z = Timestamp::from_millisecond(x as i64).unwrap().to_zoned(tz.clone());
            let (d, h, m) = (z.date(), z.hour(), z.minute());
            if z.second() != 0 || z.subsec_nanosecond() != 0 {
                return false;
            }
            c.day_matches(d)
                && c.hours & (1 << h) != 0
                && c.minutes & (1 << m) != 0
                && tz.to_ambiguous_zoned(d.at(h, m, 0, 0)).compatible().unwrap().timestamp().as_millisecond()
                    == x as i64
        }

        proptest! {
            /// The next time is after `t`, the rule fires then (or just after a gap the
            /// clocks jumped over), and it fires at no whole minute in between (checked minute
            /// by minute over up to three days).
            #[test]
            fn next_after_is_the_first_time_the_rule_fires(
                r in rule(),
                zi in 0..ZONES.len(),
                t in 1_577_836_800_000u64..2_051_222_400_000u64,
            ) {
                // Rules like "0 0 */18 * TUE#2" never fire (day 1 or 19 and the second Tuesday)
                // and are refused.
                let s = match Schedule::new(&r, ZONES[zi]) {
                    Ok(s) => s,
                    Err(e) => {
                        prop_assert!(matches!(e, ScheduleError::Never(_)), "{r}: {e}");
                        return Ok(());
                    }
                };
                let tz = crate::window::zone(ZONES[zi]).unwrap();
                let n = s.next_after(t).expect("a rule that fires at all fires again");
                prop_assert!(n > t);
                let step = 60_000;
                let mut x = (t / step + 1) * step;
                let end = n.min(t + 3 * 24 * 3600 * 1000);
                while x < end {
                    prop_assert!(!fires_at(&s.cron, &tz, x), "{r} in {}: fires at {x}, before {n}", ZONES[zi]);
                    x += step;
                }
                if !fires_at(&s.cron, &tz, n) {
                    // Only a local time the clocks skipped, fired just after the gap.
                    let before = Timestamp::from_millisecond(n as i64 - 3 * 3600 * 1000).unwrap().to_zoned(tz.clone());
                    let at = Timestamp::from_millisecond(n as i64).unwrap().to_zoned(tz.clone());
                    prop_assert!(before.offset() != at.offset(), "{r} in {}: {n} is not a time it fires", ZONES[zi]);
                }
            }
        }
    }
}
