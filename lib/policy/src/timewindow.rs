//! Time windows for the `when` key `time.window`: who may call what *when*.
//!
//! Value syntax: `[DAYS] HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 09:00-17:00 Europe/Berlin`.
//! - DAYS: comma-separated days or ranges of `Mon Tue Wed Thu Fri Sat Sun` (`Mon-Fri`,
//!   `Sat,Sun`, `Fri-Mon` wraps); omitted means every day.
//! - the range is start-inclusive, end-exclusive local wall-clock time; `24:00` is allowed as an
//!   end; an end at or before the start crosses midnight and belongs to the start's day
//!   (`Fri 22:00-06:00` is Friday 22:00 to Saturday 06:00).
//! - ZONE: an IANA time-zone name (`UTC`, `America/New_York`); the tz database is bundled, so
//!   results do not depend on the host and DST transitions are handled by the zone's rules.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;

#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Bit i set = weekday i (Monday = 0) allowed.
    days: u8,
    start_min: u16,
    end_min: u16,
    tz: TimeZone,
    text: String,
}

impl PartialEq for TimeWindow {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    pub fn parse(v: &str) -> Result<Self, String> {
        let parts: Vec<&str> = v.split_whitespace().collect();
        let (days, range, zone) = match parts.as_slice() {
            [range, zone] if range.contains(':') => (0x7f, *range, *zone),
            [days, range, zone] => (parse_days(days).map_err(|e| format!("{v:?}: {e}"))?, *range, *zone),
            _ => {
                return Err(format!(
                    "{v:?}: expected '[DAYS] HH:MM-HH:MM ZONE', e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'"
                ))
            }
        };
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("{v:?}: time range {range:?} must be HH:MM-HH:MM"))?;
        let start_min = parse_hhmm(start, false).map_err(|e| format!("{v:?}: {e}"))?;
        let end_min = parse_hhmm(end, true).map_err(|e| format!("{v:?}: {e}"))?;
        if start_min == end_min {
            return Err(format!("{v:?}: the range is empty (start equals end)"));
        }
        let tz = TimeZone::get(zone)
            .map_err(|_| format!("{v:?}: {zone:?} is not a known IANA time zone"))?;
        Ok(Self {
            days,
            start_min,
            end_min,
            tz,
            text: v.to_owned(),
        })
    }

    pub fn contains(&self, t: Timestamp) -> bool {
        let local = t.to_zoned(self.tz.clone());
        let day = weekday_index(local.weekday());
        let minute =
            u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.start_min < self.end_min {
            on(day) && minute >= self.start_min && minute < self.end_min
        } else {
            // Crosses midnight: the evening part belongs to `day`, the morning part to the day
            // before.
            let prev = (day + 6) % 7;
            (on(day) && minute >= self.start_min) || (on(prev) && minute < self.end_min)
        }
    }
}

fn weekday_index(w: Weekday) -> u8 {
    u8::try_from(w.to_monday_zero_offset()).unwrap_or(0)
}

fn parse_days(s: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for item in s.split(',') {
        let day = |d: &str| {
            DAY_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d))
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| format!("{d:?} is not a day (Mon..Sun)"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(item)?,
        }
    }
    Ok(mask)
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let num = |x: &str| {
        if x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit()) {
            x.parse::<u16>().ok()
        } else {
            None
        }
    };
    let (Some(h), Some(m)) = (num(h), num(m)) else {
        return Err(format!("{s:?} is not HH:MM"));
    };
    if (h == 24 && m == 0 && allow_24) || (h < 24 && m < 60) {
        Ok(h * 60 + m)
    } else {
        Err(format!("{s:?} is not a time of day"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn office_hours_across_dst() {
        let w = TimeWindow::parse("Mon-Fri 09:00-17:00 Europe/Berlin").unwrap();
        // Friday 2026-03-27, CET (UTC+1): 09:30 local = 08:30Z.
        assert!(w.contains(at("2026-03-27T08:30:00Z")));
        assert!(!w.contains(at("2026-03-27T07:30:00Z")));
        // Monday 2026-03-30, CEST (UTC+2) after the switch: 09:30 local = 07:30Z.
        assert!(w.contains(at("2026-03-30T07:30:00Z")));
        assert!(!w.contains(at("2026-03-30T15:30:00Z")), "17:30 local");
        // Saturday.
        assert!(!w.contains(at("2026-03-28T10:00:00Z")));
    }

    #[test]
    fn overnight_and_parse_errors() {
        let w = TimeWindow::parse("Fri 22:00-06:00 UTC").unwrap();
        assert!(w.contains(at("2026-11-27T23:00:00Z")), "Fri 23:00");
        assert!(w.contains(at("2026-11-28T05:59:00Z")), "Sat 05:59");
        assert!(!w.contains(at("2026-11-28T06:00:00Z")));
        assert!(!w.contains(at("2026-11-28T23:00:00Z")), "Sat 23:00");
        let all = TimeWindow::parse("00:00-24:00 UTC").unwrap();
        assert!(all.contains(at("2026-11-28T23:59:59Z")));
        for bad in [
            "09:00-17:00",
            "Mon-Fri 9:00-17:00 UTC",
            "Mon-Fri 09:00-17:00 Mars/Olympus",
            "Monday 09:00-17:00 UTC",
            "09:00-09:00 UTC",
            "25:00-26:00 UTC",
        ] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
