//! The crate's architecture, held by a test: Rust accepts import circles inside a crate, so
//! without one the layering below is a matter of taste that each change can quietly undo.
//!
//! It reads every module of `src/` with syn, collects what each one names of the others (its
//! `use` items and any `crate::`, `super::`, `self::` or child-module path in its code), and
//! fails on a circle between files, or on a module that reaches a layer above its own.
//! `#[cfg(test)]` code is left out: a unit test may drive a module through the CLI parser.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// The top-level modules, from the top floor down. A module may name modules of lower
/// floors only; those on one floor stay out of each other's way.
const FLOORS: &[&[&str]] = &[
    // The two front ends: what a person or a script asks for, and the exporter.
    &["commands", "exporter"],
    // Their arguments, and the wording they share.
    &["cli", "text"],
    // The refresh loop `top` and `serve` share.
    &["watch"],
    // The state engine and the kubelet's view of the node.
    &["state", "kubelet"],
    // The kernel programs: loading them and reading their maps.
    &["kernel"],
    // Attribution: cgroups, and the pods and containers behind them.
    &["kubernetes"],
    &["cgroup"],
    // The `/proc` parsers, ground truth.
    &["procfs"],
    // Leaves: no reapwatch module below them.
    &["clock", "escape", "forecast"],
];

/// One module of the crate: its path from the crate root (`["kernel", "btf"]`) and its file.
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module file under `src/`, except `main.rs`: the binary is a crate of its own.
fn modules() -> Vec<Module> {
    let root = source_root();
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                dirs.push(file);
                continue;
            }
            if file.extension().is_none_or(|e| e != "rs") || file == root.join("main.rs") {
                continue;
            }
            let relative = file.strip_prefix(&root).unwrap().with_extension("");
            let mut path: Vec<String> = relative
                .iter()
                .map(|part| part.to_str().unwrap().to_owned())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            found.push(Module { path, file });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// The absolute paths (from the crate root) a module names.
struct Names<'a> {
    module: &'a [String],
    /// Names of the module's own children, which a path may start with.
    children: BTreeSet<String>,
    found: BTreeSet<Vec<String>>,
}

impl Names<'_> {
    /// `segments` made absolute, or None for a path outside the crate (std, a dependency,
    /// a local name).
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        let mut path = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.to_vec(),
            "super" => self.module[..self.module.len().saturating_sub(1)].to_vec(),
            child if self.children.contains(child) => {
                let mut path = self.module.to_vec();
                path.push(child.to_owned());
                path
            }
            _ => return None,
        };
        for segment in rest {
            if segment == "super" {
                path.pop();
            } else {
                path.push(segment.clone());
            }
        }
        Some(path)
    }

    fn add(&mut self, segments: &[String]) {
        if let Some(path) = self.absolute(segments) {
            self.found.insert(path);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_cfg_test(&item.attrs) {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(&segments);
        syn::visit::visit_path(self, path);
    }

    // `#[arg(value_parser = some::path)]` and the like name modules too.
    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if let syn::Meta::List(list) = &attr.meta {
            let mut segments = Vec::new();
            for token in list.tokens.clone() {
                match token {
                    proc_macro2::TokenTree::Ident(ident) => segments.push(ident.to_string()),
                    proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => continue,
                    _ => {
                        self.add(&segments);
                        segments.clear();
                    }
                }
            }
            self.add(&segments);
        }
    }
}

/// Module -> the modules it names (the longest module path each name starts with).
fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    let known: BTreeSet<&Vec<String>> = modules.iter().map(|m| &m.path).collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let text = std::fs::read_to_string(&module.file).unwrap();
        let file =
            syn::parse_file(&text).unwrap_or_else(|err| panic!("{}: {err}", module.file.display()));
        let children = modules
            .iter()
            .filter(|m| m.path.len() == module.path.len() + 1 && m.path.starts_with(&module.path))
            .map(|m| m.path.last().unwrap().clone())
            .collect();
        let mut names = Names {
            module: &module.path,
            children,
            found: BTreeSet::new(),
        };
        names.visit_file(&file);
        let mut targets = BTreeSet::new();
        for name in names.found {
            let target = (0..=name.len())
                .rev()
                .map(|n| name[..n].to_vec())
                .find(|prefix| known.contains(prefix))
                .unwrap();
            // A module naming itself, or a parent its own children (it declares them and
            // may re-export them: that is the module tree, not a dependency).
            if !target.starts_with(&module.path) {
                targets.insert(target);
            }
        }
        graph.insert(module.path.clone(), targets);
    }
    graph
}

