//! A proxy in front of an S3 test server that answers chosen requests with 503, so tests see
//! the SDK's retries work against a real server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Requests whose request line contains the pattern get 503 while `remaining > 0`.
    rules: Vec<(String, u32)>,
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
        self.state
            .lock()
            .unwrap()
            .rules
            .push((pattern.to_string(), times));
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
            .find(|(p, n)| *n > 0 && request_line.contains(p.as_str()));
        match hit {
            Some((_, n)) => {
                *n -= 1;
                st.injected += 1;
                true
            }
            None => false,
        }
    };
    if inject {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>injected by the test proxy</Message></Error>";
        write!(
            out,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
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
