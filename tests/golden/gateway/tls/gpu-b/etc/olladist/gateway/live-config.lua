-- The live view's settings for node gpu-b (docs/gateway.md, "The live view"). Rendered by
-- olladist; HAProxy loads it (lua-load) just before the shipped live.lua, which reads this table.
OLLADIST_LIVE = {
  ["cluster"] = "lab",
  ["fast_ms"] = 100,
  ["feed_socket"] = "/run/olladist/gateway/feed.sock",
  ["held"] = {
    "llama3.2:1b",
    "nomic-embed-text:latest",
  },
  ["instances"] = {
    {
      ["admit"] = "admit.gpu0",
      ["max_loaded"] = 3,
      ["name"] = "gpu0",
      ["num_ctx"] = 4096,
      ["num_parallel"] = 2,
      ["port"] = 11511,
      ["vram"] = 24000000000,
    },
    {
      ["admit"] = "admit.gpu1",
      ["max_loaded"] = 3,
      ["name"] = "gpu1",
      ["num_ctx"] = 4096,
      ["num_parallel"] = 2,
      ["port"] = 11512,
      ["vram"] = 24000000000,
    },
  },
  ["local_models"] = {
    ["llama3.2:1b"] = {
      ["holders"] = {
        "gpu-b",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["instance"] = "gpu0",
          ["name"] = "gpu0",
        },
        {
          ["instance"] = "gpu1",
          ["name"] = "gpu1",
        },
      },
      ["size"] = 1300000000,
    },
    ["nomic-embed-text:latest"] = {
      ["holders"] = {
        "gpu-b",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["instance"] = "gpu0",
          ["name"] = "gpu0",
        },
        {
          ["instance"] = "gpu1",
          ["name"] = "gpu1",
        },
      },
      ["size"] = 300000000,
    },
  },
  ["local_ready_map"] = "/etc/olladist/gateway/local-ready.map",
  ["max_warm_wait_ms"] = 10000,
  ["models"] = {
    ["llama3.1:8b"] = {
      ["fallback"] = "{\034name\034:\034llama3.1:8b\034,\034model\034:\034llama3.1:8b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:4900000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-a",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-a",
          ["node"] = "gpu-a",
        },
      },
      ["size"] = 4900000000,
    },
    ["llama3.2:1b"] = {
      ["fallback"] = "{\034name\034:\034llama3.2:1b\034,\034model\034:\034llama3.2:1b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:1300000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-b",
        "gpu-a",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["instance"] = "gpu0",
          ["name"] = "gpu0",
        },
        {
          ["instance"] = "gpu1",
          ["name"] = "gpu1",
        },
        {
          ["name"] = "peer.gpu-a",
          ["node"] = "gpu-a",
        },
      },
      ["size"] = 1300000000,
    },
    ["nomic-embed-text:latest"] = {
      ["fallback"] = "{\034name\034:\034nomic-embed-text:latest\034,\034model\034:\034nomic-embed-text:latest\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:300000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-b",
        "gpu-a",
        "gpu-c",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["instance"] = "gpu0",
          ["name"] = "gpu0",
        },
        {
          ["instance"] = "gpu1",
          ["name"] = "gpu1",
        },
        {
          ["name"] = "peer.gpu-a",
          ["node"] = "gpu-a",
        },
        {
          ["name"] = "peer.gpu-c",
          ["node"] = "gpu-c",
        },
      },
      ["size"] = 300000000,
    },
    ["qwen2.5:0.5b"] = {
      ["fallback"] = "{\034name\034:\034qwen2.5:0.5b\034,\034model\034:\034qwen2.5:0.5b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:400000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-c",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-c",
          ["node"] = "gpu-c",
        },
      },
      ["size"] = 400000000,
    },
  },
  ["node"] = "gpu-b",
  ["peers"] = {
    {
      ["node"] = "gpu-a",
      ["server"] = "peer.gpu-a",
    },
    {
      ["node"] = "gpu-c",
      ["server"] = "peer.gpu-c",
    },
  },
  ["poll_ms"] = 1000,
  ["prio_limit"] = 464287,
  ["probe_timeout_ms"] = 2000,
  ["pulls_map"] = "/etc/olladist/gateway/pulls.map",
  ["queue_ms"] = 60000,
  ["ready_map"] = "/etc/olladist/gateway/ready.map",
  ["retry_after_down_s"] = 10,
  ["retry_after_s"] = 2,
  ["stale_ms"] = 5000,
  ["wait_step_ms"] = 25,
  ["warm_map"] = "/etc/olladist/gateway/warm.map",
}
