//! Budgets: caps on the credits spent per calendar period (UTC hour, day or month), for each
//! account or for namespaces, checked before every paid call. Pure: the spend comes from the
//! purchase ledger's per-period tallies (`DynamicsLedgerSpec::spend`), so a restart, a failover
//! or a second replica counts what the first one spent.
//!
//! Calendar periods, not sliding windows: they are what an invoice and a finance team count
//! in, a tally per period keeps every ledger record small whatever the spend, and "when it
//! frees" is one clear time (the start of the next period).

use std::collections::HashMap;
use std::fmt;

use jiff::{civil::DateTime, tz::TimeZone, Timestamp, ToSpan};

use crate::resource::{DynamicsLedgerSpec, LedgerSpend};

/// A budget's calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Hour, Period::Day, Period::Month];

    /// The period containing `at`, as recorded in the ledger: `2026-12-07T01`, `2026-12-07`,
    /// `2026-12`.
    pub fn key(self, at: Timestamp) -> String {
        let t = at.to_zoned(TimeZone::UTC);
        match self {
            Period::Hour => format!(
                "{:04}-{:02}-{:02}T{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            ),
            Period::Day => format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
            Period::Month => format!("{:04}-{:02}", t.year(), t.month()),
        }
    }

    /// When the period after the one containing `at` starts.
    pub fn next_start(self, at: Timestamp) -> Timestamp {
        let t = at.to_zoned(TimeZone::UTC).datetime();
        let start = match self {
            Period::Hour => DateTime::new(t.year(), t.month(), t.day(), t.hour(), 0, 0, 0)
                .ok()
                .and_then(|d| d.checked_add(1.hour()).ok()),
            Period::Day => DateTime::new(t.year(), t.month(), t.day(), 0, 0, 0, 0)
                .ok()
                .and_then(|d| d.checked_add(1.day()).ok()),
            Period::Month => DateTime::new(t.year(), t.month(), 1, 0, 0, 0, 0)
                .ok()
                .and_then(|d| d.checked_add(1.month()).ok()),
        };
        start
            .and_then(|d| d.to_zoned(TimeZone::UTC).ok())
            .map_or(Timestamp::MAX, |z| z.timestamp())
    }

    fn of_key(key: &str) -> Option<Period> {
        match key.len() {
            13 => Some(Period::Hour),
            10 => Some(Period::Day),
            7 => Some(Period::Month),
            _ => None,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        })
    }
}

/// Whose spend a budget caps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Each account (API key) on its own.
    Account,
    /// Each namespace on its own.
    EachNamespace,
    /// One namespace.
    Namespace(String),
}

/// One budget: at most `credits` per `period` for `scope`, warning at `warn_percent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Budget {
    pub scope: Scope,
    pub credits: u64,
    pub period: Period,
    pub warn_percent: u8,
}

/// Warn at this share of a budget unless the budget says otherwise.
pub const DEFAULT_WARN_PERCENT: u8 = 80;

impl Budget {
    /// `account:25000/day`, `namespace:5000/hour` (each namespace), `namespace/team-a:10000/month`
    /// (one namespace), each optionally followed by `@90%` (the warning threshold, default 80%).
    pub fn parse(text: &str) -> Result<Budget, String> {
        let hint = "expected SCOPE:CREDITS/PERIOD[@WARN%], e.g. account:25000/day, namespace:5000/day or namespace/team-a:10000/month";
        let (rest, warn) = match text.trim().split_once('@') {
            Some((rest, warn)) => (rest, Some(warn)),
            None => (text.trim(), None),
        };
        let (scope, amount) = rest
            .split_once(':')
            .ok_or_else(|| format!("budget {text:?}: {hint}"))?;
        let scope = match scope.trim() {
            "account" => Scope::Account,
            "namespace" => Scope::EachNamespace,
            s => match s.strip_prefix("namespace/") {
                Some(ns) if !ns.is_empty() => Scope::Namespace(ns.to_string()),
                _ => {
                    return Err(format!(
                        "budget {text:?}: unknown scope {s:?} (account, namespace or namespace/NAME); {hint}"
                    ))
                }
            },
        };
        let (credits, period) = amount
            .split_once('/')
            .ok_or_else(|| format!("budget {text:?}: no period; {hint}"))?;
        let credits: u64 = credits.trim().parse().map_err(|_| {
            format!("budget {text:?}: credits {credits:?} is not a whole number; {hint}")
        })?;
        let period = match period.trim() {
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            p => {
                return Err(format!(
                    "budget {text:?}: unknown period {p:?} (hour, day or month); {hint}"
                ))
            }
        };
        let warn_percent = match warn {
            None => DEFAULT_WARN_PERCENT,
            Some(w) => w
                .trim()
                .trim_end_matches('%')
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| {
                    format!("budget {text:?}: warning threshold {w:?} must be 1% to 100%; {hint}")
                })?,
        };
        Ok(Budget {
            scope,
            credits,
            period,
            warn_percent,
        })
    }

    fn applies(&self, namespace: &str) -> bool {
        match &self.scope {
            Scope::Account | Scope::EachNamespace => true,
            Scope::Namespace(ns) => ns == namespace,
        }
    }

    /// The budget as the user wrote it, for messages, Events and metric labels.
    pub fn name(&self) -> String {
        let scope = match &self.scope {
            Scope::Account => "account".to_string(),
            Scope::EachNamespace => "namespace".to_string(),
            Scope::Namespace(ns) => format!("namespace/{ns}"),
        };
        format!("{scope}:{}/{}", self.credits, self.period)
    }
}

