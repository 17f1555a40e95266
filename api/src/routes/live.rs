//! `GET /v1/ws` (WebSocket) and `GET /v1/orders/{id}/events` (Server-Sent Events): order
//! status as it changes. The WebSocket protocol is in docs/api/orders.md.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::error::{ApiError, Problem};
use crate::extract::ApiPath;
use crate::live::{self, OrderUpdate};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, Method};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt as _, Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How long a new socket may take to authenticate.
const AUTH_WITHIN: Duration = Duration::from_secs(10);
/// Subscriptions one socket may hold.
const MAX_SUBSCRIPTIONS: usize = 100;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        // The socket authenticates in its first message: browsers cannot send headers with a
        // WebSocket, and a token in the URL would end up in logs.
        Route::new(Method::GET, "/v1/ws", Access::Public, get(ws)),
        Route::new(Method::GET, "/v1/orders/{id}/events", Access::User, get(events)),
    ]
}

/// What a WebSocket client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    /// First message: the access token.
    Auth { token: String },
    /// Follow one order after `after` (its last version seen; 0 for everything).
    Subscribe {
        order: String,
        #[serde(default)]
        after: u64,
    },
    /// Staff: follow every order after stream sequence `after_seq` (absent: from now).
    SubscribeAll {
        #[serde(default)]
        after_seq: Option<u64>,
    },
    /// Stop following one order.
    Unsubscribe { order: String },
    /// Staff: stop following every order.
    UnsubscribeAll,
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage {
    /// Authenticated.
    Ready { user: String },
    /// Subscribed.
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        order: Option<String>,
    },
    /// No longer subscribed (also when it was not).
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        order: Option<String>,
    },
    /// An order event.
    Update(OrderUpdate),
    /// A refused message: the socket stays open unless authentication failed.
    Error { code: ErrorCode, detail: String },
}

impl ServerMessage {
    fn error(e: &ApiError) -> Self {
        let (code, detail) = match e {
            ApiError::Rejected(r) => (r.code, r.detail.clone()),
            other => (ErrorCode::Internal, other.to_string()),
        };
        Self::Error { code, detail }
    }
}

/// Upgrades to the live order-status socket.
#[utoipa::path(get, path = "/v1/ws", tag = "orders",
    responses((status = 101, description = "switching to the WebSocket protocol in docs/api/orders.md")))]
async fn ws(
    State(app): State<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    Ok(upgrade?.max_message_size(16 * 1024).on_upgrade(move |socket| session(app, socket)))
}

async fn send(socket: &mut futures::stream::SplitSink<WebSocket, Message>, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn session(app: AppState, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let who = match tokio::time::timeout(AUTH_WITHIN, rx.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Auth { token }) => Principal::from_token(&app.auth, &token),
            _ => Err(ApiError::invalid(
                ErrorCode::Unauthorized,
                "send {\"type\": \"auth\", \"token\": …} first",
            )),
        },
        _ => Err(ApiError::invalid(ErrorCode::Unauthorized, "no auth message in time")),
    };
    let who = match who {
        Ok(who) => who,
        Err(e) => {
            send(&mut tx, &ServerMessage::error(&e)).await;
            let _ = tx.close().await;
            return;
        }
    };
    if !send(&mut tx, &ServerMessage::Ready { user: who.user.to_string() }).await {
        return;
    }
    let (out, mut outgoing) = mpsc::channel::<ServerMessage>(256);
    let mut feeds = tokio::task::JoinSet::new();
    // Each subscription's feed by what it follows (an order id, or `None` for every order):
    // subscribing again replaces the feed, unsubscribing ends it.
    let mut subscriptions: HashMap<Option<String>, AbortHandle> = HashMap::new();
    let mut draining = std::pin::pin!(app.readiness.until_draining());
    loop {
        tokio::select! {
            // A node shutting down says so, rather than letting the connection drop: the
            // client reconnects to another node and resubscribes after what it saw.
            () = &mut draining => {
                let away = CloseFrame { code: close_code::AWAY, reason: "node shutting down".into() };
                let _ = tx.send(Message::Close(Some(away))).await;
                break;
            }
            incoming = rx.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                let reply = match request(&app, &who, &text, &subscriptions).await {
                    Ok(Request::Subscribe(key, feed)) => {
                        let out = out.clone();
                        let task = feeds.spawn(async move {
                            let mut feed = std::pin::pin!(feed);
                            while let Some(update) = feed.next().await {
                                if out.send(ServerMessage::Update(update)).await.is_err() {
                                    break;
                                }
                            }
                        });
                        if let Some(replaced) = subscriptions.insert(key.clone(), task) {
                            replaced.abort();
                        }
                        ServerMessage::Subscribed { order: key }
                    }
                    Ok(Request::Unsubscribe(key)) => {
                        if let Some(feed) = subscriptions.remove(&key) {
                            feed.abort();
                        }
                        ServerMessage::Unsubscribed { order: key }
                    }
                    Err(e) => ServerMessage::error(&e),
                };
                if !send(&mut tx, &reply).await {
                    break;
                }
            }
            Some(msg) = outgoing.recv() => {
                if !send(&mut tx, &msg).await {
                    break;
                }
            }
            // A feed that ended (its stream failed, or it was replaced) is let go of.
            Some(ended) = feeds.join_next_with_id(), if !feeds.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                subscriptions.retain(|_, feed| feed.id() != id);
            }
        }
    }
    feeds.abort_all();
}

