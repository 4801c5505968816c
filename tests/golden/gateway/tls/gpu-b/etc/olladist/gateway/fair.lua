-- olladist: fairness and limits per client at the gateway (docs/gateway.md, "Fair across
-- clients"; the keys file: docs/security.md). Shipped with olladist, the same on every node;
-- the node's settings are the table olladist_fair_settings, loaded just before (fair-config.lua).
--
-- The action olladist_fair runs in the public frontend before the scheduler's action, on every
-- request routed by model with API keys, and without them on the requests of a client that
-- already has one at the gateway (a client alone there is at the head of the order anyway). HAProxy has set txn.olladist_client (the SHA-256 digest of
-- the key, or the client's address). It sets:
--   txn.olladist_fair_ms         this request's place in the fair order, in ms (0..500000),
--                                which the scheduler adds to HAProxy's priority offset
--   txn.olladist_max_concurrent  the client's limits, when it has them; the frontend counts
--   txn.olladist_max_rpm         them in a stick table and answers 429
--   txn.olladist_rpm_retry       Retry-After for the rate limit, in seconds
--   txn.olladist_class           the key's priority class (-1 high, 1 low), when not normal
--
-- The order is a virtual clock over requests: each client has a finish time F; a request
-- starts at S = max(now, F) and moves F to S + cost/weight, with F never further ahead than
-- the client's own requests at the gateway, and the cost measured so that a client's share
-- of the answers moves its clock as fast as the wall clock. HAProxy serves its queue by
-- arrival time plus offset, so with offset S - now it serves by S: a client sending more
-- than its share runs ahead and its requests sort after those of lighter clients, while its
-- own stay in arrival order. State is this process's: a reload starts it afresh.

local CFG = olladist_fair_settings
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
    weight = key.weight,
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
        error(string.format("%s:%d: not a valid API key line: %s%s", CFG.keys_file, n, why,
          HINT), 0)
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
-- ms of virtual time one request costs a client of weight 1: about the time between two
-- requests of one client when the active clients share the gateway's answers equally (active
-- clients / answers a second, times MARGIN), measured over windows; the configured cost until
-- answers come in.
local cost = CFG.cost_ms
local MIN_COST, MAX_COST = 1, 60000
local WINDOW_MS, MIN_ANSWERS, MARGIN = 2000, 5, 2
local window_start, active, seen = nil, 0, {}
local finish = {} -- client -> the virtual finish time of its latest request (wall ms)
local clients, sweep_at = 0, SWEEP_AT

local function sweep(now)
  local kept = 0
  for client, f in pairs(finish) do
    if f <= now then finish[client] = nil else kept = kept + 1 end
  end
  clients = kept
  sweep_at = math.max(SWEEP_AT, 2 * kept)
end

-- Requests this process has sent to instances so far: HAProxy's own counters of the servers
-- of the backends public requests go through (CFG.backends; read once a window: an action on
-- every answer cost more than this whole file).
local routes
local function sent_to_instances()
  if routes == nil then
    routes = {}
    for _, name in ipairs(CFG.backends) do
      if core.backends[name] then routes[#routes + 1] = core.backends[name] end
    end
  end
  -- The servers' counts: a request counts once it leaves the queue for an instance (the
  -- backend's own count includes those that wait and time out).
  local total = 0
  for _, be in ipairs(routes) do
    for _, srv in pairs(be.servers) do total = total + (tonumber(srv:get_stats().stot) or 0) end
  end
  return total
end

local last_total = 0
local function measure(now)
  local total = sent_to_instances()
  local answered = total - last_total
  if window_start ~= nil and answered >= MIN_ANSWERS then
    -- Twice the equal-share spacing: while a flood builds up, its requests come due
    -- no faster than half the gateway's pace, which leaves the rest to lighter clients.
    local k = MARGIN * active * (now - window_start) / answered
    cost = math.min(MAX_COST, math.max(MIN_COST, (cost + k) / 2))
  end
  if window_start == nil or answered >= MIN_ANSWERS or now - window_start > 10 * WINDOW_MS then
    window_start, last_total, active, seen = now, total, 0, {}
  end
end

core.register_action("olladist_fair", { "http-req" }, function(txn)
  local client = txn:get_var("txn.olladist_client")
  if client == nil then return end
  local e = KEYS[client] or ANY
  if FAIR then
    local t = core.now()
    local now = t.sec * 1000 + t.usec // 1000
    if window_start == nil or now - window_start >= WINDOW_MS then measure(now) end
    if not seen[client] then
      seen[client] = true
      active = active + 1
    end
    local step = cost / e.weight
    local f = finish[client]
    if f == nil then
      clients = clients + 1
      if clients > sweep_at then sweep(now) end
      f = now
    end
    -- Never further ahead than the client's own requests at the gateway (the stick table's
    -- count, this one included): requests that timed out or were cut are not charged.
    local bound = now + ((txn.sf:sc0_conn_cur() or 1) - 1) * step
    if f > bound then f = bound end
    local start = f > now and f or now
    if start > now + HORIZON_MS then start = now + HORIZON_MS end
    finish[client] = start + step
    txn:set_var("txn.olladist_fair_ms", math.floor(start - now))
  end
  if e.conc then txn:set_var("txn.olladist_max_concurrent", e.conc) end
  if e.rpm then
    txn:set_var("txn.olladist_max_rpm", e.rpm)
    txn:set_var("txn.olladist_rpm_retry", e.retry)
  end
  if e.class then txn:set_var("txn.olladist_class", e.class) end
end, 0)
