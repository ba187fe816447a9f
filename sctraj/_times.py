"""Times as users write them: ``"D2"``, ``"day 4.5"``, ``"E7.5"``, ``"12h"`` read as numbers.

A time column of strings (or a categorical of strings) is parsed label by label into one number per label. The
labels must share one prefix and one unit suffix (``"D0"``, ``"D2"``, ``"D10"``; ``"E6.5"``, ``"E7.5"``), so that the
numbers are comparable; the mapping is logged once. Anything else (mixed prefixes such as ``"E18.5"`` with
``"P2"``, free text) is refused with the one line that converts the column by hand. Order always follows the numbers,
never the text (``"day10"`` comes after ``"day2"``).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ._settings import logger

# optional text prefix, a number, optional unit suffix: "D2", "day 4.5", "Day_10", "E7.5", "t=3", "12h", "2 days"
_LABEL = re.compile(
    r"^\s*(?P<prefix>[A-Za-z]+(?:[ _]+[A-Za-z]+)*)?\s*(?P<sep>[_=:\-]?)\s*"
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[A-Za-z]+)?\s*$"
)
_logged: set[tuple] = set()


def parse_label(label) -> tuple[str, float, str] | None:
    """``"day 4.5"`` -> ``("day", 4.5, "")``, ``"12h"`` -> ``("", 12.0, "h")``; ``None`` if it is no such label.

    A ``-`` between a prefix and the number (``"D-1"``) could be a separator or a minus sign, so it is refused.
    """
    if not isinstance(label, str):
        return None
    m = _LABEL.match(label)
    if m is None:
        return None
    prefix, sep, num, unit = (m.group("prefix") or ""), m.group("sep"), float(m.group("num")), (m.group("unit") or "")
    if sep == "-":
        if prefix:
            return None
        num = -num
    return re.sub(r"[ _]+", "", prefix).lower(), num, unit.lower()


def _fix_line(time_key: str, labels, parsed: dict) -> str:
    shown = list(labels)[:4]
    items = ", ".join(f"{lab!r}: {parsed[lab] if parsed.get(lab) is not None else '...'}" for lab in shown)
    more = ", ..." if len(labels) > len(shown) else ""
    return (
        f"adata.obs[{time_key!r}] = adata.obs[{time_key!r}].map({{{items}{more}}}).astype(float)"
    )


def labels_to_numbers(labels, time_key: str) -> dict:
    """Map each distinct string label of a time column to a number, or raise with the one-line fix.

    All labels must parse as ``<prefix><number><unit>`` with the same prefix and the same unit (case and spaces
    ignored). The mapping is logged (once per column and mapping).
    """
    labels = [lab for lab in labels if not (lab is None or (isinstance(lab, float) and np.isnan(lab)))]
    parsed = {lab: parse_label(str(lab)) for lab in labels}
    bad = [lab for lab, p in parsed.items() if p is None]
    numbers = {lab: (p[1] if p is not None else None) for lab, p in parsed.items()}
    if bad:
        minus = "; a '-' between a prefix and the number could be a minus sign" if any("-" in str(b) for b in bad) else ""
        raise ValueError(
            f"adata.obs[{time_key!r}] holds time labels that are not numbers (with an optional prefix or unit) "
            f"({bad[:3]}{minus}); sctraj needs real times (a day 10 must come after a day 2). Convert them first, e.g. "
            + _fix_line(time_key, labels, numbers)
        )
    prefixes = sorted({p[0] for p in parsed.values()})
    units = sorted({p[2] for p in parsed.values()})
    if len(prefixes) > 1 or len(units) > 1:
        what = f"prefixes {prefixes}" if len(prefixes) > 1 else f"units {units}"
        raise ValueError(
            f"adata.obs[{time_key!r}] mixes time labels with different {what} (e.g. {labels[:4]}), so their numbers "
            "are not on one clock. Convert them to one time scale first, e.g. " + _fix_line(time_key, labels, numbers)
        )
    vals = sorted(set(numbers.values()))
    by_num: dict[float, list] = {}
    for lab, v in numbers.items():
        by_num.setdefault(v, []).append(lab)
    shown = ", ".join(f"{', '.join(map(repr, by_num[v]))} -> {v:g}" for v in vals)
    key = (time_key, shown)
    if key not in _logged:
        _logged.add(key)
        logger.info(f"adata.obs[{time_key!r}] holds time labels; read as numbers: {shown}")
    return numbers


def is_label_column(col: pd.Series) -> bool:
    """Whether a time column holds text labels: object or string dtype, or a categorical of them."""
    dtype = col.dtype.categories.dtype if isinstance(col.dtype, pd.CategoricalDtype) else col.dtype
    return pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)


def string_times(col: pd.Series, time_key: str) -> np.ndarray:
    """Float times of a column of string labels (object, string or categorical dtype); NaN where missing."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        labels = list(col.cat.categories)
    else:
        labels = list(pd.unique(col.dropna()))
    # numbers mixed into an object column ("2", 4.0) are read like unprefixed labels
    as_text = {lab: (lab if isinstance(lab, str) else repr(float(lab))) for lab in labels
               if isinstance(lab, str) or (isinstance(lab, int | float | np.number) and not isinstance(lab, bool | np.bool_))}
    nonstr = [lab for lab in labels if lab not in as_text]
    if nonstr:
        raise ValueError(
            f"adata.obs[{time_key!r}] has dtype {col.dtype} with values that are neither numbers nor time labels "
            f"({nonstr[:3]}). Convert it first, e.g. adata.obs[{time_key!r}] = pd.to_numeric(adata.obs[{time_key!r}])."
        )
    # plain numbers stored as text ("2", "4.5") are numbers with an empty prefix and unit
    numbers = labels_to_numbers([as_text[lab] for lab in labels], time_key)
    arr = col.astype(object).to_numpy()
    out = np.full(len(arr), np.nan)
    for lab in labels:
        out[arr == lab] = numbers[as_text[lab]]
    return out
