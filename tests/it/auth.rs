//! Accounts, sessions and access control, over HTTP against real nodes and a real nats-server.

use crate::{bin, ready};
use futures::future::join_all;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use souk_api::auth::access::Access;
use souk_api::auth::keys::{KeySet, generate_pem};
use souk_api::auth::tokens::{TokenSettings, issue};
use souk_messages::UserId;
use souk_messages::event::Commit;
use souk_messages::user::{Role, UserEvent};
use souk_testkit::{
    ADMIN_EMAIL, NatsServer, SoukNode, admin_http, http, http_with_token, login, souk_command,
};
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;

const PASSWORD: &str = "correct horse battery";

async fn post(http: &Client, url: String, body: Value) -> Response {
    http.post(url).json(&body).send().await.expect("request")
}

async fn register(http: &Client, base: &str, email: &str, password: &str) -> Response {
    post(
        http,
        format!("{base}/v1/auth/register"),
        json!({"email": email, "password": password, "name": "Test User"}),
    )
    .await
}

async fn login_raw(http: &Client, base: &str, email: &str, password: &str) -> Response {
    post(http, format!("{base}/v1/auth/login"), json!({"email": email, "password": password})).await
}

async fn refresh(http: &Client, base: &str, token: &str) -> Response {
    post(http, format!("{base}/v1/auth/refresh"), json!({"refresh_token": token})).await
}

async fn problem(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json", "status {status}");
    (status, r.json().await.expect("problem"))
}

async fn json_of(r: Response, status: StatusCode) -> Value {
    let got = r.status();
    let body = r.text().await.expect("body");
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// A node, a plain client, and the node's base URL.
async fn one_node(env: &[(&str, &str)]) -> (NatsServer, SoukNode, Client) {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), env).expect("node");
    let http = http();
    ready(&http, &node).await;
    (nats, node, http)
}

/// Registers `email` and logs it in; returns (user id, login answer).
async fn customer(http: &Client, base: &str, email: &str) -> (String, Value) {
    let created = json_of(register(http, base, email, PASSWORD).await, StatusCode::CREATED).await;
    (created["id"].as_str().expect("id").to_owned(), login(base, email, PASSWORD).await)
}

fn bearer(tokens: &Value) -> Client {
    http_with_token(tokens["access_token"].as_str().expect("access_token"))
}

/// Waits until `tokens`' access token is refused as revoked (the edge learns of account changes
/// from the event stream, a moment after they are stored).
async fn revoked(base: &str, tokens: &Value) {
    let who = bearer(tokens);
    souk_testkit::eventually("the access token revoked", Duration::from_secs(10), || async {
        let r = who.get(format!("{base}/v1/me")).send().await.ok()?;
        let (status, p) = problem(r).await;
        (status == 401 && p["detail"].as_str()?.contains("revoked")).then_some(())
    })
    .await;
}

