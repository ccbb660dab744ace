"""Draws the timeline of a chaos run: operations per node over time (ok, failed, unknown),
fault periods shaded, and the operations a checker flagged marked in red.

    python timeline.py DIR   # reads DIR/history.jsonl and DIR/summary.json, writes DIR/timeline.png
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ok": "#2b8a3e", "fail": "#e67700", "info": "#868e96"}


def main(out: Path) -> None:
    events = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line]
    summary = json.loads((out / "summary.json").read_text())
    nodes = summary["nodes"]
    invoked = {}
    points = {k: ([], []) for k in COLORS}
    faults, open_faults = [], {}
    for e in events:
        if e["process"] == "nemesis":
            if e["type"] == "invoke":
                open_faults[e["f"]] = (e["time_ms"], e.get("node"))
            elif e["f"] in open_faults:
                start, node = open_faults.pop(e["f"])
                faults.append((start, e["time_ms"], e["f"], node))
            continue
        if e["type"] == "invoke":
            invoked[e["process"]] = e
        elif e["process"] in invoked and e.get("node"):
            start = invoked.pop(e["process"])
            xs, ys = points[e["type"]]
            xs.append(start["time_ms"] / 1e3)
            ys.append(e["node"])
    flagged = set()
    for report in summary["reports"]:
        for key in report["linearizability"]["violations"]:
            if key["at_index"] is not None:
                flagged.add(key["at_index"])
        for lost in report["durability"]["lost"]:
            flagged.add(lost["ack_index"])
        for accepted in report["revocation"]["accepted_after_bound"]:
            flagged.add(accepted["invoke_index"])
    by_index = {e["index"]: e for e in events}
    width = max(10.0, min(60.0, (events[-1]["time_ms"] / 1e3) / 20.0)) if events else 10.0
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.6 * nodes))
    for start, end, name, node in faults:
        ax.axvspan(start / 1e3, end / 1e3, color="#ffa8a8", alpha=0.35, lw=0)
        ax.text(start / 1e3, nodes + 0.45, name + (f" n{node}" if node else ""), fontsize=6, rotation=30)
    for kind, (xs, ys) in points.items():
        ax.scatter(xs, ys, s=2, color=COLORS[kind], label=kind, marker="|")
    fx = [by_index[i]["time_ms"] / 1e3 for i in flagged if i in by_index]
    fy = [by_index[i].get("node") or 0.5 for i in flagged if i in by_index]
    if fx:
        ax.scatter(fx, fy, s=60, color="#e03131", marker="x", label="violation")
    ax.set_yticks(range(1, nodes + 1))
    ax.set_yticklabels([f"node {n}" for n in range(1, nodes + 1)])
    ax.set_ylim(0.3, nodes + 1.2)
    ax.set_xlabel("seconds since the run started")
    ax.set_title(
        f"conifer-chaos: {summary['schedules']} schedules, seed {summary['seed']}, "
        f"{summary['violations']} violation(s); shaded = fault held",
        pad=48,
    )
    ax.legend(loc="lower right", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
