//! One row per measured figure, printed as a table or as JSON lines.

use serde_json::json;

/// One figure of one scenario, with its baseline when the scenario has one.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub metric: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<&'static str>,
    pub baseline_value: Option<f64>,
    /// The goal, for the table only (e.g. "ratio >= 0.9").
    pub goal: &'static str,
}

impl Row {
    pub fn new(
        scenario: &'static str,
        metric: &'static str,
        value: f64,
        unit: &'static str,
        goal: &'static str,
    ) -> Self {
        Self {
            scenario,
            metric,
            value,
            unit,
            baseline: None,
            baseline_value: None,
            goal,
        }
    }

    pub fn against(mut self, baseline: &'static str, value: f64) -> Self {
        self.baseline = Some(baseline);
        self.baseline_value = Some(value);
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline_value
            .filter(|b| *b != 0.0)
            .map(|b| self.value / b)
    }

    pub fn json(&self) -> String {
        json!({
            "scenario": self.scenario,
            "metric": self.metric,
            "value": round(self.value),
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value.map(round),
            "ratio": self.ratio().map(|r| (r * 1000.0).round() / 1000.0),
        })
        .to_string()
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![[
        "scenario".to_string(),
        "metric".into(),
        "value".into(),
        "unit".into(),
        "baseline".into(),
        "baseline value".into(),
        "ratio".into(),
        "goal".into(),
    ]];
    for r in rows {
        lines.push([
            r.scenario.into(),
            r.metric.into(),
            format!("{}", round(r.value)),
            r.unit.into(),
            r.baseline.unwrap_or("-").into(),
            r.baseline_value
                .map_or("-".into(), |v| format!("{}", round(v))),
            r.ratio().map_or("-".into(), |v| format!("{v:.3}")),
            r.goal.into(),
        ]);
    }
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
