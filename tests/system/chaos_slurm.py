"""Preemption for real: the tiny study through the SLURM profile while a seeded chaos loop kills
fine-tuning jobs, compared bit for bit with an undisturbed run.

    python tests/system/chaos_slurm.py --seed 0 [--kills 6] [--workdir DIR] [--max-rounds 8] [--snapshot-steps 3]

1. Starts the single-node SLURM of `.ci/slurm.sh` (install + start; needs root and apt) and builds
   the inputs once (ftdrift.testing.make_tiny_workdir: task files, tiny Llama, tiny.yaml; SST-2
   only, full fine-tuning and LoRA) for two run folders, so that no output differs by a path.
   Fine-tuning is long enough to hit: 48 optimizer steps, a checkpoint and a dev evaluation every
   4 steps, a snapshot every 3 (off the checkpoint cadence on purpose), no early stopping.
2. The reference runs undisturbed with the local executor, alongside the chaos run (tests/system/test_slurm.py
   shows the SLURM and local executors produce byte-identical results here: same thread count, same
   seeds). Both build the aggregate tables (target results/tables/runs.csv and its siblings).
3. The chaos run goes through `--workflow-profile profiles/slurm`. A seeded plan (random.Random(seed))
   lists the kills: each phase (training, checkpoint write, snapshot write) once, then each again
   with the other method (scancel, or SIGKILL of the training process), then random ones. Each running fine-tuning
   SLURM job of ours gets the next planned kill: the loop waits until the attempt has written a new
   complete checkpoint, then for the phase -- a random moment between writes, the Trainer filling
   a checkpoint-N folder (frozen at a chosen file of it), or SnapshotStore.append growing the store --
   learns of it by inotify, freezes the process (SIGSTOP), records the files (the evidence) and kills
   it (chaos_watch.py beside this script). A kill the job outran goes back to the plan. `finetune` has
   `retries: 0`, so a killed job fails the invocation; the script re-invokes Snakemake
   (`--rerun-incomplete`) until it succeeds (at most --max-rounds). Once every finetune job of a
   round is dead and no job of ours is left in SLURM, the doomed invocation is ended with SIGINT
   (the slurm plugin's backed-off status checks would take a minute or more to notice).
4. Every result file of ftdrift.testing.result_files (the files tests/system/test_slurm.py compares too: all
   but logs, work folders, W&B, benchmarks, .log, .html) is compared with the reference's: byte for
   byte; where bytes differ, JSON keys and CSV columns holding wall-clock measurements (`seconds`,
   `*_seconds`, `*runtime*`, `*per_second*`, `cpu_rss*`, `resumed_from`) are dropped, a CSV's column
   order is reported, and the rest must be equal. Prints a summary (kills by phase and method with
   the files seen at each kill, rounds, resumes and removed partial checkpoints seen in the logs,
   "bitwise equal: N files", wall time) and writes it to DIR/summary.json. Differences are listed
   with their first differing values; a representation chunk is decoded and named by snapshot step.

Exit status: 0 all equal and the plan's kills landed; 1 a result differs; 2 the chaos fell short
(fewer kills than --kills, or a phase never hit) or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import chaos_watch as cw  # beside this script (python puts a script's own folder first on sys.path)
from inotify_simple import flags

from ftdrift.testing import REPO, TINY_CONFIG, make_tiny_workdir, result_files, snakemake_command

PHASES = ("training", "checkpoint", "snapshot")
METHODS = ("scancel", "sigkill")
TARGET = "results/tables/runs.csv"  # the aggregate rule: every table, from every run's outputs
TASKS = ["sst2"]
TRAINING = {"max_steps": 48, "eval_steps": 4, "save_steps": 4, "logging_steps": 2, "early_stopping_patience": None}
SNAPSHOT_STEPS = 3
# the checkpoint file whose creation freezes the job ("" = the checkpoint-N folder itself)
CHECKPOINT_FILES = ("", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt")
# wall-clock measurements (and where a resumed job resumed from) inside otherwise deterministic files:
# JSON keys and CSV columns matching this are dropped before comparing, and listed
VOLATILE_FIELD = re.compile(r"runtime|per_second|(^|_)seconds$|cpu_rss|^resumed_from$")
UNORDERED_KEYS = {"target_modules"}
RESUME_LINE = re.compile(r"ftdrift\.training\.recipe: resuming (\S+) from (\S+)")
INCOMPLETE_LINE = re.compile(r"removing incomplete checkpoint (\S+)")


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- set-up -----------------------------------------------------------------------------------

def start_slurm() -> None:
    for step, limit in (("install", 900), ("start", 300)):
        proc = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), step], capture_output=True, text=True,
                              timeout=limit)
        if proc.returncode != 0:
            raise SystemExit(f"chaos: .ci/slurm.sh {step} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def build_inputs(path: Path, snapshot_steps: int) -> Path:
    """The task files, the tiny Llama and tiny.yaml, shared by both runs: their outputs record input
    paths (splits.json, store attributes), which must not differ."""
    training = {**TINY_CONFIG["training"], **TRAINING}
    representations = {**TINY_CONFIG["representations"], "snapshot_steps": snapshot_steps}
    return make_tiny_workdir(path, tasks=TASKS, training=training, representations=representations)


def snakemake_cmd(workdir: Path, configfile: Path, *extra: str) -> list[str]:
    return snakemake_command(workdir, *extra, TARGET, configfile=configfile)


SLURM_ARGS = ("--workflow-profile", str(REPO / "profiles" / "slurm"), "--jobs", "4",
              "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
              "--slurm-keep-successful-logs")
ENV = {**os.environ, "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", "FTDRIFT_SLURM_PARTITION": "debug"}


# -- the chaos --------------------------------------------------------------------------------

@dataclass
class Kill:
    number: int
    phase: str
    method: str
    checkpoint_file: str = ""
    delay: float = 0.0  # training phase: seconds after the attempt's first new complete checkpoint


@dataclass
class Record:
    kill: Kill
    round: int
    jobid: str
    run: str
    hit: bool = False
    reason: str = ""
    at_kill: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    death_seconds: float | None = None


def make_plan(rng: random.Random, kills: int) -> list[Kill]:
    """The kills in order: every phase once first (random method), then every phase with the other
    method, then random (phase, method) pairs; each with a random checkpoint file and delay."""
    first = [(phase, rng.choice(METHODS)) for phase in PHASES]
    second = [(phase, METHODS[1 - METHODS.index(method)]) for phase, method in first]
    rng.shuffle(first)
    rng.shuffle(second)
    extra = [(rng.choice(PHASES), rng.choice(METHODS)) for _ in range(max(0, kills - 6))]
    return [Kill(i + 1, phase, method, rng.choice(CHECKPOINT_FILES), round(rng.uniform(0.02, 0.4), 3))
            for i, (phase, method) in enumerate((first + second + extra)[:kills])]


def our_jobs(workdir: Path) -> tuple[list[str], list[str]] | None:
    """(running finetune jobs, all active jobs) of this chaos run, as SLURM job ids; jobs of other
    users of the node (other working folders) are left alone. None when squeue does not answer."""
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None  # a controller hiccup: unknown, not "no jobs"
    running, active = [], []
    for line in proc.stdout.splitlines():
        jobid, state, comment, cwd = (line.split("|", 3) + ["", "", ""])[:4]
        if Path(cwd.strip()).resolve() != workdir.resolve():
            continue
        if state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"):
            active.append(jobid)
        if state == "RUNNING" and comment.startswith("rule_finetune"):
            running.append(jobid)
    return sorted(running, key=int), active


def evidence(work: Path) -> dict:
    return {"checkpoints": {f"checkpoint-{k}": v for k, v in sorted(cw.checkpoints(work).items())},
            "store": cw.store_state(work)}


def writing(state: dict) -> str | None:
    """Which write the frozen job is inside of, if any."""
    partial = [name for name, files in state["checkpoints"].items() if "trainer_state.json" not in files]
    if partial:
        return f"checkpoint ({', '.join(partial)} without trainer_state.json)"
    if cw.store_mid_append(state["store"]):
        return "snapshot (store mid-append)"
    return None


def attack(workdir: Path, jobid: str, kill: Kill, round_no: int, stop: threading.Event) -> Record:
    """Wait for the planned phase in one running finetune job, freeze it there, record, kill."""
    rec = Record(kill, round_no, jobid, "")
    deadline = time.time() + 600
    pid = None
    while time.time() < deadline and not stop.is_set() and pid is None:
        pid = cw.training_pid(jobid)
        if pid is None:
            time.sleep(0.1)
    while pid and not rec.run and cw.alive(pid) and time.time() < deadline:
        rec.run = cw.run_of(pid, workdir) or ""
        time.sleep(0.05)
    if not pid or not rec.run:
        rec.reason = "no training process found"
        return rec
    work = workdir / "results" / "work" / rec.run
    start_complete = cw.complete_checkpoints(work)
    ino = cw.FolderWatch()
    store = work / "representations.zarr"

    def watch_all():
        for folder in (work, work / "checkpoints", store):
            ino.add(folder)
        if store.is_dir():
            for sub in store.iterdir():
                if sub.is_dir() and sub.name != "step":
                    ino.add(sub)
                    ino.add(sub / "c")

    watch_all()
    armed_at = None
    pending_checkpoint: Path | None = None
    try:
        while cw.alive(pid) and time.time() < deadline and not stop.is_set():
            events = ino.events(0.01)
            for folder, name, mask in events:
                if mask & flags.ISDIR and mask & (flags.CREATE | flags.MOVED_TO):
                    ino.add(folder / name)
                    if folder == store or folder.parent == store:
                        ino.add(folder / name / "c")
            if armed_at is None:
                watch_all()
                if cw.complete_checkpoints(work) - start_complete:
                    armed_at = time.time()
                continue
            frozen_for = None
            if kill.phase == "training":
                if time.time() >= armed_at + kill.delay:
                    frozen_for = "training"
            elif kill.phase == "checkpoint":
                complete = cw.complete_checkpoints(work)
                for folder, name, mask in events:
                    if folder == work / "checkpoints" and name.startswith("checkpoint-") and mask & flags.ISDIR:
                        step = name.rsplit("-", 1)[-1]
                        if step.isdigit() and int(step) not in complete:
                            pending_checkpoint = folder / name
                    elif pending_checkpoint is not None and folder == pending_checkpoint and \
                            kill.checkpoint_file and name == kill.checkpoint_file:
                        frozen_for = "checkpoint"
                if pending_checkpoint is not None and frozen_for is None:
                    files = set(os.listdir(pending_checkpoint)) if pending_checkpoint.is_dir() else set()
                    if "trainer_state.json" in files or not pending_checkpoint.is_dir():
                        pending_checkpoint = None  # outran us: wait for the next checkpoint
                    elif not kill.checkpoint_file or kill.checkpoint_file in files:
                        frozen_for = "checkpoint"
            elif kill.phase == "snapshot":
                if any(folder != store / "step" and store in (folder, *folder.parents) and folder != store
                       for folder, _name, _mask in events):
                    frozen_for = "snapshot"
            if frozen_for is None:
                continue
            if not cw.freeze(pid):
                if cw.alive(pid):  # not stopped in time (a write in progress): let it go, try again
                    cw.thaw(pid)
                    continue
                break
            state = evidence(work)
            seen = writing(state)
            wanted = {"training": seen is None, "checkpoint": bool(seen and seen.startswith("checkpoint")),
                      "snapshot": bool(seen and seen.startswith("snapshot"))}[kill.phase]
            if not wanted:
                cw.thaw(pid)
                if kill.phase == "training":
                    armed_at = time.time() - kill.delay + 0.03  # a write was under way: try again just after
                continue
            rec.at_kill = {**state, "phase_seen": seen or "training (no write under way)",
                           "frozen_after_armed_s": round(time.time() - armed_at, 3)}
            killed_at = time.time()
            if kill.method == "scancel":
                subprocess.run(["scancel", jobid], capture_output=True, text=True)
            else:
                os.kill(pid, signal.SIGKILL)
            while cw.alive(pid) and time.time() < killed_at + 120:
                time.sleep(0.05)
            if cw.alive(pid):  # should not happen: SLURM's KillWait ends in SIGKILL
                os.kill(pid, signal.SIGKILL)
                rec.reason = "still alive 120 s after scancel: SIGKILLed"
            rec.death_seconds = round(time.time() - killed_at, 2)
            rec.after = evidence(work)
            rec.hit = True
            return rec
        rec.reason = "job ended before the phase came" if armed_at else "job ended before a new checkpoint"
        return rec
    finally:
        if not rec.hit and cw.alive(pid):
            cw.thaw(pid)  # never leave a job of ours frozen
        ino.close()


def chaos_rounds(workdir: Path, configfile: Path, plan: list[Kill], max_rounds: int, outdir: Path) -> tuple[list[Record], list[dict]]:
    records: list[Record] = []
    rounds = []
    for round_no in range(1, max_rounds + 1):
        extra = [*SLURM_ARGS] + (["--rerun-incomplete"] if round_no > 1 else [])
        out_path = outdir / f"round-{round_no}.snakemake.txt"
        started = time.time()
        with open(out_path, "w") as out:
            proc = subprocess.Popen(snakemake_cmd(workdir, configfile, *extra), stdout=out, stderr=subprocess.STDOUT, env=ENV)
        attacked: set[str] = set()
        threads: list[threading.Thread] = []
        results: list[Record] = []
        stop = threading.Event()
        lock = threading.Lock()
        quiet_since, interrupted = None, False
        while proc.poll() is None:
            with lock:
                free = [k for k in plan]
            seen = our_jobs(workdir)
            if seen is None:
                time.sleep(1)
                continue
            running, active = seen
            jobs = [j for j in running if j not in attacked] if free else []
            # Every finetune job of this round is dead by our hand and no job of ours is left in
            # SLURM: the invocation can only fail now, but the slurm plugin's status checks back
            # off (+10 s per quiet check) and it takes a minute or more to notice. End it
            # (SIGINT, as a user's Ctrl-C) so the next round starts; --rerun-incomplete cleans up.
            with lock:
                all_killed = bool(attacked) and len(results) == len(attacked) and all(r.hit for r in results)
            if all_killed and not active and not jobs:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since > 5 and not interrupted:
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
            else:
                quiet_since = None
            for jobid in jobs:
                with lock:
                    if not plan:
                        break
                    kill = plan.pop(0)
                attacked.add(jobid)

                def run(jobid=jobid, kill=kill):
                    rec = attack(workdir, jobid, kill, round_no, stop)
                    with lock:
                        results.append(rec)
                        if not rec.hit:
                            plan.insert(0, rec.kill)  # the job outran it: next job gets it
                    tag = f"kill {kill.number} ({kill.phase}, {kill.method}) job {jobid} {rec.run}"
                    log(f"{tag}: " + (f"HIT, {rec.at_kill['phase_seen']}, dead after {rec.death_seconds}s"
                                      if rec.hit else f"missed: {rec.reason}"))

                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                threads.append(thread)
            time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        plan.sort(key=lambda k: k.number)
        records.extend(results)
        keep = outdir / f"round-{round_no}.logs"
        if (workdir / "results" / "logs" / "finetune").is_dir():
            shutil.copytree(workdir / "results" / "logs" / "finetune", keep, dirs_exist_ok=True)
        hits = sum(r.hit for r in results)
        rounds.append({"round": round_no, "returncode": proc.returncode, "seconds": round(time.time() - started, 1),
                       "kills": hits, "interrupted": interrupted})
        log(f"round {round_no}: snakemake exit {proc.returncode} after {rounds[-1]['seconds']} s, {hits} kill(s)"
            + (" (ended by SIGINT once all its jobs were gone)" if interrupted else ""))
        if proc.returncode == 0:
            break
        if hits == 0 and round_no > 1:
            # a failure the chaos did not cause: a retry of an identical invocation may still pass
            # (other rules retry), but two in a row means a real problem
            if len(rounds) >= 2 and rounds[-2]["kills"] == 0:
                break
    return records, rounds


# -- comparison -------------------------------------------------------------------------------

def _strip(payload, dropped: set, path: str = ""):
    """`payload` without VOLATILE_FIELD keys (their paths go to `dropped`)."""
    if isinstance(payload, dict):
        out = {}
        for key, value in payload.items():
            if VOLATILE_FIELD.search(str(key)):
                dropped.add(f"{path}/{key}")
            elif key in UNORDERED_KEYS and isinstance(value, list):
                # peft keeps target_modules as a set and saves it in string-hash order, which
                # changes with every process (PYTHONHASHSEED): not a resume effect
                dropped.add(f"{path}/{key} (order)")
                out[key] = sorted(value, key=str)
            else:
                out[key] = _strip(value, dropped, f"{path}/{key}")
        return out
    if isinstance(payload, list):
        return [_strip(v, dropped, f"{path}[]") for v in payload]
    return payload


def _json_diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only in {'reference' if key in a else 'chaos'}")
            else:
                out.extend(_json_diff(a[key], b[key], f"{path}/{key}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: reference {a!r} != chaos {b!r}"[:300]]


def _csv_diff(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(differences in non-timing columns, dropped timing columns)."""
    import pandas as pd

    # as written: the exact text of every cell
    fa, fb = (pd.read_csv(p, dtype=str, keep_default_na=False) for p in (a, b))
    dropped = sorted(c for c in set(fa.columns) | set(fb.columns) if VOLATILE_FIELD.search(str(c)))
    fa, fb = fa.drop(columns=dropped, errors="ignore"), fb.drop(columns=dropped, errors="ignore")
    if list(fa.columns) != list(fb.columns) and sorted(fa.columns) == sorted(fb.columns):
        # same columns in another order (a resumed run's log history comes back from
        # trainer_state.json with sorted keys): a finding, reported, not a value difference
        dropped.append("column order " + ",".join(fb.columns))
        fb = fb[list(fa.columns)]
    if list(fa.columns) != list(fb.columns) or fa.shape != fb.shape:
        out = [f"columns/shape differ: {list(fa.columns)} {fa.shape} vs {list(fb.columns)} {fb.shape}"]
        if "step" in fa.columns and list(fa.columns) == list(fb.columns):
            sa, sb = set(fa.step.astype(int)), set(fb.step.astype(int))
            common = sorted(sa & sb)
            same = fa[fa.step.astype(int).isin(common)].reset_index(drop=True).equals(
                fb[fb.step.astype(int).isin(common)].reset_index(drop=True))
            out.append(f"steps only in the chaos run: {sorted(sb - sa)}, only in the reference: {sorted(sa - sb)}; "
                       f"rows of the {len(common)} common steps {'identical' if same else 'DIFFER'}")
        return out, dropped
    out = []
    for col in fa.columns:
        x, y = fa[col], fb[col]
        rows = list(x.index[x != y])
        if rows:
            r = rows[0]
            out.append(f"column {col}: {len(rows)} rows differ, first row {r}: reference {x[r]} != chaos {y[r]}")
    return out, dropped


