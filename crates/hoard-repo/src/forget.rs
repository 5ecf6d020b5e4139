//! `hoard forget`: which snapshots a retention policy keeps, and removing the others.
//!
//! The semantics are restic's. Snapshots are grouped (by host and source unless told otherwise)
//! and each group is walked newest first:
//!
//! - `last N` keeps the N newest snapshots;
//! - `hourly`, `daily`, `weekly` (ISO weeks), `monthly` and `yearly N` keep the newest snapshot
//!   of each of the N most recent calendar periods that hold a snapshot;
//! - `within D` keeps every snapshot taken after the group's newest snapshot minus D (calendar
//!   arithmetic, so `1d` across a daylight-saving change is 23 or 25 hours);
//! - `within-daily D` and its siblings keep the newest snapshot of every period, as long as the
//!   snapshot is within D of the group's newest;
//! - `tag T` keeps every snapshot that has the tag.
//!
//! A snapshot is kept when any rule keeps it. Periods are calendar periods in the time zone the
//! caller passes, never the machine's: [`apply`] does no I/O and reads no clock, so the same
//! input always gives the same answer. Unlike restic 0.17, hoard does not also keep the oldest
//! snapshot when a counted rule has periods left over.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use hoard_core::format::snapshot::Snapshot;
use hoard_core::Id;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use crate::error::{RepoError, Result};
use crate::repo::{Repository, SnapshotEntry};

/// A calendar length such as `1y2m3d4h`: years, months (`m`), weeks, days and hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
}

impl Duration {
    /// A zero duration is how a policy says "this rule is not set".
    pub fn is_zero(&self) -> bool {
        *self == Duration::default()
    }

    fn span(&self) -> Option<Span> {
        Span::new()
            .try_years(self.years)
            .and_then(|s| s.try_months(self.months))
            .and_then(|s| s.try_weeks(self.weeks))
            .and_then(|s| s.try_days(self.days))
            .and_then(|s| s.try_hours(self.hours))
            .ok()
    }
}

impl FromStr for Duration {
    type Err = RepoError;

    fn from_str(s: &str) -> Result<Duration> {
        let bad = || RepoError::Invalid(format!("{s:?} is not a duration like 1y2m3d4h (y, m for months, w, d, h)"));
        let mut d = Duration::default();
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: u32 = rest[..digits].parse().map_err(|_| bad())?;
            let unit = rest[digits..].chars().next().ok_or_else(bad)?;
            let field = match unit {
                'y' => &mut d.years,
                'm' => &mut d.months,
                'w' => &mut d.weeks,
                'd' => &mut d.days,
                'h' => &mut d.hours,
                _ => return Err(bad()),
            };
            *field = field.checked_add(n).ok_or_else(bad)?;
            rest = &rest[digits + unit.len_utf8()..];
        }
        Ok(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        for (n, unit) in [(self.years, 'y'), (self.months, 'm'), (self.weeks, 'w'), (self.days, 'd'), (self.hours, 'h')]
        {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// The calendar periods that the counted and `within-` rules keep one snapshot of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Hour,
    Day,
    /// An ISO 8601 week: Monday to Sunday, numbered within its ISO year (so 2024-12-30 is in
    /// 2025's week 1).
    Week,
    Month,
    Year,
}

impl Period {
    const ALL: [Period; 5] = [Period::Hour, Period::Day, Period::Week, Period::Month, Period::Year];

    /// A number that is the same for two local times exactly when they are in the same period.
    fn bucket(self, t: DateTime) -> i64 {
        let (y, m, d, h) = (i64::from(t.year()), i64::from(t.month()), i64::from(t.day()), i64::from(t.hour()));
        match self {
            Period::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Day => (y * 100 + m) * 100 + d,
            Period::Week => {
                let w = t.date().iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => y * 100 + m,
            Period::Year => y,
        }
    }

    /// "daily", as in `--keep-daily`.
    pub fn adjective(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// What to keep. A zero count or duration leaves that rule out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Duration,
    pub within_hourly: Duration,
    pub within_daily: Duration,
    pub within_weekly: Duration,
    pub within_monthly: Duration,
    pub within_yearly: Duration,
    pub tags: Vec<String>,
}

impl Policy {
    /// No rule at all. [`apply`] keeps everything then; the command line refuses instead.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && Period::ALL.iter().all(|&p| self.count(p) == 0 && self.within_period(p).is_zero())
            && self.within.is_zero()
            && self.tags.is_empty()
    }

    fn count(&self, p: Period) -> u32 {
        match p {
            Period::Hour => self.hourly,
            Period::Day => self.daily,
            Period::Week => self.weekly,
            Period::Month => self.monthly,
            Period::Year => self.yearly,
        }
    }

    fn within_period(&self, p: Period) -> Duration {
        match p {
            Period::Hour => self.within_hourly,
            Period::Day => self.within_daily,
            Period::Week => self.within_weekly,
            Period::Month => self.within_monthly,
            Period::Year => self.within_yearly,
        }
    }
}

/// Why a snapshot is kept: the rule, as the command line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `--keep-last`.
    Last,
    /// `--keep-daily` and its siblings.
    Every(Period),
    /// `--keep-within`.
    Within(Duration),
    /// `--keep-within-daily` and its siblings.
    WithinEvery(Period, Duration),
    /// `--keep-tag`.
    Tag(String),
    /// The policy had no rule, so nothing is removed.
    EmptyPolicy,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last => f.write_str("last"),
            Reason::Every(p) => f.write_str(p.adjective()),
            Reason::Within(d) => write!(f, "within {d}"),
            Reason::WithinEvery(p, d) => write!(f, "{} within {d}", p.adjective()),
            Reason::Tag(t) => write!(f, "tag {t}"),
            Reason::EmptyPolicy => f.write_str("empty policy"),
        }
    }
}

