"""`dvc plots show` / `dvc plots diff` pages render with no network, vega inlined by templates/plots.html."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from configobj import ConfigObj
from dvc_render.vega import OPTIONAL_ANCHOR_RANGES, VegaRenderer
from PIL import Image

from mnist_early_stopping.pipeline.layout import CURVES, CURVES_TABLE, PLOTS_DIR, PREDICTIONS, curve_path
from tests.conftest import ROOT
from tests.test_plots import plots_project_copy, run_plots

PACKAGES = ("vega", "vega-lite", "vega-embed")
# The versions dvc-render itself loads from its CDN; the template must inline exactly these.
CDN_URL = r"cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@([0-9][^\"/]*)"
EXPECTED = dict(re.findall(CDN_URL, VegaRenderer.SCRIPTS))
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, ws://, //host
URL_ATTRIBUTES = {"src", "href", "srcset", "data", "poster", "action", "formaction", "xlink:href"}
PLOTS_YAML = """\
plots:
  - Accuracy:
      title: Accuracy
      x: iteration
      y:
        metrics/history.csv: [train_batch_accuracy, validation_accuracy]
      y_label: accuracy
  - Confusion-Matrix:
      title: Test set
      template: confusion
      x: actual
      y:
        metrics/predictions.csv: predicted
