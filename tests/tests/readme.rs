//! The README against the code: each command's flag table against its clap definition, and
//! the JSON contracts against what `snapshot --json` and `scan --json` really print, so that
//! neither can drift from the binary again.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
    time::Duration,
};

use clap::{ArgAction, CommandFactory};
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use reapwatch::cli::Cli;
use reapwatch_tests::{
    reapwatch_json, start_trace, workspace_binary, FakeKubelet, Helper, TestCgroup,
};
use serde_json::Value;

/// What the checks read of the README, in order, with code spans kept in backticks.
#[derive(Debug)]
enum Block {
    Heading(HeadingLevel, String),
    Paragraph(String),
    /// Rows of cells, the header row first.
    Table(Vec<Vec<String>>),
    Code {
        info: String,
        text: String,
    },
}

/// Built in, so that the test runs where the sources are not (vm-test's guests).
const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

fn readme_blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    // The text being gathered for the block (or table cell) open now.
    let mut open: Option<String> = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut code_info = String::new();
    for event in Parser::new_ext(README, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. } | Tag::Paragraph | Tag::TableCell) => {
                open = Some(String::new())
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                code_info = match kind {
                    CodeBlockKind::Fenced(info) => info.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                open = Some(String::new());
            }
            Event::Start(Tag::Table(_)) => rows.clear(),
            Event::Start(Tag::TableHead | Tag::TableRow) => rows.push(Vec::new()),
            Event::Text(text) => open.get_or_insert_default().push_str(&text),
            Event::Code(code) => {
                let open = open.get_or_insert_default();
                open.push('`');
                open.push_str(&code);
                open.push('`');
            }
            Event::SoftBreak | Event::HardBreak => open.get_or_insert_default().push(' '),
            Event::End(TagEnd::Heading(level)) => {
                blocks.push(Block::Heading(level, open.take().unwrap_or_default()))
            }
            Event::End(TagEnd::Paragraph) => {
                blocks.push(Block::Paragraph(open.take().unwrap_or_default()))
            }
            Event::End(TagEnd::TableCell) => rows
                .last_mut()
                .expect("a cell is in a row")
                .push(open.take().unwrap_or_default().trim().to_owned()),
            Event::End(TagEnd::Table) => blocks.push(Block::Table(std::mem::take(&mut rows))),
            Event::End(TagEnd::CodeBlock) => blocks.push(Block::Code {
                info: std::mem::take(&mut code_info),
                text: open.take().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    blocks
}

/// The README's sections of the commands, by name: from a level-2 heading such as
/// "`reapwatch scan [--json] [--watch DURATION]`" to the next level-2 heading.
fn command_sections() -> BTreeMap<String, (String, Vec<Block>)> {
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for block in readme_blocks() {
        if let Block::Heading(HeadingLevel::H1 | HeadingLevel::H2, heading) = &block {
            let words: Vec<&str> = heading.trim_matches('`').split_whitespace().collect();
            current = match words.as_slice() {
                ["reapwatch", name, ..] => {
                    sections.insert(name.to_string(), (heading.clone(), Vec::new()));
                    Some(name.to_string())
                }
                _ => None,
            };
            continue;
        }
        if let Some(name) = &current {
            sections.get_mut(name).expect("inserted").1.push(block);
        }
    }
    sections
}

/// The `code spans` of a piece of README text.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// One argument as clap defines it: its names on the command line, and the default the
/// README's table must give.
struct ClapArg {
    names: BTreeSet<String>,
    /// Declared by clap (`default_value`), else in the help's `[default: ...]` (`serve`'s
    /// flags, whose defaults the config file may replace); `off` for a switch, `required`
    /// for an argument that must be given.
    default: Option<String>,
}

fn clap_args(command: &clap::Command) -> BTreeMap<String, ClapArg> {
    let mut args = BTreeMap::new();
    for arg in command.get_arguments().filter(|a| a.get_id() != "help") {
        let primary = match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => format!("<{}>", arg.get_id().as_str().to_uppercase()),
        };
        let mut names: BTreeSet<String> = arg
            .get_all_aliases()
            .unwrap_or_default()
            .into_iter()
            .map(|alias| format!("--{alias}"))
            .collect();
        names.insert(primary.clone());
        let declared: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let default = if arg.is_required_set() {
            Some("required".to_owned())
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            Some("off".to_owned())
        } else if !declared.is_empty() {
            Some(declared.join(","))
        } else {
            help.split_once("[default: ")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(default, _)| default.to_owned())
        };
        args.insert(primary, ClapArg { names, default });
    }
    args
}