type Feed = std::pin::Pin<Box<dyn Stream<Item = OrderUpdate> + Send>>;

/// What a client message asks for, once it is allowed.
enum Request {
    /// Start following what the key names (an order, or `None` for every order).
    Subscribe(Option<String>, Feed),
    /// Stop following what the key names.
    Unsubscribe(Option<String>),
}

/// Reads a client message and, for a subscription the caller may hold, starts its feed.
async fn request(
    app: &AppState,
    who: &Principal,
    text: &str,
    held: &HashMap<Option<String>, AbortHandle>,
) -> Result<Request, ApiError> {
    let msg = serde_json::from_str::<ClientMessage>(text)
        .map_err(|e| ApiError::invalid(ErrorCode::InvalidInput, format!("not a client message: {e}")))?;
    let room = |key: &Option<String>| {
        if held.len() >= MAX_SUBSCRIPTIONS && !held.contains_key(key) {
            return Err(ApiError::invalid(ErrorCode::InvalidInput, "too many subscriptions on one socket"));
        }
        Ok(())
    };
    match msg {
        ClientMessage::Auth { .. } => {
            Err(ApiError::invalid(ErrorCode::InvalidInput, "already authenticated"))
        }
        ClientMessage::Subscribe { order, after } => {
            let view = app.checkout.get(who, &order, "live").await?;
            let key = Some(view.id.to_string());
            room(&key)?;
            Ok(Request::Subscribe(key, Box::pin(app.live.order(view.id, after))))
        }
        ClientMessage::SubscribeAll { after_seq } => {
            if !who.is_staff() {
                return Err(ApiError::invalid(ErrorCode::Forbidden, "only staff follow every order"));
            }
            room(&None)?;
            let feed = live::all_orders(&app.store, after_seq).await?;
            Ok(Request::Subscribe(None, Box::pin(feed)))
        }
        ClientMessage::Unsubscribe { order } => Ok(Request::Unsubscribe(Some(order))),
        ClientMessage::UnsubscribeAll => Ok(Request::Unsubscribe(None)),
    }
}

/// The order's status events as Server-Sent Events (`event: order`, `id`: the version);
/// a reconnecting client's `Last-Event-ID` resumes after what it saw.
#[utoipa::path(get, path = "/v1/orders/{id}/events", tag = "orders",
    params(("id" = String, Path, description = "Order id"), ("Last-Event-ID" = Option<u64>, Header, description = "the last version seen")),
    responses((status = 200, content_type = "text/event-stream", description = "one event per order event, in order"), (status = 404, body = Problem)))]
async fn events(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let after =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let view = app.checkout.get(&who, &id, &rid.0).await?;
    // The stream ends when the node starts shutting down: the drain waits for every response
    // to finish, and a browser's EventSource reconnects (to another node) with Last-Event-ID.
    let events = app.live.order(view.id, after).take_until(app.readiness.until_draining()).map(|u| {
        let event = SseEvent::default().event("order").id(u.version.to_string());
        Ok::<_, Infallible>(
            event.json_data(&u).unwrap_or_else(|_| SseEvent::default().comment("unencodable")),
        )
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
