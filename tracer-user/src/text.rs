//! How the commands word what they show: durations, ages, fitting names into columns by
//! their display width, how a process ended, and where it runs.

use std::fmt::{self, Write as _};

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::{
    kubelet::{KubeletReport, KubeletView, PodRanking},
    state::Ending,
};

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

/// Keeps the head (a command name's start says most), marking the cut with `…`.
pub fn fit_end(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    let mut kept: String = take_width(text.chars(), width - 1).collect();
    kept.push('…');
    kept
}

/// Keeps the tail (a cgroup path's last component names the container), marking the cut.
pub fn fit_start(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    let mut tail: Vec<char> = take_width(text.chars().rev(), width - 1).collect();
    tail.reverse();
    std::iter::once('…').chain(tail).collect()
}

/// The characters of `chars` that fit in `width` display columns, in order.
fn take_width(chars: impl Iterator<Item = char>, width: usize) -> impl Iterator<Item = char> {
    let mut used = 0;
    chars.take_while(move |c| {
        used += c.width().unwrap_or(0);
        used <= width
    })
}

/// `text` followed by spaces up to `width` display columns (`format!`'s `{:<N}` counts
/// characters, which misaligns wide ones).
pub fn pad_end(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(text.width())))
}

/// `text` after spaces up to `width` display columns.
pub fn pad_start(text: &str, width: usize) -> String {
    format!("{}{text}", " ".repeat(width.saturating_sub(text.width())))
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit {code}"),
            Self::Killed(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// `namespace/pod/container` where kubelet's logs name the pod (`?` for a container they do
/// not name); None outside a named pod.
pub fn pod_place(
    namespace: Option<&str>,
    pod: Option<&str>,
    container: Option<&str>,
) -> Option<String> {
    let (namespace, pod) = namespace.zip(pod)?;
    Some(format!("{namespace}/{pod}/{}", container.unwrap_or("?")))
}

/// What the kubelet's PID eviction makes of a pod with zombies, in words: what it ranks the
/// pod by beside what the pod holds, and what would contain it. Hedged where the kubelet's
/// version and the pods' priorities are not known.
pub fn kubelet_ranking(ranking: &PodRanking, kubelet: &KubeletView) -> String {
    let processes = plural(ranking.live_processes, "live process", "live processes");
    let mut text = format!(
        "the kubelet's PID eviction ranks this pod, after priority, by its {processes} \
         (kubelets before 1.30 count 0 for every pod); "
    );
    match ranking.pids_held {
        Some(held) => {
            let _ = write!(text, "it holds {held} PIDs ({} zombies)", ranking.zombies);
        }
        None => {
            let _ = write!(text, "it holds {} zombies besides them", ranking.zombies);
        }
    }
    if ranking.zombies > ranking.live_processes {
        text.push_str(": eviction will take pods with more live processes first");
    }
    match ranking.pod_pids_limit {
        Some(limit) => {
            let _ = write!(
                text,
                ". podPidsLimit is {limit}: a leak fails inside this pod"
            );
        }
        None => text.push_str(". Set podPidsLimit (now unset) to contain a leak in its pod"),
    }
    match kubelet {
        KubeletView::Known { eviction, .. }
            if eviction.hard.is_none() && eviction.soft.is_none() =>
        {
            text.push_str(
                ". This kubelet has no pid.available threshold: it evicts nothing for PIDs until \
                 forks fail node-wide",
            );
        }
        KubeletView::Known { .. } => {}
        KubeletView::Unknown { .. } => text.push_str(" (the kubelet's thresholds are unknown)"),
        KubeletView::NotFound => text.push_str(" (no kubelet found on this node)"),
    }
    text.push('.');
    text
}

/// The kubelet's PID eviction on this node, in words.
pub fn kubelet_line(kubelet: &KubeletReport) -> String {
    match (kubelet.found, kubelet.known, kubelet.hard_threshold, kubelet.soft_threshold) {
        (false, ..) => "kubelet: none found on this node".to_owned(),
        (true, false, ..) => "kubelet: its pid.available thresholds are unknown (its files cannot be read: see the runbook's \"The kubelet's configuration\")".to_owned(),
        (true, true, None, None) => format!(
            "kubelet: pid.available {}, no eviction threshold (the default): no PID eviction before forks fail node-wide",
            kubelet.pid_available
        ),
        (true, true, hard, soft) => format!(
            "kubelet: pid.available {}, evicts pods under {} (hard) or {} (soft)",
            kubelet.pid_available,
            hard.map_or("none".to_owned(), |t| t.to_string()),
            soft.map_or("none".to_owned(), |t| t.to_string())
        ),
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// A Kubernetes name as the reports carry it: an empty one, not found, is None.
pub fn known<S: AsRef<str>>(name: S) -> Option<S> {
    (!name.as_ref().is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::{PidEviction, Threshold};

    #[test]
    fn durations() {
        assert_eq!(human_duration(0.04), "0.0s");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(250.0), "4m10s");
        assert_eq!(human_duration(7500.0), "2h5m");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0), "3d4h");
        assert_eq!(age(250.0, true), ">=4m10s");
    }

    #[test]
    fn fitting_marks_the_cut() {
        assert_eq!(fit_end("short", 15), "short");
        assert_eq!(fit_end("short", 16), "short");
        assert_eq!(fit_end("abcdefghij", 5), "abcd…");
        assert_eq!(fit_end("a-very-long-command-name", 10), "a-very-lo…");
        assert_eq!(fit_start("/a/b/container", 8), "…ntainer");
        assert_eq!(fit_start("/a/b/container", 8).width(), 8);
        assert_eq!(
            fit_start("/kubepods/burstable/pod1/abcdef", 10),
            "…d1/abcdef"
        );
        assert_eq!(fit_start("/x", 10), "/x");
    }

    #[test]
    fn wide_characters_are_fitted_and_padded_by_display_width() {
        // Two columns each: a cut never leaves half of one.
        assert_eq!(fit_end("宽字符宽字符宽字符", 16), "宽字符宽字符宽…");
        assert_eq!(fit_end("🐳🐳🐳", 4), "🐳…");
        assert_eq!(fit_start("/a/容器", 4), "…器");
        assert_eq!(pad_end("宽字", 6), "宽字  ");
        assert_eq!(pad_start("🐳", 4), "  🐳");
        assert_eq!(pad_end("toolong", 3), "toolong");
    }

    #[test]
    fn endings_in_words() {
        assert_eq!(Ending::Exited(7).to_string(), "exit 7");
        assert_eq!(Ending::Killed(9).to_string(), "killed by signal 9");
    }

    fn ranking(live: u64, held: Option<u64>, zombies: u64, limit: Option<u64>) -> PodRanking {
        PodRanking {
            pod_cgroup: "/kubepods/pod".into(),
            live_processes: live,
            pids_held: held,
            zombies,
            pod_pids_limit: limit,
        }
    }

    #[test]
    fn the_kubelets_ranking_in_words() {
        let none_set = KubeletView::Known {
            pid: 1,
            eviction: PidEviction::default(),
        };
        assert_eq!(
            kubelet_ranking(&ranking(3, Some(4120), 4117, None), &none_set),
            "the kubelet's PID eviction ranks this pod, after priority, by its 3 live processes \
             (kubelets before 1.30 count 0 for every pod); it holds 4120 PIDs (4117 zombies): \
             eviction will take pods with more live processes first. Set podPidsLimit (now \
             unset) to contain a leak in its pod. This kubelet has no pid.available threshold: \
             it evicts nothing for PIDs until forks fail node-wide."
        );
        let set = KubeletView::Known {
            pid: 1,
            eviction: PidEviction {
                hard: Some(Threshold::Percent(10.0)),
                ..PidEviction::default()
            },
        };
        let text = kubelet_ranking(&ranking(1, None, 0, Some(512)), &set);
        assert!(text.contains("by its 1 live process "), "{text}");
        assert!(
            text.contains("it holds 0 zombies besides them. podPidsLimit is 512"),
            "{text}"
        );
        assert!(!text.contains("more live processes first"), "{text}");
        assert!(text.ends_with("a leak fails inside this pod."), "{text}");
        assert!(
            kubelet_ranking(&ranking(1, None, 2, None), &KubeletView::Unknown { pid: 1 })
                .ends_with("(the kubelet's thresholds are unknown).")
        );
        let node = crate::procfs::NodeLimits {
            tasks: 1000,
            pid_max: 32768,
            threads_max: 90000,
        };
        assert_eq!(
            kubelet_line(&set.report(&node)),
            "kubelet: pid.available 31768, evicts pods under 3277 (hard) or none (soft)"
        );
        assert!(kubelet_line(&none_set.report(&node)).contains("no eviction threshold"));
        assert_eq!(
            kubelet_line(&KubeletView::NotFound.report(&node)),
            "kubelet: none found on this node"
        );
    }

    #[test]
    fn pod_places() {
        assert_eq!(
            pod_place(Some("shop"), Some("web-1"), Some("app")).as_deref(),
            Some("shop/web-1/app")
        );
        assert_eq!(
            pod_place(Some("shop"), Some("web-1"), None).as_deref(),
            Some("shop/web-1/?")
        );
        assert_eq!(pod_place(None, None, None), None);
        assert_eq!(known(""), None);
        assert_eq!(known("shop".to_owned()).as_deref(), Some("shop"));
    }
}
