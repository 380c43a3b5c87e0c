"""The chart's alerts: what the PrometheusRule renders passes `promtool check rules`, and every alert fires on the
series an operator would see (and stays quiet on another release's) under `promtool test rules`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from chart.chartlib import CHART, one, render

pytestmark = pytest.mark.chart

PROMTOOL = Path("/usr/bin/promtool")
SCHEMA = Path(__file__).parent / "schemas" / "prometheusrule.json"
RULES_FILE = CHART / "rules" / "shoal.rules.yaml"
ALERTS = {
    "ShoalTrackerReplicaDown",
    "ShoalTrackerAtCapacity",
    "ShoalNoLivePeers",
    "ShoalPeerDown",
    "ShoalDownloadsFailing",
    "ShoalOffloadRatioLow",
    "ShoalPeersBanningSources",
    "ShoalDiskNearQuota",
}


def promtool() -> str:
    """promtool from Debian's prometheus package; fail (never skip) when it is missing."""
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run `make system-deps` (installs the prometheus package)")
    return str(PROMTOOL)


def _labels(**extra: str) -> dict[str, str]:
    return {"namespace": "shoal", "release": "shoal", **extra}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _tracker(pod: str, release: str = "shoal") -> dict[str, str]:
    return {**_labels(release=release), "component": "tracker", "pod": pod, "job": "tracker", "instance": pod}


def _peer(pod: str, release: str = "shoal") -> dict[str, str]:
    return {**_labels(release=release), "component": "peer", "pod": pod, "job": "peer", "instance": pod}


