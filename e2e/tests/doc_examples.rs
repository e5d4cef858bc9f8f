//! Every command example of `doc/cli.md` and `doc/getting_started.md` runs
//! against a live master, and what the doc shows is what the binary prints.
//!
//! Examples are read from the markdown itself: in fenced blocks (not
//! `json`/`python`), a `$ sozu …` line is a command and the lines after it
//! its output, with `$ echo $?` and the next line its exit code; a bare
//! `sozu …` line without placeholders (`ID`, `[…]`, `a|b`, `…`) is a command
//! whose output the doc does not show (it must exit 0). The ports of the
//! docs are mapped to free ones, `-c config.toml` and `$S` to the test's
//! master. Output lines must appear in order (the doc may show an
//! excerpt); a number in the doc matches any number (pids, counts), a path
//! any path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::sozu::{run_cli, CliOutput};
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, UdpBackend, UdpClient, UdpListener};

#[derive(Debug, Clone)]
struct Example {
    doc: &'static str,
    line: usize,
    command: String,
    /// Lines the doc shows after the command (empty: not shown).
    output: Vec<String>,
    /// The exit code the doc shows (`$ echo $?`), else 0.
    code: i32,
}

fn doc_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../doc")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A synopsis, not an example: placeholders or alternatives.
fn is_synopsis(command: &str) -> bool {
    let without_jq = command.split(" | jq ").next().unwrap_or(command);
    without_jq.contains('[')
        || without_jq.contains('|')
        || without_jq.contains('…')
        || without_jq.contains('<')
        || without_jq.split_whitespace().any(|w| {
            let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
}

/// `sozu start …`: the master each scenario already runs.
fn starts_a_master(command: &str) -> bool {
    words(command).get(1).is_some_and(|w| w == "start")
}

/// The examples of one doc, in order.
fn examples(doc: &'static str) -> Vec<Example> {
    let text = doc_text(doc);
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut runnable_block = false;
    let mut last_is_sozu = false;
    let mut expect_code = false;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if let Some(info) = line.strip_prefix("```") {
            if in_block {
                in_block = false;
            } else {
                in_block = true;
                runnable_block = matches!(info.trim(), "" | "sh" | "console");
                last_is_sozu = false;
                expect_code = false;
            }
            continue;
        }
        if !in_block || !runnable_block {
            continue;
        }
        if expect_code {
            expect_code = false;
            if let (Some(last), Ok(code)) = (out.last_mut(), line.trim().parse::<i32>()) {
                last.code = code;
            }
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            if command.trim() == "echo $?" {
                expect_code = last_is_sozu;
                continue;
            }
            last_is_sozu = command.starts_with("sozu ") && !starts_a_master(command);
            if last_is_sozu {
                out.push(Example {
                    doc,
                    line: index + 1,
                    command: command.to_owned(),
                    output: Vec::new(),
                    code: 0,
                });
            }
            continue;
        }
        let bare = line.split('#').next().unwrap_or(line).trim_end();
        if bare.starts_with("sozu ") {
            last_is_sozu = false;
            if !is_synopsis(bare.strip_prefix("sozu $S ").unwrap_or(bare)) && !starts_a_master(bare)
            {
                out.push(Example {
                    doc,
                    line: index + 1,
                    command: bare.to_owned(),
                    output: Vec::new(),
                    code: 0,
                });
            }
            continue;
        }
        if last_is_sozu {
            if let Some(last) = out.last_mut() {
                if !line.trim().is_empty() {
                    last.output.push(line.to_owned());
                }
            }
        }
    }
    out
}

/// Words of a command line, as `sh` splits them: single and double quotes
/// group words (and are removed).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            (_, c) => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(current);
    }
    out
}

/// One token of the doc against one of the binary's output.
fn token_matches(expected: &str, actual: &str) -> bool {
    if expected == actual {
        return true;
    }
    let is_number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let trimmed = |s: &'_ str| s.trim_matches(|c: char| ",;()".contains(c)).to_owned();
    let (e, a) = (trimmed(expected), trimmed(actual));
    (is_number(&e) && is_number(&a)) || (e.starts_with('/') && a.starts_with('/')) || (e == a)
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let e: Vec<&str> = expected.split_whitespace().collect();
    let a: Vec<&str> = actual.split_whitespace().collect();
    e.len() == a.len() && e.iter().zip(&a).all(|(e, a)| token_matches(e, a))
}

