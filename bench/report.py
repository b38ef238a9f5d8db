"""The benchmark's outputs: a console line per scenario, a Markdown table, a PNG chart, and a
summary of py-spy's collapsed stacks."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any


def _met(value: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a at this size"}[value]


def console_line(scenario: Any, result: dict[str, Any]) -> str:
    ratio = f"{result['ratio']:6.1%} of {scenario.ceiling}" if "ratio" in result else ""
    verdict = f"  [{_met(result.get('met'))}: {result['target']}]" if scenario.has_target else ""
    return (f"{scenario.name:20s} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.2f} ms  "
            f"p99 {result['p99_ms']:7.2f} ms  errors {result['errors']:<4d} {ratio}{verdict}{_cpu(result)}")


def _cpu(result: dict[str, Any]) -> str:
    spent = result.get("cpu_ms_per_request")
    return ("  CPU ms/request " + ", ".join(f"{name} {ms:.3f}" for name, ms in spent.items())) if spent else ""


def markdown(document: dict[str, Any]) -> str:
    s = document["settings"]
    lines = [
        f"# Benchmark {document['name']}",
        "",
        f"{s['rows']:,} incidents; wrk {s['threads']} threads, {s['connections']} connections; "
        f"{s['warmup']:g} s warm-up then the median of {s['runs']} runs of {s['duration']:g} s; "
        f"2 gevent workers; {document['machine']['cpus']} CPUs shared by wrk, gunicorn and PostgreSQL. "
        f"Commit {document['commit']}, {document['started_at']}.",
        "",
        _ratio_basis(s),
        "",
        "| scenario | req/s | p50 ms | p99 ms | errors | its ceiling req/s | vs ceiling | target | "
        "| CPU ms/request: workers / PostgreSQL | worker RSS MiB (before → after) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for row in document["scenarios"]:
        if "skipped" in row:
            lines.append(f"| {row['description']} | – | – | – | – | – | – | skipped: {row['skipped']} | | | |")
            continue
        ratio = f"{row['ratio']:.1%} of {row['ceiling'].removeprefix('ceiling_')}" if "ratio" in row else ""
        its_ceiling = f"{row['ceiling_rps']:,.0f}" if row.get("ceiling_rps") else ""
        targets = ("min_ratio", "max_p50_ms", "max_p99_ms", "min_rps")
        target = row.get("target", "") if any(row.get(t) is not None for t in targets) else ""
        met = _met(row.get("met")) if target else ("**errors**" if row["errors"] else "")
        rss = f"{row['rss_mib_before']} → {row['rss_mib_after']}"
        spent = row.get("cpu_ms_per_request") or {}
        cpu = " / ".join(f"{spent[name]:.2f}" for name in ("workers", "postgres") if name in spent)
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| {row['description']}{note} | {row['rps']:,.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['errors']} | {its_ceiling} | {ratio} | {target} | {met} | {cpu} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def _ratio_basis(settings: dict[str, Any]) -> str:
    if settings.get("ceiling_duration"):
        return (f"*vs ceiling* is *req/s* over *its ceiling req/s*: the ceiling is measured again "
                f"({settings['ceiling_duration']:g} s) right before each measured run of a scenario, and its "
                "ceiling is the median of those measurements. The ceiling rows show their first measurement.")
    return ("*vs ceiling* is *req/s* over *its ceiling req/s*: the ceiling scenario's median, measured once at "
            "the start.")


def chart(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = [r for r in document["scenarios"] if "skipped" not in r]
    names = [r["name"] for r in rows]
    colours = ["#7f7f7f" if r["app"] == "ceiling" else ("#d62728" if r.get("met") is False else "#1f77b4")
               for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.42 * len(rows) + 1.6), sharey=True)
    positions = range(len(rows))
    # Behind each scenario, the ceiling it is compared with, as an outline: its ratio is the one bar
    # over the other, so the % printed beside them is what they show.
    left.barh(positions, [r.get("ceiling_rps") or 0 for r in rows], fill=False, edgecolor="#7f7f7f",
              linewidth=0.8)
    left.barh(positions, [r["rps"] for r in rows], color=colours, height=0.55)
    left.set_xlabel("requests/s (median)")
    left.set_yticks(list(positions), names)
    left.invert_yaxis()
    for position, row in zip(positions, rows, strict=False):
        if "ratio" in row:
            end = max(row["rps"], row.get("ceiling_rps") or 0)
            left.annotate(f" {row['ratio']:.1%}", (end, position), va="center", fontsize=8)
    right.barh(positions, [r["p99_ms"] for r in rows], color=colours)
    right.set_xscale("log")
    # Plain milliseconds at round values: matplotlib's labels of a log axis spanning less than two
    # decades (3×10¹, 4×10¹ …) ran into each other.
    low, high = right.get_xlim()
    right.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if low <= t <= high])
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    right.xaxis.set_minor_formatter(NullFormatter())
    right.axvline(100, color="#7f7f7f", linewidth=0.8, linestyle="--")  # the p99 targets' 100 ms
    right.set_xlabel("p99 latency, ms (log scale; dashed: 100 ms)")
    s = document["settings"]
    fig.suptitle(f"{s['rows']:,} incidents, {s['connections']} connections, 2 gevent workers — grey: the ceiling; "
                 "outline: the ceiling measured beside that scenario; % = bar / outline; red: target missed",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_summary(paths: list[Path], top: int = 25) -> str:
    """Own time and total time per function, from py-spy's collapsed (`--format raw`) stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    out = [f"{samples} samples", "", "own time:"]
    out += [f"  {n / samples:6.1%}  {frame}" for frame, n in own.most_common(top)]
    out += ["", "total time:"]
    out += [f"  {n / samples:6.1%}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(profile_summary([Path(p) for p in sys.argv[1:]]))
