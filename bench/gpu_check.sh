#!/usr/bin/env bash
# The GPU path, proven on a real GPU (issue 15): one unattended run, under 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh                 # on a CUDA machine
#   bash bench/gpu_check.sh --cpu-smoke     # the plumbing on a CPU (toy shapes; ~2 min); or FTDRIFT_GPU_CHECK_CPU=1
#   options: --with-workflow (CPU smoke: run the workflow stage too, sst2 only), --tasks a,b (the workflow stage's tasks; default
#            sst2,squad_v2: one classification and one QA task, 4 fine-tuning runs),
#            --budget SECONDS (whole run, default 450), --force-profile (profile even without a shortfall),
#            --only numerics,mfu,workflow (a subset, e.g. to rerun one stage on a still-warm machine)
#
# Stages (each under its own timeout, clamped to what is left of the budget; each runs even when an
# earlier one failed; the checks themselves are tests/system/gpu_checks.py's subcommands):
#   setup     python with torch; on a machine without the project's packages (the GPU image), the wheels
#             in .whl/ (made here by `bash bench/gpu_check.sh --fetch-wheels`) go to a --target folder
#   env       versions and device
#   numerics  LoRA merge bf16 vs fp32; CKA on the GPU (torch) vs CPU (numpy) to 1e-6
#   mfu       bench/gpu_mfu.py, Sheared-LLaMA-1.3B's shape, seq 512, full and LoRA, amp and bf16
#   profile   only on a shortfall (MFU < 40 % or LoRA/full > 0.7): torch.profiler, top kernels/ops
#   workflow  the tiny workflow end to end, bf16 on CUDA, one provoked out-of-memory retry per job
# Results: $OUT if set (the device tool brings it back), else bench/out/gpu_check/:
#   gpu_check.json (every figure, pass/fail per check), gpu_check.log (this console), workflow_logs.tgz
#   (Snakemake's and the jobs' logs, the tables), mfu_profile.json (on a shortfall). FTDRIFT_GPU_CHECK_KEEP=1
#   keeps the scratch folder (the workflow's working directory).
# Exit status 0 when every check passed.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CPU=${FTDRIFT_GPU_CHECK_CPU:-0}
WITH_WORKFLOW=""
TASKS=""
BUDGET=450
FORCE_PROFILE=0
FETCH=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) CPU=1 ;;
    --with-workflow) WITH_WORKFLOW=1 ;;
    --tasks) TASKS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --force-profile) FORCE_PROFILE=1 ;;
    --fetch-wheels) FETCH=1 ;;
    --only) ONLY=",$2,"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# --fetch-wheels (on a machine with PyPI access): the project's packages that the GPU image lacks,
# or has at other versions than pyproject.toml pins, as CPython 3.12 x86-64 wheels in .whl/ (ignored
# by git; carry it: `carry: [".whl"]`). torch and the image's large binaries stay the image's own.
if [ "$FETCH" = 1 ]; then
  mkdir -p .whl
  PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64"
  # snakemake's closure (no pulp: the check runs the greedy scheduler), datasets, zarr, jsonschema,
  # and the pinned transformers/peft/huggingface-hub/pandas
  PKGS="snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
        snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
        snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
        argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.9.0 docutils==0.22.4 dpath==2.2.0
        fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 humanfriendly==10.0 immutables==0.21
        jupyter-core==5.9.1 nbformat==5.11.1 smart-open==7.7.1 smmap==5.0.3 tenacity==9.2.1 throttler==1.2.3
        traitlets==5.16.1 yte==1.9.4 sqlalchemy==2.0.58 sqlmodel==0.0.37 greenlet==3.5.6 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.8
        truststore==0.10.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 zarr==3.1.6
        numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 jsonschema==4.26.0
        jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 transformers==5.24.0
        peft==0.21.2 huggingface-hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 pandas==3.1.1 tzdata==2026.6"
  for p in $PKGS; do
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
      -d .whl "$p" || echo "gpu_check.sh: no wheel for $p"
  done
  # connection_pool publishes only an sdist: build its (pure-Python) wheel here
  python3 -m pip download -q --no-deps --no-binary=:all: -d .whl/sdist connection-pool==0.0.3 \
    && python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl .whl/sdist/connection_pool-0.0.3.tar.gz \
    && rm -rf .whl/sdist
  du -sh .whl; ls .whl | wc -l
  exit 0
fi

RES=${OUT:-$REPO/bench/out/gpu_check}
mkdir -p "$RES"
rm -f "$RES/gpu_check.json" "$RES/mfu_profile.json" "$RES/workflow_logs.tgz"  # no stale results beside new ones
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ftdrift_gpu_check.XXXXXX")
LOG="$RES/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "gpu_check: $(date -u +%FT%TZ) mode=$([ "$CPU" = 1 ] && echo cpu-smoke || echo gpu) budget=${BUDGET}s results=$RES scratch=$SCRATCH"
: > "$SCRATCH/timing.tsv"

