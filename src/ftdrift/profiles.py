"""Make `snakemake --profile gcp-gpu` (the bare name) work: link the project's cluster profiles
into the user's Snakemake configuration directory.

Snakemake 9 looks a bare `--profile NAME` up in the working directory, then in
platformdirs' user config dir for "snakemake" ($XDG_CONFIG_HOME/snakemake, default
~/.config/snakemake, on Linux; ~/Library/Application Support/snakemake on macOS), then the site
config dir (/etc/xdg/snakemake): snakemake.cli.get_profile_dir. `install` symlinks the cluster
profiles (profiles/gcp-gpu, profiles/slurm: each whose executor is not local) there, so edits in
the repository take effect at once.
The profiles' relative entries (`configfile: config/study.yaml`, pyproject.toml for the image
tag) resolve against the working directory, so run Snakemake from the repository root.

    python -m ftdrift.profiles install [--force] [--dest DIR]
    python -m ftdrift.profiles uninstall [--dest DIR]
    python -m ftdrift.profiles status [--dest DIR]

It also says which profiles there are and what they are: `profile_executors` reads each
profiles/<name>/profile.yaml's `executor:` key (no key: Snakemake's local executor), the cluster
profiles are the others, and `find_profile` / `profile_kind` / `profile_configfile` locate a
profile given by name or path and read its static entries. What an executor needs checked or
priced is its adapter's (ftdrift.executors).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from ftdrift import REPO_ROOT

REPO = REPO_ROOT  # the repository (Snakefile, config/, profiles/)
PROFILES_DIR = REPO / "profiles"
PROFILE_FILES = ("profile.yaml", "config.yaml")
LOCAL = "local"  # Snakemake's executor when a profile names none


class ProfileInstallError(RuntimeError):
    """A profile of the same name, not ours, is in the way (the message names it)."""


def user_profile_dir() -> Path:
    """Where Snakemake looks for bare profile names after the working directory (the same
    platformdirs call as snakemake.common.get_appdirs, read afresh so XDG_CONFIG_HOME counts)."""
    from platformdirs import AppDirs

    return Path(AppDirs("snakemake", "snakemake").user_config_dir)


def profile_file(path: Path) -> Path | None:
    """profile.yaml (or config.yaml) of a profile folder, the path itself if it is a file, else None."""
    if path.is_file():
        return path
    for name in PROFILE_FILES:
        if (path / name).is_file():
            return path / name
    return None


def _static_entries(path: Path) -> dict:
    """A profile file as plain YAML: its YTE markup (`?if`, `?expr`) stays strings, so only the
    static entries (`executor:`, `configfile:`, `jobs:`) mean anything; {} if unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def profile_executors() -> dict[str, str]:
    """{name: executor} of this repository's profiles (profiles/<name>/), sorted by name; the
    executor is the profile's static `executor:` entry, 'local' where it has none."""
    found = {}
    for folder in sorted(PROFILES_DIR.iterdir()) if PROFILES_DIR.is_dir() else ():
        path = profile_file(folder) if folder.is_dir() else None
        if path is not None:
            found[folder.name] = str(_static_entries(path).get("executor") or LOCAL)
    return found


def cluster_profiles() -> tuple[str, ...]:
    """The names of this repository's profiles that submit jobs elsewhere (executor not local):
    what `install` links."""
    return tuple(name for name, executor in profile_executors().items() if executor != LOCAL)


def profile_for_executor(executor: str | None) -> str | None:
    """This repository's (first, by name) profile that uses `executor`, or None."""
    return next((name for name, used in profile_executors().items() if used == executor), None)


def find_profile(profile: str) -> Path | None:
    """The profile file Snakemake would read for `--profile profile` from the current directory,
    falling back to this repository's profiles/ (so `--profile gcp-gpu` works before the install step)."""
    candidates = [Path(profile), Path.cwd() / profile, user_profile_dir() / profile, PROFILES_DIR / profile]
    for candidate in candidates:
        found = profile_file(candidate)
        if found is not None:
            return found
    return None


