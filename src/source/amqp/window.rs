//! The deliveries taken from the broker and not yet settled.

use std::collections::VecDeque;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::pipeline::{Processed, Rejection};
use crate::store::StoreError;

/// What a settled delivery turned out to be.
#[derive(Debug)]
pub(super) enum Verdict {
    Appended,
    Poison(Rejection, String),
}

pub(super) type Work = BoxFuture<'static, Result<Verdict, StoreError>>;

/// Deliveries taken from the broker and not yet settled, in delivery order.
///
/// Only the head is ever settled, so settlement follows delivery order no
/// matter in which order the appends complete.
pub(super) struct Window<T> {
    entries: VecDeque<(T, Work)>,
}

impl<T> Window<T> {
    pub(super) fn new() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn push(&mut self, item: T, work: Work) {
        self.entries.push_back((item, work));
    }

    /// Wait for the head's append. Cancel-safe: the append stays in the
    /// window when this future is dropped. Pending forever when empty.
    pub(super) async fn head(&mut self) -> Result<Verdict, StoreError> {
        match self.entries.front_mut() {
            Some((_, work)) => work.await,
            None => std::future::pending().await,
        }
    }

    /// Remove the head after [`Window::head`] resolved.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.entries.pop_front().map(|(item, _)| item)
    }

    /// The head and its verdict when its append has already resolved.
    pub(super) fn try_settle(&mut self) -> Option<(T, Result<Verdict, StoreError>)> {
        let verdict = self.entries.front_mut()?.1.as_mut().now_or_never()?;
        self.pop().map(|item| (item, verdict))
    }

    /// Every entry, in order (for shutdown).
    pub(super) async fn settle_next(&mut self) -> Option<(T, Result<Verdict, StoreError>)> {
        if self.entries.is_empty() {
            return None;
        }
        let verdict = self.head().await;
        self.pop().map(|item| (item, verdict))
    }
}

pub(super) fn verdict_of(processed: Processed) -> Verdict {
    match processed.poison() {
        Some((rejection, detail)) => Verdict::Poison(rejection, detail),
        None => Verdict::Appended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Appends that complete out of order are still settled in delivery
    /// order, and never before they complete.
    #[tokio::test]
    async fn the_window_settles_in_order_only_what_is_appended() {
        let mut window = Window::new();
        let mut senders = Vec::new();
        for tag in 1..=3u64 {
            let (tx, rx) = oneshot::channel::<()>();
            senders.push(tx);
            let work: Work = async move {
                let _ = rx.await;
                Ok(Verdict::Appended)
            }
            .boxed();
            window.push(tag, work);
        }
        let mut senders = senders.into_iter();
        let (s1, s2, s3) = (
            senders.next().unwrap(),
            senders.next().unwrap(),
            senders.next().unwrap(),
        );
        // 3 and 2 complete first: nothing is settled while 1 is pending.
        s3.send(()).unwrap();
        s2.send(()).unwrap();
        tokio::task::yield_now().await;
        assert!(window.try_settle().is_none());
        assert!(window.head().now_or_never().is_none());
        assert_eq!(window.len(), 3);
        s1.send(()).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| window.try_settle().map(|(t, _)| t)).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(window.settle_next().await.is_none());
    }
}
