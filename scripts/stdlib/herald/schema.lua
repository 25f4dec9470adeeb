-- herald/schema.lua: a declarative schema of every Argo Events field (argoproj.io/v1alpha1
-- EventSource, Sensor, EventBus), with what Herald supports today.
--
-- The loader (herald/loader.lua) walks a document against these tables. A node is a plain
-- table:
--   kind       "string" | "int" | "number" | "bool" | "port" | "int_or_string" | "amount" |
--              "any" | "map" | "array" | "object"
--              port: string of digits 1..65535 (an unquoted number is turned into its text);
--              int_or_string: Argo's Int64OrString (nanoseconds or "1s", "3m");
--              amount: Argo's Amount (a decimal number, written as a number or a string);
--              any: free-form (Kubernetes types Herald passes through, e.g. affinity)
--   of         element schema of a map (string -> of) or an array
--   fields     {name = node} of an object; unknown names are errors
--   required   true: the field must be present (and, for strings/arrays, non-empty)
--   enum       allowed values (strings); Argo's own case-sensitive lists
--   default    Argo's default (documentation; an unsupported field set to its default is
--              accepted silently, e.g. `atLeastOnce: false`)
--   min, max   numeric bounds; prefix: a string must start with it
--   doc        one line for humans (and for `herald explain`)
--   supported  true (the default when absent) | false | "reason": false or a reason makes the
--              loader reject the field with "<path>: not supported by Herald yet (<what>)",
--              where <what> is the reason string, else `what`, else `doc`. Fields inside an
--              unsupported field are not visited, so flipping the one flag on the outermost
--              unsupported field (e.g. `exprs`, `kafka`) is the only change needed to accept
--              the whole subtree; mark inner knobs false if a feature lands partly.
--   deployment true: a Kubernetes deployment knob (pod template, replicas ...) that means
--              nothing when Herald runs locally; accepted and reported at debug level.
--   exactly_one_of / at_least_one_of  (objects) lists of field names
--   nonempty_items (arrays) every element must be a non-empty string
--   name       true: a name (of a dependency, trigger, event, Secret ...): besides its own rules
--              it must not hold control characters (a newline, a tab, DEL ...); names reach
--              generated code, logs and headers, and no real name has them
--   retired    "what replaced it": a field Argo Events once had and now ignores (Go's JSON
--              decoding drops unknown fields, so old manifests still load there). The loader
--              warns, naming the replacement, and drops the value; with `moved_to` = a sibling
--              field name, the value moves there when that field is not set (e.g. http
--              serverURL -> url). `check_retired`: function(value, parent, ctx) run first.
--   check      function(value, parent) -> nil | message: a check of the value once its type is
--              right (strings and numbers; on an array, of the whole list, and a second result,
--              the index of the element at fault, puts the error there)
--
-- Types are shared tables; `use(T, overrides)` makes a use site with its own flags.

local _M = {}

local pairs = pairs

local function node(kind, o)
  o = o or {}
  o.kind = kind
  return o
end

local function str(o) return node("string", o) end
local function int(o) return node("int", o) end
local function num(o) return node("number", o) end
local function bool(o) return node("bool", o) end
local function any(o) return node("any", o) end
local function int_or_string(o) return node("int_or_string", o) end
local function amount(o) return node("amount", o) end
local function port(o) return node("port", o) end
-- A field Argo Events no longer has (and ignores): see `retired` above.
local function retired(instead, o)
  o = o or {}
  o.kind = "any"
  o.retired = instead
  return o
end

local function object(fields, o)
  o = o or {}
  o.kind = "object"
  o.fields = fields
  return o
end

local function map(of, o)
  o = o or {}
  o.kind = "map"
  o.of = of
  return o
end

local function array(of, o)
  o = o or {}
  o.kind = "array"
  o.of = of
  return o
end

-- A use site of a shared type with its own flags (required, supported, doc ...).
local function use(t, o)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  for k, v in pairs(o or {}) do c[k] = v end
  return c
end

local function strmap(o) return map(str(), o) end
local function strings(o) return array(str(), o) end

local NO = false -- readability: `supported = NO`

---------------------------------------------------------------------------------------------
-- Shared Kubernetes and Argo types
---------------------------------------------------------------------------------------------

local SecretKeySelector = object({
  name = str { required = true, name = true, doc = "name of the Secret" },
  key = str { required = true, doc = "key in the Secret" },
  optional = bool { doc = "do not fail when the Secret or key is missing" },
}, { doc = "a key of a Kubernetes Secret (read from $HERALD_SECRETS_DIR/<name>/<key>)" })

local ConfigMapKeySelector = object({
  name = str { required = true, name = true, doc = "name of the ConfigMap" },
  key = str { required = true, doc = "key in the ConfigMap" },
  optional = bool { doc = "do not fail when the ConfigMap or key is missing" },
}, { doc = "a key of a Kubernetes ConfigMap" })

local function secret(o) return use(SecretKeySelector, o) end

local TLSConfig = object({
  caCertSecret = secret { doc = "CA certificate" },
  clientCertSecret = secret { doc = "client certificate" },
  clientKeySecret = secret { doc = "client key" },
  insecureSkipVerify = bool { default = false, doc = "skip server certificate verification" },
  enabled = bool { default = false, doc = "TLS without any certificates" },
}, { doc = "TLS client configuration" })

