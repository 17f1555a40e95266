//! `/v1/auth`: registration, login, token refresh, logout and password reset.

use crate::AppState;
use crate::auth::access::Access;
use crate::auth::{NewUser, TokenPair, field_error};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ClientIp};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use souk_messages::UserId;
use souk_messages::user::{Email, Locale, Name, Phone, Role, UserView};
use std::collections::BTreeSet;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/auth/register", Access::Public, post(register)),
        Route::new(Method::POST, "/v1/auth/login", Access::Public, post(login)),
        Route::new(Method::POST, "/v1/auth/refresh", Access::Public, post(refresh)),
        Route::new(Method::POST, "/v1/auth/logout", Access::Public, post(logout)),
        Route::new(Method::POST, "/v1/auth/password-reset", Access::Public, post(request_reset)),
        Route::new(Method::POST, "/v1/auth/password-reset/confirm", Access::Public, post(confirm_reset)),
    ]
}

/// `POST /v1/auth/register`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Email address; unique across the shop (case-insensitive).
    #[schema(example = "ada@example.com", format = Email, min_length = 3, max_length = 254)]
    pub email: String,
    /// 10 to 128 characters, not a common password.
    #[schema(example = "a long and uncommon passphrase", min_length = 10, max_length = 128)]
    pub password: String,
    /// Display name, 1 to 100 characters.
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 100)]
    pub name: String,
    /// Phone in international form, for SMS notifications.
    #[schema(example = "+442071838750", pattern = r"^\+[0-9 ().-]{8,31}$")]
    pub phone: Option<String>,
    /// The language of the customer's emails and text messages (a language tag: `fr`,
    /// `pt-BR`); if absent, the language the request's `Accept-Language` prefers, if any. The
    /// shop's default where it has no templates in that language.
    #[schema(value_type = Option<String>, example = "fr", pattern = r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?$")]
    pub locale: Option<String>,
}

/// `POST /v1/auth/login`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Email address.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
    /// Password.
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

/// `POST /v1/auth/refresh` and `/v1/auth/logout`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token from the last login or refresh.
    #[schema(min_length = 1, max_length = 256)]
    pub refresh_token: String,
}

/// `POST /v1/auth/password-reset`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequestBody {
    /// The account's email address.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
}

/// `POST /v1/auth/password-reset/confirm`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirmBody {
    /// The token from the reset email.
    #[schema(min_length = 1, max_length = 256)]
    pub token: String,
    /// The new password: 10 to 128 characters, not a common one.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

/// The longest token accepted in a body: longer input is not a token of ours.
const TOKEN_MAX: usize = 256;

fn token(s: &str) -> Result<&str, ApiError> {
    if s.is_empty() || s.len() > TOKEN_MAX {
        return Err(ApiError::invalid(souk_messages::ErrorCode::InvalidInput, "token: not a Souk token"));
    }
    Ok(s)
}

pub(crate) fn email(s: &str) -> Result<Email, ApiError> {
    Email::parse(s).map_err(|e| field_error("email", e))
}

/// Creates a customer account.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterBody,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 409, body = Problem, description = "email_taken"), (status = 422, body = Problem, description = "invalid_email, weak_password or invalid_input")))]
async fn register(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let new = NewUser {
        email: email(&body.email)?,
        name: Name::parse(&body.name).map_err(|e| field_error("name", e))?,
        phone: body.phone.as_deref().map(Phone::parse).transpose().map_err(|e| field_error("phone", e))?,
        locale: match body.locale.as_deref() {
            Some(tag) => Some(Locale::parse(tag).map_err(|e| field_error("locale", e))?),
            None => crate::extract::preferred_locale(&headers),
        },
        password: body.password,
        roles: BTreeSet::from([Role::Customer]),
    };
    let view = app.auth.register(new, &rid.0).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Exchanges email and password for an access token and a refresh token.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginBody,
    params(("Cart-Token" = Option<String>, Header, description = "a guest cart to move into the customer's cart")),
    responses((status = 200, body = TokenPair), (status = 401, body = Problem, description = "invalid_credentials (unknown email and wrong password alike)"), (status = 403, body = Problem, description = "account_disabled"), (status = 429, body = Problem, description = "rate_limited, with Retry-After")))]
async fn login(
    State(app): State<AppState>,
    rid: RequestId,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenPair>, ApiError> {
    let email = email(&body.email)?;
    let guest_cart = crate::routes::cart::cart_token(&headers)?;
    let pair = app.auth.login(&email, body.password, ip, &rid.0).await?;
    if let (Some(token), Ok(claims)) = (guest_cart, app.auth.verify_access(&pair.access_token)) {
        // Signing in must not fail over a cart: the guest cart stays where it was.
        let merged = match UserId::parse(claims.sub) {
            Ok(user) => app.carts.merge(&token, &user, &rid.0).await,
            Err(e) => Err(ApiError::Internal(e.to_string())),
        };
        if let Err(e) = merged {
            tracing::warn!(error = %e, "could not merge the guest cart on sign-in");
        }
    }
    Ok(Json(pair))
}

/// Spends a refresh token for a new pair. Presenting a spent token revokes its session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem, description = "invalid_token"), (status = 403, body = Problem, description = "account_disabled")))]
async fn refresh(
    State(app): State<AppState>,
    rid: RequestId,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenPair>, ApiError> {
    Ok(Json(app.auth.refresh(token(&body.refresh_token)?, &rid.0).await?))
}

/// Ends the session of a refresh token. Always 204.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshBody,
    responses((status = 204, description = "the session is over")))]
async fn logout(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    app.auth.logout(token(&body.refresh_token)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a password-reset token to the address, if it has an account. Always 202.
#[utoipa::path(post, path = "/v1/auth/password-reset", tag = "auth", request_body = ResetRequestBody,
    responses((status = 202, description = "if the account exists, a reset token is on its way"), (status = 422, body = Problem)))]
async fn request_reset(
    State(app): State<AppState>,
    rid: RequestId,
    ApiJson(body): ApiJson<ResetRequestBody>,
) -> Result<StatusCode, ApiError> {
    app.auth.request_reset(email(&body.email)?, rid.0);
    Ok(StatusCode::ACCEPTED)
}

/// Sets a new password with a reset token; every session of the account ends.
#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirmBody,
    responses((status = 204, description = "password set"), (status = 401, body = Problem, description = "invalid_token"), (status = 422, body = Problem, description = "weak_password")))]
async fn confirm_reset(
    State(app): State<AppState>,
    rid: RequestId,
    ApiJson(body): ApiJson<ResetConfirmBody>,
) -> Result<StatusCode, ApiError> {
    app.auth.confirm_reset(token(&body.token)?, body.new_password, &rid.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
