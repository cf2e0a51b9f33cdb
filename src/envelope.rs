//! Rendering of 23 API responses: XML by default; with `format=json` a
//! `var visual = {...};` script, renamed by `varname`, wrapped as JSONP by
//! `callback`, or bare with `raw`. All scalar values are strings, and every
//! answer is HTTP 200 with `status="ok"` or `status="error"` in the body.

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::config::SiteConfig;
use crate::domain::Permission;
use crate::error::ApiError;

/// How the client asked for the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Xml,
    /// `var NAME = {...};`
    JsonVar(String),
    /// `FN({...});`
    Jsonp(String),
    /// `{...}`
    JsonRaw,
}

/// The longest accepted `varname` or `callback`.
const MAX_IDENTIFIER_LEN: usize = 128;

/// A JavaScript identifier path such as `updateTags` or `app.cb_1`: ASCII
/// letters, digits, `_` and `$`, not starting with a digit, dot-separated.
/// Nothing else can reach a script body, so a callback cannot inject code.
pub fn is_safe_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENTIFIER_LEN
        && s.split('.').all(|part| {
            let mut bytes = part.bytes();
            matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b'$')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

impl Format {
    /// Reads `format`, `varname`, `callback` and `raw`. An unusable value
    /// gives the format to report the error in, plus the error itself.
    pub fn from_params<'a>(mut param: impl FnMut(&str) -> Option<&'a str>) -> (Format, Option<ApiError>) {
        let json = match param("format") {
            None | Some("") => false,
            Some(f) if f.eq_ignore_ascii_case("xml") => false,
            Some(f) if f.eq_ignore_ascii_case("json") => true,
            Some(_) => {
                return (Format::Xml, Some(ApiError::InvalidInput("format must be xml or json".into())));
            }
        };
        if !json {
            return (Format::Xml, None);
        }
        let default = Format::JsonVar("visual".to_owned());
        if let Some(callback) = param("callback").filter(|c| !c.is_empty()) {
            if !is_safe_identifier(callback) {
                let error = ApiError::InvalidInput("callback must be a JavaScript identifier".into());
                return (default, Some(error));
            }
            return (Format::Jsonp(callback.to_owned()), None);
        }
        if param("raw").is_some() {
            return (Format::JsonRaw, None);
        }
        match param("varname").filter(|v| !v.is_empty()) {
            Some(name) if is_safe_identifier(name) => (Format::JsonVar(name.to_owned()), None),
            Some(_) => {
                (default, Some(ApiError::InvalidInput("varname must be a JavaScript identifier".into())))
            }
            None => (default, None),
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Xml => "text/xml; charset=utf-8",
            Format::JsonVar(_) | Format::Jsonp(_) => "text/javascript; charset=utf-8",
            Format::JsonRaw => "application/json; charset=utf-8",
        }
    }
}

/// A successful answer: a message and the method's object.
#[derive(Clone, Debug)]
pub struct Success {
    pub message: String,
    /// The key of the method's object in JSON (`replacetoken`, `upload`, …).
    pub object_name: &'static str,
    /// The object's fields, in order; children of `<response>` in XML.
    pub fields: Vec<(String, String)>,
    /// For a method that answers a list (photo/list) instead of fields: in
    /// JSON the array under `object_name`, in XML one element per item.
    pub list: Option<List>,
    /// Lists inside the object, after its fields: in JSON arrays under
    /// their `json_key`, in XML one element per item.
    pub lists: Vec<List>,
}

/// Objects of one kind: one `<element>` each in XML, an array in JSON.
#[derive(Clone, Debug)]
pub struct List {
    pub element: &'static str,
    /// The array's key in JSON, inside an item (`versions`); a top-level
    /// list is keyed by the answer's `object_name`.
    pub json_key: &'static str,
    pub items: Vec<Item>,
}

/// One object of a [`List`]: its fields, then lists of its own.
#[derive(Clone, Debug, Default)]
pub struct Item {
    pub fields: Vec<(String, String)>,
    pub lists: Vec<List>,
}

/// Writes `fields` as child elements at `indent`.
fn write_xml_fields(out: &mut String, indent: usize, fields: &[(String, String)]) {
    let pad = "  ".repeat(indent);
    for (name, value) in fields {
        if is_xml_name(name) {
            let _ = writeln!(out, "{pad}<{name}>{}</{name}>", xml_escape(value));
        } else {
            let _ = writeln!(
                out,
                "{pad}<parameter name=\"{}\">{}</parameter>",
                xml_escape(name),
                xml_escape(value)
            );
        }
    }
}

