"""docs/rules.md, written from the rule registry: `python3 -m ffitool.rules_doc [PATH]`.

The page is generated so that it cannot drift from `RULES`: the tests regenerate it and
compare it with the committed file byte for byte. It lists every rule (code, severity, title),
then one section per rule with its explanation, whether it fails a check, how to select or
ignore it, and the functions that report it, for whoever changes a rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ffitool.findings import Severity
from ffitool.rules import PREFIXES, RULES, Rule

DOC_PATH = Path("docs") / "rules.md"
"""Where the page lives, from the repository's root."""

REGENERATE = "python3 -m ffitool.rules_doc"

_FAILS = {
    Severity.ERROR: "fails `ffitool check` (exit 1)",
    Severity.WARNING: "fails `ffitool check` only with `--strict` (`strict = true`)",
    Severity.INFO: "never fails a check",
}

_SELECTING = """\
## Selecting rules

`ffitool check` reports every rule unless its settings narrow the selection: `--select` names
the whole selection and `--ignore` takes rules out of it. Both take codes or prefixes (`B2`,
`L101`, `R`), repeated or separated by commas, and a selector that matches no rule is a usage
error (exit 2), so a typo cannot switch a check off. The same settings go in the
`[tool.ffitool.check]` table of the closest `pyproject.toml`:

```toml
[tool.ffitool.check]
select = ["B", "L"]
ignore = ["B203"]
strict = true
```

The requirement rules (R) are only checked when their setting is given. `ffitool check
--list-rules` lists the rules; `ffitool check --explain CODE` prints one rule's explanation.
"""


def render() -> str:
    """The whole page."""
    parts = [
        "# Rules\n",
        f"<!-- Generated from ffitool/rules.py by `{REGENERATE}`; edit the registry. -->\n",
        "Every finding of `ffitool inspect` and `ffitool check` is one of these rules. A code"
        " never changes meaning. The prefix says what a rule looks at:\n",
        "".join(f"- {prefix}: {what}\n" for prefix, what in PREFIXES.items()),
        "| code | severity | title |\n|---|---|---|\n"
        + "".join(
            f"| [{rule.code}](#{rule.code.lower()}) | {rule.severity.value} | {rule.title} |\n"
            for rule in RULES.values()
        ),
        _SELECTING,
    ]
    parts += [_section(rule) for rule in RULES.values()]
    return "\n".join(parts)


def _section(rule: Rule) -> str:
    """One rule: title, what it costs, how to turn it on and off, where it is reported."""
    code = rule.code
    if rule.requires:
        reported = (
            f"Reported by `ffitool check`, only when the `{rule.requires}` setting is given"
            f" (`--{rule.requires}`, or `{rule.requires}` in `[tool.ffitool.check]`)"
        )
    else:
        reported = "Reported by `ffitool inspect` and `ffitool check`, always"
    emitters = ", ".join(f"`{name}`" for name in rule.emitted_by)
    return (
        f"## {code}\n\n"
        f"**{rule.title}**\n\n"
        f"{rule.explanation}\n\n"
        f"- Severity: {rule.severity.value}; {_FAILS[rule.severity]}.\n"
        f"- {reported}.\n"
        f"- Selected by `{code}`, `{code[:2]}` or `{code[0]}`: `--ignore {code}` on the command"
        f' line, `ignore = ["{code}"]` in `[tool.ffitool.check]`, leaves it out.\n'
        f"- Emitted by {emitters}.\n"
    )


def main(argv: list[str]) -> int:
    """Write the page to the path given, or to docs/rules.md under the current directory."""
    path = Path(argv[0]) if argv else DOC_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