/// The rows of a section's flag table (header starting with "flag"), as the flag each names
/// first, every name it gives, and its default cell without backticks.
fn flag_rows(blocks: &[Block]) -> Option<Vec<(String, BTreeSet<String>, String)>> {
    let rows = blocks.iter().find_map(|block| match block {
        Block::Table(rows) if rows[0][0].starts_with("flag") => Some(rows),
        _ => None,
    })?;
    Some(
        rows[1..]
            .iter()
            .map(|row| {
                let names: Vec<&str> = code_spans(&row[0]);
                let first = names.first().copied().unwrap_or_default().to_owned();
                (
                    first,
                    names.into_iter().map(str::to_owned).collect(),
                    row[1].replace('`', ""),
                )
            })
            .collect(),
    )
}

/// Every command's README section has a table of exactly its flags, aliases included, with
/// the defaults clap has: a flag added, renamed or removed, or a default changed, without the
/// README following, fails here.
#[test]
fn flag_tables_match_the_flags() {
    let sections = command_sections();
    let cli = Cli::command();
    let mut wrong = Vec::new();
    for command in cli.get_subcommands() {
        let name = command.get_name();
        let Some((heading, blocks)) = sections.get(name) else {
            wrong.push(format!("{name}: no README section `reapwatch {name}`"));
            continue;
        };
        let Some(rows) = flag_rows(blocks) else {
            wrong.push(format!("{name}: no flag table in its README section"));
            continue;
        };
        let args = clap_args(command);
        let every_name: BTreeSet<&String> = args.values().flat_map(|a| &a.names).collect();
        for word in heading.split(|c: char| c.is_whitespace() || "[]`".contains(c)) {
            if word.starts_with("--") && !every_name.contains(&word.to_owned()) {
                wrong.push(format!(
                    "{name}: its heading names {word}, which it has not"
                ));
            }
        }
        let mut listed = BTreeSet::new();
        for (first, names, default) in &rows {
            let Some(arg) = args.get(first) else {
                wrong.push(format!(
                    "{name}: the README lists {first}, which it has not"
                ));
                continue;
            };
            if !listed.insert(first.clone()) {
                wrong.push(format!("{name}: {first} is listed twice"));
            }
            if names != &arg.names {
                wrong.push(format!(
                    "{name}: README names {names:?} for {first}, clap {:?}",
                    arg.names
                ));
            }
            match &arg.default {
                Some(expected) if expected != default => wrong.push(format!(
                    "{name} {first}: README default {default:?}, clap {expected:?}"
                )),
                None if default.is_empty() => {
                    wrong.push(format!("{name} {first}: no default given in the README"))
                }
                _ => {}
            }
        }
        for missing in args.keys().filter(|flag| !listed.contains(*flag)) {
            wrong.push(format!("{name}: {missing} is not in its README table"));
        }
    }
    for name in sections.keys() {
        if cli.find_subcommand(name).is_none() {
            wrong.push(format!(
                "the README documents `reapwatch {name}`, no such command"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "README flag tables:\n{}",
        wrong.join("\n")
    );
}

/// `serve`'s table says each flag is also a key of the `--config` file: the keys the file
/// takes, as `serve` lists them when it meets an unknown one, are the table's flags without
/// their dashes, `--config` itself excepted.
#[test]
fn serve_table_flags_are_the_config_file_keys() {
    let sections = command_sections();
    let rows = flag_rows(&sections["serve"].1).expect("serve has a flag table");
    let documented: BTreeSet<String> = rows
        .iter()
        .map(|(first, _, _)| first.trim_start_matches('-').to_owned())
        .filter(|key| key != "config")
        .collect();

    let file = std::env::temp_dir().join(format!("reapwatch-readme-{}.toml", std::process::id()));
    fs::write(&file, "no-such-key = 1\n").expect("write the config file");
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run reapwatch serve");
    let _ = fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let (_, expected) = stderr
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no list of keys in {stderr:?}"));
    let keys: BTreeSet<String> = code_spans(expected)
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented, keys,
        "the serve table's flags against the config file's keys"
    );
}

/// A documented JSON document: every key path (`parents[].children[].pid`) and those the
/// README says may be `null`.
#[derive(Default)]
struct Contract {
    keys: BTreeSet<String>,
    nullable: BTreeSet<String>,
}

/// The `jsonc` block of `command`'s section, and the paragraph after it ("May be `null`:"
/// then the key paths that may be, each a code span, and no other code span).
fn contract(command: &str) -> Contract {
    let sections = command_sections();
    let blocks = &sections[command].1;
    let at = blocks
        .iter()
        .position(|b| matches!(b, Block::Code { info, .. } if info == "jsonc"))
        .unwrap_or_else(|| panic!("no jsonc block in the README's {command} section"));
    let Block::Code { text, .. } = &blocks[at] else {
        unreachable!()
    };
    let example: Value = serde_json::from_str(&without_comments(text))
        .unwrap_or_else(|e| panic!("the {command} contract is not JSON with comments: {e}"));
    let mut contract = Contract::default();
    key_paths(&example, "", &mut contract.keys, &mut BTreeSet::new());
    match blocks.get(at + 1) {
        Some(Block::Paragraph(text)) if text.starts_with("May be `null`:") => {
            // Every code span after the first (`null`) is a key path.
            contract.nullable = code_spans(text)
                .into_iter()
                .skip(1)
                .map(str::to_owned)
                .collect();
        }
        other => panic!("no \"May be `null`:\" after the {command} contract: {other:?}"),
    }
    contract
}

/// `//` comments removed, outside strings.
fn without_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut end = line.len();
        for (at, c) in line.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_string => escaped = true,
                '"' => in_string = !in_string,
                '/' if !in_string && line[at..].starts_with("//") => {
                    end = at;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..end]);
        out.push('\n');
    }
    out
}

