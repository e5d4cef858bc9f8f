//! The field numbers of `Request.request_type` and
//! `ResponseContent.content_type` are Sōzu 2.1's (doc/protocol.md §3.1): a
//! renumbered tag would make Sōzu's clients send one order and get another.
//! The matches below are exhaustive, so a new order must be given its
//! number here.

use prost::Message;

use super::command::request::RequestType;
use super::command::response_content::ContentType;
use super::command::{Request, ResponseContent};

/// The field number of the first field of an encoded message.
fn first_tag(bytes: &[u8]) -> u32 {
    let mut key = 0u64;
    for (i, b) in bytes.iter().enumerate().take(5) {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    (key >> 3) as u32
}

fn request_tag(order: &RequestType) -> u32 {
    match order {
        RequestType::SaveState(_) => 1,
        RequestType::LoadState(_) => 2,
        RequestType::ListWorkers(_) => 4,
        RequestType::ListFrontends(_) => 5,
        RequestType::ListListeners(_) => 6,
        RequestType::LaunchWorker(_) => 7,
        RequestType::UpgradeMain(_) => 8,
        RequestType::UpgradeWorker(_) => 9,
        RequestType::SubscribeEvents(_) => 10,
        RequestType::ReloadConfiguration(_) => 11,
        RequestType::Status(_) => 12,
        RequestType::AddCluster(_) => 13,
        RequestType::RemoveCluster(_) => 14,
        RequestType::AddHttpFrontend(_) => 15,
        RequestType::RemoveHttpFrontend(_) => 16,
        RequestType::AddHttpsFrontend(_) => 17,
        RequestType::RemoveHttpsFrontend(_) => 18,
        RequestType::AddCertificate(_) => 19,
        RequestType::ReplaceCertificate(_) => 20,
        RequestType::RemoveCertificate(_) => 21,
        RequestType::AddTcpFrontend(_) => 22,
        RequestType::RemoveTcpFrontend(_) => 23,
        RequestType::AddBackend(_) => 24,
        RequestType::RemoveBackend(_) => 25,
        RequestType::AddHttpListener(_) => 26,
        RequestType::AddHttpsListener(_) => 27,
        RequestType::AddTcpListener(_) => 28,
        RequestType::RemoveListener(_) => 29,
        RequestType::ActivateListener(_) => 30,
        RequestType::DeactivateListener(_) => 31,
        RequestType::QueryClusterById(_) => 35,
        RequestType::QueryClustersByDomain(_) => 36,
        RequestType::QueryClustersHashes(_) => 37,
        RequestType::QueryMetrics(_) => 38,
        RequestType::SoftStop(_) => 39,
        RequestType::HardStop(_) => 40,
        RequestType::ConfigureMetrics(_) => 41,
        RequestType::Logging(_) => 42,
        RequestType::ReturnListenSockets(_) => 43,
        RequestType::QueryCertificatesFromTheState(_) => 44,
        RequestType::QueryCertificatesFromWorkers(_) => 45,
        RequestType::CountRequests(_) => 46,
        RequestType::UpdateHttpListener(_) => 47,
        RequestType::UpdateHttpsListener(_) => 48,
        RequestType::UpdateTcpListener(_) => 49,
        RequestType::SetMaxConnectionsPerIp(_) => 50,
        RequestType::QueryMaxConnectionsPerIp(_) => 51,
        RequestType::SetHealthCheck(_) => 52,
        RequestType::RemoveHealthCheck(_) => 53,
        RequestType::QueryHealthChecks(_) => 54,
        RequestType::SetMetricDetail(_) => 55,
        RequestType::AddUdpListener(_) => 56,
        RequestType::UpdateUdpListener(_) => 57,
        RequestType::AddUdpFrontend(_) => 58,
        RequestType::RemoveUdpFrontend(_) => 59,
        // ours
        RequestType::ListClusters(_) => 1000,
        RequestType::AdoptListenSockets(_) => 1002,
        RequestType::ReturnFlows(_) => 1003,
        RequestType::AdoptFlows(_) => 1004,
        RequestType::CheckState(_) => 1020,
        RequestType::PreviewReload(_) => 1030,
    }
}

fn content_tag(content: &ContentType) -> u32 {
    match content {
        ContentType::Workers(_) => 1,
        ContentType::Metrics(_) => 2,
        ContentType::WorkerResponses(_) => 3,
        ContentType::Event(_) => 4,
        ContentType::FrontendList(_) => 5,
        ContentType::ListenersList(_) => 6,
        ContentType::WorkerMetrics(_) => 7,
        ContentType::AvailableMetrics(_) => 8,
        ContentType::Clusters(_) => 9,
        ContentType::ClusterHashes(_) => 10,
        ContentType::CertificatesByAddress(_) => 11,
        ContentType::CertificatesWithFingerprints(_) => 12,
        ContentType::RequestCounts(_) => 13,
        ContentType::MaxConnectionsPerIpLimit(_) => 14,
        ContentType::HealthChecksList(_) => 15,
        ContentType::MetricDetailStatus(_) => 16,
        ContentType::WorkerMetricDetailStatus(_) => 17,
        // ours
        ContentType::ListenSockets(_) => 1000,
        ContentType::WorkerState(_) => 1020,
    }
}

#[test]
fn request_tags_are_sozus() {
    let orders = [
        RequestType::SaveState(Default::default()),
        RequestType::LoadState(Default::default()),
        RequestType::ListWorkers(Default::default()),
        RequestType::ListFrontends(Default::default()),
        RequestType::ListListeners(Default::default()),
        RequestType::LaunchWorker(Default::default()),
        RequestType::UpgradeMain(Default::default()),
        RequestType::UpgradeWorker(0),
        RequestType::SubscribeEvents(Default::default()),
        RequestType::ReloadConfiguration(Default::default()),
        RequestType::Status(Default::default()),
        RequestType::AddCluster(Default::default()),
        RequestType::RemoveCluster(Default::default()),
        RequestType::AddHttpFrontend(Default::default()),
        RequestType::RemoveHttpFrontend(Default::default()),
        RequestType::AddHttpsFrontend(Default::default()),
        RequestType::RemoveHttpsFrontend(Default::default()),
        RequestType::AddCertificate(Default::default()),
        RequestType::ReplaceCertificate(Default::default()),
        RequestType::RemoveCertificate(Default::default()),
        RequestType::AddTcpFrontend(Default::default()),
        RequestType::RemoveTcpFrontend(Default::default()),
        RequestType::AddBackend(Default::default()),
        RequestType::RemoveBackend(Default::default()),
        RequestType::AddHttpListener(Default::default()),
        RequestType::AddHttpsListener(Default::default()),
        RequestType::AddTcpListener(Default::default()),
        RequestType::RemoveListener(Default::default()),
        RequestType::ActivateListener(Default::default()),
        RequestType::DeactivateListener(Default::default()),
        RequestType::QueryClusterById(Default::default()),
        RequestType::QueryClustersByDomain(Default::default()),
        RequestType::QueryClustersHashes(Default::default()),
        RequestType::QueryMetrics(Default::default()),
        RequestType::SoftStop(Default::default()),
        RequestType::HardStop(Default::default()),
        RequestType::ConfigureMetrics(0),
        RequestType::Logging(Default::default()),
        RequestType::ReturnListenSockets(Default::default()),
        RequestType::QueryCertificatesFromTheState(Default::default()),
        RequestType::QueryCertificatesFromWorkers(Default::default()),
        RequestType::CountRequests(Default::default()),
        RequestType::UpdateHttpListener(Default::default()),
        RequestType::UpdateHttpsListener(Default::default()),
        RequestType::UpdateTcpListener(Default::default()),
        RequestType::SetMaxConnectionsPerIp(0),
        RequestType::QueryMaxConnectionsPerIp(Default::default()),
        RequestType::SetHealthCheck(Default::default()),
        RequestType::RemoveHealthCheck(Default::default()),
        RequestType::QueryHealthChecks(Default::default()),
        RequestType::SetMetricDetail(Default::default()),
        RequestType::AddUdpListener(Default::default()),
        RequestType::UpdateUdpListener(Default::default()),
        RequestType::AddUdpFrontend(Default::default()),
        RequestType::RemoveUdpFrontend(Default::default()),
        RequestType::ListClusters(Default::default()),
        RequestType::AdoptListenSockets(Default::default()),
        RequestType::ReturnFlows(Default::default()),
        RequestType::AdoptFlows(Default::default()),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for order in orders {
        let tag = request_tag(&order);
        let request = Request {
            request_type: Some(order.clone()),
        };
        let bytes = request.encode_to_vec();
        assert_eq!(first_tag(&bytes), tag, "{order:?}");
        assert_eq!(Request::decode(bytes.as_slice()).unwrap(), request);
        assert!(seen.insert(tag), "tag {tag} listed twice");
    }
    // Every Sōzu 2.1 tag (1..=59 but the four it does not use).
    let sozu: std::collections::BTreeSet<u32> =
        seen.iter().copied().filter(|t| *t < 1000).collect();
    let expected: std::collections::BTreeSet<u32> =
        (1..=59).filter(|t| ![3, 32, 33, 34].contains(t)).collect();
    assert_eq!(sozu, expected);
}

#[test]
fn response_content_tags_are_sozus() {
    let contents = [
        ContentType::Workers(Default::default()),
        ContentType::Metrics(Default::default()),
        ContentType::WorkerResponses(Default::default()),
        ContentType::Event(Default::default()),
        ContentType::FrontendList(Default::default()),
        ContentType::ListenersList(Default::default()),
        ContentType::WorkerMetrics(Default::default()),
        ContentType::AvailableMetrics(Default::default()),
        ContentType::Clusters(Default::default()),
        ContentType::ClusterHashes(Default::default()),
        ContentType::CertificatesByAddress(Default::default()),
        ContentType::CertificatesWithFingerprints(Default::default()),
        ContentType::RequestCounts(Default::default()),
        ContentType::MaxConnectionsPerIpLimit(Default::default()),
        ContentType::HealthChecksList(Default::default()),
        ContentType::MetricDetailStatus(Default::default()),
        ContentType::WorkerMetricDetailStatus(Default::default()),
        ContentType::ListenSockets(Default::default()),
    ];
    for content in contents {
        let tag = content_tag(&content);
        let message = ResponseContent {
            content_type: Some(content.clone()),
        };
        let bytes = message.encode_to_vec();
        assert_eq!(first_tag(&bytes), tag, "{content:?}");
        assert_eq!(ResponseContent::decode(bytes.as_slice()).unwrap(), message);
    }
}
