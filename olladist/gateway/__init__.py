"""The node's gateway: HAProxy config rendering (``render``, ``topology``) and a client for
HAProxy's runtime API (``runtime``). Routing and security are described in docs/gateway.md."""

# The backend where this node's instances are health-checked; every other backend tracks it,
# so a drain or maintenance set there spreads everywhere. Named here, once, because the
# config (topology), the drain (olladist.drain) and the status (olladist.status) all need it,
# and the last two must not load the spec's parsers to learn it.
INSTANCES_BACKEND = "instances"
# The peer gateways, health-checked; route backends track their servers.
PEERS_BACKEND = "peers"