def _store_diff(store: str, a_root: Path, b_root: Path) -> list[str]:
    """A representation store's differences by snapshot step: steps only in one run, and for the
    steps both have, whether each pooling's values are identical (else the first differing value)."""
    import warnings

    import numpy as np
    import zarr

    warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
    try:
        ga, gb = zarr.open_group(str(a_root / store), mode="r"), zarr.open_group(str(b_root / store), mode="r")
    except Exception as e:  # noqa: BLE001 -- a diagnosis, best effort
        return [f"(could not open: {type(e).__name__}: {e})"]
    if "step" not in ga or "step" not in gb:  # a base store: [layer, example, hidden] per pooling
        out = []
        for name in sorted(set(ga.array_keys()) | set(gb.array_keys())):
            va, vb = ga[name][...], gb[name][...]
            if va.shape != vb.shape or not np.array_equal(va, vb):
                out.append(f"{name}: differs (shapes {va.shape} vs {vb.shape})")
        return out or ["values identical (metadata differs)"]
    sa, sb = [int(s) for s in ga["step"][...]], [int(s) for s in gb["step"][...]]
    out = [f"steps reference {sa}", f"steps chaos     {sb}"]
    if set(sb) - set(sa):
        out.append(f"snapshot steps only in the chaos run: {sorted(set(sb) - set(sa))}")
    if set(sa) - set(sb):
        out.append(f"snapshot steps missing from the chaos run: {sorted(set(sa) - set(sb))}")
    for name in sorted(k for k in ga.array_keys() if k != "step"):
        bad = []
        for i, step in enumerate(sa):
            if step in sb:
                va, vb = ga[name][i], gb[name][sb.index(step)]
                if not np.array_equal(va, vb):
                    where = np.unravel_index(int(np.argmax(va != vb)), va.shape)
                    bad.append(f"step {step} at {tuple(int(w) for w in where)}: {va[where]} vs {vb[where]}")
        common = len(set(sa) & set(sb))
        out.append(f"{name}: {common - len(bad)} of {common} common steps bitwise equal"
                   + (f"; differing: {'; '.join(bad[:3])}" if bad else ""))
    if sa != sb:
        out.append("(chunk files are numbered by position, so every chunk after the first extra step differs)")
    return out


