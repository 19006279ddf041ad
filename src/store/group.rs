//! Group commit: the ordered queue between `append` and a store's writer.
//!
//! `append` pushes its batch onto an unbounded FIFO synchronously, so the
//! order of calls is the order in the log even when the returned futures are
//! awaited later (or never polled at all until an earlier one resolves). One
//! writer drains the queue: it takes every request waiting (up to a bound),
//! commits them together — one fsync or one Redis round trip for many
//! appends — and only then resolves their futures, in order.
//!
//! The queue is unbounded on purpose: pushing must never block the caller
//! (an async task), and the callers bound it themselves — a source keeps a
//! bounded window of appends in flight, an HTTP request waits for its own.
//!
//! Cancel-safety: dropping an append future does not withdraw the append;
//! it is committed anyway and only its result is lost, exactly as if the
//! process had died after the commit (the dedupe key absorbs the retry).

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewNotification, StoreError};

/// The answer to one append.
pub(crate) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// One call to `append`.
#[derive(Debug)]
pub(crate) struct Request {
    pub batch: Vec<NewNotification>,
    /// Milliseconds since the Unix epoch at the call: the notification time.
    pub at_ms: u64,
    pub reply: Reply,
}

/// What travels through the queue.
#[derive(Debug)]
pub(crate) enum Item {
    Append(Request),
    /// Retention by age: trim notifications older than `cutoff_ms`.
    Trim {
        cutoff_ms: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Everything queued before it is committed; then the writer stops.
    Close(oneshot::Sender<()>),
}

/// The sending side, owned by the store.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<Item>,
    closed: AtomicBool,
}

/// The receiving side, owned by the writer.
#[derive(Debug)]
pub(crate) struct Receiver {
    rx: mpsc::UnboundedReceiver<Item>,
}

pub(crate) fn queue() -> (Queue, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Queue {
            tx,
            closed: AtomicBool::new(false),
        },
        Receiver { rx },
    )
}

impl Queue {
    /// Queue `batch`; the order of calls is the commit order.
    pub(crate) fn append(
        &self,
        batch: Vec<NewNotification>,
    ) -> BoxFuture<'static, Result<Vec<Appended>, StoreError>> {
        if batch.is_empty() {
            return ready(Ok(Vec::new())).boxed();
        }
        if self.closed.load(Ordering::Acquire) {
            return ready(Err(StoreError::Closed)).boxed();
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            batch,
            at_ms: crate::clock::now_ms(),
            reply,
        };
        if self.tx.send(Item::Append(request)).is_err() {
            return ready(Err(StoreError::Closed)).boxed();
        }
        async move { answer.await.unwrap_or(Err(StoreError::Closed)) }.boxed()
    }

    /// Ask the writer to trim by age; resolves with the number trimmed.
    pub(crate) fn trim(&self, cutoff_ms: u64) -> BoxFuture<'static, Result<usize, StoreError>> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Item::Trim { cutoff_ms, reply }).is_err() {
            return ready(Err(StoreError::Closed)).boxed();
        }
        async move { answer.await.unwrap_or(Err(StoreError::Closed)) }.boxed()
    }

    /// Refuse new appends, let the writer commit what is queued, and wait.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let (done, finished) = oneshot::channel();
        if self.tx.send(Item::Close(done)).is_ok() {
            let _ = finished.await;
        }
    }
}

impl Receiver {
    /// Wait for the next item, then take whatever else is already queued,
    /// up to `max` notifications. `None` once every sender is gone.
    pub(crate) async fn next_group(&mut self, max: usize) -> Option<Vec<Item>> {
        let first = self.rx.recv().await?;
        Some(self.fill(first, max))
    }

    /// [`Self::next_group`] for a writer on its own thread.
    pub(crate) fn blocking_next_group(&mut self, max: usize) -> Option<Vec<Item>> {
        let first = self.rx.blocking_recv()?;
        Some(self.fill(first, max))
    }

