//! The pipeline step every source shares: Event → rules → log.
//!
//! A source calls [`Pipeline::submit`] for each event in its order and
//! acknowledges the event at its broker only after the returned future
//! resolves (the notifications are then durable in the log and published).
//! `submit` evaluates the rules and starts the append synchronously, so
//! calls made one after another keep their order in the log even when the
//! source keeps several futures in flight. When one of those appends fails,
//! the ones after it must not commit before its retry: a source that keeps
//! an order across events (a Kafka partition) passes its stream's
//! [`Fence`](crate::store::Fence), and the store fails the stream's later
//! appends until the source resumes it.
//!
//! Rules are swapped atomically: an event is evaluated entirely by one rules
//! version.
//!
//! Rule failures and rejections are counted exactly; their log lines are
//! sampled per rule and per reason ([`crate::throttle`]), so one flood of
//! bad events cannot flood the log.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use serde::Serialize;

use crate::event::{Event, Provenance};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::rules::{Priority, Rendered, RuleFailure, Rules};
use crate::store::{Fence, NewNotification, Store, StoreError};
use crate::throttle::Throttle;

/// Why an event produced nothing; a source dead-letters these where it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The payload is not JSON.
    InvalidJson,
    /// The payload is larger than the source's limit.
    TooLarge,
    /// Rules matched, and every one of them failed at run time.
    AllRulesFailed,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidJson => "invalid_json",
            Rejection::TooLarge => "too_large",
            Rejection::AllRulesFailed => "all_rules_failed",
        }
    }
}

