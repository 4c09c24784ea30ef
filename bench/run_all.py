"""Run every ftdrift benchmark and print one table (figures, baseline, ratio, goal).

    python bench/run_all.py [--data-dir DIR] [--only cka,workflow,padding,finetune,gpu] [--threads N]

Writes bench/out/results.json (machine, versions, load, every raw figure) and bench/out/table.md.
CPU benchmarks use the embedded all-MiniLM-L6-v2 and the GLUE files under --data-dir
($FTDRIFT_DATA_DIR, else ../shared/data); the GPU benchmark runs only where CUDA is available.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import _common

ORDER = ("cka", "workflow", "padding", "finetune", "gpu")


def _run(name: str, args) -> dict:
    if name == "cka":
        import cka

        return cka.run(blas_threads=args.threads)
    if name == "workflow":
        import workflow

        return workflow.run()
    if name == "padding":
        import padding

        return padding.run(args.data_dir, n_threads=args.threads)
    if name == "finetune":
        import finetune_throughput

        return finetune_throughput.run(args.data_dir, n_threads=args.threads)
    if name == "gpu":
        import gpu_mfu

        return gpu_mfu.run(precision="both")
    raise ValueError(name)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def rows(results: dict) -> list[list[str]]:
    out = []
    r = results.get("finetune")
    if r and "error" not in r:
        ft, c = r["ftdrift"], r["config"]
        out.append([
            "1", f"Fine-tuning throughput (SST-2, MiniLM, {c['steps']} steps x {c['micro_batch']}, fp32 CPU, "
                 f"{c['torch_threads']} thread)",
            f"{r['baseline_examples_per_s']:.2f} ex/s, {r['baseline_tokens_per_s']:.0f} tok/s (plain Trainer)",
            f"{ft['examples_per_s']:.2f} ex/s, {ft['tokens_per_s']:.0f} tok/s",
            f"{r['throughput_ratio']:.2f}x (median of {len(r.get('throughput_ratios', [0]))} rounds: "
            + ", ".join(f"{x:.2f}" for x in r.get("throughput_ratios", [r["throughput_ratio"]]))
            + f"; median step {r['throughput_ratio_median_step']:.2f}x; "
            f"neighbouring baselines differ by up to {100 * r['baseline_spread']:.0f} %)",
            ">= 1.0x", _verdict(r["throughput_ratio"] >= 1.0)])
    r = results.get("padding")
    if r and "error" not in r:
        for task, goal in (("sst2", 3.0), ("rte", None)):
            if task not in r:
                continue
            t = r[task]
            out.append([
                "2", f"Padding, {dict(sst2='SST-2', rte='RTE')[task]} (mean {t['mean_length']:.0f} tok, "
                     f"bs {r['config']['micro_batch']})",
                f"{t['padded']['examples_per_s']:.2f} ex/s, {t['padded']['tokens_per_s']:.0f} tok/s (pad to 512)",
                f"{t['dynamic']['examples_per_s']:.2f} ex/s, {t['dynamic']['tokens_per_s']:.0f} tok/s "
                f"(dynamic + length-grouped)",
                f"{t['speedup']:.1f}x", f">= {goal:.0f}x" if goal else "(none)",
                _verdict(t["speedup"] >= goal if goal else None)])
    r = results.get("finetune")
    if r and "error" not in r:
        c = r["config"]
        out.append([
            "3", f"Snapshot overhead at the study's cadence ({c['probe_examples_study']} probe ex. every "
                 f"{c['study_snapshot_cadence_steps']} steps, bs {c['micro_batch']})",
            f"{r['train_s_per_cadence']:.1f} s per {c['study_snapshot_cadence_steps']} steps without",
            f"+{r['snapshot_s_study_probe']:.1f} s per snapshot",
            f"+{100 * r['snapshot_overhead_at_cadence']:.1f} % (set by P, C, B: see the formula below)",
            "(none: physics)", "-"])
        if "snapshot_over_bare_forward" in r:
            out.append([
                "3", f"Snapshot vs a bare no-grad forward over the same {c['probe_examples_measured']} probe ex. "
                     f"(batch {c['snapshot_batch']}, same autocast)",
                f"{min(r['ftdrift']['bare_forward_s']):.2f} s (model(**batch), no hidden states; best of "
                f"{len(r['ftdrift']['bare_forward_s'])})",
                f"{min(r['ftdrift']['snapshot_s']):.2f} s (extract + store append; best of "
                f"{len(r['ftdrift']['snapshot_s'])})",
                f"{r['snapshot_over_bare_forward']:.2f}x (means: {r['snapshot_over_bare_forward_mean']:.2f}x)",
                "<= 1.1x", _verdict(r["snapshot_over_bare_forward"] <= 1.1)])
    r = results.get("cka")
    if r and "error" not in r:
        s = r["shape"]
        out.append([
            "4", f"CKA, {s['layers']} layers x {s['snapshots']} snapshots, n={s['n']}, d={s['d']} "
                 f"({r['blas_threads']} BLAS thread)",
            f"{r['naive_s']:.2f} s (naive per-pair numpy)", f"{r['ftdrift_s']:.2f} s (cka_matrix)",
            f"{r['speedup']:.1f}x over naive, max abs diff {r['max_abs_diff']:.1e}", "<= 1e-6 of naive",
            _verdict(r["max_abs_diff"] <= 1e-6)])
        if "flop_bound_s" in r:
            out.append([
                "4", f"CKA against the float64 FLOP bound ({r['flops']['total'] / 1e9:.1f} GFLOP at "
                     f"{r['peak_gemm_gflops']:.1f} GFLOP/s, the best float64 GEMM here)",
                f"{r['flop_bound_s']:.2f} s (bound)", f"{r['ftdrift_s']:.2f} s ({r['achieved_gflops']:.1f} GFLOP/s)",
                f"{r['flop_bound_ratio']:.2f} of the bound ({r['flop_bound_s']:.2f} s)",
                ">= 0.8 of the float64 FLOP bound", _verdict(r["flop_bound_ratio"] >= 0.8)])
        if "sketch_float32" in r:
            k = r["sketch_float32"]
            out.append(["4*", "investigation: float32 products, float64 centring (not in the library)",
                        f"{r['naive_s']:.2f} s", f"{k['seconds']:.2f} s",
                        f"{k['speedup_vs_naive']:.1f}x, max abs diff {k['max_abs_diff']:.1e}", "", "-"])
    r = results.get("workflow")
    if r and "error" not in r:
        start = r["snakemake_startup_s"]
        fresh, uptodate = r["fresh_dry_run_s"] - start, r["uptodate_dry_run_s"] - start
        out.append(["5", f"Dry run of the study DAG, fresh ({r['outputs_in_dag']} outputs)",
                    f"{start:.1f} s (`snakemake --version`: start-up only)",
                    f"{r['fresh_dry_run_s']:.1f} s in all",
                    f"{fresh:.1f} s beyond start-up", "<= 5 s beyond start-up", _verdict(fresh <= 5)])
        out.append(["5", "Dry run of the study DAG, up to date ('Nothing to be done')", f"{start:.1f} s",
                    f"{r['uptodate_dry_run_s']:.1f} s in all"
                    + ("" if r["uptodate_nothing_to_do"] else " (NOT 'Nothing to be done')"),
                    f"{uptodate:.1f} s beyond start-up", "<= 5 s beyond start-up",
                    _verdict(uptodate <= 5 and r["uptodate_nothing_to_do"])])
    r = results.get("gpu")
    if r and "error" not in r:
        if "skipped" in r:
            out.append(["6", "GPU: 1.3B Llama shape, bf16, seq 512, SDPA", "-", "not run: no CUDA device",
                        "-", ">= 40 % MFU full; LoRA <= 0.7x", "-"])
        else:
            for run in r["runs"]:
                mfu = f", MFU {100 * run['mfu']:.0f} %" if "mfu" in run else ""
                out.append(["6", f"GPU {r['device']}: {run['method']} FT, {run['precision']}, "
                                 f"bs {run['micro_batch']} x {run['seq']}", "-",
                            f"{run['tokens_per_s']:.0f} tok/s, {run['step_s'] * 1000:.0f} ms/step{mfu}",
                            (f"LoRA/full step {r['lora_over_full_step_' + run['precision']]:.2f}x"
                             if run["method"] == "lora" else "-"),
                            ">= 40 % MFU" if run["method"] == "full" else "<= 0.7x",
                            _verdict(run.get("mfu", 0) >= 0.40) if run["method"] == "full" and "mfu" in run
                            else (_verdict(r["lora_over_full_step_" + run["precision"]] <= 0.7)
                                  if run["method"] == "lora" else "-")])
    for name, res in results.items():
        if isinstance(res, dict) and "error" in res:
            out.append(["!", f"{name}: FAILED", "-", res["error"].splitlines()[-1][:80], "-", "-", "NO"])
    return out


def notes(results: dict) -> list[str]:
    """Lines printed under the table: benchmark 3's share formula with its numbers, benchmark 4's bound."""
    out = []
    r = results.get("finetune")
    if r and "error" not in r and "snapshot_share_formula" in r:
        f = r["snapshot_share_formula"]
        out.append(f"Benchmark 3, a snapshot's share of training time: {f['formula']}; P probe examples, C cadence "
                   "(steps), B batch size, c_fwd / c_train the per-example cost of a no-grad forward over a "
                   "training step (~1/3 x probe/train length).")
        out.append(f"  SST-2 at the study's cadence: P={f['P']}, C={f['C']}; probe {f['probe_mean_tokens']:.1f} tok/ex, "
                   f"train {f['train_mean_tokens']:.1f} tok/ex -> c_fwd/c_train nominal "
                   f"{f['c_fwd_over_c_train_nominal']:.2f}, measured {f['c_fwd_over_c_train_measured']:.2f}")
        for b, v in f["by_batch"].items():
            out.append(f"  B={b}: share {100 * v['nominal']:.0f} % (nominal), {100 * v['measured']:.0f} % "
                       f"(measured), {100 * v['equal_lengths']:.0f} % at equal lengths (P / 3CB)")
    r = results.get("cka")
    if r and "error" not in r and r.get("time_by_step_s"):
        t = r["time_by_step_s"]
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total")
        out.append(f"Benchmark 4, cka_matrix's steps re-enacted (total {t['total']:.2f} s): {parts}")
    return out


def table(results: dict) -> str:
    header = ["#", "benchmark", "baseline", "ftdrift", "ratio", "goal", "met"]
    body = rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder with the original task files (default $FTDRIFT_DATA_DIR, ../shared/data)")
    p.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and BLAS threads for the CPU benchmarks (default 1, as the drift rule)")
    args = p.parse_args()
    selected = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(selected) - set(ORDER)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(ORDER)}")
    if any(n in selected for n in ("padding", "finetune")):
        _common.data_dir(args.data_dir)  # fail early, before the long benchmarks

    started = time.perf_counter()
    results: dict = {"machine": _common.machine()}
    timings = {}
    for name in ORDER:
        if name not in selected:
            continue
        print(f"[bench] {name} ... (load avg {_common.load()})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = _run(name, args)
        except Exception:  # a failing benchmark must not hide the others
            results[name] = {"error": traceback.format_exc()}
        timings[name] = time.perf_counter() - t0
        print(f"[bench] {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    results["machine"]["load_avg_at_end"] = _common.load()
    results["wall_s"] = {**timings, "total": time.perf_counter() - started}
    _common.write_json(_common.OUT / "results.json", results)
    text = table(results)
    (_common.OUT / "table.md").write_text(text + "\n")
    m = results["machine"]
    print(f"\nftdrift benchmarks -- {m['date']}, {m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, "
          f"transformers {m['transformers']}; load avg {m['load_avg_at_start']} -> {m['load_avg_at_end']}; "
          f"total {results['wall_s']['total']:.0f} s\n")
    print(text)
    extra = notes(results)
    if extra:
        print("\n" + "\n".join(extra))
        (_common.OUT / "table.md").write_text(text + "\n\n" + "\n".join(extra) + "\n")
    print(f"\nraw figures: {_common.OUT / 'results.json'}")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
