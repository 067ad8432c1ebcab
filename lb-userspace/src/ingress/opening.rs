//! How a client connection opens: HTTP/2's connection preface or anything
//! else (HTTP/1.1), read from the stream, and the stream that gives the
//! bytes read back before the rest, so that hyper sees the connection
//! whole. Reading (not peeking) waits for each new byte without spinning,
//! and the caller's timeout bounds a client that sends nothing.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes were read already: they are read again first.
pub struct Replay<S> {
    read: Vec<u8>,
    at: usize,
    inner: S,
}

/// Reads until the bytes are HTTP/2's preface or cannot be (the first
/// differing byte, or the end), for at most `within`: whether it is
/// HTTP/2, and the stream.
pub async fn open<S: AsyncRead + Unpin>(stream: S, within: Duration) -> io::Result<(bool, Replay<S>)> {
    match tokio::time::timeout(within, read_opening(stream)).await {
        Ok(opened) => opened,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing sent in {within:?}"))),
    }
}

async fn read_opening<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<(bool, Replay<S>)> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    let h2 = loop {
        let n = stream.read(&mut buf[..PREFACE.len() - read.len()]).await?;
        read.extend_from_slice(&buf[..n]);
        if n == 0 || read[..] != PREFACE[..read.len()] {
            break false;
        }
        if read.len() == PREFACE.len() {
            break true;
        }
    };
    Ok((h2, Replay { read, at: 0, inner: stream }))
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `open` decides for `sent`, and what the reader then reads.
    async fn opened(sent: &[u8]) -> (bool, Vec<u8>) {
        let (client, server) = tokio::io::duplex(64);
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, sent).await.unwrap();
        drop(client);
        let (h2, mut stream) = open(server, Duration::from_secs(1)).await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn the_preface_is_http2_anything_else_http1_and_every_byte_is_read_again() {
        let h2 = [PREFACE, b"\x00\x00\x00\x04"].concat();
        assert_eq!(opened(&h2).await, (true, h2.clone()));
        let h1 = b"GET / HTTP/1.0\r\n\r\n".to_vec();
        assert_eq!(opened(&h1).await, (false, h1.clone()), "a short request is not held back");
        assert_eq!(opened(b"PRI * HTTP/1.1\r\n").await, (false, b"PRI * HTTP/1.1\r\n".to_vec()));
        assert_eq!(opened(b"PRI").await, (false, b"PRI".to_vec()), "closed mid-preface");
        assert_eq!(opened(b"").await, (false, Vec::new()));
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let err = open(server, Duration::from_millis(10)).await.err().expect("no opening");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
