//! Custom answers as Sōzu 2.x writes them, through the real binary: the
//! template variables (`%ROUTE`, `%REQUEST_ID`, `%CLUSTER_ID`, `%MESSAGE`,
//! `%REDIRECT_LOCATION`…) spliced in and escaped, the `answers` tables of
//! listeners and clusters; the sticky cookie kept from backends;
//! `cluster add --https-redirect-port`; and the `redirect` /
//! `redirect_scheme` fields of Sōzu's HTTP frontends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use sozu_command_lib::command::{self, request::RequestType};
use sozu_e2e::http::{read_head, request, Answer, HttpConfig, RecordingHttpBackend, RequestHead};
use sozu_e2e::ports::free_v4;
use sozu_e2e::sozu::http_frontend_args;
use sozu_e2e::stream::{http_get, NamedHttpBackend, ANSWER_WAIT};
use sozu_e2e::wait::wait_until;
use sozu_e2e::Sozu;

/// Like [`request`], then checks the answer was exactly Content-Length
/// long: the connection ends right after it.
fn request_to_end(proxy: SocketAddr, host: &str, path: &str) -> (Answer, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("the answer, then the close");
    let mut rest = &all[..];
    let (status, headers) = read_head(&mut rest).expect("a head");
    let answer = Answer {
        status,
        headers,
        body: String::from_utf8_lossy(rest).into_owned(),
    };
    (answer, all)
}

#[test]
fn answer_templates_splice_escaped_request_values_with_an_exact_length() {
    let web = NamedHttpBackend::start("web");
    let dir = Sozu::temp_dir();
    let unavailable = dir.path().join("503.http");
    std::fs::write(
        &unavailable,
        "HTTP/1.1 503 Service Unavailable\nSozu-Id: %REQUEST_ID\n\ncluster=%CLUSTER_ID message=%MESSAGE unknown=%NOPE\n",
    )
    .unwrap();
    let moved = dir.path().join("301.http");
    std::fs::write(
        &moved,
        "HTTP/1.1 301 Moved Permanently\nLocation: %REDIRECT_LOCATION\n\ngo to %REDIRECT_LOCATION\n",
    )
    .unwrap();
    let front = free_v4();
    let config = HttpConfig::new(front)
        .listener(&format!(
            r#"answer_301 = {moved:?}

[listeners.answers]
404 = "inline:HTTP/1.1 404 Not Found\nX-Route: %ROUTE\nSozu-Id: %REQUEST_ID\n\n<p>%ROUTE (%REQUEST_ID)</p>""#,
            moved = moved.display().to_string(),
        ))
        .cluster("web", "example.com", &[web.addr()])
        .cluster_with(
            "empty",
            "empty.example.com",
            &[],
            &format!(
                "\n[clusters.empty.answers]\n503 = {:?}",
                unavailable.display().to_string()
            ),
        )
        .cluster_with(
            "secure",
            "secure.example.com",
            &[web.addr()],
            "https_redirect = true\nhttps_redirect_port = 8443",
        );
    let _sozu = Sozu::start_in(dir, config.sozu_config());

    // 404 from the listener's table: the route in a header and (escaped)
    // in the body, the length that of the spliced body, then the close.
    let (answer, raw) = request_to_end(front, "nowhere.example.org", "/a<b>&c");
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.header("x-route"), Some("nowhere.example.org/a<b>&c"));
    let id = answer.header("sozu-id").expect("a request id").to_owned();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        answer.body,
        format!("<p>nowhere.example.org/a&lt;b&gt;&amp;c ({id})</p>")
    );
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str()),
        "{raw:?}"
    );
    // Each answer has its own id.
    let (again, _) = request_to_end(front, "nowhere.example.org", "/");
    assert_ne!(again.header("sozu-id"), Some(id.as_str()), "{again:?}");

    // 503 from the cluster's table: cluster id and message; an unknown
    // variable stays as written.
    let answer = request(front, "empty.example.com", "/", "");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(
        answer.body,
        "cluster=empty message=No backend is available for this cluster. unknown=%NOPE\n"
    );
    assert!(answer.header("sozu-id").is_some_and(|v| !v.is_empty()));

    // The listener's 301 answer carries the https_redirect location.
    let answer = request(front, "secure.example.com", "/x?y=1", "");
    assert_eq!(answer.status, 301, "{answer:?}");
    let location = "https://secure.example.com:8443/x?y=1";
    assert_eq!(answer.header("location"), Some(location));
    assert_eq!(answer.body, format!("go to {location}\n"));

    // The positive side: a routed request reaches its backend.
    assert_eq!(
        http_get(front, "example.com", "/"),
        Ok((200, "backend=web".to_owned()))
    );
}