"""
PLOT_IDS = ("Accuracy", "Confusion-Matrix")
BROWSERS = ("chromium", "chromium-browser")
# dvc-render draws the lines of the first revision in its first colour, of the second in its second.
LINE_COLOURS = [tuple(bytes.fromhex(c[1:])) for c in OPTIONAL_ANCHOR_RANGES["color"][:2]]


class Page(HTMLParser):
    """What a generated page loads: remote URLs in attributes, inline scripts and styles."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.remote: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self._open: str | None = None  # "script" or "style" while inside one
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value and REMOTE.match(value):
                self.remote.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
        elif tag == "style":
            self.styles.append("")
        if tag in ("script", "style"):
            self._open = tag

    def handle_data(self, data: str) -> None:
        if self._open == "script":
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif self._open == "style":
            self.styles[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def specs(self) -> dict[str, dict]:
        """Vega(-Lite) spec of each plot div, by div id."""
        found = {}
        for _, text in self.scripts:
            match = re.search(r"var spec = (.*);\s*vegaEmbed\('#([^']+)'", text, re.DOTALL)
            if match:
                found[match.group(2)] = json.loads(match.group(1))
        return found


def remote_strings(node: object, key: str = "") -> list[str]:
    """URLs anywhere in a spec, except `$schema` (an identifier vega-embed never fetches)."""
    if isinstance(node, dict):
        return [u for k, v in node.items() if k != "$schema" for u in remote_strings(v, k)]
    if isinstance(node, list):
        return [u for v in node for u in remote_strings(v, key)]
    if key == "url" or (isinstance(node, str) and REMOTE.match(node)):
        return [f"{key}: {node}"]
    return []


def assert_offline(html: str) -> Page:
    """The page loads nothing from a network and carries the three vega libraries inline."""
    page = Page(html)
    assert page.remote == [], "the page loads remote resources"
    assert "cdn.jsdelivr.net" not in html, "dvc-render's CDN <script> tags made it into the page"
    for style in page.styles:
        assert not re.search(r"@import|url\(\s*['\"]?(?:[a-z]+:)?//", style, re.IGNORECASE), style
    inline = {attrs.get("data-package"): text for attrs, text in page.scripts if not attrs.get("src")}
    for name in PACKAGES:
        text = inline.get(f"{name}@{EXPECTED[name]}", "")
        assert len(text) > 50_000, f"{name}@{EXPECTED[name]} is not inlined"
        assert f'"{EXPECTED[name]}"' in text, f"the inlined {name} is not version {EXPECTED[name]}"
    specs = page.specs()
    assert sorted(specs) == sorted(PLOT_IDS)
    for plot_id, spec in specs.items():
        assert spec["data"]["values"], f"{plot_id} has no inline data"
        assert remote_strings(spec) == [], f"{plot_id} would fetch data"
    return page


def test_expected_versions_come_from_dvc_render() -> None:
    assert sorted(EXPECTED) == sorted(PACKAGES)


def test_template_inlines_the_versions_dvc_render_expects() -> None:
    text = (ROOT / "templates/plots.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in text
    # With a {scripts} placeholder dvc-render would add its CDN <script> tags back.
    assert "{scripts}" not in text
    page = Page(text)
    assert page.remote == []
    tags = [attrs.get("data-package") for attrs, _ in page.scripts]
    expected = [f"{name}@{EXPECTED[name]}" for name in PACKAGES]
    assert tags == expected, "regenerate it: python templates/build_plots_template.py"


def test_dvc_config_points_at_the_template() -> None:
    config = ConfigObj(str(ROOT / ".dvc/config"))
    # DVC resolves a relative plots.html_template against the .dvc directory.
    path = (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()
    assert path == (ROOT / "templates/plots.html").resolve()


def run(cwd: Path, *args: str) -> str:
    """Run a command; its stdout (stderr joined) or an assertion error with the output."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), DVC_NO_ANALYTICS="1")
    env.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
    )
    result = subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300, check=False,
    )
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
    return result.stdout


def write_csvs(repo: Path, changed: bool) -> None:
    """A short training history and 3-class predictions; `changed` lowers one curve, moves one prediction."""
    slope = 0.05 if changed else 0.09
    history = ["iteration,train_batch_accuracy,validation_accuracy"]
    history += [f"{i * 10},{min(1.0, 0.1 * i + 0.05):.3f},{slope * i:.3f}" for i in range(1, 11)]
    predictions = ["actual,predicted"] + [f"{i % 3},{i % 3 if i % 4 else (i + 1) % 3}" for i in range(30)]
    if changed:
        predictions[1] = "0,2"
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/history.csv").write_text("\n".join(history) + "\n")
    (repo / "metrics/predictions.csv").write_text("\n".join(predictions) + "\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo with the project's template setting and two commits of the plotted CSVs."""
    path = tmp_path_factory.mktemp("offline_plots")
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "dvc", "init", "-q")
    run(path, "dvc", "config", "core.analytics", "false")
    setting = ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]
    run(path, "dvc", "config", "plots.html_template", setting)
    shutil.copytree(ROOT / "templates", path / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "dvc.yaml").write_text(PLOTS_YAML)
    (path / ".gitignore").write_text("/dvc_plots/\n/diff_plots/\n")
    write_csvs(path, changed=False)
    run(path, "git", "add", ".")
    run(path, "git", "commit", "-q", "-m", "first")
    write_csvs(path, changed=True)
    run(path, "git", "commit", "-q", "-am", "second")
    return path


@pytest.fixture(scope="module")
def show_page(repo: Path) -> Path:
    """`dvc plots show` with no options, as a user runs it."""
    run(repo, "dvc", "plots", "show")
    return repo / "dvc_plots/index.html"


@pytest.fixture(scope="module")
def diff_page(repo: Path) -> Path:
    """`dvc plots diff` between the two commits."""
    run(repo, "dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", "diff_plots")
    return repo / "diff_plots/index.html"


@pytest.mark.slow
def test_plots_show_page_is_offline(show_page: Path) -> None:
    specs = assert_offline(show_page.read_text(encoding="utf-8")).specs()
    assert len(specs["Accuracy"]["data"]["values"]) == 20  # 10 iterations x 2 fields
    assert len(specs["Confusion-Matrix"]["data"]["values"]) == 30


@pytest.mark.slow
def test_plots_diff_page_is_offline(diff_page: Path) -> None:
    specs = assert_offline(diff_page.read_text(encoding="utf-8")).specs()
    values = specs["Accuracy"]["data"]["values"]
    assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"}
    changed = {v["rev"]: v["validation_accuracy"] for v in values if v["iteration"] == "50"}
    assert changed == {"HEAD~1": "0.450", "HEAD": "0.250"}
    assert {v["rev"] for v in specs["Confusion-Matrix"]["data"]["values"]} == {"HEAD~1", "HEAD"}


def browser() -> str:
    """The headless browser, or skip with how to install it."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium on PATH: install it with `apt-get install chromium` (or .ci/install-browser)")


def open_offline(page: Path, profile: Path, *action: str) -> str:
    """Load a page in headless Chromium that cannot reach any host; its stdout."""
    args = [
        browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}",
        # No name resolves and every request goes to a closed local port: the network is out of reach.
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
        "--virtual-time-budget=10000", *action, page.as_uri(),
    ]
    result = subprocess.run(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode})"
    return result.stdout


def page_requests(net_log: Path) -> list[str]:
    """Network URLs the page itself asked for (the browser's own background requests left out)."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"] for e in log["events"]
        if e["type"] == start_job and re.match(r"(https?|wss?)://", e["params"].get("url", ""))
        # Requests made for the file:// page carry its site in their isolation key.
        and str(e["params"].get("network_isolation_key", "")).startswith("file://")
    ]


def drawn_plots(dom: str, ids: tuple[str, ...] = PLOT_IDS) -> dict[str, tuple[int, int]]:
    """Size of the canvas (or svg) vega drew in each plot div of a dumped DOM; (0, 0) where none."""
    divs = re.finditer(r'<div id="([^"]+)"', dom)
    starts = [(m.start(), m.group(1)) for m in divs if m.group(1) in ids]
    drawn = {}
    for (start, plot_id), (end, _) in zip(starts, [*starts[1:], (len(dom), "")], strict=True):
        marks = re.search(r'<(canvas|svg)\b[^>]*\bclass="marks"[^>]*>', dom[start:end])
        size = re.findall(r'\b(width|height)="(\d+)', marks.group(0)) if marks else []
        drawn[plot_id] = (int(dict(size).get("width", 0)), int(dict(size).get("height", 0)))
    return drawn


def colour_counts(screenshot: Path) -> tuple[list[int], int]:
    """(pixels of each revision's line colour, pixels of the heatmap's blue cells) in a screenshot."""
    image = Image.open(screenshot).convert("RGB")
    lines, blue = [0] * len(LINE_COLOURS), 0
    for n, (r, g, b) in image.getcolors(image.width * image.height):
        near = [max(abs(r - c[0]), abs(g - c[1]), abs(b - c[2])) < 30 for c in LINE_COLOURS]
        if any(near):
            lines[near.index(True)] += n
        elif b > 120 and b - r > 80 and g < b:  # the dark end of vega-lite's heatmap scheme
            blue += n
    return lines, blue


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["show", "diff"])
def test_browser_draws_every_plot_with_no_network(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    browser()
    page: Path = request.getfixturevalue(f"{kind}_page")
    net_log = tmp_path / "net.json"
    dom = open_offline(page, tmp_path / "profile", "--dump-dom", f"--log-net-log={net_log}")
    assert page_requests(net_log) == []
    drawn = drawn_plots(dom)
    assert set(drawn) == set(PLOT_IDS)
    for plot_id, (width, height) in drawn.items():
        assert width > 200 and height > 200, f"{plot_id} was not drawn: {drawn}"
    screenshot = tmp_path / "plots.png"
    open_offline(page, tmp_path / "profile2", "--window-size=1200,2000", f"--screenshot={screenshot}")
    lines, blue = colour_counts(screenshot)
    revisions = 2 if kind == "diff" else 1
    # The legend's symbol alone has a few dozen such pixels; a dashed curve has some 300.
    assert all(n > 150 for n in lines[:revisions]), f"accuracy curves missing from the screenshot: {lines}"
    assert blue > 5_000, f"no confusion matrix cells in the screenshot ({blue} blue pixels)"


@pytest.mark.slow
def test_browser_setup_catches_a_page_that_needs_the_network(show_page: Path, tmp_path: Path) -> None:
    """The same checks on the page dvc-render writes by default (CDN scripts) must fail."""
    browser()
    html = show_page.read_text(encoding="utf-8")
    html = re.sub(r"\s*<script data-package=.*?</script>", "", html, flags=re.DOTALL)
    html = html.replace("</title>", "</title>" + VegaRenderer.SCRIPTS, 1)
    cdn_page = tmp_path / "cdn.html"
    cdn_page.write_text(html, encoding="utf-8")
    net_log = tmp_path / "net.json"
    dom = open_offline(cdn_page, tmp_path / "profile", "--dump-dom", f"--log-net-log={net_log}")
    assert any("cdn.jsdelivr.net" in url for url in page_requests(net_log))
    assert drawn_plots(dom) == dict.fromkeys(PLOT_IDS, (0, 0))


# The project's own page: its dvc.yaml, plot templates and page template, on small stand-ins for what
# the pipeline writes (the plots stage's real figures from hand-made inputs, the curves table beside them).
CHARTS = {"Accuracy": ("Accuracy, train and validation", "accuracy"), "Loss": ("Loss, train and validation", "loss")}
CONFUSION_ID = re.sub(r"\W", "_", str(PREDICTIONS))  # dvc-render's div id for a plot named by its file


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo with the project's plots setup and the files its page draws, none of the workspace's."""
    path = plots_project_copy(tmp_path_factory.mktemp("project_page") / "project")
    run_plots(path)  # the figures, under the names the plots stage gives them
    # What train writes beside DVCLive's TSVs, from the same hand-made TSVs.
    columns = {name: [line.split("\t") for line in (path / curve_path(name)).read_text().splitlines()[1:]]
               for name in CURVES}
    steps = [int(step) for step, _ in columns[CURVES[0]]]
    table = [{"iteration": step, **{name: float(columns[name][i][1]) for name in CURVES}} for i, step in enumerate(steps)]
    (path / CURVES_TABLE).write_text(json.dumps(table))
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "dvc", "init", "-q")
    run(path, "dvc", "config", "core.analytics", "false")
    setting = ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]
    run(path, "dvc", "config", "plots.html_template", setting)
    shutil.copytree(ROOT / ".dvc/plots", path / ".dvc/plots")
    shutil.copytree(ROOT / "templates", path / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "dvc.yaml", path / "dvc.yaml")
    return path


@pytest.fixture(scope="module")
def project_plots(project_repo: Path) -> dict[str, list[dict]]:
    """`dvc plots show --json`: each plot's renderings, in the page's order."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), DVC_NO_ANALYTICS="1")
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=project_repo, env=env, capture_output=True,
                           text=True, timeout=300, check=True)
    return json.loads(shown.stdout)["data"]


