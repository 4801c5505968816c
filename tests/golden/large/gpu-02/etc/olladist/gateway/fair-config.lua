-- Fairness and limits per client for node gpu-02 (docs/gateway.md, "Fair across
-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.
olladist_fair_settings = {
  keys_file = "/etc/olladist/api-keys",
  fair = true,
  cost_ms = 1000,
  queue_ms = 30000,
  max_concurrent = nil,
  requests_per_minute = nil,
}
