"""The node's gateway: HAProxy config rendering (``render``, ``topology``) and a client for
HAProxy's runtime API (``runtime``). Routing and security are described in docs/gateway.md."""
