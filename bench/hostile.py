"""The hostile-input benchmark (`make fuzz`): what the worst input of a generated corpus costs.

    python -m bench.hostile [--out bench/results] [--keep DIR] [--no-scan]

Exits 1 when a target in docs/benchmarks.md is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.hostile_corpus import CORPUS
from bench.run import cpu_name

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO.parent / "shared" / "data" / "examples"
CPU_TARGET_S = 5.0
RSS_TARGET_BYTES = 1.5e9


def write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in CORPUS.items():
        path = folder / f"{name}.img"  # the extension says nothing: formats are sniffed from the bytes
        if not path.exists():
            path.write_bytes(make())
        paths.append(path)
    return paths


def decode_costs(paths: list[Path]) -> list[dict[str, Any]]:
    from pipeline.isolation import IsolatedDecoder
    from workers.settings import Settings

    decoder = IsolatedDecoder(Settings().decode_limits(isolated=True))
    rows = []
    try:
        for path in paths:
            result, cost = decoder.decode_with_cost(path.read_bytes())
            outcome = getattr(result, "reason", None) or "x".join(map(str, result.pixels.shape[:2]))  # type: ignore[union-attr]
            rows.append(
                {
                    "input": path.stem,
                    "bytes": path.stat().st_size,
                    "outcome": outcome,
                    "cpu_s": round(cost.cpu_seconds, 3),
                    "wall_s": round(cost.wall_seconds, 3),
                    "peak_mb": None if cost.peak_bytes is None else round(cost.peak_bytes / 2**20),
                }
            )
    finally:
        decoder.close()
    return rows


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (a child is listed under the thread that started it)."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children: list[int] = []
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        found += children
        frontier += children
    return found


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scan_memory(folder: Path, home: Path) -> dict[str, Any]:
    """`deepscreen scan` over the corpus, its process tree's resident memory sampled every 50 ms."""
    env = {**os.environ, "DEEPSCREEN_TORCH_THREADS": os.environ.get("DEEPSCREEN_TORCH_THREADS", "1")}
    argv = [
        sys.executable,
        "-m",
        "cli",
        "scan",
        str(folder),
        "--json",
        "--home",
        str(home),
        "--no-progress",
        "--all-files",  # the corpus's files are named .img: formats are sniffed, never taken from the name
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)
        peak_tree = peak_main = 0
        while process.poll() is None:
            pids = _tree(process.pid)
            peak_tree = max(peak_tree, sum(_status(pid, "VmRSS") for pid in pids))
            peak_main = max(peak_main, _status(process.pid, "VmHWM"))
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        rows = [json.loads(line) for line in out.read().decode().splitlines() if line.strip()]
        errors = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"deepscreen scan failed ({process.returncode}):\n{errors[-3000:]}")
    outcomes: dict[str, int] = {}
    for row in rows:
        key = row["reason"] or row["status"]
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "inputs": len(rows),
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": outcomes,
        "peak_rss_tree_mb": round(peak_tree / 2**20),
        "peak_rss_scan_process_mb": round(peak_main / 2**20),
        "stderr_lines": errors.count("\n"),
    }


def isolation_overhead(limit: int = 12, rounds: int = 5) -> dict[str, Any]:
    """Per 1080p example frame, decoded in this process and in an isolated decode process, alternately: the
    medians of wall time and of CPU time (this process and the decode process together), in milliseconds."""
    from pipeline.decode import DecodeLimits, decode_in_process
    from pipeline.isolation import IsolatedDecoder

    frames = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.jpg"))[:limit]]
    if not frames:
        return {}
    decoder = IsolatedDecoder(DecodeLimits(isolated=True))
    decoder.decode(frames[0])  # the process starts once, not per frame
    samples: dict[str, list[tuple[float, float]]] = {"in_process": [], "isolated": []}

    def local(data: bytes) -> float:
        decode_in_process(data, DecodeLimits())
        return 0.0

    def isolated(data: bytes) -> float:
        return decoder.decode_with_cost(data)[1].cpu_seconds

    try:
        for round_ in range(rounds):
            for data in frames:
                order = [("in_process", local), ("isolated", isolated)]
                for mode, run in order if round_ % 2 else order[::-1]:
                    start, used = time.perf_counter(), time.process_time()
                    child = run(data)
                    samples[mode].append((time.perf_counter() - start, time.process_time() - used + child))
    finally:
        decoder.close()

    def median_ms(mode: str, index: int) -> float:
        return round(statistics.median(s[index] for s in samples[mode]) * 1000, 1)

    result: dict[str, Any] = {"frames": len(frames), "rounds": rounds}
    for mode in samples:
        result[f"{mode}_ms"], result[f"{mode}_cpu_ms"] = median_ms(mode, 0), median_ms(mode, 1)
    result["overhead_cpu_ms"] = round(result["isolated_cpu_ms"] - result["in_process_cpu_ms"], 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--keep", type=Path, help="write (and keep) the corpus here instead of a temp folder")
    parser.add_argument("--no-scan", action="store_true", help="skip the `deepscreen scan` memory run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deepscreen-hostile-") as scratch:
        folder = args.keep or Path(scratch) / "corpus"
        paths = write_corpus(folder)
        rows = decode_costs(paths)
        scan = None if args.no_scan else scan_memory(folder, Path(scratch) / "home")
    overhead = isolation_overhead()
    worst = max(rows, key=lambda r: r["cpu_s"])
    result = {
        "cpu": cpu_name(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "decodes": rows,
        "worst_cpu_s": worst["cpu_s"],
        "worst_input": worst["input"],
        "scan": scan,
        "isolation_overhead": overhead,
    }
    print(f"{'input':34} {'bytes':>10} {'outcome':>22} {'cpu s':>7} {'wall s':>7} {'peak MB':>8}")
    for row in rows:
        print(
            f"{row['input']:34} {row['bytes']:>10} {row['outcome']:>22} {row['cpu_s']:>7.2f} "
            f"{row['wall_s']:>7.2f} {row['peak_mb'] if row['peak_mb'] is not None else '-':>8}"
        )
    print(f"\nCPU: {result['cpu']}")
    print(f"worst single input: {worst['input']} {worst['cpu_s']:.2f} s of CPU (target < {CPU_TARGET_S:g} s)")
    if scan:
        print(
            f"deepscreen scan over {scan['inputs']} inputs: peak RSS {scan['peak_rss_tree_mb']} MB with its decode "
            f"processes ({scan['peak_rss_scan_process_mb']} MB the scan process alone; target < 1.5 GB), "
            f"{scan['seconds']} s, outcomes {scan['outcomes']}"
        )
    if overhead:
        print(
            f"isolation on {overhead['frames']} 1080p frames, median wall ms in-process / isolated: "
            f"{overhead['in_process_ms']} / {overhead['isolated_ms']}; CPU ms per frame, both processes: "
            f"{overhead['in_process_cpu_ms']} / {overhead['isolated_cpu_ms']} "
            f"({overhead['overhead_cpu_ms']:+} ms)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    written = args.out / f"hostile-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    written.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {written}")
    missed = worst["cpu_s"] >= CPU_TARGET_S or (
        scan is not None and scan["peak_rss_tree_mb"] * 2**20 >= RSS_TARGET_BYTES
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
