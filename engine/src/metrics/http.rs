//! The metrics endpoint: a small HTTP/1.1 server that answers
//! `GET /metrics` (and `HEAD`) with the text `render` makes, `404` for
//! other paths and `405` for other methods, one request per connection.
//!
//! It reads at most [`MAX_REQUEST`] bytes of a request head, for at most
//! [`REQUEST_TIMEOUT`], and ignores any body: nothing a client sends can
//! make it allocate more or wait longer. It never serves anything but
//! what `render` returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::CONTENT_TYPE;

/// Longest request head read.
pub const MAX_REQUEST: usize = 8 << 10;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves: called once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let render = render.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &render).await {
                            debug!(error = %e, "metrics request");
                        }
                    });
                }
                // Out of file descriptors and the like: try again shortly.
                Err(e) => {
                    debug!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Bind `addr` and serve on a task of its own until `shutdown`; answers
/// the bound address.
pub async fn spawn(
    addr: std::net::SocketAddr,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, render, shutdown));
    Ok(bound)
}

async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, body) = respond(&head, render);
    let head_only = head.starts_with(b"HEAD ");
    let content_type = if status == "200 OK" {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// The request head, up to the blank line (or what came of it).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_REQUEST && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n.min(MAX_REQUEST - buf.len())]);
    }
    Ok(buf)
}

/// Status line and body for a request head.
fn respond(head: &[u8], render: &Render) -> (&'static str, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_get_metrics_and_refuses_the_rest() {
        let render: Render = Arc::new(|| "# TYPE x counter\nx 1\n".to_string());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = spawn("127.0.0.1:0".parse().unwrap(), render, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 21\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# TYPE x counter\nx 1\n"), "{ok}");
        let q = request(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let head = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let missing = request(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = request(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let junk = request(addr, &[0xff; 4_000]).await;
        assert!(junk.starts_with("HTTP/1.1 405 "), "{junk}");
        stop.send(()).unwrap();
    }
}
