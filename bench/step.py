"""Training-step benchmark: our Trainer against plain Keras `fit` and PyTorch, on the project's data.

Run in the project's virtual environment (PyTorch is optional, used only here: `pip install torch`):

    python bench/step.py                                 # every contender, 5 repeats x 5 s
    python bench/step.py --repeats 9 --seconds 8
    python bench/step.py --contenders ours,keras-fit     # a subset
    python bench/step.py --candidates                    # also time configuration candidates
    python bench/step.py --project DIR                   # another project's params.yaml and data/split

Every contender runs in a fresh subprocess per repeat (TensorFlow and PyTorch in one process fight
over threads), contenders alternating so that background load hits them alike; a run during which
other processes took over 10% of the CPUs (from /proc/stat) is run again, and the quietest try
kept. It prints medians and per-repeat paired ratios. Without data/split/ in the project, random
uint8 images of MNIST's size stand in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, add_project_option, child_env, header, median_of, table, verdict

sys.path.insert(0, str(ROOT))  # the library of this checkout, whichever project is measured

from mnist_early_stopping.pipeline import params  # noqa: E402  (light: no TensorFlow)
from mnist_early_stopping.pipeline.layout import IMAGE_SHAPE, NUM_CLASSES, split_path  # noqa: E402
from mnist_early_stopping.pipeline.stage import StageError  # noqa: E402

RESULT_MARK = "BENCH-RESULT "
WARMUP_CHUNKS = 2  # the first chunk traces the graph; the second settles caches and thread pools
WARMUP_BATCHES = 50  # Keras fit and PyTorch: steps before timing starts
MATMUL_SIZE = 2048
VALIDATION_REPEATS = 3

# Targets of docs/performance.md.
TARGET_OURS_VS_KERAS = 1.2  # float32 against float32, and mixed_bfloat16 against mixed_bfloat16
TARGET_OURS_VS_TORCH = 1.2

LABELS = {
    "ours": "ours: Trainer.train_until, float32",
    "keras-fit": "Keras model.fit, float32",
    "torch": "PyTorch eager, float32",
    "ours-bf16": "ours: Trainer.train_until, mixed_bfloat16",
    "keras-fit-bf16": "Keras model.fit, mixed_bfloat16",
}

Results = dict[str, list[dict[str, Any]]]  # contender -> one measurement dict per repeat


# --------------------------------------------------------------------------- candidates


def inter_op_one() -> None:
    """One inter-op thread: ops run one at a time on all cores, instead of two ops sharing them."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)


def determinism_off() -> None:
    """Undo the op determinism that trainer.configure turned on."""
    # TensorFlow exports only the enable; its inverse lives beside it, unexported.
    from tensorflow.python.framework.config import disable_op_determinism

    disable_op_determinism()


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A configuration of our Trainer to compare with the stage's: no code of the library changes."""

    label: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # read when TensorFlow loads
    setup: Callable[[], None] | None = None  # run after trainer.configure, before the Trainer is built


