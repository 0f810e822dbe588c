"""Parse an endpoint's export-metrics text into per-entity windows.

Where this sits in a rollout: at every tick the runner fetches
``GET /api/2.0/serving-endpoints/{name}/metrics``; this module turns that text into a ``Scrape``
(one ``EntityWindow`` per served entity and window timestamp); ``rollout.metrics.windows``
deduplicates windows across scrapes (or turns true counters into deltas); the engine sums the
windows of each arm that began after the split took effect, and the judges read those sums.

Both exposition formats are read: Prometheus text 0.0.4 and OpenMetrics 1.0 (``# EOF``,
``# UNIT``, ``_created`` samples, exemplars after `` # ``, counters declared by family name
without ``_total``). OpenMetrics is assumed when ``content_type`` says so or when the text has an
``# EOF`` line.

Why a hand-written parser rather than ``prometheus_client``'s two parsers: both raise a bare
``ValueError`` with no line number; the 0.0.4 parser accepts garbage (``a 1 2 3`` parses, unknown
escapes such as ``\\q`` pass through, duplicate samples are returned twice) and turns millisecond
timestamps into float seconds; the OpenMetrics parser reads Databricks' millisecond timestamps as
seconds (a date 56,000 years ahead), and rejects a whole scrape for one NaN counter or one
non-monotone histogram. Here the known families are read into the window model directly, with
errors that name the line, and bad *values* degrade one field of one window instead of the scrape.

Fatal (``MetricsParseError``, nothing of the scrape is returned): a line that is neither a
comment, a blank, nor a well-formed sample (garbage, a bad metric or label name, bad label syntax,
an unterminated quote, an unknown escape, a repeated label name, a value or timestamp that is not
a number, extra tokens, a malformed exemplar); a malformed ``# TYPE`` line or two ``# TYPE`` lines
disagreeing on one family; a ``_bucket`` sample without a numeric ``le``; two samples of the same
series and timestamp with different values; in OpenMetrics, anything after ``# EOF`` or a missing
``# EOF`` when the content type promised OpenMetrics (a truncated body). The text is
machine-generated, so one broken line means the exporter or the transport is broken, and a
half-read scrape must not be judged: it would make an arm look as if it served fewer requests.
Every line is checked, including lines of metrics this module otherwise ignores.

Warnings (``Scrape.warnings``; the field is listed in the window's ``missing`` and the rest is
kept): NaN or infinite values; negative counts; a histogram without a ``+Inf`` bucket, with
non-monotone cumulative buckets beyond rounding, or with NaN/negative buckets (dropped from that
window); a known family declared with an unexpected ``# TYPE`` (ignored); a request family whose
kind (gauge or counter) disagrees with the first request family present, normally
``request_count_total`` (ignored); an exact duplicate sample (counted once); entity labels that
disagree on one series (the first of ``ENTITY_LABELS`` wins). When one replica's series is unusable
the field is missing for the whole window, since a sum of the other replicas would understate it.

Families read (``SCALAR_METRICS``, ``HISTOGRAM_METRICS``; ``METRIC_ALIASES`` for other
spellings of the same family): the request, 4xx and 5xx counts, CPU, memory and GPU usage and
GPU memory usage (levels: averaged over replicas and GPUs), provisioned concurrency, and the
round-trip latency, queue time and model inference latency histograms. A scrape with windows
whose series name no served entity (none of ``ENTITY_LABELS``) says so with
``Scrape.unattributable()``, naming the labels it did carry: the engine pauses on it rather
than judge the arms' sum.

Timestamps become epoch milliseconds. Prometheus 0.0.4 timestamps are milliseconds by the spec.
OpenMetrics timestamps are seconds by the spec, but Databricks writes milliseconds either way; an
OpenMetrics timestamp of 1e11 or more (after the year 5138 if it were seconds) is therefore read
as milliseconds, a smaller one as seconds.

Speed: a 200-entity scrape with both histograms (17 buckets each, 8,600 lines, 950 KiB) parses in
about 30-40 ms with CPython 3.11 on a shared 2-core machine (``render_big_scrape`` in
``tests/unit/test_metrics_parse.py``, best of 10). Label sets are parsed once per scrape and
looked up afterwards, which is most of the speed; the rest is one pass over the lines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from rollout.metrics.model import (
    GAUGE_FIELDS,
    HISTOGRAM_FIELDS,
    WINDOW_FIELDS,
    EntityWindow,
    Histogram,
    UnattributableScrape,
)

Kind = Literal["window", "counter"]
ExpositionFormat = Literal["prometheus", "openmetrics"]

# Checked in this order; the first non-empty one names the entity.
ENTITY_LABELS: tuple[str, ...] = ("served_entity_name", "served_model_name", "served_entity")

REQUEST_FIELDS: tuple[str, ...] = ("requests", "errors_4xx", "errors_5xx")
_AVERAGED_FIELDS = frozenset(GAUGE_FIELDS)

# field -> exposition name of the sample (0.0.4 family name; OpenMetrics strips ``_total``).
SCALAR_METRICS: dict[str, str] = {
    "requests": "request_count_total",
    "errors_4xx": "request_4xx_count_total",
    "errors_5xx": "request_5xx_count_total",
    "cpu_percent": "cpu_usage_percentage",
    "mem_percent": "mem_usage_percentage",
    "provisioned_concurrency": "provisioned_concurrent_requests_total",
    # GPU usage (%) and GPU memory usage (%) from the DCGM exporter, one series per GPU.
    "gpu_percent": "gpu_usage_percentage",
    "gpu_mem_percent": "gpu_memory_usage_percentage",
}
HISTOGRAM_METRICS: dict[str, str] = {
    "latency": "request_latency_ms",
    "queue_time": "model_queue_time_ms",
    # "Model inference latency (ms)": time in the model, feature lookups included.
    "inference_latency": "model_inference_latency_ms",
}
# Other exposition names seen for the same families (Datadog's and a third-party parser's
# spelling); read exactly as the canonical name.
METRIC_ALIASES: dict[str, str] = {
    "gpu_mem_usage_percentage": "gpu_memory_usage_percentage",
    "model_prediction_latency_ms": "model_inference_latency_ms",
}

_Role = Literal["value", "created", "bucket", "sum", "count"]


def _strip_total(name: str) -> str:
    return name.removesuffix("_total")


def _names(canonical: str) -> list[str]:
    return [canonical, *(alias for alias, to in METRIC_ALIASES.items() if to == canonical)]


def _build_dispatch() -> dict[str, tuple[str, _Role]]:
    dispatch: dict[str, tuple[str, _Role]] = {}
    for fld, canonical in SCALAR_METRICS.items():
        for name in _names(canonical):
            dispatch[name] = (fld, "value")
            dispatch[_strip_total(name) + "_created"] = (fld, "created")
    for fld, canonical in HISTOGRAM_METRICS.items():
        for name in _names(canonical):
            dispatch[name + "_bucket"] = (fld, "bucket")
            dispatch[name + "_sum"] = (fld, "sum")
            dispatch[name + "_gsum"] = (fld, "sum")
            dispatch[name + "_count"] = (fld, "count")
            dispatch[name + "_gcount"] = (fld, "count")
            dispatch[name + "_created"] = (fld, "created")
    return dispatch


_DISPATCH = _build_dispatch()

_TYPES = frozenset(
    {"counter", "gauge", "histogram", "summary", "untyped"}  # Prometheus 0.0.4
    | {"gaugehistogram", "stateset", "info", "unknown"}  # OpenMetrics 1.0 adds these
)
_WINDOW_SCALAR_TYPES = frozenset({"gauge", "untyped", "unknown"})
_HISTOGRAM_TYPES = frozenset({"histogram", "gaugehistogram", "untyped", "unknown"})

# Cumulative buckets may dip by float rounding in the exporter; more than this is a broken series.
_ROUNDING = 1e-6

# An OpenMetrics timestamp this large cannot be seconds (year 5138): it is milliseconds.
_MS_THRESHOLD = 1e11

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PAIR = r'[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"[ \t]*'
_BLOCK_RE = re.compile(r"\{(?:" + _PAIR + r"(?:," + _PAIR + r")*,?)?[ \t]*\}")
_PAIR_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"')
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_QUOTED_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_ESCAPE_RE = re.compile(r"\\(.)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class MetricsError(Exception):
    """Base of every error raised while reading export-metrics."""


class MetricsParseError(MetricsError):
    """The export-metrics text is malformed at ``line_number`` (1-based); nothing was kept.

    Not worth retrying at once with the same body; a later scrape may be whole again.
    """

    def __init__(self, line_number: int, line: str, reason: str) -> None:
        self.line_number = line_number
        self.line = line
        self.reason = reason
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(f"line {line_number}: {reason}: {shown!r}")


@dataclass(frozen=True)
class CumulativeSample:
    """One series of a true cumulative counter (or one cumulative histogram part) as scraped.

    Kept per replica, unsummed, because deltas and resets must be computed per series: a replica
    that restarts or disappears lowers the sum without anything having been "un-served".
    ``part`` is ``"value"`` for a counter, ``"sum"`` for a histogram sum, or ``"le:<bound>"``
    for a cumulative bucket. ``created`` is the series' ``_created`` time (seconds), if exported.
    """

    entity: str | None
    field: str
    part: str
    series: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int | None
    created: float | None = None


@dataclass(frozen=True)
class Scrape:
    """One export-metrics scrape, read.

    ``kind`` is ``"window"`` when the request families are gauges (or untyped): each window's
    counts cover that window only, as Databricks exports them. It is ``"counter"`` when
    ``request_count_total`` (or the first request family present) is declared a counter: then
    the histograms are taken as cumulative too, as a Prometheus client library exports them,
    ``windows`` hold cumulative totals as of each timestamp, ``cumulative`` holds the per-series
    values, and only ``WindowTracker`` can turn them into per-interval counts.

    ``family_types`` records the declared ``# TYPE`` of each known family present.
    ``has_entity_labels`` is false when no series named a served entity: the windows are
    endpoint totals (entity ``None``) and cannot be attributed to an arm (``unattributable``
    says so, with ``label_names``: the labels the known families' series carry, ``le`` and the
    entity labels aside).
    """

    windows: list[EntityWindow] = field(default_factory=list)
    kind: Kind = "window"
    warnings: list[str] = field(default_factory=list)
    has_entity_labels: bool = False
    format: ExpositionFormat = "prometheus"
    family_types: dict[str, str] = field(default_factory=dict)
    cumulative: list[CumulativeSample] = field(default_factory=list)
    label_names: tuple[str, ...] = ()

    def unattributable(self) -> UnattributableScrape | None:
        """Why this scrape's windows cannot be split per entity; None when they can (or when
        there are no windows at all)."""
        if not self.windows or self.has_entity_labels:
            return None
        return UnattributableScrape(self.label_names, ENTITY_LABELS)


# ---------------------------------------------------------------------------------------------
# Line level


def _parse_number(token: str) -> float | None:
    # float() alone would accept "1_000" and non-ASCII digits, which no exporter writes.
    if not token.isascii() or "_" in token:
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _unescape(raw: str, line_number: int, line: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        try:
            return _ESCAPES[char]
        except KeyError:
            raise MetricsParseError(
                line_number, line, f"unknown escape '\\{char}' in a label value"
            ) from None

    return _ESCAPE_RE.sub(replace, raw)


def _diagnose_labels(line: str, pos: int) -> str:
    """Say precisely what is wrong with the label block starting at ``line[pos] == '{'``."""
    i = pos + 1
    while True:
        i = _skip_blanks(line, i)
        if i >= len(line):
            return "label set is not closed with '}'"
        name = _LABEL_NAME_RE.match(line, i)
        if name is None:
            return f"expected a label name at column {i + 1}"
        label = name.group(0)
        i = _skip_blanks(line, name.end())
        if not line.startswith("=", i):
            return f"expected '=' after label name {label!r}"
        i = _skip_blanks(line, i + 1)
        if not line.startswith('"', i):
            return f"expected '\"' to open the value of label {label!r}"
        quoted = _QUOTED_RE.match(line, i)
        if quoted is None:
            return f"unterminated quoted value of label {label!r}"
        i = _skip_blanks(line, quoted.end())
        if not line.startswith(",", i):
            return f"expected ',' or '}}' after the value of label {label!r}"
        i += 1


def _skip_blanks(line: str, i: int) -> int:
    while i < len(line) and line[i] in " \t":
        i += 1
    return i


def _parse_labels(
    text: str, pos: int, line_number: int, line: str | None = None
) -> tuple[dict[str, str], int]:
    """Labels of the block at ``text[pos] == '{'``; ``line`` is the whole line, for errors."""
    shown = text if line is None else line
    block = _BLOCK_RE.match(text, pos)
    if block is None:
        raise MetricsParseError(line_number, shown, _diagnose_labels(text, pos))
    labels: dict[str, str] = {}
    for name, raw in _PAIR_RE.findall(block.group(0)):
        if name in labels:
            raise MetricsParseError(line_number, shown, f"label {name!r} given twice")
        labels[name] = _unescape(raw, line_number, shown) if "\\" in raw else raw
    return labels, block.end()


def _check_exemplar(text: str, line_number: int, line: str) -> None:
    # An exemplar is validated (a broken one means a broken line) and then not kept.
    body = text.lstrip(" \t")
    if not body.startswith("{"):
        raise MetricsParseError(line_number, line, "an exemplar must start with a label set")
    _, end = _parse_labels(body, 0, line_number, line)
    tokens = body[end:].split()
    if not 1 <= len(tokens) <= 2 or any(_parse_number(t) is None for t in tokens):
        raise MetricsParseError(line_number, line, "an exemplar needs a value and optional time")


_Series = tuple[tuple[str, str], ...]


class _RawSample(NamedTuple):
    """A sample of a known family, with its labels already reduced to what windows need."""

    line_number: int
    line: str
    name: str
    entity: str | None
    series: _Series
    le: str | None
    value: float
    timestamp_ms: int | None


def _parse_sample_slowly(
    line: str, line_number: int, openmetrics: bool
) -> tuple[str, dict[str, str], float, int | None]:
    """The reference reading of one sample line: every rule, and a precise error on failure."""
    name_match = _NAME_RE.match(line)
    if name_match is None:
        raise MetricsParseError(line_number, line, "expected a metric name or a comment")
    name = name_match.group(0)
    pos = name_match.end()
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        labels, pos = _parse_labels(line, pos, line_number)
    elif pos < len(line) and line[pos] not in " \t":
        raise MetricsParseError(line_number, line, f"unexpected character {line[pos]!r}")
    rest = line[pos:]
    if openmetrics and "#" in rest:
        rest, _, exemplar = rest.partition("#")
        _check_exemplar(exemplar, line_number, line)
    tokens = rest.split()
    if not tokens:
        raise MetricsParseError(line_number, line, "a sample needs a value")
    if len(tokens) > 2:
        raise MetricsParseError(line_number, line, "expected 'value [timestamp]' after the name")
    value = _parse_number(tokens[0])
    if value is None:
        raise MetricsParseError(line_number, line, f"value {_clip(tokens[0])!r} is not a number")
    timestamp_ms: int | None = None
    if len(tokens) == 2:
        timestamp_ms = _parse_timestamp(tokens[1], openmetrics)
        if timestamp_ms is None:
            raise MetricsParseError(
                line_number, line, f"timestamp {_clip(tokens[1])!r} is not a number"
            )
    return name, labels, value, timestamp_ms


def _clip(token: str) -> str:
    return token if len(token) <= 40 else token[:40] + "..."


def _parse_timestamp(token: str, openmetrics: bool) -> int | None:
    if token.isascii() and token.isdigit() and not openmetrics:
        return int(token)
    stamp = _parse_number(token)
    if stamp is None or not math.isfinite(stamp):
        return None
    if openmetrics and abs(stamp) < _MS_THRESHOLD:
        stamp *= 1000.0
    return round(stamp)


class _LineReader:
    """Reads sample lines, fast for the common shape and exact for every other one.

    Export-metrics repeats each label set many times (every family, every bucket), so a label
    set is parsed once per scrape and looked up afterwards; bucket lines are looked up by their
    labels without the trailing ``le``. Anything unusual (exemplars, ``le`` not last, a label
    set the fast path cannot vouch for) goes to ``_parse_sample_slowly``, which is the
    reference: the fast path only ever accepts lines the slow path would accept identically.
    """

    def __init__(self, openmetrics: bool, warnings: list[str]) -> None:
        self.openmetrics = openmetrics
        self.warnings = warnings
        self._names: set[str] = set()
        self._blocks: dict[str, tuple[str | None, _Series, str | None]] = {}
        self._bases: dict[str, tuple[str | None, _Series] | None] = {}

    def read(self, line: str, line_number: int) -> _RawSample | None:
        """The sample on ``line`` if its family is one windows use; ``None`` for the others."""
        fast = self._read_fast(line, line_number)
        if fast is not None:
            return fast if fast.name in _DISPATCH else None
        name, labels, value, timestamp_ms = _parse_sample_slowly(
            line, line_number, self.openmetrics
        )
        if name not in _DISPATCH:
            return None
        entity, series = self._identity(labels)
        return _RawSample(
            line_number, line, name, entity, series, labels.get("le"), value, timestamp_ms
        )

    def _read_fast(self, line: str, line_number: int) -> _RawSample | None:
        if self.openmetrics and "#" in line:
            return None
        brace = line.find("{")
        if brace > 0:
            name = line[:brace]
            close = line.rfind("}")
            rest = line[close + 1 :]
            if close < brace or '"' in rest:
                return None
            info = self._blocks.get(line[brace : close + 1])
            if info is None:
                info = self._block_info(line[brace : close + 1], line, line_number)
                if info is None:
                    return None
        else:
            name, _, rest = line.partition(" ")
            info = (None, (), None)
        if name not in self._names:
            if _NAME_RE.fullmatch(name) is None:
                return None
            self._names.add(name)
        numbers = self._numbers(rest)
        if numbers is None:
            return None
        return _RawSample(line_number, line, name, info[0], info[1], info[2], *numbers)

    def _numbers(self, rest: str) -> tuple[float, int | None] | None:
        tokens = rest.split()
        if not 1 <= len(tokens) <= 2 or not rest.isascii() or "_" in rest:
            return None
        try:
            value = float(tokens[0])
        except ValueError:
            return None
        if len(tokens) == 1:
            return value, None
        stamp = tokens[1]
        if stamp.isdigit() and not self.openmetrics:
            return value, int(stamp)
        timestamp_ms = _parse_timestamp(stamp, self.openmetrics)
        return None if timestamp_ms is None else (value, timestamp_ms)

    def _block_info(
        self, block: str, line: str, line_number: int
    ) -> tuple[str | None, _Series, str | None] | None:
        le: str | None = None
        base = block
        cut = block.rfind(',le="')
        # Only the plain shape ``...",le="X"}`` is cut; anything else is parsed whole.
        if cut > 0 and block[cut - 1] == '"' and block.endswith('"}'):
            le = block[cut + 5 : -2]
            if '"' in le or "\\" in le:
                return None
            base = block[:cut] + "}"
        if base in self._bases:
            identity = self._bases[base]
        else:
            identity = None
            if _BLOCK_RE.fullmatch(base) is not None:
                labels, _ = _parse_labels(base, 0, line_number, line)
                if le is None or "le" not in labels:
                    le = labels.get("le", le)
                    identity = self._identity(labels)
            self._bases[base] = identity
        if identity is None:
            return None
        info = (identity[0], identity[1], le)
        self._blocks[block] = info
        return info

    def _identity(self, labels: dict[str, str]) -> tuple[str | None, _Series]:
        entity: str | None = None
        for label in ENTITY_LABELS:
            value = labels.get(label)
            if not value:
                continue
            if entity is None:
                entity = value
            elif value != entity:
                self.warnings.append(
                    f"series names two entities ({entity!r} and {value!r}); {entity!r} is used"
                )
        if not labels:
            return entity, ()
        series = tuple(
            sorted((k, v) for k, v in labels.items() if k not in ENTITY_LABELS and k != "le")
        )
        return entity, series


def _parse_type_line(line: str, line_number: int, types: dict[str, str]) -> None:
    parts = line.split()
    # Either dialect's type words are accepted in both: a mislabelled body reads the same.
    if len(parts) != 4 or _NAME_RE.fullmatch(parts[2]) is None or parts[3] not in _TYPES:
        raise MetricsParseError(line_number, line, "expected '# TYPE <name> <type>'")
    name, kind = parts[2], parts[3]
    previous = types.get(name)
    if previous is not None and previous != kind:
        raise MetricsParseError(
            line_number, line, f"family {name!r} was already declared as {previous!r}"
        )
    types[name] = kind


def _read_lines(
    text: str, content_type: str | None, warnings: list[str]
) -> tuple[list[_RawSample], dict[str, str], ExpositionFormat]:
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    declared_om = content_type is not None and "openmetrics" in content_type.lower()
    openmetrics = declared_om or "# EOF" in lines
    samples: list[_RawSample] = []
    types: dict[str, str] = {}
    reader = _LineReader(openmetrics, warnings)
    eof_line = 0
    for index, raw_line in enumerate(lines):
        line_number = index + 1
        if not raw_line or raw_line.isspace():
            continue
        if eof_line:
            raise MetricsParseError(
                line_number, raw_line, f"content after '# EOF' (line {eof_line})"
            )
        # Blanks may separate tokens anywhere, including before the first one.
        line = raw_line.lstrip(" \t") if raw_line[0] in " \t" else raw_line
        if line[0] == "#":
            if line == "# EOF":
                eof_line = line_number
                continue
            # Other comments are free text in 0.0.4; only the three keywords have a grammar.
            words = line.split(maxsplit=3)
            keyword = words[1] if len(words) > 1 and words[0] == "#" else ""
            if keyword == "TYPE":
                _parse_type_line(line, line_number, types)
            elif keyword in ("HELP", "UNIT") and (
                len(words) < 3 or _NAME_RE.fullmatch(words[2]) is None
            ):
                raise MetricsParseError(line_number, line, f"a {keyword} line needs a name")
            continue
        sample = reader.read(line, line_number)
        if sample is not None:
            samples.append(sample)
    if declared_om and lines and not eof_line:
        raise MetricsParseError(
            len(lines), lines[-1], "OpenMetrics text does not end with '# EOF' (truncated?)"
        )
    return samples, types, "openmetrics" if openmetrics else "prometheus"


# ---------------------------------------------------------------------------------------------
# Samples into windows


# (line number, value) of the first sample read for a slot, to report conflicting duplicates.
_First = tuple[int, float]


class _HistAcc:
    __slots__ = ("buckets", "count", "firsts", "sum")

    def __init__(self) -> None:
        self.buckets: dict[float, float] = {}
        self.sum: float | None = None
        self.count: float | None = None
        self.firsts: dict[float | str, _First] = {}


class _WindowAcc:
    __slots__ = ("hists", "scalars")

    def __init__(self) -> None:
        self.scalars: dict[str, dict[_Series, _First]] = {}
        self.hists: dict[str, dict[_Series, _HistAcc]] = {}


@dataclass
class _Context:
    warnings: list[str]
    kind: Kind = "window"
    field_kinds: dict[str, str] = field(default_factory=dict)
    # ``_created`` samples usually carry no timestamp of their own, so they are kept per series
    # for the whole scrape rather than per window.
    created: dict[tuple[str | None, str, _Series], float] = field(default_factory=dict)


def _family_type(fld: str, types: dict[str, str]) -> str | None:
    if fld in SCALAR_METRICS:
        for name in _names(SCALAR_METRICS[fld]):
            declared = types.get(name, types.get(_strip_total(name)))
            if declared is not None:
                return declared
        return None
    return next(
        (types[name] for name in _names(HISTOGRAM_METRICS[fld]) if name in types), None
    )


def _resolve_kinds(
    types: dict[str, str], present: set[str], ctx: _Context
) -> tuple[set[str], dict[str, str]]:
    """Decide the scrape's kind and which present fields to ignore because of their TYPE."""
    ignored: set[str] = set()
    family_types: dict[str, str] = {}
    for fld in sorted(present):
        declared = _family_type(fld, types)
        if declared is not None:
            family_types[SCALAR_METRICS.get(fld) or HISTOGRAM_METRICS[fld]] = declared
        if fld in HISTOGRAM_FIELDS:
            if declared is not None and declared not in _HISTOGRAM_TYPES:
                ctx.warnings.append(
                    f"{HISTOGRAM_METRICS[fld]} is declared {declared!r}, not a histogram; ignored"
                )
                ignored.add(fld)
            continue
        if declared is None or declared in _WINDOW_SCALAR_TYPES:
            ctx.field_kinds[fld] = "window"
        elif declared == "counter":
            ctx.field_kinds[fld] = "counter"
        else:
            ctx.warnings.append(f"{SCALAR_METRICS[fld]} is declared {declared!r}; ignored")
            ignored.add(fld)
    leader = next((f for f in REQUEST_FIELDS if f in ctx.field_kinds), None)
    if leader is not None and ctx.field_kinds[leader] == "counter":
        ctx.kind = "counter"
    for fld in REQUEST_FIELDS:
        if fld in ctx.field_kinds and fld not in ignored and ctx.field_kinds[fld] != ctx.kind:
            ctx.warnings.append(
                f"{SCALAR_METRICS[fld]} is a {ctx.field_kinds[fld]} while the scrape's request"
                f" counts are {ctx.kind} values; ignored"
            )
            ignored.add(fld)
    return ignored, family_types


