"""Draw ``docs/grafana-dashboard.png``: the panels of ``examples/grafana/tasker.json``, from the
dashboard's own PromQL queries over what a real taskerd's ``/metrics`` said under load.

Grafana cannot be installed where this project is built, so the picture is made this way, and
says so in a footnote: it is not a Grafana screenshot. The steps:

1. Start ``python -m taskerd`` in a temporary directory (2 workers, ``max_queue`` 60,
   ``metrics_address`` on a free loopback port) and add a group ``batch`` (1 slot, bursting to 4).
2. Drive a varying load through ``taskerctl.Client`` for ``--seconds`` (75): a trickle of short
   commands at mixed priorities, failing ``false`` tasks, bursts, waves into ``batch`` (so it
   bursts), timeouts, cancels, a paused task, stashed tasks enqueued later, and floods that fill
   the queue until submissions are refused. Meanwhile ``/metrics`` is scraped every second into
   in-memory series, with the ``instance`` and ``job`` labels Prometheus would attach.
3. Evaluate every panel target over the capture as Grafana asks Prometheus: range queries at a
   ``$__interval`` step for time series, one query at the last scrape for ``instant`` targets.
4. Draw the panels with matplotlib where their ``gridPos`` puts them, titles, units, stacking,
   legends (``legendFormat``, last and max) and overrides from the JSON.

Dashboard variables: ``$instance`` and ``$group`` are their "All" value (``allValue`` ``.*``).
``$__interval`` is the scrape interval (Grafana's minimum step for a Prometheus data source; the
range over a panel's pixel width is smaller here), and ``$__rate_interval`` is Grafana's
``max($__interval + scrape interval, 4 * scrape interval)``: 4 s for a 1 s scrape.

The PromQL subset (all the dashboard uses; anything else raises :class:`PromQLError` naming it):
instant selectors with ``=``, ``!=``, ``=~``, ``!~`` matchers (5 min lookback); ``rate(sel[d])``
(Prometheus's extrapolated rate, counter resets); ``sum`` with an optional ``by (...)``;
``histogram_quantile(q, v)``; ``+ - * /`` between vectors (one-to-one on all labels but the name)
or with a number; parentheses; number literals.

Run: ``.venv/bin/python examples/grafana/render.py [--seconds 75] [--out FILE]``.
``--save-capture FILE`` keeps the scraped samples as JSON; ``--from-capture FILE`` redraws from
such a file without a daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from taskerctl import Client

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "tasker.json"
OUT = ROOT / "docs" / "grafana-dashboard.png"
CAPTION = (
    "Rendered by examples/grafana/render.py from examples/grafana/tasker.json's queries over a "
    "real taskerd's /metrics; not a Grafana screenshot."
)
LOOKBACK = 300.0  # Prometheus's default lookback delta (s)

# ---- PromQL subset: parsing ---------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]


class PromQLError(ValueError):
    """An expression outside the subset this script evaluates, or a malformed one."""


@dataclass(frozen=True)
class Selector:
    """``name{label op "value", ...}``."""

    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Rate:
    """``rate(selector[range])``."""

    selector: Selector
    range: float


@dataclass(frozen=True)
class Sum:
    """``sum [by (labels)] (expr)``; ``by`` None: sum everything into one series."""

    expr: Node
    by: tuple[str, ...] | None


@dataclass(frozen=True)
class Quantile:
    """``histogram_quantile(q, expr)``."""

    q: float
    expr: Node


@dataclass(frozen=True)
class Binary:
    """``left op right``, op one of ``+ - * /``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Number:
    """A number literal."""

    value: float