/// Every key path of `value` below `prefix` (array elements as `[]`), and those holding null.
fn key_paths(
    value: &Value,
    prefix: &str,
    keys: &mut BTreeSet<String>,
    nulls: &mut BTreeSet<String>,
) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if value.is_null() {
                    nulls.insert(path.clone());
                }
                keys.insert(path.clone());
                key_paths(value, &path, keys, nulls);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), keys, nulls);
            }
        }
        _ => {}
    }
}

/// What a command printed against its contract: the same keys both ways, and every null it
/// printed documented as one.
fn check_against(what: &str, contract: &Contract, printed: &Value) {
    let (mut keys, mut nulls) = (BTreeSet::new(), BTreeSet::new());
    key_paths(printed, "", &mut keys, &mut nulls);
    let mut wrong = Vec::new();
    for key in keys.difference(&contract.keys) {
        wrong.push(format!(
            "{what} prints {key}, which the README does not document"
        ));
    }
    for key in contract.keys.difference(&keys) {
        wrong.push(format!(
            "the README documents {key}, which {what} did not print"
        ));
    }
    for key in nulls.difference(&contract.nullable) {
        wrong.push(format!(
            "{what} printed {key} as null; the README does not say it may be"
        ));
    }
    for key in contract.nullable.difference(&contract.keys) {
        wrong.push(format!(
            "the README says {key} may be null, but documents no such key"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

const POD_UID: &str = "0d5c7e1a-6b2f-4c3d-9e8f-1a2b3c4d5e6f";
const CONTAINER_ID: &str = "6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b";

/// A kubelet-shaped container cgroup with a `pids.max`, named by kubelet's logs: so that
/// every part of the documents has something to show (a pod, a limit, names).
fn container_in_a_pod(name: &str) -> (FakeKubelet, TestCgroup) {
    let kubelet = FakeKubelet::new("payments", "api-7d9f", POD_UID, "server", CONTAINER_ID);
    let base = TestCgroup::new(name);
    let container = base.nested(&format!("kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"));
    let pids_max = container.path.join("pids.max");
    assert!(
        pids_max.exists(),
        "the tests' hierarchy has no pids controller"
    );
    fs::write(&pids_max, "50").expect("set pids.max");
    (kubelet, container)
}

/// Zombies (their parent's children) in [`container_in_a_pod`].
struct Leak {
    kubelet: FakeKubelet,
    _container: TestCgroup,
    _helper: Helper,
}

fn leak_in_a_pod(name: &str) -> Leak {
    let (kubelet, container) = container_in_a_pod(name);
    let helper = Helper::start("leak", 3, &container);
    Leak {
        kubelet,
        _container: container,
        _helper: helper,
    }
}

#[test]
fn snapshot_json_is_its_contract() {
    let leak = leak_in_a_pod("readme-snapshot");
    let printed = reapwatch_json(&[
        "snapshot",
        "--json",
        "--pod-logs-dir",
        &leak.kubelet.pods_dir(),
    ]);
    check_against("snapshot --json", &contract("snapshot"), &printed);
}

#[test]
fn scan_json_is_its_contract() {
    let leak = leak_in_a_pod("readme-scan");
    let printed = reapwatch_json(&[
        "scan",
        "--json",
        "--watch",
        "1s",
        "--interval",
        "200ms",
        "--pod-logs-dir",
        &leak.kubelet.pods_dir(),
    ]);
    // `parents` holds snapshot's parent objects, plus what scan's own contract adds.
    let mut expected = contract("scan");
    let snapshot = contract("snapshot");
    let parents = |keys: &BTreeSet<String>| -> Vec<String> {
        keys.iter()
            .filter(|k| k.starts_with("parents[]."))
            .cloned()
            .collect()
    };
    expected.keys.extend(parents(&snapshot.keys));
    expected.nullable.extend(parents(&snapshot.nullable));
    check_against("scan --json --watch", &expected, &printed);
}

/// Every key a trace line may hold, across the events that hold each: forks, exits with a
/// code, a kill, zombies, reparents (to a subreaper) and reaps, in a container kubelet names.
#[test]
fn trace_json_is_its_contract() {
    let (kubelet, container) = container_in_a_pod("readme-trace");
    let pods = kubelet.pods_dir();
    let path = container.host_path();
    let trace = start_trace(&[], &["--cgroup", &path, "--pod-logs-dir", &pods]);

    // Children that exit with a code and are reparented to the helper, a subreaper.
    let orphans = Helper::start("orphans", 2, &container);
    // A child killed by a signal.
    let mut killed = Helper::start("exec-thread", 1, &container);
    killed.step();
    // Time for the trace to notice the reparenting (it looks each second); then both
    // helpers end and every zombie is reaped, and the trace is given time to show the reaps
    // before it is stopped as at Ctrl-C (no --duration: a slow machine would cut it short).
    std::thread::sleep(Duration::from_secs(2));
    drop((orphans, killed));
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };

    let output = trace.wait_with_output().expect("trace ends");
    assert!(output.status.success(), "{output:?}");
    let mut printed = Value::Array(Vec::new());
    for line in String::from_utf8(output.stdout).expect("UTF-8").lines() {
        let event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        printed.as_array_mut().expect("an array").push(event);
    }
    // The lines as one array, so that their key paths are `[].key`.
    let documented = contract("trace");
    let expected = Contract {
        keys: documented.keys.iter().map(|k| format!("[].{k}")).collect(),
        nullable: documented.nullable,
    };
    check_against("trace --json", &expected, &printed);
}
