//! TLS from `--web.config.file`: the server configuration built from the
//! certificate, key and client CA files, and built again when one of them
//! changes (checked at each new connection), so a renewed certificate is
//! used without a restart; a broken renewal keeps the previous one and is
//! logged.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;

use crate::untrusted_file::{self, Bound};

/// The largest certificate, key or CA file read (a chain of a dozen
/// certificates is tens of kilobytes).
const MAX_TLS_FILE: Bound = Bound {
    what: "a TLS file",
    max: 1 << 20,
};

/// A TLS file named by the web config file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("web config file {path}: {what} {file} cannot be used")]
pub(crate) struct TlsFileError {
    path: PathBuf,
    what: &'static str,
    file: PathBuf,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Which client certificates are asked for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(super) enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(super) enum MinVersion {
    #[default]
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// Where the TLS files are and how clients are checked.
#[derive(Clone, Debug)]
pub(crate) struct TlsSettings {
    pub(super) config_path: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) client_auth: ClientAuth,
    pub(super) min_version: MinVersion,
}

type Versions = Vec<Option<(u64, u64, i64, i64)>>;

fn versions(files: &[&Path]) -> Versions {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// The TLS configuration in use, rebuilt when its files change.
#[derive(Debug)]
pub(crate) struct TlsReloader {
    settings: TlsSettings,
    current: Mutex<(Versions, Arc<ServerConfig>)>,
}

impl TlsReloader {
    pub(super) fn new(settings: TlsSettings) -> Result<Self, TlsFileError> {
        let seen = versions(&settings.files());
        let config = settings.build()?;
        Ok(Self {
            settings,
            current: Mutex::new((seen, Arc::new(config))),
        })
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed; if that fails, the previous one (and an error logged).
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        let now = versions(&self.settings.files());
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if now != current.0 {
            current.0 = now;
            match self.settings.build() {
                Ok(config) => {
                    tracing::info!("TLS certificate files changed: reloaded");
                    current.1 = Arc::new(config);
                }
                Err(err) => tracing::error!(
                    error = %crate::error::chain(&err),
                    "TLS certificate files changed but cannot be used; still using the previous ones"
                ),
            }
        }
        current.1.clone()
    }
}

impl TlsSettings {
    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.client_ca.as_deref());
        files
    }

    fn error(
        &self,
        what: &'static str,
        file: &Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> TlsFileError {
        TlsFileError {
            path: self.config_path.clone(),
            what,
            file: file.to_owned(),
            source: source.into(),
        }
    }

    /// The whole file `file` (a regular file of at most
    /// [`MAX_TLS_FILE`]), read as the config's `what`.
    fn read(&self, what: &'static str, file: &Path) -> Result<Vec<u8>, TlsFileError> {
        untrusted_file::read(file, MAX_TLS_FILE).map_err(|e| self.error(what, file, e))
    }

    /// The certificates of the PEM file `file`, read as `what`.
    fn certificates(
        &self,
        what: &'static str,
        file: &Path,
    ) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
        CertificateDer::pem_slice_iter(&self.read(what, file)?)
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(what, file, e))
    }

    /// The client certificate verifier, when clients are asked for one.
    fn client_verifier(
        &self,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsFileError> {
        let (Some(ca), auth) = (&self.client_ca, self.client_auth) else {
            return Ok(None);
        };
        if auth == ClientAuth::NoClientCert {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in self.certificates("client_ca_file", ca)? {
            roots
                .add(cert)
                .map_err(|e| self.error("client_ca_file", ca, e))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        verifier
            .build()
            .map(Some)
            .map_err(|e| self.error("client_ca_file", ca, e))
    }

    fn build(&self) -> Result<ServerConfig, TlsFileError> {
        let certs = self.certificates("cert_file", &self.cert)?;
        if certs.is_empty() {
            return Err(self.error("cert_file", &self.cert, "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.read("key_file", &self.key)?)
            .map_err(|e| self.error("key_file", &self.key, e))?;
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| self.error("min_version", &self.cert, e))?;
        let builder = match self.client_verifier(&provider)? {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| self.error("key_file", &self.key, e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}
