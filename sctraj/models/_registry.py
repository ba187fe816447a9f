"""Method registry: ``@register_method("name")`` on a :class:`~sctraj.models.BaseMethod` subclass."""

from __future__ import annotations

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator that makes a method available to ``fit_flow(method=name)``."""

    def deco(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names accepted by ``sctraj.tl.fit_flow(method=...)``."""
    return sorted(_METHODS)


def get_method(name: str) -> type:
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}. Available methods: {', '.join(available_methods())}.")
    return _METHODS[name]
