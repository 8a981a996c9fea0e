//! No import cycles between the modules of the library, the `sageattn` tool and the bench.
//!
//! For each crate root that `Cargo.toml` names (`[lib]` and every `[[bin]]`), this test walks the
//! module tree (`mod x;`, with `#[path]`), reads every `crate::…`, `super::…`, `self::…` path and
//! every path that starts with a child module's name (in `use` items and in code; comments and
//! strings are skipped), resolves it to the module that defines it (the longest known module
//! prefix; `crate::some_macro!` to the module holding the `#[macro_export]` macro) and adds an edge
//! from the importing module to that one. Inline modules (`mod tests { … }`) count as their file's
//! module. A path through a parent's re-export is an edge to the parent, so a child that imports
//! `crate::Error` instead of `crate::types::error::Error` closes a cycle with the crate root: import
//! from the defining module.
//!
//! On failure the message lists each cycle's modules and the import lines that form it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A token of Rust source, with its line.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Splits Rust source into identifiers, string literals, `::` and single punctuation; comments,
/// numbers, char literals and lifetimes are dropped.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let ident_start = |ch: char| ch.is_alphabetic() || ch == '_';
    let ident_char = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied().unwrap_or('\0');
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"'
            || ((ch == 'r' || ch == 'b') && (next == '"' || next == '#' || next == 'r'))
        {
            // "…", b"…", r"…", r#"…"#, br"…"
            let start_line = line;
            let mut j = i;
            if c[j] == 'b' {
                j += 1;
            }
            let raw = c.get(j) == Some(&'r');
            if raw {
                j += 1;
            }
            let mut hashes = 0;
            while raw && c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                // An identifier such as `r` or `br` followed by something else.
                let s = i;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                out.push((Tok::Ident(c[s..i].iter().collect()), line));
                continue;
            }
            j += 1;
            let mut text = String::new();
            loop {
                if j >= c.len() {
                    break;
                }
                if !raw && c[j] == '\\' {
                    text.push(c[j]);
                    if let Some(&e) = c.get(j + 1) {
                        text.push(e);
                        line += usize::from(e == '\n');
                    }
                    j += 2;
                    continue;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(c[j] == '\n');
                text.push(c[j]);
                j += 1;
            }
            out.push((Tok::Str(text), start_line));
            i = j;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\'') or a lifetime ('a, 'static).
            if next == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ident_start(ch) {
            let s = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let mut word: String = c[s..i].iter().collect();
            if word == "r" && c.get(i) == Some(&'#') {
                // Raw identifier r#name.
                let s = i + 1;
                i = s;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                word = c[s..i].iter().collect();
            }
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (ident_char(c[i])
                    || c[i] == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
        } else if ch == ':' && next == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&(Tok, usize)>, want: &Tok) -> bool {
    t.is_some_and(|(x, _)| x == want)
}

/// One module of a crate: its file and tokens.
struct Module {
    file: PathBuf,
    toks: Vec<(Tok, usize)>,
}

/// Module path (`""` for the crate root, `"a::b"` below it) → module.
type Tree = BTreeMap<String, Module>;

/// The `#[path = "…"]` attribute in front of token `at` (a `mod` keyword), if any.
fn path_attribute(toks: &[(Tok, usize)], at: usize) -> Option<String> {
    let mut i = at;
    // Skip the visibility: pub, pub(crate), pub(super), pub(in path).
    while i > 0 {
        match &toks[i - 1].0 {
            Tok::Ident(w) if w == "pub" || w == "crate" || w == "super" || w == "in" => i -= 1,
            Tok::Punct('(') | Tok::Punct(')') | Tok::PathSep => i -= 1,
            _ => break,
        }
    }
    // Attributes: `# [ … ]`, read backwards.
    while i > 0 && toks[i - 1].0 == Tok::Punct(']') {
        let end = i - 1;
        let mut depth = 0;
        let mut j = end;
        loop {
            match toks[j].0 {
                Tok::Punct(']') => depth += 1,
                Tok::Punct('[') => depth -= 1,
                _ => {}
            }
            if depth == 0 || j == 0 {
                break;
            }
            j -= 1;
        }
        let attr = &toks[j + 1..end];
        if let [(Tok::Ident(name), _), (Tok::Punct('='), _), (Tok::Str(p), _)] = attr {
            if name == "path" {
                return Some(p.clone());
            }
        }
        if j == 0 || toks[j - 1].0 != Tok::Punct('#') {
            break;
        }
        i = j - 1;
    }
    None
}

