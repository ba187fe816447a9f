"""Shared helpers of the benchmark scripts: machine description, Markdown tables, peer venvs."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "_work"
VENVS = HERE / "_venvs"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs (load average at start "
            f"{load}), Python {platform.python_version()}, torch {torch.__version__}")


def today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def command() -> str:
    return " ".join([Path(sys.executable).name, *[str(a) for a in sys.argv]])


def table(rows: list[dict], cols: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(format(v, fmt[c]) if c in fmt and isinstance(v, int | float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def peer_python(name: str, pin: str) -> Path:
    """Python of the peer venv ``_venvs/<name>`` (created with torch==2.13.0 first, then ``pin``)."""
    py = VENVS / name / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", pin], check=True)
    return py


def write_result(name: str, title: str, body: str, notes: str = "") -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    text = (f"# {title}\n\n- command: `{command()}`\n- machine: {machine()}\n- date: {today()}\n\n{body}\n"
            + (f"\n{notes}\n" if notes else ""))
    path.write_text(text)
    print(text)
    return path