def compare(ref: Path, chaos: Path) -> dict:
    a, b = result_files(ref), result_files(chaos)
    bitwise, normalised, diffs = [], {}, {}
    for rel in sorted(set(a) | set(b)):
        if rel not in a or rel not in b:
            diffs[rel] = [f"only in {'reference' if rel in a else 'chaos run'}"]
            continue
        if a[rel].read_bytes() == b[rel].read_bytes():
            bitwise.append(rel)
            continue
        if rel.endswith(".csv"):
            found, dropped = _csv_diff(a[rel], b[rel])
        elif rel.endswith(".json"):
            seen: set = set()
            found = _json_diff(_strip(json.loads(a[rel].read_text()), seen), _strip(json.loads(b[rel].read_text()), seen))
            dropped = sorted(seen)
        else:
            ba, bb = a[rel].read_bytes(), b[rel].read_bytes()
            offset = next((i for i, (x, y) in enumerate(zip(ba, bb)) if x != y), min(len(ba), len(bb)))
            found, dropped = [f"bytes differ ({len(ba)} vs {len(bb)} bytes), first at offset {offset}"], []
        if found or not dropped:
            diffs[rel] = (found or ["differs"]) + ([f"(also, not counted: {', '.join(dropped)})"] if found and dropped
                                                   else [])
        else:
            normalised[rel] = dropped
    # one entry per representation store, diagnosed by snapshot step, instead of one per chunk file
    stores: dict[str, list[str]] = {}
    for rel in [r for r in diffs if ".zarr/" in r]:
        store = rel[: rel.index(".zarr/") + len(".zarr")]
        stores.setdefault(store, []).append(diffs.pop(rel)[0])
    for store, lines in stores.items():
        diffs[store + "/"] = [f"{len(lines)} files differ"] + _store_diff(store, ref, chaos)
    return {"files": len(set(a) | set(b)), "bitwise": bitwise, "normalised": normalised, "diffs": diffs}


