"""olladist-sim: an Ollama API simulator that runs where ``ollama serve`` would.

A rendered unit runs it by changing only the binary: ``olladist-sim serve``. It speaks
Ollama's wire format (native NDJSON routes; OpenAI- and Anthropic-compatible SSE routes),
keeps a model store on disk in Ollama's layout (shareable by several instances), loads models
before they answer, and reports truthful, measured durations. Operators use it as a dev mode
without GPUs; olladist's tests and routing benchmarks use it as a faithful double.

Environment read exactly as ``ollama serve`` reads it:

    OLLAMA_HOST               bind address: host:port, :port, host, http://host:port
                              (default 127.0.0.1:11434; port 0 picks a free port and the
                              "Listening on HOST:PORT" line on stderr names it)
    OLLAMA_MODELS             model store directory (default ~/.ollama/models)
    OLLAMA_NUM_PARALLEL       requests served at once per loaded model (default 1)
    OLLAMA_MAX_LOADED_MODELS  models loaded at once (default 0 = 3 per GPU, 3 on a CPU-only host)
    OLLAMA_MAX_QUEUE          requests allowed to wait; past it: 503 (default 512)
    OLLAMA_KEEP_ALIVE         idle time before unload: 5m, 30s, 1h30m, 300, 0, -1 (default 5m)
    OLLAMA_CONTEXT_LENGTH     num_ctx unless the model or the request sets it (default 4096)
    OLLAMA_NOPRUNE            keep a model's old layers after a pull replaced them

Simulator-only knobs:

    OLLADIST_SIM_LOAD_GBPS         load speed in GB/s; load time = model size / speed (10)
    OLLADIST_SIM_PULL_GBPS         pull speed in GB/s (5: a 5 GB model pulls in ~1 s)
    OLLADIST_SIM_TOKEN_RATE        generated tokens per second per request (200)
    OLLADIST_SIM_PROMPT_RATE       prompt tokens evaluated per second (5000)
    OLLADIST_SIM_RESPONSE_TOKENS   tokens per answer unless num_predict/max_tokens cut it (16)
    OLLADIST_SIM_VRAM_GB           GPU memory: loaded models must fit in it, so a big model
                                   evicts others, as on a real GPU (default: no limit)
    OLLADIST_SIM_GPUS              GPUs (1); 0 is a CPU-only host, with size_vram 0
    OLLADIST_SIM_REGISTRY          pull over HTTP, as ollama pull does, from a loopback
                                   registry: http://127.0.0.1:5000 stands in for
                                   registry.ollama.ai; host=URL,host=URL maps several hosts
                                   (default: pulls come from the built-in catalogue)
    OLLADIST_SIM_CATALOGUE         a JSON catalogue replacing the built-in one
    OLLADIST_SIM_FAULTS            faults active from the start (see olladist.sim.faults)
    OLLADIST_SIM_VERSION           version reported by /api/version
    OLLADIST_SIM_QUIET=1           no per-request log lines on stderr

Admin routes, under a prefix no Ollama route uses:

    GET /_sim/stats       counters: requests (by route, by status), cold loads, evictions,
                          unloads and pulls per model, queue-full rejections, in flight
    DELETE /_sim/stats    reset the counters
    GET|POST|DELETE /_sim/faults   read, replace or clear the active faults

``olladist-sim registry`` serves generated models over the registry API for those pulls
(see ``olladist.sim.registry``).

Faults (hang, hang_all, crash, crash_mid_stream, slow, error_mid_stream, refuse_pulls,
disk_full, optionally limited to some models) are documented in ``olladist.sim.faults``.
"""
