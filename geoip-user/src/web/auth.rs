//! Basic auth (`basic_auth_users` of `--web.config.file`): the check of
//! an `Authorization` header against bcrypt hashes, and the layer that
//! requires it on every path but `/healthz`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::IntoResponse as _,
};
use tokio::sync::Semaphore;

/// Require basic auth on every path but `/healthz` (which says only
/// whether the exporter works, and which liveness probes must reach).
/// Checks run off the runtime's threads, half as many at a time as there
/// are cores ([`max_checks`]; a request that waits longer than
/// [`CHECK_WAIT`] for its turn is answered 503), and every refusal costs
/// the work of a check of the dearest hash and takes no less time than
/// the slowest refusal seen, so its time tells nothing of which users
/// exist.
pub(crate) fn with_basic_auth(router: Router, auth: Arc<BasicAuth>) -> Router {
    let turns = Arc::new(Semaphore::new(max_checks()));
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let (auth, turns) = (auth.clone(), turns.clone());
            async move {
                if req.uri().path() == "/healthz" {
                    return next.run(req).await;
                }
                let value = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match admitted(&auth, &turns, value).await {
                    Some(true) => next.run(req).await,
                    Some(false) => (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"geoip-exporter\"")],
                        "unauthorized\n",
                    )
                        .into_response(),
                    None => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many password checks under way; retry\n",
                    )
                        .into_response(),
                }
            }
        },
    ))
}

/// Password checks run at once: half the cores (bcrypt takes a core for
/// its time), at least one.
fn max_checks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The longest a request waits for its turn to be checked.
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// Whether `authorization` lets the request in; `None` when its turn did
/// not come within [`CHECK_WAIT`]. A refusal is answered no sooner than
/// [`BasicAuth::floor`] after the check began.
async fn admitted(
    auth: &Arc<BasicAuth>,
    turns: &Arc<Semaphore>,
    authorization: Option<String>,
) -> Option<bool> {
    if auth.passed_before(authorization.as_deref()) {
        return Some(true);
    }
    let turn = tokio::time::timeout(CHECK_WAIT, turns.clone().acquire_owned())
        .await
        .ok()?
        .ok()?;
    let began = Instant::now();
    let checking = auth.clone();
    // bcrypt is slow on purpose: off the runtime's threads. A check whose
    // request is gone still ends within one slowest check (the cost is
    // bounded at load) and holds its turn until then.
    let ok = tokio::task::spawn_blocking(move || {
        let ok = checking.check(authorization.as_deref());
        drop(turn);
        ok
    })
    .await
    .unwrap_or(false);
    if !ok {
        let took = began.elapsed();
        let floor = auth.floor(took);
        tokio::time::sleep(floor.saturating_sub(took)).await;
    }
    Some(ok)
}

/// Checks `Authorization: Basic` against the configured users; remembers
/// the header values that passed (bcrypt is slow on purpose), at most
/// [`CACHE_MAX`] of them.
pub(crate) struct BasicAuth {
    users: HashMap<String, String>,
    passed: Mutex<HashSet<String>>,
    /// Verified when the user is unknown, or after a wrong password of a
    /// cheaper hash, at the highest cost of the users' hashes: every
    /// refusal costs the work of one check of the dearest hash.
    dummy: String,
    /// The highest cost of the users' hashes (the dummy's).
    cost: u32,
    /// How long one check against the dearest hash took at start-up.
    measured: Duration,
    /// The slowest refusal seen, in nanoseconds, at most [`FLOOR_SPAN`]
    /// times `measured`: no refusal is answered sooner.
    slowest: AtomicU64,
}

/// How far above the check measured at start-up the floor of a refusal's
/// time may rise (a loaded machine checks slower; a hiccup must not make
/// every later refusal slow).
const FLOOR_SPAN: u32 = 2;

const CACHE_MAX: usize = 256;

