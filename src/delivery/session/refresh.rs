//! Token expiry and `refresh` on a live session.
//!
//! The deadline is the token's `exp` plus the leeway, read from the wall
//! clock once (at connect, at each refresh) and kept as a runtime instant,
//! so the session loop only sleeps until it. A refresh checks the new
//! token fully (signature, claims, same `sub`), moves the deadline, answers
//! `refreshed`, then ends every subscription the new token no longer
//! grants with a `forbidden` error naming the channel.

use std::sync::Arc;

use futures_util::{Sink, Stream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{End, SendResult, Session};
use crate::auth::{Principal, Rejection};
use crate::delivery::protocol::{CloseCode, ErrorCode, ServerFrame};

/// When a session of `principal` must end, on the runtime's clock.
pub(super) fn deadline(principal: &Principal) -> Option<Instant> {
    principal.time_left().map(|left| Instant::now() + left)
}

pub(super) fn expired() -> End {
    End::Close(
        CloseCode::TokenExpired,
        "token expired: refresh it, then reconnect",
    )
}

impl<S> Session<S>
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    pub(super) async fn refresh(&mut self, token: &str) -> SendResult {
        let auth = self.shared.auth.clone();
        let next = match auth.refresh(&self.principal, token).await {
            Ok(next) => next,
            Err(Rejection::Disabled) => {
                return self
                    .error(
                        ErrorCode::BadFrame,
                        "authentication is off: there is no token to refresh",
                        None,
                    )
                    .await;
            }
            Err(rejection) => {
                self.shared
                    .metrics
                    .auth_rejected("refresh", rejection.label());
                tracing::info!(reason = %rejection, "refresh refused; closing the session");
                let code = if rejection.is_expired() {
                    CloseCode::TokenExpired
                } else {
                    CloseCode::AuthFailed
                };
                return Err(End::Refuse(code, format!("refresh refused: {rejection}")));
            }
        };
        self.principal = next;
        self.expires = deadline(&self.principal);
        self.send_frame(&ServerFrame::Refreshed {
            expires_at: self.principal.expires_at(),
        })
        .await?;
        let dropped: Vec<Arc<str>> = self
            .channels
            .keys()
            .filter(|c| self.principal.check(c).is_err())
            .cloned()
            .collect();
        for channel in dropped {
            self.channels.remove(&channel);
            self.shared.hub.unsubscribe(&channel, self.sub.id());
            self.shared.metrics.auth_rejected("refresh", "forbidden");
            self.error(
                ErrorCode::Forbidden,
                "the refreshed token no longer grants this channel; the subscription ended",
                Some(&channel),
            )
            .await?;
        }
        Ok(())
    }
}
