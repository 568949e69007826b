"""`deepscreen status`: queues, live workers and their models, throughput, review backlog, newest errors.

Each part is read on its own; a part whose service cannot be reached says so instead of failing the whole
report (an operator runs this precisely when something is down).
"""

from __future__ import annotations

from typing import Any

from workers.settings import Settings


def collect(settings: Settings, window_s: float = 300.0, errors: int = 10) -> dict[str, Any]:
    report: dict[str, Any] = {"queues": None, "workers": None, "database": None, "problems": []}
    try:
        import redis

        from workers.heartbeat import live_workers
        from workers.queues import queue_states

        client = redis.Redis.from_url(settings.broker_url, socket_timeout=3, socket_connect_timeout=3)
        report["queues"] = [{"queue": s.queue, "depth": s.depth, "oldest_age_s": s.oldest_age_s}
                            for s in queue_states(client)]
        report["workers"] = live_workers(client)
        client.close()
    except Exception as exc:  # noqa: BLE001
        report["problems"].append(f"redis: {type(exc).__name__}: {str(exc)[:200]}")
    try:
        from db.engine import connect
        from db.status_store import status_summary

        engine = connect(settings.database_url)
        try:
            report["database"] = status_summary(engine, window_s, errors)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        report["problems"].append(f"postgres: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return report


def render(report: dict[str, Any]) -> str:
    """The report for people: short aligned sections."""
    lines = ["queues"]
    for q in report["queues"] or []:
        age = f"{q['oldest_age_s']:.0f}s" if q["oldest_age_s"] is not None else "-"
        lines.append(f"  {q['queue']:<10} depth={q['depth']:<8} oldest={age}")
    if report["queues"] is None:
        lines.append("  (unreachable)")
    lines.append(f"workers ({len(report['workers'] or [])} live)")
    for w in report["workers"] or []:
        lines.append(f"  {w.get('hostname')}  pid={w.get('pid')}  model={w.get('model_version')}  "
                     f"queues={','.join(w.get('queues') or [])}")
    db = report["database"]
    if db is None:
        lines.append("database (unreachable)")
    else:
        t = db["throughput"]
        by = ", ".join(f"{k}={v}" for k, v in sorted(t["by_status"].items())) or "none"
        lines.append(f"throughput (last {t['window_s']:.0f}s): {t['finished']} finished, "
                     f"{t['per_second']:.2f}/s ({by})")
        b = db["review_backlog"]
        oldest = f"{b['oldest_pending_age_s']:.0f}s" if b["oldest_pending_age_s"] is not None else "-"
        lines.append(f"review backlog: {b['pending']} pending, {b['claimed']} claimed, oldest pending {oldest}")
        lines.append("newest errors")
        for e in db["errors"] or []:
            lines.append(f"  {e['at']}  {e['status']:<13} {e['reason']}  ({e['event_id']})")
        if not db["errors"]:
            lines.append("  none")
    for problem in report["problems"]:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)
