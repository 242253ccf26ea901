//! `cargo xtask layout`: the exporter's module graph, read from the
//! `crate::…`, `super::…` and `self::…` paths of `geoip-user/src`, and the
//! rules it keeps, which a unit test holds it to:
//! - no import circle between any two modules, down to files; a parent's
//!   `mod` declarations count as its arrows to its children, so a child
//!   that imports its parent's own items is an arrow back up, a circle;
//! - between the crate's top-level modules, imports point only to modules
//!   that `lib.rs`'s "# Layout" names earlier, and it names every one.
//!
//! Test modules (`#[cfg(test)] mod … { … }` and `tests.rs` files) are left
//! out: they may reach anything they test.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// A module's path from the crate root (`["kernel", "probe"]`).
type Module = Vec<String>;

/// Modules and which modules each one imports.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    modules: BTreeSet<Module>,
    edges: BTreeMap<Module, BTreeSet<Module>>,
    /// The top-level modules in the order `lib.rs`'s "# Layout" names them.
    layout: Vec<String>,
    /// The top-level modules `lib.rs` declares.
    declared: Vec<String>,
}

pub(crate) fn run() -> Result<()> {
    let src = crate::workspace_root().join("geoip-user/src");
    let graph = Graph::read(&src)?;
    print!("{}", graph.top_level());
    let problems = graph.problems();
    if !problems.is_empty() {
        bail!(
            "the module graph of {} breaks its rules:\n{}",
            src.display(),
            problems.join("\n")
        );
    }
    println!(
        "{} modules: no circle, every import points down the layout",
        graph.modules.len()
    );
    Ok(())
}

impl Graph {
    /// Read the crate whose sources are under `src` (with `lib.rs`).
    pub(crate) fn read(src: &Path) -> Result<Self> {
        let mut files = Vec::new();
        collect(src, src, &mut files)?;
        let mut graph = Self {
            modules: files.iter().map(|(m, _)| m.clone()).collect(),
            ..Self::default()
        };
        for (module, path) in &files {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let code = without_tests(&strip(&text));
            let mut edges = BTreeSet::new();
            for child in declared(&code) {
                let mut to = module.clone();
                to.push(child);
                edges.insert(to);
            }
            for path in paths(&code) {
                if let Some(to) = resolve(&graph.modules, module, &path)
                    && &to != module
                {
                    edges.insert(to);
                }
            }
            graph.edges.insert(module.clone(), edges);
        }
        let lib = std::fs::read_to_string(src.join("lib.rs")).context("reading lib.rs")?;
        let lib = strip_keeping_docs(&lib);
        graph.layout = layout_order(&lib);
        graph.declared = declared(&without_tests(&strip(&lib)));
        Ok(graph)
    }

    /// What breaks the rules, one line each.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .declared
            .iter()
            .filter(|m| !self.layout.contains(m))
            .map(|m| format!("lib.rs's # Layout does not name the module {m}"))
            .collect();
        let rank = |m: &Module| {
            m.first()
                .and_then(|top| self.layout.iter().position(|l| l == top))
        };
        for (from, tos) in &self.edges {
            for to in tos {
                if from.first() == to.first() {
                    continue;
                }
                if let (Some(a), Some(b)) = (rank(from), rank(to))
                    && b >= a
                {
                    problems.push(format!(
                        "{} imports {}, which the layout names after it",
                        show(from),
                        show(to)
                    ));
                }
            }
        }
        problems.extend(self.circles().into_iter().map(|c| {
            format!(
                "import circle: {}",
                c.iter().map(show).collect::<Vec<_>>().join(" -> ")
            )
        }));
        problems
    }

    /// Each circle found, as the modules on it (the first again at the end).
    fn circles(&self) -> Vec<Vec<Module>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        fn visit(
            graph: &Graph,
            at: &Module,
            marks: &mut BTreeMap<Module, Mark>,
            stack: &mut Vec<Module>,
            out: &mut Vec<Vec<Module>>,
        ) {
            marks.insert(at.clone(), Mark::Open);
            stack.push(at.clone());
            for next in graph.edges.get(at).into_iter().flatten() {
                match marks.get(next).copied().unwrap_or(Mark::New) {
                    Mark::New => visit(graph, next, marks, stack, out),
                    Mark::Open => {
                        let start = stack.iter().position(|m| m == next).unwrap_or(0);
                        let mut circle = stack[start..].to_vec();
                        circle.push(next.clone());
                        out.push(circle);
                    }
                    Mark::Done => {}
                }
            }
            stack.pop();
            marks.insert(at.clone(), Mark::Done);
        }
        let mut marks = BTreeMap::new();
        let mut out = Vec::new();
        for module in &self.modules {
            if marks.get(module).copied().unwrap_or(Mark::New) == Mark::New {
                visit(self, module, &mut marks, &mut Vec::new(), &mut out);
            }
        }
        out
    }

    /// The top-level modules in layout order, each with those it imports.
    pub(crate) fn top_level(&self) -> String {
        let mut imports: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (from, tos) in &self.edges {
            for to in tos {
                if let (Some(a), Some(b)) = (from.first(), to.first())
                    && a != b
                {
                    imports.entry(a).or_default().insert(b);
                }
            }
        }
        let mut out = String::new();
        for module in &self.layout {
            let used: Vec<&str> = imports
                .get(module.as_str())
                .into_iter()
                .flatten()
                .copied()
                .collect();
            let _ = writeln!(out, "{module:<13} -> {}", used.join(" "));
        }
        out
    }
}

