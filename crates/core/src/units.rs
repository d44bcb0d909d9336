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

/// Parses `90s`, `5m`, `1h30m`, `250ms`, `2d`, `0`.
pub fn parse_duration(s: &str) -> Result<Dur, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Dur(0));
    }
    if t.is_empty() {
        return Err("empty duration".into());
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
            return Err(format!("`{t}` is not a duration"));
        }
        let n: u128 = t[start..i].parse().map_err(|_| format!("`{t}` is too large"))?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (rank, mult) = match &t[ustart..i] {
            "d" => (0, DAY),
            "h" => (1, HOUR),
            "m" => (2, MINUTE),
            "s" => (3, SECOND),
            "ms" => (4, 1),
            "" => return Err(format!("`{t}` needs a unit after {n}")),
            u => return Err(format!("`{u}` in `{t}` is not a unit")),
        };
        if last_rank.is_some_and(|l| rank <= l) {
            return Err(format!("units in `{t}` must go from largest to smallest, once each"));
        }
        last_rank = Some(rank);
        total += n * mult as u128;
    }
    if total > (u64::MAX / 2) as u128 {
        return Err(format!("`{t}` is too large"));
    }
    Ok(Dur(total as u64))
}

pub const DURATION_HELP: &str =
    "write a duration as a number and a unit, largest unit first: 90s, 5m, 1h30m, 250ms, 2d";

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

pub fn parse_percent(v: &str) -> Result<Amount, String> {
    let t = v.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!("`{t}` is neither a whole number nor a percentage: write 2 or \"25%\""));
    };
    let p: f64 =
        num.trim().parse().map_err(|_| format!("`{t}` is not a percentage: write it like \"25%\""))?;
    if !(0.0..=100.0).contains(&p) || !p.is_finite() {
        return Err(format!("percentage {t} is outside 0%..100%"));
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
}
