"""Run every benchmark script (``benchmarks/bench_*.py``) in turn; each writes ``benchmarks/results/<name>.md``.

``make bench`` calls this. Benchmarks are measurements, not tests: nothing here fails on a slow machine. Peer
packages are installed on first use into ``benchmarks/_venvs/<name>`` (torch==2.13.0 first, then the peer).

Run: ``python benchmarks/run_all.py [--only torchcfm throughput] [--quick]`` (``--quick`` is passed to the scripts
that accept it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", default=None, help="script names without 'bench_' and '.py'")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failed = []
    for s in scripts:
        cmd = [sys.executable, str(s)]
        if args.quick and "--quick" in s.read_text():
            cmd.append("--quick")
        print(f"== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE).returncode
        print(f"== {s.name}: exit {rc} after {time.perf_counter() - t0:.0f}s", flush=True)
        if rc:
            failed.append(s.name)
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
