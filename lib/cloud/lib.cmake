# lib/cloud: what the cloud sources share (JSON reader, base64, RS256 JWTs, HMAC, one HTTP
# request on the curl loop). OpenSSL and libcurl are the engine's own libraries already.
