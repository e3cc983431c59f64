"""An untrusted .keras archive checked before Keras reads it, and only its checked members handed over.

Keras extracts an archive of more than three members to a temporary
directory and reads the weights as large as they decompress. Here the
member names are checked, config.json and metadata.json are read under a
cap, and the weights under a bound computed from that config's layers,
counting the bytes actually decompressed (a member's declared size is not
trusted). Keras is then given a new archive of just the three members it
reads, written as they pass the checks: nothing unchecked reaches the disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mnist_early_stopping.pipeline.stage import first_line

CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "model.weights.h5"
READ_BY_KERAS = (CONFIG_NAME, METADATA_NAME, WEIGHTS_NAME)
OPTIONAL = ("provenance.json",)
JSON_CAP = 1 << 20  # config.json, metadata.json and provenance.json: this project's are a few KiB
# The most the copy for Keras may take, whatever the config declares: the
# largest network params.yaml allows (4 x 1024 filters of 9 x 9, 4 x 8192
# units) is 7.3 GiB by the bound below.
WEIGHTS_CEILING = 8 << 30
CHUNK = 1 << 16

# The weights bound: each parameter as float32 (what Keras stores, under
# mixed precision too) for the variable and up to three optimiser slots
# (Adam's two, AMSGrad's third), plus HDF5's own bookkeeping per layer and
# per file. A layer class not listed here holds weights this module cannot
# size, so it is refused.
BYTES_PER_PARAMETER = 4 * 4
PER_LAYER_OVERHEAD = 64 << 10
FILE_OVERHEAD = 1 << 20
MODEL_CLASSES = ("Functional", "Sequential")
WEIGHTLESS = frozenset({
    "InputLayer", "Reshape", "Flatten", "Permute", "RepeatVector", "Identity", "Lambda",
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Rescaling",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "ActivityRegularization", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
})
CONVOLUTIONS = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
# gamma, beta, moving mean and variance at most, each no larger than the layer's input.
NORMALISATIONS = frozenset({"BatchNormalization", "LayerNormalization", "GroupNormalization"})
NOT_OURS = "not a network of this project's kind"
BAD_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, RuntimeError,
           NotImplementedError, ValueError)


class NetworkError(Exception):
    """A network file is missing or cannot be loaded."""


def source_archive(path: Path) -> zipfile.ZipFile:
    """The zip archive at `path`, open for reading; NetworkError if it is not one."""
    try:
        return zipfile.ZipFile(path)
    except BAD_ZIP as e:
        raise NetworkError(f"{path} is not a readable zip archive ({first_line(e)}); save the network again") from None


def chunks(archive: zipfile.ZipFile, name: str, path: Path) -> Iterator[bytes]:
    """The member `name`, decompressed a chunk at a time; NetworkError if it is damaged."""
    # Only reading is guarded: an error writing what is read is the caller's, not the archive's.
    try:
        with archive.open(name) as member:
            while chunk := member.read(CHUNK):
                yield chunk
    except BAD_ZIP as e:  # a torn or forged member: bad CRC, truncated data, unknown compression...
        raise NetworkError(f"{path}: {name} cannot be read ({first_line(e)}); the archive is damaged") from None


def copy_capped(archive: zipfile.ZipFile, name: str, cap: int, path: Path, sink: IO[bytes],
                why: str = NOT_OURS) -> None:
    """The member `name` decompressed into `sink`, refused as soon as more than `cap` bytes come out."""
    copied = 0
    with contextlib.closing(chunks(archive, name, path)) as stream:
        for chunk in stream:
            copied += len(chunk)
            if copied > cap:
                raise NetworkError(f"{path}: {name} is over {size(cap)} when decompressed; {why}")
            sink.write(chunk)


def read_capped(archive: zipfile.ZipFile, name: str, cap: int, path: Path) -> bytes:
    """The member `name` decompressed, refused as soon as more than `cap` bytes come out."""
    out = io.BytesIO()
    copy_capped(archive, name, cap, path, out)
    return out.getvalue()


def write_checked(path: Path, destination: Path) -> None:
    """Write to `destination` a new archive of just the three members Keras reads from `path`, each checked.

    A refusal is a NetworkError; an OSError is `destination`'s (a full disk),
    and what was written there is the caller's to remove.
    """
    with source_archive(path) as archive:
        check_names(archive, path)
        config = read_capped(archive, CONFIG_NAME, JSON_CAP, path)
        metadata = read_capped(archive, METADATA_NAME, JSON_CAP, path)
        bound = weights_bound(parse_json(config, CONFIG_NAME, path), path)
        parse_json(metadata, METADATA_NAME, path)
        with zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as copy:
            copy.writestr(CONFIG_NAME, config)
            copy.writestr(METADATA_NAME, metadata)
            with copy.open(WEIGHTS_NAME, "w", force_zip64=True) as weights:
                copy_capped(archive, WEIGHTS_NAME, bound, path, weights, "more than its config's layers can hold")


def check_names(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse an archive whose members are not exactly Keras's three (and optionally provenance.json)."""
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise NetworkError(f"{path} names a member twice; {NOT_OURS}")
    unexpected = sorted(set(names) - set(READ_BY_KERAS) - set(OPTIONAL))
    if unexpected:
        raise NetworkError(f"{path} holds {unexpected[0]!a}, not a member of a .keras file; {NOT_OURS}")
    missing = [name for name in READ_BY_KERAS if name not in names]
    if missing:
        raise NetworkError(f"{path} has no {missing[0]}; save the network again with Keras 3")


