//! Certificates as the state keeps them: the PEM text of a
//! `CertificateAndKey` decoded and checked far enough to key it by its
//! fingerprint and to name the hostnames it serves.
//!
//! What is checked here (the master's state, every worker's state): the
//! certificate field holds exactly one PEM `CERTIFICATE` that parses as
//! X.509 v3, each chain entry holds PEM certificates only, the key field
//! holds one PEM private key (PKCS#8, PKCS#1 or SEC1). Whether the key can
//! sign and matches the certificate is checked by the TLS module of
//! `sozu-lib` (`tls::certificate`), which the master runs before a worker
//! sees the order. The validity dates are not checked: an expired
//! certificate is accepted (doc/security.md says why).
//!
//! Pure: no I/O, no clock. Never panics on its input.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::command::CertificateAndKey;

/// Largest PEM text accepted in one field: a certificate chain of a few
/// certificates is a few KiB; this bound keeps an order from carrying
/// megabytes of "certificate".
pub const MAX_PEM_SIZE: usize = 64 * 1024;

/// Most certificates accepted in a chain.
pub const MAX_CHAIN_LENGTH: usize = 16;

/// A certificate's SHA-256 fingerprint: the digest of the leaf
/// certificate's DER encoding, as Sōzu computes it. Printed and parsed as
/// 64 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a fingerprint given as text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is 64 hexadecimal digits (SHA-256)")]
pub struct FingerprintParseError;

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(FingerprintParseError);
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = &text[2 * i..2 * i + 2];
            *byte = u8::from_str_radix(pair, 16).map_err(|_| FingerprintParseError)?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Why a certificate or its key was refused. `field` names the order's
/// field (`certificate.certificate`, `certificate.key`…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The field is larger than [`MAX_PEM_SIZE`].
    #[error("{field}: {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The order's field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The field is not PEM, or holds no section of the expected kind.
    #[error("{field}: not a PEM {expected}: {detail}")]
    Pem {
        /// The order's field.
        field: &'static str,
        /// What the field must hold (`CERTIFICATE`, `PRIVATE KEY`).
        expected: &'static str,
        /// What the PEM decoder said.
        detail: String,
    },
    /// The field holds more (or other) PEM sections than it may.
    #[error("{field}: {reason}")]
    Shape {
        /// The order's field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The certificate decodes from PEM but is not an X.509 v3 certificate.
    #[error("{field}: not an X.509 certificate: {detail}")]
    NotX509 {
        /// The order's field.
        field: &'static str,
        /// What the X.509 parser said.
        detail: String,
    },
    /// A name in `names` is not a DNS name or a `*.` wildcard.
    #[error("certificate.names: {name:?} is not a DNS name or a wildcard (*.example.com)")]
    BadName {
        /// The name.
        name: String,
    },
}

/// A certificate and key whose PEM decoded: what the state and the TLS
/// module need from it.
#[derive(Debug)]
pub struct DecodedCertificate {
    /// The leaf certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The leaf first, then the chain, DER-encoded.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key, DER-encoded.
    pub key: PrivateKeyDer<'static>,
    /// The hostnames it serves, lowercase: the order's `names` when given,
    /// else the certificate's DNS subject alternative names (exact names
    /// and `*.` wildcards).
    pub names: Vec<String>,
}

fn check_size(field: &'static str, text: &str) -> Result<(), CertificateError> {
    if text.len() > MAX_PEM_SIZE {
        return Err(CertificateError::TooLarge {
            field,
            size: text.len(),
            max: MAX_PEM_SIZE,
        });
    }
    Ok(())
}

/// Every `CERTIFICATE` section of `text`; anything else in it (another
/// kind of section) is refused.
fn certificates(
    field: &'static str,
    text: &str,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    check_size(field, text)?;
    let mut out = Vec::new();
    for section in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let der = section.map_err(|e| CertificateError::Pem {
            field,
            expected: "CERTIFICATE",
            detail: e.to_string(),
        })?;
        out.push(der);
        if out.len() > MAX_CHAIN_LENGTH {
            return Err(CertificateError::Shape {
                field,
                reason: "more than 16 certificates",
            });
        }
    }
    Ok(out)
}

fn private_key(text: &str) -> Result<PrivateKeyDer<'static>, CertificateError> {
    const FIELD: &str = "certificate.key";
    check_size(FIELD, text)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| CertificateError::Pem {
        field: FIELD,
        expected: "PRIVATE KEY (PKCS#8, RSA or EC)",
        detail: e.to_string(),
    })
}

