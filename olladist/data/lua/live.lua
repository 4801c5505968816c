-- The gateway's live view of the cluster (docs/gateway.md, "The live view").
-- Shipped with olladist (olladist/data/lua/live.lua) and installed unchanged on every node; the
-- node's own part is the table OLLADIST_LIVE, set by live-config.lua (rendered per node), which
-- HAProxy loads just before this file (two lua-load lines, one Lua state).
--
-- Tasks inside HAProxy poll this node's instances (/api/tags, /api/ps) and the peers'
-- /olladist/v1/live, and keep the result in memory and in two HAProxy maps of the models every
-- holder can serve right now. Requests for those models pay one map lookup and no Lua; others
-- run `olladist_await`, which waits for a ready holder or answers why there is none. If this
-- code fails, the maps keep their last content and requests keep being routed by them.

local C = OLLADIST_LIVE
if type(C) ~= "table" then
  error("olladist live.lua: OLLADIST_LIVE is not set: live-config.lua must be loaded (lua-load) before live.lua", 0)
end
---------------------------------------------------------------------------------------------
-- JSON. HAProxy ships no decoder for Lua. Decoded objects keep their source text under RAW,
-- so entries from a holder are passed on byte for byte (size, digest, modified_at, details).
---------------------------------------------------------------------------------------------

