//! TLS test set-ups shared by lib's own tests (`tls/tests.rs`,
//! `lib/tests/`), the `tls_http` fuzz driver (`fuzz/src/tls_http.rs`) and
//! the e2e HTTPS tests (`e2e/tests/https.rs`): a self-signed certificate
//! order, a client-side verifier that records the certificate the server
//! presented, and a rustls client configuration on the same provider as the
//! worker.
//!
//! Compiled only for lib's own tests and with the `testing` feature, which
//! only dev-dependencies (and the fuzz crate) enable: the `sozu` binary's
//! own build never contains it. Test code: a failure here is a broken test
//! set-up, so it panics with what failed.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sozu_command_lib::command::CertificateAndKey;

/// The worker's crypto provider (rustls on ring), for test clients.
pub fn provider() -> Arc<CryptoProvider> {
    super::provider()
}

/// A certificate order for `names`, self-signed with a fresh P-256 key.
pub fn self_signed(names: &[&str]) -> CertificateAndKey {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("certificate names");
    let cert = params.self_signed(&key).expect("a self-signed certificate");
    CertificateAndKey {
        certificate: cert.pem(),
        key: key.serialize_pem(),
        ..Default::default()
    }
}

/// A client-side verifier that records the leaf certificate the server
/// presented, then either accepts it whatever its name and issuer (to see
/// which certificate a handshake got) or verifies it like a browser
/// against trusted roots. The handshake's signatures are always verified.
#[derive(Debug)]
pub struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    /// `None`: any certificate is accepted.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl RecordingVerifier {
    /// Accepts any server certificate.
    pub fn accept_any() -> Self {
        RecordingVerifier {
            provider: provider(),
            webpki: None,
            seen: Mutex::new(None),
        }
    }

    /// Accepts a certificate for the server name that chains to `roots`.
    pub fn trusting(roots: Arc<RootCertStore>) -> Self {
        let provider = provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .expect("a verifier over the given roots");
        RecordingVerifier {
            provider,
            webpki: Some(webpki),
            seen: Mutex::new(None),
        }
    }

    /// The DER of the last leaf certificate a server presented.
    pub fn leaf(&self) -> Option<Vec<u8>> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or(None)
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        match &self.webpki {
            Some(webpki) => {
                webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration offering `versions` and the ALPN protocols
/// `alpn`, its server certificates checked by `verifier`.
pub fn client_config(
    verifier: Arc<RecordingVerifier>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions the ring provider has")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
