"""The estimate as aligned plain-text tables (units in the headers, a total line)."""

from __future__ import annotations

from collections import defaultdict

from ftdrift.estimate.plan import Estimate

GIB = 2**30


def table(headers: list[str], rows: list[list], total: list | None = None) -> str:
    """Aligned columns: text left, numbers right; a rule line above `total`."""
    cells = [[_cell(v) for v in row] for row in rows + ([total] if total else [])]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows + ([total] if total else []) if row[i] not in ("", None))
               for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells[:len(rows)]]
    if total:
        out += [line(["-" * w for w in widths]), line(cells[-1])]
    return "\n".join(out)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.3f}"
    return str(value)


def _h(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.3g}"


def _usd(value):
    return None if value is None else round(value, 2)


def render(est: Estimate) -> str:
    """The whole report (see README 'What the study will cost')."""
    p, prices = est.profile, est.prices
    out = [f"ftdrift estimate: config {est.config_name} | profile {p.name} | price table {prices['path']} "
           f"(as of {prices['as_of']}, {prices.get('region', '?')})",
           f"model: N = {est.shape.params / 1e9:.3f} B parameters ({est.shape.source}), {est.shape.layers} blocks x "
           f"hidden {est.shape.hidden}; precision {est.precision}",
           f"tokenizer: {est.tokenizer}"]
    out += [f"throughput [{name}]: {source}" for name, source in est.throughput_sources.items()]
    out += [f"concurrency: {note}" for note in p.notes]
    out += [f"note: {note}" for note in est.notes]
    out.append("upper bound: every run trains all its steps (no early stop); early stopping can only lower it. "
               "FLOPs per token: training as the method costs it (table Methods), 2N forward, on padded tokens.")

    if est.methods:
        out += ["", "Methods (per training token; the largest figures over the tasks)"]
        rows = [[m.name, m.description, m.adapted, m.adapter_params / 1e6,
                 100 * m.trainable_params / est.shape.stored_params, m.flops_over_n, m.flops_per_pass / 1e9, m.gpu_mem_gb] for m in est.methods]
        out.append(table(["method", "spec", "matrices", "adapter M params", "trainable % of model", "FLOPs/token (x N)",
                          "GFLOPs/pass", "GPU GiB"], rows))
        out.append("  full fine-tuning 6N; an adapter 2N forward + 2N backward through the activations + 6 x its "
                   "trainable parameters (head included); DoRA adds its weight norm per adapted matrix and forward "
                   "pass (GFLOPs/pass) and, with lora_dropout, the base output again (ftdrift.study.resources). GPU GiB: "
                   "states (full: 16 B per parameter; adapter: frozen fp32 weights + 16 B per trainable one) + one "
                   "micro-batch of activations at the longest max_length, x 1.2")

    out += ["", "Tokens of the data held (sequences: examples; extractive QA: windows)"]
    rows = []
    for task, tl in est.lengths.items():
        rows.append([task, len(tl.train), sum(tl.train), sum(tl.train) / max(1, len(tl.train)),
                     max(tl.train, default=0),
                     len(tl.dev), len(tl.validation), len(tl.probe), tl.source])
    out.append(table(["task", "train seqs", "train tokens", "mean len", "max len", "dev seqs", "validation seqs",
                      "probe", "source"], rows))

    if est.runs:
        out += ["", "Fine-tuning per setting (mean over learning rates and seeds; one run = one job)"]
        groups = defaultdict(list)
        for r in est.runs:
            groups[(r.task, r.method, r.batch_size)].append(r)
        rows = []
        for (task, method, bs), rs in groups.items():
            n = len(rs)
            mean = lambda attr: sum(getattr(r, attr) for r in rs) / n
            rows.append([task, method, bs, n, round(mean("steps")), mean("padded_tokens") / 1e6,
                         100 * (1 - mean("real_tokens") / mean("padded_tokens")), round(mean("evaluations")),
                         round(mean("snapshots")), mean("train_s") / 3600, sum(r.seconds for r in rs) / n / 3600,
                         mean("disk_bytes") / GIB, mean("work_bytes") / GIB])
        out.append(table(["task", "method", "batch", "runs", "steps", "padded Mtok", "padding %", "evals", "snapshots",
                          "train h/run", "job h/run", "disk GiB/run", "work GiB/job"], rows))
        out.append("  disk: what a finished run keeps (model, snapshot store); work: its work folder at the peak while "
                   "the job runs (checkpoints, best weights, a second store), removed once the outputs are written")

        out += ["", "Split of fine-tuning time, relative to the training it interleaves (x training)"]
        configured, alt = next(iter(est.eval_subsets.values()), (None, None))
        rows = []
        for (task, method, bs), rs in groups.items():
            train = sum(r.train_s for r in rs)
            n_dev = len(est.lengths[task].dev)
            per_eval = min(configured or n_dev, n_dev)
            # issue 15's count: a training example = its method's FLOPs in forward passes (3 for full
            # fine-tuning, about 2 for an adapter), an evaluated example = 1
            by_examples = sum(r.evaluations * per_eval for r in rs) / sum(
                r.examples * r.forward_equivalents for r in rs)
            rows.append([task, method, bs, by_examples, sum(r.dev_eval_s for r in rs) / train,
                         sum(r.dev_eval_alt_s for r in rs) / train, sum(r.final_eval_s for r in rs) / train,
                         sum(r.snapshot_s for r in rs) / train, sum(r.snapshot_fp32_s for r in rs) / train,
                         sum(r.checkpoint_s for r in rs) / train, sum(r.best_s for r in rs) / train])
        now = f"dev eval (eval_subset={configured})" if configured else "dev eval (whole dev)"
        other = f"dev eval (eval_subset={alt})" if alt else "dev eval (whole dev)"
        out.append(table(["task", "method", "batch", "dev eval by examples", now, other, "final eval", "snapshots",
                          "snapshots fp32", "checkpoint writes", "best-weight writes"], rows))
        out.append("  dev eval by examples: issue 15's count (evaluated examples / (k x trained examples), k = a training "
                   "token's FLOPs in forward passes: 3 full fine-tuning, ~2 an adapter); "
                   "the other columns are time on the device: padded tokens (dev and prediction batches sorted by "
                   "length, training batches length-grouped), at least each pass's weight traffic. dev eval: periodic (every "
                   "training.eval_steps and at the end); final eval: whole dev + validation once; snapshots in the "
                   "training precision (fp32: what they would cost in fp32); writes at "
                   f"{prices['write_mib_per_s']} MiB/s, best weights at every evaluation (upper bound)")
        now_h = sum(r.dev_eval_s for r in est.runs) / 3600
        alt_h = sum(r.dev_eval_alt_s for r in est.runs) / 3600
        gpus = next((r.gpus_per_job for r in est.rules if r.rule == "finetune"), 1) or 1
        out.append(f"  the cure, training.eval_subset: periodic dev evaluation costs {_h(now_h * gpus)} device-h as "
                   f"configured ({'eval_subset=' + str(configured) if configured else 'whole dev'}) against "
                   f"{_h(alt_h * gpus)} device-h with {'eval_subset=' + str(alt) if alt else 'the whole dev split'}"
                   f" ({'saves' if alt_h > now_h else 'would save'} {_h(abs(alt_h - now_h) * gpus)} device-h)")

    fp32_extra = sum(r.fp32_extra_s for r in est.rules) / 3600
    gpu_rules = [r for r in est.rules if r.gpus_per_job]
    if fp32_extra and gpu_rules:
        out.append(f"  precision: snapshots and base stores run in {est.precision}; in fp32 (no TF32, PyTorch's "
                   f"default for float32 matmuls) they would take {_h(fp32_extra)} device-h more")

    out += ["", f"Per rule ({'GPU rules on spot VMs as the profile runs them' if p.spot_rules else 'no cloud prices'})"]
    rows, totals = [], [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    for r in est.rules:
        if not r.jobs:
            continue
        rows.append([r.rule, r.jobs, r.machine, r.gpu_hours, r.vm_hours, r.wall_hours, _usd(r.usd_spot),
                     _usd(r.usd_on_demand), r.disk_bytes / GIB])
        for i, v in enumerate([r.jobs, r.gpu_hours, r.vm_hours, r.wall_hours, r.usd_spot or 0, r.usd_on_demand or 0,
                               r.disk_bytes / GIB]):
            totals[i] += v
    priced = any(r.usd_on_demand is not None for r in est.rules)
    total = ["total", totals[0], "", totals[1], totals[2], totals[3], _usd(totals[4]) if priced else None,
             _usd(totals[5]) if priced else None, totals[6]]
    out.append(table(["rule", "jobs", "machine", "GPU-h", "VM-h", "wall h", "spot USD", "on-demand USD", "disk GiB"],
                     rows, total))
    out.append("  wall h: the rule's jobs alone at the profile's concurrency (longest first); the total adds the "
               "rules up (they overlap in practice, so it is an upper bound). Disk: finetune = each run's model and "
               "snapshot store + the work folders of the jobs running at once (checkpoints: (save_total_limit + 1) "
               "x 12 B per trainable parameter, best weights, a second store; each removed once its job's outputs "
               "are written); base_representations = base stores.")
    storage = prices.get("storage_usd_per_gib_month")
    if storage and priced:
        # the bucket keeps the outputs (models, stores); work folders live on the VMs' disks while jobs run
        kept = (sum(r.disk_bytes for r in est.runs)
                + sum(r.disk_bytes for r in est.rules if r.rule == "base_representations")) / GIB
        out.append(f"  the outputs kept in the bucket ({kept:,.0f} GiB: models and one copy of each store) cost about "
                   f"{kept * storage:,.0f} USD per month (at {storage} USD/GiB-month)")
    formulas = [f"  {r.rule}: {r.formula}" for r in est.rules if r.jobs and r.formula and r.gpus_per_job]
    if formulas:
        out += ["", "Formulas (per job, + fixed overhead of "
                f"{prices['job_overhead_minutes']['gpu' if p.machines else 'local']} min)"] + formulas

    out += ["", "Jobs Snakemake plans (snakemake -n)"]
    rows = [[rule, count] for rule, count in est.job_counts.items()]
    out.append(table(["rule", "jobs"], rows, ["total", sum(est.job_counts.values())]) if rows
               else "nothing to do: every target is up to date")
    return "\n".join(out)
