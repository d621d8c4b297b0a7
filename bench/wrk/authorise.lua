-- wrk script: card network 0100 authorisations against POST /network/authorisations.
--
--   wrk -t2 -c50 -d20s --latency --timeout 10s -s bench/wrk/authorise.lua \
--       http://127.0.0.1:PORT/network/authorisations -- CARDS_FILE [NETWORK_KEY] [RUN_NONCE]
--
-- CARDS_FILE has one card a line: `pan expiry cvc` (expiry YYMM), as bench/cards.py writes it.
-- Each request is a JSON message shaped like message() in bench/cards.py: a random seeded card, a random
-- amount, and a network_transaction_id unique across threads and runs (run nonce, thread id, counter).
-- NETWORK_KEY goes in `Authorization: Bearer <key>` (the gateway and cards both take that form).
--
-- Every thread counts its answers by response code ("00", "51", ...; "http_<status>" for a non-200,
-- "unparsed" for a 200 without a response_code). done() adds them up over the threads and prints one line,
--   WRK_SUMMARY {"duration_us":..,"requests":..,"codes":{"00":..},"latency_us":{"p50":..},...}
-- after wrk's own report, for bench/cards.py to parse.

local threads = {} -- setup()/done() environment: every thread, to read its counters at the end

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

-- Per-thread environment from here on (each wrk thread runs its own copy of this script).
local cards = {}
local counter = 0
local nonce = ""
local body_format = nil
codes = {} -- global, so that done() can read it with thread:get("codes")

local merchant = '{"id":"BB0001","name":"BRIGHTBIRD ESPRESSO","mcc":"5814","city":"London",'
   .. '"country":"GB","postcode":"N1 3JD"}'

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s authorise.lua URL -- CARDS_FILE [NETWORK_KEY] [RUN_NONCE]")
   end
   for line in io.lines(path) do
      local pan, expiry, cvc = line:match("^(%d+)%s+(%d%d%d%d)%s+(%d+)")
      if pan then
         cards[#cards + 1] = { pan, expiry, cvc }
      end
   end
   if #cards == 0 then
      error("no cards in " .. path)
   end
   local key = args[2] or ""
   nonce = args[3] or string.format("%x", os.time())
   id = id or 1 -- set by setup()
   math.randomseed(os.time() * 1000 + id * 7919)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if key ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. key
   end
   body_format = '{"mti":"0100","pan":"%s","expiry":"%s","cvc":"%s","processing_code":"000000",'
      .. '"amount":%d,"currency":"GBP","stan":"%06d","rrn":"%02d%010d","transmission_time":"%s",'
      .. '"network_transaction_id":"WRK%sT%dN%d","merchant":' .. merchant .. '}'
end

function request()
   counter = counter + 1
   local card = cards[math.random(#cards)]
   local body = string.format(
      body_format, card[1], card[2], card[3], math.random(100, 5000), counter % 1000000,
      id % 100, counter % 10000000000, os.date("!%Y-%m-%dT%H:%M:%SZ"), nonce, id, counter
   )
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   local code
   if status == 200 then
      code = body:match('"response_code"%s*:%s*"(%w%w)"') or "unparsed"
   else
      code = "http_" .. status
   end
   codes[code] = (codes[code] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for code, n in pairs(thread:get("codes") or {}) do
         total[code] = (total[code] or 0) + n
      end
   end
   local parts = {}
   for code, n in pairs(total) do
      parts[#parts + 1] = string.format('"%s":%d', code, n)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_SUMMARY {"duration_us":%d,"requests":%d,"bytes":%d,"threads":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"codes":{%s},'
         .. '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,'
         .. '"p99_9":%d,"max":%d}}\n',
      summary.duration, summary.requests, summary.bytes, #threads,
      e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ","),
      latency.mean, latency.stdev, latency.min, latency:percentile(50), latency:percentile(75),
      latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max
   ))
end