fn show(module: &Module) -> String {
    module.join("::")
}

/// Every source file under `dir` with its module path; `lib.rs`, `main.rs`
/// and `tests.rs` files left out.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(Module, std::path::PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect(src, &path, out)?;
            continue;
        }
        let Ok(rel) = path.strip_prefix(src) else {
            continue;
        };
        let mut module: Module = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        match module.last().map(String::as_str) {
            _ if path.extension().is_none_or(|e| e != "rs") => continue,
            Some("tests") => continue,
            Some("mod") => {
                module.pop();
            }
            Some("lib" | "main") if module.len() == 1 => continue,
            _ => {}
        }
        out.push((module, path));
    }
    Ok(())
}

/// The module a `path` (its segments) used in `from` names: the longest
/// prefix of it that is a module; `None` for the crate root's own items.
fn resolve(modules: &BTreeSet<Module>, from: &Module, path: &[String]) -> Option<Module> {
    let mut absolute: Module = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self" | "super") => from.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        absolute.pop();
        while rest.first().is_some_and(|s| s == "super") {
            absolute.pop();
            rest = &rest[1..];
        }
    }
    absolute.extend(rest.iter().cloned());
    (1..=absolute.len())
        .rev()
        .map(|n| absolute[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// The names of the `mod NAME;` declarations in `code`.
fn declared(code: &str) -> Vec<String> {
    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .filter(|w| w[0] == "mod" && w[1].ends_with(';'))
        .map(|w| w[1].trim_end_matches(';').to_owned())
        .collect()
}

/// Every path in `code` that starts with `crate`, `super` or `self`
/// followed by `::`, use trees (`a::{b, c::d}`) expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        if starts_word && is_ident(chars[i]) {
            let word: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
            if matches!(word.as_str(), "crate" | "super" | "self")
                && chars.get(i + word.len()..i + word.len() + 2) == Some(&[':', ':'])
            {
                let mut at = i;
                tree(&chars, &mut at, Vec::new(), &mut out);
                i = at.max(i + 1);
                continue;
            }
            i += word.len();
            continue;
        }
        i += 1;
    }
    out
}

/// Parse the path or use tree at `at` below `prefix` onto `out`.
fn tree(chars: &[char], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_space(chars, at);
        if chars.get(*at) == Some(&'{') {
            *at += 1;
            loop {
                skip_space(chars, at);
                match chars.get(*at) {
                    Some('}') => {
                        *at += 1;
                        return;
                    }
                    Some(',') => *at += 1,
                    None => return,
                    _ => tree(chars, at, path.clone(), out),
                }
            }
        }
        let word: String = chars[*at..].iter().take_while(|c| is_ident(**c)).collect();
        if word.is_empty() {
            out.push(path);
            return;
        }
        *at += word.len();
        path.push(word);
        skip_space(chars, at);
        if chars.get(*at..*at + 2) == Some(&[':', ':']) {
            *at += 2;
        } else {
            out.push(path);
            return;
        }
    }
}

