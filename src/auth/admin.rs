//! The admin token: `Authorization: Bearer <token>` on `/metrics`,
//! `/readyz` and `/admin/*` when `[admin] token` (or `token_file`) is set.
//!
//! The check compares SHA-256 digests in constant time, so neither the
//! token's content nor its length shows in the time an answer takes.

use aws_lc_rs::{constant_time, digest as sha};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AuthError;
use super::config::{AdminConfig, check_admin_token};
use super::keys::read_secret_file;

/// The configured admin token (its digest), if any.
#[derive(Debug, Default)]
pub struct AdminToken {
    digest: Option<sha::Digest>,
}

impl AdminToken {
    /// Read `[admin] token` or `token_file`.
    pub fn load(config: &AdminConfig) -> Result<Self, AuthError> {
        let token = match (&config.token, &config.token_file) {
            (Some(t), _) => Some(t.expose().to_string()),
            (None, Some(path)) => {
                let fail = |problem| AuthError {
                    key: "admin.token_file".into(),
                    problem,
                };
                let t = read_secret_file(path).map_err(fail)?;
                check_admin_token(&t).map_err(|p| fail(format!("{}: {p}", path.display())))?;
                Some(t)
            }
            (None, None) => None,
        };
        Ok(Self {
            digest: token.map(|t| sha::digest(&sha::SHA256, t.as_bytes())),
        })
    }

    pub fn is_set(&self) -> bool {
        self.digest.is_some()
    }

    /// `Ok` without a configured token; else 401 without a bearer token,
    /// 403 with a wrong one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
        let Some(want) = &self.digest else {
            return Ok(());
        };
        let presented = super::bearer(headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let got = sha::digest(&sha::SHA256, presented.as_bytes());
        constant_time::verify_slices_are_equal(got.as_ref(), want.as_ref())
            .map_err(|_| StatusCode::FORBIDDEN)
    }
}

/// The answer to a request the admin token check refused with `status`.
pub fn refusal(status: StatusCode) -> Response {
    let message = if status == StatusCode::UNAUTHORIZED {
        "the admin token is required: Authorization: Bearer <token>"
    } else {
        "wrong admin token"
    };
    let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald-admin\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn with(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert("authorization", HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    #[test]
    fn without_a_token_everything_passes() {
        let t = AdminToken::load(&AdminConfig::default()).expect("loads");
        assert!(!t.is_set());
        assert_eq!(t.check(&with(None)), Ok(()));
    }

    #[test]
    fn the_token_is_required_and_compared() {
        let config = AdminConfig {
            token: Some(Secret::new("an-admin-token-0123")),
            ..AdminConfig::default()
        };
        let t = AdminToken::load(&config).expect("loads");
        assert_eq!(t.check(&with(None)), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            t.check(&with(Some("Bearer nope"))),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            t.check(&with(Some("Bearer an-admin-token-012"))),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(t.check(&with(Some("Bearer an-admin-token-0123"))), Ok(()));
    }

    #[test]
    fn the_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "file-admin-token-456\n").expect("write");
        let config = AdminConfig {
            token_file: Some(path.clone()),
            ..AdminConfig::default()
        };
        let t = AdminToken::load(&config).expect("loads");
        assert_eq!(t.check(&with(Some("Bearer file-admin-token-456"))), Ok(()));
        std::fs::write(&path, "short\n").expect("write");
        let err = AdminToken::load(&config).expect_err("too short");
        assert_eq!(err.key, "admin.token_file");
    }
}
