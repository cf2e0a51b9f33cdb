//! The callback URL builder: whatever the return URL and the parameters,
//! the result parses, keeps the return URL's origin and path, carries every
//! parameter, and never contains a raw CR or LF; the answers render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload_receiver::callback::{self, Outcome, ReturnData};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut pieces = text.split('\u{0}');
    let Some(Ok(return_url)) = pieces.next().map(url::Url::parse) else { return };
    if !matches!(return_url.scheme(), "http" | "https") {
        return;
    }
    let params: Vec<(String, String)> = pieces
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect();
    let built = callback::url_with(&return_url, &params);
    let text = built.as_str();
    assert!(!text.contains('\r') && !text.contains('\n'), "{text}");
    let reparsed = url::Url::parse(text).expect("the built URL parses");
    assert_eq!(reparsed.origin(), return_url.origin());
    assert_eq!(reparsed.path(), return_url.path());
    let carried: Vec<(String, String)> = reparsed.query_pairs().into_owned().collect();
    for param in &params {
        assert!(carried.contains(param), "{param:?} missing from {text}");
    }

    let data = ReturnData {
        domain: "videos.example.com".into(),
        token: ("replace_token".to_owned(), "0".repeat(40)),
        outcome: Outcome::Failed { error_message: params.first().map(|p| p.1.clone()).unwrap_or_default() },
        extras: params,
    };
    let _ = callback::browser_answer(&return_url, &data);
    let answer = callback::background_answer(&data, text);
    assert!(!answer.contains('\r'), "{answer}");
});
