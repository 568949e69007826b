"""The Prometheus rules and the Grafana dashboard in deploy/ (promtool is not available here).

- The rules file parses, every expression compiles with tests/promql_subset.py, and every metric it names
  is exported by the code or recorded by the file itself; the same for every dashboard query.
- The fake-rate anomaly rule, replayed on synthetic series with the rules' own recording rules, fires on a
  jump of one source's fake share and stays quiet on steady, slowly drifting, reset and tiny sources.
- The no-verdicts rule fires when events wait and nothing finishes, and not when the queue is empty.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.promql_subset import RuleEngine, Store, compile_expr

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "deepscreen-dashboard.json"
DAY = 86400.0
STEP = 60.0


def exported_names() -> set[str]:
    """Every sample name the code exports: worker metrics, API metrics, the queue collector."""
    from prometheus_client import Counter, Gauge, Histogram

    from review.telemetry import ApiMetrics
    from workers import metrics
    from workers.queues import QueueCollector

    names: set[str] = set(QueueCollector.METRICS)
    objects = [v for v in vars(metrics).values() if isinstance(v, Counter | Gauge | Histogram)]
    api = ApiMetrics()
    objects += [api.requests, api.latency]
    for metric in objects:
        base = metric._name  # noqa: SLF001
        if isinstance(metric, Counter):
            names.add(base + "_total")
        elif isinstance(metric, Histogram):
            names.update({base + "_bucket", base + "_count", base + "_sum"})
        else:
            names.add(base)
    return names


@pytest.fixture(scope="module")
def rules() -> dict:
    document = yaml.safe_load(RULES.read_text())
    assert isinstance(document, dict) and document["groups"]
    return document


def test_rules_parse_and_every_metric_is_exported_or_recorded(rules: dict) -> None:
    exported = exported_names()
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {"DeepscreenBacklogOld", "DeepscreenDeadLetters", "DeepscreenRetryRate",
                                          "DeepscreenNoVerdicts", "DeepscreenFakeRateAnomaly"}
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            _, names = compile_expr(rule["expr"])  # raises on anything outside the supported subset
            used |= names
            if "alert" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
                assert rule["labels"]["severity"] in ("page", "ticket")
                assert rule["annotations"]["summary"]
    unknown = {n for n in used if n not in exported and n not in recorded}
    assert unknown == set(), f"rules use metrics nobody exports: {sorted(unknown)}"
    assert all(":" in r for r in recorded)  # recording-rule naming: level:metric:operations


def test_a_misspelt_metric_would_be_caught() -> None:
    _, names = compile_expr('sum(rate(deepscreen_images_screend_total{status="scored"}[5m])) > 0')
    assert names - exported_names() == {"deepscreen_images_screend_total"}


def test_dashboard_panels_use_exported_or_recorded_metrics(rules: dict) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "backlog", "verdict mix", "error rate", "per stage"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\b(?:source:)?deepscreen[a-z0-9_:]*", target["expr"]))
            assert names and names <= exported | recorded, (panel["title"], names - exported - recorded)


# -- the fake-rate anomaly, on synthetic series ----------------------------------------------------------
def _verdict_counters(store: Store, source: str, start: float, end: float, per_minute: float,
                      share_at, reset_at: float | None = None) -> None:  # noqa: ANN001
    """deepscreen_source_verdicts_total for one source: `per_minute` verdicts, a `share_at(t)` of them fake,
    the rest split real/uncertain 4:1; optionally the counters restart from zero at `reset_at`."""
    counts = {"fake": 0.0, "real": 0.0, "uncertain": 0.0}
    t = start
    while t <= end:
        if reset_at is not None and reset_at <= t < reset_at + STEP:
            counts = dict.fromkeys(counts, 0.0)
        share = share_at(t)
        counts["fake"] += per_minute * share
        counts["real"] += per_minute * (1 - share) * 0.8
        counts["uncertain"] += per_minute * (1 - share) * 0.2
        for verdict, value in counts.items():
            store.add("deepscreen_source_verdicts_total", {"source": source, "verdict": verdict}, t, value)
        t += STEP


def _replay(rules: dict, store: Store, start: float, end: float) -> dict[str, dict[str, list[float]]]:
    """alert -> source (or '') -> the evaluation times it was firing."""
    engine = RuleEngine(rules["groups"], store)
    fired: dict[str, dict[str, list[float]]] = {}
    t = start
    while t <= end:
        for alert, vector in engine.evaluate(t).items():
            for labels in vector:
                fired.setdefault(alert, {}).setdefault(dict(labels).get("source", ""), []).append(t)
        t += STEP
    return fired


def test_fake_rate_anomaly_fires_on_a_jump_and_stays_quiet_otherwise(rules: dict) -> None:
    jump, flood_ends, end = DAY + 3600, DAY + 2 * 3600, DAY + 4 * 3600
    store = Store()
    _verdict_counters(store, "flooded", 0, end, 60, lambda t: 0.6 if jump <= t < flood_ends else 0.05)
    _verdict_counters(store, "steady", 0, end, 60, lambda t: 0.05, reset_at=jump + 600)  # a worker restart
    _verdict_counters(store, "drifting", 0, end, 60, lambda t: 0.05 + 0.10 * max(0.0, t - DAY) / (3 * 3600))
    _verdict_counters(store, "tiny", 0, end, 0.2, lambda t: 1.0 if t >= jump else 0.05)  # 2 verdicts in 10 min
    _verdict_counters(store, "high-baseline", 0, end, 60, lambda t: 0.45)
    fired = _replay(rules, store, DAY, end).get("DeepscreenFakeRateAnomaly", {})

    assert set(fired) == {"flooded"}, fired.keys()
    first, last = min(fired["flooded"]), max(fired["flooded"])
    # the 10m share crosses the thresholds about 5 minutes in, then the rule's `for: 10m` holds it
    assert jump + 10 * 60 <= first <= jump + 20 * 60, (first - jump) / 60
    assert last <= flood_ends + 20 * 60  # and it resolves once the flood stops
    assert all(jump <= t for t in fired["flooded"])


def test_fake_rate_anomaly_is_silent_on_a_steady_series(rules: dict) -> None:
    store = Store()
    for source, share in (("a", 0.02), ("b", 0.30), ("c", 0.70)):
        _verdict_counters(store, source, 0, DAY + 3 * 3600, 60, lambda t, s=share: s)
    assert "DeepscreenFakeRateAnomaly" not in _replay(rules, store, DAY, DAY + 3 * 3600)
    # the silence comes from the thresholds: without them the same series fires for every source
    loose = copy.deepcopy(rules)
    for group in loose["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DeepscreenFakeRateAnomaly":
                rule["expr"] = rule["expr"].replace("ratio1d > 0.25", "ratio1d + 1 > 0.99").replace("> 1.5 *", "> 0.5 *")
    assert set(_replay(loose, store, DAY, DAY + 3 * 3600)["DeepscreenFakeRateAnomaly"]) == {"a", "b", "c"}


def test_a_broken_model_fires_for_every_source(rules: dict) -> None:
    broken = DAY + 3600
    store = Store()
    for source in ("a", "b", "c"):
        _verdict_counters(store, source, 0, DAY + 2 * 3600, 60, lambda t: 0.95 if t >= broken else 0.05)
    fired = _replay(rules, store, DAY, DAY + 2 * 3600).get("DeepscreenFakeRateAnomaly", {})
    assert set(fired) == {"a", "b", "c"}


def test_no_verdicts_fires_while_events_wait_and_not_on_an_idle_system(rules: dict) -> None:
    stall, end = 3 * 3600.0, 5 * 3600.0
    for waiting in (5.0, 0.0):
        store = Store()
        screened, t = 0.0, 0.0
        while t <= end:
            if t < stall:
                screened += 30
            store.add("deepscreen_images_screened_total",
                      {"queue": "upload", "model_version": "m", "status": "scored", "verdict": "real"}, t, screened)
            store.add("deepscreen_queue_depth", {"queue": "upload"}, t, waiting if t >= stall else 0.0)
            store.add("deepscreen_worker_processes", {"model_version": "m"}, t, 1.0)
            t += STEP
        fired = _replay(rules, store, 3600, end)
        if waiting:
            times = fired["DeepscreenNoVerdicts"][""]
            assert stall + 10 * 60 <= min(times) <= stall + 25 * 60
        else:
            assert "DeepscreenNoVerdicts" not in fired
        assert "DeepscreenNoWorkers" not in fired