local BasicAuth = object({
  username = secret { doc = "Secret holding the user name" },
  password = secret { doc = "Secret holding the password" },
}, { doc = "basic authentication" })

local SASLConfig = object({
  mechanism = str { enum = { "PLAIN", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI" },
                    default = "PLAIN", doc = "SASL mechanism" },
  userSecret = secret { doc = "Secret holding the user" },
  passwordSecret = secret { doc = "Secret holding the password" },
}, { doc = "SASL configuration" })

local Backoff = object({
  duration = int_or_string { doc = "initial delay: nanoseconds or a duration such as \"1s\"" },
  factor = amount { doc = "the delay is multiplied by this each step" },
  jitter = amount { doc = "random jitter added each step" },
  steps = int { min = 0, doc = "give up after this many steps" },
}, { doc = "exponential backoff" })

local EventSourceFilter = object({
  expression = str { doc = "expr-lang boolean expression over the event data" },
}, { doc = "source-side filter" })

local PodMetadata = object({
  labels = strmap { doc = "labels" },
  annotations = strmap { doc = "annotations" },
}, { doc = "pod metadata" })

local Container = object({
  resources = any { doc = "corev1.ResourceRequirements" },
  imagePullPolicy = str { enum = { "Always", "Never", "IfNotPresent" }, doc = "image pull policy" },
  securityContext = any { doc = "corev1.SecurityContext" },
  volumeMounts = array(any(), { doc = "corev1.VolumeMount list" }),
  env = array(any(), { doc = "corev1.EnvVar list" }),
  envFrom = array(any(), { doc = "corev1.EnvFromSource list" }),
}, { doc = "main container customisation" })

local ContainerTemplate = object({
  resources = any { doc = "corev1.ResourceRequirements" },
  imagePullPolicy = str { enum = { "Always", "Never", "IfNotPresent" }, doc = "image pull policy" },
  securityContext = any { doc = "corev1.SecurityContext" },
}, { doc = "container customisation" })

local Template = object({
  metadata = use(PodMetadata),
  serviceAccountName = str { doc = "service account of the pod" },
  container = use(Container),
  volumes = array(any(), { doc = "corev1.Volume list" }),
  securityContext = any { doc = "corev1.PodSecurityContext" },
  nodeSelector = strmap { doc = "node selector" },
  tolerations = array(any(), { doc = "corev1.Toleration list" }),
  imagePullSecrets = array(any(), { doc = "corev1.LocalObjectReference list" }),
  priorityClassName = str { doc = "priority class" },
  priority = int { doc = "pod priority" },
  affinity = any { doc = "corev1.Affinity" },
}, { doc = "pod template of the Deployment" })

local Service = object({
  metadata = use(PodMetadata, { doc = "service metadata" }),
  ports = array(any(), { doc = "corev1.ServicePort list" }),
  clusterIP = str { doc = "cluster IP" },
}, { doc = "ClusterIP Service in front of the EventSource pod" })

local PersistenceStrategy = object({
  storageClassName = str { doc = "storage class" },
  accessMode = str { doc = "access mode such as ReadWriteOnce" },
  volumeSize = int_or_string { doc = "volume size, e.g. 10Gi" },
}, { doc = "persistent volume settings" })

local SchemaRegistryConfig = object({
  url = str { required = true, doc = "schema registry URL" },
  schemaId = int { doc = "schema ID" },
  auth = use(BasicAuth, { doc = "schema registry basic auth" }),
}, { doc = "Avro schema registry" })

local KafkaConsumerGroup = object({
  groupName = str { required = true, doc = "consumer group name" },
  oldest = bool { default = false, doc = "start from the oldest offset" },
  rebalanceStrategy = str { enum = { "sticky", "roundrobin", "range" }, default = "range",
                            doc = "rebalance strategy" },
}, { doc = "Kafka consumer group" })

local NATSAuth = object({
  basic = use(BasicAuth),
  token = secret { doc = "token" },
  nkey = secret { doc = "NKey" },
  credential = secret { doc = "credentials file" },
}, { doc = "NATS authentication" })

local WatchPathConfig = object({
  directory = str { doc = "directory to watch (absolute)" },
  path = str { doc = "file path relative to directory" },
  pathRegexp = str { doc = "regexp on the file path" },
}, { doc = "what to watch" })

local S3Bucket = object({
  key = str { doc = "object key" },
  name = str { required = true, doc = "bucket name" },
})

local S3Filter = object({
  prefix = str { doc = "key prefix" },
  suffix = str { doc = "key suffix" },
})

local S3Artifact = object({
  endpoint = str { doc = "S3 endpoint" },
  bucket = use(S3Bucket),
  region = str { doc = "region" },
  insecure = bool { doc = "plain HTTP" },
  accessKey = secret { doc = "access key" },
  secretKey = secret { doc = "secret key" },
  events = strings { doc = "bucket notification events" },
  filter = use(S3Filter),
  metadata = strmap { doc = "user metadata added to the event" },
  caCertificate = secret { doc = "CA certificate" },
}, { doc = "S3 bucket (MinIO)" })

---------------------------------------------------------------------------------------------
-- EventSource
---------------------------------------------------------------------------------------------

local function es_metadata() return strmap { doc = "user metadata added to the event data" } end
local function es_filter(o) return use(EventSourceFilter, o) end

-- Webhook context: every webhook-style source embeds it.
local function webhook_context_fields()
  return {
    endpoint = str { required = true, prefix = "/", doc = "URL path to serve, e.g. /example" },
    method = str { required = true, doc = "HTTP method the route accepts (exact match)" },
    port = port { doc = "TCP port (string of digits); when absent, the loader takes it from spec.service.ports if it holds exactly one (webhook sources)" },
    url = str { doc = "public URL (used when registering hooks)" },
    serverCertSecret = secret { supported = NO, what = "TLS listener (serverCertSecret)" },
    serverKeySecret = secret { supported = NO, what = "TLS listener (serverKeySecret)" },
    metadata = es_metadata(),
    authSecret = secret { doc = "bearer token the request must carry" },
    maxPayloadSize = int { min = 1, default = 1048576, doc = "largest accepted body in bytes" },
    basicAuth = use(BasicAuth, { supported = NO, what = "webhook basic auth" }),
  }
end

local WebhookContext = object(webhook_context_fields(), { doc = "HTTP endpoint settings" })

-- Value checks run by the engine's own parsers (absent when the schema is used without the
-- engine, e.g. in unit tests with plain LuaJIT).
local has_core, core = pcall(require, "herald.core")
local function engine_check(fn)
  if not has_core then return nil end
  return fn
