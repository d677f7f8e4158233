//! The webhook's certificates: its own CA and a serving certificate, kept in one Secret, and
//! rotated with an overlap so the API server never meets a certificate it does not trust.
//!
//! Everything here is a pure function of the Secret's data and the time; the Kubernetes I/O
//! (create-only Secret, `caBundle` patches) lives in `controller::certs`.
//!
//! Rotation, in steps the leader takes on successive passes:
//! 1. When the CA has less than a third of its life left, a next CA is made and added to the
//!    bundle (`ca-bundle.crt` = next + current); the serving certificate is unchanged.
//! 2. Once the bundle with the next CA has been published for `overlap`, the next CA becomes the
//!    CA and the serving certificate is reissued from it; the old CA stays in the bundle
//!    (`ca-previous.crt`) until it expires, for replicas that still present the old certificate.
//! 3. The serving certificate is reissued whenever it has less than a third of its life left,
//!    its names changed, or it was not issued by the current CA.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NEXT_CA_CERT: &str = "ca-next.crt";
pub const NEXT_CA_KEY: &str = "ca-next.key";
/// When the next CA was first published in the bundle (Unix seconds).
pub const NEXT_CA_SINCE: &str = "ca-next.since";
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// Every CA the API server must trust: what goes into `caBundle`.
pub const CA_BUNDLE: &str = "ca-bundle.crt";

