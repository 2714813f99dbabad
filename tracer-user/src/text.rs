//! How the commands word what they show: durations and ages.

/// `3d4h`, `2h5m`, `4m10s`, `12.3s`: the two largest units.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s as u64;
    let (d, h, m, sec) = (
        whole / 86400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m{sec}s")
    }
}

/// A zombie's age, `>=` in front when it is a lower bound (its exit time is unknown).
pub fn age(seconds: f64, lower_bound: bool) -> String {
    let at_least = if lower_bound { ">=" } else { "" };
    format!("{at_least}{}", human_duration(seconds))
}

/// A watch of `wait()` shorter than this says nothing of a parent that waits now and then.
const WAIT_WATCH_MEANINGFUL_SECONDS: f64 = 10.0;

/// The LAST WAIT column: `12s ago`; `none in 5m` after a watch long enough to mean it;
/// `unknown` when not watched, or too briefly.
pub fn last_wait(age_seconds: Option<f64>, watched_seconds: Option<f64>) -> String {
    match (age_seconds, watched_seconds) {
        (Some(age), _) => human_duration(age) + " ago",
        (None, Some(watched)) if watched >= WAIT_WATCH_MEANINGFUL_SECONDS => {
            format!("none in {}", human_duration(watched))
        }
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(0.04), "0.0s");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(250.0), "4m10s");
        assert_eq!(human_duration(7500.0), "2h5m");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0), "3d4h");
        assert_eq!(age(250.0, true), ">=4m10s");
    }
}
