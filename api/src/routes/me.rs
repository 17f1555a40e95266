//! `/v1/me`: the signed-in user's own account.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::auth::field_error;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer};
use souk_messages::user::{Locale, Name, Phone, UserCommand, UserView};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/me", Access::User, get(me)),
        Route::new(Method::PATCH, "/v1/me", Access::User, axum::routing::patch(update)),
        Route::new(Method::POST, "/v1/me/password", Access::User, post(change_password)),
        Route::new(Method::POST, "/v1/me/erasure", Access::User, post(erase)),
        Route::new(Method::GET, "/v1/me/export", Access::User, get(export)),
    ]
}

/// `PATCH /v1/me`: only the fields present change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// New display name.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// New phone in international form; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^\+[0-9 ().-]{8,31}$")]
    pub phone: Option<Option<String>>,
    /// `true` turns text messages (order updates by SMS) off; `false` turns them on again.
    pub sms_opt_out: Option<bool>,
    /// The language of emails and text messages (a language tag: `fr`, `pt-BR`); `null`
    /// goes back to the shop's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "fr", pattern = r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?$")]
    pub locale: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A field `PATCH` sets, clears (`null`) or leaves alone (absent): the new value, and whether
/// to clear it.
fn change<T>(
    field: &str,
    value: Option<Option<String>>,
    parse: impl Fn(&str) -> Result<T, souk_messages::ReplyError>,
) -> Result<(Option<T>, bool), ApiError> {
    match value {
        None => Ok((None, false)),
        Some(None) => Ok((None, true)),
        Some(Some(v)) => Ok((Some(parse(&v).map_err(|e| field_error(field, e))?), false)),
    }
}

/// `POST /v1/me/password`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The password in use now.
    #[schema(min_length = 1, max_length = 128)]
    pub current_password: String,
    /// The new password: 10 to 128 characters, not a common one.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

/// `POST /v1/me/erasure`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    /// The account's password, confirming the erasure.
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

/// The signed-in user's account.
#[utoipa::path(get, path = "/v1/me", tag = "me", responses((status = 200, body = UserView), (status = 401, body = Problem)))]
async fn me(State(app): State<AppState>, rid: RequestId, who: Principal) -> Result<Json<UserView>, ApiError> {
    Ok(Json(app.auth.command(&who.user, UserCommand::Get, &rid.0).await?))
}

/// Changes name, phone, whether order updates come by text message and/or their language.
#[utoipa::path(patch, operation_id = "update_profile", path = "/v1/me", tag = "me", request_body = ProfileBody,
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn update(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<UserView>, ApiError> {
    let name = body.name.as_deref().map(Name::parse).transpose().map_err(|e| field_error("name", e))?;
    let (phone, clear_phone) = change("phone", body.phone, Phone::parse)?;
    let (locale, clear_locale) = change("locale", body.locale, Locale::parse)?;
    let sms_opt_out = body.sms_opt_out;
    let cmd = UserCommand::UpdateProfile { name, phone, clear_phone, sms_opt_out, locale, clear_locale };
    Ok(Json(app.auth.command(&who.user, cmd, &rid.0).await?))
}

/// Changes the password. Every other session ends; this one continues.
#[utoipa::path(post, path = "/v1/me/password", tag = "me", request_body = PasswordBody,
    responses((status = 200, body = UserView), (status = 401, body = Problem, description = "invalid_credentials: the current password is wrong"), (status = 422, body = Problem, description = "weak_password")))]
async fn change_password(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Json<UserView>, ApiError> {
    let view = app
        .auth
        .change_password(&who.user, &who.session, body.current_password, body.new_password, &rid.0)
        .await?;
    Ok(Json(view))
}

/// Erases the caller's account for good: profile, email address, password, sessions and the
/// delivery log's record of the messages sent to it. Orders stay, under the customer id, as
/// the shop's records of sale (docs/security.md).
#[utoipa::path(post, operation_id = "erase_me", path = "/v1/me/erasure", tag = "me", request_body = ErasureBody,
    responses((status = 204, description = "erased"), (status = 401, body = Problem, description = "invalid_credentials: the password is wrong"),
        (status = 503, body = Problem, description = "unavailable: the delivery log is catching up; nothing was erased")))]
async fn erase(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiJson(body): ApiJson<ErasureBody>,
) -> Result<StatusCode, ApiError> {
    app.auth.confirm_password(&who.user, body.password).await?;
    crate::erasure::erase(&app, &who.user, &rid.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A copy of everything Souk holds about the caller, as one JSON file to keep or take
/// elsewhere: the account and its history, the cart, every order and every message sent.
#[utoipa::path(get, operation_id = "export_me", path = "/v1/me/export", tag = "me",
    responses((status = 200, body = crate::export::PersonalData, description = "the data, as an attachment"), (status = 401, body = Problem)))]
async fn export(State(app): State<AppState>, rid: RequestId, who: Principal) -> Result<Response, ApiError> {
    let data = crate::export::export(&app, &who.user, &rid.0).await?;
    Ok(crate::export::attachment(&who.user, &data))
}
