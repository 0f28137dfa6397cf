"""Plumbing shared by every training script: config and command line, precision, seeds, run folders,
training callbacks, image grids, checkpoints and a training-step benchmark.

    config = common.parse_config(Config, argv, description=__doc__)  # Config subclasses common.RunConfig.
    common.set_precision(config.precision)  # Before building any layer.
    common.set_seed(config.seed)
    run_dir = common.prepare_run_dir(config, script="cycle_vae", name=config.dataset)
    model.fit(dataset, epochs=config.epochs, callbacks=common.training_callbacks(run_dir))

A run folder holds config.json, command.txt, versions.json, log.csv, tensorboard/, backup/ (what
--resume continues from, RunBackup), model.keras (the last epoch whose logged values were all finite) and
images/epoch_NNN.png. Epochs in file names and messages count from 1 like the progress bar; log.csv and
TensorBoard count from 0.
"""

import argparse
import dataclasses
import datetime
import errno
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
import tokenize
import types
import typing
import zipfile



def _import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up notices hidden, unless the user set TF_CPP_MIN_LOG_LEVEL.

    TensorFlow prints them while its libraries load, before its own log level applies (oneDNN, "Could not find
    cuda drivers"), and "failed call to cuInit" as an error line on every machine without a GPU: noise to a
    user. What it writes while loading goes to a temporary file and is replayed if the import fails. Model
    scripts import this module before keras for this reason; TF_CPP_MIN_LOG_LEVEL=0 shows everything.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.buffer.write(captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

# ---- Config and command line ----

Precision = typing.Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]


@dataclasses.dataclass
class RunConfig:
    """Run plumbing shared by every script; each script's Config inherits it and adds its own fields."""

    seed: int = 0  # Seeds Python, NumPy, TensorFlow and Keras.
    precision: Precision = "auto"  # auto = mixed precision on a GPU, float32 on a CPU.
    out: typing.Optional[str] = None  # Run folder; default a new folder runs/<script>_<dataset>_<time>/.
    resume: bool = False  # Continue the run in --out (else the latest in runs/) with the settings of its config.json.
    data_dir: typing.Optional[str] = None  # Data directory; default $DISENTANGLE_DATA_DIR, else the cache (data.py).
    benchmark: bool = False  # Time training steps, print ms/iter and images/s, and exit.
    # mirrored: every GPU of this machine (MirroredStrategy); multiworker: every GPU of the machines that TF_CONFIG
    # lists (MultiWorkerMirroredStrategy), started with the same flags on each. --batch-size stays global.
    distribute: typing.Literal["none", "mirrored", "multiworker"] = "none"

    # Fields that `--resume` lets a repeated flag change (common.parse_config); scripts add theirs.
    CHANGEABLE_ON_RESUME: typing.ClassVar[tuple] = ("data_dir", "benchmark", "distribute")


def _field_comments(config_cls):
    """Map each field name to the trailing `# comment` on its line, base classes first."""
    comments = {}
    for cls in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            lines = textwrap.dedent(inspect.getsource(cls)).splitlines(keepends=True)
            tokens = list(tokenize.generate_tokens(iter(lines).__next__))
        except (OSError, TypeError, SyntaxError, tokenize.TokenError):
            continue  # No source (a class made in `python -c` or by make_dataclass): no help text.
        depth, line = 0, []
        for token in tokens:
            depth += {tokenize.INDENT: 1, tokenize.DEDENT: -1}.get(token.type, 0)
            if token.type != tokenize.NEWLINE:
                line.append(token)
                continue
            # A logical line is a field if it reads `name: ...` directly in the class body (depth 1). Comment
            # lines above the field belong to the same logical line, so only comments from its row on count.
            code = [t for t in line if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)]
            if depth == 1 and len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":":
                trailing = [t for t in line if t.type == tokenize.COMMENT and t.start[0] >= code[0].start[0]]
                if trailing:
                    comments[code[0].string] = trailing[0].string.lstrip("#").strip()
            line = []
    return comments


def _argument_options(name, annotation):
    """The add_argument keywords (type, choices, nargs or action) for one field's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return _argument_options(name, next(arg for arg in args if arg is not type(None)))  # Optional[X].
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": list(args)}
    item_types = {arg for arg in args if arg is not Ellipsis}
    if origin in (list, tuple) and len(item_types) == 1 and item_types <= {int, float, str}:
        fixed_length = origin is tuple and Ellipsis not in args
        return {"type": item_types.pop(), "nargs": len(args) if fixed_length else "+"}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(
        f"Config field {name!r} has type {annotation!r}, which the command line cannot parse; use int, float, "
        "str, bool, Literal[...], Optional[X], tuple[X, ...] or list[X]."
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every field's default and keeps the line breaks of the script's docstring.

    A default of None means "resolved from other settings" (per dataset, per mode): the field's comment says
    what it resolves to, so "(default: None)" is not printed.
    """

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(config_cls, description=None):
    """An ArgumentParser with one --flag-name per field of the dataclass `config_cls`, inherited ones included.

    The help text is `field(metadata={"help": ...})` or else the field's trailing `# comment`.

    Why not tyro, which builds a CLI from a dataclass too: it would be a fourth package a copied script needs
    beside data.py and common.py, and these hundred lines give what the scripts use (the field comments as
    help, the paper's defaults shown, --flag/--no-flag, argparse's errors with exit code 2) in plain argparse.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    # The script's own fields come first; the shared plumbing follows in a section of its own.
    run_fields = {field.name for field in dataclasses.fields(RunConfig)} if issubclass(config_cls, RunConfig) else set()
    run_group = parser.add_argument_group("run options")
    hints, comments = typing.get_type_hints(config_cls), _field_comments(config_cls)
    for field in sorted(dataclasses.fields(config_cls), key=lambda field: field.name in run_fields):
        if not field.init:
            continue
        options = _argument_options(field.name, hints[field.name])
        # argparse %-formats help strings, so a literal "%" must be doubled.
        options["help"] = field.metadata.get("help", comments.get(field.name, "")).replace("%", "%%")
        if field.default is not dataclasses.MISSING:
            options["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            options["default"] = field.default_factory()
        else:
            options["required"] = True
        group = run_group if field.name in run_fields else parser
        group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, **options)
    return parser


def parse_config(config_cls, argv=None, description=None, resolve=None, script=None):
    """Parse `argv` (default sys.argv[1:]) into a `config_cls` instance, then `resolve(config)` if given.

    The one place where a script's settings are checked: a ValueError or TypeError raised by the config's
    __post_init__ or by `resolve` (which fills the None defaults per dataset or mode and checks what depends on
    them), and a run folder that cannot be used, become argparse's message naming the flag, with exit code 2,
    before any work starts.

    With --resume (configs with the RunConfig fields), the run's own config.json supplies every setting the
    command line does not repeat, so `--resume --out DIR` continues the run as it was configured. A flag given
    explicitly may change only the fields in the config's CHANGEABLE_ON_RESUME (what can change without making
    the checkpoint meaningless, such as --epochs); any other change is refused. `script` names the run
    folders' owner (default: the file that defines config_cls).
    """
    parser = build_parser(config_cls, description)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        values = vars(parser.parse_args(argv))
        if values.get("resume"):
            script = script or pathlib.Path(getattr(sys.modules.get(config_cls.__module__), "__file__", "?")).stem
            values = _resumed_values(config_cls, values, _explicit_flags(config_cls, argv), script)
        elif values.get("out") and issubclass(config_cls, RunConfig):
            _check_new_run_dir(pathlib.Path(values["out"]))
        config = config_from_dict(config_cls, values)
        return resolve(config) if resolve is not None else config
    except (TypeError, ValueError, OSError) as error:
        parser.error(str(error))


def _explicit_flags(config_cls, argv):
    """The fields that `argv` sets explicitly (a repeated default included), with their parsed values."""
    parser = build_parser(config_cls)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # Fields not on the command line then stay out of the namespace.
    return vars(parser.parse_args(argv))


def _check_new_run_dir(run_dir):
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file, not a folder. Pass a folder for the run (it is created).")
    if (run_dir / "config.json").exists():
        raise FileExistsError(
            f"--out {run_dir} already holds a run ({run_dir / 'config.json'} exists), which will not be "
            "overwritten. Pass --resume to continue it, or another --out (or none) to start a new run.")


def read_run_record(run_dir, script=None):
    """The config.json of the run in run_dir, checked to exist, to be readable and to belong to `script`."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume: there is no run to continue in {run_dir} ({path} does not exist). Pass the folder of an "
            "earlier run with --out, or drop --resume to start a new run.")
    try:
        record = json.loads(path.read_text())
        record["config"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} cannot be read as a run record ({type(error).__name__}: {error}). It was "
                         "damaged or written by hand: restore it from a copy, or start a new run.") from error
    if script is not None and record.get("script") != script:
        raise ValueError(f"Cannot resume {run_dir} with {script}: this run folder belongs to "
                         f"{record.get('script')}. Run {record.get('script')}.py to continue it.")
    return record


