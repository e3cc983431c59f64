"""The training engine: the network, the optimiser, compiled steps, validation, checkpoints, export.

It only trains: the train stage decides what to log and which files to write.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.atomic import json_bytes, replace_dir, written_by_keras
from mnist_early_stopping.pipeline.layout import IMAGE_SHAPE, PIXEL_SCALE, PROVENANCE_DIR, PROVENANCE_NAME
from mnist_early_stopping.pipeline.stage import say
from mnist_early_stopping.training import checkpoints
from mnist_early_stopping.training.distribute import from_chief, is_multi_worker, max_over_workers
from mnist_early_stopping.training.model import build_model, conv_kernels

# Images per validation forward pass: large enough to be efficient, small
# enough to keep the activations of conv1 (N x 28 x 28 x 16 floats) modest.
VALIDATION_BATCH = 1000


def configure(cfg: params.TrainParams) -> None:
    """Seeds, op determinism and the precision policy; call before building the model."""
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.precision)


def adam(cfg: params.TrainParams) -> keras.optimizers.Optimizer:
    """The run's optimiser (the training's, and the one .keras files are compiled with): Adam at
    `train.learning_rate`, or on its cosine schedule, a function of the optimiser's step count (so a
    resumed run, which restores that count, continues the schedule exactly)."""
    if cfg.lr_schedule != "cosine":
        return keras.optimizers.Adam(cfg.learning_rate)
    warmup = cfg.lr_warmup or 0
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.learning_rate,
        decay_steps=cfg.max_iterations - warmup,
        alpha=(cfg.lr_min or 0.0) / cfg.learning_rate,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(schedule)


def cross_entropy(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy of integer labels under predicted probabilities."""
    return keras.losses.sparse_categorical_crossentropy(labels, probabilities)


