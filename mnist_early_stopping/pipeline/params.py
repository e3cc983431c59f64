"""Parse and validate params.yaml into frozen, typed dataclasses.

Imported by every stage before anything heavy (TensorFlow, matplotlib), so a
bad value fails in well under a second with one line that names the key, the
bad value and what is allowed, and exit status 2.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mnist_early_stopping.pipeline.layout import MNIST_NAMES
from mnist_early_stopping.pipeline.stage import EXIT_BAD_INPUT, StageError

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _int(low: int, high: int) -> dict[str, Any]:
    return {"kind": "int", "low": low, "high": high}


def _float(low: float, high: float, low_open: bool = False) -> dict[str, Any]:
    return {"kind": "float", "low": low, "high": high, "low_open": low_open}


def _choice(*choices: str) -> dict[str, Any]:
    return {"kind": "choice", "choices": choices}


def _int_list(low: int, high: int, min_len: int, max_len: int) -> dict[str, Any]:
    return {"kind": "int_list", "low": low, "high": high, "min_len": min_len, "max_len": max_len}


def _or_null(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, "nullable": True}


def _url_list() -> dict[str, Any]:
    return {"kind": "url_list"}


def _digest_table() -> dict[str, Any]:
    return {"kind": "digest_table"}


@dataclass(frozen=True)
class Expected:
    """Size and SHA-256 of a file's decompressed content."""

    size: int
    sha256: str


@dataclass(frozen=True)
class DownloadParams:
    """Where and how the four MNIST files are fetched."""

    mirrors: tuple[str, ...] = field(metadata=_url_list())
    """Base URLs tried in order after $MNIST_MIRROR; each holds the four files."""
    timeout_seconds: float = field(metadata=_float(0.0, 3600.0, low_open=True))
    """Seconds without data before a request is abandoned."""
    retries: int = field(metadata=_int(1, 10))
    """Attempts per file and mirror before moving on to the next mirror."""
    backoff_seconds: float = field(metadata=_float(0.0, 60.0))
    """Pause before the second attempt; doubled for each further one."""
    min_rate_bytes_per_second: float = field(metadata=_float(0.0, 1e9, low_open=True))
    """A transfer averaging less over min_rate_window_seconds is abandoned, its mirror dropped."""
    min_rate_window_seconds: float = field(metadata=_float(0.0, 3600.0, low_open=True))
    """The window over which the transfer rate is averaged."""
    files: dict[str, Expected] = field(metadata=_digest_table())
    """Size and SHA-256 of each MNIST file's decompressed content: the data set's identity."""


@dataclass(frozen=True)
class SplitParams:
    """How the 60000 training images are divided into train and validation."""

    validation_size: int = field(metadata=_int(1, 59999))
    """Number of training images held out for validation."""
    method: str = field(metadata=_choice("head", "shuffle", "stratified"))
    """head: the first images (the tutorial); shuffle: a seeded random subset;
    stratified: a seeded subset with the same class proportions as the whole."""
    seed: int = field(metadata=_int(0, 2**31 - 1))
    """Seed for shuffle and stratified, and for train_size and label_noise."""
    train_size: int | None = field(metadata=_or_null(_int(1, 59999)))
    """Train on a seeded random subset of this many of the train split's images (null: all of them)."""
    label_noise: float = field(metadata=_float(0.0, 0.99))
    """Fraction of the training labels replaced by a different, random class (validation and test stay clean)."""


@dataclass(frozen=True)
class ModelParams:
    """The convolutional network."""

    conv_filters: tuple[int, ...] = field(metadata=_int_list(1, 1024, 1, 4))
    """Filters of each conv layer (each followed by ReLU and 2x2 max-pool)."""
    conv_kernel_size: int = field(metadata=_int(1, 9))
    """Side of the square conv kernels."""
    dense_units: tuple[int, ...] = field(metadata=_int_list(1, 8192, 0, 4))
    """Units of the ReLU dense layers between the convs and the classifier."""


