"""The known-fake memory in the embedded mode: `deepscreen bank` on a scan home, matching in `deepscreen scan`
with the index kept on local disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], model_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPSCREEN_MODEL_DIR": str(model_dir), "DEEPSCREEN_TORCH_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.model import make_placeholder

    folder = tmp_path_factory.mktemp("model")
    make_placeholder(folder)
    return folder


def test_an_imported_bank_catches_a_copy_in_scan_and_the_index_lives_on_disk(model_dir: Path, tmp_path: Path) -> None:
    from skimage import data

    from pipeline.hash_index import HashIndex
    from pipeline.pdq import pdq_hash

    astronaut = data.astronaut()
    small = Image.fromarray(astronaut).resize((320, 320), Image.Resampling.BILINEAR)
    small.save(tmp_path / "copy.jpg", quality=35)
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.jpg", quality=90)
    (tmp_path / "bank.csv").write_text(f"hash,label\n{pdq_hash(np.ascontiguousarray(astronaut)).hex},fake\n")
    home = tmp_path / "home"

    imported = _run(["bank", "import", "partner", str(tmp_path / "bank.csv"), "--home", str(home), "--json"], model_dir)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"bank": "partner", "added": 1, "duplicates": 0, "rejected": []}
    done = _run(["scan", str(tmp_path / "copy.jpg"), str(tmp_path / "coffee.jpg"), "--json", "--home", str(home),
                 "--no-progress"], model_dir)
    assert done.returncode == 0, done.stderr
    rows = {Path(r["source"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    copy = rows["copy.jpg"]
    assert (copy["verdict"], copy["reason"]) == ("fake", "matched_known_fake")
    assert [(m["bank"], m["label"]) for m in copy["bank_matches"]] == [("partner", "fake")]
    assert copy["bank_matches"][0]["distance"] <= 31
    assert rows["coffee.jpg"]["bank_matches"] == [] and rows["coffee.jpg"]["reason"] != "matched_known_fake"
    index_file = home / "known_fakes_index.npz"
    assert index_file.is_file() and len(HashIndex.load(index_file)) == 1

    # the bank changes; the next scan starts from the index on disk and applies the change
    (tmp_path / "more.csv").write_text(f"{pdq_hash(np.ascontiguousarray(data.coffee())).hex}\n")
    assert _run(["bank", "import", "partner", str(tmp_path / "more.csv"), "--label", "real", "--home", str(home)],
                model_dir).returncode == 0
    before = HashIndex.load(index_file).revision
    Image.fromarray(data.coffee()).save(tmp_path / "coffee-again.jpg", quality=60)  # new bytes: screened anew
    again = _run(["scan", str(tmp_path / "coffee-again.jpg"), "--json", "--home", str(home), "--no-progress"],
                 model_dir)
    [row] = map(json.loads, again.stdout.splitlines())
    assert [m["label"] for m in row["bank_matches"]] == ["real"] and row["reason"] != "matched_known_fake"
    after = HashIndex.load(index_file)
    assert len(after) == 2 and after.revision > before

    exported = tmp_path / "out.csv"
    assert _run(["bank", "export", "partner", "--out", str(exported), "--home", str(home)], model_dir).returncode == 0
    assert exported.read_text().splitlines()[0] == "hash,label,quality,external_id,review_item_id,audit_id"
    assert len(exported.read_text().splitlines()) == 3
    listed = _run(["bank", "list", "--json", "--home", str(home)], model_dir)
    assert [json.loads(line)["entries"] for line in listed.stdout.splitlines()] == [2]


def test_bank_commands_refuse_bad_input(model_dir: Path, tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    missing = _run(["bank", "import", "x", str(tmp_path / "nope.csv"), "--home", home], model_dir)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "b.csv").write_text("00" * 32 + ",fake\n")
    refused = _run(["bank", "import", "confirmed_fake", str(tmp_path / "b.csv"), "--home", home], model_dir)
    assert refused.returncode == 2 and "decision_bank" in refused.stderr
    unknown = _run(["bank", "export", "nobody", "--home", home], model_dir)
    assert unknown.returncode == 2 and "no_such_bank" in unknown.stderr
    for command in (["bank"], ["bank", "import"], ["bank", "export"], ["bank", "list"], ["bank", "show"]):
        help_out = _run([*command, "--help"], model_dir)
        assert help_out.returncode == 0 and "usage: deepscreen" in help_out.stdout


@pytest.mark.services
def test_erasing_a_confirmed_fake_in_a_scan_home_drops_it_from_the_saved_index(flagging_model: Path,
                                                                              tmp_path: Path) -> None:
    from skimage import data
    from sqlalchemy import select

    from db.engine import connect
    from db.erasure_store import ErasureStore
    from db.migrate import home_database
    from db.review_store import Actor, ReviewStore
    from db.schema import BankChange, ReviewItem
    from pipeline.hash_index import HashIndex
    from workers.erasure import erase
    from workers.storage import LocalBlobStore

    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(tmp_path / "original.jpg", quality=85)
    Image.fromarray(astronaut).resize((320, 320), Image.Resampling.BILINEAR).save(tmp_path / "copy.jpg", quality=40)
    home = tmp_path / "home"

    def scan(name: str) -> dict:
        done = _run(["scan", str(tmp_path / name), "--json", "--home", str(home), "--no-progress"], flagging_model)
        assert done.returncode == 0, done.stderr
        [row] = map(json.loads, done.stdout.splitlines())
        return row

    first = scan("original.jpg")
    engine = connect(home_database(home))
    reviews, moderator = ReviewStore(engine), Actor("mod-ann", "moderator")
    with engine.connect() as conn:
        item_id = conn.scalar(select(ReviewItem.id))
    reviews.claim(moderator, item_id, 60)
    entry_id = reviews.decide(moderator, item_id, "confirm_fake").bank_entry_id
    assert entry_id is not None
    assert scan("copy.jpg")["reason"] == "matched_known_fake"
    index_file = home / "known_fakes_index.npz"
    assert len(HashIndex.load(index_file)) == 1
    with engine.connect() as conn:
        pdq = conn.scalar(select(BankChange.pdq).where(BankChange.entry_id == entry_id))

    report = erase(ErasureStore(engine), LocalBlobStore(home / "blobs"), erased_by="dpo", actor_role="admin",
                   reason="user request", sha256=first["sha256"])  # what `serve --home`'s erasure calls
    assert report.rows["bank_entries"] == 1 and report.rows["index_file_entries"] == 1
    assert len(HashIndex.load(index_file)) == 0 and bytes.fromhex(pdq) not in index_file.read_bytes()
    with engine.connect() as conn:
        assert conn.scalar(select(BankChange.id).where(BankChange.pdq == pdq)) is None
    engine.dispose()
    again = scan("original.jpg")  # the same bytes: a new image, screened afresh
    assert again["sha256"] == first["sha256"] and again["reason"] != "matched_known_fake"
    assert again["bank_matches"] == []