def resumes_seen(outdir: Path) -> dict:
    resumes, removed = set(), set()
    for path in outdir.glob("round-*.logs/**/*.log"):
        for line in path.read_text(errors="replace").replace("\r", "\n").splitlines():
            if RESUME_LINE.search(line):
                resumes.add(line.strip())
            if INCOMPLETE_LINE.search(line):
                removed.add(line.strip())
    return {"resumes": sorted(resumes), "incomplete_checkpoints_removed": sorted(removed)}


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (phases, methods, delays)")
    parser.add_argument("--kills", type=int, default=6, help="kills to land (>= 3: every phase once)")
    parser.add_argument("--workdir", type=Path, help="empty or new folder for both runs (default: a temp folder)")
    parser.add_argument("--max-rounds", type=int, default=8, help="cap on Snakemake invocations of the chaos run")
    parser.add_argument("--snapshot-steps", type=int, default=SNAPSHOT_STEPS,
                        help="snapshot cadence; the default 3 puts checkpoints (every 4 steps) off the cadence")
    args = parser.parse_args(argv)
    t0 = time.time()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ftdrift-chaos-"))
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"chaos: --workdir {root} is not empty")
    outdir = root / "chaos-records"
    outdir.mkdir(parents=True)
    log(f"work folder {root}; starting SLURM")
    start_slurm()
    inputs = build_inputs(root / "inputs", args.snapshot_steps)
    configfile = inputs / "tiny.yaml"
    ref, chaos = root / "reference", root / "chaos"
    ref.mkdir()
    chaos.mkdir()
    rng = random.Random(args.seed)
    plan = make_plan(rng, args.kills)
    log("plan: " + "; ".join(f"{k.number}: {k.phase}/{k.method}" for k in plan))
    with open(outdir / "reference.snakemake.txt", "w") as out:
        reference = subprocess.Popen(snakemake_cmd(ref, configfile), stdout=out, stderr=subprocess.STDOUT, env=ENV)
    records, rounds = chaos_rounds(chaos, configfile, plan, args.max_rounds, outdir)
    ref_rc = reference.wait()
    log(f"reference run: exit {ref_rc}")
    report = {"seed": args.seed, "workdir": str(root), "rounds": rounds, "reference_returncode": ref_rc,
              "kills": [asdict(r) for r in records if r.hit], "missed": [asdict(r) for r in records if not r.hit],
              **resumes_seen(outdir)}
    status = 0
    if ref_rc != 0 or rounds[-1]["returncode"] != 0:
        log(f"a run failed (reference exit {ref_rc}, last chaos round exit {rounds[-1]['returncode']}): "
            f"see {outdir}/*.snakemake.txt")
        status = 2
    else:
        report["comparison"] = compare(ref, chaos)
    report["wall_seconds"] = round(time.time() - t0, 1)
    (root / "summary.json").write_text(json.dumps(report, indent=1, default=str))
    status = summarise(report, args.kills, status)
    return status