Node = Selector | Rate | Sum | Quantile | Binary | Number

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<range>\[[^\]]*\])
    | (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>@])
    )""",
    re.X,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``4s``, ``1m30s``, ``250ms`` in seconds."""
    if not text or _DURATION.sub("", text):
        raise PromQLError(f"bad duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise PromQLError(f"cannot read {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        k, t = self.peek()
        if k != kind or (text is not None and t != text):
            want = text or kind
            raise PromQLError(f"expected {want!r}, got {t or 'the end'!r} in {self.expr!r}")
        self.i += 1
        return t

    def parse(self) -> Node:
        node = self.additive()
        if self.peek()[0] != "end":
            raise PromQLError(f"unsupported {self.peek()[1]!r} in {self.expr!r}")
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take("op")
            node = Binary(op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.primary()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take("op")
            node = Binary(op, node, self.primary())
        return node

    def labels(self) -> tuple[str, ...]:
        self.take("op", "(")
        names: list[str] = []
        while self.peek() != ("op", ")"):
            names.append(self.take("ident"))
            if self.peek() == ("op", ","):
                self.take("op")
        self.take("op", ")")
        return tuple(names)

    def primary(self) -> Node:
        kind, text = self.peek()
        if (kind, text) == ("op", "("):
            self.take("op")
            node = self.additive()
            self.take("op", ")")
            return node
        if kind == "num":
            self.take("num")
            return Number(float(text))
        if kind != "ident":
            raise PromQLError(f"unsupported {text!r} in {self.expr!r}")
        self.take("ident")
        nxt = self.peek()
        if text == "sum":
            by: tuple[str, ...] | None = None
            if nxt == ("ident", "by"):
                self.take("ident")
                by = self.labels()
            if self.peek()[0] == "ident":
                raise PromQLError(f"unsupported sum modifier {self.peek()[1]!r} in {self.expr!r}")
            self.take("op", "(")
            inner = self.additive()
            self.take("op", ")")
            if self.peek() == ("ident", "by"):
                if by is not None:
                    raise PromQLError(f"two 'by' clauses in {self.expr!r}")
                self.take("ident")
                by = self.labels()
            return Sum(inner, by)
        if text == "rate":
            self.take("op", "(")
            sel = self.selector(self.take("ident"))
            window = parse_duration(self.take("range")[1:-1].strip())
            self.take("op", ")")
            return Rate(sel, window)
        if text == "histogram_quantile":
            self.take("op", "(")
            q = float(self.take("num"))
            self.take("op", ",")
            inner = self.additive()
            self.take("op", ")")
            return Quantile(q, inner)
        if nxt == ("op", "(") or text in ("by", "without", "on", "ignoring", "offset", "bool"):
            raise PromQLError(f"unsupported function or keyword {text!r} in {self.expr!r}")
        sel = self.selector(text)
        if self.peek()[0] == "range":
            raise PromQLError(f"a range vector outside rate() in {self.expr!r}")
        return sel

    def selector(self, name: str) -> Selector:
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == ("op", "{"):
            self.take("op")
            while self.peek() != ("op", "}"):
                label = self.take("ident")
                op = self.take("op")
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"unsupported matcher {op!r} in {self.expr!r}")
                value = json.loads(self.take("str"))
                matchers.append((label, op, value))
                if self.peek() == ("op", ","):
                    self.take("op")
            self.take("op", "}")
        return Selector(name, tuple(matchers))


def parse(expr: str) -> Node:
    """Parse a PromQL expression of the supported subset; :class:`PromQLError` otherwise."""
    return _Parser(expr).parse()


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` by ``variables[name]``; PromQLError for any other."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise PromQLError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# ---- PromQL subset: evaluation ------------------------------------------------------------


@dataclass
class Series:
    """One time series: sample times (ascending) and values."""

    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class Store:
    """Scraped samples by metric name, then by labels (without ``__name__``)."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[Labels, Series]] = {}
        self.scrapes: list[float] = []

    def add(self, t: float, name: str, labels: dict[str, str], value: float) -> None:
        """One sample of ``name{labels}`` at time ``t`` (samples arrive in time order)."""
        key = tuple(sorted(labels.items()))
        s = self.metrics.setdefault(name, {}).setdefault(key, Series())
        s.times.append(t)
        s.values.append(value)

    def dump(self) -> dict[str, Any]:
        """As JSON-able data (``--save-capture``)."""
        return {
            "scrapes": self.scrapes,
            "series": [
                {"name": n, "labels": dict(k), "times": s.times, "values": s.values}
                for n, by in self.metrics.items()
                for k, s in by.items()
            ],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Store:
        """From :meth:`dump`'s data."""
        store = cls()
        store.scrapes = list(data["scrapes"])
        for s in data["series"]:
            key = tuple(sorted(s["labels"].items()))
            store.metrics.setdefault(s["name"], {})[key] = Series(s["times"], s["values"])
        return store


def _matches(labels: Labels, matchers: tuple[tuple[str, str, str], ...]) -> bool:
    have = dict(labels)
    for label, op, want in matchers:
        value = have.get(label, "")
        if op == "=":
            ok = value == want
        elif op == "!=":
            ok = value != want
        else:
            ok = re.fullmatch(want, value) is not None
            ok = ok if op == "=~" else not ok
        if not ok:
            return False
    return True


def _select(store: Store, sel: Selector) -> Iterator[tuple[Labels, Series]]:
    for labels, series in store.metrics.get(sel.name, {}).items():
        if _matches((("__name__", sel.name), *labels), sel.matchers):
            yield labels, series


def extrapolated_rate(times: list[float], values: list[float], start: float, end: float) -> float:
    """Prometheus's ``rate`` of a counter's samples in ``(start, end]``: the increase (resets
    counted) extrapolated to the window's edges, per second. NaN with fewer than 2 samples."""
    if len(times) < 2:
        return math.nan
    increase = values[-1] - values[0]
    for a, b in itertools.pairwise(values):
        if b < a:  # a counter reset: it started again from 0
            increase += a
    sampled = times[-1] - times[0]
    average = sampled / (len(times) - 1)
    to_start = times[0] - start
    to_end = end - times[-1]
    if increase > 0 and values[0] >= 0:
        to_start = min(to_start, sampled * (values[0] / increase))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return increase * (interval / sampled) / (end - start)


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over (upper bound, cumulative count) pairs."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        return math.nan
    counts: list[float] = []
    for _, c in buckets:  # keep them monotonic, as Prometheus does
        counts.append(max(c, counts[-1]) if counts else c)
    total = counts[-1]
    if not total > 0:
        return math.nan
    rank = q * total
    b = bisect_left(counts, rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    lower, upper, count = 0.0, buckets[b][0], counts[b]
    if b > 0:
        lower = buckets[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return lower + (upper - lower) * (rank / count)


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def evaluate(node: Node, store: Store, t: float) -> Vector | float:
    """The value of ``node`` at time ``t``: an instant vector, or a number."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Selector):
        out: Vector = {}
        for labels, s in _select(store, node):
            i = bisect_right(s.times, t) - 1
            if i >= 0 and t - s.times[i] <= LOOKBACK:
                out[(("__name__", node.name), *labels)] = s.values[i]
        return out
    if isinstance(node, Rate):
        out = {}
        start = t - node.range
        for labels, s in _select(store, node.selector):
            lo, hi = bisect_right(s.times, start), bisect_right(s.times, t)
            r = extrapolated_rate(s.times[lo:hi], s.values[lo:hi], start, t)
            if not math.isnan(r):
                out[labels] = r
        return out
    if isinstance(node, Sum):
        inner = _vector(evaluate(node.expr, store, t), node)
        out = {}
        for labels, v in inner.items():
            have = dict(labels)
            key: Labels = ()
            if node.by is not None:
                key = tuple(sorted((n, have[n]) for n in node.by if have.get(n, "")))
            out[key] = out.get(key, 0.0) + v
        return out
    if isinstance(node, Quantile):
        inner = _vector(evaluate(node.expr, store, t), node)
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for labels, v in inner.items():
            have = dict(labels)
            if "le" not in have:
                continue
            key = _drop_name(tuple(kv for kv in labels if kv[0] != "le"))
            groups.setdefault(key, []).append((float(have["le"]), v))
        return {k: bucket_quantile(node.q, b) for k, b in groups.items()}
    left, right = evaluate(node.left, store, t), evaluate(node.right, store, t)
    op = _OPS[node.op]
    if isinstance(left, float) and isinstance(right, float):
        return op(left, right)
    if isinstance(left, float):
        assert isinstance(right, dict)
        return {_drop_name(k): op(left, v) for k, v in right.items()}
    if isinstance(right, float):
        return {_drop_name(k): op(v, right) for k, v in left.items()}
    rhs: Vector = {}
    for k, v in right.items():
        if _drop_name(k) in rhs:
            raise PromQLError(f"many-to-many matching on the right of {node.op!r}")
        rhs[_drop_name(k)] = v
    result: Vector = {}
    for k, v in left.items():
        key = _drop_name(k)
        if key in result:
            raise PromQLError(f"many-to-many matching on the left of {node.op!r}")
        if key in rhs:
            result[key] = op(v, rhs[key])
    return result


def _vector(value: Vector | float, node: Node) -> Vector:
    if isinstance(value, float):
        raise PromQLError(f"{type(node).__name__.lower()} of a number")
    return value


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


_OPS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
}


def query_range(
    node: Node, store: Store, start: float, end: float, step: float
) -> tuple[list[float], dict[Labels, list[float]]]:
    """``node`` at ``start, start + step, ... <= end``: the times, and each series' values
    (NaN where it has none), as a range query answers."""
    times: list[float] = []
    t = start
    while t <= end + 1e-9:
        times.append(t)
        t += step
    series: dict[Labels, list[float]] = {}
    for i, t in enumerate(times):
        value = evaluate(node, store, t)
        vec = {(): value} if isinstance(value, float) else value
        for labels, v in vec.items():
            series.setdefault(labels, [math.nan] * len(times))[i] = v
    return times, dict(sorted(series.items()))


def legend(fmt: str, labels: Labels, expr: str) -> str:
    """A series' name: ``legendFormat`` with ``{{label}}`` filled in, or as Grafana names it
    without one (its labels, or the expression when it has none)."""
    have = dict(labels)
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: have.get(m.group(1), ""), fmt).strip()
    shown = [kv for kv in labels if kv[0] != "__name__"]
    if not shown:
        return have.get("__name__", expr)
    inner = ", ".join(f'{k}="{v}"' for k, v in shown)
    return have.get("__name__", "") + "{" + inner + "}"


# ---- the daemon, its load and the scraper -------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """A real ``python -m taskerd`` under ``tmp`` (as ``bench/common.py``'s ``BenchDaemon``)."""

    def __init__(self, tmp: Path, *, workers: int, max_queue: int, metrics_port: int) -> None:
        self.dir = tmp
        self.socket = tmp / "run" / "taskerd.sock"
        config = tmp / "taskerd.toml"
        config.write_text(
            'stop_timeout = "1s"\nkill_grace = "0.5s"\n'
            f'metrics_address = "127.0.0.1:{metrics_port}"\n'
        )
        self.args = [
            "--socket", str(self.socket), "--state-dir", str(tmp / "state"),
            "--workers", str(workers), "--max-workers", str(workers),
            "--max-queue", str(max_queue), "--config", str(config), "--log-level", "warning",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Client:
        """Start it; a client once it answers."""
        from taskerctl import Client, TaskerError

        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with open(self.dir / "taskerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskerd", *self.args], stdout=log,
                stderr=subprocess.STDOUT, cwd=self.dir, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskerd exited {self.proc.returncode}: {self.log()}")
            if self.socket.exists():
                client = Client(self.socket, rpc_timeout=10)
                try:
                    client.stats()
                    return client
                except TaskerError:
                    client.close()
            time.sleep(0.05)
        raise RuntimeError(f"taskerd not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        """The tail of its log."""
        return (self.dir / "taskerd.log").read_text(errors="replace")[-4000:]

    def stop(self, client: Client | None) -> None:
        """Stop it (a STOP shutdown; SIGKILL if it lingers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            assert client is not None
            client.shutdown("stop")
        except Exception:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Scraper(threading.Thread):
    """GET ``/metrics`` every ``interval`` into ``store`` (labels ``instance`` and ``job``
    added, as Prometheus does), stamped with the scrape's start."""

    def __init__(self, port: int, store: Store, interval: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.instance = f"127.0.0.1:{port}"
        self.store = store
        self.interval = interval
        self.halt = threading.Event()
        self.failures = 0

    def run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        next_at = time.monotonic()
        while not self.halt.is_set():
            t = time.time()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                self.failures += 1
            else:
                self.store.scrapes.append(t)
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        labels = {**s.labels, "instance": self.instance, "job": "tasker"}
                        self.store.add(t, s.name, labels, float(s.value))
            next_at += self.interval
            self.halt.wait(max(0.0, next_at - time.monotonic()))


def drive(c: Client, seconds: float, rng: random.Random) -> None:
    """``seconds`` of varying load on groups ``default`` (2 slots) and ``batch`` (1, bursting
    to 4): see the module's docstring."""
    from taskerctl import QueueFull, TaskerError

    t0 = time.monotonic()
    fired: set[str] = set()
    paused_id = 0
    stashed: list[int] = []
    cancel: list[int] = []

    def due(name: str, at: float) -> bool:
        if time.monotonic() - t0 >= at and name not in fired:
            fired.add(name)
            return True
        return False

    def flood(cmd: str, batches: int) -> None:
        for _ in range(batches):  # all or nothing per batch: some fit, the rest are refused
            with contextlib.suppress(QueueFull):
                c.submit_many([cmd] * 40, priority=rng.choice(["low", "normal", "high"]))

    priorities = ["low", "normal", "normal", "high", "critical"]
    trickle = ["true", "sleep 0.1", "sleep 0.2", "sleep 0.3", "sleep 0.5", "false"]
    tick = 0
    while (t := time.monotonic() - t0) < seconds:
        tick += 1
        with contextlib.suppress(QueueFull):
            c.submit(rng.choice(trickle), priority=rng.choice(priorities))
            if tick % 4 == 0:
                c.submit("false", priority="low")
            if 12 <= t % 40 < 30:  # waves into batch: arrivals outrun its slot, so it bursts
                c.submit(f"sleep {rng.uniform(0.3, 0.8):.2f}", group="batch")
        if any(due(f"burst{i}", at) for i, at in enumerate((8, 30, 52))):
            items = [rng.choice(["true", "sleep 0.05", "sleep 0.1"]) for _ in range(70)]
            with contextlib.suppress(QueueFull):
                for p in ("low", "normal", "high"):
                    c.submit_many(items[: rng.randint(10, 30)], priority=p)
        if any(due(f"timeouts{i}", at) for i, at in enumerate((10, 40, 63))):
            c.submit_many(["sleep 5"] * 3, group="batch", timeout=1.5)
        if due("long", 18):
            cancel = [h.id for h in c.submit_many(["sleep 30"] * 3, group="batch")]
            paused_id = c.submit("sleep 30", priority="critical").id
        if paused_id and "paused" not in fired:
            with contextlib.suppress(TaskerError):
                if c.pause([paused_id]):
                    fired.add("paused")
        if due("stash", 22):
            stashed = [h.id for h in c.submit_many(["sleep 0.05"] * 25, stashed=True)]
        if due("cancel", 27):
            c.cancel_many(cancel)
        if due("resume", 34) and "paused" in fired:
            c.resume([paused_id])
        if due("kill", 37):
            c.cancel(paused_id)
        if due("enqueue", 45):
            c.enqueue(stashed)
        if due("full1", 47):
            flood("sleep 0.1", 5)
        if due("full2", seconds - 3):  # the last scrape sees a queue, runs and refusals
            flood("sleep 0.3", 3)
        time.sleep(0.25)


def capture(seconds: float, scrape: float) -> Store:
    """Run a daemon under load for ``seconds``, scraped every ``scrape`` seconds."""
    store = Store()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tasker-grafana-") as tmp:
        daemon = Daemon(Path(tmp), workers=2, max_queue=60, metrics_port=port)
        client: Client | None = None
        scraper = Scraper(port, store, scrape)
        try:
            client = daemon.start()
            client.add_group("batch", parallel=1, max_parallel=4)
            scraper.start()
            time.sleep(2 * scrape)
            drive(client, seconds, random.Random(7))
        finally:
            scraper.halt.set()
            if scraper.is_alive():
                scraper.join()
            daemon.stop(client)
            if client is not None:
                client.close()
    if len(store.scrapes) < 10:
        raise RuntimeError(f"only {len(store.scrapes)} scrapes ({scraper.failures} failed)")
    print(f"{len(store.scrapes)} scrapes, {scraper.failures} failed", file=sys.stderr)
    return store


# ---- drawing ------------------------------------------------------------------------------

BG, PANEL, BORDER, TEXT, DIM, GRID = (
    "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e99", "#2a2d33",
)  # fmt: skip
GREEN, RED = "#73bf69", "#f2495c"  # Grafana's default thresholds: green, red from 80
PALETTE = (  # Grafana's classic palette
    "#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a6", "#705da0",
    "#508642", "#cca300", "#447ebc", "#c15c17",
)  # fmt: skip
DPI = 100


def _num(v: float) -> str:
    if abs(v - round(v)) < 1e-9 * max(1.0, abs(v)):
        return str(round(v))
    a = abs(v)
    decimals = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 0.1 else 3
    return f"{v:.{decimals}f}"


def fmt_unit(unit: str, v: float) -> str:
    """``v`` as Grafana shows that unit (ops, short, s, percentunit, bytes)."""
    if math.isnan(v):
        return "-"
    if unit == "ops":
        return f"{_num(v)} ops/s"
    if unit == "percentunit":
        return f"{_num(v * 100)}%"
    if unit == "s":
        for scale, suffix in ((3600, " hour"), (60, " min"), (1, " s"), (1e-3, " ms")):
            if abs(v) >= scale:
                return _num(v / scale) + suffix
        return "0 s" if v == 0 else _num(v * 1e6) + " µs"
    if unit == "bytes":
        for scale, suffix in ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
            if abs(v) >= scale:
                return _num(v / scale) + suffix
        return f"{v:.0f} B"
    if unit == "short":
        for scale, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
            if abs(v) >= scale:
                return _num(v / scale) + suffix
        return _num(v)
    raise ValueError(f"unit {unit!r} is not drawn by this script")


@dataclass
class Drawn:
    """A panel's evaluated series: name, values, unit, axis side."""

    name: str
    values: list[float]
    unit: str
    right: bool = False


def _overrides(panel: dict[str, Any], name: str, unit: str) -> tuple[str, bool]:
    right = False
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = o["matcher"]
        if matcher["id"] != "byName":
            raise ValueError(f"panel {panel['title']!r}: override matcher {matcher['id']!r}")
        if matcher["options"] != name:
            continue
        for prop in o["properties"]:
            if prop["id"] == "unit":
                unit = prop["value"]
            elif prop["id"] == "custom.axisPlacement":
                right = prop["value"] == "right"
            else:
                raise ValueError(f"panel {panel['title']!r}: override {prop['id']!r}")
    return unit, right


def panel_series(
    panel: dict[str, Any], store: Store, variables: dict[str, str], times: list[float]
) -> list[Drawn]:
    """Each target of ``panel`` evaluated at ``times`` (instant targets: at the last one)."""
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    out: list[Drawn] = []
    for target in panel["targets"]:
        expr = substitute(target["expr"], variables)
        node = parse(expr)
        if target.get("instant"):
            value = evaluate(node, store, times[-1])
            vec = {(): value} if isinstance(value, float) else value
            series = {k: [v] for k, v in sorted(vec.items())}
        else:
            step = times[1] - times[0]
            _, series = query_range(node, store, times[0], times[-1], step)
        for labels, values in series.items():
            name = legend(target.get("legendFormat", ""), labels, target["expr"])
            u, right = _overrides(panel, name, unit)
            out.append(Drawn(name, values, u, right))
    return out


def _last(values: list[float]) -> float:
    return next((v for v in reversed(values) if not math.isnan(v)), math.nan)


def _max(values: list[float]) -> float:
    return max((v for v in values if not math.isnan(v)), default=math.nan)


class Canvas:
    """The figure, in pixels from the top left."""

    def __init__(self, width: int, height: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.w, self.h = width, height
        self.fig: Figure = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
        self.fig.patch.set_facecolor(BG)

    def rect(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Figure fractions of a pixel box."""
        return (x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h)

    def text(self, x: float, y: float, s: str, **kw: Any) -> None:
        """Text at a pixel point (top left by default)."""
        kw.setdefault("va", "top")
        kw.setdefault("color", TEXT)
        self.fig.text(x / self.w, 1 - y / self.h, s, **kw)

    def box(self, x: float, y: float, w: float, h: float) -> Axes:
        """A panel's background."""
        ax = self.fig.add_axes(self.rect(x, y, w, h))
        ax.set_facecolor(PANEL)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(BORDER)
        return ax


def _time_axis(ax: Axes, times: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    ax.set_xlim(times[0], times[-1])
    ax.xaxis.set_major_locator(MultipleLocator(15))
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: time.strftime("%H:%M:%S", time.localtime(x)))
    )


def _value_axis(ax: Axes, unit: str, series: list[list[float]]) -> None:
    """Limits from 0 (or below), ticks at round numbers of the unit, labels in it."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    seen = [v for s in series for v in s if not math.isnan(v)]
    low, top = min([0.0, *seen]), max([0.0, *seen])
    top = top * 1.15 if top > 0 else 1.0
    ax.set_ylim(low, top)
    scale = 1.0  # ticks at round KiB/MiB/GiB, whole tasks and workers
    if unit == "bytes":
        scale = next((2.0**p for p in (30, 20, 10) if top >= 2.0**p), 1.0)
    integer = unit == "short" and all(v == round(v) for v in seen)
    ticks = MaxNLocator(4, integer=integer).tick_values(low / scale, top / scale)
    ax.yaxis.set_major_locator(FixedLocator([t * scale for t in ticks if low <= t * scale <= top]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_unit(unit, v)))
    ax.tick_params(colors=DIM, labelsize=6.5, length=0, pad=2)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_facecolor("none")
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_timeseries(
    cv: Canvas, panel: dict[str, Any], drawn: list[Drawn], times: list[float], box: list[float]
) -> None:
    """A time series panel: lines (stacked if the panel says so), 10% fill, table legend."""
    x, y, w, h = box
    custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
    stacked = custom.get("stacking", {}).get("mode", "none") == "normal"
    alpha = custom.get("fillOpacity", 0) / 100
    width = custom.get("lineWidth", 1)
    if not drawn or all(math.isnan(_max(d.values)) for d in drawn):
        raise RuntimeError(f"panel {panel['title']!r} has no data: change the load")
    has_right = any(d.right for d in drawn)
    legend_w = 250
    plot = (x + 58, y + 24, w - legend_w - 58 - (52 if has_right else 8), h - 24 - 18)
    left_ax = cv.fig.add_axes(cv.rect(*plot))
    axes: dict[bool, Axes] = {False: left_ax}
    if has_right:
        axes[True] = left_ax.twinx()
    base = [0.0] * len(times)
    for i, d in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        ax = axes[d.right]
        if stacked:
            top = [
                b + v if not math.isnan(v) else math.nan
                for b, v in zip(base, d.values, strict=True)
            ]
            ax.plot(times, top, color=color, linewidth=width)
            ax.fill_between(times, base, top, color=color, alpha=alpha, linewidth=0)
            base = [b + (0.0 if math.isnan(v) else v) for b, v in zip(base, d.values, strict=True)]
        else:
            ax.plot(times, d.values, color=color, linewidth=width)
            ax.fill_between(times, 0, d.values, color=color, alpha=alpha, linewidth=0)
    for right, ax in axes.items():
        mine = [d for d in drawn if d.right == right]
        unit = mine[0].unit if mine else drawn[0].unit
        values = [base] if stacked and not right else [d.values for d in mine]
        _value_axis(ax, unit, values)
        _time_axis(ax, times)
        ax.tick_params(axis="x", labelsize=6.5, colors=DIM)
    # the table legend, right of the plot: name, last (not null), max
    lx, ly, row = x + w - legend_w + 4, y + 24, 11
    cols = (lx + 176, lx + 242)
    cv.text(cols[0], ly, "Last *", ha="right", fontsize=6.5, color=DIM, weight="bold")
    cv.text(cols[1], ly, "Max", ha="right", fontsize=6.5, color=DIM, weight="bold")
    for i, d in enumerate(drawn):
        yy = ly + row * (i + 1) + 2
        color = PALETTE[i % len(PALETTE)]
        cv.fig.add_artist(_dash(cv, lx, yy + 4.5, color))
        cv.text(lx + 12, yy, d.name if len(d.name) <= 22 else d.name[:21] + "\u2026", fontsize=6.5)
        cv.text(cols[0], yy, fmt_unit(d.unit, _last(d.values)), ha="right", fontsize=6.5)
        cv.text(cols[1], yy, fmt_unit(d.unit, _max(d.values)), ha="right", fontsize=6.5)


def _dash(cv: Canvas, x: float, y: float, color: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D(
        [x / cv.w, (x + 9) / cv.w], [1 - y / cv.h] * 2, color=color, linewidth=2.5,
        transform=cv.fig.transFigure,
    )  # fmt: skip


def draw_stat(cv: Canvas, panel: dict[str, Any], drawn: list[Drawn], box: list[float]) -> None:
    """A stat panel: each series' last value (or its name, ``textMode: name``), colored by
    Grafana's default thresholds."""
    x, y, w, h = box
    if not drawn:
        raise RuntimeError(f"panel {panel['title']!r} has no data: change the load")
    mode = panel.get("options", {}).get("textMode", "auto")
    part = w / len(drawn)
    for i, d in enumerate(drawn):
        v = _last(d.values)
        if math.isnan(v):
            raise RuntimeError(f"panel {panel['title']!r} has no data: change the load")
        text = d.name if mode == "name" else fmt_unit(d.unit, v)
        color = RED if v >= 80 else GREEN
        cv.text(x + part * (i + 0.5), y + 22 + (h - 22) / 2, text, ha="center", va="center",
                fontsize=20, color=color, weight="bold")  # fmt: skip


def dashboard_variables(scrape: float) -> dict[str, str]:
    """The dashboard's variables, as the module's docstring says, for a scrape interval."""
    interval = scrape  # Grafana's floor for $__interval: the data source's scrape interval
    return {
        "instance": ".*",
        "group": ".*",
        "datasource": "prometheus",
        "__interval": f"{interval:g}s",
        "__rate_interval": f"{max(interval + scrape, 4 * scrape):g}s",
    }


def render(store: Store, dashboard: dict[str, Any], out: Path, scrape: float) -> None:
    """Draw every panel of ``dashboard`` from ``store`` into the PNG ``out``."""
    variables = dashboard_variables(scrape)
    panels = dashboard["panels"]
    # the range queries' steps: every $__interval, from the first scrape plus a rate window
    start = store.scrapes[0] + 4 * scrape
    end = store.scrapes[-1]
    times = [start + i * scrape for i in range(int((end - start) / scrape) + 1)]
    width, height = 1600, 1000
    head, foot, gap = 34, 22, 4
    units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    cell_w, cell_h = (width - gap) / 24, (height - head - foot) / units
    cv = Canvas(width, height)
    span = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
    cv.text(10, 8, dashboard["title"], fontsize=13, weight="bold")
    cv.text(
        90, 11, f"instance: All   group: All   |   {span} + {end - start:.0f} s   |   "
        f"scraped every {scrape:g} s, $__rate_interval = {variables['__rate_interval']}",
        fontsize=8, color=DIM,
    )  # fmt: skip
    for p in panels:
        g = p["gridPos"]
        box = [gap + g["x"] * cell_w, head + g["y"] * cell_h, g["w"] * cell_w - gap,
               g["h"] * cell_h - gap]  # fmt: skip
        if p["type"] == "row":
            cv.text(box[0] + 2, box[1] + box[3] / 2, "\u25be " + p["title"], va="center",
                    fontsize=9, weight="bold")  # fmt: skip
            continue
        cv.box(*box)
        cv.text(box[0] + 8, box[1] + 6, p["title"], fontsize=8, weight="bold")
        drawn = panel_series(p, store, variables, times)
        if p["type"] == "stat":
            draw_stat(cv, p, drawn, box)
        elif p["type"] == "timeseries":
            draw_timeseries(cv, p, drawn, times, box)
        else:
            raise ValueError(f"panel type {p['type']!r} is not drawn by this script")
    cv.text(width - 8, height - 5, CAPTION, ha="right", va="bottom", fontsize=7.5, color=DIM,
            style="italic")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    cv.fig.savefig(out, dpi=DPI, facecolor=BG)
    _quantize(out)


def _quantize(path: Path) -> None:
    """Rewrite the PNG with a 256-colour palette (a fraction of the size, same look)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    """The command line: capture (or load one), then draw."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=75.0, help="load duration (75)")
    parser.add_argument("--scrape", type=float, default=1.0, help="scrape interval (1 s)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG ({OUT.relative_to(ROOT)})")
    parser.add_argument("--save-capture", type=Path, help="also write the samples as JSON")
    parser.add_argument("--from-capture", type=Path, help="draw from a saved capture")
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: stop the daemon
    if opts.from_capture:
        store = Store.load(json.loads(opts.from_capture.read_text()))
    else:
        store = capture(opts.seconds, opts.scrape)
    if opts.save_capture:
        opts.save_capture.write_text(json.dumps(store.dump()))
    render(store, json.loads(DASHBOARD.read_text()), opts.out, opts.scrape)
    print(f"wrote {opts.out} ({opts.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