def _conflict(sample: _RawSample, first: _First) -> MetricsParseError:
    return MetricsParseError(
        sample.line_number,
        sample.line,
        f"same series and timestamp as line {first[0]} with a different value ({first[1]!r})",
    )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _where(entity: str | None, timestamp_ms: int | None) -> str:
    who = "endpoint totals" if entity is None else f"entity {entity!r}"
    return f"{who}, window {timestamp_ms}"


def _accumulate(
    samples: list[_RawSample], ignored: set[str], ctx: _Context
) -> dict[tuple[str | None, int | None], _WindowAcc]:
    windows: dict[tuple[str | None, int | None], _WindowAcc] = {}
    for sample in samples:
        target = _DISPATCH.get(sample.name)
        if target is None:
            continue
        fld, role = target
        if fld in ignored:
            continue
        entity, series = sample.entity, sample.series
        if role == "created":
            if math.isfinite(sample.value):
                ctx.created[(entity, fld, series)] = sample.value
            continue
        key = (entity, sample.timestamp_ms)
        acc = windows.get(key)
        if acc is None:
            acc = windows[key] = _WindowAcc()
        if role == "value":
            per_series = acc.scalars.setdefault(fld, {})
            if not _is_duplicate(per_series.get(series), sample, ctx):
                per_series[series] = (sample.line_number, sample.value)
            continue
        hist = acc.hists.setdefault(fld, {}).get(series)
        if hist is None:
            hist = acc.hists[fld][series] = _HistAcc()
        _add_histogram_sample(hist, role, sample, ctx)
    return windows