/// A broker message's payload as an event payload: one JSON object of at
/// most `max` bytes (the source's `max_message_bytes`); else why it is
/// poison, and a detail for logs and dead-letter headers.
pub fn decode_object(data: &[u8], max: usize) -> Result<serde_json::Value, (Rejection, String)> {
    if data.len() > max {
        return Err((
            Rejection::TooLarge,
            format!("{} bytes, above max_message_bytes {max}", data.len()),
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err((Rejection::InvalidJson, "expected a JSON object".to_string())),
        Err(e) => Err((Rejection::InvalidJson, format!("invalid JSON: {e}"))),
    }
}

/// What one event became.
#[derive(Debug, Default)]
pub struct Processed {
    /// Notifications newly appended.
    pub appended: usize,
    /// Notifications already in the log (a redelivered event).
    pub duplicates: usize,
    /// Rules that failed for this event (each already logged and counted).
    pub failures: Vec<RuleFailure>,
    /// Set when the event produced nothing because every rule failed.
    pub rejection: Option<Rejection>,
}

impl Processed {
    /// Why the event is poison (every matching rule failed) with its rule
    /// failures summed up for a dead-letter header; `None` when it is not.
    pub fn poison(&self) -> Option<(Rejection, String)> {
        let detail = self
            .failures
            .iter()
            .map(|f| format!("rule {}: {}: {}", f.rule, f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        self.rejection.map(|rejection| (rejection, detail))
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Pipeline {
    rules: ArcSwap<Rules>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Largest serialized notification; larger ones fail their rule. Every
    /// session must be able to write one, and every client to receive it.
    max_notification_bytes: usize,
    /// Detail lines of rule failures and rejections, per rule / reason.
    throttle: Throttle,
    /// The traffic recorder, when on.
    recorder: Option<Arc<Recorder>>,
}

impl Pipeline {
    pub fn new(
        rules: Rules,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_notification_bytes: usize,
    ) -> Self {
        Self {
            rules: ArcSwap::from_pointee(rules),
            store,
            metrics,
            max_notification_bytes,
            throttle: Throttle::default(),
            recorder: None,
        }
    }

    /// Record every submitted event and its outcome in `recorder`.
    pub fn with_recorder(mut self, recorder: Option<Arc<Recorder>>) -> Self {
        self.recorder = recorder;
        self
    }

    /// The traffic recorder, when on.
    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    /// The live rules version.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Make `rules` the live version; events submitted from now on use it.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Count an event that never reached the rules (not JSON, too large).
    pub fn reject(&self, event_source: &str, position: &str, rejection: Rejection, detail: &str) {
        self.metrics.event(event_source);
        self.metrics.rejected(event_source, rejection.as_str());
        let key = format!("reject:{event_source}:{}", rejection.as_str());
        if let Some(suppressed) = self.throttle.allow(&key) {
            tracing::warn!(
                source = event_source,
                position,
                reason = rejection.as_str(),
                detail,
                suppressed,
                "event rejected"
            );
        }
    }

    /// Evaluate `event` and start appending its notifications. The returned
    /// future resolves when they are durable. See the module docs on order;
    /// a source that keeps several events of one ordered stream in flight
    /// passes the stream's `fence` ([`Store::append_fenced`]).
    pub fn submit(
        &self,
        event: &Event,
        fence: Option<&Arc<Fence>>,
    ) -> impl Future<Output = Result<Processed, StoreError>> + Send + use<> {
        let source = event.meta.source.as_str();
        self.metrics.event(source);
        let rules = self.rules.load();
        let evaluation = rules.evaluate(event);
        let mut failures = evaluation.failures;
        let mut batch = Vec::with_capacity(evaluation.notifications.len());
        let mut kept = Vec::new();
        let version = rules.version();
        for rendered in &evaluation.notifications {
            let provenance = Provenance {
                rule: &rendered.rule,
                rules_version: version,
                source: event.meta.locator(),
            };
            let n = new_notification(rendered, &provenance);
            if n.fields.len() > self.max_notification_bytes {
                failures.push(RuleFailure {
                    rule: rendered.rule.clone(),
                    field: "emit".into(),
                    index: None,
                    message: format!(
                        "the notification is {} bytes, over rules.max_notification_bytes ({})",
                        n.fields.len(),
                        self.max_notification_bytes
                    ),
                });
            } else {
                batch.push(n);
                if self.recorder.is_some() {
                    kept.push(rendered);
                }
            }
        }
        self.report_failures(event, &failures);
        let rejection =
            (!failures.is_empty() && batch.is_empty()).then_some(Rejection::AllRulesFailed);
        if let Some(r) = rejection {
            self.metrics.rejected(source, r.as_str());
        } else if evaluation.matched == 0 {
            // Not an error (a topic carries types nobody notifies about),
            // but counted, so a rule that never matches shows up.
            self.metrics.rejected(source, "no_rule_matched");
            tracing::debug!(source, topic = %event.meta.topic, position = %event.meta.position, "no rule matched");
        }
        let recorded = self.recorder.as_ref().map(|r| {
            r.record(
                event,
                rules.version(),
                evaluation.matched,
                &kept,
                &failures,
                rejection.is_some(),
            )
        });
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let append = (!batch.is_empty()).then(|| match fence {
            Some(fence) => self.store.append_fenced(batch, fence),
            None => self.store.append(batch),
        });
        async move {
            let mut processed = Processed {
                failures,
                rejection,
                ..Processed::default()
            };
            if let Some(append) = append {
                let appended = match append.await {
                    Ok(a) => a,
                    Err(e) => {
                        if let Some(r) = &recorded {
                            r.failed(e.to_string());
                        }
                        return Err(e);
                    }
                };
                if let Some(r) = &recorded {
                    r.appended(&appended);
                }
                metrics
                    .append_seconds
                    .observe(started.elapsed().as_secs_f64());
                for a in appended {
                    if a.duplicate {
                        processed.duplicates += 1;
                    } else {
                        processed.appended += 1;
                    }
                }
                metrics
                    .notifications_appended
                    .inc_by(processed.appended as u64);
                metrics
                    .notifications_duplicate
                    .inc_by(processed.duplicates as u64);
            }
            Ok(processed)
        }
        .boxed()
    }

    fn report_failures(&self, event: &Event, failures: &[RuleFailure]) {
        for f in failures {
            self.metrics.rule_failed(&f.rule);
            // Sampled per rule (the counter above is exact); `suppressed`
            // says how many lines of this rule were held back before it.
            let Some(suppressed) = self.throttle.allow(&format!("rule:{}", f.rule)) else {
                continue;
            };
            tracing::warn!(
                rule = %f.rule,
                suppressed,
                field = %f.field,
                item = f.index,
                source = event.meta.source.as_str(),
                topic = %event.meta.topic,
                position = %event.meta.position,
                error = %f.message,
                "rule failed; notification dropped"
            );
        }
    }
}

impl crate::rules::versions::Live for Pipeline {
    fn rules(&self) -> Arc<Rules> {
        Pipeline::rules(self)
    }

    fn set_rules(&self, rules: Rules) {
        Pipeline::set_rules(self, rules);
    }

    fn metrics(&self) -> &Arc<Metrics> {
        Pipeline::metrics(self)
    }
}

/// A rule's rendered output as an entry for the log: its notification
/// members serialized once, to be spliced into every frame, and where it
/// came from.
fn new_notification(r: &Rendered, provenance: &Provenance<'_>) -> NewNotification {
    #[derive(Serialize)]
    struct Fields<'a> {
        event: &'a str,
        title: &'a str,
        body: &'a str,
        data: &'a serde_json::Value,
        priority: Priority,
    }
    let object = serde_json::to_string(&Fields {
        event: &r.event,
        title: &r.title,
        body: &r.body,
        data: &r.data,
        priority: r.priority,
    })
    .unwrap_or_else(|_| "{}".into());
    // `{...}` without its braces.
    let fields = object[1..object.len() - 1].to_string();
    NewNotification {
        channel: r.channel.clone(),
        dedupe_key: r.dedupe_key.clone(),
        fields,
        provenance: Some(provenance.to_json()),
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn payloads_must_be_json_objects_within_the_limit() {
        assert!(decode_object(br#"{"a":1}"#, 100).is_ok());
        assert_eq!(
            decode_object(b"[1]", 100).unwrap_err().0,
            Rejection::InvalidJson
        );
        assert_eq!(
            decode_object(b"nope", 100).unwrap_err().0,
            Rejection::InvalidJson
        );
        assert_eq!(
            decode_object(br#"{"a":1}"#, 3).unwrap_err().0,
            Rejection::TooLarge
        );
    }
}