want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# stage NAME LIMIT CMD...: run with its own timeout, clamped to what is left of the budget
stage() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, budget spent =="; printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 0 >> "$SCRATCH/timing.tsv"
    return 1
  fi
  echo "== $name (timeout ${limit}s, $(left)s of the budget left) =="
  local t0 rc; t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@"; rc=$?
  local secs; secs=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))" 2>/dev/null || echo 0)
  [ $rc -eq 124 ] && echo "== $name: TIMED OUT after ${limit}s =="
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit" >> "$SCRATCH/timing.tsv"
  return $rc
}

# ---- setup: which python, which packages
setup() {
  PY=${PYTHON:-}
  if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import torch, snakemake" 2>/dev/null; then
      PY="$REPO/.venv/bin/python"
    else
      PY=python3
    fi
  fi
  echo "python: $PY ($($PY -c 'import sys; print(sys.version.split()[0])'))"
  if ! $PY -c "import snakemake, zarr, datasets, jsonschema" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
      local site="$SCRATCH/site"
      echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site (no index, no deps)"
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || echo "setup: pip install from .whl failed (the workflow stage will say what is missing)"
      export PYTHONPATH="$site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    else
      echo "setup: snakemake/zarr/datasets/jsonschema missing and no .whl/ to install from:" \
           "run 'bash bench/gpu_check.sh --fetch-wheels' where PyPI is reachable and carry .whl"
      export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
  else
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
}
T0=$(date +%s.%N)
setup
printf '%s\t%s\t%s\t%s\n' setup 0 "$(python3 -c "print(round($(date +%s.%N) - $T0, 1))" 2>/dev/null || echo 0)" 0 \
  >> "$SCRATCH/timing.tsv"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv

CPUFLAG=(); TINY=()
if [ "$CPU" = 1 ]; then CPUFLAG=(--cpu); TINY=(--tiny); export CUDA_VISIBLE_DEVICES=""; fi
GC=("$PY" tests/system/gpu_checks.py --scratch "$SCRATCH" "${CPUFLAG[@]}")

stage env 60 "${GC[@]}" env
want numerics && stage numerics 90 "${GC[@]}" numerics
if want mfu; then
# MFU: full and LoRA in amp (what the study runs) and bf16 weights (lower bound), 10 timed steps each
stage mfu_run 150 "$PY" bench/gpu_mfu.py "${TINY[@]}" --precision both --out "$SCRATCH/mfu_raw.json"
stage mfu 30 "${GC[@]}" mfu --mfu-json "$SCRATCH/mfu_raw.json"
SHORT=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1])).get('shortfall', True)))" \
        "$SCRATCH/mfu.json" 2>/dev/null || echo 1)
if [ "$SHORT" = 1 ] || [ "$FORCE_PROFILE" = 1 ] || [ "$CPU" = 1 ]; then
  # where the time goes: a few steps of each method under torch.profiler (amp, the study's precision)
  stage profile_run 90 "$PY" bench/gpu_mfu.py "${TINY[@]}" --precision amp --steps 3 --warmup 2 --profile 3 \
    --out "$SCRATCH/mfu_profile.json"
  [ -f "$SCRATCH/mfu_profile.json" ] && cp "$SCRATCH/mfu_profile.json" "$RES/mfu_profile.json"
  stage profile 30 "${GC[@]}" profile --mfu-json "$SCRATCH/mfu_profile.json"
fi
fi
if ! want workflow; then
  :
elif [ "$CPU" != 1 ] || [ -n "$WITH_WORKFLOW" ]; then
  [ -z "$TASKS" ] && { [ "$CPU" = 1 ] && TASKS=sst2 || TASKS=sst2,squad_v2; }
  # the rest of the budget, less room for the summary
  WF_LIMIT=$(( $(left) - 20 ))
  stage workflow "$WF_LIMIT" "${GC[@]}" workflow --tasks "$TASKS" --timeout $((WF_LIMIT - 10)) \
    --logs-tgz "$RES/workflow_logs.tgz"
else
  echo "== workflow: skipped in the CPU smoke test (add --with-workflow to run it on the CPU) =="
fi
"$PY" tests/system/gpu_checks.py --scratch "$SCRATCH" "${CPUFLAG[@]}" summary --out "$RES/gpu_check.json"
RC=$?
echo "gpu_check: $(( $(date +%s) - START )) s in all (budget ${BUDGET} s); results in $RES"
# the scratch folder (workflow run, stage JSONs) stays only with FTDRIFT_GPU_CHECK_KEEP=1
if [ "${FTDRIFT_GPU_CHECK_KEEP:-0}" = 1 ]; then echo "scratch kept: $SCRATCH"; else rm -rf "$SCRATCH"; fi
exit $RC
