//! The pipeline step every source shares: Event → rules → log.
//!
//! A source calls [`Pipeline::submit`] for each event in its order and
//! acknowledges the event at its broker only after the returned future
//! resolves (the notifications are then durable in the log and published).
//! `submit` evaluates the rules and starts the append synchronously, so
//! calls made one after another keep their order in the log even when the
//! source keeps several futures in flight.
//!
//! Rules are swapped atomically: an event is evaluated entirely by one rules
//! version.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::FutureExt;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::rules::{Evaluation, RuleFailure, Rules};
use crate::store::{NewNotification, Store, StoreError};

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

/// See the module docs.
#[derive(Debug)]
pub struct Pipeline {
    rules: ArcSwap<Rules>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    pub fn new(rules: Rules, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            rules: ArcSwap::from_pointee(rules),
            store,
            metrics,
        }
    }

    /// The live rules version.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Make `rules` the live version; events submitted from now on use it.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Count an event that never reached the rules (not JSON, too large).
    pub fn reject(&self, event_source: &str, position: &str, rejection: Rejection, detail: &str) {
        self.metrics.event(event_source);
        self.metrics.rejected(event_source, rejection.as_str());
        tracing::warn!(
            source = event_source,
            position,
            reason = rejection.as_str(),
            detail,
            "event rejected"
        );
    }

    /// Evaluate `event` and start appending its notifications. The returned
    /// future resolves when they are durable. See the module docs on order.
    pub fn submit(
        &self,
        event: &Event,
    ) -> impl Future<Output = Result<Processed, StoreError>> + Send + use<> {
        let source = event.meta.source.as_str();
        self.metrics.event(source);
        let evaluation = self.rules.load().evaluate(event);
        self.report_failures(event, &evaluation);
        let rejection = evaluation.all_failed().then_some(Rejection::AllRulesFailed);
        if let Some(r) = rejection {
            self.metrics.rejected(source, r.as_str());
        }
        let Evaluation {
            notifications,
            failures,
            ..
        } = evaluation;
        let batch: Vec<NewNotification> = notifications
            .iter()
            .map(NewNotification::from_rendered)
            .collect();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let append = (!batch.is_empty()).then(|| self.store.append(batch));
        async move {
            let mut processed = Processed {
                failures,
                rejection,
                ..Processed::default()
            };
            if let Some(append) = append {
                let appended = append.await?;
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

    /// Evaluate and append `event`, waiting until it is durable.
    pub async fn process(&self, event: &Event) -> Result<Processed, StoreError> {
        self.submit(event).await
    }

    fn report_failures(&self, event: &Event, evaluation: &Evaluation) {
        for f in &evaluation.failures {
            self.metrics.rule_failed(&f.rule);
            tracing::warn!(
                rule = %f.rule,
                field = %f.field,
                item = ?f.index,
                source = event.meta.source.as_str(),
                topic = %event.meta.topic,
                position = %event.meta.position,
                error = %f.message,
                "rule failed; notification dropped"
            );
        }
    }
}
