"""The cost model: FLOPs, seconds and bytes of each job, from token counts and a throughput.

Model FLOPs per token (Kaplan et al. 2020, "Scaling laws", sec. 2.1; PaLM's MFU convention):
2N for a forward pass, 6N for a full training step (forward + backward through activations and
weights), 4N for LoRA (the frozen matrices get no weight gradients; the adapters' own FLOPs are
negligible). N = the model's parameters without its token embeddings (a lookup, not a matmul) when
counted from the model, else config resources.model_shape.params_billion (embeddings included: ~5 %
high for Sheared-LLaMA-1.3B); the attention term 12·L·d·s (~4 % at s = 512 for a 1.3B model) is
left out. Padded tokens are counted: the model computes on padding too.
So a training example costs 3 forward passes (full) or 2 (LoRA), as issue 15 counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftdrift.estimate.hardware import Device

FLOPS_PER_TOKEN = {"full": 6, "lora": 4, "forward": 2}  # x N
BYTES = {"float16": 2, "float32": 4}
ADAMW_STATE_BYTES = 8  # two fp32 moments per trainable parameter
FP32_BYTES = 4  # master weights and saved models are float32 (the model is loaded in fp32, autocast for bf16)


@dataclass(frozen=True)
class ModelShape:
    params: float  # N of the FLOP model (see the module doc)
    hidden: int
    layers: int  # transformer blocks (stores hold layers + 1: the embeddings too)
    source: str
    total_params: float = 0.0  # every parameter, embeddings included: what checkpoints store (0 = params)

    @property
    def stored_params(self) -> float:
        return self.total_params or self.params


def events(steps: int, every: int, at_start: bool = False) -> int:
    """How often a step-cadence event happens in `steps` optimizer steps: at every multiple of
    `every` and once more at the end if `steps` is not one (the Trainer's evaluation and save,
    the snapshot callback), plus step 0 when `at_start` (snapshots)."""
    return int(at_start) + steps // every + int(steps % every > 0)


def lora_trainable(shape: ModelShape, r: int, targets: int, head: int) -> int:
    """LoRA's trainable parameters: per block and target matrix r x (d_in + d_out) with square
    hidden x hidden projections (q/v of Llama with full multi-head attention and of BERT), plus the
    task head (trained in full: modules_to_save)."""
    return shape.layers * targets * r * 2 * shape.hidden + head


def head_params(shape: ModelShape, kind: str, labels: int) -> int:
    """The new task head: hidden x labels (+ bias) for classification, hidden x 2 (+ bias) for QA spans."""
    outputs = labels if kind == "classification" else 2
    return shape.hidden * outputs + outputs


# Weight traffic of one pass, bytes per parameter (a pass over few tokens is bound by it, not by
# FLOPs: the roofline). Under bf16 autocast each fp32 weight is read (4 B), cast (2 B written) and
# the copy read by the matmul (2 B): 8 B forward; full training adds the backward's reads of the
# copies and the fp32 gradient accumulation (~14 B); LoRA's backward only reads the copies (2 B).
# fp32 forward reads the weights once (4 B). Fused AdamW with clipping reads/writes weights,
# gradients and both moments (~40 B per trainable parameter) once per optimizer step.
PASS_BYTES = {"full": 22, "lora": 10, "forward": 8, "forward_fp32": 4}
OPTIMIZER_BYTES = 40
BANDWIDTH_EFFICIENCY = 0.8  # of the datasheet bandwidth reached by streaming kernels


@dataclass
class Throughput:
    """Seconds for tokens on a device: FLOPs / (peak x MFU), or a measured tokens/s, and never less
    than the passes' weight traffic / memory bandwidth (a roofline)."""

    device: Device
    params: float
    precision: str  # the jobs' precision: bf16 on GPUs ('auto'), fp32 on CPUs

    def seconds(self, tokens: float, mode: str, precision: str | None = None, passes: int = 0) -> float:
        """`mode`: 'full' / 'lora' (training) or 'forward'; `passes`: the batches the tokens come in.
        A measurement gives full and LoRA training tokens/s; a forward pass is taken as a third of a
        full step (2N of 6N); an fp32 pass scales it by the peak ratio."""
        precision = precision or self.precision
        measured = self.device.measured
        if measured:
            rate = measured["full"] * 3 if mode == "forward" else measured[mode]
            if precision == "fp32" and self.precision != "fp32":
                rate *= self.device.peak_fp32 / (self.device.peak_bf16 or self.device.peak_fp32)
            compute = tokens / rate
        else:
            compute = tokens * FLOPS_PER_TOKEN[mode] * self.params / (self.device.tflops(precision) * 1e12)
        key = "forward_fp32" if mode == "forward" and precision == "fp32" else mode
        return max(compute, passes * self.params * PASS_BYTES[key] / self.bandwidth) if self.bandwidth else compute

    @property
    def bandwidth(self) -> float | None:
        """Usable memory bandwidth in bytes/s (None on CPUs: no floor)."""
        return self.device.hbm_gb_s * 1e9 * BANDWIDTH_EFFICIENCY if self.device.hbm_gb_s else None

    def optimizer_seconds(self, steps: int, trainable: int) -> float:
        return steps * trainable * OPTIMIZER_BYTES / self.bandwidth if self.bandwidth else 0.0