/// Which snapshot fields make up a group. Snapshots are only ever compared within a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    /// The source kind and name together (`path /srv/app`, `command pg_dumpall`).
    pub source: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    /// Host and source, so that one host's database dumps never count against its file backups.
    fn default() -> GroupBy {
        GroupBy { host: true, source: true, paths: false, tags: false }
    }
}

impl FromStr for GroupBy {
    type Err = RepoError;

    /// A comma list of `host`, `source`, `paths` and `tags`; the empty string puts every
    /// snapshot in one group.
    fn from_str(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy { host: false, source: false, paths: false, tags: false };
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match field {
                "host" => g.host = true,
                "source" => g.source = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                _ => {
                    return Err(RepoError::Invalid(format!(
                        "cannot group by {field:?}: expected a comma list of host, source, paths, tags"
                    )))
                }
            }
        }
        Ok(g)
    }
}

impl GroupBy {
    fn key(&self, s: &Snapshot) -> GroupKey {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        GroupKey {
            host: self.host.then(|| s.host.clone()),
            source: self.source.then(|| (s.source_kind.clone(), s.source_name.clone())),
            paths: self.paths.then(|| sorted(&s.paths)),
            tags: self.tags.then(|| sorted(&s.tags)),
        }
    }
}

/// The values a group's snapshots share; `None` for a field that is not grouped by.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub host: Option<String>,
    /// Source kind and source name.
    pub source: Option<(String, String)>,
    /// Sorted.
    pub paths: Option<Vec<String>>,
    /// Sorted.
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some((kind, name)) = &self.source {
            parts.push(format!("source {kind} {name}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("all snapshots");
        }
        f.write_str(&parts.join(", "))
    }
}

/// A snapshot that stays, and every rule that keeps it.
#[derive(Clone, Debug)]
pub struct Kept {
    pub entry: SnapshotEntry,
    pub reasons: Vec<Reason>,
}

/// What happens to one group. Both lists are newest first.
#[derive(Clone, Debug)]
pub struct GroupDecision {
    pub key: GroupKey,
    pub keep: Vec<Kept>,
    pub remove: Vec<SnapshotEntry>,
}

/// Groups `entries`, newest first within each group, groups in key order.
fn group(entries: Vec<SnapshotEntry>, group_by: GroupBy) -> BTreeMap<GroupKey, Vec<SnapshotEntry>> {
    let mut groups: BTreeMap<GroupKey, Vec<SnapshotEntry>> = BTreeMap::new();
    for e in entries {
        groups.entry(group_by.key(&e.snapshot)).or_default().push(e);
    }
    for list in groups.values_mut() {
        list.sort_by(|a, b| b.snapshot.time_ns.cmp(&a.snapshot.time_ns).then(b.id.cmp(&a.id)));
    }
    groups
}

