"""Make `snakemake --profile gcp-gpu` (the bare name) work: link the project's cluster profiles
into the user's Snakemake configuration directory.

Snakemake 9 looks a bare `--profile NAME` up in the working directory, then in
platformdirs' user config dir for "snakemake" ($XDG_CONFIG_HOME/snakemake, default
~/.config/snakemake, on Linux; ~/Library/Application Support/snakemake on macOS), then the site
config dir (/etc/xdg/snakemake): snakemake.cli.get_profile_dir. `install` symlinks
profiles/gcp-gpu and profiles/slurm there, so edits in the repository take effect at once.
The profiles' relative entries (`configfile: config/study.yaml`, pyproject.toml for the image
tag) resolve against the working directory, so run Snakemake from the repository root.

    python -m ftdrift.profiles install [--force] [--dest DIR]
    python -m ftdrift.profiles uninstall [--dest DIR]
    python -m ftdrift.profiles status [--dest DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # src/ftdrift/profiles.py -> the repository
PROFILES_DIR = REPO / "profiles"
CLUSTER_PROFILES = ("gcp-gpu", "slurm")
PROFILE_FILES = ("profile.yaml", "config.yaml")


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


def _ours(link: Path, source: Path) -> bool:
    return link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(source))


def install(dest: Path | None = None, names=CLUSTER_PROFILES, force: bool = False) -> list[str]:
    """Symlink each profile folder profiles/<name> to <dest>/<name> (dest: user_profile_dir()).

    Idempotent: a link that already points at this repository's profile is left alone. Anything
    else of that name (another profile, a link elsewhere) raises ProfileInstallError naming it,
    unless force=True, which replaces a link; a real folder or file is never deleted. All or nothing:
    when one name is blocked, no link is made. Returns one line per profile saying what was done.
    """
    dest = Path(dest) if dest else user_profile_dir()
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


def uninstall(dest: Path | None = None, names=CLUSTER_PROFILES) -> list[str]:
    """Remove the links `install` made (only links to this repository's profiles)."""
    dest = Path(dest) if dest else user_profile_dir()
    done = []
    for name in names:
        link = dest / name
        if _ours(link, PROFILES_DIR / name):
            link.unlink()
            done.append(f"removed {link}")
        elif link.exists() or link.is_symlink():
            done.append(f"left {link} alone (not a link to this repository's profile)")
        else:
            done.append(f"{link}: not installed")
    return done


def status(dest: Path | None = None, names=CLUSTER_PROFILES) -> list[str]:
    dest = Path(dest) if dest else user_profile_dir()
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
