-- The live view's settings for node gpu-06 (docs/gateway.md, "The live view"). Rendered by
-- olladist; HAProxy loads it (lua-load) just before the shipped live.lua, which reads this table.
OLLADIST_LIVE = {
  ["cluster"] = "prod-eu",
  ["fast_ms"] = 100,
  ["feed_socket"] = "/run/olladist/gateway/feed.sock",
  ["held"] = {
    "nomic-embed-text:latest",
  },
  ["instances"] = {
    {
      ["admit"] = "admit.gpu0",
      ["max_loaded"] = 3,
      ["name"] = "gpu0",
      ["num_ctx"] = 4096,
      ["num_parallel"] = 8,
      ["port"] = 11435,
      ["vram"] = 48000000000,
    },
    {
      ["admit"] = "admit.gpu1",
      ["max_loaded"] = 3,
      ["name"] = "gpu1",
      ["num_ctx"] = 4096,
      ["num_parallel"] = 8,
      ["port"] = 11436,
      ["vram"] = 48000000000,
    },
    {
      ["admit"] = "admit.pair",
      ["max_loaded"] = 6,
      ["name"] = "pair",
      ["num_ctx"] = 32768,
      ["num_parallel"] = 2,
      ["port"] = 11437,
      ["vram"] = 48000000000,
    },
  },
  ["local_models"] = {
    ["nomic-embed-text:latest"] = {
      ["holders"] = {
        "gpu-06",
      },
      ["lf"] = false,
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
          ["instance"] = "pair",
          ["name"] = "pair",
        },
      },
      ["size"] = 300000000,
    },
  },
  ["local_ready_map"] = "/etc/olladist/gateway/local-ready.map",
  ["max_warm_wait_ms"] = 5000,
  ["models"] = {
    ["gemma2:2b"] = {
      ["fallback"] = "{\034name\034:\034gemma2:2b\034,\034model\034:\034gemma2:2b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:0,\034digest\034:\0348ccf136fdd5298f3ffe2d69862750ea7fb56555fa4d5b18c04e3fa4d82ee09d7\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-03",
        "gpu-04",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-03",
          ["node"] = "gpu-03",
        },
        {
          ["name"] = "peer.gpu-04",
          ["node"] = "gpu-04",
        },
      },
      ["size"] = nil,
    },
    ["llama3.1:8b"] = {
      ["fallback"] = "{\034name\034:\034llama3.1:8b\034,\034model\034:\034llama3.1:8b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:4900000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-01",
        "gpu-03",
        "gpu-04",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-01",
          ["node"] = "gpu-01",
        },
        {
          ["name"] = "peer.gpu-03",
          ["node"] = "gpu-03",
        },
        {
          ["name"] = "peer.gpu-04",
          ["node"] = "gpu-04",
        },
      },
      ["size"] = 4900000000,
    },
    ["mistral:7b"] = {
      ["fallback"] = "{\034name\034:\034mistral:7b\034,\034model\034:\034mistral:7b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:4100000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-02",
        "gpu-08",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-02",
          ["node"] = "gpu-02",
        },
        {
          ["name"] = "peer.gpu-08",
          ["node"] = "gpu-08",
        },
      },
      ["size"] = 4100000000,
    },
    ["nomic-embed-text:latest"] = {
      ["fallback"] = "{\034name\034:\034nomic-embed-text:latest\034,\034model\034:\034nomic-embed-text:latest\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:300000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-06",
        "gpu-01",
        "gpu-02",
        "gpu-03",
        "gpu-04",
        "gpu-05",
        "gpu-07",
        "gpu-08",
      },
      ["lf"] = false,
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
          ["instance"] = "pair",
          ["name"] = "pair",
        },
        {
          ["name"] = "peer.gpu-01",
          ["node"] = "gpu-01",
        },
        {
          ["name"] = "peer.gpu-02",
          ["node"] = "gpu-02",
        },
        {
          ["name"] = "peer.gpu-03",
          ["node"] = "gpu-03",
        },
        {
          ["name"] = "peer.gpu-04",
          ["node"] = "gpu-04",
        },
        {
          ["name"] = "peer.gpu-05",
          ["node"] = "gpu-05",
        },
        {
          ["name"] = "peer.gpu-07",
          ["node"] = "gpu-07",
        },
        {
          ["name"] = "peer.gpu-08",
          ["node"] = "gpu-08",
        },
      },
      ["size"] = 300000000,
    },
    ["phi3:mini"] = {
      ["fallback"] = "{\034name\034:\034phi3:mini\034,\034model\034:\034phi3:mini\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:2200000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-01",
        "gpu-03",
        "gpu-04",
        "gpu-05",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-01",
          ["node"] = "gpu-01",
        },
        {
          ["name"] = "peer.gpu-03",
          ["node"] = "gpu-03",
        },
        {
          ["name"] = "peer.gpu-04",
          ["node"] = "gpu-04",
        },
        {
          ["name"] = "peer.gpu-05",
          ["node"] = "gpu-05",
        },
      },
      ["size"] = 2200000000,
    },
    ["qwen2.5:14b"] = {
      ["fallback"] = "{\034name\034:\034qwen2.5:14b\034,\034model\034:\034qwen2.5:14b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:9000000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-03",
        "gpu-05",
        "gpu-08",
      },
      ["lf"] = true,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-03",
          ["node"] = "gpu-03",
        },
        {
          ["name"] = "peer.gpu-05",
          ["node"] = "gpu-05",
        },
        {
          ["name"] = "peer.gpu-08",
          ["node"] = "gpu-08",
        },
      },
      ["size"] = 9000000000,
    },
    ["qwen2.5:72b"] = {
      ["fallback"] = "{\034name\034:\034qwen2.5:72b\034,\034model\034:\034qwen2.5:72b\034,\034modified_at\034:\0341970-01-01T00:00:00Z\034,\034size\034:47000000000,\034digest\034:\034\034,\034details\034:{\034parent_model\034:\034\034,\034format\034:\034gguf\034,\034family\034:\034\034,\034families\034:null,\034parameter_size\034:\034\034,\034quantization_level\034:\034\034}}",
      ["holders"] = {
        "gpu-01",
        "gpu-02",
      },
      ["lf"] = false,
      ["servers"] = {
        {
          ["name"] = "peer.gpu-01",
          ["node"] = "gpu-01",
        },
        {
          ["name"] = "peer.gpu-02",
          ["node"] = "gpu-02",
        },
      },
      ["size"] = 47000000000,
    },
  },
  ["node"] = "gpu-06",
  ["peers"] = {
    {
      ["node"] = "gpu-01",
      ["server"] = "peer.gpu-01",
    },
    {
      ["node"] = "gpu-02",
      ["server"] = "peer.gpu-02",
    },
    {
      ["node"] = "gpu-03",
      ["server"] = "peer.gpu-03",
    },
    {
      ["node"] = "gpu-04",
      ["server"] = "peer.gpu-04",
    },
    {
      ["node"] = "gpu-05",
      ["server"] = "peer.gpu-05",
    },
    {
      ["node"] = "gpu-07",
      ["server"] = "peer.gpu-07",
    },
    {
      ["node"] = "gpu-08",
      ["server"] = "peer.gpu-08",
    },
  },
  ["poll_ms"] = 1000,
  ["prio_limit"] = 494287,
  ["probe_timeout_ms"] = 2000,
  ["pulls_map"] = "/etc/olladist/gateway/pulls.map",
  ["queue_ms"] = 30000,
  ["ready_map"] = "/etc/olladist/gateway/ready.map",
  ["retry_after_down_s"] = 10,
  ["retry_after_s"] = 2,
  ["stale_ms"] = 5000,
  ["wait_step_ms"] = 25,
  ["warm_map"] = nil,
}
