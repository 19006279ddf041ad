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
//! Fences: an append may name the [`Fence`] of the ordered stream it comes
//! from (one Kafka partition). When an append fails, its fence breaks, and
//! the writer fails every later append of that stream without committing
//! it until the stream calls [`Fence::resume`]. So a record the stream
//! submitted before it learned of the failure cannot enter the log ahead
//! of the failed ones it then retries. [`Receiver::fail_queued_appends`]
//! covers callers without a fence for what is already queued.
//!
//! Cancel-safety: dropping an append future does not withdraw the append;
//! it is committed anyway and only its result is lost, exactly as if the
//! process had died after the commit (the dedupe key absorbs the retry).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, Fence, NewNotification, StoreError};

/// The answer to one append.
pub(crate) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// One call to `append`.
#[derive(Debug)]
pub(crate) struct Request {
    pub batch: Vec<NewNotification>,
    /// Milliseconds since the Unix epoch at the call: the notification time.
    pub at_ms: u64,
    pub reply: Reply,
    /// The caller's stream, when it keeps an order across appends.
    pub fence: Option<Arc<Fence>>,
}

impl Request {
    /// Answer with `error`: nothing of the batch was committed. Breaks the
    /// caller's fence, so its later appends fail too until it resumes.
    pub(crate) fn fail(self, error: &StoreError) {
        if let Some(fence) = &self.fence {
            fence.broken.store(true, Ordering::Release);
        }
        let _ = self.reply.send(Err(error.clone()));
    }
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
    /// Queue `batch`; the order of calls is the commit order. With a
    /// `fence`, see the module docs.
    pub(crate) fn append(
        &self,
        batch: Vec<NewNotification>,
        fence: Option<&Arc<Fence>>,
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
            fence: fence.cloned(),
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
                Item::Append(r) => r.fail(error),
                other => rest.push(other),
            }
        }
        rest
    }

    /// A group starting with `first`: appends of a broken fence are
    /// answered here and left out (it may come out empty).
    fn fill(&mut self, first: Item, max: usize) -> Vec<Item> {
        let mut size = 0;
        let mut group = Vec::new();
        let mut next = Some(first);
        // A close ends the group: nothing after it is taken.
        while let Some(item) = next {
            match item {
                Item::Append(r) if r.fence.as_ref().is_some_and(|f| f.is_broken()) => {
                    r.fail(&StoreError::Unavailable(
                        "an earlier append of this stream failed".into(),
                    ));
                }
                item => {
                    size += weight(&item);
                    let close = matches!(item, Item::Close(_));
                    group.push(item);
                    if size >= max || close {
                        break;
                    }
                }
            }
            next = self.rx.try_recv().ok();
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
                Item::Append(r) => r.fail(error),
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
            provenance: None,
        }
    }

    fn keys(group: &[Item]) -> Vec<String> {
        group
            .iter()
            .flat_map(|i| match i {
                Item::Append(r) => r.batch.iter().map(|n| n.dedupe_key.clone()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn calls_keep_their_order_and_groups_are_bounded() {
        let (q, mut rx) = queue();
        let a = q.append(vec![n("1"), n("2")], None);
        let b = q.append(vec![n("3")], None);
        let c = q.append(vec![n("4"), n("5")], None);
        let group = rx.next_group(3).await.expect("group");
        assert_eq!(keys(&group), ["1", "2", "3"], "bounded by 3 notifications");
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
        let a = q.append(vec![n("1")], None);
        let group = rx.next_group(1).await.expect("group");
        let b = q.append(vec![n("2")], None);
        let trim = q.trim(5);
        let error = StoreError::Unavailable("redis".into());
        fail(group, &error);
        let rest = rx.fail_queued_appends(&error);
        assert!(a.await.is_err());
        assert!(b.await.is_err(), "queued behind the failed group");
        assert!(matches!(rest.as_slice(), [Item::Trim { cutoff_ms: 5, .. }]));
        drop(rest);
        drop(trim);
        let c = q.append(vec![n("3")], None);
        assert_eq!(rx.try_group(10).len(), 1, "later appends are taken again");
        drop(c);
    }

    #[tokio::test]
    async fn a_broken_fence_fails_its_streams_later_appends_until_it_resumes() {
        let (q, mut rx) = queue();
        let fence = Arc::new(Fence::default());
        let other = Arc::new(Fence::default());
        let a = q.append(vec![n("1")], Some(&fence));
        let group = rx.next_group(10).await.expect("group");
        fail(group, &StoreError::Unavailable("redis".into()));
        assert!(a.await.is_err());
        assert!(fence.is_broken());
        // Submitted after the failure but before the stream saw it: failed
        // uncommitted; another stream goes on.
        let b = q.append(vec![n("2")], Some(&fence));
        let c = q.append(vec![n("3")], Some(&other));
        let group = rx.try_group(10);
        assert_eq!(keys(&group), ["3"]);
        assert!(b.await.is_err());
        drop((group, c));
        fence.resume();
        let d = q.append(vec![n("2")], Some(&fence));
        assert_eq!(keys(&rx.try_group(10)), ["2"], "taken again after resume");
        drop(d);
    }

    #[tokio::test]
    async fn empty_batches_and_closed_queues_answer_at_once() {
        let (q, mut rx) = queue();
        assert!(q.append(Vec::new(), None).await.expect("empty").is_empty());
        let closing = tokio::spawn(async move {
            q.close().await;
            q.append(vec![n("1")], None).await
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
