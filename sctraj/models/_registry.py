"""Method registry: ``@register_method("name")`` on a :class:`~sctraj.models.BaseMethod` subclass."""

from __future__ import annotations

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator that makes a method available to ``fit_flow(method=name)``.

    Examples
    --------
    >>> from sctraj.models import register_method
    >>> from sctraj.models.cfm import OTCFM
    >>> @register_method("my_otcfm")  # doctest: +SKIP
    ... class MyOTCFM(OTCFM):
    ...     sigma_scale = 2.0
    """

    def deco(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names accepted by ``sctraj.tl.fit_flow(method=...)``.

    Examples
    --------
    >>> import sctraj.models
    >>> sctraj.models.available_methods()
    ['icfm', 'metafm', 'metricfm', 'otcfm', 'sbcfm', 'vgfm']
    """
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The method class registered as ``name`` (its docstring documents the method; see also :func:`describe`).

    Examples
    --------
    >>> import sctraj.models
    >>> sctraj.models.get_method("vgfm").has_growth
    True
    """
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}. Available methods: {', '.join(available_methods())}.")
    return _METHODS[name]


def describe(method: str | None = None):
    """Every setting of a method, with its default and meaning (or, without ``method``, the list of methods).

    Settings are passed to :func:`sctraj.tl.fit_flow` as keywords (``fit_flow(adata, "day", method="vgfm",
    total_mass={...}, lr_schedule="constant")``) or on the command line as ``--param name=value``.

    Parameters
    ----------
    method
        A name from :func:`available_methods`; ``None`` lists the methods.

    Returns
    -------
    A :class:`pandas.DataFrame`: for one method, one row per setting with ``default``, ``kind`` (``"method"``,
    ``"network / optimiser"`` or ``"input"``: a method-specific input read from the AnnData or the call) and
    ``meaning``; ``df.attrs`` holds the summary and the default ``n_steps`` / ``batch_size``. Without ``method``, one
    row per method with its summary, default step count and whether it models growth or needs populations.
    ``print(describe_text(...))`` of :mod:`sctraj._catalog` gives the same as text (``sctraj methods NAME``).

    Examples
    --------
    >>> import sctraj.models
    >>> sctraj.models.describe().index.tolist()
    ['icfm', 'metafm', 'metricfm', 'otcfm', 'sbcfm', 'vgfm']
    >>> sctraj.models.describe("vgfm").loc["total_mass", "kind"]
    'input'
    """
    import pandas as pd

    from .._catalog import method_info, methods

    if method is None:
        rows = {m.name: {"summary": m.summary, "n_steps": m.default_n_steps, "batch_size": m.default_batch_size,
                         "growth": m.has_growth, "needs_population": m.needs_population}
                for m in methods().values()}
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "method"
        return df
    get_method(method)  # the registry's error for unknown names
    info = method_info(method)
    df = pd.DataFrame([{"setting": s.name, "default": s.default, "kind": s.kind, "meaning": s.meaning}
                       for s in info.settings]).set_index("setting")
    df.attrs.update({"method": info.name, "summary": info.summary, "n_steps": info.default_n_steps,
                     "batch_size": info.default_batch_size})
    return df
