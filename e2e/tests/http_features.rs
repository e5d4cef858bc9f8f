//! What Sōzu's HTTP users bring, through the real binary: `https_redirect`
//! (a 301 to `https://`), sticky sessions (the `SOZUBALANCEID` cookie),
//! custom 404 / 503 answers from files, WebSocket (an `Upgrade` relayed,
//! then frames both ways after the 101), and `REGEX` path rules.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use sozu_e2e::http::{read_head, read_request_head, request, Answer, HttpConfig};
use sozu_e2e::ports::free_v4;
use sozu_e2e::stream::{http_get, NamedHttpBackend, ANSWER_WAIT};
use sozu_e2e::Sozu;

#[test]
fn https_redirect_answers_301_to_the_same_host_and_path() {
    let web = NamedHttpBackend::start("web");
    let plain = NamedHttpBackend::start("plain");
    let front = free_v4();
    let sozu = HttpConfig::new(front)
        .cluster_with(
            "secure",
            "secure.example.com",
            &[web.addr()],
            "https_redirect = true",
        )
        .cluster_with(
            "ported",
            "ported.example.com",
            &[web.addr()],
            "https_redirect = true\nhttps_redirect_port = 8443",
        )
        .cluster("plain", "plain.example.com", &[plain.addr()])
        .start();
    let answer = request(
        front,
        &format!("secure.example.com:{}", front.port()),
        "/a/b?c=d",
        "",
    );
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some("https://secure.example.com/a/b?c=d"),
        "{answer:?}"
    );
    let answer = request(front, "ported.example.com", "/x", "");
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some("https://ported.example.com:8443/x")
    );
    // The positive side: a cluster without the flag is served.
    assert_eq!(
        http_get(front, "plain.example.com", "/"),
        Ok((200, "backend=plain".to_owned()))
    );
    // The flag is listed as set.
    let listed = sozu.cli_ok(&["cluster", "list", "-i", "secure"]).stdout;
    assert!(listed.contains("https_redirect=true"), "{listed}");
}

/// The value of the `SOZUBALANCEID` cookie an answer sets.
fn sticky_cookie(answer: &Answer) -> Option<String> {
    let set = answer.header("set-cookie")?;
    let pair = set.split(';').next()?;
    let (name, value) = pair.split_once('=')?;
    (name == "SOZUBALANCEID").then(|| value.to_owned())
}

#[test]
fn sticky_sessions_pin_a_client_and_rebalance_a_removed_backend() {
    let backends: Vec<NamedHttpBackend> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| NamedHttpBackend::start(n))
        .collect();
    let front = free_v4();
    let sozu = HttpConfig::new(front)
        .cluster_table(
            "web",
            &format!(
                r#"sticky_session = true
frontends = [{{ address = "{front}", hostname = "example.com" }}]
backends = [
  {{ address = "{b1}", backend_id = "b1", sticky_id = "one" }},
  {{ address = "{b2}", backend_id = "b2" }},
  {{ address = "{b3}", backend_id = "b3" }},
]"#,
                b1 = backends[0].addr(),
                b2 = backends[1].addr(),
                b3 = backends[2].addr(),
            ),
        )
        .start();
    // Without the cookie: balanced, and each answer names its backend in
    // the cookie (b1 by its sticky_id).
    let mut spread = BTreeMap::new();
    let mut cookie_of = BTreeMap::new();
    for _ in 0..20 {
        let answer = request(front, "example.com", "/", "");
        assert_eq!(answer.status, 200, "{answer:?}");
        let cookie = sticky_cookie(&answer).unwrap_or_else(|| panic!("no cookie: {answer:?}"));
        cookie_of.insert(answer.body.clone(), cookie);
        *spread.entry(answer.body).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        3,
        "round robin reaches every backend: {spread:?}"
    );
    assert_eq!(cookie_of["backend=b1"], "one");
    assert_eq!(cookie_of["backend=b2"], "b2");

    // With the cookie: 20 requests, one backend, no new cookie.
    for _ in 0..20 {
        let answer = request(
            front,
            "example.com",
            "/",
            "Cookie: a=1; SOZUBALANCEID=b2\r\n",
        );
        assert_eq!(answer.body, "backend=b2", "{answer:?}");
        assert_eq!(sticky_cookie(&answer), None, "already stamped");
    }
    for _ in 0..5 {
        let answer = request(front, "example.com", "/", "Cookie: SOZUBALANCEID=one\r\n");
        assert_eq!(answer.body, "backend=b1", "{answer:?}");
    }

    // Its backend removed: balanced to another one, and re-stamped.
    sozu.backend_remove("web", "b2", &backends[1].addr().to_string());
    for _ in 0..6 {
        let answer = request(front, "example.com", "/", "Cookie: SOZUBALANCEID=b2\r\n");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_ne!(answer.body, "backend=b2", "{answer:?}");
        let expected = if answer.body == "backend=b1" {
            "one"
        } else {
            "b3"
        };
        assert_eq!(sticky_cookie(&answer).as_deref(), Some(expected));
    }
}