/// Loads `file` as module `path` and, recursively, every file module it declares. `dir_owner`:
/// whether `mod x;` inside it looks for `x.rs` next to the file (crate roots, `mod.rs` files and
/// files loaded through `#[path]`) rather than in a folder named after the file.
fn load(tree: &mut Tree, path: String, file: PathBuf, dir_owner: bool) {
    let src = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let toks = lex(&src);
    let dir = file.parent().unwrap().to_path_buf();
    let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
    let mut children = Vec::new();
    for i in 0..toks.len() {
        if ident(toks.get(i)) != Some("mod") {
            continue;
        }
        let (Some(name), true) = (
            ident(toks.get(i + 1)),
            is(toks.get(i + 2), &Tok::Punct(';')),
        ) else {
            continue;
        };
        let (child_file, child_owner) = match path_attribute(&toks, i) {
            Some(p) => (dir.join(p), true),
            None => {
                let base = if dir_owner {
                    dir.clone()
                } else {
                    dir.join(&stem)
                };
                let flat = base.join(format!("{name}.rs"));
                if flat.exists() {
                    (flat, false)
                } else {
                    (base.join(name).join("mod.rs"), true)
                }
            }
        };
        let child = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}::{name}")
        };
        children.push((child, child_file, child_owner));
    }
    tree.insert(path, Module { file, toks });
    for (child, child_file, owner) in children {
        load(tree, child, child_file, owner);
    }
}

/// The longest module of `tree` that `segments` (from the crate root) starts with.
fn resolve(tree: &Tree, segments: &[String]) -> String {
    let mut best = String::new();
    let mut cur = String::new();
    for s in segments {
        cur = if cur.is_empty() {
            s.clone()
        } else {
            format!("{cur}::{s}")
        };
        if tree.contains_key(&cur) {
            best = cur.clone();
        } else {
            break;
        }
    }
    best
}

/// Every path of a use tree or an expression path starting at token `i` (just after the first
/// segment's `::`), appended to `prefix`. Returns the paths and whether the last segment is a
/// macro call (`name!`).
fn paths_at(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, bool)>,
) -> usize {
    let mut path = prefix;
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                i += 1;
                if is(toks.get(i), &Tok::PathSep) {
                    i += 1;
                    continue;
                }
                let is_macro = is(toks.get(i), &Tok::Punct('!'));
                out.push((path, is_macro));
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Punct('}')) | None => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(w)) if w == "self" => {
                            out.push((path.clone(), false));
                            i += 1;
                        }
                        Some(Tok::Ident(w)) if w == "as" => i += 2,
                        _ => i = paths_at(toks, i, path.clone(), out),
                    }
                }
            }
            _ => {
                // `*`, `<…>` (turbofish) or the end: the path so far.
                out.push((path, false));
                return i;
            }
        }
    }
}

/// An import edge: from module, to module, file and line of the path.
type Edge = (String, String, String, usize);