/// A bcrypt hash's cost.
fn cost_of(hash: &str) -> Option<u32> {
    hash.parse::<bcrypt::HashParts>().ok().map(|p| p.get_cost())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl BasicAuth {
    /// The users and their hashes (checked at load: their costs are
    /// bounded). Takes the time of one check at the highest cost, to
    /// measure it.
    pub(crate) fn new(users: HashMap<String, String>) -> Self {
        let cost = users
            .values()
            .filter_map(|h| cost_of(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash("not anyone's password", cost).unwrap_or_default();
        let began = Instant::now();
        let _ = bcrypt::verify("a wrong password", &dummy);
        let measured = began.elapsed();
        Self {
            users,
            passed: Mutex::new(HashSet::new()),
            dummy,
            cost,
            measured,
            slowest: AtomicU64::new(nanos(measured)),
        }
    }

    /// The least time a refusal that took `took` is answered in: the
    /// slowest refusal seen so far, this one included, within
    /// [`FLOOR_SPAN`] of the start-up measurement.
    fn floor(&self, took: Duration) -> Duration {
        let cap = nanos(self.measured.saturating_mul(FLOOR_SPAN));
        let seen = self
            .slowest
            .fetch_max(nanos(took).min(cap), Ordering::Relaxed)
            .max(nanos(took).min(cap));
        Duration::from_nanos(seen)
    }

    /// Whether `authorization` passed a check before (no new check needed).
    fn passed_before(&self, authorization: Option<&str>) -> bool {
        authorization.is_some_and(|value| {
            self.passed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(value)
        })
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
        if !ok && known && cost_of(hash) < Some(self.cost) {
            // A wrong password of a cheaper hash: the rest of the work of
            // a dear check, so that the refusal costs as much.
            let _ = bcrypt::verify(password, &self.dummy);
        }
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

    /// With hashes of two costs, a refusal (an unknown user, a wrong
    /// password of the cheaper hash) takes as long as a check of the
    /// dearer one: the time does not tell which users exist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_take_as_long_whoever_is_asked_for() {
        use base64::Engine as _;
        let users = [
            ("cheap".to_owned(), bcrypt::hash("right", 4).unwrap()),
            ("dear".to_owned(), bcrypt::hash("right", 9).unwrap()),
        ];
        let auth = Arc::new(BasicAuth::new(users.into()));
        let turns = Arc::new(Semaphore::new(max_checks()));
        let header = |user: &str, pass: &str| {
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ))
        };
        let timed = |value| {
            let (auth, turns) = (auth.clone(), turns.clone());
            async move {
                let began = Instant::now();
                let ok = admitted(&auth, &turns, value).await;
                (ok, began.elapsed())
            }
        };
        let (ok, cheap) = timed(header("cheap", "wrong")).await;
        assert_eq!(ok, Some(false));
        let (ok, unknown) = timed(header("nobody", "wrong")).await;
        assert_eq!(ok, Some(false));
        assert!(
            cheap >= auth.measured && unknown >= auth.measured,
            "{cheap:?} {unknown:?} {:?}",
            auth.measured
        );
        let began = Instant::now();
        assert!(bcrypt::verify("x", &bcrypt::hash("y", 4).unwrap()).is_ok());
        assert!(
            auth.measured > began.elapsed() * 4,
            "the floor is the dear hash's: {:?}",
            auth.measured
        );
        // The floor rises to the slowest refusal seen, within its span.
        assert!(auth.floor(Duration::ZERO) >= auth.measured);
        let slow = auth.measured * 3 / 2;
        auth.floor(slow);
        assert!(auth.floor(Duration::ZERO) >= slow);
        // A wrong password of the cheap hash costs a dear check's work,
        // not only its time (the floor alone would leave the cores idle).
        let began = Instant::now();
        assert!(!auth.check(header("cheap", "wrong").as_deref()));
        let work = began.elapsed();
        let began = Instant::now();
        assert!(bcrypt::verify("x", &bcrypt::hash("y", 4).unwrap()).is_ok());
        assert!(work > began.elapsed() * 4, "{work:?}");
        assert_eq!(
            auth.floor(Duration::from_hours(1)),
            auth.measured * FLOOR_SPAN
        );
        assert_eq!(timed(header("cheap", "right")).await.0, Some(true));
    }
}
