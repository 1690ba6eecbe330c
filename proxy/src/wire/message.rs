//! What HTTP/2 requires of a message's fields (RFC 9113 §8.1.1, §8.2,
//! §8.3): names and values without forbidden bytes, no connection-specific
//! fields, the pseudo-header fields each kind of message has, first and
//! once each. A message that breaks these is malformed: its stream is reset
//! with `PROTOCOL_ERROR` (a request may be answered 400 instead).

use super::hpack::Field;
use bytes::Bytes;

/// Why a message is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a field name that is empty, upper case or holds a forbidden byte")]
    Name,
    #[error("the value of `{0}` holds NUL, CR or LF, or starts or ends with white space")]
    Value(String),
    #[error("`{0}` is connection-specific and has no place in HTTP/2")]
    ConnectionSpecific(String),
    #[error("`te` may only say `trailers`")]
    Te,
    #[error("pseudo-header `{0}` is unknown here, repeated, or after a regular field")]
    Pseudo(String),
    #[error("pseudo-header `{0}` is missing")]
    Missing(&'static str),
    #[error("`:status` is not three digits")]
    Status,
    #[error("`content-length` is not one decimal number")]
    ContentLength,
}

/// A request head's pseudo-header fields and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Bytes,
    /// Absent only for CONNECT.
    pub scheme: Option<Bytes>,
    pub authority: Option<Bytes>,
    /// Absent only for CONNECT.
    pub path: Option<Bytes>,
    pub content_length: Option<u64>,
}

/// A response head's status and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_length: Option<u64>,
}

/// Checks a request head.
pub fn request(fields: &[Field]) -> Result<Request, Malformed> {
    let mut pseudo: [Option<Bytes>; 4] = Default::default();
    const NAMES: [&str; 4] = [":method", ":scheme", ":authority", ":path"];
    let content_length = check(fields, |name, value| {
        let at = NAMES.iter().position(|n| n.as_bytes() == name)?;
        match pseudo[at] {
            Some(_) => None,
            None => {
                pseudo[at] = Some(value.clone());
                Some(())
            }
        }
    })?;
    let [method, scheme, authority, path] = pseudo;
    let method = method.ok_or(Malformed::Missing(":method"))?;
    if method == "CONNECT" {
        // §8.5: only :method and :authority.
        if scheme.is_some() || path.is_some() {
            return Err(Malformed::Pseudo(":scheme or :path in CONNECT".into()));
        }
        if authority.is_none() {
            return Err(Malformed::Missing(":authority"));
        }
    } else {
        if scheme.is_none() {
            return Err(Malformed::Missing(":scheme"));
        }
        if path.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(Malformed::Missing(":path"));
        }
    }
    Ok(Request {
        method,
        scheme,
        authority,
        path,
        content_length,
    })
}

/// Checks a response head (an interim 1xx one included).
pub fn response(fields: &[Field]) -> Result<Response, Malformed> {
    let mut status: Option<Bytes> = None;
    let content_length = check(fields, |name, value| {
        if name != b":status" || status.is_some() {
            return None;
        }
        status = Some(value.clone());
        Some(())
    })?;
    let status = status.ok_or(Malformed::Missing(":status"))?;
    let digits: Option<[u8; 3]> = status[..].try_into().ok();
    let status = match digits {
        Some(d) if d.iter().all(u8::is_ascii_digit) => {
            d.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'))
        }
        _ => return Err(Malformed::Status),
    };
    Ok(Response {
        status,
        content_length,
    })
}

/// Checks trailers: regular fields only.
pub fn trailers(fields: &[Field]) -> Result<(), Malformed> {
    check(fields, |_, _| None).map(|_| ())
}