/// The spend recorded in one agent's ledger record, `credits` more for one call.
pub fn with_spend(
    record: &DynamicsLedgerSpec,
    at: Timestamp,
    namespace: &str,
    account: &str,
    credits: i64,
) -> DynamicsLedgerSpec {
    let mut next = record.clone();
    let current: Vec<String> = Period::ALL.iter().map(|p| p.key(at)).collect();
    // Only the current periods count: older tallies are dropped, so a record stays small.
    next.spend.retain(|s| current.contains(&s.period));
    for period in current {
        match next
            .spend
            .iter_mut()
            .find(|s| s.period == period && s.namespace == namespace && s.account == account)
        {
            Some(s) => s.credits = s.credits.saturating_add_signed(credits),
            None if credits > 0 => next.spend.push(LedgerSpend {
                period,
                namespace: namespace.to_string(),
                account: account.to_string(),
                credits: credits as u64,
            }),
            None => {}
        }
    }
    next.spend.retain(|s| s.credits > 0);
    next
}

/// What every ledger record says was spent, by period, namespace and account: the sum that
/// budgets are checked against. Strings are interned, so 10,000 records cost little.
#[derive(Debug, Default)]
pub struct SpendBook {
    names: HashMap<String, u32>,
    records: HashMap<String, Vec<Tally>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    period: u32,
    namespace: u32,
    account: u32,
    credits: u64,
}

impl SpendBook {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(id) = self.names.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.insert(s.to_string(), id);
        id
    }

    /// Take in one record as read or written (it replaces what the book had for it).
    pub fn put(&mut self, name: &str, record: &DynamicsLedgerSpec) {
        let tallies: Vec<Tally> = record
            .spend
            .iter()
            .filter(|s| Period::of_key(&s.period).is_some())
            .map(|s| Tally {
                period: self.intern(&s.period),
                namespace: self.intern(&s.namespace),
                account: self.intern(&s.account),
                credits: s.credits,
            })
            .collect();
        if tallies.is_empty() {
            self.records.remove(name);
        } else {
            self.records.insert(name.to_string(), tallies);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.records.remove(name);
    }

    /// Credits spent in `period` (a period key) by the namespace and/or the account given.
    pub fn spent(&self, period: &str, namespace: Option<&str>, account: Option<&str>) -> u64 {
        let id = |s: &str| self.names.get(s).copied();
        let Some(period) = id(period) else { return 0 };
        let namespace = match namespace.map(id) {
            Some(None) => return 0,
            other => other.flatten(),
        };
        let account = match account.map(id) {
            Some(None) => return 0,
            other => other.flatten(),
        };
        self.records
            .values()
            .flatten()
            .filter(|t| {
                t.period == period
                    && namespace.is_none_or(|n| t.namespace == n)
                    && account.is_none_or(|a| t.account == a)
            })
            .map(|t| t.credits)
            .fold(0u64, u64::saturating_add)
    }
}

/// One paid call about to be made.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub namespace: &'a str,
    pub account: &'a str,
    pub credits: u64,
    pub now: Timestamp,
}

/// A budget and where its spend stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub budget: String,
    pub spent: u64,
    pub limit: u64,
    /// When the budget's period ends (and its spend starts again from 0).
    pub frees_at: Timestamp,
}

/// What the budgets say about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetCheck {
    /// Within every budget; the ones this charge takes to or past their warning threshold.
    Within { warnings: Vec<Standing> },
    /// Past this budget (the one that frees last, when several are).
    Over(Standing),
}

