"""Model sync: every node holds exactly the models placement gives it.

All instances of a node share one model store (``ollama.models_dir``), so the store is
observed and changed through one instance and each model is pulled once per node. Loading
(preload) is per instance.

Planning is pure (``plan_models``): desired models from the spec and placement, observed
store and loaded models, and what earlier ticks learnt (``ModelMemory``) in, actions out:
- ``pull``: missing, or present with a digest other than its pin. A pin is resolved once per
  (commit, pin): when the registry serves another digest, that is reported, and not pulled
  again until the commit or the pin changes (a full download every tick otherwise);
- ``delete-model``: present but not given to this node, only with ``policy.prune_models``,
  never while loaded, never while any instance of the node could not be observed this tick
  (it may have the model loaded), never every model at once when the node is given none, and at
  most ``PRUNE_PER_TICK`` models per tick (the rest in later ticks);
- ``preload``: ``preload: true`` and loaded on no instance: loaded on ONE instance, the one
  that already has the fewest models loaded (ties broken by a hash of model and instance, so
  every tick picks the same), with the model's ``keep_alive``. Once per commit: when Ollama
  evicts it later (keep_alive, OLLAMA_MAX_LOADED_MODELS), that is a note, not a reload every
  tick;
- ``report``: drift left alone (an extra model with pruning off, one still loaded, a pin the
  registry does not serve).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from olladist.ollama import (
    LoadedModel,
    OllamaClient,
    OllamaError,
    Progress,
    StoredModel,
    instance_url,
)
from olladist.placement import Placement
from olladist.plan import Action, Kind
from olladist.registry import UpstreamUnavailable
from olladist.spec import Model, Node, Spec
from olladist.state import State

if TYPE_CHECKING:
    from olladist.transfer import PeerTransfer

log = logging.getLogger("olladist.models")

BACKUP_TAG_SUFFIX = "-olladist-backup"
PULL_CONCURRENCY = 2
PULL_ATTEMPTS = 3
# A spec change that drops many models deletes them a few at a time: a wrong commit (a typo in
# a selector) then costs at most this many re-pulls per tick before someone notices.
PRUNE_PER_TICK = 2


@dataclass(frozen=True)
class ModelsObserved:
    stored: dict[str, StoredModel]
    loaded: dict[str, dict[str, LoadedModel]]  # instance name -> loaded models
    via: str  # the instance whose API was used for the store
    # Instances whose /api/ps failed this tick: what they have loaded is unknown.
    unobserved: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinCheck:
    """A pull of a pinned model whose registry served another digest."""

    commit: str
    pin: str
    got: str


@dataclass(frozen=True)
class Preloaded:
    commit: str
    instance: str


@dataclass(frozen=True)
class ModelMemory:
    """What earlier ticks learnt about the node's models (state: model-errors.json and
    models.json), so that a tick does not repeat work that cannot succeed."""

    errors: Mapping[str, str] = field(default_factory=dict)  # model -> why its last pull failed
    pins: Mapping[str, PinCheck] = field(default_factory=dict)
    preloads: Mapping[str, Preloaded] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pins": {k: vars(v) for k, v in sorted(self.pins.items())},
            "preloads": {k: vars(v) for k, v in sorted(self.preloads.items())},
        }

    @classmethod
    def from_dict(cls, errors: Mapping[str, str], data: Mapping[str, Any]) -> ModelMemory:
        def records(key: str) -> dict[str, dict[str, str]]:
            value = data.get(key)
            return value if isinstance(value, dict) else {}

        return cls(
            dict(errors),
            {k: PinCheck(**v) for k, v in records("pins").items()},
            {k: Preloaded(**v) for k, v in records("preloads").items()},
        )

    def after(self, commit: str, result: ModelResult) -> ModelMemory:
        """The memory once ``result`` was executed for ``commit``."""
        pins = {k: v for k, v in self.pins.items() if v.commit == commit}
        pins.update({k: PinCheck(commit, v.pin, v.got) for k, v in result.pin_mismatch.items()})
        for a in result.done:
            if a.kind is Kind.PULL:
                pins.pop(a.target, None)
        preloads = {k: v for k, v in self.preloads.items() if v.commit == commit}
        for a in result.done:
            if a.kind is Kind.PRELOAD:
                model, _, inst = a.target.rpartition("@")
                preloads[model] = Preloaded(commit, inst)
        return ModelMemory(dict(result.failed), pins, preloads)


def memory_of(state: State) -> ModelMemory:
    return ModelMemory.from_dict(state.model_errors(), state.model_records())


def remember(state: State, memory: ModelMemory) -> None:
    state.set_model_errors(dict(memory.errors))
    state.set_model_records(memory.to_dict())


def forget_preloads(state: State, instances: list[str]) -> None:
    """A restarted instance has lost what it had loaded: its preloads are due again."""
    memory = memory_of(state)
    kept = {k: v for k, v in memory.preloads.items() if v.instance not in instances}
    if len(kept) != len(memory.preloads):
        remember(state, ModelMemory(memory.errors, memory.pins, kept))


@dataclass
class ModelPlan:
    actions: list[Action]
    notes: list[str] = field(default_factory=list)  # not drift: why something was left alone


@dataclass
class ModelResult:
    done: list[Action] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model -> reason
    pin_mismatch: dict[str, PinCheck] = field(default_factory=dict)
    # Worth an operator's eye, not a failure: "model (peer X)" -> what the peer served wrong,
    # while the model itself was fetched elsewhere and placed.
    warnings: dict[str, str] = field(default_factory=dict)


class PinMismatch(OllamaError):
    def __init__(self, message: str, got: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.got = got


def observe_models(node: Node, timeout: float = 5.0) -> ModelsObserved | str:
    """The node's store and loaded models, or why they could not be observed."""
    stored: dict[str, StoredModel] | None = None
    via = ""
    loaded: dict[str, dict[str, LoadedModel]] = {}
    errors = []
    unobserved = []
    for inst in node.instances:
        with OllamaClient(instance_url(inst.port), timeout=timeout) as client:
            try:
                if stored is None:
                    stored = client.tags()
                    via = inst.name
                loaded[inst.name] = client.ps()
            except OllamaError as exc:
                errors.append(f"instance {inst.name}: {exc.message}")
                unobserved.append(inst.name)
    if stored is None:
        return "; ".join(errors) or "the node has no instances"
    for name in errors:
        log.warning("%s", name)
    return ModelsObserved(stored, loaded, via, tuple(unobserved))


