//! `sozu top` against a live master (issue 18, point 7): a few refreshes
//! with `--count`, rates that move with the traffic really sent.

use std::time::Duration;

use sozu_e2e::ports::free_v4;
use sozu_e2e::{ClusterConfig, Sozu, SozuConfig, SteadyTraffic, UdpBackend, UdpListener};

const WAIT: Duration = Duration::from_secs(15);

/// The fields of `name`'s row in each frame of `top`'s output.
fn rows(stdout: &str, name: &str) -> Vec<Vec<String>> {
    stdout
        .split("sozu top: refresh ")
        .skip(1)
        .map(|frame| {
            frame
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no row for {name} in frame:\n{frame}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn rate(row: &[String], column: usize) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("column {column} is not a rate: {row:?}"))
}

#[test]
fn top_rates_move_with_the_traffic() {
    let backend = UdpBackend::v4("a");
    let front = free_v4();
    let cluster = ClusterConfig::new("c", front).backend("a", backend.addr());
    let sozu = Sozu::start(SozuConfig::udp(1, UdpListener::new(front), cluster));
    let listener = front.to_string();

    // About 50 requests a second on one flow, each answered.
    let traffic = SteadyTraffic::start(front, "t", Duration::from_millis(20));
    traffic.wait_more_answers(10, WAIT);
    let out = sozu.cli_ok(&["top", "--count", "3"]);
    let frames = rows(&out.stdout, &listener);
    assert_eq!(frames.len(), 3, "{}", out.stdout);
    // Columns: name, flows, in/s, out/s, drops/s, reasons.
    assert_eq!(frames[0][1], "1", "{:?}", frames[0]);
    assert_eq!(frames[0][2], "-", "no rate before a second refresh");
    for row in &frames[1..] {
        assert_eq!(row[1], "1", "{row:?}");
        assert!(rate(row, 2) > 5.0, "datagrams in per second: {row:?}");
        assert!(rate(row, 3) > 5.0, "datagrams out per second: {row:?}");
        assert_eq!(rate(row, 4), 0.0, "{row:?}");
    }
    let cluster_rows = rows(&out.stdout, "c");
    assert!(rate(&cluster_rows[2], 2) > 5.0, "{:?}", cluster_rows[2]);

    // Traffic stops: once the last datagram is counted, the rates fall to
    // zero while the flow is still alive.
    let report = traffic.stop();
    let sent = report.sent as i64;
    sozu.wait_metrics("every datagram counted", WAIT, |m| {
        m.proxy_or_zero("udp.datagrams.in") == sent
    });
    let out = sozu.cli_ok(&["top", "--count", "2", "--interval", "1"]);
    let frames = rows(&out.stdout, &listener);
    assert_eq!(frames.len(), 2, "{}", out.stdout);
    assert_eq!(frames[1][1], "1", "{:?}", frames[1]);
    assert_eq!(rate(&frames[1], 2), 0.0, "{:?}", frames[1]);
    assert_eq!(rate(&frames[1], 3), 0.0, "{:?}", frames[1]);
}