def _resumed_values(config_cls, values, explicit, script):
    """The settings of the run that --resume continues: its config.json, with the explicit flags that may change."""
    if values.get("out"):
        run_dir = pathlib.Path(values["out"])
    else:
        run_dir = _latest_run_dir(script, explicit.get("dataset"))
    stored = read_run_record(run_dir, script)["config"]
    changeable = set(getattr(config_cls, "CHANGEABLE_ON_RESUME", ())) | {"out", "resume"}
    refused = [name for name, value in explicit.items()
               if name in stored and name not in changeable and _as_json(value) != _as_json(stored[name])]
    if refused:
        flags = ", ".join(f"--{name.replace('_', '-')} {stored[name]!r} -> {explicit[name]!r}" for name in refused)
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(changeable - {"out", "resume"}))
        raise ValueError(
            f"--resume: {run_dir} was trained with other settings ({flags}); its checkpoint would not mean the "
            f"same under them. Drop these flags to continue the run as configured (a resume may change {allowed}), "
            "or start a new run without --resume.")
    known = {name: value for name, value in stored.items() if name in values}  # Fields this version still has.
    return {**values, **known, **explicit, "out": str(run_dir), "resume": True}


def _as_json(value):
    return json.loads(json.dumps(value, default=str))  # Tuples and lists compare equal, as after config.json.


def check_ranges(config, at_least_one=(), positive=(), non_negative=()):
    """Raise a ValueError naming the first of these config fields (as its --flag) that is out of its range."""
    bounds = ([(name, lambda v: v >= 1, "must be at least 1") for name in at_least_one]
              + [(name, lambda v: v > 0, "must be positive") for name in positive]
              + [(name, lambda v: v >= 0, "must not be negative") for name in non_negative])
    for name, holds, rule in bounds:
        if getattr(config, name) is not None and not holds(getattr(config, name)):  # None: resolved later
            raise ValueError(f"--{name.replace('_', '-')} {rule}, got {getattr(config, name)}.")


def config_to_dict(config):
    """The config as a plain dict, ready for JSON."""
    return dataclasses.asdict(config)


def config_from_dict(config_cls, values):
    """Rebuild a config from a dict such as a run's config.json.

    Unknown keys are ignored and missing keys take their defaults, so configs written by older or newer
    versions of a script still load. JSON turns tuples into lists; tuple fields get tuples back.
    """
    hints, kwargs = typing.get_type_hints(config_cls), {}
    for field in dataclasses.fields(config_cls):
        if field.init and field.name in values:
            value, annotation = values[field.name], hints[field.name]
            origins = {typing.get_origin(annotation), *map(typing.get_origin, typing.get_args(annotation))}
            kwargs[field.name] = tuple(value) if isinstance(value, list) and tuple in origins else value
    return config_cls(**kwargs)


# ---- Precision, seeds, versions ----


def set_precision(name):
    """Set Keras' global dtype policy (call it before building any layer) and return the policy's name.

    "auto" means mixed_bfloat16 on GPUs of compute capability 8.0 (Ampere) or newer, mixed_float16 on older
    GPUs, and float32 without a GPU. bfloat16 keeps float32's exponent range and so needs no loss scaling.
    """
    choices = typing.get_args(Precision)
    if name not in choices:
        raise ValueError(f"Unknown precision {name!r}; choose one of: {', '.join(choices)}.")
    if name == "auto":
        details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
        if not details:
            name = "float32"
        else:
            capability = min(detail.get("compute_capability") or (0, 0) for detail in details)
            name = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    elif name == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        print("warning: --precision mixed_float16 without a GPU: TensorFlow's CPU kernels emulate float16, so "
              "training runs many times slower than in float32 (the default on a CPU, --precision auto).",
              file=sys.stderr, flush=True)
    keras.config.set_dtype_policy(name)
    return name


def configure_cpu(one_thread_per_op=False):
    """Set up TensorFlow's CPU runtime for these small networks; call it before TensorFlow runs its first op.

    Memory: asks for TensorFlow's BFC allocator (TF_CPU_ALLOCATOR_USE_BFC), which keeps freed tensor memory in
    its own pool. The default CPU allocator returns large buffers to the operating system after every step and
    pays a page fault per 4 KiB page to get them back, which can dominate a small model's step.

    Threads: with one_thread_per_op, each op runs on one thread and independent ops (the cycle-VAE's two
    cycles) run side by side, on machines with at most 2 cores. Whether that beats TensorFlow's default (every
    core on each op) depends on the CPU (docs/results/speed.md); with more cores the default is kept, so that
    a convolution never leaves most cores idle. TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS override the
    choice: when either is set, the thread counts are left to them.

    Values the user has set in the environment are kept. Later calls (tests, notebooks, where TensorFlow is
    already running) and machines with a GPU keep their threads.
    """
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    cores = os.cpu_count() or 1
    if not one_thread_per_op or cores > 2 or tf.config.list_physical_devices("GPU"):
        return
    if os.environ.get("TF_NUM_INTRAOP_THREADS") or os.environ.get("TF_NUM_INTEROP_THREADS"):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:
        pass  # TensorFlow is already running: keep its settings.


