"""Cluster resources of each job and the cost model of a fine-tuning method, derived from the
model, the method's spec and the task rather than hard-coded.

Estimates are deliberately generous: an under-estimate kills a multi-hour job, an
over-estimate only costs queue time. Memory figures assume the study's recipe: the model loaded
in float32, bf16 autocast, AdamW.

The cost of a method (`method_cost`, also what `python -m ftdrift.estimate` prices) — N = the
model's parameters, P = the method's trainable parameters (adapter + task head):

  full fine-tuning  6N FLOPs per token (Kaplan et al. 2020, sec. 2.1: forward 2N, backward 4N
                    through activations and weights); 16 B per parameter (fp32 weights, fp32
                    gradients, AdamW's two fp32 moments).
  an adapter        forward 2N + backward through the activations 2N (the frozen matrices get no
                    weight gradients) + the adapter's own 6P; memory = the frozen fp32 weights
                    (4 B per parameter) + 16 B per trainable parameter + activations.
  DoRA              (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML,
                    arXiv:2402.09353) adds a magnitude vector (d_out) per adapted matrix. As peft
                    0.21.2 implements it (peft.tuners.lora.dora.DoraLinearLayer.forward), every
                    forward call of an adapted matrix forms ΔW = B·A through the identity
                    (2·r·d_in·(d_in + d_out) FLOPs) and the column norm ‖W + s·ΔW‖ (~3·d_in·d_out),
                    detached from the gradient (the paper's sec. 4.3); with lora_dropout > 0 in
                    training it also recomputes the base output on the dropped-out input (2·d_in·d_out
                    per token forward + 2·d_in·d_out backward). It keeps the base and LoRA outputs
                    (2 x d_out per token, bf16) for the magnitude's gradient.
  IA3               one vector per adapted matrix (d_out; d_in for feed-forward ones): tiny.

Trainable parameters are counted from the model's shape (`ModelDims`: hidden and intermediate
sizes, blocks, key/value width) and the spec (r, rank_pattern, target preset or list,
layers_to_transform, use_dora, lora_bias), here and nowhere else; tests/estimate/test_estimate.py checks
the count against peft's on tiny models. peft types other than LoRA and IA3 are counted as a LoRA
of their `r` (8 if none) on their targets (q/v if none): an approximation, said in the notes.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

from ftdrift.study import methods as ftmethods

FULL_STATE_BYTES = 16  # per trainable parameter: fp32 weight + fp32 gradient + AdamW's two fp32 moments
FROZEN_BYTES = 4  # a frozen weight, loaded in fp32 (bf16 copies under autocast are transient)
ACTIVATION_BYTES = 34  # per token per hidden unit per block, bf16, no checkpointing (Korthikanti et al. 2022)
# Weight traffic of one training pass, bytes per base parameter (ftdrift.estimate.costs): under bf16
# autocast each fp32 weight is read (4 B), cast (2 B written) and the copy read by the matmul (2 B);
# full training adds the backward's reads of the copies and the fp32 gradient accumulation (~14 B);
# an adapter's backward only reads the copies (2 B). Trainable adapter parameters move like full ones.
FULL_PASS_BYTES = 22
FROZEN_PASS_BYTES = 10
DORA_NORM_BYTES = 8  # DoRA reads each adapted weight again per pass for its norm (4 B) + the bf16 W + sΔW (2 x 2 B)
DEFAULT_RANK = 8  # peft's LoraConfig default r

# The linear layers of one transformer block per layout (the module naming a family of model types
# shares): (block-relative path, role, input width, output width); widths name ModelDims fields.
# Roles as ftdrift.modeling.targets.role: q, k, v, o (attention) and mlp.
LLAMA_BLOCK = (("self_attn.q_proj", "q", "hidden", "hidden"), ("self_attn.k_proj", "k", "hidden", "kv"),
               ("self_attn.v_proj", "v", "hidden", "kv"), ("self_attn.o_proj", "o", "hidden", "hidden"),
               ("mlp.gate_proj", "mlp", "hidden", "intermediate"), ("mlp.up_proj", "mlp", "hidden", "intermediate"),
               ("mlp.down_proj", "mlp", "intermediate", "hidden"))
BLOCK_LINEARS = {
    "llama": LLAMA_BLOCK,
    "bert": (("attention.self.query", "q", "hidden", "hidden"), ("attention.self.key", "k", "hidden", "hidden"),
             ("attention.self.value", "v", "hidden", "hidden"), ("attention.output.dense", "o", "hidden", "hidden"),
             ("intermediate.dense", "mlp", "hidden", "intermediate"),
             ("output.dense", "mlp", "intermediate", "hidden")),
    # any other model type: counted as a Llama block (separate q/k/v/o, a gated MLP: three matrices,
    # generous for two-matrix MLPs; a fused q/k/v as its parts); said in the method's notes
    "generic": LLAMA_BLOCK,
}
# the model types whose blocks are named and shaped as a layout's (model.family auto reads the type)
LAYOUT_TYPES = {**dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), "llama"),
                **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), "bert")}
# where the blocks sit in the sequence-classification task model (a regex target is matched against these names)
BLOCK_PREFIX = {"llama": "model.layers", "bert": "bert.encoder.layer", "generic": "model.layers"}
# linear layers outside the blocks, per task kind (BertForSequenceClassification's pooler; the QA
# model has none): peft's `all-linear` adapts them (ftdrift.modeling.targets.all_linear)
OUTER_LINEARS = {("bert", "classification"): (("bert.pooler.dense", "outer", "hidden", "hidden"),)}
# the presets of ftdrift.modeling.targets as roles (all-linear: every linear layer but the head)
PRESET_ROLES = {"qv": {"q", "v"}, "attention": {"q", "k", "v", "o"}, "mlp": {"mlp"}, "all-linear": None}
# peft 0.21.2's IA3 defaults (peft.utils.constants ..._TO_IA3_TARGET_MODULES / _FEEDFORWARD_MODULES_MAPPING)
IA3_DEFAULTS = {"llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
                "bert": (["key", "value", "output.dense"], ["output.dense"]),
                "generic": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}


FORWARD_FLOPS = 2  # per parameter and token: one multiply-add; the backward pass costs it per gradient
# model FLOPs utilisation assumed without a measurement: the floor issue 15 sets for full
# fine-tuning of a 1.3B model at sequence 512 on H100/H200 (1B-class training reaches ~0.43);
# the estimate's price table may override it (config/prices.yaml `mfu`), bench/gpu_mfu.py measures it
ASSUMED_MFU = 0.40
RUNTIME_TFLOPS = 100.0  # peak TFLOP/s a GPU job's runtime limit assumes (an A100-class card, generous)

@dataclass(frozen=True)
class ModelDims:
    """The shape of a model, as far as the cost of a method needs it."""

    layout: str  # the key of BLOCK_LINEARS (`layout_of`)
    hidden: int
    intermediate: int
    layers: int  # transformer blocks
    kv: int  # output width of the key and value projections: hidden x KV heads / attention heads


@dataclass(frozen=True)
class Linear:
    name: str  # in the sequence-classification task model ('model.layers.3.self_attn.q_proj')
    role: str
    d_in: int
    d_out: int
    layer: int | None  # block index (None: outside the blocks)


@dataclass(frozen=True)
class MethodCost:
    """What one method costs on one model and task kind. FLOPs and bytes are absolute."""

    method: str
    training_mode: str  # Method.training_mode
    trainable: int  # parameters with a gradient and optimizer state (head included)
    adapter: int  # of which the adapter's (0 for full fine-tuning)
    adapted: tuple[Linear, ...]  # the matrices the adapter adapts
    flops_per_token: float  # one training token, forward + backward
    flops_per_pass: float  # per forward call of a micro-batch, independent of its tokens (DoRA's norm)
    state_bytes: float  # weights + gradients + optimizer state
    pass_bytes: float  # weight traffic of one training pass (forward + backward)
    activation_bytes_per_token: float  # what the adapter keeps per token beyond the model's activations
    saved_params: int  # parameters the saved model holds (PiSSA's converted adapter is rank 2r)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def flops_over(self, params: float) -> float:
        """FLOPs per training token as a multiple of N (6 for full fine-tuning)."""
        return self.flops_per_token / params


def layout_of(config: dict) -> str:
    """The linear-layer table of a resolved config's model: model.family bert or llama name theirs
    (as before model.family auto); else the checkpoint's model type (its config.json at hand: a local
    folder, the embedded model, the Hugging Face cache) in LAYOUT_TYPES, else 'generic'."""
    if config["model"]["family"] in BLOCK_LINEARS:
        return config["model"]["family"]
    return LAYOUT_TYPES.get(_model_type(config["model"]["name_or_path"], config["model"].get("revision")), "generic")


@functools.lru_cache(maxsize=None)
def _model_type(name_or_path: str, revision: str | None) -> str | None:
    from ftdrift.study.families import read_config

    checkpoint = read_config({"name_or_path": name_or_path, "revision": revision})
    return checkpoint.get("model_type") if checkpoint else None


def dims_of(config: dict) -> ModelDims:
    """The model's shape from a resolved config's resources.model_shape and its layout (`layout_of`).
    Without intermediate_size: 4 x hidden (BERT's, GPT-2's); without head counts: k/v as wide as
    the hidden size (multi-head attention)."""
    shape = config["resources"]["model_shape"]
    hidden = int(shape["hidden_size"])
    heads = shape.get("num_attention_heads")
    kv_heads = shape.get("num_key_value_heads") or heads
    kv = hidden * kv_heads // heads if heads else hidden
    return ModelDims(layout_of(config), hidden, int(shape.get("intermediate_size") or 4 * hidden),
                     int(shape["num_layers"]), int(kv))


def linears(dims: ModelDims, kind: str) -> list[Linear]:
    """Every linear layer of the task model but its head: the blocks', then those outside them.
    ValueError for a layout without a table here."""
    if dims.layout not in BLOCK_LINEARS:
        raise ValueError(f"layout '{dims.layout}': no linear-layer table in ftdrift.study.resources "
                         f"(known: {sorted(BLOCK_LINEARS)})")
    width = {"hidden": dims.hidden, "intermediate": dims.intermediate, "kv": dims.kv}
    out = [Linear(f"{BLOCK_PREFIX[dims.layout]}.{i}.{path}", role, width[a], width[b], i)
           for i in range(dims.layers) for path, role, a, b in BLOCK_LINEARS[dims.layout]]
    out += [Linear(path, role, width[a], width[b], None)
            for path, role, a, b in OUTER_LINEARS.get((dims.layout, kind), ())]
    return out


def _matches(name: str, entry) -> bool:
    """peft's rule (0.21.2 `check_target_module_exists`): a list entry matches a name equal to it
    or ending with '.' + it; a string that is no preset is `re.fullmatch`ed — here against the name
    or any of its dotted tails, since the task model's prefix differs between task classes."""
    if isinstance(entry, str):
        parts = name.split(".")
        return any(re.fullmatch(entry, ".".join(parts[k:])) for k in range(len(parts)))
    return any(name == e or name.endswith("." + e) for e in entry)


