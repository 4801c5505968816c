-- Fairness and limits per client for node gpu-b (docs/gateway.md, "Fair across
-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.
olladist_fair_settings = {
  keys_file = nil,
  fair = true,
  cost_ms = 1000,
  queue_ms = 60000,
  backends = { "route.least-loaded.gpu-a.gpu-b", "route.least-loaded.gpu-a.gpu-b.gpu-c", "route.least-loaded.gpu-c", "route.model-affinity.gpu-a" },
  max_concurrent = nil,
  requests_per_minute = nil,
}