/// Every edge out of module `name`.
fn edges_of(tree: &Tree, macros: &BTreeMap<String, String>, name: &str) -> Vec<Edge> {
    let m = &tree[name];
    let toks = &m.toks;
    let own: Vec<String> = if name.is_empty() {
        vec![]
    } else {
        name.split("::").map(String::from).collect()
    };
    let child_names: BTreeSet<String> = tree
        .keys()
        .filter_map(|k| {
            let rest = if name.is_empty() {
                Some(k.as_str())
            } else {
                k.strip_prefix(name)?.strip_prefix("::")
            };
            rest.filter(|r| !r.is_empty() && !r.contains("::"))
                .map(String::from)
        })
        .collect();
    // Inline modules: (brace depth at which each one's body runs).
    let mut depth = 0usize;
    let mut inline: Vec<usize> = Vec::new();
    let mut pending_inline = false;
    let mut edges = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        let after_sep = i > 0 && toks[i - 1].0 == Tok::PathSep;
        let before_sep = is(toks.get(i + 1), &Tok::PathSep);
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                if pending_inline {
                    inline.push(depth);
                    pending_inline = false;
                }
            }
            Tok::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Punct(';') => pending_inline = false,
            Tok::Ident(w)
                if w == "mod"
                    && ident(toks.get(i + 1)).is_some()
                    && is(toks.get(i + 2), &Tok::Punct('{')) =>
            {
                pending_inline = true;
            }
            Tok::Ident(w) if !after_sep && before_sep => {
                // The base the path's first segment stands for, as segments from the crate root;
                // None for paths that stay inside this file or leave the crate.
                let mut start = i + 2;
                let base: Option<Vec<String>> = match w.as_str() {
                    "crate" => Some(vec![]),
                    "self" if inline.is_empty() => Some(own.clone()),
                    "self" => None,
                    "super" => {
                        let mut ups = 1;
                        while ident(toks.get(start)) == Some("super")
                            && is(toks.get(start + 1), &Tok::PathSep)
                        {
                            ups += 1;
                            start += 2;
                        }
                        if ups <= inline.len() {
                            None
                        } else {
                            let ups = ups - inline.len();
                            own.len().checked_sub(ups).map(|keep| own[..keep].to_vec())
                        }
                    }
                    child if inline.is_empty() && child_names.contains(child) => {
                        start = i;
                        Some(own.clone())
                    }
                    _ => None,
                };
                if let Some(base) = base {
                    let mut found = Vec::new();
                    let end = paths_at(toks, start, base, &mut found);
                    for (segments, is_macro) in found {
                        let target = match (is_macro, segments.last()) {
                            (true, Some(mac)) if macros.contains_key(mac) => macros[mac].clone(),
                            _ => resolve(tree, &segments),
                        };
                        if target != name {
                            edges.push((
                                name.to_string(),
                                target,
                                m.file.display().to_string(),
                                *line,
                            ));
                        }
                    }
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    edges
}

/// Modules holding each `#[macro_export] macro_rules! name` (such macros live at the crate root).
fn exported_macros(tree: &Tree) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, m) in tree {
        for (i, _) in m.toks.iter().enumerate() {
            if ident(m.toks.get(i)) == Some("macro_rules")
                && is(m.toks.get(i + 1), &Tok::Punct('!'))
            {
                if let Some(mac) = ident(m.toks.get(i + 2)) {
                    out.insert(mac.to_string(), name.clone());
                }
            }
        }
    }
    out
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(nodes: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(s: &mut State<'_>, v: &str) {
        s.index.insert(v.to_string(), s.next);
        s.low.insert(v.to_string(), s.next);
        s.next += 1;
        s.stack.push(v.to_string());
        s.on_stack.insert(v.to_string());
        let succ: Vec<String> = s
            .edges
            .get(v)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        for w in succ {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let l = s.low[v].min(s.low[&w]);
                s.low.insert(v.to_string(), l);
            } else if s.on_stack.contains(&w) {
                let l = s.low[v].min(s.index[&w]);
                s.low.insert(v.to_string(), l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(&w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The module tree of the crate rooted at `root`, every import edge, and the cycles, described.
fn check_crate(root: &Path) -> (Tree, Vec<Edge>, Vec<String>) {
    let mut tree = Tree::new();
    load(&mut tree, String::new(), root.to_path_buf(), true);
    let macros = exported_macros(&tree);
    let names: Vec<String> = tree.keys().cloned().collect();
    let mut all: Vec<Edge> = names
        .iter()
        .flat_map(|n| edges_of(&tree, &macros, n))
        .collect();
    all.dedup();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to, _, _) in &all {
        graph.entry(from.clone()).or_default().insert(to.clone());
    }
    let shown = |m: &str| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.to_string()
        }
    };
    let problems = cycles(&names, &graph)
        .into_iter()
        .map(|scc| {
            let mut text = format!(
                "{}: cycle between {}",
                root.display(),
                scc.iter().map(|m| shown(m)).collect::<Vec<_>>().join(", ")
            );
            for (from, to, file, line) in &all {
                if scc.contains(from) && scc.contains(to) {
                    text += &format!("\n    {file}:{line}: {} imports {}", shown(from), shown(to));
                }
            }
            text
        })
        .collect();
    (tree, all, problems)
}

/// `[lib] path` and every `[[bin]] path` of the package's Cargo.toml.
fn crate_roots(manifest_dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(manifest_dir.join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut roots = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[lib]" || section == "[[bin]]" {
            if let Some(p) = line
                .strip_prefix("path")
                .map(str::trim)
                .and_then(|r| r.strip_prefix('='))
            {
                roots.push(manifest_dir.join(p.trim().trim_matches('"')));
            }
        }
    }
    roots
}

#[test]
fn host_library_tool_and_bench_modules_import_each_other_without_cycles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let roots = crate_roots(dir);
    assert!(
        roots.len() >= 3,
        "expected the library and two binaries, found {roots:?}"
    );
    let mut problems = Vec::new();
    for root in &roots {
        let (tree, edges, found) = check_crate(root);
        assert!(
            tree.len() > 1 && !edges.is_empty(),
            "{}: no modules or imports found",
            root.display()
        );
        problems.extend(found);
    }
    assert!(
        problems.is_empty(),
        "import cycles:\n{}",
        problems.join("\n")
    );
}

