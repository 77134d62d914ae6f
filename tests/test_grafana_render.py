"""examples/grafana/render.py's PromQL subset, on small synthetic series, and that it accepts
every query of examples/grafana/tasker.json (no daemon, no drawing)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT

GRAFANA = ROOT / "examples" / "grafana"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_render", GRAFANA / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


render = _load()
T0 = 1_000_000.0


def counter(store: Any, name: str, labels: dict[str, str], per_second: float, n: int = 30) -> None:
    """``n`` scrapes, one a second from T0, of a counter growing ``per_second``."""
    for i in range(n):
        store.add(T0 + i, name, labels, per_second * i)


def instant(expr: str, store: Any, t: float) -> dict[tuple[tuple[str, str], ...], float]:
    value = render.evaluate(render.parse(expr), store, t)
    assert isinstance(value, dict)
    return value


def test_rate_is_prometheus_extrapolated_rate() -> None:
    store = render.Store()
    counter(store, "x_total", {"job": "a"}, 2.0)
    assert instant("rate(x_total[4s])", store, T0 + 20) == {(("job", "a"),): pytest.approx(2.0)}
    # one sample in the window: no value (Grafana draws a gap)
    assert instant("rate(x_total[1s])", store, T0 + 20) == {}


def test_rate_counts_a_counter_reset() -> None:
    store = render.Store()
    for i, v in enumerate([10.0, 12.0, 14.0, 1.0, 3.0]):  # restarted between 14 and 1
        store.add(T0 + i, "x_total", {}, v)
    # increase 3 - 10 + 14 = 7 over the 4 s sampled; the window (T0 - 1, T0 + 4] starts within
    # 1.1 sample intervals of the first sample, so it is extrapolated to 5 s: 7 * 5/4, per 5 s
    got = instant("rate(x_total[5s])", store, T0 + 4)
    assert got == {(): pytest.approx(7 * 5 / 4 / 5)}
    # a window starting further out is extrapolated by half an interval only: 7 * 4.5/4, per 8 s
    got = instant("rate(x_total[8s])", store, T0 + 4)
    assert got == {(): pytest.approx(7 * 4.5 / 4 / 8)}


def test_selectors_and_sum_by() -> None:
    store = render.Store()
    for group, state, n in [("a", "failed", 1), ("a", "succeeded", 3), ("b", "failed", 5)]:
        store.add(T0, "q", {"group": group, "state": state}, float(n))
    assert instant("sum(q)", store, T0 + 1) == {(): 9.0}
    assert instant("sum by (group) (q)", store, T0) == {(("group", "a"),): 4.0,
                                                        (("group", "b"),): 5.0}  # fmt: skip
    assert instant('sum by (state) (q{group=~"a|b", state!="succeeded"})', store, T0) == {
        (("state", "failed"),): 6.0
    }
    assert instant('q{group="b"}', store, T0) == {
        (("__name__", "q"), ("group", "b"), ("state", "failed")): 5.0
    }
    assert instant("q", store, T0 + render.LOOKBACK + 1) == {}  # past the lookback: stale


def test_binary_operators_match_one_to_one() -> None:
    store = render.Store()
    for group, used, cap in [("a", 5.0, 10.0), ("b", 0.0, 0.0)]:
        store.add(T0, "used", {"group": group}, used)
        store.add(T0, "cap", {"group": group}, cap)
    got = instant("(sum by (group) (used) + 5) / sum by (group) (cap)", store, T0)
    assert got[(("group", "a"),)] == 1.0
    assert math.isinf(got[(("group", "b"),)])


def test_histogram_quantile_of_rates() -> None:
    store = render.Store()
    for le, per_second in [("0.1", 1.0), ("0.5", 3.0), ("+Inf", 4.0)]:
        counter(store, "h_bucket", {"le": le, "group": "a"}, per_second)
    expr = "histogram_quantile({q}, sum by (le) (rate(h_bucket[4s])))"
    # rank 2 of 4: half way through the (0.1, 0.5] bucket, which holds ranks 1 to 3
    assert instant(expr.format(q=0.5), store, T0 + 10) == {(): pytest.approx(0.3)}
    # in the +Inf bucket: the highest finite bound
    assert instant(expr.format(q=0.99), store, T0 + 10) == {(): pytest.approx(0.5)}
    assert render.bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) != 0.0  # NaN: nothing


def test_query_range_leaves_gaps() -> None:
    store = render.Store()
    counter(store, "x_total", {}, 1.0, n=5)
    times, series = render.query_range(render.parse("rate(x_total[2s])"), store, T0, T0 + 6, 1.0)
    assert times == [T0 + i for i in range(7)]
    values = series[()]
    assert math.isnan(values[0])  # one sample so far
    assert values[2:5] == [pytest.approx(1.0)] * 3


@pytest.mark.parametrize(
    "expr",
    [
        "avg(x)",
        "sum without (a) (x)",
        "rate(x[5m]) > 1",
        "x offset 5m",
        "irate(x[1m])",
        "x[1m]",
        "topk(3, x)",
        "sum by (a) (x) / on (a) y",
    ],
)
def test_unsupported_promql_fails_loudly(expr: str) -> None:
    with pytest.raises(render.PromQLError):
        render.parse(expr)


def test_unknown_dashboard_variable_fails_loudly() -> None:
    with pytest.raises(render.PromQLError, match=r"\$job"):
        render.substitute('x{job=~"$job"}', render.dashboard_variables(1.0))


def test_every_dashboard_query_is_in_the_subset() -> None:
    dashboard = json.loads((GRAFANA / "tasker.json").read_text())
    variables = render.dashboard_variables(1.0)
    assert variables["__rate_interval"] == "4s"
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["type"] in ("row", "stat", "timeseries"), panel["title"]
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
            render.parse(render.substitute(target["expr"], variables))
    assert len(exprs) >= 20
