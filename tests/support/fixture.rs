//! A fixture HTTP server on 127.0.0.1 serving in-memory images, with injectable faults and a
//! request log. One thread per connection, `Connection: close` on every response.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer this many requests with 503 first.
    pub fail_first: u32,
    /// Close the connection after this many body bytes, once.
    pub drop_after: Option<u64>,
    /// Answer every request with the whole body (200), as servers without `Range` support do.
    pub ignore_range: bool,
    /// Flip one byte in the middle of the body.
    pub corrupt: bool,
    /// Sleep this long per MiB sent (to make a transfer take a while).
    pub delay_per_mib: Duration,
    /// Answer HEAD with 405, as some download servers do.
    pub refuse_head: bool,
    /// Close every response after this many body bytes (a link that keeps dropping).
    pub drop_every: Option<u64>,
    /// Send the body with `Transfer-Encoding: chunked` instead of a `Content-Length`; a drop then
    /// closes the connection without the terminating chunk.
    pub chunked: bool,
    /// With `fail_first`: the 503s carry `Retry-After: N` (seconds).
    pub retry_after: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    pub body_bytes: u64,
    /// When the request arrived.
    pub at: std::time::Instant,
}

struct File {
    body: Arc<Vec<u8>>,
    etag: String,
    faults: Faults,
    dropped: bool,
}

#[derive(Default)]
struct State {
    files: HashMap<String, File>,
    /// path → the `Location` of a 302.
    redirects: HashMap<String, String>,
    log: Vec<LogEntry>,
}

pub struct Fixture {
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Fixture {
    pub fn start() -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = handle(stream, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fixture { base, state, stop }
    }

    pub fn add(&self, path: &str, body: Vec<u8>, faults: Faults) {
        let etag = format!(
            "\"{}\"",
            &labctl::checksum::Checksum::sha256(&body).hex()[..16]
        );
        self.state.lock().unwrap().files.insert(
            path.to_string(),
            File {
                body: Arc::new(body),
                etag,
                faults,
                dropped: false,
            },
        );
    }

    /// Answers `path` with `302 Found` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.state
            .lock()
            .unwrap()
            .redirects
            .insert(path.to_string(), location.to_string());
    }

    /// Stops serving `path` (it answers 404 from now on).
    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().files.remove(path);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Image bytes sent for `path` across all requests.
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.log()
            .iter()
            .filter(|e| e.path == path)
            .map(|e| e.body_bytes)
            .sum()
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let range = headers.get("range").cloned();
    let mut out = stream;
    let arrived = std::time::Instant::now();

    // Entries are logged when the response starts and their byte count is raised before each
    // chunk is written, so the log is complete by the time the client has read the body.
    let log = |status: u16, body_bytes: u64| -> usize {
        let mut st = state.lock().unwrap();
        st.log.push(LogEntry {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            status,
            body_bytes,
            at: arrived,
        });
        st.log.len() - 1
    };
    let add_bytes = |entry: usize, n: u64| {
        state.lock().unwrap().log[entry].body_bytes += n;
    };

    let redirect = state.lock().unwrap().redirects.get(&path).cloned();
    if let Some(location) = redirect {
        log(302, 0);
        write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }

    // Decide under the lock, send without it.
    let decision = {
        let mut st = state.lock().unwrap();
        match st.files.get_mut(&path) {
            None => None,
            Some(f) => {
                if f.faults.fail_first > 0 {
                    f.faults.fail_first -= 1;
                    Some(Err(f.faults.retry_after))
                } else {
                    let drop_after = if f.dropped { None } else { f.faults.drop_after };
                    let drop_after = drop_after.or(f.faults.drop_every);
                    if drop_after.is_some() {
                        f.dropped = true;
                    }
                    Some(Ok((
                        f.body.clone(),
                        f.etag.clone(),
                        f.faults.clone(),
                        drop_after,
                    )))
                }
            }
        }
    };
    let (body, etag, faults, drop_after) = match decision {
        None => {
            // Logged before the answer, like every response: a client that read it finds it
            // in the log.
            log(404, 0);
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(Err(retry_after)) => {
            let retry_after = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            log(503, 0);
            write!(out, "HTTP/1.1 503 Service Unavailable\r\n{retry_after}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
        Some(Ok(x)) => x,
    };

    if method == "HEAD" && faults.refuse_head {
        log(405, 0);
        write!(
            out,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let len = body.len() as u64;
    let if_range_ok = headers.get("if-range").is_none_or(|v| *v == etag);
    let requested = range
        .as_deref()
        .filter(|_| !faults.ignore_range && if_range_ok)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            let start: u64 = a.parse().ok()?;
            let end: u64 = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            Some((start, end.min(len - 1)))
        });
    let (status, start, end) = match requested {
        Some((s, e)) if s < len => (206, s, e),
        Some(_) => {
            write!(out, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            log(416, 0);
            return Ok(());
        }
        None => (200, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let framing = if faults.chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {count}")
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n{framing}\r\nETag: {etag}\r\nLast-Modified: Wed, 01 Jan 2025 00:00:00 GMT\r\nConnection: close\r\n",
        status,
        if status == 206 { "Partial Content" } else { "OK" }
    );
    if !faults.ignore_range {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    head.push_str("\r\n");
    let entry = log(status, 0);
    out.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }

    let mut sent = 0u64;
    let mut pos = start;
    let limit = drop_after.map(|d| d.min(count)).unwrap_or(count);
    let middle = len / 2;
    while sent < limit {
        let n = (64 * 1024).min(limit - sent);
        let mut chunk = body[pos as usize..(pos + n) as usize].to_vec();
        if faults.corrupt && (pos..pos + n).contains(&middle) {
            chunk[(middle - pos) as usize] ^= 0xff;
        }
        add_bytes(entry, n);
        let written = if faults.chunked {
            write!(out, "{:x}\r\n", chunk.len())
                .and_then(|()| out.write_all(&chunk))
                .and_then(|()| out.write_all(b"\r\n"))
        } else {
            out.write_all(&chunk)
        };
        if written.is_err() {
            break;
        }
        sent += n;
        pos += n;
        if !faults.delay_per_mib.is_zero() {
            std::thread::sleep(faults.delay_per_mib / 16);
        }
    }
    // A drop at or before the end leaves the terminating chunk out.
    let dropped = drop_after.is_some_and(|d| d <= count);
    if faults.chunked && sent == count && !dropped {
        let _ = out.write_all(b"0\r\n\r\n");
    }
    let _ = out.flush();
    // A drop: close with the body incomplete.
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}