def set_seed(seed):
    """Seed Python's random, NumPy, TensorFlow and Keras' global SeedGenerator."""
    keras.utils.set_random_seed(seed)


def package_versions():
    """Versions of Python and of the packages that decide the numbers, and the GPU names if there are any."""
    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "tensorflow": tf.__version__}
    versions["keras"] = keras.__version__
    # Reading the installed metadata avoids importing SciPy and scikit-learn, which takes seconds.
    distributions = {"scipy": "scipy", "sklearn": "scikit-learn", "h5py": "h5py", "matplotlib": "matplotlib"}
    for key, distribution in distributions.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        versions["gpus"] = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    return versions


# ---- Several replicas (tf.distribute) ----


def distribution(config, batch):
    """The tf.distribute strategy of --distribute; the script builds its model and optimizers in its scope().

    none: TensorFlow's default strategy (one device). mirrored: MirroredStrategy over every GPU of this machine
    (one replica on the CPU where there is none). multiworker: MultiWorkerMirroredStrategy over the processes
    that the TF_CONFIG environment variable lists (one per machine, each with its GPUs), every one started with
    the same command; worker 0 (or the task named "chief") is the chief, which alone writes the run folder (see
    train). fit() splits each global batch of `batch` rows (image pairs, or the ML-VAE's groups, which are never
    split) into equal shares, one per replica and across the workers (train shards the pipeline), so `batch`
    must be divisible by the number of replicas; the models' train_steps make the step equal to one device's.
    """
    if config.distribute == "none":
        return tf.distribute.get_strategy()
    if config.distribute == "multiworker":
        workers = _cluster_workers()
        if not config.out and not config.benchmark:
            sys.exit("error: --distribute multiworker needs --out: every worker must be given the same run folder "
                     "(on a file system they share, for --resume).")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        print(f"--distribute multiworker: this is worker {strategy.cluster_resolver.task_id} of {workers}"
              f"{' (the chief)' if is_chief(strategy) else ''}", flush=True)
    else:
        strategy = tf.distribute.MirroredStrategy()
    count = strategy.num_replicas_in_sync
    if batch % count:
        sys.exit(f"error: --distribute {config.distribute} splits each global batch of {batch} over {count} replicas "
                 f"({', '.join(strategy.extended.worker_devices)}): choose a batch divisible by {count}.")
    print(f"--distribute {config.distribute}: {count} replica(s) on {', '.join(strategy.extended.worker_devices)}, "
          f"{batch // count} of the global batch of {batch} each", flush=True)
    return strategy


def _cluster_workers():
    """The number of worker processes that TF_CONFIG lists; exits with the fix when it is missing or malformed."""
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\' (index 1 on the second machine)')
    text = os.environ.get("TF_CONFIG")
    if not text:
        sys.exit(f"error: --distribute multiworker reads the cluster from the TF_CONFIG environment variable, which "
                 f"is not set. Set it on every machine, e.g. {example}.")
    try:
        cluster = json.loads(text)
        workers = cluster["cluster"].get("worker", []) + cluster["cluster"].get("chief", [])
        task = cluster["task"]["type"], int(cluster["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        sys.exit(f"error: TF_CONFIG is not a cluster description ({type(error).__name__}: {error}): it needs "
                 f"'cluster' with a 'worker' list and 'task' with 'type' and 'index', e.g. {example}.")
    if task[0] not in ("worker", "chief") or not 0 <= task[1] < len(cluster["cluster"].get(task[0], [])):
        sys.exit(f"error: TF_CONFIG's task {task[0]} {task[1]} is not in its cluster {cluster['cluster']}: give "
                 "each process the index of its own address in the list.")
    return len(workers)


def is_chief(strategy=None):
    """Whether this process writes the run folder: always, except on the non-chief workers of --distribute
    multiworker (tf.distribute's should_checkpoint)."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def weights_fingerprint(model):
    """A short hash of every variable of the model (weights, optimizer-free): equal on every worker of a run."""
    import hashlib

    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).tobytes())
    return digest.hexdigest()[:16]


def replicas():
    """How many replicas train in sync: 1 on one device, N under a tf.distribute strategy over N devices.

    A strategy sums the replicas' gradients. A train_step that averages its loss over its own (per-replica) part
    of the global batch divides that loss by replicas() before taking gradients, so that the sum equals the
    gradient of the global batch's mean, as on one device (Keras' own compute_loss does the same); its trackers
    record the undivided value, and the strategy averages them over the replicas.
    """
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_mean(value):
    """The mean of a per-replica value over the replicas (the value itself on one device), in every replica."""
    if replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, value)


def apply_if(condition, optimizer, gradients, variables):
    """optimizer.apply(gradients, variables) only where `condition` (a scalar bool tensor, equal on every replica)
    holds; otherwise nothing changes, not even the optimizer's step count or moments (a zero gradient would still
    move Adam's weights). Under a strategy the choice is made in the cross-replica context, as Keras'
    LossScaleOptimizer does for its skipped steps: a tf.cond in a replica may not hold the optimizer's gradient
    all-reduce (a merge_call).

    `gradients` may be a callable returning them (e.g. `lambda: tape.gradient(loss, variables)`): on one device it
    is then called inside the taken branch only, so a skipped step also skips the backward pass. Under a strategy it
    is called in the replica context before the choice, as the all-reduce needs every replica's gradients.
    """
    compute = gradients if callable(gradients) else lambda: gradients

    def apply():  # returns None, as the skipping branch does
        optimizer.apply(compute(), variables)

    if replicas() == 1:
        ops.cond(condition, apply, lambda: None)
        return
    gradients = compute()

    def cross_replica(distribution, condition, gradients):
        first = distribution.experimental_local_results(condition)[0]

        def apply_everywhere():
            distribution.extended.call_for_each_replica(optimizer.apply, args=(gradients, variables))

        ops.cond(first, apply_everywhere, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, gradients))


def replica_normal(shape, seed_generator, parts=1):
    """N(0, 1) draws for this replica's part of a global batch, equal sample for sample to one device's draws.

    Every replica draws the noise of the whole global batch from the shared generator state (so the generator
    advances alike everywhere) and keeps the rows of its own share; one device keeps all of them. `shape[0]` is
    the local rows; with parts > 1 they are `parts` stacked blocks of local rows, each the replica's share of a
    global block (the cycle-VAE's [x1; x2]), and the slice is taken in each block. Needs equal shares, i.e. a
    global batch divisible by the number of replicas (fit() under a strategy splits it so).
    """
    context = tf.distribute.get_replica_context()
    count = context.num_replicas_in_sync if context is not None else 1
    if count == 1:
        return keras.random.normal(shape, seed=seed_generator)
    rows, rest = shape[0] // parts, tuple(shape[1:])
    noise = keras.random.normal((parts, count * rows) + rest, seed=seed_generator)
    start = context.replica_id_in_sync_group * rows
    return ops.reshape(noise[:, start:start + rows], (parts * rows,) + rest)


# ---- Run folders ----


def _atomic_write(path, write, suffix=".tmp"):
    """Call write(temporary_path), then move the result onto `path`.

    os.replace within one folder is atomic, so a crash or a full disk never leaves half a file where a good
    one was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path, data):
    text = json.dumps(data, indent=2, default=str) + "\n"
    _atomic_write(path, lambda temporary: temporary.write_text(text))


