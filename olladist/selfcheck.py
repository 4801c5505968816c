"""The check a node runs on itself after it applied a new commit, before it counts as healthy.

    every unit it renders is active -> its gateway sees every local instance up -> every
    model placed on it is in its store -> every such model answers a tiny generate (or embed)
    through its own gateway within ``policy.rollout.check_timeout`` -> the units are still
    active (an instance that dies once it has answered fails too)

A unit that is not running fails the check at once rather than at the end of the bound, so a
commit whose instances exit at start is rolled back within seconds. The daemon calls this;
what it does with a failure (roll back, record) is in ``olladist.daemon`` and
``olladist.rolloutstate``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from olladist.check import check_model
from olladist.layout import Layout
from olladist.models import observe_models
from olladist.names import normalize_model
from olladist.nodelocal import NodeTLS
from olladist.ollama import instance_url
from olladist.plan import desired_units
from olladist.reconcile import Desired
from olladist.runtime import Runtime
from olladist.spec import duration_ms
from olladist.status import gateway_health

log = logging.getLogger("olladist.selfcheck")

T = TypeVar("T")


def gateway_url(desired: Desired, tls: NodeTLS | None = None) -> str:
    """Where this node's own gateway answers the Ollama API, seen from the node itself
    (https when the node-local settings turn TLS on for the public port)."""
    node = desired.spec.node(desired.node)
    ip = ipaddress.ip_address(node.listen)
    if ip.is_unspecified:
        host = "[::1]" if ip.version == 6 else "127.0.0.1"
    else:
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    scheme = "https" if tls is not None and tls.public_cert else "http"
    return f"{scheme}://{host}:{desired.spec.gateway.port}"


def _feeding(call: Callable[[], T], wait: Callable[[], None]) -> T:
    """Run ``call`` (bounded by its own timeouts) while calling ``wait`` every second, so a
    cold load of a minute does not look like a hang to the daemon's watchdog."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="selfcheck") as pool:
        future = pool.submit(call)
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                wait()


def _inactive(runtime: Runtime, units: list[str]) -> list[str]:
    """Why each of ``units`` that does not run is not running (a sentence per unit)."""
    out = []
    for u in units:
        if not runtime.is_active(u):
            why = runtime.why_inactive(u)
            out.append(f"{u} is not running ({why})" if why else f"{u} is not running")
    return out


def check_after_apply(
    desired: Desired,
    layout: Layout,
    runtime: Runtime,
    on_wait: Callable[[], None] | None = None,
    tls: NodeTLS | None = None,
) -> list[str]:
    """Why this node is not healthy on ``desired`` (empty: healthy). ``tls``: the node-local
    TLS settings, for the scheme of the public port."""
    if not runtime.executes:
        return []
    wait = on_wait or (lambda: None)
    bound = duration_ms(desired.spec.policy.rollout.check_timeout) / 1000
    node = desired.spec.node(desired.node)
    units = sorted(desired_units(desired.files))
    instances = {i.name for i in node.instances}

    deadline = time.monotonic() + bound
    while True:
        dead = _inactive(runtime, units)
        if dead:
            return dead
        down = {
            h["name"]: h["status"]
            for h in gateway_health(layout)
            if h["kind"] == "instance" and h["name"] in instances
        }
        missing = instances - set(down)
        not_up = {n: s for n, s in down.items() if not str(s).startswith("UP")}
        if not missing and not not_up:
            break
        if time.monotonic() > deadline:
            what = [f"{n} is {s}" for n, s in sorted(not_up.items())]
            what += [f"{n} is not in the gateway" for n in sorted(missing)]
            seen = ", ".join(what)
            return [f"the gateway does not see its instances up after {bound:.0f}s: {seen}"]
        wait()
        time.sleep(0.2)

    models = list(desired.placement.models_for(desired.node))
    if models:
        observed = observe_models(node)
        if isinstance(observed, str):
            return [f"cannot list the models of this node: {observed}"]
        stored = {normalize_model(k) for k in observed.stored}
        absent = [m for m in models if m not in stored]
        if absent:
            return [f"model {m} is not in this node's store" for m in absent]
    failures = []
    # With API keys on the public port the node holds only their digests: ask the first
    # instance directly (the servers-up check above covers the gateway's side).
    base = gateway_url(desired, tls)
    if desired.spec.gateway.api_keys_file and node.instances:
        base = instance_url(node.instances[0].port)
    timeout = httpx.Timeout(bound, connect=5.0)
    # The node talks to its own gateway on its own address, which its certificate need not
    # name: this checks serving, not the certificate.
    with httpx.Client(timeout=timeout, trust_env=False, verify=False) as client:  # noqa: S501
        for model in models:
            result = _feeding(functools.partial(check_model, client, base, model), wait)
            if not result.ok:
                failures.append(f"model {model} does not answer through {base}: {result.detail}")
            else:
                log.info("check after apply: %s: %s", model, result.detail)
    dead = _inactive(runtime, units)
    failures += dead
    return failures
