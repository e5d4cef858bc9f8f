//! The unused-dependency check run by `.ci/run` (`e2e/tests/unused_deps.rs`).
//!
//! Reads every workspace member's `Cargo.toml` and looks for each declared
//! dependency's identifier in that crate's Rust sources, with comments and
//! string literals stripped. It needs nothing but the Rust toolchain (no
//! `cargo install`, no nightly, no network), which is why it is a test and
//! not an external tool.
//!
//! What counts as a use of dependency `foo-bar`: `foo_bar::` anywhere, or
//! `use foo_bar` / `extern crate foo_bar`. Where each table must find it:
//! - `[dependencies]`: in the crate's non-test sources (under `src/`, minus
//!   modules behind `#[cfg(test)]`); found only in tests, it belongs in
//!   `[dev-dependencies]`;
//! - `[dev-dependencies]`: in any source of the crate;
//! - `[build-dependencies]`: in the build script.
//!
//! A dependency used only through something this cannot see (generated
//! code, a feature, a macro's expansion) goes into an [`Allowed`] list with
//! its reason. The check never edits anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A dependency the text search cannot see used, and why it is declared.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// The crate's package name (`sozu-command-lib`).
    pub krate: &'static str,
    /// The dependency's key in the manifest (`serde`).
    pub dependency: &'static str,
    /// Why it is declared although no source names it.
    pub reason: &'static str,
}

/// The manifest table a dependency is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`.
    Dev,
    /// `[build-dependencies]`.
    Build,
}

impl Table {
    fn key(self) -> &'static str {
        match self {
            Table::Normal => "dependencies",
            Table::Dev => "dev-dependencies",
            Table::Build => "build-dependencies",
        }
    }
}

/// One finding: a declared dependency in the wrong place or not used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The crate's package name.
    pub krate: String,
    /// Where it is declared.
    pub table: Table,
    /// The dependency's key in the manifest.
    pub dependency: String,
    /// `true`: only tests use it (a `[dependencies]` entry that should be a
    /// dev-dependency); `false`: nothing uses it.
    pub only_in_tests: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.only_in_tests {
            write!(
                f,
                "{}: `{}` in [{}] is used only by tests: move it to [dev-dependencies]",
                self.krate,
                self.dependency,
                self.table.key()
            )
        } else {
            write!(
                f,
                "{}: `{}` in [{}] is never used by the crate's sources: remove it (or allow-list it with a reason)",
                self.krate,
                self.dependency,
                self.table.key()
            )
        }
    }
}

/// Errors reading the workspace.
#[derive(Debug)]
pub struct CheckError(String);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckError {}

/// Checks every member of the workspace rooted at `root` (the directory of
/// the workspace `Cargo.toml`), returning the findings, sorted.
pub fn check_workspace(root: &Path, allowed: &[Allowed]) -> Result<Vec<Finding>, CheckError> {
    let manifest = read_toml(&root.join("Cargo.toml"))?;
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or_else(|| CheckError(format!("{}: no [workspace] members", root.display())))?;
    let mut findings = Vec::new();
    for member in members {
        let member = member
            .as_str()
            .ok_or_else(|| CheckError("a workspace member is not a string".to_owned()))?;
        findings.extend(check_crate(&root.join(member), allowed)?);
    }
    findings.sort();
    Ok(findings)
}

/// Checks one crate (the directory of its `Cargo.toml`).
pub fn check_crate(dir: &Path, allowed: &[Allowed]) -> Result<Vec<Finding>, CheckError> {
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| CheckError(format!("{}: no package name", dir.display())))?
        .to_owned();
    let sources = Sources::read(dir)?;
    let mut findings = Vec::new();
    for (table, dependency) in declared(&manifest) {
        if allowed
            .iter()
            .any(|a| a.krate == name && a.dependency == dependency)
        {
            continue;
        }
        let ident = library_name(&dependency);
        let in_normal = sources.normal.iter().any(|text| uses(text, &ident));
        let in_tests = sources.test.iter().any(|text| uses(text, &ident));
        let in_build = sources.build.iter().any(|text| uses(text, &ident));
        let finding = |only_in_tests| Finding {
            krate: name.clone(),
            table,
            dependency: dependency.clone(),
            only_in_tests,
        };
        match table {
            Table::Normal if !in_normal => findings.push(finding(in_tests)),
            Table::Dev if !in_normal && !in_tests => findings.push(finding(false)),
            Table::Build if !in_build => findings.push(finding(false)),
            _ => {}
        }
    }
    Ok(findings)
}

/// The name sources use for a package: its `[lib] name` where that differs
/// from the package name (the check reads no registry sources, so the few
/// such packages we depend on are listed), else the package name with `_`.
fn library_name(package: &str) -> String {
    const RENAMED: &[(&str, &str)] = &[("rustls-webpki", "webpki")];
    RENAMED
        .iter()
        .find(|(p, _)| *p == package)
        .map_or_else(|| package.replace('-', "_"), |(_, lib)| (*lib).to_owned())
}

