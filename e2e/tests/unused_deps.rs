//! Fails when a workspace crate declares a dependency its sources never use
//! (run first by `.ci/run`; the check itself is `sozu_e2e::deps`).

use std::path::Path;

use sozu_e2e::deps::{check_workspace, Allowed, Finding, Table};

/// Dependencies used where a text search of the sources cannot see them.
const ALLOWED: &[Allowed] = &[Allowed {
    krate: "sozu-command-lib",
    dependency: "serde",
    reason: "the generated protobuf types derive serde::Serialize/Deserialize \
             (attributes added by build.rs, code in OUT_DIR)",
}];

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the workspace root")
}

#[test]
fn every_declared_dependency_is_used() {
    for allowed in ALLOWED {
        assert!(!allowed.reason.is_empty(), "{allowed:?} needs a reason");
    }
    let findings = check_workspace(workspace_root(), ALLOWED).expect("read the workspace");
    let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        report.is_empty(),
        "unused dependencies:\n{}",
        report.join("\n")
    );
}

/// Writes a one-crate workspace whose manifest is `manifest` and whose
/// sources are `files` (path relative to the crate, text).
fn planted(manifest: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\"planted\"]\n",
    )
    .expect("write the workspace manifest");
    let krate = dir.path().join("planted");
    std::fs::create_dir_all(krate.join("src")).expect("create src");
    std::fs::write(krate.join("Cargo.toml"), manifest).expect("write the manifest");
    for (path, text) in files {
        let path = krate.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
        std::fs::write(path, text).expect("write a source");
    }
    dir
}

#[test]
fn a_planted_unused_dependency_is_reported() {
    let dir = planted(
        "[package]\nname = \"planted\"\n\n\
         [dependencies]\nused-dep = \"1\"\nplanted-unused = \"1\"\nnamed-in-a-comment.workspace = true\n\n\
         [dev-dependencies]\ntest-only = \"1\"\nunused-dev = \"1\"\n\n\
         [build-dependencies]\nbuild-dep = \"1\"\nunused-build = \"1\"\n",
        &[
            (
                "src/lib.rs",
                "//! Uses named_in_a_comment::x only in prose.\n\
                 pub fn f() -> u32 { used_dep::value() }\n\
                 #[cfg(test)]\nmod tests { use test_only::Thing; }\n",
            ),
            ("build.rs", "fn main() { build_dep::run(); }\n"),
        ],
    );
    let findings = check_workspace(dir.path(), &[]).expect("read the planted workspace");
    let unused = |table, dependency: &str| Finding {
        krate: "planted".to_owned(),
        table,
        dependency: dependency.to_owned(),
        only_in_tests: false,
    };
    assert_eq!(
        findings,
        vec![
            unused(Table::Normal, "named-in-a-comment"),
            unused(Table::Normal, "planted-unused"),
            unused(Table::Dev, "unused-dev"),
            unused(Table::Build, "unused-build"),
        ]
    );
    // The allow-list silences exactly the entry it names.
    let allowed = [Allowed {
        krate: "planted",
        dependency: "planted-unused",
        reason: "test",
    }];
    let findings = check_workspace(dir.path(), &allowed).expect("read again");
    assert!(!findings.iter().any(|f| f.dependency == "planted-unused"));
    assert_eq!(findings.len(), 3);
}

#[test]
fn a_normal_dependency_used_only_by_tests_is_reported_as_such() {
    let dir = planted(
        "[package]\nname = \"planted\"\n\n[dependencies]\nprost = \"1\"\n",
        &[
            ("src/main.rs", "#[cfg(test)]\nmod tests;\nfn main() {}\n"),
            ("src/tests.rs", "use prost::Message;\n"),
        ],
    );
    let findings = check_workspace(dir.path(), &[]).expect("read the planted workspace");
    assert_eq!(
        findings,
        vec![Finding {
            krate: "planted".to_owned(),
            table: Table::Normal,
            dependency: "prost".to_owned(),
            only_in_tests: true,
        }]
    );
}
