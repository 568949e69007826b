"""`make bench` stays runnable: both harnesses run end to end at a tiny size and report every figure.

These check that the harness works and its figures are coherent, never a speed (timings belong to the
benchmark itself, on a quiet machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

CROPS = 8


def test_bench_run_reports_the_crops_and_frame_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.run import main

    assert main(["--crops", str(CROPS), "--rounds", "1", "--only", "forward-chunks,scan-crops,scan",
                 "--out", str(tmp_path)]) == 0
    [written] = tmp_path.glob("bench-*.json")
    results = json.loads(written.read_text())["results"]
    assert set(results) == {"forward-chunks", "scan-crops", "scan"}
    assert all(row["images_per_s"] > 0 for row in results.values())
    crops = results["scan-crops"]
    assert crops["images"] == CROPS and sum(crops["counts"].values()) == CROPS
    assert crops["cpu_seconds"] > 0  # the timed scan's own CPU, which bench.distributed compares against
    assert "x forward-chunks" in capsys.readouterr().out  # the ratio the --crops target is read from


@pytest.mark.services
def test_bench_distributed_reports_throughput_cpu_rss_and_latency(tmp_path: Path) -> None:
    from bench.distributed import main

    out = tmp_path / "distributed.json"
    assert main(["--events", "16", "--rss-early", "8", "--rounds", "1", "--warmup", "4", "--latency-events", "4",
                 "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["events"] == 16 and result["images_per_s"] > 0 and result["embedded_images_per_s"] > 0
    assert result["distributed_vs_embedded"] == pytest.approx(
        result["images_per_s"] / result["embedded_images_per_s"], rel=0.02)
    assert len(result["parts_distributed_embedded"]) == 2  # the first --rss-early events, then one part
    assert 0 < result["rss_mb_early"] and 0 < result["rss_mb_final"]
    for part in ("worker", "moto", "embedded"):  # each of these did milliseconds of work for every image
        assert result[f"{part}_cpu_ms_per_image"] > 0, part
    for part in ("postgres", "redis", "harness"):  # about a millisecond an image or less: 16 images can stay
        assert result[f"{part}_cpu_ms_per_image"] >= 0, part  # under /proc's 10 ms clock tick
    assert sum(result["outcomes"].values()) == 16  # every image's verdict, so the flagged share can be read
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"]


def test_bench_run_compares_a_second_model_in_the_same_run(tmp_path: Path, tmp_model: Path) -> None:
    from bench.run import main

    assert main(["--crops", str(CROPS), "--rounds", "1", "--only", "forward,scan-crops", "--compare", str(tmp_model),
                 "--out", str(tmp_path)]) == 0
    [written] = tmp_path.glob("bench-*.json")
    document = json.loads(written.read_text())
    assert set(document["results"]) == {"forward", "scan-crops", "forward@compare", "scan-crops@compare"}
    assert document["meta"]["compare"] == str(tmp_model)
    assert all(row["images_per_s"] > 0 for row in document["results"].values())


def test_a_compared_model_comes_from_the_history(tmp_path: Path) -> None:
    import subprocess

    from bench.run import REPO, model_folder

    rev = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%H", "--", "models/deepscreen-v2"],
                         capture_output=True, text=True).stdout.strip()
    if not rev:
        pytest.skip("no git history in this checkout")
    folder = model_folder(f"git:{rev}:models/deepscreen-v2")
    assert (folder / "model.json").read_bytes() == subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:models/deepscreen-v2/model.json"], capture_output=True).stdout
    assert (folder / "model.safetensors").stat().st_size > 1_000_000