# Each case: input series (1 minute apart), when to evaluate, and the alerts (name, labels, $value as the
# description prints it) expected then. Another release's series ride along in each case and must stay quiet.
CASES: list[dict[str, Any]] = [
    {
        "name": "a tracker replica stops answering scrapes",
        "series": [
            _series("up", _tracker("shoal-tracker-0"), "1 0x10"),
            _series("up", _tracker("shoal-tracker-1"), "1x10"),
            _series("up", _tracker("other-tracker-0", "other"), "1 0x10"),
        ],
        "checks": [
            ("1m", "ShoalTrackerReplicaDown", []),
            ("5m", "ShoalTrackerReplicaDown", [_tracker("shoal-tracker-0")]),
        ],
    },
    {
        "name": "the trackers know no live peer",
        "series": [
            _series("shoal_tracker_live_peers", _tracker("shoal-tracker-0"), "3 0x10"),
            _series("shoal_tracker_live_peers", _tracker("shoal-tracker-1"), "3 0x10"),
            _series("shoal_tracker_live_peers", _tracker("other-tracker-0", "other"), "3x10"),
        ],
        "checks": [("3m", "ShoalNoLivePeers", []), ("8m", "ShoalNoLivePeers", [_labels()])],
    },
    {
        "name": "one tracker still knows peers: no alert",
        "series": [
            _series("shoal_tracker_live_peers", _tracker("shoal-tracker-0"), "0x10"),
            _series("shoal_tracker_live_peers", _tracker("shoal-tracker-1"), "2x10"),
        ],
        "checks": [("8m", "ShoalNoLivePeers", [])],
    },
    {
        "name": "a peer stops answering scrapes",
        "series": [
            _series("up", _peer("shoal-peer-1"), "1 0x10"),
            _series("up", {**_peer("shoal-node-peer-x"), "component": "node-peer"}, "1x10"),
            _series("up", _peer("other-peer-0", "other"), "0x10"),
        ],
        "checks": [("3m", "ShoalPeerDown", []), ("7m", "ShoalPeerDown", [_peer("shoal-peer-1")])],
    },
    {
        "name": "half the downloads fail",
        "series": [
            _series("shoal_peer_downloads_failed_total", _peer("shoal-peer-0"), "0+1x40"),
            _series("shoal_peer_downloads_completed_total", _peer("shoal-peer-0"), "0+1x40"),
            _series("shoal_peer_downloads_completed_total", _peer("shoal-peer-1"), "0+0x40"),
            _series("shoal_peer_downloads_failed_total", _peer("other-peer-0", "other"), "0+0x40"),
            _series("shoal_peer_downloads_completed_total", _peer("other-peer-0", "other"), "0+5x40"),
        ],
        "checks": [
            ("5m", "ShoalDownloadsFailing", []),
            ("25m", "ShoalDownloadsFailing", [(_labels(), "50%")]),
        ],
    },
    {
        "name": "peers fetch almost everything from complete holders while several download at once",
        "series": [
            # 10 MB/s from complete holders, 1 MB/s from peers still downloading: offload 1/11.
            _series("shoal_peer_downloaded_bytes_total", {**_peer("shoal-peer-0"), "source": "complete"}, "0+600e6x40"),
            _series("shoal_peer_downloaded_bytes_total", {**_peer("shoal-peer-0"), "source": "partial"}, "0+60e6x40"),
            *[_series("shoal_peer_active_downloads", _peer(f"shoal-peer-{i}"), "1x40") for i in range(4)],
            # Another release: just as low an offload, but one download at a time (nothing to share).
            _series(
                "shoal_peer_downloaded_bytes_total",
                {**_peer("other-peer-0", "other"), "source": "complete"},
                "0+600e6x40",
            ),
            _series(
                "shoal_peer_downloaded_bytes_total", {**_peer("other-peer-0", "other"), "source": "partial"}, "0+0x40"
            ),
            _series("shoal_peer_active_downloads", _peer("other-peer-0", "other"), "1x40"),
        ],
        "checks": [
            ("10m", "ShoalOffloadRatioLow", []),
            ("20m", "ShoalOffloadRatioLow", [(_labels(), "9.091%")]),
        ],
    },
    {
        "name": "a good offload ratio: no alert",
        "series": [
            _series("shoal_peer_downloaded_bytes_total", {**_peer("shoal-peer-0"), "source": "complete"}, "0+100e6x40"),
            _series("shoal_peer_downloaded_bytes_total", {**_peer("shoal-peer-0"), "source": "partial"}, "0+300e6x40"),
            *[_series("shoal_peer_active_downloads", _peer(f"shoal-peer-{i}"), "1x40") for i in range(4)],
        ],
        "checks": [("20m", "ShoalOffloadRatioLow", [])],
    },
    {
        "name": "a peer bans a source",
        "series": [
            _series("shoal_peer_peers_banned_total", _peer("shoal-peer-2"), "0 0 0 1 1 1 1 1 1 1"),
            _series("shoal_peer_peers_banned_total", _peer("shoal-peer-1"), "0x10"),
            _series("shoal_peer_peers_banned_total", _peer("other-peer-0", "other"), "0 0 0 4 4 4 4 4"),
        ],
        "checks": [
            ("2m", "ShoalPeersBanningSources", []),
            ("5m", "ShoalPeersBanningSources", [_labels(pod="shoal-peer-2")]),
        ],
    },
    {
        "name": "a tracker replica refuses new peers at its cap",
        "series": [
            _series(
                "shoal_tracker_refusals_total", {**_tracker("shoal-tracker-1"), "reason": "peers_full"}, "0 0 0 5 9 9 9"
            ),
            _series("shoal_tracker_refusals_total", {**_tracker("shoal-tracker-0"), "reason": "peers_full"}, "0x7"),
            # Identity refusals are an attack or a straggler, not a cap: no capacity alert.
            _series("shoal_tracker_refusals_total", {**_tracker("shoal-tracker-0"), "reason": "identity"}, "0 3 6 9"),
            _series(
                "shoal_tracker_refusals_total",
                {**_tracker("other-tracker-0", "other"), "reason": "peers_full"},
                "0 0 0 5 9 9 9",
            ),
        ],
        "checks": [
            ("2m", "ShoalTrackerAtCapacity", []),
            ("4m", "ShoalTrackerAtCapacity", [_labels(pod="shoal-tracker-1", reason="peers_full")]),
        ],
    },
    {
        "name": "a data dir reaches 95% of its quota",
        "series": [
            _series("shoal_peer_store_bytes", _peer("shoal-peer-0"), "95e9x30"),
            _series("shoal_peer_cache_quota_bytes", _peer("shoal-peer-0"), "100e9x30"),
            _series("shoal_peer_store_bytes", _peer("shoal-peer-1"), "50e9x30"),
            _series("shoal_peer_cache_quota_bytes", _peer("shoal-peer-1"), "100e9x30"),
            # No quota (0): never near it, however full.
            _series("shoal_peer_store_bytes", _peer("shoal-peer-2"), "500e9x30"),
            _series("shoal_peer_cache_quota_bytes", _peer("shoal-peer-2"), "0x30"),
        ],
        "checks": [
            ("10m", "ShoalDiskNearQuota", []),
            ("20m", "ShoalDiskNearQuota", [(_labels(pod="shoal-peer-0"), "95%")]),
        ],
    },
]