def _add_histogram_sample(hist: _HistAcc, role: str, sample: _RawSample, ctx: _Context) -> None:
    if role == "bucket":
        le = None if sample.le is None else _parse_number(sample.le)
        if le is None or math.isnan(le):
            raise MetricsParseError(
                sample.line_number, sample.line, "a _bucket sample needs a numeric 'le'"
            )
        if not _is_duplicate(hist.firsts.get(le), sample, ctx):
            hist.firsts[le] = (sample.line_number, sample.value)
            hist.buckets[le] = sample.value
        return
    if _is_duplicate(hist.firsts.get(role), sample, ctx):
        return
    hist.firsts[role] = (sample.line_number, sample.value)
    if role == "sum":
        hist.sum = sample.value
    else:
        hist.count = sample.value


def _is_duplicate(first: _First | None, sample: _RawSample, ctx: _Context) -> bool:
    """True for an exact repeat (warned, skipped); raises for a repeat with another value."""
    if first is None:
        return False
    if not _same(first[1], sample.value):
        raise _conflict(sample, first)
    ctx.warnings.append(f"line {sample.line_number}: duplicate of line {first[0]}; counted once")
    return True


def _build_histogram(hist: _HistAcc, name: str, where: str, ctx: _Context) -> Histogram | None:
    if not hist.buckets:
        ctx.warnings.append(f"{name} ({where}) has no buckets; dropped")
        return None
    if math.inf not in hist.buckets:
        ctx.warnings.append(f"{name} ({where}) has no +Inf bucket; dropped")
        return None
    previous = 0.0
    for bound in sorted(hist.buckets):
        value = hist.buckets[bound]
        if not math.isfinite(value) or value < 0:
            ctx.warnings.append(f"{name} ({where}) bucket le={bound} is {value}; dropped")
            return None
        if value < previous - _ROUNDING * max(1.0, previous):
            ctx.warnings.append(
                f"{name} ({where}) buckets are not cumulative at le={bound}"
                f" ({value} after {previous}); dropped"
            )
            return None
        previous = max(previous, value)
    total_sum = hist.sum
    if total_sum is not None and not math.isfinite(total_sum):
        ctx.warnings.append(f"{name}_sum ({where}) is {total_sum}; the sum is left unknown")
        total_sum = None
    infinite = hist.buckets[math.inf]
    if hist.count is not None and abs(hist.count - infinite) > _ROUNDING * max(1.0, infinite):
        ctx.warnings.append(
            f"{name}_count ({where}) is {hist.count} but the +Inf bucket is {infinite};"
            " the buckets are used"
        )
    return Histogram.from_cumulative(hist.buckets, total_sum)