def profile_kind(profile: str | None) -> str | None:
    """The executor of a profile (a name or path): 'googlebatch', 'slurm', 'local' (a profile file
    without `executor:`), ...; None without a profile or when none is found."""
    if profile is None:
        return None
    ours = profile_executors()
    if profile in ours:  # this project's profiles, by their bare names
        return ours[profile]
    found = find_profile(profile)
    if found is not None:
        return str(_static_entries(found).get("executor") or LOCAL)
    return ours.get(Path(profile).name)


def profile_configfile(profile: str) -> str | None:
    """The profile's static `configfile:` entry (relative to the working directory), if any."""
    found = find_profile(profile)
    if found is None:
        return None
    value = _static_entries(found).get("configfile")
    return value if isinstance(value, str) and not value.startswith("?") else None


def _ours(link: Path, source: Path) -> bool:
    return link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(source))


def install(dest: Path | None = None, names=None, force: bool = False) -> list[str]:
    """Symlink each profile folder profiles/<name> to <dest>/<name> (dest: user_profile_dir();
    names: cluster_profiles()).

    Idempotent: a link that already points at this repository's profile is left alone. Anything
    else of that name (another profile, a link elsewhere) raises ProfileInstallError naming it,
    unless force=True, which replaces a link; a real folder or file is never deleted. All or nothing:
    when one name is blocked, no link is made. Returns one line per profile saying what was done.
    """
    dest = Path(dest) if dest else user_profile_dir()
    names = cluster_profiles() if names is None else names
    if not names:  # e.g. installed from a wheel: there is no profiles/ folder to link
        raise ProfileInstallError(f"{PROFILES_DIR}: no cluster profile (profile.yaml with an `executor:`); "
                                  "is this an ftdrift checkout?")
    done, blocked, todo = [], [], []
    for name in names:
        source, link = PROFILES_DIR / name, dest / name
        if profile_file(source) is None:
            raise ProfileInstallError(f"{source}: no profile.yaml; is this an ftdrift checkout?")
        if _ours(link, source):
            done.append(f"{link} -> {source} (already installed)")
        elif link.is_symlink() and force:
            todo.append((source, link))
        elif link.exists() or link.is_symlink():
            what = f"a link to {os.readlink(link)}" if link.is_symlink() else "a folder or file"
            hint = " (--force replaces a link)" if link.is_symlink() else " (move it away first)"
            blocked.append(f"{link} is already {what}, not this repository's profile{hint}")
        else:
            todo.append((source, link))
    if blocked:  # all or nothing: a half-installed set would mix two checkouts' profiles
        raise ProfileInstallError("nothing installed: " + "; ".join(blocked))
    for source, link in todo:
        if link.is_symlink():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source, target_is_directory=True)
        done.append(f"{link} -> {source}")
    return done


def uninstall(dest: Path | None = None, names=None) -> list[str]:
    """Remove the links `install` made (only links to this repository's profiles)."""
    dest = Path(dest) if dest else user_profile_dir()
    done = []
    for name in cluster_profiles() if names is None else names:
        link = dest / name
        if _ours(link, PROFILES_DIR / name):
            link.unlink()
            done.append(f"removed {link}")
        elif link.exists() or link.is_symlink():
            done.append(f"left {link} alone (not a link to this repository's profile)")
        else:
            done.append(f"{link}: not installed")
    return done


def status(dest: Path | None = None, names=None) -> list[str]:
    dest = Path(dest) if dest else user_profile_dir()
    names = cluster_profiles() if names is None else names
    return [f"{dest / n}: " + ("installed" if _ours(dest / n, PROFILES_DIR / n) else
                                "something else" if (dest / n).exists() or (dest / n).is_symlink() else "not installed")
            for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftdrift.profiles",
        description="Link ftdrift's cluster profiles where `snakemake --profile NAME` finds them.")
    parser.add_argument("action", choices=("install", "uninstall", "status"))
    parser.add_argument("--force", action="store_true", help="replace an existing link of the same name")
    parser.add_argument("--dest", type=Path, default=None,
                        help="target folder (default: Snakemake's user config dir, e.g. ~/.config/snakemake)")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            lines = install(args.dest, force=args.force)
        elif args.action == "uninstall":
            lines = uninstall(args.dest)
        else:
            lines = status(args.dest)
    except ProfileInstallError as err:
        print(f"ftdrift.profiles: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
