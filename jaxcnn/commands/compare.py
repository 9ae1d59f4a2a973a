"""`jaxcnn compare A B`: two runs (or runs of members) on the same seeds, compared seed by seed.

Members are paired by seed (and, when both runs swept the same values, by sweep value too); for
each metric the differences A - B over the paired seeds give the mean difference, its 95%
confidence interval (Student t), the paired t-test's two-sided p-value, and the number of seeds a
paired t-test would need to detect the observed mean difference (`stats.seeds_needed`: power 0.8,
level 0.05). A single run counts as one member with its seed. Reads only the runs' summary.json.
"""

from __future__ import annotations

import pathlib
from typing import Any

from jaxcnn.core import stats
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.summary import AGGREGATED
from jaxcnn.files.run_files import load_run

METRICS = tuple(key for key in AGGREGATED if key != "epochs_run")


def members_of(workdir: str | pathlib.Path) -> tuple[str, list[dict[str, Any]]]:
    """(name, members) of a finished run: its summary's `members`, or the single run as one member."""
    run = load_run(workdir)
    if not run.summary:
        raise JaxcnnError(f"'{workdir}' has no summary.json (an unfinished run); finish it first (resume it with "
                          "jaxcnn train --workdir)")
    if "members" in run.summary:
        return run.name, run.summary["members"]
    single = {key: run.summary.get(key) for key in METRICS if key in run.summary}
    single.update({f"test_{key}": run.summary.get("test_metrics", {}).get(key)
                   for key in ("top5_accuracy", "macro_f1", "expected_calibration_error")})
    return run.name, [{"member": 0, "seed": run.summary.get("seed"), "sweep": {}, **single}]


def group_key(sweep: dict[str, Any], paired_by_sweep: bool) -> str:
    return " ".join(f"{key.split('.')[-1]}={value:g}" for key, value in sweep.items()) if paired_by_sweep else ""


def pairs(a: list[dict[str, Any]], b: list[dict[str, Any]], names: tuple[str, str]) -> dict[str, list[tuple]]:
    """(member of A, member of B) pairs with the same seed, per sweep value when both swept the same
    keys; refused (one line) when nothing pairs or one side sweeps what the other does not."""
    keys_a, keys_b = (tuple(sorted(m[0]["sweep"])) for m in (a, b))
    by_sweep = keys_a == keys_b and bool(keys_a)
    for name, side, keys in ((names[0], a, keys_a), (names[1], b, keys_b)):
        values = {group_key(m["sweep"], True) for m in side}
        if not by_sweep and len(values) > 1:
            raise JaxcnnError(f"{name} swept {', '.join(keys)} ({len(values)} values) and the other run did not "
                              "sweep the same keys; compare runs of one configuration each, or two sweeps of the same keys")
    index = {(group_key(m["sweep"], by_sweep), m["seed"]): m for m in b}
    grouped: dict[str, list[tuple]] = {}
    for m in a:
        key = (group_key(m["sweep"], by_sweep), m["seed"])
        if key in index:
            grouped.setdefault(key[0], []).append((m, index[key]))
    if not grouped:
        raise JaxcnnError(f"{names[0]} (seeds {sorted({m['seed'] for m in a})}) and {names[1]} (seeds "
                          f"{sorted({m['seed'] for m in b})}) share no seed; train both on the same seeds")
    return grouped


def compare(workdir_a: str | pathlib.Path, workdir_b: str | pathlib.Path) -> dict[str, Any]:
    """The paired comparison of two runs: per sweep value, per metric, `stats.paired` of A - B."""
    (name_a, a), (name_b, b) = members_of(workdir_a), members_of(workdir_b)
    groups = []
    for label, matched in pairs(a, b, (name_a, name_b)).items():
        metrics = {}
        for key in METRICS:
            values = [(x.get(key), y.get(key)) for x, y in matched]
            values = [(x, y) for x, y in values if x is not None and y is not None]
            if values:
                metrics[key] = {"a_mean": stats.describe([x for x, _ in values])["mean"],
                                "b_mean": stats.describe([y for _, y in values])["mean"],
                                **stats.paired([x for x, _ in values], [y for _, y in values])}
        groups.append({"sweep": label, "seeds": [x["seed"] for x, _ in matched], "metrics": metrics})
    return {"a": name_a, "b": name_b, "method": "paired t-test over seeds; seeds_needed: power 0.8 at level 0.05",
            "groups": groups}


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) and (abs(value) < 1e-3 and value) else (
        f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as text: per sweep value a table, one row per metric."""
    lines = [f"A = {result['a']}, B = {result['b']}; differences A - B, paired by seed"]
    for group in result["groups"]:
        title = f"{group['sweep']}: " if group["sweep"] else ""
        lines += ["", f"{title}{len(group['seeds'])} paired seeds ({', '.join(map(str, group['seeds']))})",
                  f"{'metric':<32} {'A':>8} {'B':>8} {'A - B':>9} {'95% CI':>21} {'p':>8} {'seeds needed':>12}"]
        for key, m in group["metrics"].items():
            ci = "–" if m["ci95"] is None else f"[{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]"
            needed = "–" if m["seeds_needed"] is None else str(m["seeds_needed"])
            p = "–" if m["p_value"] is None else f"{m['p_value']:.3g}"
            lines.append(f"{key:<32} {_cell(m['a_mean']):>8} {_cell(m['b_mean']):>8} {m['mean']:>+9.4f} {ci:>21} "
                         f"{p:>8} {needed:>12}")
    return "\n".join(lines)

