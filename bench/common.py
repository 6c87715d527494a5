"""Shared helpers of the benchmark parts: timing, statistics, machine info, fresh-process runs, tables.

Every part runs in its own subprocess (``run_all.py --part NAME``) so that its peak resident
memory is its own and one part's allocator or thread pools never colour the next one.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def crop_parser(doc: str):
    """The command line of the tight-field comparisons: a bank, the weights, dev or held-out cases, the
    ``anatomy_holdout`` settings (the 150 mm CTA crop unless told) and the rows file to write."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--weights", default="bundle/models/model.pt")
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--settings", nargs="+", default=["cta_crop"])
    ap.add_argument("--out", required=True)
    return ap


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(threads: int) -> int:
    """Pin torch's intra-op pool (and OpenMP's, for libraries started later) to ``threads``."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def profile_call(fn: Callable[[], object], path: Path, title: str, restrict: str = "priorsam", top: int = 45) -> float:
    """Run ``fn`` once under cProfile; write to ``path`` the functions matching ``restrict`` by cumulative
    time and the ``top`` functions of any module by own time, under ``title``. Returns the wall seconds."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    wall = time.perf_counter() - t
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("cumulative").print_stats(restrict, top)
    st.sort_stats("tottime").print_stats(top)
    path.write_text(f"# {title}\n# {wall:.2f} s wall under the profiler\n{buf.getvalue()}")
    return wall


def stats(xs: Sequence[float]) -> dict:
    """Median, min, max and count of a list of seconds (the table shows the median)."""
    a = np.asarray(list(xs), dtype=float)
    if a.size == 0:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0, "runs": []}
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": int(a.size),
            "runs": [float(x) for x in a]}


def machine_info(threads: int) -> dict:
    """CPU model, cores, memory, library versions and the load average now (the machine is shared)."""
    def first(path: str, key: str, default: str = "?") -> str:
        try:
            for ln in Path(path).read_text().splitlines():
                if ln.startswith(key):
                    return ln.split(":", 1)[1].strip()
        except OSError:
            pass
        return default

    versions = {}
    for mod in ("torch", "onnxruntime", "openvino", "monai", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # a missing optional backend is reported, not fatal
            versions[mod] = f"unavailable ({type(exc).__name__})"
    flags = first("/proc/cpuinfo", "flags", "")
    mem_kb = first("/proc/meminfo", "MemTotal", "0 kB").split()[0]
    return {"cpu": first("/proc/cpuinfo", "model name", platform.processor()), "cores": os.cpu_count(),
            "avx2": "avx2" in flags.split(), "avx512f": "avx512f" in flags.split(),
            "vnni": any(f in flags.split() for f in ("avx512_vnni", "avx_vnni")),
            "mem_gb": round(int(mem_kb) / 2**20, 1), "threads_used": threads, "python": platform.python_version(),
            "os": platform.platform(), **versions, "loadavg_start": list(os.getloadavg()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_child(cmd: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, exit code, peak RSS (MB) of that child alone, output tails.

    ``os.wait4`` returns the child's own rusage, so its ``ru_maxrss`` is the peak of that
    process (the encoder thread pools included), not of the benchmark driver.
    """
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t
    # Parts report their own peak RSS in their JSON; this runner keeps the wall time and output.
    return {"wall_s": wall, "rc": proc.returncode, "timed_out": timed_out, "stdout": out, "stderr": err[-4000:]}


# Linux carries a process's peak RSS across fork and exec, so a child spawned straight from a big
# parent (pytest, a bench driver holding a model) would report the parent's peak as its own. A tiny
# launcher forks the command from its own ~10 MB image and reports only that grandchild's rusage.
_RSS_LAUNCHER = """
import json, os, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime}, f)
"""


def run_child_rss(cmd: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Like :func:`run_child` but also measures the child's own peak RSS and CPU seconds (for CLI runs)."""
    import signal
    import tempfile

    with tempfile.TemporaryDirectory(prefix="priorsam-rss-") as tmp:
        out = os.path.join(tmp, "rusage.json")
        t = time.perf_counter()
        # Own session, so a timeout kills the launcher and the command together.
        proc = subprocess.Popen([sys.executable, "-c", _RSS_LAUNCHER, out, *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=REPO,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        wall = time.perf_counter() - t
        err = err.decode(errors="replace") if err else ""
        if os.path.exists(out):
            with open(out) as f:
                ru = json.load(f)
            rc, peak, cpu = ru["rc"], ru["maxrss_kb"] / 1024.0, ru["cpu_s"]
        else:  # killed before the command ended: nothing trustworthy to report
            rc, peak, cpu = (proc.returncode if proc.returncode is not None else -9), float("nan"), float("nan")
    return {"wall_s": wall, "rc": rc, "peak_rss_mb": peak, "cpu_s": cpu, "stderr": err[-3000:]}


def last_json(text: str) -> dict:
    """The last line of a part's stdout is its JSON result."""
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise ValueError("no JSON result on stdout")
    return json.loads(lines[-1])


def fmt_s(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_stats(s: dict | None, digits: int = 2) -> str:
    """``median (min–max, n=k)``; the range shows how much the shared machine moved the numbers."""
    if not s or not s.get("n"):
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f}, n={s['n']})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are str()-ed, pipes escaped."""
    esc = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def python() -> str:
    return sys.executable


def write_verdict(out: str | Path, payload: dict, text: str) -> None:
    """A rule-applying script's results: ``OUT.json`` (``payload``) and ``OUT.md`` (``text``), also printed."""
    out = Path(out)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def bank_check_main(doc: str, check: Callable[..., list], table: Callable[[list, list], str], argv=None) -> int:
    """The command line of a check over pseudo-patient volumes: ``--bank --cases --settings [--options JSON]
    --out OUT``; runs ``check(bank, cases, settings, options)`` and writes ``OUT.json`` (rows) and ``OUT.md``
    (``table(rows, settings)``)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--settings", nargs="+", required=True)
    ap.add_argument("--options", default="{}", help="engine options as JSON (SegmentOptions fields)")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    options = json.loads(a.options)
    rows = check(a.bank, a.cases, a.settings, options)
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"bank": a.bank, "options": options, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(f"Engine options {json.dumps(options)}; bank {a.bank}.\n\n"
                                      + table(rows, a.settings))
    print(table(rows, a.settings))
    return 0
