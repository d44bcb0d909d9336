//! Durations (`90s`, `5m`, `1h30m`) and amounts (`3` or `"25%"`) as they appear in files.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// Milliseconds: the core's unit of time. Time always comes in as a value.
pub type Millis = u64;

pub const SECOND: Millis = 1_000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// A duration read from a file, kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Millis);

impl Dur {
    pub fn ms(self) -> Millis {
        self.0
    }
}

/// Why a duration could not be read. `text` is the input, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    /// A unit (or anything but a digit) where a number should start.
    #[error("`{text}` is not a duration")]
    NotADuration { text: String },
    /// A number without a unit after it, as in `5` or `1h30`.
    #[error("`{text}` needs a unit after {number}")]
    MissingUnit { text: String, number: u128 },
    #[error("`{unit}` in `{text}` is not a unit")]
    UnknownUnit { text: String, unit: String },
    /// Units out of order or repeated, as in `30m1h` or `1m1m`.
    #[error("units in `{text}` must go from largest to smallest, once each")]
    UnitOrder { text: String },
    #[error("`{text}` is too large")]
    TooLarge { text: String },
}

/// Parses `90s`, `5m`, `1h30m`, `250ms`, `2d`, `4w`, `0`.
pub fn parse_duration(s: &str) -> Result<Dur, DurationError> {
    let t = s.trim();
    if t == "0" {
        return Ok(Dur(0));
    }
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let b = t.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    let mut last_rank: Option<usize> = None;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(DurationError::NotADuration { text: t.into() });
        }
        // Only digits here: the parse fails only when the number overflows.
        let n: u128 = t[start..i].parse().map_err(|_| DurationError::TooLarge { text: t.into() })?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (rank, mult) = match &t[ustart..i] {
            "w" => (0, 7 * DAY),
            "d" => (1, DAY),
            "h" => (2, HOUR),
            "m" => (3, MINUTE),
            "s" => (4, SECOND),
            "ms" => (5, 1),
            "" => return Err(DurationError::MissingUnit { text: t.into(), number: n }),
            u => return Err(DurationError::UnknownUnit { text: t.into(), unit: u.into() }),
        };
        if last_rank.is_some_and(|l| rank <= l) {
            return Err(DurationError::UnitOrder { text: t.into() });
        }
        last_rank = Some(rank);
        total += n * mult as u128;
    }
    if total > (u64::MAX / 2) as u128 {
        return Err(DurationError::TooLarge { text: t.into() });
    }
    Ok(Dur(total as u64))
}

pub const DURATION_HELP: &str =
    "write a duration as a number and a unit, largest unit first: 90s, 5m, 1h30m, 250ms, 2d, 4w";

