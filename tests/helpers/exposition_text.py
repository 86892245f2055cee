"""A strict reader of Prometheus' text exposition format (0.0.4), for tests: prometheus_client is not
installed, and its parser is lenient anyway. It refuses what node_exporter's textfile collector
would: a sample of no declared family, a second HELP or TYPE of one, a bad name, an unescaped label
value, a value that is no number, a duplicate series, a histogram whose buckets fall or whose +Inf
bucket is not its _count, a file without its final line end."""

from __future__ import annotations

import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)$")
KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _float(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ValueError(f"not a sample value: {text!r}")
    return float(text)


def parse(text: str) -> dict[str, dict]:
    """``{family: {"type": kind, "help": text, "samples": {(name, ((label, value), ...)): value}}}``;
    raises ValueError (naming the line) on anything the format does not allow."""
    if not text.endswith("\n"):
        raise ValueError("the text does not end with a line end")
    families: dict[str, dict] = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, word, name, *rest = line.split(" ", 3)
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{where}: bad metric name")
            family = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            key = word.lower()
            if family[key] is not None:
                raise ValueError(f"{where}: a second {word}")
            if family["samples"]:
                raise ValueError(f"{where}: {word} after the family's samples")
            if key == "type" and (not rest or rest[0] not in KINDS):
                raise ValueError(f"{where}: unknown type")
            family[key] = rest[0] if rest else ""
            continue
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match:
            raise ValueError(f"{where}: not a sample")
        name, value = match.group(1), _float(match.group(match.lastindex))
        labels = tuple((m.group(1), _unescape(m.group(2))) for m in re.finditer(LABEL, match.group(2) or ""))
        family = _family(families, name)
        if family is None:
            raise ValueError(f"{where}: a sample of no declared family")
        if (name, labels) in family["samples"]:
            raise ValueError(f"{where}: a duplicate series")
        family["samples"][(name, labels)] = value
    for name, family in families.items():
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])
    return families


def _family(families: dict[str, dict], name: str) -> dict | None:
    """The declared family a sample named ``name`` belongs to: its own, or a histogram's or summary's
    whose name it extends by one of that type's suffixes."""
    for suffix in ("", "_bucket", "_sum", "_count"):
        base = name[: len(name) - len(suffix)] if suffix else name
        family = families.get(base) if name.endswith(suffix) else None
        if family is not None and family["type"] is not None and suffix in SUFFIXES.get(family["type"], ("",)):
            return family
    return None


def _check_histogram(name: str, samples: dict) -> None:
    """Each series of the histogram ``name`` (by its labels but ``le``): cumulative buckets, +Inf = _count."""
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (sample, labels), found in samples.items():
        if sample == f"{name}_bucket":
            rest = tuple(pair for pair in labels if pair[0] != "le")
            series.setdefault(rest, []).append((_float(dict(labels)["le"]), found))
    for rest, buckets in series.items():
        buckets.sort()
        if not math.isinf(buckets[-1][0]):
            raise ValueError(f"{name}{dict(rest)}: no +Inf bucket")
        counts = [found for _, found in buckets]
        if counts != sorted(counts):
            raise ValueError(f"{name}{dict(rest)}: buckets are not cumulative")
        if samples.get((f"{name}_count", rest)) != counts[-1]:
            raise ValueError(f"{name}{dict(rest)}: the +Inf bucket {counts[-1]} is not its _count")


def value(families: dict[str, dict], name: str, **labels: str) -> float:
    """The value of the series ``name{labels}`` (its family found by name or by a histogram suffix)."""
    wanted = tuple(sorted(labels.items()))
    for family in families.values():
        for (sample, sample_labels), found in family["samples"].items():
            if sample == name and tuple(sorted(sample_labels)) == wanted:
                return found
    raise KeyError(f"{name}{labels}")


def labelled(families: dict[str, dict], name: str) -> dict[tuple, float]:
    """Every series of the metric ``name``: {((label, value), ...): value}."""
    return {
        labels: found
        for family in families.values()
        for (sample, labels), found in family["samples"].items()
        if sample == name
    }
