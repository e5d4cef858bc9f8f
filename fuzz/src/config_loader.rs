//! Fuzzes the configuration loader: arbitrary text to
//! [`Config::from_str`], as `sozu start -c` and `reload` read an operator's
//! file.
//!
//! Oracles: no panic, and an error always renders; the orders of a
//! configuration the loader accepts are dispatched onto a [`ConfigState`]
//! (as the master does at start) without panicking, and when the state
//! accepts them all, that state's own orders rebuild the same state.

use std::path::Path;

use sozu_command_lib::config::Config;
use sozu_command_lib::state::ConfigState;

/// The fuzz entry point: non-UTF-8 inputs are skipped (the loader reads a
/// `String`; `load_from_path` refuses non-UTF-8 before parsing).
pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}

/// Loads `text` and checks the oracles; returns whether it built a state.
pub fn check(text: &str) -> bool {
    let config = match Config::from_str(text, Path::new("/fuzz/config.toml")) {
        Ok(config) => config,
        Err(error) => {
            // Rendering walks every field of the error: it must not panic.
            let _ = error.to_string();
            return false;
        }
    };
    let orders = config.generate_orders();
    let state = match ConfigState::from_requests(&orders) {
        Ok(state) => state,
        // The loader does not check every cross-object rule the state
        // enforces (two UDP clusters on one listener passes the loader); the
        // master then refuses to start with this error, one clear line. A
        // refusal is fine, a panic is the finding.
        Err(refused) => {
            let _ = refused.to_string();
            return false;
        }
    };
    let rebuilt = ConfigState::from_requests(&state.generate_requests())
        .unwrap_or_else(|refused| panic!("a state's own orders are refused: {refused}"));
    assert_eq!(rebuilt, state, "a state's own orders rebuild another state");
    true
}

/// Root keys the generator sets to numbers.
const ROOT_NUMBER_KEYS: [&str; 9] = [
    "worker_count",
    "worker_timeout",
    "buffer_size",
    "max_command_buffer_size",
    "command_buffer_size",
    "max_command_clients",
    "max_state_file_size",
    "max_connections",
    "front_timeout",
];
/// Root keys the generator sets to strings.
const ROOT_STRING_KEYS: [&str; 5] = [
    "log_level",
    "log_target",
    "audit_logs_target",
    "command_socket",
    "saved_state",
];
/// UDP listener keys (numbers).
const LISTENER_KEYS: [&str; 4] = [
    "max_flows",
    "front_timeout",
    "back_timeout",
    "max_rx_datagram_size",
];
/// A cluster's `udp` table keys (numbers).
const UDP_KEYS: [&str; 4] = [
    "requests",
    "max_pending_datagrams",
    "max_pending_bytes",
    "front_timeout",
];
const ADDRESSES: [&str; 5] = [
    "127.0.0.1:5300",
    "127.0.0.1:5301",
    "[::1]:5300",
    "0.0.0.0:5302",
    "127.0.0.1:0",
];
const PROTOCOLS: [&str; 4] = ["udp", "tcp", "http", "https"];
const POLICIES: [&str; 7] = [
    "ROUND_ROBIN",
    "RANDOM",
    "LEAST_LOADED",
    "POWER_OF_TWO",
    "HRW",
    "MAGLEV",
    "NOPE",
];

