//! Push webhooks from GitHub, Gitea, Forgejo and GitLab: who sent one,
//! whether its signature holds over the raw body, what it asks for, and
//! whether it was delivered before. Pure functions over headers and bytes;
//! the HTTP handler decides what to do with the answers.
//!
//! A webhook is only ever a hint to go and fetch: nothing in its body is
//! deployed or trusted beyond "the branch named here may have moved".

use std::collections::{HashMap, VecDeque};

use axum::http::HeaderMap;
use base64ct::{Base64, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// How far a GitLab `webhook-timestamp` may be from the node's clock, as
/// the Standard Webhooks specification recommends.
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

/// Which kind of sender, by the header that authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    Gitea,
    Forgejo,
    GitLab,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
            Provider::GitLab => "gitlab",
        }
    }
}

/// Why a delivery was refused before anything in it was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "no signature: expected X-Hub-Signature-256 (GitHub), X-Gitea-Signature, \
         X-Forgejo-Signature, or X-Gitlab-Token / webhook-signature (GitLab)"
    )]
    Missing,
    #[error("{header} is malformed: {why}")]
    Malformed { header: &'static str, why: String },
    #[error("{header} does not match this site's webhook secret")]
    Mismatch { header: &'static str },
    #[error(
        "webhook-timestamp is {age} s away from the node's clock (at most \
         {TIMESTAMP_TOLERANCE_SECS} s allowed): a replay, or a clock that is wrong"
    )]
    Stale { age: u64 },
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn hmac_of(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for p in parts {
        mac.update(p);
    }
    mac
}

/// The hex HMAC-SHA256 of `body` under `secret`: what GitHub (after
/// `sha256=`), Gitea and Forgejo send.
#[cfg(test)]
fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_of(secret, &[body]).finalize().into_bytes())
}

/// Checks a hex HMAC-SHA256 of the body in constant time.
fn check_hex(
    header: &'static str,
    value: &str,
    secret: &[u8],
    body: &[u8],
) -> Result<(), Rejection> {
    let sig = hex::decode(value).map_err(|e| Rejection::Malformed {
        header,
        why: format!("not hex ({e})"),
    })?;
    hmac_of(secret, &[body])
        .verify_slice(&sig)
        .map_err(|_| Rejection::Mismatch { header })
}

/// Compares two secrets in constant time, whatever their lengths: both are
/// hashed first, so the comparison never stops early on a length mismatch.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The key a Standard Webhooks signature uses: a `whsec_<base64>` secret
/// (what GitLab's signing token looks like) stands for its decoded bytes;
/// any other secret is used as it is.
fn standard_webhooks_key(secret: &[u8]) -> Vec<u8> {
    std::str::from_utf8(secret)
        .ok()
        .and_then(|s| s.strip_prefix("whsec_"))
        .and_then(|b64| Base64::decode_vec(b64).ok())
        .unwrap_or_else(|| secret.to_vec())
}

/// GitLab's newer signature (Standard Webhooks): `webhook-signature:
/// v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`,
/// possibly several, space-separated; the timestamp must be recent.
fn check_standard_signature(
    headers: &HeaderMap,
    value: &str,
    secret: &[u8],
    body: &[u8],
    now: u64,
) -> Result<(), Rejection> {
    let id = header(headers, "webhook-id").ok_or(Rejection::Malformed {
        header: "webhook-signature",
        why: "it comes without a webhook-id header".into(),
    })?;
    let ts = header(headers, "webhook-timestamp").ok_or(Rejection::Malformed {
        header: "webhook-signature",
        why: "it comes without a webhook-timestamp header".into(),
    })?;
    let when: u64 = ts.parse().map_err(|_| Rejection::Malformed {
        header: "webhook-timestamp",
        why: format!("{ts:?} is not a number of seconds"),
    })?;
    let key = standard_webhooks_key(secret);
    let mac = hmac_of(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    let mut any_v1 = false;
    let mut matched = false;
    for sig in value.split_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        any_v1 = true;
        if let Ok(bytes) = Base64::decode_vec(b64) {
            // Every candidate is checked: no early exit tells which matched.
            matched |= mac.clone().verify_slice(&bytes).is_ok();
        }
    }
    if !any_v1 {
        return Err(Rejection::Malformed {
            header: "webhook-signature",
            why: "no v1,<base64> signature in it".into(),
        });
    }
    if !matched {
        return Err(Rejection::Mismatch {
            header: "webhook-signature",
        });
    }
    // Checked after the signature, so the age of a forged request tells
    // nobody anything; a signed timestamp cannot be moved.
    let age = now.abs_diff(when);
    if age > TIMESTAMP_TOLERANCE_SECS {
        return Err(Rejection::Stale { age });
    }
    Ok(())
}

