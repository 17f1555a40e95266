//! The checkout saga's driver. Every order event is a message on one durable consumer that
//! all nodes share; one that calls for work (a placement, a cancellation or refund request)
//! makes the receiving node run the order's steps back to back. A step takes the order as the
//! previous step's recording answered it (or reads it), does its work (reserve stock, authorise
//! and capture, commit), and records the result as the order's next event; the message is
//! acknowledged once the order is at rest. A running step keeps its
//! message with progress acks; a node that dies mid-step stops sending them, and after the
//! ack wait another node runs the step again.
//! Every step is idempotent by the order id (reservation id, payment keys), and the order
//! entity ignores a result it already has, so a repeated step changes nothing.

use crate::metrics::ActorMetrics;
use crate::payments::{PaymentError, PaymentGateway};
use async_nats::jetstream::AckKind;
use souk_messages::event::commit_types;
use souk_messages::order::{
    CancelReason, OrderCommand, OrderEvent, OrderId, OrderLine, OrderRequest, OrderStatus, OrderView,
};
use souk_messages::product::Money;
use souk_messages::stock::{Quantity, StockCommand, StockRequest};
use souk_messages::subject::{EntityKind, Subjects};
use souk_messages::{ErrorCode, ReplyError, ReservationId, Sku};
use souk_nats::{Bus, BusError, Jet};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};

/// The consumer every node shares.
const CONSUMER: &str = "souk_checkout";
/// Steps one node runs at once.
const PARALLEL: usize = 256;
/// How long a step's message stays with a node that stops answering for it: a node that
/// dies mid-step has its step run by another node this long after its last sign of life.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// The most steps one message runs (a checkout takes four).
const MAX_STEPS: usize = 10;
/// How often a running step tells the server it is still at work.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long after the checkout the saga keeps trying to void an unanswered authorisation. A
/// provider remembers an idempotency key for a day (Stripe: 24 h); asking again after that
/// would authorise anew instead of finding the first.
const VOID_FOR: time::Duration = time::Duration::hours(23);

/// How the saga behaves.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long an order's stock is held; it lapses by itself if the saga dies silently.
    pub reservation_ttl: Duration,
    /// How long one payment step may take, retries included, before the order is cancelled.
    pub payment_timeout: Duration,
}

/// What a step needs.
#[derive(Debug, Clone)]
struct Saga {
    bus: Bus,
    gateway: Arc<dyn PaymentGateway>,
    settings: SagaSettings,
    metrics: ActorMetrics,
}

/// The order as a step left it, when the step recorded something.
type Next = Option<OrderView>;

/// Why a step must be retried later (its message is redelivered).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("payment provider: {0}")]
    Payment(PaymentError),
}

/// Runs until `stop` is set, restarting after failures.
pub async fn run(
    jet: Jet,
    bus: Bus,
    gateway: Arc<dyn PaymentGateway>,
    settings: SagaSettings,
    metrics: ActorMetrics,
    stop: watch::Receiver<bool>,
) {
    let saga = Saga { bus, gateway, settings, metrics };
    crate::restart::restarting("checkout saga driver", stop, |stop| drive(&jet, &saga, stop)).await;
}

