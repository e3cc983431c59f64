"""tf.distribute for the train stage: the strategy, the chief, and exchanges between workers.

The checks of TF_CONFIG and of the environment are plain Python, run before
TensorFlow is imported, so a bad value fails in well under a second with one
line and exit status 2; TensorFlow is imported only inside the functions that
use it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn

from mnist_early_stopping.pipeline.stage import EXIT_BAD_INPUT, StageError

if TYPE_CHECKING:
    import tensorflow as tf

# For testing tf.distribute on one CPU: split the CPU into this many logical
# devices, which `train.distribute: mirrored` then uses as its replicas.
LOGICAL_CPUS_ENV = "TRAIN_LOGICAL_CPUS"
STRATEGY_NAMES = {"none": "none", "mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
)


def fail(message: str) -> NoReturn:
    """Stop the stage: a bad setting, exit status 2 (the status of a bad params value)."""
    raise StageError(message, code=EXIT_BAD_INPUT)


@dataclass(frozen=True)
class Task:
    """This process's place in the training cluster."""

    index: int
    """Its id in the cluster: 0 is the chief."""
    count: int
    """Processes taking part in training."""

    @property
    def is_chief(self) -> bool:
        """The chief writes every file; the other workers only compute."""
        return self.index == 0


SINGLE_PROCESS = Task(0, 1)


def task_from_tf_config(environ: Mapping[str, str]) -> Task:
    """This worker's task from the TF_CONFIG JSON that MultiWorkerMirroredStrategy reads; exit 2 if bad."""
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        fail(f"train.distribute is multi_worker but TF_CONFIG is not set; set it on every worker "
             f"to JSON like {TF_CONFIG_EXAMPLE} (its own index on each)")
    try:
        config = json.loads(raw)
    except ValueError as e:
        fail(f"TF_CONFIG is not valid JSON ({e}); expected JSON like {TF_CONFIG_EXAMPLE}")
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        fail(f"TF_CONFIG must have a \"cluster\" and a \"task\" mapping, got {raw}; "
             f"expected JSON like {TF_CONFIG_EXAMPLE}")
    jobs = {"chief": 1, "worker": None}  # job -> most tasks it may have
    for job, addresses in cluster.items():
        if job not in jobs:
            fail(f"TF_CONFIG cluster job {job!r} is not supported; multi_worker training "
                 "uses only \"worker\" (and optionally one \"chief\") jobs")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
            fail(f"TF_CONFIG cluster.{job} must be a non-empty list of \"host:port\" strings, "
                 f"got {addresses!r}")
        if jobs[job] is not None and len(addresses) > jobs[job]:
            fail(f"TF_CONFIG cluster.{job} may have only one address, got {addresses!r}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        fail(f"TF_CONFIG task.type must be one of the cluster's jobs ({', '.join(cluster)}), got {kind!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        fail(f"TF_CONFIG task.index must be an integer from 0 to {len(cluster[kind]) - 1} "
             f"(an index into cluster.{kind}), got {index!r}")
    # TensorFlow's numbering: the chief job, if any, is 0, then the workers in order.
    has_chief = "chief" in cluster
    position = 0 if kind == "chief" else index + has_chief
    return Task(position, len(cluster.get("worker", [])) + has_chief)


def logical_cpus(environ: Mapping[str, str]) -> int | None:
    """The number of logical CPUs asked for in $TRAIN_LOGICAL_CPUS, or None; exit 2 if bad."""
    raw = environ.get(LOGICAL_CPUS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        fail(f"{LOGICAL_CPUS_ENV} must be an integer from 1 to 64, got {raw!r}")
    return int(raw)


def split_cpu(count: int) -> None:
    """Split the physical CPU into `count` logical devices; must run before TensorFlow's runtime starts."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def make_strategy(mode: str) -> tuple[tf.distribute.Strategy, str]:
    """The strategy for a train.distribute value (auto resolved), and its name for metrics."""
    import tensorflow as tf

    if mode == "auto":
        mode = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if mode == "mirrored":
        # Every visible GPU; with none, every logical CPU (one unless split_cpu ran).
        devices = None if tf.config.list_physical_devices("GPU") else [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices), STRATEGY_NAMES[mode]
    if mode == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(), STRATEGY_NAMES[mode]
    return tf.distribute.get_strategy(), STRATEGY_NAMES["none"]


def check_batch_size(batch_size: int, replicas: int, strategy_name: str) -> None:
    """The global batch must split evenly over the replicas; exit 2 if it does not."""
    if batch_size % replicas:
        fail(f"params.yaml: train.batch_size ({batch_size}) must be divisible by the {replicas} replicas "
             f"of {strategy_name}, so each replica takes an equal share; use a multiple of {replicas}")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy spans several processes, so values must be exchanged to agree."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@functools.cache
def _collective(strategy: tf.distribute.Strategy, kind: str) -> Callable[[Any], Any]:
    """A compiled function running one collective ("sum" or "gather") per value on every replica.

    Cached: a new function would be traced again at every call.
    """
    import tensorflow as tf

    def on_replica(values: list[tf.Tensor]) -> list[tf.Tensor]:
        context = tf.distribute.get_replica_context()
        # tf.identity puts each value on the replica's device, where the collective expects it.
        values = [tf.identity(v) for v in values]
        if kind == "sum":  # one all-reduce per value: a batched one needs a single dtype
            return [context.all_reduce("sum", v) for v in values]
        return [context.all_gather(v, axis=0) for v in values]

    return tf.function(lambda values: strategy.run(on_replica, args=(values,)), reduce_retracing=True)


def _exchange(strategy: tf.distribute.Strategy, kind: str, value_fn: Callable[[Any], list[tf.Tensor]]) -> list[tf.Tensor]:
    """Each replica's values from `value_fn` through the collective; this worker's first result."""
    results = _collective(strategy, kind)(strategy.experimental_distribute_values_from_function(value_fn))
    return [strategy.experimental_local_results(r)[0] for r in results]


def from_chief(strategy: tf.distribute.Strategy, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
    """The chief's values of `tensors` on every worker (each worker passes tensors of the same shapes)."""
    import tensorflow as tf

    # A sum over replicas to which only replica 0, which is on the chief, adds
    # anything: exact, and it needs nothing beyond the strategy's all-reduce.
    def contribution(ctx: tf.distribute.experimental.ValueContext) -> list[tf.Tensor]:
        return [t if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(t) for t in tensors]

    return _exchange(strategy, "sum", contribution)


def max_over_workers(strategy: tf.distribute.Strategy, value: int) -> int:
    """The largest of every worker's `value`."""
    import tensorflow as tf

    (gathered,) = _exchange(strategy, "gather", lambda ctx: [tf.constant([value], tf.int64)])
    return int(tf.reduce_max(gathered))
