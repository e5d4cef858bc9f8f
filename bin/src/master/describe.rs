//! One line per state order, for people: what `reload --dry-run` would
//! send and what `reload` sent. `+` adds, `-` removes, `~` changes (an
//! update, an activation, a cluster replaced with new settings).

use std::net::SocketAddr;

use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{ListenerType, Request, RequestHttpFrontend, SocketAddress};
use sozu_command_lib::state::ConfigState;

/// `+ http frontend 127.0.0.1:80 host "a.example" path "/" -> cluster web`
/// (`deny` for a frontend without a cluster); `what` is the sign and the
/// protocol (HTTP and HTTPS frontends are the same order shape).
fn http_frontend(what: &str, f: &RequestHttpFrontend) -> String {
    format!(
        "{what} frontend {} host {:?} path {:?} -> {}",
        address(&f.address),
        f.hostname,
        f.path.value,
        f.cluster_id
            .as_ref()
            .map_or_else(|| "deny".to_owned(), |c| format!("cluster {c}"))
    )
}

fn address(wire: &SocketAddress) -> String {
    SocketAddr::try_from(wire).map_or_else(|_| "<invalid address>".to_owned(), |a| a.to_string())
}

/// A certificate's fingerprint, or why it has none.
fn certificate_fingerprint(pem: &str) -> String {
    sozu_command_lib::certificate::fingerprint_of_pem("certificate", pem)
        .map_or_else(|_| "<invalid certificate>".to_owned(), |f| f.to_string())
}

fn proxy(value: i32) -> &'static str {
    match ListenerType::try_from(value) {
        Ok(ListenerType::Udp) => "udp",
        Ok(ListenerType::Tcp) => "tcp",
        Ok(ListenerType::Http) => "http",
        Ok(ListenerType::Https) => "https",
        Err(_) => "?",
    }
}

/// `name=value` for each field an update sets.
fn fields(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(" ({})", set.join(", "))
    }
}

/// `order` as one line; `current` is the state it applies to (it tells a
/// new cluster from a changed one).
pub(crate) fn describe(order: &Request, current: &ConfigState) -> String {
    let Some(request_type) = &order.request_type else {
        return "? empty order".to_owned();
    };
    let s = |v: Option<u32>| v.map(|v| v.to_string());
    match request_type {
        RequestType::AddUdpListener(c) => format!("+ udp listener {}", address(&c.address)),
        RequestType::AddTcpListener(c) => format!("+ tcp listener {}", address(&c.address)),
        RequestType::AddHttpListener(c) => format!("+ http listener {}", address(&c.address)),
        RequestType::UpdateUdpListener(u) => format!(
            "~ udp listener {}{}",
            address(&u.address),
            fields(&[
                ("front_timeout", s(u.front_timeout)),
                ("back_timeout", s(u.back_timeout)),
                ("max_rx_datagram_size", s(u.max_rx_datagram_size)),
                ("max_flows", s(u.max_flows)),
                ("public_address", u.public_address.as_ref().map(address)),
            ])
        ),
        RequestType::UpdateTcpListener(u) => format!("~ tcp listener {}", address(&u.address)),
        RequestType::UpdateHttpListener(u) => format!("~ http listener {}", address(&u.address)),
        RequestType::RemoveListener(r) => {
            format!("- {} listener {}", proxy(r.proxy), address(&r.address))
        }
        RequestType::ActivateListener(a) => {
            format!(
                "~ activate {} listener {}",
                proxy(a.proxy),
                address(&a.address)
            )
        }
        RequestType::DeactivateListener(d) => {
            format!(
                "~ deactivate {} listener {}",
                proxy(d.proxy),
                address(&d.address)
            )
        }
        RequestType::AddCluster(c) => {
            if current.cluster(&c.cluster_id).is_some() {
                format!("~ cluster {} (settings replaced)", c.cluster_id)
            } else {
                format!("+ cluster {}", c.cluster_id)
            }
        }
        RequestType::RemoveCluster(id) => format!("- cluster {id}"),
        RequestType::AddBackend(b) => format!(
            "+ backend {} of cluster {} at {}",
            b.backend_id,
            b.cluster_id,
            address(&b.address)
        ),
        RequestType::RemoveBackend(b) => format!(
            "- backend {} of cluster {} at {}",
            b.backend_id,
            b.cluster_id,
            address(&b.address)
        ),
        RequestType::AddUdpFrontend(f) => format!(
            "+ udp frontend {} -> cluster {}",
            address(&f.address),
            f.cluster_id
        ),
        RequestType::RemoveUdpFrontend(f) => format!(
            "- udp frontend {} -> cluster {}",
            address(&f.address),
            f.cluster_id
        ),
        RequestType::AddTcpFrontend(f) => format!(
            "+ tcp frontend {} -> cluster {}",
            address(&f.address),
            f.cluster_id
        ),
        RequestType::RemoveTcpFrontend(f) => format!(
            "- tcp frontend {} -> cluster {}",
            address(&f.address),
            f.cluster_id
        ),
        RequestType::AddHttpFrontend(f) => http_frontend("+ http", f),
        RequestType::RemoveHttpFrontend(f) => http_frontend("- http", f),
        RequestType::AddHttpsListener(c) => format!("+ https listener {}", address(&c.address)),
        RequestType::UpdateHttpsListener(u) => {
            format!("~ https listener {}", address(&u.address))
        }
        RequestType::AddHttpsFrontend(f) => http_frontend("+ https", f),
        RequestType::RemoveHttpsFrontend(f) => http_frontend("- https", f),
        RequestType::AddCertificate(c) => format!(
            "+ certificate {} on https listener {}",
            certificate_fingerprint(&c.certificate.certificate),
            address(&c.address)
        ),
        RequestType::ReplaceCertificate(r) => format!(
            "~ certificate {} replaced by {} on https listener {}",
            r.old_fingerprint,
            certificate_fingerprint(&r.new_certificate.certificate),
            address(&r.address)
        ),
        RequestType::RemoveCertificate(r) => format!(
            "- certificate {} on https listener {}",
            r.fingerprint,
            address(&r.address)
        ),
        other => format!(
            "? {}",
            sozu_command_lib::state::order_name(other).replace('_', " ")
        ),
    }
}

/// Every order of `orders`, one per line, each described against the
/// state as the previous ones left it.
pub(crate) fn describe_all(orders: &[Request], start: &ConfigState) -> String {
    let mut state = start.clone();
    let mut lines = Vec::with_capacity(orders.len());
    for order in orders {
        lines.push(describe(order, &state));
        let _ = state.dispatch(order);
    }
    lines.join("\n")
}
