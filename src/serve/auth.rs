//! Who may use the console: the token (owner-only in the state dir, printed in the login URL),
//! the sessions a login opens (an HttpOnly, SameSite=Strict cookie), and the CSRF token every
//! state-changing request made with that cookie must carry.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use axum::http::{HeaderMap, Method, header};

/// The file the token is kept in, in the project's state dir.
pub const TOKEN_FILE: &str = "serve-token";
/// The session cookie's name.
pub const COOKIE: &str = "nuwax_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-nuwax-csrf";

/// 32 random bytes as hex.
pub fn random_hex() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// The token, created (owner-only) when there is none.
pub fn load_or_create(state_dir: &Path) -> Result<String> {
    match read(state_dir) {
        Ok(t) => Ok(t),
        Err(_) => new_token(state_dir),
    }
}

/// A new token in place of the old one: sessions opened with the old one end.
pub fn new_token(state_dir: &Path) -> Result<String> {
    crate::fsutil::create_private_dir(state_dir)?;
    let token = random_hex()?;
    let path = token_path(state_dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(".serve-token-")
        .tempfile_in(state_dir)
        .with_context(|| format!("creating a token file in {}", state_dir.display()))?;
    // tempfile creates it 0600.
    writeln!(tmp, "{token}").with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    crate::fsutil::fsync_dir(state_dir)?;
    Ok(token)
}

fn read(state_dir: &Path) -> Result<String> {
    let path = token_path(state_dir);
    let t = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(t.len() >= 32, "{} holds no token", path.display());
    Ok(t)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Session {
    csrf: String,
    /// The token it was opened with: a new token ends it.
    token: String,
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Bearer,
    /// A session, with its CSRF token.
    Session {
        csrf: String,
    },
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token or session, or a wrong one: 401.
    Unauthenticated,
    /// A cookie request that changes something without the session's CSRF token: 403.
    Csrf,
}

/// The token (read from its file on every check, so `nuwax token new` takes effect at once)
/// and the open sessions.
pub struct Gate {
    state_dir: PathBuf,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Gate {
    pub fn new(state_dir: PathBuf) -> Gate {
        Gate { state_dir, sessions: Mutex::new(HashMap::new()) }
    }

    fn token(&self) -> Option<String> {
        read(&self.state_dir).ok()
    }

    /// A login with `given`: a new session id and its CSRF token, or `None` for a wrong token.
    pub fn login(&self, given: &str) -> Result<Option<(String, String)>> {
        let Some(token) = self.token().filter(|t| same(t, given)) else { return Ok(None) };
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.insert(id.clone(), Session { csrf: csrf.clone(), token });
        Ok(Some((id, csrf)))
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        }
    }

    /// Whether the request may go on: a bearer token, or a session cookie (then, unless it
    /// only reads, the CSRF header too).
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<Access, Refusal> {
        let token = self.token().ok_or(Refusal::Unauthenticated)?;
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let given = auth.to_str().ok().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
            return if same(given.trim(), &token) {
                Ok(Access::Bearer)
            } else {
                Err(Refusal::Unauthenticated)
            };
        }
        let id = cookie(headers, COOKIE).ok_or(Refusal::Unauthenticated)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(session) = sessions.get(&id) else { return Err(Refusal::Unauthenticated) };
        if !same(&session.token, &token) {
            sessions.remove(&id);
            return Err(Refusal::Unauthenticated);
        }
        if !matches!(*method, Method::GET | Method::HEAD) {
            let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !same(given, &session.csrf) {
                return Err(Refusal::Csrf);
            }
        }
        Ok(Access::Session { csrf: session.csrf.clone() })
    }
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_the_token_or_a_session_with_its_csrf_token_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), token, "kept across starts");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(token_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only");
        let gate = Gate::new(dir.path().to_path_buf());
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(gate.check(&get, &HeaderMap::new()), Err(Refusal::Unauthenticated));
        let bearer = format!("Bearer {token}");
        assert_eq!(gate.check(&post, &headers(&[("authorization", &bearer)])), Ok(Access::Bearer));
        assert_eq!(
            gate.check(&get, &headers(&[("authorization", "Bearer nope")])),
            Err(Refusal::Unauthenticated)
        );
        assert!(gate.login("wrong").unwrap().is_none());
        let (id, csrf) = gate.login(&token).unwrap().unwrap();
        let c = format!("other=1; {COOKIE}={id}");
        assert!(gate.check(&get, &headers(&[("cookie", &c)])).is_ok());
        assert_eq!(gate.check(&post, &headers(&[("cookie", &c)])), Err(Refusal::Csrf));
        assert_eq!(gate.check(&post, &headers(&[("cookie", &c), (CSRF_HEADER, "bad")])), Err(Refusal::Csrf));
        assert!(gate.check(&post, &headers(&[("cookie", &c), (CSRF_HEADER, &csrf)])).is_ok());
        // A new token ends the sessions opened with the old one.
        new_token(dir.path()).unwrap();
        assert_eq!(gate.check(&get, &headers(&[("cookie", &c)])), Err(Refusal::Unauthenticated));
        assert_eq!(gate.check(&get, &headers(&[("authorization", &bearer)])), Err(Refusal::Unauthenticated));
    }
}
