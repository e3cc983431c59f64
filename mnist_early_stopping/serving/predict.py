"""mnist-predict: classify your own pictures of digits with a trained network.

    mnist-predict IMAGE_OR_FOLDER... [--model models/best | models/best.keras] [--json] [--top K]
    mnist-predict --info [--model models/best] [--json]

Every input is read and prepared first (numpy and Pillow only, see
`images`): a bad file costs one line on stderr and nothing else. TensorFlow
is imported only after that, and only if some image is usable; the network
then runs on the prepared images in batches. Exit status: 0 when every input
was classified, 1 when any input (or the network) failed, 2 for bad usage;
--info exits 1 when the SavedModel itself is missing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
from PIL import Image

from mnist_early_stopping.pipeline.layout import BEST_MODEL, NUM_CLASSES
from mnist_early_stopping.pipeline.stage import first_line
from mnist_early_stopping.serving import images

PROG = "mnist-predict"
EXIT_OK, EXIT_FAILED = 0, 1  # argparse exits 2 on bad usage
EXIT_BROKEN_PIPE = 128 + 13  # what a shell tool killed by SIGPIPE reports
# Images per forward pass and per chunk of output; only the 28x28 results are kept between the two passes.
BATCH_SIZE = 256
# uint8 images (N, 28, 28) -> probabilities (N, 10), as network.load_network returns.
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class Item:
    """One input file: its 28x28 image once read, or what is wrong with it."""

    file: str
    image: np.ndarray | None = None
    error: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; exit 2 with a usage message if it is wrong."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify pictures of handwritten digits (any size, format and colours) with a trained "
        "network. Folders are read in sorted order (files only, hidden files skipped).",
    )
    parser.add_argument("paths", nargs="*", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    parser.add_argument(
        "--model", type=Path, default=BEST_MODEL,
        help="SavedModel folder (default: %(default)s), or a .keras file, which is rebuilt in Keras safe mode "
        "and runs nothing stored in it: use that for a network you do not trust (e.g. models/best.keras)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per input")
    parser.add_argument("--top", type=int, default=3, metavar="K", help="likeliest digits shown (default 3)")
    parser.add_argument("--info", action="store_true", help="print where the model comes from and exit")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per forward pass")
    parser.add_argument(
        "--save-preprocessed", type=Path, metavar="DIR", help="also write what the network sees (28x28 PNGs)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.top <= NUM_CLASSES:
        parser.error(f"--top must be between 1 and {NUM_CLASSES}, got {args.top}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.info and args.paths:
        parser.error("--info takes no images; run it on its own")
    if not args.info and not args.paths:
        parser.error("give at least one image or folder (or --info)")
    return args


def expand(paths: list[str]) -> list[Item]:
    """One item per file: folders become their files in sorted order; missing paths and empty folders fail."""
    items = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            items.append(Item(given, error=None if path.is_file() else not_a_file(path)))
            continue
        # Hidden files (.DS_Store, ._x) are the system's, not the user's images; subfolders are not entered.
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            items.append(Item(given, error="a folder with no files in it"))
        items.extend(Item(str(f)) for f in files)
    return items


def not_a_file(path: Path) -> str:
    """Why a path that is neither a folder nor a regular file is not read (a FIFO or a device would block or never end)."""
    if not path.exists():
        return "no such file or folder"
    return "not a regular file or a folder (a pipe, socket or device is never read)"


def report(file: str, problem: str) -> None:
    """One line on stderr naming the file and what is wrong with it."""
    print(f"{PROG}: {file}: {problem}", file=sys.stderr, flush=True)


def read_all(items: list[Item], save_dir: Path | None) -> None:
    """Prepare every readable image in place; report every bad input as it is met."""
    for position, item in enumerate(items, 1):
        if item.error is None:
            try:
                item.image = images.load(Path(item.file))
            except images.ImageError as e:
                item.error = str(e)
        if item.error is not None:
            report(item.file, item.error)
        elif save_dir is not None:
            save_preprocessed(item, save_dir / f"{position:05d}-{Path(item.file).stem}.png")
            if item.error is not None:
                report(item.file, item.error)


def save_preprocessed(item: Item, path: Path) -> None:
    """Write the 28x28 image the network will see, as a new file; a failure counts against the item.

    A file already there is never overwritten: it may be the user's (or an earlier call's), so the
    name is refused and the user chooses another folder.
    """
    png = io.BytesIO()
    Image.fromarray(item.image).save(png, format="PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as f:  # exclusive: fails if the name exists
            f.write(png.getvalue())
    except FileExistsError:
        item.error = (
            f"not saving the preprocessed image: {path} already exists (use an empty --save-preprocessed folder)"
        )
    except OSError as e:
        item.error = f"cannot write the preprocessed image to {path} ({e.strerror or e})"


def load_model(path: Path, batch_size: int) -> Predictor | None:
    """The network, or None after one line on stderr saying what is wrong and what to do."""
    from mnist_early_stopping.serving.network import NetworkError, load_any

    try:
        return load_any(path, batch_size)
    except NetworkError as e:
        print(f"{PROG}: {e}; train one (dvc repro) or pass --model DIR", file=sys.stderr, flush=True)
        return None


def classified(
    items: list[Item], network: Predictor | None, batch_size: int
) -> Iterator[tuple[Item, np.ndarray | None]]:
    """Every item in order with its probabilities (None for failed items), a batch at a time."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        good = [item.image for item in chunk if item.error is None]
        probabilities = iter(network(np.stack(good)) if good else [])
        for item in chunk:
            yield item, next(probabilities) if item.error is None else None


