//! Server-sent events: an event splitter, and a body that passes a stream through event by event,
//! rewriting only the events that carry a `tools/list` result to be filtered.

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Splits a byte stream into SSE events. Each byte is scanned once however the stream is
/// chunked, and an event may not grow past a limit: what cannot be held whole is refused.
pub struct Splitter {
    buf: BytesMut,
    /// Bytes of `buf` already scanned, and where the line being scanned starts.
    pos: usize,
    line_start: usize,
    max_event: usize,
}

/// An event longer than the splitter's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl Splitter {
    pub fn new(max_event: usize) -> Splitter {
        Splitter {
            buf: BytesMut::new(),
            pos: 0,
            line_start: 0,
            max_event,
        }
    }

    pub fn push(&mut self, mut data: impl Buf) {
        while data.has_remaining() {
            let n = data.chunk().len();
            self.buf.extend_from_slice(data.chunk());
            data.advance(n);
        }
    }

    /// The next complete event (through its blank line). Lines end in `\n`, `\r\n` or `\r`; a
    /// `\r` at the very end may still become `\r\n`, so it waits for the next byte.
    pub fn next_event(&mut self) -> Result<Option<BytesMut>, TooLarge> {
        let b = &self.buf[..];
        let mut i = self.pos;
        while i < b.len() {
            let eol = match b[i] {
                b'\n' => 1,
                b'\r' if i + 1 < b.len() => 1 + usize::from(b[i + 1] == b'\n'),
                b'\r' => break,
                _ => {
                    i += 1;
                    continue;
                }
            };
            if i == self.line_start {
                let event = self.buf.split_to(i + eol);
                self.pos = 0;
                self.line_start = 0;
                return Ok(Some(event));
            }
            i += eol;
            self.line_start = i;
        }
        self.pos = i;
        if self.buf.len() > self.max_event {
            return Err(TooLarge(self.max_event));
        }
        Ok(None)
    }

    /// What is left after the last complete event.
    pub fn take_rest(&mut self) -> BytesMut {
        self.pos = 0;
        self.line_start = 0;
        self.buf.split()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Every complete event, each replaced by what `rewrite` returns (`None` keeps it). An event
    /// over the limit is replaced by a `message` event holding `refuse(limit, data)`, where
    /// `data` is the start of the refused event's data (its first [`REFUSED_PREFIX`] bytes read),
    /// and `true` says the stream must end there.
    pub fn drain(
        &mut self,
        mut rewrite: impl FnMut(&[u8]) -> Option<Bytes>,
        refuse: impl FnOnce(usize, &[u8]) -> Vec<u8>,
    ) -> (Option<Bytes>, bool) {
        let mut out = BytesMut::new();
        let mut end = false;
        loop {
            match self.next_event() {
                Ok(Some(event)) => match rewrite(&event) {
                    Some(new) => out.extend_from_slice(&new),
                    None => out.extend_from_slice(&event),
                },
                Ok(None) => break,
                Err(TooLarge(limit)) => {
                    let rest = self.take_rest();
                    let start = &rest[..rest.len().min(REFUSED_PREFIX)];
                    let data = event_data(start).unwrap_or_default();
                    end = true;
                    out.extend_from_slice(&message_event(&refuse(limit, &data)));
                    break;
                }
            }
        }
        ((!out.is_empty()).then(|| out.freeze()), end)
    }
}

/// How much of an event over the limit is read to say what it was (its JSON-RPC id).
pub const REFUSED_PREFIX: usize = 64 << 10;

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

