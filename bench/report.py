"""``make bench``'s report: the figures per system and concurrency, the targets with
their verdicts, the Markdown tables and the plot (``bench/run.py`` measures)."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

SYSTEMS = {
    "raw": "og.Engine driven directly from Python",
    "server": "llmserver, streamed, keys + limits + accounting",
    "server-json": "llmserver, non-streamed, keys + limits + accounting",
    "no-keys": "llmserver, streamed, REQUIRE_API_KEY=false",
    "naive": "one og.Generator per request, one at a time, same HTTP front, streamed, keys on",
    "peer": "FastAPI + uvicorn, one og.Generator per request on a thread of its own, no keys, streamed "
            "(bench/peer_fastapi.py)",
}
PLOTTED = ["raw", "server", "no-keys", "naive", "peer"]

def _stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _median_ci95(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median (seeded: the same pairs, the same interval).
    The pairs' spread is wide (a cell of a second or two on a 2-core machine), so the
    median alone does not say how well it is known."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


FIGURES = ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95", "cpu_s_per_1000_tokens",
           "process_cpu_pct", "client_cpu_pct")


def summarize(cells: list[dict], concurrency: list[int]) -> dict:
    out: dict = {}
    for system in SYSTEMS:
        for clients in concurrency:
            mine = [c for c in cells if c["system"] == system and c["clients"] == clients]
            gen = [c for c in mine if not c["one_token"]]
            one = [c for c in mine if c["one_token"]]
            entry = {k: _stat([c[k] for c in gen]) for k in FIGURES}
            entry["one_token_requests_per_s"] = _stat([c["requests_per_s"] for c in one])
            entry["failed"] = sum(c["failed"] for c in mine)
            out[f"{system}@{clients}"] = entry
    return out


def ratio(cells: list[dict], a: str, b: str, clients: int, figure: str = "tokens_per_s", *,
          difference: bool = False) -> dict:
    """a/b (or a-b) of ``figure``, per round; median and min-max over the rounds."""
    values = []
    for rnd in sorted({c["round"] for c in cells}):
        pick = {c["system"]: c[figure] for c in cells
                if c["round"] == rnd and c["clients"] == clients and not c["one_token"]}
        if pick.get(a) is not None and pick.get(b) is not None:
            values.append(pick[a] - pick[b] if difference else pick[a] / pick[b])
    return _stat(values) or {"median": float("nan"), "min": float("nan"), "max": float("nan")}


def per_round(cells: list[dict], system: str, clients: int, figure: str, *, one_token: bool = False) -> dict:
    """``figure`` of one system's cells at ``clients``, per round; median and min-max."""
    values = [c[figure] for c in cells if c["system"] == system and c["clients"] == clients
              and c["one_token"] == one_token]
    return _stat(values) or {"median": float("nan"), "min": float("nan"), "max": float("nan")}


# Throughput targets of a fast model (the demo model: an engine step of well under a
# millisecond), where the server's own time per token and per request shows.
FAST_RAW_RATIO = 0.85
FAST_ONE_TOKEN_REQUESTS_PER_S = 600
# The benchmark model's 8-stream ratio is judged in its worst round, not only the median:
# a batch that failed to gather shows in one round, and the median hides it.
EVERY_ROUND_RAW_RATIO = 0.95