async fn drive(jet: &Jet, saga: &Saga, mut stop: watch::Receiver<bool>) -> Result<(), souk_nats::NatsSource> {
    // Short, because a running step keeps its message with progress acks.
    let consumer =
        crate::restart::shared_consumer(jet, CONSUMER, EntityKind::Order, ACK_WAIT, 4 * PARALLEL as i64)
            .await?;
    let mut messages = consumer.messages().await?;
    let slots = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let Some(msg) = crate::restart::next_or_stop(&mut messages, &mut stop).await else { return Ok(()) };
        let msg = msg?;
        let Some(id) =
            Subjects.entity_id_of(EntityKind::Order, &msg.subject).and_then(|s| OrderId::parse(&s).ok())
        else {
            tracing::error!(subject = %msg.subject, "skipping an event of no order");
            msg.ack().await?;
            continue;
        };
        // The driver runs an order's steps back to back from the event that calls for work;
        // the events those steps record need nothing more. An unreadable commit runs them
        // too: the steps read the order for themselves.
        let calls_for_work = commit_types(&msg.payload)
            .is_none_or(|types| types.iter().any(|t| OrderEvent::CALLS_FOR_WORK.contains(&t.as_ref())));
        if !calls_for_work {
            msg.ack().await?;
            continue;
        }
        // When the event that calls for work was stored: for a checkout, when it was placed.
        let called_at = msg.info().map_or_else(|_| OffsetDateTime::now_utc(), |i| i.published);
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(()) };
        let saga = saga.clone();
        tokio::spawn(async move {
            saga.metrics.saga_started();
            // Its log lines carry the order id as their correlation id, on whichever node runs it.
            let span = tracing::info_span!(
                "saga",
                correlation_id = %id,
                trace_id = %souk_messages::log::trace_id(id.as_str())
            );
            let step = tracing::Instrument::instrument(saga.step(&id, called_at), span);
            tokio::pin!(step);
            let mut progress =
                tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            let outcome = loop {
                tokio::select! {
                    r = &mut step => break r,
                    _ = progress.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(order = %id, error = %e, "could not extend a running step");
                        }
                    }
                }
            };
            let ack = match outcome {
                Ok(()) => msg.ack().await,
                Err(e) => {
                    saga.metrics.saga_failed_step();
                    let tries = msg.info().map_or(1, |i| i.delivered);
                    tracing::warn!(order = %id, error = %e, tries, "checkout step failed; it will run again");
                    msg.ack_with(AckKind::Nak(Some(retry_after(tries)))).await
                }
            };
            if let Err(e) = ack {
                tracing::warn!(order = %id, error = %e, "could not acknowledge a checkout step");
            }
            saga.metrics.saga_stopped();
            drop(permit);
        });
    }
}

/// How long a failed step waits before it runs again: from a second, doubling with each try
/// up to about a minute, so a provider that stays down is not hammered.
fn retry_after(tries: i64) -> Duration {
    Duration::from_secs(1 << tries.saturating_sub(1).clamp(0, 6))
}

/// A payment call's answer, yes or no, which is final; a provider that failed or did not answer
/// is a step to run again.
fn answered<T>(outcome: Result<T, PaymentError>) -> Result<Result<T, PaymentError>, StepError> {
    match outcome {
        Err(PaymentError::Unavailable(e)) => Err(StepError::Payment(PaymentError::Unavailable(e))),
        answer => Ok(answer),
    }
}

/// How a checkout ended, for metrics: `confirmed`, or `cancelled_<reason>`.
fn outcome(order: &OrderView) -> &'static str {
    match (order.status, order.cancel_reason) {
        (OrderStatus::Cancelled, Some(CancelReason::OutOfStock)) => "cancelled_out_of_stock",
        (OrderStatus::Cancelled, Some(CancelReason::PaymentDeclined)) => "cancelled_payment_declined",
        (OrderStatus::Cancelled, Some(CancelReason::InsufficientFunds)) => "cancelled_insufficient_funds",
        (OrderStatus::Cancelled, Some(CancelReason::PaymentFailed)) => "cancelled_payment_failed",
        (OrderStatus::Cancelled, Some(CancelReason::ReservationLapsed)) => "cancelled_reservation_lapsed",
        (OrderStatus::Cancelled, _) => "cancelled_other",
        _ => "confirmed",
    }
}

impl Saga {
    async fn order(&self, id: &OrderId, command: OrderCommand) -> Result<OrderView, BusError> {
        self.bus.request(&OrderRequest::new(id.clone(), command).correlated(id.as_str())).await
    }

