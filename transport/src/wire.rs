//! Frames over a socket: a buffered reader that checks each frame with
//! [`decode_frame`](crate::frame::decode_frame) before handing it out, and a bounded write.

use crate::error::FrameError;
use crate::frame::{decode_frame, Decoded, FRAME_HEADER_BYTES};
use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Smallest read: many small frames arrive per syscall.
const READ_BYTES_MIN: usize = 64 << 10;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads frames from `inner`; allocates at most one frame bound plus one read on top of
/// what is buffered.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, frame_bytes_max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            frame_bytes_max,
        }
    }

    /// Raises (or lowers) the payload bound, e.g. once the handshake has passed.
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        self.frame_bytes_max = frame_bytes_max;
    }

    /// The next frame if it is already whole in the buffer (no read).
    pub fn next_buffered(&mut self) -> Result<Option<(Bytes, usize)>, ReadError> {
        match decode_frame(&self.buf, self.frame_bytes_max)? {
            Decoded::Frame { frame_bytes, .. } => {
                let mut frame = self.buf.split_to(frame_bytes);
                frame.advance(FRAME_HEADER_BYTES);
                Ok(Some((frame.freeze(), frame_bytes)))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    /// The next frame's payload and its size on the wire, or `None` if the peer closed
    /// the connection between frames.
    pub async fn next(&mut self) -> Result<Option<(Bytes, usize)>, ReadError> {
        loop {
            match decode_frame(&self.buf, self.frame_bytes_max)? {
                Decoded::Frame { frame_bytes, .. } => {
                    let mut frame = self.buf.split_to(frame_bytes);
                    frame.advance(FRAME_HEADER_BYTES);
                    return Ok(Some((frame.freeze(), frame_bytes)));
                }
                Decoded::Incomplete { frame_bytes } => {
                    // frame_bytes is already checked against the bound by decode_frame.
                    let want = frame_bytes.unwrap_or(FRAME_HEADER_BYTES);
                    let missing = want.saturating_sub(self.buf.len());
                    self.buf.reserve(missing.max(READ_BYTES_MIN));
                    let n = self.inner.read_buf(&mut self.buf).await?;
                    if n == 0 {
                        if self.buf.is_empty() {
                            return Ok(None);
                        }
                        return Err(FrameError::Truncated.into());
                    }
                }
            }
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Writes all of `bytes`, failing with `TimedOut` if the peer does not take them in time.
pub(crate) async fn write_all_timeout<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, w.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "peer did not read in time",
        )),
    }
}
