//! A small client of the admin API, for `herald rules record`.

use std::io::Write;

use serde::Deserialize;

use crate::recorder::RecordedEvent;

/// Events fetched per request.
const PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
struct EventsPage {
    events: Vec<RecordedEvent>,
    newest: u64,
}

/// What `herald rules record` asks for.
#[derive(Debug, Clone, Default)]
pub struct RecordRequest {
    /// The admin base URL (`http://127.0.0.1:8080`).
    pub admin: String,
    pub token: Option<String>,
    pub topic: Option<String>,
    pub channel: Option<String>,
}

/// Write the events herald's recorder keeps, oldest first, one JSON
/// object per line, up to the newest at the first request. Returns how
/// many.
pub async fn record(request: &RecordRequest, out: &mut dyn Write) -> Result<usize, String> {
    let http = reqwest::Client::new();
    let base = request.admin.trim_end_matches('/');
    let mut after = 0;
    let mut until = None;
    let mut written = 0;
    loop {
        let mut url = url::Url::parse(&format!("{base}/admin/events"))
            .map_err(|e| format!("--admin {base}: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("after", &after.to_string());
            q.append_pair("limit", &PAGE.to_string());
            if let Some(t) = &request.topic {
                q.append_pair("topic", t);
            }
            if let Some(c) = &request.channel {
                q.append_pair("channel", c);
            }
        }
        let mut req = http.get(url.clone());
        if let Some(token) = &request.token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        let body = res.text().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", body.trim()));
        }
        let page: EventsPage =
            serde_json::from_str(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))?;
        let until = *until.get_or_insert(page.newest);
        let Some(last) = page.events.last().map(|e| e.id) else {
            return Ok(written);
        };
        for event in page.events.iter().filter(|e| e.id <= until) {
            let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| format!("cannot write: {e}"))?;
            written += 1;
        }
        if last >= until || page.events.len() < PAGE {
            return Ok(written);
        }
        after = last;
    }
}