def ranked(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely digits with their probabilities, most likely first (ties: smaller digit)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(d), float(probabilities[d])) for d in order]


def as_json(item: Item, probabilities: np.ndarray | None, k: int) -> dict[str, Any]:
    """One input's JSON object: file, digit, probability, top; or file and error."""
    if probabilities is None:
        return {"file": item.file, "error": item.error}
    top = ranked(probabilities, k)
    return {
        "file": item.file, "digit": top[0][0], "probability": round(top[0][1], 6),
        "top": [{"digit": d, "probability": round(p, 6)} for d, p in top],
    }


def as_text(item: Item, probabilities: np.ndarray, k: int) -> str:
    """One classified input as a line: file: digit (probability); top K: digit probability, ..."""
    top = ranked(probabilities, k)
    others = ", ".join(f"{d} {p:.3f}" for d, p in top)
    return f"{item.file}: {top[0][0]} ({top[0][1]:.3f}); top {k}: {others}"


def write_results(
    results: Iterator[tuple[Item, np.ndarray | None]], k: int, as_list: bool, out: TextIO
) -> None:
    """Print the results as they come: text lines for classified inputs, or one JSON list of every input."""
    if not as_list:
        for item, probabilities in results:
            if probabilities is not None:
                print(as_text(item, probabilities, k), file=out, flush=True)
        return
    separator = "[\n"
    for item, probabilities in results:
        out.write(separator + "  " + json.dumps(as_json(item, probabilities, k)))
        separator = ",\n"
    out.write("[]\n" if separator == "[\n" else "\n]\n")
    out.flush()


def provenance(model: Path) -> dict[str, dict[str, Any]]:
    """Where the network comes from, one section per source: its path, whether present, and what it says."""
    from mnist_early_stopping.serving.network import read_provenance

    params_path = model.parent / "model.json"
    is_keras = model.suffix == ".keras"
    present = model.is_file() if is_keras else (model / "saved_model.pb").is_file()
    kind = ".keras file (loaded in Keras safe mode)" if is_keras else "SavedModel"
    sections = {
        "model": {"path": str(model), "present": present, "kind": kind},
        "provenance": {"path": str(model), "present": False, "problem": "no provenance recorded in the model"},
        "params": {"path": str(params_path), "present": params_path.is_file()},
    }
    recorded = read_provenance(model) if present else None
    if recorded is not None and not isinstance(recorded, dict):
        sections["provenance"]["problem"] = "the recorded provenance is not a JSON object"
    elif recorded is not None:
        sections["provenance"] = {"path": str(model), "present": True, "values": recorded}
    if sections["params"]["present"]:
        try:
            values = json.loads(params_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            sections["params"].update(present=False, problem=f"unreadable ({first_line(e, with_type=True)})")
        else:
            if isinstance(values, dict):
                sections["params"]["values"] = values
            else:
                sections["params"].update(present=False, problem="not a JSON object")
    return sections


def print_provenance(sections: dict[str, dict[str, Any]], as_json_object: bool) -> None:
    """Each section as `name: path (kind)` with its values indented below, or `name: missing (path...)`."""
    if as_json_object:
        print(json.dumps(sections, indent=2))
        return
    for name, section in sections.items():
        if not section["present"]:
            problem = f"; {section['problem']}" if "problem" in section else ""
            print(f"{name}: missing ({section['path']}{problem})")
            continue
        kind = f" ({section['kind']})" if "kind" in section else ""
        print(f"{name}: {section['path']}{kind}")
        for key, value in section.get("values", {}).items():
            print(f"  {key}: {json.dumps(value)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of mnist-predict; returns the exit status."""
    args = parse_args(argv)
    if args.info:
        sections = provenance(args.model)
        print_provenance(sections, args.json)
        return EXIT_OK if sections["model"]["present"] else EXIT_FAILED
    items = expand(args.paths)
    read_all(items, args.save_preprocessed)
    network = None
    if any(item.error is None for item in items):
        network = load_model(args.model, args.batch_size)
        if network is None:
            for item in items:
                item.error = item.error or "not classified: the network could not be loaded"
    results = classified(items, network, args.batch_size)
    try:
        write_results(results, args.top, args.json, sys.stdout)
    except BrokenPipeError:
        # The reader is gone (`mnist-predict dir | head -1`): stop quietly, as the shell's tools do.
        # Python would flush stdout again at exit and fail there: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_FAILED if any(item.error for item in items) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