#[test]
fn custom_404_and_503_answers_are_served_from_files_with_their_length() {
    let web = NamedHttpBackend::start("web");
    let dir = Sozu::temp_dir();
    let not_found = dir.path().join("404.html");
    let unavailable = dir.path().join("503.http");
    std::fs::write(&not_found, "<h1>Nothing here, sorry</h1>\n").unwrap();
    // A whole response as Sōzu's answer files are, with a wrong length
    // and LF line ends: the proxy writes the right length.
    std::fs::write(
        &unavailable,
        "HTTP/1.1 503 Service Unavailable\nContent-Type: text/plain\nContent-Length: 3\nRetry-After: 5\n\nback in five minutes\n",
    )
    .unwrap();
    let front = free_v4();
    let config = HttpConfig::new(front)
        .listener(&format!(
            "answer_404 = {:?}",
            not_found.display().to_string()
        ))
        .cluster("web", "example.com", &[web.addr()])
        .cluster_with(
            "empty",
            "empty.example.com",
            &[],
            &format!("answer_503 = {:?}", unavailable.display().to_string()),
        );
    let _sozu = Sozu::start_in(dir, config.sozu_config());
    let answer = request(front, "unknown.example.org", "/", "");
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body, "<h1>Nothing here, sorry</h1>\n");
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let answer = request(front, "empty.example.com", "/", "");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, "back in five minutes\n");
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert_eq!(answer.header("content-length"), Some("21"));
    // The positive side: a routed request still reaches its backend.
    assert_eq!(
        http_get(front, "example.com", "/"),
        Ok((200, "backend=web".to_owned()))
    );
}

/// A WebSocket backend: answers the upgrade with a 101, sends a text
/// frame `hello from backend`, then answers each masked client text frame
/// with an unmasked one carrying the payload uppercased.
fn websocket_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let Some(head) = read_request_head(&mut reader) else {
                    return;
                };
                let upgrade = head
                    .values("upgrade")
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case("websocket"));
                if !upgrade {
                    let _ = writer.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = writer.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                let _ = writer.write_all(&server_frame(b"hello from backend"));
                while let Some(payload) = read_client_frame(&mut reader) {
                    let upper = payload.to_ascii_uppercase();
                    if writer.write_all(&server_frame(&upper)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// An unmasked text frame (server to client), payload under 126 bytes.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// A masked text frame (client to server), payload under 126 bytes.
fn client_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn read_client_frame(reader: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 6];
    reader.read_exact(&mut head).ok()?;
    let len = usize::from(head[1] & 0x7f);
    let mask = [head[2], head[3], head[4], head[5]];
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).ok()?;
    Some(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect(),
    )
}

fn read_server_frame(reader: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).map_err(|e| e.to_string())?;
    if head[0] != 0x81 {
        return Err(format!("not a text frame: {head:?}"));
    }
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
    Ok(payload)
}

#[test]
fn websocket_upgrade_is_relayed_then_frames_flow_both_ways() {
    let backend = websocket_backend();
    let front = free_v4();
    let _sozu = HttpConfig::new(front)
        .listener("front_timeout = 30")
        .cluster("ws", "ws.example.com", &[backend])
        .start();
    let mut stream = TcpStream::connect(front).unwrap();
    stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (status, headers) = read_head(&mut reader).unwrap();
    assert_eq!(status, 101, "{headers:?}");
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "upgrade" && v.eq_ignore_ascii_case("websocket")),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "sec-websocket-accept" && v == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{headers:?}"
    );
    // The backend speaks first, then answers each frame: both ways, on one
    // connection, several times.
    assert_eq!(
        read_server_frame(&mut reader).unwrap(),
        b"hello from backend"
    );
    for (i, word) in ["ping", "websocket through sozu", "third"]
        .iter()
        .enumerate()
    {
        stream
            .write_all(&client_frame(word.as_bytes(), [1, 2, 3, i as u8]))
            .unwrap();
        assert_eq!(
            read_server_frame(&mut reader).unwrap(),
            word.to_ascii_uppercase().as_bytes()
        );
    }
}

#[test]
fn regex_routes_are_matched_and_a_bad_pattern_is_refused_by_name() {
    let api = NamedHttpBackend::showing_path("api");
    let web = NamedHttpBackend::showing_path("web");
    let front = free_v4();
    let sozu = HttpConfig::new(front)
        .cluster_table(
            "api",
            &format!(
                r#"frontends = [{{ address = "{front}", hostname = "example.com", path_type = "REGEX", path = "^/api/v[0-9]+/" }}]
backends = [{{ address = "{api}" }}]"#,
                api = api.addr(),
            ),
        )
        .cluster_table(
            "web",
            &format!(
                r#"frontends = [{{ address = "{front}", hostname = "example.com", path = "/" }}]
backends = [{{ address = "{web}" }}]"#,
                web = web.addr(),
            ),
        )
        .start();
    assert_eq!(
        http_get(front, "example.com", "/api/v2/users"),
        Ok((200, "backend=api path=/api/v2/users".to_owned()))
    );
    assert_eq!(
        http_get(front, "example.com", "/api/vx/users"),
        Ok((200, "backend=web path=/api/vx/users".to_owned()))
    );
    // Added live: a second regex route.
    let address = front.to_string();
    sozu.cli_ok(&[
        "http",
        "frontend",
        "add",
        "-i",
        "api",
        "-a",
        &address,
        "--hostname",
        "example.com",
        "--path-regex",
        r"\.json$",
    ]);
    assert_eq!(
        http_get(front, "example.com", "/data/x.json"),
        Ok((200, "backend=api path=/data/x.json".to_owned()))
    );
    // A pattern that does not compile: refused, naming the field and value.
    let out = sozu.cli(&[
        "http",
        "frontend",
        "add",
        "-i",
        "api",
        "-a",
        &address,
        "--hostname",
        "example.com",
        "--path-regex",
        "/(unclosed",
    ]);
    assert!(!out.success(), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("path.value \"/(unclosed\"") && said.contains("regular expression"),
        "{said}"
    );
    // Nothing of it was kept: the routes still answer as before.
    assert_eq!(
        http_get(front, "example.com", "/api/v3/"),
        Ok((200, "backend=api path=/api/v3/".to_owned()))
    );
}