fn shown(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// The graph's circles, each as its modules in order (Tarjan's strongly connected
/// components of more than one module; no module names itself).
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, usize>,
        low: BTreeMap<&'g Vec<String>, usize>,
        stack: Vec<&'g Vec<String>>,
        found: Vec<Vec<Vec<String>>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g Vec<String>) {
            let index = self.index.len();
            self.index.insert(node, index);
            self.low.insert(node, index);
            self.stack.push(node);
            for next in &self.graph[node] {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().position(|n| *n == node).unwrap();
                let component: Vec<Vec<String>> =
                    self.stack.drain(at..).map(|n| n.to_vec()).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

/// The same imports between top-level modules: a folder's files may each be in order while
/// the folders go round (`kernel::loader -> cgroup -> procfs -> kernel::clock`).
fn top_level(
    graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let top = |path: &Vec<String>| path.iter().take(1).cloned().collect::<Vec<_>>();
    let mut rooms: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, targets) in graph {
        let room = top(module);
        let reached = targets.iter().map(top).filter(|target| *target != room);
        let entry = rooms.entry(room.clone()).or_default();
        // The crate root declares every top-level module.
        if !room.is_empty() {
            entry.extend(reached);
        }
    }
    rooms
}

#[test]
fn no_module_imports_in_a_circle() {
    let files = imports();
    let mut report = String::new();
    for graph in [&files, &top_level(&files)] {
        report_circles(graph, &mut report);
    }
    assert!(report.is_empty(), "{report}");
}

fn report_circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>, report: &mut String) {
    for circle in circles(graph) {
        let members: BTreeSet<&Vec<String>> = circle.iter().collect();
        writeln!(report, "circle:").unwrap();
        for module in &circle {
            for target in graph[module].iter().filter(|t| members.contains(t)) {
                writeln!(report, "  {} -> {}", shown(module), shown(target)).unwrap();
            }
        }
    }
}

#[test]
fn no_module_reaches_a_floor_above_its_own() {
    let floor_of = |path: &[String]| -> Option<usize> {
        let top = path.first()?;
        Some(
            FLOORS
                .iter()
                .position(|floor| floor.contains(&top.as_str()))
                .unwrap_or_else(|| panic!("{top} is on no floor of FLOORS: give it one")),
        )
    };
    let mut report = String::new();
    for (module, targets) in imports() {
        let Some(from) = floor_of(&module) else {
            continue; // lib.rs: the crate root sits above every floor
        };
        for target in targets {
            let Some(to) = floor_of(&target) else {
                writeln!(report, "{} -> crate root", shown(&module)).unwrap();
                continue;
            };
            if to <= from && module[0] != target[0] {
                writeln!(
                    report,
                    "{} (floor {from}) -> {} (floor {to})",
                    shown(&module),
                    shown(&target)
                )
                .unwrap();
            }
        }
    }
    assert!(
        report.is_empty(),
        "modules that reach up or across:\n{report}"
    );
}

#[test]
fn the_reader_sees_the_imports_it_must() {
    // The checks above are only as good as this reading: a few imports known to exist.
    let graph = imports();
    let has = |from: &str, to: &str| {
        let path = |text: &str| match text {
            "crate" => Vec::new(),
            _ => text.split("::").map(str::to_owned).collect::<Vec<_>>(),
        };
        graph[&path(from)].contains(&path(to))
    };
    assert!(has("state", "procfs"), "a `use crate::{{...}}` group");
    assert!(has("kernel::loader", "kernel"), "a `use super::...` item");
    assert!(
        has("kernel::loader", "kernel::btf"),
        "a `super::child` item"
    );
    assert!(
        has("exporter::settings", "cli"),
        "a `use crate::cli::...` item"
    );
    assert!(
        has("exporter", "kernel::preflight"),
        "a folder's own imports"
    );
    assert!(has("cli", "escape"), "a path in a function body");
}