/// The doc's lines appear in order among the binary's (an excerpt may end
/// with `…`).
fn check_output(example: &Example, out: &CliOutput, ports: &BTreeMap<String, String>) {
    let actual: Vec<String> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let mut from = 0;
    for expected in &example.output {
        if expected.trim() == "…" {
            continue;
        }
        let expected = map_ports(expected, ports);
        // stdout and stderr are read separately: each doc line is looked for
        // after the previous match in its own stream, or anywhere.
        let found = actual[from..]
            .iter()
            .position(|a| line_matches(&expected, a))
            .map(|i| from + i)
            .or_else(|| actual.iter().position(|a| line_matches(&expected, a)));
        match found {
            Some(i) => from = i + 1,
            None => panic!(
                "{}:{}: `{}` does not print the doc's line\n  {expected}\nit printed:\n{}\n{}",
                example.doc, example.line, example.command, out.stdout, out.stderr
            ),
        }
    }
}

fn map_ports(text: &str, ports: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (from, to) in ports {
        out = out.replace(from.as_str(), to.as_str());
    }
    out
}

/// Runs one example (a `| jq` pipeline through `sh` when `jq` exists).
fn run(example: &Example, sozu: &Sozu, ports: &BTreeMap<String, String>) -> CliOutput {
    let socket = sozu.socket_path().to_string_lossy().into_owned();
    let config = sozu.config_path().to_string_lossy().into_owned();
    let command = map_ports(&example.command, ports)
        .replace("$S", &format!("--socket {socket}"))
        .replace("-c config.toml", &format!("-c {config}"));
    let (sozu_part, jq) = match command.split_once(" | jq ") {
        Some((s, jq)) => (s.to_owned(), Some(jq.to_owned())),
        None => (command.clone(), None),
    };
    let args: Vec<String> = words(&sozu_part).into_iter().skip(1).collect();
    let out = run_cli(sozu.dir(), &args);
    if let Some(filter) = jq {
        assert_eq!(out.code, 0, "{}:{}: {out:?}", example.doc, example.line);
        // The answer is JSON whatever happens next.
        let _ = out.json();
        if which_jq() {
            let mut child = std::process::Command::new("jq")
                .args(words(&filter))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn jq");
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("jq stdin")
                .write_all(out.stdout.as_bytes())
                .expect("feed jq");
            let done = child.wait_with_output().expect("run jq");
            assert!(
                done.status.success(),
                "{}:{}: jq {filter} failed: {}",
                example.doc,
                example.line,
                String::from_utf8_lossy(&done.stderr)
            );
            return CliOutput {
                code: 0,
                stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
                stderr: out.stderr,
            };
        }
    }
    out
}

