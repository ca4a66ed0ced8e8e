//! The shape of `src/` stays as `src/lib.rs` draws it: every `crate::…` and `super::…` path is
//! read, each module may reach only the floors below its own (and its own floor only along the
//! listed arrows), no file reaches into its parent module's file, and no two files depend on
//! each other, directly or round a longer circle. A simple reading of paths, not a parser: it
//! sees what `use` lines and qualified paths name, outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors from the top; within a floor, the arrows allowed between its modules.
const FLOORS: &[(&str, &[&str])] = &[
    ("roles", &["worker", "api", "fake_telegram", "migrate", "webhook", "fuzz"]),
    ("domain", &["bot", "feed"]),
    ("adapters", &["intake", "store", "kv", "telegram", "replay"]),
    (
        "foundations",
        &[
            "http",
            "admin",
            "telemetry",
            "metrics",
            "settings",
            "tls",
            "types",
            "cli",
            "batch",
            "keyed",
            "random",
            "shutdown",
        ],
    ),
];
const SAME_FLOOR: &[(&str, &str)] =
    &[("bot", "feed"), ("intake", "kv"), ("store", "kv"), ("telegram", "kv"), ("telegram", "store")];

/// The floor of a top-level module, and its place among the foundations (which form a line).
fn place(module: &str) -> (usize, usize) {
    FLOORS
        .iter()
        .enumerate()
        .find_map(|(floor, (_, modules))| Some((floor, modules.iter().position(|m| *m == module)?)))
        .unwrap_or_else(|| {
            panic!("module {module} is on no floor: add it to FLOORS and to src/lib.rs's layout")
        })
}

fn allowed(from: &str, to: &str) -> bool {
    let ((from_floor, from_at), (to_floor, to_at)) = (place(from), place(to));
    let foundations = FLOORS.len() - 1;
    from_floor < to_floor
        || (from_floor == foundations && to_floor == foundations && from_at < to_at)
        || SAME_FLOOR.contains(&(from, to))
}

/// A source file and its module path (`src/a/b.rs` and `src/a/b/mod.rs` are both `[a, b]`).
struct File {
    path: PathBuf,
    module: Vec<String>,
}

fn files(dir: &Path, out: &mut Vec<File>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src()).unwrap().with_extension("");
            let mut module: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            out.push(File { path, module });
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every path after `crate::` or `super::` in `code`, as segments; a `{a, b::c}` group gives
/// one path per member (its first segment).
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        for (at, _) in code.match_indices(root) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + root.len()..];
            let mut segments = Vec::new();
            let mut rest = rest;
            loop {
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                if end == 0 {
                    break;
                }
                segments.push(rest[..end].to_owned());
                match rest[end..].strip_prefix("::") {
                    Some(next) => rest = next,
                    None => break,
                }
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for member in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let first = member.split("::").next().unwrap_or(member).trim();
                    let first = first.split_whitespace().next().unwrap_or(first);
                    if first != "self" {
                        let mut path = segments.clone();
                        path.push(first.to_owned());
                        found.push((root.to_owned(), path));
                    }
                }
            } else {
                found.push((root.to_owned(), segments));
            }
        }
    }
    found
}

/// The code of a file without its comments (doc links name paths too, but are no dependency)
/// and without its unit tests (at the end, by house style; their `super` is the file itself).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The file a module path lives in: the longest prefix of `module` that is a file.
fn resolve(by_module: &BTreeMap<Vec<String>, usize>, module: &[String]) -> Option<usize> {
    (0..=module.len()).rev().find_map(|n| by_module.get(&module[..n]).copied())
}

