//! The AsyncAPI 3 description of every subject Souk publishes or serves, with each payload's
//! JSON Schema generated from the types in this crate. `souk asyncapi` prints it; the committed
//! `docs/asyncapi.yaml` must equal what it prints (a test checks).

use crate::subject::EntityKind;
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// One entity kind's events: its channel and the Rust type of its event bodies.
struct EventKind {
    kind: EntityKind,
    /// The channel parameter naming the entity.
    param: &'static str,
    about: &'static str,
    schema: fn(&mut SchemaGenerator) -> Value,
}

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

const EVENT_KINDS: [EventKind; 6] = [
    EventKind {
        kind: EntityKind::Stock,
        param: "sku",
        about: "A stock item's history: restocks, reservations, sales, adjustments, low stock.",
        schema: schema_of::<crate::stock::StockEvent>,
    },
    EventKind {
        kind: EntityKind::Product,
        param: "productId",
        about: "A catalog product's history.",
        schema: schema_of::<crate::product::ProductEvent>,
    },
    EventKind {
        kind: EntityKind::User,
        param: "userId",
        about: "A user account's history. Never carries passwords, hashes or session tokens; `user.password_reset_requested` carries the single-use reset token, so restrict who may subscribe.",
        schema: schema_of::<crate::user::UserEvent>,
    },
    EventKind {
        kind: EntityKind::Cart,
        param: "cartId",
        about: "A shopping cart's history.",
        schema: schema_of::<crate::cart::CartEvent>,
    },
    EventKind {
        kind: EntityKind::Order,
        param: "orderId",
        about: "An order and its checkout saga: each step is an event.",
        schema: schema_of::<crate::order::OrderEvent>,
    },
    EventKind {
        kind: EntityKind::Notification,
        param: "notificationId",
        about: "A notification's delivery attempts (email, SMS, webhook).",
        schema: schema_of::<crate::notify::NotificationEvent>,
    },
];

fn generator() -> SchemaGenerator {
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    // The schemas describe what Souk publishes.
    settings.contract = Contract::Serialize;
    settings.into_generator()
}