def _finish(
    windows: dict[tuple[str | None, int | None], _WindowAcc], ctx: _Context
) -> tuple[list[EntityWindow], list[CumulativeSample]]:
    result: list[EntityWindow] = []
    cumulative: list[CumulativeSample] = []
    for key, acc in windows.items():
        values: dict[str, float | Histogram] = {}
        for fld, per_series in acc.scalars.items():
            _finish_scalar(key, fld, per_series, values=values, cumulative=cumulative, ctx=ctx)
        for fld, per_hist in acc.hists.items():
            _finish_histogram(key, fld, per_hist, values=values, cumulative=cumulative, ctx=ctx)
        entity, timestamp_ms = key
        # A window whose every sample was unusable still existed: it is kept with all fields
        # missing, so that nothing downstream mistakes it for a window nobody reported.
        result.append(_window(entity, timestamp_ms, values))
    result.sort(key=lambda w: (w.start_ms if w.start_ms is not None else -1, w.entity or ""))
    return result, cumulative


def _finish_scalar(
    key: tuple[str | None, int | None],
    fld: str,
    per_series: dict[_Series, _First],
    *,
    values: dict[str, float | Histogram],
    cumulative: list[CumulativeSample],
    ctx: _Context,
) -> None:
    entity, timestamp_ms = key
    numbers = [v for _, v in per_series.values()]
    # Every field read here is a count or a level that cannot be negative.
    bad = [v for v in numbers if not math.isfinite(v) or v < 0]
    if bad:
        ctx.warnings.append(
            f"{SCALAR_METRICS[fld]} ({_where(entity, timestamp_ms)}) is {bad[0]};"
            " treated as missing"
        )
        return
    total = math.fsum(numbers)
    values[fld] = total / len(numbers) if fld in _AVERAGED_FIELDS else total
    if ctx.kind == "counter" and fld in REQUEST_FIELDS:
        cumulative.extend(
            CumulativeSample(
                entity,
                fld,
                "value",
                series,
                v,
                timestamp_ms,
                ctx.created.get((entity, fld, series)),
            )
            for series, (_, v) in per_series.items()
        )


