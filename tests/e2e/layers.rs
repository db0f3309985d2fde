//! The source's shape (issue 21): imports run one way. Between the crate's modules, and between
//! the files of one folder, no module imports one that imports it back, however far round: a
//! value two modules speak lives in a module below both, so each part can be read and changed
//! from the bottom up. Read from the `use` lines of `src/`, as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::programs::repo_path;

/// Module name -> the modules its `use` lines name, for the files directly in `dir` and, one
/// level down, for each folder as one module. `prefix` is how those files name each other:
/// `crate::` at the top, `super::` inside a folder.
fn imports(dir: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).filter(|p| is_rust(p)).collect()
        } else if is_rust(&path) {
            vec![path.clone()]
        } else {
            continue;
        };
        let named = graph.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // Tests may reach anywhere: only the code above them counts.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code
                .lines()
                .map(str::trim_start)
                .filter(|l| l.starts_with("use ") || l.starts_with("pub use "))
            {
                for (at, _) in line.match_indices(prefix) {
                    let rest = &line[at + prefix.len()..];
                    let module: String =
                        rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !module.is_empty() && module != name && module != "self" {
                        named.insert(module);
                    }
                }
            }
        }
    }
    graph
}

fn is_rust(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rs")
}

/// A loop of imports in `graph`, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten().filter(|n| graph.contains_key(*n)) {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_crates_modules_import_one_way() {
    let graph = imports(&repo_path("src"), "crate::");
    assert!(graph.len() > 10, "the modules of src/ were read: {graph:?}");
    assert_eq!(find_circle(&graph), None, "modules that import each other, however far round");
}

#[test]
fn each_folders_files_import_one_way() {
    let folders: Vec<_> = std::fs::read_dir(repo_path("src"))
        .expect("read src/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    assert!(folders.len() >= 6, "every folder of src/: {folders:?}");
    for folder in folders {
        let graph = imports(&folder, "super::");
        assert_eq!(find_circle(&graph), None, "files of {} that import each other", folder.display());
    }
}

#[test]
fn a_circle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    let circle = find_circle(&graph).expect("a -> b -> c -> a");
    assert_eq!(circle.len(), 3, "{circle:?}");
}
