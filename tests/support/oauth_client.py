#!/usr/bin/env python3
"""An independent OAuth 1.0a client for the tests: requests + requests-oauthlib's oauthlib.

Reads one JSON request description on stdin, signs it with oauthlib,
performs it with requests, and prints {"status": ..., "body": ...}.

Fields: method (GET|POST), url (no query), params ([name, value] pairs: the
query of a GET, the form body of a POST), placement (header|query|body),
consumer_key, consumer_secret, token, token_secret; optionally
  sign_query: a query string (verbatim) that the signature is computed over,
  send_query: the query string actually sent (header placement only), to
    imitate clients that sign another decoding of the query than RFC 5849's;
  body_extra: [name, value] pairs added to a POST's form body (the Ruby
    oauth gem sends oauth_verifier there while the rest is in the header).
"""
import json
import sys
from urllib.parse import quote, urlencode

import requests
from oauthlib.oauth1 import (
    SIGNATURE_HMAC_SHA1,
    SIGNATURE_TYPE_AUTH_HEADER,
    SIGNATURE_TYPE_BODY,
    SIGNATURE_TYPE_QUERY,
    Client,
)

spec = json.load(sys.stdin)
client = Client(
    spec["consumer_key"],
    client_secret=spec["consumer_secret"],
    resource_owner_key=spec["token"],
    resource_owner_secret=spec["token_secret"],
    signature_method=SIGNATURE_HMAC_SHA1,
    signature_type={
        "header": SIGNATURE_TYPE_AUTH_HEADER,
        "query": SIGNATURE_TYPE_QUERY,
        "body": SIGNATURE_TYPE_BODY,
    }[spec["placement"]],
)
method = spec["method"]
params = [tuple(p) for p in spec.get("params", [])]
query = spec.get("sign_query")
if query is None and method == "GET":
    query = urlencode(params, quote_via=quote)
url = spec["url"] + ("?" + query if query else "")
headers = {}
body = None
if method == "POST":
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    body = urlencode(params + [tuple(p) for p in spec.get("body_extra", [])], quote_via=quote)
uri, headers, body = client.sign(url, http_method=method, body=body, headers=headers)
if "send_query" in spec:
    uri = uri.partition("?")[0] + "?" + spec["send_query"]
response = requests.request(method, uri, headers=headers, data=body, timeout=10, allow_redirects=False)
print(json.dumps({"status": response.status_code, "body": response.text}))
