-- sources/minio/minio.lua: the minio event source's Lua half (the C is minio.c): Argo's
-- S3Artifact as its minio source reads it, with Argo's checks (validate.go) and minio-go's
-- (the endpoint is host[:port], no scheme or path). Data {notification: [records][, metadata]}.
local _M = {}

_M.what = "minio event source"

function _M.schema(S)
  local str, bool = S.str, S.bool
  return S.object({
    endpoint = str { required = true, doc = "MinIO host[:port] (no scheme: https unless insecure)",
      check = function(v)
        if v:find("://", 1, true) or v:find("/", 1, true) then
          return "endpoint is host[:port], without a scheme or a path (insecure: true for plain HTTP), as minio-go takes it"
        end
      end },
    bucket = S.object({
      name = str { required = true, doc = "bucket to listen on" },
      key = str { doc = "object key (not used by the minio source, as in Argo)" },
    }, { required = true, doc = "the bucket" }),
    region = str { doc = "region the requests are signed for (default us-east-1, MinIO's default)" },
    insecure = bool { doc = "plain HTTP instead of HTTPS" },
    accessKey = S.secret { required = true, doc = "access key" },
    secretKey = S.secret { required = true, doc = "secret key" },
    events = S.strings { doc = "bucket notification events, e.g. s3:ObjectCreated:* (default: all)",
      check = function(v)
        for _, e in ipairs(type(v) == "table" and v or {}) do
          if e == "" then return "unknown event (an empty string)" end
        end
      end },
    filter = S.object({
      prefix = str { doc = "object key prefix" },
      suffix = str { doc = "object key suffix" },
    }, { doc = "only objects whose keys have this prefix and suffix" }),
    metadata = S.es_metadata(),
    caCertificate = S.secret { doc = "CA certificate (PEM) to verify MinIO's with" },
  }, { doc = "MinIO bucket notifications (ListenBucketNotification), one event per notification" })
end

return _M
