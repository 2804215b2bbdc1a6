"""The results as text: the table printed on the terminal and docs/BENCHMARKS.md.

Owns the layout of the report: the machine's description, the results table (figure,
baseline, ratio, target, pass or MISS, worst IOLoop stall), each scenario's details, and
for each miss its profile (from py-spy) and the written analysis in bench/findings.md, and
what each change bought (bench/changes.md, kept by hand).

Must never: measure anything; it only formats `Result`s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from bench.harness import BENCH
from bench.scenarios import Result

COLUMNS = ("#", "scenario", "Calo Jobs", "baseline", "ratio", "target", "result", "worst IOLoop stall")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        cells = (r.number, r.name, r.figure, r.baseline or "—", r.ratio or "—", r.target,
                 "pass" if r.passed else "**MISS**", r.stall)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def findings(number: str) -> str:
    """The written analysis of scenario `number` ("3", or "2" for "2a") from bench/findings.md."""
    path = os.path.join(BENCH, "findings.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as file:
        sections = re.split(r"^## ", file.read(), flags=re.MULTILINE)
    wanted = (number, number.rstrip("ab"))
    for section in sections[1:]:
        title, _, body = section.partition("\n")
        if title.split()[0] in wanted:
            return body.strip()
    return ""


def _details(r: Result) -> list[str]:
    lines = [f"### {r.number}. {r.name}", "", f"- figure: {r.figure}; target: {r.target}; "
             f"**{'pass' if r.passed else 'MISS'}**"]
    lines += [f"- {detail}" for detail in r.details]
    if not r.passed:
        if r.profile:
            lines += ["", "Profile (py-spy, while the scenario ran once more):", "", "```"]
            lines += r.profile + ["```"]
        analysis = findings(r.number)
        if analysis:
            lines += ["", analysis]
    return lines + [""]


def document(results: Sequence[Result], machine: dict[str, str], command: str, seconds: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` in {seconds / 60:.1f} minutes; rerun it to measure your machine. "
        "Every figure is the median of the runs shown in its details; a ratio compares the "
        "median of run-by-run ratios to the bare Tornado baseline (`bench/baseline_server.py`) "
        "measured in the same run. See `bench/README.md` for what each scenario does.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", "## Results", "", table(results), "",
              "The stall column is the worst extra answer time of `GET /jobs/<missing>` sent every "
              "10 ms by `bench/probe.py` during the scenario (n/a where wrk saturates the server: "
              "there the p99 latency is the figure). Its target, 50 ms, is scenario 7's.", ""]
    changes = os.path.join(BENCH, "changes.md")
    if os.path.exists(changes):  # kept by hand: the figures each change moved
        with open(changes, encoding="utf-8") as file:
            lines += ["## What each change bought", "", file.read().strip(), ""]
    lines += ["## Details", ""]
    for r in results:
        lines += _details(r)
    return "\n".join(lines).rstrip() + "\n"
