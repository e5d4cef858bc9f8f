//! `sozu certificate …` and `sozu https …` (also Sōzu's `listener https`
//! and `frontend https`): their arguments and the orders they become.
//!
//! PEM files are read while the command line is parsed (a missing or
//! unreadable file is a usage error naming the flag and the file); turning
//! the arguments into orders is pure, as in `request.rs`. The master checks
//! the certificates themselves and refuses a bad one with the reason.

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use sozu_command_lib::certificate::fingerprint_of_pem;
use sozu_command_lib::command::{
    request::RequestType, AddCertificate, AlpnProtocols, CertificateAndKey, HttpsListenerConfig,
    ListenerType, QueryCertificatesFilters, RemoveCertificate, ReplaceCertificate, TlsVersion,
    UpdateHttpsListenerConfig,
};

use super::request::{
    http_listener_add, http_listener_patch, http_route, list_frontends_of, list_listeners,
    listener_lifecycle, message, step, update_order, Lifecycle, PlanError, Protocols, Step, View,
};
use crate::cli::{FrontendOrderCmd, HttpFrontendArgs, HttpListenerKnobs, ListenerAddressArgs};

/// The text of a PEM file given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PemFile(pub(crate) String);

/// Reads a PEM file for clap (its error is shown as the flag's).
fn pem_file(path: &str) -> Result<PemFile, String> {
    const MAX: u64 = sozu_command_lib::certificate::MAX_PEM_SIZE as u64;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .len();
    if size > MAX {
        return Err(format!(
            "{path} is {size} bytes, over the {MAX} a PEM file may have"
        ));
    }
    std::fs::read_to_string(path)
        .map(PemFile)
        .map_err(|e| format!("cannot read {path}: {e}"))
}

/// A TLS version as Sōzu's CLI spells it (`TLS_V12`) or the protocol does
/// (`TLS_V1_2`).
fn tls_version(text: &str) -> Result<TlsVersion, String> {
    match text {
        "SSL_V2" => Ok(TlsVersion::SslV2),
        "SSL_V3" => Ok(TlsVersion::SslV3),
        "TLS_V10" | "TLS_V1_0" => Ok(TlsVersion::TlsV10),
        "TLS_V11" | "TLS_V1_1" => Ok(TlsVersion::TlsV11),
        "TLS_V12" | "TLS_V1_2" => Ok(TlsVersion::TlsV12),
        "TLS_V13" | "TLS_V1_3" => Ok(TlsVersion::TlsV13),
        _ => Err(format!("{text:?} is not a TLS version (TLS_V12, TLS_V13)")),
    }
}

/// `sozu certificate …`
#[derive(Debug, Subcommand)]
pub(crate) enum CertificateCmd {
    /// Add a certificate to an HTTPS listener.
    Add(CertificateAddArgs),
    /// Replace a certificate of an HTTPS listener (named by its
    /// fingerprint, or by its certificate file).
    Replace(CertificateReplaceArgs),
    /// Remove a certificate from an HTTPS listener.
    Remove(CertificateRemoveArgs),
    /// List the certificates (fingerprint and names; never the keys).
    List(CertificateListArgs),
}

/// The certificate, chain and key files of a certificate order.
#[derive(Debug, Args)]
pub(crate) struct CertificateFiles {
    /// The certificate (PEM).
    #[arg(long = "certificate", visible_alias = "new-certificate", value_parser = pem_file)]
    pub(crate) certificate: PemFile,
    /// The intermediate certificates (PEM), if any.
    #[arg(long = "certificate-chain", visible_alias = "new-certificate-chain", value_parser = pem_file)]
    pub(crate) chain: Option<PemFile>,
    /// The private key (PEM: PKCS#8, RSA or EC).
    #[arg(long = "key", visible_alias = "new-key", value_parser = pem_file)]
    pub(crate) key: PemFile,
    /// TLS versions the certificate is meant for (kept with it).
    #[arg(long = "tls-versions", value_parser = tls_version, value_delimiter = ',')]
    pub(crate) versions: Vec<TlsVersion>,
}

impl CertificateFiles {
    fn to_wire(&self) -> CertificateAndKey {
        CertificateAndKey {
            certificate: self.certificate.0.clone(),
            certificate_chain: self.chain.iter().map(|c| c.0.clone()).collect(),
            key: self.key.0.clone(),
            versions: self.versions.iter().map(|v| *v as i32).collect(),
            names: Vec::new(),
        }
    }
}

/// `sozu certificate add`
#[derive(Debug, Args)]
pub(crate) struct CertificateAddArgs {
    /// Address of the HTTPS listener.
    #[arg(short = 'a', long = "address")]
    pub(crate) address: SocketAddr,
    #[command(flatten)]
    pub(crate) files: CertificateFiles,
}

/// Which certificate an order names: its fingerprint, or its file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct CertificateRef {
    /// The certificate's SHA-256 fingerprint (as `certificate list` shows).
    #[arg(
        id = "old_fingerprint",
        long = "fingerprint",
        visible_alias = "old-fingerprint"
    )]
    pub(crate) fingerprint: Option<String>,
    /// The certificate's file (its fingerprint is computed).
    #[arg(id = "old_certificate", long = "old-certificate", value_parser = pem_file)]
    pub(crate) certificate: Option<PemFile>,
}