@dataclass(frozen=True)
class TrainParams:
    """Optimisation, early stopping, checkpoints and execution."""

    learning_rate: float = field(metadata=_float(0.0, 1.0, low_open=True))
    """Adam learning rate."""
    batch_size: int = field(metadata=_int(1, 65536))
    """Images per training iteration (global, across all replicas)."""
    max_iterations: int = field(metadata=_int(1, 10_000_000))
    """Stop after this many iterations whatever happens."""
    eval_every: int = field(metadata=_int(1, 1_000_000))
    """Iterations between validation evaluations."""
    patience: int = field(metadata=_int(1, 10_000_000))
    """Stop once this many iterations have passed since the best evaluation."""
    min_delta: float = field(metadata=_float(0.0, 1e9))
    """How much better than the best a value must be to count as improvement."""
    monitor: str = field(metadata=_choice("validation_accuracy", "validation_loss"))
    """Metric that decides improvement: accuracy is maximised, loss minimised."""
    start_from: int | None = field(metadata=_or_null(_int(1, 10_000_000)))
    """Evaluations before this iteration are only logged; the patience clock starts here (Keras start_from_epoch)."""
    baseline: float | None = field(metadata=_or_null(_float(0.0, 1e9)))
    """Only an improvement that also beats this value restarts the patience clock (Keras baseline)."""
    stop_at: float | None = field(metadata=_or_null(_float(0.0, 1e9)))
    """Stop at the first evaluation at this value or better (Lightning stopping_threshold)."""
    divergence: float | None = field(metadata=_or_null(_float(0.0, 1e9)))
    """Stop at the first evaluation worse than this value (Lightning divergence_threshold)."""
    lr_schedule: str = field(metadata=_choice("constant", "plateau", "cosine"))
    """constant: train.learning_rate throughout; plateau: reduced on a plateau (Keras ReduceLROnPlateau);
    cosine: a linear warm-up to train.learning_rate, then a cosine decay to lr_min at max_iterations."""
    lr_factor: float | None = field(metadata=_or_null(_float(0.0, 1.0, low_open=True)))
    """plateau: the rate is multiplied by this on a plateau; below 1."""
    lr_patience: int | None = field(metadata=_or_null(_int(1, 10_000_000)))
    """plateau: iterations without improvement before a reduction; below train.patience."""
    lr_min: float | None = field(metadata=_or_null(_float(0.0, 1.0)))
    """plateau: the rate is never reduced below this; cosine: the rate at max_iterations (null: 0)."""
    lr_warmup: int | None = field(metadata=_or_null(_int(0, 10_000_000)))
    """cosine: iterations of linear warm-up from 0 to train.learning_rate; below max_iterations."""
    seed: int = field(metadata=_int(0, 2**31 - 1))
    """Seed for weight initialisation and batch order."""
    checkpoint_every: int = field(metadata=_int(1, 10_000_000))
    """Iterations between resumable checkpoints (rounded up to an evaluation)."""
    keep_checkpoints: int = field(metadata=_int(1, 100))
    """How many resumable checkpoints are kept on disk."""
    precision: str = field(metadata=_choice("float32", "mixed_bfloat16", "mixed_float16"))
    """Compute dtype policy; variables stay float32."""
    distribute: str = field(metadata=_choice("auto", "none", "mirrored", "multi_worker"))
    """auto: mirrored when several GPUs are visible, else none."""


@dataclass(frozen=True)
class EvaluateParams:
    """Test-set evaluation."""

    batch_size: int = field(metadata=_int(1, 100_000))
    """Images per forward pass when evaluating."""
    load_from: str = field(metadata=_choice("savedmodel", "keras"))
    """savedmodel: run the SavedModels' graphs; keras: rebuild the networks from the
    .keras files in Keras safe mode, running nothing stored in the files (for
    networks from a source you do not trust)."""


@dataclass(frozen=True)
class PlotsParams:
    """Figures."""

    dpi: int = field(metadata=_int(30, 600))
    """Resolution of the PNG figures."""


SECTIONS: dict[str, type] = {
    "download": DownloadParams,
    "split": SplitParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "plots": PlotsParams,
}

T = TypeVar("T")


def _describe(spec: dict[str, Any]) -> str:
    kind = spec["kind"]
    if spec.get("nullable"):
        return _describe({**spec, "nullable": False}) + ", or null (off)"
    if kind == "int":
        return f"an integer between {spec['low']} and {spec['high']}"
    if kind == "float":
        low = f"greater than {spec['low']}" if spec["low_open"] else f"at least {spec['low']}"
        return f"a number {low} and at most {spec['high']}"
    if kind == "choice":
        return "one of " + ", ".join(spec["choices"])
    if kind == "int_list":
        return (
            f"a list of {spec['min_len']} to {spec['max_len']} integers, "
            f"each between {spec['low']} and {spec['high']}"
        )
    if kind == "digest_table":
        names = ", ".join(MNIST_NAMES)
        return f"a mapping of each of {names} (and nothing else) to {{size: N, sha256: <64 hex digits>}}"
    return "a non-empty list of http(s):// or file:// URLs"