fn read_toml(path: &Path) -> Result<toml::Table, CheckError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CheckError(format!("cannot read {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| CheckError(format!("cannot parse {}: {e}", path.display())))
}

/// Every declared dependency key with its table, including the
/// `[target.'cfg(..)'.*]` tables.
fn declared(manifest: &toml::Table) -> Vec<(Table, String)> {
    let mut tables = vec![manifest];
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        tables.extend(targets.values().filter_map(|t| t.as_table()));
    }
    let mut out = Vec::new();
    for t in tables {
        for table in [Table::Normal, Table::Dev, Table::Build] {
            if let Some(deps) = t.get(table.key()).and_then(|d| d.as_table()) {
                out.extend(deps.keys().map(|k| (table, k.clone())));
            }
        }
    }
    out
}

/// A crate's sources, comments and string literals stripped, by role.
struct Sources {
    /// Under `src/`, outside `#[cfg(test)]` modules.
    normal: Vec<String>,
    /// `tests/`, `benches/`, `examples/` and `#[cfg(test)]` modules.
    test: Vec<String>,
    /// `build.rs`.
    build: Vec<String>,
}

impl Sources {
    fn read(dir: &Path) -> Result<Self, CheckError> {
        let mut sources = Sources {
            normal: Vec::new(),
            test: Vec::new(),
            build: Vec::new(),
        };
        let build = dir.join("build.rs");
        if build.exists() {
            sources.build.push(strip(&read(&build)?));
        }
        let mut src = BTreeMap::new();
        collect(&dir.join("src"), &mut src)?;
        let test_files = cfg_test_files(&src);
        for (path, text) in &src {
            if test_files.contains(path) {
                sources.test.push(text.clone());
            } else {
                let (normal, test) = split_cfg_test_blocks(text);
                sources.normal.push(normal);
                sources.test.push(test);
            }
        }
        for sub in ["tests", "benches", "examples"] {
            let mut files = BTreeMap::new();
            collect(&dir.join(sub), &mut files)?;
            sources.test.extend(files.into_values());
        }
        Ok(sources)
    }
}

fn read(path: &Path) -> Result<String, CheckError> {
    std::fs::read_to_string(path)
        .map_err(|e| CheckError(format!("cannot read {}: {e}", path.display())))
}

/// Every `.rs` file under `dir` (absent: none), stripped.
fn collect(dir: &Path, out: &mut BTreeMap<PathBuf, String>) -> Result<(), CheckError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .map_err(|e| CheckError(format!("cannot list {}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = strip(&read(&path)?);
            out.insert(path, text);
        }
    }
    Ok(())
}

/// Files that are modules declared behind `#[cfg(test)]` (`mod tests;`),
/// and every file below them.
fn cfg_test_files(files: &BTreeMap<PathBuf, String>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (path, text) in files {
        let Some(parent) = path.parent() else {
            continue;
        };
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        // `mod x;` in lib.rs, main.rs or mod.rs names a sibling; in foo.rs,
        // a file in foo/.
        let module_dir = if matches!(stem, "lib" | "main" | "mod") {
            parent.to_path_buf()
        } else {
            parent.join(stem)
        };
        for module in cfg_test_module_decls(text) {
            let file = module_dir.join(format!("{module}.rs"));
            let dir = module_dir.join(&module);
            for candidate in files.keys() {
                if candidate == &file || candidate.starts_with(&dir) {
                    out.push(candidate.clone());
                }
            }
        }
    }
    out
}

/// Names of `mod x;` declarations carrying `#[cfg(test)]`.
fn cfg_test_module_decls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        rest = &rest[at + "#[cfg(test)]".len()..];
        if let Some(name) = module_after_attributes(rest) {
            let after = rest.trim_start();
            let after = skip_attributes(after);
            let after = after
                .strip_prefix("pub(crate) ")
                .or_else(|| after.strip_prefix("pub "))
                .unwrap_or(after);
            let after = after.strip_prefix("mod ").unwrap_or(after);
            if after[name.len()..].trim_start().starts_with(';') {
                out.push(name);
            }
        }
    }
    out
}

/// Skips further `#[...]` attributes.
fn skip_attributes(mut text: &str) -> &str {
    while text.starts_with("#[") {
        match text.find(']') {
            Some(end) => text = text[end + 1..].trim_start(),
            None => return text,
        }
    }
    text
}

