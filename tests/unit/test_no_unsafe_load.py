"""Issue 17: no pickle-capable load of a file a user could write (checkpoints, caches, uploads)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aisys"


def test_every_torch_load_is_weights_only():
    loads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "torch.load(" in line:
                loads.append((f"{path.relative_to(PACKAGE)}:{n}", line.strip()))
    assert loads, "the check found no torch.load at all: it is looking in the wrong place"
    unsafe = [(where, line) for where, line in loads if "weights_only=True" not in line]
    assert not unsafe, f"torch.load without weights_only=True (arbitrary code on load): {unsafe}"
    assert not any(re.search(r"\bpickle\.loads?\(", p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py"))