def select(all_linears: list[Linear], targets, default_roles: set[str]) -> list[Linear]:
    """The linear layers `targets` (peft's target_modules: a preset, a list, a regex, None) selects;
    None selects `default_roles`."""
    if targets is None:
        return [m for m in all_linears if m.role in default_roles]
    if isinstance(targets, str) and targets in PRESET_ROLES:
        roles = PRESET_ROLES[targets]
        return [m for m in all_linears if roles is None or m.role in roles]
    entry = targets if isinstance(targets, str) else list(targets)
    return [m for m in all_linears if _matches(m.name, entry)]


def _layers_kept(modules: list[Linear], layers) -> list[Linear]:
    """peft's layers_to_transform: only the blocks listed (an int: that one); modules outside the
    blocks then match no layer index and are left out."""
    if layers is None:
        return modules
    keep = {layers} if isinstance(layers, int) else set(layers)
    return [m for m in modules if m.layer in keep]


def _rank_of(spec: dict, module: Linear) -> int:
    """The module's rank: peft's rank_pattern (a key matches names ending with it as a regex) else r."""
    for key, rank in (spec.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module.name):
            return int(rank)
    return int(spec.get("r", DEFAULT_RANK))


def adapted_matrices(method: ftmethods.Method, dims: ModelDims, kind: str) -> list[Linear]:
    """The linear layers the method's adapter adapts (none for full fine-tuning)."""
    if method.is_full:
        return []
    spec, everything = method.peft, linears(dims, kind)
    if method.peft_type == "IA3" and spec.get("target_modules") is None:
        chosen = select(everything, IA3_DEFAULTS[dims.layout][0], set())
    else:
        chosen = select(everything, spec.get("target_modules"), PRESET_ROLES["qv"])
    return _layers_kept(chosen, spec.get("layers_to_transform"))