    /// What is queued now, without waiting (empty when nothing is).
    pub(crate) fn try_group(&mut self, max: usize) -> Vec<Item> {
        match self.rx.try_recv() {
            Ok(first) => self.fill(first, max),
            Err(_) => Vec::new(),
        }
    }

    /// After a failed commit: fail every append queued now with `error`,
    /// and return the other items (retention, a close) for the writer to
    /// handle. Those appends were submitted before their sources learned of
    /// the failure; committed, they would enter the log ahead of the failed
    /// appends the sources retry, out of the sources' order.
    pub(crate) fn fail_queued_appends(&mut self, error: &StoreError) -> Vec<Item> {
        let mut rest = Vec::new();
        for item in self.try_group(usize::MAX) {
            match item {
                Item::Append(r) => {
                    let _ = r.reply.send(Err(error.clone()));
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn fill(&mut self, first: Item, max: usize) -> Vec<Item> {
        let mut size = weight(&first);
        let mut group = vec![first];
        // A close ends the group: nothing after it is taken.
        while size < max && !matches!(group.last(), Some(Item::Close(_))) {
            match self.rx.try_recv() {
                Ok(item) => {
                    size += weight(&item);
                    group.push(item);
                }
                Err(_) => break,
            }
        }
        group
    }
}

fn weight(item: &Item) -> usize {
    match item {
        Item::Append(r) => r.batch.len(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answer every item of `group` as a failed commit would.
    fn fail(group: Vec<Item>, error: &StoreError) {
        for item in group {
            match item {
                Item::Append(r) => {
                    let _ = r.reply.send(Err(error.clone()));
                }
                Item::Trim { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Item::Close(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn n(key: &str) -> NewNotification {
        NewNotification {
            channel: "c".into(),
            dedupe_key: key.into(),
            fields: String::new(),
        }
    }

    #[tokio::test]
    async fn calls_keep_their_order_and_groups_are_bounded() {
        let (q, mut rx) = queue();
        let a = q.append(vec![n("1"), n("2")]);
        let b = q.append(vec![n("3")]);
        let c = q.append(vec![n("4"), n("5")]);
        let group = rx.next_group(3).await.expect("group");
        let keys: Vec<_> = group
            .iter()
            .flat_map(|i| match i {
                Item::Append(r) => r.batch.iter().map(|n| n.dedupe_key.clone()).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(keys, ["1", "2", "3"], "bounded by 3 notifications");
        fail(group, &StoreError::Unavailable("disk".into()));
        assert!(a.await.is_err());
        assert!(b.await.is_err());
        assert_eq!(rx.try_group(10).len(), 1);
        drop(c);
        assert!(rx.try_group(10).is_empty());
    }

    #[tokio::test]
    async fn after_a_failed_group_the_appends_queued_behind_it_fail_too() {
        let (q, mut rx) = queue();
        let a = q.append(vec![n("1")]);
        let group = rx.next_group(1).await.expect("group");
        let b = q.append(vec![n("2")]);
        let trim = q.trim(5);
        let error = StoreError::Unavailable("redis".into());
        fail(group, &error);
        let rest = rx.fail_queued_appends(&error);
        assert!(a.await.is_err());
        assert!(b.await.is_err(), "queued behind the failed group");
        assert!(matches!(rest.as_slice(), [Item::Trim { cutoff_ms: 5, .. }]));
        drop(rest);
        drop(trim);
        let c = q.append(vec![n("3")]);
        assert_eq!(rx.try_group(10).len(), 1, "later appends are taken again");
        drop(c);
    }

    #[tokio::test]
    async fn empty_batches_and_closed_queues_answer_at_once() {
        let (q, mut rx) = queue();
        assert!(q.append(Vec::new()).await.expect("empty").is_empty());
        let closing = tokio::spawn(async move {
            q.close().await;
            q.append(vec![n("1")]).await
        });
        let group = rx.next_group(10).await.expect("close");
        assert!(matches!(group[0], Item::Close(_)));
        fail(group, &StoreError::Closed);
        assert!(matches!(
            closing.await.expect("task"),
            Err(StoreError::Closed)
        ));
    }
}
