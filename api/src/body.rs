//! Limits on request bodies: how large, and how long they may take to arrive.
//!
//! hyper bounds how long a request's head may take; nothing bounds its body. A client that
//! declares a body and sends it a byte at a time would hold a connection and a task for as
//! long as it liked, and a stopping node would wait for it. Every body therefore has a
//! deadline from the moment its request arrives; past it the read fails, and the extractors
//! ([`crate::extract::ApiBytes`]) answer 408 `body_timeout`.

use crate::error::ApiError;
use crate::{AppState, IMPORT_MAX, MAX_BODY};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use souk_messages::ErrorCode;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Refuses a body whose declared length is over its route's limit before reading any of it
/// (bodies without a length, chunked, are cut off by `DefaultBodyLimit` as they stream), and
/// gives every body a deadline.
pub async fn limit(State(app): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = if req.uri().path() == "/v1/admin/import" { IMPORT_MAX } else { MAX_BODY };
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::invalid(
            ErrorCode::PayloadTooLarge,
            format!("request bodies here are limited to {limit} bytes"),
        )
        .into_response();
    }
    // A request without a body (most GETs) has nothing to wait for.
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let timeout = app.body_timeout;
    let deadline = Instant::now() + timeout;
    next.run(req.map(|body| Body::new(Deadline { body, timeout, deadline, sleep: None }))).await
}

/// The answer to a body read that failed because the body's deadline passed; `None` when
/// it failed otherwise.
pub fn too_late(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(TimedOut(timeout)) = e.downcast_ref::<TimedOut>() {
            return Some(ApiError::invalid(
                ErrorCode::BodyTimeout,
                format!("the request body must arrive within {} s of the request", timeout.as_secs()),
            ));
        }
        cause = e.source();
    }
    None
}

/// The error a body gives once its deadline has passed: the time it had.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct TimedOut(Duration);

/// A body that fails once `deadline` has passed while it still waits for data.
struct Deadline {
    body: Body,
    timeout: Duration,
    deadline: Instant,
    /// Armed only when the body first has to wait: a body that is already here costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(TimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