/// Every event `type` the code can publish, by kind, read from the generated schemas.
pub fn event_types() -> Vec<String> {
    let doc = document();
    let mut out = Vec::new();
    for k in &EVENT_KINDS {
        let name = body_name(k.kind);
        collect_types(&doc["components"]["schemas"][&name], &doc["components"]["schemas"], &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// The `type` constants of an adjacently tagged enum's schema (`oneOf` of `{type, data}`).
pub fn collect_types(schema: &Value, schemas: &Value, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        return collect_types(&schemas[name], schemas, out);
    }
    for variant in schema.get("oneOf").and_then(Value::as_array).into_iter().flatten() {
        let t = &variant["properties"]["type"];
        if let Some(c) = t.get("const").and_then(Value::as_str) {
            out.push(c.to_owned());
        }
        for e in t.get("enum").and_then(Value::as_array).into_iter().flatten() {
            if let Some(c) = e.as_str() {
                out.push(c.to_owned());
            }
        }
    }
}

fn body_name(kind: EntityKind) -> String {
    let mut s = kind.as_str().to_owned();
    if let Some(f) = s.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    format!("{s}Event")
}

/// The envelope every event travels in; `type` and `data` come from the kind's body schema.
fn envelope(body_ref: &str) -> Value {
    json!({
        "allOf": [
            {
                "type": "object",
                "required": ["event_id", "id", "version", "time"],
                "properties": {
                    "event_id": { "type": "string", "format": "uuid", "description": "Unique id of this event (UUIDv7)." },
                    "id": { "type": "string", "description": "The entity the event belongs to." },
                    "version": { "type": "integer", "minimum": 1, "description": "The entity's version after this event." },
                    "time": { "type": "string", "format": "date-time", "description": "When the event was decided (UTC)." },
                    "correlation_id": { "type": "string", "description": "The request (or order) that caused it." },
                    "actor": { "type": "string", "description": "The signed-in user whose request caused it (absent for Souk's own steps and anonymous requests)." }
                }
            },
            { "$ref": body_ref }
        ]
    })
}

/// The AsyncAPI document.
pub fn document() -> Value {
    let mut g = generator();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for k in &EVENT_KINDS {
        let kind = k.kind.as_str();
        let body = (k.schema)(&mut g);
        let body_ref = body.get("$ref").and_then(Value::as_str).map(str::to_owned).unwrap_or_default();
        let body_name = body_name(k.kind);
        if body_ref.rsplit('/').next() != Some(body_name.as_str()) {
            schemas.insert(body_name.clone(), body);
        }
        let event_name = format!("{}Envelope", body_name);
        schemas.insert(event_name.clone(), envelope(&format!("#/components/schemas/{body_name}")));
        let message = format!("{kind}Commit");
        messages.insert(
            message.clone(),
            json!({
                "name": message,
                "title": format!("A commit of {kind} events"),
                "summary": "One JetStream message: the events of one append, in order (usually one).",
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": { "Nats-Msg-Id": { "type": "string", "description": "The first event's id (de-duplication)." } }
                },
                "payload": { "type": "array", "minItems": 1, "items": { "$ref": format!("#/components/schemas/{event_name}") } }
            }),
        );
        let channel = format!("{kind}Events");
        channels.insert(
            channel.clone(),
            json!({
                "address": format!("souk.evt.{kind}.{{{}}}", k.param),
                "description": format!("{} Stored in the stream `SOUK_EVENTS_{}` forever; subscribe to `souk.evt.{kind}.>` for every {kind}.", k.about, kind.to_uppercase()),
                "parameters": { k.param: { "description": format!("The {kind}'s id.") } },
                "messages": { message.clone(): { "$ref": format!("#/components/messages/{message}") } }
            }),
        );
        operations.insert(
            format!("publish{}Events", body_name.trim_end_matches("Event")),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "summary": format!("Souk publishes every {kind} change."),
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{message}") }]
            }),
        );
    }

    let notification = g.subschema_for::<crate::notify::Notification>().to_value();
    let dead_letter = g.subschema_for::<crate::notify::DeadLetter>().to_value();
    let log_record = g.subschema_for::<crate::log::LogRecord>().to_value();
    for (name, channel, address, description, param, payload, about) in [
        (
            "notification",
            "notificationQueue",
            "souk.notify.{channel}",
            "Rendered notifications waiting to be sent (stream `SOUK_NOTIFY`, a work queue): internal to Souk's nodes.",
            ("channel", "`email`, `sms` or `webhook`."),
            notification,
            "Souk queues a notification for delivery.",
        ),
        (
            "deadLetter",
            "deadLetters",
            "souk.dlq.{channel}",
            "Notifications that could not be delivered (stream `SOUK_DLQ`, 30 days); `souk notify dlq list|retry`.",
            ("channel", "`email`, `sms` or `webhook`."),
            dead_letter,
            "Souk gives up on a notification after its last attempt.",
        ),
        (
            "logRecord",
            "logs",
            "souk.log.{node}.{level}",
            "Every node's log records (stream `SOUK_LOGS`, size- and age-limited); `souk logs tail`.",
            ("node", "The node id."),
            log_record,
            "Each node forwards its log records.",
        ),
    ] {
        let mut params = Map::new();
        params.insert(param.0.to_owned(), json!({ "description": param.1 }));
        if name == "logRecord" {
            params.insert(
                "level".into(),
                json!({ "description": "`error`, `warn`, `info`, `debug` or `trace`." }),
            );
        }
        messages.insert(
            name.to_owned(),
            json!({ "name": name, "contentType": "application/json", "payload": payload }),
        );
        channels.insert(
            channel.to_owned(),
            json!({
                "address": address,
                "description": description,
                "parameters": params,
                "messages": { name: { "$ref": format!("#/components/messages/{name}") } }
            }),
        );
        operations.insert(
            format!("send_{channel}"),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "summary": about,
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{name}") }]
            }),
        );
    }

    // Commands: request/reply on each shard's subject, served by its owner.
    messages.insert(
        "command".into(),
        json!({
            "name": "command",
            "contentType": "application/json",
            "summary": "A command to one entity.",
            "payload": {
                "type": "object",
                "required": ["id", "command"],
                "properties": {
                    "id": { "type": "string", "description": "The entity id." },
                    "command": { "type": "object", "description": "`{\"op\": …}` and the operation's fields (see the kind's command type)." },
                    "correlation_id": { "type": "string" },
                    "actor": { "type": "string", "description": "The signed-in user who sent it." }
                }
            }
        }),
    );
    messages.insert(
        "reply".into(),
        json!({
            "name": "reply",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "description": "`{\"ok\": <the entity's view>}` or `{\"err\": {\"code\", \"detail\"}}`.",
                "properties": {
                    "ok": { "type": "object" },
                    "err": { "type": "object", "properties": { "code": { "type": "string" }, "detail": { "type": "string" } } }
                }
            }
        }),
    );
    channels.insert(
        "commands".into(),
        json!({
            "address": "souk.cmd.{kind}.{shard}",
            "description": "Commands to the entities of one shard, served by the node that holds the shard's lease (queue group `souk-owners`). Carries a W3C `traceparent` header when correlated.",
            "parameters": {
                "kind": { "enum": ["stock", "user", "product", "cart", "order"], "description": "The entity kind." },
                "shard": { "description": "`stable_hash(id) % shards_<kind>`." }
            },
            "messages": {
                "command": { "$ref": "#/components/messages/command" },
                "reply": { "$ref": "#/components/messages/reply" }
            }
        }),
    );
    operations.insert(
        "serveCommands".into(),
        json!({
            "action": "receive",
            "channel": { "$ref": "#/channels/commands" },
            "summary": "The shard's owner decides each command and replies.",
            "messages": [{ "$ref": "#/channels/commands/messages/command" }],
            "reply": { "messages": [{ "$ref": "#/channels/commands/messages/reply" }] },
            "bindings": { "nats": { "queue": "souk-owners", "bindingVersion": "0.1.0" } }
        }),
    );

    for (name, schema) in g.take_definitions(true) {
        schemas.insert(name, schema);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Souk events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every subject a Souk cluster publishes or serves on NATS. Events are JSON commits (arrays of events) on `souk.evt.<kind>.<id>`, stored in the JetStream stream of their kind, `SOUK_EVENTS_<KIND>`; fields are only ever added. Generated by `souk asyncapi` from the Rust types."
        },
        "servers": {
            "cluster": {
                "host": "nats:4222",
                "protocol": "nats",
                "description": "The shop's NATS cluster (JetStream enabled)."
            }
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages, "schemas": schemas }
    })
}