def desired_models(spec: Spec, node: str, placement: Placement) -> dict[str, Model]:
    keys = set(placement.models_for(node))
    return {m.key: m for m in spec.models if m.key in keys}


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def preload_instance(model: str, node: Node, obs: ModelsObserved) -> str:
    """The one instance a preload goes to: the one with the fewest models loaded, ties broken
    by a hash of (model, instance), so every tick and every process picks the same."""

    def rank(name: str) -> tuple[int, bytes]:
        load = len(obs.loaded.get(name, {}))
        return load, hashlib.sha256(f"{model}\0{name}".encode()).digest()

    return min((i.name for i in node.instances), key=rank)


def plan_models(
    spec: Spec,
    node: Node,
    placement: Placement,
    obs: ModelsObserved,
    *,
    memory: ModelMemory | None = None,
    commit: str = "",
) -> ModelPlan:
    memory = memory or ModelMemory()
    want = desired_models(spec, node.name, placement)
    out = ModelPlan([])
    actions = out.actions
    for key, model in sorted(want.items()):
        have = obs.stored.get(key)
        errors = memory.errors
        failed = f"; last attempt failed: {errors[key]}" if key in errors else ""
        pin = model.digest.removeprefix("sha256:") if model.digest else None
        check = memory.pins.get(key)
        stale = have is None or have.digest != pin
        if pin and stale and check and check.commit == commit and check.pin == pin:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    f"the registry serves digest {_short(check.got)}, not the pin "
                    f"{_short(pin)} (pulled once for commit {commit[:12]}); not pulled "
                    "again until the commit or the pin changes",
                )
            )
            continue
        if have is None:
            actions.append(Action(Kind.PULL, key, "missing" + failed))
        elif pin and have.digest != pin:
            reason = f"digest {_short(have.digest)} differs from pin {_short(pin)}"
            actions.append(Action(Kind.PULL, key, reason + failed))
    extra = sorted(k for k in obs.stored if k not in want and not k.endswith(BACKUP_TAG_SUFFIX))
    deletions = 0
    for key in extra:
        loaded_on = sorted(i for i, models in obs.loaded.items() if key in models)
        if not spec.policy.prune_models:
            actions.append(Action(Kind.REPORT, key, "extra model (policy.prune_models is off)"))
        elif not want:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    "extra model; not pruned: the spec gives this node no models, and olladist "
                    "never deletes every model at once",
                )
            )
        elif obs.unobserved:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    "extra model; not pruned while instance "
                    f"{', '.join(obs.unobserved)} cannot be observed (it may have it loaded)",
                )
            )
        elif loaded_on:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    f"extra model, loaded on {', '.join(loaded_on)}; deleted once unloaded",
                )
            )
        elif deletions >= PRUNE_PER_TICK:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    f"extra model; deleted in a later tick (at most {PRUNE_PER_TICK} a tick)",
                )
            )
        else:
            deletions += 1
            actions.append(Action(Kind.DELETE_MODEL, key, "not given to this node"))
    for key, model in sorted(want.items()):
        if not model.preload or any(key in m for m in obs.loaded.values()):
            continue
        mark = memory.preloads.get(key)
        if mark and mark.commit == commit:
            out.notes.append(
                f"{key} was preloaded on {mark.instance} for this commit and has been unloaded "
                "since (keep_alive, or OLLAMA_MAX_LOADED_MODELS): not loaded again until the "
                "commit changes or a request loads it"
            )
        elif obs.unobserved:
            out.notes.append(
                f"{key} not preloaded while instance {', '.join(obs.unobserved)} cannot be "
                "observed (it may have it loaded)"
            )
        else:
            inst = preload_instance(key, node, obs)
            keep = f", keep_alive {model.keep_alive}" if model.keep_alive else ""
            actions.append(Action(Kind.PRELOAD, f"{key}@{inst}", f"preload: true{keep}"))
    return out