def _finish_histogram(
    key: tuple[str | None, int | None],
    fld: str,
    per_series: dict[_Series, _HistAcc],
    *,
    values: dict[str, float | Histogram],
    cumulative: list[CumulativeSample],
    ctx: _Context,
) -> None:
    entity, timestamp_ms = key
    merged: Histogram | None = None
    where = _where(entity, timestamp_ms)
    for hist in per_series.values():
        built = _build_histogram(hist, HISTOGRAM_METRICS[fld], where, ctx)
        if built is None:
            return
        merged = built if merged is None else merged.merge(built)
    if merged is None:
        return
    values[fld] = merged
    if ctx.kind != "counter":
        return
    for series, hist in per_series.items():
        created = ctx.created.get((entity, fld, series))
        cumulative.extend(
            CumulativeSample(entity, fld, f"le:{b!r}", series, v, timestamp_ms, created)
            for b, v in hist.buckets.items()
        )
        if hist.sum is not None and math.isfinite(hist.sum):
            cumulative.append(
                CumulativeSample(entity, fld, "sum", series, hist.sum, timestamp_ms, created)
            )


def _window(
    entity: str | None, timestamp_ms: int | None, values: dict[str, float | Histogram]
) -> EntityWindow:
    def number(name: str) -> float | None:
        value = values.get(name)
        return value if isinstance(value, float) else None

    def histogram(name: str) -> Histogram | None:
        value = values.get(name)
        return value if isinstance(value, Histogram) else None

    return EntityWindow(
        entity=entity,
        start_ms=timestamp_ms,
        requests=number("requests") or 0.0,
        errors_4xx=number("errors_4xx") or 0.0,
        errors_5xx=number("errors_5xx") or 0.0,
        latency=histogram("latency"),
        queue_time=histogram("queue_time"),
        cpu_percent=number("cpu_percent"),
        mem_percent=number("mem_percent"),
        provisioned_concurrency=number("provisioned_concurrency"),
        gpu_percent=number("gpu_percent"),
        gpu_mem_percent=number("gpu_mem_percent"),
        inference_latency=histogram("inference_latency"),
        missing=frozenset(f for f in WINDOW_FIELDS if values.get(f) is None),
    )


def parse_export_metrics(text: str, *, content_type: str | None = None) -> Scrape:
    """Read one export-metrics body (Prometheus 0.0.4 or OpenMetrics 1.0) into a ``Scrape``.

    ``content_type`` is the response's ``Content-Type``, if known. Empty text gives a scrape
    without windows. Raises ``MetricsParseError`` for malformed text (see the module docstring
    for what is fatal and what is only a warning).
    """
    ctx = _Context(warnings=[])
    samples, types, fmt = _read_lines(text, content_type, ctx.warnings)
    present = {_DISPATCH[s.name][0] for s in samples}
    ignored, family_types = _resolve_kinds(types, present, ctx)
    accumulated = _accumulate(samples, ignored, ctx)
    windows, cumulative = _finish(accumulated, ctx)
    label_names = {k for series in {s.series for s in samples} for k, _ in series}
    return Scrape(
        windows=windows,
        kind=ctx.kind,
        # One cause (say, a NaN on every replica) must not bury the others.
        warnings=list(dict.fromkeys(ctx.warnings)),
        has_entity_labels=any(w.entity is not None for w in windows),
        format=fmt,
        family_types=family_types,
        cumulative=cumulative,
        label_names=tuple(sorted(label_names)),
    )
