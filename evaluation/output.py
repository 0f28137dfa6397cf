"""The evaluation folder, written whole or not at all.

An evaluation takes minutes and writes a dozen files. Written in place, a kill would leave a truncated codes.npz,
and a re-evaluation killed midway would leave new files beside the previous evaluation's metrics.json and
report.md, with nothing saying which is which. So `staged_folder(out)` hands out a staging folder beside `out`
(`<out>.partial-<pid>`); when everything is written, the previous evaluation is renamed aside
(`<out>.old-<pid>`), the staging folder renamed to `out`, and the old one deleted. Renames within one folder are
atomic, so `out` always holds one complete evaluation (or none), and a failed evaluation leaves the previous one
as it was.

A kill can still leave the two side folders. The next evaluation into the same `out` tidies them up first: a
staging folder of a process that no longer runs is deleted; a set-aside folder is deleted when `out` exists (the
new evaluation had been moved in) and renamed back to `out` when it does not (the kill came between the two
renames). Folders of a process that still runs are left alone: another evaluation is writing there.

The whole folder is replaced, so `out` must hold an evaluation and nothing else: `check_replaceable` refuses a
folder with any file that an evaluation does not write (a run folder, a user's notes), and one without this
evaluation's metrics.json, so that no one's files are deleted by a mistyped --out.
"""
import contextlib
import fnmatch
import json
import os
import pathlib
import re
import shutil

from evaluation import figures

STAGING, ASIDE = ".partial-", ".old-"
# The files an evaluation writes besides the figures (figures.FIGURE_FILES); hidden names are common.write_json's
# temporary files, which a kill during an older in-place evaluation may have left.
RESULT_FILES = ("codes.npz", "metrics.json", "report.md", ".*.tmp-*")


class OutputFolderError(ValueError):
    """An --out that an evaluation must not replace; the message says why and what to do."""


def is_evaluation_file(name):
    """Whether an entry of an evaluation folder has a name that the evaluation writes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RESULT_FILES + figures.FIGURE_FILES)


def _written_by_an_evaluation(path):
    """Whether `path` is the metrics.json of an `eval_latents.py --ckpt` evaluation (it records eval_config)."""
    try:
        return "eval_config" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_replaceable(out):
    """Raise OutputFolderError unless `out` is absent, empty, or a complete evaluation folder and nothing else."""
    out = pathlib.Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder. Pass a folder for the evaluation (it is "
                                "created).")
    entries = sorted(entry.name for entry in out.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if not is_evaluation_file(name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputFolderError(
            f"--out {out} holds files that an evaluation does not write ({shown}), and an evaluation replaces its "
            "whole folder. Pass a new or empty folder with --out, or move those files elsewhere.")
    if not _written_by_an_evaluation(out / "metrics.json"):
        raise OutputFolderError(
            f"--out {out} holds evaluation files but no metrics.json of an evaluation: probably one that an older "
            "eval_latents.py left cut short, which cannot be told apart from files of your own. Delete the folder "
            "(or pass another --out) and evaluate again.")


def _pid_of(path, marker):
    found = re.search(re.escape(marker) + r"(\d+)$", path.name)
    return int(found[1]) if found else None


def _abandoned(pid):
    """Whether the process that made a side folder has ended. This process counts as ended: it runs one
    evaluation at a time, so a folder with its own id is left over from an earlier call."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's running process
    return False


def recover_interrupted(out, report=print):
    """Tidy up what a killed evaluation into `out` left beside it (see the module docstring); `report` gets a
    line for each folder restored or removed."""
    out = pathlib.Path(out)
    pattern = re.escape(out.name) + "(" + re.escape(ASIDE) + "|" + re.escape(STAGING) + r")\d+"
    side = sorted(p for p in out.parent.iterdir() if re.fullmatch(pattern, p.name)) if out.parent.is_dir() else []
    for aside in [p for p in side if _abandoned(_pid_of(p, ASIDE))]:
        if out.exists():
            shutil.rmtree(aside)
            report(f"notice: removed {aside}, the previous evaluation that a killed re-evaluation had replaced "
                   f"but not yet deleted")
        else:
            os.rename(aside, out)
            report(f"notice: restored {out} from {aside}: a re-evaluation was killed while replacing it")
    for staging in [p for p in side if _abandoned(_pid_of(p, STAGING))]:
        shutil.rmtree(staging)
        report(f"notice: removed {staging}, the unfinished output of an evaluation that was killed")


def replace_folder(staging, out):
    """Move the complete `staging` folder to `out`, replacing the evaluation there (module docstring)."""
    aside = None
    if out.exists():
        aside = out.with_name(f"{out.name}{ASIDE}{os.getpid()}")
        os.rename(out, aside)
    os.rename(staging, out)
    if aside is not None:
        shutil.rmtree(aside)


@contextlib.contextmanager
def staged_folder(out, report=print):
    """Yield a fresh staging folder beside `out`; when the block ends normally, it replaces `out`.

    Before that: what a killed evaluation left is tidied up, and an `out` that is not an evaluation folder is
    refused (OutputFolderError). When the block raises (SystemExit included), the staging folder is deleted and
    `out` stays as it was.
    """
    out = pathlib.Path(out)
    recover_interrupted(out, report)
    check_replaceable(out)
    staging = out.with_name(f"{out.name}{STAGING}{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        yield staging
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