@pytest.fixture(scope="module")
def project_page(project_repo: Path) -> Path:
    run(project_repo, "dvc", "plots", "show")
    return project_repo / "dvc_plots/index.html"


def curve_fields(spec: dict) -> list[str]:
    """The curves a chart draws, one per line: the fields its data points name."""
    return sorted({v["field"] for v in spec["data"]["values"] if "field" in v})


@pytest.mark.slow
def test_the_project_page_reads_top_down(project_plots: dict[str, list[dict]]) -> None:
    ids = list(project_plots)
    images = [i for i in ids if project_plots[i][0]["type"] == "image"]
    # The two charts of the curves, the confusion matrix, then the figures, the training curves first.
    assert ids[:3] == [*CHARTS, str(PREDICTIONS)], ids
    assert ids[3:] == images and images[0] == str(PLOTS_DIR / "0_training_curves.png"), ids
    assert len(images) >= 5, images


@pytest.mark.slow
def test_the_curve_charts_are_titled_with_labelled_axes_and_draw_each_curve_once(
    project_plots: dict[str, list[dict]]
) -> None:
    drawn = []
    for plot_id, (title, y_label) in CHARTS.items():
        spec = project_plots[plot_id][0]["content"]
        assert spec["title"]["text"] == title
        assert spec["encoding"]["x"]["title"] == "iteration"
        assert {layer["encoding"]["y"]["title"] for layer in spec["layer"] if "y" in layer.get("encoding", {})} \
            == {y_label}
        assert curve_fields(spec) == [f"train_batch_{y_label}", f"validation_{y_label}"]
        drawn += curve_fields(spec)
        # Where each run's curve ends is marked: in a diff, a run that stopped earlier shows where.
        marks = [layer.get("mark") for layer in spec["layer"]]
        assert [m["size"] for m in marks if isinstance(m, dict) and m.get("type") == "circle"] == [80]
    assert sorted(drawn) == sorted(CURVES), "each curve once"
    # No other plot on the page draws a curve.
    others = [i for i in project_plots if i not in CHARTS and project_plots[i][0]["type"] == "vega"]
    assert others == [str(PREDICTIONS)]
    assert not set(CURVES) & set(project_plots[str(PREDICTIONS)][0]["content"]["data"]["values"][0])