fn timestamp(time_ns: i64) -> Timestamp {
    // Every i64 of nanoseconds (years 1677 to 2262) is within jiff's range.
    Timestamp::from_nanosecond(i128::from(time_ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Snapshots strictly after `newest - d` are within `d` of it. `None`: all of them are (the
/// subtraction left jiff's range).
fn cutoff(newest: Timestamp, d: Duration, tz: &TimeZone) -> Option<Timestamp> {
    let zoned = newest.to_zoned_datetime(tz.clone());
    Some(zoned.checked_sub(d.span()?).ok()?.timestamp())
}

/// Decides, for each group, which snapshots `policy` keeps, with the rules that keep each one.
/// Calendar periods are those of `tz`. An empty policy keeps everything.
pub fn apply(entries: &[SnapshotEntry], policy: &Policy, group_by: GroupBy, tz: &TimeZone) -> Vec<GroupDecision> {
    group(entries.to_vec(), group_by)
        .into_iter()
        .map(|(key, list)| {
            let (keep, remove) = decide(list, policy, tz);
            GroupDecision { key, keep, remove }
        })
        .collect()
}

/// One group, newest first.
fn decide(list: Vec<SnapshotEntry>, policy: &Policy, tz: &TimeZone) -> (Vec<Kept>, Vec<SnapshotEntry>) {
    if policy.is_empty() {
        return (
            list.into_iter().map(|entry| Kept { entry, reasons: vec![Reason::EmptyPolicy] }).collect(),
            Vec::new(),
        );
    }
    let Some(newest) = list.first().map(|e| timestamp(e.snapshot.time_ns)) else {
        return (Vec::new(), Vec::new());
    };
    let after = |d: Duration| {
        let c = cutoff(newest, d, tz);
        move |t: Timestamp| c.is_none_or(|c| t > c)
    };
    // (period, periods still to keep, period of the last snapshot kept by this rule)
    let mut counted: Vec<(Period, u32, Option<i64>)> =
        Period::ALL.iter().filter(|&&p| policy.count(p) > 0).map(|&p| (p, policy.count(p), None)).collect();
    let within = (!policy.within.is_zero()).then(|| after(policy.within));
    let mut within_periods: Vec<_> = Period::ALL
        .iter()
        .map(|&p| (p, policy.within_period(p)))
        .filter(|(_, d)| !d.is_zero())
        .map(|(p, d)| (p, d, after(d), None::<i64>))
        .collect();

    let (mut keep, mut remove) = (Vec::new(), Vec::new());
    for (nr, entry) in list.into_iter().enumerate() {
        let t = timestamp(entry.snapshot.time_ns);
        let local = tz.to_datetime(t);
        let mut reasons = Vec::new();
        if (nr as u64) < u64::from(policy.last) {
            reasons.push(Reason::Last);
        }
        for (period, left, last) in &mut counted {
            let b = period.bucket(local);
            if *left > 0 && *last != Some(b) {
                *left -= 1;
                *last = Some(b);
                reasons.push(Reason::Every(*period));
            }
        }
        if within.as_ref().is_some_and(|w| w(t)) {
            reasons.push(Reason::Within(policy.within));
        }
        for (period, d, inside, last) in &mut within_periods {
            let b = period.bucket(local);
            if inside(t) && *last != Some(b) {
                *last = Some(b);
                reasons.push(Reason::WithinEvery(*period, *d));
            }
        }
        for tag in &policy.tags {
            if entry.snapshot.tags.contains(tag) {
                reasons.push(Reason::Tag(tag.clone()));
            }
        }
        if reasons.is_empty() {
            remove.push(entry);
        } else {
            keep.push(Kept { entry, reasons });
        }
    }
    (keep, remove)
}

/// Snapshots named one by one (`hoard forget ID…`), grouped like [`apply`]'s, all to remove.
pub fn named(entries: Vec<SnapshotEntry>, group_by: GroupBy) -> Vec<GroupDecision> {
    let mut seen = std::collections::HashSet::new();
    let unique = entries.into_iter().filter(|e| seen.insert(e.id)).collect();
    group(unique, group_by).into_iter().map(|(key, remove)| GroupDecision { key, keep: Vec::new(), remove }).collect()
}

/// Deletes every snapshot the decisions remove, group by group, and returns their ids. Stops
/// at the first failure; the snapshots removed before it stay removed.
pub fn remove(repo: &Repository, decisions: &[GroupDecision]) -> Result<Vec<Id>> {
    let mut removed = Vec::new();
    for e in decisions.iter().flat_map(|g| &g.remove) {
        repo.remove_snapshot(&e.id)?;
        removed.push(e.id);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_core::format::snapshot::Summary;
    use jiff::civil::{date, Date};

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn entry(n: usize, time_ns: i64, host: &str, name: &str, tags: &[&str]) -> SnapshotEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(n as u64).to_be_bytes());
        SnapshotEntry {
            id: Id(id),
            snapshot: Snapshot {
                time_ns,
                host: host.into(),
                user: "root".into(),
                source_kind: "path".into(),
                source_name: name.into(),
                paths: vec![name.into()],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                labels: Vec::new(),
                parent: None,
                tree: Id::default(),
                partial: false,
                program: "test".into(),
                summary: Summary::default(),
            },
        }
    }

    /// Snapshots at these instants (RFC 3339, any offset), in this order.
    fn at_instants(times: &[&str]) -> Vec<SnapshotEntry> {
        times.iter().enumerate().map(|(i, t)| entry(i, ns(t.parse().unwrap()), "h", "/srv", &[])).collect()
    }

    fn ns(t: Timestamp) -> i64 {
        i64::try_from(t.as_nanosecond()).unwrap()
    }

    /// A local wall-clock time; a time in a spring-forward gap moves forward by the gap.
    fn local(tz: &TimeZone, d: Date, h: i8, m: i8) -> i64 {
        ns(d.at(h, m, 0, 0).to_zoned_datetime(tz.clone()).unwrap().timestamp())
    }

    fn show(tz: &TimeZone, time_ns: i64) -> String {
        let t = tz.to_datetime(timestamp(time_ns));
        format!("{:04}-{:02}-{:02} {:02}:{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute())
    }

    /// The one group's kept snapshots as local times, newest first, after checking that every
    /// input snapshot is kept or removed exactly once.
    fn kept_times(entries: &[SnapshotEntry], policy: &Policy, tz: &TimeZone) -> Vec<String> {
        kept_with_reasons(entries, policy, tz).into_iter().map(|(t, _)| t).collect()
    }

    fn kept_with_reasons(entries: &[SnapshotEntry], policy: &Policy, tz: &TimeZone) -> Vec<(String, String)> {
        let groups = apply(entries, policy, GroupBy::default(), tz);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        let mut ids: Vec<Id> = g.keep.iter().map(|k| k.entry.id).chain(g.remove.iter().map(|e| e.id)).collect();
        assert_eq!(ids.len(), entries.len(), "every snapshot is kept or removed");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "no snapshot is both kept and removed");
        let times: Vec<i64> = g.keep.iter().map(|k| k.entry.snapshot.time_ns).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "kept list is newest first");
        g.keep
            .iter()
            .map(|k| {
                let why: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
                (show(tz, k.entry.snapshot.time_ns), why.join(", "))
            })
            .collect()
    }

    /// 400 nights at 02:30 Berlin time from 2024-01-01 to 2025-02-03 (a Monday); a manual run
    /// tagged "manual" at 14:00 on the first of every month; and two more runs on the last day,
    /// at 12:00 and 20:00. 2024-03-31 has no 02:30: that night's run is at 03:30 CEST.
    fn year_of_nightlies(tz: &TimeZone) -> Vec<SnapshotEntry> {
        let mut out = Vec::new();
        let mut day = date(2024, 1, 1);
        for _ in 0..400 {
            out.push(entry(out.len(), local(tz, day, 2, 30), "h", "/srv", &[]));
            if day.day() == 1 {
                out.push(entry(out.len(), local(tz, day, 14, 0), "h", "/srv", &["manual"]));
            }
            day = day.tomorrow().unwrap();
        }
        assert_eq!(day, date(2025, 2, 4));
        out.push(entry(out.len(), local(tz, date(2025, 2, 3), 12, 0), "h", "/srv", &[]));
        out.push(entry(out.len(), local(tz, date(2025, 2, 3), 20, 0), "h", "/srv", &[]));
        out
    }

    fn d(s: &str) -> Duration {
        s.parse().unwrap()
    }

    #[test]
    fn each_rule_alone_over_a_year_of_nightlies() {
        let berlin = tz("Europe/Berlin");
        let snaps = year_of_nightlies(&berlin);
        assert_eq!(snaps.len(), 400 + 14 + 2);
        let cases: Vec<(&str, Policy, Vec<&str>)> = vec![
            (
                "last 3",
                Policy { last: 3, ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-03 12:00", "2025-02-03 02:30"],
            ),
            (
                "hourly 4",
                Policy { hourly: 4, ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-03 12:00", "2025-02-03 02:30", "2025-02-02 02:30"],
            ),
            // The first of the month has a later run, at 14:00: that one is the day's newest.
            (
                "daily 3",
                Policy { daily: 3, ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-02 02:30", "2025-02-01 14:00"],
            ),
            // 2025-02-03 starts ISO week 6; week 5 ends on Sunday 2025-02-02.
            (
                "weekly 3",
                Policy { weekly: 3, ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-02 02:30", "2025-01-26 02:30"],
            ),
            (
                "monthly 3",
                Policy { monthly: 3, ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-01-31 02:30", "2024-12-31 02:30"],
            ),
            // Only two years hold snapshots: the count is an upper bound.
            ("yearly 5", Policy { yearly: 5, ..Policy::default() }, vec!["2025-02-03 20:00", "2024-12-31 02:30"]),
            // Strictly after 2025-02-01 20:00.
            (
                "within 2d",
                Policy { within: d("2d"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-03 12:00", "2025-02-03 02:30", "2025-02-02 02:30"],
            ),
            // Strictly after 2025-02-02 08:00.
            (
                "within 1d12h",
                Policy { within: d("1d12h"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-03 12:00", "2025-02-03 02:30"],
            ),
            (
                "within-hourly 1d",
                Policy { within_hourly: d("1d"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-03 12:00", "2025-02-03 02:30"],
            ),
            (
                "within-daily 3d",
                Policy { within_daily: d("3d"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-02 02:30", "2025-02-01 14:00"],
            ),
            // After 2025-01-20 20:00: the week of the 20th counts from the 21st on.
            (
                "within-weekly 2w",
                Policy { within_weekly: d("2w"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-02-02 02:30", "2025-01-26 02:30"],
            ),
            (
                "within-monthly 1m",
                Policy { within_monthly: d("1m"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-01-31 02:30"],
            ),
            // After 2024-12-31 20:00: December's newest, at 02:30 that day, is out ...
            (
                "within-monthly 1m3d",
                Policy { within_monthly: d("1m3d"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-01-31 02:30"],
            ),
            // ... and a day more brings it in.
            (
                "within-monthly 1m4d",
                Policy { within_monthly: d("1m4d"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2025-01-31 02:30", "2024-12-31 02:30"],
            ),
            (
                "within-yearly 1y",
                Policy { within_yearly: d("1y"), ..Policy::default() },
                vec!["2025-02-03 20:00", "2024-12-31 02:30"],
            ),
            (
                "tag manual",
                Policy { tags: vec!["manual".into()], ..Policy::default() },
                vec![
                    "2025-02-01 14:00",
                    "2025-01-01 14:00",
                    "2024-12-01 14:00",
                    "2024-11-01 14:00",
                    "2024-10-01 14:00",
                    "2024-09-01 14:00",
                    "2024-08-01 14:00",
                    "2024-07-01 14:00",
                    "2024-06-01 14:00",
                    "2024-05-01 14:00",
                    "2024-04-01 14:00",
                    "2024-03-01 14:00",
                    "2024-02-01 14:00",
                    "2024-01-01 14:00",
                ],
            ),
            ("tag nobody-has", Policy { tags: vec!["nobody-has".into()], ..Policy::default() }, vec![]),
        ];
        for (name, policy, want) in cases {
            assert_eq!(kept_times(&snaps, &policy, &berlin), want, "{name}");
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps_a_snapshot() {
        let berlin = tz("Europe/Berlin");
        let snaps = year_of_nightlies(&berlin);
        let reason_of = |policy: Policy| kept_with_reasons(&snaps, &policy, &berlin)[0].1.clone();
        assert_eq!(reason_of(Policy { last: 1, ..Policy::default() }), "last");
        assert_eq!(reason_of(Policy { hourly: 1, ..Policy::default() }), "hourly");
        assert_eq!(reason_of(Policy { yearly: 1, ..Policy::default() }), "yearly");
        assert_eq!(reason_of(Policy { within: d("1y2m"), ..Policy::default() }), "within 1y2m");
        assert_eq!(reason_of(Policy { within_weekly: d("3w"), ..Policy::default() }), "weekly within 3w");
        let all = Policy {
            last: 1,
            hourly: 1,
            daily: 1,
            weekly: 1,
            monthly: 1,
            yearly: 1,
            within: d("1h"),
            within_hourly: d("1d"),
            within_daily: d("1d"),
            within_weekly: d("1d"),
            within_monthly: d("1d"),
            within_yearly: d("1d"),
            tags: vec!["manual".into()],
        };
        assert_eq!(
            kept_with_reasons(&snaps, &all, &berlin)[..3],
            [
                (
                    "2025-02-03 20:00".to_string(),
                    "last, hourly, daily, weekly, monthly, yearly, within 1h, hourly within 1d, daily within 1d, \
                     weekly within 1d, monthly within 1d, yearly within 1d"
                        .to_string()
                ),
                ("2025-02-03 12:00".to_string(), "hourly within 1d".to_string()),
                ("2025-02-03 02:30".to_string(), "hourly within 1d".to_string()),
            ]
        );
    }

    #[test]
    fn daily_weekly_monthly_yearly_together() {
        let berlin = tz("Europe/Berlin");
        let snaps = year_of_nightlies(&berlin);
        let policy = Policy { daily: 7, weekly: 4, monthly: 12, ..Policy::default() };
        let want = [
            ("2025-02-03 20:00", "daily, weekly, monthly"),
            ("2025-02-02 02:30", "daily, weekly"),
            ("2025-02-01 14:00", "daily"),
            ("2025-01-31 02:30", "daily, monthly"),
            ("2025-01-30 02:30", "daily"),
            ("2025-01-29 02:30", "daily"),
            ("2025-01-28 02:30", "daily"),
            ("2025-01-26 02:30", "weekly"),
            ("2025-01-19 02:30", "weekly"),
            ("2024-12-31 02:30", "monthly"),
            ("2024-11-30 02:30", "monthly"),
            ("2024-10-31 02:30", "monthly"),
            ("2024-09-30 02:30", "monthly"),
            ("2024-08-31 02:30", "monthly"),
            ("2024-07-31 02:30", "monthly"),
            ("2024-06-30 02:30", "monthly"),
            ("2024-05-31 02:30", "monthly"),
            ("2024-04-30 02:30", "monthly"),
            // The night clocks went forward: 02:30 did not exist in Berlin.
            ("2024-03-31 03:30", "monthly"),
        ];
        let as_strings = |w: &[(&str, &str)]| -> Vec<(String, String)> {
            w.iter().map(|(t, r)| (t.to_string(), r.to_string())).collect()
        };
        assert_eq!(kept_with_reasons(&snaps, &policy, &berlin), as_strings(&want));

        let policy = Policy { yearly: 3, ..policy };
        let mut want = want.to_vec();
        want[0].1 = "daily, weekly, monthly, yearly";
        want[9].1 = "monthly, yearly";
        assert_eq!(kept_with_reasons(&snaps, &policy, &berlin), as_strings(&want));
    }

    #[test]
    fn fall_back_hour_maps_to_one_local_day() {
        // 2024-10-27 in Berlin: 01:30 CEST (23:30 UTC the day before) and 02:30 CET are the same
        // local day, and 02:30 CEST and 02:30 CET the same local hour.
        let snaps = at_instants(&[
            "2024-10-26T00:30:00Z", // 02:30 CEST, Oct 26
            "2024-10-26T01:00:00Z", // 03:00 CEST, Oct 26
            "2024-10-26T23:30:00Z", // 01:30 CEST, Oct 27
            "2024-10-27T00:30:00Z", // 02:30 CEST, Oct 27
            "2024-10-27T01:30:00Z", // 02:30 CET, Oct 27
        ]);
        let berlin = tz("Europe/Berlin");
        let daily = Policy { daily: 3, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &daily, &berlin), ["2024-10-27 02:30", "2024-10-26 03:00"]);
        let hourly = Policy { hourly: 5, ..Policy::default() };
        assert_eq!(
            kept_times(&snaps, &hourly, &berlin),
            ["2024-10-27 02:30", "2024-10-27 01:30", "2024-10-26 03:00", "2024-10-26 02:30"]
        );
        // In UTC the 23:30 run is the 26th's newest.
        assert_eq!(kept_times(&snaps, &daily, &TimeZone::UTC), ["2024-10-27 01:30", "2024-10-26 23:30"]);
        // A calendar day back from 02:30 CET on the 27th is 02:30 CEST on the 26th, 25 hours
        // earlier, so the 03:00 CEST run (24.5 hours earlier) is within a day but not within 24h.
        let within = Policy { within: d("1d"), ..Policy::default() };
        assert_eq!(
            kept_times(&snaps, &within, &berlin),
            ["2024-10-27 02:30", "2024-10-27 02:30", "2024-10-27 01:30", "2024-10-26 03:00"]
        );
        let within = Policy { within: d("24h"), ..Policy::default() };
        assert_eq!(kept_times(&snaps, &within, &berlin), ["2024-10-27 02:30", "2024-10-27 02:30", "2024-10-27 01:30"]);
    }

    #[test]
    fn spring_forward_gap() {
        // 2024-03-31 in Berlin: 02:00 CET jumps to 03:00 CEST.
        let berlin = tz("Europe/Berlin");
        assert_eq!(show(&berlin, local(&berlin, date(2024, 3, 31), 2, 30)), "2024-03-31 03:30");
        let snaps = at_instants(&[
            "2024-03-30T02:00:00Z", // 03:00 CET, Mar 30
            "2024-03-30T12:00:00Z", // 13:00 CET, Mar 30
            "2024-03-30T23:30:00Z", // 00:30 CET, Mar 31
            "2024-03-31T00:30:00Z", // 01:30 CET, Mar 31
            "2024-03-31T01:30:00Z", // 03:30 CEST, Mar 31
        ]);
        let daily = Policy { daily: 2, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &daily, &berlin), ["2024-03-31 03:30", "2024-03-30 13:00"]);
        assert_eq!(kept_times(&snaps, &daily, &TimeZone::UTC), ["2024-03-31 01:30", "2024-03-30 23:30"]);
        // A calendar day back from 03:30 CEST is 03:30 CET: 23 hours, so the 03:00 CET run of
        // the 30th (23.5 hours earlier) is not within a day, though it is within 24 hours.
        let within = Policy { within: d("1d"), ..Policy::default() };
        assert_eq!(
            kept_times(&snaps, &within, &berlin),
            ["2024-03-31 03:30", "2024-03-31 01:30", "2024-03-31 00:30", "2024-03-30 13:00"]
        );
        let within = Policy { within: d("24h"), ..Policy::default() };
        assert_eq!(kept_times(&snaps, &within, &berlin).len(), 5);
    }

    #[test]
    fn local_day_depends_on_the_time_zone() {
        let snaps = at_instants(&[
            "2024-06-10T12:00:00Z", // New York Jun 10 08:00; Tokyo Jun 10 21:00
            "2024-06-10T23:30:00Z", // New York Jun 10 19:30; Tokyo Jun 11 08:30
            "2024-06-11T05:00:00Z", // New York Jun 11 01:00; Tokyo Jun 11 14:00
        ]);
        let daily = Policy { daily: 5, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &daily, &tz("America/New_York")), ["2024-06-11 01:00", "2024-06-10 19:30"]);
        assert_eq!(kept_times(&snaps, &daily, &tz("Asia/Tokyo")), ["2024-06-11 14:00", "2024-06-10 21:00"]);
    }

    #[test]
    fn iso_weeks_across_the_year_end() {
        let utc = TimeZone::UTC;
        let nightly = |from: Date, days: usize| -> Vec<SnapshotEntry> {
            let mut day = from;
            (0..days)
                .map(|i| {
                    let e = entry(i, local(&utc, day, 2, 30), "h", "/srv", &[]);
                    day = day.tomorrow().unwrap();
                    e
                })
                .collect()
        };
        // Sunday 2024-12-29 ends 2024-W52; 2024-12-30 to 2025-01-05 is 2025-W01.
        let snaps = nightly(date(2024, 12, 27), 11);
        let weekly = Policy { weekly: 3, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &weekly, &utc), ["2025-01-06 02:30", "2025-01-05 02:30", "2024-12-29 02:30"]);
        let yearly = Policy { yearly: 3, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &yearly, &utc), ["2025-01-06 02:30", "2024-12-31 02:30"]);
        // 2020 has an ISO week 53, which runs to Sunday 2021-01-03.
        let snaps = nightly(date(2020, 12, 26), 11);
        let weekly = Policy { weekly: 3, ..Policy::default() };
        assert_eq!(kept_times(&snaps, &weekly, &utc), ["2021-01-05 02:30", "2021-01-03 02:30", "2020-12-27 02:30"]);
    }

    #[test]
    fn groups_are_decided_separately() {
        let utc = TimeZone::UTC;
        let hour = 3_600_000_000_000;
        let snaps = vec![
            entry(0, hour, "a", "/srv", &[]),
            entry(1, 2 * hour, "a", "/srv", &[]),
            entry(2, 3 * hour, "a", "/etc", &["x"]),
            entry(3, 4 * hour, "b", "/srv", &["x"]),
            entry(4, 5 * hour, "b", "/srv", &[]),
        ];
        let last1 = Policy { last: 1, ..Policy::default() };
        let summary = |gb: GroupBy| -> Vec<(String, Vec<usize>, Vec<usize>)> {
            apply(&snaps, &last1, gb, &utc)
                .iter()
                .map(|g| {
                    let n = |e: &SnapshotEntry| e.id.0[7] as usize;
                    (g.key.to_string(), g.keep.iter().map(|k| n(&k.entry)).collect(), g.remove.iter().map(n).collect())
                })
                .collect()
        };
        assert_eq!(
            summary(GroupBy::default()),
            [
                ("host a, source path /etc".to_string(), vec![2], vec![]),
                ("host a, source path /srv".to_string(), vec![1], vec![0]),
                ("host b, source path /srv".to_string(), vec![4], vec![3]),
            ]
        );
        assert_eq!(
            summary("host".parse().unwrap()),
            [("host a".to_string(), vec![2], vec![1, 0]), ("host b".to_string(), vec![4], vec![3])]
        );
        assert_eq!(
            summary("paths,tags".parse().unwrap()),
            [
                ("paths [/etc], tags [x]".to_string(), vec![2], vec![]),
                ("paths [/srv], tags []".to_string(), vec![4], vec![1, 0]),
                ("paths [/srv], tags [x]".to_string(), vec![3], vec![]),
            ]
        );
        assert_eq!(summary("".parse().unwrap()), [("all snapshots".to_string(), vec![4], vec![3, 2, 1, 0])]);
        assert!("host,colour".parse::<GroupBy>().is_err());

        // The newest of each group is its own reference for `within`.
        let within = Policy { within: d("90m"), ..Policy::default() };
        let kept: Vec<usize> = apply(&snaps, &within, GroupBy::default(), &utc)
            .iter()
            .flat_map(|g| g.keep.iter().map(|k| k.entry.id.0[7] as usize))
            .collect();
        assert_eq!(kept, [2, 1, 0, 4, 3]);
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let snaps = at_instants(&["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]);
        let p = Policy { within: d("0d"), ..Policy::default() };
        assert!(p.is_empty());
        let g = apply(&snaps, &p, GroupBy::default(), &TimeZone::UTC);
        assert_eq!((g[0].keep.len(), g[0].remove.len()), (2, 0));
        assert!(!Policy { tags: vec!["t".into()], ..Policy::default() }.is_empty());
        assert!(!Policy { within_yearly: d("1y"), ..Policy::default() }.is_empty());
    }

    #[test]
    fn named_snapshots_are_all_removed_once() {
        let snaps = at_instants(&["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]);
        let g = named(vec![snaps[0].clone(), snaps[1].clone(), snaps[0].clone()], GroupBy::default());
        assert_eq!(g.len(), 1);
        assert!(g[0].keep.is_empty());
        assert_eq!(g[0].remove.iter().map(|e| e.id).collect::<Vec<_>>(), [snaps[1].id, snaps[0].id]);
    }

    #[test]
    fn durations() {
        assert_eq!(d("1y2m3d4h"), Duration { years: 1, months: 2, weeks: 0, days: 3, hours: 4 });
        assert_eq!(d("2w"), Duration { weeks: 2, ..Duration::default() });
        assert_eq!(d("1d1d"), Duration { days: 2, ..Duration::default() });
        assert_eq!(d("1y2m3w4d5h").to_string(), "1y2m3w4d5h");
        assert_eq!(d("36h").to_string(), "36h");
        assert!(d("0d").is_zero());
        for bad in ["", "3", "d", "1x", "1d2", "-1d", "1.5d", "99999999999d", "1 d"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
    }
}
