//! `--web.config.file`: TLS and basic auth in the format Prometheus
//! exporters share (exporter-toolkit's web configuration file):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths: to this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12             # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! The certificate, key and client CA are read again when one of the
//! files changes (checked at each new connection), so a renewed
//! certificate is used without a restart; a broken renewal keeps the
//! previous one and is logged.

use std::{
    collections::HashMap,
    io,
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

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebConfigError {
    #[error("cannot read web config file {path}; check --web.config.file")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("web config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "web config file {path}: basic_auth_users.{user} is not a bcrypt hash (it starts with $2a$, $2b$ or $2y$ and has 60 characters; make one with `htpasswd -nBC 10 {user}`)"
    )]
    Hash { path: PathBuf, user: String },
    #[error("web config file {path}: {what} {file} cannot be used")]
    Tls {
        path: PathBuf,
        what: &'static str,
        file: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: MinVersion,
}

/// Which client certificates are asked for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
enum MinVersion {
    #[default]
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// A checked web configuration.
#[derive(Debug)]
pub(crate) struct WebConfig {
    /// The TLS configuration, when the file has `tls_server_config`.
    pub(crate) tls: Option<TlsReloader>,
    /// User name to bcrypt hash; empty: no basic auth.
    pub(crate) users: HashMap<String, String>,
}

/// Where the TLS files are and how clients are checked.
#[derive(Clone, Debug)]
pub(crate) struct TlsSettings {
    config_path: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
    min_version: MinVersion,
}

impl WebConfig {
    /// Read and check the file, including that the TLS files load.
    pub(crate) fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (tls, users) = parse(path, &text)?;
        Ok(Self {
            tls: tls.map(TlsReloader::new).transpose()?,
            users,
        })
    }
}

/// Check the file's text (`path` names it and anchors relative paths);
/// touches no file.
pub(crate) fn parse(
    path: &Path,
    text: &str,
) -> Result<(Option<TlsSettings>, HashMap<String, String>), WebConfigError> {
    let invalid = |message: String| WebConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let file: File = if text.trim().is_empty() {
        File {
            tls_server_config: None,
            basic_auth_users: HashMap::new(),
        }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?
    };
    for (user, hash) in &file.basic_auth_users {
        let ok = hash.len() == 60
            && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
            && hash.parse::<bcrypt::HashParts>().is_ok();
        if !ok || user.is_empty() || user.contains(':') {
            return Err(WebConfigError::Hash {
                path: path.to_owned(),
                user: user.clone(),
            });
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = file
        .tls_server_config
        .map(|t| {
            let client_ca = t.client_ca_file.map(|f| dir.join(f));
            if t.client_auth_type != ClientAuth::NoClientCert && client_ca.is_none() {
                return Err(invalid(format!(
                    "client_auth_type {:?} needs client_ca_file",
                    t.client_auth_type
                )));
            }
            Ok(TlsSettings {
                config_path: path.to_owned(),
                cert: dir.join(t.cert_file),
                key: dir.join(t.key_file),
                client_ca,
                client_auth: t.client_auth_type,
                min_version: t.min_version,
            })
        })
        .transpose()?;
    Ok((tls, file.basic_auth_users))
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
    fn new(settings: TlsSettings) -> Result<Self, WebConfigError> {
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
    ) -> WebConfigError {
        WebConfigError::Tls {
            path: self.config_path.clone(),
            what,
            file: file.to_owned(),
            source: source.into(),
        }
    }

    fn build(&self) -> Result<ServerConfig, WebConfigError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect)
            .map_err(|e| self.error("cert_file", &self.cert, e))?;
        if certs.is_empty() {
            return Err(self.error("cert_file", &self.cert, "no certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| self.error("key_file", &self.key, e))?;
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| self.error("min_version", &self.cert, e))?;
        let builder = match (&self.client_ca, self.client_auth) {
            (Some(ca), auth) if auth != ClientAuth::NoClientCert => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| self.error("client_ca_file", ca, e))?
                {
                    let cert = cert.map_err(|e| self.error("client_ca_file", ca, e))?;
                    roots
                        .add(cert)
                        .map_err(|e| self.error("client_ca_file", ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| self.error("client_ca_file", ca, e))?,
                )
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| self.error("key_file", &self.key, e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Checks `Authorization: Basic` against the configured users; remembers
/// the header values that passed (bcrypt is slow on purpose), at most
/// [`CACHE_MAX`] of them.
pub(crate) struct BasicAuth {
    users: HashMap<String, String>,
    passed: Mutex<std::collections::HashSet<String>>,
    /// Verified when the user is unknown, so that the answer takes as long.
    dummy: String,
}

const CACHE_MAX: usize = 256;

impl BasicAuth {
    pub(crate) fn new(users: HashMap<String, String>) -> Self {
        let cost = users
            .values()
            .find_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost());
        Self {
            users,
            passed: Mutex::new(std::collections::HashSet::new()),
            dummy: bcrypt::hash("not anyone's password", cost).unwrap_or_default(),
        }
    }

    /// Whether the `Authorization` header value lets the request in.
    pub(crate) fn check(&self, authorization: Option<&str>) -> bool {
        use base64::Engine as _;
        let Some(value) = authorization else {
            return false;
        };
        if self
            .passed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(value)
        {
            return true;
        }
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            let mut passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
            if passed.len() >= CACHE_MAX {
                passed.clear();
            }
            passed.insert(value.to_owned());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("geoip-webconfig-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bad_files_name_the_problem() {
        let d = dir("bad");
        let hash = bcrypt::hash("secret", 4).unwrap();
        for (text, needle) in [
            ("tls_server_config: [", "not valid"),
            (
                "basic_auth_users: {alice: plain}",
                "basic_auth_users.alice is not a bcrypt hash",
            ),
            ("unknown_key: 1", "unknown field `unknown_key`"),
            (
                "tls_server_config: {cert_file: nope.crt, key_file: nope.key}",
                "cert_file",
            ),
            (
                "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}",
                "needs client_ca_file",
            ),
            (
                "tls_server_config: {cert_file: a, key_file: b, client_auth_type: Sometimes}",
                "unknown variant `Sometimes`",
            ),
            (
                "tls_server_config: {cert_file: a, key_file: b, min_version: TLS10}",
                "unknown variant `TLS10`",
            ),
        ] {
            let p = write(&d, "web.yml", text);
            let err = WebConfig::load(&p).unwrap_err();
            let shown = crate::error::chain(&err);
            assert!(shown.contains(needle), "{text}: {shown}");
            assert!(shown.contains("web.yml"), "{text}: names the file: {shown}");
        }
        let p = write(
            &d,
            "ok.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let config = WebConfig::load(&p).unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.users.len(), 1);
        let missing = WebConfig::load(&d.join("absent.yml")).unwrap_err();
        assert!(crate::error::chain(&missing).contains("absent.yml"));
    }

    #[test]
    fn basic_auth_checks_and_caches() {
        use base64::Engine as _;
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = BasicAuth::new([("alice".to_owned(), hash)].into());
        let header = |user: &str, pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        };
        assert!(auth.check(Some(&header("alice", "right"))));
        assert!(auth.check(Some(&header("alice", "right"))), "cached");
        assert!(!auth.check(Some(&header("alice", "wrong"))));
        assert!(!auth.check(Some(&header("bob", "right"))));
        assert!(!auth.check(Some("Bearer x")));
        assert!(!auth.check(Some("Basic !!!")));
        assert!(!auth.check(None));
    }
}
