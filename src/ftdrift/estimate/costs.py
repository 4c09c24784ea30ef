"""The cost model: FLOPs, seconds and bytes of each job, from token counts and a throughput.

Model FLOPs per token (Kaplan et al. 2020, "Scaling laws", sec. 2.1; PaLM's MFU convention):
2N for a forward pass; a training token as its method costs it (ftdrift.study.resources.method_cost:
6N for full fine-tuning, 4N + 6P for an adapter of P trainable parameters, DoRA's weight norm per
pass on top). N = the model's parameters without its token embeddings (a lookup, not a matmul) when
counted from the model, else config resources.model_shape.params_billion (embeddings included: ~5 %
high for Sheared-LLaMA-1.3B); the attention term 12·L·d·s (~4 % at s = 512 for a 1.3B model) is
left out. Padded tokens are counted: the model computes on padding too.
So a training example costs 3 forward passes (full fine-tuning) or about 2 (an adapter), as issue 15
counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftdrift.estimate.hardware import Device
from ftdrift.study.resources import FORWARD_FLOPS, MethodCost, ModelDims

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
    dims: ModelDims | None = None  # what the adapters' parameter counts need (ftdrift.study.resources)

    @property
    def stored_params(self) -> float:
        return self.total_params or self.params


def events(steps: int, every: int, at_start: bool = False) -> int:
    """How often a step-cadence event happens in `steps` optimizer steps: at every multiple of
    `every` and once more at the end if `steps` is not one (the Trainer's evaluation and save,
    the snapshot callback), plus step 0 when `at_start` (snapshots)."""
    return int(at_start) + steps // every + int(steps % every > 0)


# Weight traffic of a forward pass, bytes per parameter (a pass over few tokens is bound by it, not
# by FLOPs: the roofline): under bf16 autocast each fp32 weight is read (4 B), cast (2 B written)
# and the copy read by the matmul (2 B); fp32 reads the weights once. A training pass's traffic is
# its method's (ftdrift.study.resources: 22 B per trained, 10 B per frozen parameter). Fused AdamW
# with clipping reads/writes weights, gradients and both moments (~40 B per trainable parameter)
# once per optimizer step.
FORWARD_PASS_BYTES = {"bf16": 8, "fp32": 4}
OPTIMIZER_BYTES = 40
BANDWIDTH_EFFICIENCY = 0.8  # of the datasheet bandwidth reached by streaming kernels


@dataclass
class Throughput:
    """Seconds for tokens on a device: FLOPs / (peak x MFU), or a measured tokens/s, and never less
    than the passes' weight traffic / memory bandwidth (a roofline).

    A measurement (bench/gpu_mfu.py, hardware.read_benchmark) gives tokens/s of one benchmarked
    method per training mode; `measured_flops` holds what a token of that method costs on this
    model (plan.estimate), so that another method of the mode takes its FLOPs' share. A forward
    token is a third of a full step's (2N of 6N)."""

    device: Device
    params: float
    precision: str  # the jobs' precision: bf16 on GPUs ('auto'), fp32 on CPUs
    measured_flops: dict[str, float] = field(default_factory=dict)  # training mode -> FLOPs per token

    def training_seconds(self, tokens: float, cost: MethodCost, passes: int = 0) -> float:
        """Seconds to train on `tokens` (padded) in `passes` micro-batches with the method `cost`."""
        flops = tokens * cost.flops_per_token + passes * cost.flops_per_pass
        measured = self.device.measured
        if measured:
            mode = cost.training_mode if cost.training_mode in measured["rates"] else measured["fallback_mode"]
            compute = flops / (measured["rates"][mode] * self.measured_flops[mode])  # over the measured FLOP/s
        else:
            compute = flops / (self.device.tflops(self.precision) * 1e12)
        return max(compute, passes * cost.pass_bytes / self.bandwidth) if self.bandwidth else compute

    def forward_seconds(self, tokens: float, precision: str | None = None, passes: int = 0) -> float:
        """Seconds of forward passes over `tokens` (padded) in `passes` batches; `precision` None:
        the jobs' own. An fp32 pass scales a measured rate by the peak ratio."""
        precision = precision or self.precision
        measured = self.device.measured
        if measured:
            rate = measured["forward"]
            if precision == "fp32" and self.precision != "fp32":
                rate *= self.device.peak_fp32 / (self.device.peak_bf16 or self.device.peak_fp32)
            compute = tokens / rate
        else:
            compute = tokens * FORWARD_FLOPS * self.params / (self.device.tflops(precision) * 1e12)
        traffic = FORWARD_PASS_BYTES["fp32" if precision == "fp32" else "bf16"]
        return max(compute, passes * self.params * traffic / self.bandwidth) if self.bandwidth else compute

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
    training_mode: str
    forward_equivalents: float  # a training token's FLOPs in forward passes (3 full fine-tuning, ~2 an adapter)
    trainable: int
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
    store_bytes: int  # one snapshot store (the output's; the work folder holds another while the job runs)

    @property
    def seconds(self) -> float:
        return (self.train_s + self.dev_eval_s + self.final_eval_s + self.snapshot_s + self.checkpoint_s
                + self.best_s + self.overhead_s)

    @property
    def disk_bytes(self) -> int:
        """What the finished run keeps: its model and snapshot store (the work folder's state is
        removed once the outputs are written, ftdrift.training.workdir)."""
        return self.model_bytes + self.store_bytes

    @property
    def work_bytes(self) -> int:
        """The work folder at its peak, while the job runs: checkpoints, best weights, its own store."""
        return self.checkpoint_bytes + self.store_bytes