impl CertificateRef {
    /// The fingerprint as text; a file that is not one certificate is a
    /// usage error.
    fn fingerprint(&self) -> Result<String, PlanError> {
        match (&self.fingerprint, &self.certificate) {
            (Some(fingerprint), _) => Ok(fingerprint.clone()),
            (None, Some(file)) => fingerprint_of_pem("--old-certificate", &file.0)
                .map(|f| f.to_string())
                .map_err(|e| PlanError::Invalid(e.to_string())),
            (None, None) => Err(PlanError::Invalid(
                "name the certificate with --fingerprint or --old-certificate".to_owned(),
            )),
        }
    }
}

/// `sozu certificate replace`
#[derive(Debug, Args)]
pub(crate) struct CertificateReplaceArgs {
    /// Address of the HTTPS listener.
    #[arg(short = 'a', long = "address")]
    pub(crate) address: SocketAddr,
    #[command(flatten)]
    pub(crate) old: CertificateRef,
    #[command(flatten)]
    pub(crate) files: CertificateFiles,
}

/// `sozu certificate remove`
#[derive(Debug, Args)]
pub(crate) struct CertificateRemoveArgs {
    /// Address of the HTTPS listener.
    #[arg(short = 'a', long = "address")]
    pub(crate) address: SocketAddr,
    /// The certificate's SHA-256 fingerprint.
    #[arg(
        long = "fingerprint",
        short = 'f',
        conflicts_with = "certificate",
        required_unless_present = "certificate"
    )]
    pub(crate) fingerprint: Option<String>,
    /// The certificate's file (its fingerprint is computed).
    #[arg(long = "certificate", value_parser = pem_file)]
    pub(crate) certificate: Option<PemFile>,
}

/// `sozu certificate list`
#[derive(Debug, Args)]
pub(crate) struct CertificateListArgs {
    /// Only the certificates serving this hostname.
    #[arg(short = 'd', long = "domain")]
    pub(crate) domain: Option<String>,
    /// Only the certificate with this fingerprint.
    #[arg(short = 'f', long = "fingerprint")]
    pub(crate) fingerprint: Option<String>,
    /// Ask every worker for what it holds instead of the master's state.
    #[arg(long = "query-workers")]
    pub(crate) query_workers: bool,
}

/// The orders of `sozu certificate …`.
pub(crate) fn certificate(cmd: &CertificateCmd) -> Result<Vec<Step>, PlanError> {
    Ok(match cmd {
        CertificateCmd::Add(args) => vec![message(RequestType::AddCertificate(AddCertificate {
            address: args.address.into(),
            certificate: args.files.to_wire(),
            expired_at: None,
        }))],
        CertificateCmd::Replace(args) => {
            vec![message(RequestType::ReplaceCertificate(
                ReplaceCertificate {
                    address: args.address.into(),
                    new_certificate: args.files.to_wire(),
                    old_fingerprint: args.old.fingerprint()?,
                    new_expired_at: None,
                },
            ))]
        }
        CertificateCmd::Remove(args) => {
            let fingerprint = CertificateRef {
                fingerprint: args.fingerprint.clone(),
                certificate: args.certificate.clone(),
            }
            .fingerprint()
            .map_err(|e| match e {
                PlanError::Invalid(m) => {
                    PlanError::Invalid(m.replace("--old-certificate", "--certificate"))
                }
                other => other,
            })?;
            vec![message(RequestType::RemoveCertificate(RemoveCertificate {
                address: args.address.into(),
                fingerprint,
            }))]
        }
        CertificateCmd::List(args) => {
            let filters = QueryCertificatesFilters {
                domain: args.domain.clone(),
                fingerprint: args.fingerprint.clone(),
            };
            let order = if args.query_workers {
                RequestType::QueryCertificatesFromWorkers(filters)
            } else {
                RequestType::QueryCertificatesFromTheState(filters)
            };
            vec![step(order, View::Certificates)]
        }
    })
}

/// `sozu https …`
#[derive(Debug, Subcommand)]
pub(crate) enum HttpsCmd {
    /// HTTPS listeners (HTTP/1.1 over TLS, served by the workers).
    #[command(subcommand)]
    Listener(HttpsListenerCmd),
    /// HTTPS frontends (address + hostname + path → cluster).
    #[command(subcommand)]
    Frontend(FrontendOrderCmd<HttpFrontendArgs>),
}

