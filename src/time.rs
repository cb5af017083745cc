//! Time helpers shared by config, definitions and the engine: all times are event-time
//! milliseconds since the Unix epoch, and durations are written like `10m`, `24h`, `7d`.

use std::time::{SystemTime, UNIX_EPOCH};

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The wall clock in ms since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `500ms`, `30s`, `10m`, `1h`, `7d`, `2w` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration '{text}' has no unit (use ms, s, m, h, d or w)"))?;
    let (digits, unit) = text.split_at(split);
    let amount: i64 = digits
        .parse()
        .map_err(|_| format!("duration '{text}' must start with a whole number"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => SECOND_MS,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        other => {
            return Err(format!(
                "duration '{text}' has unknown unit '{other}' (use ms, s, m, h, d or w)"
            ));
        }
    };
    amount
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("duration '{text}' is too long"))
}

/// Formats milliseconds in the largest unit that divides them, e.g. `600000` -> `10m`.
pub fn format_duration_ms(ms: i64) -> String {
    for (unit, size) in [
        ("d", DAY_MS),
        ("h", HOUR_MS),
        ("m", MINUTE_MS),
        ("s", SECOND_MS),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Formats epoch milliseconds as a UTC date and time, e.g. `2026-11-26 18:58:36 UTC`.
pub fn format_utc(ms: i64) -> String {
    let (year, month, day, second_of_day) = civil(ms);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Formats epoch milliseconds as ISO 8601 in UTC with milliseconds, e.g.
/// `2026-11-26T18:58:36.250Z`: what the command line prints beside a time in ms.
pub fn format_iso(ms: i64) -> String {
    let (year, month, day, second_of_day) = civil(ms);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        ms.rem_euclid(1000)
    )
}

/// (year, month, day, second of the day) of epoch milliseconds, in UTC, by the
/// proleptic Gregorian calendar (days-to-civil conversion of H. Hinnant).
fn civil(ms: i64) -> (i64, i64, i64, i64) {
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day, second_of_day)
}

/// A duration in config files: either a string such as `"10m"` or a number of ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub struct Millis(pub i64);

impl Millis {
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl From<Millis> for String {
    fn from(value: Millis) -> Self {
        format_duration_ms(value.0)
    }
}

impl<'de> serde::Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Ms(ms) if ms >= 0 => Ok(Millis(ms)),
            Raw::Ms(ms) => Err(serde::de::Error::custom(format!(
                "duration {ms} must not be negative"
            ))),
            Raw::Text(text) => parse_duration_ms(&text)
                .map(Millis)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        // Values checked with `date -u -d @<seconds>`.
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_719_516_000), "2026-11-26 18:58:36 UTC");
        assert_eq!(format_utc(-1_000), "1969-12-31 23:59:59 UTC");
        assert_eq!(format_utc(4_107_542_399_000), "2100-02-28 23:59:59 UTC");
        // The same instants in ISO 8601, milliseconds kept (checked with `date -u -d @...`).
        assert_eq!(format_iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_iso(1_795_719_516_250), "2026-11-26T18:58:36.250Z");
        assert_eq!(format_iso(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_and_formats_durations() {
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * DAY_MS));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("3y").is_err());
        assert_eq!(format_duration_ms(24 * HOUR_MS), "1d");
        assert_eq!(format_duration_ms(90 * MINUTE_MS), "90m");
        assert_eq!(format_duration_ms(1500), "1500ms");
    }
}