local RAW = {}
local ARRAY = {}
local NULL = {} -- encodes as null (a nil value would drop the key)
local MAX_DEPTH = 64
local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function skip_ws(s, i)
  return string.find(s, "[^ \t\r\n]", i) or (#s + 1)
end

local function parse_string(s, i)
  local out = {}
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if not k then error("unterminated string", 0) end
    if k > j then out[#out + 1] = string.sub(s, j, k - 1) end
    if string.sub(s, k, k) == '"' then return table.concat(out), k + 1 end
    local e = string.sub(s, k + 1, k + 1)
    if e == "u" then
      local hex = string.match(s, "^%x%x%x%x", k + 2)
      if not hex then error("bad \\u escape", 0) end
      local cp = tonumber(hex, 16)
      j = k + 6
      local lo = string.match(s, "^\\u([dD][c-fC-F]%x%x)", j)
      if cp >= 0xD800 and cp <= 0xDBFF and lo then
        cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(lo, 16) - 0xDC00)
        j = j + 6
      elseif cp >= 0xD800 and cp <= 0xDFFF then
        cp = 0xFFFD -- a lone surrogate, as Go's decoder reads it
      end
      out[#out + 1] = utf8.char(cp)
    else
      local r = ESCAPES[e]
      if not r then error("bad escape", 0) end
      out[#out + 1] = r
      j = k + 2
    end
  end
end

local parse_value

local function parse_object(s, i, depth)
  local obj, start = {}, i
  i = skip_ws(s, i + 1)
  if string.sub(s, i, i) == "}" then
    obj[RAW] = string.sub(s, start, i)
    return obj, i + 1
  end
  while true do
    if string.sub(s, i, i) ~= '"' then error("expected a key", 0) end
    local key, v
    key, i = parse_string(s, i)
    i = skip_ws(s, i)
    if string.sub(s, i, i) ~= ":" then error("expected ':'", 0) end
    v, i = parse_value(s, skip_ws(s, i + 1), depth + 1)
    obj[key] = v
    i = skip_ws(s, i)
    local c = string.sub(s, i, i)
    if c == "}" then
      obj[RAW] = string.sub(s, start, i)
      return obj, i + 1
    end
    if c ~= "," then error("expected ',' or '}'", 0) end
    i = skip_ws(s, i + 1)
  end
end

local function parse_array(s, i, depth)
  local arr = setmetatable({}, ARRAY)
  i = skip_ws(s, i + 1)
  if string.sub(s, i, i) == "]" then return arr, i + 1 end
  while true do
    local v
    v, i = parse_value(s, i, depth + 1)
    arr[#arr + 1] = v
    i = skip_ws(s, i)
    local c = string.sub(s, i, i)
    if c == "]" then return arr, i + 1 end
    if c ~= "," then error("expected ',' or ']'", 0) end
    i = skip_ws(s, i + 1)
  end
end

parse_value = function(s, i, depth)
  if depth > MAX_DEPTH then error("nested too deep", 0) end
  local c = string.sub(s, i, i)
  if c == "{" then return parse_object(s, i, depth) end
  if c == "[" then return parse_array(s, i, depth) end
  if c == '"' then return parse_string(s, i) end
  local num = string.match(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if num and #num > 0 then return tonumber(num), i + #num end
  for word, value in pairs({ ["true"] = true, ["false"] = false, null = false }) do
    if string.sub(s, i, i + #word - 1) == word then
      if word == "null" then return nil, i + 4 end
      return value, i + #word
    end
  end
  error("unexpected character at " .. i, 0)
end

local function decode(s)
  local ok, v, i = pcall(parse_value, s, skip_ws(s, 1), 0)
  if not ok then return nil, v end
  if skip_ws(s, i) <= #s then return nil, "trailing data" end
  return v
end

local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return named[c] or string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

local encode

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

-- Tables made by the decoder encode as their source text; arrays are marked with ARRAY.
encode = function(v)
  local kind = type(v)
  if kind == "nil" then return "null" end
  if kind == "boolean" then return v and "true" or "false" end
  if kind == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  end
  if kind == "string" then return quote(v) end
  if v == NULL then return "null" end
  if v[RAW] then return v[RAW] end
  local parts = {}
  if getmetatable(v) == ARRAY then
    for _, item in ipairs(v) do parts[#parts + 1] = encode(item) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  for _, k in ipairs(sorted_keys(v)) do parts[#parts + 1] = quote(k) .. ":" .. encode(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function array(t)
  return setmetatable(t or {}, ARRAY)
end

---------------------------------------------------------------------------------------------
-- Names and times
---------------------------------------------------------------------------------------------

-- As olladist.names.normalize_model and the config's own rules (tests check they agree).
local function normalize(name)
  if type(name) ~= "string" then return nil end
  local n = string.lower(name)
  if string.match(n, "^registry%.ollama%.ai/[^/]+/[^/]+$") then n = string.sub(n, 20) end
  if string.match(n, "^library/[^/]+$") then n = string.sub(n, 9) end
  if not string.match(n, ":[^/]*$") then n = n .. ":latest" end
  return n
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

-- RFC 3339 (as Ollama prints modified_at) to Unix seconds, for /v1/models' `created`.
local function unix_time(ts)
  if type(ts) ~= "string" then return 0 end
  local y, mo, d, h, mi, s, rest = string.match(ts, "^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)(.*)$")
  if not y then return 0 end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  local sign, oh, om = string.match(rest, "([-+])(%d%d):(%d%d)$")
  if sign then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    t = sign == "+" and t - off or t + off
  end
  return t
end

local function now_ms()
  local t = core.now()
  return t.sec * 1000 + t.usec // 1000
end

---------------------------------------------------------------------------------------------
-- State. Written by the poll tasks, read by services and actions (one Lua state: lua-load).
---------------------------------------------------------------------------------------------

local S = {
  inst = {}, -- instance name -> {at, ok, store = {model -> entry}, loaded = {entry}, err}
  peer = {}, -- node -> {at, report, err}
  view = nil, -- the last computed view (recompute)
  ready = {}, -- map file -> {model -> true} as last written to HAProxy
  waiting = 0,
}

-- Run after every recompute of the view (the scheduler's warm.map, below).
local AFTER_RECOMPUTE = {}

local function server_stats(backend, name)
  local be = core.backends[backend]
  local srv = be and be.servers[name]
  if not srv then return nil end
  return srv:get_stats()
end

local function status_of(backend, name)
  local st = server_stats(backend, name)
  return st and st.status or "NONE"
end

-- "UP", "UP 1/2" (failing, still in rotation), "DOWN 1/2" (recovering), "DOWN", "DRAIN",
-- "MAINT", "MAINT (via ...)", "no check".
local function is_up(status)
  return string.sub(status, 1, 2) == "UP" or status == "no check"
end

local function is_dead(status)
  return status == "DOWN" or status == "NONE"
end

local function is_held(status)
  return status == "DRAIN" or string.sub(status, 1, 5) == "MAINT"
end

local function fresh(rec, now)
  return rec ~= nil and rec.ok and now - rec.at <= C.stale_ms
end

local function http_get(url, dst, headers)
  local client = core.httpclient()
  local ok, res = pcall(client.get, client, {
    url = url,
    dst = dst,
    headers = headers,
    timeout = C.probe_timeout_ms,
  })
  if not ok then return nil, tostring(res) end
  if not res or not res.status or res.status == 0 then return nil, "no answer" end
  if res.status ~= 200 then return nil, "HTTP " .. res.status end
  return res.body or ""
end

---------------------------------------------------------------------------------------------
-- The view: what each holder can serve, computed after every poll.
---------------------------------------------------------------------------------------------

local function local_view(now)
  local v = { instances = {}, store = {}, ready_any = false, up_any = false, held_any = false,
              starting = false }
  for _, inst in ipairs(C.instances) do
    local status = status_of("instances", inst.name)
    local rec = S.inst[inst.name]
    local answers = fresh(rec, now)
    local ready = is_up(status) and answers
    v.instances[inst.name] = { status = status, ready = ready, answers = answers }
    if answers then
      for key, entry in pairs(rec.store) do
        if not v.store[key] then v.store[key] = entry end
      end
    end
    if ready then v.ready_any = true end
    if is_up(status) then v.up_any = true end
    if is_held(status) then v.held_any = true end
    -- Coming: not asked yet (a fresh worker after a reload), up but not answering yet,
    -- answering but its check not passed yet (just started), or a check recovering.
    if rec == nil or is_up(status) ~= answers or (not is_dead(status) and not is_up(status) and not is_held(status)) then
      v.starting = true
    end
  end
  return v
end

-- This node's state for a model it holds: state, reason, and whether it may become ready.
-- Pulls in progress, as the reconciler tells them (olladist/gateway/pulls.py).
local PULLS = Map.new(C.pulls_map, Map._str)

local function local_model_state(lv, model)
  if lv.store[model] == nil then
    local pull = PULLS:lookup(model)
    if pull == "failed" then return "failed", "pull failed", false end
    if pull then
      if lv.ready_any then return "pulling", "pulling (" .. pull .. ")", true end
    end
  end
  if lv.ready_any and lv.store[model] then return "ready", "ready", true end
  if lv.ready_any then return "missing", "not in its model store yet", true end
  if lv.held_any then return "restarting", "restarting (drained)", true end
  if lv.starting then return "starting", "starting", true end
  if #C.instances == 0 then return "down", "no instances", false end
  return "down", "down", false
end

local function peer_view(node, now)
  local status = status_of("peers", "peer." .. node)
  local rec = S.peer[node]
  local report = fresh(rec, now) and rec.report or nil
  return { status = status, report = report, up = is_up(status) }
end

-- A holder node's readiness for a model, and why not.
local function node_model_state(view, node, model)
  if node == C.node then
    return local_model_state(view.lv, model)
  end
  local pv = view.peers[node]
  if not pv then return "down", "unknown node", false end
  if not pv.up then
    -- Its gateway's check fails (no instance of it takes requests), but its report still
    -- comes: it says whether that is a restart (coming) or the end.
    local placed = pv.report and type(pv.report.placed) == "table" and pv.report.placed[model]
    if type(placed) == "table" and placed.state ~= "ready" then
      return placed.state, placed.reason or placed.state, placed.coming ~= false
    end
    if pv.report then return "starting", "starting", true end
    if is_dead(pv.status) then return "down", "down", false end
    return "starting", "gateway " .. string.lower(pv.status), true
  end
  if not pv.report then
    local rec = S.peer[node]
    if rec and rec.legacy and view.at - rec.at <= C.stale_ms then
      -- An older olladist (its peer port answers 404 to /olladist/v1/live): its health check
      -- is UP, so placement is trusted, as before this view existed.
      return "ready", "ready (no live report)", true, true
    end
    -- Not asked yet (this worker just started), or it stopped answering.
    return "starting", "not answering", true
  end
  local placed = type(pv.report.placed) == "table" and pv.report.placed[model]
  if type(placed) ~= "table" then return "missing", "does not hold it (another commit?)", true end
  return placed.state, placed.reason or placed.state, placed.coming ~= false
end

local function server_ready(view, srv, model)
  if srv.instance then
    local iv = view.lv.instances[srv.instance]
    if iv == nil or view.lv.store[model] == nil then return false end
    if iv.ready then return true end
    -- Drained (or in maintenance) when the view was made, and set ready since: the view is
    -- as old as its last poll, the end of a drain is not (until the next poll every request
    -- went to the other instances).
    return iv.answers and is_held(iv.status) and is_up(status_of("instances", srv.instance))
  end
  return (node_model_state(view, srv.node, model)) == "ready"
end

-- The ready maps as HAProxy holds them: the reconciler clears them when it drains an
-- instance (olladist.drain), so that the requests of that moment go through await, which sees
-- the drain at once, instead of to a backend with no usable server; the next recompute puts
-- back what is ready.
local READY_MAPS = { [C.ready_map] = Map.new(C.ready_map, Map._str) }
if C.local_ready_map then READY_MAPS[C.local_ready_map] = Map.new(C.local_ready_map, Map._str) end

local function set_map(file, want)
  local have = S.ready[file] or {}
  local held = READY_MAPS[file]
  for key in pairs(have) do
    if not want[key] then core.del_map(file, key) end
  end
  for key in pairs(want) do
    if not have[key] or (held and held:lookup(key) == nil) then core.set_map(file, key, "1") end
  end
  S.ready[file] = want
end

local function recompute()
  local now = now_ms()
  local view = { at = now, lv = local_view(now), peers = {} }
  for _, p in ipairs(C.peers) do view.peers[p.node] = peer_view(p.node, now) end
  S.view = view
  local public, peer = {}, {}
  for model, m in pairs(C.models) do
    local all = #m.servers > 0
    for _, srv in ipairs(m.servers) do
      if not server_ready(view, srv, model) then all = false break end
    end
    if all then public[model] = true end
  end
  for model, m in pairs(C.local_models) do
    local all = #m.servers > 0
    for _, srv in ipairs(m.servers) do
      if not server_ready(view, srv, model) then all = false break end
    end
    if all then peer[model] = true end
  end
  set_map(C.ready_map, public)
  if C.local_ready_map then set_map(C.local_ready_map, peer) end
  for _, hook in ipairs(AFTER_RECOMPUTE) do hook(view) end
end

---------------------------------------------------------------------------------------------
-- Pollers: one task per instance and per peer, so a hung one delays nobody else.
---------------------------------------------------------------------------------------------

local function pause()
  -- Poll faster while requests wait for a holder, so they are released sooner.
  core.msleep(S.waiting > 0 and C.fast_ms or C.poll_ms)
end

local function safe_recompute()
  local ok, err = pcall(recompute)
  if not ok then core.Warning("olladist live view: " .. tostring(err)) end
end

local function models_of(body)
  local doc = decode(body)
  if type(doc) ~= "table" or getmetatable(doc.models) ~= ARRAY then return nil end
  return doc.models
end

local function poll_instance(inst)
  local base = "http://localhost:" .. inst.port
  local dst = "127.0.0.1:" .. inst.port
  while true do
    local rec = { at = now_ms(), ok = false, store = {}, loaded = {} }
    -- Asked whatever its check says: a DOWN instance that answers is starting, not dead (a
    -- refused connection costs nothing).
    do
      local body, err = http_get(base .. "/api/tags", dst)
      local models = body and models_of(body)
      if models then
        rec.ok = true
        for _, entry in ipairs(models) do
          local key = type(entry) == "table" and normalize(entry.name or entry.model)
          if key then rec.store[key] = entry end
        end
        local ps = http_get(base .. "/api/ps", dst)
        rec.loaded = (ps and models_of(ps)) or {}
        -- For loaded-first: model -> the loaded runner's context and VRAM.
        rec.loadedset = {}
        for _, entry in ipairs(rec.loaded) do
          local key = type(entry) == "table" and normalize(entry.name or entry.model)
          if key then
            rec.loadedset[key] = { ctx = tonumber(entry.context_length),
              vram = tonumber(entry.size_vram) or 0 }
          end
        end
      else
        rec.err = err or "bad /api/tags answer"
      end
    end
    local last = S.inst[inst.name]
    if not rec.ok and fresh(last, rec.at) and status_of("instances", inst.name) == "UP" then
      -- A slow answer from a busy instance whose checks all pass: the last one stands until
      -- it is stale. A dead instance fails its next check ("UP 1/2") and is dropped then.
      last.err = rec.err
    else
      S.inst[inst.name] = rec
    end
    safe_recompute()
    pause()
  end
end

local function poll_peer(peer)
  while true do
    local rec = { at = now_ms(), ok = false }
    -- Asked even when its check is DOWN (option persist in olladist_feed): a peer whose
    -- instances restart says so in its report.
    do
      local body, err = http_get("http://localhost/olladist/v1/live", "unix@" .. C.feed_socket,
        { ["x-olladist-to"] = { peer.server } })
      local report = body and decode(body)
      -- The feed backend falls back to another peer if this one is down: check who answered.
      if type(report) == "table" and report.node == peer.node then
        rec.ok, rec.report, rec.err = true, report, nil
      else
        rec.err = err or "bad live report"
        rec.legacy = err == "HTTP 404"
      end
    end
    local last = S.peer[peer.node]
    if not rec.ok and fresh(last, rec.at) then
      -- One slow or lost answer (a busy node) does not flap the view: the last report stands
      -- until it is stale (three polls), with the error shown.
      last.err = rec.err
    else
      S.peer[peer.node] = rec
    end
    safe_recompute()
    pause()
  end
end

for _, inst in ipairs(C.instances) do
  core.register_task(function() poll_instance(inst) end)
end
for _, peer in ipairs(C.peers) do
  core.register_task(function() poll_peer(peer) end)
end
if #C.instances == 0 and #C.peers == 0 then
  core.register_task(function() safe_recompute() end)
end

---------------------------------------------------------------------------------------------
-- The cluster view: /api/tags, /v1/models, /api/ps, /olladist/v1/live
---------------------------------------------------------------------------------------------

-- Every model placed here or elsewhere that a ready holder has in its store, with that
-- holder's own entry (this node's first, then the peers' in name order).
local function listed()
  local view = S.view
  local out = {}
  if not view then return out end
  for model, m in pairs(C.models) do
    local entry, trusted_any
    for _, node in ipairs(m.holders) do
      local state, _, _, trusted = node_model_state(view, node, model)
      if state == "ready" then
        if node == C.node then
          entry = view.lv.store[model]
          break
        elseif trusted then
          trusted_any = true
        elseif not entry then
          local pm = view.peers[node].report.models
          for _, item in ipairs(type(pm) == "table" and pm or {}) do
            if type(item) == "table" and item.name == model and type(item.entry) == "table" then
              entry = item.entry
            end
          end
        end
      end
    end
    -- A peer without a live report is trusted by placement: the spec's entry stands in.
    entry = entry or (trusted_any and m.fallback) or nil
    if entry then out[#out + 1] = { name = model, entry = entry } end
  end
  local function mtime(item)
    return type(item.entry) == "table" and unix_time(item.entry.modified_at) or 0
  end
  -- Ollama lists the most recently modified first.
  table.sort(out, function(a, b)
    local ta, tb = mtime(a), mtime(b)
    if ta ~= tb then return ta > tb end
    return a.name < b.name
  end)
  return out
end

local function reply(applet, status, body, extra)
  applet:set_status(status)
  applet:add_header("content-type", "application/json; charset=utf-8")
  applet:add_header("content-length", tostring(#body))
  for k, v in pairs(extra or {}) do applet:add_header(k, v) end
  applet:start_response()
  if applet.method ~= "HEAD" then applet:send(body) end
end

local function entry_text(entry)
  return type(entry) == "string" and entry or encode(entry)
end

core.register_service("olladist_tags", "http", function(applet)
  local parts = {}
  for _, item in ipairs(listed()) do parts[#parts + 1] = entry_text(item.entry) end
  reply(applet, 200, '{"models":[' .. table.concat(parts, ",") .. "]}")
end)

-- An OpenAI model object, as Ollama builds it from the store entry.
local function model_object(item, id)
  local entry = type(item.entry) == "table" and item.entry or decode(item.entry) or {}
  local owner = string.match(item.name, "^(.*)/[^/]*$")
  owner = owner and string.match(owner, "([^/]*)$") or "library"
  return encode({ id = id or item.name, object = "model",
    created = math.tointeger(unix_time(entry.modified_at)) or 0, owned_by = owner })
end

core.register_service("olladist_v1_models", "http", function(applet)
  local parts = {}
  for _, item in ipairs(listed()) do parts[#parts + 1] = model_object(item) end
  reply(applet, 200, '{"object":"list","data":[' .. table.concat(parts, ",") .. "]}")
end)

-- GET /v1/models/NAME: the model when it is listed (shown under the name asked, as Ollama
-- does), else 404 in the OpenAI shape.
core.register_service("olladist_v1_model", "http", function(applet)
  local model = applet:get_var("txn.model")
  local raw = applet:get_var("txn.model_raw") or model or ""
  for _, item in ipairs(listed()) do
    if item.name == model then return reply(applet, 200, model_object(item, raw)) end
  end
  reply(applet, 404, encode({ error = { message = "model '" .. raw .. "' not found",
    type = "not_found_error", param = NULL, code = NULL } }))
end)

-- Each loaded model once, as Ollama's clients read it, with where it is loaded added in
-- `loaded_on` ("node/instance").
core.register_service("olladist_ps", "http", function(applet)
  local view = S.view
  local seen, order = {}, {}
  local function add(where, entry)
    if type(entry) ~= "table" then return end
    local key = normalize(entry.name or entry.model)
    if not key then return end
    if not seen[key] then
      seen[key] = { entry = entry, where = {} }
      order[#order + 1] = key
    end
    table.insert(seen[key].where, where)
  end
  local now = now_ms()
  for _, inst in ipairs(C.instances) do
    local rec = S.inst[inst.name]
    -- Not an instance HAProxy has marked down since its last answer.
    if fresh(rec, now) and not is_dead(status_of("instances", inst.name)) then
      for _, entry in ipairs(rec.loaded) do add(C.node .. "/" .. inst.name, entry) end
    end
  end
  for _, p in ipairs(C.peers) do
    local pv = view and view.peers[p.node]
    local loaded = pv and pv.report and pv.report.loaded
    for _, item in ipairs(type(loaded) == "table" and loaded or {}) do
      if type(item) == "table" then add(p.node .. "/" .. tostring(item.instance), item.entry) end
    end
  end
  local parts = {}
  for _, key in ipairs(order) do
    local item = seen[key]
    table.sort(item.where)
    local text = item.entry[RAW] or encode(item.entry)
    local where = encode(array(item.where))
    -- The holder's entry as it gave it, with one field added before its closing brace.
    if string.match(text, "^%s*{%s*}%s*$") then
      parts[#parts + 1] = '{"loaded_on":' .. where .. "}"
    else
      parts[#parts + 1] = string.gsub(text, "}%s*$", ',"loaded_on":' .. where .. "}")
    end
  end
  reply(applet, 200, '{"models":[' .. table.concat(parts, ",") .. "]}")
end)

local function in_flight(name)
  local n = 0
  for bname, be in pairs(core.backends) do
    local srv = be.servers[name]
    if srv and bname ~= "peers" and bname ~= "olladist_feed" then
      local st = srv:get_stats()
      n = n + (tonumber(st.scur) or 0) + (tonumber(st.qcur) or 0)
    end
  end
  return n
end

local SEEN_REPORT -- set by the scheduling section below (it owns what it saw)
local HOLD_REPORT -- likewise: requests waiting at this gateway for this instance's models
local HOLD_STATS -- likewise: how many wait, and how the slots were handed out
local DEMAND_REPORT -- likewise

-- loaded-first: what a peer's scheduler needs of an instance (docs/gateway.md).
local function scheduling_report(item, inst, now)
  item.num_parallel = inst.num_parallel
  item.max_loaded = inst.max_loaded
  local st = server_stats(inst.admit, inst.name)
  if st then
    item.running = tonumber(st.scur) or 0
    item.queued = tonumber(st.qcur) or 0
    item.rate = DEMAND_REPORT and DEMAND_REPORT(inst) or 0 -- requests a second, recently
    -- A request queued on the backend (no server assigned yet) waits for this server too.
    local be = core.backends[inst.admit]
    local bst = be and be:get_stats()
    if bst then item.queued = item.queued + (tonumber(bst.qcur) or 0) end
    if HOLD_REPORT then item.queued = item.queued + HOLD_REPORT(inst) end
  end
  if SEEN_REPORT then item.loaded_models = SEEN_REPORT(inst, now) end
end

-- This node's report, for peers and for the reconciler (docs/gateway.md has its shape).
local function live_report()
  local now = now_ms()
  local view = S.view or { lv = local_view(now), peers = {} }
  local lv = view.lv
  local instances = array()
  for _, inst in ipairs(C.instances) do
    local rec = S.inst[inst.name] or {}
    local iv = lv.instances[inst.name] or {}
    instances[#instances + 1] = {
      name = inst.name,
      addr = "127.0.0.1:" .. inst.port,
      health = iv.status or status_of("instances", inst.name),
      ready = iv.ready == true,
      answered_ms_ago = rec.ok and (now - rec.at) or nil,
      error = rec.err,
      in_flight = in_flight(inst.name),
    }
    scheduling_report(instances[#instances], inst, now)
  end
  local names = sorted_keys(lv.store)
  local models = array()
  for _, name in ipairs(names) do models[#models + 1] = { name = name, entry = lv.store[name] } end
  local loaded = array()
  for _, inst in ipairs(C.instances) do
    local rec = S.inst[inst.name]
    if fresh(rec, now) and not is_dead(status_of("instances", inst.name)) then
      for _, entry in ipairs(rec.loaded) do loaded[#loaded + 1] = { instance = inst.name, entry = entry } end
    end
  end
  local placed = {}
  for _, model in ipairs(C.held) do
    local state, reason, coming = local_model_state(lv, model)
    placed[model] = { state = state, reason = reason, coming = coming }
  end
  local peers = array()
  for _, p in ipairs(C.peers) do
    local rec = S.peer[p.node] or {}
    local pv = view.peers[p.node] or {}
    peers[#peers + 1] = {
      node = p.node,
      health = pv.status or status_of("peers", p.server),
      -- The view keeps a report three polls; reachable is about the last poll.
      reachable = fresh(rec, now) == true and rec.err == nil,
      report_ms_ago = rec.ok and (now - rec.at) or nil,
      error = rec.err,
    }
  end
  local serving = array()
  for _, item in ipairs(listed()) do serving[#serving + 1] = item.name end
  return {
    version = 1,
    cluster = C.cluster,
    node = C.node,
    generated_at_ms = now,
    computed_ms_ago = S.view and (now - S.view.at) or nil,
    poll_ms = C.poll_ms,
    instances = instances,
    models = models,
    loaded = loaded,
    placed = placed,
    peers = peers,
    serving = serving,
    ready = array(sorted_keys(S.ready[C.ready_map] or {})),
    hold = HOLD_STATS and HOLD_STATS() or nil,
  }
end

core.register_service("olladist_live", "http", function(applet)
  reply(applet, 200, encode(live_report()) .. "\n")
end)

---------------------------------------------------------------------------------------------
-- The slow path: a request for a model that not every holder can serve right now.
---------------------------------------------------------------------------------------------

local rotation = 0

-- Whether a local instance is drained right now. The view is as old as its last poll; a drain
-- is not. use-server skips a stopped server but sends to a drained one, and the reconciler
-- restarts a drained instance as soon as its sessions reach zero: a pick from a view older
-- than the drain would reach an instance that is being restarted, and lose the request
-- (docs/troubleshooting.md, "A request cut during a rolling restart"). HAProxy 2.6 returns
-- 0 or 1 here, later versions a boolean.
local function drained_now(srv)
  if not srv.instance then return false end
  local be = core.backends["instances"]
  local s = be and be.servers[srv.instance]
  if not s then return true end
  local d = s:is_draining()
  return d == true or (type(d) == "number" and d ~= 0)
end

-- Ready servers of the model's backend; backups (local-first's peers) only when no other is.
local function ready_servers(view, spec, model)
  local out, backups = {}, {}
  for _, srv in ipairs(spec.servers) do
    if server_ready(view, srv, model) and not drained_now(srv) then
      table.insert(srv.backup and backups or out, srv.name)
    end
  end
  return #out > 0 and out or backups
end

-- Why no holder of the model can serve it, and whether any of them may soon.
local function why_not(view, spec, model)
  local parts, coming = {}, false
  for _, node in ipairs(spec.holders) do
    local state, reason, may = node_model_state(view, node, model)
    if may then coming = true end
    parts[#parts + 1] = node .. " " .. (state == "ready" and "busy" or reason)
  end
  return table.concat(parts, ", "), coming
end

local function await(txn, scope, state)
  local model = txn:get_var("txn.model")
  local spec = (scope == "peer" and C.local_models or C.models)[model]
  if not spec then return end
  local deadline = now_ms() + C.queue_ms
  while true do
    local view = S.view
    if view then
      local cands = ready_servers(view, spec, model)
      if #cands > 0 then
        rotation = rotation + 1
        txn:set_var("txn.olladist_pick", cands[rotation % #cands + 1])
        break
      end
      local why, coming = why_not(view, spec, model)
      if not coming or now_ms() >= deadline then
        local raw = txn:get_var("txn.model_raw") or model
        local where = scope == "peer" and ("on node " .. C.node) or "on any node"
        txn:set_var("txn.olladist_error", '{"error":' .. quote("model '" .. raw .. "' is not ready "
          .. where .. ": " .. why) .. "}")
        txn:set_var("txn.olladist_retry", tostring(coming and C.retry_after_s or C.retry_after_down_s))
        break
      end
    elseif now_ms() >= deadline then
      txn:set_var("txn.olladist_error", '{"error":"the olladist gateway has no live view yet"}')
      txn:set_var("txn.olladist_retry", tostring(C.retry_after_s))
      break
    end
    if not state.waited then
      state.waited = true
      S.waiting = S.waiting + 1
    end
    core.msleep(C.wait_step_ms)
  end
end

core.register_action("olladist_await", { "http-req" }, function(txn, scope)
  local state = { waited = false }
  local ok, err = pcall(await, txn, scope, state)
  -- Counted even when the wait ends in an error, or the pollers would stay fast for good.
  if state.waited then S.waiting = S.waiting - 1 end
  if not ok then error(err, 0) end
end, 1)

---------------------------------------------------------------------------------------------
-- Loaded-first scheduling (docs/gateway.md, "Loaded-first scheduling"). Every instance of this
-- node has an admission backend, admit.<instance>, with one server of maxconn num_parallel:
-- all loaded-first requests that run on it pass there, this gateway's and its peers', so two
-- gateways never overcommit it, and the excess waits in HAProxy's own server queue. This
-- action only chooses where a request queues and its priority there; HAProxy does the rest.
-- Slots in use come from HAProxy's counters (be_conn, queue of the admission backend: 0.3 us
-- each, against 18 us for Server:get_stats), never from counts kept here that a client abort
-- could leak.
---------------------------------------------------------------------------------------------

local INST, INST_BY_ADMIT = {}, {}
for _, inst in ipairs(C.instances) do INST[inst.name], INST_BY_ADMIT[inst.admit] = inst, inst end

-- instance -> model -> {at, ctx}: cold requests this gateway sent to an instance since its
-- last poll. M will be loaded there (planned), so the next requests for M follow it instead
-- of loading M a second time elsewhere.
local SEEN = {}
for _, inst in ipairs(C.instances) do SEEN[inst.name] = {} end

-- instance -> model -> {at, by}: models that a cold load this gateway sent there (of model
-- `by`) will unload. Ollama unloads the victim when its running requests end, then loads, so
-- a request for the victim sent there meanwhile waits behind the load and reloads it: the
-- victim counts as not loaded there until a poll shows `by` loaded (or PLANNED_MS passed).
local GOING = {}
for _, inst in ipairs(C.instances) do GOING[inst.name] = {} end
local is_going -- below: it needs PLANNED_MS

-- model -> admission backend of a local instance it is loaded on. HAProxy itself writes it
-- when an instance answers 200 for a model (http-response set-map: M is loaded there now),
-- and the warm fast path in the config reads it without Lua; after every poll the entries
-- are set again from /api/ps, so evictions leave it within a poll.
local WARM = C.warm_map and Map.new(C.warm_map, Map._str) or nil

local function sync_warm(view)
  if not WARM then return end
  local want, best = {}, {}
  for _, inst in ipairs(C.instances) do
    local rec = S.inst[inst.name]
    local iv = view.lv.instances[inst.name]
    if rec and rec.ok and rec.loadedset and iv and iv.ready
      and not drained_now({ instance = inst.name }) then
      local st = server_stats(inst.admit, inst.name)
      local load = st and ((tonumber(st.scur) or 0) + (tonumber(st.qcur) or 0)) or 0
      load = load / inst.num_parallel
      for key in pairs(rec.loadedset) do
        if (best[key] == nil or load < best[key]) and not is_going(inst, key, view.at) then
          want[key], best[key] = inst.admit, load
        end
      end
    end
  end
  for key in pairs(C.local_models) do
    local have = WARM:lookup(key)
    if want[key] == nil and have then
      core.del_map(C.warm_map, key)
    elseif want[key] and have ~= want[key] then
      -- Kept when it names another instance that has the model loaded too (the last answer).
      local other = have and INST_BY_ADMIT[have]
      local keep = other and S.inst[other.name] and S.inst[other.name].loadedset
        and S.inst[other.name].loadedset[key] and not drained_now({ instance = other.name })
        and not is_going(other, key, view.at)
      if not keep then core.set_map(C.warm_map, key, want[key]) end
    end
  end
end
AFTER_RECOMPUTE[#AFTER_RECOMPUTE + 1] = sync_warm

-- instance -> {at, stot, rate}: requests a second it took recently, a moving average over
-- the polls (about 10 s) of HAProxy's own session total: how much its loaded model is wanted.
local DEMAND = {}
local DEMAND_KEEP = 0.85 -- per second

local function sync_demand(view)
  local now = view.at
  for _, inst in ipairs(C.instances) do
    local st = server_stats(inst.admit, inst.name)
    local stot = st and tonumber(st.stot)
    local d = DEMAND[inst.name]
    if stot and d and now > d.at then
      -- Decayed by time, not per recompute: every poller's answer recomputes, several a
      -- second (and more while requests wait), which made "about 10 s" a second or two.
      local r = (stot - d.stot) * 1000 / (now - d.at)
      local keep = DEMAND_KEEP ^ ((now - d.at) / 1000)
      d.rate = keep * d.rate + (1 - keep) * r
      d.at, d.stot = now, stot
    elseif stot and not d then
      -- (Not when two recomputes share a millisecond: that reset the demand to 0.)
      DEMAND[inst.name] = { at = now, stot = stot, rate = 0 }
    end
  end
end
AFTER_RECOMPUTE[#AFTER_RECOMPUTE + 1] = sync_demand

local function demand_of(inst)
  local d = DEMAND[inst.name]
  return d and d.rate or 0
end

-- A planned load counts this long without a poll or an answer confirming it: it may wait
-- behind warm requests for max_warm_wait, then load.
local PLANNED_MS = C.max_warm_wait_ms + 10000

is_going = function(inst, model, now)
  local g = GOING[inst.name][model]
  if not g then return false end
  local rec = S.inst[inst.name]
  local done = rec and rec.ok and rec.at > g.at and rec.loadedset and rec.loadedset[g.by]
  if done or now - g.at > PLANNED_MS then
    GOING[inst.name][model] = nil
    return false
  end
  return true
end
-- A warm instance whose queue holds more than this many requests per slot is no better than
-- a cold load elsewhere: a load takes seconds (and evicts a model others may want), an answer
-- a fraction of that, so queueing wins until the queue is deep.
local WARM_QUEUE_PER_SLOT = 6
-- Among cold loads that unload a model, each model left loaded nowhere weighs like this many
-- requests per slot of load: an idle instance's only copy of a model goes last.
local VICTIM_WEIGHT = 4
-- ... and the victim's recent demand (requests a second per slot) weighs most: a cold load
-- that waits behind a deep queue elsewhere costs less than unloading a model in use.
local DEMAND_WEIGHT = 10
local LOAD_WEIGHT = 0.25

-- Is `model` loaded (or about to be) on local instance `inst`, with a runner whose context
-- suits `want` (nil: the request names none, any runner will do)? Returns loaded, planned.
local function local_loaded(inst, model, want, now)
  if is_going(inst, model, now) then return false, false end
  local rec = S.inst[inst.name]
  local polled = rec and rec.ok and rec.loadedset and rec.loadedset[model]
  if polled then
    -- The planned load happened: from now on the polls say whether it is still loaded.
    SEEN[inst.name][model] = nil
    return want == nil or polled.ctx == nil or polled.ctx == want, false
  end
  -- It answered for the model since the poll (HAProxy wrote warm.map): loaded, context as
  -- the instance's default (a request naming another one takes the Lua path anyway).
  if WARM and WARM:lookup(model) == inst.admit then
    return want == nil or want == inst.num_ctx, false
  end
  -- Not dropped by the next poll: the cold request may wait max_warm_wait before it loads.
  local seen = SEEN[inst.name][model]
  if seen and now - seen.at <= PLANNED_MS then
    return want == nil or seen.ctx == nil or seen.ctx == want, true
  end
  return false, false
end

-- Loaded models on `inst` and the VRAM they take, as far as this gateway knows.
local function local_residents(inst, now)
  local rec = S.inst[inst.name]
  local n, vram, names = 0, 0, {}
  if rec and rec.ok and rec.loadedset then
    for key, e in pairs(rec.loadedset) do
      names[key] = true
      if not is_going(inst, key, now) then n, vram = n + 1, vram + (e.vram or 0) end
    end
  end
  for key, seen in pairs(SEEN[inst.name]) do
    if not names[key] and now - seen.at <= PLANNED_MS then
      names[key] = true
      n = n + 1
    end
  end
  for key in pairs(C.local_models) do
    if not names[key] and WARM and WARM:lookup(key) == inst.admit then n = n + 1 end
  end
  return n, vram
end

-- Would loading a model of `size` bytes make the instance unload another (Ollama's rules:
-- OLLAMA_MAX_LOADED_MODELS, and whether it fits in VRAM beside what is loaded)?
local function evicts(count, vram_used, max_loaded, vram, size)
  if count >= max_loaded then return true end
  return vram ~= nil and size ~= nil and vram_used + size > vram
end

local function ctx_of(it, model)
  for _, m in ipairs(type(it.loaded_models) == "table" and it.loaded_models or {}) do
    if type(m) == "table" and m.name == model then
      return true, tonumber(m.context_length), m.planned == true
    end
  end
  return false
end

-- How many instances of the cluster have each model loaded (or a load planned), from this
-- node's polls and the peers' reports; computed once per view (it changes after a poll).
local function copies_of(view, now)
  if view.copies then return view.copies end
  local copies = {}
  local function add(key) copies[key] = (copies[key] or 0) + 1 end
  for _, inst in ipairs(C.instances) do
    local rec = S.inst[inst.name]
    local names = {}
    if rec and rec.ok and rec.loadedset then
      for key in pairs(rec.loadedset) do names[key] = true end
    end
    for key, seen in pairs(SEEN[inst.name]) do
      if now - seen.at <= PLANNED_MS then names[key] = true end
    end
    for key in pairs(names) do add(key) end
  end
  for _, pv in pairs(view.peers) do
    local its = pv.report and type(pv.report.instances) == "table" and pv.report.instances or {}
    for _, it in ipairs(its) do
      for _, m in ipairs(type(it) == "table" and type(it.loaded_models) == "table"
          and it.loaded_models or {}) do
        if type(m) == "table" and type(m.name) == "string" then add(m.name) end
      end
    end
  end
  view.copies = copies
  return copies
end

-- For a cold load that unloads what an instance has: how many of its models would then be
-- loaded nowhere else (a later request for them would be a cold load too). Evicting a second
-- copy of a busy model costs nothing; evicting the only copy of one starts a chain of loads.
local function unique_victims(copies, names)
  local n = 0
  for key in pairs(names) do
    if (copies[key] or 0) <= 1 then n = n + 1 end
  end
  return n
end

-- Tiers, best first: 1 loaded with a free slot; 2 loaded, busy (queue there); 3 a cold load
-- that evicts nothing; 4 a cold load that unloads another model. Within a tier the lowest load
-- per slot wins, this node's instances before peers on a tie.
local function tier_of(loaded, load, slots, evict)
  if loaded then
    if load < slots then return 1 end
    if load < slots * (1 + WARM_QUEUE_PER_SLOT) then return 2 end
    return evict and 4 or 3
  end
  return evict and 4 or 3
end

local function better(a, b)
  if b == nil then return true end
  if a.tier ~= b.tier then return a.tier < b.tier end
  if a.ratio ~= b.ratio then return a.ratio < b.ratio end
  return a.remote < b.remote
end

-- Reserved slots: a waiter given a local instance's slot holds it from that moment until its
-- request is counted by be_conn of the admission backend (olladist_admitted, run there), or
-- RESERVE_MS at most (its client went away before that). Without it, two waiters woken in
-- the same round would both see the slot free.
local RESERVE_MS = 500
local RESERVED = {} -- waiter id -> {inst = name, till = ms}

local function reserved(name, now)
  local n = 0
  for id, r in pairs(RESERVED) do
    if now > r.till then
      RESERVED[id] = nil
    elseif r.inst == name then
      n = n + 1
    end
  end
  return n
end

-- Every holder of the model that could take the request, ranked as tier_of says; `free` is
-- whether it has a slot for it now (reserved slots count as taken).
local function candidates(f, view, spec, model, want, now, scope)
  local out = {}
  for _, srv in ipairs(spec.servers) do
    if srv.instance then
      local inst = INST[srv.instance]
      if inst and server_ready(view, srv, model) and not drained_now(srv) then
        local load = f:be_conn(inst.admit) + reserved(inst.name, now)
        local loaded, planned = local_loaded(inst, model, want, now)
        local count, vram_used = local_residents(inst, now)
        local ev = evicts(count, vram_used, inst.max_loaded, inst.vram, spec.size)
        local tier = tier_of(loaded, load, inst.num_parallel, ev)
        -- A planned load has no free slot to offer until it is loaded.
        if planned and tier == 1 then tier = 2 end
        local ratio = load / inst.num_parallel
        if tier == 4 then
          -- The victim: what is loaded there. Its recent demand (requests a second on the
          -- instance, HAProxy's own rate) and whether it is loaded nowhere else.
          local rec = S.inst[inst.name]
          ratio = LOAD_WEIGHT * ratio + DEMAND_WEIGHT * demand_of(inst) / inst.num_parallel
            + VICTIM_WEIGHT * unique_victims(
            copies_of(view, now), rec and rec.ok and rec.loadedset or {})
        end
        out[#out + 1] = { tier = tier, ratio = ratio, remote = 0, inst = inst, planned = planned,
                          loaded = loaded, free = load < inst.num_parallel, evicts = ev,
                          idle = load == 0, rate = demand_of(inst) / inst.num_parallel,
                          slots = inst.num_parallel, id = inst.name }
      end
    elseif scope ~= "peer" and srv.node ~= C.node and server_ready(view, srv, model) then
      local pv = view.peers[srv.node]
      local rec = S.peer[srv.node]
      local report = pv and pv.report
      local sent = rec and rec.sent or 0
      local its = report and type(report.instances) == "table" and report.instances or nil
      if its and #its > 0 then
        for k, it in ipairs(its) do
          if type(it) == "table" and it.ready then
            local slots = math.max(tonumber(it.num_parallel) or 1, 1)
            local load = (tonumber(it.running) or tonumber(it.in_flight) or 0)
              + (tonumber(it.queued) or 0) + sent
            local has, ctx, planned = ctx_of(it, model)
            local loaded = has and (want == nil or ctx == nil or ctx == want)
            local count = type(it.loaded_models) == "table" and #it.loaded_models or 0
            local ev = evicts(count, 0, tonumber(it.max_loaded) or math.huge, nil, nil)
            local tier = tier_of(loaded, load, slots, ev)
            if planned and tier == 1 then tier = 2 end
            local ratio = load / slots
            if tier == 4 then
              local names = {}
              for _, m in ipairs(type(it.loaded_models) == "table" and it.loaded_models or {}) do
                if type(m) == "table" and type(m.name) == "string" then names[m.name] = true end
              end
              ratio = LOAD_WEIGHT * ratio + DEMAND_WEIGHT * (tonumber(it.rate) or 0) / slots
                + VICTIM_WEIGHT * unique_victims(copies_of(view, now), names)
            end
            out[#out + 1] = { tier = tier, ratio = ratio, remote = 1, node = srv.node,
                              server = srv.name, planned = planned, loaded = loaded,
                              free = load < slots, evicts = ev, slots = slots, idle = load == 0,
                              rate = (tonumber(it.rate) or 0) / slots,
                              id = srv.node .. "/" .. tostring(it.name or k) }
          end
        end
      else
        -- Ready by placement only (an older peer without a live report): a cold target of
        -- unknown load, after every instance that reports.
        out[#out + 1] = { tier = 4, ratio = math.huge, remote = 1, node = srv.node,
                          server = srv.name, free = true, idle = true, slots = 1, id = srv.node }
      end
    end
  end
  return out
end

-- A cold load that unloads a model goes only to an idle instance: Ollama would make it wait
-- for the running requests anyway, and the other slots of a busy one are worth more to the
-- requests of what is loaded (or being loaded) there than to a load that evicts it.
local function cold_target(x)
  return x.free and not x.loaded and (x.idle or not x.evicts)
end

-- The median recent demand per slot (requests a second) of the candidates that report one:
-- a load that evicts takes an instance at most this wanted (unless its waiter has waited
-- max_warm_wait). Idle is no sign that a model is not wanted: an instance of the most wanted
-- model of a fleet is idle between its requests most of the time, and each gateway sees only
-- its own waiters; without this rule that model was reloaded 30 times in 1,000 requests.
local function median_rate(cands)
  local rates = {}
  for _, c in ipairs(cands) do
    if c.rate then rates[#rates + 1] = c.rate end
  end
  if #rates == 0 then return math.huge end
  table.sort(rates)
  return rates[(#rates + 1) // 2]
end

local function best_of(cands, accept)
  local best
  for _, c in ipairs(cands) do
    if (accept == nil or accept(c)) and better(c, best) then best = c end
  end
  return best
end

-- Send the request to `c`: the admission backend of a local instance or a peer, with the one
-- priority offset of the request (CONTRACT.md): warm 0, cold +max_warm_wait, plus the
-- fairness offset of the key's engineer when set; kept inside HAProxy's window. Cold: the
-- model is not loaded where the request goes (a busy instance that has it loaded is a warm
-- queue, not a cold load). A request that follows a planned load is cold too: its model is
-- not loaded yet, and at warm priority it would jump the queue and load it before
-- max_warm_wait.
-- A cold load sent to local instance c: remembered there (planned), and what it will unload
-- there counts as gone (GOING). Done when the choice is made (dispatch), not when the waiter
-- wakes: the same round's next waiters must see it.
local function plan(c, model, want, now)
  local cold = c.loaded ~= true or c.planned == true
  if not (c.inst and cold and not c.planned) then return end
  local name = c.inst.name
  SEEN[name][model] = { at = now, ctx = want or c.inst.num_ctx }
  GOING[name][model] = nil
  if c.evicts then
    -- What Ollama will unload there to make room: with one model allowed (or one loaded)
    -- it is all of them; with more, one it chooses, unknown here (left as loaded).
    local rec = S.inst[name]
    local residents = {}
    for key in pairs(rec and rec.ok and rec.loadedset or {}) do residents[#residents + 1] = key end
    for key, seen in pairs(SEEN[name]) do
      if key ~= model and now - seen.at <= PLANNED_MS then residents[#residents + 1] = key end
    end
    for key in pairs(C.local_models) do
      if WARM and WARM:lookup(key) == c.inst.admit and not (rec and rec.loadedset and rec.loadedset[key]) then
        residents[#residents + 1] = key
      end
    end
    if c.inst.max_loaded <= 1 or #residents <= 1 then
      for _, key in ipairs(residents) do
        if key ~= model then
          GOING[name][key] = { at = now, by = model }
          SEEN[name][key] = nil
          -- The warm fast path must not send the victim's requests there either.
          if WARM and WARM:lookup(key) == c.inst.admit then core.del_map(C.warm_map, key) end
        end
      end
    end
  end
end

local function commit(txn, c, model, want, now, planned)
  local cold = c.loaded ~= true or c.planned == true
  if c.inst then
    txn:set_var("txn.olladist_admit", c.inst.admit)
    if not planned then plan(c, model, want, now) end
  else
    txn:set_var("txn.olladist_pick", c.server)
    if not planned and S.peer[c.node] then S.peer[c.node].sent = (S.peer[c.node].sent or 0) + 1 end
  end
  local offset = (cold and C.max_warm_wait_ms or 0)
    + (math.tointeger(tonumber(txn:get_var("txn.olladist_fair_ms"))) or 0)
  if offset > C.prio_limit then offset = C.prio_limit end
  if offset < -C.prio_limit then offset = -C.prio_limit end
  if offset ~= 0 then txn:set_priority_offset(offset) end
  txn:set_var("txn.olladist_sched", cold and "cold" or "warm")
end

---------------------------------------------------------------------------------------------
-- Holding (docs/gateway.md "Loaded-first scheduling", "Requests wait at the gateway"). A
-- request with no free slot where its model is loaded does not join a server queue when it
-- arrives: it waits here, in WAITERS, and the choice is made when a slot frees. One
-- dispatch round (at most one every HOLD_STEP_MS, run by whichever waiter wakes first) looks
-- at the free slots (be_conn of the admission backends against num_parallel, minus
-- reservations; the peers' reports) and hands them out: first each waiter in fair order
-- (arrival time + txn.olladist_fair_ms) that has its model loaded on a free instance, then
-- cold loads on the free instances no remaining waiter has its model loaded on. A waiter
-- only reads its own flag between rounds. The Lua state is one for all threads (lua-load),
-- and code between two yields runs under its lock, so a round is never interleaved.
---------------------------------------------------------------------------------------------

local HOLD_STEP_MS = 5
-- A waiter whose coroutine has not run for this long is gone (its client closed and HAProxy
-- dropped its stream without running Lua again): it is forgotten.
local HOLD_STALE_MS = 2000
-- A request whose model is loaded on busy instances takes a cold load on another one only
-- when the queue for its model holds this many waiters per slot where it is loaded (a load
-- takes seconds, an answer a fraction of that), or when it has waited max_warm_wait.
local HOLD_COLD_PER_SLOT = 3

local WAITERS = {} -- id -> waiter
local HOLD = { seq = 0, count = 0, round = -1, for_inst = {}, published = nil, counts = {} }

-- proc.olladist_waiting: how many wait here. The config's warm fast path reads it: while
-- any request waits, a new one goes through dispatch too, or it would take the freed slots
-- ahead of every waiter (it arrives before the next round).
local function publish(txn)
  local n = HOLD.count > 0 and 1 or 0
  if n ~= HOLD.published then
    txn:set_var("proc.olladist_waiting", n)
    HOLD.published = n
  end
end

local function dispatch(txn, now)
  local f = txn.f
  HOLD.round = now // HOLD_STEP_MS
  local view = S.view
  if not view then return end
  local list = {}
  for id, w in pairs(WAITERS) do
    if now - w.seen > HOLD_STALE_MS then
      WAITERS[id] = nil
      HOLD.count = HOLD.count - 1
    elseif not w.go then
      list[#list + 1] = w
    end
  end
  publish(txn)
  table.sort(list, function(a, b)
    if a.class ~= b.class then return a.class < b.class end
    if a.key ~= b.key then return a.key < b.key end
    return a.id < b.id
  end)
  local taken = {}
  local function give(w, c, how)
    w.go = { c = c }
    plan(c, w.model, w.want, now)
    HOLD.counts[how] = (HOLD.counts[how] or 0) + 1
    if c.inst then
      RESERVED[w.id] = { inst = c.inst.name, till = now + RESERVE_MS }
    else
      taken[c.id] = true -- a peer's slot: its report is not newer for the next waiter
      if S.peer[c.node] then S.peer[c.node].sent = (S.peer[c.node].sent or 0) + 1 end
    end
  end
  -- In fair order: a waiter whose model is loaded on an instance with a free slot takes it;
  -- one whose model is loaded nowhere and that has waited max_warm_wait takes a cold load on
  -- any free instance (no model starves). One whose model is loaded on busy instances is
  -- not starved: it is the oldest for the next slot there.
  local rest = {}
  for _, w in ipairs(list) do
    local cands = candidates(f, view, w.spec, w.model, w.want, now, w.scope)
    -- No candidate at all (no holder ready this round: a blip of the view, or a restart):
    -- it waits on, up to timeouts.queue, like a request in a server queue.
    if #cands > 0 then
      local c = best_of(cands, function(x) return x.free and x.loaded and not taken[x.id] end)
      if not c and now - w.at >= C.max_warm_wait_ms
        and not best_of(cands, function(x) return x.loaded and x.remote == 0 end) then
        -- Past the cap, a load that evicts may take a busy instance's free slot too: under
        -- steady load no instance is ever idle, and the idle rule alone would starve it. A
        -- waiter whose model is loaded on a local instance waits on: it is the oldest for
        -- that instance's next slot. One whose model only peers have loaded goes to the best
        -- of them when no local slot is free: their slots are theirs to give, and the report
        -- of a busy peer never shows one free (an /api/embed of the check after apply waited
        -- 60 s for it under the e2e rolling restart).
        c = best_of(cands, function(x) return cold_target(x) and not taken[x.id] end)
          or best_of(cands, function(x) return x.free and not x.loaded and not taken[x.id] end)
          or best_of(cands, function(x) return x.loaded end)
      end
      if c then
        give(w, c, c.loaded and "warm" or "aged")
      else
        rest[#rest + 1] = { w = w, cands = cands }
      end
    end
  end
  -- Which instances a remaining waiter waits for (its model loaded there, or planned): no
  -- cold load takes their free slots, unless the cold waiter has waited max_warm_wait.
  local wanted, depth, slots_of = {}, {}, {}
  local for_inst = {}
  for _, r in ipairs(rest) do
    local slots = 0
    for _, c in ipairs(r.cands) do
      if c.loaded then
        wanted[c.id] = true
        slots = slots + c.slots
        -- Published to the peers as queued there: they do not send a cold load to a slot
        -- these waiters want.
        if c.inst then for_inst[c.inst.name] = (for_inst[c.inst.name] or 0) + 1 end
      end
    end
    if slots == 0 then
      -- A cold waiter counts where it would load (its best local target, free or not).
      local c = best_of(r.cands, function(x) return x.inst ~= nil end)
      if c then for_inst[c.inst.name] = (for_inst[c.inst.name] or 0) + 1 end
    end
    depth[r.w.model] = (depth[r.w.model] or 0) + 1
    r.depth, slots_of[r.w.model] = depth[r.w.model], slots
  end
  HOLD.for_inst = for_inst
  -- Cold: in fair order, a waiter whose model is loaded nowhere (or whose warm queue is
  -- deep) takes a free instance that no remaining waiter wants warm.
  for _, r in ipairs(rest) do
    local w = r.w
    local slots = slots_of[w.model]
    if slots == 0 or r.depth > HOLD_COLD_PER_SLOT * slots then
      -- Fresh counts: an earlier cold waiter of this round may have taken a slot.
      local cands = candidates(f, view, w.spec, w.model, w.want, now, w.scope)
      local low = median_rate(cands)
      local c = best_of(cands, function(x)
        return cold_target(x) and not taken[x.id] and not wanted[x.id]
          and (not x.evicts or x.rate == nil or x.rate <= low)
      end)
      if c then give(w, c, slots == 0 and "cold" or "deep") end
    end
  end
end

-- What a round reads, in short: when it has not changed since the last round, no slot can be
-- given that was not given then (the slots in use, reserved ones included, the waiters, the
-- view, what was sent to peers), and the round is skipped. Four times a second it runs anyway
-- (waiters age; drains).
local function signature(f, now)
  local parts = { HOLD.seq, HOLD.count, S.view and S.view.at or 0, now // 250 }
  for _, inst in ipairs(C.instances) do
    parts[#parts + 1] = f:be_conn(inst.admit) + reserved(inst.name, now)
  end
  for _, p in ipairs(C.peers) do
    local rec = S.peer[p.node]
    parts[#parts + 1] = rec and rec.sent or 0
  end
  return table.concat(parts, ",")
end

local function leave(txn, w)
  if WAITERS[w.id] then
    WAITERS[w.id] = nil
    HOLD.count = HOLD.count - 1
    if HOLD.count <= 0 then HOLD.for_inst = {} end
  end
  publish(txn)
end

-- Waits for dispatch to give the request a slot; false when timeouts.queue passed first.
local function hold(txn, scope, spec, model, want, now)
  HOLD.seq = HOLD.seq + 1
  local fair = math.tointeger(tonumber(txn:get_var("txn.olladist_fair_ms"))) or 0
  -- The key's priority class (set-priority-class, before this action) sorts first, as in
  -- HAProxy's own queue.
  local class = math.tointeger(tonumber(txn.f:prio_class())) or 0
  local w = { id = HOLD.seq, model = model, spec = spec, want = want, scope = scope,
              at = now, seen = now, key = now + fair, class = class }
  WAITERS[w.id] = w
  HOLD.count = HOLD.count + 1
  publish(txn)
  local deadline = now + C.queue_ms
  local ok, err = pcall(function()
    while true do
      now = now_ms()
      w.seen = now
      -- Drained since the slot was given (a restart begins): the drained server would answer
      -- 503; the next round gives another.
      if w.go and w.go.c.inst and drained_now({ instance = w.go.c.inst.name }) then
        RESERVED[w.id], w.go = nil, nil
      end
      if not w.go and now // HOLD_STEP_MS ~= HOLD.round then
        HOLD.round = now // HOLD_STEP_MS
        local sig = signature(txn.f, now)
        if sig ~= HOLD.sig then
          dispatch(txn, now)
          HOLD.sig = signature(txn.f, now)
        end
      end
      if w.go then break end
      if now >= deadline then return end
      core.msleep(HOLD_STEP_MS)
    end
  end)
  leave(txn, w)
  if not ok then error(err, 0) end
  if not w.go then
    HOLD.counts.timeout = (HOLD.counts.timeout or 0) + 1
    return false
  end
  commit(txn, w.go.c, model, want, now_ms(), true)
  if w.go.c.inst then txn:set_var("txn.olladist_held", w.id) end
  return true
end

local function schedule(txn, scope)
  local model = txn:get_var("txn.model")
  local spec = (scope == "peer" and C.local_models or C.models)[model]
  local view = S.view
  if not spec or not spec.lf or not view then return end
  local now = now_ms()
  local want = tonumber(txn:get_var("txn.num_ctx"))
  local cands = candidates(txn.f, view, spec, model, want, now, scope)
  local best = best_of(cands)
  if not best then return end -- nothing ready: the route backend's own balancing
  -- Loaded with a free slot, and nobody waiting: it goes now. Else it waits here, and the
  -- next round hands the slots out in fair order (this request among the others).
  if best.tier == 1 and HOLD.count == 0 then return commit(txn, best, model, want, now) end
  -- Loaded on peers only, busy: it goes to the best of them now and waits there, where the
  -- peer decides for its own slots among all the requests that want them (held here, this
  -- node could not see a peer's waiters, nor they the slot when it frees).
  if best.remote == 1 and best.loaded and best.tier <= 2
    and not best_of(cands, function(x) return x.remote == 0 and x.loaded end) then
    return commit(txn, best, model, want, now)
  end
  -- Held only where it may run: with no local instance among its holders, the peers' slots
  -- are theirs to give, and each holds its own waiters. Held here, such a request waited for
  -- a peer's report to show a free slot, which a busy peer's own waiters never leave (it
  -- waited 54 s under the e2e load while the peer served others).
  if not best_of(cands, function(x) return x.remote == 0 end) then
    return commit(txn, best, model, want, now)
  end
  if not hold(txn, scope, spec, model, want, now) then
    txn:set_var("txn.olladist_busy", "1")
  end
end

-- Run on the 200 of a cold request in an admission backend: its model is loaded there now,
-- unless a later cold load there will unload it (GOING). The warm fast path reads warm.map.
core.register_action("olladist_loaded", { "http-res" }, function(txn, admit)
  local inst = INST_BY_ADMIT[admit]
  local model = txn:get_var("txn.model")
  if not (WARM and inst and model and C.local_models[model]) then return end
  if is_going(inst, model, now_ms()) then return end
  if WARM:lookup(model) ~= admit then core.set_map(C.warm_map, model, admit) end
end, 1)

HOLD_REPORT = function(inst) return HOLD.for_inst[inst.name] or 0 end
HOLD_STATS = function()
  local out = { waiting = HOLD.count }
  for k, v in pairs(HOLD.counts) do out[k] = v end
  return out
end

-- Run in the admission backend for a request that waited here: be_conn counts it now, so
-- its reservation ends.
core.register_action("olladist_admitted", { "http-req" }, function(txn)
  local id = math.tointeger(tonumber(txn:get_var("txn.olladist_held")))
  if id then RESERVED[id] = nil end
end, 0)

DEMAND_REPORT = function(inst) return math.floor(demand_of(inst) * 100 + 0.5) / 100 end

-- The models loaded on a local instance as this gateway knows them, for its live report.
SEEN_REPORT = function(inst, now)
  local rec = S.inst[inst.name]
  local out, names = array(), {}
  if rec and rec.ok and rec.loadedset then
    for key, e in pairs(rec.loadedset) do
      names[key] = true
      if not is_going(inst, key, now) then out[#out + 1] = { name = key, context_length = e.ctx } end
    end
  end
  for key in pairs(C.local_models) do
    if not names[key] and WARM and WARM:lookup(key) == inst.admit then
      names[key] = true
      out[#out + 1] = { name = key, context_length = inst.num_ctx }
    end
  end
  -- Cold loads this gateway sent there and that have not happened yet: peers queue behind
  -- them (as busy) instead of loading the same model a second time elsewhere.
  for key, seen in pairs(SEEN[inst.name] or {}) do
    if not names[key] and now - seen.at <= PLANNED_MS then
      out[#out + 1] = { name = key, context_length = seen.ctx, planned = true }
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

core.register_action("olladist_pick", { "http-req" }, function(txn, scope)
  local ok, err = pcall(schedule, txn, scope)
  if not ok then core.Warning("olladist loaded-first: " .. tostring(err)) end
end, 1)


---------------------------------------------------------------------------------------------
-- Duplicate keys: Ollama's Go decoder takes the last `model` (keys matched without case, after
-- \u escapes); HAProxy's json_query takes the first. Bodies that might have such a key twice
-- (a cheap regex in the config picks them) are checked here, and refused if they do.
---------------------------------------------------------------------------------------------

local function top_level_keys(body)
  local i = skip_ws(body, 1)
  if string.sub(body, i, i) ~= "{" then return nil end
  local keys = {}
  i = skip_ws(body, i + 1)
  if string.sub(body, i, i) == "}" then return keys end
  while true do
    if string.sub(body, i, i) ~= '"' then return nil end
    local key
    key, i = parse_string(body, i)
    i = skip_ws(body, i)
    if string.sub(body, i, i) ~= ":" then return nil end
    local _
    _, i = parse_value(body, skip_ws(body, i + 1), 1)
    keys[#keys + 1] = key
    i = skip_ws(body, i)
    local c = string.sub(body, i, i)
    if c == "}" then return keys end
    if c ~= "," then return nil end
    i = skip_ws(body, i + 1)
  end
end

core.register_action("olladist_dupkeys", { "http-req" }, function(txn, fields)
  local ok, keys = pcall(top_level_keys, txn.sf:req_body() or "")
  if not ok or not keys then return end -- not JSON: json_query finds nothing either
  for field in string.gmatch(fields, "[^,]+") do
    local count = 0
    for _, key in ipairs(keys) do
      if string.lower(key) == field then count = count + 1 end
    end
    if count > 1 then
      txn:set_var("txn.olladist_dup", field)
      return
    end
    if count == 1 then
      for _, key in ipairs(keys) do
        -- One key that Ollama reads as the field but json_query does not see ("Model").
        if string.lower(key) == field and key ~= field then
          txn:set_var("txn.olladist_dup", field)
          return
        end
      end
    end
  end
end, 1)