def finetune_run(*, run, train, dev: tuple[int, int], dev_alt: tuple[int, int], final: tuple[int, int],
                 probe: tuple[int, int], probe_size: int, settings: dict, shape: ModelShape, cost: MethodCost,
                 poolings: int, throughput: Throughput, write_mib_per_s: float, overhead_s: float) -> RunCost:
    """The cost of one fine-tuning job (ftdrift.training.recipe), upper bound: no early stop.

    `train`: tokens.TrainTokens; `cost`: the run's method on this model (resources.method_cost).
    (padded tokens, batches) of one periodic evaluation as configured
    (`dev`) and with the other eval_subset choice (`dev_alt`), of the whole dev + validation once
    (`final`) and of one snapshot (`probe`). Bytes: a checkpoint holds fp32 weights and AdamW's two
    moments of the trainable parameters (12 B each; peft saves only the adapter and head, not the
    frozen base); save_total_limit of them are kept (one more while the next is written), and the
    best dev-loss weights (4 B per trainable parameter, rewritten at each improving evaluation).
    The model written at the end holds the method's saved parameters in fp32 (a PiSSA-style
    adapter converted to rank 2r). A snapshot holds probe x (layers + 1) x hidden
    x poolings values in representations.dtype, written twice (work folder and output); the work
    folder's copy and checkpoints are removed once the outputs are written.
    """
    training, reps = settings["training"], settings["representations"]
    steps = train.steps
    n_eval = events(steps, training["eval_steps"])
    n_snap = events(steps, reps["snapshot_steps"], at_start=True)
    n_save = events(steps, training["save_steps"])
    trainable = cost.trainable
    ckpt = trainable * (FP32_BYTES + ADAMW_STATE_BYTES)
    best = trainable * FP32_BYTES
    model = cost.saved_params * FP32_BYTES  # the whole task model, or an adapter + head (peft's save)
    snapshot = probe_size * (shape.layers + 1) * shape.hidden * poolings * BYTES[reps["dtype"]]
    written = n_save * ckpt + model + n_snap * snapshot * 2
    write_rate = write_mib_per_s * 2**20
    return RunCost(
        run.task, run.method, cost.training_mode, cost.flops_per_token / (FORWARD_FLOPS * shape.params), trainable,
        run.lr, run.batch_size, run.seed, steps, train.examples, train.real_tokens, train.padded_tokens,
        n_eval, n_snap, n_save,
        train_s=throughput.training_seconds(train.padded_tokens, cost, passes=train.micro_batches)
        + throughput.optimizer_seconds(steps, trainable),
        dev_eval_s=throughput.forward_seconds(n_eval * dev[0], passes=n_eval * dev[1]),
        dev_eval_alt_s=throughput.forward_seconds(n_eval * dev_alt[0], passes=n_eval * dev_alt[1]),
        final_eval_s=throughput.forward_seconds(final[0], passes=final[1]),
        snapshot_s=throughput.forward_seconds(n_snap * probe[0], passes=n_snap * probe[1]),
        snapshot_fp32_s=throughput.forward_seconds(n_snap * probe[0], "fp32", passes=n_snap * probe[1]),
        checkpoint_s=written / write_rate,
        best_s=n_eval * best / write_rate,
        overhead_s=overhead_s,
        # the Trainer writes checkpoint N+1 before it deletes the oldest: the peak holds one more
        checkpoint_bytes=int(ckpt * (training["save_total_limit"] + 1) + best),
        model_bytes=int(model),
        store_bytes=int(n_snap * snapshot),
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