def summarise(report: dict, wanted: int, status: int) -> int:
    hits = report["kills"]
    print("\n=== chaos run through profiles/slurm: summary ===")
    print(f"seed {report['seed']}, work folder {report['workdir']}")
    print(f"kills landed: {len(hits)} (planned {wanted}); missed attempts (job outran the phase): "
          f"{len(report['missed'])}")
    table: dict[tuple[str, str], int] = {}
    for r in hits:
        key = (r["kill"]["phase"], r["kill"]["method"])
        table[key] = table.get(key, 0) + 1
    for phase in PHASES:
        print(f"  {phase:<10} " + "  ".join(f"{m}: {table.get((phase, m), 0)}" for m in METHODS))
    for r in hits:
        state = r["at_kill"]
        complete = [k for k, files in state["checkpoints"].items() if "trainer_state.json" in files]
        partial = {k: files for k, files in state["checkpoints"].items() if "trainer_state.json" not in files}
        store = state["store"]
        print(f"  #{r['kill']['number']} round {r['round']} job {r['jobid']} {r['run']}: {r['kill']['phase']} via "
              f"{r['kill']['method']}; seen: {state['phase_seen']}; complete checkpoints {complete}"
              + (f"; partial {partial}" if partial else "")
              + f"; store steps {store['steps']} (step len {store['step_len']}, poolings "
              + ", ".join(f"{p} len {i['len']} chunks {i['chunk_dirs'][-2:]}" for p, i in store["poolings"].items())
              + f"); dead after {r['death_seconds']} s")
    print(f"rounds: {len(report['rounds'])} " + ", ".join(
        f"#{r['round']} exit {r['returncode']} {r['seconds']}s {r['kills']} kill(s)" for r in report["rounds"]))
    print(f"resumes seen in the finetune logs: {len(report['resumes'])}")
    for line in report["resumes"]:
        print(f"  {line}")
    print(f"incomplete checkpoints removed on resume: {len(report['incomplete_checkpoints_removed'])}")
    for line in report["incomplete_checkpoints_removed"]:
        print(f"  {line}")
    cmp = report.get("comparison")
    if cmp:
        print(f"bitwise equal: {len(cmp['bitwise'])} files (of {cmp['files']}); equal once timing fields are "
              f"dropped: {len(cmp['normalised'])} files")
        for rel, dropped in cmp["normalised"].items():
            print(f"  {rel}: dropped {', '.join(dropped)}")
        if cmp["diffs"]:
            print(f"MISMATCH: {len(cmp['diffs'])} files differ from the undisturbed run:")
            for rel, lines in cmp["diffs"].items():
                print(f"  {rel}")
                for line in lines[:8]:
                    print(f"      {line}")
            status = 1
    phases_hit = {r["kill"]["phase"] for r in hits}
    if status == 0 and (len(hits) < wanted or (wanted >= len(PHASES) and phases_hit != set(PHASES))):
        print(f"CHAOS FELL SHORT: {len(hits)} of {wanted} kills, phases hit {sorted(phases_hit)}")
        status = 2
    print(f"wall time: {report['wall_seconds']} s")
    print("RESULT: " + {0: "PASS", 1: "FAIL (results differ)", 2: "FAIL (run failed or chaos fell short)"}[status])
    return status


if __name__ == "__main__":
    sys.exit(main())