def _new_run_dir(script, name, now):
    """Create runs/{script}_{name}_{timestamp}, or with -2, -3, ... appended if that folder exists."""
    base, counter = pathlib.Path("runs") / f"{script}_{name}_{now:%Y%m%d-%H%M%S}", 1
    while True:
        run_dir = base if counter == 1 else base.with_name(f"{base.name}-{counter}")
        try:
            run_dir.mkdir(parents=True)  # Creating the folder claims it, even against a run started this second.
            return run_dir
        except FileExistsError:
            counter += 1


def _latest_run_dir(script, name=None):
    """The most recent runs/{script}_{name}_{timestamp} folder that holds a config.json (any name if None)."""
    label = re.escape(name) if name else "[A-Za-z0-9]+"
    pattern = re.compile(rf"{re.escape(script)}_{label}_(\d{{8}}-\d{{6}})(?:-(\d+))?")
    runs, candidates = pathlib.Path("runs"), []
    for path in runs.iterdir() if runs.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and (path / "config.json").is_file():
            candidates.append((match[1], int(match[2] or 1), path))
    if not candidates:
        raise FileNotFoundError(
            f"--resume found no earlier run to continue (no folder {runs}/{script}_{name or '*'}_* with a "
            "config.json). Pass the run folder with --out, or drop --resume to start a new run."
        )
    return max(candidates)[2]


def prepare_run_dir(config, script, name, argv=None):
    """Create (or, with --resume, reopen) the run folder; write config.json, command.txt and versions.json.

    Without --out a new folder runs/{script}_{name}_{YYYYmmdd-HHMMSS} is made in the current directory, and
    --resume without --out reopens the latest such folder. `argv` is the argument list without the program
    name (default: sys.argv). Call it after set_precision: config.json records the dtype policy.
    """
    now = datetime.datetime.now()
    if config.out:
        run_dir = pathlib.Path(config.out)
    else:
        run_dir = _latest_run_dir(script, name) if config.resume else _new_run_dir(script, name, now)
    config_path = run_dir / "config.json"
    if config.resume:
        previous = read_run_record(run_dir, script)
    else:
        _check_new_run_dir(run_dir)
        previous = None
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "backup"):
        _remove_stale_temporaries(folder)

    timestamp = now.isoformat(timespec="seconds")
    record = {
        "script": script,
        "name": name,
        "config": {**config_to_dict(config), "out": str(run_dir), "data_dir": _absolute(config.data_dir)},
        "precision": keras.config.dtype_policy().name,
        "created": timestamp,
    }
    if previous is not None:
        for key, old in previous.get("config", {}).items():
            if key not in ("out", "resume") and record["config"].get(key, old) != old:
                print(f"Resuming with a changed setting: {key} = {record['config'][key]!r} (was {old!r}).")
        record["created"] = previous.get("created", timestamp)
        record["resumed"] = previous.get("resumed", []) + [timestamp]
    write_json(config_path, record)
    write_json(run_dir / "versions.json", package_versions())
    words = sys.argv if argv is None else [f"{script}.py", *argv]
    with open(run_dir / "command.txt", "a") as file:
        file.write(f"# {timestamp}{' (resumed)' if previous else ''}\npython {shlex.join(words)}\n")
    print(f"Run folder: {run_dir}")
    return run_dir


def _absolute(path):
    """An absolute path, so that an evaluation started elsewhere finds the same folder (None stays None)."""
    return str(pathlib.Path(path).expanduser().resolve()) if path else path


