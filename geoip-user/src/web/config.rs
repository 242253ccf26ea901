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
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::tls::{ClientAuth, MinVersion, TlsFileError, TlsReloader, TlsSettings};
use crate::untrusted_file::{self, Bound, FileError};

/// The largest web config file read (a few users and TLS paths are a few
/// hundred bytes).
const MAX_WEB_CONFIG: Bound = Bound {
    what: "a web config file",
    max: 1 << 20,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebConfigError {
    #[error("cannot read web config file {path}; check --web.config.file")]
    Read {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("web config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "web config file {path}: basic_auth_users.{user} is not a bcrypt hash (it starts with $2a$, $2b$ or $2y$ and has 60 characters; make one with `htpasswd -nBC 10 {user}`)"
    )]
    Hash { path: PathBuf, user: String },
    #[error(
        "web config file {path}: basic_auth_users.{user} has bcrypt cost {cost}, outside {min} to {max}: a higher cost makes each check of a wrong password take seconds of CPU, a lower one is not bcrypt; 10 is the usual choice (`htpasswd -nBC 10 {user}`)",
        min = MIN_COST,
        max = MAX_COST
    )]
    Cost {
        path: PathBuf,
        user: String,
        cost: u32,
    },
    #[error(transparent)]
    Tls(#[from] TlsFileError),
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

/// A checked web configuration.
#[derive(Debug)]
pub(crate) struct WebConfig {
    /// The TLS configuration, when the file has `tls_server_config`.
    pub(crate) tls: Option<TlsReloader>,
    /// User name to bcrypt hash; empty: no basic auth.
    pub(crate) users: HashMap<String, String>,
}

impl WebConfig {
    /// Read and check the file, including that the TLS files load.
    pub(crate) fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = untrusted_file::read_to_string(path, MAX_WEB_CONFIG).map_err(|source| {
            WebConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        let (tls, users) = parse(path, &text)?;
        Ok(Self {
            tls: tls.map(TlsReloader::new).transpose()?,
            users,
        })
    }
}

/// The bcrypt costs a hash may have: 4 is bcrypt's least; one check at 14
/// takes about a second of CPU (10, the usual choice, a few dozen
/// milliseconds).
pub(crate) const MIN_COST: u32 = 4;
pub(crate) const MAX_COST: u32 = 14;

/// `hash`, the hash of `user` in the file at `path`, is a bcrypt hash of
/// a cost from [`MIN_COST`] to [`MAX_COST`].
fn check_hash(path: &Path, user: &str, hash: &str) -> Result<(), WebConfigError> {
    let parts = (hash.len() == 60 && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)))
        .then(|| hash.parse::<bcrypt::HashParts>().ok())
        .flatten();
    let Some(parts) = parts.filter(|_| !user.is_empty() && !user.contains(':')) else {
        return Err(WebConfigError::Hash {
            path: path.to_owned(),
            user: user.to_owned(),
        });
    };
    let cost = parts.get_cost();
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return Err(WebConfigError::Cost {
            path: path.to_owned(),
            user: user.to_owned(),
            cost,
        });
    }
    Ok(())
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
        check_hash(path, user, hash)?;
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
        // Costs outside what a check may take: refused, naming the cost.
        let cost = |c: &str| hash.replacen("$04$", &format!("${c}$"), 1);
        for (c, needle) in [
            ("31", "bcrypt cost 31, outside 4 to 14"),
            ("03", "bcrypt cost 3, outside 4 to 14"),
            ("99", "basic_auth_users.alice"),
            ("15", "bcrypt cost 15, outside 4 to 14"),
        ] {
            let p = write(
                &d,
                "cost.yml",
                &format!("basic_auth_users:\n  alice: '{}'\n", cost(c)),
            );
            let shown = crate::error::chain(&WebConfig::load(&p).unwrap_err());
            assert!(shown.contains(needle), "cost {c}: {shown}");
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
}