/// The TLS settings of an HTTPS listener (`add` only: changing them
/// replaces the listener, e.g. with `sozu reload`).
#[derive(Debug, Args)]
pub(crate) struct HttpsTlsArgs {
    /// The listener's default certificate (PEM), with `--key`.
    #[arg(long = "certificate", value_parser = pem_file, requires = "key")]
    pub(crate) certificate: Option<PemFile>,
    /// Its intermediate certificates (PEM).
    #[arg(long = "certificate-chain", value_parser = pem_file, requires = "certificate")]
    pub(crate) chain: Option<PemFile>,
    /// Its private key (PEM).
    #[arg(long = "key", value_parser = pem_file, requires = "certificate")]
    pub(crate) key: Option<PemFile>,
    /// TLS versions (TLS_V12, TLS_V13) [default: both].
    #[arg(long = "tls-versions", value_parser = tls_version, value_delimiter = ',')]
    pub(crate) versions: Vec<TlsVersion>,
    /// Cipher suites in preference order (IANA, rustls or OpenSSL names).
    #[arg(long = "cipher-list", value_delimiter = ',')]
    pub(crate) cipher_list: Vec<String>,
    /// Key exchange groups (x25519, P-256, P-384).
    #[arg(long = "groups", value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    /// Signature schemes the server signs with.
    #[arg(long = "signature-algorithms", value_delimiter = ',')]
    pub(crate) signature_algorithms: Vec<String>,
    /// TLS 1.3 session tickets sent after a handshake (0..=16) [default: 4].
    #[arg(long = "send-tls13-tickets")]
    pub(crate) tickets: Option<u64>,
}

/// `sozu https listener …`
#[derive(Debug, Subcommand)]
pub(crate) enum HttpsListenerCmd {
    /// Add an HTTPS listener (active unless `--inactive`).
    Add {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: HttpListenerKnobs,
        #[command(flatten)]
        tls: Box<HttpsTlsArgs>,
        /// ALPN protocols (http/1.1; h2 is accepted and not offered yet).
        #[arg(long = "alpn", value_delimiter = ',')]
        alpn: Vec<String>,
        /// Add only: do not activate the listener.
        #[arg(long)]
        inactive: bool,
    },
    /// Change the given fields of an HTTPS listener in place.
    Update {
        #[command(flatten)]
        address: ListenerAddressArgs,
        #[command(flatten)]
        knobs: HttpListenerKnobs,
        /// ALPN protocols (replace the list).
        #[arg(long = "alpn", value_delimiter = ',')]
        alpn: Vec<String>,
    },
    /// Remove an HTTPS listener, its frontends and its certificates.
    Remove(ListenerAddressArgs),
    /// Mark an HTTPS listener active.
    Activate(ListenerAddressArgs),
    /// Mark an HTTPS listener inactive.
    Deactivate(ListenerAddressArgs),
    /// List the HTTPS listeners.
    List,
}

/// The orders of `sozu https listener …`.
pub(crate) fn https_listener(cmd: &HttpsListenerCmd) -> Result<Vec<Step>, PlanError> {
    let proxy = ListenerType::Https;
    Ok(match cmd {
        HttpsListenerCmd::Add {
            address,
            knobs,
            tls,
            alpn,
            inactive,
        } => {
            let config = http_listener_add!(
                HttpsListenerConfig,
                address.address,
                knobs,
                active: !inactive,
                versions: tls.versions.iter().map(|v| *v as i32).collect(),
                cipher_list: tls.cipher_list.clone(),
                signature_algorithms: tls.signature_algorithms.clone(),
                groups_list: tls.groups.clone(),
                certificate: tls.certificate.as_ref().map(|c| c.0.clone()),
                certificate_chain: tls.chain.iter().map(|c| c.0.clone()).collect(),
                key: tls.key.as_ref().map(|k| k.0.clone()),
                send_tls13_tickets: tls.tickets.unwrap_or(4),
                alpn_protocols: alpn.clone(),
            );
            vec![message(RequestType::AddHttpsListener(config))]
        }
        HttpsListenerCmd::Update {
            address,
            knobs,
            alpn,
        } => update_order(
            address.address,
            http_listener_patch!(
                UpdateHttpsListenerConfig,
                address.address,
                knobs,
                alpn_protocols: (!alpn.is_empty()).then(|| AlpnProtocols {
                    values: alpn.clone(),
                }),
            ),
            UpdateHttpsListenerConfig {
                address: address.address.into(),
                ..Default::default()
            },
            RequestType::UpdateHttpsListener,
        )?,
        HttpsListenerCmd::Remove(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Remove)]
        }
        HttpsListenerCmd::Activate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Activate)]
        }
        HttpsListenerCmd::Deactivate(a) => {
            vec![listener_lifecycle(a.address, proxy, Lifecycle::Deactivate)]
        }
        HttpsListenerCmd::List => vec![list_listeners(Protocols::only(proxy))],
    })
}

/// The order of `sozu https frontend …`.
pub(crate) fn https_frontend(cmd: &FrontendOrderCmd<HttpFrontendArgs>) -> Step {
    match cmd {
        FrontendOrderCmd::Add(args) => message(RequestType::AddHttpsFrontend(http_route(args))),
        FrontendOrderCmd::Remove(args) => {
            message(RequestType::RemoveHttpsFrontend(http_route(args)))
        }
        FrontendOrderCmd::List => list_frontends_of(Protocols::only(ListenerType::Https)),
    }
}
