//! The shape of the source tree, as docs/architecture.md promises it:
//! - no two modules of a crate import each other, directly or round a
//!   longer circle (checked among the siblings of every folder: the crate's
//!   top-level modules, then the files of each folder; a folder's `mod.rs`
//!   and its own children may use each other);
//! - no product source file holds more than 1,200 lines outside its tests.
//!
//! It reads the sources as text: `crate::` and `super::` paths in code (not
//! comments), up to the file's `#[cfg(test)]` module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["engine/src", "coordinator/src", "sql/src", "src"];
const MAX_LINES: usize = 1200;

/// A module path inside a crate: `["query", "broadcast"]`; the root is `[]`.
type ModPath = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(root: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The product part of a source: up to its inline test module (a
/// `#[cfg(test)]` followed by `mod ... {`; a `#[cfg(test)] mod x;`
/// declaration does not end it), without comments.
fn product_code(src: &str) -> (usize, String) {
    let mut lines = 0;
    let mut code = String::new();
    let all: Vec<&str> = src.lines().collect();
    for (i, line) in all.iter().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            let next = all.get(i + 1).map_or("", |l| l.trim());
            if !(next.starts_with("mod ") || next.starts_with("pub(crate) mod "))
                || next.ends_with('{')
            {
                break;
            }
        }
        lines += 1;
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find(" // ") {
            Some(i) => &line[..i],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    (lines, code)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths named after each `crate::` or `super::` in `code`,
/// resolved against `here` (brace groups one level deep).
fn references(code: &str, here: &ModPath) -> Vec<ModPath> {
    let mut out = Vec::new();
    for (start, prefix) in [("crate::", true), ("super::", false)] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
                continue; // `a::super::`, or part of a longer name
            }
            let mut base: ModPath = here.clone();
            if prefix {
                base.clear();
            } else {
                base.pop();
            }
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut path = base.clone();
            let mut groups = Vec::new();
            loop {
                let n = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
                if n == 0 {
                    if let Some(g) = rest.strip_prefix('{') {
                        let end = g.find('}').unwrap_or(g.len());
                        for item in g[..end].split(',') {
                            let first: String =
                                item.trim().chars().take_while(|&c| is_ident(c)).collect();
                            if !first.is_empty() {
                                let mut p = path.clone();
                                p.push(first);
                                groups.push(p);
                            }
                        }
                    }
                    break;
                }
                path.push(rest[..n].to_string());
                rest = &rest[n..];
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if groups.is_empty() {
                out.push(path);
            } else {
                out.extend(groups);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(path: &ModPath, modules: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == w).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(w.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(w, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in graph.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(v, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

struct CrateTree {
    /// Sibling graphs: folder -> (child -> children it uses).
    folders: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>>,
    /// (file, product lines)
    sizes: Vec<(PathBuf, usize)>,
}

fn read_crate(root: &Path) -> CrateTree {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(root, f)).collect();
    let mut folders: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut sizes = Vec::new();
    for f in &files {
        // Binaries are crates of their own.
        if f.strip_prefix(root).unwrap().starts_with("bin") {
            continue;
        }
        let here = module_of(root, f);
        let src = std::fs::read_to_string(f).unwrap();
        let (lines, code) = product_code(&src);
        sizes.push((f.clone(), lines));
        for r in references(&code, &here) {
            let to = resolve(&r, &modules);
            let common = here.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == here.len() || common == to.len() {
                continue; // an ancestor or a descendant
            }
            folders
                .entry(here[..common].to_vec())
                .or_default()
                .entry(here[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    CrateTree { folders, sizes }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut cycles = Vec::new();
    let mut edges = 0;
    for c in CRATES {
        let tree = read_crate(&workspace().join(c));
        for (folder, graph) in &tree.folders {
            edges += graph.values().map(BTreeSet::len).sum::<usize>();
            if let Some(cycle) = find_cycle(graph) {
                cycles.push(format!("{c}/{}: {}", folder.join("/"), cycle.join(" -> ")));
            }
        }
    }
    // The reader must see the imports it checks, or it checks nothing.
    assert!(edges > 50, "only {edges} imports between modules were read");
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("query")).unwrap();
    std::fs::write(root.join("lib.rs"), "pub mod a;\npub mod query;\n").unwrap();
    std::fs::write(root.join("a.rs"), "use crate::query::{scan::Scan, x};\n").unwrap();
    std::fs::write(root.join("query/mod.rs"), "pub mod scan;\npub mod plan;\n").unwrap();
    std::fs::write(
        root.join("query/scan.rs"),
        "// use crate::a; in a comment\nuse super::plan::Plan;\n",
    )
    .unwrap();
    std::fs::write(root.join("query/plan.rs"), "fn f() { super::scan::g() }\n").unwrap();
    let tree = read_crate(root);
    let top = &tree.folders[&Vec::new()];
    assert_eq!(top["a"], BTreeSet::from(["query".to_string()]));
    assert!(!top.contains_key("query"), "a comment is not an import");
    let query = &tree.folders[&vec!["query".to_string()]];
    let cycle = find_cycle(query).expect("scan -> plan -> scan is a cycle");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    assert!(find_cycle(top).is_none());
}

#[test]
fn a_test_module_declared_elsewhere_does_not_end_the_product_code() {
    let src =
        "use a;\n#[cfg(test)]\nmod tests;\nfn f() {}\n#[cfg(test)]\nmod more {\n    fn t() {}\n}\n";
    let (lines, code) = product_code(src);
    assert_eq!(lines, 4);
    assert!(
        code.contains("fn f()") && !code.contains("fn t()"),
        "{code}"
    );
}

#[test]
fn no_product_file_is_over_1200_lines_outside_its_tests() {
    let mut big = Vec::new();
    let mut files = 0;
    for c in CRATES {
        for (f, lines) in read_crate(&workspace().join(c)).sizes {
            files += 1;
            if lines > MAX_LINES {
                big.push(format!("{}: {lines} lines", f.display()));
            }
        }
    }
    assert!(files > 40, "only {files} source files were read");
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        big.join("\n")
    );
}

/// The crate source folder a section of docs/architecture.md is about,
/// from its heading (`## Engine (`engine/src/`)...`), if any.
fn section_dir(heading: &str) -> Option<String> {
    let start = heading.find('`')? + 1;
    let len = heading[start..].find('`')?;
    let dir = &heading[start..start + len];
    dir.ends_with("src/").then(|| dir.to_string())
}

/// Every `.rs` path in a table row of docs/architecture.md, resolved to
/// the workspace (rows of a crate's section are relative to its `src/`).
fn documented_files(doc: &str) -> Vec<String> {
    let mut dir: Option<String> = None;
    let mut out = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            dir = section_dir(h);
            continue;
        }
        if !line.starts_with('|') {
            continue;
        }
        for (i, token) in line.split('`').enumerate() {
            if i % 2 == 0 || !token.ends_with(".rs") || token.contains(' ') {
                continue;
            }
            let path = match &dir {
                Some(d) if !token.starts_with("src/") && !token.starts_with("../") => {
                    format!("{d}{token}")
                }
                _ => token.to_string(),
            };
            out.push(path);
        }
    }
    out
}

#[test]
fn docs_architecture_names_every_file_and_only_files_that_exist() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let listed: BTreeSet<String> = documented_files(&doc).into_iter().collect();
    assert!(listed.len() > 40, "only {} files listed", listed.len());
    let missing: Vec<_> = listed.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names files that do not exist: {missing:?}"
    );
    let mut unlisted = Vec::new();
    for c in ["engine/src", "coordinator/src", "sql/src"] {
        let mut files = Vec::new();
        rust_files(&root.join(c), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let name = f.file_name().unwrap().to_string_lossy();
            let plumbing = matches!(
                name.as_ref(),
                "lib.rs" | "mod.rs" | "tests.rs" | "testing.rs"
            );
            if !plumbing && !listed.contains(&rel) {
                unlisted.push(rel);
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "docs/architecture.md does not say what these hold: {unlisted:?}"
    );
}