/// The body of the cookie-recording backend: the `Cookie` headers it got,
/// one per line, `-` when none.
/// The id an error page shows (`%REQUEST_ID`) finds the request's access
/// record; a forwarded answer's record has none.
#[test]
fn the_request_id_of_an_answer_is_in_its_access_record() {
    let web = NamedHttpBackend::start("web");
    let dir = Sozu::temp_dir();
    let log = dir.path().join("access.log");
    let front = free_v4();
    let http = HttpConfig::new(front)
        .listener(
            r#"
[listeners.answers]
404 = "inline:HTTP/1.1 404 Not Found\nSozu-Id: %REQUEST_ID\n\nsorry (%REQUEST_ID)""#,
        )
        .cluster("web", "example.com", &[web.addr()]);
    let mut config = http.sozu_config();
    config.extra = format!(
        "access_logs_target = \"file://{}\"\naccess_logs_format = \"json\"\n{}",
        log.display(),
        config.extra
    );
    let sozu = Sozu::start_in(dir, config);

    let (answer, _) = request_to_end(front, "nowhere.example.org", "/lost");
    assert_eq!(answer.status, 404, "{answer:?}");
    let id = answer.header("sozu-id").expect("a request id").to_owned();
    let (status, _) = http_get(front, "example.com", "/found").expect("an answer");
    assert_eq!(status, 200);

    let records = |path: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|r| r["path"] == path)
            .collect()
    };
    let lost = wait_until("the 404's record", ANSWER_WAIT, || records("/lost").pop());
    assert_eq!(lost["outcome"], "no_route", "{lost}");
    assert_eq!(
        lost["request_id"],
        id.as_str(),
        "{lost}\n{}",
        sozu.log_tail(10)
    );
    let found = wait_until("the 200's record", ANSWER_WAIT, || records("/found").pop());
    assert_eq!(found["outcome"], "backend", "{found}");
    assert!(found["request_id"].is_null(), "{found}");
}

fn cookies_body(head: &RequestHead) -> String {
    let cookies = head.values("cookie");
    if cookies.is_empty() {
        "-".to_owned()
    } else {
        cookies.join("\n")
    }
}

#[test]
fn the_sticky_cookie_never_reaches_the_backend_other_cookies_do() {
    let backend = RecordingHttpBackend::start(cookies_body);
    let front = free_v4();
    let _sozu = HttpConfig::new(front)
        .listener(r#"sticky_name = "STICKY""#)
        .cluster_table(
            "web",
            &format!(
                r#"sticky_session = true
frontends = [{{ address = "{front}", hostname = "example.com" }}]
backends = [{{ address = "{backend}", backend_id = "b1" }}]"#,
                backend = backend.addr(),
            ),
        )
        .start();
    let wait = |what: &str| backend.next_request(what).values("cookie");
    // The sticky cookie among others: only it is taken out, and it still
    // pins the request (no new cookie stamped).
    let answer = request(
        front,
        "example.com",
        "/",
        "Cookie: a=1; STICKY=b1; c=3\r\nCookie: d=4\r\n",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(wait("mixed"), vec!["a=1; c=3", "d=4"]);
    assert_eq!(answer.header("set-cookie"), None, "{answer:?}");
    // Alone: the Cookie header goes with it.
    let answer = request(front, "example.com", "/", "Cookie: STICKY=b1\r\n");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "-");
    assert!(wait("alone").is_empty());
    // Without it: the client's cookies untouched, the answer stamps one.
    let answer = request(front, "example.com", "/", "Cookie: SOZUBALANCEID=x\r\n");
    assert_eq!(wait("other"), vec!["SOZUBALANCEID=x"]);
    assert_eq!(answer.header("set-cookie"), Some("STICKY=b1; Path=/"));
}

#[test]
fn cluster_add_takes_the_https_redirect_port() {
    let web = NamedHttpBackend::start("web");
    let front = free_v4();
    let sozu = HttpConfig::new(front).start();
    let refused = sozu.cli(&["cluster", "add", "-i", "s", "--https-redirect-port", "8443"]);
    assert!(!refused.success(), "needs --https-redirect: {refused:?}");
    sozu.cli_ok(&[
        "cluster",
        "add",
        "-i",
        "s",
        "--https-redirect",
        "--https-redirect-port",
        "8443",
    ]);
    let listener = front.to_string();
    sozu.cli_ok(&http_frontend_args(
        "add",
        "s",
        &listener,
        "s.example.com",
        &[],
    ));
    sozu.backend_add("s", "w", &web.addr().to_string());
    let answer = request(front, "s.example.com", "/p", "");
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some("https://s.example.com:8443/p")
    );
    let listed = sozu.cli_ok(&["cluster", "list", "-i", "s"]).stdout;
    assert!(listed.contains("https_redirect_port=8443"), "{listed}");
}