/// The checks every kind of message shares; `pseudo` takes each
/// pseudo-header field and says whether it belongs (`Some`). Returns the
/// content length, if the message gives one.
fn check(
    fields: &[Field],
    mut pseudo: impl FnMut(&[u8], &Bytes) -> Option<()>,
) -> Result<Option<u64>, Malformed> {
    let mut regular_seen = false;
    let mut content_length: Option<u64> = None;
    for field in fields {
        let (name, value) = (&field.name[..], &field.value);
        if let Some(rest) = name.strip_prefix(b":") {
            if regular_seen || !valid_name(rest) || pseudo(name, value).is_none() {
                return Err(Malformed::Pseudo(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            check_value(name, value)?;
            continue;
        }
        regular_seen = true;
        if !valid_name(name) {
            return Err(Malformed::Name);
        }
        check_value(name, value)?;
        match name {
            b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding"
            | b"upgrade" => {
                return Err(Malformed::ConnectionSpecific(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            b"te" if value != "trailers" => return Err(Malformed::Te),
            b"content-length" => {
                let length = parse_length(value).ok_or(Malformed::ContentLength)?;
                // Repeated, it must say the same (RFC 9110 §8.6).
                if content_length.is_some_and(|l| l != length) {
                    return Err(Malformed::ContentLength);
                }
                content_length = Some(length);
            }
            _ => {}
        }
    }
    Ok(content_length)
}

/// §8.2.1: no bytes 0x00-0x20, upper case, or 0x7f-0xff; not empty.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b > 0x20 && b < 0x7f && !b.is_ascii_uppercase() && b != b':')
}

/// §8.2.1: no NUL, CR or LF; no white space at either end.
fn check_value(name: &[u8], value: &[u8]) -> Result<(), Malformed> {
    let bad_byte = value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n'));
    let padded =
        matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'));
    if bad_byte || padded {
        return Err(Malformed::Value(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(())
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| Field::new(n.to_string(), v.to_string()))
            .collect()
    }

    const GRPC: [(&str, &str); 6] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "stockdata:8080"),
        (":path", "/stockdata.StockData/Get"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];

    fn with(change: impl FnOnce(&mut Vec<(&'static str, &'static str)>)) -> Vec<Field> {
        let mut list = GRPC.to_vec();
        change(&mut list);
        fields(&list)
    }

    #[test]
    fn a_grpc_request_passes_and_gives_its_pseudo_headers() {
        let head = request(&fields(&GRPC)).unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path.as_deref(), Some(&b"/stockdata.StockData/Get"[..]));
        assert_eq!(head.authority.as_deref(), Some(&b"stockdata:8080"[..]));
        assert_eq!(head.content_length, None);
        let connect = request(&fields(&[
            (":method", "CONNECT"),
            (":authority", "db:5432"),
        ]))
        .unwrap();
        assert_eq!((connect.scheme, connect.path), (None, None));
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        use Malformed as M;
        let cases: Vec<(&str, Vec<Field>, M)> = vec![
            (
                "no :method",
                with(|l| {
                    l.remove(0);
                }),
                M::Missing(":method"),
            ),
            (
                "no :scheme",
                with(|l| {
                    l.remove(1);
                }),
                M::Missing(":scheme"),
            ),
            (
                "no :path",
                with(|l| {
                    l.remove(3);
                }),
                M::Missing(":path"),
            ),
            ("an empty :path", with(|l| l[3].1 = ""), M::Missing(":path")),
            (
                "a repeated :path",
                with(|l| l.insert(4, (":path", "/x"))),
                M::Pseudo(":path".into()),
            ),
            (
                "a pseudo-header after a regular field",
                with(|l| l.push((":authority", "x"))),
                M::Pseudo(":authority".into()),
            ),
            (
                "a response's pseudo-header",
                with(|l| l.insert(0, (":status", "200"))),
                M::Pseudo(":status".into()),
            ),
            (
                "an upper-case name",
                with(|l| l.push(("Content-Type", "x"))),
                M::Name,
            ),
            ("a space in a name", with(|l| l.push(("x y", "z"))), M::Name),
            ("a colon in a name", with(|l| l.push(("x:y", "z"))), M::Name),
            ("an empty name", with(|l| l.push(("", "z"))), M::Name),
            (
                "LF in a value",
                with(|l| l.push(("x-a", "b\nc"))),
                M::Value("x-a".into()),
            ),
            (
                "NUL in a value",
                with(|l| l.push(("x-a", "b\0c"))),
                M::Value("x-a".into()),
            ),
            (
                "a value with a leading space",
                with(|l| l.push(("x-a", " b"))),
                M::Value("x-a".into()),
            ),
            (
                "a value with a trailing tab",
                with(|l| l.push(("x-a", "b\t"))),
                M::Value("x-a".into()),
            ),
            (
                "connection",
                with(|l| l.push(("connection", "close"))),
                M::ConnectionSpecific("connection".into()),
            ),
            (
                "transfer-encoding",
                with(|l| l.push(("transfer-encoding", "chunked"))),
                M::ConnectionSpecific("transfer-encoding".into()),
            ),
            (
                "keep-alive",
                with(|l| l.push(("keep-alive", "5"))),
                M::ConnectionSpecific("keep-alive".into()),
            ),
            (
                "upgrade",
                with(|l| l.push(("upgrade", "h2c"))),
                M::ConnectionSpecific("upgrade".into()),
            ),
            ("te other than trailers", with(|l| l[5].1 = "gzip"), M::Te),
            (
                "a content-length that is no number",
                with(|l| l.push(("content-length", "1e3"))),
                M::ContentLength,
            ),
            (
                "two content-lengths that differ",
                with(|l| l.extend([("content-length", "3"), ("content-length", "4")])),
                M::ContentLength,
            ),
            (
                "CONNECT with a path",
                fields(&[
                    (":method", "CONNECT"),
                    (":authority", "a:1"),
                    (":path", "/"),
                ]),
                M::Pseudo(":scheme or :path in CONNECT".into()),
            ),
            (
                "CONNECT without an authority",
                fields(&[(":method", "CONNECT")]),
                M::Missing(":authority"),
            ),
        ];
        for (what, head, expected) in cases {
            assert_eq!(request(&head), Err(expected), "{what}");
        }
        // What passes: a repeated content-length that agrees, an inner space.
        let head = with(|l| {
            l.extend([
                ("content-length", "5"),
                ("content-length", "5"),
                ("x-a", "b c"),
            ])
        });
        assert_eq!(request(&head).unwrap().content_length, Some(5));
    }

    #[test]
    fn responses_and_trailers_have_only_their_own_pseudo_headers() {
        let ok = response(&fields(&[
            (":status", "200"),
            ("content-type", "application/grpc"),
        ]))
        .unwrap();
        assert_eq!(
            ok,
            Response {
                status: 200,
                content_length: None
            }
        );
        assert_eq!(
            response(&fields(&[(":status", "103")])).unwrap().status,
            103
        );
        assert_eq!(
            response(&fields(&[("grpc-status", "0")])),
            Err(Malformed::Missing(":status"))
        );
        for bad in ["20", "2000", "2x0", ""] {
            assert_eq!(
                response(&fields(&[(":status", bad)])),
                Err(Malformed::Status),
                "{bad}"
            );
        }
        assert_eq!(
            response(&fields(&[(":status", "200"), (":path", "/")])),
            Err(Malformed::Pseudo(":path".into()))
        );
        trailers(&fields(&[("grpc-status", "0"), ("grpc-message", "fine")])).unwrap();
        assert_eq!(
            trailers(&fields(&[("grpc-status", "0"), (":status", "200")])),
            Err(Malformed::Pseudo(":status".into()))
        );
    }
}