def _rendered_rule(**sets: str) -> dict[str, Any]:
    objs = render(sets=["metrics.prometheusRule.enabled=true", *(f"{k}={v}" for k, v in sets.items())])
    return one(objs, "PrometheusRule")


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: str) -> dict[str, str]:
    """What Prometheus makes of the rule's annotation templates for one alert (the subset our rules use)."""
    out = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        text = re.sub(r"\{\{ \$value \| humanizePercentage \}\}", value, text)
        assert "{{" not in text, f"{rule['alert']}: a template the test does not expand: {text}"
        out[key] = text
    return out


def _test_file(groups: list[dict[str, Any]]) -> dict[str, Any]:
    rules = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    tests = []
    for case in CASES:
        alerts = []
        for at, name, expected in case["checks"]:
            exp = []
            for item in expected:
                labels, value = item if isinstance(item, tuple) else (item, "")
                exp.append(
                    {
                        "exp_labels": {**labels, **rules[name]["labels"]},
                        "exp_annotations": _annotations(rules[name], labels, value),
                    }
                )
            alerts.append({"eval_time": at, "alertname": name, "exp_alerts": exp})
        tests.append(
            {"name": case["name"], "interval": "1m", "input_series": case["series"], "alert_rule_test": alerts}
        )
    return {"rule_files": ["shoal.rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def test_rendered_rule_is_a_valid_prometheus_rule() -> None:
    rule = _rendered_rule(**{"metrics.prometheusRule.labels.release": "kube-prometheus-stack"})
    jsonschema.validate(rule, json.loads(SCHEMA.read_text()))
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == ALERTS
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in {"info", "warning", "critical"}, r["alert"]
            assert {"summary", "description"} <= set(r["annotations"]), r["alert"]
            # Scoped to this release: never summed with another release's series.
            assert 'namespace="shoal"' in r["expr"] and 'release="shoal"' in r["expr"], r["alert"]
            assert "__NAMESPACE__" not in r["expr"] and "__RELEASE__" not in r["expr"]


def test_alert_labels_and_extra_groups() -> None:
    extra = '{"name":"mine","rules":[{"record":"x:y","expr":"vector(1)"}]}'
    objs = render(sets=["metrics.prometheusRule.enabled=true", "metrics.prometheusRule.alertLabels.team=storage"])
    rule = one(objs, "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["team"] == "storage" and "severity" in r["labels"]
    with_group = one(
        render(
            sets=["metrics.prometheusRule.enabled=true"],
            set_json=[f"metrics.prometheusRule.additionalGroups=[{extra}]"],
        ),
        "PrometheusRule",
    )
    assert [g["name"] for g in with_group["spec"]["groups"]] == ["shoal", "mine"]


def test_rules_off_by_default() -> None:
    assert [o for o in render() if o["kind"] == "PrometheusRule"] == []


def test_promtool_check_and_test_rules(tmp_path: Path) -> None:
    groups = _rendered_rule()["spec"]["groups"]
    (tmp_path / "shoal.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    check = subprocess.run([promtool(), "check", "rules", str(tmp_path / "shoal.rules.yaml")], capture_output=True)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    (tmp_path / "shoal.test.yaml").write_text(yaml.safe_dump(_test_file(groups), sort_keys=False))
    run = subprocess.run([promtool(), "test", "rules", "shoal.test.yaml"], capture_output=True, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr).decode()


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired = {name for case in CASES for _, name, exp in case["checks"] if exp}
    quiet = {name for case in CASES for _, name, exp in case["checks"] if not exp}
    assert fired == ALERTS and quiet == ALERTS


def test_promtool_test_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: expecting the tracker alert one minute too early is reported."""
    groups = _rendered_rule()["spec"]["groups"]
    (tmp_path / "shoal.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    test = _test_file(groups)
    test["tests"] = test["tests"][:1]
    test["tests"][0]["alert_rule_test"][0]["eval_time"] = "2m"
    test["tests"][0]["alert_rule_test"][0]["exp_alerts"] = test["tests"][0]["alert_rule_test"][1]["exp_alerts"]
    (tmp_path / "shoal.test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    run = subprocess.run([promtool(), "test", "rules", "shoal.test.yaml"], capture_output=True, cwd=tmp_path)
    assert run.returncode != 0


def test_rules_file_is_the_one_source() -> None:
    """The template reads rules/shoal.rules.yaml: what renders is that file with the release's scope filled in."""
    source = yaml.safe_load(RULES_FILE.read_text().replace("__NAMESPACE__", "shoal").replace("__RELEASE__", "shoal"))
    rendered = _rendered_rule()["spec"]["groups"]
    assert [r["expr"] for g in rendered for r in g["rules"]] == [
        r["expr"] for g in source["groups"] for r in g["rules"]
    ]