/// A wire `add_http_frontend` with Sōzu's redirect fields.
fn redirect_frontend(
    front: SocketAddr,
    host: &str,
    cluster: Option<&str>,
    redirect: command::RedirectPolicy,
    scheme: Option<command::RedirectScheme>,
) -> RequestType {
    RequestType::AddHttpFrontend(command::RequestHttpFrontend {
        cluster_id: cluster.map(str::to_owned),
        address: front.into(),
        hostname: host.to_owned(),
        path: command::PathRule {
            kind: command::PathRuleKind::Prefix as i32,
            value: "/".to_owned(),
        },
        position: command::RulePosition::Tree as i32,
        redirect: Some(redirect as i32),
        redirect_scheme: scheme.map(|s| s as i32),
        ..Default::default()
    })
}

#[test]
fn frontend_redirect_policies_answer_301_302_308_and_401() {
    use command::{RedirectPolicy, RedirectScheme};
    let web = NamedHttpBackend::start("web");
    let front = free_v4();
    let sozu = HttpConfig::new(front)
        .cluster_with(
            "web",
            "example.com",
            &[web.addr()],
            "https_redirect_port = 8443",
        )
        .start();
    let orders = [
        redirect_frontend(
            front,
            "moved.example.com",
            None,
            RedirectPolicy::Permanent,
            None,
        ),
        redirect_frontend(
            front,
            "found.example.com",
            Some("web"),
            RedirectPolicy::Found,
            Some(RedirectScheme::UseHttps),
        ),
        redirect_frontend(
            front,
            "kept.example.com",
            None,
            RedirectPolicy::PermanentRedirect,
            Some(RedirectScheme::UseHttp),
        ),
        redirect_frontend(
            front,
            "closed.example.com",
            Some("web"),
            RedirectPolicy::Unauthorized,
            None,
        ),
    ];
    for order in orders {
        let answer = sozu.request(order).expect("the order is answered");
        assert_eq!(
            answer.status,
            command::ResponseStatus::Ok as i32,
            "{}",
            answer.message
        );
    }
    let answer = request(front, "moved.example.com:81", "/a?b", "");
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some("http://moved.example.com/a?b")
    );
    // USE_HTTPS, with the cluster's https_redirect_port.
    let answer = request(front, "found.example.com", "/f", "");
    assert_eq!(answer.status, 302, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some("https://found.example.com:8443/f")
    );
    let answer = request(front, "kept.example.com", "/k", "");
    assert_eq!(answer.status, 308, "{answer:?}");
    assert_eq!(answer.header("location"), Some("http://kept.example.com/k"));
    let answer = request(front, "closed.example.com", "/", "");
    assert_eq!(answer.status, 401, "{answer:?}");
    // The positive side: a forwarding frontend still reaches its backend.
    assert_eq!(
        http_get(front, "example.com", "/"),
        Ok((200, "backend=web".to_owned()))
    );
}
