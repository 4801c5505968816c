-- Fairness and limits per client for node gpu-05 (docs/gateway.md, "Fair across
-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.
olladist_fair_settings = {
  ["backends"] = {
    "route.least-loaded.gpu-01.gpu-02",
    "route.loaded-first.gpu-03.gpu-05.gpu-08",
    "route.local-first.gpu-02.gpu-08",
    "route.model-affinity.gpu-01.gpu-03.gpu-04",
    "route.model-affinity.gpu-01.gpu-03.gpu-04.gpu-05",
    "route.model-affinity.gpu-03.gpu-04",
    "route.round-robin.gpu-01.gpu-02.gpu-03.gpu-04.gpu-05.gpu-06.gpu-07.gpu-08",
    "admit.gpu0",
    "admit.gpu1",
    "admit.pair",
  },
  ["cost_ms"] = 1000,
  ["fair"] = true,
  ["keys_file"] = "/etc/olladist/api-keys",
  ["max_concurrent"] = nil,
  ["queue_ms"] = 30000,
  ["requests_per_minute"] = nil,
}