# Not here, as they need the Trainer's private methods: validation in one batch
# (_validate_batch) and XLA on the step function (jit_compile on _train_steps_fn).
CANDIDATES = {
    "ours+inter-op-1": Candidate("ours, 1 inter-op thread", setup=inter_op_one),
    "ours+no-determinism": Candidate("ours, op determinism off (info)", setup=determinism_off),
}
# Much slower on a 2-core CPU; kept to re-check elsewhere (--candidates all).
SLOW_CANDIDATES = {
    "ours+onednn-off": Candidate("ours, TF_ENABLE_ONEDNN_OPTS=0", env={"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # XLA has no deterministic max-pool gradient, so determinism goes too.
    "ours+xla-auto": Candidate(
        "ours, XLA auto-clustering, determinism off",
        env={"TF_XLA_FLAGS": "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"},
        setup=determinism_off,
    ),
}
ALL_CANDIDATES = {**CANDIDATES, **SLOW_CANDIDATES}


def label(name: str) -> str:
    """Human-readable name of a contender."""
    return LABELS[name] if name in LABELS else ALL_CANDIDATES[name].label


# --------------------------------------------------------------------------- workers (one per subprocess)


def load_data() -> tuple[tuple[Any, Any], tuple[Any, Any], str]:
    """(train, validation, description): the project's data/split, else random images of MNIST's size."""
    import numpy as np

    from mnist_early_stopping.data.splits import load_split

    if split_path("train").is_file() and split_path("validation").is_file():
        return load_split("train"), load_split("validation"), "data/split"
    rng = np.random.default_rng(0)

    def random_split(n: int) -> tuple[Any, Any]:
        images = rng.integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)
        return images, rng.integers(0, NUM_CLASSES, size=n, dtype=np.uint8)

    return random_split(55000), random_split(5000), "random uint8 images (no data/split in the project)"


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


def run_ours(seconds: float, precision: str | None = None, candidate: str | None = None) -> dict[str, Any]:
    """Our Trainer, configured and driven as the stage does: train_until in chunks of train.eval_every."""
    from mnist_early_stopping.training import engine as trainer

    model_cfg, cfg = params.load("model", "train")
    if precision:
        cfg = dataclasses.replace(cfg, precision=precision)
    trainer.configure(cfg)
    setup = ALL_CANDIDATES[candidate].setup if candidate else None
    if setup:
        setup()
    train_data, validation_data, source = load_data()
    with tempfile.TemporaryDirectory() as tmp:
        runner = trainer.Trainer(model_cfg, cfg, train_data, validation_data, Path(tmp))

        def chunk() -> int:
            runner.train_until(runner.iteration + cfg.eval_every)
            return cfg.eval_every

        for _ in range(WARMUP_CHUNKS):
            chunk()
        result: dict[str, Any] = {
            **timed_loop(chunk, seconds),
            "data": source,
            "parameters": runner.model.count_params(),
        }
        if precision:  # the bf16 run is for its speed only
            return result
        usage = Usage()
        result["validate_s"] = validation_seconds(runner)
        result["validation_images"] = int(validation_data[1].shape[0])
        if not candidate:
            result["matmul_gflops"] = matmul_peak_gflops()
        # The retry rule then also covers the validation and peak timings.
        result["others"] = max(result["others"], usage.rates(0)["others"])
        return result


def run_keras_fit(seconds: float, precision: str | None = None) -> dict[str, Any]:
    """What a typical Keras user writes: compile with Adam and sparse cross-entropy, fit on float arrays."""
    import keras
    import numpy as np

    from mnist_early_stopping.training.model import build_model

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
    return {**timer.rates, "data": source, "parameters": model.count_params()}


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

    model_cfg, cfg = params.load("model", "train")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    (images, labels), _, source = load_data()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    model = torch_model(model_cfg)
    parameters = sum(p.numel() for p in model.parameters())
    # The same network as the Keras one built from the same params, or the comparison is false.
    from mnist_early_stopping.training.model import build_model

    keras_parameters = build_model(model_cfg, cfg.seed).count_params()
    if parameters != keras_parameters:
        raise StageError(f"torch_model has {parameters} parameters, the Keras network {keras_parameters}")
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
    return {**timed_loop(step, seconds), "data": source, "parameters": parameters}


def torch_model(cfg: params.ModelParams) -> Any:
    """The network of mnist_early_stopping/training/model.py in PyTorch (logits out: the loss applies the softmax)."""
    from torch import nn

    layers: list[Any] = []
    channels, side = 1, IMAGE_SHAPE[0]
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
        "ours-bf16": lambda: run_ours(seconds, "mixed_bfloat16"),
        "keras-fit": lambda: run_keras_fit(seconds),
        "keras-fit-bf16": lambda: run_keras_fit(seconds, "mixed_bfloat16"),
        "torch": lambda: run_torch(seconds),
    }
    return run_ours(seconds, candidate=name) if name in ALL_CANDIDATES else runs[name]()


# --------------------------------------------------------------------------- the parent: runs and tables


def run_contender(name: str, seconds: float, project: Path) -> dict[str, Any]:
    """Run one contender in a fresh subprocess: its measurements plus the subprocess's max RSS (MiB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--seconds", str(seconds)]
    env = child_env(**(ALL_CANDIDATES[name].env if name in ALL_CANDIDATES else {}))
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run a contender; again while other processes used over the limit of the CPUs; keep the quietest."""
    best: dict[str, Any] = {}
    made = 0
    while made < args.tries:
        made += 1
        wait_for_quiet(args.max_other_load)
        result = run_contender(name, args.seconds, args.project)
        if "its" not in result:
            return result
        if not best or result["others"] < best["others"]:
            best = result
        if result["others"] <= args.max_other_load:
            break
    return {**best, "tries": made}


