-- /api/ps for the whole node: ask every live instance of the `instances` backend and merge
-- their model lists. Ollama answers {"models":[...]} with nothing else at the top level, so the
-- lists are joined as text; an answer of another shape is left out rather than half-parsed.
-- Rendered by olladist; loaded by HAProxy (lua-load) at start and reload.
core.register_service("olladist_ps", "http", function(applet)
  local parts = {}
  local backend = core.backends["instances"]
  local names = {}
  for name, _ in pairs(backend and backend.servers or {}) do
    table.insert(names, name)
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local server = backend.servers[name]
    local status = server:get_stats().status or ""
    -- A draining instance still holds its loaded models.
    if string.sub(status, 1, 2) == "UP" or status == "DRAIN" then
      local client = core.httpclient()
      local ok, res = pcall(client.get, client, {
        url = "http://" .. server:get_addr() .. "/api/ps",
        timeout = 3000,
      })
      if ok and res and res.status == 200 and res.body then
        local inner = string.match(res.body, '^%s*[{]%s*"models"%s*:%s*%[(.*)%]%s*[}]%s*$')
        if inner and string.match(inner, "%S") then
          table.insert(parts, inner)
        end
      end
    end
  end
  local out = '{"models":[' .. table.concat(parts, ",") .. ']}'
  applet:set_status(200)
  applet:add_header("content-type", "application/json; charset=utf-8")
  applet:add_header("content-length", tostring(#out))
  applet:start_response()
  applet:send(out)
end)
