//! The modules of this crate, and those of the sans-IO core it builds on,
//! form no import circle: each module can be read, and changed, knowing only
//! the modules below it.
//!
//! Each crate's import graph is read from its sources: an edge from module
//! `a` to module `b` for every `crate::b` or `super::b` path (in a `use` or
//! anywhere in code) and every re-export of a child module in `a`. Test
//! modules and comments do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate`, `topic`, `topic::hub`, ... for a file under `src`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    if parts.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", parts.join("::"))
    }
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or_else(|| "crate".into(), |(p, _)| p.to_owned())
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            // `http://` in a string literal is not a comment; nothing else
            // in either crate puts `//` in a string.
            Some(i) if !l[..i].ends_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path that starts with `prefix` (`crate::` or `super::`), expanded
/// over one level of `{...}` groups: `crate::{a::b, c}` gives `a::b`, `c`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[i + prefix.len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(segments(item.trim()));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn segments(path: &str) -> Vec<String> {
    let end = path
        .find(|c: char| !(is_ident(c) || c == ':'))
        .unwrap_or(path.len());
    path[..end]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The deepest module of `modules` that `base::segments` names.
fn resolve(modules: &BTreeSet<String>, base: &str, segments: &[String]) -> Option<String> {
    let mut best = None;
    let mut current = base.to_owned();
    for s in segments {
        current = format!("{current}::{s}");
        if modules.contains(&current) {
            best = Some(current.clone());
        } else {
            break;
        }
    }
    best
}

/// The sources of this crate.
fn library_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The sources of the sans-IO core, a sibling of this crate in `crates/`.
fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .with_file_name("heartbeater-core")
        .join("src")
}

/// The import graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_of(src, file);
        let code = code(&std::fs::read_to_string(file).unwrap());
        let mut targets = BTreeSet::new();
        for path in paths_after(&code, "crate::") {
            // `crate::X` for an item at the root is an edge to the root.
            targets.insert(resolve(&modules, "crate", &path).unwrap_or_else(|| "crate".into()));
        }
        for path in paths_after(&code, "super::") {
            let base = parent(&module);
            targets.insert(resolve(&modules, &base, &path).unwrap_or(base));
        }
        for line in code.lines() {
            let line = line.trim_start();
            let used = line
                .strip_prefix("pub use ")
                .or_else(|| line.strip_prefix("pub(crate) use "))
                .or_else(|| line.strip_prefix("use "));
            if let Some(path) = used {
                if let Some(child) = resolve(&modules, &module, &segments(path)) {
                    targets.insert(child);
                }
            }
        }
        targets.remove(&module);
        graph.insert(module, targets);
    }
    graph
}

/// A circle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

/// Fails on a circle among the modules in `src`; `at_least` modules must be
/// read, so that a wrong path cannot make the check pass on nothing.
fn assert_no_circle(src: &Path, at_least: usize) {
    let graph = graph(src);
    assert!(
        graph.len() >= at_least,
        "read too few modules in {}: {:?}",
        src.display(),
        graph.keys()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle in {}: {}", src.display(), cycle.join(" -> "));
    }
}

#[test]
fn the_modules_import_each_other_without_a_circle() {
    assert_no_circle(&library_src(), 21);
}

#[test]
fn the_core_modules_import_each_other_without_a_circle() {
    assert_no_circle(&core_src(), 15);
}

#[test]
fn the_reader_sees_the_known_edges_and_would_see_a_circle() {
    // The reader itself, on edges this crate is known to have: were it
    // blind, the tests above would pass for nothing.
    let library = graph(&library_src());
    let edges = |m: &str| library.get(m).cloned().unwrap_or_default();
    assert!(edges("crate::server").contains("crate::driver"));
    assert!(edges("crate::driver").contains("crate::driver::fanout"));
    assert!(edges("crate::topic::hub").contains("crate::topic::activation"));
    assert!(edges("crate::topic::hub").contains("crate::topic::types"));
    assert!(edges("crate::topic").contains("crate::topic::hub"));
    let mut circular = library.clone();
    circular
        .entry("crate::driver".into())
        .or_default()
        .insert("crate::server".into());
    assert!(find_cycle(&circular).is_some());

    // The same reader on the core's sources.
    let core = graph(&core_src());
    let edges = |m: &str| core.get(m).cloned().unwrap_or_default();
    assert!(edges("crate::table").contains("crate::liveness"));
    assert!(edges("crate::table").contains("crate::detector"));
    assert!(edges("crate::datagram").contains("crate::auth"));
    assert!(edges("crate").contains("crate::table"));
}
