-- olladist: fairness and limits per client at the gateway (docs/gateway.md, "Fair across
-- clients"; the keys file: docs/security.md). Shipped with olladist, the same on every node;
-- the node's settings are the table OLLADIST_FAIR, loaded just before (fair-config.lua).
--
-- The action olladist_fair runs in the public frontend on every request routed by model,
-- before the scheduler's action. HAProxy has set txn.olladist_client (the SHA-256 digest of
-- the key, or the client's address). It sets:
--   txn.olladist_fair_ms         this request's place in the fair order, in ms (0..500000),
--                                which the scheduler adds to HAProxy's priority offset
--   txn.olladist_fair_tag        its virtual start tag, for olladist_fair_served
--   txn.olladist_max_concurrent  the client's limits, when it has them; the frontend counts
--   txn.olladist_max_rpm         them in a stick table and answers 429
--   txn.olladist_rpm_retry       Retry-After for the rate limit, in seconds
--   txn.olladist_class           the key's priority class (-1 high, 1 low), when not normal
--
-- The order is start-time fair queuing over requests: each client has a finish tag F; a
-- request starts at S = max(V, F) and moves F to S + cost/weight, where V is the tag of the
-- latest request answered (olladist_fair_served, on the response). HAProxy serves its queue
-- by arrival time plus offset; the offset is how far S lies ahead of V, in wall ms at the
-- pace V moves, so the queue serves about by S: a client sending more than its share runs
-- ahead and its requests sort after those of lighter clients, while its own stay in arrival
-- order. State is this process's: a reload starts it afresh.

local CFG = OLLADIST_FAIR
assert(CFG, "fair-config.lua must be loaded before fair.lua")

-- HAProxy takes priority offsets within +-524287 ms; the contract between the gateway's
-- actions keeps this one within 500000.
local HORIZON_MS = 500000
-- Clients whose clock has fallen behind now are the same as clients never seen: the table is
-- swept of them when it grows past this (many client addresses).
local SWEEP_AT = 10000

local CLASSES = { high = -1, normal = 0, low = 1 }
local SETTINGS = {
  name = true, weight = true, class = true, max_concurrent = true, requests_per_minute = true,
}
local MAX_WEIGHT, MAX_CONCURRENT, MAX_RPM = 1000, 100000, 1000000
local HINT = " (one key a line: DIGEST [name=N] [weight=N] [class=high|normal|low]"
  .. " [max_concurrent=N] [requests_per_minute=N]; docs/security.md)"

-- A limit setting: N in 1..top, or "none" (0: no limit for this key, whatever the default).
local function limit(value, top)
  if value == "none" then return 0 end
  local n = value:match("^%d+$") and tonumber(value)
  if n and n >= 1 and n <= top then return n end
  return nil
end

-- The settings of one line (its words), or nil and what is wrong: the same rules and words
-- as olladist/apikeys.py, which `olladist key check` and the tests hold this to.
local function parse_line(words)
  local digest = words[1]
  if not digest:match("^" .. string.rep("[0-9a-f]", 64) .. "$") then
    if digest:lower():match("^" .. string.rep("[0-9a-f]", 64) .. "$") then
      return nil, "the digest must be lowercase hex (HAProxy compares it as written)"
    end
    return nil, "'" .. digest:sub(1, 20) .. "' is not a SHA-256 digest (64 hex digits); the"
      .. " file holds digests, never keys"
  end
  local key, seen = { weight = 1, class = 0 }, {}
  for i = 2, #words do
    local field, value = words[i]:match("^([^=]*)=(.*)$")
    if not field or not SETTINGS[field] then
      return nil, "unknown setting '" .. words[i]:sub(1, 40) .. "'"
    end
    if seen[field] then return nil, field .. " is set twice" end
    seen[field] = true
    if field == "name" then
      if not value:match("^[A-Za-z0-9_.@-]+$") or #value > 64 then
        return nil, "name must be 1-64 letters, digits or _.@-"
      end
    elseif field == "weight" then
      local n = value:match("^%d+$") and tonumber(value)
      if not n or n < 1 or n > MAX_WEIGHT then
        return nil, "weight must be a whole number from 1 to " .. MAX_WEIGHT
      end
      key.weight = n
    elseif field == "class" then
      if CLASSES[value] == nil then return nil, "class must be high, normal or low" end
      key.class = CLASSES[value]
    else
      local top = field == "max_concurrent" and MAX_CONCURRENT or MAX_RPM
      local n = limit(value, top)
      if not n then
        return nil, field .. " must be a whole number from 1 to " .. top .. ", or none"
      end
      key[field] = n
    end
  end
  return key
end

-- What a request needs, precomputed per key (and once for every client address).
local function entry(key)
  local conc = key.max_concurrent or CFG.max_concurrent
  local rpm = key.requests_per_minute or CFG.requests_per_minute
  return {
    step = CFG.cost_ms / key.weight,
    class = key.class ~= 0 and key.class or nil,
    conc = conc and conc > 0 and conc or nil,
    rpm = rpm and rpm > 0 and rpm or nil,
    -- The window slides: one more request fits about 60/rpm seconds after the limit is hit.
    retry = rpm and rpm > 0 and math.max(1, math.ceil(60 / rpm)) or nil,
  }
end

-- Read at load (start, reload and `haproxy -c`): a bad line fails the config, so a reload
-- with it never replaces the running gateway.
local KEYS = {}
if CFG.keys_file then
  local f, err = io.open(CFG.keys_file, "r")
  if not f then error("cannot read the API keys file: " .. tostring(err), 0) end
  local n, lines = 0, {}
  for raw in f:lines() do
    n = n + 1
    local words = {}
    for w in raw:gmatch("%S+") do words[#words + 1] = w end
    if #words > 0 and words[1]:sub(1, 1) ~= "#" then
      local key, why = parse_line(words)
      if not key then
        f:close()
        error(string.format("%s:%d: %s%s", CFG.keys_file, n, why, HINT), 0)
      end
      if lines[words[1]] then
        f:close()
        error(string.format("%s:%d: this digest is already on line %d", CFG.keys_file, n,
          lines[words[1]]), 0)
      end
      lines[words[1]] = n
      KEYS[words[1]] = entry(key)
    end
  end
  f:close()
end
local ANY = entry({ weight = 1, class = 0 })

local FAIR = CFG.fair
-- The system virtual time V: the start tag of the latest request answered (start-time fair
-- queuing). Tags are virtual ms; V moves `rate` virtual ms per wall ms, measured, so that an
-- offset in wall ms, (S - V) / rate, is about when the fair order reaches the request.
local V = 0
local rate, MIN_RATE, RATE_WINDOW_MS = 1, 1, 1000
local mark_ms, mark_v = nil, 0
-- A request the fair order would reach only after the queue timeout is placed there: it
-- waits last rather than move its client's clock (and its later requests) further out.
local reach_ms = math.min(HORIZON_MS, CFG.queue_ms)
local finish = {} -- client -> the virtual finish tag of its latest request
local clients, sweep_at = 0, SWEEP_AT

local function sweep()
  local kept = 0
  for client, f in pairs(finish) do
    if f <= V then finish[client] = nil else kept = kept + 1 end
  end
  clients = kept
  sweep_at = math.max(SWEEP_AT, 2 * kept)
end

local function now_ms()
  local t = core.now()
  return t.sec * 1000 + t.usec // 1000
end

core.register_action("olladist_fair", { "http-req" }, function(txn)
  local client = txn:get_var("txn.olladist_client")
  if client == nil then return end
  local e = KEYS[client] or ANY
  if FAIR then
    local f = finish[client]
    if f == nil then
      clients = clients + 1
      if clients > sweep_at then sweep() end
    end
    -- No credit for a client that was idle, and no debt beyond what can be served in time.
    local start = (f ~= nil and f > V) and f or V
    local last = V + reach_ms * rate
    if start > last then start = last end
    finish[client] = start + e.step
    txn:set_var("txn.olladist_fair_ms", math.floor((start - V) / rate))
    txn:set_var("txn.olladist_fair_tag", math.floor(start))
  end
  if e.conc then txn:set_var("txn.olladist_max_concurrent", e.conc) end
  if e.rpm then
    txn:set_var("txn.olladist_max_rpm", e.rpm)
    txn:set_var("txn.olladist_rpm_retry", e.retry)
  end
  if e.class then txn:set_var("txn.olladist_class", e.class) end
end, 0)

-- A response from an instance: its request's tag is where the fair order has got to.
core.register_action("olladist_fair_served", { "http-res" }, function(txn)
  local tag = txn:get_var("txn.olladist_fair_tag")
  if tag == nil then return end
  if tag > V then V = tag end
  local now = now_ms()
  if mark_ms == nil then
    mark_ms, mark_v = now, V
  elseif now - mark_ms >= RATE_WINDOW_MS then
    local measured = (V - mark_v) / (now - mark_ms)
    rate = math.max(MIN_RATE, (rate + measured) / 2)
    mark_ms, mark_v = now, V
  end
end, 0)