end

local AMQPEventSource = object({
  url = str(), exchangeName = str(), exchangeType = str(), routingKey = str(),
  connectionBackoff = use(Backoff), jsonBody = bool(), tls = use(TLSConfig),
  metadata = es_metadata(),
  exchangeDeclare = object({ durable = bool(), autoDelete = bool(), internal = bool(), noWait = bool() }),
  queueDeclare = object({ name = str(), durable = bool(), autoDelete = bool(), exclusive = bool(),
                          noWait = bool(), arguments = str { doc = "JSON object as a string" } }),
  queueBind = object({ noWait = bool() }),
  consume = object({ consumerTag = str(), autoAck = bool(), exclusive = bool(), noLocal = bool(),
                     noWait = bool() }),
  auth = use(BasicAuth), urlSecret = secret(), filter = es_filter(),
})

local MQTTEventSource = object({
  url = str { required = true }, topic = str { required = true }, clientId = str(),
  connectionBackoff = use(Backoff), jsonBody = bool(), tls = use(TLSConfig),
  metadata = es_metadata(), filter = es_filter(), auth = use(BasicAuth),
})

local GithubEventSource = object({
  id = int { doc = "deprecated" }, webhook = use(WebhookContext), owner = str { doc = "deprecated" },
  repository = str { doc = "deprecated" }, events = strings(), apiToken = secret(),
  webhookSecret = secret(), insecure = bool(), active = bool(), contentType = str(),
  githubBaseURL = str(), githubUploadURL = str(), deleteHookOnFinish = bool(),
  metadata = es_metadata(),
  repositories = array(object({ owner = str(), names = strings() })),
  organizations = strings(),
  githubApp = object({ privateKey = secret(), appID = int(), installationID = int() }),
  filter = es_filter(),
})

local GitlabEventSource = object({
  webhook = use(WebhookContext), projectID = str { doc = "deprecated" }, events = strings(),
  accessToken = secret(), enableSSLVerification = bool(), gitlabBaseURL = str(),
  deleteHookOnFinish = bool(), metadata = es_metadata(), projects = strings(),
  secretToken = secret(), filter = es_filter(), groups = strings(),
})

local BitbucketEventSource = object({
  deleteHookOnFinish = bool(), metadata = es_metadata(), webhook = use(WebhookContext),
  auth = object({ basic = object({ username = secret(), password = secret() }),
                  oauthToken = secret() }),
  events = strings(), owner = str(), projectKey = str(), repositorySlug = str(),
  repositories = array(object({ owner = str(), repositorySlug = str() })), filter = es_filter(),
})

local BitbucketServerEventSource = object({
  webhook = use(WebhookContext), projectKey = str(), repositorySlug = str(), projects = strings(),
  repositories = array(object({ projectKey = str(), repositorySlug = str() })),
  events = strings(), skipBranchRefsChangedOnOpenPR = bool(), oneEventPerChange = bool(),
  accessToken = secret(), webhookSecret = secret(), bitbucketserverBaseURL = str(),
  deleteHookOnFinish = bool(), metadata = es_metadata(), filter = es_filter(),
  tls = use(TLSConfig), checkInterval = str { default = "1m" },
})

local HDFSEventSource = object({
  directory = str(), path = str(), pathRegexp = str(), -- WatchPathConfig, inline
  type = str(), checkInterval = str { default = "1m" }, addresses = strings(), hdfsUser = str(),
  krbCCacheSecret = secret(), krbKeytabSecret = secret(), krbUsername = str(), krbRealm = str(),
  krbConfigConfigMap = use(ConfigMapKeySelector), krbServicePrincipalName = str(),
  metadata = es_metadata(), filter = es_filter(),
})

local SlackEventSource = object({
  signingSecret = secret(), token = secret(), webhook = use(WebhookContext),
  metadata = es_metadata(), filter = es_filter(),
})

