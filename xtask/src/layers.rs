//! The layering rule of `tcp-trace/src`, checked by `cargo xtask lint`: the top-level modules
//! in the order an event travels (the map in `lib.rs`), each using only those before it; and
//! inside a module, no two files using each other. Read from the source text: every `crate::`
//! path (in `use` trees and in code) and every `super::` path, test modules left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The data path, first to last. A module may use those before it, never those after it.
const ORDER: [&str; 9] = [
    "event",
    "kernel",
    "engine",
    "host",
    "stuck",
    "recording",
    "output",
    "commands",
    "cli",
];

/// Test-only modules, outside the layers.
const TEST_ONLY: [&str; 1] = ["testkit"];

type Module = Vec<String>;

/// Checks `src`; every violation in one error.
pub fn check(src: &Path) -> Result<()> {
    let mut refs: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in rust_files(src)? {
        let module = module_of(src, &file);
        if module.is_empty() || TEST_ONLY.contains(&module[0].as_str()) {
            continue;
        }
        let text = fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        let code = without_tests_and_comments(&text);
        let parent = &module[..module.len() - 1];
        let mut paths = paths_after(&code, "crate::");
        for p in paths_after(&code, "super::") {
            paths.push(parent.iter().cloned().chain(p).collect());
        }
        refs.entry(module).or_default().extend(paths);
    }
    let known: BTreeSet<Module> = refs.keys().cloned().collect();
    let owner = |p: &Module| {
        (1..=p.len())
            .rev()
            .map(|n| p[..n].to_vec())
            .find(|m| known.contains(m))
    };
    let mut errors = Vec::new();
    let mut inner: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, paths) in &refs {
        let Some(rank) = ORDER.iter().position(|m| *m == from[0]) else {
            errors.push(format!(
                "module `{}` is not in xtask's layer list (xtask/src/layers.rs)",
                from[0]
            ));
            continue;
        };
        for to in paths.iter().filter_map(owner) {
            if to[0] != from[0] {
                if ORDER.iter().position(|m| *m == to[0]) > Some(rank) {
                    errors.push(format!(
                        "`{}` uses `{}`, which comes after it on the data path",
                        from.join("::"),
                        to.join("::")
                    ));
                }
            } else if to.len() > 1 || from.len() > 1 {
                let (a, b) = (
                    from[..from.len().min(2)].to_vec(),
                    to[..to.len().min(2)].to_vec(),
                );
                if a != b {
                    inner.entry(a).or_default().insert(b);
                }
            }
        }
    }
    for (a, uses) in &inner {
        for b in uses {
            if a < b && inner.get(b).is_some_and(|u| u.contains(a)) {
                errors.push(format!(
                    "`{}` and `{}` use each other",
                    a.join("::"),
                    b.join("::")
                ));
            }
        }
    }
    if !errors.is_empty() {
        bail!("layering of tcp-trace/src:\n  {}", errors.join("\n  "));
    }
    println!(
        "xtask: layering ok ({} modules; {})",
        refs.len(),
        ORDER.join(" → ")
    );
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}

/// `src/a/mod.rs` → `a`, `src/a/b.rs` → `a::b`; `lib.rs` and `main.rs` → the root (empty).
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

/// The code before the file's test module, with `//` comments removed.
fn without_tests_and_comments(text: &str) -> String {
    let code = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    code.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that follows `prefix`, use-tree groups expanded: `crate::{a::{b, c}, d}` gives
/// `a::b`, `a::c`, `d`.
fn paths_after(code: &str, prefix: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let word_start = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        rest = &rest[i + prefix.len()..];
        if word_start {
            tree(rest, Vec::new(), &mut out);
        }
    }
    out
}

/// Parses one use tree at the start of `s` (after some prefix `at`) into `out`; returns the
/// text after it.
fn tree<'a>(s: &'a str, at: Module, out: &mut Vec<Module>) -> &'a str {
    let s = s.trim_start();
    if let Some(mut s) = s.strip_prefix('{') {
        loop {
            s = tree(s, at.clone(), out).trim_start();
            match s.chars().next() {
                Some(',') => s = &s[1..],
                Some('}') => return &s[1..],
                _ => return s,
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    if end == 0 {
        if !at.is_empty() {
            out.push(at);
        }
        return s;
    }
    let mut path = at;
    if &s[..end] != "self" {
        path.push(s[..end].to_string());
    }
    match s[end..].strip_prefix("::") {
        Some(next) => tree(next, path, out),
        None => {
            out.push(path);
            &s[end..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[Module]) -> Vec<String> {
        v.iter().map(|m| m.join("::")).collect()
    }

    #[test]
    fn use_trees_expand() {
        let code = "use crate::{a::{self, b::C, d}, e::F};\nlet x = crate::g::h(1); my_crate::z;";
        assert_eq!(
            strs(&paths_after(code, "crate::")),
            ["a", "a::b::C", "a::d", "e::F", "g::h"]
        );
    }
}
