-- sources/azureQueueStorage/azureQueueStorage.lua: the azureQueueStorage event source's Lua half
-- (the C is azureQueueStorage.c): Argo's AzureQueueStorageEventSource, with Argo's checks
-- (validate.go). Data {body, messageID, insertionTime[, metadata]}.
local _M = {}

_M.what = "Azure Queue Storage event source"
-- Argo runs azureQueueStorage on every replica (the queue hands each message to one reader)
_M.active_active = true

function _M.schema(S)
  local str, bool, int = S.str, S.bool, S.int
  return S.object({
    storageAccountName = str { doc = "storage account, for Azure AD credentials (ignored when connectionString is set)",
      check = function(v, parent)
        if v ~= "" and (type(parent) ~= "table" or parent.connectionString == nil) then
          return "storageAccountName without connectionString (Azure AD credentials) is not supported by Herald yet: give a connectionString secret (AccountName and AccountKey, or SharedAccessSignature)"
        end
      end },
    connectionString = S.secret { doc = "connection string: AccountName and AccountKey (Shared Key) or SharedAccessSignature, QueueEndpoint or DefaultEndpointsProtocol/EndpointSuffix, or UseDevelopmentStorage=true" },
    queueName = str { required = true, doc = "queue name" },
    jsonBody = bool { doc = "the message text is JSON: put it in body as JSON (else base64)" },
    dlq = bool { doc = "a message that cannot become an event stays in the queue (for a dead-letter process) instead of being deleted" },
    decodeMessage = bool { doc = "base64-decode the message text first (before jsonBody)" },
    waitTimeInSeconds = int { min = 0, default = 3, doc = "wait after an empty receive before the next one" },
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "messages of an Azure Storage queue, deleted once the bus holds them",
       at_least_one_of = { "connectionString", "storageAccountName" } })
end

return _M