def _feedforward(method: ftmethods.Method, dims: ModelDims, kind: str, adapted: list[Linear]) -> set[str]:
    """IA3's feed-forward modules among `adapted` (they scale their input), as
    ftdrift.modeling.methods.resolve_targets and peft resolve them."""
    spec, targets = method.peft, method.peft.get("target_modules")
    chosen = spec.get("feedforward_modules")
    if chosen is None and isinstance(targets, str) and targets in PRESET_ROLES:
        return {m.name for m in adapted if m.role == "mlp"}
    if chosen is None:
        chosen = IA3_DEFAULTS[dims.layout][1]
    return {m.name for m in select(adapted, chosen, set())}


def adapter_params(method: ftmethods.Method, dims: ModelDims, kind: str) -> int:
    """The adapter's trainable parameters on a task model (the task head not included; 0 for full
    fine-tuning). LoRA: r x (d_in + d_out) per adapted matrix, + d_out with use_dora (the
    magnitude) and with lora_bias (lora_B's bias); IA3: d_out per adapted matrix, d_in for a
    feed-forward one."""
    adapted = adapted_matrices(method, dims, kind)
    if method.peft_type == "IA3":
        feedforward = _feedforward(method, dims, kind, adapted)
        return sum(m.d_in if m.name in feedforward else m.d_out for m in adapted)
    extra = int(bool(method.peft.get("use_dora"))) + int(bool(method.peft.get("lora_bias"))) if adapted else 0
    return sum(_rank_of(method.peft, m) * (m.d_in + m.d_out) + extra * m.d_out for m in adapted)