def targets(models: dict, batch_size: int) -> list[dict]:
    """The issue's targets. Throughput and latency ratios against raw and naive are judged
    on the benchmark model (realistic compute per token); the cost of keys and accounting
    on the demo model; llmserver against the peer on both. The same ratios on the other
    model are printed for information. The every-round ratio belongs to the benchmark
    model and the fast-model targets to the demo model alone."""
    out = []

    def add(label, model, value, passed, unit="x"):
        if value["median"] != value["median"]:  # NaN: a cell it needs was not measured
            passed = None
        out.append({"target": label, "model": model, "value": value, "pass": passed, "unit": unit})

    for name, result in models.items():
        cells = result["cells"]
        judged, fast = name == "bench", name == "demo"
        r1 = ratio(cells, "server", "raw", 1)
        add("single stream: server tokens/s >= 0.97 x raw engine", name, r1, r1["median"] >= 0.97 if judged else None)
        r8 = ratio(cells, "server", "raw", 8)
        batch = result["server_batch_limit"] or 0
        # The issue asks for this "at batch >= 8"; the engine is configured for 16 but its CPU
        # scheduler serves `batch` sequences a step (4 on onnxruntime-genai 0.18), raw as served.
        add(f"8 streams: server >= 0.90 x raw engine (batch {batch_size} configured, {batch} served per step)", name,
            r8, r8["median"] >= 0.90 if judged else None)
        n8 = ratio(cells, "server", "naive", 8)
        add("8 streams: server >= 1.5 x naive baseline", name, n8, n8["median"] >= 1.5 if judged else None)
        t1 = ratio(cells, "server", "raw", 1, "ttft_ms_p50", difference=True)
        add("TTFT p50 at 1 stream: server - raw <= 10 ms", name, t1, t1["median"] <= 10 if judged else None, "ms")
        k8 = _stat(result.get("key_pairs") or []) or ratio(cells, "server", "no-keys", 8)
        if len(result.get("key_pairs") or []) >= 5:
            k8["ci95"] = _median_ci95(result["key_pairs"])
        pairs = f"{len(result['key_pairs'])} back-to-back pairs" if result.get("key_pairs") else "rounds"
        add(f"8 streams: keys + limits + accounting cost <= 5% (server >= 0.95 x no-keys; over {pairs})", name, k8,
            k8["median"] >= 0.95 if fast else None)
        if judged:
            add(f"8 streams: server >= {EVERY_ROUND_RAW_RATIO} x raw engine in every round (judged on the min)", name,
                r8, r8["min"] >= EVERY_ROUND_RAW_RATIO)
        if fast:
            for clients, r in ((1, r1), (8, r8)):
                add(f"fast model, {clients} stream{'s' if clients > 1 else ''}: server >= {FAST_RAW_RATIO} x raw engine",
                    name, r, r["median"] >= FAST_RAW_RATIO)
            one = per_round(cells, "server", 8, "requests_per_s", one_token=True)
            add(f"fast model: server (keys on) >= {FAST_ONE_TOKEN_REQUESTS_PER_S} 1-token requests/s at 8 clients",
                name, one, one["median"] >= FAST_ONE_TOKEN_REQUESTS_PER_S, "req/s")
        for clients in sorted({c["clients"] for c in cells}):
            p = ratio(cells, "server", "peer", clients)
            add(f"{clients} stream{'s' if clients > 1 else ''}: server (keys on) tokens/s >= peer's", name, p,
                p["median"] >= 1.0)
    return out


UNITS = {"ms": "{:.1f} ms", "req/s": "{:.0f} req/s", "x": "{:.3f}"}


def _fmt(stat: dict | None, spec: str = "{:.0f}") -> str:
    if stat is None:
        return "–"
    ci = f"; 95% CI of the median {spec.format(stat['ci95'][0])}–{spec.format(stat['ci95'][1])}" if "ci95" in stat else ""
    return f"{spec.format(stat['median'])} ({spec.format(stat['min'])}–{spec.format(stat['max'])}{ci})"