def torch_available() -> bool:
    """Whether PyTorch imports (checked in a subprocess: this one stays light)."""
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def select_contenders(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(contenders to run, notes about skipped ones)."""
    contenders = args.contenders.split(",") if args.contenders else list(LABELS)
    if args.candidates:
        contenders += list(ALL_CANDIDATES) if args.candidates == "all" else args.candidates.split(",")
    unknown = [c for c in contenders if c not in LABELS and c not in ALL_CANDIDATES]
    if unknown:
        known = ", ".join([*LABELS, *ALL_CANDIDATES])
        raise SystemExit(f"bench: unknown contender {unknown[0]}; known: {known}")
    notes = []
    if "torch" in contenders and not torch_available():
        contenders.remove("torch")
        notes.append("PyTorch skipped: `import torch` failed (pip install torch to compare with it)")
    return contenders, notes


def paired_ratio(runs: Results, a: str, b: str, key: str = "its") -> float:
    """Median over repeats of a/b for one measurement, each ratio taken within one repeat."""
    pairs = zip(runs.get(a, []), runs.get(b, []), strict=False)
    ratios = [x[key] / y[key] for x, y in pairs if key in x and key in y and y[key] > 0]
    return statistics.median(ratios) if ratios else math.nan


def validation_share(t_val: float, its: float, eval_every: int) -> float:
    """Share of the stage's loop spent validating: t_val / (eval_every / its + t_val)."""
    return t_val / (eval_every / its + t_val)


def train_flops_per_image(model_cfg: params.ModelParams) -> float:
    """Forward multiply-adds x2, times 3 for forward plus backward (backward ~2x forward)."""
    side, channels, macs = IMAGE_SHAPE[0], 1, 0
    k = model_cfg.conv_kernel_size
    for filters in model_cfg.conv_filters:  # "same" convs at stride 1, each followed by a 2x2 "same" pool
        macs += side * side * filters * k * k * channels
        side, channels = math.ceil(side / 2), filters
    width = side * side * channels
    for units in (*model_cfg.dense_units, NUM_CLASSES):
        macs += width * units
        width = units
    return 3 * 2 * macs


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
            "ours / Keras fit, mixed_bfloat16",
            paired_ratio(runs, "ours-bf16", "keras-fit-bf16"),
            TARGET_OURS_VS_KERAS,
        ),
    ]
    rows = [(name, f"{v:.2f}x", f">= {t:g}x", verdict(v, t, at_least=True)) for name, v, t in ratios]
    rows.append(
        (
            f"validation share at eval every {eval_every}",
            f"{share:.1%}",
            "",
            "info",
        )
    )
    for a, b in (("keras-fit-bf16", "keras-fit"), ("ours-bf16", "ours"), ("ours-bf16", "keras-fit")):
        rows.append((f"{a} / {b}", f"{paired_ratio(runs, a, b):.2f}x", "", "info"))
    for name in ALL_CANDIDATES:
        if name in runs:
            speed, val = paired_ratio(runs, name, "ours"), paired_ratio(runs, name, "ours", "validate_s")
            rows.append((f"{name} / ours: it/s; validate time", f"{speed:.2f}x; {val:.2f}x", "", "candidate"))
    rows = [r for r in rows if not r[1].startswith("nan")]
    return table(rows, ("check (ratio = median of the per-repeat ratios)", "value", "target", "result"))


def explanations(runs: Results, model_cfg: params.ModelParams, cfg: params.TrainParams) -> str:
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


def bench(args: argparse.Namespace) -> None:
    """Measure every contender, alternating, and print the tables."""
    model_cfg, cfg = params.load("model", "train")
    contenders, notes = select_contenders(args)
    lines = header("Training-step benchmark")
    lines += [
        f"project:  {args.project}",
        f"setup:    batch {cfg.batch_size}; ours runs train_until in chunks of eval_every={cfg.eval_every} "
        f"as the stage does; {args.repeats} repeats x {args.seconds:g} s per contender after warm-up,",
        "          contenders alternating, each run in its own fresh subprocess (TensorFlow and PyTorch "
        "in one process fight over threads);",
        f"          a run during which other processes used over {args.max_other_load:.0%} of the CPUs is "
        f"run again (at most {args.tries} tries; the quietest is kept)",
    ]
    print("\n".join(lines), flush=True)
    runs: Results = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name in contenders:
            result = measure(name, args)
            runs[name].append(result)
            shown = (
                f"{result['its']:.1f} it/s, other load {result['others']:.0%}, tries {result['tries']}"
                if "its" in result
                else result["error"]
            )
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<22} {shown}", flush=True)
    # The peers must train the same network: a PyTorch model that drifted from model.py would be a false comparison.
    counts = {name: {r["parameters"] for r in rs if "parameters" in r} for name, rs in runs.items()}
    if len(set().union(*counts.values())) > 1:
        raise StageError(
            f"the contenders' networks differ in size (parameters: {counts}); fix torch_model in bench/step.py"
        )
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
    if any("its" not in r for rs in runs.values() for r in rs):
        raise SystemExit(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_project_option(parser)
    parser.add_argument("--repeats", type=int, default=5, help="repeats per contender (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run (default 5)")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.1,
        help="rerun a run during which other processes used more than this share of the CPUs "
        "(default 0.1), keeping the quietest try",
    )
    parser.add_argument("--tries", type=int, default=3, help="most tries per run (default 3)")
    parser.add_argument("--contenders", help=f"comma-separated subset of {','.join(LABELS)} (default: all)")
    parser.add_argument(
        "--candidates",
        nargs="?",
        const=",".join(CANDIDATES),
        metavar="NAMES",
        help="also time candidate configurations of our Trainer "
        f"(default {','.join(CANDIDATES)}; 'all' adds {','.join(SLOW_CANDIDATES)})",
    )
    # Internal: run one contender in this process (the parent starts one per run).
    parser.add_argument("--worker", choices=[*LABELS, *ALL_CANDIDATES], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    """Run the benchmark, or one contender when started as a worker."""
    args = parse_args()
    if args.worker:  # started in the project directory
        print(RESULT_MARK + json.dumps(worker(args.worker, args.seconds)), flush=True)
        return
    os.chdir(args.project)  # params.yaml and data/split are read relative to the project root
    bench(args)


if __name__ == "__main__":
    try:
        main()
    except StageError as e:
        sys.exit(f"bench: {e}")
