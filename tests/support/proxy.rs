//! A proxy in front of an S3 test server that answers chosen requests with an S3 error (503 by
//! default), so tests see the SDK's retries — and a store's refusals — against a real server;
//! or holds them a while before passing them on, as a store does with a server-side copy of
//! many GiB.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Rule {
    pattern: String,
    remaining: u32,
    action: Action,
}

#[derive(Clone, Copy)]
enum Action {
    Refuse { status: u16, code: &'static str },
    Stall(Duration),
}

#[derive(Default)]
struct State {
    /// Requests whose request line contains the pattern get the error while `remaining > 0`.
    rules: Vec<Rule>,
    injected: u32,
    requests: Vec<String>,
}

pub struct Proxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, up) = (s.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = relay(stream, &up, &s);
                });
            }
        });
        Proxy { endpoint, state }
    }

    /// Answer the next `times` requests whose request line contains `pattern` with 503.
    pub fn fail(&self, pattern: &str, times: u32) {
        self.refuse(pattern, times, 503, "ServiceUnavailable");
    }

    /// Answer the next `times` requests whose request line contains `pattern` with an S3 error
    /// `code` and HTTP `status` (e.g. 403 AccessDenied, as a bucket policy would).
    pub fn refuse(&self, pattern: &str, times: u32, status: u16, code: &'static str) {
        self.state.lock().unwrap().rules.push(Rule {
            pattern: pattern.to_string(),
            remaining: times,
            action: Action::Refuse { status, code },
        });
    }

    /// Hold the next `times` requests whose request line contains `pattern` for `delay`, then
    /// pass them on (the client may have given up by then: the request still reaches the
    /// server, as a copy the server already accepted would).
    pub fn stall(&self, pattern: &str, times: u32, delay: Duration) {
        self.state.lock().unwrap().rules.push(Rule {
            pattern: pattern.to_string(),
            remaining: times,
            action: Action::Stall(delay),
        });
    }

    pub fn injected(&self) -> u32 {
        self.state.lock().unwrap().injected
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn relay(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut head = Vec::new();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or((&line, ""));
        let key = k.trim().to_ascii_lowercase();
        headers.insert(key.clone(), v.trim().to_string());
        if key == "connection" || key == "expect" {
            continue;
        }
        head.push(line);
    }
    let mut out = client;
    if headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "the proxy handles Content-Length bodies only"
    );
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;

    let inject = {
        let mut st = state.lock().unwrap();
        st.requests.push(request_line.trim().to_string());
        let hit = st
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && request_line.contains(r.pattern.as_str()));
        let action = hit.map(|rule| {
            rule.remaining -= 1;
            rule.action
        });
        if action.is_some() {
            st.injected += 1;
        }
        action
    };
    if let Some(Action::Stall(delay)) = inject {
        std::thread::sleep(delay);
    }
    if let Some(Action::Refuse { status, code }) = inject {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>");
        write!(
            out,
            "HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(request_line.as_bytes())?;
    for line in &head {
        up.write_all(line.as_bytes())?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut out)?;
    Ok(())
}
