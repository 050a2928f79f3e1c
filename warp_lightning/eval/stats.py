"""Statistics and tables of the evaluation (no torch: `report` imports it)."""

from __future__ import annotations

import math

# two-sided 95% Student t critical values t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    below = [d for d in _T975 if d < df]
    return _T975[max(below)] if df <= 30 else 1.96


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of the mean (Student t over the values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t975(n - 1) * (var / n) ** 0.5


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the completions (word level)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def fmt_ci(mean: float, ci: float, digits: int = 3) -> str:
    """`mean ± half-width` (the half-width of the 95% interval), or the mean alone without an interval."""
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])