@dataclass
class RunCost:
    """One fine-tuning job, upper bound (no early stop). Seconds on its device; bytes on disk."""

    task: str
    method: str
    lr: str
    batch_size: int
    seed: int
    steps: int
    examples: int
    real_tokens: int
    padded_tokens: int
    evaluations: int
    snapshots: int
    saves: int
    train_s: float
    dev_eval_s: float  # periodic evaluations as configured
    dev_eval_alt_s: float  # the same with the other eval_subset choice (with the cure / without it)
    final_eval_s: float  # whole dev + validation once (stage evaluate)
    snapshot_s: float
    snapshot_fp32_s: float  # what the snapshots would cost in fp32
    checkpoint_s: float  # checkpoint, model and snapshot-store writes
    best_s: float  # best dev-loss weights written at evaluations (upper bound: every evaluation improves)
    overhead_s: float
    checkpoint_bytes: int  # peak: save_total_limit + 1 checkpoints + best weights (work folder)
    model_bytes: int
    store_bytes: int  # work-folder store + the output copy

    @property
    def seconds(self) -> float:
        return (self.train_s + self.dev_eval_s + self.final_eval_s + self.snapshot_s + self.checkpoint_s
                + self.best_s + self.overhead_s)

    @property
    def disk_bytes(self) -> int:
        return self.checkpoint_bytes + self.model_bytes + self.store_bytes


def finetune_run(*, run, train, dev: tuple[int, int], dev_alt: tuple[int, int], final: tuple[int, int],
                 probe: tuple[int, int], probe_size: int, settings: dict, shape: ModelShape, trainable: int,
                 poolings: int, throughput: Throughput, write_mib_per_s: float, overhead_s: float) -> RunCost:
    """The cost of one fine-tuning job (ftdrift.training.recipe), upper bound: no early stop.

    `train`: tokens.TrainTokens. (padded tokens, batches) of one periodic evaluation as configured
    (`dev`) and with the other eval_subset choice (`dev_alt`), of the whole dev + validation once
    (`final`) and of one snapshot (`probe`). Bytes: a checkpoint holds fp32 weights and AdamW's two
    moments of the trainable parameters (12 B each; peft saves only the adapter and head, not the
    frozen base); save_total_limit of them are kept (one more while the next is written), and the best dev-loss weights (4 B per trainable
    parameter, rewritten at each improving evaluation). A snapshot holds probe x (layers + 1) x hidden
    x poolings values in representations.dtype, kept twice (work folder and output).
    """
    training, reps = settings["training"], settings["representations"]
    steps = train.steps
    n_eval = events(steps, training["eval_steps"])
    n_snap = events(steps, reps["snapshot_steps"], at_start=True)
    n_save = events(steps, training["save_steps"])
    ckpt = trainable * (FP32_BYTES + ADAMW_STATE_BYTES)
    best = trainable * FP32_BYTES
    model = trainable * FP32_BYTES  # full: the whole task model; LoRA: adapter + head (peft's save)
    snapshot = probe_size * (shape.layers + 1) * shape.hidden * poolings * BYTES[reps["dtype"]]
    written = n_save * ckpt + model + n_snap * snapshot * 2
    write_rate = write_mib_per_s * 2**20
    return RunCost(
        run.task, run.method, run.lr, run.batch_size, run.seed, steps, train.examples, train.real_tokens,
        train.padded_tokens, n_eval, n_snap, n_save,
        train_s=throughput.seconds(train.padded_tokens, run.method, passes=train.micro_batches)
        + throughput.optimizer_seconds(steps, trainable),
        dev_eval_s=throughput.seconds(n_eval * dev[0], "forward", passes=n_eval * dev[1]),
        dev_eval_alt_s=throughput.seconds(n_eval * dev_alt[0], "forward", passes=n_eval * dev_alt[1]),
        final_eval_s=throughput.seconds(final[0], "forward", passes=final[1]),
        snapshot_s=throughput.seconds(n_snap * probe[0], "forward", passes=n_snap * probe[1]),
        snapshot_fp32_s=throughput.seconds(n_snap * probe[0], "forward", "fp32", passes=n_snap * probe[1]),
        checkpoint_s=written / write_rate,
        best_s=n_eval * best / write_rate,
        overhead_s=overhead_s,
        # the Trainer writes checkpoint N+1 before it deletes the oldest: the peak holds one more
        checkpoint_bytes=int(ckpt * (training["save_total_limit"] + 1) + best),
        model_bytes=int(model),
        store_bytes=int(n_snap * snapshot * 2),
    )


@dataclass
class RuleCost:
    """One rule's jobs on one machine kind: hours, cost, disk."""

    rule: str
    jobs: int
    machine: str
    gpus_per_job: int
    job_seconds: list[float] = field(default_factory=list)  # per job
    disk_bytes: int = 0
    spot: bool = False  # the profile runs it on spot VMs
    price_on_demand: float | None = None  # USD per VM-hour
    price_spot: float | None = None
    slots: int = 1  # jobs of this rule at once
    formula: str = ""
    fp32_extra_s: float = 0.0  # extra seconds had its forward passes run in fp32 (snapshots, base stores)

    @property
    def vm_hours(self) -> float:
        return sum(self.job_seconds) / 3600

    @property
    def gpu_hours(self) -> float:
        return self.vm_hours * self.gpus_per_job

    @property
    def wall_hours(self) -> float:
        return makespan(self.job_seconds, self.slots) / 3600

    @property
    def usd_on_demand(self) -> float | None:
        return None if self.price_on_demand is None else self.vm_hours * self.price_on_demand

    @property
    def usd_spot(self) -> float | None:
        """As the profile runs it: spot price for its preemptible rules, on-demand otherwise."""
        if self.price_on_demand is None:
            return None
        return self.vm_hours * (self.price_spot if self.spot else self.price_on_demand)


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of independent jobs on `slots` workers, longest first to the least loaded worker
    (Graham's LPT list scheduling: within 4/3 of the optimum)."""
    if not durations:
        return 0.0
    loads = [0.0] * max(1, min(slots, len(durations)))
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