def table_problem(raw: Any) -> str | None:
    """What is wrong with a digest table (download.files), or None."""
    if not isinstance(raw, dict):
        return f"got {raw!r}"
    unknown = sorted(map(str, set(raw) - set(MNIST_NAMES)))
    if unknown:
        return f"unknown file name {unknown[0]!r}"
    missing = [name for name in MNIST_NAMES if name not in raw]
    if missing:
        return f"no entry for {missing[0]}"
    for name in MNIST_NAMES:
        problem = entry_problem(raw[name])
        if problem:
            return f"{name}: {problem}"
    return None


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one {size: N, sha256: ...} entry, or None."""
    if not isinstance(entry, dict) or set(entry) != {"size", "sha256"}:
        return f"not {{size: N, sha256: <64 hex digits>}}, got {entry!r}"
    size, sha256 = entry["size"], entry["sha256"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return f"size must be a positive integer, got {size!r}"
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        return f"sha256 must be a string of 64 hex digits, got {sha256!r}"
    return None


def _valid(value: Any, spec: dict[str, Any]) -> Any:
    """Return the value converted to its field type, or None if it is invalid."""
    kind = spec["kind"]

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "int":
        return value if is_int(value) and spec["low"] <= value <= spec["high"] else None
    if kind == "float":
        if not (is_int(value) or isinstance(value, float)):
            return None
        value = float(value)
        above = value > spec["low"] if spec["low_open"] else value >= spec["low"]
        return value if above and value <= spec["high"] else None
    if kind == "choice":
        return value if value in spec["choices"] else None
    if kind == "int_list":
        if not isinstance(value, list) or not spec["min_len"] <= len(value) <= spec["max_len"]:
            return None
        ok = all(is_int(v) and spec["low"] <= v <= spec["high"] for v in value)
        return tuple(value) if ok else None
    if kind == "digest_table":
        if table_problem(value):
            return None
        return {name: Expected(value[name]["size"], value[name]["sha256"].lower()) for name in MNIST_NAMES}
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and v.startswith(("http://", "https://", "file://")) for v in value)
    )
    return tuple(value) if ok else None


def parse_section(name: str, raw: Any, cls: type[T]) -> T:
    """Build one section's dataclass from its raw YAML mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {name} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            allowed = ", ".join(fields)
            raise ParamsError(f"params.yaml: unknown key {name}.{key}; allowed keys: {allowed}")
    values = {}
    for key, f in fields.items():
        if key not in raw:
            raise ParamsError(
                f"params.yaml: missing key {name}.{key}, which must be {_describe(dict(f.metadata))}"
            )
        spec = dict(f.metadata)
        if raw[key] is None and spec.get("nullable"):
            values[key] = None
            continue
        value = _valid(raw[key], spec)
        if value is None and spec["kind"] == "digest_table":
            raise ParamsError(
                f"params.yaml: {name}.{key}: {table_problem(raw[key])}; it must be {_describe(spec)}"
            )
        if value is None:
            raise ParamsError(f"params.yaml: {name}.{key} must be {_describe(spec)}, got {raw[key]!r}")
        values[key] = value
    return cls(**values)


class ParamsLoader(yaml.SafeLoader):
    """YAML as users write numbers, with duplicated keys refused.

    YAML 1.1 (PyYAML) reads `1e-4`, `1e-05` and `1.0e9` as strings, though
    DVC (YAML 1.2) reads them as numbers and writes `1e-05` itself for
    `dvc exp run -S train.learning_rate=0.00001`; here they are floats too.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ParamsError(f"params.yaml: key {key!r} appears twice (again at line {line}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Floats with an exponent and no dot, or a dot and an unsigned exponent: YAML 1.2 floats that 1.1 misses.
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read the raw params mapping, with a clear error for an unreadable file."""
    try:
        with path.open(encoding="utf-8") as f:
            raw = yaml.load(f, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {raw!r}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown section {unknown[0]}; allowed sections: {', '.join(SECTIONS)}"
        )
    return raw


def load(*names: str, path: Path = PARAMS_FILE) -> tuple[Any, ...]:
    """Parse the named sections (all sections are checked); exit 2 with one line on error."""
    try:
        raw = read_params(path)
        parsed = {}
        for section, cls in SECTIONS.items():
            if section not in raw:
                keys = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ParamsError(f"params.yaml: missing section {section}, which must have the keys {keys}")
            parsed[section] = parse_section(section, raw[section], cls)
        check_consistency(parsed)
    except ParamsError as e:
        raise StageError(str(e), code=EXIT_BAD_INPUT) from None
    return tuple(parsed[n] for n in names)


