"""`python -m experiments.explore [run_dir | output_dir]`: (re)build the explorer pages (experiments/explorer.py).

Given a run directory: its `explorer.html` (and each section's, for a paper run) and its output directory's
`index.html`; given an output directory (default `outputs`): every run's page and the index. Open the page in a
browser straight from the file system (no server, no network).
"""

from __future__ import annotations

import sys

from influence import InfluenceError

from .explorer import INDEX, build


def main(argv: list[str]) -> None:
    try:
        pages = build(argv[0] if argv else "outputs")
    except InfluenceError as e:
        sys.exit(f"error: {e}")
    runs = [p for p in pages if p.name != INDEX]
    print(f"{len(runs)} run page(s) written" + (f"; open {pages[-1]}" if pages and pages[-1].name == INDEX else ""))
    for p in runs[:20]:
        print(f"  {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