def parse_json(data: bytes, name: str, path: Path) -> dict[str, Any]:
    """The JSON object in a member, or a NetworkError naming it."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise NetworkError(f"{path}: {name} is not JSON ({first_line(e)}); {NOT_OURS}") from None
    if not isinstance(value, dict):
        raise NetworkError(f"{path}: {name} is not a JSON object; {NOT_OURS}")
    return value


def weights_bound(config: dict[str, Any], path: Path) -> int:
    """The most bytes model.weights.h5 may take for the layers `config` declares."""
    try:
        layers = list(model_layers(config))
        parameters = sum(layer_parameters(layer) for layer in layers)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise NetworkError(f"{path}: {CONFIG_NAME} does not describe a network Keras can build ({first_line(e)}); "
                           f"{NOT_OURS}") from None
    bound = FILE_OVERHEAD + PER_LAYER_OVERHEAD * len(layers) + BYTES_PER_PARAMETER * parameters
    if bound > WEIGHTS_CEILING:
        raise NetworkError(f"{path}: {CONFIG_NAME} declares {parameters} parameters, whose weights could take "
                           f"over {size(WEIGHTS_CEILING)}; {NOT_OURS}")
    return bound


def model_layers(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every layer of a Functional or Sequential model's config, nested models' layers included."""
    if model.get("class_name") not in MODEL_CLASSES:
        raise ValueError(f"a {model.get('class_name')!a} model, not one of {', '.join(MODEL_CLASSES)}")
    found = []
    for layer in model["config"]["layers"]:
        if not isinstance(layer, dict):
            raise TypeError("a layer that is not a JSON object")
        found.extend(model_layers(layer) if layer.get("class_name") in MODEL_CLASSES else [layer])
    return found


def layer_parameters(layer: dict[str, Any]) -> int:
    """An upper bound on the parameters of one layer's config."""
    kind, config = layer.get("class_name"), layer["config"]
    if kind in WEIGHTLESS:
        return 0
    if kind == "Embedding":
        return count(config["input_dim"]) * count(config["output_dim"])
    shape = input_shape(layer)
    if kind == "Dense":
        return (shape[-1] + 1) * count(config["units"])
    if kind in CONVOLUTIONS:
        kernel = config["kernel_size"]
        taps = math.prod(count(k) for k in (kernel if isinstance(kernel, list) else [kernel]))
        channels = shape[0] if config.get("data_format") == "channels_first" else shape[-1]
        return (taps * channels + 1) * count(config["filters"])
    if kind in NORMALISATIONS:
        return 4 * math.prod(shape)
    raise ValueError(f"a {kind!a} layer, whose weights this check cannot size")


def input_shape(layer: dict[str, Any]) -> list[int]:
    """The input shape, batch left out, that a layer's config says it was built for."""
    shape = layer["build_config"]["input_shape"]
    if not isinstance(shape, list) or len(shape) < 2:
        raise ValueError(f"layer {layer.get('name')!a} has no input shape of its own")
    return [count(d) for d in shape[1:]]


def count(value: Any) -> int:
    """A positive integer from a config, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!a} where a positive integer belongs")
    return value


def size(n: int) -> str:
    """Bytes in MiB or GiB, to three figures."""
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"