/// Verifies a delivery against the site's secret (non-empty; the caller
/// refuses sites without one). The provider is told by its signature
/// header, not by its event header: Gitea and Forgejo also send
/// `X-GitHub-Event`. `now` is the current Unix time in seconds.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: u64,
) -> Result<Provider, Rejection> {
    if let Some(v) = header(headers, "x-forgejo-signature") {
        check_hex("X-Forgejo-Signature", v, secret, body)?;
        return Ok(Provider::Forgejo);
    }
    if let Some(v) = header(headers, "x-gitea-signature") {
        check_hex("X-Gitea-Signature", v, secret, body)?;
        return Ok(Provider::Gitea);
    }
    if let Some(v) = header(headers, "x-hub-signature-256") {
        let hex = v.strip_prefix("sha256=").ok_or(Rejection::Malformed {
            header: "X-Hub-Signature-256",
            why: "it does not start with sha256=".into(),
        })?;
        check_hex("X-Hub-Signature-256", hex, secret, body)?;
        return Ok(Provider::GitHub);
    }
    let token = header(headers, "x-gitlab-token");
    let signature = header(headers, "webhook-signature");
    if token.is_none() && signature.is_none() {
        return Err(Rejection::Missing);
    }
    // Every credential the delivery carries must hold.
    if let Some(t) = token
        && !same_secret(t.as_bytes(), secret)
    {
        return Err(Rejection::Mismatch {
            header: "X-Gitlab-Token",
        });
    }
    if let Some(s) = signature {
        check_standard_signature(headers, s, secret, body, now)?;
    }
    Ok(Provider::GitLab)
}

/// The delivery's id, for refusing one delivered twice.
pub fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::GitHub => &["x-github-delivery"],
        Provider::Gitea => &["x-gitea-delivery"],
        Provider::Forgejo => &["x-forgejo-delivery", "x-gitea-delivery"],
        Provider::GitLab => &["idempotency-key", "webhook-id", "x-gitlab-event-uuid"],
    };
    names
        .iter()
        .find_map(|n| header(headers, n))
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(200).collect())
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A forge checking the hook works (GitHub's `ping`).
    Ping,
    Push(Push),
    /// Any other event, by the name the forge gave it.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// "refs/heads/main", "refs/tags/v1".
    pub git_ref: String,
    /// The ref was deleted.
    pub deleted: bool,
    /// The commit the body names: shown in the log, never deployed as such.
    pub after: Option<String>,
}

impl Push {
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }
}

/// Why a verified body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("the push payload has no \"ref\" string")]
    NoRef,
}

pub fn parse_json(body: &[u8]) -> Result<Value, BodyError> {
    serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))
}

/// Reads the event a verified, parsed delivery carries.
pub fn event(provider: Provider, headers: &HeaderMap, body: &Value) -> Result<Event, BodyError> {
    let names: &[&str] = match provider {
        Provider::GitHub => &["x-github-event"],
        Provider::Gitea => &["x-gitea-event", "x-github-event"],
        Provider::Forgejo => &["x-forgejo-event", "x-gitea-event", "x-github-event"],
        Provider::GitLab => &["x-gitlab-event"],
    };
    let name = names.iter().find_map(|n| header(headers, n));
    let is_push = match (provider, name) {
        (_, Some("ping")) => return Ok(Event::Ping),
        (Provider::GitLab, Some(n)) => n == "Push Hook",
        (Provider::GitLab, None) => body.get("object_kind").and_then(Value::as_str) == Some("push"),
        (_, Some(n)) => n == "push",
        (_, None) => false,
    };
    if !is_push {
        let name = name
            .map(|n| n.chars().take(100).collect())
            .unwrap_or_else(|| "(no event header)".to_string());
        return Ok(Event::Other(name));
    }
    let git_ref = body
        .get("ref")
        .and_then(Value::as_str)
        .ok_or(BodyError::NoRef)?
        .to_string();
    let after = body
        .get("after")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(64).collect::<String>());
    let zero = after
        .as_deref()
        .is_some_and(|a| !a.is_empty() && a.chars().all(|c| c == '0'));
    let deleted = zero || body.get("deleted").and_then(Value::as_bool) == Some(true);
    Ok(Event::Push(Push {
        git_ref,
        deleted,
        after,
    }))
}

