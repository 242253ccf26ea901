//! Basic auth (`basic_auth_users` of `--web.config.file`): the check of
//! an `Authorization` header against bcrypt hashes, and the layer that
//! requires it on every path but `/healthz`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::IntoResponse as _,
};

/// Require basic auth on every path but `/healthz` (which says only
/// whether the exporter works, and which liveness probes must reach).
pub(crate) fn with_basic_auth(router: Router, auth: Arc<BasicAuth>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let auth = auth.clone();
            async move {
                if req.uri().path() == "/healthz" {
                    return next.run(req).await;
                }
                let value = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // bcrypt is slow on purpose: off the runtime's threads.
                let ok = tokio::task::spawn_blocking(move || auth.check(value.as_deref()))
                    .await
                    .unwrap_or(false);
                if ok {
                    next.run(req).await
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"geoip-exporter\"")],
                        "unauthorized\n",
                    )
                        .into_response()
                }
            }
        },
    ))
}

/// Checks `Authorization: Basic` against the configured users; remembers
/// the header values that passed (bcrypt is slow on purpose), at most
/// [`CACHE_MAX`] of them.
pub(crate) struct BasicAuth {
    users: HashMap<String, String>,
    passed: Mutex<HashSet<String>>,
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
            passed: Mutex::new(HashSet::new()),
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