@pytest.mark.slow
def test_the_confusion_matrix_has_true_on_y_predicted_on_x_and_every_count(
    project_plots: dict[str, list[dict]]
) -> None:
    spec = project_plots[str(PREDICTIONS)][0]["content"]
    assert spec["title"]["text"] == "Test set, restored best network"
    encoding = spec["spec"]["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("predicted", "actual")
    assert (encoding["x"]["title"], encoding["y"]["title"]) == ("predicted class", "true class (actual)")
    # The counts are written in the cells, with no checkbox to tick first.
    text = [layer for layer in spec["spec"]["layer"] if layer.get("mark") == "text"]
    assert [layer["encoding"]["text"] for layer in text] == [{"field": "xy_count", "type": "quantitative"}]
    assert "params" not in spec


@pytest.mark.slow
def test_the_project_page_is_offline_and_in_the_same_order(project_page: Path) -> None:
    html = project_page.read_text(encoding="utf-8")
    page = Page(html)
    assert page.remote == [] and "cdn.jsdelivr.net" not in html
    divs = re.findall(r'<div id = "([^"]+)">', html)
    assert divs == [*CHARTS, CONFUSION_ID], divs
    images = re.findall(r'<img src="static/workspace_plots_(\w+)\.png">', html)
    assert images[0] == "0_training_curves" and images == sorted(images), images
    assert html.index(f'<div id = "{CONFUSION_ID}">') < html.index('<img src="static/'), "the charts come first"


@pytest.mark.slow
def test_browser_draws_the_project_page(project_page: Path, tmp_path: Path) -> None:
    browser()
    net_log = tmp_path / "net.json"
    dom = open_offline(project_page, tmp_path / "profile", "--dump-dom", f"--log-net-log={net_log}")
    assert page_requests(net_log) == []
    ids = (*CHARTS, CONFUSION_ID)
    drawn = drawn_plots(dom, ids)
    assert set(drawn) == set(ids)
    for plot_id, (width, height) in drawn.items():
        assert width > 200 and height > 200, f"{plot_id} was not drawn: {drawn}"