def markdown(report: dict) -> str:
    lines = [f"# `make bench`, {report['date']}", "",
             f"Machine: {report['machine']['cpu_count']} cores ({report['machine']['cpu_model']}), "
             f"Python {report['machine']['python']}, onnxruntime-genai "
             f"{report['machine']['packages'].get('onnxruntime-genai')}, commit {report['machine']['git_commit'][:10]}"
             f"{' (dirty)' if report['machine']['git_dirty'] else ''}. Engine batch size {report['batch_size']}. "
             f"Interleaved rounds: {_rounds(report)}; each figure is the median (min–max) over the rounds. "
             f"Run took {report['elapsed_s'] / 60:.1f} min.", "", "Systems:", ""]
    lines += [f"- **{k}**: {v}" for k, v in SYSTEMS.items()]
    lines += ["", "## Targets", "", "| target | model | measured (median, min–max) | verdict |",
              "|---|---|---|---|"]
    for t in report["targets"]:
        v = t["value"]
        spec = UNITS[t["unit"]]
        verdict = "info" if t["pass"] is None else ("**PASS**" if t["pass"] else "**FAIL**")
        lines.append(f"| {t['target']} | {t['model']} | {_fmt(v, spec)} | {verdict} |")
    lines += _side_by_side(report)
    for name, result in report["models"].items():
        s = result["summary"]
        lines += ["", f"## {name} model (`{result['path']}`): \"{result['prompt']}\", max_tokens {result['max_tokens']}",
                  "", f"Cells of ~{result['tokens_per_cell']} output tokens and {result['one_token_requests']} 1-token "
                  f"requests ({result['cell_scale']:.2f} x full size, to keep the run within its time budget; at least "
                  f"one request per client).", "", "| clients | system | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | "
                  "1-token req/s | CPU s / 1000 tok | peak RSS MB |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for clients in report["concurrency"]:
            for system in SYSTEMS:
                e = s[f"{system}@{clients}"]
                failed = f" ({e['failed']} failed)" if e["failed"] else ""
                lines.append(
                    f"| {clients} | {system}{failed} | {_fmt(e['tokens_per_s'])} | {_fmt(e['ttft_ms_p50'], '{:.1f}')} "
                    f"| {_fmt(e['ttft_ms_p95'], '{:.1f}')} | {_fmt(e['itl_ms_p50'], '{:.2f}')} "
                    f"| {_fmt(e['itl_ms_p95'], '{:.2f}')} | {_fmt(e['one_token_requests_per_s'], '{:.1f}')} "
                    f"| {_fmt(e['cpu_s_per_1000_tokens'], '{:.2f}')} | {result['peak_rss_mb'][system]:.0f} |")
    lines += ["", "TTFT: request sent → first token (raw: begin_turn → first token event). ITL: per request, "
              "(end of the turn − first token) / (tokens − 1). server-json has no TTFT. CPU s / 1000 tok: CPU time "
              "of the serving process (all threads; the HTTP client excluded). Peak RSS: the process's VmHWM "
              "(server and server-json are one process). The HTTP client runs on the same cores; its CPU share "
              "is in the JSON report."]
    return "\n".join(lines) + "\n"


def _side_by_side(report: dict) -> list[str]:
    """Per model, tokens/s (streamed) and 1-token requests/s of each system, one column
    each, and the server's ratios to raw and to the peer: the medians of the rounds."""
    shown = ["raw", "server", "no-keys", "naive", "peer"]
    lines = ["", "## Side by side (medians of the rounds; ratios of the medians)", "",
             "| model | clients | " + " | ".join(f"{s} tok/s" for s in shown) + " | server / raw | server / peer | "
             + " | ".join(f"{s} 1-token req/s" for s in ("raw", "server", "peer")) + " |",
             "|---|---:|" + "---:|" * (len(shown) + 5)]
    for name, result in report["models"].items():
        s = result["summary"]
        for clients in report["concurrency"]:
            def median(system, figure="tokens_per_s"):
                stat = s[f"{system}@{clients}"][figure]
                return stat["median"] if stat else float("nan")
            lines.append(
                f"| {name} | {clients} | " + " | ".join(f"{median(x):.0f}" for x in shown)
                + f" | {median('server') / median('raw'):.3f} | {median('server') / median('peer'):.3f} | "
                + " | ".join(f"{median(x, 'one_token_requests_per_s'):.1f}" for x in ("raw", "server", "peer")) + " |")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    xs = report["concurrency"]
    for col, name in enumerate(names):
        s = report["models"][name]["summary"]
        for row, (figure, label) in enumerate((("tokens_per_s", "output tokens/s"), ("ttft_ms_p50", "TTFT p50 (ms)"))):
            ax = axes[row][col]
            for system in PLOTTED:
                ys = [(s[f"{system}@{c}"][figure] or {}).get("median") for c in xs]
                ax.plot(xs, ys, marker="o", label=system)
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(label)
            ax.set_title(f"{name} model: {label}")
            if figure == "ttft_ms_p50":
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle(f"llmserver make bench, {report['date']}, {report['machine']['cpu_count']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _rounds(report: dict) -> str:
    return ", ".join(f"{name} model {result['rounds']}" for name, result in report["models"].items())


def print_targets(report: dict) -> None:
    print(f"\nTargets (median over the rounds ({_rounds(report)}) or the pairs named, min–max in brackets):")
    for t in report["targets"]:
        v = t["value"]
        spec = dict(UNITS, ms="{:+.1f} ms")[t["unit"]]
        verdict = "info" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"  [{verdict:4s}] {t['model']:5s} {t['target']}: {_fmt(v, spec)}")