local StorageGridEventSource = object({
  webhook = use(WebhookContext), events = strings(), filter = use(S3Filter), topicArn = str(),
  bucket = str(), region = str(), authToken = secret(), apiURL = str(), metadata = es_metadata(),
  tls = use(TLSConfig),
})

local AzureEventsHubEventSource = object({
  fqdn = str { required = true }, sharedAccessKeyName = secret(), sharedAccessKey = secret(),
  hubName = str { required = true }, metadata = es_metadata(), filter = es_filter(),
})

local AzureServiceBusEventSource = object({
  connectionString = secret(), queueName = str(), topicName = str(), subscriptionName = str(),
  tls = use(TLSConfig), jsonBody = bool(), metadata = es_metadata(), filter = es_filter(),
  fullyQualifiedNamespace = str(), deferDelete = bool(),
})

local StripeEventSource = object({
  webhook = use(WebhookContext), createWebhook = bool(), apiKey = secret(),
  eventFilter = strings(), metadata = es_metadata(),
})

local EmitterEventSource = object({
  broker = str { required = true }, channelKey = str(), channelName = str(),
  username = secret(), password = secret(), connectionBackoff = use(Backoff), jsonBody = bool(),
  tls = use(TLSConfig), metadata = es_metadata(), filter = es_filter(),
})

local NSQEventSource = object({
  hostAddress = str { required = true }, topic = str { required = true },
  channel = str { required = true }, connectionBackoff = use(Backoff), jsonBody = bool(),
  tls = use(TLSConfig), metadata = es_metadata(), filter = es_filter(),
})

local PulsarEventSource = object({
  topics = strings { required = true }, type = str { enum = { "exclusive", "shared" } },
  url = str { required = true }, tlsTrustCertsSecret = secret(),
  tlsAllowInsecureConnection = bool(), tlsValidateHostname = bool(), tls = use(TLSConfig),
  connectionBackoff = use(Backoff), jsonBody = bool(), metadata = es_metadata(),
  authTokenSecret = secret(), filter = es_filter(), authAthenzParams = strmap(),
  authAthenzSecret = secret(),
})

local GenericEventSource = object({
  url = str { required = true }, config = str(), insecure = bool(), jsonBody = bool(),
  metadata = es_metadata(), authSecret = secret(), filter = es_filter(),
})

local GerritEventSource = object({
  webhook = use(WebhookContext), hookName = str(), events = strings(), auth = use(BasicAuth),
  gerritBaseURL = str(), deleteHookOnFinish = bool(), metadata = es_metadata(),
  projects = strings(), sslVerify = bool(), filter = es_filter(), maxTries = int(),
})

local MNSEventSource = object({
  accessKey = secret(), secretKey = secret(), queue = str { required = true }, jsonBody = bool(),
  endpoint = str(), filter = es_filter(),
})

-- What a type's Lua half (sources/<type>/<type>.lua, triggers/<type>/<type>.lua) builds its
-- schema with: the node constructors and the shared Argo types. Filled further below with the
-- Sensor's shared types (parameters, artifacts) before the triggers are read.
local S = {
  node = node, str = str, int = int, num = num, bool = bool, any = any, port = port,
  int_or_string = int_or_string, amount = amount, retired = retired, object = object, map = map,
  array = array, use = use, strmap = strmap, strings = strings, secret = secret,
  engine_check = engine_check, core = has_core and core or nil,
  es_metadata = es_metadata, es_filter = es_filter, webhook_context_fields = webhook_context_fields,
  SecretKeySelector = SecretKeySelector, ConfigMapKeySelector = ConfigMapKeySelector,
  TLSConfig = TLSConfig, BasicAuth = BasicAuth, SASLConfig = SASLConfig, Backoff = Backoff,
  SchemaRegistryConfig = SchemaRegistryConfig, KafkaConsumerGroup = KafkaConsumerGroup,
  NATSAuth = NATSAuth, WatchPathConfig = WatchPathConfig, S3Artifact = S3Artifact,
  S3Filter = S3Filter, WebhookContext = WebhookContext,
}
_M.lib = S

local registry = require "herald.registry"

-- One source type: map key in spec -> per-event settings. `active_active` marks the types
-- Argo runs on every replica (webhook-style); the rest are leader-elected, and Argo refuses
-- to mix the two kinds in one EventSource.
local function source(t, what, supported, active_active)
  return map(t, { supported = supported, what = what, source_type = true,
                  active_active = active_active or nil,
                  doc = what .. ": map of eventName -> settings" })
end
local AA = true

-- The Argo EventSource types Herald does not run yet, with what the error calls them. A type
-- Herald runs has a folder under sources/ instead (herald.registry), which takes precedence.
local SOURCES_NOT_YET = {
  hdfs = source(HDFSEventSource, "HDFS event source", NO),
  azureEventsHub = source(AzureEventsHubEventSource, "Azure Event Hubs event source", NO),
  emitter = source(EmitterEventSource, "Emitter event source", NO),
  nsq = source(NSQEventSource, "NSQ event source", NO),
  pulsar = source(PulsarEventSource, "Pulsar event source", NO),
  generic = source(GenericEventSource, "generic (gRPC) event source", NO),
  bitbucketserver = source(BitbucketServerEventSource, "Bitbucket Server event source", NO, AA),
  azureServiceBus = source(AzureServiceBusEventSource, "Azure Service Bus event source", NO),
  mns = source(MNSEventSource, "Alibaba Cloud MNS event source", NO, AA),
}