/// Builds a configuration text from generated `(template, value)` items,
/// so generated inputs are mostly well-formed TOML that reaches validation
/// and order generation rather than failing in the TOML parser (libFuzzer
/// explores the raw text). Each item is a root key or a whole table: a
/// listener, a cluster with a frontend and a backend, a cluster's `udp` or
/// `udp.health` table, added to a valid base (one UDP listener and its
/// cluster). Root keys come first and no key or table repeats.
pub fn text_from_lines(lines: &[(u8, String)]) -> String {
    let mut root = std::collections::BTreeMap::new();
    // A valid base that the items extend or break.
    let mut tables = vec![format!(
        "[[listeners]]\nprotocol = \"udp\"\naddress = \"{}\"\n\n\
         [clusters.dns]\nprotocol = \"udp\"\nfrontends = [{{ address = \"{}\" }}]\n\
         backends = [{{ address = \"127.0.0.1:5354\", backend_id = \"dns-a\" }}]",
        ADDRESSES[0], ADDRESSES[0]
    )];
    let mut headers = std::collections::BTreeSet::from(["[clusters.dns]".to_owned()]);
    for (template, value) in lines {
        let n = value.chars().count();
        let pick = |options: &[&'static str]| options[n % options.len()];
        let id = pick(&["a", "b", "dns"]);
        let addr = pick(&ADDRESSES);
        let digits: String = value
            .chars()
            .filter(char::is_ascii_digit)
            .take(12)
            .collect();
        let number = digits.parse::<u64>().unwrap_or(n as u64);
        // TOML basic strings: printable characters, no quote or backslash.
        let quoted: String = value
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .collect();
        let nth = |keys: &[&'static str]| keys[usize::from(*template / 6) % keys.len()];
        let (header, body) = match template % 6 {
            0 => {
                let key = nth(&ROOT_NUMBER_KEYS);
                root.insert(key, format!("{key} = {number}"));
                continue;
            }
            1 => {
                let key = nth(&ROOT_STRING_KEYS);
                // Mostly plausible values; sometimes the generated text.
                let text = match n % 4 {
                    0 => quoted.clone(),
                    1 => "stdout".to_owned(),
                    2 => format!("file:///tmp/sozu-fuzz/{n}"),
                    _ => format!("udp://{addr}"),
                };
                root.insert(key, format!("{key} = \"{text}\""));
                continue;
            }
            2 => (
                format!("[[listeners]] {n}"),
                if n % 4 == 3 {
                    format!("[[listeners]]\nprotocol = \"{}\"\naddress = \"{addr}\"", pick(&PROTOCOLS))
                } else {
                    format!(
                        "[[listeners]]\nprotocol = \"udp\"\naddress = \"{addr}\"\n{} = {number}",
                        nth(&LISTENER_KEYS)
                    )
                },
            ),
            3 => (
                format!("[clusters.{id}]"),
                format!(
                    "[clusters.{id}]\nprotocol = \"{}\"\nload_balancing = \"{}\"\n\
                     frontends = [{{ address = \"{addr}\"{} }}]\n\
                     backends = [{{ address = \"{}\", backend_id = \"{id}\" }}]",
                    if n % 4 == 3 { pick(&PROTOCOLS[..3]) } else { "udp" },
                    pick(&POLICIES),
                    if n % 4 == 3 { format!(", hostname = \"{quoted}\", path = \"/{n}\"") } else { String::new() },
                    ADDRESSES[(n / 3) % ADDRESSES.len()],
                ),
            ),
            4 => (
                format!("[clusters.{id}.udp]"),
                format!(
                    "[clusters.{id}.udp]\naffinity_key = \"{}\"\nresponses = {number}\n{} = {number}",
                    pick(&["SOURCE_IP", "SOURCE_IP_PORT", "x"]),
                    nth(&UDP_KEYS)
                ),
            ),
            _ => (
                format!("[clusters.{id}.udp.health]"),
                format!(
                    "[clusters.{id}.udp.health]\nmode = \"{}\"\nrise = {number}\nudp_probe_payload = \"{quoted}\"",
                    pick(&["OFF", "UDP_PROBE", "TCP_CONNECT", "?"])
                ),
            ),
        };
        // Array-of-tables headers may repeat; the others may not.
        if header.starts_with("[[") || headers.insert(header) {
            tables.push(body);
        }
    }
    let mut text: String = root.into_values().map(|line| line + "\n").collect();
    for table in tables {
        text.push('\n');
        text.push_str(&table);
        text.push('\n');
    }
    text
}
