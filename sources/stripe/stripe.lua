-- sources/stripe/stripe.lua: the stripe event source's Lua half (the C is stripe.c): Argo's
-- StripeEventSource, plus Herald's signingSecret.
local _M = {}

_M.what = "Stripe event source"
_M.active_active = true

function _M.schema(S)
  return S.object({
    webhook = S.use(S.WebhookContext, { required = true }),
    createWebhook = S.bool { default = false, doc = "register the endpoint with Stripe at start (needs apiKey and webhook.url)" },
    apiKey = S.secret { doc = "Stripe secret API key (for createWebhook)" },
    eventFilter = S.strings { doc = "event types to accept (others get 400 and no event); also the endpoint's enabled_events" },
    metadata = S.es_metadata(),
    signingSecret = S.secret { doc = "Herald extension: the endpoint's signing secret (whsec_...): Stripe-Signature is checked, 5 minutes tolerance. Without it, an endpoint created at start is checked with the secret Stripe returned" },
  }, { doc = "Stripe webhooks" })
end

return _M
