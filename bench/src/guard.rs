//! The regression guard: this run's benchmark figures against the last committed run's.
//! Not a timed test — machines and their load differ, so a flagged figure asks for a second
//! run, not a verdict.
//!
//! Both documents are the benchmark's JSON:
//! `{"machine": "...", "results": [{"name": "...", "value": 5240176.0, "unit": "records/s",
//! "better": "higher"}, ...]}`, where `better` is `"higher"` or `"lower"` (a result without
//! it counts as higher-is-better).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

/// One figure compared with the previous run's.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub unit: String,
    pub before: f64,
    pub now: f64,
    /// now/before for higher-is-better, before/now for lower-is-better: below 1 is worse.
    /// NaN when either value is zero, negative or not finite (the two cannot be compared).
    pub change: f64,
    pub regressed: bool,
}

/// Why two benchmark documents could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Not JSON at all.
    #[error("the {which} run's benchmark JSON cannot be read: {source}")]
    Json {
        /// "previous" or "current".
        which: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but not a benchmark document.
    #[error("the {which} run's benchmark JSON has no \"results\" array")]
    NoResults {
        /// "previous" or "current".
        which: &'static str,
    },
}

/// One result of a document: name, unit, value, and whether lower is better.
struct Figure {
    name: String,
    unit: String,
    value: f64,
    lower_is_better: bool,
}

fn figures(doc: &str, which: &'static str) -> Result<Vec<Figure>, GuardError> {
    let v: Value =
        serde_json::from_str(doc).map_err(|source| GuardError::Json { which, source })?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or(GuardError::NoResults { which })?;
    Ok(results
        .iter()
        .filter_map(|r| {
            let name = r.get("name")?.as_str()?.to_string();
            let unit = r
                .get("unit")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // A value that is not a number (null: not measured) is kept as NaN, so that the
            // figure shows in the table as not comparable rather than vanishing.
            let value = r.get("value").and_then(Value::as_f64).unwrap_or(f64::NAN);
            let lower_is_better = r.get("better").and_then(Value::as_str) == Some("lower");
            Some(Figure {
                name,
                unit,
                value,
                lower_is_better,
            })
        })
        .collect())
}

/// Figures present in both (matched by name and unit), in `now`'s order; a figure is regressed when `change < 1/tolerance` (tolerance e.g. 1.25: worse by more than 25 %). Zero or non-finite values are never flagged (and do not divide by zero).
///
/// The direction (`better`) is the current run's. A figure that appears twice under the same
/// name and unit is compared with the first of the previous run's.
pub fn compare(before: &str, now: &str, tolerance: f64) -> Result<Vec<Check>, GuardError> {
    compare_with(before, now, tolerance, COUNT_TOLERANCE)
}

/// The unit of a count that does not depend on the machine (an instruction count).
pub const COUNT_UNIT: &str = "instructions/record";

/// The tolerance of a [`COUNT_UNIT`] figure: the same code gives the same count to within a
/// few instructions, so a rise of more than 2 % is a change in the code, not in the machine.
pub const COUNT_TOLERANCE: f64 = 1.02;

/// [`compare`] with `count_tolerance` for figures in [`COUNT_UNIT`].
pub fn compare_with(
    before: &str,
    now: &str,
    tolerance: f64,
    count_tolerance: f64,
) -> Result<Vec<Check>, GuardError> {
    let before = figures(before, "previous")?;
    let now = figures(now, "current")?;
    let mut previous: HashMap<(&str, &str), f64> = HashMap::new();
    for f in &before {
        previous
            .entry((f.name.as_str(), f.unit.as_str()))
            .or_insert(f.value);
    }
    Ok(now
        .iter()
        .filter_map(|f| {
            let &b = previous.get(&(f.name.as_str(), f.unit.as_str()))?;
            let comparable = |v: f64| v.is_finite() && v > 0.0;
            let limit = if f.unit == COUNT_UNIT {
                count_tolerance
            } else {
                tolerance
            };
            let change = if comparable(b) && comparable(f.value) {
                if f.lower_is_better {
                    b / f.value
                } else {
                    f.value / b
                }
            } else {
                f64::NAN
            };
            Some(Check {
                name: f.name.clone(),
                unit: f.unit.clone(),
                before: b,
                now: f.value,
                change,
                // NaN < anything is false: not comparable is never flagged.
                regressed: change.is_finite() && change < 1.0 / limit,
            })
        })
        .collect())
}

