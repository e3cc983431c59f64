"""Benchmarks: our training step against plain Keras `fit` and PyTorch, and the DVC pipeline's costs.

Run in the project's virtual environment (PyTorch is optional, used only here: `pip install torch`):

    python bench/bench.py                      # step mode: training speed, validation cost, efficiency
    python bench/bench.py step --repeats 9 --seconds 8
    python bench/bench.py step --candidates    # also time candidate Trainer speed-ups (patched here only)
    MNIST_MIRROR=../shared/mnist python bench/bench.py pipeline
    MNIST_MIRROR=../shared/mnist python bench/bench.py pipeline --precision mixed_bfloat16

Step mode runs every contender in a fresh subprocess per repeat (TensorFlow and PyTorch in one
process fight over threads), alternating contenders so that background load hits them alike; a run
during which other processes took over 10% of the CPUs (from /proc/stat) is run again, and the
quietest try kept. It prints medians and per-repeat paired ratios. Pipeline mode runs `dvc repro`
in a temporary copy of the project (new git repo, DVC cache and outputs), times each stage from
DVC's output, and times a no-op `dvc repro`. A relative MNIST_MIRROR is taken relative to the
project root, as the stages do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT_MARK = "BENCH-RESULT "
WARMUP_CHUNKS = 2  # the first chunk traces the graph; the second settles caches and thread pools
WARMUP_BATCHES = 50  # Keras fit and PyTorch: steps before timing starts
MATMUL_SIZE = 2048
VALIDATION_REPEATS = 3
NUM_CLASSES = 10
IMAGE_SIDE = 28

# Targets of the README's performance section.
TARGET_OURS_VS_KERAS = 1.6
TARGET_OURS_VS_TORCH = 1.2
TARGET_BF16_VS_KERAS = 2.5
TARGET_VALIDATION_SHARE = 0.15
TARGET_OTHER_STAGES_SHARE = 0.25
TARGET_NOOP_SECONDS = 3.0

LABELS = {
    "ours": "ours: Trainer.train_until, float32",
    "keras-fit": "Keras model.fit, float32",
    "torch": "PyTorch eager, float32",
    "ours-bf16": "ours: Trainer.train_until, mixed_bfloat16",
    "keras-fit-bf16": "Keras model.fit, mixed_bfloat16",
}

Results = dict[str, list[dict[str, Any]]]  # contender -> one measurement dict per repeat


# --------------------------------------------------------------------------- shared helpers


def versions() -> str:
    """Installed TensorFlow, Keras, PyTorch, DVC and Python versions (without importing them)."""
    parts = []
    for name in ("tensorflow", "keras", "torch", "dvc"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts) + f", Python {platform.python_version()}"


def machine() -> str:
    """CPU model from /proc/cpuinfo and the core count."""
    model = platform.processor() or "unknown CPU"
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def header(title: str) -> list[str]:
    """Title, date, machine, load and versions lines."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        title,
        f"date:     {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine:  {machine()}; load average at the start {load}",
        f"versions: {versions()}",
    ]


def table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def verdict(value: float, target: float, at_least: bool) -> str:
    """PASS or MISS against a target (n/a when not measured)."""
    if math.isnan(value):
        return "n/a"
    return "PASS" if (value >= target if at_least else value <= target) else "MISS"


