"""Feature drift between the candles a model trained on and recent ones: statistics and their plots.

Per feature, two measures that answer different questions:

* the **population stability index** (PSI): how much mass moved between the deciles of the training
  distribution, ``sum((a - e) * ln(a / e))`` over the bins, with ``e`` the training share per bin (about
  0.1 each) and ``a`` the recent share, both floored at ``epsilon`` so an empty bin stays finite. Rules
  of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift. It measures *size* and does not shrink
  with more rows.
* a two-sample **Kolmogorov-Smirnov** test: is the difference more than sampling noise? Its p-value is
  compared with ``alpha / n_features`` (Bonferroni). It measures *evidence*, and with thousands of
  autocorrelated rows (overlapping indicator windows make neighbours near copies, so the effective
  sample is far smaller than the row count) it rejects for shifts too small to matter.

So a feature counts as drifted only when both agree: PSI above its threshold **and** KS rejects. No
tracking calls here; the plot functions write one PNG each and return its path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from evaluation.plots import _pyplot, _save

PSI_THRESHOLD = 0.25
KS_ALPHA = 0.05
DRIFT_SHARE = 0.3
EPSILON = 1e-4
N_BINS = 10
MIN_DRIFT_ROWS = 100  # recent rows with every feature computed, below which drift is not judged


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift check (each a CLI option of ``evaluation.monitor``)."""

    psi_threshold: float = PSI_THRESHOLD
    ks_alpha: float = KS_ALPHA
    drift_share: float = DRIFT_SHARE
    min_rows: int = MIN_DRIFT_ROWS

    def __post_init__(self):
        if not self.psi_threshold > 0:
            raise ValueError(f"psi_threshold must be > 0, got {self.psi_threshold!r}")
        if not 0 < self.ks_alpha < 1:
            raise ValueError(f"ks_alpha must be in (0, 1), got {self.ks_alpha!r}")
        if not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1], got {self.drift_share!r}")
        if self.min_rows < 2:
            raise ValueError(f"min_rows must be >= 2, got {self.min_rows!r}")


def psi(expected: np.ndarray, actual: np.ndarray, n_bins: int = N_BINS, epsilon: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected``, on the deciles of ``expected``.

    Bin edges are the distinct interior quantiles of ``expected`` (a feature with ties, e.g. a ratio
    stuck at 1, gets fewer bins), open-ended at both sides so out-of-range values land in the end bins.
    """
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    expected, actual = expected[np.isfinite(expected)], actual[np.isfinite(actual)]
    if len(expected) == 0 or len(actual) == 0:
        raise ValueError("psi needs at least one finite value on each side")
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, n_bins + 1)[1:-1]))
    # side="right": a value equal to an edge falls in the bin above it, the same for both samples.
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    e, a = np.maximum(e, epsilon), np.maximum(a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    drifted: bool  # psi > threshold and the KS test rejects at alpha / n_features
    train_mean: float
    recent_mean: float


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]
    n_train: int
    n_recent: int
    share_drifted: float
    drifted: bool  # share_drifted >= drift_share
    judged: bool  # False when too few recent rows: no drift verdict
    ks_alpha_per_feature: float
    config: DriftConfig
    note: str = ""

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["drifted_features"] = self.drifted_features
        return out


def feature_drift(
    train: pd.DataFrame, recent: pd.DataFrame, config: DriftConfig | None = None
) -> DriftReport:
    """PSI and KS test of every column of ``train`` against the same column of ``recent``.

    Rows with any missing value (indicator warm-up, rows after a gap) are left out on both sides.
    Features are listed most drifted (highest PSI) first.
    """
    config = config or DriftConfig()
    columns = list(train.columns)
    missing = [c for c in columns if c not in recent.columns]
    if missing:
        raise ValueError(f"recent features lack columns {missing}")
    train = train[columns].dropna()
    recent = recent[columns].dropna()
    alpha = config.ks_alpha / max(1, len(columns))
    if len(train) < config.min_rows:
        raise ValueError(
            f"only {len(train)} training rows with every feature computed (need {config.min_rows}): "
            "cannot describe the training distribution"
        )
    if len(recent) < config.min_rows:
        return DriftReport(
            [], len(train), len(recent), 0.0, False, False, alpha, config,
            note=f"not enough recent candles to judge drift yet ({len(recent)}, need {config.min_rows})",
        )  # fmt: skip
    rows = []
    for name in columns:
        t, r = train[name].to_numpy(dtype=float), recent[name].to_numpy(dtype=float)
        value = psi(t, r)
        ks = ks_2samp(t, r)
        rows.append(
            FeatureDrift(
                feature=name,
                psi=value,
                ks_statistic=float(ks.statistic),
                ks_pvalue=float(ks.pvalue),
                drifted=bool(value > config.psi_threshold and ks.pvalue < alpha),
                train_mean=float(t.mean()),
                recent_mean=float(r.mean()),
            )
        )
    rows.sort(key=lambda f: f.psi, reverse=True)
    share = sum(f.drifted for f in rows) / len(rows)
    return DriftReport(rows, len(train), len(recent), share, share >= config.drift_share, True, alpha, config)


# ------------------------------------------------------------------------------------------------ plots
def plot_psi(report: DriftReport, path: str | Path, title: str = "Feature drift (PSI)") -> Path:
    """Horizontal bars of each feature's PSI, drifted features in red, with the threshold line."""
    plt = _pyplot()
    feats = report.features[::-1]  # most drifted on top
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(feats) + 1.6))
    colours = ["#d62728" if f.drifted else ("#ff7f0e" if f.psi > report.config.psi_threshold else "#1f77b4")
               for f in feats]  # fmt: skip
    ax.barh([f.feature for f in feats], [f.psi for f in feats], color=colours)
    threshold = report.config.psi_threshold
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("population stability index (training deciles)")
    verdict = "drifted" if report.drifted else "not drifted"
    ax.set_title(
        f"{title}: {len(report.drifted_features)}/{len(report.features)} features drifted "
        f"({report.share_drifted:.0%}, {verdict})",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_histograms(
    train: pd.DataFrame, recent: pd.DataFrame, report: DriftReport, path: str | Path, top: int = 4
) -> Path:
    """Training vs recent histograms (densities) of the ``top`` features with the highest PSI."""
    plt = _pyplot()
    feats = report.features[:top]
    fig, axes = plt.subplots(1, len(feats), figsize=(3.2 * len(feats), 2.9), squeeze=False)
    for ax, f in zip(axes[0], feats, strict=True):
        t, r = train[f.feature].dropna().to_numpy(), recent[f.feature].dropna().to_numpy()
        lo, hi = np.percentile(np.concatenate([t, r]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 40) if hi > lo else 20
        ax.hist(t, bins=bins, density=True, alpha=0.55, label="training", color="#1f77b4")
        ax.hist(r, bins=bins, density=True, alpha=0.55, label="recent", color="#d62728")
        ax.set_title(f"{f.feature}\nPSI {f.psi:.2f}, KS p {f.ks_pvalue:.1g}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
