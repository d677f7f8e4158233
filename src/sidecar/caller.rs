//! Who is calling: the identity a request carries, established before anything is forwarded.
//!
//! Under `identity.serviceAccount` or `identity.jwt` the bearer token is verified against the
//! keys loaded with the policy (cached until it expires); the caller is the token's `sub`. Under
//! `identity.header` it is the header's value, set by a gateway in front. Otherwise it is the
//! SHA-256 of the bearer token: a key for counters that names no one. The token is read from the
//! `Authorization` header only, never from the query string.

use super::refusal::Refused;
use super::reload::{KeyRing, Keys, LoadedPolicy};
use super::State;
use crate::identity::TokenError;
use crate::policy::{bounds, sha256_hex, Identity};
use http::header::{self, HeaderMap};
use std::sync::Arc;

/// The identity of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Caller {
    /// What `scope: grant` counters key on and audit lines show: a verified subject or a
    /// gateway's header value in the clear, a token's hash, or `anonymous`.
    pub id: Arc<str>,
    /// Whether `id` names the caller (so grants may match it).
    pub named: bool,
}

impl Caller {
    /// A caller that proved nothing.
    pub fn anonymous() -> Caller {
        // Most requests of a policy without identity are anonymous: one shared allocation.
        static ANONYMOUS: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Caller {
            id: ANONYMOUS.get_or_init(|| Arc::from("anonymous")).clone(),
            named: false,
        }
    }

    /// The grant of `policy` that applies to this caller.
    pub fn grant(&self, policy: &crate::policy::Policy) -> Option<usize> {
        self.named.then(|| policy.grant_for(&self.id)).flatten()
    }
}

/// The caller of a request, or the refusal to answer with (401 when the policy needs an
/// identity the request does not prove, 400 for an ambiguous header).
pub(super) fn identify(
    st: &State,
    policy: &LoadedPolicy,
    h: &HeaderMap,
) -> Result<Caller, Refused> {
    let settings = &policy.engine.policy().identity;
    let refuse = |e: TokenError| {
        super::record::unauthenticated(st, &policy.label, e.label());
        unauthorized(&e)
    };
    match &settings.source {
        Identity::Bearer => Ok(match bearer(h)? {
            Some(t) => Caller {
                id: Arc::from(sha256_hex(t.as_bytes())),
                named: false,
            },
            None => Caller::anonymous(),
        }),
        Identity::Header(name) => match single(h, name)? {
            Some(v) => header_identity(name, v.as_bytes()),
            None if settings.required => Err(refuse(TokenError::Missing)),
            None => Ok(Caller::anonymous()),
        },
        Identity::ServiceAccount { .. } | Identity::Jwt { .. } => {
            let Some(token) = bearer(h)? else {
                return match settings.required {
                    true => Err(refuse(TokenError::Missing)),
                    false => Ok(Caller::anonymous()),
                };
            };
            // A token that is sent must verify, required or not: a caller never falls back to
            // anonymous by sending a bad one.
            let ring = match &policy.keys {
                Keys::Ready(ring) => ring,
                other => {
                    super::record::unauthenticated(st, &policy.label, "no_keys");
                    let why = match other {
                        Keys::Unavailable(why) => why.as_str(),
                        _ => "none were loaded",
                    };
                    return Err(no_keys(why));
                }
            };
            let KeyRing {
                verifier, cache, ..
            } = ring.as_ref();
            match cache.verify(verifier, token, unix_now()) {
                Ok(v) => Ok(Caller {
                    id: v.subject,
                    named: true,
                }),
                Err(e) => Err(refuse(e)),
            }
        }
    }
}

/// Seconds since the epoch.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The one value of header `name`; two are refused (the sidecar and the server could each read
/// another).
fn single<'h>(h: &'h HeaderMap, name: &str) -> Result<Option<&'h http::HeaderValue>, Refused> {
    let mut values = h.get_all(name).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(Refused::IdentityHeader(format!(
            "the {name} header is sent more than once"
        )));
    }
    Ok(first)
}

/// The bearer token of `Authorization`, if it carries one.
pub(super) fn bearer(h: &HeaderMap) -> Result<Option<&str>, Refused> {
    let Some(v) = single(h, header::AUTHORIZATION.as_str())? else {
        return Ok(None);
    };
    let v = v.as_bytes();
    if v.len() <= 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return Ok(None);
    }
    let token = std::str::from_utf8(&v[7..]).unwrap_or("").trim_matches(' ');
    Ok((!token.is_empty()).then_some(token))
}

/// A gateway's identity header, in the clear: visible ASCII and bounded, since it keys counters
/// and appears in audit lines.
fn header_identity(name: &str, v: &[u8]) -> Result<Caller, Refused> {
    let bad = Refused::IdentityHeader;
    if v.is_empty() {
        return Ok(Caller::anonymous());
    }
    if v.len() > bounds::SUBJECT {
        return Err(bad(format!(
            "the {name} header is over {} bytes",
            bounds::SUBJECT
        )));
    }
    if !v.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(bad(format!("the {name} header must be visible ASCII")));
    }
    let id = std::str::from_utf8(v).expect("ASCII is UTF-8");
    Ok(Caller {
        id: Arc::from(id),
        named: true,
    })
}

/// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750) and the reason in the JSON-RPC
/// error. A request with no token gets a challenge without an error code, as the RFC asks.
fn unauthorized(e: &TokenError) -> Refused {
    Refused::Unauthorized {
        message: format!("unauthorized: {e}"),
        challenge: match e {
            TokenError::Missing => r#"Bearer realm="mcp-warden""#.to_owned(),
            other => format!(
                r#"Bearer realm="mcp-warden", error="invalid_token", error_description="{}""#,
                quoted(&other.to_string())
            ),
        },
    }
}

/// The policy verifies tokens but has no keys to verify them with.
fn no_keys(why: &str) -> Refused {
    Refused::Unauthorized {
        message: format!("unauthorized: the sidecar has no keys to verify tokens with ({why})"),
        challenge: r#"Bearer realm="mcp-warden", error="invalid_token", error_description="no keys to verify tokens with""#
            .to_owned(),
    }
}

/// Text fit for a quoted-string: no quotes, backslashes or control characters.
fn quoted(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn challenges_name_the_reason_in_a_valid_quoted_string() {
        let challenge = |r: Refused| match r {
            Refused::Unauthorized { challenge, .. } => challenge,
            other => panic!("not a 401: {other:?}"),
        };
        let r = unauthorized(&TokenError::Algorithm("HS256".into()));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let c = challenge(r);
        assert!(c.starts_with("Bearer "), "{c}");
        assert!(c.contains(r#"error="invalid_token""#), "{c}");
        assert!(c.contains("'HS256'"), "quotes inside are replaced: {c}");
        assert!(http::HeaderValue::from_str(&c).is_ok());
        let missing = challenge(unauthorized(&TokenError::Missing));
        assert!(!missing.contains("error="), "{missing}");
    }

    #[test]
    fn the_token_comes_from_the_authorization_header_only_and_once() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "bearer  tok.en.x ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), Some("tok.en.x"));
        h.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn header_identities_are_bounded_visible_ascii() {
        assert_eq!(
            &*header_identity("x-agent", b"ci-bot").unwrap().id,
            "ci-bot"
        );
        assert!(header_identity("x-agent", &[b'a'; 257]).is_err());
        assert!(header_identity("x-agent", b"a\tb").is_err());
        assert!(!header_identity("x-agent", b"").unwrap().named);
    }
}
