"""One Prometheus exposition from the text of several workers (pure: no I/O).

Each worker process keeps its own registry; the supervisor fetches every worker's
`generate_latest` text (format 0.0.4) and publishes this merge, so a scrape reads the whole
router. A series is keyed by its sample name and labels: counters, histograms and summaries add
up over workers; a `_created` keeps the earliest start; a gauge takes the max, since most
describe state every worker shares (the outbox, the state disk, the live config, Redis's budget
spend), except the per-process counts in SUMMED_GAUGES, which add up. Untyped samples add up.

The text is read line by line here rather than with prometheus_client's parser, whose
character-by-character label scan costs ~20 us a sample (over 20 ms for two workers of ~500
samples; this reads them in a third of that). A line that is no sample raises ValueError. HELP
and TYPE lines are kept as the first worker wrote them and each series as its first writer
wrote it, so one worker's text comes back byte for byte. Label values stay escaped: 0.0.4 has one
escaping (backslash, quote, newline), so equal values are equal escaped text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence

from prometheus_client.utils import floatToGoString

# Gauges that count something each process holds on its own: the router's is their sum.
SUMMED_GAUGES = frozenset(
    {
        "router_inflight_requests",
        "router_backend_inflight",
        "router_usage_records_held",
    }
)
_CREATED = "_created"
# prometheus_client writes a series' start time as a gauge family `<parent>_created` right after
# its parent: a counter's family is named `x_total`, a histogram's or summary's `x`.
_STAMPED = {"counter": "_total", "histogram": "", "summary": ""}
_QUOTED = r'"(?:[^"\\]|\\.)*"'  # a label value: a "}" or " " inside it ends nothing
# name, {labels} (optional), value; a timestamp after the value is dropped.
_SAMPLE = re.compile(rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{(?:[^\"}}]|{_QUOTED})*\}})?[ \t]+([^ \t]+)")
_LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_QUOTED})")

# Value formatting exactly as generate_latest writes it (prometheus_client leaves it unannotated).
_format: Callable[[float], str] = floatToGoString
_Merge = Callable[[float, float], float]
_Key = tuple[str, tuple[tuple[str, str], ...]]


def _min(a: float, b: float) -> float:
    return min(a, b)


def _max(a: float, b: float) -> float:
    return max(a, b)


class _Family:
    """A family merged so far: its first HELP and TYPE lines, its series in first-seen order."""

    __slots__ = ("help", "merge", "name", "series", "type", "type_line", "values")

    def __init__(self, name: str) -> None:
        self.name = name
        self.help = self.type_line = ""
        self.type = "untyped"
        self.merge: _Merge = operator.add
        self.series: dict[_Key, str] = {}  # as first written: `name{labels}`
        self.values: dict[_Key, float] = {}

    def typed(self, line: str, type_: str, families: dict[str, _Family]) -> None:
        if not self.type_line:
            self.type_line, self.type = line, type_
            self.merge = _merge_rule(self.name, type_, families)

    def add(self, line: str) -> None:
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line[:200]!r}")
        name, labels, raw = match.groups()
        key = (name, tuple(sorted(_LABEL.findall(labels or ""))))
        value = float(raw)
        seen = self.values.get(key)
        if seen is None:
            self.series[key] = line[: match.end(2 if labels else 1)]
            self.values[key] = value
        else:
            self.values[key] = self.merge(seen, value)

    def render(self, out: list[str]) -> None:
        out.extend(line for line in (self.help, self.type_line) if line)
        values = self.values
        out.extend(f"{series} {_format(values[key])}" for key, series in self.series.items())


def _merge_rule(name: str, type_: str, families: dict[str, _Family]) -> _Merge:
    """How two workers' values of one series of family `name` combine."""
    if type_ != "gauge":
        return operator.add
    if name.endswith(_CREATED):
        base = name.removesuffix(_CREATED)
        for parent_type, suffix in _STAMPED.items():
            parent = families.get(base + suffix)
            if parent is not None and parent.type == parent_type:
                return _min
    return operator.add if name in SUMMED_GAUGES else _max


def _family(families: dict[str, _Family], name: str) -> _Family:
    family = families.get(name)
    if family is None:
        family = families[name] = _Family(name)
    return family


def _read(text: str, families: dict[str, _Family]) -> None:
    """Merge one worker's text into `families` (kept in order of first appearance)."""
    family: _Family | None = None
    # Only "\n" ends a line: a label value may hold "\r" or U+2028 unescaped.
    for line in text.split("\n"):
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in {"HELP", "TYPE"}:
                continue  # a comment
            family = _family(families, parts[2])
            if parts[1] == "HELP":
                family.help = family.help or line
            elif len(parts) == 4:
                family.typed(line, parts[3].strip(), families)
        elif line:
            if family is None:  # a sample with no HELP or TYPE before it: untyped
                family = _family(families, line.split("{", 1)[0].split(" ", 1)[0])
            family.add(line)


def cumulative_only(text: str) -> str:
    """The counters, histograms and summaries of one worker's text (no `_created`): what a
    worker that died leaves behind, so the router's totals never go down when it is replaced
    (Prometheus would read the drop as a reset and count the whole total again)."""
    families: dict[str, _Family] = {}
    _read(text, families)
    out: list[str] = []
    for family in families.values():
        if family.type in _STAMPED:
            family.render(out)
    return "".join(f"{line}\n" for line in out)


def merge_expositions(texts: Sequence[str]) -> bytes:
    """The Prometheus text (0.0.4) of all workers' `texts` merged into one exposition."""
    families: dict[str, _Family] = {}
    for text in texts:
        _read(text, families)
    out: list[str] = []
    for family in families.values():
        family.render(out)
    return "".join(f"{line}\n" for line in out).encode()
