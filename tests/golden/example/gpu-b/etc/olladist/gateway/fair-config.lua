-- Fairness and limits per client for node gpu-b (docs/gateway.md, "Fair across
-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.
olladist_fair_settings = {
  ["backends"] = {
    "route.loaded-first.gpu-a.gpu-b",
    "route.loaded-first.gpu-a.gpu-b.gpu-c",
    "route.loaded-first.gpu-c",
    "route.model-affinity.gpu-a",
    "admit.gpu0",
    "admit.gpu1",
  },
  ["cost_ms"] = 1000,
  ["fair"] = true,
  ["keys_file"] = nil,
  ["max_concurrent"] = nil,
  ["queue_ms"] = 60000,
  ["requests_per_minute"] = nil,
}
