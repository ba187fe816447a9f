"""CPU seconds (all threads of the process) of one fit on hematopoiesis without day 4, vgfm vs otcfm, defaults.

Wall-clock fit times on an oversubscribed machine measure the machine's load, not the method; process CPU time is
much less sensitive to it. Usage: ``.venv/bin/python benchmarks/bench_vgfm_cpu.py``.
"""

import subprocess
import sys

CHILD = r"""
import resource, sys, time
import sctraj
a = sctraj.datasets.hematopoiesis()
r0 = resource.getrusage(resource.RUSAGE_SELF)
c0, w0 = time.process_time(), time.perf_counter()
m = sctraj.tl.fit_flow(a, "day", method=sys.argv[1], use_rep="X_emb", exclude_times=[4.0], progress=False,
                       trajectory_n_grid=0)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"RESULT {sys.argv[1]} fit_wall={m.setup['fit_seconds']:.1f}s fit+outputs_cpu={time.process_time() - c0:.1f}s "
      f"peak_rss_growth={(r1.ru_maxrss - r0.ru_maxrss) / 1024:.0f}MB")
"""

for method in ("vgfm", "otcfm"):
    p = subprocess.run([sys.executable, "-c", CHILD, method], capture_output=True, text=True)
    print([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")] or p.stderr[-2000:], flush=True)