_M.event_source_spec = object({
  eventBusName = str { default = "default", name = true, doc = "EventBus to publish to" },
  template = use(Template, { deployment = true }),
  service = use(Service, { deployment = true }),
  type = retired("the source type is the key under spec (spec.webhook, spec.calendar ...)"),
  replicas = int { min = 0, default = 1, doc = "replicas: above 1 on JetStream, one leads and the others stand by (except webhook-only EventSources, whose replicas all run)" },
}, { doc = "EventSource spec" })
do
  local fields = _M.event_source_spec.fields
  for name, f in pairs(SOURCES_NOT_YET) do fields[name] = f end
  -- the types with a folder: their own schema, or, left out of this build, an error naming the
  -- build option
  for _, e in ipairs(registry.sources) do
    local mod = registry.module(e)
    if mod then
      fields[e.name] = source(mod.schema(S), mod.what or (e.name .. " event source"), true,
                              mod.active_active)
      fields[e.name].extension = mod.extension -- Herald's own type, not Argo's
    else
      fields[e.name] = any { supported = NO, not_built = registry.not_built(e), source_type = true,
                             what = e.name .. " event source" }
    end
  end
end

---------------------------------------------------------------------------------------------
-- Sensor
---------------------------------------------------------------------------------------------

local LOGICAL_OPERATOR = { "and", "or" }

local DataFilter = object({
  path = str { required = true, doc = "gjson path into the event data" },
  type = str { required = true, enum = { "string", "number", "bool" },
               doc = "JSON type of the value at path" },
  value = strings { required = true, nonempty_items = true,
                    doc = "accepted values (regexps for strings); any one may match" },
  comparator = str { enum = { ">=", ">", "=", "!=", "<", "<=" }, default = "=",
                     doc = "comparison for number (and = / != for string and bool)" },
  template = str { doc = "Go template over .Input (the value as a string); its output is matched instead" },
}, { doc = "a constraint on the event data" })

local ExprFilter = object({
  expr = str { required = true, doc = "govaluate expression over the fields" },
  fields = array(object({
    path = str { required = true, doc = "gjson path into the event data" },
    name = str { required = true, name = true, doc = "name the expression uses" },
  }), { required = true }),
})

local EventContext = object({
  id = str(), source = str { doc = "EventSource name" }, specversion = str(),
  type = str { doc = "event source type" }, datacontenttype = str(),
  subject = str { doc = "event name" }, time = str(),
}, { doc = "match on CloudEvent attributes" })

local TimeFilter = object({
  start = str { required = true, doc = "HH:MM:SS" },
  stop = str { required = true, doc = "HH:MM:SS (before start: wraps midnight)" },
  timezone = str { default = "UTC", doc = "IANA time zone" },
}, { doc = "a daily time window" })

local EventDependencyFilter = object({
  time = use(TimeFilter),
  context = use(EventContext),
  data = array(DataFilter, { doc = "data filters" }),
  exprs = array(ExprFilter, { doc = "govaluate expressions over fields bound by gjson paths" }),
  dataLogicalOperator = str { enum = LOGICAL_OPERATOR, default = "and",
                              doc = "how data filters combine" },
  exprLogicalOperator = str { enum = LOGICAL_OPERATOR, default = "and",
                              doc = "how expr filters combine" },
  script = str { doc = "Lua filter: the event passes when the script returns true" },
}, { doc = "filters on the dependency's events" })

local EventDependency = object({
  name = str { required = true, name = true, doc = "dependency name, used in conditions and parameters" },
  eventSourceName = str { required = true, name = true, doc = "name of the EventSource" },
  eventName = str { required = true, name = true, doc = "event name (the key under the source type)" },
  filters = use(EventDependencyFilter),
  transform = object({
    jq = str { doc = "jq program applied to the event data" },
    script = str { doc = "Lua script that returns the new event data" },
  }, { doc = "rewrites the event data before the filters", exactly_one_of = { "jq", "script" } }),
  filtersLogicalOperator = str { enum = LOGICAL_OPERATOR, default = "and",
                                 doc = "how the filter kinds combine" },
}, { doc = "an event the sensor waits for" })

local TriggerParameterSource = object({
  dependencyName = str { required = true, name = true, doc = "dependency whose event is used" },
  contextKey = str { doc = "gjson path into the event context" },
  contextTemplate = str { doc = "Go template over the event context" },
  dataKey = str { doc = "gjson path into the event data" },
  dataTemplate = str { doc = "Go template over the event data" },
  value = str { doc = "literal default when the key or template gives nothing" },
  useRawData = bool { default = false, doc = "insert JSON values as they are, not as strings" },
}, { doc = "where a parameter's value comes from" })

local PARAM_OPERATIONS = { "overwrite", "append", "prepend" }

local TriggerParameter = object({
  src = use(TriggerParameterSource, { required = true }),
  dest = str { required = true, doc = "sjson path of the value to set" },
  operation = str { enum = PARAM_OPERATIONS, default = "overwrite",
                    doc = "how the value combines with what is at dest" },
}, { doc = "a value taken from an event and written into the trigger" })

