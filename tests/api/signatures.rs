//! Signed background callbacks, checked by the README's own verification
//! snippets (Python and JavaScript, run as they are printed there) and by
//! the receiver's verifier: the first secret signs, every secret verifies.

use std::io::Write;
use std::process::{Command, Stdio};

use upload_receiver::auth::credentials::Secret;
use upload_receiver::delivery::signature::{HEADER, Signer};
use upload_receiver::domain::unix_now;

use crate::common::*;
use crate::site::{Recorded, Site};

const NEW_SECRET: &str = "whsec-new-0123456789abcdef";
const OLD_SECRET: &str = "whsec-old-0123456789abcdef";

/// The README's fenced block in `language` that defines `verify`.
fn readme_snippet(language: &str, defines: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = format!("```{language}\n");
    readme
        .split(&fence)
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(code, _)| code.to_owned()))
        .find(|code| code.contains(defines))
        .unwrap_or_else(|| panic!("the README has a {language} block defining {defines}"))
}

/// Runs the README's snippet in `language` on one request; what `verify` said.
fn snippet_verifies(
    language: &str,
    secret: &str,
    header: &str,
    method: &str,
    url: &str,
    body: &[u8],
) -> bool {
    let input = serde_json::json!({
        "secret": secret, "header": header, "method": method, "url": url,
        "body": String::from_utf8(body.to_vec()).unwrap(),
    });
    let (program, code) = match language {
        "python" => (
            "python3",
            format!(
                "{}\nimport json, sys\nd = json.load(sys.stdin)\nprint(verify(d['secret'], d['header'], d['method'], d['url'], d['body'].encode()))\n",
                readme_snippet("python", "def verify(")
            ),
        ),
        _ => (
            "node",
            format!(
                "{}\nconst d = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));\nconsole.log(verify(d.secret, d.header, d.method, d.url, Buffer.from(d.body)) ? 'True' : 'False');\n",
                readme_snippet("javascript", "function verify(")
            ),
        ),
    };
    let flag = if program == "node" { "-e" } else { "-c" };
    let mut child = Command::new(program)
        .args([flag, &code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed to run the README's snippet: {e}"));
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{program}: {}", String::from_utf8_lossy(&output.stderr));
    match String::from_utf8_lossy(&output.stdout).trim() {
        "True" => true,
        "False" => false,
        other => panic!("{program} printed {other:?}"),
    }
}

/// A receiver signing with the new secret (the old one still listed), and
/// a site its callbacks may reach.
async fn signing_fixture() -> (PhotoApp, Site) {
    let site = Site::start().await;
    let f = PhotoApp::with(|c| {
        c.callback.allowed_hosts = vec!["127.0.0.1".into()];
        c.callback.signing_secrets = vec![Secret::new(NEW_SECRET), Secret::new(OLD_SECRET)];
    })
    .await;
    (f, site)
}

/// The full URL the site was asked for.
fn requested_url(site: &Site, call: &Recorded) -> String {
    format!("http://{}{}", site.address, call.target)
}

#[tokio::test]
async fn callbacks_are_signed_with_the_first_secret_and_the_readme_snippets_verify_them() {
    let (f, site) = signing_fixture().await;
    let token = f
        .token(&[
            ("return_url", &site.url("/cb?theme=green")),
            ("background_return_p", "1"),
            ("max_uploads", "2"),
        ])
        .await;
    // A GET callback, and a POST one (its URL would pass 1500 characters).
    let short = f.redeem(&token, b"first", &[("session", "abc")]).await.text().await.unwrap();
    assert!(short.starts_with("ok "), "{short}");
    let long = f.redeem(&token, b"second", &[("pad", &"x".repeat(1600))]).await.text().await.unwrap();
    assert!(long.starts_with("ok "), "{long}");
    let calls = site.requests();
    assert_eq!(calls.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["GET", "POST"]);
    let verifier = Signer::new(&[NEW_SECRET.to_owned(), OLD_SECRET.to_owned()]);
    let only_old = Signer::new(&[OLD_SECRET.to_owned()]);
    for call in &calls {
        let header = call.header(HEADER).expect("the callback is signed");
        let url = requested_url(&site, call);
        let body = call.body.as_bytes();
        assert!(header.starts_with("t="), "{header}");
        let t: u64 = header[2..].split(',').next().unwrap().parse().unwrap();
        assert!(t.abs_diff(unix_now()) <= 5, "signed now: {header}");
        assert_eq!(verifier.verify(header, (&call.method, &url, body), unix_now(), 300), Ok(()));
        assert!(
            only_old.verify(header, (&call.method, &url, body), unix_now(), 300).is_err(),
            "the first secret signs"
        );
        for language in ["python", "javascript"] {
            assert!(
                snippet_verifies(language, NEW_SECRET, header, &call.method, &url, body),
                "{language}: {call:?}"
            );
            assert!(
                !snippet_verifies(language, OLD_SECRET, header, &call.method, &url, body),
                "{language}: another secret"
            );
            let tampered = [body, b"&photo_id=2"].concat();
            assert!(
                !snippet_verifies(language, NEW_SECRET, header, &call.method, &url, &tampered),
                "{language}: a changed body"
            );
            let moved = url.replace("/cb", "/cb2");
            assert!(
                !snippet_verifies(language, NEW_SECRET, header, &call.method, &moved, body),
                "{language}: another URL"
            );
        }
    }
    // A signature made long ago (replayed) is refused, however right.
    let call = &calls[0];
    let url = requested_url(&site, call);
    let old = verifier.sign(unix_now() - 3600, &call.method, &url, call.body.as_bytes()).unwrap();
    for language in ["python", "javascript"] {
        assert!(
            !snippet_verifies(language, NEW_SECRET, &old, &call.method, &url, call.body.as_bytes()),
            "{language}: stale"
        );
    }
    // The GET's signed URL is the callback_url of the answer.
    assert!(short.trim_end().ends_with(&requested_url(&site, &calls[0])), "{short}");
}

#[tokio::test]
async fn without_signing_secrets_callbacks_carry_no_signature() {
    let site = Site::start().await;
    let f = PhotoApp::with(|c| c.callback.allowed_hosts = vec!["127.0.0.1".into()]).await;
    let token = f.token(&[("return_url", &site.url("/cb")), ("background_return_p", "1")]).await;
    assert!(f.redeem(&token, b"file", &[]).await.text().await.unwrap().starts_with("ok "));
    let call = &site.requests()[0];
    assert_eq!(call.header(HEADER), None, "{call:?}");
}
