"""docs/SECURITY.md maps each threat to tests: every test it names exists, so the table cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_test_the_threat_table_names_exists() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    named = 0
    for cell in re.findall(r"^\|[^|]*\|[^|]*\|(.*)\|$", text, flags=re.MULTILINE):
        current: Path | None = None
        for ref in re.findall(r"`([^`]+)`", cell):
            file_part, _, name = ref.partition("::")
            if file_part:
                current = ROOT / "tests" / file_part
                assert current.is_file(), f"docs/SECURITY.md names {file_part}, which does not exist"
            if name:
                assert current is not None, ref
                source = current.read_text(encoding="utf-8")
                assert re.search(rf"^def {re.escape(name)}\(", source, flags=re.MULTILINE), \
                    f"docs/SECURITY.md names {current.relative_to(ROOT)}::{name}, which does not exist"
                named += 1
    assert named >= 40
