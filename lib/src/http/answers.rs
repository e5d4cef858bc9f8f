//! The proxy's own answers (400, 401, 404, 408, 431, 501, 502, 503, 504):
//! complete HTTP/1.1 responses with a short text body and
//! `Connection: close`, built once as static bytes.
//!
//! Owns only the bytes. The session decides when to answer; after a default
//! answer the client connection is closed (the request body may not have
//! been read, so the connection cannot be reused safely).

/// The response for `status`; statuses without a dedicated text get 502's
/// shape with their own code.
pub(crate) fn default_answer(status: u16) -> &'static [u8] {
    // `concat!` cannot compute a length, so each body's length is written
    // beside it; a test checks every one.
    macro_rules! answer {
        ($code:literal, $reason:literal, $len:literal, $body:literal) => {
            concat!(
                "HTTP/1.1 ",
                $code,
                " ",
                $reason,
                "\r\n",
                "Content-Type: text/plain; charset=utf-8\r\n",
                "Cache-Control: no-cache\r\n",
                "Connection: close\r\n",
                "Content-Length: ",
                $len,
                "\r\n",
                "\r\n",
                $body
            )
            .as_bytes()
        };
    }
    match status {
        400 => answer!("400", "Bad Request", "12", "Bad Request\n"),
        401 => answer!("401", "Unauthorized", "13", "Unauthorized\n"),
        404 => answer!("404", "Not Found", "10", "Not Found\n"),
        408 => answer!("408", "Request Timeout", "16", "Request Timeout\n"),
        431 => answer!(
            "431",
            "Request Header Fields Too Large",
            "32",
            "Request Header Fields Too Large\n"
        ),
        501 => answer!("501", "Not Implemented", "16", "Not Implemented\n"),
        503 => answer!("503", "Service Unavailable", "20", "Service Unavailable\n"),
        504 => answer!("504", "Gateway Timeout", "16", "Gateway Timeout\n"),
        _ => answer!("502", "Bad Gateway", "12", "Bad Gateway\n"),
    }
}

#[cfg(test)]
/// Every status [`default_answer`] has a text for.
pub(crate) const DEFAULT_STATUSES: [u16; 9] = [400, 401, 404, 408, 431, 501, 502, 503, 504];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_parses_with_its_status_and_exact_length() {
        for status in DEFAULT_STATUSES {
            let bytes = default_answer(status);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut res = httparse::Response::new(&mut headers);
            let head = match res.parse(bytes).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("{status}: partial"),
            };
            assert_eq!(res.code, Some(status));
            let length: usize = res
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            assert_eq!(bytes.len() - head, length, "{status}: Content-Length");
            assert!(res
                .headers
                .iter()
                .any(|h| h.name == "Connection" && h.value == b"close"));
        }
    }
}