def _remove_stale_temporaries(folder):
    """Delete the temporary files (_atomic_write's) that a killed process left in `folder`.

    A file whose writer is still running (another process working in the same folder) is left alone.
    """
    for path in pathlib.Path(folder).glob(".*.tmp-*"):
        match = re.search(r"\.tmp-(\d+)", path.name)
        if match and int(match[1]) != os.getpid() and not _process_alive(int(match[1])):
            path.unlink(missing_ok=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Someone else's process.
    return True


# ---- Image grids ----


def tile_images(images, pad=2, pad_value=1.0):
    """Tile (rows, cols, H, W[, C]) images into one (H', W'[, C]) image with `pad` pixels between cells.

    The padding is `pad_value`: white for floats in [0, 1], scaled to 255 for uint8 images.
    """
    images = np.asarray(images)
    if images.ndim not in (4, 5):
        raise ValueError(f"Expected images of shape (rows, cols, H, W) or (rows, cols, H, W, C), got {images.shape}.")
    rows, cols, height, width = images.shape[:4]
    fill = round(255 * pad_value) if images.dtype == np.uint8 else pad_value
    grid = np.full((rows * (height + pad) - pad, cols * (width + pad) - pad, *images.shape[4:]), fill, images.dtype)
    for row in range(rows):
        for col in range(cols):
            top, left = row * (height + pad), col * (width + pad)
            grid[top : top + height, left : left + width] = images[row, col]
    return grid


def _write_png(image, path):
    """Write an (H, W) or (H, W, C) image, float in [0, 1] or uint8, as a PNG, creating parent folders."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(path)
    return path


def save_image_grid(images, path, pad=2):
    """Tile (rows, cols, H, W[, C]) images, floats in [0, 1] or uint8, into one PNG at `path`."""
    return _write_png(tile_images(images, pad), path)


def swap_grid(model, images, s=None):
    """The swap grid of a specified/unspecified model, through its encode/decode interface, as (n+1, n+1) cells.

    Top row: the n images that give z (one per column); left column: the same images giving s (one per row);
    cell (r, c) = decode(z_mean of image c, s of image r). The diagonal is the plain reconstruction. Images are
    float32 (n, H, W, C) in [0, 1]; the top-left cell is blank. `s` (n, s_dim) replaces the images' own s codes
    (the ML-VAE's evaluation passes the codes with evidence).
    """
    codes = model.encode(images)
    n = len(images)
    z = np.tile(np.asarray(codes["z_mean"]), (n, 1))
    s = np.repeat(np.asarray(codes["s"] if s is None else s), n, axis=0)
    cells = np.asarray(model.decode(z, s)).reshape((n, n) + images.shape[1:])
    top = np.concatenate([np.ones((1,) + images.shape[1:], np.float32), images])[None]
    return np.concatenate([top, np.concatenate([images[:, None], cells], axis=1)])


def traversal_grid(model, z_mean, order, values=None, s=None):
    """Latent traversal around one code (docs/evaluation.md Sec. 2), as (len(order), len(values)) cells.

    Row i sets latent order[i] of `z_mean` (one image's mean code, shape (d,)) to each of `values` in turn
    (default 10 steps from -2.5 to 2.5), keeping the others, and decodes through the model's decode(z[, s]).
    """
    values = np.linspace(-2.5, 2.5, 10, dtype=np.float32) if values is None else np.asarray(values, np.float32)
    order = np.asarray(order)
    z = np.tile(np.asarray(z_mean, np.float32), (len(order) * len(values), 1))
    z[np.arange(len(z)), np.repeat(order, len(values))] = np.tile(values, len(order))
    decoded = model.decode(z) if s is None else model.decode(z, np.tile(np.asarray(s, np.float32), (len(z), 1)))
    decoded = np.asarray(decoded)
    return decoded.reshape((len(order), len(values)) + decoded.shape[1:])


# ---- Training callbacks ----


class TrainingDiverged(RuntimeError):
    """Raised out of fit() by NaNGuard when a logged value becomes NaN or infinite.

    Scripts let it propagate (or catch it and call sys.exit(str(error))), so a diverged run exits non-zero.
    """


def _first_non_finite(logs):
    """The name of the first logged value that is NaN or infinite, or None."""
    for key, value in (logs or {}).items():
        try:
            if not np.all(np.isfinite(value)):
                return key
        except TypeError:
            pass  # Not a number (a string some callback added): nothing to check.
    return None


class NaNGuard(keras.callbacks.Callback):
    """Raises TrainingDiverged after the first batch or epoch that logs a NaN or infinite value.

    Only setting model.stop_training would not do: Keras would still call on_epoch_end of the callbacks after
    this one, and RunBackup would back up the NaN weights. Keep it before the checkpointing callbacks
    (training_callbacks does), since Keras calls callbacks in list order.

    Why not keras.callbacks.TerminateOnNaN(raise_error=True): it watches only the logged `loss` and only after
    batches, so a non-finite term that the total hides from it (a tracker such as `kl/dim_03`, or a value added
    at the end of an epoch) would reach the checkpoint, and its bare RuntimeError says nothing about which value
    failed or which checkpoint survived.
    """

    def __init__(self, checkpoint_path=None):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.message = None  # Why training stopped, for whoever catches the exception.
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")

    def _check(self, logs, where):
        key = _first_non_finite(logs)
        if key is None:
            return
        self.model.stop_training = True
        if self.checkpoint_path and pathlib.Path(self.checkpoint_path).exists():
            kept = f"The last good checkpoint is kept at {self.checkpoint_path}."
        else:
            kept = "No checkpoint had been saved yet."
        self.message = (
            f"Training diverged: {key} became {logs[key]} at {where}, so training was stopped. {kept} "
            "Try a smaller learning rate, float32 precision or another seed."
        )
        raise TrainingDiverged(self.message)


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall-clock seconds to its logs as `time/epoch_seconds` (so log.csv keeps them).

    Keep it first in the callback list: the callbacks after it receive the same logs dict. The sum over log.csv
    is the training time of a run, also of one resumed after an interruption (training_minutes).
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["time/epoch_seconds"] = time.perf_counter() - self._start


def training_minutes(run_dir):
    """Minutes of training recorded in run_dir/log.csv by EpochTimer (0 when there is no such column)."""
    import csv

    try:
        with open(pathlib.Path(run_dir) / "log.csv") as file:
            seconds = [row.get("time/epoch_seconds") for row in csv.DictReader(file)]
    except OSError:
        return 0.0
    return sum(float(value) for value in seconds if value not in (None, "", "NA")) / 60


class LatestCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (a .keras file) atomically after every epoch whose logged values are finite.

    Skipping non-finite epochs means that a run that fails never overwrites a good model.
    """

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)

    def on_epoch_end(self, epoch, logs=None):
        key = _first_non_finite(logs)
        if key is None:
            save_model(self.model, self.path)
        else:
            print(f"Not saving epoch {epoch + 1}: {key} is {logs[key]}. {self.path} keeps the last good model.")


class ImageGridMonitor(keras.callbacks.Callback):
    """Every `every` epochs and after the last one, saves fn(model) as folder/epoch_NNN.png.

    fn returns one image, (H, W) or (H, W, C), or a grid (rows, cols, H, W[, C]) to tile; floats in [0, 1]
    or uint8.
    """

    def __init__(self, fn, every=5, folder="images"):
        super().__init__()
        self.fn, self.every, self.folder = fn, every, pathlib.Path(folder)
        self._last_epoch = self._last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every == 0 or epoch + 1 == (self.params or {}).get("epochs"):
            self._save(epoch)

    def on_train_end(self, logs=None):
        # A run stopped early (EarlyStopping, model.stop_training) still gets a picture of its final model.
        if self._last_epoch is not None and self._last_saved != self._last_epoch:
            self._save(self._last_epoch)

    def _save(self, epoch):
        image = np.asarray(self.fn(self.model))
        _write_png(tile_images(image) if image.ndim in (4, 5) else image, self.folder / f"epoch_{epoch + 1:03d}.png")
        self._last_saved = epoch


def training_callbacks(run_dir, image_grid_fn=None, grid_every=5, monitor_nan=True, write_dir=None):
    """The callbacks every script passes to fit().

    They read the backup to continue from in run_dir and write everything into write_dir (default run_dir): a
    non-chief worker of --distribute multiworker restores the chief's backup and writes into a scratch folder,
    running the same callbacks as the chief so that every worker takes part in the same steps.

    - EpochTimer adds each epoch's seconds to the logs.
    - TensorBoard in run_dir/tensorboard (if installed) and CSVLogger in run_dir/log.csv (appended on resume).
    - NaNGuard (if monitor_nan) raises TrainingDiverged at the first NaN or infinite logged value.
    - LatestCheckpoint saves run_dir/model.keras after every epoch with finite logs.
    - RunBackup keeps weights, optimizer state and epoch in run_dir/backup and restores them when fit()
      starts, so rerunning an interrupted script with --resume continues where it stopped. The model must be
      built (called on one batch) before fit(). The backup is kept after a finished run, so a resume with a
      larger --epochs continues instead of starting over. log.csv loses the rows of epochs after the backup's.
    - ImageGridMonitor (if image_grid_fn is given) saves run_dir/images/epoch_NNN.png every grid_every epochs.
    """
    run_dir = pathlib.Path(run_dir)
    write_dir = pathlib.Path(write_dir or run_dir)
    checkpoint_path = write_dir / "model.keras"
    backup = RunBackup(run_dir, write_dir)  # Finds the backup that fit() will restore ...
    trim_log(write_dir, backup.epoch)  # ... and log.csv keeps only its epochs, before CSVLogger opens it to append.
    # Order matters: the logs record a diverging epoch before NaNGuard raises, and the guard raises before
    # the checkpoint and the backup could store NaN weights.
    callbacks = [EpochTimer()]
    # TensorFlow 2.21 no longer installs TensorBoard, without which its callback fails at the first epoch.
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(write_dir / "tensorboard")))
    else:
        print("TensorBoard is not installed (pip install tensorboard): logging to log.csv only.")
    callbacks.append(keras.callbacks.CSVLogger(str(write_dir / "log.csv"), append=True))
    if monitor_nan:
        callbacks.append(NaNGuard(checkpoint_path))
    callbacks.append(LatestCheckpoint(checkpoint_path))
    callbacks.append(backup)
    if image_grid_fn is not None:
        callbacks.append(ImageGridMonitor(image_grid_fn, grid_every, write_dir / "images"))
    return callbacks


