//! The sidecar lists the server's tools itself: at start (retrying while the server comes up),
//! when a `notifications/tools/list_changed` passes on any stream, when a call names a tool it
//! has not seen, when a client is shown a definition it has not listed, and every few minutes.
//! So what the policy knows of a tool never depends on whether a client listed first.

use super::State;
use crate::policy::Pinning;
use crate::tools::client::Lister;
use crate::tools::ToolDef;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// Fewest seconds between two lists, however often something asks for one.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between attempts while the server cannot be listed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until `stop`: lists, installs the list, waits for a reason to list again.
pub(super) async fn run(st: Arc<State>, mut stop: watch::Receiver<bool>) {
    let lister = Lister::http(st.cfg.upstream.clone(), &st.cfg.legacy_sse_path);
    let mut backoff = MIN_INTERVAL;
    loop {
        let started = std::time::Instant::now();
        let wait = match lister.list().await {
            Ok(listing) => {
                let defs: Vec<ToolDef> = listing.tools.iter().filter_map(ToolDef::read).collect();
                install(&st, defs, started);
                backoff = MIN_INTERVAL;
                st.cfg.tools_refresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the server's tools");
                st.tools.failed(e.to_string());
                count_list(&st, "error");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = st.tools.woken() => {}
            _ = stop.changed() => return,
        }
        // Several reasons at once make one list.
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

/// Installs a new list whose reading started at `started`, counting definitions that changed.
fn install(st: &State, defs: Vec<ToolDef>, started: std::time::Instant) {
    let n = defs.len();
    let changes = st
        .tools
        .update_listed(defs, super::caller::unix_now(), started);
    count_list(st, "ok");
    let Some(policy) = st.policy.load_full() else {
        return;
    };
    let label = policy.label.as_str();
    st.metrics
        .tools_offered
        .with_label_values(&[label])
        .set(n as i64);
    let pol = policy.engine.policy();
    let snapshot = st.tools.snapshot();
    for name in &changes.redefined {
        st.metrics
            .tool_definition_changes
            .with_label_values(&[label, name])
            .inc();
        let pinned = pol.pins.contains_key(name) || pol.pinning == Pinning::FirstSeen;
        tracing::warn!(
            tool = %name,
            hash = snapshot.tools.get(name).map_or("", |e| e.def.hash.as_str()),
            denied = pinned,
            "the server changed a tool's definition"
        );
    }
    for name in &changes.cloaked {
        st.metrics
            .tool_definition_changes
            .with_label_values(&[label, name])
            .inc();
        tracing::warn!(
            tool = %name,
            "the server shows clients another definition of a tool than mcp-warden's own listing \
             gets; the tool is hidden and its calls are denied"
        );
    }
    for name in &changes.added {
        // A tool that arrives already unlike its pin changed before this sidecar saw it.
        let differs = pol
            .pins
            .get(name)
            .zip(snapshot.tools.get(name))
            .is_some_and(|(pin, e)| pin.hash != e.def.hash);
        if differs {
            st.metrics
                .tool_definition_changes
                .with_label_values(&[label, name])
                .inc();
            tracing::warn!(tool = %name, "a tool's definition differs from its pin");
        }
    }
    if !changes.added.is_empty() || !changes.removed.is_empty() {
        tracing::info!(
            added = ?changes.added,
            removed = ?changes.removed,
            tools = n,
            "the server's tool list changed"
        );
    }
}

fn count_list(st: &State, result: &str) {
    if let Some(p) = st.policy.load_full() {
        st.metrics
            .tool_lists
            .with_label_values(&[&p.label, result])
            .inc();
    }
}

/// An event stream passed through untouched, watched for `notifications/tools/list_changed`
/// (the answer to a POST that holds no `tools/list`). Only the last bytes of each chunk are
/// kept, so a notification split across chunks is still seen.
pub(super) struct WatchListChanged<B> {
    inner: B,
    st: Arc<State>,
    tail: Vec<u8>,
}

const NEEDLE_LEN: usize = "notifications/tools/list_changed".len();

impl<B> WatchListChanged<B> {
    pub(super) fn new(inner: B, st: Arc<State>) -> Self {
        WatchListChanged {
            inner,
            st,
            tail: Vec::new(),
        }
    }

    fn look(&mut self, chunk: &[u8]) {
        self.tail
            .extend_from_slice(&chunk[..chunk.len().min(NEEDLE_LEN)]);
        if crate::tools::announces_list_change(&self.tail)
            || crate::tools::announces_list_change(chunk)
        {
            self.st.tools.wake();
        }
        let keep = chunk.len().min(NEEDLE_LEN - 1);
        self.tail.clear();
        self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
    }
}

impl<B> Body for WatchListChanged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                self.look(&data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
