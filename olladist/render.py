"""Render a node's desired files: a pure function of (spec, node, placement).

The result maps absolute node paths (as they would be under ``/``) to ``File`` values, sorted,
so that the same commit renders byte-identical files on every run and every machine.
"""

from __future__ import annotations

from olladist.files import File
from olladist.gateway.render import gateway_files
from olladist.layout import INSTANCE_HOST, ROOT, Layout
from olladist.nodelocal import NodeTLS
from olladist.placement import Placement, place
from olladist.spec import Instance, Node, Spec
from olladist.templating import render_template
from olladist.units import instance_dropin_path, unit_files


def instance_env(spec: Spec, instance: Instance, layout: Layout) -> list[tuple[str, str]]:
    """The instance's environment, sorted: cluster-wide `ollama.env`, the instance's `env` over
    it, then what olladist derives (the spec refuses those keys in `env`)."""
    env = {**spec.ollama.env, **instance.env}
    env["OLLAMA_HOST"] = f"{INSTANCE_HOST}:{instance.port}"
    env["OLLAMA_MODELS"] = layout.path(spec.ollama.models_dir)
    env["OLLAMA_NUM_PARALLEL"] = str(instance.num_parallel)
    if instance.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(instance.gpus)
    return sorted(env.items())


def instance_files(spec: Spec, node: Node, layout: Layout) -> dict[str, File]:
    out = {}
    for inst in node.instances:
        content = render_template(
            "ollama-instance.conf.j2",
            cluster=spec.cluster,
            node=node,
            instance=inst,
            binary=spec.ollama.binary,
            models_dir=layout.path(spec.ollama.models_dir),
            env=instance_env(spec, inst, layout),
        )
        out[instance_dropin_path(inst.name)] = File(content, 0o644)
    return out


def render_node(
    spec: Spec,
    node_name: str,
    placement: Placement | None = None,
    layout: Layout = ROOT,
    tls: NodeTLS | None = None,
) -> dict[str, File]:
    """Every file olladist manages on ``node_name``, keyed by node path, sorted. Contents point
    at real paths under ``layout.root``. ``tls``: the node-local certificates, if any."""
    node = spec.node(node_name)
    placement = placement or place(spec)
    files = unit_files(layout)
    files.update(instance_files(spec, node, layout))
    files.update(gateway_files(spec, node_name, placement, layout, tls))
    return dict(sorted(files.items()))