def check_consistency(parsed: dict[str, Any]) -> None:
    """Checks that involve more than one key."""
    train: TrainParams = parsed["train"]
    if train.eval_every > train.max_iterations:
        raise ParamsError(
            f"params.yaml: train.eval_every must be at most train.max_iterations "
            f"({train.max_iterations}), got {train.eval_every}"
        )
    if train.start_from is not None and train.start_from > train.max_iterations:
        raise ParamsError(
            f"params.yaml: train.start_from must be at most train.max_iterations ({train.max_iterations}), "
            f"got {train.start_from}: no evaluation would count"
        )
    problems = [*threshold_problems(train), *schedule_problems(train)]
    if problems:
        raise ParamsError(f"params.yaml: {problems[0]}")


def threshold_problems(train: TrainParams) -> list[str]:
    """Thresholds the monitored value can never reach (accuracy is in [0, 1], a loss is at least 0)."""
    accuracy = train.monitor == "validation_accuracy"
    unit = "an accuracy (0 to 1)" if accuracy else "a loss (at least 0)"
    problems = []
    for key in ("stop_at", "divergence"):
        value = getattr(train, key)
        if value is not None and accuracy and value > 1:
            problems.append(f"train.{key} must be at most 1 for {train.monitor}, got {value}: it is {unit}")
    if train.divergence is not None and accuracy and train.divergence == 0:
        problems.append(f"train.divergence 0 can never be undercut by {unit}; set it above 0 or to null")
    if train.baseline is not None:
        beatable = train.baseline + train.min_delta < 1 if accuracy else train.baseline - train.min_delta > 0
        if not beatable:
            problems.append(
                f"train.baseline {train.baseline} can never be beaten by more than train.min_delta "
                f"({train.min_delta}) with {unit}; lower it or set it to null"
            )
    if train.stop_at is not None and train.divergence is not None:
        worse = train.divergence < train.stop_at if accuracy else train.divergence > train.stop_at
        if not worse:
            side = "below" if accuracy else "above"
            problems.append(
                f"train.divergence ({train.divergence}) must be {side} train.stop_at ({train.stop_at}) "
                f"for {train.monitor}"
            )
    return problems


# Each schedule's keys: those it needs, and those it may leave null.
SCHEDULE_KEYS = {
    "constant": ((), ()),
    "plateau": (("lr_factor", "lr_patience"), ("lr_min",)),
    "cosine": (("lr_warmup",), ("lr_min",)),
}


def schedule_problems(train: TrainParams) -> list[str]:
    """The learning-rate schedule's keys: set exactly when the schedule uses them."""
    needed, optional = SCHEDULE_KEYS[train.lr_schedule]
    users: dict[str, list[str]] = {}
    for name, keys in SCHEDULE_KEYS.items():
        for key in (*keys[0], *keys[1]):
            users.setdefault(key, []).append(name)
    problems = [
        f"train.{key} is set ({getattr(train, key)}) but train.lr_schedule is {train.lr_schedule}; "
        f"set it to null, or train.lr_schedule to {' or '.join(users[key])}"
        for key in users if key not in (*needed, *optional) and getattr(train, key) is not None
    ]
    problems += [
        f"train.{key} must be set when train.lr_schedule is {train.lr_schedule}, got null"
        for key in needed if getattr(train, key) is None
    ]
    if train.lr_warmup is not None and train.lr_warmup >= train.max_iterations:
        problems.append(f"train.lr_warmup must be below train.max_iterations ({train.max_iterations}), "
                        f"got {train.lr_warmup}")
    if train.lr_factor is not None and train.lr_factor >= 1:
        problems.append(f"train.lr_factor must be below 1, got {train.lr_factor}")
    if train.lr_patience is not None and train.lr_patience >= train.patience:
        problems.append(
            f"train.lr_patience must be below train.patience ({train.patience}), got {train.lr_patience}: "
            "early stopping would stop before the rate is ever reduced"
        )
    if train.lr_min is not None and train.lr_min >= train.learning_rate:
        problems.append(
            f"train.lr_min must be below train.learning_rate ({train.learning_rate}), got {train.lr_min}: "
            "the rate could never be reduced"
        )
    return problems
