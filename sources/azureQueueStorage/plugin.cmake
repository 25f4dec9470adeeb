# azureQueueStorage: lib/cloud (HMAC-SHA256 Shared Key, base64, requests on the curl loop)
list(APPEND PLUGIN_USES cloud)