/// The event's type (its `event:` field), if it names one.
pub fn event_name(event: &[u8]) -> Option<String> {
    lines(event)
        .into_iter()
        .find_map(|l| l.strip_prefix(b"event:"))
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

/// Rebuilds an event with new data, keeping its other fields (`event:`, `id:`, `retry:`).
pub fn with_data(event: &[u8], data: &[u8]) -> Bytes {
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

/// A `message` event holding `data`.
pub fn message_event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What a stream does with the events that pass through it.
pub trait Rewrite: Send + Sync {
    /// New data for an event, or `None` to pass it unchanged.
    fn data(&self, data: &[u8]) -> Option<Vec<u8>>;
    /// The data of the event sent in place of one over `limit` bytes, given the start of its
    /// data; the stream ends after it.
    fn too_large(&self, limit: usize, start: &[u8]) -> Vec<u8>;
    /// Whether bytes left unterminated when the stream ends may be passed on.
    fn pass_rest(&self, rest: &[u8]) -> bool;
}

/// Applies `rewrite` to one complete event.
pub fn rewrite_event(rewrite: &dyn Rewrite, event: &[u8]) -> Option<Bytes> {
    let data = event_data(event)?;
    let new = rewrite.data(&data)?;
    Some(with_data(event, &new))
}

/// A body that forwards an SSE stream event by event; events the rewriter changes are re-encoded,
/// every other byte passes unchanged.
pub struct RewriteEvents<B> {
    inner: B,
    split: Splitter,
    rewrite: Arc<dyn Rewrite>,
    done: bool,
}

impl<B> RewriteEvents<B> {
    pub fn new(inner: B, rewrite: Arc<dyn Rewrite>, max_event: usize) -> Self {
        RewriteEvents {
            inner,
            split: Splitter::new(max_event),
            rewrite,
            done: false,
        }
    }

    /// Every complete event in the buffer, rewritten where needed.
    fn drain_events(&mut self) -> Option<Bytes> {
        let rewrite = &*self.rewrite;
        let (out, end) = self.split.drain(
            |event| rewrite_event(rewrite, event),
            |limit, start| rewrite.too_large(limit, start),
        );
        self.done |= end;
        out
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
                // A stream cut mid-event: clients discard an unterminated event; pass it only
                // when it cannot hold a tool list.
                let rest = this.split.take_rest();
                if rest.is_empty() || !this.rewrite.pass_rest(&rest) {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.split.push(data),
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
        self.done && self.split.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use serde_json::Value;

    /// Length of the first event when `input` arrives in chunks of `chunk` bytes.
    fn first_event(input: &[u8], chunk: usize) -> Option<usize> {
        let mut sp = Splitter::new(1 << 20);
        for c in input.chunks(chunk) {
            sp.push(c);
            if let Some(e) = sp.next_event().unwrap() {
                return Some(e.len());
            }
        }
        None
    }

    #[test]
    fn events_end_at_a_blank_line_with_any_line_ending_however_chunked() {
        for chunk in [1, 2, 3, 100] {
            assert_eq!(first_event(b"data: x\n\nrest", chunk), Some(9));
            assert_eq!(first_event(b"data: x\r\n\r\n", chunk), Some(11));
            assert_eq!(first_event(b"data: x\r\rz", chunk), Some(9));
            assert_eq!(first_event(b"data: x\n", chunk), None);
            assert_eq!(
                first_event(b"data: x\r\n\r", chunk),
                None,
                "the last \\r may become \\r\\n"
            );
            assert_eq!(first_event(b"\n", chunk), Some(1));
        }
        let mut sp = Splitter::new(1 << 20);
        sp.push(&b"data: 1\n\ndata: 2\r\n\r\nda"[..]);
        assert_eq!(&sp.next_event().unwrap().unwrap()[..], b"data: 1\n\n");
        assert_eq!(&sp.next_event().unwrap().unwrap()[..], b"data: 2\r\n\r\n");
        assert_eq!(sp.next_event().unwrap(), None);
        assert_eq!(&sp.take_rest()[..], b"da");
    }

    #[test]
    fn an_event_over_the_limit_is_refused() {
        let mut sp = Splitter::new(64);
        sp.push(&b"data: "[..]);
        for _ in 0..10 {
            sp.push(&[b'x'; 10][..]);
        }
        assert_eq!(sp.next_event(), Err(TooLarge(64)));
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
        struct Hide;
        impl Rewrite for Hide {
            fn data(&self, data: &[u8]) -> Option<Vec<u8>> {
                let mut v: Value = serde_json::from_slice(data).ok()?;
                let tools = v.pointer_mut("/result/tools")?.as_array_mut()?;
                tools.retain(|t| t["name"] != "hidden");
                Some(serde_json::to_vec(&v).unwrap())
            }
            fn too_large(&self, _: usize, _: &[u8]) -> Vec<u8> {
                b"{}".to_vec()
            }
            fn pass_rest(&self, _: &[u8]) -> bool {
                true
            }
        }
        let mut body = RewriteEvents::new(stream, Arc::new(Hide), 1 << 20);
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