def child_env() -> dict[str, str]:
    """Environment for benchmark children: quiet TensorFlow, unbuffered output, no DVC analytics."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1")


# --------------------------------------------------------------------------- workers (one per subprocess)


def load_data() -> tuple[tuple[Any, Any], tuple[Any, Any], str]:
    """(train, validation, description): data/split if present, else random uint8 images of MNIST's size."""
    import numpy as np

    split = ROOT / "data" / "split"
    if (split / "train.npz").is_file() and (split / "validation.npz").is_file():
        arrays = []
        for name in ("train", "validation"):
            with np.load(split / f"{name}.npz") as data:
                arrays.append((data["images"], data["labels"]))
        return arrays[0], arrays[1], "data/split (real MNIST)"
    rng = np.random.default_rng(0)

    def random_split(n: int) -> tuple[Any, Any]:
        images = rng.integers(0, 256, size=(n, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
        return images, rng.integers(0, NUM_CLASSES, size=n, dtype=np.uint8)

    return random_split(55000), random_split(5000), "random uint8 images (no data/split here)"


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores together (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Usage:
    """Wall time, this process's CPU use and other processes' CPU use, from construction to `rates`."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), machine_busy_seconds()

    def rates(self, iterations: int) -> dict[str, float]:
        """Iterations/s, and CPU use of this process and of all others as fractions of all cores."""
        wall = time.perf_counter() - self.wall
        cpu, busy = time.process_time() - self.cpu, machine_busy_seconds() - self.busy
        capacity = wall * (os.cpu_count() or 1)
        return {"its": iterations / wall, "cpu": cpu / capacity, "others": max(0.0, busy - cpu) / capacity}


def timed_loop(chunk: Callable[[], int], seconds: float) -> dict[str, float]:
    """Call `chunk` (returns iterations done) until `seconds` pass; return Usage.rates."""
    usage, done = Usage(), 0
    while time.perf_counter() - usage.wall < seconds:
        done += chunk()
    return usage.rates(done)


def matmul_peak_gflops(rounds: int = 5, per_round: int = 3) -> float:
    """Best round of large float32 tf.linalg.matmul: this machine's practical fp32 peak."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)) for _ in range(2))
    tf.linalg.matmul(a, b).numpy()
    flops, best = 2 * MATMUL_SIZE**3 * per_round, 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            c = tf.linalg.matmul(a, b)
        c.numpy()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def validation_seconds(runner: Any) -> float:
    """Median time of a full Trainer.validate(), after one warm-up call."""
    runner.validate()
    times = []
    for _ in range(VALIDATION_REPEATS):
        start = time.perf_counter()
        runner.validate()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_trainer(precision: str | None, candidate: str | None, checkpoint_dir: Path) -> tuple[Any, int, str]:
    """(Trainer on the project's params and data, train.eval_every, data description)."""
    cls = ALL_CANDIDATES[candidate][1]() if candidate else plain_trainer()  # first: may configure TF
    from stages import params

    model_cfg, cfg = params.load("model", "train")
    if precision:
        cfg = dataclasses.replace(cfg, precision=precision)
    train_data, validation_data, source = load_data()
    return cls(model_cfg, cfg, train_data, validation_data, checkpoint_dir), cfg.eval_every, source


def run_ours(
    seconds: float, precision: str | None = None, candidate: str | None = None, full: bool = True
) -> dict[str, Any]:
    """Our Trainer, driven as the stage drives it: train_until in chunks of train.eval_every."""
    with tempfile.TemporaryDirectory() as tmp:
        runner, eval_every, source = make_trainer(precision, candidate, Path(tmp))

        def chunk() -> int:
            runner.train_until(runner.iteration + eval_every)
            return eval_every

        for _ in range(WARMUP_CHUNKS):
            chunk()
        result: dict[str, Any] = {**timed_loop(chunk, seconds), "data": source}
        if full:
            usage = Usage()
            result["validate_s"] = validation_seconds(runner)
            result["validation_images"] = int(runner.validation_labels.shape[0])
            if not candidate:
                result["matmul_gflops"] = matmul_peak_gflops()
            # The retry rule then also covers the validation and peak timings.
            result["others"] = max(result["others"], usage.rates(0)["others"])
        return result


def run_keras_fit(seconds: float, precision: str | None = None) -> dict[str, Any]:
    """What a typical Keras user writes: compile with Adam and sparse cross-entropy, fit on float arrays."""
    import keras
    import numpy as np

    from stages import params
    from stages.model import build_model

    model_cfg, cfg = params.load("model", "train")
    keras.utils.set_random_seed(cfg.seed)
    if precision:
        keras.mixed_precision.set_global_policy(precision)
    (images, labels), _, source = load_data()
    x = images.astype(np.float32) / 255.0
    model = build_model(model_cfg, cfg.seed)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy")
    timer = fit_timer(WARMUP_BATCHES, seconds)
    model.fit(x, labels, batch_size=cfg.batch_size, epochs=1000, verbose=0, callbacks=[timer])
    return {**timer.rates, "data": source}


def fit_timer(warmup: int, seconds: float) -> Any:
    """A Keras callback that times batches after `warmup` ones and stops `fit` once `seconds` have passed."""
    import keras

    class FitTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.batches, self.rates = 0, {}
            self.usage = Usage()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.batches += 1
            if self.batches == warmup:
                self.usage = Usage()
            elif self.batches > warmup and time.perf_counter() - self.usage.wall >= seconds:
                self.rates = self.usage.rates(self.batches - warmup)
                self.model.stop_training = True

    return FitTimer()


def run_torch(seconds: float) -> dict[str, Any]:
    """PyTorch eager on the same architecture, random batches from float tensors in memory."""
    import numpy as np
    import torch
    from torch import nn

    from stages import params

    model_cfg, cfg = params.load("model", "train")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    (images, labels), _, source = load_data()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    model = torch_model(model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> int:
        index = torch.randint(0, x.shape[0], (cfg.batch_size,))
        optimizer.zero_grad()
        loss_fn(model(x[index]), y[index]).backward()
        optimizer.step()
        return 1

    for _ in range(WARMUP_BATCHES):
        step()
    return {**timed_loop(step, seconds), "data": source}


def torch_model(cfg: Any) -> Any:
    """The network of stages/model.py in PyTorch (logits out: the loss applies the softmax)."""
    from torch import nn

    layers: list[Any] = []
    channels, side = 1, IMAGE_SIDE
    for filters in cfg.conv_filters:
        layers += [
            nn.Conv2d(channels, filters, cfg.conv_kernel_size, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        channels, side = filters, math.ceil(side / 2)
    layers.append(nn.Flatten())
    width = channels * side * side
    for units in cfg.dense_units:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def worker(name: str, seconds: float) -> dict[str, Any]:
    """Run one contender in this process and return its measurements."""
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "ours": lambda: run_ours(seconds),
        "ours-bf16": lambda: run_ours(seconds, "mixed_bfloat16", full=False),
        "keras-fit": lambda: run_keras_fit(seconds),
        "keras-fit-bf16": lambda: run_keras_fit(seconds, "mixed_bfloat16"),
        "torch": lambda: run_torch(seconds),
    }
    if name in ALL_CANDIDATES:
        return run_ours(seconds, candidate=name)
    if name not in runs:
        raise SystemExit(f"bench: unknown contender {name!r}; known: {', '.join([*runs, *ALL_CANDIDATES])}")
    return runs[name]()


# --------------------------------------------------------------------------- candidate speed-ups (bench only)


def plain_trainer() -> type:
    """The Trainer as it is."""
    from stages import trainer

    return trainer.Trainer


def inter_op_one() -> type:
    """One inter-op thread: ops run one at a time on all cores, instead of two ops sharing them."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    return plain_trainer()


def one_validation_batch() -> type:
    """Validation as one batch of all images instead of batches of 1000."""

    class OneBatchTrainer(plain_trainer()):  # type: ignore[misc]
        def validate(self) -> dict[str, float]:
            correct, loss = self._validate_batch(self.validation_images, self.validation_labels)
            n = int(self.validation_labels.shape[0])
            return {"validation_accuracy": int(correct) / n, "validation_loss": float(loss) / n}

    return OneBatchTrainer


def no_determinism() -> type:
    """Op determinism off (for information: determinism is a requirement)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism = lambda: None
    return plain_trainer()


def onednn_off() -> type:
    """TensorFlow's own Eigen kernels instead of oneDNN's."""
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # read when TensorFlow loads, so before the import
    return plain_trainer()


def xla_steps() -> type:
    """The chunk of steps compiled by XLA; XLA has no deterministic max-pool gradient, so no determinism."""
    import tensorflow as tf

    class XlaTrainer(no_determinism()):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._train_steps = tf.function(self._train_steps_fn, jit_compile=True)

    return XlaTrainer


# Candidate speed-ups of stages/trainer.py, tried by subclassing here (step --candidates).
CANDIDATES: dict[str, tuple[str, Callable[[], type]]] = {
    "ours+inter-op-1": ("ours, 1 inter-op thread", inter_op_one),
    "ours+validate-1-batch": ("ours, validation in one batch", one_validation_batch),
    "ours+no-determinism": ("ours, op determinism off (info)", no_determinism),
}
# Much slower on a 2-core CPU (XLA ~0.05x, Eigen ~0.4x); kept to re-check elsewhere (--candidates all).
SLOW_CANDIDATES: dict[str, tuple[str, Callable[[], type]]] = {
    "ours+xla": ("ours, XLA steps, determinism off", xla_steps),
    "ours+onednn-off": ("ours, TF_ENABLE_ONEDNN_OPTS=0", onednn_off),
}
ALL_CANDIDATES = {**CANDIDATES, **SLOW_CANDIDATES}


# --------------------------------------------------------------------------- step mode


def run_contender(name: str, seconds: float) -> dict[str, Any]:
    """Run one contender in a fresh subprocess: its measurements plus the subprocess's max RSS (MiB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", name, "--seconds", str(seconds)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: it also gives the child's peak memory
    proc.returncode = os.waitstatus_to_exitcode(status)
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            return {**json.loads(line[len(RESULT_MARK) :]), "maxrss_mib": usage.ru_maxrss / 1024}
    tail = "\n    ".join(output.strip().splitlines()[-6:])
    return {"error": f"failed (exit {proc.returncode}):\n    {tail}"}


def wait_for_quiet(max_others: float, patience: float = 30.0) -> None:
    """Wait up to `patience` s for a second in which other processes use at most `max_others` of the CPUs."""
    deadline = time.perf_counter() + patience
    while time.perf_counter() < deadline:
        usage = Usage()
        time.sleep(1.0)
        if usage.rates(0)["others"] <= max_others:
            return


def measure(name: str, seconds: float, max_others: float, tries: int) -> dict[str, Any]:
    """Run a contender; again while other processes used over `max_others` of the CPUs; keep the quietest."""
    best: dict[str, Any] = {}
    made = 0
    while made < tries:
        made += 1
        wait_for_quiet(max_others)
        result = run_contender(name, seconds)
        if "its" not in result:
            return result
        if not best or result["others"] < best["others"]:
            best = result
        if result["others"] <= max_others:
            break
    return {**best, "tries": made}


def torch_available() -> bool:
    """Whether PyTorch imports (checked in a subprocess: this one stays light)."""
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def train_flops_per_image(model_cfg: Any) -> float:
    """Forward multiply-adds x2, times 3 for forward plus backward (backward ~2x forward)."""
    side, channels, macs = IMAGE_SIDE, 1, 0
    k = model_cfg.conv_kernel_size
    for filters in model_cfg.conv_filters:  # "same" convs at stride 1, each followed by a 2x2 "same" pool
        macs += side * side * filters * k * k * channels
        side, channels = math.ceil(side / 2), filters
    width = side * side * channels
    for units in (*model_cfg.dense_units, NUM_CLASSES):
        macs += width * units
        width = units
    return 3 * 2 * macs


def label(name: str) -> str:
    """Human-readable name of a contender."""
    return LABELS.get(name) or ALL_CANDIDATES.get(name, (name,))[0]


def median_of(results: list[dict[str, Any]], key: str) -> float:
    """Median of one measurement over the repeats that produced it (nan if none did)."""
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else math.nan


def paired_ratio(runs: Results, a: str, b: str, key: str = "its") -> float:
    """Median over repeats of a/b for one measurement, each ratio taken within one repeat."""
    pairs = zip(runs.get(a, []), runs.get(b, []), strict=False)
    ratios = [x[key] / y[key] for x, y in pairs if key in x and key in y and y[key] > 0]
    return statistics.median(ratios) if ratios else math.nan


def validation_share(t_val: float, its: float, eval_every: int) -> float:
    """Share of the stage's loop spent validating: t_val / (eval_every / its + t_val)."""
    return t_val / (eval_every / its + t_val)


def select_contenders(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(contenders to run, notes about skipped ones)."""
    contenders = args.contenders.split(",") if args.contenders else list(LABELS)
    if args.candidates:
        contenders += list(ALL_CANDIDATES) if args.candidates == "all" else args.candidates.split(",")
    unknown = [c for c in contenders if c not in LABELS and c not in ALL_CANDIDATES]
    if unknown:
        raise SystemExit(
            f"bench: unknown contender {unknown[0]}; known: {', '.join([*LABELS, *ALL_CANDIDATES])}"
        )
    notes = []
    if "torch" in contenders and not torch_available():
        contenders.remove("torch")
        notes.append("PyTorch skipped: `import torch` failed (pip install torch to compare with it)")
    return contenders, notes


def step_mode(args: argparse.Namespace) -> None:
    """Measure every contender, alternating, and print the tables."""
    from stages import params

    model_cfg, cfg = params.load("model", "train")
    contenders, notes = select_contenders(args)
    lines = header("Training-step benchmark")
    lines.append(
        f"setup:    batch {cfg.batch_size}; ours runs train_until in chunks of eval_every={cfg.eval_every} "
        f"as the stage does; {args.repeats} repeats x {args.seconds:g} s per contender after warm-up,"
    )
    lines.append(
        "          contenders alternating, each run in its own fresh subprocess (TensorFlow and PyTorch "
        "in one process fight over threads);"
    )
    lines.append(
        f"          a run during which other processes used over {args.max_other_load:.0%} of the CPUs is "
        f"run again (at most {args.tries} tries; the quietest is kept)"
    )
    print("\n".join(lines), flush=True)
    runs: Results = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name in contenders:
            result = measure(name, args.seconds, args.max_other_load, args.tries)
            runs[name].append(result)
            shown = (
                f"{result['its']:.1f} it/s, other load {result['others']:.0%}, tries {result['tries']}"
                if "its" in result
                else result["error"]
            )
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<22} {shown}", flush=True)
    data = next((r["data"] for rs in runs.values() for r in rs if "data" in r), "?")
    print(
        f"\ndata:     {data}; Keras fit: verbose=0, no metrics (its fastest plain use); "
        "PyTorch: torch.set_num_threads(cpu_count)\n"
    )
    print(contenders_table(runs, cfg.eval_every))
    print()
    print(checks_table(runs, cfg.eval_every))
    print()
    if runs.get("ours"):
        print(explanations(runs, model_cfg, cfg))
    retried = sum(r.get("tries", 1) > 1 for rs in runs.values() for r in rs)
    loaded = sum(r.get("others", 0.0) > args.max_other_load for rs in runs.values() for r in rs)
    total = sum(len(rs) for rs in runs.values())
    print(f"load:       {retried} of {total} runs were retried; {loaded} kept other load above the limit")
    for note in notes:
        print(f"note:       {note}")


def contenders_table(runs: Results, eval_every: int) -> str:
    """One row per contender: speed, spread, validation, CPU use (its own and others'), memory."""
    rows = []
    for name, results in runs.items():
        good = [r for r in results if "its" in r]
        if not good:
            rows.append((label(name), "failed", "", "", "", "", "", ""))
            continue
        its = [r["its"] for r in good]
        t_val = median_of(good, "validate_s")
        share = validation_share(t_val, statistics.median(its), eval_every)
        rows.append(
            (
                label(name),
                f"{statistics.median(its):.1f}",
                f"{min(its):.1f}..{max(its):.1f}",
                "" if math.isnan(t_val) else f"{t_val:.3f}",
                "" if math.isnan(share) else f"{share:.1%}",
                f"{median_of(good, 'cpu'):.0%}",
                f"{median_of(good, 'others'):.0%}",
                f"{max(r['maxrss_mib'] for r in good):.0f}",
            )
        )
    head = (
        "contender",
        "it/s median",
        "min..max",
        "validate s",
        "val share",
        "CPU use",
        "others",
        "max RSS MiB",
    )
    return table(rows, head)


def checks_table(runs: Results, eval_every: int) -> str:
    """Ratios and the validation share against their targets, then informative ratios."""
    ours = runs.get("ours", [])
    share = validation_share(median_of(ours, "validate_s"), median_of(ours, "its"), eval_every)
    ratios = [
        ("ours / Keras fit, float32", paired_ratio(runs, "ours", "keras-fit"), TARGET_OURS_VS_KERAS),
        ("ours / PyTorch, float32", paired_ratio(runs, "ours", "torch"), TARGET_OURS_VS_TORCH),
        (
            "ours mixed_bfloat16 / Keras fit float32",
            paired_ratio(runs, "ours-bf16", "keras-fit"),
            TARGET_BF16_VS_KERAS,
        ),
    ]
    rows = [(name, f"{v:.2f}x", f">= {t:g}x", verdict(v, t, at_least=True)) for name, v, t in ratios]
    rows.append(
        (
            f"validation share at eval every {eval_every}",
            f"{share:.1%}",
            f"<= {TARGET_VALIDATION_SHARE:.0%}",
            verdict(share, TARGET_VALIDATION_SHARE, at_least=False),
        )
    )
    for a, b in (("keras-fit-bf16", "keras-fit"), ("ours-bf16", "ours"), ("ours-bf16", "keras-fit-bf16")):
        rows.append((f"{a} / {b}", f"{paired_ratio(runs, a, b):.2f}x", "", "info"))
    for name in ALL_CANDIDATES:
        if name in runs:
            speed, val = paired_ratio(runs, name, "ours"), paired_ratio(runs, name, "ours", "validate_s")
            rows.append((f"{name} / ours: it/s; validate time", f"{speed:.2f}x; {val:.2f}x", "", "candidate"))
    rows = [r for r in rows if not r[1].startswith("nan")]
    return table(rows, ("check (ratio = median of the per-repeat ratios)", "value", "target", "result"))


def explanations(runs: Results, model_cfg: Any, cfg: Any) -> str:
    """How the validation share and the efficiency were computed, with their inputs."""
    ours = runs.get("ours", [])
    its, t_val = median_of(ours, "its"), median_of(ours, "validate_s")
    flops_it = train_flops_per_image(model_cfg) * cfg.batch_size
    achieved, peak = its * flops_it / 1e9, median_of(ours, "matmul_gflops")
    n_val = median_of(ours, "validation_images")
    lines = [
        f"validation: one full Trainer.validate() ({n_val:.0f} images) takes {t_val:.3f} s; "
        f"share = t_val / ({cfg.eval_every} / it/s + t_val)",
        f"efficiency: {flops_it / 1e9:.2f} GFLOP per iteration (forward multiply-adds x2, x3 with "
        f"backward); ours at {its:.1f} it/s = {achieved:.0f} GFLOP/s",
        f"            against a {MATMUL_SIZE}x{MATMUL_SIZE} float32 tf.linalg.matmul peak of {peak:.0f} "
        f"GFLOP/s (same subprocess, after training) = {achieved / peak:.0%}",
        "CPU use:    the contender's CPU time / (wall time x cores) while timed; others: the same for all "
        "other processes (from /proc/stat)",
        "max RSS:    ru_maxrss of the contender's subprocess (os.wait4), data and runtime included",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- pipeline mode


PIPELINE_ORDER = ("download", "split", "train", "evaluate", "plots")
PROJECT_FILES = ("stages", "params.yaml", "dvc.yaml")


@dataclasses.dataclass
class Repro:
    """What one `dvc repro` took: per stage, before the first stage, in all; peak RSS per stage."""

    stage_seconds: dict[str, float]
    startup_seconds: float
    total_seconds: float
    peak_rss_kib: dict[str, int]


def copy_project(dest: Path, overrides: list[str]) -> None:
    """Copy code, params and pipeline into `dest`, apply SECTION.KEY=VALUE overrides, init git and DVC."""
    import yaml

    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    if overrides:
        path = dest / "params.yaml"
        raw = yaml.safe_load(path.read_text())
        for item in overrides:
            key, _, value = item.partition("=")
            section, _, field = key.partition(".")
            if field not in raw.get(section, {}):
                raise SystemExit(f"bench: --set {item}: params.yaml has no key {key}")
            raw[section][field] = yaml.safe_load(value)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=dest, check=True, env=child_env())


def runnable_stages(project: Path) -> tuple[list[str], list[str]]:
    """(stages whose stages/*.py all exist, stages missing some), in pipeline order."""
    import yaml

    declared = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    present, missing = [], []
    for name in sorted(declared, key=lambda n: PIPELINE_ORDER.index(n) if n in PIPELINE_ORDER else 99):
        code = [d for d in declared[name].get("deps", []) if isinstance(d, str) and d.startswith("stages/")]
        (present if all((project / d).exists() for d in code) else missing).append(name)
    return present, missing


class PeakRss:
    """Polls /proc for the descendants of a process; keeps each stage's peak RSS (VmHWM) by stage name."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.peaks_kib: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Stop polling; return the peaks."""
        self._stop.set()
        self._thread.join()
        return self.peaks_kib

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._descendants():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # it has just ended
                stage = re.search(r"-m stages\.(\w+)", cmdline)
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                if stage and hwm:
                    name = stage.group(1)
                    self.peaks_kib[name] = max(self.peaks_kib.get(name, 0), int(hwm.group(1)))

    def _descendants(self) -> set[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = set(), {self.root_pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier
        return found


def repro(project: Path, env: dict[str, str], targets: list[str]) -> Repro:
    """Run `dvc repro TARGETS`, timing each stage from its 'Running stage' line to the next one."""
    marks: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro", *targets],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rss = PeakRss(proc.pid)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if found := re.match(r"Running stage '([^']+)'", line.strip()):
            marks.append((time.perf_counter() - start, found.group(1)))
    code = proc.wait()
    total = time.perf_counter() - start
    peaks = rss.stop()
    if code != 0:
        raise SystemExit(f"bench: `dvc repro` failed ({code}) in {project}:\n{''.join(lines)[-3000:]}")
    ends = [t for t, _ in marks[1:]] + [total]
    seconds = {name: end - t for (t, name), end in zip(marks, ends, strict=True)}
    return Repro(seconds, marks[0][0] if marks else total, total, peaks)


def noop_seconds(project: Path, env: dict[str, str], targets: list[str]) -> float:
    """Median wall time of three `dvc repro` runs that find nothing to do."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run(
            ["dvc", "repro", *targets], cwd=project, env=env, capture_output=True, text=True
        )
        times.append(time.perf_counter() - start)
        if done.returncode != 0 or "Running stage" in done.stdout:
            raise SystemExit(f"bench: the no-op `dvc repro` failed or did work:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def mirror_env() -> dict[str, str]:
    """Child environment with $MNIST_MIRROR made absolute (the pipeline runs in another directory)."""
    mirror = os.environ.get("MNIST_MIRROR", "").strip()
    if not mirror:
        raise SystemExit(
            "bench: pipeline mode needs MNIST_MIRROR, a directory or URL holding the four MNIST "
            ".gz files (e.g. MNIST_MIRROR=../shared/mnist, relative to the project root)"
        )
    if "://" not in mirror:
        path = (ROOT / Path(mirror).expanduser()).resolve()
        if not path.is_dir():
            raise SystemExit(f"bench: MNIST_MIRROR={mirror} is not a directory (relative to {ROOT})")
        mirror = str(path)
    return dict(child_env(), MNIST_MIRROR=mirror, PYTHONPATH="")  # stages come from the copy (the cwd)


def pipeline_mode(args: argparse.Namespace) -> None:
    """Run the whole pipeline in a temporary copy of the project and print its costs."""
    env = mirror_env()
    overrides = list(args.set or []) + ([f"train.precision={args.precision}"] if args.precision else [])
    project = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        copy_project(project, overrides)
        present, missing = runnable_stages(project)
        targets = present if missing else []  # a plain `dvc repro` would fail on the missing stages' code
        lines = header(
            "Pipeline benchmark: `dvc repro` in a fresh copy (new git repo, DVC cache and outputs)"
        )
        lines.append(f"params:   params.yaml{' with ' + ', '.join(overrides) if overrides else ''}")
        print("\n".join(lines), flush=True)
        result = repro(project, env, targets)
        noop = noop_seconds(project, env, targets)
        print()
        print(stages_table(result, missing))
        print()
        print(pipeline_checks_table(result, noop))
        print()
        if missing:
            print(
                f"note:     not run, their code is not in this checkout yet: {', '.join(missing)} "
                f"(ran `dvc repro {' '.join(targets)}`)"
            )
        print("peak RSS: VmHWM of each stage's python process, polled every 0.2 s")
        print(run_metrics(project))
    finally:
        if args.keep:
            print(f"kept:     {project}")
        else:
            shutil.rmtree(project, ignore_errors=True)


def stages_table(result: Repro, missing: list[str]) -> str:
    """Wall time and peak RSS per stage."""
    rows = [
        (name, f"{t:.1f}", f"{result.peak_rss_kib.get(name, 0) / 1024:.0f}")
        for name, t in result.stage_seconds.items()
    ]
    rows += [(name, "not run", "") for name in missing]
    rows.append(("dvc start-up, before the first stage", f"{result.startup_seconds:.1f}", ""))
    rows.append(("total `dvc repro`", f"{result.total_seconds:.1f}", ""))
    return table(
        rows, ("stage (from its start to the next's, DVC's caching included)", "wall s", "peak RSS MiB")
    )


def pipeline_checks_table(result: Repro, noop: float) -> str:
    """Everything-but-train share and the no-op time against their targets."""
    train = result.stage_seconds.get("train", math.nan)
    others = (result.total_seconds - train) / train
    rows = [
        (
            "everything but train (other stages, DVC) / train",
            f"{others:.0%}",
            f"<= {TARGET_OTHER_STAGES_SHARE:.0%}",
            verdict(others, TARGET_OTHER_STAGES_SHARE, at_least=False),
        ),
        (
            "no-op `dvc repro` (median of 3)",
            f"{noop:.2f} s",
            f"<= {TARGET_NOOP_SECONDS:g} s",
            verdict(noop, TARGET_NOOP_SECONDS, at_least=False),
        ),
    ]
    return table(rows, ("check", "value", "target", "result"))


def run_metrics(project: Path) -> str:
    """Best validation accuracy, stop point and speed of the run, and its test accuracies if evaluated."""
    lines = []
    train_json = project / "metrics" / "train.json"
    if train_json.is_file():
        m = json.loads(train_json.read_text())
        lines.append(
            f"train:    best validation accuracy {m['best_validation_accuracy']:.2%} at iteration "
            f"{m['best_iteration']}, stopped at {m['stopped_iteration']} ({m['stop_reason']}), "
            f"{m['iterations_per_second']} it/s over the stage's loop (validation and saves included)"
        )
    test_json = project / "metrics" / "test.json"
    if test_json.is_file():
        flat = flatten(json.loads(test_json.read_text()))
        accuracies = {k: v for k, v in flat.items() if k.endswith("accuracy") and isinstance(v, float)}
        lines.append(
            "test:     " + (", ".join(f"{k} {v:.2%}" for k, v in accuracies.items()) or json.dumps(flat))
        )
    return "\n".join(lines)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as {'a.b': value}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "mode",
        nargs="?",
        default="step",
        choices=("step", "pipeline", "worker"),
        help="step (default): training speed; pipeline: dvc repro costs; worker: internal",
    )
    parser.add_argument("contender", nargs="?", help="worker mode: the contender to run")
    parser.add_argument("--repeats", type=int, default=5, help="step: repeats per contender (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="step: timed seconds per run (default 5)")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.1,
        help="step: rerun a run during which other processes used more than this share of the CPUs "
        "(default 0.1), keeping the quietest try",
    )
    parser.add_argument("--tries", type=int, default=3, help="step: most tries per run (default 3)")
    parser.add_argument("--contenders", help=f"step: comma-separated subset of {','.join(LABELS)}")
    parser.add_argument(
        "--candidates",
        nargs="?",
        const=",".join(CANDIDATES),
        metavar="NAMES",
        help="step: also time candidate Trainer speed-ups, patched in the bench only "
        f"(default {','.join(CANDIDATES)}; 'all' adds {','.join(SLOW_CANDIDATES)})",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="pipeline: train.precision for the run",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="pipeline: override a params.yaml key in the copy (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="pipeline: keep the temporary project copy")
    return parser.parse_args(argv)


def main() -> None:
    """Dispatch on the mode."""
    args = parse_args()
    os.chdir(ROOT)  # params.yaml and data/ are read relative to the project root
    if args.mode == "worker":
        print(RESULT_MARK + json.dumps(worker(args.contender, args.seconds)), flush=True)
    elif args.mode == "pipeline":
        pipeline_mode(args)
    else:
        step_mode(args)


if __name__ == "__main__":
    main()
