//! What `reapwatch top` shows, as text lines: the same lines are drawn full-screen and printed
//! when stdout is not a terminal, so both modes agree on columns and units.

use std::{collections::BTreeMap, time::Duration, time::SystemTime};

use unicode_width::UnicodeWidthStr;

use crate::{
    procfs::NodeLimits,
    text::{age, fit_end, fit_start, human_duration, last_wait, pad_end, pad_start},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Most unreaped children first.
    #[default]
    Count,
    /// Most zombies created per minute first.
    Rate,
    /// Oldest zombie first.
    Age,
}

impl SortKey {
    /// The key `s` moves to.
    pub fn next(self) -> Self {
        match self {
            Self::Count => Self::Rate,
            Self::Rate => Self::Age,
            Self::Age => Self::Count,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Rate => "rate",
            Self::Age => "age",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grouping {
    #[default]
    Parents,
    Containers,
}

impl Grouping {
    /// The grouping `c` moves to.
    pub fn toggle(self) -> Self {
        match self {
            Self::Parents => Self::Containers,
            Self::Containers => Self::Parents,
        }
    }
}

/// How the person watching asked to see the rows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Display {
    pub sort: SortKey,
    pub grouping: Grouping,
}

/// One parent with unreaped children. Names are already escaped for the terminal.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentRow {
    pub pid: u32,
    pub comm: String,
    /// `namespace/pod/container`, else the cgroup path, else `-`.
    pub container: String,
    pub unreaped: usize,
    /// None: measuring (exit times unknown, and not a minute watched yet).
    pub per_minute: Option<f64>,
    pub oldest_seconds: f64,
    pub oldest_is_lower_bound: bool,
    /// None: not seen calling `wait()` since reapwatch started.
    pub last_wait_seconds: Option<f64>,
    /// How long `wait()` calls have been watched.
    pub waits_watched_seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Eta {
    /// The forecast needs this much more history before it can tell a trend from noise.
    Measuring(Duration),
    NotGrowing,
    Seconds(f64),
}

/// What one refresh measured.
#[derive(Clone, Debug)]
pub struct TopSample {
    pub taken: SystemTime,
    pub node: NodeLimits,
    pub eta: Eta,
    pub parents: Vec<ParentRow>,
    pub full: Vec<FullCgroup>,
    /// The kubelet's PID eviction, and what it makes of the pod with most zombies; escaped.
    pub kubelet: Vec<String>,
    /// The pids limits that bind the shown parents' cgroups, least headroom first.
    pub limits: Vec<LimitRow>,
}

/// A `pids.max` that binds cgroups with unreaped zombies (its own, or an ancestor's: a pod's).
#[derive(Clone, Debug, PartialEq)]
pub struct LimitRow {
    /// The cgroup that sets it; escaped.
    pub cgroup: String,
    pub current: u64,
    pub max: u64,
}

/// A cgroup at its `pids.max` (or that refused forks while watched): fork() fails in it.
#[derive(Clone, Debug, PartialEq)]
pub struct FullCgroup {
    /// As the container column names it; escaped.
    pub place: String,
    pub current: u64,
    pub max: u64,
    /// Forks refused at the limit (`pids.events`), since the cgroup was made.
    pub refused: u64,
}

/// A line of the table in either grouping.
struct Row<'a> {
    /// `(pid, comm)` in the per-parent view.
    parent: Option<(u32, &'a str)>,
    container: &'a str,
    parents: usize,
    unreaped: usize,
    per_minute: Option<f64>,
    oldest_seconds: f64,
    oldest_is_lower_bound: bool,
    last_wait_seconds: Option<f64>,
    waits_watched_seconds: Option<f64>,
}

impl<'a> Row<'a> {
    fn of(parent: &'a ParentRow) -> Self {
        Self {
            parent: Some((parent.pid, &parent.comm)),
            container: &parent.container,
            parents: 1,
            unreaped: parent.unreaped,
            per_minute: parent.per_minute,
            oldest_seconds: parent.oldest_seconds,
            oldest_is_lower_bound: parent.oldest_is_lower_bound,
            last_wait_seconds: parent.last_wait_seconds,
            waits_watched_seconds: parent.waits_watched_seconds,
        }
    }

    /// Adds another parent of the same container.
    fn absorb(&mut self, other: Row<'a>) {
        self.parents += other.parents;
        self.unreaped += other.unreaped;
        self.per_minute = self.per_minute.zip(other.per_minute).map(|(a, b)| a + b);
        if other.oldest_seconds > self.oldest_seconds {
            self.oldest_seconds = other.oldest_seconds;
            self.oldest_is_lower_bound = other.oldest_is_lower_bound;
        }
        // The longest any of its parents went without wait(): the culprit's, not a bystander's.
        self.last_wait_seconds = match (self.last_wait_seconds, other.last_wait_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

struct Column {
    title: &'static str,
    width: usize,
    align: Align,
}

const fn column(title: &'static str, width: usize, align: Align) -> Column {
    Column {
        title,
        width,
        align,
    }
}

// Widths fit the largest value each column shows: pid_max is at most 4194304, a comm at most
// 15 bytes, an age `>=59m59s`, a rate `1234/min` or `measuring`, a wait `none in 59m59s`.
const PID: Column = column("PID", 7, Align::Right);
const COMM: Column = column("COMM", 15, Align::Left);
const PARENTS: Column = column("PARENTS", 7, Align::Right);
const UNREAPED: Column = column("UNREAPED", 8, Align::Right);
const CREATED: Column = column("CREATED", 9, Align::Right);
const OLDEST: Column = column("OLDEST", 8, Align::Right);
const LAST_WAIT: Column = column("LAST WAIT", 13, Align::Right);
const CONTAINER_TITLE: &str = "CONTAINER";
/// Below this the container column stops shrinking and the terminal clips the line instead.
const MIN_CONTAINER_WIDTH: usize = 12;

/// The lines above the table: time, settings, node headroom and the exhaustion forecast.
pub fn summary(sample: &TopSample, display: &Display, interval: Duration) -> Vec<String> {
    let node = &sample.node;
    let limit = node.limit().max(1);
    let eta = match sample.eta {
        Eta::Measuring(left) => format!("measuring ({} more)", human_duration(left.as_secs_f64())),
        Eta::NotGrowing => "not growing".to_owned(),
        Eta::Seconds(s) => format!("in {}", human_duration(s)),
    };
    let containers: std::collections::BTreeSet<&str> = sample
        .parents
        .iter()
        .map(|p| p.container.as_str())
        .collect();
    let mut lines = vec![
        format!(
            "reapwatch top  {}  every {}  sort: {}  view: {}",
            humantime::format_rfc3339_seconds(sample.taken),
            humantime::format_duration(interval),
            display.sort.name(),
            match display.grouping {
                Grouping::Parents => "parents",
                Grouping::Containers => "containers",
            },
        ),
        format!(
            "node: {} tasks / pid_max {} / threads-max {} ({:.1}% used)",
            node.tasks,
            node.pid_max,
            node.threads_max,
            node.tasks as f64 * 100.0 / limit as f64,
        ),
        format!(
            "exhaustion ETA: {eta}  unreaped {}, parents {}, containers {}",
            sample.parents.iter().map(|p| p.unreaped).sum::<usize>(),
            sample.parents.len(),
            containers.len(),
        ),
    ];
    if !sample.full.is_empty() {
        let full: Vec<String> = sample
            .full
            .iter()
            .map(|f| {
                format!(
                    "{} {}/{}, {} forks refused",
                    f.place, f.current, f.max, f.refused
                )
            })
            .collect();
        lines.push(format!("FULL (pids.max): {}", full.join("; ")));
    }
    lines.extend(sample.kubelet.iter().cloned());
    if !sample.limits.is_empty() {
        let limits: Vec<String> = sample
            .limits
            .iter()
            .take(SUMMARY_LIMITS)
            .map(|l| {
                format!(
                    "{}/{} of {} ({} left)",
                    l.current,
                    l.max,
                    l.cgroup,
                    l.max.saturating_sub(l.current)
                )
            })
            .collect();
        lines.push(format!("LIMITED BY (pids.max): {}", limits.join("; ")));
    }
    lines
}

/// Binding limits named in the summary: the tightest few.
const SUMMARY_LIMITS: usize = 3;

/// The keys, for the last line of the full screen.
pub fn keys(display: &Display) -> String {
    format!(
        "q quit  s sort (count, rate, age)  c {}",
        match display.grouping {
            Grouping::Parents => "group by container",
            Grouping::Containers => "one row per parent",
        }
    )
}

/// The table heading and its rows, sorted and grouped as `display` says. With a `width`, the
/// container column takes what the others leave (truncated from the left: a path's tail names
/// the container); without, it is as wide as its longest value.
pub fn table(sample: &TopSample, display: &Display, width: Option<usize>) -> (String, Vec<String>) {
    let mut rows: Vec<Row> = match display.grouping {
        Grouping::Parents => sample.parents.iter().map(Row::of).collect(),
        Grouping::Containers => {
            let mut groups: BTreeMap<&str, Row> = BTreeMap::new();
            for parent in &sample.parents {
                let row = Row::of(parent);
                match groups.get_mut(parent.container.as_str()) {
                    Some(group) => group.absorb(row),
                    None => {
                        groups.insert(
                            &parent.container,
                            Row {
                                parent: None,
                                ..row
                            },
                        );
                    }
                }
            }
            groups.into_values().collect()
        }
    };
    sort(&mut rows, display.sort);

    let fixed: &[&Column] = match display.grouping {
        Grouping::Parents => &[&PID, &COMM, &UNREAPED, &CREATED, &OLDEST, &LAST_WAIT],
        Grouping::Containers => &[&PARENTS, &UNREAPED, &CREATED, &OLDEST, &LAST_WAIT],
    };
    let natural = rows
        .iter()
        .map(|r| r.container.width())
        .max()
        .unwrap_or(0)
        .max(CONTAINER_TITLE.len());
    let container_width = match (width, display.grouping) {
        (Some(width), grouping) => {
            let taken: usize = fixed.iter().map(|c| c.width + 1).sum();
            let left = width.saturating_sub(taken).max(MIN_CONTAINER_WIDTH);
            // First in the container view: as wide as its names, not the whole screen.
            match grouping {
                Grouping::Parents => left,
                Grouping::Containers => left.min(natural),
            }
        }
        (None, _) => natural,
    };
    let container = Column {
        title: CONTAINER_TITLE,
        width: container_width,
        align: Align::Left,
    };

    let heading = match display.grouping {
        Grouping::Parents => line(
            fixed
                .iter()
                .map(|c| cell(c.title, c))
                .chain([cell(container.title, &container)]),
        ),
        Grouping::Containers => line(
            [cell(container.title, &container)]
                .into_iter()
                .chain(fixed.iter().map(|c| cell(c.title, c))),
        ),
    };
    let lines = rows
        .iter()
        .map(|row| {
            let place = fit_start(row.container, container.width);
            let measures = [
                cell(&row.unreaped.to_string(), &UNREAPED),
                cell(&row.per_minute.map_or("measuring".into(), rate), &CREATED),
                cell(&age(row.oldest_seconds, row.oldest_is_lower_bound), &OLDEST),
                cell(
                    &last_wait(row.last_wait_seconds, row.waits_watched_seconds),
                    &LAST_WAIT,
                ),
            ];
            match row.parent {
                Some((pid, comm)) => line(
                    [
                        cell(&pid.to_string(), &PID),
                        cell(&fit_end(comm, COMM.width), &COMM),
                    ]
                    .into_iter()
                    .chain(measures)
                    .chain([cell(&place, &container)]),
                ),
                None => line(
                    [
                        cell(&place, &container),
                        cell(&row.parents.to_string(), &PARENTS),
                    ]
                    .into_iter()
                    .chain(measures),
                ),
            }
        })
        .collect();
    (heading, lines)
}

/// Everything of one refresh for a log or a pipe: summary, heading, rows, a blank line.
pub fn plain(sample: &TopSample, display: &Display, interval: Duration) -> String {
    let (heading, rows) = table(sample, display, None);
    let mut out = summary(sample, display, interval).join("\n");
    out.push('\n');
    out.push_str(&heading);
    out.push('\n');
    if rows.is_empty() {
        out.push_str("no unreaped children\n");
    }
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out.push('\n');
    out
}

fn sort(rows: &mut [Row], key: SortKey) {
    rows.sort_by(|a, b| {
        let by_count = b.unreaped.cmp(&a.unreaped);
        let rate = |row: &Row| row.per_minute.unwrap_or(-1.0);
        let by_rate = rate(b).total_cmp(&rate(a));
        let by_age = b.oldest_seconds.total_cmp(&a.oldest_seconds);
        let primary = match key {
            SortKey::Count => by_count.then(by_age),
            SortKey::Rate => by_rate.then(by_count),
            SortKey::Age => by_age.then(by_count),
        };
        primary
            .then_with(|| a.parent.map(|p| p.0).cmp(&b.parent.map(|p| p.0)))
            .then_with(|| a.container.cmp(b.container))
    });
}

fn rate(per_minute: f64) -> String {
    if per_minute < 10.0 {
        format!("{per_minute:.1}/min")
    } else {
        format!("{per_minute:.0}/min")
    }
}

/// `text` padded to the column's display width (text already fitted; numbers never cut).
fn cell(text: &str, column: &Column) -> String {
    match column.align {
        Align::Left => pad_end(text, column.width),
        Align::Right => pad_start(text, column.width),
    }
}

fn line(cells: impl IntoIterator<Item = String>) -> String {
    let cells: Vec<String> = cells.into_iter().collect();
    cells.join(" ").trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use unicode_width::UnicodeWidthChar;

    use super::*;

    fn parent(
        pid: u32,
        comm: &str,
        container: &str,
        unreaped: usize,
        rate: f64,
        age: f64,
    ) -> ParentRow {
        ParentRow {
            pid,
            comm: comm.to_owned(),
            container: container.to_owned(),
            unreaped,
            per_minute: Some(rate),
            oldest_seconds: age,
            oldest_is_lower_bound: false,
            last_wait_seconds: None,
            waits_watched_seconds: Some(60.0),
        }
    }

    fn sample(parents: Vec<ParentRow>) -> TopSample {
        TopSample {
            taken: SystemTime::UNIX_EPOCH,
            node: NodeLimits {
                tasks: 1000,
                pid_max: 4194304,
                threads_max: 2000,
            },
            eta: Eta::Seconds(475200.0),
            parents,
            full: Vec::new(),
            kubelet: Vec::new(),
            limits: Vec::new(),
        }
    }

    fn pids(rows: &[String]) -> Vec<&str> {
        rows.iter()
            .map(|r| r.split_whitespace().next().unwrap())
            .collect()
    }

    #[test]
    fn sort_keys_order_the_rows() {
        let s = sample(vec![
            parent(10, "many", "/a", 9, 0.5, 60.0),
            parent(20, "fast", "/b", 2, 30.0, 5.0),
            parent(30, "old", "/c", 3, 0.0, 7200.0),
        ]);
        let mut display = Display::default();
        assert_eq!(pids(&table(&s, &display, Some(80)).1), ["10", "30", "20"]);
        display.sort = display.sort.next();
        assert_eq!(pids(&table(&s, &display, Some(80)).1), ["20", "10", "30"]);
        display.sort = display.sort.next();
        assert_eq!(pids(&table(&s, &display, Some(80)).1), ["30", "10", "20"]);
        assert_eq!(display.sort.next(), SortKey::Count);
    }

    /// The display column where each space-separated token of `row` ends.
    fn token_ends(row: &str) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut column = 0;
        let mut in_token = false;
        for c in row.chars() {
            if c == ' ' {
                if in_token {
                    ends.push(column);
                }
                in_token = false;
            } else {
                in_token = true;
            }
            column += c.width().unwrap_or(0);
        }
        if in_token {
            ends.push(column);
        }
        ends
    }

    #[test]
    fn columns_line_up_in_80_columns() {
        let s = sample(vec![
            parent(
                4194304,
                "a-very-long-command-name",
                "ns/pod-with-a-long-name-abc/sidecar",
                12345,
                1234.0,
                3.0 * 86400.0,
            ),
            parent(
                7,
                "宽字符宽字符宽字符",
                "/system.slice/x.service",
                1,
                0.3,
                0.5,
            ),
        ]);
        let (heading, rows) = table(&s, &Display::default(), Some(80));
        assert!(
            heading.starts_with(
                "    PID COMM            UNREAPED   CREATED   OLDEST     LAST WAIT CONTAINER"
            ),
            "{heading}"
        );
        for row in &rows {
            assert!(row.width() <= 80, "{row:?}");
        }
        assert_eq!(rows[0].width(), 80, "the container column takes the rest");
        // Every column but the last ends where its title ends.
        let ends: Vec<usize> = ["PID", "UNREAPED", "CREATED", "OLDEST", "LAST WAIT"]
            .iter()
            .map(|t| heading.find(t).unwrap() + t.len())
            .collect();
        for row in &rows {
            // LAST WAIT may be several words: its end is the one before the container's.
            let tokens = token_ends(row);
            let row_ends: Vec<usize> = [0, 2, 3, 4, tokens.len() - 2]
                .iter()
                .map(|&i| tokens[i])
                .collect();
            assert_eq!(row_ends, ends, "{row:?}");
        }
        assert!(rows[0].contains(" a-very-long-co… "), "{}", rows[0]);
        assert!(rows[0].ends_with(" …e-abc/sidecar"), "{}", rows[0]);
        assert!(rows[0].contains(" 1234/min "), "{}", rows[0]);
        assert!(rows[0].contains(" 3d0h "), "{}", rows[0]);
        assert!(rows[0].contains(" none in 1m0s "), "{}", rows[0]);
        assert!(rows[1].contains(" 宽字符宽字符宽… "), "{}", rows[1]);
        assert!(rows[1].contains(" 0.3/min "), "{}", rows[1]);
    }

    #[test]
    fn grouping_sums_a_containers_parents() {
        let mut waited = parent(2, "b", "ns/pod/app", 3, 2.0, 10.0);
        waited.last_wait_seconds = Some(4.0);
        let mut stale = parent(1, "a", "ns/pod/app", 4, 1.0, 90.0);
        stale.last_wait_seconds = Some(600.0);
        let s = sample(vec![stale, waited, parent(3, "c", "/other", 1, 0.0, 1.0)]);
        let display = Display {
            sort: SortKey::Count,
            grouping: Grouping::Containers,
        };
        let (heading, rows) = table(&s, &display, Some(80));
        assert!(heading.starts_with("CONTAINER "), "{heading}");
        assert!(
            heading.ends_with("PARENTS UNREAPED   CREATED   OLDEST     LAST WAIT"),
            "{heading}"
        );
        // As wide as its longest name, not padded to the screen's width.
        assert!(heading.starts_with("CONTAINER  PARENTS"), "{heading}");
        let first: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(
            first,
            ["ns/pod/app", "2", "7", "3.0/min", "1m30s", "10m0s", "ago"]
        );
        assert!(rows[1].starts_with("/other "), "{}", rows[1]);
        assert!(rows[1].ends_with("none in 1m0s"), "{}", rows[1]);
    }

    #[test]
    fn summary_names_cgroups_at_their_pids_max() {
        let mut s = sample(Vec::new());
        assert_eq!(
            summary(&s, &Display::default(), Duration::from_secs(1)).len(),
            3
        );
        s.full = vec![FullCgroup {
            place: "shop/web-1/app".into(),
            current: 3000,
            max: 3000,
            refused: 73,
        }];
        let lines = summary(&s, &Display::default(), Duration::from_secs(1));
        assert_eq!(
            lines[3],
            "FULL (pids.max): shop/web-1/app 3000/3000, 73 forks refused"
        );
    }

    #[test]
    fn summary_names_the_tightest_binding_limits() {
        let mut s = sample(Vec::new());
        let limit = |cgroup: &str, current, max| LimitRow {
            cgroup: cgroup.to_owned(),
            current,
            max,
        };
        s.limits = vec![
            limit("/kubepods/pod-a", 44, 50),
            limit("/kubepods/pod-b", 10, 100),
            limit("/kubepods", 900, 1000),
            limit("/system.slice/x.service", 1, 4096),
        ];
        let lines = summary(&s, &Display::default(), Duration::from_secs(1));
        assert_eq!(
            lines[3],
            "LIMITED BY (pids.max): 44/50 of /kubepods/pod-a (6 left); 10/100 of \
             /kubepods/pod-b (90 left); 900/1000 of /kubepods (100 left)"
        );
    }

    #[test]
    fn summary_shows_headroom_and_eta() {
        let s = sample(vec![parent(1, "a", "/x", 3, 0.0, 1.0)]);
        let lines = summary(&s, &Display::default(), Duration::from_millis(300));
        assert_eq!(
            lines[0],
            "reapwatch top  1970-01-01T00:00:00Z  every 300ms  sort: count  view: parents"
        );
        assert_eq!(
            lines[1],
            "node: 1000 tasks / pid_max 4194304 / threads-max 2000 (50.0% used)"
        );
        assert_eq!(
            lines[2],
            "exhaustion ETA: in 5d12h  unreaped 3, parents 1, containers 1"
        );
        assert!(lines.iter().all(|l| l.width() <= 80));
    }

    #[test]
    fn plain_output_keeps_whole_paths() {
        let long = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope";
        let text = plain(
            &sample(vec![parent(1, "a", long, 3, 0.0, 1.0)]),
            &Display::default(),
            Duration::from_secs(1),
        );
        assert!(text.lines().any(|l| l.ends_with(long)), "{text}");
        let empty = plain(&sample(vec![]), &Display::default(), Duration::from_secs(1));
        assert!(empty.contains("\nno unreaped children\n"), "{empty}");
    }
}
