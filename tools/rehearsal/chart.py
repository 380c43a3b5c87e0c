"""Render the chart with helm (fetched into .cache/k8s-tools by tools/fetch-k8s-tools.sh when missing)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shoal"
HELM = ROOT / ".cache" / "k8s-tools" / "bin" / "helm"
KUBE_VERSION = "1.33.0"

Obj = dict[str, Any]


def helm() -> Path:
    """The helm binary; runs tools/fetch-k8s-tools.sh (`make k8s-tools`) first when it is missing."""
    if not HELM.exists():
        logger.info("helm missing; running tools/fetch-k8s-tools.sh")
        subprocess.run(["bash", str(ROOT / "tools" / "fetch-k8s-tools.sh")], check=True, cwd=ROOT)
    return HELM


def helm_args(values: Sequence[str] = (), sets: Sequence[str] = (), set_json: Sequence[str] = ()) -> list[str]:
    """-f, --set and --set-json flags for helm; values files are taken relative to the chart."""
    args: list[str] = []
    for path in values:
        args += ["-f", str(CHART / path)]
    for item in sets:
        args += ["--set", item]
    for item in set_json:
        args += ["--set-json", item]
    return args


def template_text(
    values: Sequence[str] = (),
    sets: Sequence[str] = (),
    release: str = "shoal",
    namespace: str = "shoal",
    set_json: Sequence[str] = (),
) -> str:
    """`helm template` output; raises CalledProcessError carrying helm's stderr on failure."""
    cmd = [str(helm()), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    done = subprocess.run(cmd + helm_args(values, sets, set_json), capture_output=True, text=True)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return done.stdout


def render(
    values: Sequence[str] = (),
    sets: Sequence[str] = (),
    release: str = "shoal",
    namespace: str = "shoal",
    set_json: Sequence[str] = (),
) -> list[Obj]:
    """Every object the chart renders, test hooks included, parsed."""
    return [doc for doc in yaml.safe_load_all(template_text(values, sets, release, namespace, set_json)) if doc]


def render_parent(templates: dict[str, str], values: str = "", release: str = "app", namespace: str = "shoal") -> str:
    """`helm template` of a throwaway chart that has this chart as a subchart: how another chart uses ours."""
    with tempfile.TemporaryDirectory(prefix="shoal-parent-") as tmp:
        parent = Path(tmp) / "app"
        shutil.copytree(CHART, parent / "charts" / "shoal")
        (parent / "templates").mkdir()
        (parent / "Chart.yaml").write_text("apiVersion: v2\nname: app\nversion: 0.1.0\n")
        (parent / "values.yaml").write_text(values)
        for name, text in templates.items():
            (parent / "templates" / name).write_text(text)
        cmd = [str(helm()), "template", release, str(parent), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        return done.stdout