/// Formats milliseconds compactly: `1h30m`, `90s` → `1m30s`, `250ms`.
pub fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, m) in [("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND)] {
        if rest >= m {
            out.push_str(&format!("{}{unit}", rest / m));
            rest %= m;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"5m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map_err(|e| E::custom(format!("{e}: {DURATION_HELP}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(0))
                } else {
                    Err(E::custom(format!("duration {v} has no unit: write it as a string such as \"{v}s\"")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    Err(E::custom("a duration cannot be negative"))
                } else {
                    self.visit_u64(v as u64)
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A count or a percentage, as in `max_unavailable = 1` or `max_unavailable = "25%"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(u64),
    /// Percent in 0..=100.
    Percent(f64),
}

impl Amount {
    /// `ceil(n · p / 100)` for a percentage; the count itself otherwise.
    pub fn of_ceil(self, n: usize) -> usize {
        match self {
            Amount::Count(k) => k.min(usize::MAX as u64) as usize,
            Amount::Percent(p) => {
                // Work in hundredths of a percent so that 10% of 30 is exactly 3.
                let bp = (p * 100.0).round() as u128;
                ((n as u128 * bp).div_ceil(10_000)) as usize
            }
        }
    }

    /// `floor(n · p / 100)` for a percentage; the count itself otherwise.
    pub fn of_floor(self, n: usize) -> usize {
        match self {
            Amount::Count(k) => k.min(usize::MAX as u64) as usize,
            Amount::Percent(p) => {
                let bp = (p * 100.0).round() as u128;
                (n as u128 * bp / 10_000) as usize
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(k) => write!(f, "{k}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(k) => s.serialize_u64(*k),
            Amount::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

/// Why a percentage could not be read. `text` is the input, trimmed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PercentError {
    /// No `%` at the end: neither a count (those are numbers, not strings) nor a percentage.
    #[error("`{text}` is neither a whole number nor a percentage: write 2 or \"25%\"")]
    NoPercentSign { text: String },
    /// What comes before the `%` is not a number.
    #[error("`{text}` is not a percentage: write it like \"25%\"")]
    NotANumber { text: String, source: std::num::ParseFloatError },
    #[error("percentage {text} is outside 0%..100%")]
    OutOfRange { text: String, percent: f64 },
}

/// Parses a percentage written as a string, such as `"25%"`.
pub fn parse_percent(v: &str) -> Result<Amount, PercentError> {
    let t = v.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(PercentError::NoPercentSign { text: t.into() });
    };
    let p: f64 = num.trim().parse().map_err(|source| PercentError::NotANumber { text: t.into(), source })?;
    if !(0.0..=100.0).contains(&p) || !p.is_finite() {
        return Err(PercentError::OutOfRange { text: t.into(), percent: p });
    }
    Ok(Amount::Percent(p))
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                if v < 0 {
                    Err(E::custom(format!("{v} is negative: use 0 or more")))
                } else {
                    Ok(Amount::Count(v as u64))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number: write a count such as 2 or a percentage such as \"25%\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                parse_percent(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Dur(90 * SECOND)));
        assert_eq!(parse_duration("1h30m"), Ok(Dur(90 * MINUTE)));
        assert_eq!(parse_duration("250ms"), Ok(Dur(250)));
        assert_eq!(parse_duration("0s"), Ok(Dur(0)));
        assert_eq!(parse_duration("0"), Ok(Dur(0)));
        assert_eq!(parse_duration("4w"), Ok(Dur(28 * DAY)));
        assert_eq!(parse_duration("1w2d"), Ok(Dur(9 * DAY)));
        assert!(parse_duration("2d1w").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert_eq!(format_duration(90 * MINUTE), "1h30m");
        assert_eq!(format_duration(1500), "1s500ms");
    }

    #[test]
    fn amounts_round_up() {
        assert_eq!(Amount::Percent(25.0).of_ceil(3), 1);
        assert_eq!(Amount::Percent(10.0).of_ceil(30), 3);
        assert_eq!(Amount::Percent(20.0).of_ceil(15), 3);
        assert_eq!(Amount::Percent(0.0).of_ceil(15), 0);
        assert_eq!(Amount::Percent(100.0).of_ceil(7), 7);
        assert_eq!(Amount::Count(2).of_ceil(100), 2);
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("-1%").is_err());
        assert!(parse_percent("25").is_err());
    }

    #[test]
    fn duration_errors_tell_failures_apart() {
        let e = |s: &str| parse_duration(s).unwrap_err();
        assert_eq!(e(" "), DurationError::Empty);
        assert_eq!(e("m"), DurationError::NotADuration { text: "m".into() });
        assert_eq!(e("5"), DurationError::MissingUnit { text: "5".into(), number: 5 });
        assert_eq!(e("5x"), DurationError::UnknownUnit { text: "5x".into(), unit: "x".into() });
        assert_eq!(e("30m1h"), DurationError::UnitOrder { text: "30m1h".into() });
        assert!(matches!(e("99999999999999999999999h"), DurationError::TooLarge { .. }));
        // The messages are the ones files have always been told.
        assert_eq!(e("").to_string(), "empty duration");
        assert_eq!(e("m").to_string(), "`m` is not a duration");
        assert_eq!(e("1h30").to_string(), "`1h30` needs a unit after 30");
        assert_eq!(e("5x").to_string(), "`x` in `5x` is not a unit");
        assert_eq!(e("1m1m").to_string(), "units in `1m1m` must go from largest to smallest, once each");
        assert_eq!(e("99999999999999999999999h").to_string(), "`99999999999999999999999h` is too large");
    }

    #[test]
    fn percent_errors_tell_failures_apart() {
        let e = |s: &str| parse_percent(s).unwrap_err();
        assert_eq!(e("25"), PercentError::NoPercentSign { text: "25".into() });
        assert!(matches!(e("x%"), PercentError::NotANumber { .. }));
        assert!(std::error::Error::source(&e("x%")).is_some());
        assert_eq!(e("101%"), PercentError::OutOfRange { text: "101%".into(), percent: 101.0 });
        assert_eq!(
            e("25").to_string(),
            "`25` is neither a whole number nor a percentage: write 2 or \"25%\""
        );
        assert_eq!(e("x%").to_string(), "`x%` is not a percentage: write it like \"25%\"");
        assert_eq!(e("-1%").to_string(), "percentage -1% is outside 0%..100%");
    }
}
