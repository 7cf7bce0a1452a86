//! Statuses as clients see them, fixed up in the response headers where an
//! error travels (a trailers-only response):
//!
//! * a request message over the size limit is answered RESOURCE_EXHAUSTED,
//!   as gRPC servers (and `just serve`) answer it; tonic's decoder says
//!   OUT_OF_RANGE;
//! * status messages are cut at [`MAX_MESSAGE`] bytes: they quote client
//!   input (paths, entry and target names) and must not amplify it.

use http::HeaderValue;
use tonic::body::Body;

/// The start of tonic's message for a decoded message over the limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The longest status message sent, in bytes of its percent-encoded form.
pub const MAX_MESSAGE: usize = 4 << 10;

/// The layer: every response's headers go through [`rewrite`].
pub fn layer() -> tower::util::MapResponseLayer<fn(http::Response<Body>) -> http::Response<Body>> {
    tower::util::MapResponseLayer::new(|mut response: http::Response<Body>| {
        rewrite(response.headers_mut());
        response
    })
}

/// OUT_OF_RANGE for a message over the limit becomes RESOURCE_EXHAUSTED;
/// long messages are cut.
fn rewrite(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|s| s == (tonic::Code::OutOfRange as i32).to_string().as_str());
    // grpc-message is percent-encoded; its plain-ASCII start is unchanged.
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.replace("%20", " ").starts_with(TOO_LARGE));
    if out_of_range && too_large {
        let code = (tonic::Code::ResourceExhausted as i32).to_string();
        headers.insert(
            "grpc-status",
            HeaderValue::from_str(&code).expect("a number is a header value"),
        );
    }
    let long = headers
        .get("grpc-message")
        .filter(|m| m.len() > MAX_MESSAGE)
        .map(|m| m.as_bytes().to_vec());
    if let Some(message) = long {
        // Never inside a %XX escape.
        let mut cut = MAX_MESSAGE;
        if let Some(percent) = message[cut.saturating_sub(2)..cut]
            .iter()
            .position(|b| *b == b'%')
        {
            cut = cut - 2 + percent;
        }
        let mut shortened = message[..cut].to_vec();
        shortened.extend_from_slice(b"%20[cut]");
        if let Ok(value) = HeaderValue::from_bytes(&shortened) {
            headers.insert("grpc-message", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_size_limit_is_rewritten() {
        let status = |code: tonic::Code, message: &str| {
            let mut headers = http::HeaderMap::new();
            tonic::Status::new(code, message)
                .add_header(&mut headers)
                .unwrap();
            rewrite(&mut headers);
            headers["grpc-status"].to_str().unwrap().to_string()
        };
        let large = format!("{TOO_LARGE}: found 5242880 bytes, the limit is: 4194304 bytes");
        assert_eq!(status(tonic::Code::OutOfRange, &large), "8");
        assert_eq!(status(tonic::Code::OutOfRange, "offset past the end"), "11");
        assert_eq!(status(tonic::Code::InvalidArgument, &large), "3");
    }

    #[test]
    fn long_messages_are_cut_outside_escapes() {
        for name in ["x".repeat(100_000), "\u{e9}".repeat(50_000)] {
            let mut headers = http::HeaderMap::new();
            tonic::Status::not_found(format!("entry {name} not found"))
                .add_header(&mut headers)
                .unwrap();
            rewrite(&mut headers);
            let message = headers["grpc-message"].to_str().unwrap();
            assert!(message.len() <= MAX_MESSAGE + 8, "{}", message.len());
            assert!(message.ends_with("%20[cut]"), "{message}");
            // Whatever was kept decodes: no escape was split.
            let kept = &message[..message.len() - 8];
            let bytes = kept.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'%' {
                    assert!(i + 2 < bytes.len(), "split escape at {i}");
                }
            }
        }
    }
}
