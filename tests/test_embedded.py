"""`deepscreen scan`: the embedded mode, run as the real command (SQLite + local folder, no services)."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO.parent / "shared" / "data" / "examples"
FIELDS = {"source", "sha256", "status", "verdict", "fake_probability", "faces", "heatmap", "reason", "model_version",
          "bank_matches"}


def _run(args: list[str], model_dir: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DEEPSCREEN_MODEL_DIR": str(model_dir), "DEEPSCREEN_TORCH_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.model import make_placeholder

    folder = tmp_path_factory.mktemp("model")
    make_placeholder(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("inputs")
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(root / "astronaut.jpg", quality=92)
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(root / "nested" / "wall.png")
    (root / "nested" / "deeper" / "page.jpg").write_text("<html><body>hello</body></html>")
    (root / "nested" / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    (root / "cut.jpg").write_bytes(buffer.getvalue()[:4000])
    return root


def _rows(stdout: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {Path(r["source"]).name: r for r in rows}


def test_scan_json_gives_one_stable_row_per_input(inputs: Path, model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _run(["scan", str(inputs), "--json", "--home", str(home), "--heatmaps", "all"], model_dir)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert set(rows) == {"astronaut.jpg", "wall.png", "page.jpg", "zero.jpg", "cut.jpg"}
    for row in rows.values():
        assert set(row) == FIELDS
    face = rows["astronaut.jpg"]
    assert face["status"] == "scored" and face["verdict"] in ("fake", "real", "uncertain")
    assert len(face["faces"]) >= 1
    assert set(face["faces"][0]) == {"box", "detection_probability", "fake_probability", "verdict"}
    assert face["fake_probability"] == max(f["fake_probability"] for f in face["faces"])
    assert Path(face["heatmap"]).is_file() and Path(face["heatmap"]).read_bytes()[:3] == b"\xff\xd8\xff"
    assert rows["wall.png"]["status"] == "no_face" and rows["wall.png"]["verdict"] is None
    assert (rows["page.jpg"]["status"], rows["page.jpg"]["reason"]) == ("invalid_input", "not_an_image")
    assert (rows["zero.jpg"]["status"], rows["zero.jpg"]["reason"]) == ("invalid_input", "empty")
    assert rows["cut.jpg"]["status"] == "invalid_input"
    assert "screening" in done.stderr  # the progress bar goes to stderr, never into the JSON
    assert (home / "deepscreen.sqlite3").is_file()


def test_rescan_reuses_verdicts_by_sha256(inputs: Path, model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _rows(_run(["scan", str(inputs), "--json", "--home", str(home)], model_dir).stdout)
    second = _rows(_run(["scan", str(inputs), "--json", "--home", str(home)], model_dir).stdout)
    assert first == second
    with sqlite3.connect(home / "deepscreen.sqlite3") as conn:
        verdicts = conn.execute("select count(*) from verdicts").fetchone()[0]
        events = conn.execute("select count(*) from events").fetchone()[0]
    assert verdicts == 5  # every input has bytes, so each gets one verdict row -- one, not two
    assert events == 10  # every input of both runs is recorded


def test_crops_mode_skips_detection(inputs: Path, model_dir: Path, tmp_path: Path) -> None:
    done = _run(["scan", str(inputs / "astronaut.jpg"), str(inputs / "nested" / "wall.png"), "--crops", "--json",
                 "--home", str(tmp_path / "h")], model_dir)
    rows = _rows(done.stdout)
    for name in ("astronaut.jpg", "wall.png"):
        assert rows[name]["status"] == "scored"
        assert len(rows[name]["faces"]) == 1 and rows[name]["faces"][0]["detection_probability"] is None
        assert rows[name]["model_version"].endswith("+crops")


def test_summary_table_and_help(inputs: Path, model_dir: Path, tmp_path: Path) -> None:
    done = _run(["scan", str(inputs / "astronaut.jpg"), "--home", str(tmp_path / "h"), "--no-progress"], model_dir)
    assert done.returncode == 0
    assert "astronaut.jpg" in done.stdout and "images/s" in done.stdout
    for command in ([], ["scan"], ["submit"], ["worker"], ["migrate"], ["train"], ["model"]):
        help_out = _run([*command, "--help"], model_dir)
        assert help_out.returncode == 0 and "usage: deepscreen" in help_out.stdout


def test_missing_model_is_a_clear_error(inputs: Path, tmp_path: Path) -> None:
    done = _run(["scan", str(inputs / "astronaut.jpg"), "--home", str(tmp_path / "h")], tmp_path / "nope")
    assert done.returncode == 3
    assert "cannot load the model" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/data/examples is not present")
def test_example_frames_yield_faces(model_dir: Path, tmp_path: Path) -> None:
    done = _run(["scan", str(EXAMPLES), "--json", "--home", str(tmp_path / "h"), "--heatmaps", "none"], model_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r for r in _rows(done.stdout).values() if r["source"].endswith(".jpg")]
    assert len(rows) == 40
    with_face = sum(1 for r in rows if r["status"] == "scored")
    assert with_face >= 38, f"only {with_face} of 40 example frames yielded a face"


def test_a_face_too_small_to_judge_is_stored_with_its_reason(model_dir: Path, tmp_path: Path) -> None:
    """Through the real command into SQLite: the image is `no_face` / `face_too_small`, its face is recorded
    with the verdict `too_small`, and no review item is opened."""
    from skimage import data

    small_model = tmp_path / "model"
    small_model.mkdir()
    for name in ("model.safetensors", "model.json"):
        (small_model / name).write_bytes((model_dir / name).read_bytes())
    meta = json.loads((small_model / "model.json").read_text())
    (small_model / "model.json").write_text(json.dumps({**meta, "min_face_side": 60}))
    canvas = np.full((600, 800, 3), 200, np.uint8)
    canvas[380:560, 560:740] = np.asarray(Image.fromarray(data.astronaut()).resize((180, 180)))  # a ~35 px face
    Image.fromarray(canvas).save(tmp_path / "crowd.png")
    home = tmp_path / "home"
    done = _run(["scan", str(tmp_path / "crowd.png"), "--home", str(home), "--json"], small_model)
    assert done.returncode == 0, done.stderr
    [row] = _rows(done.stdout).values()
    assert (row["status"], row["reason"], row["verdict"]) == ("no_face", "face_too_small", None)
    assert [face["verdict"] for face in row["faces"]] == ["too_small"]
    [database] = home.glob("*.sqlite3")
    with sqlite3.connect(database) as db:
        assert db.execute("select verdict from faces").fetchall() == [("too_small",)]
        assert db.execute("select count(*) from review_items").fetchone() == (0,)


def test_a_scan_batch_ends_at_its_byte_budget(tmp_path: Path) -> None:
    """A batch's files are all read before it is screened and two batches are in flight: past SCAN_BATCH_MB a
    batch ends early, so 32 files at the 40 MB limit are never 1.3 GB of bytes held at once."""
    from workers.embedded import batches

    sizes = [100, 500, 450, 10, 10, 2000, 5, 5, 5, 5, 5]
    paths = []
    for index, size in enumerate(sizes):
        paths.append(tmp_path / f"{index:02d}.bin")
        paths[-1].write_bytes(b"x" * size)
    paths.append(tmp_path / "missing.jpg")
    got = [[sizes[int(p.stem)] if p.exists() else None for p in batch] for batch in batches(paths, 4, 1000)]
    assert got == [[100, 500, 450], [10, 10, 2000], [5, 5, 5, 5], [5, None]]
    assert [len(b) for b in batches(paths, 4)] == [4, 4, 4]


def test_small_scan_batches_keep_every_input_s_own_event(model_dir: Path, tmp_path: Path) -> None:
    """Through the real command with a 1 MB batch budget: batches of different lengths, one row per input in
    order, and one event per input (ids are numbered across batches)."""
    noise = np.random.default_rng(4).integers(0, 256, (420, 500, 3), dtype=np.uint8)  # ~630 KB as PNG
    names = [f"noise-{i}.png" for i in range(5)]
    for index, name in enumerate(names):
        Image.fromarray(np.roll(noise, index * 7, axis=1)).save(tmp_path / name)
    home = tmp_path / "home"
    done = _run(["scan", *(str(tmp_path / n) for n in names), "--json", "--home", str(home)], model_dir,
                DEEPSCREEN_SCAN_BATCH_MB="1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [Path(r["source"]).name for r in rows] == names
    assert all(r["status"] == "no_face" for r in rows)
    [database] = home.glob("*.sqlite3")
    with sqlite3.connect(database) as db:
        assert db.execute("select count(distinct event_id) from events").fetchone() == (5,)


def test_a_missing_path_exits_2_after_the_rest_are_screened(inputs: Path, model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = tmp_path / "nonexistent"
    done = _run(["scan", str(missing), str(inputs / "nested" / "wall.png"), "--json", "--home", str(home)], model_dir)
    assert done.returncode == 2, done.stderr
    assert f"no such file or folder: {missing}" in done.stderr
    rows = _rows(done.stdout)
    assert rows["wall.png"]["status"] == "no_face"  # the rest are still screened
    assert (rows["nonexistent"]["status"], rows["nonexistent"]["reason"]) == ("invalid_input", "not_found")
    with sqlite3.connect(home / "deepscreen.sqlite3") as conn:
        assert conn.execute("select count(*) from events").fetchone()[0] == 2  # and both are stored


def test_folder_walks_take_images_and_explicit_files_are_always_screened(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    for name in ("a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.TIFF"):
        Image.new("RGB", (40, 40), (120, 90, 60)).save(folder / name, format=Image.registered_extensions()[
            Path(name).suffix.lower()])
    (folder / "README.md").write_text("# not an image\n")
    (folder / "labels.csv").write_text("file,label\na.JPG,real\n")
    images = {"a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.TIFF"}

    walked = _run(["scan", str(folder), "--json", "--home", str(tmp_path / "h1"), "--crops"], model_dir)
    assert walked.returncode == 0, walked.stderr
    assert set(_rows(walked.stdout)) == images

    everything = _run(["scan", str(folder), "--all-files", "--json", "--home", str(tmp_path / "h2"), "--crops"],
                      model_dir)
    rows = _rows(everything.stdout)
    assert set(rows) == images | {"README.md", "labels.csv"}
    assert rows["README.md"]["reason"] == "not_an_image"

    named = _run(["scan", str(folder / "labels.csv"), "--json", "--home", str(tmp_path / "h3")], model_dir)
    assert (_rows(named.stdout)["labels.csv"]["status"], named.returncode) == ("invalid_input", 0)