fn refresh_token(tokens: &Value) -> &str {
    tokens["refresh_token"].as_str().expect("refresh_token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_me_refresh_logout() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();

    let created =
        json_of(register(&http, base, "  Ada@Example.COM ", PASSWORD).await, StatusCode::CREATED).await;
    assert_eq!(created["email"], "Ada@example.com", "trimmed, domain lower-cased");
    assert_eq!(created["roles"], json!(["customer"]));
    assert!(created.get("password").is_none() && created.get("password_hash").is_none());

    // The same address in another case is the same account.
    let (status, p) = problem(register(&http, base, "ada@example.com", "another long password").await).await;
    assert_eq!((status, p["code"].as_str()), (409, Some("email_taken")));

    // Nothing about an account is stored by a browser or a proxy; nothing is sniffed.
    let headers = |r: &Response| {
        let h = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (h("cache-control"), h("x-content-type-options"))
    };
    let signed_in = login_raw(&http, base, "ADA@example.com", PASSWORD).await;
    assert_eq!(headers(&signed_in), (Some("no-store".into()), Some("nosniff".into())));
    let tokens = json_of(signed_in, StatusCode::OK).await;
    assert_eq!(tokens["token_type"], "Bearer");
    let mine = bearer(&tokens).get(format!("{base}/v1/me")).send().await.expect("me");
    assert_eq!(headers(&mine), (Some("no-store".into()), Some("nosniff".into())));
    let refused = http.get(format!("{base}/v1/me")).send().await.expect("me");
    assert_eq!(headers(&refused), (Some("no-store".into()), Some("nosniff".into())));
    let catalog = http.get(format!("{base}/v1/products")).send().await.expect("products");
    assert_eq!(headers(&catalog), (None, Some("nosniff".into())), "the catalog may be cached");
    // Except as answered to someone signed in (staff see drafts there).
    let catalog = bearer(&tokens).get(format!("{base}/v1/products")).send().await.expect("products");
    assert_eq!(headers(&catalog), (Some("no-store".into()), Some("nosniff".into())));
    // Answers made before any route is reached are not sniffed either.
    let unknown = http.get(format!("{base}/v1/no-such-route")).send().await.expect("unknown");
    assert_eq!((unknown.status(), headers(&unknown).1), (StatusCode::NOT_FOUND, Some("nosniff".into())));
    let unallowed = http.delete(format!("{base}/v1/products")).send().await.expect("unallowed");
    assert_eq!(
        (unallowed.status(), headers(&unallowed).1),
        (StatusCode::METHOD_NOT_ALLOWED, Some("nosniff".into()))
    );
    // No page of another origin may call the API unless configured (below).
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/me"))
        .header("origin", "https://shop.test")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.headers().get("access-control-allow-origin").is_none());
    assert_eq!(tokens["expires_in"], 900);
    let me =
        json_of(bearer(&tokens).get(format!("{base}/v1/me")).send().await.expect("me"), StatusCode::OK).await;
    assert_eq!(me["id"], created["id"]);

    let patched = bearer(&tokens)
        .patch(format!("{base}/v1/me"))
        .json(&json!({"name": "Ada Lovelace", "phone": "+44 20 7183 8750"}))
        .send()
        .await
        .expect("patch");
    let patched = json_of(patched, StatusCode::OK).await;
    assert_eq!(
        (patched["name"].as_str(), patched["phone"].as_str()),
        (Some("Ada Lovelace"), Some("+442071838750"))
    );
    let cleared = bearer(&tokens)
        .patch(format!("{base}/v1/me"))
        .json(&json!({"phone": null}))
        .send()
        .await
        .expect("patch");
    let cleared = json_of(cleared, StatusCode::OK).await;
    assert!(cleared.get("phone").is_none(), "null removes the phone: {cleared}");
    assert_eq!(cleared["name"], "Ada Lovelace", "absent fields stay");

    // Refresh rotates: the new pair works, the spent token does not.
    let second = json_of(refresh(&http, base, refresh_token(&tokens)).await, StatusCode::OK).await;
    assert_ne!(refresh_token(&second), refresh_token(&tokens));
    let me = bearer(&second).get(format!("{base}/v1/me")).send().await.expect("me");
    assert_eq!(me.status(), StatusCode::OK);

    // Logout ends the session: its refresh token is dead; logging out again is harmless.
    let out =
        post(&http, format!("{base}/v1/auth/logout"), json!({"refresh_token": refresh_token(&second)})).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let (status, p) = problem(refresh(&http, base, refresh_token(&second)).await).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_token")));
    let again = post(&http, format!("{base}/v1/auth/logout"), json!({"refresh_token": "nonsense"})).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();
    let (_, first) = customer(&http, base, "thief-target@example.com").await;
    let stolen = refresh_token(&first).to_owned();
    // The client refreshes (spending `stolen`)…
    let client = json_of(refresh(&http, base, &stolen).await, StatusCode::OK).await;
    // …then the thief replays the copy: refused, and the family is revoked.
    let (status, p) = problem(refresh(&http, base, &stolen).await).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_token")));
    // The client's own, never-spent token is now dead too.
    let (status, _) = problem(refresh(&http, base, refresh_token(&client)).await).await;
    assert_eq!(status, 401);
    // Another session of the same user is not affected.
    let other = login(base, "thief-target@example.com", PASSWORD).await;
    assert_eq!(refresh(&http, base, refresh_token(&other)).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_look_the_same_and_are_throttled() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();
    customer(&http, base, "known@example.com").await;

    let (s1, wrong) =
        problem(login_raw(&http, base, "known@example.com", "not the password at all").await).await;
    let (s2, unknown) =
        problem(login_raw(&http, base, "nobody@example.com", "not the password at all").await).await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown, "the answers must not tell the cases apart");
    assert_eq!(wrong["code"], "invalid_credentials");

    // Four more failures (five in all) are answered normally; the next attempt is held off,
    // even with the right password.
    for _ in 0..4 {
        assert_eq!(login_raw(&http, base, "known@example.com", "still not it!!").await.status(), 401);
    }
    let held = login_raw(&http, base, "known@example.com", PASSWORD).await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = held.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(retry_after >= 1);
    let (_, p) = problem(held).await;
    assert_eq!(p["code"], "rate_limited");
    // Unknown accounts are throttled the same way, so throttling reveals nothing either.
    for _ in 0..4 {
        login_raw(&http, base, "nobody@example.com", "not the password at all").await;
    }
    assert_eq!(
        login_raw(&http, base, "nobody@example.com", "x-x-x-x-x-x").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // One client address failing across many accounts is slowed down as well.
    let mut statuses = Vec::new();
    for i in 0..24 {
        statuses.push(
            login_raw(&http, base, &format!("spray-{i}@example.com"), "guess guess guess").await.status(),
        );
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "address throttling never kicked in: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_registering_one_email_at_once_create_one_account() {
    let nats = NatsServer::start();
    let a = SoukNode::start(bin(), nats.url(), &[]).expect("node a");
    let b = SoukNode::start(bin(), nats.url(), &[]).expect("node b");
    let http = http();
    ready(&http, &a).await;
    ready(&http, &b).await;
    let attempts = (0..16).map(|i| {
        let (http, base) = (http.clone(), if i % 2 == 0 { a.url().to_owned() } else { b.url().to_owned() });
        async move { register(&http, &base, "race@example.com", &format!("{PASSWORD} {i}")).await.status() }
    });
    let statuses = join_all(attempts).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let taken = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, taken), (1, 15), "{statuses:?}");
    // Exactly one account, in the read model of both nodes.
    let admin = admin_http(a.url()).await;
    for base in [a.url(), b.url()] {
        let users =
            souk_testkit::eventually("the account in the read model", Duration::from_secs(20), || async {
                let page: Value =
                    souk_testkit::json_at(&admin, format!("{base}/v1/admin/users?q=race@")).await?;
                let items = page["items"].as_array()?.clone();
                (!items.is_empty()).then_some(items)
            })
            .await;
        assert_eq!(users.len(), 1, "{users:?}");
    }
}

