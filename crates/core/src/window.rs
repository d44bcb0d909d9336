//! Maintenance windows (DESIGN.md §Formats `windows`, `timezone`): recurring spans of local time
//! in which nodes may start. In-flight nodes always finish; only starts wait.
//!
//! Pure: the time zone rules are compiled into the binary (jiff's bundled tzdb), so the same
//! campaign gives the same answers on the orchestrator, in the simulator and on replay, whatever
//! the host's zoneinfo says.

use crate::units::{Millis, DAY};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Longest window: a week is already always open for a window on every day.
pub const MAX_LENGTH: Millis = 7 * DAY;

/// One recurring window: on each of `days` (bit 0 Monday … bit 6 Sunday), from `start` minutes
/// after local midnight, for `length` of real time. A start that does not exist on a
/// daylight-saving day (02:30 when clocks jump from 02:00 to 03:00) is taken as the instant after
/// the gap; one that happens twice (clocks fall back) as the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: u8,
    pub start: u16,
    pub length: Millis,
}

/// The windows of a campaign in its time zone.
#[derive(Debug, Clone)]
pub struct Windows {
    zone: String,
    tz: TimeZone,
    spans: Vec<Window>,
}

impl PartialEq for Windows {
    fn eq(&self, other: &Self) -> bool {
        self.zone == other.zone && self.spans == other.spans
    }
}

/// An IANA name the bundled time zone database does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone `{0}`")]
pub struct UnknownZone(pub String);

/// The time zone of that IANA name.
pub fn zone(name: &str) -> Result<TimeZone, UnknownZone> {
    TimeZone::get(name).map_err(|_| UnknownZone(name.to_string()))
}

