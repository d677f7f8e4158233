//! The peer API's messages, and how a request to a peer is signed and sent.

use super::*;

/// One count asked of an owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TakeOne {
    pub(super) counter: String,
    pub(super) key: String,
    /// The counter as the asker's policy has it: an owner whose differs refuses.
    pub(super) max: u32,
    pub(super) window_ms: u64,
    pub(super) scope: Scope,
    /// Counts asked beyond this call's one, as a lease (hot keys of large limits).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) lease: u32,
}

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(super) fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TakeRequest {
    pub(super) takes: Vec<TakeOne>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum TakeAnswer {
    /// Counted, in the order asked, with the counts lent beyond each (a lease).
    Taken {
        spent: Vec<Spent>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leased: Vec<u32>,
    },
    /// A counter was full.
    #[serde(rename_all = "camelCase")]
    Limited {
        counter: String,
        retry_after_ms: u64,
    },
    /// This sidecar's peer set makes another the owner.
    NotOwner,
    /// Its policy does not hold such a counter across pods.
    Mismatch,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReturnOne {
    pub(super) counter: String,
    pub(super) spent: Spent,
    /// How many counts at `spent` (a lease's unused ones).
    #[serde(default = "one")]
    pub(super) count: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReturnRequest {
    pub(super) returns: Vec<ReturnOne>,
}

/// A use of an approval asked of its owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UseRequest {
    pub(super) id: String,
    /// What its uses are counted under (the McpApproval's name, or the id).
    pub(super) key: String,
    /// The pod whose call it is for.
    pub(super) by: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum UseAnswer {
    /// Counted (spent, until given back).
    Reserved,
    /// Used up, expired, or not (yet) in the owner's approvals.
    Refused,
    NotOwner,
}

/// A signed POST to a peer; its answer's body (2xx only).
pub(super) async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    key: &hmac::Key,
    address: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    let time = unix_now().to_string();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let nonce = hex(&nonce);
    let mac = hex(hmac::sign(key, &signed(path, &time, &nonce, &body)).as_ref());
    let req = Request::post(format!("http://{address}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(TIME_HEADER, time)
        .header(NONCE_HEADER, nonce)
        .header(MAC_HEADER, mac)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{}", resp.status()));
    }
    Limited::new(resp.into_body(), MAX_PEER_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}

/// What the MAC covers: path, time, nonce and body, so none can be moved to another request.
pub(super) fn signed(path: &str, time: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(path.len() + time.len() + nonce.len() + body.len() + 3);
    for part in [path.as_bytes(), time.as_bytes(), nonce.as_bytes()] {
        m.extend_from_slice(part);
        m.push(b'\n');
    }
    m.extend_from_slice(body);
    m
}

/// Seconds since the epoch (a peer request's time).
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
