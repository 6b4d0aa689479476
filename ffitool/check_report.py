"""The outcome of `ffitool check` and its machine formats: JSON, SARIF 2.1.0, GitHub commands.

One `CheckOutcome` is built from the targets and rendered by any format, so the formats list
the same findings and agree on the exit code. The JSON follows `ffitool/schemas/check-1.json`;
the SARIF validates against the OASIS 2.1.0 schema (a copy is under `tests/`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

from ffitool.check_config import CheckSettings
from ffitool.checks import Reported
from ffitool.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK
from ffitool.findings import Finding, Severity, printable
from ffitool.rules import RULES

CHECK_SCHEMA = "ffitool.check/1"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


@dataclass
class CheckOutcome:
    """Every target checked, what it reported, and what could not be read."""

    settings: CheckSettings
    checked: list[tuple[str, list[Reported]]] = field(default_factory=list)
    """Each target's display name and its reported findings, in the order checked."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(name, one-line error) of each input that could not be read."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(name, reason) of each directory entry passed over."""

    def add(self, path: str, reported: list[Reported]) -> None:
        """Record a checked target, keeping only the findings the selection reports."""
        chosen = [r for r in reported if r.finding.code in self.settings.reported]
        self.checked.append((path, chosen))

    def fails(self, found: Finding) -> bool:
        """Errors fail; warnings fail with `strict`; info never does."""
        return found.severity is Severity.ERROR or (
            self.settings.strict and found.severity is Severity.WARNING
        )

    def findings(self) -> Iterator[Reported]:
        for _, reported in self.checked:
            yield from reported

    def counts(self) -> dict[str, int]:
        """How many findings of each severity, and how many fail."""
        counts = {severity.value: 0 for severity in Severity} | {"failing": 0}
        for reported in self.findings():
            counts[reported.finding.severity.value] += 1
            counts["failing"] += self.fails(reported.finding)
        return counts

    @property
    def exit_code(self) -> int:
        """3 if an input could not be read (it was not checked), else 1 if a finding fails."""
        if self.unreadable:
            return EXIT_BAD_INPUT
        if any(self.fails(r.finding) for r in self.findings()):
            return EXIT_CHECK_FAILED
        return EXIT_OK


def check_document(outcome: CheckOutcome) -> dict[str, object]:
    """The outcome as `ffitool.check/1` JSON."""
    config = outcome.settings.config
    return {
        "schema": CHECK_SCHEMA,
        "config": None if config is None else str(config),
        "strict": outcome.settings.strict,
        "files": [
            {"path": path, "findings": [_finding_json(outcome, r) for r in reported]}
            for path, reported in outcome.checked
        ],
        "errors": [{"path": path, "error": error} for path, error in outcome.unreadable],
        "skipped": [{"path": path, "reason": reason} for path, reason in outcome.skipped],
        "summary": {"files": len(outcome.checked), **outcome.counts()},
        "exit_code": outcome.exit_code,
    }


def _finding_json(outcome: CheckOutcome, reported: Reported) -> dict[str, object]:
    return {
        "member": reported.member,
        **reported.finding.to_json(),
        "file_offset": reported.file_offset,
        "fails": outcome.fails(reported.finding),
    }


_SARIF_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def sarif_document(outcome: CheckOutcome, version: str) -> dict[str, object]:
    """The outcome as a SARIF 2.1.0 log with one run; the rules are the driver's metadata."""
    codes = list(RULES)
    rules = [
        {
            "id": rule.code,
            "shortDescription": {"text": rule.title},
            "fullDescription": {"text": rule.explanation},
            "help": {"text": rule.explanation},
            "defaultConfiguration": {"level": _SARIF_LEVELS[rule.severity]},
        }
        for rule in RULES.values()
    ]
    results = []
    for reported in outcome.findings():
        found = reported.finding
        level = "error" if outcome.fails(found) else _SARIF_LEVELS[found.severity]
        location: dict[str, object] = {
            "physicalLocation": {
                "artifactLocation": {"uri": _uri(reported.path)},
                **(
                    {"region": {"byteOffset": reported.file_offset, "byteLength": 1}}
                    if reported.file_offset is not None
                    else {}
                ),
            }
        }
        if reported.member is not None:
            location["logicalLocations"] = [{"name": reported.member, "kind": "module"}]
        results.append(
            {
                "ruleId": found.code,
                "ruleIndex": codes.index(found.code),
                "level": level,
                "message": {"text": printable(_located_message(reported))},
                "locations": [location],
            }
        )
    notifications = [
        {
            "level": "error",
            "message": {"text": printable(error)},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(path)}}}],
        }
        for path, error in outcome.unreadable
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "ffitool", "version": version, "rules": rules}},
                "invocations": [
                    {
                        "executionSuccessful": not outcome.unreadable,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "results": results,
            }
        ],
    }


def _uri(path: str) -> str:
    """A relative URI reference for a path as given (absolute paths become file: URIs).

    Bytes that are not UTF-8 were decoded with surrogateescape; they go back to the original
    bytes, percent-encoded, so the URI names the same file.
    """
    encoded = quote(path, safe="/!", errors="surrogateescape")
    return "file://" + encoded if path.startswith("/") else encoded


def _located_message(reported: Reported) -> str:
    """The finding's message, led by the archive member it is in; SARIF and GitHub show it
    through `printable`, as the text output does: escaped, and bounded in length."""
    message = reported.finding.message
    return f"{reported.member}: {message}" if reported.member is not None else message


_GITHUB_COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def github_lines(outcome: CheckOutcome) -> Iterator[str]:
    """GitHub Actions workflow commands: one annotation per finding, one per unreadable input.

    Everything from the input is escaped twice: control characters as text (`printable`),
    then the workflow-command encoding, so a hostile name cannot end the command and start
    another (`%0A::set-output`).
    """
    for reported in outcome.findings():
        found = reported.finding
        command = "error" if outcome.fails(found) else _GITHUB_COMMANDS[found.severity]
        yield (
            f"::{command} file={_property(reported.path)},title={found.code}"
            f"::{_data(_located_message(reported))}"
        )
    for path, error in outcome.unreadable:
        yield f"::error file={_property(path)},title=ffitool::{_data(error)}"


def _data(text: str) -> str:
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