fn which_jq() -> bool {
    std::process::Command::new("jq")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_and_check(example: &Example, sozu: &Sozu, ports: &BTreeMap<String, String>) {
    let out = run(example, sozu, ports);
    assert_eq!(
        out.code,
        example.code,
        "{}:{}: `{}` exited {} (the doc says {})\nstdout: {}\nstderr: {}\n--- master.log ---\n{}",
        example.doc,
        example.line,
        example.command,
        out.code,
        example.code,
        out.stdout,
        out.stderr,
        sozu.log_tail(30)
    );
    check_output(example, &out, ports);
}

/// The quick-start master of getting_started.md: `dns` on 5353 over two
/// backends, with the docs' ports mapped to free ones.
fn quick_start() -> (Sozu, Vec<UdpBackend>, BTreeMap<String, String>) {
    let dns_a = UdpBackend::v4("5354");
    let dns_b = UdpBackend::v4("5355");
    let ntp = UdpBackend::v4("5400");
    let frontend = free_v4();
    let extra = free_v4();
    let mut cluster = ClusterConfig::new("dns", frontend)
        .backend("dns-a", dns_a.addr())
        .backend("dns-b", dns_b.addr());
    cluster.responses = 1;
    let sozu = Sozu::start(SozuConfig::udp(2, UdpListener::new(frontend), cluster));
    let port = |a: SocketAddr| a.port().to_string();
    let ports = BTreeMap::from([
        (
            "127.0.0.1:5353".to_owned(),
            format!("127.0.0.1:{}", port(frontend)),
        ),
        (
            "127.0.0.1:5354".to_owned(),
            format!("127.0.0.1:{}", port(dns_a.addr())),
        ),
        (
            "127.0.0.1:5355".to_owned(),
            format!("127.0.0.1:{}", port(dns_b.addr())),
        ),
        (
            "127.0.0.1:5399".to_owned(),
            format!("127.0.0.1:{}", port(extra)),
        ),
        (
            "127.0.0.1:5400".to_owned(),
            format!("127.0.0.1:{}", port(ntp.addr())),
        ),
    ]);
    (sozu, vec![dns_a, dns_b, ntp], ports)
}

#[test]
fn getting_started_examples_run_as_documented() {
    let all = examples("getting_started.md");
    assert!(all.len() >= 12, "too few examples found: {all:#?}");
    let (sozu, _backends, ports) = quick_start();
    for example in &all {
        run_and_check(example, &sozu, &ports);
        // `python3 ask.py 5399 …` follows the backend add: the flow the
        // metrics example counts.
        if example.command.contains("backend add -i ntp") {
            let target: SocketAddr = ports["127.0.0.1:5399"].parse().unwrap();
            let reply = UdpClient::new(target).request(b"what time is it");
            assert!(reply.is_some(), "no answer through the new ntp service");
        }
    }
    // The last example is the soft stop: the master is gone.
    assert!(
        sozu.wait_master_exit(Duration::from_secs(30)).is_some(),
        "{}",
        sozu.log_tail(20)
    );
}

#[test]
fn cli_reference_examples_run_as_documented() {
    let all = examples("cli.md");
    let (main, walkthrough): (Vec<Example>, Vec<Example>) = all
        .into_iter()
        .partition(|e| !e.command.starts_with("sozu $S"));
    assert!(main.len() >= 6, "too few examples found: {main:#?}");
    assert!(walkthrough.len() >= 9, "{walkthrough:#?}");

    let (sozu, _backends, ports) = quick_start();
    for example in &main {
        run_and_check(example, &sozu, &ports);
    }

    // The walkthrough builds a DNS balancer on a master configured from the
    // CLI only; 0.0.0.0:53 becomes a free port.
    let bare = Sozu::start(SozuConfig {
        worker_count: 2,
        ..SozuConfig::default()
    });
    let port = free_v4().port();
    let ports = BTreeMap::from([("0.0.0.0:53".to_owned(), format!("0.0.0.0:{port}"))]);
    for example in &walkthrough {
        run_and_check(example, &bare, &ports);
    }
    assert!(
        bare.dir().join("dns-state.json").exists(),
        "state save wrote nothing"
    );
    assert!(bare.wait_master_exit(Duration::from_secs(30)).is_some());
}

/// `cluster list` answers as large as doc/cli.md promises: 5,000 clusters
/// (about 3.9 MB of JSON, far past the former 163,840-byte limit) list in
/// one answer, human and JSON. (No backends: a worker applies each boot
/// order on a copy of its whole state, so 10,000 orders would take it
/// minutes in a debug build.)
#[test]
fn five_thousand_clusters_list_in_one_answer() {
    let dir = Sozu::temp_dir();
    let mut extra = String::new();
    for i in 0..5_000 {
        use std::fmt::Write as _;
        let _ = write!(extra, "\n[clusters.cluster-{i:04}]\nprotocol = \"tcp\"\n");
    }
    // Appended after the globals: the clusters are tables of their own.
    let config = SozuConfig {
        worker_count: 1,
        // 5,000 boot orders take a debug-build worker about 15 s.
        worker_timeout: 120,
        extra: extra.clone(),
        ..SozuConfig::default()
    };
    let sozu = Sozu::spawn_in(dir, config).expect("spawn");
    sozu.wait_ready(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", sozu.log_tail(20)));
    let human = sozu.cli_ok(&["cluster", "list"]);
    assert_eq!(
        human.stdout.matches("\ncluster cluster-").count() + 1,
        5_000
    );
    let json = sozu.cli_ok(&["--json", "cluster", "list"]).json();
    let listed = json["content"]["clusters"]["vec"].as_array().map(Vec::len);
    assert_eq!(listed, Some(5_000));
}

#[test]
fn the_docs_still_hold_the_examples_this_test_runs() {
    // The parser finds what a reader sees: a few landmarks per doc.
    let started: Vec<String> = examples("getting_started.md")
        .into_iter()
        .map(|e| e.command)
        .collect();
    for landmark in [
        "sozu -c config.toml status",
        "sozu -c config.toml udp listener list",
        "sozu -c config.toml cluster list -i ntp",
        "sozu -c config.toml upgrade",
        "sozu -c config.toml shutdown",
    ] {
        assert!(
            started.iter().any(|c| c == landmark),
            "{landmark}: {started:#?}"
        );
    }
    let cli: Vec<Example> = examples("cli.md");
    assert!(cli.iter().any(|e| e.code == 2), "{cli:#?}");
    assert!(cli.iter().any(|e| e.code == 3), "{cli:#?}");
    assert!(
        cli.iter().any(|e| e.command.contains("metrics get")),
        "{cli:#?}"
    );
    assert!(!is_synopsis("sozu -c config.toml status"));
    assert!(is_synopsis("sozu cluster remove -i ID"));
    assert!(is_synopsis("sozu metrics enable | disable | clear"));
    assert!(!is_synopsis(
        "sozu --json status | jq '.content.workers.vec[] | select(.run_state != \"RUNNING\")'"
    ));
}