/// The library's layers, bottom first: a module may import its own layer and the ones below. The
/// CPU reference needs nothing but the shared constants; the tools' file reader needs the
/// reference's host tensor and the value types.
const LAYERS: &[&[&str]] = &[
    &["types", "device_config", "params", "reference"],
    &["device", "tensor_file"],
    &["launch"],
    &["attention", "varlen"],
    &["ring"],
];

#[test]
fn library_layers_import_only_downwards() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (_, edges, _) = check_crate(&dir.join("host/lib.rs"));
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap_or("");
        LAYERS.iter().position(|l| l.contains(&top))
    };
    let upward: Vec<String> = edges
        .iter()
        .filter(|(from, to, _, _)| matches!((layer(from), layer(to)), (Some(a), Some(b)) if b > a))
        .map(|(from, to, file, line)| format!("{file}:{line}: {from} imports {to}"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one:\n{}",
        upward.join("\n")
    );
}

/// The checker itself: it finds a cycle through `super::`, a child path and a parent re-export, and
/// ignores `super::*` in an inline test module, comments and strings.
#[test]
fn the_checker_finds_cycles_and_ignores_what_is_no_import() {
    let dir = tempfile::tempdir().unwrap();
    let write = |p: &str, s: &str| {
        let path = dir.path().join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, s).unwrap();
    };
    write(
        "lib.rs",
        "mod a;\n#[path = \"x/b_file.rs\"]\nmod b;\npub use a::A;\n",
    );
    write("a.rs", "pub struct A;\nmod c;\npub use c::C;\n// use crate::b::B;\nconst S: &str = \"crate::b::B\";\n");
    write(
        "a/c.rs",
        "pub struct C;\nuse super::super::b::B;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    write(
        "x/b_file.rs",
        "pub struct B;\nfn f() { let _ = crate::A; }\n",
    );
    let (tree, edges, problems) = check_crate(&dir.path().join("lib.rs"));
    assert_eq!(
        tree.keys().cloned().collect::<Vec<_>>(),
        ["", "a", "a::c", "b"]
    );
    let pairs: BTreeSet<(String, String)> = edges
        .iter()
        .map(|(f, t, _, _)| (f.clone(), t.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [("", "a"), ("a", "a::c"), ("a::c", "b"), ("b", "")]
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    assert_eq!(pairs, want);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("cycle between crate, a, a::c, b"),
        "{}",
        problems[0]
    );

    // Without the root's re-export and a's `pub use` (declaring `mod c;` is no import) there is
    // no cycle, though b imports a and c imports b.
    write("lib.rs", "mod a;\n#[path = \"x/b_file.rs\"]\nmod b;\n");
    write("a.rs", "pub struct A;\nmod c;\n");
    write(
        "x/b_file.rs",
        "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
    );
    let (_, _, problems) = check_crate(&dir.path().join("lib.rs"));
    assert!(problems.is_empty(), "{problems:?}");
}
