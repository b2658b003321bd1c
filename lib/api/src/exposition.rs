//! The metrics exposition formats every component serves on `/metrics`: OpenMetrics (what
//! prometheus-client writes, and what Prometheus asks for) or, for scrapers that do not ask
//! for it, the classic Prometheus text format 0.0.4 — chosen by the `Accept` header, as
//! exporters do.

/// Content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The body and content type for a scraper sending `accept`, from OpenMetrics text.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (String, &'static str) {
    if wants_openmetrics(accept) {
        (openmetrics, OPENMETRICS)
    } else {
        (to_prometheus_text(&openmetrics), PROMETHEUS_TEXT)
    }
}

/// OpenMetrics → Prometheus text 0.0.4: a counter's `HELP`/`TYPE` name the `_total` samples
/// (OpenMetrics names the family without the suffix), `UNIT` lines and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples() {
        let om = "# HELP ward_x Things.\n# TYPE ward_x counter\nward_x_total{a=\"b\"} 3\n\
                  # HELP ward_g A gauge.\n# TYPE ward_g gauge\n# UNIT ward_g seconds\nward_g 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP ward_x_total Things.\n# TYPE ward_x_total counter\nward_x_total{a=\"b\"} 3\n\
             # HELP ward_g A gauge.\n# TYPE ward_g gauge\nward_g 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(None));
        assert_eq!(negotiate(om.into(), Some("*/*")).1, PROMETHEUS_TEXT);
    }
}