fn skip_space(chars: &[char], at: &mut usize) {
    while chars.get(*at).is_some_and(|c| c.is_whitespace()) {
        *at += 1;
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `code` without the blocks of `#[cfg(test)] mod NAME { … }`.
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_block = trimmed.starts_with("mod ")
            && trimmed
                .split_once(['{', ';'])
                .is_some_and(|(head, _)| trimmed.as_bytes().get(head.len()) == Some(&b'{'));
        if !is_block {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap_or(after.len());
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `text` with comments, strings and character literals blanked out.
fn strip(text: &str) -> String {
    blank(text, false)
}

/// `text` with strings blanked out but comments kept (the layout is in
/// `//!` lines).
fn strip_keeping_docs(text: &str) -> String {
    blank(text, true)
}

fn blank(text: &str, keep_comments: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[i..]
                .iter()
                .position(|c| *c == '\n')
                .map_or(chars.len(), |p| i + p);
            if keep_comments {
                out.extend(&chars[i..end]);
            }
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(chars[i - 1]))
        {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body = i + 2 + hashes;
            i = (body..chars.len())
                .find(|&j| chars[j..].starts_with(&close))
                .map_or(chars.len(), |j| j + close.len());
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n'), or a lifetime ('a).
            let literal = next == Some('\\') || chars.get(i + 2) == Some(&'\'');
            if literal {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '\'' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                i = j + 1;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The top-level modules the "# Layout" section of `lib` names, as
/// `` [`name`] `` links, in the order it first names them.
fn layout_order(lib: &str) -> Vec<String> {
    let section: String = lib
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .skip_while(|l| l.trim() != "# Layout")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out: Vec<String> = Vec::new();
    for piece in section.split("[`").skip(1) {
        let Some(name) = piece.split("`]").next() else {
            continue;
        };
        let top = name.split("::").next().unwrap_or(name);
        if !top.is_empty() && top.chars().all(is_ident) && !out.iter().any(|m| m == top) {
            out.push(top.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The exporter as it is.
    #[test]
    fn the_exporters_modules_form_a_pipeline() {
        let src = crate::workspace_root().join("geoip-user/src");
        let graph = Graph::read(&src).unwrap();
        assert!(graph.modules.len() > 40, "{:?}", graph.modules);
        let problems = graph.problems();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_eq!(graph.layout.first().map(String::as_str), Some("error"));
        assert_eq!(graph.layout.last().map(String::as_str), Some("fuzz"));
    }

    fn crate_of(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-layout-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    /// What the rules are for: each breach is named.
    #[test]
    fn circles_arrows_up_and_unlisted_modules_are_found() {
        let lib = "//! # Layout\n//! - [`low`], then [`high`].\n//!\n//! # Other\n//! [`x`]\nmod low;\nmod high;\nmod stray;\n";
        let src = crate_of(&[
            ("lib.rs", lib),
            // An arrow up the layout, and a circle with `high`.
            ("low.rs", "use crate::high::Thing;\n"),
            (
                "high/mod.rs",
                "mod part;\npub(crate) use part::Part;\npub(crate) struct Thing;\nfn f() { crate::low::g(); }\n",
            ),
            // A child that imports its parent's own item.
            (
                "high/part.rs",
                "use super::Thing;\n// use crate::nothing;\nconst S: &str = \"crate::stray::X\";\n",
            ),
            (
                "stray.rs",
                "#[cfg(test)]\nmod tests {\n    use crate::high::Thing;\n}\n",
            ),
        ]);
        let graph = Graph::read(&src).unwrap();
        let problems = graph.problems().join("\n");
        assert!(
            problems.contains("does not name the module stray"),
            "{problems}"
        );
        assert!(
            problems.contains("low imports high, which the layout names after it"),
            "{problems}"
        );
        assert!(
            problems.contains("import circle: high -> high::part -> high"),
            "{problems}"
        );
        assert!(
            problems.contains("import circle: high -> low -> high")
                || problems.contains("import circle: low -> high -> low"),
            "{problems}"
        );
        assert!(
            !graph.edges[&vec!["stray".to_owned()]].contains(&vec!["high".to_owned()]),
            "test modules are left out"
        );
        assert!(
            !graph.edges[&vec!["high".to_owned(), "part".to_owned()]]
                .contains(&vec!["stray".to_owned()]),
            "strings and comments are not paths"
        );
        std::fs::remove_dir_all(&src).unwrap();
    }

    #[test]
    fn use_trees_expand() {
        let found = paths("use crate::{a::{b, c::D}, e};\nlet x = super::super::f::g();");
        let show: Vec<String> = found.iter().map(|p| p.join("::")).collect();
        assert_eq!(
            show,
            [
                "crate::a::b",
                "crate::a::c::D",
                "crate::e",
                "super::super::f::g"
            ]
        );
    }
}
