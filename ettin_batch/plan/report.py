"""The plan as a terminal table, written from the same dict as --json so the two never disagree."""

from __future__ import annotations

import textwrap

WIDTH = 110  # columns of the table


def duration(seconds: float) -> str:
    """45.2 s, 3 min 12 s, 2 h 05 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_table(p: dict) -> str:
    """Every section of the plan, one aligned line per figure."""
    lines = [f"ettin-batch plan: {p['model']['model_id']}, max_length {p['model']['max_length']}"]
    lines += _input(p["input"])
    lines += _measured(p["measured"])
    lines += _forecast("forecast", p["forecast"], p["model"]["job_dtype"])
    if p["reuse"]:
        lines += _reuse(p["reuse"])
    if p["fidelity"]:
        lines += _fidelity(p["fidelity"])
    lines += [textwrap.fill(w, WIDTH, initial_indent="warning: ", subsequent_indent="  ") for w in p["warnings"]]
    return "\n".join(lines)


def _row(label: str, text: str) -> str:
    """`label` then `text`, long text wrapped under itself."""
    return "\n".join(textwrap.wrap(text, WIDTH, initial_indent=f"  {label:<15}", subsequent_indent=" " * 17)) \
        or f"  {label}"


def _input(i: dict) -> list[str]:
    s, t = i["sample"], i["tokens_per_pair"]
    where = ("the whole input" if s["whole_input"] else
             f"{s['row_groups_read']} row groups in {s['files_read']} of the files, seed {s['seed']}")
    return ["", "input (footers and a sample)",
            _row("files", f"{i['files']:,}"),
            _row("pairs", f"{i['rows']:,}"),
            _row("queries", f"{i['queries']:,} ({'estimated' if i['queries_estimated'] else 'counted'})"),
            _row("sample", f"{s['pairs']:,} pairs from {where}"),
            _row("tokens/pair", f"median {t['median']:.0f}, p95 {t['p95']:.0f}, mean {t['mean']:.1f}; "
                                f"{t['truncated_share']:.1%} truncated at {t['max_length']}")]


def _measured(m: dict) -> list[str]:
    c, r, host = m["cpu_stage"], m["model"], m["machine"]
    load = host["load_average_1m"]
    busy = f"load average {load:.1f}" if load is not None else "load average unknown"
    return ["", f"measured on this machine ({busy} on {host['cores']} cores)",
            _row("CPU stage", f"{c['pairs_per_s_per_core']:,.0f} pairs/s per core  [{c['device']}] "
                              "(fingerprints + tokenizer, the job's tokenize tasks)"),
            _row("model", f"{r['pairs_per_s']:,.1f} pairs/s  [{r['device']}, {r['dtype']}, {r['attention']} attention, "
                          f"{r['max_tokens_per_batch']:,} tokens/batch] (model only; load {r['load_s']:.1f} s)")]


def _forecast(title: str, f: dict, dtype: str) -> list[str]:
    c = f["cluster"]
    where = (f"{c['gpus']} GPU{'s' if c['gpus'] > 1 else ''} with {c['cpus_per_gpu']:g} CPUs each" if c["gpus"]
             else f"CPU scoring on {c['cores']} cores like this machine's ({c['actors']} actor"
                  f"{'s' if c['actors'] > 1 else ''} of {c['threads'] or c['cores']} threads)")
    lines = ["", f"{title}: {where}",
             _row("pairs scored", f"{f['pairs_to_score']:,} of {f['pairs']:,}"),
             _row("wall time", f"{duration(f['wall_s'])} (model {duration(f['model_s'])}, CPU stage "
                               f"{duration(f['cpu_s'])}: the {f['bottleneck']} decides)"),
             _row("start-up", f"+{duration(f['startup_s'])} (Ray's start, then the scoring actors' start and "
                              f"model load, ~{duration(f['actor_start_s'])}" + (
                                  f", {f['actor_starts']} times: the run scores its groups of files in "
                                  f"{f['actor_starts']} executions" if f["actor_starts"] > 1
                                  else "") + "; not in the wall time)")]
    if f["gpu_hours"] is not None:
        cost = "" if f["cost"] is None else f", cost {f['cost']:,.2f}"
        lines += [_row("GPU-hours", f"{f['gpu_hours']:,.2f}{cost} (start-up included)"),
                  _row("CPUs per GPU", f"{f['cpus_per_gpu_to_keep_model_busy']} keep the model busy")]
    elif dtype:
        lines.append(_row("dtype", dtype))
    if not f["trusted"]:
        lines.append(_row("NOT TRUSTED", f["why_untrusted"]))
    return lines


def _reuse(r: dict) -> list[str]:
    head = (f"{r['share']:.1%} of the sample's pairs were scored by {r['from']}"
            if r["usable"] else f"{r['from']} cannot be reused: {r['why_not']}")
    return ["", "reuse", _row("previous run", head)] + _forecast("incremental run", r["incremental"], "")[1:]


def _fidelity(checks: list[dict]) -> list[str]:
    lines = ["", f"fidelity: the engine against CrossEncoder.predict, {checks[0]['pairs']:,} sampled pairs"]
    for c in checks:
        r = c["rank_agreement"]
        lines.append(_row(c["dtype"], f"{c['result']}  max |diff| {c['max_abs_diff']:.1e}, RMS {c['rms_diff']:.1e}  "
                                      f"(bar: {c['bar']})"))
        lines.append(_row("", f"same order in {r['queries_same_order']:,} of {r['queries_compared']:,} queries; "
                              f"{r['candidate_pairs_swapped']:,} of {r['candidate_pairs_compared']:,} candidate pairs "
                              "swapped"))
    return lines