#[test]
fn modules_only_use_the_floors_below_and_files_form_no_cycle() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    all.retain(|f| f.path.file_name().is_some_and(|n| n != "main.rs"));
    let by_module: BTreeMap<Vec<String>, usize> =
        all.iter().enumerate().map(|(i, f)| (f.module.clone(), i)).collect();
    let mut wrong = BTreeSet::new();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); all.len()];
    for (i, file) in all.iter().enumerate() {
        let text = code(&file.path);
        for (root, segments) in paths(&text) {
            let target: Vec<String> = if root == "crate::" {
                segments
            } else {
                // `super` of `a/b.rs` (module [a, b]) and of `a/b/mod.rs` alike is `a`.
                let parent = &file.module[..file.module.len().saturating_sub(1)];
                parent.iter().cloned().chain(segments).collect()
            };
            if let (Some(from), Some(to)) = (file.module.first(), target.first())
                && from != to
                && !allowed(from, to)
            {
                wrong.insert(format!("{} uses crate::{}", file.path.display(), target.join("::")));
            }
            if let Some(j) = resolve(&by_module, &target).filter(|j| *j != i) {
                edges[i].insert(j);
            }
        }
        // A module's file declares its children: a child that uses its parent's file is a cycle.
        for line in text.lines().map(str::trim) {
            if let Some(name) =
                line.trim_start_matches("pub ").strip_prefix("mod ").and_then(|r| r.strip_suffix(';'))
            {
                let mut child = file.module.clone();
                child.push(name.to_owned());
                if let Some(j) = by_module.get(&child) {
                    edges[i].insert(*j);
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that src/lib.rs's layout does not allow:\n{}",
        Vec::from_iter(wrong).join("\n")
    );
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> =
            cycle.iter().map(|&i| all[i].path.strip_prefix(src()).unwrap().display().to_string()).collect();
        panic!("files that depend on each other: {}", names.join(" → "));
    }
}

/// A cycle in the graph, as the files on it (the first repeated at the end).
fn find_cycle(edges: &[BTreeSet<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: usize,
        edges: &[BTreeSet<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Open;
        stack.push(n);
        for &next in &edges[n] {
            match marks[next] {
                Mark::Open => {
                    let start = stack.iter().position(|&s| s == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, edges, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; edges.len()];
    (0..edges.len())
        .find_map(|n| (marks[n] == Mark::New).then(|| visit(n, edges, &mut marks, &mut Vec::new())).flatten())
}

#[test]
fn the_reading_of_paths_sees_groups_and_skips_comments() {
    let found = paths("use crate::{db, kv::Conn, self};\nuse super::bot::Ctx; x::crate::no");
    let found: Vec<String> = found.into_iter().map(|(root, p)| format!("{root}{}", p.join("::"))).collect();
    assert_eq!(found, ["crate::db", "crate::kv", "super::bot::Ctx"]);
    assert!(!allowed("store", "bot"), "an adapter may not use the domain");
    assert!(!allowed("feed", "bot"), "the domain's one arrow goes from bot to feed");
    assert!(allowed("bot", "feed") && allowed("worker", "shutdown") && allowed("http", "admin"));
    assert!(!allowed("admin", "http"), "foundations form a line");
    let cycle = find_cycle(&[BTreeSet::from([1]), BTreeSet::from([2]), BTreeSet::from([0])]);
    assert_eq!(cycle, Some(vec![0, 1, 2, 0]));
    let code =
        "pub fn one() -> u8 { 1 }\nfn trait_item(&self);\nasync fn three(\n    a: u8,\n) {\n    a;\n}\n";
    assert_eq!(functions(code), [("one".to_owned(), 1), ("three".to_owned(), 5)]);
}

#[test]
fn files_are_short_and_functions_shorter() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut lengths: Vec<usize> =
        all.iter().map(|f| std::fs::read_to_string(&f.path).unwrap().lines().count()).collect();
    lengths.sort_unstable();
    let median = lengths[lengths.len() / 2];
    assert!(median <= 150, "the median file in src/ has {median} lines (at most 150)");
    let mut long = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(&file.path).unwrap();
        let body = text.split("#[cfg(test)]").next().unwrap_or("");
        for (name, lines) in functions(body) {
            if lines > 80 {
                long.push(format!("{}: fn {name} has {lines} lines", file.path.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over 80 lines outside tests:\n{}", long.join("\n"));
}

/// Each `fn` in `text` (rustfmt's layout: the body closes at the signature's indentation) with
/// its length in lines.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(at) = trimmed.find("fn ").filter(|&at| {
            let head = &trimmed[..at];
            head.split_whitespace()
                .all(|w| ["pub", "pub(crate)", "pub(super)", "async", "const", "unsafe"].contains(&w))
        }) else {
            continue;
        };
        let name: String =
            trimmed[at + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let indent = line.len() - trimmed.len();
        // Where the signature ends: a body opens (`{`), or there is none (`;`), or it is one line.
        let Some(open) = lines[n..].iter().position(|l| {
            let l = l.trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        let signature_end = lines[n + open].trim_end();
        if signature_end.ends_with(';') {
            continue;
        }
        if signature_end.ends_with('}') {
            found.push((name, open + 1));
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) =
            lines[n + open..].iter().position(|l| l.starts_with(&close) && l.trim_end().len() <= indent + 2)
        {
            found.push((name, open + end + 1));
        }
    }
    found
}
