"""Per-host cross-metric features of closed windows: does the rest of the host move too?

A host reports several metrics (``cpu_load``, ``latency_p99``, ``req_rate`` …), each its own
series with its own windows (:mod:`features.windows`).  For every closed window this module adds
what the *other* metrics of the same host did in the same window, vectorized over all windows of a
call (sort + segment reductions, no Python loop over windows, series or hosts).

Definitions
-----------
Standardized change of one window (:func:`change_z`)::

    z = |change| / max(std, 1e-9 * max(|mean|, |mean - change|))

the window mean's move against the previous window of its series, in units of the window's own
spread (an effect size, independent of the sample count, so autocorrelated telemetry sampled every
second is not "deviating" all the time).  Robustness rules:

* ``count < 2`` gives ``z = 0``: one sample has no spread to compare with;
* ``std = 0`` (a constant window) falls back to the relative floor, so a constant metric that
  jumps gets a large ``z`` and one that stays put gets 0 (``0 / 0`` is 0, not NaN);
* a non-finite input (NaN ``std`` *and* mean, NaN ``change`` …) gives ``z = 0``;
* ``z`` is clipped to :data:`Z_MAX` (finite output).

Group: the windows with the same ``host`` code and the same ``start`` among the rows given to
:func:`cross_metric_features` (one window per metric of the host).  Features of each row:

``host_metrics`` (int64)
    Number of the host's metrics with a window in the group (the row's own included) -- the
    number of metrics the host reported in that window.
``host_deviating`` (int64)
    Number of the host's *other* metrics whose ``z >= threshold`` (default
    :data:`DEVIATION_Z` = 3: the mean moved by three window standard deviations).
``host_max_z`` (float64)
    Largest ``z`` among the host's *other* metrics (0 when the host has no other metric there).
``host_mean_z`` (float64)
    Mean ``z`` of the host's *other* metrics (0 when none): unlike the maximum, it is only large
    when several of them move.

Every output is finite, and depends only on the multiset of the group's rows (not on their
order, not on the host code's value).

Same values live, in backtests and in training
----------------------------------------------
The live detect stage calls :func:`cross_metric_features` on the windows one micro-batch closes,
per input partition.  That is the same as grouping the whole ``features`` table by
``(tenant, host, window_start)``, which is what training does, because

* a host's series share one partition (the bus key is ``tenant_id|host``), and
* :class:`features.windows.WindowAggregator` keeps event time per host and closes windows by
  *window index*, for every series of a host at once (its closed bound): the windows of one host
  with the same start are always closed by the same ``push``/``flush``, whatever the micro-batch
  boundaries, and a restored checkpoint (kill -9, rebalance) holds either all of them open or
  none.

An event arriving after its window closed is late (dead-lettered), so it never adds a window to a
group that was already scored.  The values are therefore a pure function of stored window features
and replay-deterministic; the sink stores them next to the base features anyway (what the live
models saw), and training prefers the stored values, recomputing only rows stored before they
existed and rows whose group it changed (synthetic anomalies).

Examples
--------
>>> import numpy as np
>>> X = {"count": np.array([6, 6, 6, 6]), "mean": np.array([50.0, 1.0, 80.0, 50.0]),
...      "std": np.array([2.0, 0.1, 2.0, 2.0]), "change": np.array([10.0, 0.5, 1.0, 0.0])}
>>> host = np.array([7, 7, 7, 8])          # host 7: three metrics, host 8: one
>>> start = np.zeros(4)
>>> change_z(X["count"], X["mean"], X["std"], X["change"]).tolist()
[5.0, 5.0, 0.5, 0.0]
>>> out = cross_metric_features(host, start, X)
>>> out["host_metrics"].tolist(), out["host_deviating"].tolist(), out["host_max_z"].tolist()
([3, 3, 3, 1], [1, 1, 2, 0], [5.0, 5.0, 5.0, 0.0])
>>> out["host_mean_z"].tolist()
[2.75, 2.75, 5.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["CROSS_FEATURES", "DEVIATION_Z", "Z_MAX", "change_z", "cross_metric_features"]

#: Names of the cross-metric columns, in output order.
CROSS_FEATURES: tuple[str, ...] = ("host_metrics", "host_deviating", "host_max_z", "host_mean_z")

#: Default ``z`` from which another metric of the host counts as deviating.
DEVIATION_Z = 3.0

#: Upper clip of ``z`` (keeps a constant metric's jump finite).
Z_MAX = 1000.0

_REL_FLOOR = 1e-9


def change_z(count, mean, std, change) -> np.ndarray:
    """Standardized change ``|change| / std`` of each window (see the module docstring).

    Parameters
    ----------
    count, mean, std, change : array_like
        Window features of :mod:`features.windows`, shape (n,) each (any numeric dtype).

    Returns
    -------
    numpy.ndarray
        float64, shape (n,), in ``[0, Z_MAX]``.

    >>> change_z([1, 4, 4, 4], [5.0, 5.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0])
    array([   0., 1000.,    0.,    0.])
    """
    count = np.asarray(count, np.float64)
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    change = np.asarray(change, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        floor = _REL_FLOOR * np.fmax(np.abs(mean), np.abs(mean - change))
        denom = np.fmax(std, floor)
        z = np.minimum(np.abs(change) / denom, Z_MAX)
    ok = (count >= 2) & (denom > 0) & ~np.isnan(z)
    return np.where(ok, z, 0.0)


def cross_metric_features(
    host, start, X: Mapping[str, np.ndarray], threshold: float = DEVIATION_Z
) -> dict[str, np.ndarray]:
    """Cross-metric features of windows grouped by ``(host, start)``.

    Parameters
    ----------
    host : array_like
        int64 host code of each window, shape (n,) (any stable integer per ``tenant/host``).
    start : array_like
        float64 window start of each window, shape (n,).
    X : mapping of str to numpy.ndarray
        The windows' ``count``, ``mean``, ``std`` and ``change`` columns, shape (n,) each.
    threshold : float
        ``z`` from which a metric counts as deviating (> 0).

    Returns
    -------
    dict of str to numpy.ndarray
        :data:`CROSS_FEATURES`: ``host_metrics``, ``host_deviating`` (int64), ``host_max_z`` and
        ``host_mean_z`` (float64), shape (n,), in the row order of the input.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    host = np.asarray(host)
    start = np.asarray(start, np.float64)
    if host.size and not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"host must be integer codes, got {host.dtype}")
    host = host.astype(np.int64, copy=False)
    z = change_z(X["count"], X["mean"], X["std"], X["change"])
    n = host.size
    if not (host.ndim == start.ndim == z.ndim == 1 and start.size == z.size == n):
        raise ValueError("host, start and the feature columns must be 1-D arrays of equal length")
    if n == 0:
        e = np.empty(0, np.int64)
        return {
            "host_metrics": e,
            "host_deviating": e.copy(),
            "host_max_z": np.empty(0),
            "host_mean_z": np.empty(0),
        }
    # sort by group, then z: the last row of a group holds its largest z, the one before the second
    order = np.lexsort((z, start, host))
    hs, ss, zs = host[order], start[order], z[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (hs[1:] != hs[:-1]) | (ss[1:] != ss[:-1])
    gid = np.cumsum(first) - 1
    lo = np.flatnonzero(first)
    hi = np.empty_like(lo)
    hi[:-1], hi[-1] = lo[1:] - 1, n - 1
    size = hi - lo + 1
    top1 = zs[hi]
    top2 = np.where(size >= 2, zs[np.maximum(hi - 1, 0)], 0.0)
    is_top = np.zeros(n, dtype=bool)
    is_top[hi] = True
    dev = (zs >= threshold).astype(np.int64)
    ndev = np.add.reduceat(dev, lo)
    zsum = np.add.reduceat(zs, lo)  # summed in z order: the same bits whatever the row order
    others_max = np.where(is_top, top2[gid], top1[gid])
    # the group sum minus the row's own z, clamped to [0, max]: rounding never breaks the order
    others_mean = np.clip((zsum[gid] - zs) / np.maximum(size[gid] - 1, 1), 0.0, others_max)
    out_sorted = {
        "host_metrics": size[gid],
        "host_deviating": ndev[gid] - dev,
        "host_max_z": others_max,
        "host_mean_z": others_mean,
    }
    out = {}
    for k, v in out_sorted.items():
        col = np.empty(n, v.dtype)
        col[order] = v
        out[k] = col
    return out