# ---- Backups that a kill cannot spoil ----


class BackupError(RuntimeError):
    """A backup that exists but cannot be restored into the model; the message says why and what to do."""


def _readable_weights(path):
    """Whether `path` is a complete HDF5 weights file: a kill mid-write leaves one that h5py cannot open."""
    import h5py  # A Keras dependency; imported here because only resuming needs it.

    try:
        with h5py.File(path, "r") as file:
            file.visit(lambda name: None)  # Walks the whole index, which a truncated file lacks.
        return True
    except Exception:  # h5py raises OSError, KeyError or RuntimeError depending on where the file was cut.
        return False


def _backup_candidates(backup_dir):
    """(epoch, weights file) pairs that backup_dir may hold, newest first.

    epoch_NNNN.weights.h5 are RunBackup's files. latest.weights.h5 with training_metadata.json (and their .bkp
    copies) are what keras.callbacks.BackupAndRestore wrote for runs of earlier versions of these scripts.
    """
    backup_dir = pathlib.Path(backup_dir)
    candidates = []
    for path in backup_dir.glob("epoch_*.weights.h5"):
        match = re.fullmatch(r"epoch_(\d+)\.weights\.h5", path.name)
        if match:
            candidates.append((int(match[1]), path))
    for suffix in ("", ".bkp"):
        weights, record = backup_dir / f"latest.weights.h5{suffix}", backup_dir / f"training_metadata.json{suffix}"
        try:
            candidates.append((int(json.loads(record.read_text())["epoch"]), weights))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # No record, or a record a kill cut short: the other copy may do.
    return sorted(candidates, key=lambda candidate: candidate[0], reverse=True)


def find_backup(run_dir, report=None):
    """(epoch, weights file) of the newest complete backup in run_dir/backup, or (0, None) when there is none.

    A file that cannot be read (a kill or a full disk while an earlier version wrote it in place) is passed
    over for the one before it, and `report` (e.g. print), if given, is told so.
    """
    for epoch, path in _backup_candidates(pathlib.Path(run_dir) / "backup"):
        if path.is_file() and _readable_weights(path):
            return epoch, path
        if report is not None and path.exists():
            report(f"Skipping {path}: it is not a complete weights file (cut short by an interruption?). "
                   f"Falling back to an earlier backup.")
    backup_dir = pathlib.Path(run_dir) / "backup"
    if report is not None and any(backup_dir.glob("*.weights.h5*")):
        report(f"Skipping {backup_dir}: it holds no complete backup (the run was interrupted in its first epoch?), "
               "so training starts from the first epoch.")
    return 0, None


def completed_epochs(run_dir):
    """Epochs that the run in run_dir has completed according to its backup (0 for a new run).

    fit() restores the same backup (RunBackup); scripts use it to start their data pipelines at the epoch they
    continue from.
    """
    return find_backup(run_dir)[0]


