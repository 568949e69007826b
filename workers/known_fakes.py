"""A worker's known-fake memory: the in-memory hash index, kept in step with the banks in the database.

The index follows `bank_changes`: at most every `refresh_s` seconds, before a batch is matched, it applies
the adds and removes logged since its revision, so a running worker sees a confirmed fake (or a reversed
decision) within `refresh_s` without a restart. In the embedded mode the index is also kept on local disk
(`index_path`, beside the home's database), so a scan starts from the saved index and applies only what
changed since; an erasure removes its entries from that file at once (`forget_entries`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from db.known_fakes import BankStore
from pipeline.hash_index import HashIndex
from pipeline.known_fakes import apply_bank_hits, matchable
from pipeline.screen import Verdict

log = logging.getLogger(__name__)

INDEX_FILE = "known_fakes_index.npz"  # an embedded home's saved index, beside its database


class KnownFakeMemory:
    def __init__(self, banks: BankStore, max_distance: int = 31, refresh_s: float = 60.0,
                 index_path: Path | None = None, clock=time.monotonic) -> None:  # noqa: ANN001
        self.banks = banks
        self.max_distance = max_distance
        self.refresh_s = refresh_s
        self.index_path = index_path
        self.clock = clock
        self.index: HashIndex | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()  # `deepscreen scan` screens two batches at once: one refresh, no search mid-update

    def refresh(self, force: bool = False) -> bool:
        """Bring the index up to the banks' latest revision when `refresh_s` has passed; True if it changed."""
        now = self.clock()
        if not force and self.index is not None and self._checked_at is not None \
                and now - self._checked_at < self.refresh_s:
            return False
        self._checked_at = now
        if self.index is None:
            self.index = self._initial()
            self._save()
            return True
        changes = self.banks.changes_since(self.index.revision)
        fresh = [c for c in changes if c.id > self.index.revision]
        if not fresh:
            return False
        for change in changes:  # replays the look-back window too: changes may commit out of id order
            if change.op == "add" and change.pdq:  # an erased entry's blanked add replays as nothing
                self.index.add([(change.entry_id, change.pdq, change.label)])
            else:
                self.index.remove([change.entry_id])
        self.index.revision = max(c.id for c in changes)
        log.info("bank index updated entries=%d revision=%d changes=%d", len(self.index), self.index.revision,
                 len(fresh))
        self._save()
        return True

    def apply(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """The verdicts with their bank hits applied (pipeline.known_fakes.apply_bank_hits)."""
        with self._lock:
            return self._apply(verdicts)

    def _apply(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        try:
            self.refresh()
        except (OperationalError, InterfaceError) as exc:  # match on what we have; the save will retry the batch
            log.warning("bank index refresh failed error=%s", type(exc).__name__)
        if self.index is None:
            return list(verdicts)
        out = list(verdicts)
        chosen = [i for i, v in enumerate(out) if matchable(v)]
        hits = self.index.search_many([out[i].pdq.hex for i in chosen], self.max_distance)  # type: ignore[union-attr]
        mirrored = [i for i in chosen if out[i].pdq.mirror]  # type: ignore[union-attr]
        mirror_hits = dict(zip(mirrored, self.index.search_many([out[i].pdq.mirror for i in mirrored],  # type: ignore[union-attr,misc]
                                                                self.max_distance), strict=True))
        for i, found in zip(chosen, hits, strict=True):
            out[i] = apply_bank_hits(out[i], found, mirror_hits.get(i, []))
        return out

    def _initial(self) -> HashIndex:
        if self.index_path is not None and self.index_path.is_file():
            try:
                index = HashIndex.load(self.index_path)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("bank index file unreadable path=%s error=%s; rebuilding", self.index_path, exc)
            else:
                self.index = index
                self._checked_at = None
                self.refresh(force=True)
                return self.index
        revision = self.banks.revision()  # read first: a change made during the load is replayed later
        index = HashIndex()
        for ids, codes, labels in self.banks.iter_entries():
            index.add_codes(ids, codes, labels)
        index.revision = revision
        log.info("bank index built entries=%d revision=%d", len(index), revision)
        return index

    def _save(self) -> None:
        if self.index_path is None or self.index is None:
            return
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        self.index.save(self.index_path)


def home_index_file(engine: Engine) -> Path | None:
    """The saved index of the embedded home whose SQLite database `engine` opens (None for other databases)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).parent / INDEX_FILE


def forget_entries(path: Path, entry_ids: Sequence[int]) -> int:
    """Remove entries from a saved index file at once (an erasure must not wait for the next scan to drop
    them); returns how many it held. An unreadable file is deleted: the next scan rebuilds it from the banks."""
    if not entry_ids or not path.is_file():
        return 0
    try:
        index = HashIndex.load(path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("bank index file unreadable path=%s error=%s; deleted", path, exc)
        path.unlink(missing_ok=True)
        return 0
    before = len(index)
    index.remove(list(entry_ids))
    if len(index) != before:
        index.save(path)
    return before - len(index)