/// The Secret's data, as text.
pub type Material = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{key}: not a PEM certificate: {reason}")]
    Parse { key: String, reason: String },
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// Lifetimes of what the leader issues.
#[derive(Debug, Clone)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
    /// How long the bundle carries the next CA before certificates are issued from it.
    pub overlap: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ca: Duration::from_secs(5 * 365 * 86_400),
            serving: Duration::from_secs(365 * 86_400),
            overlap: Duration::from_secs(3600),
        }
    }
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A new self-signed CA valid from a minute ago (clock skew) for `life`: (cert PEM, key PEM).
pub fn new_ca(now: i64, life: Duration) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("mcp-warden webhook CA {now}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(now - BACKDATE);
    p.not_after = at(now + life.as_secs() as i64);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` (DNS names or IP addresses) issued by the CA.
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: i64,
    life: Duration,
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = at(now - BACKDATE);
    p.not_after = at(now + life.as_secs() as i64);
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What the first certificate of a PEM text says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    pub names: Vec<String>,
    pub issuer: String,
    pub subject: String,
}

/// Reads the first certificate of `pem` (the value of `key`, named in errors).
pub fn info(key: &str, pem: &str) -> Result<CertInfo, TlsError> {
    let err = |reason: String| TlsError::Parse {
        key: key.to_string(),
        reason,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| err(e.to_string()))?;
    let cert = block.parse_x509().map_err(|e| err(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip: Option<std::net::IpAddr> = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(Into::into),
                        16 => <[u8; 16]>::try_from(*b).ok().map(Into::into),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    })
}

fn get<'m>(m: &'m Material, key: &'static str) -> Result<&'m str, TlsError> {
    m.get(key)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(TlsError::Missing(key))
}

/// How far back `not_before` is set, for clocks that run behind the issuer's.
const BACKDATE: i64 = 60;

/// Less than a third of the certificate's life is left. The life is counted from the issue
/// time, not from the backdated `not_before` (with short lifetimes the backdating would
/// otherwise make a new certificate due at once).
fn due(c: &CertInfo, now: i64) -> bool {
    let span = c.not_after - c.not_before;
    let life = if span > BACKDATE {
        span - BACKDATE
    } else {
        span
    }
    .max(1);
    c.not_after - now < life / 3
}

/// The next state of the Secret's data, or `None` when nothing needs to change. Unreadable
/// material is replaced as a whole (a fresh CA and certificate).
pub fn next(
    current: Option<&Material>,
    names: &[String],
    now: i64,
    life: &Lifetimes,
) -> Result<Option<Material>, TlsError> {
    let fresh = || -> Result<Material, TlsError> {
        let (ca, ca_key) = new_ca(now, life.ca)?;
        let (crt, key) = issue(&ca, &ca_key, names, now, life.serving)?;
        Ok(Material::from([
            (CA_CERT.into(), ca.clone()),
            (CA_KEY.into(), ca_key),
            (TLS_CERT.into(), crt),
            (TLS_KEY.into(), key),
            (CA_BUNDLE.into(), ca),
        ]))
    };
    let Some(cur) = current else {
        return fresh().map(Some);
    };
    match step(cur, names, now, life) {
        Ok(out) => Ok(out),
        Err(TlsError::Generate(e)) => Err(TlsError::Generate(e)),
        Err(e) => {
            tracing::warn!(error = %e, "webhook certificate material unreadable; issuing a new CA");
            fresh().map(Some)
        }
    }
}

fn step(
    cur: &Material,
    names: &[String],
    now: i64,
    life: &Lifetimes,
) -> Result<Option<Material>, TlsError> {
    let mut m = cur.clone();
    let ca = info(CA_CERT, get(&m, CA_CERT)?)?;
    get(&m, CA_KEY)?;
    if let (Some(since), Some(_)) = (m.get(NEXT_CA_SINCE), m.get(NEXT_CA_CERT)) {
        let since: i64 = since.parse().unwrap_or(now);
        if now - since >= life.overlap.as_secs() as i64 {
            promote_next_ca(&mut m);
        }
    } else if due(&ca, now) && !m.contains_key(NEXT_CA_CERT) {
        // Step 1: publish a next CA beside the current one.
        let (next_ca, next_key) = new_ca(now, life.ca)?;
        m.insert(NEXT_CA_CERT.into(), next_ca);
        m.insert(NEXT_CA_KEY.into(), next_key);
        m.insert(NEXT_CA_SINCE.into(), now.to_string());
    }
    // The previous CA leaves the bundle when it expires.
    if let Some(prev) = m.get(PREVIOUS_CA_CERT) {
        if info(PREVIOUS_CA_CERT, prev).map_or(true, |p| p.not_after <= now) {
            m.remove(PREVIOUS_CA_CERT);
        }
    }
    // Step 3: the serving certificate.
    if needs_serving_cert(&m, names, now)? {
        let (crt, key) = issue(
            get(&m, CA_CERT)?,
            get(&m, CA_KEY)?,
            names,
            now,
            life.serving,
        )?;
        m.insert(TLS_CERT.into(), crt);
        m.insert(TLS_KEY.into(), key);
    }
    let bundle: String = [NEXT_CA_CERT, CA_CERT, PREVIOUS_CA_CERT]
        .iter()
        .filter_map(|k| m.get(*k))
        .map(|pem| {
            let mut p = pem.trim_end().to_string();
            p.push('\n');
            p
        })
        .collect();
    m.insert(CA_BUNDLE.into(), bundle);
    Ok((m != *cur).then_some(m))
}

/// Step 2: the next CA becomes the CA once the bundle carrying it has been out long enough; the
/// old one stays in the bundle as the previous CA, and the serving certificate is reissued.
fn promote_next_ca(m: &mut Material) {
    let old = m.remove(CA_CERT).unwrap_or_default();
    m.remove(CA_KEY);
    let next_cert = m.remove(NEXT_CA_CERT).unwrap_or_default();
    let next_key = m.remove(NEXT_CA_KEY).unwrap_or_default();
    m.insert(CA_CERT.into(), next_cert);
    m.insert(CA_KEY.into(), next_key);
    m.remove(NEXT_CA_SINCE);
    m.insert(PREVIOUS_CA_CERT.into(), old);
    m.remove(TLS_CERT);
}

/// Whether the serving certificate must be issued again: missing or unreadable, due, for other
/// names, or not signed by the current CA.
fn needs_serving_cert(m: &Material, names: &[String], now: i64) -> Result<bool, TlsError> {
    let ca = info(CA_CERT, get(m, CA_CERT)?)?;
    let Some(crt) = m.get(TLS_CERT).filter(|s| !s.is_empty()) else {
        return Ok(true);
    };
    Ok(match info(TLS_CERT, crt) {
        Ok(leaf) => {
            let mut want = names.to_vec();
            let mut have = leaf.names.clone();
            want.sort();
            have.sort();
            due(&leaf, now) || want != have || leaf.issuer != ca.subject
        }
        Err(_) => true,
    })
}

/// The serving certificate and key as rustls wants them.
pub fn certified_key(
    material: &Material,
) -> Result<std::sync::Arc<tokio_rustls::rustls::sign::CertifiedKey>, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let parse = |key: &str, reason: String| TlsError::Parse {
        key: key.into(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(get(material, TLS_CERT)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| parse(TLS_CERT, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(get(material, TLS_KEY)?.as_bytes())
        .map_err(|e| parse(TLS_KEY, e.to_string()))?;
    let signing = tokio_rustls::rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| parse(TLS_KEY, e.to_string()))?;
    Ok(std::sync::Arc::new(
        tokio_rustls::rustls::sign::CertifiedKey::new(chain, signing),
    ))
}
