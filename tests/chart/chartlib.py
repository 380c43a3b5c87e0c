"""Values scenarios of the chart, and helpers that pick objects out of what it renders."""

from __future__ import annotations

from typing import Any

from tools.rehearsal.chart import CHART, KUBE_VERSION, ROOT, helm, helm_args, render, template_text

__all__ = ["CHART", "KUBE_VERSION", "ROOT", "SCENARIOS", "helm", "helm_args", "render", "template_text"]

# Every values scenario CI renders: (name, values files relative to the chart).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "default": (),
    "kind": ("values-kind.yaml",),
    "eks": ("values-eks.yaml",),
    **{p.name.removesuffix("-values.yaml"): (f"ci/{p.name}",) for p in sorted((CHART / "ci").glob("*-values.yaml"))},
}

Obj = dict[str, Any]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    """Objects of one kind, optionally with one name."""
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The single object of a kind (and name); fails the test if there are none or several."""
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(workload: Obj, name: str | None = None) -> Obj:
    """A container of a workload or a Pod (the first one unless named)."""
    spec = workload["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    containers: list[Obj] = pod["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def pod_spec(workload: Obj) -> Obj:
    """The pod spec of a workload or a Pod."""
    spec: Obj = workload["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


def env(ctr: Obj) -> dict[str, Obj]:
    """A container's env entries by name."""
    return {e["name"]: e for e in ctr.get("env", [])}