/// A Markdown section for the report: heading "## Against the last committed run", one table row per check (name, before, now, change as "0.83×", "REGRESSED" or "ok"), a line saying how many regressed beyond the tolerance (stated, e.g. "worse by more than 25 %"), and a sentence that machines differ so a flag asks for a second run, not a verdict. If `checks` is empty: say no figure could be compared.
pub fn markdown(checks: &[Check], tolerance: f64, before_label: &str) -> String {
    let mut out = String::from("## Against the last committed run\n\n");
    let worse = format!(
        "worse by more than {} %, instruction counts by more than {} %",
        percent(tolerance),
        percent(COUNT_TOLERANCE)
    );
    if checks.is_empty() {
        let _ = writeln!(
            out,
            "No figure could be compared with {}: none is in both runs under the same name and unit.",
            inline(before_label)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "Previous run: {}. A change below 1× is worse (for figures where lower is better, \
         the ratio is before/now).\n",
        inline(before_label)
    );
    out.push_str("| Figure | Before | Now | Change | |\n");
    out.push_str("|---|---:|---:|---:|---|\n");
    for c in checks {
        let change = if c.change.is_finite() {
            format!("{:.2}×", c.change)
        } else {
            String::from("n/a")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&c.name),
            cell(&with_unit(c.before, &c.unit)),
            cell(&with_unit(c.now, &c.unit)),
            change,
            if c.regressed { "REGRESSED" } else { "ok" }
        );
    }
    out.push('\n');
    let regressed: Vec<&Check> = checks.iter().filter(|c| c.regressed).collect();
    let not_comparable = checks.iter().filter(|c| !c.change.is_finite()).count();
    match regressed.len() {
        0 => {
            let _ = write!(
                out,
                "None of the {} figure{} regressed beyond the tolerance ({worse}).",
                checks.len(),
                if checks.len() == 1 { "" } else { "s" }
            );
        }
        n => {
            let names: Vec<String> = regressed.iter().map(|c| c.name.clone()).collect();
            let _ = write!(
                out,
                "**{n} of {} figure{} regressed beyond the tolerance** ({worse}): {}.",
                checks.len(),
                if checks.len() == 1 { "" } else { "s" },
                names.join("; ")
            );
        }
    }
    if not_comparable > 0 {
        let _ = write!(
            out,
            " {not_comparable} could not be compared (a value zero or missing)."
        );
    }
    out.push_str(
        "\n\nMachines (and their load) differ from one run to the next, so a flagged figure \
         asks for a second run, not a verdict.\n",
    );
    out
}

