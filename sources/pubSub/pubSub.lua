-- sources/pubSub/pubSub.lua: the pubSub (GCP Pub/Sub) event source's Lua half (the C is
-- pubSub.c): Argo's PubSubEventSource, with Argo's two checks (validate.go).
local _M = {}

_M.what = "GCP Pub/Sub event source"

function _M.schema(S)
  return S.object({
    projectID = S.str { doc = "GCP project of the subscription (default: the metadata server's project, or the key's project_id)" },
    topicProjectID = S.str { doc = "GCP project of the topic (default: projectID)",
      check = function(v, parent)
        if v ~= "" and (type(parent) ~= "table" or parent.topic == nil or parent.topic == "") then
          return "topicProjectID needs topic (you can't specify topicProjectID if you don't specify topic)"
        end
      end },
    topic = S.str { doc = "topic of the subscription: it is created with the subscription when missing, and an existing subscription is checked against it" },
    subscriptionID = S.str { doc = "subscription to pull from (default: <eventName>-<hash of these settings>, as Argo names it); created when missing and topic is given" },
    credentialSecret = S.secret { doc = "service-account JSON key (default: GOOGLE_APPLICATION_CREDENTIALS, else the metadata server: workload identity)" },
    deleteSubscriptionOnFinish = S.bool { doc = "delete the subscription when the source stops" },
    jsonBody = S.bool { doc = "the message data is JSON: put it in body as JSON (else base64)" },
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "pull messages from a GCP Pub/Sub subscription", at_least_one_of = { "topic", "subscriptionID" } })
end

return _M