/// Writes each item of `list` as an `<element>` at `indent`.
fn write_xml_list(out: &mut String, indent: usize, list: &List) {
    let pad = "  ".repeat(indent);
    for item in &list.items {
        let _ = writeln!(out, "{pad}<{}>", list.element);
        write_xml_fields(out, indent + 1, &item.fields);
        for inner in &item.lists {
            write_xml_list(out, indent + 1, inner);
        }
        let _ = writeln!(out, "{pad}</{}>", list.element);
    }
}

fn json_object(fields: &[(String, String)]) -> Map<String, Value> {
    fields.iter().map(|(name, value)| (name.clone(), Value::String(value.clone()))).collect()
}

fn json_list(list: &List) -> Value {
    let items = list.items.iter().map(|item| {
        let mut object = json_object(&item.fields);
        for inner in &item.lists {
            object.insert(inner.json_key.into(), json_list(inner));
        }
        Value::Object(object)
    });
    Value::Array(items.collect())
}

/// What every answer carries besides its body.
pub struct Context<'a> {
    pub permission: Permission,
    pub site: &'a SiteConfig,
    pub endpoint: &'a str,
}

/// Renders a success in `format`.
pub fn render_success(format: &Format, ctx: &Context<'_>, success: &Success) -> String {
    match format {
        Format::Xml => {
            let mut out = xml_head(
                "ok",
                &[
                    ("permission_level", ctx.permission.as_str()),
                    ("message", &success.message),
                    ("cached", "0"),
                ],
            );
            let empty = success.fields.is_empty()
                && success.list.as_ref().is_none_or(|l| l.items.is_empty())
                && success.lists.iter().all(|l| l.items.is_empty());
            if empty {
                // Nothing inside: `<response .../>`, as 23's examples show.
                out.push_str("/>\n");
                return out;
            }
            out.push_str(">\n");
            write_xml_fields(&mut out, 1, &success.fields);
            if let Some(list) = &success.list {
                write_xml_list(&mut out, 1, list);
            }
            for list in &success.lists {
                write_xml_list(&mut out, 1, list);
            }
            out.push_str("</response>\n");
            out
        }
        _ => {
            let object = match &success.list {
                Some(list) => json_list(list),
                None => {
                    let mut object = json_object(&success.fields);
                    for list in &success.lists {
                        object.insert(list.json_key.into(), json_list(list));
                    }
                    Value::Object(object)
                }
            };
            let mut body = Map::new();
            body.insert("status".into(), "ok".into());
            body.insert("message".into(), success.message.clone().into());
            body.insert("permission_level".into(), ctx.permission.as_str().into());
            body.insert("cached".into(), "0".into());
            body.insert(success.object_name.into(), object);
            body.insert("p".into(), "1".into());
            body.insert("size".into(), "1".into());
            body.insert("site".into(), site_object(ctx.site));
            body.insert("endpoint".into(), ctx.endpoint.into());
            wrap_json(format, &Value::Object(body))
        }
    }
}

/// Renders an error in `format`.
pub fn render_error(format: &Format, ctx: &Context<'_>, error: &ApiError) -> String {
    let message = error.client_message();
    match format {
        Format::Xml => {
            let mut out = xml_head(
                "error",
                &[
                    ("code", error.code()),
                    ("message", &message),
                    ("permission_level", ctx.permission.as_str()),
                ],
            );
            out.push_str("/>\n");
            out
        }
        _ => {
            let mut body = Map::new();
            body.insert("status".into(), "error".into());
            body.insert("message".into(), message.into());
            body.insert("code".into(), error.code().into());
            body.insert("permission_level".into(), ctx.permission.as_str().into());
            body.insert("site".into(), site_object(ctx.site));
            body.insert("endpoint".into(), ctx.endpoint.into());
            wrap_json(format, &Value::Object(body))
        }
    }
}

fn site_object(site: &SiteConfig) -> Value {
    let mut object = Map::new();
    object.insert("domain".into(), site.domain.clone().into());
    object.insert("site_id".into(), site.site_id.clone().into());
    object.insert("site_name".into(), site.site_name.clone().into());
    object.insert("product_key".into(), site.product_key.clone().into());
    Value::Object(object)
}

