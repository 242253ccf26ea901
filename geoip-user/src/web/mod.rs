//! The HTTP side: what the handlers share ([`state`]), the map page
//! ([`page`]), the JSON API ([`api`]), the routes and the other handlers
//! ([`router`](mod@router)), basic auth ([`auth`]), TLS ([`tls`]) and the web config
//! file that sets both ([`config`]), and the server with its limits
//! ([`server`]).

mod api;
mod auth;
mod config;
mod page;
mod router;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod tls;

pub(crate) use auth::{BasicAuth, with_basic_auth};
#[cfg(feature = "fuzzing")]
pub(crate) use config::parse as parse_config;
pub(crate) use config::{WebConfig, WebConfigError};
pub(crate) use router::router;
pub(crate) use server::{Limits, Transport, serve};
pub(crate) use state::AppState;
