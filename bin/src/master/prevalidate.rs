//! Checks the master runs on a state-changing order after its own state
//! accepted it and before any worker sees it: everything a worker would
//! refuse that does not depend on the worker itself (its sockets, its
//! kernel). Each check calls the worker's own code from `sozu-lib`, so the
//! master and the workers cannot disagree on what is valid.
//!
//! What stays worker-side (a bind, a registration with the event loop) is
//! handled by the two-phase commit in `orders.rs`.

use std::error::Error;
use std::net::SocketAddr;

use sozu_command_lib::command::request::RequestType;
use sozu_command_lib::command::{Request, RequestHttpFrontend};
use sozu_command_lib::state::ConfigState;
use sozu_lib::http::Router;

/// Why a worker would refuse an order, as one line naming the field and the
/// value.
#[derive(Debug)]
pub(crate) struct WouldRefuse(String);

impl std::fmt::Display for WouldRefuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn chain(error: &dyn Error) -> WouldRefuse {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        message.push_str(": ");
        message.push_str(&next.to_string());
        source = next.source();
    }
    WouldRefuse(message)
}

/// Checks `request` against `after`, the master's state once the order is
/// applied to it.
pub(crate) fn check(after: &ConfigState, request: &Request) -> Result<(), WouldRefuse> {
    let Some(request_type) = &request.request_type else {
        return Ok(());
    };
    match request_type {
        RequestType::AddUdpListener(config) => {
            sozu_lib::udp::shell::check_listener(config).map_err(|e| chain(&e))
        }
        RequestType::UpdateUdpListener(update) => {
            // The worker checks the listener as patched: check the same.
            let Ok(address) = SocketAddr::try_from(&update.address) else {
                return Ok(());
            };
            match after.udp_listener(&address) {
                Some(config) => sozu_lib::udp::shell::check_listener(config).map_err(|e| chain(&e)),
                None => Ok(()),
            }
        }
        RequestType::AddCluster(cluster) => {
            sozu_lib::server::check_cluster(cluster).map_err(|e| chain(&e))
        }
        RequestType::AddHttpFrontend(frontend) => {
            Router::check(frontend).map_err(|e| chain(&e))?;
            same_route_exists(after, frontend)
        }
        RequestType::RemoveHttpFrontend(frontend) => Router::check(frontend).map_err(|e| chain(&e)),
        RequestType::AddHttpsFrontend(frontend) => Router::check(frontend).map_err(|e| chain(&e)),
        RequestType::RemoveHttpsFrontend(frontend) => {
            Router::check(frontend).map_err(|e| chain(&e))
        }
        RequestType::AddHttpsListener(config) => {
            sozu_lib::tls::check_listener(config).map_err(|e| chain(&e))
        }
        RequestType::UpdateHttpsListener(update) => {
            // As patched, like the worker rebuilds it.
            let Ok(address) = SocketAddr::try_from(&update.address) else {
                return Ok(());
            };
            match after.https_listener(&address) {
                Some(config) => sozu_lib::tls::check_listener(config).map_err(|e| chain(&e)),
                None => Ok(()),
            }
        }
        RequestType::AddCertificate(order) => {
            sozu_lib::tls::check_certificate(&order.certificate).map_err(|e| chain(&e))
        }
        RequestType::ReplaceCertificate(order) => {
            sozu_lib::tls::check_certificate(&order.new_certificate).map_err(|e| chain(&e))
        }
        _ => Ok(()),
    }
}

/// The workers' routing table keys a route by its lowercased hostname
/// without a trailing dot and its uppercased method: two frontends the
/// state tells apart (`Example.com` / `example.com`) are one route there.
/// `after` holds `frontend` itself; any other frontend it routes the same
/// is a clash.
fn same_route_exists(
    after: &ConfigState,
    frontend: &RequestHttpFrontend,
) -> Result<(), WouldRefuse> {
    let host = |f: &RequestHttpFrontend| f.hostname.trim_end_matches('.').to_ascii_lowercase();
    let method = |f: &RequestHttpFrontend| f.method.as_ref().map(|m| m.to_ascii_uppercase());
    let clash = after.http_frontends().find(|existing| {
        (existing.hostname != frontend.hostname || existing.method != frontend.method)
            && existing.address == frontend.address
            && host(existing) == host(frontend)
            && existing.path.kind == frontend.path.kind
            && existing.path.value == frontend.path.value
            && method(existing) == method(frontend)
    });
    match clash {
        Some(existing) => Err(WouldRefuse(format!(
            "hostname = {:?}: the workers route it as the existing frontend for host {:?} path {:?}",
            frontend.hostname, existing.hostname, existing.path.value
        ))),
        None => Ok(()),
    }
}
