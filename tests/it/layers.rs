//! The modules depend on each other one way: no cycle among `src`'s top-level modules (a module
//! is `src/NAME.rs` with `src/NAME/`), and none among the files of one module (a file names a
//! sibling as `super::NAME` or `crate::MODULE::NAME`; `mod.rs`, the module's face, is left out).
//! Dependencies are read from those paths in the source, tests included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(&src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.trim_end_matches(".rs");
        (name != "lib" && name != "main").then(|| name.to_string())
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| module_of(p)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = module_of(f) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        let deps = g.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) && name != from {
                deps.insert(name);
            }
        }
    }
    g
}

/// A cycle through `node`, if there is one.
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut c = path[at..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in g.get(node).into_iter().flatten() {
        if let Some(c) = cycle(g, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

/// The files of each folder of `src` (by stem, `mod.rs` left out) → the siblings they name.
fn file_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // (folder, stem, path) of every file in a folder of `src`, but its `mod.rs`.
    let placed: Vec<(String, String, &std::path::PathBuf)> = files
        .iter()
        .filter_map(|f| {
            let parent = f.parent().filter(|p| *p != src)?;
            let folder = parent.strip_prefix(&src).ok()?.to_str()?.to_string();
            let stem = f.file_stem()?.to_str()?.to_string();
            (stem != "mod").then_some((folder, stem, f))
        })
        .collect();
    let mut folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (folder, stem, _) in &placed {
        folders
            .entry(folder.clone())
            .or_default()
            .insert(stem.clone(), BTreeSet::new());
    }
    for (folder, stem, f) in &placed {
        let siblings: BTreeSet<String> = folders[folder].keys().cloned().collect();
        let text = std::fs::read_to_string(f).unwrap();
        let crate_path = format!("crate::{}::", folder.replace('/', "::"));
        let mut named = BTreeSet::new();
        for prefix in ["super::", crate_path.as_str()] {
            for (i, _) in text.match_indices(prefix) {
                if prefix == "super::" && text[..i].ends_with("super::") {
                    continue; // `super::super::…` leaves the folder
                }
                let name: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) && name != *stem {
                    named.insert(name);
                }
            }
        }
        folders.get_mut(folder).unwrap().insert(stem.clone(), named);
    }
    folders
}

#[test]
fn the_files_of_a_module_form_no_cycle() {
    let folders = file_graphs();
    assert!(
        folders
            .get("sidecar")
            .is_some_and(|g| g["proxy"].contains("filter")),
        "the sidecar's proxy should be seen naming its filter: {folders:?}"
    );
    for (folder, g) in &folders {
        let mut done = BTreeSet::new();
        for node in g.keys() {
            if let Some(c) = cycle(g, node, &mut Vec::new(), &mut done) {
                panic!(
                    "the files of src/{folder} depend on each other in a cycle: {}",
                    c.join(" → ")
                );
            }
        }
    }
}

#[test]
fn the_modules_form_no_cycle() {
    let g = graph();
    assert!(g.len() >= 10, "too few modules found: {g:?}");
    let mut done = BTreeSet::new();
    for node in g.keys() {
        if let Some(c) = cycle(&g, node, &mut Vec::new(), &mut done) {
            panic!(
                "the modules depend on each other in a cycle: {}",
                c.join(" → ")
            );
        }
    }
}

#[test]
fn the_shared_layers_depend_on_neither_side() {
    let g = graph();
    for (lower, forbidden) in [
        ("webhook", &["controller", "check", "cli"][..]),
        ("cluster", &["controller", "webhook", "sidecar", "cli"]),
        (
            "serve",
            &[
                "controller",
                "webhook",
                "sidecar",
                "cluster",
                "policy",
                "engine",
                "mcp",
            ],
        ),
        ("mcp", &["engine", "sidecar", "policy"]),
        ("engine", &["sidecar", "mcp"]),
        (
            "identity",
            &[
                "sidecar",
                "controller",
                "webhook",
                "engine",
                "policy",
                "mcp",
            ],
        ),
        ("policy", &["engine", "sidecar", "crd"]),
        // The controller and the sidecar share the approval wire (`approval`), not each
        // other's insides.
        ("controller", &["sidecar", "cmd"]),
        ("sidecar", &["controller", "webhook", "cluster", "cmd"]),
        ("approval", &["sidecar", "controller", "cmd"]),
        ("peering", &["sidecar", "controller", "cmd"]),
    ] {
        for f in forbidden {
            assert!(
                !g[lower].contains(*f),
                "{lower} depends on {f}: {:?}",
                g[lower]
            );
        }
    }
}

#[test]
fn only_the_binary_runs_the_commands() {
    let g = graph();
    for (module, deps) in &g {
        assert!(
            module == "cmd" || !deps.contains("cmd"),
            "{module} depends on cmd (the command line): commands sit on top of the library"
        );
    }
}