class Trainer:
    """Owns the network, the optimiser, the data on the devices and the checkpoints.

    Under a tf.distribute strategy every replica computes the gradient of its
    share of each global batch; the optimiser sums them over the replicas.
    """

    def __init__(
        self,
        model_cfg: params.ModelParams,
        cfg: params.TrainParams,
        train_data: tuple[np.ndarray, np.ndarray],
        validation_data: tuple[np.ndarray, np.ndarray],
        checkpoint_dir: Path,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        with self.strategy.scope():
            self.model = build_model(model_cfg, cfg.seed)
            optimizer = adam(cfg)
            if cfg.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.iteration_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Images stay uint8 (4x less memory than float32); batches are gathered
        # and scaled inside the compiled step, so Python copies nothing per step.
        self.train_images = tf.constant(train_data[0])
        self.train_labels = tf.constant(train_data[1].astype(np.int32))
        self.validation_images = tf.constant(validation_data[0])
        self.validation_labels = tf.constant(validation_data[1].astype(np.int32))
        # Copies of the untrained and the best weights, in every checkpoint: a
        # resumed run needs no other file, so nothing outside it can be mixed in.
        with self.strategy.scope():
            self.initial_weights = [tf.Variable(w, trainable=False) for w in self._weights()]
            self.best_weights = [tf.Variable(w, trainable=False) for w in self._weights()]
        # Host-side JSON of the loop's state, only ever saved and restored: it
        # stays outside the strategy (no replica reads it; a GPU holds no strings).
        self.state_var = tf.Variable("", dtype=tf.string, trainable=False)
        self.checkpoint_dir = checkpoint_dir
        self.best_path = checkpoint_dir / "best.weights.npz"
        # The SHA-256 of best.weights.npz as last written (or as the restored checkpoint recorded it).
        self.best_sha256: str | None = None
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, iteration=self.iteration_var, state=self.state_var,
            initial=self.initial_weights, best=self.best_weights,
        )
        # One signature each: every chunk and every validation batch (the last,
        # shorter one too) runs the same graph, traced once by `trace`.
        self._train_steps = tf.function(self._train_steps_fn, input_signature=[tf.TensorSpec([], tf.int64)])
        self._validate_batch = tf.function(
            self._validate_batch_fn,
            input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8), tf.TensorSpec([None], tf.int32)],
        )

    def trace(self) -> None:
        """Build the training and validation graphs now: start-up work, not the loop's."""
        self._train_steps.get_concrete_function()
        self._validate_batch.get_concrete_function()

    @property
    def iteration(self) -> int:
        """Training iterations done so far."""
        return int(self.iteration_var.numpy())

    def _batch_index(self, iteration: tf.Tensor) -> tf.Tensor:
        # The batch is a pure function of (seed, iteration): the data order
        # needs no state of its own, so a resumed run sees the same batches,
        # whatever the number of replicas.
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int64), iteration])
        n = tf.shape(self.train_labels, out_type=tf.int64)[0]
        return tf.random.stateless_uniform([self.cfg.batch_size], seed, minval=0, maxval=n, dtype=tf.int64)

    def _gather(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Every replica gathers from the same host tensors (TensorFlow has no
        # GPU gather for uint8), so only its small batch goes to its device.
        images = tf.cast(tf.gather(self.train_images, index), tf.float32) * PIXEL_SCALE
        return images, tf.gather(self.train_labels, index)

    def _batch(self, iteration: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._gather(self._batch_index(iteration))

    def _step(self) -> None:
        # Runs on each replica: its slice of the global batch, in replica order.
        index = self._batch_index(self.iteration_var)
        if self.replicas > 1:
            size = self.cfg.batch_size // self.replicas
            start = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64) * size
            index = index[start : start + size]
        images, labels = self._gather(index)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            # Sum over this replica's examples / global batch: the optimiser
            # sums the replicas' gradients, giving the global batch's mean.
            loss = tf.nn.compute_average_loss(
                cross_entropy(labels, probabilities), global_batch_size=self.cfg.batch_size
            )
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)

    def _train_steps_fn(self, count: tf.Tensor) -> dict[str, tf.Tensor]:
        # A whole chunk of steps runs in one graph call: no Python per step.
        for _ in tf.range(count):
            self.iteration_var.assign_add(1)
            self.strategy.run(self._step)
        # The tutorial reports accuracy on the last training batch after its
        # update: the whole global batch, computed once with the shared weights.
        images, labels = self._batch(self.iteration_var)
        probabilities = self.model(images, training=False)
        return {
            "train_batch_accuracy": tf.reduce_mean(
                tf.cast(tf.equal(tf.argmax(probabilities, axis=1, output_type=tf.int32), labels), tf.float32)
            ),
            "train_batch_loss": tf.reduce_mean(cross_entropy(labels, probabilities)),
        }

    def set_learning_rate(self, rate: float) -> None:
        """The learning rate of the iterations from now on (a variable the compiled steps read)."""
        self.optimizer.learning_rate.assign(rate)

    def learning_rate(self) -> float:
        """The learning rate of the next iteration."""
        return float(self.optimizer.learning_rate)

    def train_until(self, iteration: int) -> dict[str, float]:
        """Train up to `iteration`; return accuracy and loss on the last training batch."""
        count = tf.constant(iteration - self.iteration, tf.int64)
        return {k: float(v) for k, v in self._train_steps(count).items()}

    def _validate_batch_fn(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        probabilities = self.model(tf.cast(images, tf.float32) * PIXEL_SCALE, training=False)
        predicted = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int64))
        return correct, tf.reduce_sum(tf.cast(cross_entropy(labels, probabilities), tf.float64))

    def validate(self) -> dict[str, float]:
        """Accuracy and mean loss on the whole validation set.

        Computed once, outside the replicas, with the shared weights. Under
        multi_worker each worker computes it from the same synchronised
        weights with the same ops, so every worker gets the same numbers and
        takes the same early-stopping decisions.
        """
        n = int(self.validation_labels.shape[0])
        correct, loss = 0, 0.0
        for start in range(0, n, VALIDATION_BATCH):
            end = start + VALIDATION_BATCH
            c, l = self._validate_batch(self.validation_images[start:end], self.validation_labels[start:end])
            correct, loss = correct + int(c), loss + float(l)
        return {"validation_accuracy": correct / n, "validation_loss": loss / n}

    def _weights(self) -> list[tf.Tensor]:
        return [tf.convert_to_tensor(w) for w in self.model.weights]

    def save_best(self) -> None:
        """Keep the current weights as the best: in memory (for checkpoints) and in best.weights.npz, atomically."""
        for copy, weight in zip(self.best_weights, self._weights()):
            copy.assign(weight)
        # numpy, not h5py: a full disk is then an OSError, never a crash inside HDF5.
        self.best_sha256 = checkpoints.write_weights(self.best_path, [w.numpy() for w in self.best_weights])

    def save_initial(self) -> None:
        """Keep the untrained weights, for the untrained network's export and the before/after plots."""
        for copy, weight in zip(self.initial_weights, self._weights()):
            copy.assign(weight)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """A resumable checkpoint: weights, optimiser, iteration, the kept copies and the loop's state."""
        self.state_var.assign(json.dumps({**state, "best_sha256": self.best_sha256}))
        checkpoints.save(self.checkpoint, self.checkpoint_dir, self.iteration, state["manifest_sha256"],
                         self.cfg.keep_checkpoints)

    def _numeric_state(self) -> list[Any]:
        """Every checkpointed variable but the loop's state string."""
        return [*self.model.variables, *self.optimizer.variables, self.iteration_var,
                *self.initial_weights, *self.best_weights]

    def restore(self, manifest_sha256: str) -> dict[str, Any] | None:
        """Restore the newest intact checkpoint of this manifest; return the loop's state, or None (untouched)."""
        variables = [*self._numeric_state(), self.state_var]
        before = [v.numpy() for v in variables]
        for prefix in checkpoints.intact(self.checkpoint_dir, manifest_sha256):
            try:
                self.checkpoint.read(str(prefix)).assert_existing_objects_matched()
                state = json.loads(self.state_var.numpy().decode())
                if state.get("manifest_sha256") != manifest_sha256:
                    raise ValueError("it was written by a run with other inputs")
            except (ValueError, AssertionError, IndexError, tf.errors.OpError) as e:  # IndexError: a torn file
                # A failed restore may have loaded some variables: put them all back.
                for variable, value in zip(variables, before):
                    variable.assign(value)
                say(f"cannot resume from {prefix}: {str(e).splitlines()[0][:200]}; ignoring it")
                continue
            self.best_sha256 = state.pop("best_sha256")
            return state
        return None

    def share_state(self, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Under multi_worker, give every worker the chief's weights, optimiser and loop state; return the state.

        Only the chief reads checkpoints, so a resumed run starts each worker
        from what the chief restored (and a fresh run from the chief's initial weights).
        """
        if not is_multi_worker(self.strategy):
            return state
        # The state goes as JSON bytes: first its length, so every worker passes the same shapes.
        text = np.frombuffer(json.dumps(state).encode(), np.uint8).astype(np.int32)
        (length,) = from_chief(self.strategy, [tf.constant(text.size, tf.int64)])
        if int(length) != text.size:  # the other workers' values do not count, only their shapes
            text = np.zeros(int(length), np.int32)
        variables = self._numeric_state()
        shared = from_chief(self.strategy, [tf.constant(text), *(tf.convert_to_tensor(v) for v in variables)])
        for variable, value in zip(variables, shared[1:]):
            variable.assign(value)
        return json.loads(shared[0].numpy().astype(np.uint8).tobytes().decode())

    def agreed_signal(self, signum: int | None) -> int | None:
        """The stop signal any worker got (so all stop together at the same checkpoint), or None."""
        if not is_multi_worker(self.strategy):
            return signum
        return max_over_workers(self.strategy, signum or 0) or None

    def export(self, path: Path, provenance: dict[str, Any] | None = None) -> None:
        """Write the current weights as a SavedModel whose `serve` maps images to probabilities."""
        with replace_dir(path) as tmp:
            self.model.export(str(tmp), format="tf_saved_model", verbose=False)
            if provenance is not None:
                (tmp / PROVENANCE_DIR).mkdir(exist_ok=True)
                (tmp / PROVENANCE_DIR / PROVENANCE_NAME).write_bytes(json_bytes(provenance))

    def save_keras(self, path: Path, provenance: dict[str, Any] | None = None) -> None:
        """Write the current network as a compiled .keras file, atomically: `keras.saving.load_model` then fits it."""
        # A plain copy outside the strategy: under multi_worker, creating the
        # optimiser's variables in its scope would be a collective step, which
        # the other workers (already finished) never join.
        plain = keras.models.clone_model(self.model)
        plain.set_weights(self.model.get_weights())
        # Compiled with the run's optimiser settings and loss, so fine-tuning is one `fit` call away.
        plain.compile(
            optimizer=adam(self.cfg),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
        )
        # Built, so the file holds the optimiser's (fresh) slots and loads without a warning.
        plain.optimizer.build(plain.trainable_variables)
        with written_by_keras(path, ".keras") as tmp:
            plain.save(tmp)
            if provenance is not None:  # Keras reads only its own members of the archive
                with zipfile.ZipFile(tmp, "a") as archive:
                    archive.writestr(PROVENANCE_NAME, json_bytes(provenance))

    def load_saved(self, which: str) -> None:
        """Put the kept `initial` or `best` weights into the network (the end of training).

        The best ones come from best.weights.npz, checked against the SHA-256
        recorded when they were saved; a damaged file is named, and the copy
        kept in memory (the same weights) is used instead.
        """
        copies = {"initial": self.initial_weights, "best": self.best_weights}[which]
        if which == "best":
            problem = checkpoints.weights_problem(self.best_path, self.best_sha256, len(copies))
            if problem is None:
                self.model.set_weights(checkpoints.read_weights(self.best_path))
                return
            say(f"{self.best_path} {problem}; using the copy of the best weights kept in memory")
        for weight, copy in zip(self.model.weights, copies):
            weight.assign(copy)

    def conv_kernels(self) -> dict[str, np.ndarray]:
        """The current conv kernels by layer name."""
        return conv_kernels(self.model)
