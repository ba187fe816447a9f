"""What each method is and which settings it takes, read from the method sources without importing them.

``sctraj methods``, the CLI's ``--help`` and :func:`sctraj.models.describe` list the registered methods and every
setting with its default and meaning. The sources of ``sctraj/models`` are parsed (``ast``) rather than imported,
so listing them does not import torch (tens of seconds on a cold start). The information comes from one place, the
code itself: each method's ``Config`` dataclass (fields and defaults, inherited ones included), the ``Attributes``
section of the config docstrings (meanings), and the ``Inputs read by fit_flow`` bullets and ``params.pop`` calls of
the method class (method-specific inputs such as ``total_mass``). A test checks the result against the imported
registry, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"


@dataclass
class Setting:
    name: str
    default: str
    meaning: str
    kind: str  # "network / optimiser", "method" or "input"


@dataclass
class MethodInfo:
    name: str
    summary: str
    cls: str
    config: str
    settings: list[Setting] = field(default_factory=list)
    default_n_steps: int | None = None
    default_batch_size: int | None = None
    has_growth: bool = False
    needs_population: bool = False


def _attributes(doc: str | None) -> dict[str, str]:
    """The ``Attributes`` section of a cleaned numpydoc docstring (``ast.get_docstring``): name -> meaning."""
    if not doc:
        return {}
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].strip() != "Attributes":
        i += 1
    i += 2  # skip the underline
    cur: list[str] | None = None
    names: list[str] = []
    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if s and not ln.startswith(" ") and re.fullmatch(r"[A-Za-z_][\w, ]*", s):
            if cur is not None:
                for n in names:
                    out[n] = " ".join(cur)
            names = [n.strip() for n in s.split(",")]
            cur = []
        elif s and cur is not None and ln.startswith("    "):
            cur.append(s)
        elif s and cur is not None:  # next section
            break
        i += 1
    if cur is not None:
        for n in names:
            out[n] = " ".join(cur)
    return out


def _inputs(doc: str | None) -> dict[str, str]:
    """Bullets ``* ``name=...``: meaning`` of a method docstring (inputs read by ``fit_flow``)."""
    out: dict[str, str] = {}
    if not doc:
        return out
    text = doc.expandtabs()
    for m in re.finditer(r"^\s*\* ``(\w+)=[^`]*``:?\s*(.*?)(?=^\s*\* ``|^\s*$)", text, re.M | re.S):
        out[m.group(1)] = " ".join(m.group(2).split())
    return out


def _const(node) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


@lru_cache(maxsize=1)
def _parse() -> dict[str, MethodInfo]:
    classes: dict[str, dict] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            info = {"bases": [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases],
                    "doc": ast.get_docstring(node), "fields": {}, "assign": {}, "register": None, "pops": []}
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", "") == "register_method" and dec.args:
                    info["register"] = _const(dec.args[0])
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    ann = ast.unparse(st.annotation)
                    if "ClassVar" in ann:
                        info["assign"][st.target.id] = st.value
                    elif st.value is not None:
                        info["fields"][st.target.id] = ast.unparse(st.value)
                elif isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                    info["assign"][st.targets[0].id] = st.value
            classes[node.name] = info
        # params.pop("name", ...) anywhere in the module: inputs consumed by a method's prepare()
        pops = [c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and
                isinstance(c.func, ast.Attribute) and c.func.attr == "pop" and
                getattr(c.func.value, "id", "") == "params" and c.args and isinstance(c.args[0], ast.Constant)]
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name]["module_pops"] = pops

    def lookup(cls: str, attr: str):
        seen = set()
        while cls in classes and cls not in seen:
            seen.add(cls)
            if attr in classes[cls]["assign"]:
                return classes[cls]["assign"][attr]
            cls = next((b for b in classes[cls]["bases"] if b in classes), None)
        return None

    def chain(cls: str) -> list[str]:
        out = []
        while cls in classes and cls not in out:
            out.append(cls)
            cls = next((b for b in classes[cls]["bases"] if b in classes), None)
        return out

    methods = {}
    for cname, info in classes.items():
        name = info["register"]
        if not name:
            continue
        cfg_node = lookup(cname, "Config")
        cfg = cfg_node.id if isinstance(cfg_node, ast.Name) else "MethodConfig"
        fields: dict[str, str] = {}
        docs: dict[str, str] = {}
        for c in reversed(chain(cfg)):  # base first, so subclasses override defaults and meanings
            fields.update(classes[c]["fields"])
            docs.update(_attributes(classes[c]["doc"]))
        base_fields = set(classes.get("MethodConfig", {}).get("fields", {}))
        settings = [Setting(f, d, docs.get(f, ""), "network / optimiser" if f in base_fields else "method")
                    for f, d in fields.items()]
        mdoc = "\n".join(classes[c]["doc"] or "" for c in chain(cname))
        inputs = _inputs(mdoc)
        pops = list(dict.fromkeys(p for c in chain(cname) for p in classes[c].get("module_pops", [])))
        for p in pops:
            settings.append(Setting(p, "None", inputs.get(p, ""), "input"))
        order = {"method": 0, "network / optimiser": 1, "input": 2}
        settings.sort(key=lambda st: order[st.kind])
        summary = (info["doc"] or "").strip().splitlines()[0] if info["doc"] else ""
        methods[name] = MethodInfo(
            name=name, summary=summary, cls=cname, config=cfg, settings=settings,
            default_n_steps=_const(lookup(cname, "default_n_steps")) or 2000,
            default_batch_size=_const(lookup(cname, "default_batch_size")) or 256,
            has_growth=bool(_const(lookup(cname, "has_growth"))),
            needs_population=bool(_const(lookup(cname, "needs_population"))),
        )
    return dict(sorted(methods.items()))


def methods() -> dict[str, MethodInfo]:
    """Every registered method, parsed from the sources (no torch import)."""
    return _parse()


def method_info(name: str) -> MethodInfo:
    ms = _parse()
    if name not in ms:
        raise ValueError(f"Unknown method {name!r}. Available methods: {', '.join(ms)}.")
    return ms[name]


def describe_text(name: str | None = None, *, width: int = 100) -> str:
    """Plain-text listing: all methods (``name=None``) or one method's settings with defaults and meanings."""
    import textwrap

    if name is None:
        lines = ["method     summary"]
        lines += [f"{m.name:10s} {m.summary}" for m in _parse().values()]
        lines.append("\nSettings of one method: sctraj methods NAME (or sctraj.models.describe(NAME)).")
        return "\n".join(lines)
    m = method_info(name)
    flags = [s for s, on in (("growth", m.has_growth), ("needs population_key", m.needs_population)) if on]
    lines = [f"{m.name}: {m.summary}", f"defaults: n_steps={m.default_n_steps}, batch_size={m.default_batch_size}"
             + (f"; {', '.join(flags)}" if flags else ""), ""]
    for kind in ("method", "network / optimiser", "input"):
        group = [s for s in m.settings if s.kind == kind]
        if not group:
            continue
        title = {"method": "method settings", "network / optimiser": "network and optimiser",
                 "input": "inputs read from adata / fit_flow keywords"}[kind]
        lines.append(f"{title} (fit_flow(..., name=value); CLI: --param name=value):")
        for s in group:
            head = f"  {s.name} = {s.default}" if kind != "input" else f"  {s.name}"
            lines.append(head)
            if s.meaning:
                lines += textwrap.wrap(s.meaning, width=width, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def help_epilog() -> str:
    """The methods and their ``--param`` names, for ``sctraj fit --help``."""
    import textwrap

    lines = ["methods (--method) and their settings (--param NAME=VALUE; meanings: sctraj methods NAME):"]
    for m in _parse().values():
        names = [st.name for st in m.settings]
        lines.append(f"  {m.name}: {m.summary}")
        lines += textwrap.wrap(", ".join(names), width=96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
