"""Model sync: every node holds exactly the models placement gives it.

All instances of a node share one model store (``ollama.models_dir``), so the store is
observed and changed through one instance and each model is pulled once per node. Loading
(preload) is per instance.

Planning is pure (``plan_models``): desired models from the spec and placement, observed
store and loaded models in, actions out:
- ``pull``: missing, or present with a digest other than its pin;
- ``delete-model``: present but not given to this node, only with ``policy.prune_models``,
  never while loaded, and never every model at once when the node is given none;
- ``preload``: ``preload: true`` and not loaded on an instance;
- ``report``: drift left alone (an extra model with pruning off, one still loaded).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
from olladist.spec import Model, Node, Spec

log = logging.getLogger("olladist.models")

BACKUP_TAG_SUFFIX = "-olladist-backup"
PULL_CONCURRENCY = 2
PULL_ATTEMPTS = 3


@dataclass(frozen=True)
class ModelsObserved:
    stored: dict[str, StoredModel]
    loaded: dict[str, dict[str, LoadedModel]]  # instance name -> loaded models
    via: str  # the instance whose API was used for the store


@dataclass
class ModelResult:
    done: list[Action] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model -> reason


def observe_models(node: Node, timeout: float = 5.0) -> ModelsObserved | str:
    """The node's store and loaded models, or why they could not be observed."""
    stored: dict[str, StoredModel] | None = None
    via = ""
    loaded: dict[str, dict[str, LoadedModel]] = {}
    errors = []
    for inst in node.instances:
        with OllamaClient(instance_url(inst.port), timeout=timeout) as client:
            try:
                if stored is None:
                    stored = client.tags()
                    via = inst.name
                loaded[inst.name] = client.ps()
            except OllamaError as exc:
                errors.append(f"instance {inst.name}: {exc.message}")
    if stored is None:
        return "; ".join(errors) or "the node has no instances"
    for name in errors:
        log.warning("%s", name)
    return ModelsObserved(stored, loaded, via)


def desired_models(spec: Spec, node: str, placement: Placement) -> dict[str, Model]:
    keys = set(placement.models_for(node))
    return {m.key: m for m in spec.models if m.key in keys}


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def plan_models(
    spec: Spec,
    node: Node,
    placement: Placement,
    obs: ModelsObserved,
    last_errors: dict[str, str] | None = None,
) -> list[Action]:
    last_errors = last_errors or {}
    want = desired_models(spec, node.name, placement)
    actions: list[Action] = []
    for key, model in sorted(want.items()):
        have = obs.stored.get(key)
        failed = f"; last attempt failed: {last_errors[key]}" if key in last_errors else ""
        if have is None:
            actions.append(Action(Kind.PULL, key, "missing" + failed))
        elif model.digest and have.digest != model.digest.removeprefix("sha256:"):
            reason = f"digest {_short(have.digest)} differs from pin {_short(model.digest)}"
            actions.append(Action(Kind.PULL, key, reason + failed))
    extra = sorted(k for k in obs.stored if k not in want and not k.endswith(BACKUP_TAG_SUFFIX))
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
        elif loaded_on:
            actions.append(
                Action(
                    Kind.REPORT,
                    key,
                    f"extra model, loaded on {', '.join(loaded_on)}; deleted once unloaded",
                )
            )
        else:
            actions.append(Action(Kind.DELETE_MODEL, key, "not given to this node"))
    for key, model in sorted(want.items()):
        if not model.preload:
            continue
        for inst in node.instances:
            if key not in obs.loaded.get(inst.name, {}):
                actions.append(Action(Kind.PRELOAD, f"{key}@{inst.name}", "preload: true"))
    return actions


class ModelSync:
    """Executes model actions against the node's instances."""

    def __init__(
        self,
        spec: Spec,
        node: Node,
        on_progress: Callable[[str, Progress], None] | None = None,
        attempts: int = PULL_ATTEMPTS,
        backoff: float = 1.0,
    ) -> None:
        self.spec = spec
        self.node = node
        self.on_progress = on_progress
        self.attempts = attempts
        self.backoff = backoff
        self.pins = {m.key: m.digest for m in spec.models if m.digest}

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
                if error:
                    result.failed[action.target] = error
                else:
                    result.done.append(action)
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
                    c.load(model)
                result.done.append(a)
                log.info("preloaded %s on %s", model, inst_name)
            except OllamaError as exc:
                result.failed[a.target] = exc.message
        return result

    def _pull_safely(self, action: Action) -> str | None:
        try:
            self.pull(action.target)
        except OllamaError as exc:
            log.error("pull %s failed: %s", action.target, exc.message)
            return exc.message
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
                        raise OllamaError(
                            f"pull {model} gave digest {_short(got)}, but the spec pins "
                            f"{_short(pin)}; "
                            + ("kept the previous copy" if backup else "removed what it pulled"),
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