/// A concrete URL for a route template.
fn concrete(path: &str, user: &str) -> String {
    path.replace("{sku}", "ANY-SKU").replace("{id}", user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_staff_and_admin_route_refuses_customers_and_anonymous_callers() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();
    let (_, mine) = customer(&http, base, "shopper@example.com").await;
    let (victim, _) = customer(&http, base, "victim@example.com").await;
    let shopper = bearer(&mine);
    let mut checked = 0;
    for e in souk_api::routes::endpoints() {
        let url = format!("{base}{}", concrete(e.path, &victim));
        let send = |c: &Client| c.request(e.method.clone(), url.clone()).json(&json!({})).send();
        if e.access != Access::Public {
            let (status, p) = problem(send(&http).await.expect("anonymous")).await;
            assert_eq!((status, p["code"].as_str()), (401, Some("unauthorized")), "{} {}", e.method, e.path);
        }
        if e.access >= Access::Staff {
            let (status, p) = problem(send(&shopper).await.expect("customer")).await;
            assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")), "{} {}", e.method, e.path);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} protected routes found");

    // The victim is untouched, and staff still cannot administer users.
    let admin = admin_http(base).await;
    let victim_view = json_of(
        admin.get(format!("{base}/v1/admin/users/{victim}")).send().await.expect("get"),
        StatusCode::OK,
    )
    .await;
    assert_eq!((victim_view["disabled"].as_bool(), victim_view["version"].as_u64()), (Some(false), Some(1)));
    let staff_id = {
        let me: Value =
            shopper.get(format!("{base}/v1/me")).send().await.expect("me").json().await.expect("json");
        me["id"].as_str().expect("id").to_owned()
    };
    let promoted = admin
        .post(format!("{base}/v1/admin/users/{staff_id}/roles"))
        .json(&json!({"roles": ["staff"]}))
        .send()
        .await
        .expect("roles");
    assert_eq!(json_of(promoted, StatusCode::OK).await["roles"], json!(["staff"]));
    // Roles travel in the access token, so the promotion shows after a refresh.
    let staff = json_of(refresh(&http, base, refresh_token(&mine)).await, StatusCode::OK).await;
    let staff = bearer(&staff);
    let restock =
        staff.post(format!("{base}/v1/inventory/STAFF-1/restock")).json(&json!({"quantity": 3})).send().await;
    assert_eq!(restock.expect("restock").status(), StatusCode::OK);
    let r = staff.post(format!("{base}/v1/admin/users/{victim}/disable")).send().await.expect("disable");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misaddressed_tokens_get_401() {
    let pem = generate_pem().expect("pem");
    let (_nats, node, http) = one_node(&[("SOUK_AUTH_KEYS_PEM", &pem)]).await;
    let base = node.url();
    let (id, tokens) = customer(&http, base, "holder@example.com").await;
    // Published keys: exactly the configured one.
    let keys = KeySet::from_pems(&[pem.as_str()]).expect("keys");
    let jwks = json_of(
        http.get(format!("{base}/.well-known/jwks.json")).send().await.expect("jwks"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(jwks["keys"][0]["kid"], keys.signing_kid());
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    let user = UserId::parse(id).expect("id");
    let roles = BTreeSet::from([Role::Admin]);
    let good = TokenSettings {
        issuer: "souk".into(),
        audience: "souk".into(),
        access_ttl: Duration::from_secs(900),
    };
    let now = OffsetDateTime::now_utc();
    let sign = |keys: &KeySet, s: &TokenSettings, at: OffsetDateTime| {
        issue(keys, s, &user, "sid", &roles, 0, at).expect("sign")
    };
    // Sanity: a token we sign the way Souk does is accepted, so the refusals below are real.
    let ok = http_with_token(&sign(&keys, &good, now)).get(format!("{base}/v1/me")).send().await.expect("me");
    assert_eq!(ok.status(), StatusCode::OK);

    let other_keys = KeySet::from_pems(&[generate_pem().expect("pem")]).expect("keys");
    let real = tokens["access_token"].as_str().expect("token").to_owned();
    let mut parts: Vec<String> = real.split('.').map(str::to_owned).collect();
    let b64 = base64_url();
    let mut claims: Value = serde_json::from_slice(&b64.0(&parts[1])).expect("claims");
    claims["roles"] = json!(["admin"]);
    parts[1] = b64.1(&serde_json::to_vec(&claims).expect("json"));
    let tampered = parts.join(".");
    let unsigned = format!("{}.{}.", b64.1(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let cases = [
        ("expired", sign(&keys, &good, now - time::Duration::hours(1))),
        ("tampered", tampered),
        ("unknown kid", sign(&other_keys, &good, now)),
        ("wrong audience", sign(&keys, &TokenSettings { audience: "elsewhere".into(), ..good.clone() }, now)),
        ("wrong issuer", sign(&keys, &TokenSettings { issuer: "evil".into(), ..good.clone() }, now)),
        ("alg none", unsigned),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in cases {
        let r = http_with_token(&token).get(format!("{base}/v1/admin/users")).send().await.expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(r.headers().contains_key("www-authenticate"), "{what}");
        let (_, p) = problem(r).await;
        assert_eq!(p["code"], "unauthorized", "{what}");
    }
}

/// base64url decode and encode, without padding.
#[allow(clippy::type_complexity)]
fn base64_url() -> (fn(&str) -> Vec<u8>, fn(&[u8]) -> String) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    (|s| B64.decode(s).expect("base64"), |b| B64.encode(b))
}

/// The reset token Souk published for `user`, read from its event subject the way the
/// notification service will; `None` until the request is recorded.
async fn reset_token_from_nats(nats_url: &str, user: &str) -> Option<String> {
    let client = async_nats::connect(nats_url).await.ok()?;
    let stream = async_nats::jetstream::new(client).get_stream("SOUK_EVENTS_USER").await.ok()?;
    let msg = stream.get_last_raw_message_by_subject(&format!("souk.evt.user.{user}")).await.ok()?;
    let commit: Commit<UserEvent> = serde_json::from_slice(&msg.payload).ok()?;
    match commit.into_iter().last()?.body {
        UserEvent::PasswordResetRequested { token, .. } => Some(token.0),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_and_reset_end_old_sessions() {
    // A shop's production log filter, with no email provider configured yet.
    let (nats, node, http) = one_node(&[("SOUK_LOG", "info")]).await;
    let base = node.url();
    let email = "forgetful@example.com";
    let (id, here) = customer(&http, base, email).await;
    let elsewhere = login(base, email, PASSWORD).await;

    // A change needs the current password, keeps this session and ends the other one.
    let change = |current: &str, new: &str| {
        bearer(&here)
            .post(format!("{base}/v1/me/password"))
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    let (status, p) =
        problem(change("wrong current password", "a brand new passphrase").await.expect("change")).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_credentials")));
    let (status, p) = problem(change(PASSWORD, "password123").await.expect("change")).await;
    assert_eq!((status, p["code"].as_str()), (422, Some("weak_password")));
    assert_eq!(change(PASSWORD, "a brand new passphrase").await.expect("change").status(), StatusCode::OK);
    assert_eq!(refresh(&http, base, refresh_token(&elsewhere)).await.status(), StatusCode::UNAUTHORIZED);
    // Access tokens from before the change stop working at once, not when they expire; the
    // session kept here carries on with a refresh.
    revoked(base, &elsewhere).await;
    revoked(base, &here).await;
    let here = json_of(refresh(&http, base, refresh_token(&here)).await, StatusCode::OK).await;
    assert_eq!(bearer(&here).get(format!("{base}/v1/me")).send().await.expect("me").status(), StatusCode::OK);
    assert_eq!(login_raw(&http, base, email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    login(base, email, "a brand new passphrase").await;

    // Reset: always 202; the token arrives as an event; it works once and ends every session.
    let ask = |email: &str| post(&http, format!("{base}/v1/auth/password-reset"), json!({"email": email}));
    assert_eq!(ask("nobody-here@example.com").await.status(), StatusCode::ACCEPTED);
    assert_eq!(ask(email).await.status(), StatusCode::ACCEPTED);
    let token = souk_testkit::eventually("the reset event", Duration::from_secs(10), || {
        reset_token_from_nats(nats.url(), &id)
    })
    .await;
    // Asking again, as a customer does when the first email is slow, leaves the first link
    // working; whichever is used first closes the other.
    assert_eq!(ask(email).await.status(), StatusCode::ACCEPTED);
    let again = souk_testkit::eventually("the second reset event", Duration::from_secs(10), || async {
        reset_token_from_nats(nats.url(), &id).await.filter(|t| *t != token)
    })
    .await;
    let confirm = |token: &str, new: &str| {
        post(
            &http,
            format!("{base}/v1/auth/password-reset/confirm"),
            json!({"token": token, "new_password": new}),
        )
    };
    let (status, p) = problem(confirm(&format!("{token}x"), "reset to something new").await).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_token")));
    assert_eq!(confirm(&token, "reset to something new").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(confirm(&token, "and once more again").await.status(), StatusCode::UNAUTHORIZED, "single use");
    assert_eq!(confirm(&again, "and once more again").await.status(), StatusCode::UNAUTHORIZED, "closed too");
    assert_eq!(refresh(&http, base, refresh_token(&here)).await.status(), StatusCode::UNAUTHORIZED);
    login(base, email, "reset to something new").await;

    // The reset emails reached the `log` provider, which logged that it sent nothing, but
    // neither link nor address: a log is no place for a way into an account.
    souk_testkit::eventually(
        "the reset emails handed to the log provider",
        Duration::from_secs(20),
        || async {
            let log = node.log();
            let told =
                log.lines().filter(|l| l.contains("notification not sent") && l.contains("password_reset"));
            (told.count() == 2).then_some(())
        },
    )
    .await;
    let log = node.log();
    assert!(!log.contains(&token) && !log.contains(&again), "a reset token is in the node's log");
    assert!(!log.contains(email), "the customer's address is in the node's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_cannot_log_in_or_refresh() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();
    let (id, tokens) = customer(&http, base, "leaving@example.com").await;
    assert_eq!(
        bearer(&tokens).get(format!("{base}/v1/me")).send().await.expect("me").status(),
        StatusCode::OK
    );
    let admin = admin_http(base).await;
    let r = admin.post(format!("{base}/v1/admin/users/{id}/disable")).send().await.expect("disable");
    assert_eq!(json_of(r, StatusCode::OK).await["disabled"], true);
    revoked(base, &tokens).await;
    let (status, p) = problem(refresh(&http, base, refresh_token(&tokens)).await).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("account_disabled")));
    let (status, p) = problem(login_raw(&http, base, "leaving@example.com", PASSWORD).await).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("account_disabled")));
    // An admin can neither disable nor demote themselves.
    let me: Value = admin.get(format!("{base}/v1/me")).send().await.expect("me").json().await.expect("json");
    let admin_id = me["id"].as_str().expect("id");
    let r = admin.post(format!("{base}/v1/admin/users/{admin_id}/disable")).send().await.expect("disable");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = admin
        .post(format!("{base}/v1/admin/users/{admin_id}/roles"))
        .json(&json!({"roles": ["customer"]}))
        .send()
        .await
        .expect("roles");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(me["email"], ADMIN_EMAIL);
    // Enabled again, the account logs in.
    let r = admin.post(format!("{base}/v1/admin/users/{id}/enable")).send().await.expect("enable");
    assert_eq!(r.status(), StatusCode::OK);
    let again = login(base, "leaving@example.com", PASSWORD).await;
    assert_eq!(
        bearer(&again).get(format!("{base}/v1/me")).send().await.expect("me").status(),
        StatusCode::OK
    );

    // A staff member demoted loses staff access with the token they hold, not 15 minutes on.
    let set_roles = |roles: &'static str| {
        let admin = admin.clone();
        let url = format!("{base}/v1/admin/users/{id}/roles");
        async move {
            let r = admin.post(url).json(&json!({"roles": [roles]})).send().await;
            assert_eq!(r.expect("roles").status(), StatusCode::OK);
        }
    };
    set_roles("staff").await;
    let staff = login(base, "leaving@example.com", PASSWORD).await;
    let stock = |t: &Value| bearer(t).get(format!("{base}/v1/inventory")).send();
    assert_eq!(stock(&staff).await.expect("stock").status(), StatusCode::OK);
    set_roles("customer").await;
    revoked(base, &staff).await;
    let customer_again = login(base, "leaving@example.com", PASSWORD).await;
    assert_eq!(stock(&customer_again).await.expect("stock").status(), StatusCode::FORBIDDEN);
}

/// Every message of stream `name` still stored, as (subject, payload text).
async fn stored(nats_url: &str, name: &str) -> Vec<(String, String)> {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let mut stream = async_nats::jetstream::new(client).get_stream(name).await.expect("stream");
    let (first, last) = {
        let s = &stream.info().await.expect("info").state;
        (s.first_sequence, s.last_sequence)
    };
    let mut out = Vec::new();
    for seq in first..=last {
        // Purged and deleted sequences answer "no message".
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((m.subject.to_string(), String::from_utf8_lossy(&m.payload).into_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_account_keeps_nothing_personal_and_its_email_is_free_again() {
    let (nats, mut node, http) = one_node(&[]).await;
    let base = node.url().to_owned();
    let base = base.as_str();
    let email = "ursula.erasable@example.com";
    let r = post(
        &http,
        format!("{base}/v1/auth/register"),
        json!({"email": email, "password": PASSWORD, "name": "Ursula Erasable", "phone": "+44 20 7183 8750"}),
    )
    .await;
    let id = json_of(r, StatusCode::CREATED).await["id"].as_str().expect("id").to_owned();
    let here = login(base, email, PASSWORD).await;
    let elsewhere = login(base, email, PASSWORD).await;
    let admin = admin_http(base).await;
    let search = |q: &'static str| {
        let admin = admin.clone();
        async move {
            let r = admin.get(format!("{base}/v1/admin/users?q={q}")).send().await.expect("list");
            let page = json_of(r, StatusCode::OK).await;
            page["items"].as_array().expect("items").iter().map(|u| u["id"].to_string()).collect::<Vec<_>>()
        }
    };
    souk_testkit::eventually("the account listed", Duration::from_secs(10), || async {
        (search("erasable").await.len() == 1).then_some(())
    })
    .await;
    // A message went to the address: the delivery log names it.
    let r = post(&http, format!("{base}/v1/auth/password-reset"), json!({"email": email})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deliveries = |admin: Client, base: String| async move {
        let r =
            admin.get(format!("{base}/v1/admin/notifications?recipient={email}")).send().await.expect("log");
        json_of(r, StatusCode::OK).await["items"].as_array().expect("items").len()
    };
    souk_testkit::eventually("the reset email in the delivery log", Duration::from_secs(10), || async {
        (deliveries(admin.clone(), base.to_owned()).await == 1).then_some(())
    })
    .await;

    // Refused without the password, or with a wrong one: nothing changes.
    let erase = |body: Value| bearer(&here).post(format!("{base}/v1/me/erasure")).json(&body).send();
    let (status, p) = problem(erase(json!({"password": "not the password"})).await.expect("erase")).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_credentials")));
    let (status, _) = problem(erase(json!({})).await.expect("erase")).await;
    assert_eq!(status, 422);
    assert_eq!(bearer(&here).get(format!("{base}/v1/me")).send().await.expect("me").status(), StatusCode::OK);

    assert_eq!(erase(json!({"password": PASSWORD})).await.expect("erase").status(), StatusCode::NO_CONTENT);
    // Sessions end at once, the account is gone for logins, staff and searches.
    revoked(base, &here).await;
    revoked(base, &elsewhere).await;
    let (status, p) = problem(refresh(&http, base, refresh_token(&elsewhere)).await).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_token")));
    let (status, p) = problem(login_raw(&http, base, email, PASSWORD).await).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_credentials")));
    let r = admin.get(format!("{base}/v1/admin/users/{id}")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    souk_testkit::eventually("the account unlisted", Duration::from_secs(10), || async {
        search("erasable").await.is_empty().then_some(())
    })
    .await;
    souk_testkit::eventually("the delivery log redacted", Duration::from_secs(10), || async {
        (deliveries(admin.clone(), base.to_owned()).await == 0).then_some(())
    })
    .await;

    // What NATS keeps names nobody: the user's history is the erasure alone, and no event,
    // snapshot, account record or delivery record holds the address, the name or the phone.
    let history: Vec<(String, String)> = stored(nats.url(), "SOUK_EVENTS_USER")
        .await
        .into_iter()
        .filter(|(subject, _)| subject == &format!("souk.evt.user.{id}"))
        .collect();
    assert_eq!(history.len(), 1, "{history:?}");
    let commit: Commit<UserEvent> = serde_json::from_str(&history[0].1).expect("commit");
    assert!(matches!(commit.into_iter().map(|e| e.body).collect::<Vec<_>>()[..], [UserEvent::Erased {}]));
    for name in [
        "SOUK_EVENTS_USER",
        "SOUK_EVENTS_NOTIFICATION",
        "KV_souk_snapshots",
        "KV_souk_emails",
        "KV_souk_credentials",
    ] {
        for (subject, payload) in stored(nats.url(), name).await {
            for personal in ["ursula", "erasable", "7183"] {
                assert!(!payload.to_lowercase().contains(personal), "{name} {subject}: {payload}");
            }
            // A deleted key leaves an empty marker behind; the snapshot is the erased state.
            let erased_snapshot = name == "KV_souk_snapshots" && payload.contains(r#""erased":true"#);
            assert!(
                !subject.ends_with(&id)
                    || name == "SOUK_EVENTS_USER"
                    || payload.is_empty()
                    || erased_snapshot,
                "{name} keeps {subject}: {payload}"
            );
        }
    }

    // A node that rehydrates the user from what is left finds it erased.
    node.restart().expect("restart");
    ready(&http, &node).await;
    let base = node.url();
    let (status, _) = problem(login_raw(&http, base, email, PASSWORD).await).await;
    assert_eq!(status, 401);
    let r = admin_http(base).await.get(format!("{base}/v1/admin/users/{id}")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The address can open a new account; an admin erases it on request, idempotently, but
    // not their own account, and not one that never existed.
    let (again, _) = customer(&http, base, email).await;
    assert_ne!(again, id);
    let admin = admin_http(base).await;
    let erase_as_admin = |user: String| admin.post(format!("{base}/v1/admin/users/{user}/erase")).send();
    assert_eq!(erase_as_admin(again.clone()).await.expect("erase").status(), StatusCode::NO_CONTENT);
    assert_eq!(erase_as_admin(again).await.expect("erase").status(), StatusCode::NO_CONTENT);
    assert_eq!(erase_as_admin(id).await.expect("erase").status(), StatusCode::NO_CONTENT);
    let (status, p) = problem(erase_as_admin(UserId::generate().to_string()).await.expect("erase")).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("unknown_user")));
    let me: Value = admin.get(format!("{base}/v1/me")).send().await.expect("me").json().await.expect("json");
    let (status, p) =
        problem(erase_as_admin(me["id"].as_str().expect("id").to_owned()).await.expect("erase")).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = problem(login_raw(&http, base, email, PASSWORD).await).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_s_export_holds_their_account_cart_orders_and_messages_and_nobody_else_s() {
    let (nats, node, http, admin) = crate::catalog::staff_node().await;
    let base = node.url();
    crate::checkout::lamp_on_sale(&admin, base, base, "LAMP-EXP", 10).await;
    let email = "petra.portable@example.com";
    let r = post(
        &http,
        format!("{base}/v1/auth/register"),
        json!({"email": email, "password": PASSWORD, "name": "Petra Portable", "phone": "+44 20 7183 8751"}),
    )
    .await;
    let id = json_of(r, StatusCode::CREATED).await["id"].as_str().expect("id").to_owned();
    let petra = bearer(&login(base, email, PASSWORD).await);
    let r = petra.patch(format!("{base}/v1/me")).json(&json!({"name": "Petra Portable-Smith"})).send().await;
    assert_eq!(r.expect("profile").status(), StatusCode::OK);
    let r = post(&http, format!("{base}/v1/auth/password-reset"), json!({"email": email})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let token = souk_testkit::eventually("the reset event", Duration::from_secs(10), || {
        reset_token_from_nats(nats.url(), &id)
    })
    .await;
    let order = crate::checkout::confirmed_order(&petra, base, "LAMP-EXP", 2, "export-1").await;
    let r = crate::cart::add(&petra, base, None, "LAMP-EXP", 1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let olaf = crate::cart::customer(&http, base, "olaf.other@example.com").await;
    let theirs = crate::checkout::confirmed_order(&olaf, base, "LAMP-EXP", 1, "export-2").await;

    // The delivery log follows the messages a moment later, and the order list the order: wait
    // for the reset email, the order's confirmation by email and by text message, and the order.
    let (disposition, text) =
        souk_testkit::eventually("the messages in the export", Duration::from_secs(30), || async {
            let r = petra.get(format!("{base}/v1/me/export")).send().await.ok()?;
            assert_eq!(r.status(), StatusCode::OK);
            let disposition = r.headers().get("content-disposition")?.to_str().ok()?.to_owned();
            let text = r.text().await.ok()?;
            let data: Value = serde_json::from_str(&text).ok()?;
            let listed = !data["orders"].as_array()?.is_empty();
            (listed && data["messages"].as_array()?.len() >= 3).then_some((disposition, text))
        })
        .await;
    assert_eq!(disposition, format!("attachment; filename=\"souk-{id}.json\""));
    let data: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(data["account"]["id"], id.as_str());
    assert_eq!(data["account"]["email"], email);
    assert_eq!(data["account"]["name"], "Petra Portable-Smith");
    assert_eq!(data["account"]["phone"], "+442071838751");
    let history = data["account_history"].as_array().expect("history");
    let types: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["user.registered", "user.profile_updated", "user.password_reset_requested"]);
    assert_eq!(history[0]["data"]["name"], "Petra Portable");
    assert_eq!(history[2]["data"]["email"], email);
    assert!(
        history[2]["data"].get("token").is_none() && !text.contains(&token),
        "the reset token is left out"
    );
    assert!(!text.contains("correlation_id"));
    let lines = data["cart"]["lines"].as_array().expect("lines");
    assert_eq!((lines.len(), &lines[0]["sku"], &lines[0]["quantity"]), (1, &json!("LAMP-EXP"), &json!(1)));
    let orders = data["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 1);
    assert_eq!((&orders[0]["id"], &orders[0]["status"]), (&json!(order), &json!("confirmed")));
    assert_eq!(orders[0]["shipping_address"]["line1"], "1 Way");
    let messages = data["messages"].as_array().expect("messages");
    let about = |topic: &str, channel: &str| {
        messages.iter().filter(|m| m["topic"] == topic && m["channel"] == channel).count()
    };
    assert_eq!(about("password_reset", "email"), 1, "{messages:?}");
    assert_eq!(about("order_confirmed", "email"), 1, "{messages:?}");
    assert_eq!(about("order_confirmed", "sms"), 1, "{messages:?}");
    for m in messages {
        assert!(m["to"] == email || m["to"] == "+442071838751", "{m}");
        assert!(m["customer"] == id.as_str() || m["customer"].is_null(), "{m}");
    }
    // Nothing of anyone else's.
    assert!(!text.contains(&theirs) && !text.contains("olaf"), "{text}");

    // An admin answering the person's request gets the same document; customers cannot.
    let r = admin.get(format!("{base}/v1/admin/users/{id}/export")).send().await.expect("export");
    let by_admin = json_of(r, StatusCode::OK).await;
    assert_eq!((&by_admin["account"], &by_admin["orders"]), (&data["account"], &data["orders"]));
    let r = olaf.get(format!("{base}/v1/admin/users/{id}/export")).send().await.expect("export");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http.get(format!("{base}/v1/me/export")).send().await.expect("export");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let unknown = UserId::generate();
    let (status, p) =
        problem(admin.get(format!("{base}/v1/admin/users/{unknown}/export")).send().await.expect("export"))
            .await;
    assert_eq!((status, p["code"].as_str()), (404, Some("unknown_user")));
    // Once erased, there is nothing left to export.
    let r = admin.post(format!("{base}/v1/admin/users/{id}/erase")).send().await.expect("erase");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, p) =
        problem(admin.get(format!("{base}/v1/admin/users/{id}/export")).send().await.expect("export")).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("unknown_user")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_the_configured_origins_may_call_the_api_from_a_browser_and_others_may_not() {
    let (_nats, node, http) =
        one_node(&[("SOUK_CORS_ORIGINS", "https://shop.test, https://admin.shop.test")]).await;
    let base = node.url();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/v1/cart/items"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, cart-token")
            .send()
    };
    let header =
        |r: &Response, name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let allowed = preflight("https://shop.test").await.expect("preflight");
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("https://shop.test"));
    assert!(header(&allowed, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert!(header(&allowed, "access-control-allow-headers").is_some_and(|h| h.contains("cart-token")));
    assert!(header(&allowed, "access-control-allow-credentials").is_none(), "bearer tokens, no cookies");
    let refused = preflight("https://elsewhere.test").await.expect("preflight");
    assert!(header(&refused, "access-control-allow-origin").is_none());

    // The answer itself names the origin and shows the page the request id.
    let r = http.get(format!("{base}/v1/products")).header("origin", "https://admin.shop.test").send().await;
    let r = r.expect("products");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin").as_deref(), Some("https://admin.shop.test"));
    assert!(header(&r, "access-control-expose-headers").is_some_and(|h| h.contains("x-request-id")));
    let r = http.get(format!("{base}/v1/products")).header("origin", "https://elsewhere.test").send().await;
    assert!(header(&r.expect("products"), "access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_account_input_gets_problem_json_and_creates_nothing() {
    let (_nats, node, http) = one_node(&[]).await;
    let base = node.url();
    let long = "n".repeat(101);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"email": "not-an-email", "password": PASSWORD, "name": "X"}), 422, "invalid_email"),
        (json!({"email": "a@b", "password": PASSWORD, "name": "X"}), 422, "invalid_email"),
        (
            json!({"email": format!("{}@example.com", "a".repeat(300)), "password": PASSWORD, "name": "X"}),
            422,
            "invalid_email",
        ),
        (json!({"email": "bad-1@example.com", "password": "short", "name": "X"}), 422, "weak_password"),
        (
            json!({"email": "bad-2@example.com", "password": "x".repeat(129), "name": "X"}),
            422,
            "weak_password",
        ),
        (json!({"email": "bad-3@example.com", "password": "manchester", "name": "X"}), 422, "weak_password"),
        (json!({"email": "bad-4@example.com", "password": PASSWORD, "name": long}), 422, "invalid_input"),
        (json!({"email": "bad-5@example.com", "password": PASSWORD, "name": "   "}), 422, "invalid_input"),
        (
            json!({"email": "bad-6@example.com", "password": PASSWORD, "name": "X", "phone": "12"}),
            422,
            "invalid_input",
        ),
        (json!({"email": "bad-7@example.com", "password": PASSWORD}), 422, "invalid_body"),
        (json!({"email": 7, "password": PASSWORD, "name": "X"}), 422, "invalid_body"),
        (
            json!({"email": "bad-8@example.com", "password": PASSWORD, "name": "X", "role": "admin"}),
            422,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, p) = problem(post(&http, format!("{base}/v1/auth/register"), body.clone()).await).await;
        assert_eq!((got, p["code"].as_str()), (status, Some(code)), "{body}");
    }
    let r =
        http.post(format!("{base}/v1/auth/login")).body("{oops").header("content-type", "application/json");
    let (status, p) = problem(r.send().await.expect("login")).await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid_body")));
    let r = http.post(format!("{base}/v1/auth/refresh")).json(&json!({"refresh_token": "x".repeat(5000)}));
    assert_eq!(problem(r.send().await.expect("refresh")).await.0, 422);

    // None of those left an account or a claim behind: each address is still free.
    for i in 1..=8 {
        let email = format!("bad-{i}@example.com");
        assert_eq!(register(&http, base, &email, PASSWORD).await.status(), StatusCode::CREATED, "{email}");
    }
    let admin = admin_http(base).await;
    let page = souk_testkit::eventually("the users in the read model", Duration::from_secs(20), || async {
        let page: Value = souk_testkit::json_at(&admin, format!("{base}/v1/admin/users?q=bad-")).await?;
        (page["items"].as_array()?.len() == 8).then_some(page)
    })
    .await;
    assert!(page.get("next").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_rate_gets_429_but_probes_always_answer() {
    let (_nats, node, http) =
        one_node(&[("SOUK_RATE_LIMIT_PER_SECOND", "1"), ("SOUK_RATE_LIMIT_BURST", "5")]).await;
    let base = node.url();
    let mut limited = None;
    for _ in 0..12 {
        let r = http.get(format!("{base}/.well-known/jwks.json")).send().await.expect("jwks");
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = limited.expect("the sixth quick request is over the burst");
    assert!(r.headers().contains_key("retry-after"));
    let (_, p) = problem(r).await;
    assert_eq!(p["code"], "rate_limited");
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = http.get(format!("{base}{probe}")).send().await.expect("probe");
        assert_eq!(r.status(), StatusCode::OK, "{probe} must not be rate limited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn souk_admin_create_makes_an_admin_on_a_running_cluster() {
    let (nats, node, http) = one_node(&[]).await;
    let base = node.url();
    let dir = tempfile::tempdir().expect("dir");
    let out =
        souk_command(bin(), nats.url(), dir.path(), &["admin", "create", "--email", "Owner@Shop.example"])
            .env("SOUK_ADMIN_PASSWORD", "the owner's long password")
            .output()
            .await
            .expect("souk admin create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokens = login(base, "owner@shop.example", "the owner's long password").await;
    let users = bearer(&tokens).get(format!("{base}/v1/admin/users")).send().await.expect("list");
    assert_eq!(users.status(), StatusCode::OK);
    // A weak password is refused, and nothing is created.
    let out =
        souk_command(bin(), nats.url(), dir.path(), &["admin", "create", "--email", "second@shop.example"])
            .env("SOUK_ADMIN_PASSWORD", "password")
            .output()
            .await
            .expect("souk admin create");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weak_password"));
    assert_eq!(login_raw(&http, base, "second@shop.example", "password").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_agree_on_the_configured_admin() {
    let nats = NatsServer::start();
    let url = nats.url().to_owned();
    // Started in parallel, each node tries to create the admin before serving: one creates
    // it, the others find it; none fails to start.
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || SoukNode::start(bin(), &url, &[]))
        })
        .collect();
    let nodes: Vec<SoukNode> = starts.into_iter().map(|t| t.join().expect("thread").expect("node")).collect();
    let http = http();
    for node in &nodes {
        ready(&http, node).await;
        let admin = admin_http(node.url()).await;
        let me: Value =
            admin.get(format!("{}/v1/me", node.url())).send().await.expect("me").json().await.expect("json");
        assert_eq!(me["roles"], json!(["admin"]));
    }
}