class RunBackup(keras.callbacks.Callback):
    """After every epoch, saves weights and optimizer state to run_dir/backup/epoch_NNNN.weights.h5; when fit()
    starts, restores the newest complete one and continues with the epoch after it.

    Why not keras.callbacks.BackupAndRestore: it writes its weights file and its epoch record in place (and
    copies the previous pair, also in place), so a kill or a full disk at the wrong moment leaves a truncated
    file, and its fallback catches only some of the errors that follow: the run cannot be resumed at all.
    Here each epoch gets a new file, written under a temporary name and renamed into place (atomic), and its
    epoch is in its name: whatever moment a kill hits, the newest complete file is a consistent state, so an
    interrupted run loses at most the epoch it was in. The two newest files are kept.
    """

    KEEP = 2

    def __init__(self, run_dir, write_dir=None):
        super().__init__()
        self.backup_dir = pathlib.Path(write_dir or run_dir) / "backup"  # where this process writes its backups
        self.epoch, self.path = find_backup(run_dir, report=print)

    def on_train_begin(self, logs=None):
        if self.path is None:
            return
        if not self.model.built:
            raise ValueError("Build the model (call it on one batch) before fit(), so that its backup can be "
                             "restored.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(self.path)
        except Exception as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise BackupError(
                f"The backup {self.path} does not fit this model ({reason}). It belongs to a run configured "
                "differently: resume with the run's own settings, or start a new run without --resume.") from error
        self.model._initial_epoch = self.epoch  # How fit() learns where to continue, as in BackupAndRestore.
        print(f"Restored epoch {self.epoch} from {self.path}.", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        path = self.backup_dir / f"epoch_{epoch + 1:04d}.weights.h5"
        # Keras' save_weights insists on the .weights.h5 ending, also for the temporary name.
        _atomic_write(path, lambda temporary: self.model.save_weights(temporary), suffix=".weights.h5")
        kept = [p for _, p in _backup_candidates(self.backup_dir) if p.name.startswith("epoch_")][self.KEEP:]
        for old in kept:
            old.unlink(missing_ok=True)


def trim_log(run_dir, epochs):
    """Drop the rows of run_dir/log.csv for epochs >= `epochs` (counted from 0, as in the file).

    CSVLogger writes an epoch's row before the backup of that epoch is saved, so a run killed in between (or
    stopped by a full disk) has a row for an epoch that its resume will train again; without this, log.csv
    would hold that epoch twice and training_minutes would count it twice.
    """
    path = pathlib.Path(run_dir) / "log.csv"
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if _log_epoch(line) is not None and _log_epoch(line) < epochs]
    if len(kept) != len(lines):
        _atomic_write(path, lambda temporary: temporary.write_text("".join(kept)))
        print(f"log.csv: dropped {len(lines) - len(kept)} row(s) of epochs after the restored epoch {epochs}.")


def _log_epoch(line):
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None  # A line a kill cut short.


# ---- The end of every script's main() ----


def train(model, config, *, script, pipeline, steps, describe, image_grid_fn=None, images_per_step=None, argv=None):
    """Benchmark, or train in a run folder and evaluate: what follows a script's model and data set-up.

    `pipeline(first_epoch)` returns the training tf.data.Dataset starting at that epoch (a resumed run continues
    with the next epoch's pairs); `describe` is one line naming the setting for the progress output. With
    --benchmark, times training steps (`images_per_step` images each) and returns None. Otherwise: the run
    folder (new, or the one --resume continues), fit() with the callbacks of training_callbacks, the final
    save, the training time, and eval_latents.py on the result when --evaluate is on. A diverged run or a run
    folder that cannot be used ends the process with the reason (exit 1). Returns the run folder.

    Under --distribute multiworker every worker runs this with the same flags; only the chief writes the run
    folder and evaluates, the others restore the chief's backup (--resume) and write into a scratch folder that
    is deleted at the end, and every worker prints the fingerprint of its final weights (all equal).
    """
    if config.distribute != "none":
        _fit_under_strategy(model, multiworker=config.distribute == "multiworker")
    if config.benchmark:
        print(f"{script} on {config.dataset}: {describe}, batch {config.batch_size}, "
              f"precision {keras.config.dtype_policy().name}")
        benchmark_training(model, pipeline(0), images_per_step=images_per_step or config.batch_size)
        return None
    chief = is_chief(model.distribute_strategy)
    if chief:
        try:
            run_dir = prepare_run_dir(config, script=script, name=config.dataset, argv=argv)
        except (OSError, ValueError) as error:
            sys.exit(f"error: {describe_error(error, 'preparing the run folder')}")
        write_dir = run_dir
    else:
        # A non-chief worker of --distribute multiworker restores the chief's backups from the run folder (which
        # must therefore be on a shared file system for --resume) and writes into a scratch folder, deleted after.
        run_dir = pathlib.Path(config.out)
        if config.resume and not (run_dir / "config.json").is_file():
            sys.exit(f"error: this worker cannot see the run folder {run_dir} it should resume (no config.json). "
                     "--resume with --distribute multiworker needs the chief's run folder on a file system that "
                     "every worker shares, at the same path.")
        write_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{script}-worker-"))
    train_data = pipeline(completed_epochs(run_dir))  # 0 for a new run: it has no backup yet
    if config.distribute == "multiworker":
        # Every worker builds the same pipeline (epoch k's batches depend only on the seed and k) and keeps its
        # replicas' rows of each global batch, as MirroredStrategy splits a batch over the GPUs of one machine:
        # no two workers train on the same pairs, and the step is the one-device step on the global batch.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_data = train_data.with_options(options)
    callbacks = training_callbacks(run_dir, image_grid_fn=image_grid_fn if chief else None,
                                   grid_every=config.grid_every, write_dir=write_dir)
    print(f"training {script} ({describe}) on {config.dataset} in {run_dir} ({config.epochs} epochs x {steps} "
          f"steps, precision {keras.config.dtype_policy().name})", flush=True)
    started = time.time()
    resume = f"python {script}.py --resume --out {shlex.quote(str(run_dir))}"
    try:
        # shuffle=False: the tf.data pipeline shuffles; fit()'s default would only print a warning on a Dataset.
        model.fit(train_data, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, shuffle=False,
                  callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
        save_model(model, write_dir / "model.keras")
    except (TrainingDiverged, BackupError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: {describe_error(error, 'training')} The run keeps every epoch completed before: "
                 f"continue it with `{resume}` once that is fixed.")
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    if config.distribute == "multiworker":
        print(f"weights fingerprint {weights_fingerprint(model)} (equal on every worker)", flush=True)
    if not chief:
        print(f"trained in {(time.time() - started) / 60:.1f} min; the chief saved the model in {run_dir}", flush=True)
        return run_dir
    print(f"trained in {(time.time() - started) / 60:.1f} min (this process; {training_minutes(run_dir):.1f} min "
          f"over all epochs in log.csv); model saved to {run_dir / 'model.keras'}", flush=True)
    if config.evaluate:
        try:
            evaluate(run_dir, quick=config.quick, data_dir=config.data_dir)
        except OSError as error:
            sys.exit(f"error: {describe_error(error, 'the evaluation')} The trained model is safe in {run_dir}; "
                     f"evaluate it with `python eval_latents.py --ckpt {shlex.quote(str(run_dir))} --out DIR`.")
    return run_dir


def _fit_under_strategy(model, multiworker):
    """Work around defects of Keras 3 fit() under a tf.distribute strategy, on this model instance only.

    1. Before the first epoch, fit() reads one batch from the pipeline to build the model symbolically and then
       starts the pipeline again. Our pipelines draw epoch k's pairs on their k-th pass, so the first epoch
       trained on the second pass's pairs, unlike a run without --distribute. Our models are built before
       fit(), so that build needs no batch: it is made without reading one (only the optimizer is built).
       Under MultiWorkerMirroredStrategy the batch read would also fail: fit() reduces it over the workers in
       one strategy.reduce call, which cannot take our nested batches (keras-team/keras#20329, open).
    2. multiworker: fit() averages each logged value over the workers with strategy.reduce("MEAN", value,
       axis=0), which fails on the scalars every train_step returns (keras-team/keras#20585, open). The step's
       values are returned as one-element vectors, whose axis-0 mean over the replicas is the scalar fit()
       expects.
    """
    if not model.built:
        raise ValueError("Build the model (model.build()) before fit() under a tf.distribute strategy.")
    build, step = model._maybe_symbolic_build, model.train_step

    def build_without_reading(iterator=None, data_batch=None):
        return build(data_batch=data_batch)

    def train_step(data):
        return {name: ops.reshape(value, (1,)) for name, value in step(data).items()}

    model._maybe_symbolic_build = build_without_reading
    if multiworker:
        model.train_step = train_step


def describe_error(error, doing):
    """One line for an error of the file system (or a refused setting): what failed, where, and what to do."""
    if not isinstance(error, OSError) or isinstance(error, FileExistsError | FileNotFoundError) and not error.errno:
        return str(error)  # Our own messages, which already say what to do.
    reason = error.strerror or str(error) or type(error).__name__
    where = f" ({error.filename})" if error.filename else ""
    number = error.errno
    if number is None:  # h5py and some libraries put the errno in the text only.
        found = re.search(r"errno = (\d+)", str(error))
        number = int(found[1]) if found else None
    if number == errno.ENOSPC:
        fix = "The disk is full: free some space, or put runs on another disk with --out."
    elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "That folder cannot be written: pass --out a folder you can write to."
    else:
        fix = ""
    return f"{doing} failed: {reason}{where}. {fix}".strip()


def evaluate(run_dir, quick=False, data_dir=None):
    """Run eval_latents.py on run_dir/model.keras, or say how to, where the evaluation was not copied along."""
    command = ["--ckpt", str(pathlib.Path(run_dir) / "model.keras")] + (["--quick"] if quick else [])
    command += ["--data-dir", str(data_dir)] if data_dir else []
    try:
        import eval_latents
    except ImportError as error:  # A model script copied with data.py and common.py only.
        print(f"Evaluation skipped ({error}): put eval_latents.py and evaluation/ beside this script, then run "
              f"python eval_latents.py {shlex.join(command)}")
        return
    eval_latents.main(command)


# ---- Saving and loading models ----


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do about it."""


def save_model(model, path):
    """Save the whole model (config, weights, optimizer state) to a .keras file, atomically."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"Model files must end in .keras, got {path}.")
    _atomic_write(path, model.save, suffix=".keras")


def _import_script(script, record_path):
    """Import the model script named in a run's config.json, so that its serializable classes are registered."""
    # The model scripts sit next to this file; make them importable from anywhere (a notebook, tests/).
    here = str(pathlib.Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.append(here)
    # A script that loads its own checkpoint runs as __main__; importing it again would register a second copy
    # of its classes.
    main = sys.modules.get("__main__")
    if script and pathlib.Path(getattr(main, "__file__", None) or "").stem == script:
        return main
    try:
        return importlib.import_module(script)
    except (ImportError, TypeError, ValueError) as error:  # TypeError and ValueError: no or an empty name.
        raise CheckpointError(
            f"{record_path} says the model was trained by script {script!r}, but importing it failed ({error}). "
            f"Run from the repository that holds {script}.py, or put its folder on PYTHONPATH."
        ) from error


def load_checkpoint(path):
    """Load a model saved by a training script, from its .keras file or from its run folder, or a file written by
    export_checkpoint (such as those in pretrained/).

    The run's config.json (beside the file, or inside an exported one) names the script that defines the model;
    that module is imported first, so that its registered classes can be deserialised. The model is not compiled.
    Returns (model, info); info holds script, name, config (a dict), run_dir (None for an exported file), path,
    precision and created.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}: it does not exist. Pass a run folder or its model.keras.")
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise CheckpointError(
                f"{path} is a folder without model.keras. Pass a run folder in which at least one epoch finished, "
                "or the path of a .keras file."
            )
        path = path / "model.keras"
    try:
        with zipfile.ZipFile(path) as archive:
            saved_class = json.loads(archive.read("config.json")).get("class_name", "unknown")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a valid .keras file ({error}). It may have been cut short, e.g. by an interrupted "
            "copy: copy it again, or resume the run from its backup/ folder to write a new one."
        ) from error
    run_dir, record_path = path.parent, path.parent / "config.json"
    with zipfile.ZipFile(path) as archive:
        embedded = RUN_RECORD in archive.namelist()
        record = json.loads(archive.read(RUN_RECORD)) if embedded else None
    if embedded:  # A file written by export_checkpoint carries its run record inside.
        run_dir, record_path = None, pathlib.Path(f"{path}:{RUN_RECORD}")
    elif not record_path.is_file():
        raise CheckpointError(
            f"{path} has no {record_path} beside it. The run's config.json tells which script defines the model "
            "and how it was configured, so a checkpoint must stay in its run folder: copy the whole folder."
        )
    else:
        record = json.loads(record_path.read_text())
    script = record.get("script")
    module = _import_script(script, record_path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]  # Keras appends the whole config.
        raise CheckpointError(
            f"Could not load the {saved_class} model in {path} ({reason}). Its run folder says {script} trained "
            f"it; if {script} does not define {saved_class}, the file comes from another script's run."
        ) from error
    if type(model).__module__ != module.__name__:
        raise CheckpointError(
            f"{path} holds a {type(model).__name__} model defined in {type(model).__module__}, but its run folder "
            f"says {script} trained it, and {script} does not define that class: the file was probably copied "
            "from another run folder."
        )
    info = {key: record.get(key) for key in ("script", "name", "precision", "created")}
    return model, {**info, "config": record.get("config", {}), "run_dir": run_dir, "path": path,
                   "record_path": record_path}


RUN_RECORD = "run_config.json"  # The run's config.json, inside a file written by export_checkpoint.


def export_checkpoint(run_dir, destination):
    """Write the trained model of run_dir as one self-contained .keras file to share (pretrained/).

    The file holds the architecture and the weights without optimizer state (a third of the size for Adam), and
    the run's config.json as RUN_RECORD inside the archive, so that load_checkpoint and eval_latents.py --ckpt
    need nothing beside it; the training log goes beside it as <name>.log.csv and the record, to read, as
    <name>.config.json. The data directory of the machine that trained it is left out of the record: a user
    evaluates with their own --data-dir or the default. Returns the destination path.
    """
    model, info = load_checkpoint(run_dir)  # not compiled: no optimizer is saved
    record = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
    record["config"]["data_dir"] = None
    record["config"]["out"] = None
    destination = pathlib.Path(destination)

    def write(temporary):
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(RUN_RECORD, json.dumps(record, indent=2, default=str))

    _atomic_write(destination, write, suffix=".keras")
    write_json(destination.with_suffix(".config.json"), record)
    if (pathlib.Path(run_dir) / "log.csv").is_file():  # the training curves, for the evaluation's loss plot
        shutil.copyfile(pathlib.Path(run_dir) / "log.csv", log_beside(destination))
    return destination


def log_beside(exported):
    """Where export_checkpoint puts the training log of an exported file: <name>.log.csv beside <name>.keras."""
    return pathlib.Path(exported).with_suffix(".log.csv")


# ---- Benchmark ----


def benchmark_training(model, dataset, images_per_step, warmup=20, steps=100):
    """Time the compiled model's training step on `dataset` and print one line with ms/iter and images/s.

    The first `warmup` steps (tracing, XLA compilation, tf.data start-up) are not timed. The numbers are per
    step, also with steps_per_execution > 1. The model really trains: benchmark a throwaway run.
    """
    model.make_train_function()
    # The dataset repeats so that warmup + steps never run out. Under a tf.distribute strategy the train
    # function expects a distributed iterator; the default strategy returns the dataset unchanged.
    iterator = iter(model.distribute_strategy.experimental_distribute_dataset(dataset.repeat()))

    def wait_for(logs):
        # TensorFlow dispatches steps asynchronously. Reading a result back waits for the step that produced
        # it, and so for all earlier steps, whose variable updates it depends on.
        for value in keras.tree.flatten(logs):
            np.asarray(value)

    for _ in range(warmup):
        wait_for(model.train_function(iterator))
    start, logs = time.perf_counter(), None
    for _ in range(steps):
        logs = model.train_function(iterator)
    wait_for(logs)
    seconds = time.perf_counter() - start

    steps_run = steps * model.steps_per_execution
    result = {
        "ms_per_iter": 1000 * seconds / steps_run,
        "images_per_s": images_per_step * steps_run / seconds,
        "steps": steps,
        "warmup": warmup,
    }
    result["runtime"] = runtime_settings()
    print(f"benchmark: {result['ms_per_iter']:.2f} ms/iter, {result['images_per_s']:.0f} images/s")
    # Work that a step may skip (the adversarial model's gated D update) changes the figure: say how often it ran.
    fractions = {name: float(np.asarray(value)) for name, value in logs.items() if name.endswith("_fraction")}
    if fractions:
        result["fractions"] = fractions
        print(f"benchmark: over all {warmup + steps} steps, " + ", ".join(
            f"{name} {value:.2f}" for name, value in fractions.items()))
    print("benchmark runtime: " + ", ".join(f"{key} {value}" for key, value in result["runtime"].items()))
    return result


def runtime_settings():
    """What decides a CPU step's speed besides the model (configure_cpu): devices, allocator, thread counts."""
    # A thread count of 0 is TensorFlow's own choice (TF_NUM_*_THREADS if set, else from the core count).
    return {"gpus": len(tf.config.list_physical_devices("GPU")), "cpu_cores": os.cpu_count(),
            "cpu_allocator": "bfc" if os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")
            else "default",
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()
            or _threads_from_environment("TF_NUM_INTRAOP_THREADS"),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()
            or _threads_from_environment("TF_NUM_INTEROP_THREADS")}


def _threads_from_environment(name):
    """A TF_NUM_*_THREADS value as an int (0 when unset), like TensorFlow's own count; any other text as it is."""
    value = os.environ.get(name, "").strip() or "0"
    return int(value) if value.isdigit() else value