fn wrap_json(format: &Format, body: &Value) -> String {
    let json = script_safe_json(body);
    match format {
        Format::JsonVar(name) => format!("var {name} = {json};\n"),
        Format::Jsonp(callback) => format!("{callback}({json});\n"),
        _ => json,
    }
}

/// JSON that is also safe inside a `<script>` element and as JavaScript:
/// `<`, `>`, `&` and the line separators U+2028/U+2029 are escaped.
fn script_safe_json(value: &Value) -> String {
    let json = serde_json::to_string(value).expect("a JSON value always serializes");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn xml_head(status: &str, attributes: &[(&str, &str)]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response status=\"");
    out.push_str(status);
    out.push('"');
    for (name, value) in attributes {
        let _ = write!(out, " {name}=\"{}\"", xml_escape(value));
    }
    out
}

/// Escapes text for XML content and attribute values, dropping characters
/// XML 1.0 cannot carry at all (most C0 controls).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                let _ = write!(out, "&#{};", c as u32);
            }
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `name` can be an XML element name as is (a conservative subset:
/// ASCII letter or `_` first, then letters, digits, `_`, `-`, `.`; not
/// starting with `xml`).
fn is_xml_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("xml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_list_nests_its_items_and_escapes_every_value() {
        let evil = "</title><script>alert(1)</script>&";
        let version = Item { fields: vec![("number".into(), "1".into())], lists: Vec::new() };
        let photo = Item {
            fields: vec![("title".into(), evil.into())],
            lists: vec![List { element: "version", json_key: "versions", items: vec![version] }],
        };
        let success = Success {
            message: "Photos".into(),
            object_name: "photos",
            fields: Vec::new(),
            list: Some(List { element: "photo", json_key: "photos", items: vec![photo] }),
            lists: Vec::new(),
        };
        let site = SiteConfig::default();
        let ctx = Context { permission: Permission::Read, site: &site, endpoint: "/api/photo/list" };
        let xml = render_success(&Format::Xml, &ctx, &success);
        assert!(xml.contains(
            "  <photo>\n    <title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;</title>\n    <version>\n      <number>1</number>\n    </version>\n  </photo>\n"
        ), "{xml}");
        let json = render_success(&Format::JsonRaw, &ctx, &success);
        assert!(!json.contains('<'), "{json}");
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["photos"][0]["title"], evil);
        assert_eq!(parsed["photos"][0]["versions"][0]["number"], "1");
    }

    #[test]
    fn format_selection_follows_23s_parameters() {
        assert_eq!(Format::from_params(params(&[])).0, Format::Xml);
        assert_eq!(Format::from_params(params(&[("format", "json")])).0, Format::JsonVar("visual".into()));
        assert_eq!(
            Format::from_params(params(&[("format", "json"), ("varname", "tags")])).0,
            Format::JsonVar("tags".into())
        );
        assert_eq!(
            Format::from_params(params(&[("format", "json"), ("callback", "updateTags")])).0,
            Format::Jsonp("updateTags".into())
        );
        assert_eq!(Format::from_params(params(&[("format", "json"), ("raw", "")])).0, Format::JsonRaw);
    }

    #[test]
    fn unsafe_callbacks_and_varnames_are_refused() {
        for bad in ["alert(1)", "a;b", "1abc", "a..b", "", "a b", "x</script>"] {
            assert!(!is_safe_identifier(bad), "{bad:?}");
        }
        assert!(is_safe_identifier("jQuery_1.cb$"));
        let (format, error) = Format::from_params(params(&[("format", "json"), ("callback", "alert(1)")]));
        assert_eq!(format, Format::JsonVar("visual".into()));
        assert_eq!(error.unwrap().code(), "invalid_input");
    }

    #[test]
    fn xml_escaping_covers_markup_quotes_and_controls() {
        assert_eq!(xml_escape("<a href=\"x\">&'\u{1}\n"), "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&#10;");
    }

    #[test]
    fn json_is_safe_inside_a_script_element() {
        let value = serde_json::json!({"k": "</script><b>&\u{2028}"});
        let out = script_safe_json(&value);
        assert!(!out.contains('<') && !out.contains('>') && !out.contains('\u{2028}'));
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn odd_element_names_become_parameter_elements() {
        assert!(is_xml_name("photo_id"));
        for bad in ["1a", "a b", "<x>", "xmlfoo", ""] {
            assert!(!is_xml_name(bad), "{bad:?}");
        }
    }
}