/// `(tolerance - 1) × 100`, readably: 1.25 → "25", 1.125 → "12.5".
fn percent(tolerance: f64) -> String {
    let p = (tolerance - 1.0) * 100.0;
    if !p.is_finite() {
        return String::from("?");
    }
    let s = format!("{p:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// A value and its unit: thousands separated for large figures, three significant digits
/// for small ones.
fn with_unit(v: f64, unit: &str) -> String {
    let n = if !v.is_finite() {
        String::from("n/a")
    } else if v.abs() >= 100.0 {
        thousands(v.round())
    } else if v == 0.0 {
        String::from("0")
    } else {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if unit.is_empty() || !v.is_finite() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Text for a table cell: a `|` would end the cell, a newline the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A label in running text, in code style (a path or a commit, usually).
fn inline(s: &str) -> String {
    if s.is_empty() {
        String::from("(unnamed)")
    } else if s.contains('`') {
        s.replace(['\n', '\r'], " ")
    } else {
        format!("`{}`", s.replace(['\n', '\r'], " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(results: &[(&str, f64, &str, Option<&str>)]) -> String {
        let results: Vec<Value> = results
            .iter()
            .map(|&(name, value, unit, better)| {
                let mut r = serde_json::json!({"name": name, "value": value, "unit": unit});
                if let Some(b) = better {
                    r["better"] = Value::from(b);
                }
                r
            })
            .collect();
        serde_json::json!({"machine": "test", "results": results}).to_string()
    }

    #[test]
    fn directions_and_tolerance() {
        let before = doc(&[
            ("csv", 1000.0, "records/s", Some("higher")),
            ("csv small drop", 1000.0, "records/s", None),
            ("rtt", 100.0, "µs", Some("lower")),
            ("rss", 10.0, "KiB/connection", Some("lower")),
        ]);
        let now = doc(&[
            ("rss", 9.0, "KiB/connection", Some("lower")),
            ("csv", 700.0, "records/s", Some("higher")),
            ("csv small drop", 900.0, "records/s", None),
            ("rtt", 140.0, "µs", Some("lower")),
        ]);
        let checks = compare(&before, &now, 1.25).unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["rss", "csv", "csv small drop", "rtt"],
            "now's order"
        );
        // Lower is better, and it fell: better.
        assert!((checks[0].change - 10.0 / 9.0).abs() < 1e-12);
        assert!(!checks[0].regressed);
        // A 30 % drop at 1.25: flagged.
        assert!((checks[1].change - 0.7).abs() < 1e-12);
        assert!(checks[1].regressed);
        // A 10 % drop (no `better`: higher) is within the tolerance.
        assert!((checks[2].change - 0.9).abs() < 1e-12);
        assert!(!checks[2].regressed);
        // Lower is better and it rose by 40 %: flagged.
        assert!((checks[3].change - 100.0 / 140.0).abs() < 1e-12);
        assert!(checks[3].regressed);
        assert_eq!((checks[3].before, checks[3].now), (100.0, 140.0));
        assert_eq!(checks[3].unit, "µs");
    }

    #[test]
    fn an_instruction_count_has_its_own_tighter_tolerance() {
        let before = doc(&[
            ("instr", 1000.0, COUNT_UNIT, Some("lower")),
            ("instr flat", 1000.0, COUNT_UNIT, Some("lower")),
            ("csv", 1000.0, "records/s", Some("higher")),
        ]);
        let now = doc(&[
            ("instr", 1050.0, COUNT_UNIT, Some("lower")),
            ("instr flat", 1010.0, COUNT_UNIT, Some("lower")),
            ("csv", 950.0, "records/s", Some("higher")),
        ]);
        let checks = compare(&before, &now, 1.25).unwrap();
        let flagged: Vec<bool> = checks.iter().map(|c| c.regressed).collect();
        // 5 % more instructions: flagged; 1 % more: not; 5 % fewer records/s: not.
        assert_eq!(flagged, [true, false, false]);
    }

    #[test]
    fn missing_figures_are_skipped() {
        let before = doc(&[
            ("gone", 1.0, "x", None),
            ("kept", 5.0, "x", None),
            ("unit changed", 5.0, "KiB", None),
        ]);
        let now = doc(&[
            ("new", 1.0, "x", None),
            ("kept", 5.0, "x", None),
            ("unit changed", 5.0, "MiB", None),
        ]);
        let checks = compare(&before, &now, 1.25).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].name, "kept");
        assert_eq!(checks[0].change, 1.0);
    }

    #[test]
    fn zero_or_missing_values_are_never_flagged() {
        let before = r#"{"results": [
            {"name": "zero before", "value": 0.0, "unit": "records/s"},
            {"name": "zero now", "value": 50.0, "unit": "µs", "better": "lower"},
            {"name": "null before", "value": null, "unit": "records/s"},
            {"name": "zero now, higher", "value": 50.0, "unit": "records/s"}
        ]}"#;
        let now = r#"{"results": [
            {"name": "zero before", "value": 10.0, "unit": "records/s"},
            {"name": "zero now", "value": 0.0, "unit": "µs", "better": "lower"},
            {"name": "null before", "value": 10.0, "unit": "records/s"},
            {"name": "zero now, higher", "value": 0.0, "unit": "records/s"}
        ]}"#;
        let checks = compare(before, now, 1.25).unwrap();
        assert_eq!(checks.len(), 4);
        for c in &checks {
            assert!(!c.regressed, "{c:?}");
            assert!(c.change.is_nan(), "{c:?}");
        }
        let md = markdown(&checks, 1.25, "x");
        assert!(!md.contains("NaN") && !md.contains("inf"), "{md}");
        assert!(md.contains("n/a"));
    }

    #[test]
    fn unreadable_documents_are_errors_that_say_so() {
        let good = doc(&[("a", 1.0, "x", None)]);
        let e = compare("{not json", &good, 1.25).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(
            e,
            GuardError::Json {
                which: "previous",
                ..
            }
        ));
        assert!(
            msg.starts_with("the previous run's benchmark JSON cannot be read: "),
            "{msg}"
        );
        assert!(msg.contains("line 1"), "serde_json's position: {msg}");

        let e = compare(&good, r#"{"machine": "m"}"#, 1.25).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the current run's benchmark JSON has no \"results\" array"
        );
        let e = compare(&good, r#"{"results": {"a": 1}}"#, 1.25).unwrap_err();
        assert!(matches!(e, GuardError::NoResults { which: "current" }));
    }

    #[test]
    fn markdown_section() {
        let before = doc(&[
            (
                "16-byte records into CSV",
                5_240_176.0,
                "records/s",
                Some("higher"),
            ),
            ("round trip", 41.5, "µs", Some("lower")),
            ("a | b", 0.25, "", None),
        ]);
        let now = doc(&[
            (
                "16-byte records into CSV",
                3_400_000.0,
                "records/s",
                Some("higher"),
            ),
            ("round trip", 40.0, "µs", Some("lower")),
            ("a | b", 0.25, "", None),
        ]);
        let checks = compare(&before, &now, 1.25).unwrap();
        let md = markdown(&checks, 1.25, "docs/bench.json at 39a7b1f");
        assert!(
            md.starts_with("## Against the last committed run\n"),
            "{md}"
        );
        assert!(md.contains(
            "| 16-byte records into CSV | 5,240,176 records/s | 3,400,000 records/s | 0.65× | REGRESSED |"
        ), "{md}");
        assert!(
            md.contains("| round trip | 41.5 µs | 40 µs | 1.04× | ok |"),
            "{md}"
        );
        assert!(
            md.contains("| a \\| b | 0.25 | 0.25 | 1.00× | ok |"),
            "{md}"
        );
        assert!(md.contains("**1 of 3 figures regressed beyond the tolerance** (worse by more than 25 %, instruction counts by more than 2 %): 16-byte records into CSV."), "{md}");
        assert!(md.contains("a second run, not a verdict"), "{md}");
        assert!(md.contains("`docs/bench.json at 39a7b1f`"));

        let ok = markdown(&checks[1..], 1.1, "x");
        assert!(
            ok.contains(
                "None of the 2 figures regressed beyond the tolerance (worse by more than 10 %, \
                 instruction counts by more than 2 %)."
            ),
            "{ok}"
        );

        let empty = markdown(&[], 1.25, "docs/bench.json");
        assert!(empty.starts_with("## Against the last committed run\n"));
        assert!(empty.contains("No figure could be compared"), "{empty}");
        assert!(!empty.contains('|'));
    }
}
