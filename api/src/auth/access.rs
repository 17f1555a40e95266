//! Who may call what: the access level of every route, and the one middleware that enforces
//! it. The route table in [`crate::routes`] names each route's level next to its handler, so
//! a route cannot exist without one; this module checks the bearer token against it.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use souk_messages::user::Role;
use souk_messages::{ErrorCode, UserId};
use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Any signed-in user, whatever their roles.
    User,
    /// Staff or admin.
    Staff,
    /// Admin only.
    Admin,
}

impl Access {
    /// Whether a user with `roles` may call a route at this level.
    pub fn allows(self, roles: &BTreeSet<Role>) -> bool {
        match self {
            Self::Public | Self::User => true,
            Self::Staff => roles.contains(&Role::Staff) || roles.contains(&Role::Admin),
            Self::Admin => roles.contains(&Role::Admin),
        }
    }

    /// The level as the docs name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::User => "user",
            Self::Staff => "staff",
            Self::Admin => "admin",
        }
    }
}

/// One route and its access level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP method.
    pub method: Method,
    /// Path template, as axum matches it (`/v1/inventory/{sku}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

static TABLE: LazyLock<HashMap<(Method, &'static str), Access>> = LazyLock::new(|| {
    crate::routes::endpoints().into_iter().map(|e| ((e.method, e.path), e.access)).collect()
});

tokio::task_local! {
    /// The signed-in caller of the request this task is handling.
    static CALLER: Option<UserId>;
}

/// The signed-in caller of the request being handled, if any: the actor of the commands it
/// sends (every command builder asks for it, so no handler can forget to pass it on).
pub fn caller() -> Option<UserId> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// The access level of a route; `None` for a route not in the table.
pub fn access_of(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    TABLE.get(&(method.clone(), path)).copied()
}

/// The signed-in caller, for handlers of non-public routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: UserId,
    /// Roles, as of the access token.
    pub roles: BTreeSet<Role>,
    /// The session (refresh-token family) the access token came from.
    pub session: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| unauthorized("this route needs a bearer access token"))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

impl Principal {
    /// The caller an access token names, if it verifies.
    pub fn from_token(auth: &crate::auth::Auth, token: &str) -> Result<Self, ApiError> {
        let claims = auth.verify_access(token).map_err(|e| unauthorized(&e.to_string()))?;
        let user = UserId::parse(claims.sub).map_err(|_| unauthorized("invalid access token"))?;
        Ok(Self { user, roles: claims.roles, session: claims.sid })
    }

    /// Whether the caller may see and change the whole catalog.
    pub fn is_staff(&self) -> bool {
        Access::Staff.allows(&self.roles)
    }
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::invalid(ErrorCode::Unauthorized, detail)
}

/// Checks the caller against the route's access level, and hands the verified caller to the
/// handler as a [`Principal`]. Routes missing from the table are refused: fail closed. An
/// answer about an account is marked not to be stored.
pub async fn authorize(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(req).await;
    };
    let access = access_of(req.method(), &path);
    // Tokens (sign-in, refresh) and guest cart tokens come from public routes, and a public
    // route answers a signed-in caller for them (staff see draft products).
    let private = access.is_none_or(|a| a != Access::Public)
        || path.starts_with("/v1/auth/")
        || path.starts_with("/v1/cart")
        || req.headers().contains_key(header::AUTHORIZATION);
    let mut response = check(&app, access, &path, req, next).await;
    let headers = response.headers_mut();
    if private && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn check(app: &AppState, access: Option<Access>, path: &str, mut req: Request, next: Next) -> Response {
    let Some(access) = access else {
        tracing::error!(method = %req.method(), path, "route has no access level; refusing");
        return ApiError::invalid(ErrorCode::Forbidden, "this route is not open to anyone").into_response();
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if access == Access::Public {
        // A public route still learns who a signed-in caller is (staff see more of the
        // catalog); a bad token there is simply ignored.
        let who = bearer.and_then(|t| Principal::from_token(&app.auth, t).ok());
        let actor = who.as_ref().map(|w| w.user.clone());
        if let Some(who) = who {
            req.extensions_mut().insert(who);
        }
        return CALLER.scope(actor, next.run(req)).await;
    }
    let Some(token) = bearer else {
        return unauthorized("this route needs a bearer access token").into_response();
    };
    let who = match Principal::from_token(&app.auth, token) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if !access.allows(&who.roles) {
        return ApiError::invalid(
            ErrorCode::Forbidden,
            format!("this route needs the {} role", access.as_str()),
        )
        .into_response();
    }
    let actor = Some(who.user.clone());
    req.extensions_mut().insert(who);
    CALLER.scope(actor, next.run(req)).await
}

/// The route × role matrix, as Markdown, for `docs/security.md`.
pub fn matrix() -> String {
    let mut rows = crate::routes::endpoints();
    rows.sort_by(|a, b| (a.path, a.method.as_str()).cmp(&(b.path, b.method.as_str())));
    let mark = |a: Access, roles: &[Role]| {
        let set: BTreeSet<Role> = roles.iter().copied().collect();
        if a.allows(&set) { "✓" } else { "—" }
    };
    let mut out =
        String::from("| method | route | access | customer | staff | admin |\n|---|---|---|---|---|---|\n");
    for e in rows {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            e.method,
            e.path,
            e.access.as_str(),
            mark(e.access, &[Role::Customer]),
            mark(e.access, &[Role::Staff]),
            mark(e.access, &[Role::Admin]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_levels() {
        let customer = BTreeSet::from([Role::Customer]);
        let staff = BTreeSet::from([Role::Staff]);
        let admin = BTreeSet::from([Role::Admin]);
        assert!(Access::User.allows(&customer));
        assert!(!Access::Staff.allows(&customer) && !Access::Admin.allows(&customer));
        assert!(Access::Staff.allows(&staff) && !Access::Admin.allows(&staff));
        assert!(Access::Staff.allows(&admin) && Access::Admin.allows(&admin), "admin includes staff");
        assert!(!Access::Staff.allows(&BTreeSet::new()));
    }

    #[test]
    fn every_route_has_one_level_and_the_sensitive_ones_are_closed() {
        let endpoints = crate::routes::endpoints();
        let unique: std::collections::HashSet<_> =
            endpoints.iter().map(|e| (e.method.clone(), e.path)).collect();
        assert_eq!(unique.len(), endpoints.len(), "a route is listed twice");
        for e in &endpoints {
            if e.path.starts_with("/v1/admin") {
                assert_eq!(e.access, Access::Admin, "{} {}", e.method, e.path);
            }
            if e.path.starts_with("/v1/inventory") || e.path.starts_with("/v1/staff") {
                assert!(e.access >= Access::Staff, "{} {}", e.method, e.path);
            }
            if e.path.starts_with("/v1/me") {
                assert_eq!(e.access, Access::User, "{} {}", e.method, e.path);
            }
        }
        assert_eq!(access_of(&Method::HEAD, "/healthz"), Some(Access::Public));
        assert_eq!(access_of(&Method::GET, "/v1/nowhere"), None);
    }

    #[test]
    fn the_security_doc_shows_the_current_matrix() {
        let doc = include_str!("../../../docs/security.md");
        assert!(
            doc.contains(&matrix()),
            "docs/security.md is out of date; paste this matrix into it:\n{}",
            matrix()
        );
    }
}
