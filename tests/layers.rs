//! The modules of `src/` import one another in one direction only: this
//! test reads the sources, draws the graph of `crate::<module>` references
//! between top-level modules (comments and test code left out) and fails
//! on a cycle, naming it. `src/lib.rs` says which way each layer points.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            // `foo/tests/` and `foo/tests.rs` are test code.
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// module (by convention the last item of a file).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path");
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let code = code(&text);
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// A cycle through `from`, if any, as a path of module names.
fn cycle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(graph: &Graph, at: &str, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if *next == path[0] {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn modules_import_each_other_in_one_direction() {
    let graph = graph();
    assert!(graph.contains_key("store") && graph.contains_key("delivery"));
    for module in graph.keys() {
        if let Some(path) = cycle(&graph, module) {
            panic!("import cycle: {}", path.join(" → "));
        }
    }
}

#[test]
fn the_store_and_the_rules_know_nothing_above_them() {
    let graph = graph();
    let store = &graph["store"];
    for above in ["delivery", "rules", "pipeline", "source", "app"] {
        assert!(!store.contains(above), "store imports {above}");
    }
    let rules = &graph["rules"];
    for above in ["delivery", "pipeline", "source"] {
        assert!(!rules.contains(above), "rules imports {above}");
    }
}

#[test]
fn a_cycle_is_found() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&graph, "a"), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&graph, "a").expect("a cycle"), ["a", "b", "c", "a"]);
}
