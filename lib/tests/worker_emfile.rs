//! Running out of file descriptors aborts the new flow, counts it, and the
//! worker goes on. Its own test binary: it lowers the process's fd limit.

mod worker_common;

use sozu_command_lib::command::UdpClusterConfig;
use worker_common::*;

/// Fills every hole below the highest open fd (so new fds get numbers
/// above it) and returns the fillers and that highest number.
fn fill_fd_holes() -> (Vec<std::fs::File>, u64) {
    use std::os::fd::AsRawFd;
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut fillers = Vec::new();
    loop {
        let file = std::fs::File::open("/dev/null").unwrap();
        if file.as_raw_fd() as u64 > highest {
            return (fillers, highest);
        }
        fillers.push(file);
    }
}

#[test]
fn out_of_fds_aborts_the_new_flow_counts_it_and_serving_goes_on() {
    let mut worker = Worker::start();
    let (listener, backend) = simple_setup(&mut worker, UdpClusterConfig::default());
    let clients: Vec<_> = (0..4).map(|_| udp_socket("127.0.0.1")).collect();
    // Room for exactly two more descriptors: two upstream sockets.
    let (_fillers, highest) = fill_fd_holes();
    let old = set_soft_limit(highest + 1 + 2);
    for client in &clients {
        client.send_to(b"x", listener).unwrap();
    }
    let failed = worker.wait_metric(&format!("udp.upstream.open_failed@{listener}"), |v| v >= 2);
    let served = (0..2)
        .filter(|_| try_recv(&backend, WAIT).is_some())
        .count();
    assert_eq!(served, 2, "the first two flows got their sockets");
    assert_eq!(failed, 2);
    assert_eq!(worker.metric(&format!("udp.active_flows@{listener}")), 2);
    // Descriptors come back: serving resumes.
    // SAFETY: valid in-pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
    clients[3].send_to(b"again", listener).unwrap();
    assert_eq!(recv(&backend).0, b"again");
}