/// Where every budget that applies to `charge` stands before it (what `plan` shows).
pub fn standings(budgets: &[Budget], book: &SpendBook, charge: Charge) -> Vec<Standing> {
    budgets
        .iter()
        .filter(|b| b.applies(charge.namespace))
        .map(|budget| standing(budget, book, charge))
        .collect()
}

fn standing(budget: &Budget, book: &SpendBook, charge: Charge) -> Standing {
    let period = budget.period.key(charge.now);
    let spent = match budget.scope {
        Scope::Account => book.spent(&period, None, Some(charge.account)),
        Scope::EachNamespace | Scope::Namespace(_) => {
            book.spent(&period, Some(charge.namespace), None)
        }
    };
    Standing {
        budget: budget.name(),
        spent,
        limit: budget.credits,
        frees_at: budget.period.next_start(charge.now),
    }
}

pub fn check(budgets: &[Budget], book: &SpendBook, charge: Charge) -> BudgetCheck {
    let mut over: Option<Standing> = None;
    let mut warnings = Vec::new();
    for budget in budgets.iter().filter(|b| b.applies(charge.namespace)) {
        let standing = standing(budget, book, charge);
        let spent = standing.spent;
        let after = spent.saturating_add(charge.credits);
        if after > budget.credits {
            if over.as_ref().is_none_or(|o| o.frees_at < standing.frees_at) {
                over = Some(standing);
            }
            continue;
        }
        let warn_at = budget.credits.saturating_mul(budget.warn_percent as u64) / 100;
        if spent < warn_at && after >= warn_at {
            warnings.push(Standing {
                spent: after,
                ..standing
            });
        }
    }
    match over {
        Some(standing) => BudgetCheck::Over(standing),
        None => BudgetCheck::Within { warnings },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_what_the_docs_show_and_names_the_field_otherwise() {
        let ok = [
            ("account:25000/day", Scope::Account, 25000, Period::Day, 80),
            (
                "namespace:5000/hour@90%",
                Scope::EachNamespace,
                5000,
                Period::Hour,
                90,
            ),
            (
                "namespace/team-a:10000/month@50",
                Scope::Namespace("team-a".into()),
                10000,
                Period::Month,
                50,
            ),
        ];
        for (text, scope, credits, period, warn) in ok {
            let b = Budget::parse(text).unwrap();
            assert_eq!(
                (b.scope, b.credits, b.period, b.warn_percent),
                (scope, credits, period, warn),
                "{text}"
            );
        }
        let bad = [
            ("account", "SCOPE:CREDITS/PERIOD"),
            ("team:100/day", "unknown scope"),
            ("account:lots/day", "not a whole number"),
            ("account:100/week", "unknown period"),
            ("account:100", "no period"),
            ("account:100/day@0%", "warning threshold"),
            ("namespace/:100/day", "unknown scope"),
        ];
        for (text, want) in bad {
            let err = Budget::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(
            Budget::parse("namespace/team-a:10000/month")
                .unwrap()
                .name(),
            "namespace/team-a:10000/month"
        );
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        let t = at("2026-12-31T23:59:30Z");
        assert_eq!(Period::Hour.key(t), "2026-12-31T23");
        assert_eq!(Period::Day.key(t), "2026-12-31");
        assert_eq!(Period::Month.key(t), "2026-12");
        assert_eq!(Period::Hour.next_start(t), at("2027-01-01T00:00:00Z"));
        assert_eq!(Period::Day.next_start(t), at("2027-01-01T00:00:00Z"));
        assert_eq!(
            Period::Month.next_start(at("2026-02-10T05:00:00Z")),
            at("2026-03-01T00:00:00Z")
        );
    }

    #[test]
    fn spend_is_tallied_per_current_period_and_undone_by_a_refusal() {
        let now = at("2026-12-07T01:30:00Z");
        let r = with_spend(&DynamicsLedgerSpec::default(), now, "team-a", "acct1", 250);
        assert_eq!(r.spend.len(), 3, "hour, day and month");
        let r = with_spend(&r, now, "team-a", "acct1", 250);
        assert!(r.spend.iter().all(|s| s.credits == 500));
        let undone = with_spend(&r, now, "team-a", "acct1", -250);
        assert!(undone.spend.iter().all(|s| s.credits == 250));
        // The next hour: the old hour's tally is dropped, day and month go on.
        let later = with_spend(&r, at("2026-12-07T02:05:00Z"), "team-a", "acct1", 250);
        let mut tallies: Vec<(String, u64)> = later
            .spend
            .iter()
            .map(|s| (s.period.clone(), s.credits))
            .collect();
        tallies.sort();
        assert_eq!(
            tallies,
            [
                ("2026-12".into(), 750),
                ("2026-12-07".into(), 750),
                ("2026-12-07T02".into(), 250)
            ]
        );
        let none = with_spend(&DynamicsLedgerSpec::default(), now, "team-a", "acct1", -250);
        assert!(none.spend.is_empty(), "nothing to undo stays nothing");
    }

    #[test]
    fn budget_rules() {
        let now = at("2026-12-07T01:30:00Z");
        let mut book = SpendBook::default();
        let spent = |ns: &str, acct: &str, credits: i64| {
            with_spend(&DynamicsLedgerSpec::default(), now, ns, acct, credits)
        };
        book.put("agent-a", &spent("team-a", "acct1", 750));
        book.put("agent-b", &spent("team-b", "acct1", 500));
        book.put("agent-c", &spent("team-b", "acct2", 250));
        // Yesterday's spend counts for the month only.
        book.put(
            "agent-yesterday",
            &with_spend(
                &DynamicsLedgerSpec::default(),
                at("2026-12-06T23:10:00Z"),
                "team-a",
                "acct1",
                2500,
            ),
        );
        let b = |t: &str| Budget::parse(t).unwrap();
        let charge = |ns: &'static str, acct: &'static str| Charge {
            namespace: ns,
            account: acct,
            credits: 250,
            now,
        };
        let over = |budget: &str, spent: u64, frees: &str| {
            BudgetCheck::Over(Standing {
                budget: budget.into(),
                spent,
                limit: Budget::parse(budget).unwrap().credits,
                frees_at: at(frees),
            })
        };
        let within = BudgetCheck::Within { warnings: vec![] };
        let rows: Vec<(&str, Vec<Budget>, Charge, BudgetCheck)> = vec![
            (
                "no budgets",
                vec![],
                charge("team-a", "acct1"),
                within.clone(),
            ),
            (
                "account: 1250 this hour, room for one more",
                vec![b("account:1500/hour@100%")],
                charge("team-a", "acct1"),
                BudgetCheck::Within {
                    warnings: vec![Standing {
                        budget: "account:1500/hour".into(),
                        spent: 1500,
                        limit: 1500,
                        frees_at: at("2026-12-07T02:00:00Z"),
                    }],
                },
            ),
            (
                "account: full",
                vec![b("account:1250/hour")],
                charge("team-a", "acct1"),
                over("account:1250/hour", 1250, "2026-12-07T02:00:00Z"),
            ),
            (
                "another account is not this one's",
                vec![b("account:1250/hour")],
                charge("team-b", "acct2"),
                within.clone(),
            ),
            (
                "each namespace: team-a full, team-b not",
                vec![b("namespace:750/day")],
                charge("team-a", "acct1"),
                over("namespace:750/day", 750, "2026-12-08T00:00:00Z"),
            ),
            (
                "each namespace: team-b has room",
                vec![b("namespace:2000/day")],
                charge("team-b", "acct1"),
                within.clone(),
            ),
            (
                "one namespace's budget does not cap another",
                vec![b("namespace/team-a:500/day")],
                charge("team-b", "acct1"),
                within.clone(),
            ),
            (
                "two over: the one that frees last is named",
                vec![b("namespace/team-a:500/hour"), b("account:1000/month")],
                charge("team-a", "acct1"),
                over("account:1000/month", 3750, "2027-01-01T00:00:00Z"),
            ),
            (
                "a warning when the charge crosses the threshold",
                vec![b("namespace/team-a:1200/day@80%")],
                charge("team-a", "acct1"),
                BudgetCheck::Within {
                    warnings: vec![Standing {
                        budget: "namespace/team-a:1200/day".into(),
                        spent: 1000,
                        limit: 1200,
                        frees_at: at("2026-12-08T00:00:00Z"),
                    }],
                },
            ),
            (
                "no warning once past it already",
                vec![b("namespace/team-a:4000/day@15%")],
                charge("team-a", "acct1"),
                within.clone(),
            ),
        ];
        for (name, budgets, charge, want) in rows {
            assert_eq!(check(&budgets, &book, charge), want, "{name}");
        }
        book.remove("agent-a");
        assert_eq!(book.spent("2026-12-07T01", Some("team-a"), None), 0);
    }
}