/// The module name if `text` (after an attribute) declares a module.
fn module_after_attributes(text: &str) -> Option<String> {
    let text = skip_attributes(text.trim_start());
    let text = text
        .strip_prefix("pub(crate) ")
        .or_else(|| text.strip_prefix("pub "))
        .unwrap_or(text);
    let text = text.strip_prefix("mod ")?;
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Splits a stripped file into its text outside and inside inline
/// `#[cfg(test)] mod x { ... }` blocks.
fn split_cfg_test_blocks(text: &str) -> (String, String) {
    let mut normal = String::new();
    let mut test = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        normal.push_str(&rest[..at]);
        let after = &rest[at..];
        let is_block = module_after_attributes(&after["#[cfg(test)]".len()..]).is_some()
            && after
                .find('{')
                .is_some_and(|brace| after.find(';').is_none_or(|semicolon| brace < semicolon));
        if !is_block {
            normal.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        }
        // Strings and comments are stripped, so braces balance.
        let open = after.find('{').unwrap_or(0);
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
        test.push_str(&after[..end]);
        rest = &after[end..];
    }
    normal.push_str(rest);
    (normal, test)
}

/// `true` when the stripped `text` names crate `ident` as a path root or in
/// a `use` / `extern crate`.
pub fn uses(text: &str, ident: &str) -> bool {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = text[from..].find(ident) {
        let start = from + found;
        let end = start + ident.len();
        from = end;
        if start > 0 && is_ident(bytes[start - 1]) {
            continue;
        }
        if end < bytes.len() && is_ident(bytes[end]) {
            continue;
        }
        let before = text[..start].trim_end();
        if let Some(outer) = before.strip_suffix("::") {
            // `x::foo::y` is a path inside x, not crate foo; `::foo` is.
            if outer.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '>') {
                continue;
            }
        }
        if text[end..].trim_start().starts_with("::") {
            return true;
        }
        if ends_with_word(before, "use") || ends_with_word(before, "extern crate") {
            return true;
        }
    }
    false
}

fn ends_with_word(text: &str, word: &str) -> bool {
    text.strip_suffix(word)
        .is_some_and(|head| !head.ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Removes comments and the contents of string and char literals, so a
/// name in prose or in a string is not a use.
pub fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0usize;
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
                out.push(' ');
            }
            'r' if matches!(next, Some('"') | Some('#'))
                && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    // `r#ident`, not a raw string.
                    out.push(c);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    match chars.get(j) {
                        None => break,
                        Some('"') if (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) => {
                            j += 1 + hashes;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if next == Some('\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    out.push_str("' '");
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push(c);
                    i += 1;
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_looked_for_under_its_library_name() {
        assert_eq!(library_name("rustls-webpki"), "webpki");
        assert_eq!(library_name("tracing-subscriber"), "tracing_subscriber");
    }

    #[test]
    fn a_name_in_a_comment_or_string_is_not_a_use() {
        let text = strip("// libc::getpid\n/* nix::x */ let s = \"tokio::spawn\";\n");
        assert!(!uses(&text, "libc"));
        assert!(!uses(&text, "nix"));
        assert!(!uses(&text, "tokio"));
    }

    #[test]
    fn paths_uses_and_extern_crates_are_uses() {
        assert!(uses(&strip("let x = libc::getpid();"), "libc"));
        assert!(uses(&strip("use serde_json;"), "serde_json"));
        assert!(uses(&strip("use nix::unistd::Pid;"), "nix"));
        assert!(uses(&strip("extern crate slab;"), "slab"));
        assert!(uses(&strip("#[derive(serde::Serialize)]"), "serde"));
    }

    #[test]
    fn a_longer_name_or_an_inner_path_is_not_a_use() {
        assert!(!uses(&strip("serde_json::to_string(&x)"), "serde"));
        assert!(!uses(&strip("std::io::Error"), "io"));
        assert!(!uses(&strip("let libc_like = 1;"), "libc"));
    }

    #[test]
    fn raw_strings_lifetimes_and_chars_are_stripped_safely() {
        let text = strip(
            "fn f<'a>(x: &'a str) -> char { let _ = r#\"anyhow::x\"#; '{' }\nuse slab::Slab;",
        );
        assert!(!uses(&text, "anyhow"));
        assert!(uses(&text, "slab"));
    }

    #[test]
    fn inline_test_modules_are_split_off() {
        let text = strip("use a::x;\n#[cfg(test)]\nmod tests {\n    use b::y;\n    fn f() { if true { } }\n}\nuse c::z;\n");
        let (normal, test) = split_cfg_test_blocks(&text);
        assert!(uses(&normal, "a") && uses(&normal, "c") && !uses(&normal, "b"));
        assert!(uses(&test, "b"));
    }

    #[test]
    fn declared_test_modules_are_test_files() {
        assert_eq!(
            cfg_test_module_decls("#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod inline {}\n"),
            vec!["tests".to_owned()]
        );
    }
}
