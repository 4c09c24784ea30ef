"""Command line: python -m ftdrift.estimate [--configfile FILE ...] [--profile NAME] [--config KEY=VALUE ...]."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ftdrift.data.tasks import DataError
from ftdrift.estimate import dag, hardware, plan, render
from ftdrift.profiles import profile_configfile
from ftdrift.study.config import (
    CONFIG_DIR,
    PACKAGE_ROOT,
    ConfigError,
    load_config,
    resolve,
)

BENCH_JSON = PACKAGE_ROOT / "bench" / "out" / "gpu.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftdrift.estimate", description=(
        "What the study will cost before it runs: GPU-hours, wall time, cost (spot and on-demand on gcp-gpu) and "
        "disk per rule, from the tokens the data really hold; the split of fine-tuning time between training, dev "
        "evaluation, snapshots and checkpoint writes; the jobs Snakemake plans; a preflight check."))
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="config file(s) as for snakemake (default: the profile's configfile, as "
                   "`snakemake --profile` reads it, else the embedded config/config.yaml)")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="overrides as for snakemake")
    p.add_argument("--profile", default="default", help="default, slurm, gcp-gpu, or a profile folder")
    p.add_argument("--prices", default=str(CONFIG_DIR / "prices.yaml"),
                   help="price/hardware table (default: config/prices.yaml)")
    p.add_argument("--tokenizer", help="count tokens with this tokenizer instead of the model's "
                   "(e.g. embedded:all-MiniLM-L6-v2); the model's own, else that stand-in, by default")
    p.add_argument("--throughput-json", help="bench/gpu_mfu.py result to use instead of peak x MFU "
                   f"(default: {BENCH_JSON.relative_to(PACKAGE_ROOT)} when it holds a GPU measurement)")
    p.add_argument("--compare-eval-subset", type=int, default=plan.DEFAULT_COMPARE_SUBSET, metavar="N",
                   help="when the config has no training.eval_subset: the subset size shown as the alternative")
    p.add_argument("--directory", default=".", help="working directory of the workflow (its results/)")
    p.add_argument("--cores", type=int, help="local cores for the default profile (default: all)")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ftdrift" / "estimate"),
                   help="token-count cache (re-runs do not tokenise again)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--no-preflight", action="store_true", help="skip the preflight check")
    p.add_argument("--offline", action="store_true", help="never reach for the Hugging Face hub (default: "
                   "only when it does not answer)")
    return p


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on 443 (so that an offline machine does not wait for the hub's retries).
    Behind an HTTPS proxy a direct connection says nothing: the hub client's own timeouts decide."""
    import socket

    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def preflight(config: dict, profile: str) -> str:
    """The preflight report (ftdrift.preflight), or why there is none."""
    try:
        from ftdrift.preflight import check
    except ImportError:
        return "preflight: not available"
    try:
        return check(config, profile).message()
    except Exception as err:  # the estimate stands without it; say why
        return f"preflight: could not run ({type(err).__name__}: {err})"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.offline or not hub_reachable():
        # the hub's client retries for a minute per file otherwise
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # the files `snakemake --profile X` would read: --configfile, else the profile's configfile
    configfiles = args.configfile or [profile_configfile(args.profile) or str(CONFIG_DIR / "config.yaml")]
    try:
        config = resolve(load_config(configfiles, args.config), base_dir=PACKAGE_ROOT)
        prices = hardware.load_prices(args.prices)
        profile = hardware.read_profile(args.profile, config, args.cores)
        throughput_json = args.throughput_json
        if throughput_json is None and BENCH_JSON.is_file():
            try:
                hardware.read_benchmark(BENCH_JSON)
                throughput_json = str(BENCH_JSON)
            except hardware.EstimateError:
                pass  # e.g. a CPU machine's 'skipped' result: the published figures serve
        planned = dag.PlannedJobs(configfiles, args.config, args.directory)  # runs while the model is read
        shape = plan.model_shape(config)
        counts = planned.result()
        name = " ".join(configfiles)
        estimate = plan.estimate(config, profile, prices, config_name=name, job_counts=counts,
                                 tokenizer_override=args.tokenizer, shape=shape, throughput_json=throughput_json,
                                 cache_dir=None if args.no_cache else Path(args.cache_dir),
                                 workdir=Path(args.directory), compare_eval_subset=args.compare_eval_subset)
    except (ConfigError, DataError, hardware.EstimateError) as err:
        print(f"ftdrift.estimate: {err}", file=sys.stderr)
        return 2
    print(render.render(estimate))
    if not args.no_preflight:
        print()
        print(preflight(config, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
