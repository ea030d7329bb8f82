"""Record ids: 32 hex chars, never repeated, drawn in batches across batch boundaries."""

from __future__ import annotations

import re

from appliance.http.ids import RecordIds


def test_ids_are_32_hex_chars_and_unique_across_batches() -> None:
    """Ids keep the documented shape and never repeat, also where one batch ends."""
    ids = RecordIds(batch=4)
    drawn = [ids() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