-- HTTP payload parameters may leave dest empty: the value is then the whole body.
local PayloadParameter = use(TriggerParameter, { fields = (function()
  local f = {}
  for k, v in pairs(TriggerParameter.fields) do f[k] = v end
  f.dest = str { doc = "sjson path in the body (empty: the value is the whole body)" }
  return f
end)() })

local function params(o) return array(TriggerParameter, o) end

local SecureHeader = object({
  name = str { required = true, name = true },
  valueFrom = object({ secretKeyRef = secret(), configMapKeyRef = use(ConfigMapKeySelector) }),
})

local GitArtifact = object({
  url = str { required = true }, cloneDirectory = str(),
  creds = object({ username = secret(), password = secret() }), sshKeySecret = secret(),
  filePath = str { required = true, doc = "the manifest's path in the repository" },
  branch = str(), tag = str(), ref = str(),
  remote = object({
    name = str { required = true, doc = "the remote's name (a git remote name)",
      check = function(v)
        -- git's rules for a ref name component, which a remote name must also be
        if not v:match("^[%w_][%w._-]*$") or v:find("..", 1, true) or v:match("%.lock$") or v:match("%.$") then
          return "not a valid git remote name: " .. v
        end
      end },
    urls = strings { required = true, nonempty_items = true, doc = "the remote's URLs: the first is fetched" },
  }, { doc = "fetch the revision from this remote instead of url (Argo: url is cloned, then every ref is taken from the remote)" }),
  insecureIgnoreHostKey = bool(),
  githubApp = object({
    privateKey = secret { required = true, doc = "the GitHub App's private key (PEM)" },
    appID = int { required = true, min = 1, doc = "the GitHub App's ID" },
    installationID = int { required = true, min = 1, doc = "the App's installation ID" },
  }, { doc = "fetch as a GitHub App: an installation token is the password (user x-access-token)" }),
  sshKeyPath = retired("replaced by sshKeySecret, a Secret holding the private key"),
  namespace = retired("the Secrets it names are read from the Sensor's namespace"),
})

local ArtifactLocation = object({
  s3 = use(S3Artifact), inline = str(), file = object({ path = str() }),
  url = object({ path = str { required = true }, verifyCert = bool() }),
  configmap = use(ConfigMapKeySelector, { fields = use(ConfigMapKeySelector.fields, {
    namespace = retired("the ConfigMap is read from the Sensor's namespace"),
  }) }),
  git = use(GitArtifact),
  resource = any { doc = "inline Kubernetes object" },
})

-- Argo before v1.0 took the trigger's GroupVersionResource from these; the object's own
-- apiVersion and kind say it now. The loader checks them against an inline object.
local function gvr_fields(f)
  f.group = retired("the object's apiVersion", { gvr = true })
  f.version = retired("the object's apiVersion", { gvr = true })
  f.resource = retired("the object's kind", { gvr = true })
  return f
end

local PulsarTrigger = object({
  url = str { required = true }, topic = str { required = true }, parameters = params(),
  payload = params { required = true }, tlsTrustCertsSecret = secret(),
  tlsAllowInsecureConnection = bool(), tlsValidateHostname = bool(), tls = use(TLSConfig),
  authTokenSecret = secret(), connectionBackoff = use(Backoff), authAthenzParams = strmap(),
  authAthenzSecret = secret(),
})

local OpenWhiskTrigger = object({
  host = str { required = true }, version = str { default = "v1" },
  namespace = str { default = "_" }, authToken = secret(), actionName = str { required = true },
  payload = params { required = true }, parameters = params(),
})

local AzureEventHubsTrigger = object({
  fqdn = str { required = true }, hubName = str { required = true },
  sharedAccessKeyName = secret(), sharedAccessKey = secret(), payload = params(),
  parameters = params(),
})

local AzureServiceBusTrigger = object({
  connectionString = secret(), queueName = str(), topicName = str(), subscriptionName = str(),
  tls = use(TLSConfig), payload = params(), parameters = params(),
})

local CustomTrigger = object({
  serverURL = str { required = true }, secure = bool(), certSecret = secret(),
  serverNameOverride = str(), spec = strmap { required = true }, parameters = params(),
  payload = params(),
})

-- The Sensor's shared types, for the triggers' schemas (see S above).
S.params = params
S.TriggerParameter = TriggerParameter
S.PayloadParameter = PayloadParameter
S.SecureHeader = SecureHeader
S.GitArtifact = GitArtifact
S.ArtifactLocation = ArtifactLocation
S.gvr_fields = gvr_fields

