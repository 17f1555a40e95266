//! Route handlers, one module per area, and the route table: every route with its access
//! level, from which both the router and the access checks are built.

pub mod admin;
pub mod auth;
pub mod cart;
pub mod inventory;
pub mod live;
pub mod logs;
pub mod me;
pub mod notifications;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod products;
pub mod webhooks;

use crate::AppState;
use crate::auth::access::{Access, Endpoint};
use axum::http::Method;
use axum::routing::MethodRouter;
use std::collections::BTreeMap;

/// A route: where, who may call it, and its handler.
#[derive(Debug)]
pub struct Route {
    /// Method, path and access level.
    pub endpoint: Endpoint,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

impl Route {
    /// A route at `path` for `method`, open to `access`.
    pub fn new(method: Method, path: &'static str, access: Access, handler: MethodRouter<AppState>) -> Self {
        Self { endpoint: Endpoint { method, path, access }, handler }
    }
}

/// Every route of the API.
pub fn all() -> Vec<Route> {
    [
        ops::routes(),
        auth::routes(),
        me::routes(),
        admin::routes(),
        products::routes(),
        inventory::routes(),
        cart::routes(),
        orders::routes(),
        live::routes(),
        payments::routes(),
        notifications::routes(),
        webhooks::routes(),
        logs::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every route's method, path and access level.
pub fn endpoints() -> Vec<Endpoint> {
    all().into_iter().map(|r| r.endpoint).collect()
}

/// The routes as an axum router (handlers of one path merged).
pub(crate) fn router() -> axum::Router<AppState> {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for r in all() {
        let merged = match by_path.remove(r.endpoint.path) {
            Some(existing) => existing.merge(r.handler),
            None => r.handler,
        };
        by_path.insert(r.endpoint.path, merged);
    }
    by_path.into_iter().fold(axum::Router::new(), |router, (path, handler)| router.route(path, handler))
}
