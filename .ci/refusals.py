"""Every line that refuses input must have run in the test suite (issue 17, item 8).

Reads the combined coverage data of a run with FFITOOL_COVERAGE=1, prints the branch
coverage of the modules named in [tool.coverage.report] include, then lists each refusal in
them (a `raise`, a verifier's `fail(...)`, a target reported as Unreadable) that no test
executed. A refusal argued unreachable carries `# unreachable: WHY` on its line or in the
comment right above it; those are listed with their reasons and do not fail the run. Exit 1
when any other refusal never ran.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent
REFUSAL = re.compile(r"^\s*(raise\b|fail\(|(return|yield)\s+Unreadable\()")
ARGUED = re.compile(r"#\s*unreachable:\s*(.+)$")


def main() -> int:
    measured = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    measured.load()
    total = measured.report(file=sys.stdout, show_missing=False)
    print(f"branch coverage of the refusing modules: {total:.1f}%")
    never, argued = [], []
    for path in sorted(measured.get_data().measured_files()):
        relative = Path(path).resolve().relative_to(ROOT) if path.startswith(str(ROOT)) else None
        if relative is None or not _included(measured, relative):
            continue
        _, _, _, missing, _ = measured.analysis2(path)
        lines = Path(path).read_text().splitlines()
        for number in sorted(missing):
            text = lines[number - 1]
            if not REFUSAL.match(text):
                continue
            place = f"{relative}:{number}: {text.strip()}"
            reason = _argued(lines, number)
            if reason is None:
                never.append(place)
            else:
                argued.append(f"{place}\n    because {reason}")
    for place in argued:
        print(f"argued unreachable: {place}")
    for place in never:
        print(f"never ran: {place}")
    print(f"{len(never)} refusal(s) no test executed, {len(argued)} argued unreachable")
    return 1 if never else 0


def _argued(lines: list[str], number: int) -> str | None:
    """The reason given by `# unreachable: WHY` on line `number` (1-based) or in the comment
    block right above it (continued on the comment lines that follow), or None."""
    first = number - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    block = lines[first:number]
    for at, line in enumerate(block):
        found = ARGUED.search(line)
        if found:
            rest = [c.lstrip().removeprefix("#").strip() for c in block[at + 1 : -1]]
            return " ".join([found.group(1).strip(), *rest])
    return None


def _included(measured: coverage.Coverage, relative: Path) -> bool:
    patterns = measured.get_option("report:include") or []
    return any(relative.match(pattern) for pattern in patterns)  # type: ignore[union-attr]


if __name__ == "__main__":
    sys.exit(main())