impl Windows {
    /// Windows in time zone `zone` (an IANA name, or "UTC").
    pub fn new(zone_name: &str, spans: Vec<Window>) -> Result<Windows, UnknownZone> {
        Ok(Windows { zone: zone_name.to_string(), tz: zone(zone_name)?, spans })
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn spans(&self) -> &[Window] {
        &self.spans
    }

    fn date_of(&self, t: Millis) -> Option<Date> {
        let ts = Timestamp::from_millisecond(i64::try_from(t).ok()?).ok()?;
        Some(ts.to_zoned(self.tz.clone()).date())
    }

    /// Calls `f(start, end)` for each window that starts on local date `d`.
    fn on_date(&self, d: Date, mut f: impl FnMut(Millis, Millis)) {
        let bit = 1u8 << d.weekday().to_monday_zero_offset();
        for w in self.spans.iter().filter(|w| w.days & bit != 0) {
            let at = d.at((w.start / 60) as i8, (w.start % 60) as i8, 0, 0);
            let Ok(z) = self.tz.to_ambiguous_zoned(at).compatible() else { continue };
            let Ok(start) = Millis::try_from(z.timestamp().as_millisecond()) else { continue };
            f(start, start + w.length);
        }
    }

    /// The latest end among the windows open at `t`, if any is.
    fn covering(&self, t: Millis) -> Option<Millis> {
        let d = self.date_of(t)?;
        let longest = self.spans.iter().map(|w| w.length).max().unwrap_or(0);
        let back = (longest / DAY + 1) as i64;
        let mut end = None;
        let mut day = d.checked_sub(jiff::Span::new().days(back)).ok()?;
        while day <= d {
            self.on_date(day, |s, e| {
                if s <= t && t < e {
                    end = Some(end.map_or(e, |x: Millis| x.max(e)));
                }
            });
            day = day.tomorrow().ok()?;
        }
        end
    }

    /// Whether a node may start at `t`.
    pub fn contains(&self, t: Millis) -> bool {
        self.covering(t).is_some()
    }

    /// The first instant at or after `t` at which a window is open (`t` itself when one is);
    /// `None` only past the calendar's end.
    pub fn next_open(&self, t: Millis) -> Option<Millis> {
        if self.contains(t) {
            return Some(t);
        }
        let mut day = self.date_of(t)?;
        let mut best: Option<Millis> = None;
        // Every window recurs weekly, so one opens within eight local days.
        for _ in 0..9 {
            self.on_date(day, |s, _| {
                if s > t {
                    best = Some(best.map_or(s, |b| b.min(s)));
                }
            });
            day = day.tomorrow().ok()?;
        }
        best
    }

    /// When the stretch of open windows around `t` ends; `None` when no window is open at `t`,
    /// or when windows follow each other without a gap for weeks (always open).
    pub fn closes_at(&self, t: Millis) -> Option<Millis> {
        let mut end = self.covering(t)?;
        for _ in 0..64 {
            match self.covering(end) {
                Some(e) if e > end => end = e,
                Some(_) => return None,
                None => return Some(end),
            }
        }
        None
    }
}

/// The days of a window, like "Sat,Sun", "Mon-Fri", "Tue" or "*" (every day).
pub fn parse_days(s: &str) -> Result<u8, String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    const FULL: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let day = |name: &str| -> Result<u8, String> {
        let l = name.trim().to_ascii_lowercase();
        NAMES
            .iter()
            .zip(FULL)
            .position(|(a, b)| l == *a || l == b)
            .map(|i| i as u8)
            .ok_or_else(|| format!("`{}` is not a day of the week", name.trim()))
    };
    let t = s.trim();
    if t == "*" || t.eq_ignore_ascii_case("daily") {
        return Ok(0x7f);
    }
    let mut mask = 0u8;
    for part in t.split(',') {
        if part.trim().is_empty() {
            return Err("an empty day in the list".into());
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    mask |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

/// A local time of day "HH:MM", as minutes after midnight.
pub fn parse_time_of_day(s: &str) -> Result<u16, String> {
    let bad = || format!("`{s}` is not a time of day");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let digits = |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || m.len() != 2 || !digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{HOUR, MINUTE};

    fn at(s: &str) -> Millis {
        s.parse::<Timestamp>().unwrap().as_millisecond() as Millis
    }

    fn daily(zone: &str, start: &str, length: Millis) -> Windows {
        Windows::new(zone, vec![Window { days: 0x7f, start: parse_time_of_day(start).unwrap(), length }])
            .unwrap()
    }

    #[test]
    fn days_parse_lists_ranges_and_names() {
        assert_eq!(parse_days("Sat,Sun"), Ok(0b110_0000));
        assert_eq!(parse_days("Mon-Fri"), Ok(0b001_1111));
        assert_eq!(parse_days("fri-mon"), Ok(0b111_0001));
        assert_eq!(parse_days("Tuesday"), Ok(0b10));
        assert_eq!(parse_days("*"), Ok(0x7f));
        assert!(parse_days("Sat,,Sun").is_err());
        assert_eq!(parse_days("Sat,Funday"), Err("`Funday` is not a day of the week".into()));
        assert!(parse_days("").is_err());
    }

    #[test]
    fn times_of_day_parse() {
        assert_eq!(parse_time_of_day("02:00"), Ok(120));
        assert_eq!(parse_time_of_day("23:59"), Ok(23 * 60 + 59));
        for bad in ["24:00", "2", "02:5", "02:60", "ab:cd", "-1:00"] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_weekend_window_in_berlin() {
        let w = Windows::new(
            "Europe/Berlin",
            vec![Window { days: parse_days("Sat,Sun").unwrap(), start: 120, length: 4 * HOUR }],
        )
        .unwrap();
        // 2026-12-05 is a Saturday; Berlin is UTC+1 in winter: 02:00 local is 01:00 UTC.
        assert!(!w.contains(at("2026-12-05T00:59:59Z")));
        assert!(w.contains(at("2026-12-05T01:00:00Z")));
        assert!(w.contains(at("2026-12-05T04:59:59Z")));
        assert!(!w.contains(at("2026-12-05T05:00:00Z")));
        assert_eq!(w.closes_at(at("2026-12-05T02:00:00Z")), Some(at("2026-12-05T05:00:00Z")));
        assert_eq!(w.next_open(at("2026-12-05T05:00:00Z")), Some(at("2026-12-06T01:00:00Z")));
        // From Monday, the next is Saturday.
        assert_eq!(w.next_open(at("2026-12-07T12:00:00Z")), Some(at("2026-12-12T01:00:00Z")));
        assert_eq!(w.next_open(at("2026-12-05T03:00:00Z")), Some(at("2026-12-05T03:00:00Z")));
    }

    #[test]
    fn daylight_saving_days_keep_real_lengths() {
        // 2026-03-29: Berlin jumps 02:00 → 03:00. 02:30 does not exist: the window opens after
        // the gap, at 03:30 CEST (01:30 UTC), and lasts one real hour.
        let w = daily("Europe/Berlin", "02:30", HOUR);
        assert_eq!(w.next_open(at("2026-03-29T00:00:00Z")), Some(at("2026-03-29T01:30:00Z")));
        assert_eq!(w.closes_at(at("2026-03-29T01:30:00Z")), Some(at("2026-03-29T02:30:00Z")));
        // The day before, 02:30 CET is 01:30 UTC; the day after, 02:30 CEST is 00:30 UTC.
        assert!(w.contains(at("2026-03-28T01:30:00Z")));
        assert!(w.contains(at("2026-03-30T00:30:00Z")));
        assert!(!w.contains(at("2026-03-30T01:30:00Z")));
        // 2026-10-25: Berlin falls back 03:00 → 02:00; 02:30 happens twice: the first counts.
        assert_eq!(w.next_open(at("2026-10-24T23:00:00Z")), Some(at("2026-10-25T00:30:00Z")));
        assert_eq!(w.closes_at(at("2026-10-25T00:30:00Z")), Some(at("2026-10-25T01:30:00Z")));
        // A four-hour window over the fall-back night is four real hours, not five.
        let w = daily("Europe/Berlin", "01:00", 4 * HOUR);
        assert_eq!(w.closes_at(at("2026-10-25T00:00:00Z")), Some(at("2026-10-25T03:00:00Z")));
        // New York springs forward on 2026-03-08 at 02:00.
        let w = daily("America/New_York", "02:15", 30 * MINUTE);
        assert_eq!(w.next_open(at("2026-03-08T05:00:00Z")), Some(at("2026-03-08T07:15:00Z")));
    }

    #[test]
    fn windows_that_touch_merge_and_a_full_week_never_closes() {
        let w = Windows::new(
            "UTC",
            vec![
                Window { days: 0x7f, start: 0, length: 2 * HOUR },
                Window { days: 0x7f, start: 120, length: HOUR },
            ],
        )
        .unwrap();
        assert_eq!(w.closes_at(at("2026-12-01T00:30:00Z")), Some(at("2026-12-01T03:00:00Z")));
        let always = daily("UTC", "00:00", DAY);
        assert!(always.contains(at("2026-12-01T13:00:00Z")));
        assert_eq!(always.closes_at(at("2026-12-01T13:00:00Z")), None);
        assert!(Windows::new("Mars/Olympus", vec![]).is_err());
    }
}
