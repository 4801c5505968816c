-- Fairness and limits per client for node gpu-c (docs/gateway.md, "Fair across
-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.
olladist_fair_settings = {
  ["backends"] = {
    "route.least-loaded.gpu-a.gpu-b",
    "route.least-loaded.gpu-a.gpu-b.gpu-c",
    "route.least-loaded.gpu-c",
    "route.model-affinity.gpu-a",
  },
  ["cost_ms"] = 1000,
  ["fair"] = true,
  ["keys_file"] = nil,
  ["max_concurrent"] = nil,
  ["queue_ms"] = 60000,
  ["requests_per_minute"] = nil,
}