-- The Argo trigger types Herald does not run yet, with what the error calls them, in Argo's
-- order (TriggerTemplate's fields). A type Herald runs has a folder under triggers/ instead
-- (herald.registry), whose `argo_order` places it in that order.
local TRIGGERS_NOT_YET = {
  { "custom", 5, use(CustomTrigger, { supported = NO, what = "custom (gRPC) triggers" }) },
  { "openWhisk", 9, use(OpenWhiskTrigger, { supported = NO, what = "OpenWhisk triggers" }) },
  { "azureEventHubs", 11, use(AzureEventHubsTrigger, { supported = NO, what = "Azure Event Hubs triggers" }) },
  { "pulsar", 12, use(PulsarTrigger, { supported = NO, what = "Pulsar triggers" }) },
  { "azureServiceBus", 13, use(AzureServiceBusTrigger, { supported = NO, what = "Azure Service Bus triggers" }) },
  { "grpc", 15, any { supported = NO, what = "gRPC triggers" } },
}

-- Every trigger type, Argo's and Herald's (the lua trigger), in Argo's order: the folders'
-- schemas, a type left out of this build as an error naming its build option, and the above.
local trigger_fields, TRIGGER_TYPES = {}, {}
do
  local order = {}
  for _, t in ipairs(TRIGGERS_NOT_YET) do
    trigger_fields[t[1]], order[t[1]] = t[3], t[2]
  end
  for _, e in ipairs(registry.triggers) do
    local mod = registry.module(e)
    if mod then
      trigger_fields[e.name] = mod.schema(S)
      order[e.name] = mod.argo_order or 1000
    else
      trigger_fields[e.name] = any { supported = NO, not_built = registry.not_built(e), what = e.name .. " trigger" }
      order[e.name] = 1000
    end
  end
  for name in pairs(trigger_fields) do TRIGGER_TYPES[#TRIGGER_TYPES + 1] = name end
  table.sort(TRIGGER_TYPES, function(a, b)
    if order[a] ~= order[b] then return order[a] < order[b] end
    return a < b
  end)
end
_M.TRIGGER_TYPES = TRIGGER_TYPES

local TriggerTemplate = object({
  name = str { required = true, name = true, doc = "trigger name, unique in the sensor" },
  conditions = str { doc = "boolean expression over dependency names, e.g. (a || b) && c" },
  conditionsReset = array(object({
    byTime = object({ cron = str(), timezone = str() }),
  }), { doc = "times at which the dependency state of this trigger is cleared" }),
  atLeastOnce = retired("replaced by spec.triggers[N].atLeastOnce, beside template"),
  policy = retired("replaced by spec.triggers[N].policy, beside template"),
}, { doc = "what the trigger does", exactly_one_of = TRIGGER_TYPES })
for name, f in pairs(trigger_fields) do TriggerTemplate.fields[name] = f end

local Trigger = object({
  template = use(TriggerTemplate, { required = true }),
  parameters = params { doc = "parameters applied to the whole template" },
  policy = object({
    k8s = object({ labels = strmap { required = true }, backoff = use(Backoff),
                   errorOnBackoffTimeout = bool() },
                 { doc = "k8s/argoWorkflow: wait until the created object has these labels" }),
    status = object({ allow = array(int(), { required = true }) },
                    { doc = "response statuses that count as success (HTTP, AWS Lambda)" }),
  }, { doc = "what counts as success" }),
  retryStrategy = use(Backoff, { doc = "retries of a failed action (steps = attempts in all)" }),
  rateLimit = object({
    unit = str { enum = { "Second", "Minute", "Hour" }, default = "Second" },
    requestsPerUnit = int { min = 0 },
  }, { doc = "at most requestsPerUnit actions per unit, spaced evenly" }),
  atLeastOnce = bool { default = false, doc = "acknowledge the event only after the action's outcome" },
}, { doc = "an action the sensor takes" })
-- dlqTrigger is a whole Trigger (Argo forbids nesting another dlqTrigger at run time).
Trigger.fields.dlqTrigger = use(Trigger, { doc = "runs with the same events when the retries are exhausted" })

_M.sensor_spec = object({
  dependencies = array(EventDependency, { required = true, doc = "events the sensor waits for" }),
  triggers = array(Trigger, { required = true, doc = "actions" }),
  template = use(Template, { deployment = true }),
  errorOnFailedRound = bool { doc = "declared by Argo, unused there too" },
  eventBusName = str { default = "default", name = true, doc = "EventBus to read from" },
  replicas = int { min = 0, default = 1, doc = "replicas: above 1 on JetStream, one leads and the others stand by" },
  revisionHistoryLimit = int { min = 0, deployment = true, doc = "Deployment revision history" },
  loggingFields = strmap { doc = "extra fields on every log line" },
}, { doc = "Sensor spec" })

---------------------------------------------------------------------------------------------
-- EventBus
---------------------------------------------------------------------------------------------

local AUTH_STRATEGIES = { "none", "token", "basic", "jwt" }

local NativeStrategy = object({
  replicas = int(), auth = str { enum = AUTH_STRATEGIES }, persistence = use(PersistenceStrategy),
  containerTemplate = use(ContainerTemplate), metricsContainerTemplate = use(ContainerTemplate),
  nodeSelector = strmap(), tolerations = array(any()), metadata = use(PodMetadata),
  securityContext = any(), maxAge = str(), imagePullSecrets = array(any()),
  serviceAccountName = str(), priorityClassName = str(), priority = int(), affinity = any(),
  maxMsgs = int(), maxBytes = str(), maxSubs = int(), maxPayload = str(),
  raftHeartbeatTimeout = str(), raftElectionTimeout = str(), raftLeaseTimeout = str(),
  raftCommitTimeout = str(),
})

local NATSConfig = object({
  url = str(), clusterID = str(), auth = str { enum = AUTH_STRATEGIES }, accessSecret = secret(),
})

local JetStreamBus = object({
  version = str(), replicas = int { default = 3, doc = "servers: 1, or 3 and more",
    check = function(v) if v == 2 or v < 1 then return "replicas must be 1, or 3 and more (JetStream needs a quorum)" end end },
  containerTemplate = use(ContainerTemplate),
  reloaderContainerTemplate = use(ContainerTemplate),
  metricsContainerTemplate = use(ContainerTemplate), persistence = use(PersistenceStrategy),
  metadata = use(PodMetadata), nodeSelector = strmap(), tolerations = array(any()),
  securityContext = any(), imagePullSecrets = array(any()), priorityClassName = str(),
  priority = int(), affinity = any(), serviceAccountName = str(), settings = str(),
  startArgs = strings(), maxPayload = str(),
  streamConfig = str { doc = "YAML stream settings (as jetstreamExotic.streamConfig)",
    check = engine_check(function(v)
      local ok, err = require("herald.eventbus").stream_config(v)
      return not ok and err or nil
    end) },
})

local JetStreamConfig = object({
  url = str { required = true, doc = "nats://HOST:PORT (or tls://) of the JetStream server" },
  accessSecret = secret { doc = "auth.yaml: username and password (basic), or token" },
  streamConfig = str { doc = "YAML stream settings over Herald's defaults: maxMsgs, maxBytes, maxAge, duplicates, replicas, retention, discard",
    check = engine_check(function(v)
      local ok, err = require("herald.eventbus").stream_config(v)
      return not ok and err or nil
    end) },
  tls = use(TLSConfig, { doc = "TLS to the server" }),
  auth = str { enum = AUTH_STRATEGIES, doc = "none, basic (the default with accessSecret), token or jwt (accessSecret: a NATS credentials file)" },
})

local KafkaBus = object({
  url = str(), topic = str(), version = str(), tls = use(TLSConfig), sasl = use(SASLConfig),
  consumerGroup = use(KafkaConsumerGroup),
  partitioner = str { enum = { "random", "hash", "roundrobin", "manual" }, default = "random" },
  consumerBatchMaxWait = str { default = "1s" },
})

_M.event_bus_spec = object({
  nats = object({ native = use(NativeStrategy), exotic = use(NATSConfig) },
                { doc = "NATS Streaming (ended by its authors in 2023): `herald run` uses the embedded bus; component mode a JetStream bus (exotic: its url; native: the Service a controller would deploy)",
                  exactly_one_of = { "native", "exotic" } }),
  jetstream = use(JetStreamBus, { doc = "JetStream servers a controller deploys: `herald run` uses the embedded bus; `herald eventsource|sensor` connect to the servers' Service" }),
  kafka = use(KafkaBus, { supported = NO, what = "Kafka EventBus" }),
  jetstreamExotic = use(JetStreamConfig, { doc = "an existing JetStream server: selects the bus for the EventSources and Sensors that name this EventBus" }),
}, { doc = "EventBus spec", exactly_one_of = { "nats", "jetstream", "kafka", "jetstreamExotic" } })

---------------------------------------------------------------------------------------------
-- Objects
---------------------------------------------------------------------------------------------

_M.object_metadata = object({
  name = str { required = true, doc = "object name (a Kubernetes name)" },
  namespace = str { doc = "namespace (default: the run's namespace)" },
  labels = strmap { doc = "labels" },
  annotations = strmap { doc = "annotations" },
  generateName = any { doc = "ignored" }, uid = any { doc = "ignored" },
  resourceVersion = any { doc = "ignored" }, generation = any { doc = "ignored" },
  creationTimestamp = any { doc = "ignored" }, deletionTimestamp = any { doc = "ignored" },
  deletionGracePeriodSeconds = any { doc = "ignored" }, ownerReferences = any { doc = "ignored" },
  finalizers = any { doc = "ignored" }, managedFields = any { doc = "ignored" },
  selfLink = any { doc = "ignored" },
}, { doc = "Kubernetes object metadata" })

local function top(spec)
  return object({
    apiVersion = str { doc = "argoproj.io/v1alpha1 (checked by the loader)" },
    kind = str { doc = "EventSource, Sensor or EventBus (checked by the loader)" },
    metadata = use(_M.object_metadata, { required = true }),
    spec = use(spec, { required = true }),
    status = any { doc = "ignored (written by controllers)" },
  })
end

_M.API_VERSION = "argoproj.io/v1alpha1"
_M.KINDS = { "EventSource", "Sensor", "EventBus" }
_M.kinds = {
  EventSource = top(_M.event_source_spec),
  Sensor = top(_M.sensor_spec),
  EventBus = top(_M.event_bus_spec),
}

-- Named types, for `herald explain` and for tests that flip flags.
_M.types = {
  SecretKeySelector = SecretKeySelector, TLSConfig = TLSConfig, BasicAuth = BasicAuth,
  Backoff = Backoff, WebhookContext = WebhookContext, EventDependency = EventDependency,
  EventDependencyFilter = EventDependencyFilter, DataFilter = DataFilter,
  TriggerParameter = TriggerParameter, TriggerParameterSource = TriggerParameterSource,
  Trigger = Trigger, TriggerTemplate = TriggerTemplate, Template = Template,
}

return _M
