//! Bearer-token check of mutating requests (`POST`, `PUT`, `DELETE`, `PATCH`)
//! when `API_TOKEN` is set; reads stay open. The comparison takes the same
//! time wherever the first differing byte is.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether `authorization` (the header's value) carries `token` as a bearer token.
pub fn authorized(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(presented) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return false;
    };
    constant_time_eq(presented.trim_ascii(), token.as_bytes())
}

/// Middleware: 401 with a JSON error for a mutating request without the token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mutating = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    );
    if let (true, Some(token)) = (mutating, state.token.as_deref()) {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !authorized(header, token) {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let t = "s3cret-token";
        assert!(authorized(Some(b"Bearer s3cret-token"), t));
        assert!(!authorized(Some(b"Bearer s3cret-tokeN"), t));
        assert!(!authorized(Some(b"Bearer s3cret"), t));
        assert!(!authorized(Some(b"Basic s3cret-token"), t));
        assert!(!authorized(Some(b"s3cret-token"), t));
        assert!(!authorized(None, t));
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