def head_params(hidden: int, kind: str, labels: int) -> int:
    """The new task head: hidden x labels (+ bias) for classification, hidden x 2 (+ bias) for QA spans."""
    outputs = labels if kind == "classification" else 2
    return hidden * outputs + outputs


def method_cost(method: ftmethods.Method, dims: ModelDims, params: float, stored_params: float, kind: str,
                head: int) -> MethodCost:
    """The cost model of `method` (see the module doc). `params`: N of the FLOP model (non-embedding
    parameters where counted); `stored_params`: every parameter of the base model (what memory and
    checkpoints hold); `head`: the task head's parameters."""
    if method.is_full:
        trainable = int(stored_params + head)
        return MethodCost(method.name, method.training_mode, trainable, 0, (), 3 * FORWARD_FLOPS * params, 0.0,
                          FULL_STATE_BYTES * trainable, FULL_PASS_BYTES * params, 0.0, trainable)
    adapted = tuple(adapted_matrices(method, dims, kind))
    adapter = adapter_params(method, dims, kind)
    trainable = adapter + head
    spec, notes = method.peft, []
    if dims.layout == "generic":
        notes.append("the model type has no linear-layer table in ftdrift.study.resources: its blocks are counted "
                     "as Llama blocks (q, k, v, o, a gated MLP); presets select by role, other targets by those names")
    flops = 2 * FORWARD_FLOPS * params + 3 * FORWARD_FLOPS * trainable
    per_pass, pass_bytes = 0.0, FROZEN_PASS_BYTES * params + FULL_PASS_BYTES * trainable
    kept = 0.0
    if method.peft_type != "IA3":
        dropout = bool(spec.get("lora_dropout"))
        # LoRA keeps the (dropped-out) input of A for its gradient and A's output for B's (bf16)
        kept = sum((3 if dropout else 2) * m.d_in + 2 * _rank_of(spec, m) for m in adapted)
        if method.peft_type != "LORA":
            notes.append(f"{method.peft_type}: counted as a LoRA of rank {spec.get('r', DEFAULT_RANK)} on its targets")
    if spec.get("use_dora"):
        weights = sum(m.d_in * m.d_out for m in adapted)
        per_pass = sum(2 * _rank_of(spec, m) * m.d_in * (m.d_in + m.d_out) + 3 * m.d_in * m.d_out for m in adapted)
        pass_bytes += DORA_NORM_BYTES * weights
        kept += sum(4 * m.d_out for m in adapted)
        if spec.get("lora_dropout"):
            flops += 2 * FORWARD_FLOPS * weights  # the base output again, on the dropped-out input: forward + input gradient
    saved = trainable
    if method.mutates_base:  # saved as a plain LoRA of rank 2r against the original weights (the head once)
        saved += sum(_rank_of(spec, m) * (m.d_in + m.d_out) for m in adapted)
    state = FROZEN_BYTES * stored_params + FULL_STATE_BYTES * trainable
    return MethodCost(method.name, method.training_mode, trainable, adapter, adapted, flops, per_pass, state,
                      pass_bytes, kept, saved, tuple(notes))


def finetune_gpu_mem_gb(cost: MethodCost, micro_batch: int, max_length: int, dims: ModelDims) -> float:
    """GPU memory of a fine-tuning job, GB (GiB): the method's states + activations of one
    micro-batch (the model's ~34 B per token per hidden unit per block, bf16, no checkpointing, the
    same for every method: the frozen blocks still pass gradients back to the adapters below them,
    plus what the adapter keeps per token), x 1.2 for the allocator and workspaces."""
    tokens = micro_batch * max_length
    activations = (ACTIVATION_BYTES * dims.hidden * dims.layers + cost.activation_bytes_per_token) * tokens
    return (cost.state_bytes + activations) / 2**30 * 1.2