/// Whether `name` is a DNS name or a `*.` wildcard over one.
fn is_host_pattern(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The fingerprint of the one certificate in `pem` (a leaf certificate
/// file), as `field` in errors.
pub fn fingerprint_of_pem(field: &'static str, pem: &str) -> Result<Fingerprint, CertificateError> {
    let certificates = certificates(field, pem)?;
    match certificates.as_slice() {
        [leaf] => Ok(Fingerprint::of_der(leaf.as_ref())),
        [] => Err(CertificateError::Pem {
            field,
            expected: "CERTIFICATE",
            detail: "no CERTIFICATE section found".to_owned(),
        }),
        _ => Err(CertificateError::Shape {
            field,
            reason: "holds more than one certificate",
        }),
    }
}

/// Decodes and checks `certificate` (see the module documentation).
pub fn decode(certificate: &CertificateAndKey) -> Result<DecodedCertificate, CertificateError> {
    const LEAF: &str = "certificate.certificate";
    let mut chain = certificates(LEAF, &certificate.certificate)?;
    match chain.len() {
        0 => {
            return Err(CertificateError::Pem {
                field: LEAF,
                expected: "CERTIFICATE",
                detail: "no CERTIFICATE section found".to_owned(),
            })
        }
        1 => {}
        _ => {
            return Err(CertificateError::Shape {
                field: LEAF,
                reason:
                    "holds more than one certificate (put the intermediates in certificate_chain)",
            })
        }
    }
    for entry in &certificate.certificate_chain {
        let entry = certificates("certificate.certificate_chain", entry)?;
        if entry.is_empty() {
            return Err(CertificateError::Pem {
                field: "certificate.certificate_chain",
                expected: "CERTIFICATE",
                detail: "an entry holds no CERTIFICATE section".to_owned(),
            });
        }
        chain.extend(entry);
        if chain.len() > MAX_CHAIN_LENGTH {
            return Err(CertificateError::Shape {
                field: "certificate.certificate_chain",
                reason: "more than 16 certificates",
            });
        }
    }
    let key = private_key(&certificate.key)?;
    let leaf =
        webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| CertificateError::NotX509 {
            field: LEAF,
            detail: e.to_string(),
        })?;
    let names = if certificate.names.is_empty() {
        let mut names: Vec<String> = leaf
            .valid_dns_names()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    } else {
        let mut names = Vec::with_capacity(certificate.names.len());
        for name in &certificate.names {
            let normalized = name.trim_end_matches('.').to_ascii_lowercase();
            if !is_host_pattern(&normalized) {
                return Err(CertificateError::BadName { name: name.clone() });
            }
            names.push(normalized);
        }
        names.sort();
        names.dedup();
        names
    };
    let fingerprint = Fingerprint::of_der(chain[0].as_ref());
    Ok(DecodedCertificate {
        fingerprint,
        chain,
        key,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn order(cert: &str, key: &str) -> CertificateAndKey {
        CertificateAndKey {
            certificate: cert.to_owned(),
            key: key.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_certificate_is_keyed_by_the_sha256_of_its_der_and_named_by_its_sans() {
        let (cert, key) = self_signed(&["www.example.com", "*.Example.org"]);
        let decoded = decode(&order(&cert, &key)).expect("decodes");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(decoded.fingerprint, Fingerprint::of_der(der.as_ref()));
        assert_eq!(decoded.names, ["*.example.org", "www.example.com"]);
        let text = decoded.fingerprint.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Fingerprint>(), Ok(decoded.fingerprint));
    }

    #[test]
    fn names_given_in_the_order_override_the_certificate_and_are_checked() {
        let (cert, key) = self_signed(&["a.example.com"]);
        let mut given = order(&cert, &key);
        given.names = vec!["B.example.com.".to_owned()];
        assert_eq!(decode(&given).unwrap().names, ["b.example.com"]);
        given.names = vec!["not a name".to_owned()];
        assert!(matches!(
            decode(&given),
            Err(CertificateError::BadName { .. })
        ));
    }

    #[test]
    fn garbage_refusals_name_the_field() {
        let (cert, key) = self_signed(&["a.example.com"]);
        let error = decode(&order("hello", &key)).unwrap_err().to_string();
        assert!(error.starts_with("certificate.certificate:"), "{error}");
        let error = decode(&order(&cert, "hello")).unwrap_err().to_string();
        assert!(error.starts_with("certificate.key:"), "{error}");
        let two = format!("{cert}{cert}");
        let error = decode(&order(&two, &key)).unwrap_err().to_string();
        assert!(error.contains("more than one"), "{error}");
        // Valid PEM around bytes that are not a certificate.
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = decode(&order(bogus, &key)).unwrap_err().to_string();
        assert!(error.contains("not an X.509 certificate"), "{error}");
        let mut chained = order(&cert, &key);
        chained.certificate_chain = vec![key.clone()];
        let error = decode(&chained).unwrap_err().to_string();
        assert!(
            error.starts_with("certificate.certificate_chain"),
            "{error}"
        );
    }

    /// Whatever the command socket carries, decoding answers and never
    /// panics: arbitrary text, and a real certificate with bytes of its
    /// base64 body replaced.
    #[test]
    fn decoding_arbitrary_or_corrupted_pem_never_panics() {
        fn arbitrary(certificate: String, key: String, chain: Vec<String>) -> bool {
            let order = CertificateAndKey {
                certificate,
                key,
                certificate_chain: chain,
                ..Default::default()
            };
            let _ = decode(&order);
            let _ = fingerprint_of_pem("certificate", &order.certificate);
            true
        }
        quickcheck::QuickCheck::new()
            .tests(300)
            .quickcheck(arbitrary as fn(String, String, Vec<String>) -> bool);

        let (cert, key) = self_signed(&["a.example.com"]);
        const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        // A fixed LCG: the same 300 corruptions on every run.
        let mut seed: u64 = 0x5eed;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        let header = "-----BEGIN CERTIFICATE-----\n".len();
        let body_len = cert.len() - header - "-----END CERTIFICATE-----\n".len();
        for _ in 0..300 {
            let mut bytes = cert.clone().into_bytes();
            for _ in 0..1 + next() % 4 {
                let index = header + next() % body_len;
                // Stay in the base64 alphabet so the PEM still decodes and
                // the X.509 parser sees the damage (line breaks stay).
                if bytes[index] != b'\n' {
                    bytes[index] = BASE64[next() % 64];
                }
            }
            let text = String::from_utf8(bytes).expect("ASCII");
            let _ = decode(&order(&text, &key));
        }
    }

    #[test]
    fn fingerprints_parse_only_from_64_hex_digits() {
        assert!("zz".parse::<Fingerprint>().is_err());
        assert!("é".repeat(32).parse::<Fingerprint>().is_err());
        assert!("0".repeat(63).parse::<Fingerprint>().is_err());
        assert_eq!(
            "00".repeat(32).parse::<Fingerprint>(),
            Ok(Fingerprint([0; 32]))
        );
    }
}
