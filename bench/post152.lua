-- wrk script: POST a 152-byte JSON body (the benchmark's standard small event).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"type":"order.created","id":"0f8fad5b-d9cb-469f-a165-70867728950e","customer":"c-104277-xy","amount":129.95,"currency":"EUR","items":3,"priority":true}'
assert(#wrk.body == 152, "body is " .. #wrk.body .. " bytes")
