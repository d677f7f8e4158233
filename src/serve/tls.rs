//! The serving certificate, swapped in place when the Secret holding it changes.

use arc_swap::ArcSwapOption;
use std::sync::Arc;
use tokio_rustls::rustls;

/// The current serving certificate; none until one is loaded.
#[derive(Debug, Default)]
pub struct CertSlot(ArcSwapOption<rustls::sign::CertifiedKey>);

impl CertSlot {
    pub fn set(&self, key: Arc<rustls::sign::CertifiedKey>) {
        self.0.store(Some(key));
    }

    pub fn loaded(&self) -> bool {
        self.0.load().is_some()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.load_full()
    }
}

/// The rustls configuration serving whatever the slot holds (HTTP/1.1 only).
pub fn config(certs: Arc<CertSlot>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}
