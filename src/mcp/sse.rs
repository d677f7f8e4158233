//! Server-sent events: an event splitter, and a body that passes a stream through event by event,
//! rewriting only the events that carry a `tools/list` result to be filtered.

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Length of the first complete event in `buf` (through its blank line), if there is one.
/// Lines end in `\n`, `\r\n` or `\r`; a `\r` at the very end may still become `\r\n`.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => 1,
            b'\r' if i + 1 < buf.len() => {
                if buf[i + 1] == b'\n' {
                    2
                } else {
                    1
                }
            }
            b'\r' => return None,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some(i + eol);
        }
        i += eol;
        line_start = i;
    }
    None
}

/// The lines of one event, without their terminators.
fn lines(event: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < event.len() {
        match event[i] {
            b'\n' => {
                out.push(&event[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                out.push(&event[start..i]);
                i += if event.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < event.len() {
        out.push(&event[start..]);
    }
    out
}

/// The data of an event (its `data:` lines joined by `\n`), if it has any.
pub fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in lines(event) {
        let value = if line == b"data" {
            Some(&b""[..])
        } else {
            line.strip_prefix(b"data:")
                .map(|v| v.strip_prefix(b" ").unwrap_or(v))
        };
        if let Some(v) = value {
            let d = data.get_or_insert_with(Vec::new);
            if !d.is_empty() {
                d.push(b'\n');
            }
            d.extend_from_slice(v);
        }
    }
    data
}

/// Rebuilds an event with new data, keeping its other fields (`event:`, `id:`, `retry:`).
fn with_data(event: &[u8], data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event.len() + data.len());
    let mut wrote = false;
    for line in lines(event) {
        if line.is_empty() {
            continue;
        }
        if line == b"data" || line.starts_with(b"data:") {
            if !wrote {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(data);
                out.push(b'\n');
                wrote = true;
            }
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// Decides what to do with one JSON message seen in a stream.
pub type Rewriter = Arc<dyn Fn(&mut Value) -> bool + Send + Sync>;

/// A body that forwards an SSE stream event by event; events whose data is a JSON message the
/// rewriter changes are re-encoded, every other byte passes unchanged.
pub struct RewriteEvents<B> {
    inner: B,
    buf: BytesMut,
    rewrite: Rewriter,
    done: bool,
}

impl<B> RewriteEvents<B> {
    pub fn new(inner: B, rewrite: Rewriter) -> Self {
        RewriteEvents {
            inner,
            buf: BytesMut::new(),
            rewrite,
            done: false,
        }
    }

    /// Every complete event in the buffer, rewritten where needed.
    fn drain_events(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buf) {
            let event = self.buf.split_to(end);
            let parsed = event_data(&event).and_then(|d| serde_json::from_slice::<Value>(&d).ok());
            if let Some(mut v) = parsed {
                if (self.rewrite)(&mut v) {
                    let data = serde_json::to_vec(&v).unwrap_or_default();
                    out.extend_from_slice(&with_data(&event, &data));
                    continue;
                }
            }
            out.extend_from_slice(&event);
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}

impl<B> Body for RewriteEvents<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.drain_events() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.done {
                // A stream cut mid-event: pass what is left as it was.
                if this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = this.buf.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            this.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.done = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn events_end_at_a_blank_line_with_any_line_ending() {
        assert_eq!(event_end(b"data: x\n\nrest"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\r\rz"), Some(9));
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(
            event_end(b"data: x\r\n\r"),
            None,
            "the last \\r may become \\r\\n"
        );
        assert_eq!(event_end(b"\n"), Some(1));
    }

    #[test]
    fn data_lines_are_joined() {
        assert_eq!(
            event_data(b"event: message\ndata: {\"a\":\ndata:1}\n\n").unwrap(),
            b"{\"a\":\n1}"
        );
        assert_eq!(event_data(b"id: 1\n\n"), None);
        assert_eq!(event_data(b"data\n\n").unwrap(), b"");
    }

    #[tokio::test]
    async fn a_stream_is_rewritten_event_by_event_across_chunk_boundaries() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = [
            "id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
            "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"a\"},",
            "{\"name\":\"hidden\"}]}}\r\n\r\n: comment\n\n",
        ]
        .into_iter()
        .map(|s| Ok(Frame::data(Bytes::from(s))))
        .collect();
        let stream = StreamBody::new(futures_stream(chunks));
        let rewrite: Rewriter = Arc::new(|v: &mut Value| {
            let Some(tools) = v.pointer_mut("/result/tools").and_then(Value::as_array_mut) else {
                return false;
            };
            tools.retain(|t| t["name"] != "hidden");
            true
        });
        let mut body = RewriteEvents::new(stream, rewrite);
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap());
        }
        assert_eq!(
            frames[0],
            "id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
            "the first event passes unchanged before the second arrives"
        );
        let rest = frames[1..].concat();
        assert_eq!(rest, "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n: comment\n\n");
    }

    fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::iter(items)
    }
}