def finetune_runtime_minutes(cost: MethodCost, train_tokens: float, passes: float,
                             tflops: float = RUNTIME_TFLOPS) -> int:
    """Wall minutes of a fine-tuning job on a GPU: the method's FLOPs at ASSUMED_MFU of `tflops`, x 1.5
    and + 20 min for snapshots, evaluation and checkpoint writes; at least 30."""
    flops = cost.flops_per_token * train_tokens + cost.flops_per_pass * passes
    minutes = flops / (tflops * 1e12 * ASSUMED_MFU) / 60
    return int(math.ceil(max(30, minutes * 1.5 + 20)))


def micro_batch_plan(batch_size: int, max_micro_batch: int, attempt: int = 1) -> dict:
    """Micro-batch and accumulation for an effective batch. Each retry after an out-of-memory
    failure halves the micro-batch (same effective batch); from the third attempt on,
    gradient checkpointing is switched on as well."""
    limit = max(1, max_micro_batch // (2 ** (attempt - 1)))
    micro = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= limit)
    return {"micro_batch": micro, "accumulation": batch_size // micro, "gradient_checkpointing": attempt >= 3}


def task_method_cost(config: dict, task: str, method: str) -> MethodCost:
    """`method_cost` of a configured method (by name) on a task, from the config's planning
    figures (resources.model_shape: N includes the embeddings there)."""
    from ftdrift.study.config import task_kind

    task_def = config["task_defs"][task]
    kind = task_kind(task_def)
    dims = dims_of(config)
    params = config["resources"]["model_shape"]["params_billion"] * 1e9
    head = head_params(dims.hidden, kind, len(task_def.get("labels", [])) or 2)
    return method_cost(ftmethods.method(config, method), dims, params, params, kind, head)


def finetune_job(config: dict, task: str, method: str, batch_size: int) -> dict:
    """Resources of one fine-tuning job (`method`: a configured method's name), sized for its first
    micro-batch plan (an out-of-memory retry inside the job only lowers the activation memory)."""
    from ftdrift.study.config import task_kind, task_settings

    res, shape = config["resources"], config["resources"]["model_shape"]
    settings = task_settings(config, task)
    training, kind = settings["training"], task_kind(config["task_defs"][task])
    max_length = settings["data"]["max_length"][kind]
    plan = micro_batch_plan(batch_size, training["max_micro_batch"])
    if training["max_steps"] > 0:
        examples = training["max_steps"] * batch_size
    else:
        examples = training["epochs"] * config["task_defs"][task].get("train_examples", 100_000)
    tokens = examples * max_length * 0.5  # dynamic padding: about half the maximum length on average
    cost = task_method_cost(config, task, method)
    gpu_mem = finetune_gpu_mem_gb(cost, plan["micro_batch"], max_length, dims_of(config))
    host_mb = int(max(8000, shape["params_billion"] * 1e9 * 4 * 3 / 2**20))  # fp32 load + state dicts
    return {
        "gpu": res["gpus_per_finetune"],
        "gpu_model": res["gpu_model"] or "",
        "gpu_mem_gb": round(gpu_mem, 1),
        "cpus_per_gpu": 8 if res["gpus_per_finetune"] else 0,
        "mem_mb": host_mb,
        "runtime": finetune_runtime_minutes(cost, tokens, examples / plan["micro_batch"]) if res["gpus_per_finetune"]
        else int(max(30, examples / 2 / 60 * 1.5)),  # CPU: ~2 examples/s at worst
    }


def light_gpu_job(config: dict) -> dict:
    """Forward-only jobs (base representations): one GPU when the study uses GPUs."""
    shape = config["resources"]["model_shape"]
    return {"gpu": min(1, config["resources"]["gpus_per_finetune"]),
            "mem_mb": int(max(8000, shape["params_billion"] * 1e9 * 4 * 2 / 2**20))}


def deployment_job(config: dict) -> dict:
    """Host memory of the deployment benchmark: every task's fine-tuned model, the base with the
    adapters and a merged copy, in float32 (at least a light GPU job's)."""
    params = config["resources"]["model_shape"]["params_billion"] * 1e9
    return {"mem_mb": max(light_gpu_job(config)["mem_mb"], int(params * 4 * (len(config["tasks"]) + 2) / 2**20)),
            "gpu": light_gpu_job(config)["gpu"]}