class ModelSync:
    """Executes model actions against the node's instances."""

    def __init__(
        self,
        spec: Spec,
        node: Node,
        on_progress: Callable[[str, Progress], None] | None = None,
        attempts: int = PULL_ATTEMPTS,
        backoff: float = 1.0,
        *,
        transfer: PeerTransfer | None = None,
    ) -> None:
        # models_transfer: peers-first (olladist.transfer, docs/models.md): blobs are placed in
        # the store by olladist, from peers or upstream, instead of pulled through Ollama.
        self.transfer = transfer
        self.bad_peers: dict[str, dict[str, str]] = {}  # model -> peer -> what it served
        self.spec = spec
        self.node = node
        self.on_progress = on_progress
        self.attempts = attempts
        self.backoff = backoff
        self.pins = {m.key: m.digest for m in spec.models if m.digest}
        self.keep_alive = {m.key: m.keep_alive for m in spec.models if m.keep_alive}

    def _client(self, timeout: float = 10.0) -> OllamaClient:
        """A client for the first instance that answers: they share the store."""
        last = ""
        for inst in self.node.instances:
            client = OllamaClient(instance_url(inst.port), timeout=timeout)
            if client.healthy():
                return client
            client.close()
            last = f"instance {inst.name} at {instance_url(inst.port)} does not answer"
        raise OllamaError(last or "the node has no instances", transient=True)

    def execute(self, actions: list[Action]) -> ModelResult:
        result = ModelResult()
        pulls = [a for a in actions if a.kind is Kind.PULL]
        with ThreadPoolExecutor(max_workers=PULL_CONCURRENCY, thread_name_prefix="pull") as pool:
            for action, error in zip(pulls, pool.map(self._pull_safely, pulls), strict=True):
                if isinstance(error, PinMismatch):
                    pin = self.pins[action.target] or ""
                    result.pin_mismatch[action.target] = PinCheck(
                        "", pin.removeprefix("sha256:"), error.got
                    )
                    result.failed[action.target] = error.message
                elif error:
                    result.failed[action.target] = error.message
                else:
                    result.done.append(action)
        for model, bad in sorted(self.bad_peers.items()):
            for peer, what in sorted(bad.items()):
                # Reported in status for the tick it happened (the model itself was placed).
                result.warnings[f"{model} (peer {peer})"] = f"peer {peer} {what}; fetched elsewhere"
        for a in actions:
            if a.kind is Kind.DELETE_MODEL:
                try:
                    with self._client() as c:
                        c.delete(a.target)
                    result.done.append(a)
                    log.info("deleted model %s (%s)", a.target, a.reason)
                except OllamaError as exc:
                    result.failed[a.target] = exc.message
        preloads = [a for a in actions if a.kind is Kind.PRELOAD]
        for a in preloads:
            model, _, inst_name = a.target.rpartition("@")
            if model in result.failed:
                continue
            inst = next(i for i in self.node.instances if i.name == inst_name)
            try:
                with OllamaClient(instance_url(inst.port)) as c:
                    c.load(model, keep_alive=self.keep_alive.get(model))
                result.done.append(a)
                log.info("preloaded %s on %s", model, inst_name)
            except OllamaError as exc:
                result.failed[a.target] = exc.message
        return result

    def _pull_safely(self, action: Action) -> OllamaError | None:
        try:
            self.pull(action.target)
        except OllamaError as exc:
            log.error("pull %s failed: %s", action.target, exc.message)
            return exc
        return None

    def pull(self, model: str) -> None:
        """Pull with retries; with a digest pin, never leave a different digest in place of
        what was there: the current copy is kept aside and restored if the pull disagrees."""
        pin = self.pins.get(model)
        with self._client() as client:
            before = client.tags().get(model)
            backup = None
            if pin and before is not None:
                backup = model + BACKUP_TAG_SUFFIX
                client.copy(model, backup)
            try:
                self._pull_with_retries(client, model)
                if pin:
                    after = client.tags().get(model)
                    got = after.digest if after else "nothing"
                    if got != pin.removeprefix("sha256:"):
                        if backup:
                            client.copy(backup, model)
                        else:
                            client.delete(model)
                        raise PinMismatch(
                            f"pull {model} gave digest {_short(got)}, but the spec pins "
                            f"{_short(pin)}; "
                            + ("kept the previous copy" if backup else "removed what it pulled"),
                            got,
                            hint="update models[].digest in the spec, or push the pinned "
                            "version to the registry",
                        )
            finally:
                if backup:
                    try:
                        client.delete(backup)
                    except OllamaError as exc:
                        log.warning("could not remove %s: %s", backup, exc.message)

    def _pull_with_retries(self, client: OllamaClient, model: str) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                if self.transfer is not None:
                    try:
                        report = self.transfer.fetch(model)
                    except UpstreamUnavailable as exc:
                        # No peer holds it and olladist cannot (or may not) reach upstream:
                        # the node's Ollama may (its own proxy settings, or the catalogue).
                        log.warning("%s; pulling %s through Ollama", exc.message, model)
                        client.pull(model, lambda p: self._progress(model, p))
                        return
                    if report.bad_peers:
                        self.bad_peers[model] = dict(report.bad_peers)
                    log.info(
                        "placed %s: %d bytes from upstream, %s from peers",
                        model,
                        report.upstream_bytes,
                        dict(report.peer_bytes) or "none",
                    )
                    return
                client.pull(model, lambda p: self._progress(model, p))
                log.info("pulled %s", model)
                return
            except OllamaError as exc:
                if not exc.transient or attempt == self.attempts:
                    raise
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2)
                log.warning(
                    "pull %s failed (%s); attempt %d of %d in %.1fs",
                    model,
                    exc.message,
                    attempt + 1,
                    self.attempts,
                    delay,
                )
                time.sleep(delay)

    def _progress(self, model: str, p: Progress) -> None:
        if self.on_progress:
            self.on_progress(model, p)