/// Delivery ids seen recently, with the deploy each one started; bounded,
/// the oldest forgotten first. One per node.
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<String, String>,
    order: VecDeque<String>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The deploy a delivery started, if it was seen before.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.seen.get(key).map(String::as_str)
    }

    pub fn insert(&mut self, key: String, deploy: String) {
        if self.seen.insert(key.clone(), deploy).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn githubs_documented_test_vector() {
        // docs.github.com: validating webhook deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign_hex(secret, body), sig);
        let h = headers(&[("x-hub-signature-256", &format!("sha256={sig}"))]);
        assert_eq!(verify(&h, body, secret, NOW), Ok(Provider::GitHub));
        // The same signature over another body.
        assert_eq!(
            verify(&h, b"Hello, World?", secret, NOW),
            Err(Rejection::Mismatch {
                header: "X-Hub-Signature-256"
            })
        );
        // Another secret.
        assert!(verify(&h, body, b"guess", NOW).is_err());
        // No prefix, bad hex.
        let h = headers(&[("x-hub-signature-256", sig)]);
        assert!(matches!(
            verify(&h, body, secret, NOW),
            Err(Rejection::Malformed { .. })
        ));
        let h = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert!(matches!(
            verify(&h, body, secret, NOW),
            Err(Rejection::Malformed { .. })
        ));
    }

    #[test]
    fn gitea_and_forgejo_send_bare_hex_and_win_over_the_github_header() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign_hex(b"k", body);
        let h = headers(&[("x-gitea-signature", &good)]);
        assert_eq!(verify(&h, body, b"k", NOW), Ok(Provider::Gitea));
        let h = headers(&[("x-forgejo-signature", &good), ("x-gitea-signature", &good)]);
        assert_eq!(verify(&h, body, b"k", NOW), Ok(Provider::Forgejo));
        // The provider's own header decides, even next to a valid GitHub one.
        let h = headers(&[
            ("x-gitea-signature", &"0".repeat(64)),
            ("x-hub-signature-256", &format!("sha256={good}")),
        ]);
        assert_eq!(
            verify(&h, body, b"k", NOW),
            Err(Rejection::Mismatch {
                header: "X-Gitea-Signature"
            })
        );
    }

    #[test]
    fn gitlab_token_is_compared_whole() {
        let h = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(verify(&h, b"{}", b"s3cret", NOW), Ok(Provider::GitLab));
        for wrong in ["s3cre", "s3cret!", "S3CRET", ""] {
            let h = headers(&[("x-gitlab-token", wrong)]);
            assert!(verify(&h, b"{}", b"s3cret", NOW).is_err(), "{wrong:?}");
        }
        assert_eq!(
            verify(&HeaderMap::new(), b"{}", b"s3cret", NOW),
            Err(Rejection::Missing)
        );
    }

    fn standard_sig(key: &[u8], id: &str, ts: u64, body: &[u8]) -> String {
        let mac = hmac_of(
            key,
            &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body],
        );
        format!("v1,{}", Base64::encode_string(&mac.finalize().into_bytes()))
    }

    #[test]
    fn gitlab_standard_webhooks_signature() {
        let key = [7u8; 32];
        let secret = format!("whsec_{}", Base64::encode_string(&key));
        let body = br#"{"object_kind":"push"}"#;
        let sig = standard_sig(&key, "msg_1", NOW, body);
        let ts = NOW.to_string();
        let h = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &format!("v1,bm9wZQ== {sig}")),
        ]);
        assert_eq!(
            verify(&h, body, secret.as_bytes(), NOW),
            Ok(Provider::GitLab)
        );
        // Tampered body, other id, stale or future timestamp.
        assert!(verify(&h, b"{}", secret.as_bytes(), NOW).is_err());
        let other = headers(&[
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ]);
        assert!(verify(&other, body, secret.as_bytes(), NOW).is_err());
        assert_eq!(
            verify(&h, body, secret.as_bytes(), NOW + 301),
            Err(Rejection::Stale { age: 301 })
        );
        assert!(verify(&h, body, secret.as_bytes(), NOW - 400).is_err());
        // A token alongside must hold too.
        let mut both = h.clone();
        both.insert("x-gitlab-token", HeaderValue::from_static("wrong"));
        assert!(verify(&both, body, secret.as_bytes(), NOW).is_err());
        both.insert("x-gitlab-token", HeaderValue::from_str(&secret).unwrap());
        assert_eq!(
            verify(&both, body, secret.as_bytes(), NOW),
            Ok(Provider::GitLab)
        );
        // A plain secret is a plain key.
        let sig = standard_sig(b"plain", "m", NOW, body);
        let h = headers(&[
            ("webhook-id", "m"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(verify(&h, body, b"plain", NOW), Ok(Provider::GitLab));
        // Missing id or timestamp.
        let h = headers(&[("webhook-signature", &sig)]);
        assert!(matches!(
            verify(&h, body, b"plain", NOW),
            Err(Rejection::Malformed { .. })
        ));
    }

    #[test]
    fn events_and_pushes_are_read_per_provider() {
        let push = serde_json::json!({"ref": "refs/heads/main", "after": "ab".repeat(20)});
        let h = headers(&[("x-github-event", "push")]);
        let Ok(Event::Push(p)) = event(Provider::GitHub, &h, &push) else {
            panic!("a push");
        };
        assert_eq!(p.branch(), Some("main"));
        assert!(!p.deleted);
        let h = headers(&[("x-github-event", "ping")]);
        assert_eq!(event(Provider::GitHub, &h, &push), Ok(Event::Ping));
        let h = headers(&[("x-github-event", "issues")]);
        assert_eq!(
            event(Provider::GitHub, &h, &push),
            Ok(Event::Other("issues".into()))
        );
        let h = headers(&[("x-gitea-event", "push"), ("x-github-event", "push")]);
        assert!(matches!(
            event(Provider::Gitea, &h, &push),
            Ok(Event::Push(_))
        ));
        let h = headers(&[("x-forgejo-event", "push")]);
        assert!(matches!(
            event(Provider::Forgejo, &h, &push),
            Ok(Event::Push(_))
        ));
        let h = headers(&[("x-gitlab-event", "Push Hook")]);
        assert!(matches!(
            event(Provider::GitLab, &h, &push),
            Ok(Event::Push(_))
        ));
        let h = headers(&[("x-gitlab-event", "Tag Push Hook")]);
        assert!(matches!(
            event(Provider::GitLab, &h, &push),
            Ok(Event::Other(_))
        ));
        let kind = serde_json::json!({"object_kind": "push", "ref": "refs/heads/x"});
        assert!(matches!(
            event(Provider::GitLab, &HeaderMap::new(), &kind),
            Ok(Event::Push(_))
        ));

        let deleted = serde_json::json!({"ref": "refs/heads/main", "after": "0".repeat(40)});
        let h = headers(&[("x-github-event", "push")]);
        let Ok(Event::Push(p)) = event(Provider::GitHub, &h, &deleted) else {
            panic!("a push");
        };
        assert!(p.deleted);
        let no_ref = serde_json::json!({"after": "x"});
        assert_eq!(event(Provider::GitHub, &h, &no_ref), Err(BodyError::NoRef));
        assert!(parse_json(b"{not json").is_err());
    }

    #[test]
    fn delivery_ids_per_provider() {
        let h = headers(&[
            ("x-github-delivery", "g-1"),
            ("x-gitea-delivery", "t-1"),
            ("x-forgejo-delivery", "f-1"),
            ("x-gitlab-event-uuid", "l-1"),
            ("idempotency-key", "l-2"),
        ]);
        assert_eq!(delivery_id(Provider::GitHub, &h).as_deref(), Some("g-1"));
        assert_eq!(delivery_id(Provider::Gitea, &h).as_deref(), Some("t-1"));
        assert_eq!(delivery_id(Provider::Forgejo, &h).as_deref(), Some("f-1"));
        assert_eq!(delivery_id(Provider::GitLab, &h).as_deref(), Some("l-2"));
        let h = headers(&[("x-gitlab-event-uuid", "l-1")]);
        assert_eq!(delivery_id(Provider::GitLab, &h).as_deref(), Some("l-1"));
        assert_eq!(delivery_id(Provider::GitHub, &HeaderMap::new()), None);
    }

    #[test]
    fn the_replay_cache_forgets_the_oldest_first() {
        let mut c = ReplayCache::new(2);
        c.insert("a".into(), "1".into());
        c.insert("b".into(), "2".into());
        assert_eq!(c.get("a"), Some("1"));
        c.insert("c".into(), "3".into());
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some("2"));
        assert_eq!(c.get("c"), Some("3"));
        assert_eq!(c.len(), 2);
    }
}
