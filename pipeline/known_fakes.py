"""The known-fake memory's rule: what a hit in a hash bank does to a verdict.

- A `fake` entry within the distance makes the verdict `fake` with reason `matched_known_fake`, whatever the
  classifier said (its score is kept, for the record). A copy whose face the detector lost still matches.
- A `real` entry never changes the verdict; it is recorded, and the review queue serves such items last.
- A hash below PDQ's quality floor is never matched on.
- Hits of the upload's mirror-image hash count like direct hits (a flipped re-upload), and say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pipeline.hash_index import IndexHit
from pipeline.screen import BankMatch, Verdict

MATCHED_KNOWN_FAKE = "matched_known_fake"


def matchable(verdict: Verdict) -> bool:
    return verdict.pdq is not None and not verdict.pdq.low_quality and verdict.status in ("scored", "no_face")


def apply_bank_hits(verdict: Verdict, hits: Sequence[IndexHit], mirrored_hits: Sequence[IndexHit] = ()) -> Verdict:
    """The verdict with its nearest fake and nearest real hit recorded, and the fake one acted on."""
    if not (hits or mirrored_hits) or not matchable(verdict):
        return verdict
    nearest: dict[str, tuple[IndexHit, bool]] = {}
    tagged = [(h, False) for h in hits] + [(h, True) for h in mirrored_hits]
    for hit, mirrored in sorted(tagged, key=lambda t: (t[0].distance, t[1], t[0].entry_id)):
        nearest.setdefault(hit.label, (hit, mirrored))
    matches = tuple(BankMatch(h.entry_id, h.label, h.distance, mirrored) for h, mirrored in nearest.values())
    if "fake" not in nearest:
        return dataclasses.replace(verdict, matches=matches)
    return dataclasses.replace(verdict, matches=matches, status="scored", verdict="fake", reason=MATCHED_KNOWN_FAKE)
