"""Helpers of tests/system/chaos_slurm.py: folder watches through inotify (the inotify_simple
package), a fine-tuning job's on-disk state (checkpoints, snapshot store) and freezing/killing the
job's training process.

Why inotify and SIGSTOP: the tiny model's checkpoint and snapshot writes last milliseconds, too
short to hit by polling. The chaos loop is told by the kernel the moment a write begins (a
checkpoint folder or a snapshot chunk folder appears), freezes the training process with SIGSTOP,
records the files as they are, and then kills it (scancel or SIGKILL): on disk this is exactly a
kill at that instant, since a stopped process writes nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from inotify_simple import INotify, flags

WATCH_MASK = flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE


class FolderWatch:
    """Non-recursive inotify watches on chosen folders (Linux): `add(folder)` one at a time,
    `events(timeout)` -> [(folder, name, mask)] (mask: inotify_simple.flags); a queue overflow
    comes as (Path("/"), "", mask)."""

    def __init__(self):
        self._inotify = INotify(nonblocking=True)
        self.paths: dict[int, Path] = {}

    def add(self, path: Path) -> bool:
        """Watch one folder; False when it does not exist (yet)."""
        path = Path(path)
        if path in self.paths.values():
            return True
        try:
            wd = self._inotify.add_watch(path, WATCH_MASK)
        except OSError:
            return False
        self.paths[wd] = path
        return True

    def events(self, timeout: float) -> list[tuple[Path, str, int]]:
        """The events queued so far, else those of the first `timeout` seconds that bring any."""
        out = []
        for event in self._inotify.read(timeout=max(0, round(timeout * 1000))):
            if event.wd in self.paths:
                out.append((self.paths[event.wd], event.name, event.mask))
            elif event.mask & flags.Q_OVERFLOW:
                out.append((Path("/"), "", event.mask))
        return out

    def close(self) -> None:
        self._inotify.close()


# -- the job's state on disk ------------------------------------------------------------------

def checkpoints(work: Path) -> dict[int, list[str]]:
    """{step: sorted file names} of every checkpoint-N folder in `work`/checkpoints."""
    out = {}
    folder = work / "checkpoints"
    if folder.is_dir():
        for path in folder.glob("checkpoint-*"):
            suffix = path.name.rsplit("-", 1)[-1]
            if suffix.isdigit():
                try:
                    out[int(suffix)] = sorted(p.name for p in path.iterdir())
                except FileNotFoundError:  # rotated away meanwhile
                    pass
    return out


def complete_checkpoints(work: Path) -> set[int]:
    """Steps of checkpoints whose trainer_state.json (the Trainer writes it last) exists."""
    return {step for step, files in checkpoints(work).items() if "trainer_state.json" in files}


def _shape(path: Path) -> int | str:
    try:
        return int(json.loads(path.read_text())["shape"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return f"unreadable ({type(e).__name__})"


def store_state(work: Path) -> dict:
    """The snapshot store's metadata as on disk: the step array's length and values, each pooling
    array's snapshot-axis length and its chunk folders (one per snapshot index)."""
    store = work / "representations.zarr"
    state = {"step_len": _shape(store / "step" / "zarr.json"), "steps": None, "poolings": {}}
    try:
        import zarr

        state["steps"] = [int(s) for s in zarr.open_group(str(store), mode="r")["step"][...]]
    except Exception as e:  # noqa: BLE001 -- a store caught mid-write may not open: that is evidence
        state["steps"] = f"unreadable ({type(e).__name__})"
    if store.is_dir():
        for sub in sorted(store.iterdir()):
            if sub.is_dir() and sub.name != "step":
                chunks = sorted(int(p.name) for p in (sub / "c").glob("*") if p.name.isdigit()) \
                    if (sub / "c").is_dir() else []
                state["poolings"][sub.name] = {"len": _shape(sub / "zarr.json"), "chunk_dirs": chunks}
    return state


def store_mid_append(state: dict) -> bool:
    """True when the store is caught inside SnapshotStore.append: a pooling array longer than the
    step array, a chunk folder past the step array's end, or metadata unreadable mid-write."""
    n = state["step_len"]
    if not isinstance(n, int):
        return True
    for info in state["poolings"].values():
        if not isinstance(info["len"], int) or info["len"] != n or any(i >= n for i in info["chunk_dirs"]):
            return True
    return isinstance(state["steps"], str)


# -- processes --------------------------------------------------------------------------------

def training_pid(jobid: str) -> int | None:
    """The pid of the job's training script (`python .snakemake/scripts/tmp*.finetune.py`): among the
    processes SLURM lists for the job, else among those whose environment has SLURM_JOB_ID=jobid."""
    candidates = []
    listed = subprocess.run(["scontrol", "listpids", jobid], capture_output=True, text=True)
    for line in listed.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            candidates.append(int(fields[0]))
    if not candidates:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"SLURM_JOB_ID={jobid}".encode() in env:
                    candidates.append(int(entry))
    for pid in candidates:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b".finetune.py") and b".snakemake/scripts" in part for part in cmd):
            return pid
    return None


def run_of(pid: int, workdir: Path) -> str | None:
    """The run (RUN_PATTERN, e.g. sst2/full/lr1e-3_bs4_seed1) whose rule log the process has open."""
    logs = (workdir / "results" / "logs" / "finetune").resolve()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if target.suffix == ".log" and logs in target.parents:
            return target.relative_to(logs).with_suffix("").as_posix()
    return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def freeze(pid: int) -> bool:
    """SIGSTOP the process and wait (<= 0.2 s) until the kernel reports it stopped; False if gone
    or not stopped in time."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    for _ in range(200):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.001)
    # still not stopped (e.g. in an uninterruptible write on a slow disk): the caller thaws and
    # retries, rather than record evidence while the write goes on
    return False


def thaw(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