    /// Runs the order's steps one after the other until it is at rest (a step changes
    /// nothing): the checkout from placement to confirmation, or a cancellation or refund.
    async fn step(&self, id: &OrderId, called_at: OffsetDateTime) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        let mut first = None;
        let mut last = None;
        let mut next = None;
        for _ in 0..MAX_STEPS {
            // A step that recorded something answers the order as it left it; one that did
            // not is followed by a fresh read, which tells whether the order is at rest.
            let order = match next.take() {
                Some(o) => o,
                None => match self.order(id, OrderCommand::Get).await {
                    Ok(o) => o,
                    Err(BusError::Rejected(e)) if e.code == ErrorCode::UnknownOrder => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
            };
            let checking_out =
                matches!(order.status, OrderStatus::Pending | OrderStatus::Reserved | OrderStatus::Paid);
            first.get_or_insert(checking_out);
            // At rest: the last step changed nothing, or there is nothing to do. A later
            // change that calls for work comes as an event of its own, so reading the order
            // again would tell nothing.
            let at_rest = last == Some(order.version) || {
                last = Some(order.version);
                next = self.step_on(&order, called_at).await?;
                next.is_none()
            };
            if at_rest {
                // A checkout this run drove to its end.
                if first == Some(true) && !checking_out {
                    self.metrics.saga_ended(outcome(&order), started.elapsed());
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs the step the order's current status calls for.
    async fn step_on(&self, order: &OrderView, called_at: OffsetDateTime) -> Result<Next, StepError> {
        match order.status {
            OrderStatus::Pending => self.reserve(order).await,
            OrderStatus::Reserved if !order.payment_authorized => self.authorize(order).await,
            OrderStatus::Reserved => self.capture(order).await,
            OrderStatus::Paid => self.commit(order).await,
            OrderStatus::Confirmed if order.cancel_requested.is_some() => self.undo_sale(order).await,
            OrderStatus::Cancelled if order.payment_unsettled => self.void_unanswered(order, called_at).await,
            OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
                if order.refund_pending.is_some() =>
            {
                self.refund(order).await
            }
            OrderStatus::Confirmed
            | OrderStatus::Shipped
            | OrderStatus::Delivered
            | OrderStatus::Cancelled
            | OrderStatus::Refunded => Ok(None),
        }
    }

    fn reservation(id: &OrderId) -> ReservationId {
        // An order id is a valid reservation id (`ord-` and 32 hex digits).
        ReservationId::parse(id.as_str()).unwrap_or_else(|_| unreachable!("order ids are tokens"))
    }

    /// Puts a sold line back on hand. The quantity lets the stock item return it even after it
    /// has forgotten the sale (a day after it settled).
    fn return_of(reservation: &ReservationId, line: &OrderLine) -> Result<StockCommand, ReplyError> {
        let quantity = Quantity::try_from(i64::from(line.quantity))?;
        Ok(StockCommand::Return { reservation: reservation.clone(), quantity: Some(quantity) })
    }

    fn total(order: &OrderView) -> Money {
        Money { amount: order.total, currency: order.currency }
    }

    /// Sends one stock command per line, all at once; answers each line's outcome.
    async fn each_line(
        &self,
        order: &OrderView,
        command: impl Fn(&OrderLine) -> Result<StockCommand, ReplyError>,
    ) -> Vec<(Sku, Result<(), BusError>)> {
        let calls = order.lines.iter().map(|line| {
            let command = command(line);
            async move {
                let outcome = match command {
                    Ok(c) => self
                        .bus
                        .request(&StockRequest::new(line.sku.clone(), c).correlated(order.id.as_str()))
                        .await
                        .map(drop),
                    Err(e) => Err(BusError::Rejected(e)),
                };
                (line.sku.clone(), outcome)
            }
        });
        futures::future::join_all(calls).await
    }

    /// The first rejection among `outcomes`; a bus failure (worth retrying) comes first.
    fn rejection(outcomes: Vec<(Sku, Result<(), BusError>)>) -> Result<Option<(Sku, ReplyError)>, StepError> {
        let mut rejected = None;
        for (sku, outcome) in outcomes {
            match outcome {
                Ok(()) => {}
                Err(BusError::Rejected(e)) => rejected = rejected.or(Some((sku, e))),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rejected)
    }

    /// Holds every line's stock, all or nothing.
    async fn reserve(&self, order: &OrderView) -> Result<Next, StepError> {
        let reservation = Self::reservation(&order.id);
        let expires_at = Some(OffsetDateTime::now_utc() + self.settings.reservation_ttl);
        let outcomes = self
            .each_line(order, |line| {
                let quantity = Quantity::try_from(i64::from(line.quantity))?;
                Ok(StockCommand::Reserve { reservation: reservation.clone(), quantity, expires_at })
            })
            .await;
        if let Some((sku, e)) = Self::rejection(outcomes)? {
            tracing::info!(order = %order.id, %sku, reason = %e, "a line could not be reserved");
            return self.cancel(order, CancelReason::OutOfStock, 0).await;
        }
        Ok(Some(self.order(&order.id, OrderCommand::RecordReserved).await?))
    }

    /// Retries a payment call on provider failures until the payment deadline.
    async fn with_deadline<T, F>(&self, mut call: impl FnMut() -> F) -> Result<T, PaymentError>
    where
        F: std::future::Future<Output = Result<T, PaymentError>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.payment_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = tokio::time::timeout(remaining, call()).await;
            match result {
                Ok(Err(PaymentError::Unavailable(e))) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "payment provider failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Ok(r) => return r,
                Err(_) => {
                    return Err(PaymentError::Unavailable("no answer before the payment deadline".into()));
                }
            }
        }
    }

    /// Authorises and, in the same step, captures; a capture that cannot be done now is left
    /// to the capture step, with the authorisation recorded.
    async fn authorize(&self, order: &OrderView) -> Result<Next, StepError> {
        let Some(method) = order.payment_method.as_deref() else { return Ok(None) };
        let payment = match self.authorization(order, method).await {
            Ok(payment) => payment,
            // No answer: the authorisation may have happened and hold the amount on the card.
            // The order ends now; the next step asks again and voids what it finds.
            Err(PaymentError::Unavailable(_)) => {
                let cancel = OrderCommand::Cancel {
                    reason: CancelReason::PaymentFailed,
                    refunded: 0,
                    payment_unsettled: true,
                };
                return self.release_then(order, cancel).await;
            }
            Err(e) => return self.cancel(order, Self::declined(&e), 0).await,
        };
        let key = format!("{}-capture", order.id);
        match self.with_deadline(|| self.gateway.capture(&payment, Self::total(order), &key)).await {
            Ok(()) => self.sell(order, payment).await,
            Err(PaymentError::Unavailable(_)) => {
                Ok(Some(self.order(&order.id, OrderCommand::RecordAuthorized { payment }).await?))
            }
            Err(e) => {
                self.void(order, &payment).await?;
                self.cancel(order, Self::declined(&e), 0).await
            }
        }
    }

    /// Commits every line's held stock; a repeated commit answers Ok.
    async fn commit_lines(&self, order: &OrderView) -> Vec<(Sku, Result<(), BusError>)> {
        let reservation = Self::reservation(&order.id);
        self.each_line(order, |_| Ok(StockCommand::Commit { reservation: reservation.clone() })).await
    }

    /// Sells the held stock of an order just paid and records payment and sale in one commit.
    /// A line whose hold lapsed meanwhile leaves the order paid: the commit step then finds
    /// the lapse again and gives the money back.
    async fn sell(&self, order: &OrderView, payment: String) -> Result<Next, StepError> {
        let record = match Self::rejection(self.commit_lines(order).await)? {
            None => OrderCommand::RecordSold { payment },
            Some(_) => OrderCommand::RecordPaid { payment },
        };
        Ok(Some(self.order(&order.id, record).await?))
    }

    /// Authorises the order's total under its one authorisation key, so asking again answers
    /// the first authorisation rather than making a second.
    async fn authorization(&self, order: &OrderView, method: &str) -> Result<String, PaymentError> {
        let key = format!("{}-authorize", order.id);
        self.with_deadline(|| self.gateway.authorize(order.id.as_str(), method, Self::total(order), &key))
            .await
    }

    fn declined(e: &PaymentError) -> CancelReason {
        if *e == PaymentError::InsufficientFunds {
            CancelReason::InsufficientFunds
        } else {
            CancelReason::PaymentDeclined
        }
    }

    async fn capture(&self, order: &OrderView) -> Result<Next, StepError> {
        let Some(payment) = order.payment.clone() else { return Ok(None) };
        let key = format!("{}-capture", order.id);
        match answered(self.with_deadline(|| self.gateway.capture(&payment, Self::total(order), &key)).await)?
        {
            Ok(()) => Ok(Some(self.order(&order.id, OrderCommand::RecordCaptured).await?)),
            Err(e) => {
                self.void(order, &payment).await?;
                self.cancel(order, Self::declined(&e), 0).await
            }
        }
    }

    /// Sells the held stock; if it lapsed meanwhile, the money goes back.
    async fn commit(&self, order: &OrderView) -> Result<Next, StepError> {
        let reservation = Self::reservation(&order.id);
        let outcomes = self.commit_lines(order).await;
        // The lines sold (now, or by an earlier run of this step): a repeated commit answers Ok.
        let mut sold = order.clone();
        sold.lines.retain(|line| outcomes.iter().any(|(sku, r)| *sku == line.sku && r.is_ok()));
        if let Some((sku, e)) = Self::rejection(outcomes)? {
            tracing::warn!(order = %order.id, %sku, reason = %e, "held stock lapsed before the sale");
            let payment = order.payment.clone().unwrap_or_default();
            let key = format!("{}-refund", order.id);
            // The order cannot be filled either way; a refund refused is cancelled without it
            // (`refunded` 0), for staff to settle with the provider.
            let given = self.give_back(&payment, Self::total(order), &key).await?;
            if let Err(e) = &given {
                tracing::error!(
                    order = %order.id,
                    reason = %e,
                    "the provider refused the refund of an order whose held stock lapsed; cancelled without it"
                );
            }
            let refunded = if given.is_ok() { order.total } else { 0 };
            // Only the lines sold go back on hand, as after a cancellation: a lapsed line was
            // never sold, and returning it with its quantity would add units never taken out.
            let back = self.each_line(&sold, |line| Self::return_of(&reservation, line)).await;
            Self::rejection(back)?;
            let cancelled = self.cancel(order, CancelReason::ReservationLapsed, refunded).await?;
            self.count_refusal(&given);
            return Ok(cancelled);
        }
        Ok(Some(self.order(&order.id, OrderCommand::Confirm).await?))
    }

    /// Cancels a confirmed order: the money back (unless staff settle it outside Souk), the
    /// sold units back on hand.
    async fn undo_sale(&self, order: &OrderView) -> Result<Next, StepError> {
        let Some(reason) = order.cancel_requested else { return Ok(None) };
        let left = if order.cancel_without_refund { 0 } else { order.total - order.refunded };
        if left > 0 {
            let payment = order.payment.clone().unwrap_or_default();
            // A cancellation asked for again after a refusal is a new refund: a provider answers
            // a key it has seen with its first answer (Stripe, for a day), the refusal too.
            let key = match order.cancels_refused {
                0 => format!("{}-cancel-refund", order.id),
                n => format!("{}-cancel-refund-{}", order.id, n + 1),
            };
            let amount = Money { amount: left, currency: order.currency };
            if let Err(e) = self.give_back(&payment, amount, &key).await? {
                // Refunding comes first, so a refusal leaves the sale and its stock as they were.
                tracing::error!(
                    order = %order.id,
                    reason = %e,
                    "the provider refused the refund a cancellation needs; the order stays confirmed"
                );
                let recorded = self.order(&order.id, OrderCommand::RecordCancelRefused).await?;
                self.metrics.refund_refused();
                return Ok(Some(recorded));
            }
        }
        let reservation = Self::reservation(&order.id);
        let back = self.each_line(order, |line| Self::return_of(&reservation, line)).await;
        if let Some((sku, e)) = Self::rejection(back)? {
            tracing::warn!(order = %order.id, %sku, reason = %e, "sold units could not be put back");
        }
        Ok(Some(
            self.order(
                &order.id,
                OrderCommand::Cancel { reason, refunded: left.max(0), payment_unsettled: false },
            )
            .await?,
        ))
    }

    /// Gives back the refund under way.
    async fn refund(&self, order: &OrderView) -> Result<Next, StepError> {
        let Some(amount) = order.refund_pending else { return Ok(None) };
        let payment = order.payment.clone().unwrap_or_default();
        let key = format!("{}-refund-{}", order.id, order.refunds);
        let amount = Money { amount, currency: order.currency };
        let given = self.give_back(&payment, amount, &key).await?;
        let record = match &given {
            Ok(()) => OrderCommand::RecordRefunded { refund: order.refunds },
            Err(e) => {
                tracing::error!(
                    order = %order.id,
                    reason = %e,
                    "the provider refused a refund; nothing was given back"
                );
                OrderCommand::RecordRefundRefused { refund: order.refunds }
            }
        };
        let recorded = self.order(&order.id, record).await?;
        self.count_refusal(&given);
        Ok(Some(recorded))
    }

    /// Refunds `amount` under `key`: `Ok(Err(_))` when the provider refuses it for good (a
    /// refund it will never make, such as one of a disputed payment), so the order records the
    /// refusal instead of asking again forever.
    async fn give_back(
        &self,
        payment: &str,
        amount: Money,
        key: &str,
    ) -> Result<Result<(), PaymentError>, StepError> {
        answered(self.with_deadline(|| self.gateway.refund(payment, amount, key)).await)
    }

    /// Counts a refusal `give_back` answered, once its record is made: a step that fails to
    /// record it runs again, and the provider (asked under the same key) refuses again.
    fn count_refusal(&self, given: &Result<(), PaymentError>) {
        if given.is_err() {
            self.metrics.refund_refused();
        }
    }

    /// Releases an authorisation. A provider that refuses for good holds nothing it can release
    /// (the authorisation expired or was cancelled already), so that ends the void too; only a
    /// provider that fails or does not answer makes the step run again.
    async fn void(&self, order: &OrderView, payment: &str) -> Result<(), StepError> {
        let key = format!("{}-void", order.id);
        if let Err(e) = answered(self.with_deadline(|| self.gateway.void(payment, &key)).await)? {
            tracing::warn!(order = %order.id, reason = %e, "the provider refused a void: nothing left to release");
        }
        Ok(())
    }

    /// Voids the hold an unanswered authorisation may have left. Asking again under the same
    /// key answers the first authorisation's reference if it happened (a provider never
    /// authorises one key twice), or makes one now that is voided at once. Gives up (the
    /// order stays `payment_unsettled`, for staff to settle with the provider) once the key may
    /// be forgotten.
    async fn void_unanswered(&self, order: &OrderView, placed_at: OffsetDateTime) -> Result<Next, StepError> {
        if OffsetDateTime::now_utc() - placed_at > VOID_FOR {
            self.metrics.void_abandoned();
            tracing::error!(
                order = %order.id,
                "gave up voiding an authorisation the provider never answered; settle it with the provider"
            );
            return Ok(None);
        }
        let payment = match order.payment_method.as_deref() {
            None => None,
            Some(method) => {
                match answered(self.authorization(order, method).await)? {
                    Ok(payment) => {
                        self.void(order, &payment).await?;
                        Some(payment)
                    }
                    // Declined: nothing is held.
                    Err(_) => None,
                }
            }
        };
        Ok(Some(self.order(&order.id, OrderCommand::RecordVoided { payment }).await?))
    }

    /// Gives back every line's held stock, then records the cancellation.
    async fn cancel(
        &self,
        order: &OrderView,
        reason: CancelReason,
        refunded: i64,
    ) -> Result<Next, StepError> {
        self.release_then(order, OrderCommand::Cancel { reason, refunded, payment_unsettled: false }).await
    }

    /// Gives back every line's held stock, then records `cancel`.
    async fn release_then(&self, order: &OrderView, cancel: OrderCommand) -> Result<Next, StepError> {
        let reservation = Self::reservation(&order.id);
        let released =
            self.each_line(order, |_| Ok(StockCommand::Release { reservation: reservation.clone() })).await;
        // A rejection means never reserved, or released already: nothing to give back.
        Self::rejection(released)?;
        Ok(Some(self.order(&order.id, cancel).await?))
    }
}
