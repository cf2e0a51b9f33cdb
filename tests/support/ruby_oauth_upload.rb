# Uploads a file the way 23's Ruby sample client does: signed by the `oauth`
# gem (OAuth::AccessToken#post with a string body, so the gem adds
# oauth_body_hash), with a multipart body assembled by hand that, like the
# sample's, has no CRLF before the delimiters after the first.
#
# Reads JSON on stdin: site, path, consumer_key, consumer_secret, token,
# token_secret, title, file (a path). Prints {"status": ..., "body": ...}.
require 'json'
require 'oauth'

spec = JSON.parse($stdin.read)
consumer = OAuth::Consumer.new(spec['consumer_key'], spec['consumer_secret'], site: spec['site'])
token = OAuth::AccessToken.new(consumer, spec['token'], spec['token_secret'])
boundary = format('%08x', Time.now.to_i)
body = "--#{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n".b +
       spec['title'].b +
       "--#{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"#{File.basename(spec['file'])}\"\r\n" \
       "Content-Type: application/octet-stream\r\n\r\n".b +
       File.binread(spec['file']) +
       "--#{boundary}--\r\n\r\n".b
response = token.post(spec['path'], body, 'Content-Type' => "multipart/form-data; boundary=#{boundary}")
puts JSON.generate(status: response.code.to_i, body: response.body)
